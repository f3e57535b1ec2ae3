//! Upload admission: concurrent-request counters and the upload byte-rate bucket.
//!
//! Both are pure bookkeeping (the bucket takes `now` from the caller) so they can be
//! tested without a network or a clock.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

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

/// A token bucket in bytes that may go into debt: a sender reserves what it is about
/// to send and waits until the debt is paid off. Capacity (burst) is a quarter second
/// of rate, at least 64 KiB.
#[derive(Debug, Clone)]
pub(super) struct TokenBucket {
    /// Bytes per second, > 0.
    rate: f64,
    burst: f64,
    /// Tokens available; negative = debt.
    level: f64,
    last: Instant,
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

impl TokenBucket {
    /// A full bucket for `rate` bytes per second (> 0).
    pub(super) fn new(rate: u64, now: Instant) -> Self {
        let rate = rate.max(1) as f64;
        let burst = (rate / 4.0).max(64.0 * 1024.0);
        Self {
            rate,
            burst,
            level: burst,
            last: now,
        }
    }

    /// Reserves `n` bytes and returns how long the caller must wait before sending
    /// them (zero if the bucket covered them).
    pub(super) fn take(&mut self, n: u64, now: Instant) -> Duration {
        self.refill(now);
        self.level -= n as f64;
        self.debt()
    }

    /// How long until the bucket is out of debt, reserving nothing.
    pub(super) fn backlog(&mut self, now: Instant) -> Duration {
        self.refill(now);
        self.debt()
    }

    fn refill(&mut self, now: Instant) {
        let dt = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = self.last.max(now);
        self.level = (self.level + dt * self.rate).min(self.burst);
    }

    fn debt(&self) -> Duration {
        if self.level >= 0.0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64(-self.level / self.rate)
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
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

    /// Milliseconds, rounded (the bucket works in floating point).
    fn ms(d: Duration) -> u128 {
        (d.as_secs_f64() * 1000.0).round() as u128
    }

    #[test]
    fn bucket_paces_with_simulated_time() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(1_000_000, t0);
        // Burst: 250 kB free.
        assert_eq!(b.take(250_000, t0), Duration::ZERO);
        // The next 500 kB are owed: half a second.
        assert_eq!(ms(b.take(500_000, t0)), 500);
        assert_eq!(ms(b.backlog(t0 + Duration::from_millis(200))), 300);
        assert_eq!(ms(b.backlog(t0 + Duration::from_millis(500))), 0);
        // Refill is capped at the burst.
        let later = t0 + Duration::from_secs(100);
        assert_eq!(b.take(250_000, later), Duration::ZERO);
        assert!(b.take(1, later) > Duration::ZERO);
        // Time going backwards is ignored.
        assert!(b.backlog(t0) > Duration::ZERO);
    }
}
