//! The in-memory index of chunks on disk: sizes, recency, pins and the quota
//! accounting. No I/O.
//!
//! Quota accounting: [`Index::committed`] is the bytes indexed, plus bytes reserved
//! by writes in progress ([`Index::reserve`], turned into an entry by
//! [`Index::commit`] or given back by [`Index::release`]), plus bytes of evicted
//! chunks whose files are still being deleted ([`Index::deleted`]). A write reserves
//! before it touches the disk and the check and the reservation happen under one
//! lock, so concurrent writers never take the store past its quota.
//!
//! Recency is a monotonically increasing tick per access; `lru` maps tick → id so the
//! least recently used chunk is the first key. Every operation is O(log n) except
//! [`Index::evict`], which also steps over pinned chunks at the cold end (pins are
//! few: one transfer's chunks at a time).

use std::collections::{BTreeMap, HashMap};

use shoal_proto::id::ChunkId;

use super::Usage;

#[derive(Debug, Clone, Copy)]
struct Entry {
    len: u64,
    tick: u64,
}

/// What the store believes is on disk. Callers keep the files in step.
#[derive(Debug, Default)]
pub(crate) struct Index {
    entries: HashMap<ChunkId, Entry>,
    lru: BTreeMap<u64, ChunkId>,
    /// Nesting pin counts; may name chunks that are not (yet) in `entries`.
    pins: HashMap<ChunkId, u32>,
    tick: u64,
    bytes: u64,
    /// Bytes reserved by writes in progress.
    reserved: u64,
    /// Bytes of evicted chunks whose files are not deleted yet.
    deleting: u64,
    /// The highest [`Index::committed`] ever granted by [`Index::reserve`].
    peak: u64,
}

impl Index {
    /// Records `id` (of `len` bytes) as the most recently used chunk. Returns false,
    /// and only touches it, if it was already present.
    pub(crate) fn insert(&mut self, id: ChunkId, len: u64) -> bool {
        if self.entries.contains_key(&id) {
            self.touch(&id);
            return false;
        }
        let tick = self.next_tick();
        self.entries.insert(id, Entry { len, tick });
        self.lru.insert(tick, id);
        self.bytes += len;
        true
    }

    /// Marks `id` as just used; returns whether it is present.
    pub(crate) fn touch(&mut self, id: &ChunkId) -> bool {
        let tick = self.next_tick();
        let Some(e) = self.entries.get_mut(id) else {
            return false;
        };
        self.lru.remove(&e.tick);
        e.tick = tick;
        self.lru.insert(tick, *id);
        true
    }

    /// Forgets `id`; returns its length if it was present.
    pub(crate) fn remove(&mut self, id: &ChunkId) -> Option<u64> {
        let e = self.entries.remove(id)?;
        self.lru.remove(&e.tick);
        self.bytes -= e.len;
        Some(e.len)
    }

    pub(crate) fn contains(&self, id: &ChunkId) -> bool {
        self.entries.contains_key(id)
    }

    pub(crate) fn len_of(&self, id: &ChunkId) -> Option<u64> {
        self.entries.get(id).map(|e| e.len)
    }

    pub(crate) fn usage(&self) -> Usage {
        Usage {
            bytes: self.bytes,
            chunks: self.entries.len() as u64,
        }
    }

    /// Ids from least to most recently used.
    pub(crate) fn ids(&self) -> Vec<ChunkId> {
        self.lru.values().copied().collect()
    }

    pub(crate) fn pin(&mut self, id: ChunkId) {
        *self.pins.entry(id).or_insert(0) += 1;
    }

    pub(crate) fn unpin(&mut self, id: &ChunkId) {
        if let Some(n) = self.pins.get_mut(id) {
            *n -= 1;
            if *n == 0 {
                self.pins.remove(id);
            }
        }
    }

    pub(crate) fn is_pinned(&self, id: &ChunkId) -> bool {
        self.pins.contains_key(id)
    }

    /// Indexed, reserved and still-being-deleted bytes: what counts against the quota.
    pub(crate) fn committed(&self) -> u64 {
        self.bytes + self.reserved + self.deleting
    }

    /// Bytes of chunk files on disk: indexed, or evicted and still being deleted.
    pub(crate) fn on_disk(&self) -> u64 {
        self.bytes + self.deleting
    }

    /// The highest committed figure a reservation ever reached.
    #[cfg(test)]
    pub(crate) fn peak(&self) -> u64 {
        self.peak
    }

    /// Reserves `len` bytes for a write if that keeps [`Index::committed`] within
    /// `limit`; returns whether it did.
    pub(crate) fn reserve(&mut self, len: u64, limit: u64) -> bool {
        let after = self.committed().saturating_add(len);
        if after > limit {
            return false;
        }
        self.reserved += len;
        self.peak = self.peak.max(after);
        true
    }

    /// Gives back a reservation of `len` bytes (the write failed).
    pub(crate) fn release(&mut self, len: u64) {
        self.reserved = self.reserved.saturating_sub(len);
    }

    /// Turns a reservation of `len` bytes into the entry of `id` (the write
    /// succeeded). A chunk written twice at once is counted once.
    pub(crate) fn commit(&mut self, id: ChunkId, len: u64) {
        self.release(len);
        self.insert(id, len);
    }

    /// The files of evicted chunks of `len` bytes in all are gone.
    pub(crate) fn deleted(&mut self, len: u64) {
        self.deleting = self.deleting.saturating_sub(len);
    }

    /// Removes least recently used, unpinned chunks until [`Index::committed`] is at
    /// most `target` (or only pinned chunks are left). Returns the removed ids and
    /// their total length, which counts as "deleting" until the caller has deleted
    /// the files and called [`Index::deleted`].
    pub(crate) fn evict(&mut self, target: u64) -> (Vec<ChunkId>, u64) {
        let mut victims = Vec::new();
        let mut committed = self.committed();
        let mut freed = 0;
        for id in self.lru.values() {
            if committed <= target {
                break;
            }
            if self.is_pinned(id) {
                continue;
            }
            if let Some(e) = self.entries.get(id) {
                committed -= e.len;
                freed += e.len;
                victims.push(*id);
            }
        }
        for id in &victims {
            self.remove(id);
        }
        self.deleting += freed;
        (victims, freed)
    }

    fn next_tick(&mut self) -> u64 {
        self.tick += 1;
        self.tick
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    fn id(n: u8) -> ChunkId {
        ChunkId::of(&[n])
    }

    #[test]
    fn evicts_least_recent_unpinned_first() {
        let mut ix = Index::default();
        for n in 0..5 {
            assert!(ix.insert(id(n), 10));
        }
        assert!(!ix.insert(id(0), 10), "re-insert only touches");
        ix.touch(&id(1));
        ix.pin(id(2));
        ix.pin(id(2));
        ix.unpin(&id(2));
        // Order now (cold → hot): 2 (pinned), 3, 4, 0, 1.
        assert_eq!(ix.evict(25), (vec![id(3), id(4), id(0)], 30));
        ix.deleted(30);
        assert_eq!(
            ix.usage(),
            Usage {
                bytes: 20,
                chunks: 2
            }
        );
        assert!(ix.contains(&id(2)) && ix.contains(&id(1)));
        ix.unpin(&id(2));
        assert!(!ix.is_pinned(&id(2)));
        assert_eq!(ix.evict(0), (vec![id(2), id(1)], 20));
        assert_eq!(ix.usage(), Usage::default());
        assert_eq!(ix.committed(), 20, "deleting until the files are gone");
        ix.deleted(20);
        assert_eq!(ix.committed(), 0);
    }

    #[test]
    fn reservations_count_against_the_limit() {
        let mut ix = Index::default();
        assert!(ix.reserve(10, 25));
        assert!(ix.reserve(10, 25));
        assert!(!ix.reserve(10, 25), "30 > 25");
        ix.commit(id(0), 10);
        ix.release(10);
        assert_eq!(ix.committed(), 10);
        assert!(ix.reserve(10, 25));
        ix.commit(id(0), 10); // the same chunk again: counted once
        assert_eq!((ix.committed(), ix.usage().chunks), (10, 1));
        // Evicted bytes still count until their files are deleted.
        assert_eq!(ix.evict(0), (vec![id(0)], 10));
        assert!(!ix.reserve(20, 25));
        ix.deleted(10);
        assert!(ix.reserve(20, 25));
        assert_eq!(ix.peak(), 20);
    }

    #[test]
    fn all_pinned_evicts_nothing() {
        let mut ix = Index::default();
        ix.insert(id(0), 10);
        ix.pin(id(0));
        assert!(ix.evict(0).0.is_empty());
        assert_eq!(ix.remove(&id(0)), Some(10));
        assert_eq!(ix.remove(&id(0)), None);
    }
}
