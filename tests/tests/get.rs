//! `shoal-agent get`, prefetch and `status` against a real agent and origin: exact
//! bytes, digests, resume, one exit code per failure kind, and the cache filled by a
//! prefetch.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::time::Duration;

use sha2::{Digest, Sha256};
use shoal_agent::app::RunningAgent;
use shoal_agent::get::partial::{self, Meta};
use shoal_agent::get::progress::Mode;
use shoal_agent::get::{self, Endpoint, GetError, Options, Report};
use shoal_tests::agent;
use shoal_tests::client::{eventually, get as proxy_get};
use shoal_tests::{Object, Origin, random_bytes};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

async fn setup(ip: &str) -> (Origin, RunningAgent, tempfile::TempDir, tempfile::TempDir) {
    shoal_tests::logs();
    let origin = Origin::start(ip).await.unwrap();
    let cache = tempfile::tempdir().unwrap();
    let a = agent::start(agent::config(ip, cache.path())).await.unwrap();
    (origin, a, cache, tempfile::tempdir().unwrap())
}

fn opts(a: &RunningAgent, url: &str, out: &Path) -> Options {
    Options {
        url: get::parse_url(url).unwrap(),
        out: out.to_path_buf(),
        agent: Endpoint::from_addr(a.proxy_addr()),
        digest: None,
        progress: Mode::Quiet,
    }
}

fn sha256(b: &[u8]) -> String {
    hex::encode(Sha256::digest(b))
}

fn served_total(a: &RunningAgent) -> u64 {
    ["cache", "peer", "origin"]
        .iter()
        .map(|s| a.metrics().bytes_served.with_label_values(&[s]).get())
        .sum()
}

#[tokio::test]
async fn writes_the_exact_bytes_and_no_part() {
    let (origin, a, _c, out) = setup("127.0.0.141").await;
    let data = random_bytes(700_001, 41);
    origin.put("/f.bin", Object::new(data.clone()));
    let file = out.path().join("f.bin");
    let r = get::download(&opts(&a, &origin.url("/f.bin"), &file))
        .await
        .unwrap();
    assert_eq!(
        r,
        Report {
            bytes: 700_001,
            resumed_from: 0,
            cache: Some("miss".into()),
        }
    );
    assert_eq!(sha256(&std::fs::read(&file).unwrap()), sha256(&data));
    assert!(!partial::part_path(&file).exists());
    assert!(!partial::meta_path(&file).exists());
}

#[tokio::test]
async fn digest_match_keeps_the_file_mismatch_deletes_everything() {
    let (origin, a, _c, out) = setup("127.0.0.142").await;
    let data = random_bytes(300_000, 42);
    origin.put("/d.bin", Object::new(data.clone()));
    let url = origin.url("/d.bin");

    let good = out.path().join("good");
    let mut o = opts(&a, &url, &good);
    o.digest = Some(format!("sha256:{}", sha256(&data)).parse().unwrap());
    get::download(&o).await.unwrap();
    assert_eq!(std::fs::read(&good).unwrap(), data);

    let b3 = out.path().join("b3");
    let mut o = opts(&a, &url, &b3);
    o.digest = Some(
        format!("blake3:{}", blake3::hash(&data).to_hex())
            .parse()
            .unwrap(),
    );
    get::download(&o).await.unwrap();
    assert_eq!(std::fs::read(&b3).unwrap(), data);

    let bad = out.path().join("bad");
    let mut o = opts(&a, &url, &bad);
    o.digest = Some(format!("sha256:{}", sha256(b"other")).parse().unwrap());
    let e = get::download(&o).await.unwrap_err();
    assert!(matches!(e, GetError::Digest { .. }), "{e}");
    assert_eq!(e.exit_code(), 6);
    assert!(!bad.exists(), "a mismatching download must not be kept");
    assert!(!partial::part_path(&bad).exists());
    assert!(!partial::meta_path(&bad).exists());
}

#[tokio::test]
async fn resume_asks_only_for_the_rest() {
    let (origin, a, _c, out) = setup("127.0.0.143").await;
    let data = random_bytes(1_000_000, 43);
    let obj = Object::new(data.clone());
    let etag = obj.etag.clone().unwrap();
    origin.put("/r.bin", obj);
    let url = origin.url("/r.bin");
    let file = out.path().join("r.bin");
    let half = 500_000;
    std::fs::write(partial::part_path(&file), &data[..half]).unwrap();
    let meta = Meta {
        url: get::parse_url(&url).unwrap().to_string(),
        validator: etag,
        total: Some(data.len() as u64),
    };
    partial::save(&file, &meta).await.unwrap();

    let mut o = opts(&a, &url, &file);
    // The digest covers the bytes already in the part too.
    o.digest = Some(format!("sha256:{}", sha256(&data)).parse().unwrap());
    let r = get::download(&o).await.unwrap();
    assert_eq!(r.resumed_from, half as u64);
    assert_eq!(r.bytes, data.len() as u64);
    assert_eq!(sha256(&std::fs::read(&file).unwrap()), sha256(&data));
    // The agent sent the client the second half only.
    assert_eq!(served_total(&a), (data.len() - half) as u64);
    // One fill of the whole object (a cold agent); the rest, far past the fill's
    // start, may come from a `range_ahead` request of its own meanwhile.
    let ahead = origin.range_requests("/r.bin");
    assert!(ahead <= 1, "{ahead} range requests");
    assert_eq!(origin.requests("/r.bin") - ahead, 1);
    assert!(!partial::meta_path(&file).exists());
}

#[tokio::test]
async fn resume_of_another_version_restarts_from_zero() {
    let (origin, a, _c, out) = setup("127.0.0.144").await;
    let data = random_bytes(200_000, 44);
    origin.put("/v.bin", Object::new(data.clone()));
    let url = origin.url("/v.bin");
    let file = out.path().join("v.bin");
    // A part of an older version: other bytes, another ETag.
    std::fs::write(partial::part_path(&file), vec![7u8; 100_000]).unwrap();
    let meta = Meta {
        url: get::parse_url(&url).unwrap().to_string(),
        validator: "\"older\"".into(),
        total: Some(200_000),
    };
    partial::save(&file, &meta).await.unwrap();
    let r = get::download(&opts(&a, &url, &file)).await.unwrap();
    assert_eq!(
        r.resumed_from, 0,
        "If-Range did not match: a 200, from zero"
    );
    assert_eq!(std::fs::read(&file).unwrap(), data);
    assert_eq!(served_total(&a), data.len() as u64);
}

#[tokio::test]
async fn broken_transfer_keeps_the_part_and_exits_8() {
    shoal_tests::logs();
    let out = tempfile::tempdir().unwrap();
    // An "agent" that promises 1000 bytes, sends 400 and hangs up.
    let l = tokio::net::TcpListener::bind("127.0.0.145:0")
        .await
        .unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        let (mut s, _) = l.accept().await.unwrap();
        let mut buf = [0u8; 4096];
        let _ = s.read(&mut buf).await.unwrap();
        s.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 1000\r\netag: \"e1\"\r\n\r\n")
            .await
            .unwrap();
        s.write_all(&[1u8; 400]).await.unwrap();
    });
    let file = out.path().join("cut.bin");
    let o = Options {
        url: get::parse_url("http://example.invalid/cut.bin").unwrap(),
        out: file.clone(),
        agent: Endpoint::from_addr(addr),
        digest: None,
        progress: Mode::Lines,
    };
    let e = get::download(&o).await.unwrap_err();
    assert!(matches!(e, GetError::Interrupted { got: 400, .. }), "{e}");
    assert_eq!(e.exit_code(), 8);
    assert!(!file.exists());
    assert_eq!(
        std::fs::read(partial::part_path(&file)).unwrap(),
        [1u8; 400]
    );
    let (len, meta) = partial::resumable(&file, "http://example.invalid/cut.bin")
        .await
        .expect("resumable");
    assert_eq!((len, meta.validator.as_str()), (400, "\"e1\""));
}

#[tokio::test]
async fn agent_down_exits_3() {
    let out = tempfile::tempdir().unwrap();
    let l = std::net::TcpListener::bind("127.0.0.146:0").unwrap();
    let addr = l.local_addr().unwrap();
    drop(l);
    let o = Options {
        url: get::parse_url("http://127.0.0.146:1/x").unwrap(),
        out: out.path().join("x"),
        agent: Endpoint::from_addr(addr),
        digest: None,
        progress: Mode::Quiet,
    };
    let e = get::download(&o).await.unwrap_err();
    assert!(matches!(e, GetError::AgentDown { .. }), "{e}");
    assert_eq!(e.exit_code(), 3);
    let e = get::status::status(&Endpoint::from_addr(addr))
        .await
        .unwrap_err();
    assert_eq!(e.exit_code(), 3);
}

#[tokio::test]
async fn origin_404_exits_4_and_origin_down_exits_5() {
    let (origin, a, _c, out) = setup("127.0.0.147").await;
    let file = out.path().join("missing");
    let e = get::download(&opts(&a, &origin.url("/missing"), &file))
        .await
        .unwrap_err();
    assert!(
        matches!(&e, GetError::Client { status, .. } if status.as_u16() == 404),
        "{e}"
    );
    assert_eq!(e.exit_code(), 4);
    assert!(!file.exists() && !partial::part_path(&file).exists());

    let l = std::net::TcpListener::bind("127.0.0.147:0").unwrap();
    let dead = l.local_addr().unwrap();
    drop(l);
    let e = get::download(&opts(&a, &format!("http://{dead}/x"), &file))
        .await
        .unwrap_err();
    assert!(matches!(e, GetError::Server { .. }), "{e}");
    assert_eq!(e.exit_code(), 5);
}

#[tokio::test]
async fn prefetch_fills_the_cache_without_a_client() {
    let (origin, a, _c, _out) = setup("127.0.0.148").await;
    let data = random_bytes(400_000, 48);
    origin.put("/p.bin", Object::new(data.clone()));
    let url = origin.url("/p.bin");
    let admin = Endpoint::from_addr(a.admin_addr());
    let answer = get::prefetch::prefetch(&admin, &[url.clone(), "ftp://x/y".into()])
        .await
        .unwrap();
    assert_eq!(answer.accepted, 1);
    assert!(answer.urls[0].accepted);
    assert!(!answer.urls[1].accepted);
    assert!(answer.urls[1].reason.is_some());
    let key = get::parse_url(&url).unwrap().to_string();
    assert!(
        eventually(Duration::from_secs(10), || a.cache().cached(&key).is_some()).await,
        "the prefetched object was not cached"
    );
    let cached = a.metrics().prefetch.with_label_values(&["cached"]).get();
    assert_eq!(cached, 1);
    assert_eq!(served_total(&a), 0, "a prefetch sends nothing to a client");
    let r = proxy_get(a.proxy_addr(), &url).await.unwrap();
    assert_eq!(r.header("x-shoal-cache"), Some("hit"));
    assert_eq!(r.body, data);
    assert_eq!(origin.requests("/p.bin"), 1);
}

#[tokio::test]
async fn prefetch_bounds_are_enforced() {
    let (_origin, a, _c, _out) = setup("127.0.0.149").await;
    let admin = Endpoint::from_addr(a.admin_addr());
    let many: Vec<String> = (0..1001).map(|i| format!("http://h/{i}")).collect();
    let e = get::prefetch::prefetch(&admin, &many).await.unwrap_err();
    assert!(
        matches!(&e, GetError::Client { status, .. } if status.as_u16() == 413),
        "{e}"
    );
    // A body over 1 MiB and a body that is not the JSON asked for.
    let big = format!("{{\"urls\": [\"{}\"]}}", "a".repeat(1 << 20));
    let raw = |body: String| {
        format!(
            "POST /v1/prefetch HTTP/1.1\r\nhost: a\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
            body.len()
        )
    };
    let resp = shoal_tests::client::raw(a.admin_addr(), raw(big).as_bytes())
        .await
        .unwrap();
    assert!(resp.starts_with("HTTP/1.1 413"), "{resp}");
    let resp = shoal_tests::client::raw(a.admin_addr(), raw("[1,2]".into()).as_bytes())
        .await
        .unwrap();
    assert!(resp.starts_with("HTTP/1.1 400"), "{resp}");
}

#[tokio::test]
async fn status_reports_fills_in_flight_and_origin_share() {
    let (origin, a, _c, _out) = setup("127.0.0.150").await;
    let data = random_bytes(600_000, 50);
    let mut obj = Object::new(data.clone());
    obj.gate_after = Some(100_000);
    origin.put("/s.bin", obj);
    let admin = Endpoint::from_addr(a.admin_addr());
    let url = origin.url("/s.bin");
    let proxy = a.proxy_addr();
    let client = tokio::spawn(async move { proxy_get(proxy, &url).await });
    let gauge = a.metrics().fills_in_flight.clone();
    assert!(eventually(Duration::from_secs(10), || gauge.get() == 1).await);
    let s = get::status::status(&admin).await.unwrap();
    assert!(s.ready);
    assert_eq!(s.fills_in_flight, Some(1.0));
    origin.release();
    let r = client.await.unwrap().unwrap();
    assert_eq!(r.body, data);
    assert!(eventually(Duration::from_secs(10), || gauge.get() == 0).await);
    let s = get::status::status(&admin).await.unwrap();
    assert_eq!(s.fills_in_flight, Some(0.0));
    assert_eq!(s.fetched, (0.0, data.len() as f64));
    let text = s.to_string();
    assert!(text.contains("origin share:    100.0%"), "{text}");
    assert!(text.contains("ready:           yes"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn prefetch_goes_through_the_swarm_and_warms_peers() {
    let s = shoal_tests::swarm::TestSwarm::builder()
        .net(141)
        .agents(2)
        .spawn()
        .await
        .unwrap();
    let data = random_bytes(2 << 20, 141);
    s.origin.put("/rel.bin", Object::new(data.clone()));
    let url = s.origin.url("/rel.bin");
    let key = get::parse_url(&url).unwrap().to_string();
    let admin = Endpoint::from_addr(s.agent(0).admin_addr());
    let answer = get::prefetch::prefetch(&admin, std::slice::from_ref(&url))
        .await
        .unwrap();
    assert_eq!(answer.accepted, 1);
    let a0 = s.agent(0);
    assert!(
        eventually(Duration::from_secs(20), || a0
            .cache()
            .cached(&key)
            .is_some())
        .await,
        "prefetch did not cache the object"
    );
    let origin_after_prefetch = s.origin.bytes_sent();
    // A p2p URL is looked up with a HEAD first: the swarm path, not a plain GET.
    assert!(s.origin.requests("/rel.bin") >= 2, "HEAD then ranges");
    // The next node fetches from the prefetched one, not from the origin.
    let file = tempfile::tempdir().unwrap();
    let out = file.path().join("rel.bin");
    let o = Options {
        url: get::parse_url(&url).unwrap(),
        out: out.clone(),
        agent: Endpoint::from_addr(s.agent(1).proxy_addr()),
        digest: Some(format!("sha256:{}", sha256(&data)).parse().unwrap()),
        progress: Mode::Quiet,
    };
    get::download(&o).await.unwrap();
    assert_eq!(sha256(&std::fs::read(&out).unwrap()), sha256(&data));
    let (peer, from_origin) = s.fetched(1);
    assert_eq!(peer, data.len() as u64, "every byte from the peer");
    assert_eq!(from_origin, 0);
    assert!(s.origin.bytes_sent() - origin_after_prefetch < 1024);
    s.shutdown().await;
}
