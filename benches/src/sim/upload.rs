//! A holder's upload admission in the simulation: the agent's slots (`peer.max_uploads`,
//! `peer.max_uploads_per_peer`) and the optional wait queue (`peer.upload_queue`).
//!
//! The rule is the agent's (`agent/src/transport/limit.rs`): a request starts at once
//! if a slot is free for its peer; else it waits in a FIFO queue if the queue has room
//! and its peer has fewer than `queue_per_peer` requests waiting; else it is answered
//! `Busy`. A freed slot goes to the first waiter whose peer is under its slot limit
//! (or, with `fewest_first`, the one whose chunk this holder has sent least often).
//! Pure bookkeeping: the caller starts flows, arms the wait deadline and answers.
//!
//! What it does not model: a cancelled waiter leaves the queue at the instant the
//! requester cancels (the agent learns of it one one-way delay later, when the reset
//! stream arrives).

use std::collections::{HashMap, VecDeque};

use shoal_proto::sched::RequestId;

/// The limits of every holder.
#[derive(Debug, Clone, Copy)]
pub(super) struct Policy {
    pub max: usize,
    pub per_peer: usize,
    /// Requests that may wait for a slot (0 = `Busy` at once, the agent's old rule).
    pub queue: usize,
    /// Of those, from one peer.
    pub queue_per_peer: usize,
    /// A freed slot goes to the waiter whose chunk this holder has sent least often
    /// (ties: oldest), instead of the oldest waiter.
    pub fewest_first: bool,
}

/// One request of `client`'s scheduler, at the holder.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Waiter {
    pub client: usize,
    pub req: RequestId,
    pub index: usize,
    /// When it reached the holder (ns).
    pub since: u64,
}

/// What [`Uploads::admit`] decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Admit {
    /// A slot was taken: send now.
    Start,
    /// Waiting for a slot.
    Queued,
    /// Answer `Busy`.
    Busy,
}

/// The uploads of one holder: slots in use and requests waiting.
#[derive(Debug, Default)]
pub(super) struct Uploads {
    active: usize,
    active_to: HashMap<usize, usize>,
    queue: VecDeque<Waiter>,
    queued_to: HashMap<usize, usize>,
    /// Uploads started per chunk index.
    sent: HashMap<usize, u32>,
}

impl Uploads {
    /// Slots in use plus requests waiting (what the agent reports as its load).
    pub(super) fn load(&self) -> usize {
        self.active + self.queue.len()
    }

    pub(super) fn admit(&mut self, p: &Policy, w: Waiter) -> Admit {
        if self.slot_free(p, w.client) {
            self.take(w.client);
            *self.sent.entry(w.index).or_insert(0) += 1;
            return Admit::Start;
        }
        let mine = self.queued_to.get(&w.client).copied().unwrap_or(0);
        if self.queue.len() >= p.queue || mine >= p.queue_per_peer {
            return Admit::Busy;
        }
        *self.queued_to.entry(w.client).or_insert(0) += 1;
        self.queue.push_back(w);
        Admit::Queued
    }

    /// An upload to `client` ended (sent or cancelled): its slot is free.
    pub(super) fn finished(&mut self, client: usize) {
        self.active = self.active.saturating_sub(1);
        dec(&mut self.active_to, client);
    }

    /// The first waiter that may take a free slot, with the slot taken.
    pub(super) fn next(&mut self, p: &Policy) -> Option<Waiter> {
        if self.active >= p.max {
            return None;
        }
        let eligible = self
            .queue
            .iter()
            .enumerate()
            .filter(|(_, w)| self.active_to.get(&w.client).copied().unwrap_or(0) < p.per_peer);
        let at = if p.fewest_first {
            eligible
                .min_by_key(|(i, w)| (self.sent.get(&w.index).copied().unwrap_or(0), *i))
                .map(|(i, _)| i)?
        } else {
            eligible.map(|(i, _)| i).next()?
        };
        let w = self.queue.remove(at)?;
        dec(&mut self.queued_to, w.client);
        self.take(w.client);
        *self.sent.entry(w.index).or_insert(0) += 1;
        Some(w)
    }

    /// Takes `client`'s request `req` out of the queue (cancelled, or waited too long).
    pub(super) fn remove(&mut self, client: usize, req: RequestId) -> Option<Waiter> {
        let at = self
            .queue
            .iter()
            .position(|w| w.client == client && w.req == req)?;
        let w = self.queue.remove(at)?;
        dec(&mut self.queued_to, client);
        Some(w)
    }

    fn slot_free(&self, p: &Policy, client: usize) -> bool {
        self.active < p.max && self.active_to.get(&client).copied().unwrap_or(0) < p.per_peer
    }

    fn take(&mut self, client: usize) {
        self.active += 1;
        *self.active_to.entry(client).or_insert(0) += 1;
    }
}

fn dec(counts: &mut HashMap<usize, usize>, key: usize) {
    if let Some(n) = counts.get_mut(&key) {
        *n = n.saturating_sub(1);
        if *n == 0 {
            counts.remove(&key);
        }
    }
}
