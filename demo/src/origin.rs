//! A small real HTTP/1.1 origin for the demo and the tests: serves in-memory objects
//! with ETag, Last-Modified, Range, HEAD and conditional requests, and counts what it
//! sends. Not a production server: no TLS, no files, no limits.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, StreamBody, combinators::BoxBody};
use hyper::body::{Frame, Incoming};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

type Body = BoxBody<Bytes, Infallible>;

/// One served object.
#[derive(Debug, Clone)]
pub struct Object {
    pub bytes: Bytes,
    pub etag: Option<String>,
    pub last_modified: Option<String>,
    /// Extra response headers.
    pub headers: Vec<(String, String)>,
    /// If set, the body stops after this many bytes until [`Origin::release`].
    pub gate_after: Option<usize>,
}

#[derive(Debug, Default)]
struct State {
    objects: HashMap<String, Object>,
    requests: HashMap<String, u64>,
    range_requests: HashMap<String, u64>,
}

/// A running origin.
#[derive(Debug, Clone)]
pub struct Origin {
    addr: SocketAddr,
    state: Arc<Mutex<State>>,
    bytes_sent: Arc<AtomicU64>,
    gate: Arc<Semaphore>,
}

impl Object {
    /// An object with a strong ETag derived from its content and a fixed Last-Modified.
    pub fn new(bytes: impl Into<Bytes>) -> Self {
        let bytes = bytes.into();
        let etag = format!("\"{}\"", &blake3::hash(&bytes).to_hex()[..16]);
        Self {
            bytes,
            etag: Some(etag),
            last_modified: Some(httpdate::fmt_http_date(
                SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000),
            )),
            headers: Vec::new(),
            gate_after: None,
        }
    }

    pub fn header(mut self, k: &str, v: &str) -> Self {
        self.headers.push((k.to_owned(), v.to_owned()));
        self
    }
}

/// Deterministic pseudo-random bytes (xorshift), so tests need no RNG state.
pub fn random_bytes(len: usize, seed: u64) -> Bytes {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut v = Vec::with_capacity(len + 8);
    while v.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        v.extend_from_slice(&x.to_le_bytes());
    }
    v.truncate(len);
    Bytes::from(v)
}

impl Origin {
    /// Starts an origin on `ip`:0.
    pub async fn start(ip: &str) -> std::io::Result<Self> {
        Self::start_with(ip, None).await
    }

    /// Starts an HTTPS origin on `ip`:0 with `tls` (no client authentication).
    pub async fn start_tls(ip: &str, tls: Arc<rustls::ServerConfig>) -> std::io::Result<Self> {
        Self::start_with(ip, Some(tokio_rustls::TlsAcceptor::from(tls))).await
    }

    async fn start_with(ip: &str, tls: Option<tokio_rustls::TlsAcceptor>) -> std::io::Result<Self> {
        let l = TcpListener::bind((ip, 0)).await?;
        let o = Self {
            addr: l.local_addr()?,
            state: Arc::default(),
            bytes_sent: Arc::default(),
            gate: Arc::new(Semaphore::new(0)),
        };
        let srv = o.clone();
        tokio::spawn(async move {
            while let Ok((s, _)) = l.accept().await {
                let (srv, tls) = (srv.clone(), tls.clone());
                tokio::spawn(async move {
                    let svc = service_fn(move |req| {
                        let srv = srv.clone();
                        async move { Ok::<_, Infallible>(srv.handle(req)) }
                    });
                    match tls {
                        None => {
                            let _ = http1::Builder::new()
                                .serve_connection(TokioIo::new(s), svc)
                                .await;
                        }
                        Some(acceptor) => {
                            if let Ok(s) = acceptor.accept(s).await {
                                let _ = http1::Builder::new()
                                    .serve_connection(TokioIo::new(s), svc)
                                    .await;
                            }
                        }
                    }
                });
            }
        });
        Ok(o)
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://ADDR/path` (path starts with `/`).
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    pub fn put(&self, path: &str, obj: Object) {
        self.lock().objects.insert(path.to_owned(), obj);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // Critical sections are single map operations; a poisoned lock holds valid data.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// GET/HEAD requests seen for `path` (any status).
    pub fn requests(&self, path: &str) -> u64 {
        self.lock().requests.get(path).copied().unwrap_or(0)
    }

    /// Requests for `path` that carried a `Range` header.
    pub fn range_requests(&self, path: &str) -> u64 {
        self.lock().range_requests.get(path).copied().unwrap_or(0)
    }

    /// Body bytes sent, all paths.
    pub fn bytes_sent(&self) -> u64 {
        self.bytes_sent.load(Ordering::Relaxed)
    }

    /// Lets every gated body continue.
    pub fn release(&self) {
        self.gate.add_permits(1 << 20);
    }

    fn handle(&self, req: Request<Incoming>) -> Response<Body> {
        let path = req.uri().path().to_owned();
        let obj = {
            let mut st = self.lock();
            *st.requests.entry(path.clone()).or_default() += 1;
            if req.headers().contains_key(header::RANGE) {
                *st.range_requests.entry(path.clone()).or_default() += 1;
            }
            st.objects.get(&path).cloned()
        };
        let Some(obj) = obj else {
            return status(StatusCode::NOT_FOUND);
        };
        if req.method() != Method::GET && req.method() != Method::HEAD {
            return status(StatusCode::METHOD_NOT_ALLOWED);
        }
        let h = req.headers();
        let hv = |n| h.get(n).and_then(|v: &HeaderValue| v.to_str().ok());
        let mut resp = Response::builder();
        if let Some(e) = &obj.etag {
            resp = resp.header(header::ETAG, e);
        }
        if let Some(lm) = &obj.last_modified {
            resp = resp.header(header::LAST_MODIFIED, lm);
        }
        for (k, v) in &obj.headers {
            resp = resp.header(k, v);
        }
        resp = resp.header(header::ACCEPT_RANGES, "bytes");
        let not_modified = match (hv(header::IF_NONE_MATCH), hv(header::IF_MODIFIED_SINCE)) {
            (Some(inm), _) => obj
                .etag
                .as_deref()
                .is_some_and(|e| inm.split(',').any(|t| t.trim() == e || t.trim() == "*")),
            (None, Some(ims)) => obj.last_modified.as_deref() == Some(ims),
            _ => false,
        };
        if not_modified {
            return finish(resp.status(StatusCode::NOT_MODIFIED), empty());
        }
        let size = obj.bytes.len() as u64;
        let if_range_ok = match hv(header::IF_RANGE) {
            None => true,
            Some(v) => obj.etag.as_deref() == Some(v) || obj.last_modified.as_deref() == Some(v),
        };
        let mut body = obj.bytes.clone();
        let mut st = StatusCode::OK;
        if let (Some(r), true) = (hv(header::RANGE), if_range_ok) {
            match shoal_proto::range::parse_range_header(r, size) {
                // Several ranges: the whole object, which RFC 9110 allows.
                shoal_proto::RangeDecision::Full | shoal_proto::RangeDecision::Multi(_) => {}
                shoal_proto::RangeDecision::Partial(br) => {
                    st = StatusCode::PARTIAL_CONTENT;
                    resp = resp.header(header::CONTENT_RANGE, br.content_range(size));
                    body = body.slice(br.start as usize..br.end as usize);
                }
                shoal_proto::RangeDecision::Unsatisfiable => {
                    let r = resp
                        .status(StatusCode::RANGE_NOT_SATISFIABLE)
                        .header(header::CONTENT_RANGE, format!("bytes */{size}"));
                    return finish(r, empty());
                }
            }
        }
        resp = resp.status(st).header(header::CONTENT_LENGTH, body.len());
        if req.method() == Method::HEAD {
            return finish(resp, empty());
        }
        self.bytes_sent
            .fetch_add(body.len() as u64, Ordering::Relaxed);
        match obj.gate_after {
            Some(n) if n < body.len() => {
                let (first, rest) = (body.slice(..n), body.slice(n..));
                let gate = self.gate.clone();
                let stream = futures_stream(first, rest, gate);
                finish(resp, BoxBody::new(StreamBody::new(stream)))
            }
            _ => finish(resp, Full::new(body).boxed()),
        }
    }
}

fn futures_stream(
    first: Bytes,
    rest: Bytes,
    gate: Arc<Semaphore>,
) -> impl futures_core_stream::Stream<Item = Result<Frame<Bytes>, Infallible>> {
    let (tx, rx) = tokio::sync::mpsc::channel(2);
    tokio::spawn(async move {
        let _ = tx.send(Ok(Frame::data(first))).await;
        if let Ok(p) = gate.acquire().await {
            p.forget();
        }
        let _ = tx.send(Ok(Frame::data(rest))).await;
    });
    futures_core_stream::from_receiver(rx)
}

/// Minimal stream adapter over an mpsc receiver.
mod futures_core_stream {
    pub use futures_util::Stream;
    pub fn from_receiver<T>(rx: tokio::sync::mpsc::Receiver<T>) -> impl Stream<Item = T> {
        futures_util::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|x| (x, rx)) })
    }
}

fn empty() -> Body {
    Full::new(Bytes::new()).boxed()
}

fn status(s: StatusCode) -> Response<Body> {
    let mut r = Response::new(empty());
    *r.status_mut() = s;
    r
}

/// The response, or a 500 if a stored header value was not valid.
fn finish(b: http::response::Builder, body: Body) -> Response<Body> {
    b.body(body)
        .unwrap_or_else(|_| status(StatusCode::INTERNAL_SERVER_ERROR))
}
