//! A small, full or read-only cache disk: a tmpfs of 8 MiB as `cache.dir` under the
//! default 10 GiB quota. Needs root (mount); skipped with a message otherwise.
//!
//! One scenario, in order: objects past the disk's capacity are all cached (the quota
//! follows the free space, old chunks are evicted); an object larger than the disk is
//! streamed through and not recorded (no `Range` repairs later); a disk filled behind
//! the agent's back (`ENOSPC`) evicts and caching goes on; the disk remounted
//! read-only still serves what it holds to a restarted agent.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::fs::OpenOptions;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use http::{Method, StatusCode};
use shoal_tests::agent;
use shoal_tests::client::{get, request};
use shoal_tests::{Object, Origin, random_bytes};

const IP: &str = "127.0.62.1";
const MIB: usize = 1024 * 1024;

/// A tmpfs mounted on a temporary directory; unmounted on drop.
struct Tmpfs {
    dir: tempfile::TempDir,
}

impl Tmpfs {
    /// Mounts a tmpfs of `size` (e.g. `8m`), or says why not.
    fn mount(size: &str) -> Result<Self, String> {
        let uid = Command::new("id")
            .arg("-u")
            .output()
            .map_err(|e| e.to_string())?;
        if String::from_utf8_lossy(&uid.stdout).trim() != "0" {
            return Err("not root".into());
        }
        let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir.path())
            .output()
            .map_err(|e| e.to_string())?;
        if !out.status.success() {
            return Err(format!(
                "mount failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        Ok(Self { dir })
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    fn remount_ro(&self) -> bool {
        Command::new("mount")
            .args(["-o", "remount,ro"])
            .arg(self.path())
            .status()
            .is_ok_and(|s| s.success())
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let ok = Command::new("umount")
            .arg(self.path())
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            let _ = Command::new("umount").arg("-l").arg(self.path()).status();
        }
    }
}

/// Fills the filesystem of `dir` with a ballast file, then frees `leave` bytes.
fn fill_disk(dir: &Path, leave: u64) -> PathBuf {
    let path = dir.join("ballast");
    let mut f = OpenOptions::new()
        .create(true)
        .write(true)
        .truncate(true)
        .open(&path)
        .unwrap();
    let block = vec![0x5au8; 64 * 1024];
    let mut len = 0u64;
    while f.write_all(&block).is_ok() {
        len += block.len() as u64;
    }
    let _ = f.flush();
    f.set_len(len.saturating_sub(leave)).unwrap();
    path
}

#[tokio::test]
async fn small_full_and_read_only_disk() {
    shoal_tests::logs();
    let fs = match Tmpfs::mount("8m") {
        Ok(fs) => fs,
        Err(why) => {
            eprintln!("SKIP small_full_and_read_only_disk: needs a tmpfs mount ({why})");
            return;
        }
    };
    let origin = Origin::start(IP).await.unwrap();
    let mut cfg = agent::config(IP, fs.path());
    cfg.cache.memory_size = bytesize::ByteSize::mib(1);
    // The default reserve (2 % of the filesystem, at least 1 MiB), as in production.
    cfg.cache.min_free = None;
    cfg.cache.freshness = Duration::from_secs(600);
    let a = agent::start(cfg.clone()).await.unwrap();
    let store = a.cache().store().clone();
    let quota = store.quota();
    assert!(
        quota < 8 * MIB as u64,
        "quota {quota} follows the 8 MiB disk"
    );

    // 12 objects of 1 MiB on a disk of 8: every one is cached (second GET a hit).
    let mut objects = Vec::new();
    for i in 0..12u64 {
        let path = format!("/obj{i}.bin");
        let data = random_bytes(MIB, 100 + i);
        origin.put(&path, Object::new(data.clone()));
        let url = origin.url(&path);
        for (n, want) in [(1, "miss"), (2, "hit")] {
            let r = get(a.proxy_addr(), &url).await.unwrap();
            assert_eq!(r.status, StatusCode::OK, "{path} #{n}");
            assert_eq!(blake3::hash(&r.body), blake3::hash(&data), "{path} #{n}");
            assert_eq!(r.header("x-shoal-cache"), Some(want), "{path} #{n}");
        }
        assert_eq!(origin.requests(&path), 1, "{path}: one origin request");
        objects.push((path, url, data));
    }
    let usage = store.usage();
    assert!(usage.bytes <= store.quota(), "{usage:?}");
    assert!(store.writable());
    let m = a.metrics();
    assert!(m.cache_evictions.get() > 0);
    // The oldest object lost chunks to eviction; the newest holds all of its.
    let held = |url: &str| {
        let meta = a.cache().cached(url).unwrap();
        meta.manifest
            .chunks
            .iter()
            .filter(|id| store.chunk_len(id).is_some())
            .count()
    };
    assert!(held(&objects[0].1) < 16, "object 0 evicted");
    assert_eq!(held(&objects[11].1), 16, "object 11 whole on disk");

    // Larger than the disk: streamed through, not recorded, no Range repairs.
    let big = random_bytes(12 * MIB, 7);
    origin.put("/big.bin", Object::new(big.clone()));
    let big_url = origin.url("/big.bin");
    for n in 1..=2u64 {
        let r = get(a.proxy_addr(), &big_url).await.unwrap();
        assert_eq!(r.status, StatusCode::OK);
        assert_eq!(blake3::hash(&r.body), blake3::hash(&big));
        assert_ne!(r.header("x-shoal-cache"), Some("hit"));
        assert_eq!(origin.requests("/big.bin"), n, "a plain GET each time");
    }
    assert_eq!(origin.range_requests("/big.bin"), 0);
    assert!(a.cache().cached(&big_url).is_none(), "not recorded");
    assert_eq!(m.cache_too_large.get(), 2);

    // Another program fills the disk: writes meet ENOSPC (or the refreshed quota),
    // old chunks are evicted and the next object is cached all the same.
    let ballast = fill_disk(fs.path(), 128 * 1024);
    let late = random_bytes(MIB, 999);
    origin.put("/late.bin", Object::new(late.clone()));
    let late_url = origin.url("/late.bin");
    for want in ["miss", "hit"] {
        let r = get(a.proxy_addr(), &late_url).await.unwrap();
        assert_eq!(blake3::hash(&r.body), blake3::hash(&late));
        assert_eq!(r.header("x-shoal-cache"), Some(want));
    }
    assert_eq!(origin.requests("/late.bin"), 1);
    assert_eq!(held(&late_url), 16, "late object whole on disk");
    assert!(store.writable(), "ENOSPC does not switch the store off");
    eprintln!(
        "quota after the ballast: {} bytes, usage {:?}, skipped no_space {}",
        store.quota(),
        store.usage(),
        m.cache_write_skipped.with_label_values(&["no_space"]).get()
    );
    std::fs::remove_file(ballast).unwrap();
    drop(store);
    a.shutdown().await;

    // Read-only disk: a restarted agent serves what it holds, fetches nothing.
    if !fs.remount_ro() {
        eprintln!("SKIP read-only part: remount,ro failed");
        return;
    }
    let b = agent::start(cfg).await.unwrap();
    let before = origin.requests("/late.bin");
    let r = get(b.proxy_addr(), &late_url).await.unwrap();
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(blake3::hash(&r.body), blake3::hash(&late));
    assert_eq!(r.header("x-shoal-cache"), Some("hit"));
    assert_eq!(origin.requests("/late.bin"), before, "no origin request");
    assert_eq!(origin.range_requests("/late.bin"), 0, "no repair");
    let ready = request(
        b.admin_addr(),
        Method::GET,
        &format!("http://{}/ready", b.admin_addr()),
        &[],
    )
    .await
    .unwrap();
    assert_eq!(ready.status, StatusCode::OK);
    // A new object is served but cannot be written: skipped and counted.
    let fresh = random_bytes(300 * 1024, 4242);
    origin.put("/new.bin", Object::new(fresh.clone()));
    let r = get(b.proxy_addr(), &origin.url("/new.bin")).await.unwrap();
    assert_eq!(blake3::hash(&r.body), blake3::hash(&fresh));
    let skipped = b
        .metrics()
        .cache_write_skipped
        .with_label_values(&["read_only"])
        .get();
    assert!(skipped > 0, "read-only skips counted");
    assert!(b.cache().cached(&origin.url("/new.bin")).is_none());
    b.shutdown().await;
}
