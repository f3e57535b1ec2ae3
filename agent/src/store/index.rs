//! The in-memory index of chunks on disk: sizes, recency and pins. No I/O.
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

    /// Removes least recently used, unpinned chunks until at most `target` bytes
    /// remain (or only pinned chunks are left). Returns the removed ids; the caller
    /// deletes their files.
    pub(crate) fn evict(&mut self, target: u64) -> Vec<ChunkId> {
        let mut victims = Vec::new();
        let mut bytes = self.bytes;
        for id in self.lru.values() {
            if bytes <= target {
                break;
            }
            if self.is_pinned(id) {
                continue;
            }
            if let Some(e) = self.entries.get(id) {
                bytes -= e.len;
                victims.push(*id);
            }
        }
        for id in &victims {
            self.remove(id);
        }
        victims
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
        assert_eq!(ix.evict(25), vec![id(3), id(4), id(0)]);
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
        assert_eq!(ix.evict(0), vec![id(2), id(1)]);
        assert_eq!(ix.usage(), Usage::default());
    }

    #[test]
    fn all_pinned_evicts_nothing() {
        let mut ix = Index::default();
        ix.insert(id(0), 10);
        ix.pin(id(0));
        assert!(ix.evict(0).is_empty());
        assert_eq!(ix.remove(&id(0)), Some(10));
        assert_eq!(ix.remove(&id(0)), None);
    }
}
