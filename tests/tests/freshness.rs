//! Freshness from the origin's `Cache-Control` (RFC 9111 §4.2.1): `no-cache`,
//! `max-age=0` and `s-maxage=0` are revalidated on every request, a long `max-age`
//! (or `s-maxage`) is served without asking the origin even when `cache.freshness`
//! is zero, a `304` carrying a new `Cache-Control` replaces the stored one, and a
//! response that says nothing gets `cache.freshness`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::time::Duration;

use http::StatusCode;
use shoal_tests::client::{eventually, get};
use shoal_tests::{Object, Origin, agent, random_bytes};

const IP: &str = "127.0.62.1";

async fn fetch(proxy: SocketAddr, url: &str, want: &[u8]) -> shoal_tests::client::Reply {
    let r = get(proxy, url).await.unwrap();
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(blake3::hash(&r.body), blake3::hash(want), "{url}");
    r
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn origin_cache_control_sets_how_long_a_copy_is_served_unasked() {
    shoal_tests::logs();
    let origin = Origin::start(IP).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = agent::config(IP, dir.path());
    // Without a lifetime from the origin, every copy is stale at once...
    cfg.cache.freshness = Duration::ZERO;
    let a = agent::start(cfg).await.unwrap();
    let proxy = a.proxy_addr();
    let cases: [(&str, &str, u64); 6] = [
        // (path, Cache-Control, origin requests after three GETs)
        ("/none", "", 3),
        ("/no-cache", "no-cache", 3),
        ("/max-age-0", "public, max-age=0", 3),
        ("/s-maxage-0", "max-age=3600, s-maxage=0", 3),
        // ...and a lifetime the origin gave is honoured.
        ("/max-age", "max-age=3600", 1),
        ("/s-maxage", "s-maxage=3600", 1),
    ];
    for (i, (path, cc, _)) in cases.iter().enumerate() {
        let mut obj = Object::new(random_bytes(200 * 1024, 620 + i as u64));
        if !cc.is_empty() {
            obj = obj.header("cache-control", cc);
        }
        origin.put(path, obj);
    }
    for (i, (path, cc, want)) in cases.iter().enumerate() {
        let url = origin.url(path);
        let data = random_bytes(200 * 1024, 620 + i as u64);
        fetch(proxy, &url, &data).await;
        assert!(eventually(Duration::from_secs(10), || a.cache().cached(&url).is_some()).await);
        for _ in 0..2 {
            let r = fetch(proxy, &url, &data).await;
            assert_eq!(r.header("x-shoal-cache"), Some("hit"), "{path}");
            if !cc.is_empty() {
                assert_eq!(r.header("cache-control"), Some(*cc), "{path}");
            }
        }
        assert_eq!(origin.requests(path), *want, "{path} ({cc:?})");
    }

    // A changed object behind `max-age=0` is seen on the next request.
    let url = origin.url("/max-age-0");
    let new = random_bytes(200 * 1024, 629);
    origin.put(
        "/max-age-0",
        Object::new(new.clone()).header("cache-control", "max-age=0"),
    );
    fetch(proxy, &url, &new).await;
    a.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_304_with_a_new_cache_control_replaces_the_stored_one() {
    shoal_tests::logs();
    let origin = Origin::start("127.0.62.2").await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = agent::config("127.0.62.2", dir.path());
    cfg.cache.freshness = Duration::from_secs(3600);
    let a = agent::start(cfg).await.unwrap();
    let proxy = a.proxy_addr();
    let data = random_bytes(100 * 1024, 630);
    let obj = Object::new(data.clone());
    origin.put("/o", obj.clone().header("cache-control", "no-cache"));
    let url = origin.url("/o");
    fetch(proxy, &url, &data).await;
    assert!(eventually(Duration::from_secs(10), || a.cache().cached(&url).is_some()).await);
    // Same version (same validators), now cacheable for an hour: the 304 says so.
    origin.put("/o", obj.header("cache-control", "max-age=3600"));
    let r = fetch(proxy, &url, &data).await;
    assert_eq!(r.header("cache-control"), Some("max-age=3600"));
    assert_eq!(origin.requests("/o"), 2, "revalidated once (no-cache)");
    let m = a.cache().cached(&url).unwrap();
    assert!(
        m.repr
            .headers
            .iter()
            .any(|(n, v)| n == "cache-control" && v == "max-age=3600"),
        "{:?}",
        m.repr.headers
    );
    fetch(proxy, &url, &data).await;
    fetch(proxy, &url, &data).await;
    assert_eq!(origin.requests("/o"), 2, "fresh for an hour now");
    a.shutdown().await;
}
