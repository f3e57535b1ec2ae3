//! Reused buffers for chunks: read from disk, or joined from an origin's frames by a
//! fill's chunker.
//!
//! Every chunk read from disk needs a buffer of its length, which lives until its
//! bytes are sent (or the memory cache drops them). Allocated fresh per chunk, a 1 MiB
//! buffer cost 256 page faults and zeroed pages and then an `munmap` (glibc serves such
//! sizes with `mmap`): 5-21 % of the agent's CPU on disk hits. jemalloc as the global
//! allocator did not help: it returned the freed extents to the kernel and faulted
//! them in again (page faults rose from 7 % to 12 % of the agent's samples), see
//! docs/benchmarks.md. Here a buffer goes back to a bounded free list when the last
//! [`Bytes`] of it is dropped, and the next chunk of about its length takes it: no
//! allocation, no page faults and no zeroing in steady state. A cold miss's chunks
//! are joined the same way ([`shoal_proto::chunker::Buffers`]), in buffers whose
//! bytes start at a [`ALIGN`]ed address, so the write-behind writes a full chunk with
//! `O_DIRECT` straight from it instead of copying it into an aligned bounce buffer.
//!
//! Bounds: at most [`KEEP_BYTES`] of idle buffers are kept; a buffer is reused only
//! for a chunk at least 7/8 of its capacity, so a short chunk held by the memory cache
//! never pins a long buffer. More concurrent chunks than the free list holds allocate.

use std::sync::{Arc, Mutex, PoisonError};

use bytes::Bytes;

/// Idle buffer bytes kept for reuse (16 chunks of 1 MiB).
const KEEP_BYTES: usize = 16 << 20;

/// Where a joined chunk's bytes start: covers 512-byte and 4 KiB logical blocks
/// (`O_DIRECT`).
pub(crate) const ALIGN: usize = 4096;

/// A bounded free list of chunk buffers. Cheap to clone.
#[derive(Debug, Clone, Default)]
pub struct Buffers {
    free: Arc<Mutex<Free>>,
}

#[derive(Debug, Default)]
struct Free {
    bufs: Vec<Vec<u8>>,
    /// Capacity of `bufs`, bytes.
    bytes: usize,
}

/// A chunk being joined ([`Buffers::take_joined`]): its bytes are `vec[start..]`.
#[derive(Debug)]
pub struct Joined {
    vec: Vec<u8>,
    start: usize,
}

/// A buffer on loan: `buf[start..start + len]` is the chunk; back to the free list on
/// drop.
struct Loan {
    buf: Vec<u8>,
    start: usize,
    len: usize,
    home: Buffers,
}

impl Buffers {
    /// A buffer of at least `len` initialized bytes (contents unspecified): the most
    /// recently returned one that fits, else a new one.
    pub fn take(&self, len: usize) -> Vec<u8> {
        match self.reuse(len) {
            Some(mut b) => {
                if b.len() < len {
                    b.resize(len, 0);
                }
                b
            }
            None => vec![0; len],
        }
    }

    /// The first `len` bytes of `buf` as [`Bytes`]; `buf` comes back to this free
    /// list when the last clone is dropped.
    pub fn freeze(&self, buf: Vec<u8>, len: usize) -> Bytes {
        let len = len.min(buf.len());
        self.lend(buf, 0, len)
    }

    /// An empty buffer for up to `len` bytes whose first byte will be at an
    /// [`ALIGN`]ed address.
    pub(crate) fn take_joined(&self, len: usize) -> Joined {
        let mut vec = self
            .reuse(len + ALIGN)
            .unwrap_or_else(|| Vec::with_capacity(len + ALIGN));
        vec.clear();
        // Zero-filled up to the aligned address; left out of the chunk.
        let start = vec.as_ptr().align_offset(ALIGN).min(ALIGN);
        vec.resize(start, 0);
        Joined { vec, start }
    }

    /// What was appended to `j`, as [`Bytes`].
    pub(crate) fn freeze_joined(&self, j: Joined) -> Bytes {
        let len = j.vec.len() - j.start;
        self.lend(j.vec, j.start, len)
    }

    fn lend(&self, buf: Vec<u8>, start: usize, len: usize) -> Bytes {
        Bytes::from_owner(Loan {
            buf,
            start,
            len,
            home: self.clone(),
        })
    }

    /// The most recently returned buffer whose capacity fits `len`.
    fn reuse(&self, len: usize) -> Option<Vec<u8>> {
        let fits = |b: &Vec<u8>| b.capacity() >= len && b.capacity() - len <= b.capacity() / 8;
        let mut f = self.free.lock().unwrap_or_else(PoisonError::into_inner);
        let i = f.bufs.iter().rposition(fits)?;
        let b = f.bufs.swap_remove(i);
        f.bytes -= b.capacity();
        Some(b)
    }

    fn give(&self, buf: Vec<u8>) {
        let mut f = self.free.lock().unwrap_or_else(PoisonError::into_inner);
        if f.bytes + buf.capacity() <= KEEP_BYTES {
            f.bytes += buf.capacity();
            f.bufs.push(buf);
        }
    }

    #[cfg(test)]
    pub(crate) fn idle(&self) -> (usize, usize) {
        let f = self.free.lock().unwrap_or_else(PoisonError::into_inner);
        (f.bufs.len(), f.bytes)
    }
}

/// The fill's chunker joins origin frames in these buffers (`object::origin_fill`).
impl shoal_proto::chunker::Buffers for Buffers {
    type Buf = Joined;

    fn take(&mut self, len: usize) -> Joined {
        self.take_joined(len)
    }

    fn append(&mut self, j: &mut Joined, data: &[u8]) {
        // Within the capacity taken (the chunker never passes `len`): no reallocation.
        j.vec.extend_from_slice(data);
    }

    fn freeze(&mut self, j: Joined) -> Bytes {
        self.freeze_joined(j)
    }
}

impl AsRef<[u8]> for Loan {
    fn as_ref(&self) -> &[u8] {
        &self.buf[self.start..self.start + self.len]
    }
}

impl Drop for Loan {
    fn drop(&mut self) {
        self.home.give(std::mem::take(&mut self.buf));
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn buffers_come_back_and_are_reused_within_bounds() {
        let p = Buffers::default();
        let mut a = p.take(1 << 20);
        a[..3].copy_from_slice(b"abc");
        let a_ptr = a.as_ptr();
        let b = p.freeze(a, 3);
        assert_eq!(&b[..], b"abc");
        let clone = b.slice(1..);
        drop(b);
        assert_eq!(p.idle(), (0, 0), "still lent while a clone lives");
        drop(clone);
        assert_eq!(p.idle(), (1, 1 << 20));
        // Too short for a 1 MiB buffer: a new one. Close enough: the same buffer.
        assert_eq!(p.take(1000).len(), 1000);
        let again = p.take((1 << 20) - 1000);
        assert_eq!(again.as_ptr(), a_ptr);
        assert_eq!(p.idle(), (0, 0));
        // The free list keeps at most KEEP_BYTES.
        let many: Vec<_> = (0..20).map(|_| p.freeze(p.take(1 << 20), 1)).collect();
        drop(many);
        assert_eq!(p.idle(), (16, KEEP_BYTES));
    }

    #[test]
    fn joined_chunks_start_aligned_and_their_buffers_come_back() {
        use shoal_proto::chunker::{Chunker, chunk_all};
        let p = Buffers::default();
        let data: Vec<u8> = (0..(3 << 20) + 5000u32).map(|i| (i % 253) as u8).collect();
        let data = Bytes::from(data);
        let mut c = Chunker::with_buffers(1 << 20, p.clone());
        let mut got = Vec::new();
        // Frames smaller than a chunk, straddling its boundaries: every chunk joined.
        for piece in data.chunks(300_001) {
            got.extend(c.push(Bytes::copy_from_slice(piece)));
        }
        got.extend(c.finish());
        assert_eq!(got, chunk_all(data.clone(), 1 << 20));
        for chunk in &got {
            assert_eq!(
                chunk.bytes.as_ptr() as usize % ALIGN,
                0,
                "chunk {}",
                chunk.index
            );
        }
        let ptrs: Vec<_> = got.iter().map(|c| c.bytes.as_ptr()).collect();
        drop(got);
        assert_eq!(p.idle().0, 4, "every joined buffer came back");
        // The next fill reuses them: no new allocation, still aligned.
        let mut c = Chunker::with_buffers(1 << 20, p.clone());
        let again = c
            .push(data.slice(..(1 << 20) - 1))
            .into_iter()
            .chain(c.push(data.slice((1 << 20) - 1..1 << 20)));
        let again: Vec<_> = again.collect();
        assert_eq!(again.len(), 1);
        assert!(ptrs.contains(&again[0].bytes.as_ptr()));
        assert_eq!(again[0].bytes, data.slice(..1 << 20));
    }
}
