//! The admin listener: `/metrics` (Prometheus text), `/live` (the process answers),
//! `/ready` (the agent serves clients: listeners up, not shutting down, the cache
//! directory usable; see [`Ready`]; its body also says, one line per registry,
//! whether containerd is wired to the registry mirrors, which never changes the
//! status code: [`crate::containerd::Wiring`]), and `POST /v1/prefetch` (puts URLs into the
//! cache, [`crate::proxy::prefetch`]). Plain HTTP on a node-local address by default,
//! without authentication: whoever reaches it can read counters and make the agent
//! fetch URLs its rules allow, so it must stay node-local.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use http::header::{self, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use shoal_node::admin::AdminLimits;
use tokio::net::TcpListener;

use crate::containerd::Wiring;
use crate::metrics::Metrics;
use crate::object::read::ProxyBody;
use crate::proxy::Proxy;
use crate::proxy::respond::{error, full};
use crate::store::ChunkStore;

mod prefetch;

/// Readiness: set by the app once every listener is up, cleared when shutdown begins;
/// with a store attached, also false while the store is unusable
/// ([`ChunkStore::usable`]).
#[derive(Debug, Clone, Default)]
pub struct Ready {
    up: Arc<AtomicBool>,
    store: Option<ChunkStore>,
    wiring: Option<Arc<Wiring>>,
}

/// Why `/ready` answers 503.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NotReady {
    /// Not started yet, or shutting down.
    Down,
    /// The cache directory can be neither written nor served from.
    Store,
}

impl Ready {
    /// Readiness that also follows `store`.
    pub fn with_store(store: ChunkStore) -> Self {
        Self {
            up: Arc::default(),
            store: Some(store),
            wiring: None,
        }
    }

    /// Also reports, in `/ready`'s body, whether containerd is wired to these
    /// registry mirrors (read at each request: a few small files).
    pub fn with_wiring(mut self, wiring: Option<Wiring>) -> Self {
        self.wiring = wiring.map(Arc::new);
        self
    }

    /// `/ready`'s body when ready.
    fn body(&self) -> String {
        let mut b = "ready\n".to_owned();
        if let Some(w) = &self.wiring {
            b.push_str(&w.status_lines());
        }
        b
    }

    pub fn set(&self, v: bool) {
        self.up.store(v, Ordering::Release);
    }

    pub fn get(&self) -> bool {
        self.check().is_ok()
    }

    /// Ready, or why not.
    pub fn check(&self) -> Result<(), NotReady> {
        if !self.up.load(Ordering::Acquire) {
            return Err(NotReady::Down);
        }
        match &self.store {
            Some(s) if !s.usable() => Err(NotReady::Store),
            _ => Ok(()),
        }
    }
}

/// Serves the admin endpoints until `shutdown` resolves.
/// `proxy` serves `POST /v1/prefetch`; without it that endpoint answers 503.
pub async fn serve(
    listener: TcpListener,
    metrics: Metrics,
    ready: Ready,
    proxy: Option<Arc<Proxy>>,
    shutdown: impl Future<Output = ()>,
) {
    let prefetch = prefetch::Prefetcher::new(proxy);
    let handler = move |req: Request<Incoming>| {
        let (m, r, p) = (metrics.clone(), ready.clone(), prefetch.clone());
        async move {
            if req.uri().path() == prefetch::PATH {
                return p.handle(req).await;
            }
            route(&req, &m, &r)
        }
    };
    shoal_node::admin::serve(listener, AdminLimits::default(), handler, shutdown).await;
}

fn route(req: &Request<Incoming>, metrics: &Metrics, ready: &Ready) -> Response<ProxyBody> {
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return error(
            StatusCode::METHOD_NOT_ALLOWED,
            "admin endpoints are GET only",
        );
    }
    match req.uri().path() {
        "/metrics" => {
            let mut r = Response::new(full(metrics.render()));
            r.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static(shoal_node::metrics::CONTENT_TYPE),
            );
            r
        }
        "/live" => Response::new(full("live\n")),
        "/ready" => match ready.check() {
            Ok(()) => Response::new(full(ready.body())),
            Err(NotReady::Down) => error(
                StatusCode::SERVICE_UNAVAILABLE,
                "not ready: starting or shutting down",
            ),
            Err(NotReady::Store) => error(
                StatusCode::SERVICE_UNAVAILABLE,
                "not ready: the cache directory can be neither written nor read",
            ),
        },
        _ => error(
            StatusCode::NOT_FOUND,
            "try /metrics, /live, /ready or POST /v1/prefetch",
        ),
    }
}
