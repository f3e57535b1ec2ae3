//! A storage front for the registry: what S3-backed registries and Docker Hub do to
//! blob downloads, on loopback. Every request is relayed to the registry, except
//! `GET /v2/NAME/blobs/sha256:HEX`, which is first checked with a `HEAD` to the
//! registry carrying the client's own headers (so the registry's auth still decides),
//! then answered with `307 Location: http://STORE/blobs/HEX?sig=RANDOM&expires=…`: a
//! signed, short-lived URL, new for every download, on a second server that reads the
//! blob from the registry's storage directory. The registry's distribution 2.8 only
//! redirects for cloud storage drivers, hence this front.
//!
//! The store refuses (`403`) a URL it did not sign, and counts the bytes it sends:
//! the registry's blob bytes are then its access log's plus the store's.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Empty, Full};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use super::Server;

/// A running front and its store.
#[derive(Debug)]
pub struct Front {
    /// Where clients (the agent) send registry requests.
    pub addr: SocketAddr,
    store_bytes: Arc<AtomicU64>,
    redirects: Arc<AtomicU64>,
    _front: Server,
    _store: Server,
}

#[derive(Debug, Default)]
struct Signed {
    sigs: HashSet<String>,
    next: u64,
}

impl Front {
    /// Fronts the registry at `registry` whose storage root is `root`; the front
    /// listens on `ip`, the store on `store_ip`.
    pub async fn start(
        ip: &str,
        store_ip: &str,
        registry: SocketAddr,
        root: PathBuf,
    ) -> std::io::Result<Self> {
        let signed = Arc::new(Mutex::new(Signed::default()));
        let store_bytes = Arc::new(AtomicU64::new(0));
        let (sg, sb) = (signed.clone(), store_bytes.clone());
        let store = Server::start(store_ip, move |req| {
            let (sg, sb, root) = (sg.clone(), sb.clone(), root.clone());
            async move { serve_store(&req, &sg, &sb, &root) }
        })
        .await?;
        let store_addr = store.addr;
        let redirects = Arc::new(AtomicU64::new(0));
        let rd = redirects.clone();
        let front = Server::start(ip, move |req| {
            let (sg, rd) = (signed.clone(), rd.clone());
            async move {
                let blob = (req.method() == Method::GET)
                    .then(|| blob_hex(req.uri().path()))
                    .flatten();
                let Some(hex) = blob else {
                    return relay(registry, &req, req.method().clone()).await;
                };
                let head = relay(registry, &req, Method::HEAD).await;
                if head.status() != StatusCode::OK {
                    // The registry's own refusal, with its body.
                    return relay(registry, &req, Method::GET).await;
                }
                let sig = {
                    let Ok(mut s) = sg.lock() else {
                        return status(StatusCode::INTERNAL_SERVER_ERROR);
                    };
                    s.next += 1;
                    let sig = format!("{:016x}{}", rand::random::<u64>(), s.next);
                    s.sigs.insert(sig.clone());
                    sig
                };
                rd.fetch_add(1, Ordering::Relaxed);
                let mut r = status(StatusCode::TEMPORARY_REDIRECT);
                let loc = format!("http://{store_addr}/blobs/{hex}?sig={sig}&expires=60");
                if let Ok(v) = http::HeaderValue::from_str(&loc) {
                    r.headers_mut().insert(http::header::LOCATION, v);
                }
                r
            }
        })
        .await?;
        Ok(Front {
            addr: front.addr,
            store_bytes,
            redirects,
            _front: front,
            _store: store,
        })
    }

    /// Blob bytes the store has sent.
    pub fn store_bytes(&self) -> u64 {
        self.store_bytes.load(Ordering::Relaxed)
    }

    /// Blob downloads answered with a redirect.
    pub fn redirects(&self) -> u64 {
        self.redirects.load(Ordering::Relaxed)
    }
}

/// `HEX` of `/v2/NAME/blobs/sha256:HEX`.
fn blob_hex(path: &str) -> Option<String> {
    let (_, d) = path.strip_prefix("/v2/")?.rsplit_once("/blobs/sha256:")?;
    (d.len() == 64 && d.bytes().all(|b| b.is_ascii_hexdigit())).then(|| d.to_owned())
}

fn status(s: StatusCode) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::new()));
    *r.status_mut() = s;
    r
}

/// `GET /blobs/HEX?sig=S…`: the blob from the registry's storage, whole or one range.
fn serve_store(
    req: &Request<hyper::body::Incoming>,
    signed: &Mutex<Signed>,
    sent: &AtomicU64,
    root: &std::path::Path,
) -> Response<Full<Bytes>> {
    let sig = req
        .uri()
        .query()
        .unwrap_or("")
        .split('&')
        .find_map(|p| p.strip_prefix("sig="))
        .unwrap_or("");
    let known = signed.lock().is_ok_and(|s| s.sigs.contains(sig));
    if !known {
        return status(StatusCode::FORBIDDEN);
    }
    let Some(hex) = req.uri().path().strip_prefix("/blobs/") else {
        return status(StatusCode::NOT_FOUND);
    };
    let file = root
        .join("docker/registry/v2/blobs/sha256")
        .join(hex.get(..2).unwrap_or("xx"))
        .join(hex)
        .join("data");
    let Ok(data) = std::fs::read(&file) else {
        return status(StatusCode::NOT_FOUND);
    };
    let len = data.len() as u64;
    let range = req
        .headers()
        .get(http::header::RANGE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("bytes="))
        .and_then(|v| v.split_once('-'))
        .and_then(|(a, b)| {
            let a: u64 = a.parse().ok()?;
            let b: u64 = if b.is_empty() {
                len - 1
            } else {
                b.parse().ok()?
            };
            (a <= b && b < len).then_some((a, b))
        });
    let (code, body) = match range {
        Some((a, b)) => (
            StatusCode::PARTIAL_CONTENT,
            Bytes::copy_from_slice(&data[a as usize..=b as usize]),
        ),
        None => (StatusCode::OK, Bytes::from(data)),
    };
    let n = body.len() as u64;
    let mut r = Response::new(Full::new(if req.method() == Method::HEAD {
        Bytes::new()
    } else {
        sent.fetch_add(n, Ordering::Relaxed);
        body
    }));
    *r.status_mut() = code;
    let h = r.headers_mut();
    h.insert(http::header::CONTENT_LENGTH, n.into());
    h.insert(
        http::header::ACCEPT_RANGES,
        http::HeaderValue::from_static("bytes"),
    );
    h.insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/octet-stream"),
    );
    if let Ok(v) = http::HeaderValue::from_str(&format!("\"{hex}\"")) {
        h.insert(http::header::ETAG, v);
    }
    if let Some((a, b)) = range
        && let Ok(v) = http::HeaderValue::from_str(&format!("bytes {a}-{b}/{len}"))
    {
        h.insert(http::header::CONTENT_RANGE, v);
    }
    r
}

/// Sends `req`'s target and headers to `upstream` as `method` (no body) and returns
/// the whole answer; a failure to reach the registry is a `502`.
async fn relay(
    upstream: SocketAddr,
    req: &Request<hyper::body::Incoming>,
    method: Method,
) -> Response<Full<Bytes>> {
    let target = req
        .uri()
        .path_and_query()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_else(|| "/".into());
    let out = async {
        let s = TcpStream::connect(upstream).await?;
        let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(s)).await?;
        tokio::spawn(conn);
        let mut r = Request::builder().method(method).uri(target);
        for (k, v) in req.headers() {
            if k != http::header::HOST {
                r = r.header(k, v);
            }
        }
        r = r.header(http::header::HOST, upstream.to_string());
        let resp = send.send_request(r.body(Empty::<Bytes>::new())?).await?;
        let (parts, body) = resp.into_parts();
        let body = body.collect().await?.to_bytes();
        anyhow::Ok(Response::from_parts(parts, Full::new(body)))
    };
    out.await
        .unwrap_or_else(|_| status(StatusCode::BAD_GATEWAY))
}
