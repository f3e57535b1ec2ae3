//! Requests to origins: one pooled hyper client with the egress policy in its DNS
//! resolver, rustls for HTTPS upstreams, and a deadline on every step.
//!
//! [`OriginClient::send`] never follows redirects (the proxy hands them to its client,
//! which comes back through the policy); only registry mirrors' fills use
//! [`OriginClient::send_following`], which applies the policy to every hop
//! ([`redirect`]). Requests carry only the end-to-end headers of
//! [`FORWARDED`] (never framing, `Host`, hop-by-hop, `Expect` or `Proxy-*` ones) and
//! no content, so the framing of every request on a pooled connection is the one
//! hyper writes. The `User-Agent` is the client's with `shoal/VERSION` appended.
//!
//! A response with both `Content-Length` and `Transfer-Encoding` is read as chunked
//! (RFC 9112 §6.3) and its `Content-Length` dropped, so it is relayed, not cached.
//!
//! Cannot: stop hyper from reusing the connection after such a response (RFC 9112
//! suggests treating it as an error; hyper's pool gives no way to discard one).

pub mod reason;
pub mod redirect;

use std::time::Duration;

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, Response, StatusCode, Uri};
use http_body_util::{BodyExt, Empty};
use hyper::body::Incoming;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};

use crate::config::OriginConfig;
use crate::egress::{EgressDenied, EgressPolicy, PolicyResolver, find_denied};
use crate::metrics::Metrics;

type Connector = HttpsConnector<HttpConnector<PolicyResolver>>;

/// What went wrong talking to an origin, and whose fault it is.
#[derive(Debug, thiserror::Error)]
pub enum OriginError {
    /// The client asked for a refused destination.
    #[error(transparent)]
    Denied(#[from] EgressDenied),
    /// The client's URL cannot be fetched (no host, unsupported scheme).
    #[error("bad origin URL {0:?}: {1}")]
    BadUrl(String, &'static str),
    /// The origin could not be reached or broke the connection.
    #[error("origin {host} failed: {detail}")]
    Upstream { host: String, detail: String },
    /// The origin was too slow.
    #[error("origin {host} did not answer within {after:?}")]
    Timeout { host: String, after: Duration },
    /// Not the origin: the agent failed (a task panicked). Answered `500`.
    #[error("agent failed: {0}")]
    Internal(String),
}

impl OriginError {
    /// The status to answer the client with.
    pub fn status(&self) -> StatusCode {
        match self {
            OriginError::Denied(_) => StatusCode::FORBIDDEN,
            OriginError::BadUrl(..) => StatusCode::BAD_REQUEST,
            OriginError::Upstream { .. } => StatusCode::BAD_GATEWAY,
            OriginError::Timeout { .. } => StatusCode::GATEWAY_TIMEOUT,
            OriginError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

/// A pooled client for origins. Cheap to clone.
#[derive(Debug, Clone)]
pub struct OriginClient {
    client: Client<Connector, Empty<Bytes>>,
    policy: EgressPolicy,
    cfg: OriginConfig,
    metrics: Metrics,
}

/// Headers that describe one connection, never forwarded (RFC 9110 §7.6.1).
const HOP_BY_HOP: [HeaderName; 8] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::UPGRADE,
];

/// The end-to-end request headers sent to origins; every other header is dropped.
/// `Accept-Encoding` only reaches the origin on pass-through requests: cached fills
/// ask for `identity` themselves.
pub const FORWARDED: [HeaderName; 17] = [
    header::ACCEPT,
    header::ACCEPT_CHARSET,
    header::ACCEPT_ENCODING,
    header::ACCEPT_LANGUAGE,
    header::AUTHORIZATION,
    header::CACHE_CONTROL,
    header::COOKIE,
    header::IF_MATCH,
    header::IF_MODIFIED_SINCE,
    header::IF_NONE_MATCH,
    header::IF_RANGE,
    header::IF_UNMODIFIED_SINCE,
    header::PRAGMA,
    header::RANGE,
    header::REFERER,
    header::USER_AGENT,
    HeaderName::from_static("x-requested-with"),
];

/// This agent's product token, appended to the client's `User-Agent`.
pub const AGENT_TOKEN: &str = concat!("shoal/", env!("CARGO_PKG_VERSION"));

/// This agent's `Via` entry (RFC 9110 §7.6.3): protocol version and pseudonym, no
/// host name (the node's name is not the origin's business).
pub const VIA: &str = "1.1 shoal";

/// The headers of `h` that may go to an origin: those in [`FORWARDED`] that no
/// `Connection` header names as hop-by-hop, with `User-Agent` set by [`user_agent`],
/// and any `Via` the client sent followed by [`VIA`].
pub fn end_to_end(h: &HeaderMap) -> HeaderMap {
    let mut hop = h.clone();
    strip_hop_by_hop(&mut hop);
    let mut out = HeaderMap::new();
    for name in FORWARDED.iter().chain([&header::VIA]) {
        for v in hop.get_all(name) {
            out.append(name.clone(), v.clone());
        }
    }
    let ua = user_agent(out.get(header::USER_AGENT));
    out.insert(header::USER_AGENT, ua);
    out.append(header::VIA, HeaderValue::from_static(VIA));
    out
}

/// `CLIENT shoal/VERSION`, or `shoal/VERSION` alone when the client sent none.
pub fn user_agent(client: Option<&HeaderValue>) -> HeaderValue {
    match client.map(|v| v.as_bytes()).filter(|v| !v.is_empty()) {
        Some(c) => {
            let v = [c, b" ", AGENT_TOKEN.as_bytes()].concat();
            HeaderValue::from_bytes(&v).unwrap_or(HeaderValue::from_static(AGENT_TOKEN))
        }
        None => HeaderValue::from_static(AGENT_TOKEN),
    }
}

/// Removes hop-by-hop headers, including those named by `Connection`.
pub fn strip_hop_by_hop(h: &mut HeaderMap) {
    let named: Vec<HeaderName> = h
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|n| HeaderName::from_bytes(n.trim().as_bytes()).ok())
        .collect();
    for n in named.iter().chain(HOP_BY_HOP.iter()) {
        h.remove(n);
    }
    h.remove(header::TRANSFER_ENCODING);
}

impl OriginClient {
    /// `extra_roots` are trusted for HTTPS origins besides the Web PKI roots
    /// (`origin.ca_file`: an internal mirror under a private CA).
    pub fn new(
        cfg: &OriginConfig,
        policy: EgressPolicy,
        metrics: Metrics,
        extra_roots: Vec<rustls::pki_types::CertificateDer<'static>>,
    ) -> Self {
        let mut http = HttpConnector::new_with_resolver(PolicyResolver::new(policy.clone()));
        http.enforce_http(false);
        http.set_connect_timeout(Some(cfg.connect_timeout));
        http.set_nodelay(true);
        let tls = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .map(|b| {
            let mut roots = rustls::RootCertStore {
                roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
            };
            let (added, ignored) = roots.add_parsable_certificates(extra_roots);
            if ignored > 0 {
                tracing::warn!(
                    added,
                    ignored,
                    "origin.ca_file: some certificates were not usable as roots"
                );
            }
            b.with_root_certificates(roots).with_no_client_auth()
        });
        let tls = match tls {
            Ok(t) => t,
            // The ring provider supports the default versions; this cannot fail.
            Err(e) => unreachable!("rustls ring provider rejected default versions: {e}"),
        };
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_http1()
            .wrap_connector(http);
        let client = Client::builder(TokioExecutor::new())
            .timer(TokioTimer::new())
            .pool_timer(TokioTimer::new())
            .pool_idle_timeout(Duration::from_secs(60))
            .pool_max_idle_per_host(64)
            .build(https);
        Self {
            client,
            policy,
            cfg: cfg.clone(),
            metrics,
        }
    }

    /// Deadline for the silence between two body frames.
    pub fn read_timeout(&self) -> Duration {
        self.cfg.read_timeout
    }

    /// Sends `method uri` without content, with the [`end_to_end`] part of `headers`,
    /// and waits for the response head. `kind` labels `shoal_origin_requests_total`,
    /// `reason` `shoal_origin_fetches_total` (counted when the request is sent).
    pub async fn send(
        &self,
        method: Method,
        uri: &Uri,
        headers: HeaderMap,
        kind: &'static str,
        reason: reason::FetchReason,
    ) -> Result<Response<Incoming>, OriginError> {
        let host = uri
            .host()
            .ok_or_else(|| OriginError::BadUrl(uri.to_string(), "no host"))?
            .to_owned();
        match uri.scheme_str() {
            Some("http" | "https") => {}
            _ => {
                return Err(OriginError::BadUrl(
                    uri.to_string(),
                    "only http:// and https:// are proxied",
                ));
            }
        }
        if let Err(e) = self.policy.check_host(&host) {
            self.metrics.ssrf_blocked.inc();
            return Err(e.into());
        }
        let headers = end_to_end(&headers);
        let mut req = Request::builder().method(method).uri(uri.clone());
        if let Some(h) = req.headers_mut() {
            *h = headers;
        }
        let req = req
            .body(Empty::new())
            .map_err(|_| OriginError::BadUrl(uri.to_string(), "not a valid request URI"))?;
        self.metrics
            .origin_requests
            .with_label_values(&[kind])
            .inc();
        self.metrics
            .origin_fetches
            .with_label_values(&[reason.label()])
            .inc();
        let after = self.cfg.connect_timeout + self.cfg.header_timeout;
        match tokio::time::timeout(after, self.client.request(req)).await {
            Err(_) => Err(OriginError::Timeout { host, after }),
            Ok(Ok(mut resp)) => {
                // RFC 9112 §6.3: the chunked framing hyper read wins; an intermediary
                // must drop the Content-Length before forwarding (it is not cached
                // without one either).
                if resp.headers().contains_key(header::TRANSFER_ENCODING)
                    && resp.headers_mut().remove(header::CONTENT_LENGTH).is_some()
                {
                    tracing::debug!(%host, "origin sent Content-Length with Transfer-Encoding");
                }
                Ok(resp)
            }
            Ok(Err(e)) => {
                if let Some(d) = find_denied(&e) {
                    self.metrics.ssrf_blocked.inc();
                    return Err(OriginError::Denied(d));
                }
                let detail = error_chain(&e);
                Err(OriginError::Upstream { host, detail })
            }
        }
    }
}

impl OriginClient {
    /// As [`send`](Self::send), following up to [`redirect::MAX_HOPS`] redirects (a
    /// registry sending a blob download to its storage). Every hop is one `send`, so
    /// the egress policy judges every hop's host and addresses; `Authorization` is
    /// dropped once a hop leaves the first URL's scheme, host and port. Only hosts are
    /// logged: storage URLs carry signatures in their query.
    pub async fn send_following(
        &self,
        method: Method,
        uri: &Uri,
        mut headers: HeaderMap,
        kind: &'static str,
        reason: reason::FetchReason,
    ) -> Result<Response<Incoming>, OriginError> {
        let mut cur = uri.clone();
        for _ in 0..=redirect::MAX_HOPS {
            let resp = self
                .send(method.clone(), &cur, headers.clone(), kind, reason)
                .await?;
            let host = || cur.host().unwrap_or("origin").to_owned();
            let next = redirect::next_hop(&cur, resp.status(), resp.headers()).map_err(|e| {
                OriginError::Upstream {
                    host: host(),
                    detail: e.to_string(),
                }
            })?;
            let Some(next) = next else {
                return Ok(resp);
            };
            if !redirect::same_origin(uri, &next) {
                headers.remove(header::AUTHORIZATION);
            }
            tracing::debug!(from = %host(), to = next.host().unwrap_or(""), status = %resp.status(),
                "following a redirect");
            cur = next;
        }
        Err(OriginError::Upstream {
            host: cur.host().unwrap_or("origin").to_owned(),
            detail: redirect::RedirectError::TooMany.to_string(),
        })
    }
}

/// Reads the next data frame of an origin body (trailers skipped); `None` at the end.
pub async fn next_data(
    body: &mut Incoming,
    timeout: Duration,
    host: &str,
) -> Result<Option<Bytes>, OriginError> {
    loop {
        match tokio::time::timeout(timeout, body.frame()).await {
            Err(_) => {
                return Err(OriginError::Timeout {
                    host: host.to_owned(),
                    after: timeout,
                });
            }
            Ok(None) => return Ok(None),
            Ok(Some(Err(e))) => {
                return Err(OriginError::Upstream {
                    host: host.to_owned(),
                    detail: error_chain(&e),
                });
            }
            Ok(Some(Ok(f))) => {
                if let Ok(d) = f.into_data()
                    && !d.is_empty()
                {
                    return Ok(Some(d));
                }
            }
        }
    }
}

/// `error: cause: cause` on one line.
pub fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let cs = c.to_string();
        if !s.contains(&cs) {
            s.push_str(": ");
            s.push_str(&cs);
        }
        cur = c.source();
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::EgressConfig;

    #[test]
    fn hop_by_hop_removed() {
        let mut h = HeaderMap::new();
        h.insert(header::CONNECTION, "close, x-foo".parse().unwrap());
        h.insert("x-foo", "1".parse().unwrap());
        h.insert("keep-alive", "1".parse().unwrap());
        h.insert(header::ACCEPT, "*/*".parse().unwrap());
        strip_hop_by_hop(&mut h);
        assert_eq!(h.len(), 1);
        assert!(h.contains_key(header::ACCEPT));
    }

    #[test]
    fn only_end_to_end_headers_are_forwarded() {
        let mut h = HeaderMap::new();
        for (k, v) in [
            ("host", "a"),
            ("host", "b"),
            ("content-length", "40"),
            ("transfer-encoding", "chunked"),
            ("connection", "keep-alive, cookie"),
            ("cookie", "hop"),
            ("expect", "100-continue"),
            ("upgrade", "h2c"),
            ("te", "trailers"),
            ("trailer", "x"),
            ("proxy-authorization", "Basic x"),
            ("proxy-connection", "keep-alive"),
            ("x-forwarded-for", "10.0.0.1"),
            ("accept", "text/plain"),
            ("accept", "application/json"),
            ("authorization", "Bearer t"),
            ("range", "bytes=0-1"),
            ("user-agent", "curl/8.5.0"),
            ("via", "1.0 squid"),
        ] {
            h.append(HeaderName::from_static(k), HeaderValue::from_static(v));
        }
        let out = end_to_end(&h);
        let names: Vec<_> = out.keys().map(|k| k.as_str()).collect();
        assert_eq!(
            names,
            ["accept", "authorization", "range", "user-agent", "via"]
        );
        let via: Vec<_> = out.get_all(header::VIA).iter().collect();
        assert_eq!(via, ["1.0 squid", VIA]);
        assert_eq!(out.get_all(header::ACCEPT).iter().count(), 2);
        assert_eq!(
            out[header::USER_AGENT],
            format!("curl/8.5.0 shoal/{}", env!("CARGO_PKG_VERSION")).as_str()
        );
        assert_eq!(
            end_to_end(&HeaderMap::new())[header::USER_AGENT],
            AGENT_TOKEN
        );
    }

    #[tokio::test]
    async fn refuses_metadata_address_before_connecting() {
        let m = Metrics::default();
        let c = OriginClient::new(
            &OriginConfig::default(),
            EgressPolicy::new(&EgressConfig::default()),
            m.clone(),
            Vec::new(),
        );
        let uri: Uri = "http://169.254.169.254/latest/meta-data/".parse().unwrap();
        let e = c
            .send(
                Method::GET,
                &uri,
                HeaderMap::new(),
                "get",
                reason::FetchReason::CacheMode,
            )
            .await
            .unwrap_err();
        assert_eq!(e.status(), StatusCode::FORBIDDEN);
        assert!(e.to_string().contains("link-local"), "{e}");
        assert_eq!(m.ssrf_blocked.get(), 1);
        let uri: Uri = "http://localhost:1/".parse().unwrap();
        let e = c
            .send(
                Method::GET,
                &uri,
                HeaderMap::new(),
                "get",
                reason::FetchReason::CacheMode,
            )
            .await
            .unwrap_err();
        assert_eq!(e.status(), StatusCode::FORBIDDEN, "{e}");
        assert_eq!(m.ssrf_blocked.get(), 2);
    }
}
