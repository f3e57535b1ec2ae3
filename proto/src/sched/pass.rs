//! The planning step run after every input: timers, then new requests, duplicates and
//! lease requests; and the bookkeeping of requests starting and ending.

use std::time::{Duration, Instant};

use super::{
    Action, Chunk, OriginReason, Outcome, PeerStatus, PeerTrouble, Request, RequestId, SchedConfig,
    Scheduler, Source, peers,
};

/// `t + d`, or `None` ("never") if that is not representable.
pub(super) fn later(t: Instant, d: Duration) -> Option<Instant> {
    t.checked_add(d)
}

/// Buffers the planning step reuses, so that a pass allocates nothing once warm.
#[derive(Debug, Default)]
pub(super) struct Scratch {
    /// Slots of the peers that may take a request now (tests only: they check the
    /// ready set against a scan of every peer).
    #[cfg(test)]
    avail: Vec<usize>,
    /// Union of their holdings (within `want`), one bit per chunk.
    held: Vec<u64>,
    /// The chunks the current step could start, one bit per chunk.
    want: Vec<u64>,
}

/// Sets `out` to one bit per chunk of `chunks`, set where `f` holds.
fn bitmap_into<'a>(
    chunks: impl Iterator<Item = (usize, &'a Chunk)>,
    n: usize,
    out: &mut Vec<u64>,
    mut f: impl FnMut(usize, &Chunk) -> bool,
) {
    out.clear();
    out.resize(n.div_ceil(64), 0);
    for (i, c) in chunks {
        if f(i, c)
            && let Some(w) = out.get_mut(i / 64)
        {
            *w |= 1 << (i % 64);
        }
    }
}

/// Whether bit `i` is set in the bitmap `words`.
fn bit(words: &[u64], i: usize) -> bool {
    words.get(i / 64).is_some_and(|w| w & (1 << (i % 64)) != 0)
}

/// Where a stored chunk came from, for the counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Via {
    Local,
    Peer,
    Origin,
}

impl Chunk {
    /// A peer could serve it: the id is known and some live peer holds it.
    fn peer_source(&self, holders: u32) -> bool {
        self.id.is_some() && holders > 0
    }
}

impl Scheduler {
    pub(super) fn pass(&mut self, now: Instant) {
        self.sweep(now);
        self.start_origin(now);
        self.start_peers(now);
        self.start_duplicates(now);
        self.ask_leases(now);
        if !self.released.is_empty() {
            let indices = std::mem::take(&mut self.released);
            self.actions.push_back(Action::ReleaseLeases { indices });
        }
        // `poll_timeout` reads the back-off index.
        self.peers.settle();
    }

    /// Acts on every timer due at `now`, leaving only timers later than `now` armed.
    fn sweep(&mut self, now: Instant) {
        let mut give_up = Vec::new();
        for (&id, r) in &mut self.reqs {
            if r.give_up_at.is_some_and(|t| t <= now) {
                give_up.push(id);
            } else if r.slow_at.is_some_and(|t| t <= now) {
                r.slow = true;
                r.slow_at = None;
            }
        }
        for id in give_up {
            if let Some(r) = self.cancel(id) {
                match r.source {
                    Source::Peer(slot) => {
                        self.peer_outcome(now, r.index, slot, r.epoch, Outcome::Failed);
                        if let Some(c) = self.chunks.get_mut(r.index) {
                            c.peer_trouble = Some(PeerTrouble::TimedOut);
                        }
                    }
                    Source::Origin(_) => self.origin_outcome(now, r.index, Outcome::Failed),
                }
            }
        }
        self.peers.end_backoffs(now);
        let fallback_after = self.cfg.origin_fallback_after;
        for (i, c) in self.chunks.iter_mut().enumerate() {
            if c.done {
                continue;
            }
            if c.no_ask_until.is_some_and(|t| t <= now) {
                c.no_ask_until = None;
            }
            if c.origin_retry_at.is_some_and(|t| t <= now) {
                c.origin_retry_at = None;
            }
            if c.leased || c.peer_source(self.peers.holders(i)) {
                c.sourceless_since = None;
            } else {
                let since = *c.sourceless_since.get_or_insert(now);
                if now.saturating_duration_since(since) >= fallback_after {
                    c.fallback = true;
                }
            }
        }
    }

    fn full(&self) -> bool {
        self.reqs.len() >= self.cfg.max_inflight
    }

    /// No room for another peer request: [`Self::full`], or a leased chunk is being
    /// fetched from the origin and `peer_inflight_while_leased` peer requests are
    /// already out (the origin fetch shares our downlink with them).
    fn peers_full(&self) -> bool {
        self.full()
            || (self.reqs.len().saturating_sub(self.origin_inflight)
                >= self.cfg.peer_inflight_while_leased
                && self
                    .reqs
                    .values()
                    .any(|r| r.source == Source::Origin(OriginReason::Lease)))
    }

    /// Origin requests for leased and fallen-back chunks that no peer can serve.
    fn start_origin(&mut self, now: Instant) {
        while self.origin_inflight < self.cfg.origin_inflight && !self.full() {
            let pick = self
                .chunks
                .iter()
                .enumerate()
                .filter(|(i, c)| {
                    !c.done
                        && c.reqs.is_empty()
                        && c.origin_retry_at.is_none()
                        && (c.leased || c.fallback)
                        && !c.peer_source(self.peers.holders(*i))
                })
                .min_by_key(|(i, c)| (!c.leased, *i))
                .map(|(i, c)| (i, self.origin_reason(c)));
            let Some((index, reason)) = pick else { break };
            self.start(now, index, Source::Origin(reason));
        }
    }

    /// Why chunk `c`, picked for the origin, goes there: its lease, else the
    /// tracker's loss, else what last went wrong with its peer requests.
    fn origin_reason(&self, c: &Chunk) -> OriginReason {
        if c.leased {
            return OriginReason::Lease;
        }
        if self.tracker_lost {
            return OriginReason::TrackerLost;
        }
        match c.peer_trouble {
            None => OriginReason::NoPeer,
            Some(PeerTrouble::Failed) => OriginReason::PeerFailed,
            Some(PeerTrouble::TimedOut) => OriginReason::PeerTimeout,
            Some(PeerTrouble::Corrupt) => OriginReason::PeerCorrupt,
        }
    }

    /// First requests for chunks that peers can serve: rarest, then lowest.
    ///
    /// Per request started: for every startable chunk, an AND of its holder bitmap
    /// with the ready set (O(chunks × known peers / 64), never a walk over peers), then
    /// one look at every chunk and at the ready holders of the one picked.
    fn start_peers(&mut self, now: Instant) {
        #[cfg(test)]
        let mut avail = std::mem::take(&mut self.scratch.avail);
        let mut held = std::mem::take(&mut self.scratch.held);
        let mut want = std::mem::take(&mut self.scratch.want);
        while !self.peers_full() {
            #[cfg(test)]
            {
                self.available_into(&mut avail);
                self.check_available(now, &avail);
            }
            if !self.peers.any_ready() {
                break;
            }
            let n = self.chunks.len();
            bitmap_into(self.chunks.iter().enumerate(), n, &mut want, |_, c| {
                !c.done && c.reqs.is_empty() && c.id.is_some()
            });
            self.peers.ready_holders_into(&want, &mut held);
            let pick = self
                .chunks
                .iter()
                .enumerate()
                .filter(|(i, c)| !c.done && c.reqs.is_empty() && c.id.is_some() && bit(&held, *i))
                .min_by_key(|(i, _)| (self.peers.holders(*i), *i))
                .map(|(i, _)| i);
            #[cfg(test)]
            assert_eq!(pick, self.first_pick_by_scan(&avail), "bitmap pick differs");
            let Some(index) = pick else { break };
            let Some(slot) = self.best_peer(index) else {
                break;
            };
            self.start(now, index, Source::Peer(slot));
        }
        #[cfg(test)]
        {
            self.scratch.avail = avail;
        }
        self.scratch.held = held;
        self.scratch.want = want;
    }

    /// [`Self::start_peers`]'s pick the slow way (every chunk against every available
    /// peer), as it was computed before the bitmap: the tests check both agree.
    #[cfg(test)]
    fn first_pick_by_scan(&self, avail: &[usize]) -> Option<usize> {
        self.chunks
            .iter()
            .enumerate()
            .filter(|(i, c)| {
                !c.done
                    && c.reqs.is_empty()
                    && c.id.is_some()
                    && avail.iter().any(|&s| self.peers.holds(s, *i))
            })
            .min_by_key(|(i, _)| (self.peers.holders(*i), *i))
            .map(|(i, _)| i)
    }

    /// Whether chunk `c` may get another request now, holders aside: in flight, below
    /// `max_copies`, and in the endgame or with a slow request.
    fn may_duplicate(&self, c: &Chunk, endgame: bool) -> bool {
        !c.done
            && !c.reqs.is_empty()
            && c.reqs.len() < self.cfg.max_copies
            && c.id.is_some()
            && (endgame
                || c.reqs
                    .iter()
                    .any(|r| self.reqs.get(r).is_some_and(|r| r.slow)))
    }

    /// Extra requests for chunks already in flight: in the endgame (every remaining chunk
    /// is in flight), or when one of the chunk's requests is slow.
    fn start_duplicates(&mut self, now: Instant) {
        let remaining = self.chunks.len() - self.progress.done;
        let endgame = remaining > 0 && self.busy_chunks == remaining;
        #[cfg(test)]
        let mut avail = std::mem::take(&mut self.scratch.avail);
        let mut held = std::mem::take(&mut self.scratch.held);
        let mut want = std::mem::take(&mut self.scratch.want);
        while !self.peers_full()
            && self.reqs.len().saturating_sub(self.busy_chunks) < self.cfg.max_duplicates
            // Most passes have nothing to duplicate: then no peer is looked at.
            && self.chunks.iter().any(|c| self.may_duplicate(c, endgame))
        {
            #[cfg(test)]
            {
                self.available_into(&mut avail);
                self.check_available(now, &avail);
            }
            if !self.peers.any_ready() {
                break;
            }
            // A chunk no available peer holds needs no look for a holder not yet asked.
            let n = self.chunks.len();
            bitmap_into(self.chunks.iter().enumerate(), n, &mut want, |_, c| {
                self.may_duplicate(c, endgame)
            });
            self.peers.ready_holders_into(&want, &mut held);
            let pick = self
                .chunks
                .iter()
                .enumerate()
                .filter(|(i, c)| {
                    self.may_duplicate(c, endgame) && bit(&held, *i) && self.best_peer(*i).is_some()
                })
                .min_by_key(|(i, c)| {
                    let oldest = c
                        .reqs
                        .iter()
                        .filter_map(|r| self.reqs.get(r))
                        .map(|r| r.started)
                        .min();
                    (oldest, *i)
                })
                .map(|(i, _)| i);
            let Some(index) = pick else { break };
            let Some(slot) = self.best_peer(index) else {
                break;
            };
            self.start(now, index, Source::Peer(slot));
        }
        #[cfg(test)]
        {
            self.scratch.avail = avail;
        }
        self.scratch.held = held;
        self.scratch.want = want;
    }

    /// Emits `WantLeases` when chunks nobody can serve wait for a source, at most once
    /// per `lease_ask_interval` (or at once after a leased chunk is stored, so that a
    /// lone agent keeps its origin requests busy), and arms the timer for the next ask.
    fn ask_leases(&mut self, now: Instant) {
        self.next_lease_ask = None;
        if self.tracker_lost {
            return;
        }
        let open = self.chunks.iter().filter(|c| c.leased && !c.done).count();
        let max = self.cfg.origin_inflight.saturating_sub(open);
        if max == 0 {
            return;
        }
        let askable = |(i, c): &(usize, &Chunk)| {
            !c.done
                && c.reqs.is_empty()
                && !c.leased
                && !c.fallback
                && c.no_ask_until.is_none()
                && !c.peer_source(self.peers.holders(*i))
        };
        if !self.chunks.iter().enumerate().any(|e| askable(&e)) {
            return;
        }
        let due = self.lease_freed
            || self
                .last_lease_ask
                .is_none_or(|t| now.saturating_duration_since(t) >= self.cfg.lease_ask_interval);
        if due {
            let indices = self
                .chunks
                .iter()
                .enumerate()
                .filter(askable)
                .map(|(i, _)| i)
                .take(self.cfg.lease_ask_max)
                .collect();
            self.actions.push_back(Action::WantLeases { indices, max });
            self.last_lease_ask = Some(now);
            self.lease_freed = false;
        }
        self.next_lease_ask = self
            .last_lease_ask
            .and_then(|t| later(t, self.cfg.lease_ask_interval));
    }

    /// Sets `out` to the slots of peers that may take a request now (after
    /// [`Self::sweep`]: no back-off due is left), in slot order, from the ready set.
    #[cfg(test)]
    fn available_into(&mut self, out: &mut Vec<usize>) {
        self.peers.ready_into(out);
    }

    /// The ready set against the scan of every peer it replaced.
    #[cfg(test)]
    fn check_available(&self, now: Instant, avail: &[usize]) {
        let scan: Vec<usize> = self
            .peers
            .iter()
            .filter(|(_, p)| p.available(now, self.cfg.peer_inflight))
            .map(|(s, _)| s)
            .collect();
        assert_eq!(avail, scan, "ready set differs from the scan");
        let next = self.peers.iter().filter_map(|(_, p)| p.backoff_until).min();
        assert_eq!(
            self.peers.next_backoff_end(),
            next,
            "back-off index differs"
        );
    }

    /// Among the peers that may take a request now (the ready set, settled), the best
    /// holder of `index` not already asked for it.
    fn best_peer(&self, index: usize) -> Option<usize> {
        let chunk = self.chunks.get(index)?;
        let best = self
            .peers
            .ready_holders(index)
            .filter(|(s, _)| {
                !chunk.reqs.iter().any(|r| {
                    self.reqs
                        .get(r)
                        .is_some_and(|r| r.source == Source::Peer(*s))
                })
            })
            .min_by_key(|(s, p)| (p.proximity, p.inflight, p.failures, p.tiebreak, *s))
            .map(|(s, _)| s);
        #[cfg(test)]
        assert_eq!(best, self.best_peer_by_scan(index), "holder pick differs");
        best
    }

    /// [`Self::best_peer`] the slow way (every peer), as it was computed before the
    /// per-chunk holder bitmaps: the tests check both agree.
    #[cfg(test)]
    fn best_peer_by_scan(&self, index: usize) -> Option<usize> {
        let chunk = self.chunks.get(index)?;
        self.peers
            .iter()
            .filter(|(s, p)| {
                p.ready(self.cfg.peer_inflight)
                    && self.peers.holds(*s, index)
                    && !chunk.reqs.iter().any(|r| {
                        self.reqs
                            .get(r)
                            .is_some_and(|r| r.source == Source::Peer(*s))
                    })
            })
            .min_by_key(|(s, p)| (p.proximity, p.inflight, p.failures, p.tiebreak, *s))
            .map(|(s, _)| s)
    }

    /// Issues a request for `index` from `source`.
    fn start(&mut self, now: Instant, index: usize, source: Source) {
        let Some(chunk) = self.chunks.get_mut(index) else {
            return;
        };
        let req = RequestId(self.next_req);
        self.next_req = self.next_req.wrapping_add(1);
        if chunk.reqs.is_empty() {
            self.busy_chunks += 1;
        }
        chunk.reqs.push(req);
        let mut epoch = 0;
        let (slow_at, give_up_at, action) = match source {
            Source::Peer(slot) => {
                let (Some(p), Some(id)) = (self.peers.get_mut(slot), chunk.id) else {
                    // Callers only pick active holders of chunks with a known id.
                    chunk.reqs.pop();
                    if chunk.reqs.is_empty() {
                        self.busy_chunks -= 1;
                    }
                    return;
                };
                p.inflight += 1;
                epoch = p.epoch;
                let slow = self.cfg.slow_after(self.layout.chunk_len(index));
                let give_up = slow.saturating_mul(self.cfg.give_up_after);
                let action = Action::FetchPeer {
                    req,
                    index,
                    id,
                    peer: p.id.clone(),
                };
                (later(now, slow), later(now, give_up), action)
            }
            Source::Origin(reason) => {
                self.origin_inflight += 1;
                let action = Action::FetchOrigin { req, index, reason };
                (None, later(now, self.cfg.origin_timeout), action)
            }
        };
        self.reqs.insert(
            req,
            Request {
                index,
                source,
                started: now,
                slow_at,
                slow: false,
                give_up_at,
                epoch,
            },
        );
        self.actions.push_back(action);
    }

    /// Forgets request `req`, releasing its slots. `None` if it is not in flight.
    pub(super) fn finish(&mut self, req: RequestId) -> Option<Request> {
        let r = self.reqs.remove(&req)?;
        if let Some(c) = self.chunks.get_mut(r.index) {
            c.reqs.retain(|&x| x != req);
            if c.reqs.is_empty() {
                self.busy_chunks = self.busy_chunks.saturating_sub(1);
            }
        }
        match r.source {
            Source::Peer(slot) => {
                if let Some(p) = self.peers.get_mut(slot) {
                    p.inflight = p.inflight.saturating_sub(1);
                }
            }
            Source::Origin(_) => self.origin_inflight = self.origin_inflight.saturating_sub(1),
        }
        Some(r)
    }

    /// Finishes `req` and tells the agent to abandon it.
    fn cancel(&mut self, req: RequestId) -> Option<Request> {
        let r = self.finish(req)?;
        self.actions.push_back(Action::Cancel { req });
        Some(r)
    }

    /// Marks `index` stored, cancelling its other requests.
    pub(super) fn complete(&mut self, index: usize, via: Via) {
        let Some(c) = self.chunks.get_mut(index) else {
            return;
        };
        if c.done {
            return;
        }
        c.done = true;
        // A fulfilled lease frees room for another: ask at once (see `ask_leases`).
        self.lease_freed |= c.leased;
        c.leased = false;
        c.fallback = false;
        c.sourceless_since = None;
        c.no_ask_until = None;
        c.origin_retry_at = None;
        for req in c.reqs.clone() {
            self.cancel(req);
        }
        self.progress.done += 1;
        self.progress.bytes_done += u64::from(self.layout.chunk_len(index));
        match via {
            Via::Local => self.progress.local += 1,
            Via::Peer => self.progress.from_peers += 1,
            Via::Origin => self.progress.from_origin += 1,
        }
    }

    /// Applies the outcome of a request to peer `slot` for chunk `index`, sent when the
    /// peer's setback counter was `epoch`. A `Busy` or failure of a request sent before
    /// the peer's latest setback adds nothing: requests in flight together fail together
    /// (one reset fails them all), and count once.
    pub(super) fn peer_outcome(
        &mut self,
        now: Instant,
        index: usize,
        slot: usize,
        epoch: u64,
        outcome: Outcome,
    ) {
        let trouble = match outcome {
            Outcome::Ok | Outcome::Busy => None,
            Outcome::NotFound | Outcome::Failed => Some(PeerTrouble::Failed),
            Outcome::Corrupt => Some(PeerTrouble::Corrupt),
        };
        if let Some(c) = self.chunks.get_mut(index).filter(|_| trouble.is_some()) {
            c.peer_trouble = trouble;
        }
        let backoff = match outcome {
            Outcome::Ok => {
                if let Some(p) = self.peers.get_mut(slot) {
                    p.failures = 0;
                    p.busy_streak = 0;
                    p.window = (p.window + 1).min(self.cfg.peer_inflight);
                }
                self.complete(index, Via::Peer);
                return;
            }
            Outcome::NotFound => {
                self.peers.remove(slot, index);
                return;
            }
            Outcome::Corrupt => {
                self.retire_peer(slot, PeerStatus::Banned);
                self.progress.banned += 1;
                return;
            }
            Outcome::Busy => {
                let Some(p) = self.peers.get_mut(slot).filter(|p| p.epoch == epoch) else {
                    return;
                };
                p.epoch = p.epoch.wrapping_add(1);
                p.busy_streak = p.busy_streak.saturating_add(1);
                p.window = (p.window / 2).max(1);
                // Agents told `Busy` at the same moment must not all come back at the
                // same moment: add 0–50 %, fixed per agent, peer and setback.
                let base = SchedConfig::backoff(self.cfg.busy_backoff, p.busy_streak);
                let k = (peers::mix(p.tiebreak, &p.epoch.to_le_bytes()) % 512) as u32;
                base.saturating_add((base / 1024).saturating_mul(k))
            }
            Outcome::Failed => {
                let Some(p) = self.peers.get_mut(slot).filter(|p| p.epoch == epoch) else {
                    return;
                };
                p.epoch = p.epoch.wrapping_add(1);
                p.failures = p.failures.saturating_add(1);
                p.window = 1;
                if p.failures >= self.cfg.max_failures && p.status == PeerStatus::Active {
                    self.retire_peer(slot, PeerStatus::Dropped);
                    self.progress.dropped += 1;
                    return;
                }
                SchedConfig::backoff(self.cfg.failure_backoff, p.failures)
            }
        };
        if let Some(p) = self.peers.get_mut(slot) {
            p.backoff_until = later(now, backoff);
        }
    }

    pub(super) fn origin_outcome(&mut self, now: Instant, index: usize, outcome: Outcome) {
        if outcome == Outcome::Ok {
            self.complete(index, Via::Origin);
            return;
        }
        let Some(c) = self.chunks.get_mut(index) else {
            return;
        };
        if c.done {
            return;
        }
        c.origin_failures = c.origin_failures.saturating_add(1);
        c.origin_retry_at = later(
            now,
            SchedConfig::backoff(self.cfg.failure_backoff, c.origin_failures),
        );
        if c.leased && c.origin_failures >= self.cfg.lease_attempts {
            c.leased = false;
            c.origin_failures = 0;
            c.no_ask_until = later(now, self.cfg.origin_fallback_after);
            if !c.fallback {
                c.sourceless_since = Some(now);
            }
            self.released.push(index);
        }
    }

    /// Takes `slot` out of the download (banned, dropped or gone) and cancels its
    /// requests; their chunks are rescheduled by the planning step.
    pub(super) fn retire_peer(&mut self, slot: usize, status: PeerStatus) {
        self.peers.set_status(slot, status);
        if let Some(p) = self.peers.get_mut(slot) {
            p.backoff_until = None;
        }
        let theirs: Vec<RequestId> = self
            .reqs
            .iter()
            .filter(|(_, r)| r.source == Source::Peer(slot))
            .map(|(&id, _)| id)
            .collect();
        for req in theirs {
            self.cancel(req);
        }
    }
}
