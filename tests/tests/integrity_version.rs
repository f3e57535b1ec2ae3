//! One version per object (flow 7 of the design): an origin that changes the object
//! during a fill and ignores `If-Range`, or answers a range other than the one asked
//! for, must never make the agent serve, cache or publish an object made of two
//! versions (or of misplaced bytes).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use bytes::Bytes;
use http::StatusCode;
use shoal_agent::app::RunningAgent;
use shoal_proto::{ChunkId, ObjectKey, Validator};
use shoal_tests::agent::{self, TEST_CHUNK};
use shoal_tests::client::{Reply, get};
use shoal_tests::random_bytes;
use shoal_tests::swarm::{TestSwarm, ip};
use shoal_tests::version_origin::{ChangingOrigin, Switch, Version};

const SIZE: usize = 2 << 20;

fn versions(seed: u64) -> (Version, Version) {
    (
        Version::new(random_bytes(SIZE, seed), 1),
        Version::new(random_bytes(SIZE, seed + 1), 2),
    )
}

fn ids(b: &Bytes) -> Vec<ChunkId> {
    b.chunks(TEST_CHUNK as usize).map(ChunkId::of).collect()
}

/// GET through `proxy` with a deadline; `Err` if the response was cut.
async fn fetch(proxy: std::net::SocketAddr, url: &str) -> anyhow::Result<Reply> {
    tokio::time::timeout(Duration::from_secs(30), get(proxy, url))
        .await
        .expect("request did not finish within 30 s")
}

/// A response the agent finished cleanly holds exactly one version's bytes.
fn assert_not_mixed(r: &anyhow::Result<Reply>, v1: &Version, v2: &Version) {
    if let Ok(r) = r {
        let h = blake3::hash(&r.body);
        assert!(
            h == blake3::hash(&v1.bytes) || h == blake3::hash(&v2.bytes),
            "a clean {} of {} bytes that is neither version (x-shoal-cache {:?})",
            r.status,
            r.body.len(),
            r.header("x-shoal-cache")
        );
    }
}

fn changed(a: &RunningAgent) -> u64 {
    a.metrics().origin_changed.get()
}

/// Every id the tracker holds for `key` is the id of `want`'s chunk at that index.
/// Waits (up to 10 s) until it holds `at_least` of them; returns how many it holds.
async fn tracker_ids_are(
    s: &TestSwarm,
    asker: usize,
    key: ObjectKey,
    want: &[ChunkId],
    at_least: usize,
) -> usize {
    let tracker = s.agent(asker).swarm().expect("swarm").tracker().clone();
    let end = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let resp = tracker.sync(tracker.request(key.clone())).await.unwrap();
        for i in &resp.ids {
            assert_eq!(
                Some(&i.id),
                want.get(i.index as usize),
                "tracker holds a foreign id for chunk {}",
                i.index
            );
        }
        if resp.ids.len() >= at_least || tokio::time::Instant::now() > end {
            assert!(
                resp.ids.len() >= at_least,
                "tracker holds {} ids",
                resp.ids.len()
            );
            return resp.ids.len();
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// (a) A leased swarm fill of v1 whose origin switches to v2 after four ranges.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn swarm_fill_stops_when_the_origin_changes() {
    let mut s = TestSwarm::builder()
        .net(81)
        .agents(1)
        .spare(1)
        .spawn()
        .await
        .unwrap();
    let (v1, v2) = versions(81);
    let origin = ChangingOrigin::start(
        &ip(81, 3).to_string(),
        v1.clone(),
        v2.clone(),
        Switch::NewVersion,
    )
    .await
    .unwrap();
    let url = origin.url("/release.bin");
    origin.switch_after_ranges(4);
    let a = s.agent(0).proxy_addr();

    let r = fetch(a, &url).await;
    assert_not_mixed(&r, &v1, &v2);
    assert!(r.is_err(), "the client of the broken fill gets a reset");
    assert!(changed(s.agent(0)) >= 1, "the change was counted");
    assert!(s.agent(0).cache().cached(&url).is_none(), "nothing cached");
    assert!(origin.ranges() > 4, "the fill went past the switch");

    // The next request starts a new version: pure v2, then a hit of the same.
    let r = fetch(a, &url).await.unwrap();
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(blake3::hash(&r.body), blake3::hash(&v2.bytes));
    let r = fetch(a, &url).await.unwrap();
    assert_eq!(r.header("x-shoal-cache"), Some("hit"));
    assert_eq!(blake3::hash(&r.body), blake3::hash(&v2.bytes));

    // Nothing of v2 was published under v1's key; a second agent gets pure v2.
    let late = s.add_agent().await.unwrap();
    let v1_key =
        ObjectKey::versioned(&url, &Validator::ETag(v1.etag.clone()), SIZE as u64).unwrap();
    let n = tracker_ids_are(&s, late, v1_key, &ids(&v1.bytes), 0).await;
    eprintln!("the tracker holds {n} ids (all v1's) for v1's key");
    let v2_key =
        ObjectKey::versioned(&url, &Validator::ETag(v2.etag.clone()), SIZE as u64).unwrap();
    let all = ids(&v2.bytes).len();
    tracker_ids_are(&s, late, v2_key, &ids(&v2.bytes), all).await;
    let r = fetch(s.agent(late).proxy_addr(), &url).await.unwrap();
    assert_eq!(blake3::hash(&r.body), blake3::hash(&v2.bytes));
    s.shutdown().await;
}

/// A swarm fill whose origin keeps v1's validators but answers another range.
async fn swarm_refuses(net: u8, how: Switch) {
    let mut s = TestSwarm::builder()
        .net(net)
        .agents(1)
        .spare(1)
        .spawn()
        .await
        .unwrap();
    let (v1, v2) = versions(u64::from(net));
    let origin = ChangingOrigin::start(&ip(net, 3).to_string(), v1.clone(), v2.clone(), how)
        .await
        .unwrap();
    let url = origin.url("/release.bin");
    origin.switch_after_ranges(4);
    let a = s.agent(0).proxy_addr();

    let r = fetch(a, &url).await;
    assert_not_mixed(&r, &v1, &v2);
    if let Ok(r) = &r {
        // Neither version in the wrong place: only v1 could be clean here.
        assert_eq!(blake3::hash(&r.body), blake3::hash(&v1.bytes));
    }
    assert!(
        r.is_err(),
        "{how:?}: the client of the refused fill gets a reset"
    );
    assert!(changed(s.agent(0)) >= 1, "{how:?}: counted");
    assert!(
        s.agent(0).cache().cached(&url).is_none(),
        "{how:?}: nothing cached"
    );

    // Published ids (from the ranges before the lie) are v1's own.
    let late = s.add_agent().await.unwrap();
    let v1_key =
        ObjectKey::versioned(&url, &Validator::ETag(v1.etag.clone()), SIZE as u64).unwrap();
    let n = tracker_ids_are(&s, late, v1_key.clone(), &ids(&v1.bytes), 0).await;
    eprintln!("{how:?}: the tracker holds {n} ids (all v1's) for v1's key");

    // Fixed, the origin is filled from again, cleanly, and every id is v1's.
    origin.honest();
    let r = fetch(a, &url).await.unwrap();
    assert_eq!(blake3::hash(&r.body), blake3::hash(&v1.bytes));
    let all = ids(&v1.bytes).len();
    tracker_ids_are(&s, late, v1_key, &ids(&v1.bytes), all).await;
    s.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn swarm_fill_refuses_a_shifted_content_range() {
    swarm_refuses(82, Switch::ShiftRange).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn swarm_fill_refuses_another_complete_length() {
    swarm_refuses(83, Switch::OtherLength).await;
}

/// (b) The cache-mode repair path: a corrupt chunk on disk is fetched again with a
/// range request from an origin that changed (or lies about the range).
async fn repair_refuses(net: u8, how: Switch) {
    shoal_tests::logs();
    let dir = tempfile::tempdir().unwrap();
    let (v1, v2) = versions(u64::from(net));
    let origin = ChangingOrigin::start(&ip(net, 1).to_string(), v1.clone(), v2.clone(), how)
        .await
        .unwrap();
    let url = origin.url("/pool/x.deb");
    let mut cfg = agent::config(&ip(net, 10).to_string(), dir.path());
    cfg.cache.memory_size = bytesize::ByteSize::b(0);
    cfg.cache.freshness = Duration::from_secs(3600);
    let a = agent::start(cfg).await.unwrap();
    let r = fetch(a.proxy_addr(), &url).await.unwrap();
    assert_eq!(blake3::hash(&r.body), blake3::hash(&v1.bytes));
    let m = a.cache().cached(&url).expect("v1 cached");
    let id = m.manifest.chunks[5].to_hex();
    let file = dir.path().join("chunks").join(&id[..2]).join(&id);
    let mut b = std::fs::read(&file).unwrap();
    b[100] ^= 0xff;
    std::fs::write(&file, b).unwrap();

    origin.switch_now();
    let r = fetch(a.proxy_addr(), &url).await;
    assert_not_mixed(&r, &v1, &v2);
    assert!(r.is_err(), "{how:?}: the response is cut at the bad chunk");
    assert_eq!(origin.ranges(), 1, "{how:?}: one repair attempt");
    assert_eq!(changed(&a), 1, "{how:?}: counted");
    assert!(
        a.cache().cached(&url).is_none(),
        "{how:?}: object forgotten"
    );

    // The next request fetches the origin's current version whole.
    let want = if how == Switch::NewVersion { &v2 } else { &v1 };
    let r = fetch(a.proxy_addr(), &url).await.unwrap();
    assert_eq!(r.status, StatusCode::OK);
    assert_ne!(r.header("x-shoal-cache"), Some("hit"));
    assert_eq!(blake3::hash(&r.body), blake3::hash(&want.bytes));
    let r = fetch(a.proxy_addr(), &url).await.unwrap();
    assert_eq!(r.header("x-shoal-cache"), Some("hit"));
    assert_eq!(blake3::hash(&r.body), blake3::hash(&want.bytes));
    a.shutdown().await;
}

#[tokio::test]
async fn repair_stops_when_the_origin_changes() {
    repair_refuses(84, Switch::NewVersion).await;
}

#[tokio::test]
async fn repair_refuses_a_shifted_content_range() {
    repair_refuses(85, Switch::ShiftRange).await;
}

#[tokio::test]
async fn repair_refuses_another_complete_length() {
    repair_refuses(86, Switch::OtherLength).await;
}
