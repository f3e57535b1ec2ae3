//! The tracker client: sync and announce over HTTP/1.1 + JSON with mutual TLS.
//!
//! Replicas: the replica for an object key is chosen by rendezvous hashing (highest
//! BLAKE3 of `url ‖ 0x00 ‖ key` wins) over `tracker.urls`, so every agent sends a key
//! to the same replica without coordination and removing a replica moves only its
//! keys. When the chosen replica fails (connect error, timeout, 5xx, unparsable
//! answer) the next one in the key's order is tried and the failed one is skipped for
//! `tracker.backoff`. When every replica is in back-off, calls fail at once with
//! [`TrackerError::Unavailable`]; the caller then serves from the origin (flow 4).
//! Refusals (4xx) are returned as they are: another replica would refuse too.
//!
//! Connections are pooled (hyper-util client, rustls) and reused; idle ones are
//! dropped after [`POOL_IDLE`], before the tracker's own idle deadline.
//!
//! Non-goals: no retries of the same replica, no long-poll, no request hedging.
//! Announce batching and timing belong to the caller; this only sends.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, StatusCode, header};
use http_body_util::{BodyExt, Full, Limited};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde::Serialize;
use serde::de::DeserializeOwned;
use shoal_proto::tracker::{
    ANNOUNCE_PATH, AgentInfo, AnnounceRequest, AnnounceResponse, ErrorBody, HeldObject, SYNC_PATH,
    SyncRequest, SyncResponse,
};
use shoal_proto::{ObjectKey, Topology};

use crate::config::TrackerConfig;
use crate::metrics::Metrics;

/// Idle pooled connections are closed after this; below the tracker's default
/// `limits.header_read_timeout` (10 s), which also closes idle connections.
pub const POOL_IDLE: Duration = Duration::from_secs(5);
/// Largest tracker answer accepted.
const MAX_RESPONSE: usize = 32 << 20;

/// Why a tracker call failed, and whose fault it was.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TrackerError {
    /// `tracker.urls` is empty: this agent is not in a swarm.
    #[error("no tracker configured")]
    NotConfigured,
    /// A URL in `tracker.urls` is not usable (ours to fix).
    #[error("tracker url {url:?}: {reason}")]
    BadUrl { url: String, reason: String },
    /// Every replica failed recently; not tried again until the back-off ends. Serve
    /// from the origin.
    #[error("tracker unavailable: every replica failed within the back-off period")]
    Unavailable,
    /// The replica could not be reached or failed (connect, TLS, timeout, 5xx).
    /// Another replica may work.
    #[error("tracker {url} down: {reason}")]
    Down { url: String, reason: String },
    /// The replica answered 4xx: 403 (the announced address does not match our
    /// connection or certificate — our configuration), 429 (we are over its rate
    /// limit — slow down), 400/413 (we sent something it cannot accept — a bug).
    #[error("tracker {url} refused the request: {status} {reason}")]
    Refused {
        url: String,
        status: u16,
        reason: String,
    },
    /// The replica answered 200 with a body we cannot parse (its bug or a version
    /// mismatch). Another replica may work.
    #[error("tracker {url} sent a bad response: {reason}")]
    BadResponse { url: String, reason: String },
}

/// The tracker client. Cheap to clone; clones share connections and back-off state.
#[derive(Clone)]
pub struct TrackerClient {
    inner: Arc<Inner>,
}

struct Inner {
    replicas: Vec<Replica>,
    http: Client<HttpsConnector<HttpConnector>, Full<Bytes>>,
    timeout: Duration,
    backoff: Duration,
    peer_addr: SocketAddr,
    topology: Topology,
    load: AtomicU32,
    metrics: Metrics,
}

struct Replica {
    /// As configured, without a trailing `/`; also the rendezvous hash input.
    url: String,
    down_until: Mutex<Option<Instant>>,
}

impl TrackerError {
    /// Whether trying another replica makes sense.
    pub fn retry_elsewhere(&self) -> bool {
        matches!(self, Self::Down { .. } | Self::BadResponse { .. })
    }

    /// Whether the tracker said we are sending too fast (429).
    pub fn is_rate_limited(&self) -> bool {
        matches!(self, Self::Refused { status: 429, .. })
    }
}

impl TrackerClient {
    /// A client for `cfg.urls`. `tls` is the agent's fleet client configuration (its
    /// ALPN is replaced by `http/1.1`); `peer_addr` is the QUIC address announced to
    /// the tracker (an unspecified IP lets the tracker use the connection's source IP).
    pub fn new(
        cfg: &TrackerConfig,
        tls: rustls::ClientConfig,
        peer_addr: SocketAddr,
        topology: Topology,
        metrics: Metrics,
    ) -> Result<Self, TrackerError> {
        if cfg.urls.is_empty() {
            return Err(TrackerError::NotConfigured);
        }
        let mut replicas = Vec::with_capacity(cfg.urls.len());
        for u in &cfg.urls {
            let url = u.trim_end_matches('/').to_owned();
            let bad = |reason: &str| TrackerError::BadUrl {
                url: u.clone(),
                reason: reason.to_owned(),
            };
            let uri: http::Uri = url.parse().map_err(|_| bad("not a URL"))?;
            if uri.scheme_str() != Some("https") || uri.host().is_none() {
                return Err(bad("must be https://host[:port]"));
            }
            replicas.push(Replica {
                url,
                down_until: Mutex::new(None),
            });
        }
        let mut tls = tls;
        tls.alpn_protocols = vec![shoal_proto::tracker::ALPN.to_vec()];
        let mut tcp = HttpConnector::new();
        tcp.enforce_http(false);
        tcp.set_nodelay(true);
        tcp.set_connect_timeout(Some(cfg.timeout));
        let mut https = HttpsConnector::from((tcp, tls));
        https.enforce_https();
        let http = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(POOL_IDLE)
            .pool_timer(hyper_util::rt::TokioTimer::new())
            .build(https);
        Ok(Self {
            inner: Arc::new(Inner {
                replicas,
                http,
                timeout: cfg.timeout,
                backoff: cfg.backoff,
                peer_addr,
                topology,
                load: AtomicU32::new(0),
                metrics,
            }),
        })
    }

    /// Reports uploads in flight; sent with the next request.
    pub fn set_load(&self, uploads_in_flight: u32) {
        self.inner.load.store(uploads_in_flight, Ordering::Relaxed);
    }

    /// What this agent tells the tracker about itself.
    pub fn agent(&self) -> AgentInfo {
        AgentInfo {
            peer_addr: self.inner.peer_addr,
            topology: self.inner.topology.clone(),
            load: self.inner.load.load(Ordering::Relaxed),
        }
    }

    /// An empty sync request for `key` (no layout, nothing held, no leases wanted).
    pub fn request(&self, key: ObjectKey) -> SyncRequest {
        SyncRequest {
            agent: self.agent(),
            key,
            layout: None,
            have: Default::default(),
            complete: false,
            publish: Vec::new(),
            want_leases: 0,
            want: Default::default(),
            release: Vec::new(),
            cursor: None,
            renew: Vec::new(),
        }
    }

    /// `POST /v1/sync` to the key's replica. `req.agent` is replaced by [`Self::agent`].
    pub async fn sync(&self, mut req: SyncRequest) -> Result<SyncResponse, TrackerError> {
        req.agent = self.agent();
        let order = self.order(&req.key);
        self.send(&order, SYNC_PATH, &req).await
    }

    /// `POST /v1/announce`: the objects are split by their keys' replicas, one request
    /// per replica. The answers are merged; an error is returned if any part could
    /// not be delivered (the rest was).
    pub async fn announce(
        &self,
        objects: Vec<HeldObject>,
    ) -> Result<AnnounceResponse, TrackerError> {
        let mut groups: BTreeMap<Vec<usize>, Vec<HeldObject>> = BTreeMap::new();
        for o in objects {
            groups.entry(self.order(&o.key)).or_default().push(o);
        }
        let mut merged = AnnounceResponse::default();
        let mut failed = None;
        for (order, objects) in groups {
            let req = AnnounceRequest {
                agent: self.agent(),
                objects,
            };
            match self
                .send::<_, AnnounceResponse>(&order, ANNOUNCE_PATH, &req)
                .await
            {
                Ok(r) => {
                    merged.accepted += r.accepted;
                    merged.want_ids.extend(r.want_ids);
                    merged.refused.extend(r.refused);
                }
                Err(e) => failed = Some(e),
            }
        }
        match failed {
            Some(e) => Err(e),
            None => Ok(merged),
        }
    }

    /// Replica URLs for `key`, most preferred first.
    pub fn replicas_for(&self, key: &ObjectKey) -> Vec<&str> {
        self.order(key)
            .into_iter()
            .map(|i| self.inner.replicas[i].url.as_str())
            .collect()
    }

    /// Whether every replica is in back-off (calls fail fast).
    pub fn is_down(&self) -> bool {
        let now = Instant::now();
        self.inner.replicas.iter().all(|r| r.is_down(now))
    }

    fn order(&self, key: &ObjectKey) -> Vec<usize> {
        let urls: Vec<&str> = self.inner.replicas.iter().map(|r| r.url.as_str()).collect();
        rendezvous(&urls, key)
    }

    /// Tries the replicas in `order` that are not in back-off.
    async fn send<Q: Serialize, R: DeserializeOwned>(
        &self,
        order: &[usize],
        path: &str,
        body: &Q,
    ) -> Result<R, TrackerError> {
        let body = Bytes::from(serde_json::to_vec(body).map_err(|e| TrackerError::BadUrl {
            url: path.to_owned(),
            reason: format!("cannot encode request: {e}"),
        })?);
        let now = Instant::now();
        let mut last = TrackerError::Unavailable;
        for &i in order {
            let replica = &self.inner.replicas[i];
            if replica.is_down(now) {
                continue;
            }
            let started = Instant::now();
            let result = self.post(replica, path, body.clone()).await;
            self.inner
                .metrics
                .tracker_announce_duration
                .observe(started.elapsed().as_secs_f64());
            match result {
                Ok(r) => {
                    replica.set_down(None);
                    return Ok(r);
                }
                Err(e) => {
                    self.inner.metrics.tracker_errors.inc();
                    tracing::debug!(error = %e, "tracker request failed");
                    if !e.retry_elsewhere() {
                        return Err(e);
                    }
                    replica.set_down(Some(Instant::now() + self.inner.backoff));
                    last = e;
                }
            }
        }
        Err(last)
    }

    /// One request to one replica, with the per-request deadline.
    async fn post<R: DeserializeOwned>(
        &self,
        replica: &Replica,
        path: &str,
        body: Bytes,
    ) -> Result<R, TrackerError> {
        let url = &replica.url;
        let down = |reason: String| TrackerError::Down {
            url: url.clone(),
            reason,
        };
        let req = Request::post(format!("{url}{path}"))
            .header(header::CONTENT_TYPE, "application/json")
            .body(Full::new(body))
            .map_err(|e| TrackerError::BadUrl {
                url: url.clone(),
                reason: e.to_string(),
            })?;
        let exchange = async {
            let resp = self
                .inner
                .http
                .request(req)
                .await
                .map_err(|e| down(error_chain(&e)))?;
            let status = resp.status();
            let bytes = Limited::new(resp.into_body(), MAX_RESPONSE)
                .collect()
                .await
                .map_err(|e| down(format!("reading response: {e}")))?
                .to_bytes();
            Ok::<_, TrackerError>((status, bytes))
        };
        let (status, bytes) = tokio::time::timeout(self.inner.timeout, exchange)
            .await
            .map_err(|_| down(format!("no answer within {:?}", self.inner.timeout)))??;
        if status == StatusCode::OK {
            return serde_json::from_slice(&bytes).map_err(|e| TrackerError::BadResponse {
                url: url.clone(),
                reason: e.to_string(),
            });
        }
        let reason = serde_json::from_slice::<ErrorBody>(&bytes)
            .map(|b| b.error)
            .unwrap_or_else(|_| String::from_utf8_lossy(&bytes).chars().take(200).collect());
        if status.is_client_error() {
            Err(TrackerError::Refused {
                url: url.clone(),
                status: status.as_u16(),
                reason,
            })
        } else {
            Err(down(format!("{status}: {reason}")))
        }
    }
}

impl std::fmt::Debug for TrackerClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let urls: Vec<&str> = self.inner.replicas.iter().map(|r| r.url.as_str()).collect();
        f.debug_struct("TrackerClient")
            .field("urls", &urls)
            .field("peer_addr", &self.inner.peer_addr)
            .finish()
    }
}

impl Replica {
    fn is_down(&self, now: Instant) -> bool {
        let d = self
            .down_until
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        d.is_some_and(|until| now < until)
    }

    fn set_down(&self, until: Option<Instant>) {
        *self
            .down_until
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = until;
    }
}

/// Indices of `urls` ordered by rendezvous score for `key`, highest first.
pub fn rendezvous(urls: &[&str], key: &ObjectKey) -> Vec<usize> {
    let mut scored: Vec<([u8; 32], usize)> = urls
        .iter()
        .enumerate()
        .map(|(i, u)| {
            let mut h = blake3::Hasher::new();
            h.update(u.as_bytes());
            h.update(&[0]);
            h.update(key.as_str().as_bytes());
            (*h.finalize().as_bytes(), i)
        })
        .collect();
    scored.sort_unstable_by(|a, b| b.cmp(a));
    scored.into_iter().map(|(_, i)| i).collect()
}

/// An error and its sources on one line (hyper's top-level errors say little).
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests;
