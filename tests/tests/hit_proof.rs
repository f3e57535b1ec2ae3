//! Disk hits under a verification window (`cache.verify_window`): a chunk file that
//! verified is served again without hashing while its `fstat` is unchanged, and a
//! chunk file changed on disk after its proof is still caught, never served.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use shoal_tests::agent;
use shoal_tests::client::get;
use shoal_tests::{Object, Origin, random_bytes};

fn chunk_files(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(chunk_files(&p));
        } else {
            out.push(p);
        }
    }
    out
}

#[tokio::test]
async fn chunk_changed_after_its_proof_is_caught_and_not_served() {
    shoal_tests::logs();
    let origin = Origin::start("127.0.0.241").await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let data = random_bytes(400_000, 41);
    origin.put("/p", Object::new(data.clone()));
    let url = origin.url("/p");
    let mut cfg = agent::config("127.0.0.241", dir.path());
    // Every hit is read from disk.
    cfg.cache.memory_size = bytesize::ByteSize::b(0);
    cfg.cache.verify_window = Duration::from_secs(600);
    let a = agent::start(cfg).await.unwrap();
    assert_eq!(get(a.proxy_addr(), &url).await.unwrap().body, data);
    let m = a.metrics();
    let disk_failures = || m.verify_failures.with_label_values(&["disk"]).get();

    // A proof is recorded once a file's last change is settled (a second old); until
    // then every read is hashed. Read until reads are served under proofs.
    let deadline = Instant::now() + Duration::from_secs(20);
    while m.cache_reads_proved.get() == 0 {
        assert!(
            Instant::now() < deadline,
            "no read was ever served under a proof"
        );
        assert_eq!(get(a.proxy_addr(), &url).await.unwrap().body, data);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let before = m.cache_reads_proved.get();
    assert_eq!(get(a.proxy_addr(), &url).await.unwrap().body, data);
    let files = chunk_files(&dir.path().join("chunks"));
    assert!(files.len() >= 6, "{} chunk files", files.len());
    assert_eq!(
        m.cache_reads_proved.get() - before,
        files.len() as u64,
        "every chunk of a settled object is served under its proof"
    );
    assert_eq!(disk_failures(), 0);

    // Change one byte of every chunk file in place, same size, and put the mtime
    // back: only the ctime (which user space cannot set) tells.
    for f in &files {
        let mtime = std::fs::metadata(f).unwrap().modified().unwrap();
        let mut b = std::fs::read(f).unwrap();
        let mid = b.len() / 2;
        b[mid] ^= 0x01;
        std::fs::write(f, &b).unwrap();
        std::fs::File::options()
            .write(true)
            .open(f)
            .unwrap()
            .set_modified(mtime)
            .unwrap();
        assert_eq!(std::fs::metadata(f).unwrap().modified().unwrap(), mtime);
    }
    let proved = m.cache_reads_proved.get();
    let r = get(a.proxy_addr(), &url).await.unwrap();
    // The client gets the right bytes (each bad chunk fetched again from the origin),
    // never the changed ones.
    assert_eq!(blake3::hash(&r.body), blake3::hash(&data));
    assert_eq!(disk_failures(), files.len() as u64);
    assert_eq!(
        m.cache_reads_proved.get(),
        proved,
        "no changed file passed on its proof"
    );
    assert_eq!(origin.range_requests("/p"), files.len() as u64);
    a.shutdown().await;
}
