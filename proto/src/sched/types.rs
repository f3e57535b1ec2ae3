//! The scheduler's vocabulary: request ids, outcomes, actions, counters, errors.

use std::fmt;

#[cfg(doc)]
use super::Scheduler;
use crate::id::ChunkId;
use crate::manifest::ManifestError;
use crate::peer::PeerId;

/// Names one request this scheduler asked for; unique within a scheduler.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RequestId(pub(super) u64);

/// How a request ended, as the agent saw it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Outcome {
    /// The chunk arrived, verified against its id (or was hashed, from the origin) and
    /// is stored.
    Ok,
    /// The peer is over its upload limit: try elsewhere, back that peer off briefly.
    /// From the origin (429/503) it counts as a failed attempt.
    Busy,
    /// The peer does not have the chunk after all. From the origin it counts as a failed
    /// attempt.
    NotFound,
    /// The bytes failed verification. A peer is banned for this object; from the origin
    /// it counts as a failed attempt.
    Corrupt,
    /// Timeout, reset or connection error: counts against the peer (or the origin
    /// attempt).
    Failed,
}

/// Why a chunk is fetched from the origin. Every origin fetch has exactly one: a
/// lease, or the cause of its fallback, judged when the fetch starts (the tracker's
/// loss first, then what last went wrong with a peer request for this chunk).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum OriginReason {
    /// The tracker leased this chunk to us: others wait for us to announce it.
    Lease,
    /// No usable holder and no lease for `origin_fallback_after`, and no peer request
    /// for this chunk ever failed: nobody had it.
    NoPeer,
    /// Fallen back after a peer request for this chunk failed (an error, a reset, a
    /// peer that turned out not to have it) and no holder was left.
    PeerFailed,
    /// Fallen back after a peer request for this chunk was given up as too slow.
    PeerTimeout,
    /// Fallen back after a peer sent bytes for this chunk that failed verification.
    PeerCorrupt,
    /// The tracker cannot be reached ([`Scheduler::handle_tracker_lost`]).
    TrackerLost,
}

impl OriginReason {
    /// Whether the chunk went to the origin without a lease.
    pub fn is_fallback(self) -> bool {
        self != OriginReason::Lease
    }
}

/// What last went wrong with a peer request for one chunk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum PeerTrouble {
    Failed,
    TimedOut,
    Corrupt,
}

/// Something the agent must do, drained with [`Scheduler::poll_action`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Ask `peer` for chunk `index`, which must verify against `id`. Report the result
    /// with [`Scheduler::handle_result`] and `req`.
    FetchPeer {
        req: RequestId,
        index: usize,
        id: ChunkId,
        peer: PeerId,
    },
    /// Fetch chunk `index` from the origin (HTTP Range `layout.chunk_bounds(index)`,
    /// conditional on the validator) and hash it locally.
    FetchOrigin {
        req: RequestId,
        index: usize,
        reason: OriginReason,
    },
    /// Abandon `req` (a duplicate that lost, a given-up request, a banned or gone peer's
    /// request, or a chunk that became local). Its result, if it still comes, is ignored.
    Cancel { req: RequestId },
    /// Ask the tracker for origin leases on up to `max` of `indices` (most wanted first).
    /// The answer comes back through [`Scheduler::handle_leases`] and
    /// [`Scheduler::handle_leased_elsewhere`].
    WantLeases { indices: Vec<usize>, max: usize },
    /// Tell the tracker we give these leases back (repeated origin failures).
    ReleaseLeases { indices: Vec<usize> },
}

/// Counters of one download.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Progress {
    /// Chunks in the object.
    pub chunks: usize,
    /// Chunks stored, whatever their source.
    pub done: usize,
    /// Bytes of the stored chunks.
    pub bytes_done: u64,
    /// Chunks that were already local ([`Scheduler::handle_local`]).
    pub local: usize,
    /// Chunks fetched from peers.
    pub from_peers: usize,
    /// Chunks fetched from the origin.
    pub from_origin: usize,
    /// Requests in flight, duplicates included.
    pub in_flight: usize,
    /// Of those, origin requests.
    pub origin_in_flight: usize,
    /// Peers banned for corrupt bytes.
    pub banned: usize,
    /// Peers dropped for repeated failures.
    pub dropped: usize,
}

/// An input the scheduler refused or ignored. All are the caller's (or the tracker's)
/// inconsistency, never the scheduler's state going wrong; none is worth retrying.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SchedError {
    /// The layout does not pass [`Layout::new`](crate::manifest::Layout::new).
    #[error("invalid layout: {0}")]
    Layout(#[from] ManifestError),
    /// A chunk index at or past the chunk count (from the tracker or the caller).
    #[error("chunk index {index} out of range: the object has {chunks} chunks")]
    IndexOutOfRange { index: usize, chunks: usize },
    /// A result for a request that is not in flight: already answered, cancelled, or
    /// never issued. Late results of cancelled requests land here; they are harmless.
    #[error("request {0} is not in flight; result ignored")]
    UnknownRequest(RequestId),
    /// The tracker named a second, different id for a chunk; the first is kept.
    #[error("tracker sent chunk id {new:?} for chunk {index}, which has {known:?}; kept the first")]
    IdConflict {
        index: usize,
        known: ChunkId,
        new: ChunkId,
    },
    /// An update about a peer this download has never seen.
    #[error("peer {0} is not known to this download")]
    UnknownPeer(PeerId),
}

impl fmt::Display for RequestId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "#{}", self.0)
    }
}
