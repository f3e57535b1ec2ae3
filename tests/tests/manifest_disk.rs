//! Object metadata read back from disk is not trusted: a manifest whose chunk list does
//! not match its layout, or whose chunk size is 0, is dropped when the agent starts (it
//! no longer decodes) and the object is fetched again, instead of panicking the body
//! task when it is sliced (review defect (d)1).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};

use http::StatusCode;
use shoal_tests::agent;
use shoal_tests::client::get;
use shoal_tests::{Object, Origin, random_bytes};

/// The metadata record of `url` in the cache at `dir` (see `ObjectMeta::name_for`).
fn record(dir: &Path, url: &str) -> PathBuf {
    dir.join("objects")
        .join(blake3::hash(url.as_bytes()).to_hex().as_str())
}

/// Fetches `path` through a fresh agent, rewrites its manifest on disk with `tamper`,
/// restarts the agent on the same cache and fetches again: the bytes must be right and
/// come from the origin, and the record on disk must be whole again.
async fn tampered_manifest_is_refetched(ip: &str, tamper: fn(&mut serde_json::Value)) {
    shoal_tests::logs();
    let origin = Origin::start(ip).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let data = random_bytes(300_000, 77);
    origin.put("/m.bin", Object::new(data.clone()));
    let url = origin.url("/m.bin");

    let a = agent::start(agent::config(ip, dir.path())).await.unwrap();
    let first = get(a.proxy_addr(), &url).await.unwrap();
    assert_eq!(first.status, StatusCode::OK);
    assert_eq!(first.body, data);
    a.shutdown().await;

    let path = record(dir.path(), &url);
    let mut meta: serde_json::Value = serde_json::from_slice(&std::fs::read(&path).unwrap())
        .expect("the agent wrote a JSON record");
    let chunks = meta["manifest"]["chunks"].as_array().unwrap().len();
    assert_eq!(chunks, data.len().div_ceil(agent::TEST_CHUNK as usize));
    tamper(&mut meta["manifest"]);
    std::fs::write(&path, serde_json::to_vec(&meta).unwrap()).unwrap();

    let b = agent::start(agent::config(ip, dir.path())).await.unwrap();
    let second = get(b.proxy_addr(), &url).await.unwrap();
    assert_eq!(second.status, StatusCode::OK);
    assert_eq!(blake3::hash(&second.body), blake3::hash(&data));
    assert_eq!(second.header("x-shoal-cache"), Some("miss"));
    assert_eq!(origin.requests("/m.bin"), 2, "the bad record was not used");
    // The record written by the new fill is whole again.
    let meta: serde_json::Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    assert_eq!(meta["manifest"]["chunks"].as_array().unwrap().len(), chunks);
    assert_eq!(
        meta["manifest"]["layout"]["chunk_size"].as_u64(),
        Some(agent::TEST_CHUNK)
    );
    b.shutdown().await;
}

#[tokio::test]
async fn short_chunk_list_on_disk_is_dropped_and_refetched() {
    tampered_manifest_is_refetched("127.0.0.171", |m| {
        m["chunks"].as_array_mut().unwrap().truncate(1);
    })
    .await;
}

#[tokio::test]
async fn zero_chunk_size_on_disk_is_dropped_and_refetched() {
    tampered_manifest_is_refetched("127.0.0.172", |m| {
        m["layout"]["chunk_size"] = 0.into();
    })
    .await;
}
