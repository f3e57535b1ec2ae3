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
}

/// All peers ever seen by this download, addressed by a stable slot number.
#[derive(Debug)]
pub(super) struct Peers {
    list: Vec<Peer>,
    slots: HashMap<PeerId, usize>,
    salt: u64,
    /// Active holders per chunk.
    holders: Vec<u32>,
    /// Who holds what, one bitmap of slots per chunk, flat: chunk `i`'s words are
    /// `have[i * stride..(i + 1) * stride]`, bit `s % 64` of word `s / 64` set when
    /// slot `s` holds it. Per chunk rather than per peer, so that "does a ready peer
    /// hold chunk `i`" and "which ready peers hold it" are word-wise ANDs with `ready`,
    /// not a walk over peers.
    have: Vec<u64>,
    /// Words per chunk in `have` (room for `stride × 64` slots; doubles as needed).
    stride: usize,
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
            have: Vec::new(),
            stride: 0,
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
    #[cfg(test)]
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

    /// Whether some peer is [`Peer::ready`]. O(slots / 64).
    pub fn any_ready(&mut self) -> bool {
        self.settle();
        self.ready.iter().any(|&w| w != 0)
    }

    /// Whether `slot` holds chunk `index` (false for either out of range).
    #[cfg(test)]
    pub fn holds(&self, slot: usize, index: usize) -> bool {
        self.col(index)
            .get(slot / 64)
            .is_some_and(|w| w & (1 << (slot % 64)) != 0)
    }

    /// Chunk `index`'s bitmap of holder slots (empty out of range).
    fn col(&self, index: usize) -> &[u64] {
        let from = index.saturating_mul(self.stride);
        self.have
            .get(from..from.saturating_add(self.stride))
            .unwrap_or(&[])
    }

    /// Sets `out` to the chunks of `mask` some [`Peer::ready`] peer holds: bit `i % 64`
    /// of word `i / 64` is set when chunk `i` is in `mask` and held by a ready peer.
    /// O(chunks of `mask` × slots / 64), whatever the number of ready peers. The ready
    /// set must be settled ([`Peers::any_ready`] or [`Peers::ready_into`] first).
    pub fn ready_holders_into(&self, mask: &[u64], out: &mut Vec<u64>) {
        out.clear();
        out.resize(self.holders.len().div_ceil(64), 0);
        for (w, &m) in mask.iter().enumerate() {
            let mut bits = m;
            while bits != 0 {
                let i = w * 64 + bits.trailing_zeros() as usize;
                bits &= bits - 1;
                let held = self.col(i).iter().zip(&self.ready).any(|(h, r)| h & r != 0);
                if held && let Some(o) = out.get_mut(w) {
                    *o |= 1 << (i % 64);
                }
            }
        }
    }

    /// The [`Peer::ready`] peers holding chunk `index`, in slot order. O(slots / 64 +
    /// those peers). The ready set must be settled.
    pub fn ready_holders(&self, index: usize) -> impl Iterator<Item = (usize, &Peer)> {
        self.col(index)
            .iter()
            .zip(&self.ready)
            .enumerate()
            .flat_map(|(w, (h, r))| {
                let mut bits = h & r;
                std::iter::from_fn(move || {
                    if bits == 0 {
                        return None;
                    }
                    let s = w * 64 + bits.trailing_zeros() as usize;
                    bits &= bits - 1;
                    Some(s)
                })
            })
            .filter_map(|s| self.list.get(s).map(|p| (s, p)))
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
        });
        let words = self.list.len().div_ceil(64);
        if words > self.stride {
            self.grow(words.max(2 * self.stride));
        }
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
        if self
            .list
            .get(slot)
            .is_some_and(|p| p.status == PeerStatus::Active)
            && let Some(w) = self.have.get_mut(index * self.stride + slot / 64)
            && *w & (1 << (slot % 64)) == 0
        {
            // `stride` covers every slot of the list.
            *w |= 1 << (slot % 64);
            *count += 1;
        }
        true
    }

    /// Forgets that `slot` holds `index`.
    pub fn remove(&mut self, slot: usize, index: usize) {
        if slot >= self.list.len() || index >= self.holders.len() {
            return;
        }
        if let Some(w) = self.have.get_mut(index * self.stride + slot / 64)
            && *w & (1 << (slot % 64)) != 0
        {
            *w &= !(1 << (slot % 64));
            if let Some(c) = self.holders.get_mut(index) {
                *c = c.saturating_sub(1);
            }
        }
    }

    /// Forgets everything `slot` holds.
    pub fn clear(&mut self, slot: usize) {
        if slot >= self.list.len() {
            return;
        }
        let (word, bit) = (slot / 64, 1 << (slot % 64));
        for (i, c) in self.holders.iter_mut().enumerate() {
            if let Some(w) = self.have.get_mut(i * self.stride + word)
                && *w & bit != 0
            {
                *w &= !bit;
                *c = c.saturating_sub(1);
            }
        }
    }

    /// Re-lays `have` out with `stride` words per chunk (larger than now).
    fn grow(&mut self, stride: usize) {
        let chunks = self.holders.len();
        let mut have = vec![0; chunks * stride];
        if self.stride > 0 {
            for (new, old) in have
                .chunks_exact_mut(stride)
                .zip(self.have.chunks_exact(self.stride))
            {
                new[..self.stride].copy_from_slice(old);
            }
        }
        self.have = have;
        self.stride = stride;
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
    fn ready_holders_cover_every_word_of_ready_slots_only() {
        let mut ps = Peers::new(130, 0, 4);
        // 70 peers, so the slot bitmaps take two words and grow once.
        let slots: Vec<usize> = (0..70)
            .map(|k| ps.upsert(pid(&format!("p{k}")), Proximity::SameZone, 1))
            .collect();
        let (a, b, c, late) = (slots[0], slots[1], slots[2], slots[69]);
        for (slot, i) in [(a, 0), (a, 129), (b, 64), (c, 5), (late, 7)] {
            assert!(ps.add(slot, i));
        }
        assert!(ps.holds(a, 129) && ps.holds(late, 7) && !ps.holds(late, 0));
        assert!(ps.any_ready());
        let all = [u64::MAX; 3];
        let mut out = vec![u64::MAX; 7];
        ps.ready_holders_into(&all, &mut out);
        assert_eq!(out, [1 << 7 | 1 << 5 | 1, 1, 1 << 1]);
        // Within a mask.
        ps.ready_holders_into(&[1 << 5 | 1, 0, 0], &mut out);
        assert_eq!(out, [1 << 5 | 1, 0, 0]);
        ps.ready_holders_into(&[0, 0, 0], &mut out);
        assert_eq!(out, [0, 0, 0]);
        // A peer that is not ready holds nothing for the pass.
        if let Some(p) = ps.get_mut(a) {
            p.inflight = 1;
        }
        ps.settle();
        ps.ready_holders_into(&all, &mut out);
        assert_eq!(out, [1 << 7 | 1 << 5, 1, 0]);
        let seven: Vec<usize> = ps.ready_holders(7).map(|(s, _)| s).collect();
        assert_eq!(seven, [late]);
        assert_eq!(ps.ready_holders(0).count(), 0);
        assert_eq!(ps.ready_holders(999).count(), 0);
        // Clearing a slot forgets its holdings and counts.
        ps.clear(late);
        assert!(!ps.holds(late, 7));
        assert_eq!(ps.holders(7), 0);
    }
}
