//! A cold `Range` request far into an object (issue 11.4): served from an origin
//! `Range` request of its own, at once, not after the fill reaches that offset. The
//! origin holds the fill's whole-object GET after its first MiB until the test
//! releases it, so a ranged answer that arrives at all arrived ahead of the fill.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::StatusCode;
use shoal_agent::app::RunningAgent;
use shoal_tests::agent;
use shoal_tests::client::{Reply, eventually, get_with};
use shoal_tests::{Object, Origin, random_bytes};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const SIZE: usize = 10 << 20;
/// Where the origin holds the fill's body.
const HOLD_AT: usize = 1 << 20;

async fn ranged(proxy: SocketAddr, url: &str, range: &str) -> anyhow::Result<Reply> {
    tokio::time::timeout(
        Duration::from_secs(20),
        get_with(proxy, url, &[("range", range)]),
    )
    .await
    .expect("no ranged answer within 20 s while the fill is held")
}

fn ahead(a: &RunningAgent) -> u64 {
    a.metrics()
        .origin_fetches
        .with_label_values(&["range_ahead"])
        .get()
}

#[tokio::test]
async fn cold_range_far_into_an_object_does_not_wait_for_the_fill() {
    shoal_tests::logs();
    let ip = "127.0.0.231";
    let origin = Origin::start(ip).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let data = random_bytes(SIZE, 11);
    let mut obj = Object::new(data.clone());
    obj.gate_after = Some(HOLD_AT);
    origin.put("/big", obj);
    let a = agent::start(agent::config(ip, dir.path())).await.unwrap();
    let url = origin.url("/big");

    // The first request for the URL: it leads the fill and is served ahead of it.
    let r = ranged(a.proxy_addr(), &url, "bytes=-100").await.unwrap();
    assert_eq!(r.status, StatusCode::PARTIAL_CONTENT);
    assert_eq!(r.body, data.slice(SIZE - 100..));
    assert_eq!(
        r.header("content-range"),
        Some(format!("bytes {}-{}/{SIZE}", SIZE - 100, SIZE - 1).as_str())
    );
    assert_eq!(origin.requests("/big"), 2, "the fill's GET and one Range");
    assert_eq!(origin.range_requests("/big"), 1);
    assert_eq!(ahead(&a), 1);
    // The fill is still held at its first MiB.
    assert!(a.cache().cached(&url).is_none());

    // A client joining the fill in progress, far ahead of it: served ahead too.
    let r = ranged(a.proxy_addr(), &url, "bytes=9000000-9000099")
        .await
        .unwrap();
    assert_eq!(r.status, StatusCode::PARTIAL_CONTENT);
    assert_eq!(r.body, data.slice(9_000_000..9_000_100));
    assert_eq!(origin.range_requests("/big"), 2);
    assert_eq!(ahead(&a), 2);
    assert!(a.cache().cached(&url).is_none());
    // Counted as relayed for `range_ahead`, not as fetched into the cache.
    let m = a.metrics();
    assert_eq!(
        m.origin_bytes.with_label_values(&["range_ahead"]).get(),
        200
    );
    assert_eq!(
        a.metrics()
            .bytes_fetched
            .with_label_values(&["origin"])
            .get() as usize,
        a.metrics()
            .origin_bytes
            .with_label_values(&["cache_mode"])
            .get() as usize
    );

    // The fill proceeds and the object is cached; ranges are then hits.
    origin.release();
    let cached = eventually(Duration::from_secs(20), || a.cache().cached(&url).is_some()).await;
    assert!(cached, "the fill did not complete");
    for (range, want) in [
        ("bytes=-100", data.slice(SIZE - 100..)),
        ("bytes=9000000-9000099", data.slice(9_000_000..9_000_100)),
    ] {
        let r = ranged(a.proxy_addr(), &url, range).await.unwrap();
        assert_eq!(r.status, StatusCode::PARTIAL_CONTENT);
        assert_eq!(r.body, want, "{range}");
        assert_eq!(r.header("x-shoal-cache"), Some("hit"));
    }
    assert_eq!(origin.requests("/big"), 3, "hits made no origin request");
    assert_eq!(ahead(&a), 2);
    let full = get_with(a.proxy_addr(), &url, &[]).await.unwrap();
    assert_eq!(blake3::hash(&full.body), blake3::hash(&data));
    a.shutdown().await;
}

#[tokio::test]
async fn a_range_near_the_fill_waits_for_it() {
    shoal_tests::logs();
    let ip = "127.0.0.232";
    let origin = Origin::start(ip).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let data = random_bytes(SIZE, 12);
    let mut obj = Object::new(data.clone());
    obj.gate_after = Some(HOLD_AT);
    origin.put("/big", obj);
    let a = agent::start(agent::config(ip, dir.path())).await.unwrap();
    let url = origin.url("/big");
    // Within the first chunk: the fill is about to have it (it is not held there).
    let r = ranged(a.proxy_addr(), &url, "bytes=100-199").await.unwrap();
    assert_eq!(r.body, data.slice(100..200));
    assert_eq!(origin.range_requests("/big"), 0);
    assert_eq!(ahead(&a), 0);
    origin.release();
    a.shutdown().await;
}

/// How the lying origin answers a `Range` request.
#[derive(Debug, Clone, Copy)]
enum Lie {
    /// `200` with the whole object, as an origin that ignores `Range`/`If-Range`.
    Whole,
    /// `206` of the range one byte later, with that `Content-Range`.
    Shift,
}

/// A raw-TCP origin serving one object with a strong ETag: whole-object GETs are
/// held after [`HOLD_AT`] bytes until [`LyingOrigin::release`]; `Range` requests
/// are answered as `lie` says. One request per connection.
struct LyingOrigin {
    addr: SocketAddr,
    ranges: Arc<Mutex<Vec<String>>>,
    release: tokio::sync::watch::Sender<bool>,
}

impl LyingOrigin {
    async fn start(ip: &str, data: Bytes, lie: Lie) -> Self {
        let l = TcpListener::bind((ip, 0)).await.unwrap();
        let addr = l.local_addr().unwrap();
        let ranges = Arc::new(Mutex::new(Vec::new()));
        let seen = ranges.clone();
        let (release, held) = tokio::sync::watch::channel(false);
        tokio::spawn(async move {
            while let Ok((s, _)) = l.accept().await {
                let (data, seen, held) = (data.clone(), seen.clone(), held.clone());
                tokio::spawn(async move {
                    let _ = serve(s, data, lie, seen, held).await;
                });
            }
        });
        Self {
            addr,
            ranges,
            release,
        }
    }

    fn release(&self) {
        self.release.send_replace(true);
    }

    fn url(&self) -> String {
        format!("http://{}/obj", self.addr)
    }

    fn ranges(&self) -> Vec<String> {
        self.ranges.lock().unwrap().clone()
    }
}

async fn serve(
    mut s: TcpStream,
    data: Bytes,
    lie: Lie,
    seen: Arc<Mutex<Vec<String>>>,
    mut held: tokio::sync::watch::Receiver<bool>,
) -> std::io::Result<()> {
    let mut head = Vec::new();
    let mut buf = [0u8; 4096];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = s.read(&mut buf).await?;
        if n == 0 {
            return Ok(());
        }
        head.extend_from_slice(&buf[..n]);
    }
    let head = String::from_utf8_lossy(&head).to_ascii_lowercase();
    let range = head
        .lines()
        .find_map(|l| l.strip_prefix("range:"))
        .map(|v| v.trim().to_owned());
    let size = data.len();
    let common = "etag: \"v1\"\r\naccept-ranges: bytes\r\nconnection: close\r\n\
         last-modified: Tue, 14 Nov 2023 22:13:20 GMT\r\n";
    let Some(range) = range else {
        let h = format!("HTTP/1.1 200 OK\r\ncontent-length: {size}\r\n{common}\r\n");
        s.write_all(h.as_bytes()).await?;
        s.write_all(&data[..HOLD_AT]).await?;
        // Held until the test says: the fill gets no further meanwhile.
        let _ = held.wait_for(|r| *r).await;
        s.write_all(&data[HOLD_AT..]).await?;
        return s.shutdown().await;
    };
    seen.lock().unwrap().push(range.clone());
    let (first, last) = range
        .strip_prefix("bytes=")
        .and_then(|r| r.split_once('-'))
        .and_then(|(a, b)| Some((a.parse::<usize>().ok()?, b.parse::<usize>().ok()?)))
        .expect("the agent sends bytes=FIRST-LAST");
    match lie {
        Lie::Whole => {
            let h = format!("HTTP/1.1 200 OK\r\ncontent-length: {size}\r\n{common}\r\n");
            s.write_all(h.as_bytes()).await?;
            s.write_all(&data).await?;
        }
        Lie::Shift => {
            let (first, last) = (first - 1, last - 1);
            let h = format!(
                "HTTP/1.1 206 Partial Content\r\ncontent-length: {}\r\n\
                 content-range: bytes {first}-{last}/{size}\r\n{common}\r\n",
                last + 1 - first
            );
            s.write_all(h.as_bytes()).await?;
            s.write_all(&data[first..=last]).await?;
        }
    }
    s.shutdown().await
}

async fn lying(ip: &str, lie: Lie, seed: u64) {
    shoal_tests::logs();
    let data = random_bytes(SIZE, seed);
    let origin = LyingOrigin::start(ip, data.clone(), lie).await;
    let dir = tempfile::tempdir().unwrap();
    let a = agent::start(agent::config(ip, dir.path())).await.unwrap();
    let url = origin.url();
    let client = {
        let (proxy, url) = (a.proxy_addr(), url.clone());
        tokio::spawn(async move { ranged(proxy, &url, "bytes=-100").await })
    };
    // The ahead request was made and its answer refused...
    assert!(
        eventually(Duration::from_secs(10), || a.metrics().origin_changed.get()
            == 1)
        .await,
        "{lie:?}"
    );
    assert_eq!(
        origin.ranges(),
        vec![format!("bytes={}-{}", SIZE - 100, SIZE - 1)]
    );
    assert_eq!(ahead(&a), 1);
    // ...none of it relayed: the client waits for the fill, then gets the right bytes.
    assert!(
        !client.is_finished(),
        "{lie:?}: answered before the fill had the range"
    );
    origin.release();
    let r = client.await.unwrap().unwrap();
    assert_eq!(r.status, StatusCode::PARTIAL_CONTENT, "{lie:?}");
    assert_eq!(r.body, data.slice(SIZE - 100..), "{lie:?}");
    assert!(eventually(Duration::from_secs(20), || a.cache().cached(&url).is_some()).await);
    a.shutdown().await;
}

#[tokio::test]
async fn a_whole_body_answer_to_the_ahead_range_falls_back_to_the_fill() {
    lying("127.0.0.233", Lie::Whole, 13).await;
}

#[tokio::test]
async fn a_shifted_content_range_falls_back_to_the_fill() {
    lying("127.0.0.234", Lie::Shift, 14).await;
}

/// Swarm (`p2p`) fills are read the same way: a range far past the swarm fill's
/// frontier is served ahead of it. The origin holds every body longer than 1000
/// bytes (the fill's chunk requests), not the client's 40-byte range.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn swarm_fill_serves_a_far_range_ahead() {
    shoal_tests::logs();
    let s = shoal_tests::swarm::TestSwarm::builder()
        .net(231)
        .agents(1)
        .spawn()
        .await
        .unwrap();
    let data = random_bytes(SIZE, 15);
    let mut obj = Object::new(data.clone());
    obj.gate_after = Some(1000);
    s.origin.put("/big", obj);
    let url = s.origin.url("/big");
    let a = s.agent(0);
    let r = ranged(a.proxy_addr(), &url, "bytes=-40").await.unwrap();
    assert_eq!(r.status, StatusCode::PARTIAL_CONTENT);
    assert_eq!(r.body, data.slice(SIZE - 40..));
    assert_eq!(r.header("x-shoal-source"), Some("mixed"), "a swarm fill");
    assert_eq!(ahead(a), 1);
    assert!(a.cache().cached(&url).is_none());
    s.origin.release();
    let cached = eventually(Duration::from_secs(30), || a.cache().cached(&url).is_some()).await;
    assert!(cached, "the swarm fill did not complete");
    let before = s.origin.requests("/big");
    let r = ranged(a.proxy_addr(), &url, "bytes=-40").await.unwrap();
    assert_eq!(r.body, data.slice(SIZE - 40..));
    assert_eq!(r.header("x-shoal-cache"), Some("hit"));
    assert_eq!(s.origin.requests("/big"), before);
    assert_eq!(ahead(a), 1);
    s.shutdown().await;
}

/// A slow client served ahead: once the fill passes its position, the rest comes
/// from the fill and the origin range request is dropped (not read to the end).
#[tokio::test]
async fn the_fill_catching_up_takes_over_from_the_origin_range() {
    use http_body_util::BodyExt;

    shoal_tests::logs();
    let ip = "127.0.0.235";
    let size = 32 << 20;
    let start = 2 << 20;
    let origin = Origin::start(ip).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let data = random_bytes(size, 16);
    let mut obj = Object::new(data.clone());
    // Holds the fill's body; the client's range, longer still, is held too: it
    // gets its head and first MiB, then waits with the fill.
    obj.gate_after = Some(HOLD_AT);
    origin.put("/big", obj);
    let mut cfg = agent::config(ip, dir.path());
    cfg.cache.memory_size = bytesize::ByteSize::mib(64);
    let a = agent::start(cfg).await.unwrap();
    let url = origin.url("/big");

    let stream = TcpStream::connect(a.proxy_addr()).await.unwrap();
    let (mut send, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .unwrap();
    tokio::spawn(conn);
    let req = http::Request::get(&url)
        .header(http::header::HOST, origin.addr().to_string())
        .header(http::header::RANGE, format!("bytes={start}-"))
        .body(http_body_util::Empty::<Bytes>::new())
        .unwrap();
    let resp = tokio::time::timeout(Duration::from_secs(20), send.send_request(req))
        .await
        .expect("no head while the fill is held")
        .unwrap();
    assert_eq!(resp.status(), StatusCode::PARTIAL_CONTENT);
    let mut body = resp.into_body();
    let mut got = Vec::new();
    while got.len() < 1000 {
        let f = tokio::time::timeout(Duration::from_secs(20), body.frame())
            .await
            .expect("no body while the fill is held")
            .unwrap()
            .unwrap();
        if let Ok(d) = f.into_data() {
            got.extend_from_slice(&d);
        }
    }
    assert_eq!(ahead(&a), 1);
    // The client stops reading; the fill completes meanwhile.
    origin.release();
    let cached = eventually(Duration::from_secs(30), || a.cache().cached(&url).is_some()).await;
    assert!(cached, "the fill did not complete");
    let rest = body.collect().await.unwrap().to_bytes();
    got.extend_from_slice(&rest);
    assert_eq!(got.len(), size - start);
    assert!(got == data[start..], "the bytes differ");
    let relayed = a
        .metrics()
        .origin_bytes
        .with_label_values(&["range_ahead"])
        .get();
    assert!(
        relayed < (size - start) as u64 / 2,
        "{relayed} bytes relayed from the origin range: the fill did not take over"
    );
    a.shutdown().await;
}

/// Chunk repair against an origin that ignores `Range`: a chunk file gone from the
/// disk is fetched again by reading the origin's whole `200` (same ETag) through to
/// it, checked against the manifest's id, and the response is whole; the object
/// stays cached. With a shifted `206` the repair is refused and the object forgotten.
#[tokio::test]
async fn a_chunk_is_repaired_from_an_origin_that_ignores_range() {
    shoal_tests::logs();
    for (ip, lie, seed) in [
        ("127.0.0.235", Lie::Whole, 15),
        ("127.0.0.236", Lie::Shift, 16),
    ] {
        let data = random_bytes(SIZE, seed);
        let origin = LyingOrigin::start(ip, data.clone(), lie).await;
        origin.release();
        let dir = tempfile::tempdir().unwrap();
        let mut cfg = agent::config(ip, dir.path());
        // Every hit reads the disk; 1 MiB chunks.
        cfg.cache.memory_size = bytesize::ByteSize::b(0);
        cfg.cache.chunk_size = bytesize::ByteSize::mib(1);
        let a = agent::start(cfg).await.unwrap();
        let url = origin.url();
        let r = get_with(a.proxy_addr(), &url, &[]).await.unwrap();
        assert_eq!(r.body, data);
        assert!(eventually(Duration::from_secs(20), || a.cache().cached(&url).is_some()).await);
        // Chunk 7 (1 MiB chunks) vanishes from the disk.
        let id = blake3::hash(&data[7 << 20..8 << 20]).to_hex();
        let file = dir.path().join("chunks").join(&id[..2]).join(id.as_str());
        std::fs::remove_file(&file).unwrap();
        match lie {
            Lie::Whole => {
                let r = get_with(a.proxy_addr(), &url, &[]).await.unwrap();
                assert_eq!(blake3::hash(&r.body), blake3::hash(&data), "{lie:?}");
                assert_eq!(origin.ranges(), vec!["bytes=7340032-8388607".to_owned()]);
                assert!(a.cache().cached(&url).is_some(), "still cached");
                // Stored again: the next hit needs no origin.
                let r = get_with(a.proxy_addr(), &url, &[]).await.unwrap();
                assert_eq!(blake3::hash(&r.body), blake3::hash(&data));
                assert_eq!(origin.ranges().len(), 1);
            }
            Lie::Shift => {
                let r = get_with(a.proxy_addr(), &url, &[]).await;
                assert!(
                    r.map_or(true, |r| r.body.len() < SIZE),
                    "a shifted range is not used"
                );
                assert!(
                    eventually(Duration::from_secs(10), || a.cache().cached(&url).is_none()).await
                );
                assert_eq!(a.metrics().origin_changed.get(), 1);
            }
        }
        a.shutdown().await;
    }
}
