//! The read buffer: chunk bytes that responses hold between reading them and the
//! client's socket taking them, bounded across all responses (`cache.read_buffer`).
//!
//! A response takes a [`Share`] before it reads a chunk (so a disk read does not
//! start without room), and the share travels inside the frame's bytes
//! ([`Share::charge`]): it is given back when hyper drops the frame, that is once
//! the bytes are in the socket. So slow clients, however many, hold at most the
//! budget in read-ahead.
//!
//! When the budget is spent, each response still has one share outside it, its
//! *floor*, so that clients which stop reading (until `proxy.send_timeout`
//! disconnects them) can take the read-ahead of others, never their progress. Only
//! the read at the response's send position (the *head*) may take the floor, and a
//! response has at most one floor share alive: shares its reads ahead hold never
//! stand in the head's way, so a response always moves. A floor is small: a chunk
//! read from disk under it is read, checked and sent one 64 KiB group at a time
//! (`store::Groups`), each group under the floor again once the one before it is
//! in the socket. Memory: at most `read_buffer + responses × 64 KiB`, plus chunks
//! the memory cache already holds (shared, not copied) or a fill holds.
//!
//! Not bounded here: bytes a fill holds for its readers are the fill's (`behind`),
//! and origin pass-through frames are small and not counted.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use bytes::Bytes;
use prometheus::{IntCounter, IntGauge};
use tokio::sync::{Notify, OwnedSemaphorePermit};

use super::behind::Budget;
use crate::metrics::Metrics;

/// What a floor share counts at first: one group (`shoal_proto::groups::GROUP_LEN`).
pub(crate) const FLOOR: usize = shoal_proto::groups::GROUP_LEN;

/// All responses' read-ahead budget. Cheap to clone.
#[derive(Debug, Clone)]
pub(crate) struct ReadBudget {
    budget: Budget,
    gauge: IntGauge,
    waits: IntCounter,
}

/// One response's floor: whether its floor share is taken, and a wake-up for its
/// reads when that share is given back or the send position moves.
#[derive(Debug, Default)]
pub(crate) struct Holder {
    floor_taken: AtomicBool,
    changed: Notify,
}

impl Holder {
    /// Wakes the response's waiting reads: the send position moved (another read
    /// may now be the head).
    pub(crate) fn advanced(&self) {
        self.changed.notify_waiters();
    }
}

/// The right to hold some chunk bytes until they reach the client.
#[derive(Debug)]
pub(crate) struct Share {
    _permit: Option<OwnedSemaphorePermit>,
    len: i64,
    gauge: IntGauge,
    /// The response whose floor this is, if it is one.
    floor: Option<Arc<Holder>>,
}

impl ReadBudget {
    /// A budget of `budget`, reported in `shoal_cache_read_buffer_*`.
    pub(crate) fn new(budget: Budget, metrics: &Metrics) -> Self {
        Self {
            budget,
            gauge: metrics.cache_read_buffer_bytes.clone(),
            waits: metrics.cache_read_buffer_waits.clone(),
        }
    }

    /// A share of `len` bytes for a read of the response `holder`: from the budget
    /// if it has room, else the response's floor if `head()` (the read is at the
    /// send position) and the floor is free, else waits for whichever comes first.
    /// A floor share counts at most one group ([`FLOOR`]) until its holder reads
    /// more under it ([`Share::hold`]): a read that goes on group by group holds no
    /// more while it opens the chunk.
    pub(crate) async fn take(
        &self,
        holder: &Arc<Holder>,
        len: usize,
        head: impl Fn() -> bool,
    ) -> Share {
        if let Some(p) = self.budget.try_take(len) {
            return self.share(Some(p), len, None);
        }
        let mut waited = false;
        loop {
            let changed = holder.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            if let Some(p) = self.budget.try_take(len) {
                return self.share(Some(p), len, None);
            }
            if head()
                && holder
                    .floor_taken
                    .compare_exchange(false, true, Ordering::AcqRel, Ordering::Acquire)
                    .is_ok()
            {
                return self.share(None, len.min(FLOOR), Some(holder.clone()));
            }
            if !waited {
                waited = true;
                self.waits.inc();
            }
            tokio::select! {
                p = self.budget.take(len) => return self.share(p, len, None),
                () = &mut changed => {}
            }
        }
    }

    fn share(
        &self,
        permit: Option<OwnedSemaphorePermit>,
        len: usize,
        floor: Option<Arc<Holder>>,
    ) -> Share {
        let len = i64::try_from(len).unwrap_or(i64::MAX);
        self.gauge.add(len);
        Share {
            _permit: permit,
            len,
            gauge: self.gauge.clone(),
            floor,
        }
    }
}

impl Share {
    /// Whether this is the response's floor (the budget had no room): a disk read
    /// under it goes one group at a time.
    pub(crate) fn is_floor(&self) -> bool {
        self.floor.is_some()
    }

    /// Counts `len` bytes for this share from now on: a floor share whose holder
    /// reads a whole chunk under it after all. A budget share already counts its
    /// length; it is left as it is.
    pub(crate) fn hold(&mut self, len: usize) {
        let len = i64::try_from(len).unwrap_or(i64::MAX);
        if self.floor.is_some() && len > self.len {
            self.gauge.add(len - self.len);
            self.len = len;
        }
    }

    /// `bytes`, holding this share until the last clone of them is dropped.
    pub(crate) fn charge(self, bytes: Bytes) -> Bytes {
        Bytes::from_owner(Charged {
            bytes,
            _share: self,
        })
    }
}

impl Drop for Share {
    fn drop(&mut self) {
        self.gauge.sub(self.len);
        if let Some(h) = &self.floor {
            h.floor_taken.store(false, Ordering::Release);
            h.changed.notify_waiters();
        }
    }
}

/// Bytes with the share they hold.
struct Charged {
    bytes: Bytes,
    _share: Share,
}

impl AsRef<[u8]> for Charged {
    fn as_ref(&self) -> &[u8] {
        &self.bytes
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::time::Duration;

    use super::*;

    const C: usize = 1024 * 1024;

    fn budget(chunks: u64) -> (ReadBudget, Metrics) {
        let m = Metrics::default();
        let b = ReadBudget::new(Budget::new(chunks * C as u64, C as u32), &m);
        (b, m)
    }

    async fn pending<T>(f: impl std::future::Future<Output = T>) -> bool {
        tokio::time::timeout(Duration::from_millis(50), f)
            .await
            .is_err()
    }

    #[tokio::test]
    async fn read_ahead_stops_at_the_budget_and_resumes_when_bytes_drain() {
        let (b, m) = budget(2);
        let (r1, r2) = (Arc::new(Holder::default()), Arc::new(Holder::default()));
        let a = b.take(&r1, C, || false).await;
        let bb = b.take(&r1, C, || false).await;
        assert!(!a.is_floor() && !bb.is_floor());
        // The budget is spent: a read ahead of r1's send position waits...
        assert!(pending(b.take(&r1, C, || false)).await);
        // ...while r2's head gets its floor, and only one.
        let mut f = b.take(&r2, C, || true).await;
        assert!(f.is_floor());
        assert!(pending(b.take(&r2, C, || true)).await);
        // A floor counts one group until its holder reads the whole chunk under it.
        assert_eq!(m.cache_read_buffer_bytes.get(), (2 * C + FLOOR) as i64);
        f.hold(C);
        assert_eq!(m.cache_read_buffer_bytes.get(), 3 * C as i64);
        assert!(m.cache_read_buffer_waits.get() >= 2);
        // A frame's bytes carry the share: dropping them makes room.
        let frame = a.charge(Bytes::from(vec![7u8; 10]));
        let clone = frame.slice(2..5);
        drop(frame);
        assert!(
            pending(b.take(&r1, C, || false)).await,
            "a slice still holds it"
        );
        drop(clone);
        let c = tokio::time::timeout(Duration::from_secs(5), b.take(&r1, C, || false))
            .await
            .unwrap();
        assert!(!c.is_floor());
        drop((bb, c, f));
        assert_eq!(m.cache_read_buffer_bytes.get(), 0);
    }

    #[tokio::test]
    async fn the_head_gets_the_floor_although_its_reads_ahead_hold_the_budget() {
        // The response's own read-ahead holds the whole budget and cannot give it
        // back before the head is sent: the head must not wait for it.
        let (b, _m) = budget(2);
        let r = Arc::new(Holder::default());
        let ahead = (b.take(&r, C, || false).await, b.take(&r, C, || false).await);
        let head = tokio::time::timeout(Duration::from_secs(5), b.take(&r, C, || true))
            .await
            .unwrap();
        assert!(head.is_floor());
        drop(ahead);
    }

    #[tokio::test]
    async fn a_read_waiting_for_room_takes_the_floor_once_it_becomes_the_head() {
        let (b, _m) = budget(1);
        let (idle, r) = (Arc::new(Holder::default()), Arc::new(Holder::default()));
        // A client that never reads holds the whole budget.
        let _stuck = b.take(&idle, C, || false).await;
        let first = b.take(&r, C, || true).await; // r's floor, for its head
        let head = Arc::new(AtomicBool::new(false));
        let (b2, r2, h2) = (b.clone(), r.clone(), head.clone());
        let next =
            tokio::spawn(async move { b2.take(&r2, C, move || h2.load(Ordering::Acquire)).await });
        tokio::task::yield_now().await;
        assert!(!next.is_finished());
        // The head's floor is given back, but the waiting read is not the head yet.
        drop(first);
        tokio::task::yield_now().await;
        assert!(!next.is_finished());
        // The send position reaches it.
        head.store(true, Ordering::Release);
        r.advanced();
        let s = tokio::time::timeout(Duration::from_secs(5), next)
            .await
            .unwrap()
            .unwrap();
        assert!(s.is_floor(), "the floor, not the budget");
    }
}
