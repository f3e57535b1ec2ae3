//! The QUIC peer transport: serves chunks to other agents and fetches chunks from them.
//!
//! One [`PeerEndpoint`] per agent owns one UDP socket and one `quinn::Endpoint` that is
//! both server and client. Every connection is mutual TLS under the fleet CA (see
//! [`shoal_pki`]) with ALPN [`ALPN`]; a peer without a fleet certificate is
//! refused during the handshake. A peer's id is the first DNS name of its certificate:
//! we dial a peer by that name, and log and rate-limit the peers that dial us by it.
//!
//! Each chunk request is one bidirectional stream carrying the frames of
//! `shoal_proto::wire`. Fetching reuses one connection per peer (the pool in
//! `client.rs`); connections we dial carry only our requests, connections we accept only
//! theirs, so a pair of agents that fetch from each other holds two connections.
//!
//! What the transport guarantees: [`PeerEndpoint::fetch`] returns only bytes whose
//! BLAKE3 equals the requested id, or a [`PeerError`] that says what the scheduler
//! should do next. What it does not do: choose peers, retry, or ban them (that is the
//! scheduler's), and it trusts a [`ChunkSource`] to hand out only verified bytes.
//!
//! Metrics it keeps: `shoal_peer_requests_total{result}`,
//! `shoal_bytes_fetched_total{source="peer"}` (verified bytes only, so callers must not
//! count them again), `shoal_chunk_verify_failures_total{source="peer"}`,
//! `shoal_bytes_uploaded_total`, `shoal_uploads_refused_total`,
//! `shoal_peer_uploads_queued_total`, `shoal_peer_upload_queue_wait_seconds{result}`,
//! `shoal_peers_connected` (both directions).

use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use bytes::Bytes;
use shoal_pki::{Identity, TlsError};
use shoal_proto::wire::{ErrorCode, WireError};
use shoal_proto::{ChunkId, PeerAddr, PeerId};
use tokio::task::JoinHandle;

use crate::config::PeerConfig;
use crate::metrics::Metrics;

mod client;
mod limit;
mod quic;
mod server;

/// ALPN protocol id of the peer protocol, version 1.
pub const ALPN: &[u8] = b"shoal/1";

/// Where a server finds the chunks it serves. The agent implements it for its chunk
/// store; tests use [`MemorySource`].
pub trait ChunkSource: Send + Sync + 'static {
    /// The bytes of chunk `id`, already verified against `id`, or `None` if this node
    /// does not hold it. Should not block the runtime (read files off-thread).
    fn chunk<'a>(&'a self, id: &'a ChunkId) -> ChunkFuture<'a>;
}

/// The future [`ChunkSource::chunk`] returns (boxed, so sources can be `dyn`).
pub type ChunkFuture<'a> = Pin<Box<dyn Future<Output = Option<Bytes>> + Send + 'a>>;

/// A [`ChunkSource`] held in memory (tests, the goodput probe, demos).
#[derive(Debug, Default)]
pub struct MemorySource {
    chunks: RwLock<HashMap<ChunkId, Bytes>>,
}

/// Upload limits of the server side. A request over the slot limits waits in a short
/// queue if it has room (at most `upload_queue_wait`), else it is answered `busy` at
/// once, so the requester can go elsewhere; a request over the rate budget gets `busy`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UploadLimits {
    /// Chunk requests served at once, all peers together (0 = serve nothing).
    pub max_uploads: usize,
    /// Chunk requests served at once to one peer (by peer id, across connections).
    pub max_uploads_per_peer: usize,
    /// Upload budget in bytes per second, all peers together; 0 = unlimited.
    pub upload_rate: u64,
    /// Requests that may wait (FIFO) for a slot when none is free; 0 = none.
    pub upload_queue: usize,
    /// Of those, at most this many from one peer.
    pub upload_queue_per_peer: usize,
    /// Longest wait in the queue; then the request is answered `busy`.
    pub upload_queue_wait: Duration,
}

/// Everything [`PeerEndpoint::bind`] needs besides the socket address and identity.
#[derive(Debug, Clone)]
pub struct PeerOptions {
    pub limits: UploadLimits,
    /// Deadline for one [`PeerEndpoint::fetch`], connecting included.
    pub request_timeout: Duration,
    /// A connection with no traffic for this long is closed (both sides).
    pub idle_timeout: Duration,
    /// Time a requester has to deliver its request frame once it opened a stream.
    pub request_frame_timeout: Duration,
    /// How long [`PeerEndpoint::shutdown`] lets uploads in progress finish.
    pub shutdown_grace: Duration,
}

/// Why the endpoint could not be set up. The operator's (or the caller's) to fix.
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    #[error("peer endpoint: cannot bind UDP {addr}: {source}")]
    Bind { addr: SocketAddr, source: io::Error },
    #[error("peer endpoint: TLS: {0}")]
    Tls(#[from] TlsError),
    #[error("peer endpoint: TLS configuration unusable for QUIC: {0}")]
    Quic(String),
}

/// Why a fetch failed, phrased as what the scheduler should do next.
#[derive(Debug, thiserror::Error)]
pub enum PeerError {
    /// The peer is at its upload limit: ask another peer, or this one after the delay.
    #[error("peer is busy (retry after {retry_after:?})")]
    Busy { retry_after: Duration },
    /// The peer does not hold the chunk (any more): ask another peer.
    #[error("peer does not hold the chunk")]
    NotFound,
    /// The peer sent bytes that do not hash to the chunk id: drop the peer for this
    /// object and report it.
    #[error("peer sent bytes that do not match the chunk id")]
    Corrupt,
    /// No complete answer within the request deadline: give the chunk to another peer.
    #[error("peer did not answer in time")]
    Timeout,
    /// The connection could not be set up (unreachable, handshake or certificate
    /// refused by either side): try other peers.
    #[error("cannot connect to peer: {0}")]
    Connect(#[source] ConnectFailure),
    /// The peer broke the wire protocol: count it against the peer, ask another.
    #[error("peer broke the protocol: {0}")]
    Protocol(#[source] ProtocolError),
    /// The peer answered with an error of its own (its disk, its shutdown).
    #[error("peer failed: error {0}")]
    Remote(ErrorCode),
    /// The connection was lost or the peer reset the stream mid-request: try again
    /// elsewhere (or here, on a fresh connection).
    #[error("connection to peer lost: {0}")]
    Closed(String),
    /// This endpoint is shutting down; nothing more will be fetched.
    #[error("peer endpoint is shut down")]
    Shutdown,
}

/// Why a connection could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum ConnectFailure {
    #[error("{0}")]
    Dial(#[from] quinn::ConnectError),
    #[error("handshake: {0}")]
    Handshake(#[from] quinn::ConnectionError),
}

/// How a peer broke the wire protocol.
#[derive(Debug, thiserror::Error)]
pub enum ProtocolError {
    #[error("malformed response frame: {0}")]
    Frame(#[from] WireError),
    #[error("stream ended before a complete response frame")]
    NoResponse,
    #[error("announced {got} bytes for a chunk of {want}")]
    Length { want: u32, got: u32 },
    #[error("stream ended after {got} of {want} chunk bytes")]
    Truncated { want: u32, got: usize },
    #[error("bytes after the chunk")]
    Trailing,
    #[error("requested length {0} exceeds the maximum chunk size")]
    RequestTooLarge(u32),
}

/// This agent's QUIC peer endpoint: serves chunks from a [`ChunkSource`] and fetches
/// chunks from peers. Dropping it closes every connection at once; prefer
/// [`PeerEndpoint::shutdown`].
#[derive(Debug)]
pub struct PeerEndpoint {
    endpoint: quinn::Endpoint,
    peer_id: PeerId,
    pool: client::Pool,
    server: Arc<server::Server>,
    accept: JoinHandle<()>,
    shutdown_grace: Duration,
}

impl MemorySource {
    pub fn new() -> Self {
        Self::default()
    }

    /// Stores `bytes` under their BLAKE3 and returns the id.
    pub fn insert(&self, bytes: Bytes) -> ChunkId {
        let id = ChunkId::of(&bytes);
        self.insert_as(id, bytes);
        id
    }

    /// Stores `bytes` under `id` without checking: for tests of lying peers.
    pub fn insert_as(&self, id: ChunkId, bytes: Bytes) {
        // A poisoned lock only means a writer panicked mid-insert; the map is intact.
        let mut map = self.chunks.write().unwrap_or_else(|e| e.into_inner());
        map.insert(id, bytes);
    }

    pub fn remove(&self, id: &ChunkId) -> Option<Bytes> {
        let mut map = self.chunks.write().unwrap_or_else(|e| e.into_inner());
        map.remove(id)
    }
}

impl ChunkSource for MemorySource {
    fn chunk<'a>(&'a self, id: &'a ChunkId) -> ChunkFuture<'a> {
        let map = self.chunks.read().unwrap_or_else(|e| e.into_inner());
        let found = map.get(id).cloned();
        Box::pin(std::future::ready(found))
    }
}

impl UploadLimits {
    /// No limits (tests, benchmarks).
    pub const UNLIMITED: Self = Self {
        max_uploads: usize::MAX,
        max_uploads_per_peer: usize::MAX,
        upload_rate: 0,
        upload_queue: 0,
        upload_queue_per_peer: 0,
        upload_queue_wait: Duration::ZERO,
    };
}

impl PeerOptions {
    /// The options the agent's configuration asks for, plus a 2 s request-frame
    /// deadline and a 5 s shutdown grace (not configurable).
    pub fn from_config(c: &PeerConfig) -> Self {
        Self {
            limits: UploadLimits {
                max_uploads: c.max_uploads,
                max_uploads_per_peer: c.max_uploads_per_peer,
                upload_rate: c.upload_rate.as_u64(),
                upload_queue: c.upload_queue,
                upload_queue_per_peer: c.upload_queue_per_peer,
                upload_queue_wait: c.upload_queue_wait,
            },
            request_timeout: c.request_timeout,
            idle_timeout: c.idle_timeout,
            request_frame_timeout: Duration::from_secs(2),
            shutdown_grace: Duration::from_secs(5),
        }
    }
}

impl Default for PeerOptions {
    /// As [`PeerOptions::from_config`] of [`PeerConfig::default`].
    fn default() -> Self {
        Self::from_config(&PeerConfig::default())
    }
}

impl PeerError {
    /// The `result` label of `shoal_peer_requests_total` for this outcome.
    pub fn label(&self) -> &'static str {
        match self {
            Self::Busy { .. } => "busy",
            Self::NotFound => "not_found",
            Self::Corrupt => "corrupt",
            Self::Timeout => "timeout",
            Self::Connect(_) => "connect",
            Self::Protocol(_) => "protocol",
            Self::Remote(_) => "remote_error",
            Self::Closed(_) => "closed",
            Self::Shutdown => "shutdown",
        }
    }

    /// Whether the peer misbehaved (as opposed to being busy, slow or gone), so the
    /// scheduler should stop asking it for this object.
    pub fn blames_peer(&self) -> bool {
        matches!(self, Self::Corrupt | Self::Protocol(_))
    }
}

impl PeerEndpoint {
    /// Binds `listen` (UDP) and starts serving chunks from `source` to fleet peers.
    pub async fn bind(
        listen: SocketAddr,
        identity: &Identity,
        options: PeerOptions,
        source: Arc<dyn ChunkSource>,
        metrics: Metrics,
    ) -> Result<Self, TransportError> {
        let endpoint = quic::endpoint(listen, identity, &options)?;
        let server = Arc::new(server::Server::new(&options, source, metrics.clone()));
        let accept = tokio::spawn(server::accept_loop(endpoint.clone(), server.clone()));
        let local = endpoint.local_addr().ok();
        tracing::info!(peer_id = %identity.peer_id(), listen = ?local, "peer endpoint up");
        Ok(Self {
            pool: client::Pool::new(endpoint.clone(), options.request_timeout, metrics),
            endpoint,
            peer_id: identity.peer_id(),
            server,
            accept,
            shutdown_grace: options.shutdown_grace,
        })
    }

    /// The bound UDP address (useful after binding port 0).
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.endpoint.local_addr()
    }

    /// Our own peer id (from our certificate).
    /// Statistics of every live connection this endpoint dialled (diagnostics and the
    /// goodput probe in `benches/`).
    pub fn connection_stats(&self) -> Vec<(PeerId, quinn::ConnectionStats)> {
        self.pool.stats()
    }

    pub fn peer_id(&self) -> &PeerId {
        &self.peer_id
    }

    /// Peers whose connection we dialled was ended by them: they closed it (shut
    /// down), reset it (restarted) or broke it off with a transport error. Idle
    /// timeouts (no keep-alive: idle connections are let go) and closes of our own
    /// are not reported. Events sent while a receiver lags are dropped for it.
    pub fn gone(&self) -> tokio::sync::broadcast::Receiver<PeerId> {
        self.pool.gone()
    }

    /// Fetches chunk `id` of `len` bytes from `peer`, over the pooled connection to it
    /// (dialled by peer id as TLS server name), within the request deadline. Returns
    /// only bytes that hash to `id`.
    pub async fn fetch(&self, peer: &PeerAddr, id: ChunkId, len: u32) -> Result<Bytes, PeerError> {
        self.pool.fetch(peer, id, len).await
    }

    /// Uploads in progress right now.
    pub fn active_uploads(&self) -> usize {
        self.server.active_uploads()
    }

    /// Requests waiting for an upload slot right now.
    pub fn queued_uploads(&self) -> usize {
        self.server.queued_uploads()
    }

    /// Whether [`PeerEndpoint::shutdown`] or [`PeerEndpoint::close`] was called.
    pub fn is_shutting_down(&self) -> bool {
        self.server.is_closing()
    }

    /// Graceful stop: refuse new connections and requests, let uploads in progress
    /// finish (up to the configured grace), then close every connection.
    pub async fn shutdown(&self) {
        self.endpoint.set_server_config(None);
        self.server.begin_shutdown();
        self.pool.begin_shutdown();
        let deadline = tokio::time::Instant::now() + self.shutdown_grace;
        self.server.drained(deadline).await;
        self.close();
        let _ = tokio::time::timeout_at(deadline, self.endpoint.wait_idle()).await;
    }

    /// Immediate stop: closes every connection; requests in flight fail.
    pub fn close(&self) {
        self.server.begin_shutdown();
        self.pool.begin_shutdown();
        self.endpoint.close(
            quinn::VarInt::from_u32(shoal_proto::wire::code::CLOSE_NORMAL),
            b"shutdown",
        );
        self.accept.abort();
    }
}

impl Drop for PeerEndpoint {
    fn drop(&mut self) {
        self.close();
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests;
