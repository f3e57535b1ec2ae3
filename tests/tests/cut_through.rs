//! Cut-through of cold misses (`agent/src/object/cut.rs`): a plain origin fill's
//! bytes reach the clients streaming from it as they arrive, before their chunk is
//! complete and hashed, and only bytes the origin really sent.
//!
//! The origin here is a raw TCP server that sends an object's bytes up to given
//! offsets and stalls at each until the test releases it (or closes the connection
//! there), so the tests can look at what the clients hold while the origin is in the
//! middle of a chunk. Chunks are 1 MiB (the default), so 64 KiB is deep inside the
//! first one: without cut-through a client sees nothing of it until the whole chunk
//! has arrived.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use bytesize::ByteSize;
use http::Request;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use sha2::{Digest, Sha256};
use shoal_proto::chunker::chunk_all;
use shoal_tests::agent;
use shoal_tests::client::eventually;
use shoal_tests::random_bytes;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;

const CHUNK: u64 = 1 << 20;
/// Three chunks.
const SIZE: usize = 3 << 20;
const FIRST: usize = 64 << 10;
const WAIT: Duration = Duration::from_secs(10);

/// What the origin does, in order, for one request.
#[derive(Debug, Clone, Copy)]
enum Step {
    /// Send the body up to this offset.
    To(usize),
    /// Wait until the test calls [`Stalling::release`].
    Stall,
    /// Close the connection (the body is cut short).
    Close,
}

/// The stalling origin: request `n` follows `scripts[n]` (the last one for later
/// requests), then sends the rest of the body and closes.
struct Stalling {
    addr: SocketAddr,
    gate: Arc<Semaphore>,
    requests: Arc<Mutex<u64>>,
}

impl Stalling {
    async fn start(ip: &str, body: Bytes, etag: bool, scripts: Vec<Vec<Step>>) -> Self {
        let l = TcpListener::bind((ip, 0)).await.unwrap();
        let addr = l.local_addr().unwrap();
        let gate = Arc::new(Semaphore::new(0));
        let requests = Arc::new(Mutex::new(0u64));
        let (g, r) = (gate.clone(), requests.clone());
        tokio::spawn(async move {
            loop {
                let Ok((s, _)) = l.accept().await else { return };
                let n = {
                    let mut r = r.lock().unwrap();
                    *r += 1;
                    *r as usize - 1
                };
                let script = scripts[n.min(scripts.len() - 1)].clone();
                tokio::spawn(serve(s, body.clone(), etag, script, g.clone()));
            }
        });
        Self {
            addr,
            gate,
            requests,
        }
    }

    fn release(&self) {
        self.gate.add_permits(1);
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    fn requests(&self) -> u64 {
        *self.requests.lock().unwrap()
    }
}

async fn serve(mut s: TcpStream, body: Bytes, etag: bool, script: Vec<Step>, gate: Arc<Semaphore>) {
    let mut head = Vec::new();
    let mut b = [0u8; 4096];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        match s.read(&mut b).await {
            Ok(0) | Err(_) => return,
            Ok(n) => head.extend_from_slice(&b[..n]),
        }
    }
    let etag = if etag { "ETag: \"stall-v1\"\r\n" } else { "" };
    let resp = format!(
        "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n{etag}Connection: close\r\n\r\n",
        body.len()
    );
    if s.write_all(resp.as_bytes()).await.is_err() {
        return;
    }
    let mut sent = 0;
    for step in script {
        match step {
            Step::To(to) => {
                if s.write_all(&body[sent..to]).await.is_err() {
                    return;
                }
                sent = to;
            }
            Step::Stall => {
                let _ = s.flush().await;
                gate.acquire().await.unwrap().forget();
            }
            Step::Close => return,
        }
    }
    let _ = s.write_all(&body[sent..]).await;
}

/// A response streaming into `got`; `done` says how its body ended.
struct Streaming {
    status: u16,
    got: Arc<Mutex<Vec<u8>>>,
    done: tokio::task::JoinHandle<Result<(), String>>,
}

impl Streaming {
    /// `GET url` through `proxy`, the body collected as it arrives.
    async fn get(proxy: SocketAddr, url: &str, range: Option<&str>) -> Self {
        let stream = TcpStream::connect(proxy).await.unwrap();
        let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .unwrap();
        tokio::spawn(conn);
        let uri: http::Uri = url.parse().unwrap();
        let mut req = Request::get(uri.clone()).header(
            http::header::HOST,
            uri.authority().unwrap().as_str().to_owned(),
        );
        if let Some(r) = range {
            req = req.header(http::header::RANGE, r);
        }
        let resp = send
            .send_request(req.body(Empty::<Bytes>::new()).unwrap())
            .await
            .unwrap();
        let status = resp.status().as_u16();
        let got = Arc::new(Mutex::new(Vec::new()));
        let sink = got.clone();
        let done = tokio::spawn(async move {
            let mut body = resp.into_body();
            while let Some(f) = body.frame().await {
                let f = f.map_err(|e| e.to_string())?;
                if let Ok(d) = f.into_data() {
                    sink.lock().unwrap().extend_from_slice(&d);
                }
            }
            Ok(())
        });
        Self { status, got, done }
    }

    fn len(&self) -> usize {
        self.got.lock().unwrap().len()
    }

    fn bytes(&self) -> Vec<u8> {
        self.got.lock().unwrap().clone()
    }

    /// Waits until exactly `n` bytes arrived (polled; more would fail the caller's
    /// comparison).
    async fn has(&self, n: usize) -> bool {
        eventually(WAIT, || self.len() >= n).await
    }

    async fn end(self) -> (Vec<u8>, Result<(), String>) {
        let r = tokio::time::timeout(WAIT, self.done)
            .await
            .expect("the response ends")
            .unwrap();
        let got = self.got.lock().unwrap().clone();
        (got, r)
    }
}

async fn start_agent(ip: &str, dir: &std::path::Path) -> shoal_agent::app::RunningAgent {
    let mut c = agent::config(ip, dir);
    c.cache.chunk_size = ByteSize::b(CHUNK);
    c.cache.memory_size = ByteSize::mib(16);
    agent::start(c).await.unwrap()
}

/// Whether `url` is cached with exactly the chunk ids of `data`.
fn cached_as(a: &shoal_agent::app::RunningAgent, url: &str, data: &Bytes) -> bool {
    let want: Vec<_> = chunk_all(data.clone(), CHUNK as u32)
        .into_iter()
        .map(|c| c.id)
        .collect();
    a.cache()
        .cached(url)
        .is_some_and(|m| m.manifest.chunks == want)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn first_frames_reach_every_reader_before_their_chunk_is_complete() {
    shoal_tests::logs();
    let ip = "127.0.0.231";
    let data = random_bytes(SIZE, 231);
    let o = Stalling::start(
        ip,
        data.clone(),
        true,
        vec![vec![Step::To(FIRST), Step::Stall]],
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    let a = start_agent(ip, dir.path()).await;
    let url = o.url("/pool/x.deb");

    let first = Streaming::get(a.proxy_addr(), &url, None).await;
    assert_eq!(first.status, 200);
    assert!(
        first.has(FIRST).await,
        "only {} of the first {FIRST} bytes reached the client while the origin stalls",
        first.len()
    );
    assert_eq!(
        first.bytes(),
        &data[..FIRST],
        "exactly the origin's first bytes"
    );
    // A reader that joins late gets the same bytes at once, from the one fill.
    let late = Streaming::get(a.proxy_addr(), &url, None).await;
    assert!(late.has(FIRST).await, "the late reader got {}", late.len());
    assert_eq!(late.bytes(), &data[..FIRST]);
    assert_eq!(first.len(), FIRST, "nothing more than the origin sent");
    assert_eq!(o.requests(), 1, "one fill for both");

    o.release();
    for r in [first, late] {
        let (got, end) = r.end().await;
        assert_eq!(end, Ok(()));
        assert_eq!(got.len(), SIZE);
        assert!(got == data[..], "the whole object, right bytes");
    }
    assert!(
        eventually(WAIT, || cached_as(&a, &url, &data)).await,
        "cached with the chunk ids of the origin's bytes"
    );
    // A hit now, from the cache.
    let hit = Streaming::get(a.proxy_addr(), &url, None).await;
    let (got, end) = hit.end().await;
    assert_eq!(end, Ok(()));
    assert!(got == data[..]);
    assert_eq!(o.requests(), 1);
    a.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ranges_inside_the_first_chunk_are_served_before_it_is_complete() {
    shoal_tests::logs();
    let ip = "127.0.0.232";
    let data = random_bytes(SIZE, 232);
    let o = Stalling::start(
        ip,
        data.clone(),
        true,
        vec![vec![Step::To(FIRST), Step::Stall]],
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    let a = start_agent(ip, dir.path()).await;
    let url = o.url("/big.iso");

    // Starts inside the first chunk, ends inside the third: the fill's leader.
    let (lo, hi) = (1000usize, 2_100_000usize);
    let long = Streaming::get(
        a.proxy_addr(),
        &url,
        Some(&format!("bytes={lo}-{}", hi - 1)),
    )
    .await;
    assert_eq!(long.status, 206);
    assert!(long.has(FIRST - lo).await, "got {}", long.len());
    assert_eq!(long.bytes(), &data[lo..FIRST]);
    // Starts and ends inside what the origin sent: complete while the origin stalls.
    let short = Streaming::get(a.proxy_addr(), &url, Some("bytes=100-40099")).await;
    assert_eq!(short.status, 206);
    let (got, end) = short.end().await;
    assert_eq!(end, Ok(()));
    assert!(got == data[100..40100], "the short range, right bytes");
    assert_eq!(long.len(), FIRST - lo);

    o.release();
    let (got, end) = long.end().await;
    assert_eq!(end, Ok(()));
    assert!(got == data[lo..hi], "the long range, right bytes");
    assert!(eventually(WAIT, || cached_as(&a, &url, &data)).await);
    assert_eq!(o.requests(), 1);
    a.shutdown().await;
}

/// A digest-named object: its chunks before the last are cut through too, but its
/// last chunk only reaches the client once the sha256 of the whole was checked; with
/// a wrong byte at its very end, never.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_digest_checked_object_holds_back_its_last_chunk() {
    shoal_tests::logs();
    let ip = "127.0.0.233";
    let good = random_bytes(SIZE, 233);
    let hex = hex::encode(Sha256::digest(&good));
    let mut bad = good.to_vec();
    *bad.last_mut().unwrap() ^= 1;
    let last = 2 * CHUNK as usize;
    let script = vec![
        Step::To(CHUNK as usize + FIRST),
        Step::Stall,
        Step::To(last + FIRST),
        Step::Stall,
    ];
    for (body, name) in [(Bytes::from(bad), "bad"), (good.clone(), "good")] {
        let o = Stalling::start(ip, body, false, vec![script.clone()]).await;
        let dir = tempfile::tempdir().unwrap();
        let a = start_agent(ip, dir.path()).await;
        let url = o.url(&format!("/debian/dists/{name}/by-hash/SHA256/{hex}"));
        let r = Streaming::get(a.proxy_addr(), &url, None).await;
        assert_eq!(r.status, 200);
        let mid = CHUNK as usize + FIRST;
        assert!(r.has(mid).await, "{name}: got {} of {mid}", r.len());
        assert_eq!(r.bytes(), &good[..mid], "{name}: chunk 1 cut through");
        o.release();
        // Chunk 2 (the last) has 64 KiB at the agent, none at the client.
        assert!(r.has(last).await, "{name}: got {}", r.len());
        let fetched = || {
            a.metrics()
                .origin_bytes
                .with_label_values(&["cache_mode"])
                .get()
        };
        assert!(eventually(WAIT, || fetched() >= (last + FIRST) as u64).await);
        // Polled for a while during which a released byte would have shown.
        let leaked = eventually(Duration::from_millis(500), || r.len() > last).await;
        assert!(!leaked, "{name}: {} bytes reached the client", r.len());
        assert_eq!(r.len(), last, "{name}: the last chunk is held back");
        o.release();
        let (got, end) = r.end().await;
        if name == "bad" {
            assert!(end.is_err(), "a reset, never a clean end of wrong bytes");
            assert_eq!(got.len(), last, "not a byte of the last chunk");
            assert!(got == good[..last]);
            assert!(a.cache().cached(&url).is_none(), "nothing recorded");
        } else {
            assert_eq!(end, Ok(()));
            assert!(got == good[..]);
            assert!(eventually(WAIT, || cached_as(&a, &url, &good)).await);
        }
        a.shutdown().await;
    }
}

/// The origin closes mid-chunk: the client had the bytes the origin sent, then its
/// response is cut (never a clean end, never other bytes), nothing is recorded, and
/// the next request fills the object anew.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_origin_dying_mid_chunk_cuts_the_response_and_keeps_nothing() {
    shoal_tests::logs();
    let ip = "127.0.0.234";
    let data = random_bytes(SIZE, 234);
    let cut = CHUNK as usize + FIRST;
    let o = Stalling::start(
        ip,
        data.clone(),
        true,
        vec![vec![Step::To(cut), Step::Stall, Step::Close], vec![]],
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    let a = start_agent(ip, dir.path()).await;
    let url = o.url("/dies.bin");
    let r = Streaming::get(a.proxy_addr(), &url, None).await;
    assert!(r.has(cut).await, "got {} of {cut}", r.len());
    assert_eq!(r.bytes(), &data[..cut]);
    o.release();
    let (got, end) = r.end().await;
    assert!(end.is_err(), "the response is cut, not ended cleanly");
    assert_eq!(got.len(), cut, "no byte the origin did not send");
    assert!(got == data[..cut]);
    assert!(a.cache().cached(&url).is_none(), "nothing recorded");

    // The next request is a new fill, complete this time.
    let again = Streaming::get(a.proxy_addr(), &url, None).await;
    let (got, end) = again.end().await;
    assert_eq!(end, Ok(()));
    assert!(got == data[..]);
    assert!(eventually(WAIT, || cached_as(&a, &url, &data)).await);
    assert_eq!(o.requests(), 2);
    a.shutdown().await;
}
