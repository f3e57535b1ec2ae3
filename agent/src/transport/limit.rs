//! Upload admission: concurrent-request counters and the upload byte-rate bucket.
//!
//! Both are pure bookkeeping (the bucket takes `now` from the caller) so they can be
//! tested without a network or a clock.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use shoal_proto::TokenBucket;

use shoal_proto::PeerId;
use tokio::sync::Notify;

use super::UploadLimits;

/// Counts uploads in progress, globally and per peer id.
#[derive(Debug)]
pub(super) struct Gate {
    limits: UploadLimits,
    state: Mutex<GateState>,
    /// Woken whenever the count drops to zero.
    idle: Notify,
}

#[derive(Debug, Default)]
struct GateState {
    total: usize,
    per_peer: HashMap<PeerId, usize>,
}

/// One admitted upload; releases its slot when dropped.
#[derive(Debug)]
pub(super) struct Permit {
    gate: Arc<Gate>,
    peer: PeerId,
}

/// The upload byte-rate bucket: a [`shoal_proto::TokenBucket`] in bytes, which may go
/// into debt (a sender reserves what it is about to send and waits the debt off).
/// Capacity (burst) is a quarter second of rate, at least 64 KiB.
pub(super) fn upload_bucket(rate: u64, now: Instant) -> TokenBucket {
    let rate = rate.max(1) as f64;
    TokenBucket::new(rate, (rate / 4.0).max(64.0 * 1024.0), now)
}

impl Gate {
    pub(super) fn new(limits: UploadLimits) -> Self {
        Self {
            limits,
            state: Mutex::new(GateState::default()),
            idle: Notify::new(),
        }
    }

    /// Admits one upload for `peer` if neither the global nor the per-peer limit is
    /// reached.
    pub(super) fn try_enter(self: &Arc<Self>, peer: &PeerId) -> Option<Permit> {
        let mut s = self.lock();
        let mine = s.per_peer.get(peer).copied().unwrap_or(0);
        if s.total >= self.limits.max_uploads || mine >= self.limits.max_uploads_per_peer {
            return None;
        }
        s.total += 1;
        s.per_peer.insert(peer.clone(), mine + 1);
        Some(Permit {
            gate: self.clone(),
            peer: peer.clone(),
        })
    }

    pub(super) fn active(&self) -> usize {
        self.lock().total
    }

    /// Waits until no upload is in progress, or `deadline`.
    pub(super) async fn drained(&self, deadline: tokio::time::Instant) {
        loop {
            let notified = self.idle.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.active() == 0 {
                return;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return;
            }
        }
    }

    fn lock(&self) -> MutexGuard<'_, GateState> {
        // The state is two counters updated together; a panic cannot leave it torn.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        let mut s = self.gate.lock();
        s.total = s.total.saturating_sub(1);
        if let Some(n) = s.per_peer.get_mut(&self.peer) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                s.per_peer.remove(&self.peer);
            }
        }
        if s.total == 0 {
            self.gate.idle.notify_waiters();
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn limits(max: usize, per_peer: usize) -> UploadLimits {
        UploadLimits {
            max_uploads: max,
            max_uploads_per_peer: per_peer,
            upload_rate: 0,
        }
    }

    #[test]
    fn gate_counts_globally_and_per_peer() {
        let g = Arc::new(Gate::new(limits(3, 2)));
        let (a, b): (PeerId, PeerId) = ("a".parse().unwrap(), "b".parse().unwrap());
        let a1 = g.try_enter(&a).unwrap();
        let _a2 = g.try_enter(&a).unwrap();
        assert!(g.try_enter(&a).is_none(), "per-peer limit");
        let _b1 = g.try_enter(&b).unwrap();
        assert!(g.try_enter(&b).is_none(), "global limit");
        assert_eq!(g.active(), 3);
        drop(a1);
        assert!(g.try_enter(&b).is_some());
        let zero = Arc::new(Gate::new(limits(0, 8)));
        assert!(zero.try_enter(&a).is_none());
    }

    #[tokio::test]
    async fn drained_returns_when_idle() {
        let g = Arc::new(Gate::new(limits(8, 8)));
        let p = g.try_enter(&"a".parse().unwrap()).unwrap();
        let far = tokio::time::Instant::now() + Duration::from_secs(60);
        let g2 = g.clone();
        let waiter = tokio::spawn(async move { g2.drained(far).await });
        tokio::task::yield_now().await;
        drop(p);
        waiter.await.unwrap();
        assert_eq!(g.active(), 0);
    }

    #[test]
    fn upload_bucket_bursts_a_quarter_second() {
        let t0 = Instant::now();
        let mut b = upload_bucket(1_000_000, t0);
        assert_eq!(b.take(250_000.0, t0), Duration::ZERO);
        assert!(b.take(1.0, t0) > Duration::ZERO);
        let mut slow = upload_bucket(1000, t0);
        assert_eq!(slow.take(65_536.0, t0), Duration::ZERO, "at least 64 KiB");
    }
}
