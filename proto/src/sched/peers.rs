//! The peers of one download: what each holds, its load and its standing.
//!
//! Keeps one invariant the scheduler relies on: `holders(i)` is the number of *active*
//! peers whose holdings include chunk `i`. Banned, dropped and gone peers hold nothing.

use std::collections::HashMap;
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
}

impl Peer {
    pub fn holds(&self, index: usize) -> bool {
        self.have
            .get(index / 64)
            .is_some_and(|w| w & (1 << (index % 64)) != 0)
    }

    /// Whether a new request may go to this peer now.
    pub fn available(&self, now: Instant, cap: usize) -> bool {
        self.status == PeerStatus::Active
            && self.inflight < cap.min(self.window)
            && self.backoff_until.is_none_or(|t| t <= now)
    }
}

impl Peers {
    pub fn new(chunks: usize, salt: u64) -> Self {
        Self {
            list: Vec::new(),
            slots: HashMap::new(),
            salt,
            holders: vec![0; chunks],
        }
    }

    pub fn slot(&self, id: &PeerId) -> Option<usize> {
        self.slots.get(id).copied()
    }

    pub fn get(&self, slot: usize) -> Option<&Peer> {
        self.list.get(slot)
    }

    pub fn get_mut(&mut self, slot: usize) -> Option<&mut Peer> {
        self.list.get_mut(slot)
    }

    pub fn iter(&self) -> impl Iterator<Item = (usize, &Peer)> {
        self.list.iter().enumerate()
    }

    pub fn iter_mut(&mut self) -> impl Iterator<Item = &mut Peer> {
        self.list.iter_mut()
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
        if let Some(p) = self.list.get_mut(slot) {
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
        let mut ps = Peers::new(130, 0);
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
}
