//! Immutable objects (digest-named URLs, `immutable = true` rules) against an origin
//! that sends no validators, with apt's `Cache-Control: max-age=0` on every request.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use bytesize::ByteSize;
use http::StatusCode;
use sha2::{Digest, Sha256};
use shoal_agent::config::{Mode, Rule};
use shoal_tests::agent;
use shoal_tests::client::{eventually, get_with};
use shoal_tests::swarm::TestSwarm;
use shoal_tests::{Object, Origin, random_bytes};

/// An object the origin serves with neither ETag nor Last-Modified.
fn bare(bytes: bytes::Bytes) -> Object {
    let mut o = Object::new(bytes);
    o.etag = None;
    o.last_modified = None;
    o
}

fn pool_rule(mode: Mode) -> Rule {
    Rule {
        pattern: "/pool/".into(),
        mode,
        min_size: ByteSize::b(0),
        immutable: true,
    }
}

const APT: &[(&str, &str)] = &[("cache-control", "max-age=0")];

#[tokio::test]
async fn by_hash_and_pool_served_from_cache_despite_max_age_0() {
    shoal_tests::logs();
    let origin = Origin::start("127.0.0.131").await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let index = random_bytes(300_001, 131);
    let deb = random_bytes(400_003, 132);
    let hex = hex::encode(Sha256::digest(&index));
    let by_hash = format!("/debian/dists/x/main/binary-amd64/by-hash/SHA256/{hex}");
    let pool = "/debian/pool/main/f/foo.deb";
    origin.put(&by_hash, bare(index.clone()));
    origin.put(pool, bare(deb.clone()));
    let mut cfg = agent::config("127.0.0.131", dir.path());
    cfg.rules.push(pool_rule(Mode::Cache));
    let a = agent::start(cfg).await.unwrap();

    for (path, data) in [(by_hash.as_str(), &index), (pool, &deb)] {
        let url = origin.url(path);
        let first = get_with(a.proxy_addr(), &url, APT).await.unwrap();
        assert_eq!(first.status, StatusCode::OK, "{path}");
        assert_eq!(blake3::hash(&first.body), blake3::hash(data), "{path}");
        assert!(
            eventually(Duration::from_secs(10), || a.cache().cached(&url).is_some()).await,
            "{path} cached"
        );
        let second = get_with(a.proxy_addr(), &url, APT).await.unwrap();
        assert_eq!(second.status, StatusCode::OK, "{path}");
        assert_eq!(second.header("x-shoal-cache"), Some("hit"), "{path}");
        assert_eq!(blake3::hash(&second.body), blake3::hash(data), "{path}");
        // no-cache and Pragma too.
        let third = get_with(
            a.proxy_addr(),
            &url,
            &[("cache-control", "no-cache"), ("pragma", "no-cache")],
        )
        .await
        .unwrap();
        assert_eq!(third.header("x-shoal-cache"), Some("hit"), "{path}");
        assert_eq!(third.body, *data, "{path}");
        assert_eq!(origin.requests(path), 1, "{path}: one origin GET");
    }
    // The same file outside the rule, without validators: passed through every time.
    origin.put("/debian/other/foo.deb", bare(deb.clone()));
    let url = origin.url("/debian/other/foo.deb");
    for _ in 0..2 {
        let r = get_with(a.proxy_addr(), &url, APT).await.unwrap();
        assert_eq!(r.body, deb);
    }
    assert_eq!(origin.requests("/debian/other/foo.deb"), 2);
    assert!(a.cache().cached(&url).is_none());
    a.shutdown().await;
}

#[tokio::test]
async fn by_hash_with_wrong_bytes_is_never_cached() {
    shoal_tests::logs();
    let origin = Origin::start("127.0.0.132").await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let claimed = random_bytes(200_000, 133);
    let served = random_bytes(200_000, 134);
    let hex = hex::encode(Sha256::digest(&claimed));
    let path = format!("/debian/dists/x/by-hash/SHA256/{hex}");
    origin.put(&path, bare(served.clone()));
    let a = agent::start(agent::config("127.0.0.132", dir.path()))
        .await
        .unwrap();
    let url = origin.url(&path);
    let first = get_with(a.proxy_addr(), &url, APT).await;
    assert!(first.is_err(), "the client sees a reset, not a clean end");
    assert!(a.cache().cached(&url).is_none());
    let second = get_with(a.proxy_addr(), &url, APT).await;
    assert!(second.is_err());
    assert_eq!(
        origin.requests(&path),
        2,
        "the second request went to the origin"
    );
    assert!(a.cache().cached(&url).is_none());
    assert!(
        a.metrics()
            .verify_failures
            .with_label_values(&["origin"])
            .get()
            >= 2
    );
    a.shutdown().await;
}

#[tokio::test]
async fn repr_digest_checked_under_an_immutable_rule() {
    shoal_tests::logs();
    let origin = Origin::start("127.0.0.133").await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    use base64::Engine as _;
    let good = random_bytes(150_000, 135);
    let b64 = |b: &[u8]| base64::engine::general_purpose::STANDARD.encode(Sha256::digest(b));
    origin.put(
        "/debian/pool/good.deb",
        bare(good.clone()).header("repr-digest", &format!("sha-256=:{}:", b64(&good))),
    );
    origin.put(
        "/debian/pool/bad.deb",
        bare(good.clone()).header("repr-digest", &format!("sha-256=:{}:", b64(b"other"))),
    );
    let mut cfg = agent::config("127.0.0.133", dir.path());
    cfg.rules.push(pool_rule(Mode::Cache));
    let a = agent::start(cfg).await.unwrap();
    let url = origin.url("/debian/pool/good.deb");
    assert_eq!(
        get_with(a.proxy_addr(), &url, APT).await.unwrap().body,
        good
    );
    assert!(eventually(Duration::from_secs(10), || a.cache().cached(&url).is_some()).await);
    let url = origin.url("/debian/pool/bad.deb");
    assert!(
        get_with(a.proxy_addr(), &url, APT).await.is_err(),
        "digest mismatch: reset"
    );
    assert!(a.cache().cached(&url).is_none());
    a.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn pool_file_without_validators_is_swarmed() {
    let s = TestSwarm::builder()
        .net(93)
        .agents(2)
        .tweak(|_, c| c.rules.push(pool_rule(Mode::P2p)))
        .spawn()
        .await
        .unwrap();
    let data = random_bytes(2 << 20, 136);
    s.origin
        .put("/debian/pool/main/b/big.deb", bare(data.clone()));
    let url = s.origin.url("/debian/pool/main/b/big.deb");
    let r = get_with(s.agent(0).proxy_addr(), &url, APT).await.unwrap();
    assert_eq!(blake3::hash(&r.body), blake3::hash(&data));
    assert!(
        eventually(Duration::from_secs(10), || s
            .agent(0)
            .cache()
            .cached(&url)
            .is_some())
        .await
    );
    let key = s
        .agent(0)
        .cache()
        .cached(&url)
        .unwrap()
        .manifest
        .key
        .clone();
    assert!(key.as_str().starts_with("u1 "), "{key}");
    let sent = s.origin.bytes_sent();
    let r = get_with(s.agent(1).proxy_addr(), &url, APT).await.unwrap();
    assert_eq!(blake3::hash(&r.body), blake3::hash(&data));
    assert!(s.fetched(1).0 > 0, "agent 1 fetched from its peer");
    assert!(
        s.origin.bytes_sent() - sent < data.len() as u64 / 2,
        "the origin sent {} more bytes",
        s.origin.bytes_sent() - sent
    );
    s.shutdown().await;
}
