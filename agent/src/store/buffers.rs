//! Reused buffers for chunks read from disk.
//!
//! Every chunk read from disk needs a buffer of its length, which lives until its
//! bytes are sent (or the memory cache drops them). Allocated fresh per chunk, a 1 MiB
//! buffer cost 256 page faults and zeroed pages and then an `munmap` (glibc serves such
//! sizes with `mmap`): 5-21 % of the agent's CPU on disk hits. jemalloc as the global
//! allocator did not help: it returned the freed extents to the kernel and faulted
//! them in again (page faults rose from 7 % to 12 % of the agent's samples), see
//! docs/benchmarks.md. Here a buffer goes back to a bounded free list when the last
//! [`Bytes`] of it is dropped, and the next read of a chunk of about its length takes
//! it: no allocation, no page faults and no zeroing in steady state.
//!
//! Bounds: at most [`KEEP_BYTES`] of idle buffers are kept; a buffer is reused only
//! for a chunk at least 7/8 of its length, so a short chunk held by the memory cache
//! never pins a long buffer. More concurrent reads than the free list holds allocate.

use std::sync::{Arc, Mutex, PoisonError};

use bytes::Bytes;

/// Idle buffer bytes kept for reuse (16 chunks of 1 MiB).
const KEEP_BYTES: usize = 16 << 20;

/// A bounded free list of chunk read buffers. Cheap to clone.
#[derive(Debug, Clone, Default)]
pub struct Buffers {
    free: Arc<Mutex<Free>>,
}

#[derive(Debug, Default)]
struct Free {
    bufs: Vec<Vec<u8>>,
    bytes: usize,
}

/// A buffer on loan: its first `len` bytes are the chunk; back to the free list on drop.
struct Loan {
    buf: Vec<u8>,
    len: usize,
    home: Buffers,
}

impl Buffers {
    /// A buffer of at least `len` initialized bytes (contents unspecified): the most
    /// recently returned one that fits, else a new one.
    pub fn take(&self, len: usize) -> Vec<u8> {
        let fits = |b: &Vec<u8>| b.len() >= len && b.len() - len <= b.len() / 8;
        let reused = {
            let mut f = self.free.lock().unwrap_or_else(PoisonError::into_inner);
            match f.bufs.iter().rposition(fits) {
                Some(i) => {
                    let b = f.bufs.swap_remove(i);
                    f.bytes -= b.len();
                    Some(b)
                }
                None => None,
            }
        };
        reused.unwrap_or_else(|| vec![0; len])
    }

    /// The first `len` bytes of `buf` as [`Bytes`]; `buf` comes back to this free
    /// list when the last clone is dropped.
    pub fn freeze(&self, buf: Vec<u8>, len: usize) -> Bytes {
        let len = len.min(buf.len());
        Bytes::from_owner(Loan {
            buf,
            len,
            home: self.clone(),
        })
    }

    fn give(&self, buf: Vec<u8>) {
        let mut f = self.free.lock().unwrap_or_else(PoisonError::into_inner);
        if f.bytes + buf.len() <= KEEP_BYTES {
            f.bytes += buf.len();
            f.bufs.push(buf);
        }
    }

    #[cfg(test)]
    pub(crate) fn idle(&self) -> (usize, usize) {
        let f = self.free.lock().unwrap_or_else(PoisonError::into_inner);
        (f.bufs.len(), f.bytes)
    }
}

impl AsRef<[u8]> for Loan {
    fn as_ref(&self) -> &[u8] {
        &self.buf[..self.len]
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
}
