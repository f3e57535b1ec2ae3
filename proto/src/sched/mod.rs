//! Fetch scheduler: which chunk of one object version to fetch next, and from where.
//!
//! A [`Scheduler`] plans the download of one object version (a [`Layout`]) by one agent.
//! It is a sans-I/O state machine in the style of quinn-proto's `Connection`: the agent
//! feeds it what it learns through `handle_*(now, …)` calls and drains the resulting
//! [`Action`]s with [`Scheduler::poll_action`]; [`Scheduler::poll_timeout`] says when to
//! call [`Scheduler::handle_timeout`] next. It never reads a clock, touches the network
//! or the disk, and never panics on any input sequence: nonsense input is ignored and
//! reported as a [`SchedError`].
//!
//! # What it knows
//!
//! - **Chunk ids** arrive over time from the tracker ([`Scheduler::handle_chunk_ids`]);
//!   never from the peer serving the chunk. A peer request needs the id (the agent
//!   verifies against it); an origin request does not (the agent hashes the bytes).
//! - **Peers** and the chunk indices each holds ([`Scheduler::handle_peer`],
//!   [`Scheduler::handle_have`], [`Scheduler::handle_peer_gone`]).
//! - **Origin leases**: the tracker's grant that *this* agent fetches given chunks from
//!   the origin ([`Scheduler::handle_leases`]), or the news that another agent holds the
//!   lease ([`Scheduler::handle_leased_elsewhere`]).
//! - **Local chunks** ([`Scheduler::handle_local`]).
//!
//! It does not know where clients are reading: there is no urgent window at a read
//! position. One existed (the first N missing chunks at the cursor before any other)
//! and was removed: in a flash crowd it made every agent chase the same lowest
//! chunks and starved swarm diversity (fleet S2, 24 agents: last agent 63.1 s with a
//! window of 4, 58.5 s with 1, 52.1 s with 0), so the agent ran it at 0 and never
//! reported a position. Ties go to the lowest index, so a warm swarm still streams
//! roughly in order; readers wait for the chunk they need.
//! - **Results** of the requests it asked for ([`Scheduler::handle_result`]).
//!
//! # Policy
//!
//! 1. *Which chunk*: rarest first (fewest live holders), ties to the lowest index.
//! 2. *Which peer*: among live holders that are not backing off and below their
//!    window, the nearest ([`Proximity`]), then the least loaded (fewest requests from
//!    us), then the fewest recent failures, then a per-agent salted hash of the peer id
//!    (`salt`), so that agents with the same view of the swarm spread out. A peer's
//!    window starts at `peer_window_start` (1), grows by one per success up to
//!    `peer_inflight`, halves on `Busy` and drops to 1 on a failure.
//! 3. *Caps*: at most `peer_inflight` requests per peer, `origin_inflight` to the origin
//!    and `max_inflight` in total, duplicates included. Caps are never exceeded. While a leased chunk is being fetched from the origin,
//!    at most `peer_inflight_while_leased` peer requests are out: nobody else can
//!    send that chunk, and its fetch shares our downlink with every peer transfer (in
//!    fleet S4, 20 Mbit/s downlinks, the origin's first copies took ~30 s instead of
//!    11 without this cap, ~19 s with it).
//! 4. *Slow requests*: a peer request older than `slow_base + len / slow_rate` is slow;
//!    its chunk is duplicated to another holder (the slow request keeps running, the
//!    first answer wins and the other is cancelled). After `give_up_after` deadlines it
//!    is cancelled and counts as a failure of that peer.
//! 5. *Endgame*: once every chunk not yet stored is in flight, chunks are duplicated to
//!    other holders, oldest first, at most `max_copies` requests per chunk
//!    and `max_duplicates` duplicates at once. When one copy succeeds the others are
//!    cancelled ([`Action::Cancel`]).
//! 6. *Peer standing*: `Busy` backs the peer off (`busy_backoff`, doubling per
//!    consecutive busy up to 8×, plus 0–50 % jitter fixed per agent so that agents
//!    turned away together do not return together) and the chunk goes elsewhere.
//!    `NotFound` forgets that the peer holds the chunk. `Corrupt` bans the peer for
//!    this object and cancels its other requests. `Failed` (and a given-up request)
//!    backs it off (`failure_backoff`, doubling likewise); after `max_failures` in a row
//!    it is dropped for this object. Answers to requests sent before the peer's latest
//!    setback count once with it (one reset failing four requests is one failure). A
//!    peer that is gone loses its requests, which are reassigned; it comes back if
//!    announced again (a banned or dropped one does not).
//! 7. *Origin*: a chunk goes to the origin only (a) under a lease granted to us, or
//!    (b) as a *fallback*: it has had neither a usable holder (known id and a live
//!    holder) nor a lease for `origin_fallback_after`, or the tracker is lost
//!    ([`Scheduler::handle_tracker_lost`]). A chunk some live peer holds (with a known
//!    id) is always left to the peers, even when leased or fallen back.
//! 8. *Leases*: chunks no peer can serve, not leased to us, not recently reported
//!    leased elsewhere, not fallen back and not in flight are listed in
//!    [`Action::WantLeases`] (by index), only when we could use more
//!    leases (fewer than `origin_inflight` leased chunks outstanding), at most once per
//!    `lease_ask_interval` — or at once after a leased chunk is stored, so a lone agent
//!    keeps its origin requests busy. Leased chunks go to the origin before fallen-back
//!    ones (others wait on us). A "leased elsewhere" answer restarts the chunk's
//!    fallback clock and keeps it out of asks for half of `origin_fallback_after`, so
//!    the next ask refreshes it: while the tracker answers, nobody stampedes the origin
//!    behind a slow lease holder; the tracker expires stale leases.
//! 9. *Failed leases*: a failed origin fetch of a leased chunk is retried after a
//!    back-off (`failure_backoff`, doubling); after `lease_attempts` failures in a row the lease is
//!    handed back ([`Action::ReleaseLeases`]) so the tracker can grant it to someone
//!    else, and we do not ask for that chunk again for `origin_fallback_after`. Its
//!    fallback clock restarts, so if nobody else delivers it we try the origin again
//!    ourselves. Fallback origin fetches are retried with the same back-off, forever.
//!
//! # The tracker contract
//!
//! Each lease input and output has its field in [`crate::tracker`]'s sync messages,
//! so an agent only copies: [`Action::WantLeases`] `{ indices, max }` is
//! `SyncRequest::want` (as a bitmap) and `want_leases`; [`Action::ReleaseLeases`] is
//! `SyncRequest::release`; [`Scheduler::leases`] is `SyncRequest::renew`;
//! `SyncResponse::leases` feeds [`Scheduler::handle_leases`] and
//! `SyncResponse::leased_elsewhere` feeds [`Scheduler::handle_leased_elsewhere`]. The
//! tracker grants the wanted chunks first (then, room left, the lowest free ones,
//! which this scheduler also accepts), never a chunk just released by the same agent.
//! [`Scheduler::handle_peer_gone`] comes from the transport (the peer ended its
//! connection), not the tracker.
//!
//! # Non-goals
//!
//! - No I/O, no clock, no randomness: the same inputs give the same actions.
//! - It does not verify or store bytes, nor track which bytes a client has been sent:
//!   the agent verifies each chunk and reports `Ok` only once it is stored.
//! - It never gives up on the download: the caller owns the overall deadline, and may
//!   drop the scheduler at any time (releasing [`Scheduler::leases`] it still holds).
//! - One object version per scheduler; sharing chunks across objects (same ChunkId) and
//!   single-flight across clients are the agent's job.
//! - Work per input is O(known peers / 64 + chunks) plus, per request started,
//!   O(chunks × known peers / 64) (each chunk's holder bitmap ANDed with the ready
//!   set, not a chunk × peer scan) and a look at the ready holders of the chunk
//!   picked, plus O(chunks) for the timers; fine for objects of thousands of chunks and swarms of
//!   thousands of peers, not tuned for millions. Feed a tracker reply's hints with one
//!   [`Scheduler::handle_peers`], not one [`Scheduler::handle_peer`] each: one re-plan,
//!   not one per hint.
//!
//! # Call order
//!
//! ```text
//! let mut s = Scheduler::new(now, layout, SchedConfig::default())?;
//! s.handle_local(now, i)            // for each chunk already on disk
//! s.handle_chunk_ids(now, ids)      // whenever the tracker tells us ids
//! s.handle_peers(now, hints)        // a reply's hints: (peer, proximity, have) each
//! s.handle_peer(now, peer, proximity, have) / handle_have / handle_peer_gone
//! s.handle_leases(now, indices)     // tracker grants
//! s.handle_leased_elsewhere(now, i) // tracker: wanted chunks leased to others
//! loop {
//!     while let Some(a) = s.poll_action() { perform it }   // after every handle_*
//!     wait for a result, a tracker message, or s.poll_timeout()
//!     s.handle_result(now, req, outcome) / s.handle_timeout(now) / …
//!     if s.is_complete() { break }
//! }
//! ```
//!
//! Every `handle_*` call that takes `now` re-plans at once, so actions are ready right
//! after it. `now` should not go backwards; if it does, elapsed times count as zero.

mod config;
mod pass;
mod peers;
#[cfg(test)]
mod proptests;
#[cfg(test)]
mod sim;
#[cfg(test)]
mod tests;
mod types;

use std::collections::{BTreeMap, VecDeque};
use std::time::Instant;

use crate::id::ChunkId;
use crate::manifest::Layout;
use crate::peer::{PeerId, Proximity};

pub use config::SchedConfig;
pub use peers::PeerStatus;
use peers::Peers;
use types::PeerTrouble;
pub use types::{Action, OriginReason, Outcome, Progress, RequestId, SchedError};

/// The download plan of one object version; see the [module docs](self).
#[derive(Debug)]
pub struct Scheduler {
    cfg: SchedConfig,
    layout: Layout,
    chunks: Vec<Chunk>,
    peers: Peers,
    reqs: BTreeMap<RequestId, Request>,
    next_req: u64,
    actions: VecDeque<Action>,
    tracker_lost: bool,
    last_lease_ask: Option<Instant>,
    /// When to ask for leases again, if there is something to ask for.
    next_lease_ask: Option<Instant>,
    /// A leased chunk was stored since the last ask: the next ask need not wait.
    lease_freed: bool,
    /// Leases given up during this call, flushed as one action.
    released: Vec<usize>,
    /// Chunks with at least one request in flight.
    busy_chunks: usize,
    origin_inflight: usize,
    progress: Progress,
    scratch: pass::Scratch,
}

/// Per-chunk state.
#[derive(Debug, Clone, Default)]
struct Chunk {
    id: Option<ChunkId>,
    done: bool,
    /// Requests in flight for this chunk (at most `max_copies`).
    reqs: Vec<RequestId>,
    /// The tracker leased this chunk to us.
    leased: bool,
    /// May go to the origin without a lease.
    fallback: bool,
    /// Since when the chunk has had neither a usable holder nor a lease.
    sourceless_since: Option<Instant>,
    /// Do not ask for a lease on this chunk before then.
    no_ask_until: Option<Instant>,
    /// Consecutive failed origin attempts.
    origin_failures: u32,
    /// No origin attempt before then.
    origin_retry_at: Option<Instant>,
    /// What last went wrong with a peer request for this chunk: the reason of a
    /// fallback origin fetch ([`OriginReason`]).
    peer_trouble: Option<PeerTrouble>,
}

/// One request in flight.
#[derive(Debug, Clone)]
struct Request {
    index: usize,
    source: Source,
    started: Instant,
    /// Past this a peer request is slow (None: never, or already marked).
    slow_at: Option<Instant>,
    slow: bool,
    /// Past this the request is cancelled and counted as failed (None: never).
    give_up_at: Option<Instant>,
    /// The peer's setback counter when the request was sent (0 for the origin).
    epoch: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Source {
    Peer(usize),
    Origin(OriginReason),
}

impl Scheduler {
    /// A plan for `layout` with nothing known yet. The fallback clock of every chunk
    /// starts at `now`, so even with no further input the chunks go to the origin after
    /// `origin_fallback_after` (a lease request goes out at once).
    pub fn new(now: Instant, layout: Layout, cfg: SchedConfig) -> Result<Self, SchedError> {
        let layout = Layout::new(layout.size, layout.chunk_size)?;
        let n = layout.chunk_count();
        let chunk = Chunk {
            sourceless_since: Some(now),
            ..Chunk::default()
        };
        let cfg = cfg.normalized();
        let mut s = Self {
            peers: Peers::new(n, cfg.salt, cfg.peer_inflight),
            cfg,
            layout,
            chunks: vec![chunk; n],
            reqs: BTreeMap::new(),
            next_req: 0,
            actions: VecDeque::new(),
            tracker_lost: false,
            last_lease_ask: None,
            next_lease_ask: None,
            lease_freed: false,
            released: Vec::new(),
            busy_chunks: 0,
            origin_inflight: 0,
            progress: Progress {
                chunks: n,
                ..Progress::default()
            },
            scratch: pass::Scratch::default(),
        };
        s.pass(now);
        Ok(s)
    }

    /// Records chunk ids from the tracker. Out-of-range and conflicting entries are
    /// skipped (the first id of a chunk is kept); the rest apply, and the first problem
    /// is returned.
    pub fn handle_chunk_ids(
        &mut self,
        now: Instant,
        ids: impl IntoIterator<Item = (usize, ChunkId)>,
    ) -> Result<(), SchedError> {
        let mut first_err = None;
        for (index, id) in ids {
            let err = match self.chunks.get_mut(index) {
                None => Some(self.out_of_range(index)),
                Some(c) => match c.id {
                    None => {
                        c.id = Some(id);
                        None
                    }
                    Some(known) if known != id => Some(SchedError::IdConflict {
                        index,
                        known,
                        new: id,
                    }),
                    Some(_) => None,
                },
            };
            first_err = first_err.or(err);
        }
        self.pass(now);
        first_err.map_or(Ok(()), Err)
    }

    /// A peer and its complete holdings (replacing what was known). A new peer starts
    /// active; a gone peer comes back; a banned or dropped one stays out and the call is
    /// ignored. Out-of-range indices are skipped and the first is returned as an error.
    pub fn handle_peer(
        &mut self,
        now: Instant,
        peer: PeerId,
        proximity: Proximity,
        have: impl IntoIterator<Item = usize>,
    ) -> Result<(), SchedError> {
        let res = self.update_peer(peer, proximity, have);
        self.pass(now);
        res
    }

    /// Several peers at once (the hints of one tracker reply), each as by
    /// [`Scheduler::handle_peer`], then one re-plan: requests are planned knowing all of
    /// them (one call per peer would send the first requests to whichever peer came
    /// first), and the re-plan is paid once, not once per peer. The first problem is
    /// returned; the rest still apply.
    pub fn handle_peers<H: IntoIterator<Item = usize>>(
        &mut self,
        now: Instant,
        peers: impl IntoIterator<Item = (PeerId, Proximity, H)>,
    ) -> Result<(), SchedError> {
        let mut res = Ok(());
        for (peer, proximity, have) in peers {
            let r = self.update_peer(peer, proximity, have);
            res = res.and(r);
        }
        self.pass(now);
        res
    }

    /// More chunks held by a known peer (an incremental announce).
    pub fn handle_have(
        &mut self,
        now: Instant,
        peer: &PeerId,
        have: impl IntoIterator<Item = usize>,
    ) -> Result<(), SchedError> {
        let slot = self
            .peers
            .slot(peer)
            .ok_or_else(|| SchedError::UnknownPeer(peer.clone()))?;
        let res = self.add_have(slot, have);
        self.pass(now);
        res
    }

    /// The peer is unreachable (connection lost, left the swarm). Its requests are
    /// cancelled and their chunks rescheduled; it is not held against the peer.
    pub fn handle_peer_gone(&mut self, now: Instant, peer: &PeerId) -> Result<(), SchedError> {
        let slot = self
            .peers
            .slot(peer)
            .ok_or_else(|| SchedError::UnknownPeer(peer.clone()))?;
        if self.peers.get(slot).map(|p| p.status) == Some(PeerStatus::Active) {
            self.retire_peer(slot, PeerStatus::Gone);
        }
        self.pass(now);
        Ok(())
    }

    /// The tracker leased these chunks to us: fetch them from the origin unless a peer
    /// has them. Leases on stored chunks are ignored (the agent's announce fulfils them).
    pub fn handle_leases(
        &mut self,
        now: Instant,
        indices: impl IntoIterator<Item = usize>,
    ) -> Result<(), SchedError> {
        let res = self.each_index(indices, |c| {
            if !c.done {
                c.leased = true;
                c.origin_failures = 0;
            }
        });
        self.pass(now);
        res
    }

    /// The swarm made progress for this object (the tracker named new chunk ids or
    /// granted leases): every chunk still waiting for a source restarts its fallback
    /// clock. Leases come in rounds (the tracker caps them per agent), so on a large
    /// object most chunks wait far longer than `origin_fallback_after` although nothing
    /// is wrong; only a swarm that stops making progress should send everyone to the
    /// origin.
    pub fn handle_progress(&mut self, now: Instant) {
        for c in self.chunks.iter_mut().filter(|c| !c.done && !c.fallback) {
            if c.sourceless_since.is_some() {
                c.sourceless_since = Some(now);
            }
        }
        self.pass(now);
    }

    /// The tracker says another agent holds the lease on these chunks: restart their
    /// fallback clock, and leave them out of lease requests for half of
    /// `origin_fallback_after`. The next request that lists them gets this answer again
    /// while the other agent still holds the lease, so with a live tracker such chunks
    /// never fall back (the tracker expires stale leases); if the tracker stops
    /// answering, they fall back to the origin like any other.
    pub fn handle_leased_elsewhere(
        &mut self,
        now: Instant,
        indices: impl IntoIterator<Item = usize>,
    ) -> Result<(), SchedError> {
        let wait = pass::later(now, self.cfg.origin_fallback_after / 2);
        let res = self.each_index(indices, |c| {
            if !c.done && !c.leased {
                c.no_ask_until = wait;
                if !c.fallback {
                    c.sourceless_since = Some(now);
                }
            }
        });
        self.pass(now);
        res
    }

    /// Chunk `index` is stored (already on disk, or fetched for another client).
    /// Requests for it are cancelled. Idempotent.
    pub fn handle_local(&mut self, now: Instant, index: usize) -> Result<(), SchedError> {
        match self.chunks.get(index) {
            None => Err(self.out_of_range(index)),
            Some(c) if c.done => Ok(()),
            Some(_) => {
                self.complete(index, pass::Via::Local);
                self.pass(now);
                Ok(())
            }
        }
    }

    /// The result of request `req`. Unknown ids (cancelled, answered, never issued) are
    /// ignored with [`SchedError::UnknownRequest`].
    pub fn handle_result(
        &mut self,
        now: Instant,
        req: RequestId,
        outcome: Outcome,
    ) -> Result<(), SchedError> {
        let r = self.finish(req).ok_or(SchedError::UnknownRequest(req))?;
        match r.source {
            Source::Peer(slot) => self.peer_outcome(now, r.index, slot, r.epoch, outcome),
            Source::Origin(_) => self.origin_outcome(now, r.index, outcome),
        }
        self.pass(now);
        Ok(())
    }

    /// The tracker cannot be reached: every chunk not yet stored may now go to the
    /// origin (peers still serve what they are known to hold). No lease requests are
    /// made until [`Scheduler::handle_tracker_back`].
    pub fn handle_tracker_lost(&mut self, now: Instant) {
        self.tracker_lost = true;
        for c in self.chunks.iter_mut().filter(|c| !c.done) {
            c.fallback = true;
        }
        self.pass(now);
    }

    /// The tracker answers again. Chunks not in flight go back to waiting for holders or
    /// leases (their fallback clocks restart at `now`).
    pub fn handle_tracker_back(&mut self, now: Instant) {
        if !self.tracker_lost {
            return;
        }
        self.tracker_lost = false;
        self.last_lease_ask = None;
        for c in self
            .chunks
            .iter_mut()
            .filter(|c| !c.done && c.reqs.is_empty())
        {
            c.fallback = false;
            c.sourceless_since = None;
        }
        self.pass(now);
    }

    /// Acts on timers due at `now`: slow and given-up requests, back-offs ending,
    /// fallbacks, lease re-asks. Harmless to call early or often.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.pass(now);
    }

    /// The next thing to do, oldest first.
    pub fn poll_action(&mut self) -> Option<Action> {
        self.actions.pop_front()
    }

    /// When [`Scheduler::handle_timeout`] should next be called; `None` when no timer is
    /// armed (then only an input changes anything). Always later than the `now` of the
    /// last call.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let reqs = self.reqs.values().flat_map(|r| {
            let slow = if r.slow { None } else { r.slow_at };
            [slow, r.give_up_at]
        });
        let peers = [self.peers.next_backoff_end()];
        let fb = self.cfg.origin_fallback_after;
        let chunks = self.chunks.iter().filter(|c| !c.done).flat_map(|c| {
            let fallback = match (c.fallback, c.sourceless_since) {
                (false, Some(t)) => pass::later(t, fb),
                _ => None,
            };
            [fallback, c.no_ask_until, c.origin_retry_at]
        });
        reqs.chain(peers)
            .chain(chunks)
            .chain([self.next_lease_ask])
            .flatten()
            .min()
    }

    /// Whether every chunk is stored.
    pub fn is_complete(&self) -> bool {
        self.progress.done == self.chunks.len()
    }

    /// Whether chunk `index` is stored (false out of range).
    pub fn done(&self, index: usize) -> bool {
        self.chunks.get(index).is_some_and(|c| c.done)
    }

    /// Counters so far.
    pub fn progress(&self) -> Progress {
        Progress {
            in_flight: self.reqs.len(),
            origin_in_flight: self.origin_inflight,
            ..self.progress
        }
    }

    /// Chunks leased to us and not yet stored: release them if the download is dropped.
    pub fn leases(&self) -> Vec<usize> {
        self.chunks
            .iter()
            .enumerate()
            .filter(|(_, c)| c.leased && !c.done)
            .map(|(i, _)| i)
            .collect()
    }

    /// Where `peer` stands with this download (None if never seen).
    pub fn peer_status(&self, peer: &PeerId) -> Option<PeerStatus> {
        let slot = self.peers.slot(peer)?;
        self.peers.get(slot).map(|p| p.status)
    }

    /// The object's chunk geometry.
    pub fn layout(&self) -> Layout {
        self.layout
    }

    /// The configuration in use (after raising zeros to their minimums).
    pub fn config(&self) -> &SchedConfig {
        &self.cfg
    }

    fn out_of_range(&self, index: usize) -> SchedError {
        SchedError::IndexOutOfRange {
            index,
            chunks: self.chunks.len(),
        }
    }

    /// [`Scheduler::handle_peer`] without the re-plan.
    fn update_peer(
        &mut self,
        peer: PeerId,
        proximity: Proximity,
        have: impl IntoIterator<Item = usize>,
    ) -> Result<(), SchedError> {
        let slot = self
            .peers
            .upsert(peer, proximity, self.cfg.peer_window_start);
        let Some(p) = self.peers.get_mut(slot) else {
            return Ok(());
        };
        if !matches!(p.status, PeerStatus::Active | PeerStatus::Gone) {
            return Ok(());
        }
        if p.status == PeerStatus::Gone {
            p.window = self.cfg.peer_window_start;
        }
        p.proximity = proximity;
        p.status = PeerStatus::Active;
        self.peers.clear(slot);
        self.add_have(slot, have)
    }

    fn add_have(
        &mut self,
        slot: usize,
        have: impl IntoIterator<Item = usize>,
    ) -> Result<(), SchedError> {
        let mut first_bad = None;
        for index in have {
            if !self.peers.add(slot, index) && first_bad.is_none() {
                first_bad = Some(index);
            }
        }
        first_bad.map_or(Ok(()), |i| Err(self.out_of_range(i)))
    }

    fn each_index(
        &mut self,
        indices: impl IntoIterator<Item = usize>,
        mut f: impl FnMut(&mut Chunk),
    ) -> Result<(), SchedError> {
        let mut first_bad = None;
        for index in indices {
            match self.chunks.get_mut(index) {
                Some(c) => f(c),
                None => first_bad = first_bad.or(Some(index)),
            }
        }
        first_bad.map_or(Ok(()), |i| Err(self.out_of_range(i)))
    }
}
