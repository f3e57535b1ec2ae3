//! An origin that fails on demand, for stale-if-error tests: serves one object (with
//! a strong ETag, conditionals, HEAD and single ranges) until told to answer every
//! request with a status, to stall before the response head, or to stop listening
//! (connection refused). Every response carries `Connection: close`, so a mode
//! applies to the very next request, never to a pooled connection.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::task::AbortHandle;

/// How the origin answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Serve,
    /// Every request gets this status and a short body.
    Status(u16),
    /// No response head for a minute.
    Stall,
}

#[derive(Debug)]
struct State {
    mode: Mode,
    requests: u64,
    conditional: u64,
}

/// A running fault origin.
#[derive(Debug, Clone)]
pub struct FaultOrigin {
    addr: SocketAddr,
    body: Bytes,
    headers: Arc<Vec<(String, String)>>,
    state: Arc<Mutex<State>>,
    accept: AbortHandle,
}

pub const ETAG: &str = "\"fault-v1\"";

impl FaultOrigin {
    /// Serves `body` at every path on `ip`:0, with the extra response `headers`.
    pub async fn start(ip: &str, body: Bytes, headers: &[(&str, &str)]) -> std::io::Result<Self> {
        let l = TcpListener::bind((ip, 0)).await?;
        let addr = l.local_addr()?;
        let state = Arc::new(Mutex::new(State {
            mode: Mode::Serve,
            requests: 0,
            conditional: 0,
        }));
        let headers: Arc<Vec<(String, String)>> = Arc::new(
            headers
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
        );
        let (st, b, h) = (state.clone(), body.clone(), headers.clone());
        let task = tokio::spawn(async move {
            while let Ok((s, _)) = l.accept().await {
                let (st, b, h) = (st.clone(), b.clone(), h.clone());
                tokio::spawn(async move {
                    let svc = service_fn(move |req| {
                        let (st, b, h) = (st.clone(), b.clone(), h.clone());
                        async move { Ok::<_, Infallible>(handle(&st, &b, &h, req).await) }
                    });
                    let _ = http1::Builder::new()
                        .serve_connection(TokioIo::new(s), svc)
                        .await;
                });
            }
        });
        Ok(Self {
            addr,
            body,
            headers,
            state,
            accept: task.abort_handle(),
        })
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    pub fn set_mode(&self, mode: Mode) {
        self.lock().mode = mode;
    }

    /// Closes the listener: new connections are refused.
    pub fn stop(&self) {
        self.accept.abort();
    }

    /// Requests seen (any method, any mode).
    pub fn requests(&self) -> u64 {
        self.lock().requests
    }

    /// Requests that carried `If-None-Match` or `If-Modified-Since`.
    pub fn conditional(&self) -> u64 {
        self.lock().conditional
    }

    pub fn body(&self) -> &Bytes {
        &self.body
    }

    pub fn headers(&self) -> &[(String, String)] {
        &self.headers
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

async fn handle(
    state: &Mutex<State>,
    body: &Bytes,
    headers: &[(String, String)],
    req: Request<Incoming>,
) -> Response<Full<Bytes>> {
    let h = req.headers();
    let mode = {
        let mut st = state.lock().unwrap_or_else(|p| p.into_inner());
        st.requests += 1;
        if h.contains_key(header::IF_NONE_MATCH) || h.contains_key(header::IF_MODIFIED_SINCE) {
            st.conditional += 1;
        }
        st.mode
    };
    let mut resp = Response::builder().header(header::CONNECTION, "close");
    match mode {
        Mode::Stall => {
            tokio::time::sleep(Duration::from_secs(60)).await;
            return resp.body(Full::new(Bytes::new())).unwrap();
        }
        Mode::Status(s) => {
            return resp
                .status(s)
                .header(header::CONTENT_TYPE, "text/plain")
                .body(Full::new(Bytes::from(format!("origin says {s}\n"))))
                .unwrap();
        }
        Mode::Serve => {}
    }
    resp = resp
        .header(header::ETAG, ETAG)
        .header(header::ACCEPT_RANGES, "bytes");
    for (k, v) in headers {
        resp = resp.header(k.as_str(), v.as_str());
    }
    if h.get(header::IF_NONE_MATCH).and_then(|v| v.to_str().ok()) == Some(ETAG) {
        return resp
            .status(StatusCode::NOT_MODIFIED)
            .body(Full::new(Bytes::new()))
            .unwrap();
    }
    let len = body.len() as u64;
    let range = h
        .get(header::RANGE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("bytes="))
        .and_then(|v| v.split_once('-'))
        .and_then(|(a, b)| Some((a.parse::<u64>().ok()?, b.parse::<u64>().ok()?)))
        .filter(|(a, b)| a <= b && *b < len);
    let (status, bytes) = match range {
        Some((a, b)) => {
            resp = resp.header(
                header::CONTENT_RANGE,
                HeaderValue::from_str(&format!("bytes {a}-{b}/{len}")).unwrap(),
            );
            (
                StatusCode::PARTIAL_CONTENT,
                body.slice(a as usize..=b as usize),
            )
        }
        None => (StatusCode::OK, body.clone()),
    };
    resp = resp.header(header::CONTENT_LENGTH, bytes.len());
    let bytes = if req.method() == Method::HEAD {
        Bytes::new()
    } else {
        bytes
    };
    resp.status(status).body(Full::new(bytes)).unwrap()
}
