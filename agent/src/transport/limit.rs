//! Upload admission: concurrent-upload slots with a short wait queue, and the upload
//! byte-rate bucket.
//!
//! A request takes a slot at once if one is free for its peer (`max_uploads` in all,
//! `max_uploads_per_peer` per peer id); else it waits in a FIFO queue of at most
//! `upload_queue` requests, of which at most `upload_queue_per_peer` from one peer;
//! else it is refused (`busy`). A freed slot goes straight to the oldest waiter whose
//! peer is under its slot limit (handed over through a `oneshot`, counted under the
//! same lock, so no slot is lost or counted twice). A waiter gives up its place by
//! dropping its [`Waiting`] (the server does so when the requester stops the stream,
//! after `upload_queue_wait`, or at shutdown); a slot handed to a waiter that is gone
//! by then is passed on. What it does not do: order by anything but arrival, or know
//! whether the chunk is held (the server looks the chunk up once it has a slot).
//!
//! Both parts are bookkeeping (the bucket takes `now` from the caller) so they can be
//! tested without a network.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use shoal_proto::TokenBucket;

use shoal_proto::PeerId;
use tokio::sync::{Notify, oneshot};

use super::UploadLimits;

/// Counts uploads in progress, globally and per peer id, and the requests waiting.
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
    /// Requests waiting for a slot, oldest first.
    waiting: VecDeque<Waiter>,
    waiting_per_peer: HashMap<PeerId, usize>,
    next_ticket: u64,
    /// Shutting down: nobody is queued any more.
    closed: bool,
}

#[derive(Debug)]
struct Waiter {
    ticket: u64,
    peer: PeerId,
    /// Sent when a slot is this waiter's (already counted in `total`).
    grant: oneshot::Sender<()>,
}

/// One admitted upload; releases its slot when dropped.
#[derive(Debug)]
pub(super) struct Permit {
    gate: Arc<Gate>,
    peer: PeerId,
}

/// A place in the queue. Dropping it gives the place up (or passes on the slot it
/// was just handed).
#[derive(Debug)]
pub(super) struct Waiting {
    gate: Arc<Gate>,
    peer: PeerId,
    ticket: u64,
    grant: oneshot::Receiver<()>,
    /// The slot was received as a [`Permit`], or the gate closed: nothing to undo.
    settled: bool,
}

/// What [`Gate::admit`] decided.
#[derive(Debug)]
pub(super) enum Admission {
    /// A slot is free: upload now.
    Now(Permit),
    /// Wait for a slot with [`Waiting::granted`].
    Queued(Waiting),
    /// No slot, and the queue (or this peer's share of it) is full: answer `busy`.
    Full,
}

/// The gate closed (shutdown) while the request waited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Closed;

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
    /// reached; never queues.
    #[cfg(test)]
    pub(super) fn try_enter(self: &Arc<Self>, peer: &PeerId) -> Option<Permit> {
        match self.admit_or_queue(peer, false) {
            Admission::Now(p) => Some(p),
            Admission::Queued(_) | Admission::Full => None,
        }
    }

    /// Admits one upload for `peer` now, or queues it, or refuses it (see the module
    /// docs).
    pub(super) fn admit(self: &Arc<Self>, peer: &PeerId) -> Admission {
        self.admit_or_queue(peer, true)
    }

    fn admit_or_queue(self: &Arc<Self>, peer: &PeerId, queue: bool) -> Admission {
        let mut s = self.lock();
        let mine = s.per_peer.get(peer).copied().unwrap_or(0);
        if s.total < self.limits.max_uploads && mine < self.limits.max_uploads_per_peer {
            s.total += 1;
            s.per_peer.insert(peer.clone(), mine + 1);
            return Admission::Now(self.permit(peer));
        }
        let queued = s.waiting_per_peer.get(peer).copied().unwrap_or(0);
        if !queue
            || s.closed
            || s.waiting.len() >= self.limits.upload_queue
            || queued >= self.limits.upload_queue_per_peer
        {
            return Admission::Full;
        }
        let ticket = s.next_ticket;
        s.next_ticket += 1;
        let (grant, rx) = oneshot::channel();
        s.waiting.push_back(Waiter {
            ticket,
            peer: peer.clone(),
            grant,
        });
        s.waiting_per_peer.insert(peer.clone(), queued + 1);
        Admission::Queued(Waiting {
            gate: self.clone(),
            peer: peer.clone(),
            ticket,
            grant: rx,
            settled: false,
        })
    }

    pub(super) fn limits(&self) -> &UploadLimits {
        &self.limits
    }

    pub(super) fn active(&self) -> usize {
        self.lock().total
    }

    /// Requests waiting for a slot.
    pub(super) fn queued(&self) -> usize {
        self.lock().waiting.len()
    }

    /// Shutdown: every waiter is told [`Closed`] and nothing is queued any more.
    pub(super) fn close(&self) {
        let mut s = self.lock();
        s.closed = true;
        // Dropping the senders wakes every waiter with `Closed`.
        s.waiting.clear();
        s.waiting_per_peer.clear();
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

    fn permit(self: &Arc<Self>, peer: &PeerId) -> Permit {
        Permit {
            gate: self.clone(),
            peer: peer.clone(),
        }
    }

    /// Frees one of `peer`'s slots and hands free slots to the oldest eligible waiters.
    fn release(&self, s: &mut GateState, peer: &PeerId) {
        s.total = s.total.saturating_sub(1);
        dec(&mut s.per_peer, peer);
        while s.total < self.limits.max_uploads {
            let per_peer = &s.per_peer;
            let max = self.limits.max_uploads_per_peer;
            let Some(at) = s
                .waiting
                .iter()
                .position(|w| per_peer.get(&w.peer).copied().unwrap_or(0) < max)
            else {
                break;
            };
            let Some(w) = s.waiting.remove(at) else { break };
            dec(&mut s.waiting_per_peer, &w.peer);
            // A receiver is dropped only after its ticket left the queue (under this
            // lock), so this fails only for a leaked `Waiting`: skip it.
            if w.grant.send(()).is_ok() {
                s.total += 1;
                *s.per_peer.entry(w.peer).or_insert(0) += 1;
            }
        }
        if s.total == 0 {
            self.idle.notify_waiters();
        }
    }

    fn lock(&self) -> MutexGuard<'_, GateState> {
        // Counters and a queue updated together under this lock, with no panicking
        // call in between: a panic cannot leave them torn.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Waiting {
    /// Waits for a slot. Cancel-safe: if this future is dropped, the place is kept
    /// until the `Waiting` itself is dropped.
    pub(super) async fn granted(&mut self) -> Result<Permit, Closed> {
        let got = (&mut self.grant).await;
        self.settled = true;
        match got {
            Ok(()) => Ok(self.gate.permit(&self.peer)),
            Err(_) => Err(Closed),
        }
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        let mut s = self.gate.lock();
        self.gate.release(&mut s, &self.peer);
    }
}

impl Drop for Waiting {
    fn drop(&mut self) {
        if self.settled {
            return;
        }
        let mut s = self.gate.lock();
        if let Some(at) = s.waiting.iter().position(|w| w.ticket == self.ticket) {
            s.waiting.remove(at);
            dec(&mut s.waiting_per_peer, &self.peer);
        } else if self.grant.try_recv().is_ok() {
            // Handed a slot it will not use: pass it on.
            self.gate.release(&mut s, &self.peer);
        }
    }
}

fn dec(counts: &mut HashMap<PeerId, usize>, key: &PeerId) {
    if let Some(n) = counts.get_mut(key) {
        *n = n.saturating_sub(1);
        if *n == 0 {
            counts.remove(key);
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use std::time::Duration;

    use futures_util::FutureExt;

    use super::*;

    fn limits(max: usize, per_peer: usize) -> UploadLimits {
        UploadLimits {
            max_uploads: max,
            max_uploads_per_peer: per_peer,
            ..UploadLimits::UNLIMITED
        }
    }

    fn queue(max: usize, per_peer: usize, queue: usize) -> Arc<Gate> {
        Arc::new(Gate::new(UploadLimits {
            upload_queue: queue,
            upload_queue_per_peer: 1,
            upload_queue_wait: Duration::from_secs(60),
            ..limits(max, per_peer)
        }))
    }

    fn peer(name: &str) -> PeerId {
        name.parse().unwrap()
    }

    fn now(g: &Arc<Gate>, p: &str) -> Permit {
        match g.admit(&peer(p)) {
            Admission::Now(permit) => permit,
            other => panic!("{p}: expected a slot, got {other:?}"),
        }
    }

    fn wait(g: &Arc<Gate>, p: &str) -> Waiting {
        match g.admit(&peer(p)) {
            Admission::Queued(w) => w,
            other => panic!("{p}: expected a place in the queue, got {other:?}"),
        }
    }

    /// Whether the slot has been handed to `w` (without waiting).
    fn granted(w: &mut Waiting) -> Option<Result<Permit, Closed>> {
        w.granted().now_or_never()
    }

    #[test]
    fn freed_slot_goes_to_the_oldest_waiter_under_its_peer_limit() {
        let g = queue(2, 1, 4);
        let a = now(&g, "a");
        let b = now(&g, "b");
        let mut wa = wait(&g, "a");
        let mut wc = wait(&g, "c");
        assert_eq!((g.active(), g.queued()), (2, 2));
        // b's slot frees; a is first in line but already has its one slot.
        drop(b);
        assert!(granted(&mut wa).is_none());
        let c = granted(&mut wc).unwrap().unwrap();
        assert_eq!((g.active(), g.queued()), (2, 1));
        drop(a);
        let a2 = granted(&mut wa).unwrap().unwrap();
        assert_eq!((g.active(), g.queued()), (2, 0));
        drop((c, a2, wa, wc));
        assert_eq!(g.active(), 0);
    }

    #[test]
    fn queue_and_per_peer_share_are_bounded() {
        let g = queue(1, 4, 2);
        let _slot = now(&g, "a");
        let _wa = wait(&g, "a");
        assert!(matches!(g.admit(&peer("a")), Admission::Full), "a's share");
        let _wb = wait(&g, "b");
        assert!(matches!(g.admit(&peer("c")), Admission::Full), "queue full");
        assert_eq!(g.queued(), 2);
        let none = queue(1, 4, 0);
        let _s = now(&none, "a");
        assert!(
            matches!(none.admit(&peer("b")), Admission::Full),
            "no queue"
        );
    }

    #[test]
    fn leaving_waiters_give_up_their_place_or_pass_the_slot_on() {
        let g = queue(1, 4, 4);
        let slot = now(&g, "a");
        let w1 = wait(&g, "b");
        let w2 = wait(&g, "c");
        let mut w3 = wait(&g, "d");
        drop(w1);
        assert_eq!(g.queued(), 2);
        // The slot goes to w2, which leaves before taking it: it passes on to w3.
        drop(slot);
        assert_eq!((g.active(), g.queued()), (1, 1));
        drop(w2);
        let p3 = granted(&mut w3).unwrap().unwrap();
        assert_eq!((g.active(), g.queued()), (1, 0));
        drop(p3);
        assert_eq!(g.active(), 0);
    }

    #[test]
    fn close_wakes_waiters_and_queues_no_more() {
        let g = queue(1, 4, 4);
        let _slot = now(&g, "a");
        let mut w = wait(&g, "b");
        g.close();
        assert_eq!(granted(&mut w).unwrap().unwrap_err(), Closed);
        assert_eq!(g.queued(), 0);
        assert!(matches!(g.admit(&peer("c")), Admission::Full));
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
