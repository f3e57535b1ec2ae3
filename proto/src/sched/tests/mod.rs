//! Deterministic scenarios with simulated time: the harness, and one file per theme.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod batch;
mod origin;
mod peers;

use std::time::{Duration, Instant};

use super::*;

pub(super) const CS: u32 = 16 * 1024;

pub(super) fn pid(s: &str) -> PeerId {
    s.parse().unwrap()
}

pub(super) fn cid(i: usize) -> ChunkId {
    ChunkId::of(&i.to_le_bytes())
}

pub(super) fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// A scheduler, its simulated clock, and helpers to read its actions.
pub(super) struct H {
    pub s: Scheduler,
    pub t0: Instant,
    pub now: Instant,
}

/// Test defaults: a fixed 2 s deadline (no per-byte part) for round numbers, and peers
/// trusted with their full window at once (the window has its own test).
pub(super) fn cfg() -> SchedConfig {
    SchedConfig {
        slow_rate: 0,
        peer_window_start: usize::MAX,
        ..SchedConfig::default()
    }
}

impl H {
    pub(super) fn new(n: usize, cfg: SchedConfig) -> Self {
        let t0 = Instant::now();
        let layout = Layout::new(n as u64 * u64::from(CS), CS).unwrap();
        Self {
            s: Scheduler::new(t0, layout, cfg).unwrap(),
            t0,
            now: t0,
        }
    }

    /// Tells the ids of all chunks.
    pub(super) fn ids(&mut self) {
        let n = self.s.layout().chunk_count();
        self.s
            .handle_chunk_ids(self.now, (0..n).map(|i| (i, cid(i))))
            .unwrap();
    }

    pub(super) fn peer(
        &mut self,
        name: &str,
        prox: Proximity,
        have: impl IntoIterator<Item = usize>,
    ) {
        self.s.handle_peer(self.now, pid(name), prox, have).unwrap();
    }

    /// Moves the clock to `t0 + at` and fires timers.
    pub(super) fn at(&mut self, at: Duration) {
        self.now = self.t0 + at;
        self.s.handle_timeout(self.now);
    }

    pub(super) fn result(&mut self, req: RequestId, o: Outcome) {
        self.s.handle_result(self.now, req, o).unwrap();
    }

    pub(super) fn drain(&mut self) -> Vec<Action> {
        std::iter::from_fn(|| self.s.poll_action()).collect()
    }

    /// Drains and keeps `(req, index, peer)` of peer fetches.
    pub(super) fn peer_fetches(&mut self) -> Vec<(RequestId, usize, String)> {
        self.drain()
            .into_iter()
            .filter_map(|a| match a {
                Action::FetchPeer {
                    req,
                    index,
                    peer,
                    id,
                    ..
                } => {
                    assert_eq!(id, cid(index), "fetch with the tracker's id");
                    Some((req, index, peer.to_string()))
                }
                _ => None,
            })
            .collect()
    }
}

pub(super) fn pairs(f: &[(RequestId, usize, String)]) -> Vec<(usize, &str)> {
    f.iter().map(|(_, i, p)| (*i, p.as_str())).collect()
}

pub(super) fn origin_fetches(actions: &[Action]) -> Vec<(RequestId, usize, OriginReason)> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::FetchOrigin { req, index, reason } => Some((*req, *index, *reason)),
            _ => None,
        })
        .collect()
}

pub(super) fn cancels(actions: &[Action]) -> Vec<RequestId> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Cancel { req } => Some(*req),
            _ => None,
        })
        .collect()
}
