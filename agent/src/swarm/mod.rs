//! Fetching an object version from the swarm (flows 2–4 of the design).
//!
//! The leader of a `p2p` URL asks the origin for the version's head only (`HEAD`),
//! then runs one download task per object version: it syncs with the tracker every
//! `tracker.poll_interval` (publishing ids it hashed from origin bytes, announcing the
//! chunks it holds, asking for origin leases), feeds what it learns to the
//! [`shoal_proto::sched::Scheduler`], and performs the scheduler's actions: chunk
//! requests to peers over QUIC (verified against the tracker's ids, never the serving
//! peer's), and `Range` requests to the origin under a lease or as a fallback. Each
//! chunk is stored and handed to the fill's readers as soon as it verifies.
//!
//! When the tracker cannot be reached the scheduler falls back to the origin for every
//! chunk still missing, so clients are served regardless (flow 4); the task keeps
//! syncing in the background and the swarm resumes when the tracker answers again.
//!
//! Complete objects are re-announced every `tracker.announce_interval` (see
//! [`announce`]), so a restarted tracker knows every holder again within one interval.

pub mod announce;
mod download;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use shoal_pki::Identity;
use shoal_proto::sched::SchedConfig;
use shoal_proto::{ChunkId, PeerId};

use crate::config::Config;
use crate::discovery::TrackerClient;
use crate::metrics::Metrics;
use crate::store::ChunkStore;
use crate::transport::{ChunkFuture, ChunkSource, PeerEndpoint, PeerOptions};
pub use download::spawn;

/// The swarm side of an agent: its peer endpoint and tracker client.
#[derive(Debug)]
pub struct Swarm {
    pub(crate) peers: PeerEndpoint,
    pub(crate) tracker: TrackerClient,
    pub(crate) me: PeerId,
    pub(crate) sched: SchedConfig,
    pub(crate) poll_interval: std::time::Duration,
    /// The agent's metrics (the download counts verify failures and scheduler errors).
    pub(crate) metrics: Metrics,
    /// Where each known peer listens (from tracker hints).
    pub(crate) addrs: Mutex<HashMap<PeerId, std::net::SocketAddr>>,
}

/// Why the swarm could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum SwarmError {
    #[error("tls: {0}")]
    Tls(#[from] shoal_pki::TlsError),
    #[error(transparent)]
    Transport(#[from] crate::transport::TransportError),
    #[error("tracker client: {0}")]
    Tracker(#[from] crate::discovery::TrackerError),
    #[error("peer endpoint address: {0}")]
    Addr(std::io::Error),
}

/// Serves peers from the chunk store: verified bytes or nothing.
#[derive(Debug)]
pub struct StoreSource(pub ChunkStore);

impl ChunkSource for StoreSource {
    fn chunk<'a>(&'a self, id: &'a ChunkId) -> ChunkFuture<'a> {
        Box::pin(async move { self.0.get(id).await.ok().flatten() })
    }
}

impl Swarm {
    /// Binds the QUIC endpoint and builds the tracker client.
    pub async fn start(
        cfg: &Config,
        identity: &Identity,
        store: ChunkStore,
        metrics: Metrics,
    ) -> Result<Self, SwarmError> {
        let p = &cfg.peer;
        let options = PeerOptions::from_config(p);
        let source: Arc<dyn ChunkSource> = Arc::new(StoreSource(store));
        let peers =
            PeerEndpoint::bind(p.listen, identity, options, source, metrics.clone()).await?;
        let bound = peers.local_addr().map_err(SwarmError::Addr)?;
        let advertise = p.advertise.unwrap_or(bound);
        let topology = shoal_proto::Topology {
            node: cfg.topology.node.clone(),
            zone: cfg.topology.zone.clone(),
            region: cfg.topology.region.clone(),
        };
        let tls = identity.client_config(&[shoal_proto::tracker::ALPN])?;
        let tracker = TrackerClient::new(&cfg.tracker, tls, advertise, topology, metrics.clone())?;
        // Agents with the same view of the swarm must not all pick the same peer.
        let salt = u64::from_le_bytes(
            blake3::hash(identity.peer_id().as_str().as_bytes()).as_bytes()[..8]
                .try_into()
                .unwrap_or([0; 8]),
        );
        let sched = SchedConfig {
            salt,
            origin_fallback_after: p.origin_fallback,
            ..SchedConfig::default()
        };
        Ok(Self {
            me: identity.peer_id(),
            peers,
            tracker,
            sched,
            poll_interval: cfg.tracker.poll_interval,
            metrics,
            addrs: Mutex::new(HashMap::new()),
        })
    }

    /// The QUIC address peers dial (after binding port 0).
    pub fn peer_addr(&self) -> Option<std::net::SocketAddr> {
        self.peers.local_addr().ok()
    }

    pub fn tracker(&self) -> &TrackerClient {
        &self.tracker
    }

    /// Closes every peer connection at once.
    pub fn close(&self) {
        self.peers.close();
    }

    /// Stops serving peers (uploads in progress get a grace period).
    pub async fn shutdown(&self) {
        self.peers.shutdown().await;
    }
}
