//! The read buffer: chunk bytes that responses hold between reading them and the
//! client's socket taking them, bounded across all responses (`cache.read_buffer`).
//!
//! A response takes a [`Share`] before it reads a chunk (so a disk read does not
//! start without room), and the share travels inside the frame's bytes
//! ([`Share::charge`]): it is given back when hyper drops the frame, that is once
//! the bytes are in the socket. So slow clients, however many, hold at most the
//! budget in read-ahead.
//!
//! Every response may hold one share outside the budget (its *floor*): a response
//! with nothing read and unsent never waits. Clients that stop reading (until
//! `proxy.send_timeout` disconnects them) can take the read-ahead of others, never
//! their progress. Memory: at most `read_buffer + responses × chunk_size`.
//!
//! Not bounded here: the frames hyper and the response channel hold of chunks
//! taken under a share are counted by it; bytes a fill holds for its readers are the
//! fill's (`behind`), and origin pass-through frames are small and not counted.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use bytes::Bytes;
use prometheus::{IntCounter, IntGauge};
use tokio::sync::{Notify, OwnedSemaphorePermit};

use super::behind::Budget;
use crate::metrics::Metrics;

/// All responses' read-ahead budget. Cheap to clone.
#[derive(Debug, Clone)]
pub(crate) struct ReadBudget {
    budget: Budget,
    gauge: IntGauge,
    waits: IntCounter,
}

/// One response's count of the shares it holds.
#[derive(Debug, Default)]
pub(crate) struct Holder {
    held: AtomicUsize,
    drained: Notify,
}

/// The right to hold one chunk's bytes until they reach the client.
#[derive(Debug)]
pub(crate) struct Share {
    _permit: Option<OwnedSemaphorePermit>,
    len: i64,
    gauge: IntGauge,
    holder: Arc<Holder>,
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

    /// A share of `len` bytes for a response counted by `holder`: from the budget
    /// if it has room, else the response's floor when it holds nothing, else waits
    /// for whichever comes first.
    pub(crate) async fn take(&self, holder: &Arc<Holder>, len: usize) -> Share {
        if let Some(p) = self.budget.try_take(len) {
            return self.share(holder, Some(p), len);
        }
        let mut waited = false;
        loop {
            let drained = holder.drained.notified();
            tokio::pin!(drained);
            drained.as_mut().enable();
            if let Some(p) = self.budget.try_take(len) {
                return self.share(holder, Some(p), len);
            }
            if holder
                .held
                .compare_exchange(0, 1, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
            {
                return self.share_counted(holder, None, len);
            }
            if !waited {
                waited = true;
                self.waits.inc();
            }
            tokio::select! {
                p = self.budget.take(len) => return self.share(holder, p, len),
                () = &mut drained => {}
            }
        }
    }

    fn share(&self, holder: &Arc<Holder>, p: Option<OwnedSemaphorePermit>, len: usize) -> Share {
        holder.held.fetch_add(1, Ordering::AcqRel);
        self.share_counted(holder, p, len)
    }

    /// A share whose holder count is already raised.
    fn share_counted(
        &self,
        holder: &Arc<Holder>,
        permit: Option<OwnedSemaphorePermit>,
        len: usize,
    ) -> Share {
        let len = i64::try_from(len).unwrap_or(i64::MAX);
        self.gauge.add(len);
        Share {
            _permit: permit,
            len,
            gauge: self.gauge.clone(),
            holder: holder.clone(),
        }
    }
}

impl Share {
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
        if self.holder.held.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.holder.drained.notify_waiters();
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
        let a = b.take(&r1, C).await;
        let bb = b.take(&r1, C).await;
        // The budget is spent; r1 holds shares, so it waits...
        assert!(pending(b.take(&r1, C)).await);
        // ...while r2, holding nothing, still gets its floor, and only one.
        let f = b.take(&r2, C).await;
        assert!(pending(b.take(&r2, C)).await);
        assert_eq!(m.cache_read_buffer_bytes.get(), 3 * C as i64);
        assert!(m.cache_read_buffer_waits.get() >= 2);
        // A frame's bytes carry the share: dropping them makes room.
        let frame = a.charge(Bytes::from(vec![7u8; 10]));
        let clone = frame.slice(2..5);
        drop(frame);
        assert!(pending(b.take(&r1, C)).await, "a slice still holds it");
        drop(clone);
        let c = tokio::time::timeout(Duration::from_secs(5), b.take(&r1, C))
            .await
            .unwrap();
        drop((bb, c, f));
        assert_eq!(m.cache_read_buffer_bytes.get(), 0);
    }

    #[tokio::test]
    async fn a_waiting_response_takes_its_floor_once_its_last_share_drains() {
        let (b, _m) = budget(1);
        let (idle, r) = (Arc::new(Holder::default()), Arc::new(Holder::default()));
        // A client that never reads holds the whole budget.
        let _stuck = b.take(&idle, C).await;
        let first = b.take(&r, C).await; // r's floor
        let b2 = b.clone();
        let r2 = r.clone();
        let next = tokio::spawn(async move { b2.take(&r2, C).await });
        tokio::task::yield_now().await;
        assert!(!next.is_finished());
        drop(first);
        let s = tokio::time::timeout(Duration::from_secs(5), next)
            .await
            .unwrap()
            .unwrap();
        assert!(s._permit.is_none(), "the floor, not the budget");
    }
}
