//! One agent as a caching HTTP proxy in front of a real origin: hits, misses,
//! single flight, HTTP semantics, verification, quota and failure handling.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use http::{Method, StatusCode};
use shoal_tests::agent::{self, TEST_CHUNK};
use shoal_tests::client::{self, eventually, get, get_with, request};
use shoal_tests::{Object, Origin, random_bytes};

async fn setup(ip: &str) -> (Origin, tempfile::TempDir) {
    shoal_tests::logs();
    (
        Origin::start(ip).await.unwrap(),
        tempfile::tempdir().unwrap(),
    )
}

#[tokio::test]
async fn miss_then_hit_fetches_origin_once() {
    let (origin, dir) = setup("127.0.0.11").await;
    let data = random_bytes(1_000_003, 1);
    origin.put("/a.bin", Object::new(data.clone()));
    let a = agent::start(agent::config("127.0.0.11", dir.path()))
        .await
        .unwrap();
    let url = origin.url("/a.bin");

    let first = get(a.proxy_addr(), &url).await.unwrap();
    assert_eq!(first.status, StatusCode::OK);
    assert_eq!(blake3::hash(&first.body), blake3::hash(&data));
    assert_eq!(first.header("x-shoal-cache"), Some("miss"));
    let second = get(a.proxy_addr(), &url).await.unwrap();
    assert_eq!(second.body, data);
    assert_eq!(second.header("x-shoal-cache"), Some("hit"));
    assert_eq!(second.header("content-length"), Some("1000003"));
    assert_eq!(second.header("accept-ranges"), Some("bytes"));
    assert!(second.header("etag").is_some());
    assert_eq!(origin.requests("/a.bin"), 1);
    let m = a.metrics();
    assert_eq!(
        m.bytes_served.with_label_values(&["cache"]).get(),
        data.len() as u64
    );
    assert_eq!(
        m.bytes_fetched.with_label_values(&["origin"]).get(),
        data.len() as u64
    );
    a.shutdown().await;
}

#[tokio::test]
async fn fifty_concurrent_clients_one_origin_fetch() {
    let (origin, dir) = setup("127.0.0.12").await;
    let data = random_bytes(3 << 20, 2);
    let mut obj = Object::new(data.clone());
    // Hold the body so every client arrives while the fetch is in flight.
    obj.gate_after = Some(100_000);
    origin.put("/big", obj);
    let a = agent::start(agent::config("127.0.0.12", dir.path()))
        .await
        .unwrap();
    let url = origin.url("/big");
    let proxy = a.proxy_addr();
    let clients: Vec<_> = (0..50)
        .map(|_| {
            tokio::spawn({
                let url = url.clone();
                async move { get(proxy, &url).await }
            })
        })
        .collect();
    assert!(eventually(Duration::from_secs(10), || origin.requests("/big") >= 1).await);
    // Let every client get its response head before the origin continues.
    assert!(
        eventually(Duration::from_secs(10), || a
            .metrics()
            .requests
            .with_label_values(&["cache", "200"])
            .get()
            >= 50)
        .await
    );
    origin.release();
    let want = blake3::hash(&data);
    for c in clients {
        let r = c.await.unwrap().unwrap();
        assert_eq!(r.status, StatusCode::OK);
        assert_eq!(blake3::hash(&r.body), want);
    }
    assert_eq!(origin.requests("/big"), 1, "single flight");
    assert_eq!(origin.bytes_sent(), data.len() as u64);
    a.shutdown().await;
}

#[tokio::test]
async fn first_bytes_arrive_before_the_origin_finishes() {
    let (origin, dir) = setup("127.0.0.13").await;
    let data = random_bytes(2 << 20, 3);
    let mut obj = Object::new(data.clone());
    obj.gate_after = Some(3 * TEST_CHUNK as usize);
    origin.put("/stream", obj);
    let a = agent::start(agent::config("127.0.0.13", dir.path()))
        .await
        .unwrap();
    // Read the head and the first chunk while the origin is still holding the rest.
    let stream = tokio::net::TcpStream::connect(a.proxy_addr())
        .await
        .unwrap();
    let (mut send, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .unwrap();
    tokio::spawn(conn);
    let req = http::Request::get(origin.url("/stream"))
        .header(http::header::HOST, origin.addr().to_string())
        .body(http_body_util::Empty::<bytes::Bytes>::new())
        .unwrap();
    let resp = send.send_request(req).await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let mut body = resp.into_body();
    use http_body_util::BodyExt;
    let first = body.frame().await.unwrap().unwrap().into_data().unwrap();
    assert_eq!(&first[..], &data[..first.len()]);
    origin.release();
    let rest = body.collect().await.unwrap().to_bytes();
    assert_eq!(first.len() + rest.len(), data.len());
    assert_eq!(&rest[..], &data[first.len()..]);
    a.shutdown().await;
}

#[tokio::test]
async fn ranges_match_the_origin_byte_for_byte() {
    let (origin, dir) = setup("127.0.0.14").await;
    let data = random_bytes(300_001, 4);
    origin.put("/r", Object::new(data.clone()));
    let a = agent::start(agent::config("127.0.0.14", dir.path()))
        .await
        .unwrap();
    let url = origin.url("/r");
    let ranges = [
        "bytes=0-0",
        "bytes=0-99",
        "bytes=65535-65536",
        "bytes=100-",
        "bytes=-500",
        "bytes=-999999",
        "bytes=299999-300000",
        "bytes=300000-",
        "bytes=400000-500000",
        "bytes=5-1",
        "bytes=abc",
        "items=0-5",
        "bytes=-0",
        // Several ranges: the test origin answers 200, the agent multipart 206
        // (tests/tests/http_semantics.rs).
    ];
    // Cold (the first request is a range) and warm.
    for round in 0..2 {
        for r in ranges {
            let want = request(origin.addr(), Method::GET, &url, &[("range", r)])
                .await
                .unwrap();
            let got = get_with(a.proxy_addr(), &url, &[("range", r)])
                .await
                .unwrap();
            assert_eq!(got.status, want.status, "round {round} {r}");
            assert_eq!(
                got.header("content-range"),
                want.header("content-range"),
                "round {round} {r}"
            );
            if want.status != StatusCode::RANGE_NOT_SATISFIABLE {
                assert_eq!(got.body, want.body, "round {round} {r}");
                assert_eq!(
                    got.header("content-length"),
                    want.header("content-length"),
                    "round {round} {r}"
                );
            }
        }
    }
    assert_eq!(
        origin.requests("/r") as usize,
        1 + 2 * ranges.len(),
        "one fill; the rest asked the origin directly"
    );
    a.shutdown().await;
}

#[tokio::test]
async fn head_and_conditional_requests() {
    let (origin, dir) = setup("127.0.0.15").await;
    let data = random_bytes(200_000, 5);
    let obj = Object::new(data.clone()).header("content-type", "application/x-test");
    let etag = obj.etag.clone().unwrap();
    let lm = obj.last_modified.clone().unwrap();
    origin.put("/h", obj);
    let a = agent::start(agent::config("127.0.0.15", dir.path()))
        .await
        .unwrap();
    let url = origin.url("/h");
    // HEAD before anything is cached goes to the origin and caches nothing.
    let h = request(a.proxy_addr(), Method::HEAD, &url, &[])
        .await
        .unwrap();
    assert_eq!(h.status, StatusCode::OK);
    assert_eq!(h.header("content-length"), Some("200000"));
    assert!(h.body.is_empty());
    get(a.proxy_addr(), &url).await.unwrap();
    let n = origin.requests("/h");
    let h = request(a.proxy_addr(), Method::HEAD, &url, &[])
        .await
        .unwrap();
    assert_eq!(
        (h.status, h.header("content-length"), h.header("etag")),
        (StatusCode::OK, Some("200000"), Some(etag.as_str()))
    );
    assert_eq!(h.header("content-type"), Some("application/x-test"));
    let r = get_with(a.proxy_addr(), &url, &[("if-none-match", &etag)])
        .await
        .unwrap();
    assert_eq!(r.status, StatusCode::NOT_MODIFIED);
    assert!(r.body.is_empty());
    let r = get_with(a.proxy_addr(), &url, &[("if-modified-since", &lm)])
        .await
        .unwrap();
    assert_eq!(r.status, StatusCode::NOT_MODIFIED);
    let r = get_with(a.proxy_addr(), &url, &[("if-none-match", "\"other\"")])
        .await
        .unwrap();
    assert_eq!((r.status, r.body.len()), (StatusCode::OK, data.len()));
    assert_eq!(origin.requests("/h"), n, "answered from cache");
    a.shutdown().await;
}

#[tokio::test]
async fn changed_origin_object_is_served_new() {
    let (origin, dir) = setup("127.0.0.16").await;
    let mut cfg = agent::config("127.0.0.16", dir.path());
    cfg.cache.freshness = Duration::ZERO;
    let a = agent::start(cfg).await.unwrap();
    let url = origin.url("/c");
    let v1 = random_bytes(150_000, 6);
    origin.put("/c", Object::new(v1.clone()));
    assert_eq!(get(a.proxy_addr(), &url).await.unwrap().body, v1);
    // Unchanged: revalidation answers 304 and the cached bytes are served.
    let r = get(a.proxy_addr(), &url).await.unwrap();
    assert_eq!(r.header("x-shoal-cache"), Some("hit"));
    assert_eq!(
        (r.body.len(), blake3::hash(&r.body)),
        (v1.len(), blake3::hash(&v1))
    );
    let sent = origin.bytes_sent();
    let v2 = random_bytes(170_000, 7);
    origin.put("/c", Object::new(v2.clone()));
    assert_eq!(get(a.proxy_addr(), &url).await.unwrap().body, v2);
    assert_eq!(origin.bytes_sent() - sent, v2.len() as u64);
    assert_eq!(get(a.proxy_addr(), &url).await.unwrap().body, v2);
    a.shutdown().await;
}

#[tokio::test]
async fn restart_keeps_the_cache() {
    let (origin, dir) = setup("127.0.0.17").await;
    let data = random_bytes(500_000, 8);
    origin.put("/p", Object::new(data.clone()));
    let url = origin.url("/p");
    let a = agent::start(agent::config("127.0.0.17", dir.path()))
        .await
        .unwrap();
    get(a.proxy_addr(), &url).await.unwrap();
    a.shutdown().await;
    let b = agent::start(agent::config("127.0.0.17", dir.path()))
        .await
        .unwrap();
    let r = get(b.proxy_addr(), &url).await.unwrap();
    assert_eq!(r.body, data);
    assert_eq!(r.header("x-shoal-cache"), Some("hit"));
    assert_eq!(origin.requests("/p"), 1);
    assert!(b.metrics().cache_chunks.get() >= (data.len() as u64).div_ceil(TEST_CHUNK) as i64);
    b.shutdown().await;
}

#[tokio::test]
async fn corrupted_chunk_is_never_served_and_is_refetched() {
    let (origin, dir) = setup("127.0.0.18").await;
    let data = random_bytes(400_000, 9);
    origin.put("/x", Object::new(data.clone()));
    let url = origin.url("/x");
    let mut cfg = agent::config("127.0.0.18", dir.path());
    cfg.cache.memory_size = bytesize::ByteSize::b(0);
    let a = agent::start(cfg.clone()).await.unwrap();
    get(a.proxy_addr(), &url).await.unwrap();
    a.shutdown().await;
    // Flip one byte in every chunk file on disk.
    let mut flipped = 0;
    for f in walk(&dir.path().join("chunks")) {
        let mut b = std::fs::read(&f).unwrap();
        let mid = b.len() / 2;
        b[mid] ^= 0xff;
        std::fs::write(&f, b).unwrap();
        flipped += 1;
    }
    assert!(flipped >= 6);
    let a = agent::start(cfg).await.unwrap();
    let r = get(a.proxy_addr(), &url).await.unwrap();
    assert_eq!(blake3::hash(&r.body), blake3::hash(&data));
    assert_eq!(
        a.metrics()
            .verify_failures
            .with_label_values(&["disk"])
            .get(),
        flipped
    );
    assert_eq!(
        origin.range_requests("/x"),
        flipped,
        "each bad chunk fetched again"
    );
    // Repaired chunks are good on disk again.
    let r = get(a.proxy_addr(), &url).await.unwrap();
    assert_eq!(r.body, data);
    assert_eq!(
        a.metrics()
            .verify_failures
            .with_label_values(&["disk"])
            .get(),
        flipped
    );
    a.shutdown().await;
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}

#[tokio::test]
async fn quota_evicts_down_to_the_low_watermark() {
    let (origin, dir) = setup("127.0.0.19").await;
    let mut cfg = agent::config("127.0.0.19", dir.path());
    cfg.cache.max_size = bytesize::ByteSize::b(2 << 20);
    cfg.cache.high_watermark = 0.9;
    cfg.cache.low_watermark = 0.5;
    let a = agent::start(cfg).await.unwrap();
    for i in 0..6u64 {
        let data = random_bytes(700_000, 100 + i);
        origin.put(&format!("/q{i}"), Object::new(data.clone()));
        let r = get(a.proxy_addr(), &origin.url(&format!("/q{i}")))
            .await
            .unwrap();
        assert_eq!(r.body, data);
        // Its writes done (write-behind): a fill's chunks are pinned until then, and
        // with a 2 MiB quota the next fill's writes would find nothing to evict.
        let url = origin.url(&format!("/q{i}"));
        assert!(eventually(Duration::from_secs(10), || a.cache().cached(&url).is_some()).await);
        assert!(
            eventually(Duration::from_secs(10), || a
                .metrics()
                .cache_fill_buffer_bytes
                .get()
                == 0)
            .await
        );
    }
    let m = a.metrics();
    assert!(m.cache_evictions.get() > 0);
    assert!(
        eventually(Duration::from_secs(5), || m.cache_bytes.get() as u64
            <= (2 << 20) * 9 / 10)
        .await,
        "usage {}",
        m.cache_bytes.get()
    );
    // The newest object is still complete in the cache.
    let n = origin.requests("/q5");
    let r = get(a.proxy_addr(), &origin.url("/q5")).await.unwrap();
    assert_eq!(r.body, random_bytes(700_000, 105));
    assert_eq!(origin.requests("/q5"), n);
    // An evicted object is fetched again, correctly.
    let r = get(a.proxy_addr(), &origin.url("/q0")).await.unwrap();
    assert_eq!(r.body, random_bytes(700_000, 100));
    a.shutdown().await;
}

#[tokio::test]
async fn unwritable_cache_dir_still_serves() {
    let (origin, dir) = setup("127.0.0.20").await;
    let file = dir.path().join("not-a-dir");
    std::fs::write(&file, b"x").unwrap();
    let cfg = agent::config("127.0.0.20", &file.join("cache"));
    let a = agent::start(cfg).await.unwrap();
    let data = random_bytes(300_000, 10);
    origin.put("/u", Object::new(data.clone()));
    for _ in 0..2 {
        let r = get(a.proxy_addr(), &origin.url("/u")).await.unwrap();
        assert_eq!((r.status, r.body), (StatusCode::OK, data.clone()));
    }
    a.shutdown().await;
}

#[tokio::test]
async fn internal_destinations_refused_without_allow_cidrs() {
    let (origin, dir) = setup("127.0.0.21").await;
    origin.put("/s", Object::new(random_bytes(10, 11)));
    let mut cfg = agent::config("127.0.0.21", dir.path());
    cfg.egress.allow_cidrs.clear();
    let a = agent::start(cfg).await.unwrap();
    for url in [
        "http://169.254.169.254/latest/meta-data/".to_owned(),
        origin.url("/s"),
        "http://localhost:1/".to_owned(),
    ] {
        let r = get(a.proxy_addr(), &url).await.unwrap();
        assert_eq!(r.status, StatusCode::FORBIDDEN, "{url}");
        assert!(
            String::from_utf8_lossy(&r.body).contains("egress refused"),
            "{url}"
        );
    }
    let r = client::raw(
        a.proxy_addr(),
        b"CONNECT 169.254.169.254:443 HTTP/1.1\r\nHost: 169.254.169.254:443\r\n\r\n",
    )
    .await
    .unwrap();
    assert!(r.starts_with("HTTP/1.1 403"), "{r}");
    assert_eq!(origin.requests("/s"), 0);
    assert_eq!(a.metrics().ssrf_blocked.get(), 4);
    a.shutdown().await;
}

#[tokio::test]
async fn malformed_and_oversized_requests_get_4xx() {
    let (_origin, dir) = setup("127.0.0.22").await;
    let a = agent::start(agent::config("127.0.0.22", dir.path()))
        .await
        .unwrap();
    let r = client::raw(a.proxy_addr(), b"GARBAGE\r\n\r\n")
        .await
        .unwrap();
    assert!(r.starts_with("HTTP/1.1 400"), "{r}");
    let big = format!(
        "GET http://127.0.0.22/ HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n",
        "a".repeat(100 * 1024)
    );
    let r = client::raw(a.proxy_addr(), big.as_bytes()).await.unwrap();
    assert!(
        r.starts_with("HTTP/1.1 431") || r.starts_with("HTTP/1.1 400"),
        "{r}"
    );
    let r = client::raw(
        a.proxy_addr(),
        b"GET /not-a-proxy-path HTTP/1.1\r\nHost: x\r\n\r\n",
    )
    .await
    .unwrap();
    assert!(r.starts_with("HTTP/1.1 400"), "{r}");
    let r = client::raw(
        a.proxy_addr(),
        b"POST http://127.0.0.22/ HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n",
    )
    .await
    .unwrap();
    assert!(r.starts_with("HTTP/1.1 501"), "{r}");
    a.shutdown().await;
}

#[tokio::test]
async fn no_store_passes_through_and_mirrors_map_paths() {
    let (origin, dir) = setup("127.0.0.23").await;
    let data = random_bytes(100_000, 12);
    origin.put(
        "/ns",
        Object::new(data.clone()).header("cache-control", "no-store"),
    );
    origin.put("/pkg/a.deb", Object::new(data.clone()));
    let mut cfg = agent::config("127.0.0.23", dir.path());
    cfg.mirrors.push(shoal_agent::config::Mirror {
        name: "deb".into(),
        upstream: format!("http://{}", origin.addr()),
        ..Default::default()
    });
    let a = agent::start(cfg).await.unwrap();
    for _ in 0..2 {
        assert_eq!(
            get(a.proxy_addr(), &origin.url("/ns")).await.unwrap().body,
            data
        );
    }
    assert_eq!(origin.requests("/ns"), 2, "no-store is never cached");
    let mirror_url = format!("http://{}/m/deb/pkg/a.deb", a.proxy_addr());
    for _ in 0..2 {
        let r = request(
            a.proxy_addr(),
            Method::GET,
            &mirror_url.replace(&format!("http://{}", a.proxy_addr()), ""),
            &[],
        )
        .await;
        // Origin-form requests need a Host; the client helper sends absolute-form, so use raw.
        drop(r);
        let raw = client::raw(
            a.proxy_addr(),
            b"GET /m/deb/pkg/a.deb HTTP/1.1\r\nHost: agent\r\nConnection: close\r\n\r\n",
        )
        .await
        .unwrap();
        assert!(
            raw.starts_with("HTTP/1.1 200"),
            "{}",
            &raw[..raw.len().min(200)]
        );
        assert!(raw.ends_with(&*String::from_utf8_lossy(&data[data.len() - 50..])));
    }
    assert_eq!(origin.requests("/pkg/a.deb"), 1);
    let raw = client::raw(
        a.proxy_addr(),
        b"GET /m/nope/x HTTP/1.1\r\nHost: agent\r\n\r\n",
    )
    .await
    .unwrap();
    assert!(raw.starts_with("HTTP/1.1 404"), "{raw}");
    a.shutdown().await;
}

#[tokio::test]
async fn connect_tunnels_to_allowed_destinations() {
    let (origin, dir) = setup("127.0.0.24").await;
    let data = random_bytes(1000, 13);
    origin.put("/t", Object::new(data.clone()));
    let mut cfg = agent::config("127.0.0.24", dir.path());
    // The test origin is not on 443 (the default proxy.connect_ports).
    cfg.proxy.connect_ports = vec![origin.addr().port()];
    let a = agent::start(cfg).await.unwrap();
    let req = format!(
        "CONNECT {0} HTTP/1.1\r\nHost: {0}\r\n\r\nGET /t HTTP/1.1\r\nHost: {0}\r\nConnection: close\r\n\r\n",
        origin.addr()
    );
    let r = client::raw(a.proxy_addr(), req.as_bytes()).await.unwrap();
    assert!(r.starts_with("HTTP/1.1 200"), "{r}");
    assert!(
        r.contains("Content-Length: 1000") || r.contains("content-length: 1000"),
        "{r}"
    );
    assert_eq!(origin.requests("/t"), 1);
    a.shutdown().await;
}

#[tokio::test]
async fn responses_that_vary_are_not_cached() {
    let (origin, dir) = setup("127.0.0.25").await;
    let data = random_bytes(50_000, 14);
    origin.put("/v", Object::new(data.clone()).header("vary", "Accept"));
    origin.put(
        "/e",
        Object::new(data.clone()).header("vary", "Accept-Encoding"),
    );
    let a = agent::start(agent::config("127.0.0.25", dir.path()))
        .await
        .unwrap();
    for _ in 0..2 {
        assert_eq!(
            get(a.proxy_addr(), &origin.url("/v")).await.unwrap().body,
            data
        );
        assert_eq!(
            get(a.proxy_addr(), &origin.url("/e")).await.unwrap().body,
            data
        );
    }
    assert_eq!(origin.requests("/v"), 2, "Vary: Accept is passed through");
    assert_eq!(
        origin.requests("/e"),
        1,
        "Vary: Accept-Encoding is cached (identity only)"
    );
    a.shutdown().await;
}

#[tokio::test]
async fn https_mirror_under_a_private_ca_is_cached() {
    let (_plain, dir) = setup("127.0.0.26").await;
    let pki = shoal_pki::dev_pki(
        &["origin".to_owned()],
        &[vec!["127.0.0.26".parse().unwrap()]],
    )
    .unwrap();
    let c = &pki.certs[0];
    use rustls::pki_types::pem::PemObject as _;
    let key = rustls::pki_types::PrivateKeyDer::from_pem_slice(c.key_pem.as_bytes()).unwrap();
    let tls = rustls::ServerConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(vec![c.cert_der.clone()], key)
    .unwrap();
    let origin = Origin::start_tls("127.0.0.26", std::sync::Arc::new(tls))
        .await
        .unwrap();
    let data = random_bytes(200_000, 15);
    origin.put("/pkg/x.deb", Object::new(data.clone()));
    let ca = dir.path().join("origin-ca.pem");
    std::fs::write(&ca, &pki.ca_pem).unwrap();
    let mirror = shoal_agent::config::Mirror {
        name: "sec".into(),
        upstream: format!("https://{}", origin.addr()),
        ..Default::default()
    };
    let req = b"GET /m/sec/pkg/x.deb HTTP/1.1\r\nHost: agent\r\nConnection: close\r\n\r\n";

    // Without the private CA the origin's certificate is refused.
    let mut cfg = agent::config("127.0.0.26", &dir.path().join("a"));
    cfg.mirrors.push(mirror.clone());
    let a = agent::start(cfg).await.unwrap();
    let r = client::raw(a.proxy_addr(), req).await.unwrap();
    assert!(r.starts_with("HTTP/1.1 502"), "{}", &r[..r.len().min(300)]);
    a.shutdown().await;

    let mut cfg = agent::config("127.0.0.26", &dir.path().join("b"));
    cfg.mirrors.push(mirror);
    cfg.origin.ca_file = Some(ca);
    let a = agent::start(cfg).await.unwrap();
    for _ in 0..2 {
        let r = client::raw(a.proxy_addr(), req).await.unwrap();
        assert!(r.starts_with("HTTP/1.1 200"), "{}", &r[..r.len().min(300)]);
    }
    assert_eq!(
        origin.requests("/pkg/x.deb"),
        1,
        "fetched over TLS once, then served from cache"
    );
    assert_eq!(
        a.metrics().bytes_served.with_label_values(&["cache"]).get(),
        data.len() as u64
    );
    a.shutdown().await;
}
