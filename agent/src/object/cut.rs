//! Cut-through for plain origin fills: the origin's bytes past the last completed
//! chunk, held once per fill so that readers waiting on a chunk the origin is still
//! sending get its bytes as they arrive, before the chunk is complete and hashed.
//!
//! A plain fill's bytes are the origin's response: its chunk ids are hashed from
//! these very bytes, so there is nothing to verify them against, and a reader that
//! sends them early sends exactly what it would have sent from the completed chunk.
//! What is held ([`Cut`]) is the origin's frames (the [`Bytes`] handles hyper gave the
//! fill, no copies) of the chunk the chunker is joining, and the joined buffers of the
//! chunks being hashed (the same buffers the fill completes them with). A chunk's
//! bytes are dropped here once the fill completes it: readers take it from the fill.
//! So a fill holds at most one chunk of origin frames beyond what it held before,
//! however many readers follow it.
//!
//! Bytes at or past the fill's *limit* are never held: for an object with a digest
//! checked at the end (registry blobs, apt `by-hash`) that is the start of its last
//! chunk, which is released only after the check, as before; for any other object it
//! is its last byte, released once the object is recorded (a client that saw its last
//! byte finds it cached).
//!
//! Followers are woken on their own channel, only while one is waiting, and at most
//! once per [`COALESCE`] bytes while the origin keeps sending; the fill announces the
//! rest when the origin pauses ([`Cut::announce`]). So a fast origin with a reader
//! caught up costs a wake-up per origin pause or per 128 KiB, not per frame, and
//! readers waiting on later chunks (read-ahead) are not woken by it.
//!
//! The frames are held from the start of the chunk being joined whether or not a
//! reader follows (one may join late), so hyper's read buffers they point into are
//! not reused until the chunk is joined.
//!
//! Cannot: serve a swarm fill's chunk early (its chunks are checked against ids
//! from the tracker, so they are released only once complete); serve a reader from
//! here once its chunk is complete (it reads the chunk from the fill as before).

use std::collections::VecDeque;

use bytes::Bytes;

/// Bytes past the last announcement after which the fill wakes followers even while
/// the origin keeps sending.
pub(crate) const COALESCE: u64 = 128 * 1024;

/// See the module docs. Offsets are the object's.
#[derive(Debug, Default)]
pub(crate) struct Cut {
    /// Contiguous pieces in order, each with the offset of its first byte.
    pieces: VecDeque<(u64, Bytes)>,
    /// Nothing at or past this offset is held (0: cut-through off).
    limit: u64,
    /// Everything before this offset is in a completed chunk (or not wanted).
    floor: u64,
    /// Readers waiting for bytes here.
    pub(crate) followers: usize,
    /// The end of the held bytes when followers were last woken.
    announced: u64,
}

impl Cut {
    /// Holds bytes before `limit` from now on.
    pub(crate) fn open(&mut self, limit: u64) {
        self.limit = limit;
    }

    /// Just past the last byte held (the floor when nothing is).
    pub(crate) fn end(&self) -> u64 {
        self.pieces
            .back()
            .map_or(self.floor, |(at, b)| at + b.len() as u64)
    }

    /// The origin's next bytes, at offset `at`: held up to the limit. Whether the
    /// followers should be woken now (see [`COALESCE`]).
    pub(crate) fn push(&mut self, at: u64, data: Bytes) -> bool {
        let lo = at.max(self.floor);
        let hi = (at + data.len() as u64).min(self.limit);
        if lo >= hi {
            return false;
        }
        if lo != self.end() {
            // Not contiguous with what is held (cannot happen: the fill pushes its
            // stream in order); start again from here.
            self.pieces.clear();
            self.announced = lo;
        }
        self.pieces
            .push_back((lo, data.slice((lo - at) as usize..(hi - at) as usize)));
        self.followers > 0 && self.end() - self.announced >= COALESCE
    }

    /// The chunk at `at` was joined into `joined`: its frames are replaced by it (the
    /// same bytes in one buffer that lives anyway while the chunk is hashed).
    pub(crate) fn joined(&mut self, at: u64, joined: &Bytes) {
        let end = at + joined.len() as u64;
        let lo = at.max(self.floor);
        let hi = end.min(self.limit);
        if lo >= hi {
            return;
        }
        let mut before = VecDeque::new();
        let mut after = VecDeque::new();
        for (p, b) in self.pieces.drain(..) {
            let q = p + b.len() as u64;
            if p < lo {
                before.push_back((p, b.slice(..(q.min(lo) - p) as usize)));
            }
            if q > end {
                let from = p.max(end);
                after.push_back((from, b.slice((from - p) as usize..)));
            }
        }
        if before.back().is_some_and(|(p, b)| p + b.len() as u64 != lo) {
            // Not contiguous with the joined chunk (cannot happen: frames are pushed
            // before they are joined); what is before it is dropped.
            before.clear();
        }
        before.push_back((lo, joined.slice((lo - at) as usize..(hi - at) as usize)));
        if hi == end {
            before.extend(after);
        }
        self.pieces = before;
    }

    /// Everything before `offset` is complete in the fill: no longer held.
    pub(crate) fn trim(&mut self, offset: u64) {
        self.floor = self.floor.max(offset);
        while let Some((p, b)) = self.pieces.front_mut() {
            let q = *p + b.len() as u64;
            if q <= offset {
                self.pieces.pop_front();
            } else {
                if *p < offset {
                    *b = b.slice((offset - *p) as usize..);
                    *p = offset;
                }
                break;
            }
        }
    }

    /// Drops everything and holds nothing more (the fill failed or ended).
    pub(crate) fn close(&mut self) {
        self.pieces.clear();
        self.limit = 0;
    }

    /// The end of the held bytes when followers were last woken.
    pub(crate) fn announced(&self) -> u64 {
        self.announced
    }

    /// Whether bytes at `pos` can ever be held (before the limit).
    pub(crate) fn covers(&self, pos: u64) -> bool {
        pos < self.limit
    }

    /// The held bytes from `pos` up to `upto`, as slices of what is held (empty if
    /// none are held at `pos`).
    pub(crate) fn from(&self, pos: u64, upto: u64) -> Vec<Bytes> {
        let mut out = Vec::new();
        for (p, b) in &self.pieces {
            let q = p + b.len() as u64;
            if q <= pos || *p >= upto {
                continue;
            }
            if *p > pos && out.is_empty() {
                // A gap at `pos`: nothing usable.
                return out;
            }
            let lo = pos.max(*p) - p;
            let hi = upto.min(q) - p;
            out.push(b.slice(lo as usize..hi as usize));
        }
        out
    }

    /// Whether followers wait for bytes not yet announced; if so, they count as
    /// announced from now (the caller wakes them).
    pub(crate) fn announce(&mut self) -> bool {
        let end = self.end();
        if self.followers > 0 && end > self.announced {
            self.announced = end;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn bytes(n: usize, seed: u8) -> Bytes {
        (0..n).map(|i| (i as u8).wrapping_mul(7) ^ seed).collect()
    }

    fn joined(v: &[Bytes]) -> Vec<u8> {
        v.iter().flat_map(|b| b.iter().copied()).collect()
    }

    #[test]
    fn frames_are_served_from_any_offset_then_replaced_and_trimmed() {
        let data = bytes(300, 1);
        let mut c = Cut::default();
        assert!(!c.push(0, data.slice(..10)), "closed: nothing held");
        assert!(c.from(0, 300).is_empty());
        c.open(299);
        c.push(0, data.slice(..10));
        c.push(10, data.slice(10..150));
        assert_eq!(joined(&c.from(5, 300)), &data[5..150]);
        assert_eq!(joined(&c.from(5, 12)), &data[5..12]);
        assert!(c.from(150, 300).is_empty());
        // Chunk 0 (0..100) joined into one buffer: the same bytes, fewer pieces.
        let chunk = Bytes::copy_from_slice(&data[..100]);
        c.joined(0, &chunk);
        assert_eq!(c.pieces.len(), 2);
        assert_eq!(joined(&c.from(0, 300)), &data[..150]);
        assert_eq!(c.from(0, 1)[0].as_ptr(), chunk.as_ptr());
        // Completed: the fill has it, only chunk 1's frames stay.
        c.trim(100);
        assert_eq!(joined(&c.from(100, 300)), &data[100..150]);
        assert!(c.from(99, 300).is_empty());
        // The limit holds the last byte back.
        c.push(150, data.slice(150..300));
        assert_eq!(c.end(), 299);
        assert_eq!(joined(&c.from(120, 300)), &data[120..299]);
        c.close();
        assert!(c.from(120, 300).is_empty());
    }

    #[test]
    fn wakes_are_coalesced_and_only_for_followers() {
        let big = bytes(COALESCE as usize, 2);
        let mut c = Cut::default();
        c.open(u64::MAX);
        assert!(!c.push(0, big.clone()), "no follower: no wake");
        assert!(!c.announce());
        c.followers = 1;
        assert!(c.announce(), "a follower arrived: the held bytes are news");
        assert!(!c.push(COALESCE, big.slice(..100)), "100 bytes: coalesced");
        assert!(
            c.push(COALESCE + 100, big.clone()),
            "a coalescing unit: wake"
        );
        assert!(c.announce(), "the rest at a pause");
        assert!(!c.announce());
    }

    #[test]
    fn a_frame_across_chunks_is_split_by_the_join() {
        let data = bytes(250, 3);
        let mut c = Cut::default();
        c.open(1000);
        c.push(0, data.slice(..80));
        // One frame crossing the boundaries at 100 and 200.
        c.push(80, data.slice(80..250));
        let c0 = Bytes::copy_from_slice(&data[..100]);
        let c1 = data.slice(100..200);
        c.joined(0, &c0);
        c.joined(100, &c1);
        assert_eq!(joined(&c.from(0, 1000)), &data[..]);
        c.trim(100);
        assert_eq!(joined(&c.from(100, 1000)), &data[100..]);
        c.trim(200);
        assert_eq!(joined(&c.from(200, 1000)), &data[200..]);
        assert_eq!(c.pieces.len(), 1);
    }
}
