//! The peers of one download: what each holds, its load and its standing.
//!
//! Keeps the invariants the scheduler relies on: `holders(i)` is the number of
//! *active* peers whose holdings include chunk `i` (banned, dropped and gone peers hold
//! nothing); and, once [`Peers::settle`] has run after the last [`Peers::get_mut`], the
//! ready set is exactly the peers [`Peer::ready`] and the back-off index holds every
//! peer's `backoff_until`. Both indices let a planning step look only at the peers
//! that can take a request and at the next back-off to end, not at every peer ever
//! seen (a large swarm hints hundreds).

use std::collections::{BTreeSet, HashMap};
use std::time::Instant;

use crate::peer::{PeerId, Proximity};

/// Where a peer stands with this download.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PeerStatus {
    /// Usable (possibly backing off for a moment after `Busy` or a failure).
    Active,
    /// Served bytes that failed verification: never asked again for this object.
    Banned,
    /// Failed too often in a row: never asked again for this object.
    Dropped,
    /// Reported gone by the caller; comes back if announced again.
    Gone,
}

/// One known peer. Fields are read and written by the scheduler directly; only the
/// holdings go through [`Peers`] so that holder counts stay right.
#[derive(Debug)]
pub(super) struct Peer {
    pub id: PeerId,
    pub proximity: Proximity,
    pub status: PeerStatus,
    /// Requests in flight to this peer.
    pub inflight: usize,
    /// How many requests it may have in flight now (≤ the configured cap): grows by one
    /// per success, halves on `Busy`, drops to 1 on a failure.
    pub window: usize,
    /// Consecutive failures; reset by a success.
    pub failures: u32,
    /// Consecutive `Busy` answers; reset by a success.
    pub busy_streak: u32,
    /// Not asked again before this instant.
    pub backoff_until: Option<Instant>,
    /// Counts setbacks (`Busy`, failures); a request remembers the value it was sent
    /// under, so that answers to requests sent before the latest setback count once.
    pub epoch: u64,
    /// Salted hash of the id: orders otherwise equal peers differently on each agent.
    pub tiebreak: u64,
    /// Bitmap of chunk indices held.
    have: Vec<u64>,
}

/// All peers ever seen by this download, addressed by a stable slot number.
#[derive(Debug)]
pub(super) struct Peers {
    list: Vec<Peer>,
    slots: HashMap<PeerId, usize>,
    salt: u64,
    /// Active holders per chunk.
    holders: Vec<u32>,
    /// Most requests in flight to one peer (`peer_inflight`).
    cap: usize,
    /// One bit per slot: the peer is [`Peer::ready`].
    ready: Vec<u64>,
    /// `(backoff_until, slot)` of every peer backing off.
    backoffs: BTreeSet<(Instant, usize)>,
    /// Per slot, the `backoff_until` that `backoffs` holds for it.
    indexed: Vec<Option<Instant>>,
    /// Slots handed out by [`Peers::get_mut`] since the last [`Peers::settle`].
    touched: Vec<usize>,
}

impl Peer {
    pub fn holds(&self, index: usize) -> bool {
        self.have
            .get(index / 64)
            .is_some_and(|w| w & (1 << (index % 64)) != 0)
    }

    /// Whether a new request may go to this peer now: active, below its window and not
    /// backing off (the planning step ends the back-offs due first).
    pub fn ready(&self, cap: usize) -> bool {
        self.status == PeerStatus::Active
            && self.inflight < cap.min(self.window)
            && self.backoff_until.is_none()
    }

    /// [`Peer::ready`] as it was computed before the index, from `now` (the tests
    /// check both agree).
    #[cfg(test)]
    pub fn available(&self, now: Instant, cap: usize) -> bool {
        self.status == PeerStatus::Active
            && self.inflight < cap.min(self.window)
            && self.backoff_until.is_none_or(|t| t <= now)
    }
}

impl Peers {
    /// No peers yet, for an object of `chunks` chunks; at most `cap` requests in
    /// flight per peer.
    pub fn new(chunks: usize, salt: u64, cap: usize) -> Self {
        Self {
            list: Vec::new(),
            slots: HashMap::new(),
            salt,
            holders: vec![0; chunks],
            cap,
            ready: Vec::new(),
            backoffs: BTreeSet::new(),
            indexed: Vec::new(),
            touched: Vec::new(),
        }
    }

    pub fn slot(&self, id: &PeerId) -> Option<usize> {
        self.slots.get(id).copied()
    }

    pub fn get(&self, slot: usize) -> Option<&Peer> {
        self.list.get(slot)
    }

    /// The peer in `slot`, to change. The ready set and the back-off index follow at
    /// the next [`Peers::settle`].
    pub fn get_mut(&mut self, slot: usize) -> Option<&mut Peer> {
        let p = self.list.get_mut(slot)?;
        self.touched.push(slot);
        Some(p)
    }

    #[cfg(test)]
    pub fn iter(&self) -> impl Iterator<Item = (usize, &Peer)> {
        self.list.iter().enumerate()
    }

    /// Brings the ready set and the back-off index up to date with the peers changed
    /// since the last call. O(changed peers × log(peers backing off)).
    pub fn settle(&mut self) {
        while let Some(slot) = self.touched.pop() {
            let Some(p) = self.list.get(slot) else {
                continue;
            };
            let (until, ready) = (p.backoff_until, p.ready(self.cap));
            if let Some(w) = self.ready.get_mut(slot / 64) {
                let b = 1 << (slot % 64);
                *w = if ready { *w | b } else { *w & !b };
            }
            if let Some(old) = self.indexed.get_mut(slot)
                && *old != until
            {
                if let Some(t) = old.take() {
                    self.backoffs.remove(&(t, slot));
                }
                if let Some(t) = until {
                    self.backoffs.insert((t, slot));
                }
                *old = until;
            }
        }
    }

    /// Ends every back-off due by `now`.
    pub fn end_backoffs(&mut self, now: Instant) {
        self.settle();
        while let Some(&(t, slot)) = self.backoffs.first()
            && t <= now
        {
            match self.get_mut(slot) {
                Some(p) => p.backoff_until = None,
                // Unreachable (the index holds slots of the list); keeps the loop finite.
                None => {
                    self.backoffs.pop_first();
                }
            }
            self.settle();
        }
    }

    /// When the earliest back-off ends (the index as of the last [`Peers::settle`]).
    pub fn next_backoff_end(&self) -> Option<Instant> {
        self.backoffs.first().map(|&(t, _)| t)
    }

    /// Sets `out` to the slots of the [`Peer::ready`] peers, in slot order.
    /// O(slots / 64 + ready peers).
    pub fn ready_into(&mut self, out: &mut Vec<usize>) {
        self.settle();
        out.clear();
        for (w, word) in self.ready.iter().enumerate() {
            let mut bits = *word;
            while bits != 0 {
                out.push(w * 64 + bits.trailing_zeros() as usize);
                bits &= bits - 1;
            }
        }
    }

    /// Sets `out` to the union of the holdings of `slots` within `mask`: bit `i % 64`
    /// of word `i / 64` is set when chunk `i` is in `mask` and one of them holds it.
    /// Stops at the first slot after which every chunk of `mask` is covered (an empty
    /// mask looks at no peer). O(slots × chunks / 64) at worst.
    pub fn union_into(&self, slots: &[usize], mask: &[u64], out: &mut Vec<u64>) {
        out.clear();
        out.resize(self.holders.len().div_ceil(64), 0);
        if mask.iter().all(|&m| m == 0) {
            return;
        }
        for p in slots.iter().filter_map(|&s| self.list.get(s)) {
            let mut covered = true;
            for ((o, w), m) in out.iter_mut().zip(&p.have).zip(mask) {
                *o |= w & m;
                covered &= *o == *m;
            }
            if covered {
                break;
            }
        }
    }

    /// Active peers that holds chunk `index`.
    pub fn holders(&self, index: usize) -> u32 {
        self.holders.get(index).copied().unwrap_or(0)
    }

    /// The slot of `id`, creating an active peer with no holdings if it is new.
    pub fn upsert(&mut self, id: PeerId, proximity: Proximity, window: usize) -> usize {
        if let Some(slot) = self.slot(&id) {
            return slot;
        }
        let slot = self.list.len();
        self.slots.insert(id.clone(), slot);
        let tiebreak = mix(self.salt, id.as_str().as_bytes());
        self.list.push(Peer {
            tiebreak,
            id,
            proximity,
            status: PeerStatus::Active,
            inflight: 0,
            window,
            failures: 0,
            busy_streak: 0,
            backoff_until: None,
            epoch: 0,
            have: vec![0; self.holders.len().div_ceil(64)],
        });
        self.indexed.push(None);
        self.ready.resize(self.list.len().div_ceil(64), 0);
        self.touched.push(slot);
        slot
    }

    /// Marks `index` as held by `slot`. Returns false for an index out of range.
    pub fn add(&mut self, slot: usize, index: usize) -> bool {
        let Some(count) = self.holders.get_mut(index) else {
            return false;
        };
        if let Some(p) = self.list.get_mut(slot)
            && p.status == PeerStatus::Active
            && !p.holds(index)
        {
            // have.len() covers every index < holders.len()
            if let Some(w) = p.have.get_mut(index / 64) {
                *w |= 1 << (index % 64);
                *count += 1;
            }
        }
        true
    }

    /// Forgets that `slot` holds `index`.
    pub fn remove(&mut self, slot: usize, index: usize) {
        let Some(p) = self.list.get_mut(slot) else {
            return;
        };
        if p.holds(index) {
            if let Some(w) = p.have.get_mut(index / 64) {
                *w &= !(1 << (index % 64));
            }
            if let Some(c) = self.holders.get_mut(index) {
                *c = c.saturating_sub(1);
            }
        }
    }

    /// Forgets everything `slot` holds.
    pub fn clear(&mut self, slot: usize) {
        let Some(p) = self.list.get_mut(slot) else {
            return;
        };
        for (w, word) in p.have.iter_mut().enumerate() {
            let mut bits = std::mem::take(word);
            while bits != 0 {
                let b = bits.trailing_zeros() as usize;
                bits &= bits - 1;
                if let Some(c) = self.holders.get_mut(w * 64 + b) {
                    *c = c.saturating_sub(1);
                }
            }
        }
    }

    /// Sets `slot`'s status; leaving `Active` forgets its holdings.
    pub fn set_status(&mut self, slot: usize, status: PeerStatus) {
        if status != PeerStatus::Active {
            self.clear(slot);
        }
        if let Some(p) = self.get_mut(slot) {
            p.status = status;
        }
    }
}

/// FNV-1a of `bytes` seeded with `salt`, then a SplitMix64 finaliser: cheap, stable
/// across runs and platforms, and well spread (not a security boundary).
pub(super) fn mix(salt: u64, bytes: &[u8]) -> u64 {
    let mut h = 0xcbf2_9ce4_8422_2325 ^ salt;
    for &b in bytes {
        h = (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
    }
    h = (h ^ (h >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h = (h ^ (h >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    h ^ (h >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pid(s: &str) -> PeerId {
        s.parse().unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn holder_counts_follow_status() {
        let mut ps = Peers::new(130, 0, 4);
        let a = ps.upsert(pid("a"), Proximity::SameZone, 1);
        let b = ps.upsert(pid("b"), Proximity::Other, 1);
        assert_eq!(ps.upsert(pid("a"), Proximity::Other, 1), a);
        for i in [0, 64, 129] {
            assert!(ps.add(a, i));
            assert!(ps.add(a, i));
        }
        assert!(!ps.add(a, 130));
        assert!(ps.add(b, 129));
        assert_eq!(ps.holders(129), 2);
        assert_eq!(ps.holders(64), 1);
        ps.remove(a, 64);
        assert_eq!(ps.holders(64), 0);
        ps.set_status(a, PeerStatus::Banned);
        assert_eq!((ps.holders(0), ps.holders(129)), (0, 1));
        assert!(ps.add(a, 0));
        assert_eq!(ps.holders(0), 0, "a banned peer holds nothing");
        assert_eq!(ps.holders(999), 0);
    }

    #[test]
    fn union_covers_every_word_of_the_chosen_slots_only() {
        let mut ps = Peers::new(130, 0, 4);
        let a = ps.upsert(pid("a"), Proximity::SameZone, 1);
        let b = ps.upsert(pid("b"), Proximity::SameZone, 1);
        let c = ps.upsert(pid("c"), Proximity::SameZone, 1);
        for (slot, i) in [(a, 0), (a, 129), (b, 64), (c, 5)] {
            assert!(ps.add(slot, i));
        }
        let all = [u64::MAX; 3];
        let mut out = vec![u64::MAX; 7];
        ps.union_into(&[a, b, 99], &all, &mut out);
        assert_eq!(out, [1, 1, 1 << 1]);
        ps.union_into(&[], &all, &mut out);
        assert_eq!(out, [0, 0, 0]);
        // Within a mask; an empty mask looks at nobody.
        ps.union_into(&[a, b, c], &[1 << 5 | 1, 0, 0], &mut out);
        assert_eq!(out, [1 << 5 | 1, 0, 0]);
        ps.union_into(&[a, b, c], &[0, 0, 0], &mut out);
        assert_eq!(out, [0, 0, 0]);
    }
}
