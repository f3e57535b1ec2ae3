//! The load generator: HTTP/1.1 keep-alive clients (hyper) that count body bytes and
//! time responses. It runs in the benchmark's own process and runtime, so on a small
//! machine its CPU competes with the server it measures (reported next to the figures).

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use bytes::Bytes;
use http::header::{CONTENT_LENGTH, HOST, RANGE};
use http::{Request, StatusCode, Uri};
use http_body_util::{BodyExt, Empty};
use hyper::client::conn::http1::{Builder, SendRequest};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio::task::JoinSet;

/// Largest client read buffer (hyper's default is about 400 KiB).
const MAX_BUF: usize = 1 << 20;

/// One server under test, as a client addresses it.
#[derive(Debug, Clone)]
pub struct Target {
    /// `nginx` or `shoal`.
    pub name: &'static str,
    pub addr: SocketAddr,
    /// The request target: origin-form (`/file`) for a server, absolute-form
    /// (`http://origin/file`) for a proxy.
    pub uri: Uri,
    /// `Host` header value.
    pub host: String,
}

/// What a set of streams received within one measurement window.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Window {
    /// Body bytes received inside the window, across all streams.
    pub bytes: u64,
    /// Length of the window.
    pub seconds: f64,
    /// Responses received in full.
    pub complete: u64,
}

impl Window {
    /// Bytes per second.
    pub fn rate(&self) -> f64 {
        if self.seconds > 0.0 {
            self.bytes as f64 / self.seconds
        } else {
            0.0
        }
    }
}

/// Time to the response head and to the first body byte of one request.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Latency {
    pub head: Duration,
    pub first_byte: Duration,
}

/// A keep-alive connection to `t`.
pub async fn connect(t: &Target) -> Result<SendRequest<Empty<Bytes>>> {
    let s = TcpStream::connect(t.addr)
        .await
        .with_context(|| format!("connecting to {} at {}", t.name, t.addr))?;
    s.set_nodelay(true)?;
    let (send, conn) = Builder::new()
        .max_buf_size(MAX_BUF)
        .handshake(TokioIo::new(s))
        .await
        .with_context(|| format!("HTTP handshake with {}", t.name))?;
    tokio::spawn(async move {
        // The connection ends when the sender is dropped or the server closes.
        let _ = conn.await;
    });
    Ok(send)
}

pub(crate) fn request(t: &Target, range: Option<&str>) -> Result<Request<Empty<Bytes>>> {
    let mut b = Request::get(t.uri.clone()).header(HOST, &t.host);
    if let Some(r) = range {
        b = b.header(RANGE, r);
    }
    Ok(b.body(Empty::new())?)
}

/// GETs the whole body once on a new connection and returns it (for verification).
pub async fn fetch(t: &Target) -> Result<Bytes> {
    let mut send = connect(t).await?;
    let resp = send.send_request(request(t, None)?).await?;
    ensure!(
        resp.status() == StatusCode::OK,
        "{} answered {} to a full GET of {}",
        t.name,
        resp.status(),
        t.uri
    );
    Ok(resp.into_body().collect().await?.to_bytes())
}

/// One client stream: full GETs back to back on one keep-alive connection until
/// `end`; counts the body bytes that arrive before `end`. A response cut by `end`
/// is abandoned (the connection is dropped).
async fn stream_until(t: Target, expect_len: u64, end: Instant) -> Result<Window> {
    let start = Instant::now();
    let mut w = Window::default();
    let mut send = connect(&t).await?;
    while Instant::now() < end {
        send.ready().await?;
        let resp = send.send_request(request(&t, None)?).await?;
        if resp.status() != StatusCode::OK {
            bail!("{} answered {} to GET {}", t.name, resp.status(), t.uri);
        }
        let len = resp
            .headers()
            .get(CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        ensure!(
            len == Some(expect_len),
            "{} sent Content-Length {len:?}, expected {expect_len}",
            t.name
        );
        let mut body = resp.into_body();
        let mut got = 0u64;
        while let Some(f) = body.frame().await {
            let f = f.with_context(|| format!("{} body", t.name))?;
            if let Some(d) = f.data_ref() {
                got += d.len() as u64;
                w.bytes += d.len() as u64;
            }
            if Instant::now() >= end {
                w.seconds = start.elapsed().as_secs_f64();
                return Ok(w);
            }
        }
        ensure!(
            got == expect_len,
            "{} body ended after {got} of {expect_len} bytes",
            t.name
        );
        w.complete += 1;
    }
    w.seconds = start.elapsed().as_secs_f64();
    Ok(w)
}

/// `streams` concurrent streams against `t` for `duration`; aggregate bytes over the
/// window from the start of the first to the end of the last.
pub async fn throughput(
    t: &Target,
    streams: usize,
    expect_len: u64,
    duration: Duration,
) -> Result<Window> {
    let start = Instant::now();
    let end = start + duration;
    let mut set = JoinSet::new();
    for _ in 0..streams {
        set.spawn(stream_until(t.clone(), expect_len, end));
    }
    let mut total = Window::default();
    while let Some(r) = set.join_next().await {
        let w = r.context("a client stream panicked")??;
        total.bytes += w.bytes;
        total.complete += w.complete;
    }
    total.seconds = start.elapsed().as_secs_f64();
    Ok(total)
}

/// `samples` requests for `Range: bytes=0-0` to each target, alternating between them
/// request by request, each target on its own keep-alive connection. Returns one
/// latency list per target, in the order given.
pub async fn first_byte(targets: &[Target], samples: usize) -> Result<Vec<Vec<Latency>>> {
    let mut conns = Vec::new();
    for t in targets {
        conns.push(connect(t).await?);
    }
    let mut out = vec![Vec::with_capacity(samples); targets.len()];
    for i in 0..samples {
        for k in 0..targets.len() {
            // Alternate who goes first, so neither always follows the other.
            let j = if i % 2 == 0 { k } else { targets.len() - 1 - k };
            let t = &targets[j];
            let send = &mut conns[j];
            send.ready().await?;
            let req = request(t, Some("bytes=0-0"))?;
            let t0 = Instant::now();
            let resp = send.send_request(req).await?;
            let head = t0.elapsed();
            ensure!(
                resp.status() == StatusCode::PARTIAL_CONTENT,
                "{} answered {} to a one-byte range request",
                t.name,
                resp.status()
            );
            let mut body = resp.into_body();
            let mut first = None;
            while let Some(f) = body.frame().await {
                let f = f?;
                if first.is_none() && f.data_ref().is_some_and(|d| !d.is_empty()) {
                    first = Some(t0.elapsed());
                }
            }
            let first_byte = first.with_context(|| format!("{}: empty range body", t.name))?;
            out[j].push(Latency { head, first_byte });
        }
    }
    Ok(out)
}

/// GETs `http://addr/path` until it answers 200 or `timeout` passes.
pub async fn wait_ready(
    name: &'static str,
    addr: SocketAddr,
    path: &str,
    timeout: Duration,
) -> Result<()> {
    let t = Target {
        name,
        addr,
        uri: path.parse()?,
        host: addr.to_string(),
    };
    let deadline = Instant::now() + timeout;
    let mut last = String::from("no attempt");
    while Instant::now() < deadline {
        match probe(&t).await {
            Ok(StatusCode::OK) => return Ok(()),
            Ok(s) => last = format!("answered {s}"),
            Err(e) => last = format!("{e:#}"),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    bail!("{name} at {addr} not ready after {timeout:?}: {last}")
}

async fn probe(t: &Target) -> Result<StatusCode> {
    let mut send = connect(t).await?;
    let resp = send.send_request(request(t, None)?).await?;
    let status = resp.status();
    let _ = resp.into_body().collect().await;
    Ok(status)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use shoal_demo::origin::{Object, Origin, random_bytes};

    async fn origin_target(len: usize) -> (Origin, Target) {
        let o = Origin::start("127.0.0.1").await.unwrap();
        o.put("/f", Object::new(random_bytes(len, 7)));
        let t = Target {
            name: "origin",
            addr: o.addr(),
            uri: "/f".parse().unwrap(),
            host: o.addr().to_string(),
        };
        (o, t)
    }

    #[tokio::test]
    async fn streams_count_whole_bodies() {
        let (_o, t) = origin_target(100_000).await;
        let w = throughput(&t, 3, 100_000, Duration::from_millis(200))
            .await
            .unwrap();
        assert!(w.complete >= 3, "{w:?}");
        assert!(w.bytes >= w.complete * 100_000);
        assert!(w.rate() > 0.0);
    }

    #[tokio::test]
    async fn wrong_length_is_an_error() {
        let (_o, t) = origin_target(1000).await;
        assert!(
            throughput(&t, 1, 999, Duration::from_millis(50))
                .await
                .is_err()
        );
    }

    #[tokio::test]
    async fn first_byte_alternates_targets() {
        let (_o, a) = origin_target(1000).await;
        let (_p, b) = origin_target(2000).await;
        let l = first_byte(&[a.clone(), b], 5).await.unwrap();
        assert_eq!(l.len(), 2);
        assert!(l.iter().all(|v| v.len() == 5));
        assert!(l[0].iter().all(|x| x.first_byte >= x.head));
        assert_eq!(fetch(&a).await.unwrap(), random_bytes(1000, 7));
        wait_ready("origin", a.addr, "/f", Duration::from_secs(5))
            .await
            .unwrap();
    }
}
