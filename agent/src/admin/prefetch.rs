//! `POST /v1/prefetch`: `{"urls": ["http://...", ...]}` → `202` with one entry per URL
//! (`accepted`, and a `reason` when not), then the accepted URLs are fetched into the
//! cache in the background ([`Proxy::prefetch`]), a few at a time. The answer does not
//! wait for the fetches: `shoal_prefetch_total{result}` counts how they ended.
//!
//! Bounds: a body over [`MAX_BODY`] gets `413`, more than [`MAX_URLS`] URLs `413`,
//! a body that is not that JSON `400`.

use std::sync::Arc;

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use serde::{Deserialize, Serialize};
use tokio::sync::Semaphore;

use crate::object::read::ProxyBody;
use crate::proxy::Proxy;
use crate::proxy::respond::{error, full};

/// The endpoint's path.
pub(super) const PATH: &str = "/v1/prefetch";
/// Largest accepted request body, bytes.
pub const MAX_BODY: usize = 1 << 20;
/// Most URLs in one request.
pub const MAX_URLS: usize = 1000;
/// Prefetches running at once, over every request.
const PARALLEL: usize = 4;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Ask {
    urls: Vec<String>,
}

/// The `202` body.
#[derive(Debug, Serialize)]
struct Answer {
    accepted: usize,
    urls: Vec<Entry>,
}

#[derive(Debug, Serialize)]
struct Entry {
    url: String,
    accepted: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    reason: Option<String>,
}

/// Shared by the admin connections. Cheap to clone.
#[derive(Debug, Clone)]
pub(super) struct Prefetcher {
    proxy: Option<Arc<Proxy>>,
    running: Arc<Semaphore>,
}

impl Prefetcher {
    pub(super) fn new(proxy: Option<Arc<Proxy>>) -> Self {
        Self {
            proxy,
            running: Arc::new(Semaphore::new(PARALLEL)),
        }
    }

    pub(super) async fn handle(&self, req: Request<Incoming>) -> Response<ProxyBody> {
        if req.method() != Method::POST {
            return error(
                StatusCode::METHOD_NOT_ALLOWED,
                "POST a JSON {\"urls\": [...]}",
            );
        }
        let Some(proxy) = self.proxy.clone() else {
            return error(StatusCode::SERVICE_UNAVAILABLE, "no proxy to prefetch with");
        };
        let body = match read_body(req).await {
            Ok(b) => b,
            Err(resp) => return resp,
        };
        let ask: Ask = match serde_json::from_slice(&body) {
            Ok(a) => a,
            Err(e) => {
                return error(
                    StatusCode::BAD_REQUEST,
                    &format!("want {{\"urls\": [\"http://...\", ...]}}: {e}"),
                );
            }
        };
        if ask.urls.len() > MAX_URLS {
            return error(
                StatusCode::PAYLOAD_TOO_LARGE,
                &format!("{} URLs; at most {MAX_URLS} per request", ask.urls.len()),
            );
        }
        let mut entries = Vec::with_capacity(ask.urls.len());
        let mut wants = Vec::new();
        for url in ask.urls {
            match proxy.prefetch_want(&url) {
                Ok(w) => {
                    wants.push(w);
                    entries.push(Entry {
                        url,
                        accepted: true,
                        reason: None,
                    });
                }
                Err(e) => {
                    proxy
                        .metrics()
                        .prefetch
                        .with_label_values(&["refused"])
                        .inc();
                    entries.push(Entry {
                        url,
                        accepted: false,
                        reason: Some(e.to_string()),
                    });
                }
            }
        }
        let answer = Answer {
            accepted: wants.len(),
            urls: entries,
        };
        for want in wants {
            let (proxy, running) = (proxy.clone(), self.running.clone());
            tokio::spawn(async move {
                // The semaphore is never closed.
                let Ok(_slot) = running.acquire_owned().await else {
                    return;
                };
                proxy.prefetch(&want).await;
            });
        }
        let json = serde_json::to_vec(&answer).unwrap_or_default();
        let mut r = Response::new(full(Bytes::from(json)));
        *r.status_mut() = StatusCode::ACCEPTED;
        r.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        r
    }
}

/// The request body, at most [`MAX_BODY`] bytes; else the error response.
async fn read_body(req: Request<Incoming>) -> Result<Bytes, Response<ProxyBody>> {
    let too_large = || {
        error(
            StatusCode::PAYLOAD_TOO_LARGE,
            &format!("body over {MAX_BODY} bytes"),
        )
    };
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > MAX_BODY as u64) {
        return Err(too_large());
    }
    match Limited::new(req.into_body(), MAX_BODY).collect().await {
        Ok(c) => Ok(c.to_bytes()),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => Err(too_large()),
        Err(e) => Err(error(
            StatusCode::BAD_REQUEST,
            &format!("reading the body: {e}"),
        )),
    }
}
