//! Stale-if-error (RFC 5861): an object whose freshness ran out is revalidated; when
//! the origin answers 5xx, refuses the connection or stalls past the header timeout,
//! the stale copy is served (with `Age`), within the window, unless the origin said
//! `must-revalidate`. Plain cache mode and the swarm (HEAD revalidation) path.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, SystemTime};

use http::StatusCode;
use shoal_agent::app::RunningAgent;
use shoal_agent::config::Config;
use shoal_agent::object::meta::unix_ms;
use shoal_tests::agent;
use shoal_tests::client::{eventually, get};
use shoal_tests::fault_origin::{FaultOrigin, Mode};
use shoal_tests::random_bytes;
use shoal_tests::swarm::TestSwarm;

const FRESH: Duration = Duration::from_millis(200);
const IP: &str = "127.0.61.1";

/// What the client gets once the origin fails, and the agent it came from.
struct Case {
    origin: FaultOrigin,
    agent: RunningAgent,
    _dir: tempfile::TempDir,
    url: String,
}

/// Starts a fault origin serving 300 KiB with `headers` and an agent (tweaked),
/// fetches the object once, and waits until it is cached and stale.
async fn cached_then_stale(
    seed: u64,
    headers: &[(&str, &str)],
    tweak: impl FnOnce(&mut Config),
) -> Case {
    shoal_tests::logs();
    let origin = FaultOrigin::start(IP, random_bytes(300 * 1024, seed), headers)
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = agent::config(IP, dir.path());
    cfg.cache.freshness = FRESH;
    cfg.origin.header_timeout = Duration::from_millis(300);
    tweak(&mut cfg);
    let agent = agent::start(cfg).await.unwrap();
    let url = origin.url("/obj.bin");
    let first = get(agent.proxy_addr(), &url).await.unwrap();
    assert_eq!(first.status, StatusCode::OK);
    assert_eq!(blake3::hash(&first.body), blake3::hash(origin.body()));
    wait_stale(&agent, &url, Duration::ZERO).await;
    Case {
        origin,
        agent,
        _dir: dir,
        url,
    }
}

/// Waits until the cached `url` is older than its freshness plus `extra`.
async fn wait_stale(agent: &RunningAgent, url: &str, extra: Duration) {
    let limit = (FRESH + extra).as_millis() as u64 + 20;
    assert!(
        eventually(Duration::from_secs(10), || {
            agent
                .cache()
                .cached(url)
                .is_some_and(|m| unix_ms(SystemTime::now()) > m.validated_at_ms + limit)
        })
        .await,
        "{url} never cached or never stale"
    );
}

/// The stale copy was served: same bytes, `Age`, marked stale, counted.
fn assert_stale(c: &Case, reply: &shoal_tests::client::Reply, served: u64) {
    assert_eq!(reply.status, StatusCode::OK, "{:?}", reply.body);
    assert_eq!(blake3::hash(&reply.body), blake3::hash(c.origin.body()));
    let age: u64 = reply.header("age").expect("Age header").parse().unwrap();
    assert!(age < 60, "age {age}");
    assert_eq!(reply.header("x-shoal-cache"), Some("stale"));
    assert_eq!(c.agent.metrics().stale_served.get(), served);
}

#[tokio::test]
async fn stale_served_on_503_refused_and_stall() {
    let c = cached_then_stale(1, &[], |_| {}).await;
    let before = c.origin.conditional();

    c.origin.set_mode(Mode::Status(503));
    let r = get(c.agent.proxy_addr(), &c.url).await.unwrap();
    assert_stale(&c, &r, 1);
    assert_eq!(c.origin.conditional(), before + 1, "revalidation was tried");

    c.origin.set_mode(Mode::Stall);
    let r = get(c.agent.proxy_addr(), &c.url).await.unwrap();
    assert_stale(&c, &r, 2);

    c.origin.stop();
    let r = get(c.agent.proxy_addr(), &c.url).await.unwrap();
    assert_stale(&c, &r, 3);
    // Still the same cached version: nothing was refetched or forgotten.
    assert!(c.agent.cache().cached(&c.url).is_some());
    c.agent.shutdown().await;
}

#[tokio::test]
async fn must_revalidate_passes_the_error() {
    let c = cached_then_stale(
        2,
        &[("cache-control", "max-age=0, must-revalidate")],
        |_| {},
    )
    .await;
    c.origin.set_mode(Mode::Status(503));
    let r = get(c.agent.proxy_addr(), &c.url).await.unwrap();
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(&r.body[..], b"origin says 503\n");
    c.origin.stop();
    let r = get(c.agent.proxy_addr(), &c.url).await.unwrap();
    assert_eq!(r.status, StatusCode::BAD_GATEWAY);
    assert_eq!(c.agent.metrics().stale_served.get(), 0);
    c.agent.shutdown().await;
}

#[tokio::test]
async fn window_zero_passes_the_error() {
    let c = cached_then_stale(3, &[], |cfg| cfg.cache.stale_if_error = Duration::ZERO).await;
    c.origin.set_mode(Mode::Status(500));
    let r = get(c.agent.proxy_addr(), &c.url).await.unwrap();
    assert_eq!(r.status, StatusCode::INTERNAL_SERVER_ERROR);
    c.origin.set_mode(Mode::Stall);
    let r = get(c.agent.proxy_addr(), &c.url).await.unwrap();
    assert_eq!(r.status, StatusCode::GATEWAY_TIMEOUT);
    assert_eq!(c.agent.metrics().stale_served.get(), 0);
    c.agent.shutdown().await;
}

/// Within the window the stale copy is served; after it the error passes. The
/// origin's own `stale-if-error=N` replaces the configured window.
#[tokio::test]
async fn after_the_window_the_error_passes() {
    let window = Duration::from_secs(2);
    let c = cached_then_stale(4, &[], |cfg| cfg.cache.stale_if_error = window).await;
    c.origin.set_mode(Mode::Status(502));
    let r = get(c.agent.proxy_addr(), &c.url).await.unwrap();
    assert_stale(&c, &r, 1);
    wait_stale(&c.agent, &c.url, window).await;
    let r = get(c.agent.proxy_addr(), &c.url).await.unwrap();
    assert_eq!(r.status, StatusCode::BAD_GATEWAY);
    assert_eq!(&r.body[..], b"origin says 502\n");
    c.agent.shutdown().await;

    // The configured window is long, the origin's is 0 s: the error passes.
    let c = cached_then_stale(
        5,
        &[("cache-control", "max-age=0, stale-if-error=0")],
        |_| {},
    )
    .await;
    c.origin.set_mode(Mode::Status(503));
    let r = get(c.agent.proxy_addr(), &c.url).await.unwrap();
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE);
    c.agent.shutdown().await;
}

/// The swarm path revalidates with a HEAD: a 503 there (then on the GET it falls
/// back to) and a refused connection both serve the stale copy.
#[tokio::test]
async fn swarm_head_revalidation_serves_stale() {
    let sw = TestSwarm::builder()
        .agents(1)
        .net(71)
        .tweak(|_, c| c.cache.freshness = FRESH)
        .spawn()
        .await
        .unwrap();
    let origin = FaultOrigin::start("127.0.71.1", random_bytes(400 * 1024, 6), &[])
        .await
        .unwrap();
    let url = origin.url("/swarm.bin");
    let a = sw.agent(0);
    let first = get(a.proxy_addr(), &url).await.unwrap();
    assert_eq!(first.status, StatusCode::OK);
    assert_eq!(blake3::hash(&first.body), blake3::hash(origin.body()));
    assert!(
        a.metrics()
            .origin_requests
            .with_label_values(&["head"])
            .get()
            >= 1,
        "went through the swarm"
    );
    wait_stale(a, &url, Duration::ZERO).await;

    origin.set_mode(Mode::Status(503));
    let r = get(a.proxy_addr(), &url).await.unwrap();
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(blake3::hash(&r.body), blake3::hash(origin.body()));
    assert!(r.header("age").is_some());
    assert_eq!(a.metrics().stale_served.get(), 1);

    origin.stop();
    let r = get(a.proxy_addr(), &url).await.unwrap();
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(blake3::hash(&r.body), blake3::hash(origin.body()));
    assert_eq!(r.header("x-shoal-cache"), Some("stale"));
    assert_eq!(a.metrics().stale_served.get(), 2);
    sw.shutdown().await;
}
