//! Deterministic discrete-event simulation of a flash crowd: the real
//! [`shoal_proto::sched::Scheduler`] of every agent against the real tracker
//! [`shoal_tracker::registry::Registry`], over simulated links, in simulated time.
//!
//! Every agent starts within `start_spread` of time 0, asks the origin for the head
//! (one origin round trip), then runs the agent's download loop
//! (`agent/src/swarm/download.rs`) with its defaults: a tracker sync every
//! `poll_interval` (200 ms) and at once when the scheduler wants or gives back leases
//! or the tracker pages ids, the scheduler's actions performed as the agent performs
//! them, chunk requests served by the holder under the agent's upload limits
//! (`peer.max_uploads` 8, `peer.max_uploads_per_peer` 4; more wait in the optional
//! upload queue, `upload_queue`, or get `Busy` at once), a
//! final `complete` sync when the last chunk is stored, and an announce every
//! `announce_interval` after that. The tracker is one `Registry` with its default
//! configuration, called at the simulated instant each request reaches it.
//!
//! # Model
//!
//! - **Bandwidth**: flow level ([`net`]): each chunk transfer is one flow from the
//!   holder's uplink to the requester's downlink; uplinks split equally among their
//!   flows, downlinks max-min among theirs; recomputed on every flow start and end.
//!   Link rates are payload rates (the scenario's configured rate × 1448/1514), so the
//!   effective Kumar–Ross bound of the fleet harness is the bound here too.
//! - **Latency**: every node has a one-way delay to a core (`latency`, drawn per node
//!   uniformly from the range); a message from A to B takes the sum of both. A request
//!   costs a round trip before its bytes flow; a chunk's last byte arrives one one-way
//!   delay after the sender sent it; the first request between two agents adds one
//!   round trip (QUIC handshake). The tracker and the origin are nodes with their own
//!   delay.
//! - **Loss**: a flow's rate is capped by the Mathis et al. bound of a loss-based
//!   congestion controller, `MSS / RTT × sqrt(3 / (2p))`, with its path's round trip.
//!   Control messages (requests, `Busy`, tracker syncs) are never lost.
//!
//! # What it cannot do
//!
//! No CPU (the emulation's S1 and S4 runs were CPU-bound; the simulation never is), no
//! disk, no packets: no slow start, no queueing delay, no loss bursts or
//! retransmission timeouts; no tracker failures or agent churn; no global max-min
//! fairness (see [`net`]); chunk ids are synthetic (no hashing). A chunk fetched from
//! a peer is usable only once complete, as in the agent. One departure from the
//! agent's loop: a tracker hint repeating what the scheduler already knows of that
//! peer is not fed again (see `World::on_sync`). Zero latency is degenerate (every
//! answer instantaneous, back-offs in lock-step); use a small one.
//!
//! Cost: every scheduler input re-plans, in O(known peers / 64 + chunks) plus, per
//! request started, an AND of each startable chunk's holder bitmap with the ready set
//! (O(chunks × known peers / 64)) and a walk over the ready holders of the chunk
//! picked; every tracker sync ranks up to 256 holders. S4 at N = 1,000 with an
//! 8-chunk object takes about 12 CPU seconds; memory grows with agents × peers each
//! agent learns of (about 2 GB at N = 10,000; docs/benchmarks.md, Swarm simulation;
//! `swarmsim --object-divisor` shrinks the object).

pub mod net;
mod upload;
mod world;

use std::time::Duration;

use shoal_proto::sched::SchedConfig;
use shoal_tracker::config::RegistryConfig;

use crate::fleet::scenario::{PAYLOAD_EFFICIENCY, Scenario};

/// One simulation run.
#[derive(Debug, Clone)]
pub struct SimConfig {
    /// Nodes, object size and link rates (configured rates; payload rates are derived).
    pub scenario: Scenario,
    /// Chunk size in bytes. Default 1 MiB (the fleet harness's agents).
    pub chunk_size: u32,
    /// Seeds the per-node latencies and start times.
    pub seed: u64,
    /// One-way delay of each agent to the core, drawn uniformly from this range.
    pub latency: (Duration, Duration),
    /// One-way delay of the origin and of the tracker to the core.
    pub server_latency: Duration,
    /// Packet loss probability of every path (0 = none).
    pub loss: f64,
    /// Payload bytes per packet, for the loss bound.
    pub mss: f64,
    /// Agents start uniformly within this time of the first.
    pub start_spread: Duration,
    /// Chunk uploads an agent serves at once; more get `Busy`.
    pub max_uploads: usize,
    /// Chunk uploads an agent serves at once to one peer.
    pub max_uploads_per_peer: usize,
    /// Requests that wait (FIFO) for an upload slot when all are taken; more get
    /// `Busy`. 0 (default) = `Busy` at once.
    pub upload_queue: usize,
    /// Of the waiting requests, at most this many from one peer.
    pub upload_queue_per_peer: usize,
    /// A request waits at most this long for a slot, then gets `Busy`.
    pub upload_queue_wait: Duration,
    /// A freed slot goes to the waiter whose chunk the holder has sent least often
    /// (ties: the oldest), instead of the oldest waiter.
    pub upload_queue_fewest_first: bool,
    /// Tracker sync interval of a download.
    pub poll_interval: Duration,
    /// Re-announce interval of a complete object.
    pub announce_interval: Duration,
    /// The scheduler's settings (the salt is set per agent, as the agent does).
    pub sched: SchedConfig,
    /// The tracker's settings.
    pub registry: RegistryConfig,
    /// Simulated time after which the run stops, finished or not.
    pub time_limit: Duration,
    /// Feed a tracker reply's hints with one `Scheduler::handle_peers` instead of one
    /// `handle_peer` per hint (as the agent does).
    pub batch_hints: bool,
    /// Global max-min bandwidth sharing instead of the local model ([`net::Net::exact`]).
    pub exact_sharing: bool,
}

/// What one run measured.
#[derive(Debug, Clone)]
pub struct SimResult {
    /// Completion time of every agent that finished, seconds from time 0, sorted.
    pub completions: Vec<f64>,
    /// Agents in the run.
    pub agents: usize,
    /// Payload bytes the origin sent (cancelled transfers count what was sent).
    pub origin_bytes: u64,
    pub object_bytes: u64,
    /// Effective Kumar–Ross bound in seconds (payload rates, as the fleet harness).
    pub t_min: f64,
    /// Tracker requests (syncs, paging syncs, final syncs, announces).
    pub tracker_requests: u64,
    /// Peer requests answered `Busy` (at once, or after waiting in the queue).
    pub busy: u64,
    /// Peer requests that waited in an upload queue.
    pub queued: u64,
    /// Of those, answered `Busy` after the longest wait.
    pub queue_timeouts: u64,
    /// Of those, cancelled by the requester while waiting.
    pub queue_cancelled: u64,
    /// Seconds waited in queues by requests that then got a slot, summed.
    pub queue_wait: f64,
    /// Peer transfers cancelled by the requester after they started (lost
    /// duplicates, given-up requests): upload spent for nothing.
    pub peer_cancelled: u64,
    /// Peer chunk transfers completed (duplicates included).
    pub peer_transfers: u64,
    /// Origin range requests sent.
    pub origin_requests: u64,
    /// Scheduler inputs refused (should be zero apart from late answers).
    pub sched_errors: u64,
    /// Events processed.
    pub events: u64,
    /// Simulated seconds at the end of the run.
    pub end: f64,
}

impl Default for SimConfig {
    fn default() -> Self {
        Self {
            scenario: Scenario::named("S4")
                .unwrap_or_else(|| unreachable!("S4 is a named scenario")),
            chunk_size: 1024 * 1024,
            seed: 1,
            latency: (Duration::ZERO, Duration::ZERO),
            server_latency: Duration::ZERO,
            loss: 0.0,
            mss: 1400.0,
            start_spread: Duration::from_millis(200),
            max_uploads: 8,
            max_uploads_per_peer: 4,
            upload_queue: 0,
            upload_queue_per_peer: 1,
            upload_queue_wait: Duration::from_secs(4),
            upload_queue_fewest_first: false,
            poll_interval: Duration::from_millis(200),
            announce_interval: Duration::from_secs(30),
            sched: SchedConfig::default(),
            registry: RegistryConfig::default(),
            time_limit: Duration::from_secs(3600),
            exact_sharing: false,
            batch_hints: false,
        }
    }
}

impl SimConfig {
    /// The effective (payload-rate) Kumar–Ross bound of this run's scenario.
    pub fn t_min(&self) -> f64 {
        self.scenario.t_min(PAYLOAD_EFFICIENCY)
    }
}

impl SimResult {
    /// Completion time at quantile `q` (nearest rank), `None` if nobody finished.
    pub fn quantile(&self, q: f64) -> Option<f64> {
        let n = self.completions.len();
        if n == 0 {
            return None;
        }
        let rank = ((q * n as f64).ceil() as usize).clamp(1, n);
        self.completions.get(rank - 1).copied()
    }

    /// Whether every agent finished.
    pub fn all_done(&self) -> bool {
        self.completions.len() == self.agents
    }

    pub fn last(&self) -> Option<f64> {
        self.completions.last().copied()
    }

    pub fn origin_ratio(&self) -> f64 {
        self.origin_bytes as f64 / self.object_bytes as f64
    }

    /// Tracker requests per agent per second of the run (to the last completion).
    pub fn tracker_rate(&self) -> f64 {
        let t = self.last().unwrap_or(self.end).max(1e-9);
        self.tracker_requests as f64 / self.agents as f64 / t
    }
}

/// Runs one simulation to completion (or `time_limit`).
pub fn run(cfg: &SimConfig) -> SimResult {
    world::World::new(cfg).run()
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests;
