//! Every origin request is counted under one reason (`shoal_origin_fetches_total`,
//! `shoal_origin_bytes_total`), and responses say where they came from
//! (`X-Shoal-Source`, `X-Shoal-Origin-Reason`).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use bytesize::ByteSize;
use http::{Method, StatusCode};
use shoal_agent::config::{Mode, Rule};
use shoal_agent::metrics::Metrics;
use shoal_tests::client::{get, request};
use shoal_tests::swarm::TestSwarm;
use shoal_tests::{Object, random_bytes};

fn fetches(m: &Metrics, reason: &str) -> u64 {
    m.origin_fetches.with_label_values(&[reason]).get()
}

fn bytes(m: &Metrics, reason: &str) -> u64 {
    m.origin_bytes.with_label_values(&[reason]).get()
}

/// Every reason's bytes added up: what the agent took from origins.
fn all_bytes(m: &Metrics) -> u64 {
    shoal_agent::origin::reason::FetchReason::ALL
        .iter()
        .map(|r| bytes(m, r.label()))
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cold_flash_crowd_is_cold_leases() {
    let s = TestSwarm::builder()
        .net(61)
        .agents(4)
        .spawn()
        .await
        .unwrap();
    let data = random_bytes(2 << 20, 61);
    s.origin.put("/crowd.bin", Object::new(data.clone()));
    let url = s.origin.url("/crowd.bin");
    let barrier = std::sync::Arc::new(tokio::sync::Barrier::new(4));
    let tasks: Vec<_> = (0..4)
        .map(|i| {
            let (p, url, b) = (s.agent(i).proxy_addr(), url.clone(), barrier.clone());
            tokio::spawn(async move {
                b.wait().await;
                get(p, &url).await
            })
        })
        .collect();
    for t in tasks {
        let r = t.await.unwrap().unwrap();
        assert_eq!(r.status, StatusCode::OK);
        assert_eq!(r.body, data);
        // A swarm fill in progress: peers and the origin, chunk by chunk.
        assert_eq!(r.header("x-shoal-source"), Some("mixed"));
        assert_eq!(r.header("x-shoal-origin-reason"), None);
    }
    let mut lease_bytes = 0;
    for i in 0..4 {
        let m = s.agent(i).metrics();
        // One HEAD per agent to learn the version; every origin byte has a reason.
        assert_eq!(fetches(m, "swarm_head"), 1, "agent {i}");
        assert_eq!(all_bytes(m), s.fetched(i).1, "agent {i}: bytes by reason");
        assert_eq!(bytes(m, "tracker_down"), 0);
        lease_bytes += bytes(m, "cold_lease");
    }
    // The origin sent about one copy, nearly all of it under leases.
    assert!(
        lease_bytes >= data.len() as u64 * 3 / 4,
        "{lease_bytes} leased bytes"
    );
    // Asked again: from the cache, no origin request.
    let before = fetches(s.agent(0).metrics(), "swarm_head");
    let r = get(s.agent(0).proxy_addr(), &url).await.unwrap();
    assert_eq!(r.body, data);
    assert_eq!(r.header("x-shoal-source"), Some("cache"));
    assert_eq!(fetches(s.agent(0).metrics(), "swarm_head"), before);
    s.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn pass_rule_and_cookie_are_relayed_with_their_reason() {
    let s = TestSwarm::builder()
        .net(62)
        .agents(1)
        .tweak(|_, c| {
            c.rules = vec![Rule {
                pattern: "/private/".into(),
                mode: Mode::Pass,
                min_size: ByteSize::b(0),
                immutable: false,
            }]
        })
        .spawn()
        .await
        .unwrap();
    let data = random_bytes(100_000, 62);
    s.origin.put("/private/x", Object::new(data.clone()));
    s.origin.put("/pub/y", Object::new(data.clone()));
    let m = s.agent(0).metrics();
    let proxy = s.agent(0).proxy_addr();

    let r = get(proxy, &s.origin.url("/private/x")).await.unwrap();
    assert_eq!(r.body, data);
    assert_eq!(r.header("x-shoal-source"), Some("origin"));
    assert_eq!(r.header("x-shoal-origin-reason"), Some("rule_pass"));
    assert_eq!(fetches(m, "rule_pass"), 1);
    assert_eq!(bytes(m, "rule_pass"), data.len() as u64);

    let url = s.origin.url("/pub/y");
    let r = request(proxy, Method::GET, &url, &[("cookie", "s=1")])
        .await
        .unwrap();
    assert_eq!(r.body, data);
    assert_eq!(r.header("x-shoal-origin-reason"), Some("private"));
    assert_eq!(fetches(m, "private"), 1);
    assert_eq!(bytes(m, "private"), data.len() as u64);
    // Relayed, not cached: nothing counted as fetched into the cache.
    assert_eq!(s.fetched(0).1, 0);
    assert_eq!(all_bytes(m), 2 * data.len() as u64);
    s.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn revalidation_is_its_own_reason() {
    let s = TestSwarm::builder()
        .net(63)
        .agents(1)
        .spawn()
        .await
        .unwrap();
    let data = random_bytes(300_000, 63);
    s.origin.put("/r", Object::new(data.clone()));
    let url = s.origin.url("/r");
    let proxy = s.agent(0).proxy_addr();
    let m = s.agent(0).metrics();
    assert_eq!(get(proxy, &url).await.unwrap().body, data);
    assert_eq!(fetches(m, "revalidate"), 0);
    let r = request(proxy, Method::GET, &url, &[("cache-control", "no-cache")])
        .await
        .unwrap();
    assert_eq!(r.body, data);
    // The swarm's HEAD revalidated the cached copy, which is served.
    assert_eq!(fetches(m, "revalidate"), 1);
    assert_eq!(fetches(m, "swarm_head"), 1, "only the first HEAD");
    assert_eq!(r.header("x-shoal-source"), Some("cache"));
    assert_eq!(bytes(m, "revalidate"), 0);
    s.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn origin_without_byte_ranges_is_not_swarmable() {
    let s = TestSwarm::builder()
        .net(64)
        .agents(1)
        .spawn()
        .await
        .unwrap();
    let data = random_bytes(300_000, 64);
    // The test origin adds `Accept-Ranges: bytes` after this; the agent reads the first.
    s.origin.put(
        "/n",
        Object::new(data.clone()).header("accept-ranges", "none"),
    );
    let url = s.origin.url("/n");
    let m = s.agent(0).metrics();
    let r = get(s.agent(0).proxy_addr(), &url).await.unwrap();
    assert_eq!(r.body, data);
    assert_eq!(r.header("x-shoal-source"), Some("origin"));
    assert_eq!(r.header("x-shoal-origin-reason"), Some("not_swarmable"));
    assert_eq!(fetches(m, "swarm_head"), 1);
    assert_eq!(fetches(m, "not_swarmable"), 1);
    assert_eq!(bytes(m, "not_swarmable"), data.len() as u64);
    assert_eq!(all_bytes(m), data.len() as u64);
    assert_eq!(s.origin.range_requests("/n"), 0);
    s.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn tracker_down_chunks_say_so() {
    let mut s = TestSwarm::builder()
        .net(65)
        .agents(1)
        .spawn()
        .await
        .unwrap();
    let data = random_bytes(1 << 20, 65);
    s.origin.put("/t", Object::new(data.clone()));
    s.stop_tracker().await;
    let m = s.agent(0).metrics();
    let r = get(s.agent(0).proxy_addr(), &s.origin.url("/t"))
        .await
        .unwrap();
    assert_eq!(r.body, data);
    assert_eq!(bytes(m, "tracker_down"), data.len() as u64);
    assert_eq!(all_bytes(m), data.len() as u64);
    let chunks = data.len() as u64 / shoal_tests::agent::TEST_CHUNK;
    assert_eq!(
        fetches(m, "tracker_down"),
        chunks,
        "one range request per chunk"
    );
    assert_eq!(fetches(m, "cold_lease") + fetches(m, "no_peer"), 0);
    s.shutdown().await;
}

/// Without a tracker: a plain fill is `cache_mode` (header and counters), the next
/// request is `cache`, and a chunk corrupted on disk is fetched again as
/// `verify_failed`.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cache_mode_fill_then_disk_repair() {
    shoal_tests::logs();
    let dir = tempfile::tempdir().unwrap();
    let origin = shoal_tests::Origin::start("127.0.66.1").await.unwrap();
    let data = random_bytes(400_000, 66);
    origin.put("/c", Object::new(data.clone()));
    let url = origin.url("/c");
    let mut cfg = shoal_tests::agent::config("127.0.66.10", dir.path());
    cfg.cache.memory_size = ByteSize::b(0);
    let a = shoal_tests::agent::start(cfg).await.unwrap();
    let m = a.metrics();

    let r = get(a.proxy_addr(), &url).await.unwrap();
    assert_eq!(r.body, data);
    assert_eq!(r.header("x-shoal-source"), Some("origin"));
    assert_eq!(r.header("x-shoal-origin-reason"), Some("cache_mode"));
    assert_eq!(fetches(m, "cache_mode"), 1);
    assert_eq!(bytes(m, "cache_mode"), data.len() as u64);

    let meta = a.cache().cached(&url).expect("cached");
    let id = meta.manifest.chunks[2].to_hex();
    let file = dir.path().join("chunks").join(&id[..2]).join(&id);
    let mut b = std::fs::read(&file).unwrap();
    b[10] ^= 0xff;
    std::fs::write(&file, b).unwrap();

    let r = get(a.proxy_addr(), &url).await.unwrap();
    assert_eq!(r.body, data, "repaired from the origin");
    assert_eq!(r.header("x-shoal-source"), Some("cache"));
    assert_eq!(r.header("x-shoal-origin-reason"), None);
    assert_eq!(fetches(m, "verify_failed"), 1);
    let chunk = shoal_tests::agent::TEST_CHUNK;
    assert_eq!(bytes(m, "verify_failed"), chunk);
    assert_eq!(fetches(m, "cache_mode"), 1, "no second plain GET");
    assert_eq!(all_bytes(m), data.len() as u64 + chunk);
    a.shutdown().await;
}
