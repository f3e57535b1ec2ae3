//! The agents' HTTP API: request routing, checks and JSON, around the pure
//! [`Registry`]. See `docs/tracker-api.md` for the wire contract.
//!
//! Order of checks for each request: route (404/405) → per-agent rate limit (429) →
//! declared body size (413, before reading) → body within size (413) and
//! `limits.body_timeout` (408) → JSON (400) → announced address (403) → registry (400 on an
//! invalid layout or index). The agent's identity ([`ClientInfo`]) was established by
//! the TLS layer before any of this; the body never names it.
//!
//! The registry sits behind a `std::sync::Mutex`: each call is short and never awaits
//! while holding it (see [`crate::registry`] for the cost of each call). A sync's
//! reply is serialized under the lock too: it borrows the registry's records
//! ([`crate::registry::SyncReply`]), a few microseconds for 32 hints.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Body;
use serde::Serialize;
use serde::de::DeserializeOwned;
use shoal_proto::PeerId;
use shoal_proto::TokenBucket;
use shoal_proto::tracker::{
    ANNOUNCE_PATH, AgentInfo, AnnounceRequest, ErrorBody, SYNC_PATH, SyncRequest,
};

use crate::config::Config;
use crate::metrics::{Metrics, Reject};
use crate::registry::{Conflict, Registry};

/// Who is calling, as established by mutual TLS and the TCP connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientInfo {
    /// From the client certificate's DNS name.
    pub peer: PeerId,
    /// IP SANs of the client certificate: addresses it may announce besides `source`.
    pub ip_sans: Vec<IpAddr>,
    /// The TCP peer address.
    pub source: SocketAddr,
}

/// The request handler shared by every connection.
#[derive(Debug)]
pub struct Api {
    registry: Mutex<Registry>,
    limiter: Mutex<RateLimiter>,
    metrics: Metrics,
    max_body: usize,
    body_timeout: Duration,
}

/// Per-agent token buckets. Pure: callers pass `now`.
#[derive(Debug)]
pub struct RateLimiter {
    rate: f64,
    burst: f64,
    buckets: HashMap<PeerId, TokenBucket>,
}

/// Which endpoint a request was for, as the `endpoint` label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Endpoint {
    Sync,
    Announce,
    Other,
}

/// A refusal: status, reason counted, one-line message.
type Refusal = (StatusCode, Reject, String);

impl Api {
    /// `epoch_seed` should differ between tracker lives (see [`Registry::new`]).
    pub fn new(cfg: &Config, metrics: Metrics, epoch_seed: u64) -> Self {
        let l = &cfg.limits;
        Self {
            registry: Mutex::new(Registry::new(cfg.registry.clone(), epoch_seed)),
            limiter: Mutex::new(RateLimiter::new(l.requests_per_second, l.burst)),
            metrics,
            // A body larger than the address space cannot be buffered anyway.
            max_body: usize::try_from(l.max_body_size.as_u64()).unwrap_or(usize::MAX),
            body_timeout: l.body_timeout,
        }
    }

    /// Answers one request from `client`. Never fails: every problem is a status.
    pub async fn handle<B>(&self, client: &ClientInfo, req: Request<B>) -> Response<Full<Bytes>>
    where
        B: Body<Data = Bytes>,
        B::Error: std::error::Error + Send + Sync + 'static,
    {
        let started = Instant::now();
        let endpoint = match req.uri().path() {
            SYNC_PATH => Endpoint::Sync,
            ANNOUNCE_PATH => Endpoint::Announce,
            _ => Endpoint::Other,
        };
        let resp = match self.route(client, endpoint, req).await {
            Ok(r) => r,
            Err((status, why, msg)) => {
                self.metrics.reject(why);
                tracing::debug!(peer = %client.peer, source = %client.source, %status, reason = %msg, "request refused");
                let mut r = json(status, &ErrorBody { error: msg });
                if matches!(why, Reject::TooLarge | Reject::BodyTimeout) {
                    // The body was not read (or not all of it): the connection's
                    // framing is unknown, so it is not reused.
                    r.headers_mut().insert(
                        header::CONNECTION,
                        header::HeaderValue::from_static("close"),
                    );
                }
                if status == StatusCode::TOO_MANY_REQUESTS {
                    r.headers_mut()
                        .insert(header::RETRY_AFTER, header::HeaderValue::from_static("1"));
                }
                r
            }
        };
        self.metrics
            .request_duration
            .with_label_values(&[endpoint.label()])
            .observe(started.elapsed().as_secs_f64());
        resp
    }

    async fn route<B>(
        &self,
        client: &ClientInfo,
        endpoint: Endpoint,
        req: Request<B>,
    ) -> Result<Response<Full<Bytes>>, Refusal>
    where
        B: Body<Data = Bytes>,
        B::Error: std::error::Error + Send + Sync + 'static,
    {
        if endpoint == Endpoint::Other {
            return Err((
                StatusCode::NOT_FOUND,
                Reject::NotFound,
                "no such endpoint".into(),
            ));
        }
        if req.method() != Method::POST {
            return Err((
                StatusCode::METHOD_NOT_ALLOWED,
                Reject::NotFound,
                "use POST".into(),
            ));
        }
        if !lock(&self.limiter).check(Instant::now(), &client.peer) {
            return Err((
                StatusCode::TOO_MANY_REQUESTS,
                Reject::RateLimited,
                "request rate limit exceeded for this agent".into(),
            ));
        }
        let body = self.read_body(req).await?;
        match endpoint {
            Endpoint::Sync => {
                let mut r: SyncRequest = parse(&body)?;
                check_addr(client, &mut r.agent)?;
                // Serialized under the lock: the reply borrows the registry's records.
                let body = {
                    let mut reg = lock(&self.registry);
                    let now = Instant::now();
                    self.sweep_if_due(&mut reg, now);
                    let body = reg.sync_reply(now, &client.peer, &r).map(|reply| {
                        let mut buf = Vec::with_capacity(reply.json_size_hint());
                        reply.write_json(&mut buf).map(|()| buf)
                    });
                    self.record(&mut reg);
                    body
                }
                .map_err(|e| (StatusCode::BAD_REQUEST, Reject::BadRequest, e.to_string()))?;
                self.metrics.syncs.inc();
                Ok(json_response(StatusCode::OK, body))
            }
            Endpoint::Announce => {
                let mut r: AnnounceRequest = parse(&body)?;
                check_addr(client, &mut r.agent)?;
                let resp = {
                    let mut reg = lock(&self.registry);
                    let now = Instant::now();
                    self.sweep_if_due(&mut reg, now);
                    let resp = reg.announce(now, &client.peer, &r);
                    self.record(&mut reg);
                    resp
                };
                for refused in &resp.refused {
                    tracing::info!(peer = %client.peer, key = %refused.key, reason = %refused.reason, "announced object refused");
                }
                self.metrics.announces.inc();
                Ok(json(StatusCode::OK, &resp))
            }
            Endpoint::Other => Err((
                StatusCode::NOT_FOUND,
                Reject::NotFound,
                "no such endpoint".into(),
            )),
        }
    }

    /// The whole body, within `max_body` bytes and `body_timeout`. A declared
    /// `Content-Length` above the limit is refused before anything is read.
    async fn read_body<B>(&self, req: Request<B>) -> Result<Bytes, Refusal>
    where
        B: Body<Data = Bytes>,
        B::Error: std::error::Error + Send + Sync + 'static,
    {
        let too_large = || {
            (
                StatusCode::PAYLOAD_TOO_LARGE,
                Reject::TooLarge,
                format!("body larger than {} bytes", self.max_body),
            )
        };
        let declared = req
            .headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok());
        if declared.is_some_and(|n| n > self.max_body as u64) {
            return Err(too_large());
        }
        let read = Limited::new(req.into_body(), self.max_body).collect();
        match tokio::time::timeout(self.body_timeout, read).await {
            Err(_) => Err((
                StatusCode::REQUEST_TIMEOUT,
                Reject::BodyTimeout,
                format!("body not received within {:?}", self.body_timeout),
            )),
            Ok(Ok(c)) => Ok(c.to_bytes()),
            Ok(Err(e)) if e.is::<http_body_util::LengthLimitError>() => Err(too_large()),
            Ok(Err(e)) => Err((
                StatusCode::BAD_REQUEST,
                Reject::BadRequest,
                format!("reading body: {e}"),
            )),
        }
    }

    /// Drains registry events into metrics and logs conflicts.
    fn record(&self, reg: &mut Registry) {
        let ev = reg.drain_events();
        for c in &ev.conflict_log {
            match c {
                Conflict::ChunkId {
                    key,
                    index,
                    kept,
                    offered,
                    by,
                } => tracing::warn!(
                    %key, index, %kept, %offered, peer = %by,
                    "conflicting chunk id (origin changed behind its validators, or a lying agent); first kept"
                ),
                Conflict::Layout {
                    key,
                    kept,
                    offered,
                    by,
                } => tracing::warn!(
                    %key, ?kept, ?offered, peer = %by,
                    "agent holds chunks under another layout; ignored"
                ),
            }
        }
        self.metrics
            .record(&ev, reg.object_count(), reg.peer_count());
    }

    /// Expires soft state; call every [`Api::sweep_interval`].
    pub fn sweep(&self, now: Instant) {
        {
            let mut reg = lock(&self.registry);
            self.timed_sweep(&mut reg, now);
            self.record(&mut reg);
        }
        lock(&self.limiter).sweep(now);
    }

    /// The sweep a request would otherwise run inside the registry call, timed.
    fn sweep_if_due(&self, reg: &mut Registry, now: Instant) {
        if reg.sweep_due(now) {
            self.timed_sweep(reg, now);
        }
    }

    fn timed_sweep(&self, reg: &mut Registry, now: Instant) {
        let started = Instant::now();
        reg.sweep(now);
        self.metrics
            .sweep_duration
            .observe(started.elapsed().as_secs_f64());
    }

    pub fn sweep_interval(&self) -> Duration {
        lock(&self.registry).sweep_interval()
    }

    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }
}

impl RateLimiter {
    /// `rate` requests per second sustained, `burst` at once.
    pub fn new(rate: f64, burst: u32) -> Self {
        Self {
            rate,
            burst: f64::from(burst.max(1)),
            buckets: HashMap::new(),
        }
    }

    /// Takes one token from `peer`'s bucket; false if it is empty.
    pub fn check(&mut self, now: Instant, peer: &PeerId) -> bool {
        if let Some(b) = self.buckets.get_mut(peer) {
            return b.try_take(1.0, now);
        }
        let (rate, burst) = (self.rate, self.burst);
        self.buckets
            .entry(peer.clone())
            .or_insert_with(|| TokenBucket::new(rate, burst, now))
            .try_take(1.0, now)
    }

    /// Drops buckets that have refilled (equivalent to absent).
    pub fn sweep(&mut self, now: Instant) {
        self.buckets.retain(|_, b| !b.is_full(now));
    }
}

impl Endpoint {
    fn label(self) -> &'static str {
        match self {
            Endpoint::Sync => "sync",
            Endpoint::Announce => "announce",
            Endpoint::Other => "other",
        }
    }
}

/// Checks the announced QUIC address against the connection: its IP must be the TCP
/// source IP or an IP SAN of the certificate. An unspecified IP (`0.0.0.0`, `::`) means
/// "the address you see me from" and is replaced by the source IP.
fn check_addr(client: &ClientInfo, agent: &mut AgentInfo) -> Result<(), Refusal> {
    let source = client.source.ip().to_canonical();
    let announced = agent.peer_addr.ip().to_canonical();
    if announced.is_unspecified() {
        agent.peer_addr.set_ip(source);
        return Ok(());
    }
    if announced == source || client.ip_sans.iter().any(|s| s.to_canonical() == announced) {
        return Ok(());
    }
    Err((
        StatusCode::FORBIDDEN,
        Reject::Spoofed,
        format!(
            "peer_addr {announced} is neither the connection's source {source} nor an IP SAN of the certificate"
        ),
    ))
}

fn parse<T: DeserializeOwned>(body: &[u8]) -> Result<T, Refusal> {
    serde_json::from_slice(body).map_err(|e| {
        let msg = e.to_string();
        // serde_json messages are one line already; keep them short for logs.
        let msg: String = msg.lines().next().unwrap_or("").chars().take(300).collect();
        (
            StatusCode::BAD_REQUEST,
            Reject::BadRequest,
            format!("bad JSON: {msg}"),
        )
    })
}

fn json<T: Serialize>(status: StatusCode, body: &T) -> Response<Full<Bytes>> {
    json_response(status, to_json(body, 128))
}

/// `body` as JSON, serialized into a buffer of `capacity` bytes to start with.
fn to_json<T: Serialize>(body: &T, capacity: usize) -> Result<Vec<u8>, serde_json::Error> {
    let mut buf = Vec::with_capacity(capacity);
    serde_json::to_writer(&mut buf, body).map(|()| buf)
}

/// A JSON response of `status`, or 500 if `body` failed to serialize.
fn json_response(
    status: StatusCode,
    body: Result<Vec<u8>, serde_json::Error>,
) -> Response<Full<Bytes>> {
    let (status, bytes) = match body {
        Ok(b) => (status, b),
        Err(e) => {
            // Our own types always serialize; report rather than panic if not.
            tracing::error!(error = %e, "response serialization failed");
            (
                StatusCode::INTERNAL_SERVER_ERROR,
                br#"{"error":"internal"}"#.to_vec(),
            )
        }
    };
    let mut r = Response::new(Full::new(Bytes::from(bytes)));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json"),
    );
    r
}

/// Locks `m`, ignoring poisoning: the registry and limiter never leave state half
/// updated across a panic point (they do not panic on input).
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn rate_limiter_bursts_then_refills() {
        let t0 = Instant::now();
        let p: PeerId = "a".parse().unwrap();
        let q: PeerId = "b".parse().unwrap();
        let mut l = RateLimiter::new(10.0, 3);
        assert!((0..3).all(|_| l.check(t0, &p)));
        assert!(!l.check(t0, &p));
        assert!(l.check(t0, &q), "buckets are per agent");
        assert!(l.check(t0 + Duration::from_millis(100), &p));
        assert!(!l.check(t0 + Duration::from_millis(100), &p));
        l.sweep(t0 + Duration::from_secs(10));
        assert!(l.buckets.is_empty());
    }

    #[test]
    fn announced_address_must_match_source_or_san() {
        let client = ClientInfo {
            peer: "a".parse().unwrap(),
            ip_sans: vec!["10.0.0.9".parse().unwrap()],
            source: "10.0.0.1:5555".parse().unwrap(),
        };
        let mut info = AgentInfo {
            peer_addr: "10.0.0.1:7482".parse().unwrap(),
            topology: Default::default(),
            load: 0,
        };
        assert!(check_addr(&client, &mut info).is_ok());
        info.peer_addr = "10.0.0.9:7482".parse().unwrap();
        assert!(check_addr(&client, &mut info).is_ok());
        info.peer_addr = "10.0.0.2:7482".parse().unwrap();
        assert_eq!(
            check_addr(&client, &mut info).unwrap_err().0,
            StatusCode::FORBIDDEN
        );
        info.peer_addr = "0.0.0.0:7482".parse().unwrap();
        assert!(check_addr(&client, &mut info).is_ok());
        assert_eq!(info.peer_addr, "10.0.0.1:7482".parse().unwrap());
        let mapped = ClientInfo {
            source: "[::ffff:10.0.0.1]:5555".parse().unwrap(),
            ..client
        };
        info.peer_addr = "10.0.0.1:7482".parse().unwrap();
        assert!(check_addr(&mapped, &mut info).is_ok());
    }
}
