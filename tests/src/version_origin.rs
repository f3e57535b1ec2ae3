//! An origin that changes its one object under a fill, the way object stores, simple
//! servers and CDN nodes do: it ignores `If-Range`, so after the switch a `Range`
//! request for version 1 gets a `206` of version 2's bytes with version 2's ETag and
//! the same length. It can also lie about the range instead (keeping version 1's
//! validators). Only `bytes=FIRST-LAST` ranges, GET and HEAD; nothing else.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http::header;
use http::{Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

/// What the origin does once it has switched.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Switch {
    /// Serves version 2 to everything, ranges included, ignoring `If-Range`.
    NewVersion,
    /// Keeps version 1, but answers a range with the bytes and `Content-Range` of the
    /// range one byte later (one byte earlier at the end of the object).
    ShiftRange,
    /// Keeps version 1 and its bytes, but the `Content-Range` names a complete length
    /// one byte longer.
    OtherLength,
}

/// One version of the object.
#[derive(Debug, Clone)]
pub struct Version {
    pub bytes: Bytes,
    pub etag: String,
    pub last_modified: String,
}

#[derive(Debug)]
struct State {
    v1: Version,
    v2: Version,
    how: Switch,
    /// Range requests answered before the switch; `u64::MAX`: never.
    switch_at: u64,
    ranges: u64,
}

/// A running origin serving one object at every path.
#[derive(Debug, Clone)]
pub struct ChangingOrigin {
    addr: SocketAddr,
    state: Arc<Mutex<State>>,
}

impl Version {
    /// `bytes` with a strong ETag from their hash and a Last-Modified `n` seconds
    /// after a fixed date.
    pub fn new(bytes: Bytes, n: u64) -> Self {
        let etag = format!("\"{}\"", &blake3::hash(&bytes).to_hex()[..16]);
        let t = std::time::UNIX_EPOCH + std::time::Duration::from_secs(1_700_000_000 + n);
        Self {
            bytes,
            etag,
            last_modified: httpdate::fmt_http_date(t),
        }
    }
}

impl ChangingOrigin {
    /// Starts on `ip`:0, serving `v1` until switched.
    pub async fn start(ip: &str, v1: Version, v2: Version, how: Switch) -> std::io::Result<Self> {
        let l = TcpListener::bind((ip, 0)).await?;
        let o = Self {
            addr: l.local_addr()?,
            state: Arc::new(Mutex::new(State {
                v1,
                v2,
                how,
                switch_at: u64::MAX,
                ranges: 0,
            })),
        };
        let srv = o.clone();
        tokio::spawn(async move {
            while let Ok((s, _)) = l.accept().await {
                let srv = srv.clone();
                tokio::spawn(async move {
                    let svc = service_fn(move |req| {
                        let srv = srv.clone();
                        async move { Ok::<_, Infallible>(srv.handle(&req)) }
                    });
                    let _ = http1::Builder::new()
                        .serve_connection(TokioIo::new(s), svc)
                        .await;
                });
            }
        });
        Ok(o)
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// Switches once `n` more range requests have been answered.
    pub fn switch_after_ranges(&self, n: u64) {
        let mut s = self.lock();
        s.switch_at = s.ranges.saturating_add(n);
    }

    /// Switches now.
    pub fn switch_now(&self) {
        self.switch_after_ranges(0);
    }

    /// Serves version 1 honestly again (a `ShiftRange`/`OtherLength` origin fixed).
    pub fn honest(&self) {
        self.lock().switch_at = u64::MAX;
    }

    /// Range requests received so far.
    pub fn ranges(&self) -> u64 {
        self.lock().ranges
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn handle(&self, req: &Request<Incoming>) -> Response<Full<Bytes>> {
        let range = req
            .headers()
            .get(header::RANGE)
            .and_then(|v| v.to_str().ok())
            .and_then(parse_range);
        let (v, how) = {
            let mut s = self.lock();
            let switched = s.ranges >= s.switch_at;
            if range.is_some() {
                s.ranges += 1;
            }
            match (switched, s.how) {
                (true, Switch::NewVersion) => (s.v2.clone(), None),
                (true, how) => (s.v1.clone(), Some(how)),
                (false, _) => (s.v1.clone(), None),
            }
        };
        if req.method() != Method::GET && req.method() != Method::HEAD {
            return reply(
                Response::builder().status(StatusCode::METHOD_NOT_ALLOWED),
                Bytes::new(),
            );
        }
        let size = v.bytes.len() as u64;
        let mut b = Response::builder()
            .header(header::ETAG, &v.etag)
            .header(header::LAST_MODIFIED, &v.last_modified)
            .header(header::ACCEPT_RANGES, "bytes");
        let body = match range.filter(|&(first, last)| first <= last && last < size) {
            None => v.bytes.clone(),
            Some((first, last)) => {
                let (first, last, complete) = match how {
                    None => (first, last, size),
                    Some(Switch::OtherLength) => (first, last, size + 1),
                    Some(_) if last + 1 < size => (first + 1, last + 1, size),
                    Some(_) => (first.saturating_sub(1), last - 1, size),
                };
                b = b.status(StatusCode::PARTIAL_CONTENT).header(
                    header::CONTENT_RANGE,
                    format!("bytes {first}-{last}/{complete}"),
                );
                v.bytes.slice(first as usize..=last as usize)
            }
        };
        b = b.header(header::CONTENT_LENGTH, body.len());
        if req.method() == Method::HEAD {
            return reply(b, Bytes::new());
        }
        reply(b, body)
    }
}

fn reply(b: http::response::Builder, body: Bytes) -> Response<Full<Bytes>> {
    b.body(Full::new(body)).unwrap_or_else(|_| {
        let mut r = Response::new(Full::new(Bytes::new()));
        *r.status_mut() = StatusCode::INTERNAL_SERVER_ERROR;
        r
    })
}

/// `bytes=FIRST-LAST`.
fn parse_range(v: &str) -> Option<(u64, u64)> {
    let (first, last) = v.strip_prefix("bytes=")?.split_once('-')?;
    Some((first.trim().parse().ok()?, last.trim().parse().ok()?))
}
