//! Clients that read slowly or not at all: their responses' read-ahead stays within
//! `cache.read_buffer` (plus one 64 KiB group each: past the budget, disk chunks are
//! read in checked groups), other clients still get their bytes, a stalled client is
//! disconnected after `proxy.send_timeout` and gives its share back, a slow client
//! that resumes gets every byte right, and a chunk file changed between a group's
//! check and its read is caught, never served.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::time::Duration;

use bytesize::ByteSize;
use shoal_tests::client::{eventually, get};
use shoal_tests::{Object, Origin, agent, random_bytes};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

const MIB: usize = 1 << 20;
const SIZE: usize = 24 * MIB;
/// `shoal_proto::groups::GROUP_LEN`, as the gauge counts it.
const GROUP: i64 = 64 * 1024;

/// A connection with a small receive buffer that sends a GET for `url` and reads
/// nothing yet.
async fn stalled_get(proxy: SocketAddr, url: &str) -> TcpStream {
    let sock = TcpSocket::new_v4().unwrap();
    sock.set_recv_buffer_size(4096).unwrap();
    let mut s = sock.connect(proxy).await.unwrap();
    let req = format!("GET {url} HTTP/1.1\r\nHost: o\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes()).await.unwrap();
    s
}

/// Reads `s` to its end (or a reset); the body after the head.
async fn drain(mut s: TcpStream) -> Vec<u8> {
    let mut all = Vec::new();
    let mut buf = vec![0u8; 256 * 1024];
    loop {
        match s.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => all.extend_from_slice(&buf[..n]),
        }
    }
    match all.windows(4).position(|w| w == b"\r\n\r\n") {
        Some(p) => all.split_off(p + 4),
        None => Vec::new(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_clients_hold_at_most_the_read_buffer_and_resume_intact() {
    // Nothing in memory: every hit reads the disk into buffers of its own.
    slow_clients("127.0.63.1", ByteSize::b(0), 631).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_clients_of_a_memory_cached_object_hold_at_most_the_read_buffer() {
    // The object fits in memory: past the budget, groups are copied out of it, so a
    // response never holds a chunk the cache could evict.
    slow_clients("127.0.63.4", ByteSize::mib(64), 634).await;
}

async fn slow_clients(ip: &str, memory: ByteSize, seed: u64) {
    shoal_tests::logs();
    let origin = Origin::start(ip).await.unwrap();
    let data = random_bytes(SIZE, seed);
    origin.put("/big", Object::new(data.clone()));
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = agent::config(ip, dir.path());
    cfg.cache.read_buffer = ByteSize::mib(4);
    cfg.cache.chunk_size = ByteSize::mib(1);
    cfg.cache.memory_size = memory;
    let a = agent::start(cfg).await.unwrap();
    let url = origin.url("/big");
    assert_eq!(get(a.proxy_addr(), &url).await.unwrap().body, data);
    assert!(eventually(Duration::from_secs(20), || a.cache().cached(&url).is_some()).await);

    let gauge = &a.metrics().cache_read_buffer_bytes;
    let stalled: Vec<_> = {
        let mut v = Vec::new();
        for _ in 0..12 {
            v.push(stalled_get(a.proxy_addr(), &url).await);
        }
        v
    };
    // Each stalled response fills its socket and its queue, then waits: at most
    // the budget plus one 64 KiB group each (without the budget: 6 chunks each,
    // 72 MiB; with a floor of a whole chunk each: 16 MiB).
    let limit = 4 * MIB as i64 + 12 * GROUP;
    let settled = eventually(Duration::from_secs(20), || {
        a.metrics().cache_read_buffer_waits.get() > 0 && gauge.get() > 0
    })
    .await;
    assert!(settled, "the budget never filled");
    for _ in 0..20 {
        assert!(gauge.get() <= limit, "{} > {limit}", gauge.get());
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // A client that reads is not held up by them: it reads in groups (counted when
    // they come from disk).
    let grouped = a.metrics().cache_reads_grouped.get();
    let from_disk = memory.as_u64() == 0;
    assert_eq!(grouped > 0, from_disk, "grouped disk reads past the budget");
    let r = get(a.proxy_addr(), &url).await.unwrap();
    assert_eq!(blake3::hash(&r.body), blake3::hash(&data));
    if from_disk {
        assert!(a.metrics().cache_reads_grouped.get() >= grouped + (SIZE / MIB) as u64);
    }
    // The stalled clients resume and get every byte.
    let bodies = futures_util::future::join_all(stalled.into_iter().map(drain)).await;
    for b in &bodies {
        assert_eq!(b.len(), SIZE);
        assert_eq!(blake3::hash(b), blake3::hash(&data));
    }
    assert!(eventually(Duration::from_secs(10), || gauge.get() == 0).await);
    a.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stops_reading_is_closed_after_send_timeout() {
    shoal_tests::logs();
    let ip = "127.0.63.2";
    let origin = Origin::start(ip).await.unwrap();
    let data = random_bytes(SIZE, 632);
    origin.put("/big", Object::new(data.clone()));
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = agent::config(ip, dir.path());
    cfg.proxy.send_timeout = Duration::from_millis(500);
    let a = agent::start(cfg).await.unwrap();
    let url = origin.url("/big");
    assert_eq!(get(a.proxy_addr(), &url).await.unwrap().body, data);
    assert!(eventually(Duration::from_secs(20), || a.cache().cached(&url).is_some()).await);

    let s = stalled_get(a.proxy_addr(), &url).await;
    let gauge = &a.metrics().cache_read_buffer_bytes;
    assert!(eventually(Duration::from_secs(10), || gauge.get() > 0).await);
    // Past the timeout the agent gives up on it: its buffers are freed...
    assert!(
        eventually(Duration::from_secs(20), || gauge.get() == 0).await,
        "a stalled client still holds {} bytes",
        gauge.get()
    );
    // ...and the client, reading at last, finds a cut response.
    let body = drain(s).await;
    assert!(body.len() < SIZE, "got all {} bytes", body.len());
    assert_eq!(
        &body[..],
        &data[..body.len()],
        "a prefix of the right bytes"
    );
    a.shutdown().await;
}

/// The file of chunk `index` of `data` (1 MiB chunks).
fn chunk_file(dir: &std::path::Path, data: &[u8], index: usize) -> std::path::PathBuf {
    let id = blake3::hash(&data[index * MIB..((index + 1) * MIB).min(data.len())]).to_hex();
    dir.join("chunks").join(&id[..2]).join(id.as_str())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_changed_on_disk_after_its_check_is_caught_and_repaired() {
    shoal_tests::logs();
    let ip = "127.0.63.3";
    let origin = Origin::start(ip).await.unwrap();
    let data = random_bytes(16 * MIB + 5000, 633);
    origin.put("/g", Object::new(data.clone()));
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = agent::config(ip, dir.path());
    // The smallest budget (one chunk), nothing in memory.
    cfg.cache.read_buffer = ByteSize::b(1);
    cfg.cache.chunk_size = ByteSize::mib(1);
    cfg.cache.memory_size = ByteSize::b(0);
    let a = agent::start(cfg).await.unwrap();
    let url = origin.url("/g");
    assert_eq!(get(a.proxy_addr(), &url).await.unwrap().body, data);
    assert!(eventually(Duration::from_secs(20), || a.cache().cached(&url).is_some()).await);
    let m = a.metrics();
    let disk_failures = || m.verify_failures.with_label_values(&["disk"]).get();

    // One client that stops reading holds the whole budget: every other response
    // reads past it, in groups, and their group values are kept.
    let _stalled = stalled_get(a.proxy_addr(), &url).await;
    assert!(
        eventually(Duration::from_secs(20), || m.cache_read_buffer_waits.get()
            > 0)
        .await,
        "the budget never filled"
    );
    let before = m.cache_reads_grouped.get();
    assert_eq!(get(a.proxy_addr(), &url).await.unwrap().body, data);
    assert!(m.cache_reads_grouped.get() > before, "read in groups");
    assert_eq!(disk_failures(), 0);

    // Change one byte in the middle of chunk 12's file (past where the stalled
    // response stopped), in place: its values are kept, so only the check of the
    // group read again can tell.
    let f = chunk_file(dir.path(), &data, 12);
    let mut b = std::fs::read(&f).unwrap();
    b[MIB / 2 + 7] ^= 0x40;
    std::fs::write(&f, &b).unwrap();

    // The response is cut inside chunk 12, after its checked groups; no wrong byte.
    let s = stalled_get(a.proxy_addr(), &url).await;
    let body = drain(s).await;
    assert!(body.len() < data.len(), "got all {} bytes", body.len());
    assert!(
        body.len() >= 12 * MIB,
        "cut before chunk 12: {}",
        body.len()
    );
    assert!(
        body.len() <= 12 * MIB + MIB / 2,
        "a changed byte was sent: {}",
        body.len()
    );
    assert_eq!(
        &body[..],
        &data[..body.len()],
        "a prefix of the right bytes"
    );
    assert_eq!(disk_failures(), 1);
    // The chunk was dropped; the next request fetches it again and is whole.
    let r = get(a.proxy_addr(), &url).await.unwrap();
    assert_eq!(blake3::hash(&r.body), blake3::hash(&data));
    a.shutdown().await;
}
