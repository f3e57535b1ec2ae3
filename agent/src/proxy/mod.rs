//! The client-facing HTTP/1.1 listener: forward proxy (`GET http://origin/path`),
//! named mirrors (`GET /m/NAME/path` → `UPSTREAM/path`, which is how HTTPS origins
//! are cached), and `CONNECT` tunnels (never cached: the agent cannot see inside TLS).
//!
//! Only `GET` and `HEAD` are proxied (and `CONNECT`); other methods get `501`: the
//! clients Shoal serves (package managers, image pulls, updaters) only read.
//! Requests with `Authorization` or `Cookie`, or `Cache-Control: no-store`, and URLs
//! whose rule says `pass`, are relayed uncached.

pub mod pass;
pub mod respond;
pub mod rules;
mod server;

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Instant;

use http::header::{self, HeaderMap};
use http::{Method, Request, Response, StatusCode, Uri};
use hyper::body::Incoming;

use crate::config::{Config, Mode};
use crate::egress::EgressPolicy;
use crate::metrics::Metrics;
use crate::object::read::{ProxyBody, Serve};
use crate::object::{Lookup, ObjectCache, Want};
use crate::origin::OriginError;
pub use rules::Rules;
pub use server::{ProxyServer, serve};

/// Request handling state shared by every connection.
#[derive(Debug)]
pub struct Proxy {
    cache: ObjectCache,
    rules: Rules,
    mirrors: HashMap<String, Uri>,
    policy: EgressPolicy,
    metrics: Metrics,
    connect_timeout: std::time::Duration,
}

/// Why a request was refused before reaching an origin: the client's fault.
#[derive(Debug, thiserror::Error)]
enum ClientError {
    #[error("not a proxy request: use absolute-form (curl -x http://agent URL) or /m/NAME/path")]
    NotProxy,
    #[error("no mirror named {0:?} (see [[mirrors]] in the configuration)")]
    NoMirror(String),
    #[error("method {0} is not proxied (GET, HEAD and CONNECT are)")]
    Method(Method),
    #[error("CONNECT needs host:port")]
    ConnectTarget,
}

impl Proxy {
    pub fn new(cfg: &Config, cache: ObjectCache, policy: EgressPolicy, metrics: Metrics) -> Self {
        let default_mode = if cfg.swarm_enabled() {
            Mode::P2p
        } else {
            Mode::Cache
        };
        let mirrors = cfg
            .mirrors
            .iter()
            .filter_map(|m| {
                m.upstream
                    .trim_end_matches('/')
                    .parse::<Uri>()
                    .ok()
                    .map(|u| (m.name.clone(), u))
            })
            .collect();
        Self {
            cache,
            rules: Rules::new(&cfg.rules, default_mode),
            mirrors,
            policy,
            metrics,
            connect_timeout: cfg.origin.connect_timeout,
        }
    }

    pub fn cache(&self) -> &ObjectCache {
        &self.cache
    }

    /// Handles one request; never fails (errors become responses).
    pub async fn handle(
        self: Arc<Self>,
        req: Request<Incoming>,
    ) -> Result<Response<ProxyBody>, Infallible> {
        let start = Instant::now();
        let (resp, mode) = match self.route(req).await {
            Ok(r) => r,
            Err(e) => {
                let (status, msg) = match &e {
                    RouteError::Client(c) => (StatusCode::BAD_REQUEST, c.to_string()),
                    RouteError::Origin(o) => (o.status(), o.to_string()),
                };
                let status = match &e {
                    RouteError::Client(ClientError::Method(_)) => StatusCode::NOT_IMPLEMENTED,
                    RouteError::Client(ClientError::NoMirror(_)) => StatusCode::NOT_FOUND,
                    _ => status,
                };
                if status.is_server_error() {
                    tracing::warn!(%status, error = %msg, "request failed");
                } else {
                    tracing::debug!(%status, error = %msg, "request refused");
                }
                (respond::error(status, &msg), "error")
            }
        };
        self.metrics
            .requests
            .with_label_values(&[mode, resp.status().as_str()])
            .inc();
        self.metrics
            .ttfb
            .with_label_values(&[mode])
            .observe(start.elapsed().as_secs_f64());
        Ok(server::observe(
            resp,
            self.metrics.request_duration.with_label_values(&[mode]),
            start,
        ))
    }

    async fn route(
        &self,
        req: Request<Incoming>,
    ) -> Result<(Response<ProxyBody>, &'static str), RouteError> {
        if req.method() == Method::CONNECT {
            return self.connect(req).await.map(|r| (r, "connect"));
        }
        let url = self.target(req.uri())?;
        let method = req.method().clone();
        if method != Method::GET && method != Method::HEAD {
            return Err(ClientError::Method(method).into());
        }
        let headers = req.headers();
        let (mode, min_size) = self.rules.decide(&url.to_string());
        if mode == Mode::Pass || private_request(headers) {
            return Ok((self.pass(method, &url, headers.clone()).await?, "pass"));
        }
        let label = if mode == Mode::P2p { "p2p" } else { "cache" };
        if method == Method::HEAD {
            return Ok(match self.cache.peek(&url.to_string()) {
                Some(s) => (respond::respond(&self.cache, &method, headers, s), label),
                None => (self.pass(method, &url, headers.clone()).await?, "pass"),
            });
        }
        let want = Want {
            url: url.clone(),
            mode,
            min_size,
            revalidate: wants_revalidation(headers),
        };
        let resp = match self.cache.lookup(&want).await? {
            Lookup::Object(m) => respond::respond(&self.cache, &method, headers, Serve::Object(m)),
            Lookup::Fill(f) => respond::respond(&self.cache, &method, headers, Serve::Fill(f)),
            Lookup::Pass(resp) => return Ok((self.relay(resp, &url), "pass")),
            Lookup::Retry => return Ok((self.pass(method, &url, headers.clone()).await?, "pass")),
            Lookup::Stale(m) => {
                // Stale-if-error: say how old it is (RFC 9111 §5.1).
                let age = m.age_secs(std::time::SystemTime::now());
                let mut r = respond::respond(&self.cache, &method, headers, Serve::Object(m));
                let h = r.headers_mut();
                h.insert(header::AGE, http::HeaderValue::from(age));
                h.insert("x-shoal-cache", http::HeaderValue::from_static("stale"));
                r
            }
        };
        Ok((resp, label))
    }

    /// The absolute origin URL a request is for.
    fn target(&self, uri: &Uri) -> Result<Uri, ClientError> {
        if uri.scheme().is_some() && uri.authority().is_some() {
            return normalize(uri).ok_or(ClientError::NotProxy);
        }
        let path = uri.path();
        let Some(rest) = path.strip_prefix("/m/") else {
            return Err(ClientError::NotProxy);
        };
        let (name, tail) = rest.split_once('/').unwrap_or((rest, ""));
        let base = self
            .mirrors
            .get(name)
            .ok_or_else(|| ClientError::NoMirror(name.to_owned()))?;
        let q = uri.query().map(|q| format!("?{q}")).unwrap_or_default();
        let s = format!("{}/{}{}", base.to_string().trim_end_matches('/'), tail, q);
        s.parse::<Uri>()
            .ok()
            .and_then(|u| normalize(&u))
            .ok_or(ClientError::NotProxy)
    }

    async fn pass(
        &self,
        method: Method,
        url: &Uri,
        headers: HeaderMap,
    ) -> Result<Response<ProxyBody>, OriginError> {
        let resp = self
            .cache
            .origin()
            .send(method, url, headers, "pass")
            .await?;
        Ok(self.relay(resp, url))
    }

    fn relay(&self, resp: Response<Incoming>, url: &Uri) -> Response<ProxyBody> {
        let host = url.host().unwrap_or("origin").to_owned();
        pass::relay(
            resp,
            self.cache.origin().read_timeout(),
            host,
            self.metrics.clone(),
        )
    }

    async fn connect(&self, mut req: Request<Incoming>) -> Result<Response<ProxyBody>, RouteError> {
        let auth = req
            .uri()
            .authority()
            .cloned()
            .ok_or(ClientError::ConnectTarget)?;
        let port = auth.port_u16().ok_or(ClientError::ConnectTarget)?;
        let upstream =
            match pass::connect_upstream(&self.policy, auth.host(), port, self.connect_timeout)
                .await
            {
                Ok(s) => s,
                Err(e) => {
                    if matches!(e, OriginError::Denied(_)) {
                        self.metrics.ssrf_blocked.inc();
                    }
                    return Err(e.into());
                }
            };
        pass::tunnel(hyper::upgrade::on(&mut req), upstream);
        Ok(pass::connect_ok())
    }
}

#[derive(Debug, thiserror::Error)]
enum RouteError {
    #[error(transparent)]
    Client(#[from] ClientError),
    #[error(transparent)]
    Origin(#[from] OriginError),
}

/// Lower-cases scheme and host, drops the default port and any fragment.
pub fn normalize(uri: &Uri) -> Option<Uri> {
    let scheme = uri.scheme_str()?.to_ascii_lowercase();
    let host = uri.host()?.to_ascii_lowercase();
    let port = match (scheme.as_str(), uri.port_u16()) {
        ("http", Some(80)) | ("https", Some(443)) | (_, None) => String::new(),
        (_, Some(p)) => format!(":{p}"),
    };
    let pq = uri.path_and_query().map(|p| p.as_str()).unwrap_or("/");
    let pq = if pq.is_empty() { "/" } else { pq };
    format!("{scheme}://{host}{port}{pq}").parse().ok()
}

/// Requests that carry credentials or forbid storing are never cached.
fn private_request(h: &HeaderMap) -> bool {
    h.contains_key(header::AUTHORIZATION)
        || h.contains_key(header::COOKIE)
        || cache_control(h).any(|d| d == "no-store")
}

/// `Cache-Control: no-cache` or `max-age=0` from the client: revalidate first.
fn wants_revalidation(h: &HeaderMap) -> bool {
    cache_control(h).any(|d| d == "no-cache" || d == "max-age=0")
        || h.get(header::PRAGMA)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.contains("no-cache"))
}

fn cache_control(h: &HeaderMap) -> impl Iterator<Item = String> + '_ {
    h.get_all(header::CACHE_CONTROL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|d| d.trim().to_ascii_lowercase())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalizes() {
        let n = |s: &str| normalize(&s.parse().unwrap()).unwrap().to_string();
        assert_eq!(n("HTTP://Example.COM:80/a?b"), "http://example.com/a?b");
        assert_eq!(n("https://h:443"), "https://h/");
        assert_eq!(n("http://h:8080/x"), "http://h:8080/x");
    }

    #[test]
    fn private_and_revalidate() {
        let mut h = HeaderMap::new();
        assert!(!private_request(&h));
        h.insert(
            header::CACHE_CONTROL,
            "max-age=0, no-store".parse().unwrap(),
        );
        assert!(private_request(&h));
        assert!(wants_revalidation(&h));
        let mut h = HeaderMap::new();
        h.insert(header::AUTHORIZATION, "Bearer x".parse().unwrap());
        assert!(private_request(&h));
    }
}
