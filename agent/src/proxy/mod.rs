//! The client-facing HTTP/1.1 listener: forward proxy (`GET http://origin/path`),
//! named mirrors (`GET /m/NAME/path` → `UPSTREAM/path`, which is how HTTPS origins
//! are cached), and `CONNECT` tunnels (never cached: the agent cannot see inside TLS).
//!
//! Only `GET` and `HEAD` are proxied (and `CONNECT`); other methods get `501`: the
//! clients Shoal serves (package managers, image pulls, updaters) only read. Before
//! anything else a request must have one valid `Host` and no content
//! ([`framing`]); its path is put in canonical form ([`target`]), which keeps mirror
//! paths under their upstream prefix and gives one cache key per resource.
//! Requests with `Authorization` or `Cookie`, or `Cache-Control: no-store`, and URLs
//! whose rule says `pass`, are relayed uncached; registry mirrors ([`registry`]) are
//! the exception: they cache authorised pulls, checking each client with the registry.

pub mod conns;
mod framing;
pub mod pass;
pub mod prefetch;
pub mod registry;
pub mod respond;
pub mod rules;
mod server;
pub mod target;

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Instant;

use http::header::{self, HeaderMap, HeaderValue};
use http::{Method, Request, Response, StatusCode, Uri};
use hyper::body::Incoming;

use crate::config::{Config, Mode};
use crate::egress::EgressPolicy;
use crate::metrics::Metrics;
use crate::object::read::{ProxyBody, Serve};
use crate::object::{Lookup, ObjectCache, Want};
use crate::origin::OriginError;
use crate::origin::reason::FetchReason;
use framing::FramingError;
pub use rules::Rules;
pub use server::{ProxyServer, serve};
use target::PathError;

/// Request handling state shared by every connection.
#[derive(Debug)]
pub struct Proxy {
    cache: ObjectCache,
    rules: Rules,
    mirrors: HashMap<String, Uri>,
    policy: EgressPolicy,
    metrics: Metrics,
    connect_timeout: std::time::Duration,
    connect_ports: Vec<u16>,
    tunnels: Arc<tokio::sync::Semaphore>,
    tunnel_limits: pass::TunnelLimits,
    /// Registry settings of each mirror by name (`Mirror::kind` and its TTLs).
    registries: HashMap<String, registry::MirrorSettings>,
    /// Credential grants and tag resolutions of registry mirrors.
    grants: registry::grants::Grants,
    /// Registry requests that name no mirror in their path (`?ns=`, `/v2/m/NAME/`).
    routes: crate::registries::Routes,
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
    #[error(transparent)]
    Framing(#[from] FramingError),
    #[error(transparent)]
    Path(#[from] PathError),
    #[error(
        "user info in the request target is refused (RFC 9110 §4.2.4): send credentials in an Authorization header"
    )]
    UserInfo,
    #[error("CONNECT to port {0} is not allowed (proxy.connect_ports)")]
    ConnectPort(u16),
    #[error("too many CONNECT tunnels open (proxy.max_tunnels); try again later")]
    Tunnels,
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
        let registries = cfg
            .mirrors
            .iter()
            .map(|m| (m.name.clone(), registry::MirrorSettings::of(m)))
            .collect();
        Self {
            registries,
            grants: registry::grants::Grants::new(),
            routes: crate::registries::Routes::new(&cfg.mirrors),
            cache,
            rules: Rules::new(&cfg.rules, default_mode),
            mirrors,
            policy,
            metrics,
            connect_timeout: cfg.origin.connect_timeout,
            connect_ports: cfg.proxy.connect_ports.clone(),
            tunnels: Arc::new(tokio::sync::Semaphore::new(cfg.proxy.max_tunnels)),
            tunnel_limits: pass::TunnelLimits {
                idle: cfg.proxy.tunnel_idle_timeout,
                lifetime: cfg.proxy.tunnel_max_lifetime,
            },
        }
    }

    pub fn metrics(&self) -> &Metrics {
        &self.metrics
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
        let mut req = req;
        if let Some(u) = self.routes.route(req.uri()) {
            *req.uri_mut() = u;
        }
        // A body the agent does not read would be taken for the next request.
        let mut close = framing::declares_content(req.headers());
        let (mut resp, mode) = match self.route(req).await {
            Ok(r) => r,
            Err(e) => {
                let (status, msg) = match &e {
                    RouteError::Client(c) => (StatusCode::BAD_REQUEST, c.to_string()),
                    RouteError::Origin(o) => (o.status(), o.to_string()),
                };
                let status = match &e {
                    RouteError::Client(ClientError::Method(_)) => StatusCode::NOT_IMPLEMENTED,
                    RouteError::Client(ClientError::NoMirror(_)) => StatusCode::NOT_FOUND,
                    RouteError::Client(ClientError::ConnectPort(_)) => StatusCode::FORBIDDEN,
                    RouteError::Client(ClientError::Tunnels) => StatusCode::SERVICE_UNAVAILABLE,
                    _ => status,
                };
                close |= matches!(e, RouteError::Client(ClientError::Framing(_)));
                if status.is_server_error() {
                    tracing::warn!(%status, error = %msg, "request failed");
                } else {
                    tracing::debug!(%status, error = %msg, "request refused");
                }
                (respond::error(status, &msg), "error")
            }
        };
        if close {
            resp.headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        // RFC 9110 §7.6.3: a proxy adds itself to `Via` (after the origin's entries).
        resp.headers_mut()
            .append(header::VIA, HeaderValue::from_static(crate::origin::VIA));
        self.metrics
            .requests
            .with_label_values(&[mode, resp.status().as_str()])
            .inc();
        Ok(server::observe(
            resp,
            self.metrics.ttfb.with_label_values(&[mode]),
            self.metrics.request_duration.with_label_values(&[mode]),
            start,
        ))
    }

    async fn route(
        &self,
        req: Request<Incoming>,
    ) -> Result<(Response<ProxyBody>, &'static str), RouteError> {
        framing::check(req.method(), req.version(), req.headers()).map_err(ClientError::from)?;
        if req.method() == Method::CONNECT {
            return self.connect(req).await.map(|r| (r, "connect"));
        }
        let url = self.target(req.uri())?;
        let method = req.method().clone();
        if method != Method::GET && method != Method::HEAD {
            return Err(ClientError::Method(method).into());
        }
        let headers = req.headers();
        if let Some((mirror, path)) = self.registry_path(req.uri(), &url) {
            return self.registry(&method, headers, url, mirror, path).await;
        }
        let (mode, min_size) = self.rules.decide(&url.to_string());
        if mode == Mode::Pass || private_request(headers) {
            let why = if mode == Mode::Pass {
                FetchReason::RulePass
            } else {
                FetchReason::Private
            };
            return Ok((self.pass(method, &url, headers.clone(), why).await?, "pass"));
        }
        let label = if mode == Mode::P2p { "p2p" } else { "cache" };
        if method == Method::HEAD {
            return Ok(match self.cache.peek(&url.to_string()) {
                Some(s) => (self.serve(&method, headers, s), label),
                None => (
                    self.pass(method, &url, headers.clone(), FetchReason::HeadMiss)
                        .await?,
                    "pass",
                ),
            });
        }
        let want = Want {
            url: url.clone(),
            mode,
            min_size,
            revalidate: wants_revalidation(headers),
            user_agent: headers.get(header::USER_AGENT).cloned(),
            immutable: self.rules.immutable(&url.to_string()),
            upstream: None,
        };
        self.serve_lookup(&method, headers, &want, label, None)
            .await
    }

    /// Serves a GET for `want` from the cache, a fill or the origin (labelled
    /// `label`, or `pass` when relayed). `fits`, when given, must accept the
    /// representation of a cached version or fill, else the client's own request is
    /// relayed (registry manifests: a type the client does not accept).
    async fn serve_lookup(
        &self,
        method: &Method,
        headers: &HeaderMap,
        want: &Want,
        label: &'static str,
        fits: Option<&(dyn Fn(&crate::object::Repr) -> bool + Sync)>,
    ) -> Result<(Response<ProxyBody>, &'static str), RouteError> {
        let lookup = self.cache.lookup(want).await?;
        self.serve_found(method, headers, &want.url, lookup, label, fits)
            .await
    }

    /// [`Proxy::serve_lookup`] for a lookup already made.
    async fn serve_found(
        &self,
        method: &Method,
        headers: &HeaderMap,
        url: &Uri,
        lookup: Lookup,
        label: &'static str,
        fits: Option<&(dyn Fn(&crate::object::Repr) -> bool + Sync)>,
    ) -> Result<(Response<ProxyBody>, &'static str), RouteError> {
        let method = method.clone();
        let misfit = match (&lookup, fits) {
            (Lookup::Object(m) | Lookup::Stale(m), Some(f)) => !f(&m.repr),
            (Lookup::Fill(fill), Some(f)) => !f(&fill.repr),
            _ => false,
        };
        if misfit {
            let why = FetchReason::Uncacheable;
            return Ok((self.pass(method, url, headers.clone(), why).await?, "pass"));
        }
        let resp = match lookup {
            Lookup::Object(m) => self.serve(&method, headers, Serve::Object(m)),
            Lookup::Fill(f) => self.serve(&method, headers, Serve::Fill(f)),
            Lookup::Pass(resp, why) => return Ok((self.relay(resp, url, why), "pass")),
            Lookup::Retry => {
                let why = FetchReason::Uncacheable;
                return Ok((self.pass(method, url, headers.clone(), why).await?, "pass"));
            }
            Lookup::Stale(m) => {
                // Stale-if-error: say how old it is (RFC 9111 §5.1).
                let age = m.age_secs(std::time::SystemTime::now());
                let mut r = self.serve(&method, headers, Serve::Object(m));
                let h = r.headers_mut();
                h.insert(header::AGE, http::HeaderValue::from(age));
                h.insert("x-shoal-cache", http::HeaderValue::from_static("stale"));
                r
            }
        };
        Ok((resp, label))
    }

    /// The absolute origin URL a request is for, in canonical form.
    fn target(&self, uri: &Uri) -> Result<Uri, ClientError> {
        request_target(&self.mirrors, uri)
    }

    /// A response from the cache or a fill, tagged with its [`source`].
    fn serve(&self, method: &Method, headers: &HeaderMap, s: Serve) -> Response<ProxyBody> {
        let (src, why) = source(&s);
        let mut r = respond::respond(&self.cache, method, headers, s);
        tag(r.headers_mut(), src, why);
        r
    }

    async fn pass(
        &self,
        method: Method,
        url: &Uri,
        headers: HeaderMap,
        why: FetchReason,
    ) -> Result<Response<ProxyBody>, OriginError> {
        let resp = self
            .cache
            .origin()
            .send(method, url, headers, "pass", why)
            .await?;
        Ok(self.relay(resp, url, why))
    }

    fn relay(&self, resp: Response<Incoming>, url: &Uri, why: FetchReason) -> Response<ProxyBody> {
        let host = url.host().unwrap_or("origin").to_owned();
        let mut r = pass::relay(
            resp,
            self.cache.origin().read_timeout(),
            host,
            self.metrics.clone(),
            why,
        );
        tag(r.headers_mut(), "origin", Some(why));
        r
    }

    async fn connect(&self, mut req: Request<Incoming>) -> Result<Response<ProxyBody>, RouteError> {
        let auth = req
            .uri()
            .authority()
            .cloned()
            .ok_or(ClientError::ConnectTarget)?;
        if auth.as_str().contains('@') {
            return Err(ClientError::UserInfo.into());
        }
        let port = auth.port_u16().ok_or(ClientError::ConnectTarget)?;
        if !self.connect_ports.contains(&port) {
            return Err(ClientError::ConnectPort(port).into());
        }
        // The tunnel holds its own slot and its connection's for its whole life.
        let permit = self
            .tunnels
            .clone()
            .try_acquire_owned()
            .map_err(|_| ClientError::Tunnels)?;
        let busy = req
            .extensions()
            .get::<Arc<conns::Slot>>()
            .map(conns::Slot::busy);
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
        let hold = pass::TunnelHold {
            permit,
            busy,
            gauge: self.metrics.tunnels.clone(),
        };
        pass::tunnel(
            hyper::upgrade::on(&mut req),
            upstream,
            self.tunnel_limits,
            hold,
        );
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

/// The absolute origin URL the request-target `uri` is for, in canonical form:
/// absolute-form as is, `/m/NAME/tail` under the upstream of mirror `NAME`.
fn request_target(mirrors: &HashMap<String, Uri>, uri: &Uri) -> Result<Uri, ClientError> {
    if uri.authority().is_some_and(|a| a.as_str().contains('@')) {
        // `http://user:pass@host/`: deprecated, and a way to hide the real authority
        // from whoever reads the URL; never proxied with the user info dropped.
        return Err(ClientError::UserInfo);
    }
    if uri.scheme().is_some() && uri.authority().is_some() {
        return normalize(uri);
    }
    let path = uri.path();
    let Some(rest) = path.strip_prefix("/m/") else {
        return Err(ClientError::NotProxy);
    };
    let (name, tail) = rest.split_once('/').unwrap_or((rest, ""));
    let base = mirrors
        .get(name)
        .ok_or_else(|| ClientError::NoMirror(name.to_owned()))?;
    let path = target::mirror_path(base.path(), tail)?;
    let q = uri.query().map(|q| format!("?{q}")).unwrap_or_default();
    let (scheme, auth) = (base.scheme_str(), base.authority());
    let s = format!(
        "{}://{}{path}{q}",
        scheme.unwrap_or("http"),
        auth.map_or("", |a| a.as_str())
    );
    normalize(&s.parse::<Uri>().map_err(|_| ClientError::NotProxy)?)
}

/// Lower-cases scheme and host, drops the default port and any fragment (user info
/// was refused before),
/// and puts the path in canonical form ([`target::normalize_path`]); the query is
/// kept as is.
fn normalize(uri: &Uri) -> Result<Uri, ClientError> {
    let (Some(scheme), Some(host)) = (uri.scheme_str(), uri.host()) else {
        return Err(ClientError::NotProxy);
    };
    let scheme = scheme.to_ascii_lowercase();
    let host = host.to_ascii_lowercase();
    let port = match (scheme.as_str(), uri.port_u16()) {
        ("http", Some(80)) | ("https", Some(443)) | (_, None) => String::new(),
        (_, Some(p)) => format!(":{p}"),
    };
    let path = target::normalize_path(uri.path())?;
    let q = uri.query().map(|q| format!("?{q}")).unwrap_or_default();
    format!("{scheme}://{host}{port}{path}{q}")
        .parse()
        .map_err(|_| ClientError::NotProxy)
}

/// `X-Shoal-Source`: where the body comes from, decided when the head is sent.
pub const SOURCE_HEADER: &str = "x-shoal-source";
/// `X-Shoal-Origin-Reason`: with `X-Shoal-Source: origin`, why ([`FetchReason`]).
pub const REASON_HEADER: &str = "x-shoal-origin-reason";

/// The `X-Shoal-Source` value of a response served from `s`, and the origin reason
/// when it is `origin`: a complete version is `cache`; a plain fill streams one
/// origin response (`origin`); a swarm fill gets its chunks from peers and the
/// origin, so it is `mixed`. A fill is so even if it completed before this head was
/// sent (a small object, a loaded machine): the request waited for it; one that was
/// complete and recorded when the request came is served as its object
/// (`ObjectCache::lookup`).
fn source(s: &Serve) -> (&'static str, Option<FetchReason>) {
    match s {
        Serve::Object(_) => ("cache", None),
        Serve::Fill(f) => match f.origin {
            Some(r) => ("origin", Some(r)),
            None => ("mixed", None),
        },
    }
}

/// Sets the source headers (replacing any the origin sent).
fn tag(h: &mut HeaderMap, src: &'static str, why: Option<FetchReason>) {
    h.insert(SOURCE_HEADER, HeaderValue::from_static(src));
    match why {
        Some(r) => h.insert(REASON_HEADER, HeaderValue::from_static(r.label())),
        None => h.remove(REASON_HEADER),
    };
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

/// The proxy's pure request checks, for the fuzz targets in `fuzz/` (not an API: no
/// stability promised). Errors are their `Display` text.
#[doc(hidden)]
pub mod fuzzing {
    use std::collections::HashMap;

    use http::Uri;

    pub use super::framing::{FramingError, check as check_framing, declares_content};
    pub use super::target::{PathError, mirror_path, normalize_path};

    /// [`Proxy`](super::Proxy)'s request-target resolution with these mirrors
    /// (`NAME` → upstream URL).
    pub fn request_target(mirrors: &HashMap<String, Uri>, uri: &Uri) -> Result<Uri, String> {
        super::request_target(mirrors, uri).map_err(|e| e.to_string())
    }
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
        assert_eq!(n("http://h/a/../b"), n("http://h/b"));
        assert_eq!(n("http://h/%7e/./%2e%2e/b?%7e=.."), "http://h/b?%7e=..");
        assert_eq!(n("http://h/a%2fb"), "http://h/a%2Fb");
        assert!(matches!(
            normalize(&"http://h/..%2f".parse().unwrap()),
            Err(ClientError::Path(PathError::HiddenDots(_)))
        ));
    }

    #[test]
    fn user_info_in_the_target_is_refused() {
        let none = HashMap::new();
        for t in [
            "http://user:pass@example.com/a",
            "http://evil.example@good.example/",
            "http://@h/",
        ] {
            assert!(
                matches!(
                    request_target(&none, &t.parse().unwrap()),
                    Err(ClientError::UserInfo)
                ),
                "{t}"
            );
        }
        assert!(request_target(&none, &"http://h/a@b".parse().unwrap()).is_ok());
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
