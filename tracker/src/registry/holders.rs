//! One object's holders: a vector with an index by [`Slot`], and a count of the
//! complete ones.
//!
//! The vector makes a window of the table start anywhere in O(1) ([`Holders::window`])
//! and the count answers "does anyone hold the whole object" without a scan; both were
//! O(holders) walks of a hash map per sync before. Removal swaps the last holder into
//! the gap, so the order is insertion order perturbed by removals: a window is a
//! stable sample of the table, not a random one. Cannot: iterate in any particular
//! order (proximity, load) — ranking is the caller's.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::time::Instant;

use shoal_proto::tracker::ChunkBitmap;

use super::peers::Slot;

/// One agent's holding of one object.
#[derive(Debug)]
pub(super) struct Holding {
    pub slot: Slot,
    /// `have` at 64 chunks spread over the object ([`Holders::sample`]), inline: a
    /// window's eligibility checks mostly end here, without a cache miss on the
    /// bitmap's heap allocation (that miss was 15 % of the tracker's CPU).
    pub sample: u64,
    /// Empty when `complete` (a 1 TiB object would otherwise cost 8 MiB per seed).
    pub have: ChunkBitmap,
    pub complete: bool,
    pub last_seen: Instant,
}

/// The bitmap of a complete holding.
pub(super) static EMPTY: ChunkBitmap = ChunkBitmap::new();

/// See the module docs.
#[derive(Debug)]
pub(super) struct Holders {
    /// The object's chunk count (for [`Holders::sample`]).
    count: u32,
    list: Vec<Holding>,
    /// Position of each slot's holding in `list`.
    pos: HashMap<Slot, usize, BuildHasherDefault<SlotHasher>>,
    /// Holdings in `list` with `complete` set.
    complete: usize,
}

/// What [`Holders::set`] changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Change {
    /// The holding lost a chunk it had (so the union of holdings may shrink).
    pub shrank: bool,
}

/// Hashes a [`Slot`] (one `u32`, handed out by the registry, never chosen by an
/// agent: no need for a keyed hash).
#[derive(Debug, Default)]
pub(super) struct SlotHasher(u64);

impl Holders {
    /// No holders of an object of `count` chunks.
    pub fn new(count: u32) -> Self {
        Self {
            count,
            list: Vec::new(),
            pos: HashMap::default(),
            complete: 0,
        }
    }

    /// Bit `j` says whether `have` holds chunk `j × count / 64` (chunk `j` for objects
    /// of at most 64 chunks, where the sample is the whole bitmap). A bit set in one
    /// holding's sample and clear in another's is a chunk the first has and the
    /// second lacks; the converse needs the bitmaps.
    pub fn sample(&self, have: &ChunkBitmap) -> u64 {
        let n = self.count.min(64);
        (0..n).fold(0, |s, j| {
            let chunk = if self.count <= 64 {
                j
            } else {
                // Below count: j < 64.
                (u64::from(j) * u64::from(self.count) / 64) as u32
            };
            s | (u64::from(have.contains(chunk)) << j)
        })
    }

    pub fn len(&self) -> usize {
        self.list.len()
    }

    pub fn get(&self, slot: Slot) -> Option<&Holding> {
        self.pos.get(&slot).map(|&i| &self.list[i])
    }

    /// Where `slot`'s holding is in the table: stable until a removal moves the last
    /// holding into a gap.
    pub fn position(&self, slot: Slot) -> Option<usize> {
        self.pos.get(&slot).copied()
    }

    /// Whether some holder holds every chunk.
    pub fn any_complete(&self) -> bool {
        self.complete > 0
    }

    pub fn iter(&self) -> std::slice::Iter<'_, Holding> {
        self.list.iter()
    }

    /// Every holding once, starting at position `start % len`, wrapping around.
    pub fn window(&self, start: usize) -> impl Iterator<Item = &Holding> {
        let start = if self.list.is_empty() {
            0
        } else {
            start % self.list.len()
        };
        self.list[start..].iter().chain(&self.list[..start])
    }

    /// Records `slot`'s holding (replacing any previous one). `have` is ignored when
    /// `complete`.
    pub fn set(&mut self, now: Instant, slot: Slot, have: &ChunkBitmap, complete: bool) -> Change {
        let have = if complete { &EMPTY } else { have };
        let sample = self.sample(have);
        if let Some(&i) = self.pos.get(&slot) {
            let h = &mut self.list[i];
            let shrank = !h.have.is_subset(have);
            // Most syncs repeat the last report: keep the allocation then.
            if h.have != *have {
                h.have = have.clone();
                h.sample = sample;
            }
            if h.complete != complete {
                if complete {
                    self.complete += 1;
                } else {
                    self.complete -= 1;
                }
                h.complete = complete;
            }
            h.last_seen = now;
            return Change { shrank };
        }
        self.pos.insert(slot, self.list.len());
        self.list.push(Holding {
            slot,
            sample,
            have: have.clone(),
            complete,
            last_seen: now,
        });
        self.complete += usize::from(complete);
        Change { shrank: false }
    }

    /// Forgets `slot`'s holding; whether it had one.
    pub fn remove(&mut self, slot: Slot) -> bool {
        let Some(i) = self.pos.remove(&slot) else {
            return false;
        };
        let gone = self.list.swap_remove(i);
        self.complete -= usize::from(gone.complete);
        if let Some(moved) = self.list.get(i) {
            self.pos.insert(moved.slot, i);
        }
        true
    }

    /// Keeps the holdings `keep` accepts; whether any was dropped.
    pub fn retain(&mut self, mut keep: impl FnMut(&Holding) -> bool) -> bool {
        let before = self.list.len();
        self.list.retain(|h| keep(h));
        if self.list.len() == before {
            return false;
        }
        self.pos.clear();
        self.pos
            .extend(self.list.iter().enumerate().map(|(i, h)| (h.slot, i)));
        self.complete = self.list.iter().filter(|h| h.complete).count();
        true
    }

    /// Checks the index and the count against the list (tests).
    #[cfg(test)]
    pub fn check(&self) {
        assert_eq!(
            self.pos.len(),
            self.list.len(),
            "one index entry per holding"
        );
        for (i, h) in self.list.iter().enumerate() {
            assert_eq!(self.pos.get(&h.slot), Some(&i), "index of {:?}", h.slot);
            assert!(!h.complete || h.have.is_empty(), "complete keeps no bitmap");
            assert_eq!(h.sample, self.sample(&h.have), "sample of {:?}", h.slot);
        }
        let complete = self.list.iter().filter(|h| h.complete).count();
        assert_eq!(self.complete, complete, "complete holders counted");
    }
}

impl Hasher for SlotHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0.rotate_left(8) ^ u64::from(b)).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        }
    }

    fn write_u32(&mut self, n: u32) {
        // Fibonacci hashing; the swiss table uses the top 7 bits as tags and the low
        // bits as the bucket, so fold the high half down.
        let h = (self.0 ^ u64::from(n)).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        self.0 = h ^ (h >> 32);
    }
}
