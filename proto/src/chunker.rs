//! Splitting a byte stream into fixed-size chunks and naming each by its BLAKE3.
//!
//! The chunker never copies when input arrives in pieces that are already chunk-aligned
//! or larger than a chunk: it slices the incoming [`Bytes`]. It copies only to join
//! pieces that straddle a chunk boundary, into a buffer from its [`Buffers`]: a new
//! allocation per chunk ([`Fresh`]), or one reused (the agent's pool, which also
//! aligns it for `O_DIRECT` writes).

use bytes::{Bytes, BytesMut};

use crate::id::ChunkId;

/// One complete chunk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chunk {
    /// Position in the object (0-based).
    pub index: usize,
    pub id: ChunkId,
    pub bytes: Bytes,
}

/// Where a [`Chunker`] joins the pieces of a chunk, and how the joined bytes become
/// [`Bytes`].
pub trait Buffers {
    /// A chunk being joined.
    type Buf;
    /// An empty buffer for at most `len` bytes.
    fn take(&mut self, len: usize) -> Self::Buf;
    /// Appends `data` to `buf` (never past the `len` it was taken for).
    fn append(&mut self, buf: &mut Self::Buf, data: &[u8]);
    /// The bytes appended to `buf`.
    fn freeze(&mut self, buf: Self::Buf) -> Bytes;
}

/// A new allocation per joined chunk.
#[derive(Debug, Clone, Copy, Default)]
pub struct Fresh;

impl Buffers for Fresh {
    type Buf = BytesMut;

    fn take(&mut self, len: usize) -> BytesMut {
        BytesMut::with_capacity(len)
    }

    fn append(&mut self, buf: &mut BytesMut, data: &[u8]) {
        buf.extend_from_slice(data);
    }

    fn freeze(&mut self, buf: BytesMut) -> Bytes {
        buf.freeze()
    }
}

/// Accumulates a stream into chunks of `chunk_size` bytes (the last may be shorter).
#[derive(Debug)]
pub struct Chunker<B: Buffers = Fresh> {
    chunk_size: usize,
    buffers: B,
    /// The chunk being joined and how many bytes it has.
    buf: Option<(B::Buf, usize)>,
    next_index: usize,
    total: u64,
}

impl Chunker {
    /// `chunk_size` must be non-zero (see [`crate::manifest::Layout::new`] for bounds).
    pub fn new(chunk_size: u32) -> Self {
        Self::with_buffers(chunk_size, Fresh)
    }
}

impl<B: Buffers> Chunker<B> {
    /// As [`Chunker::new`], joining pieces in buffers from `buffers`.
    pub fn with_buffers(chunk_size: u32, buffers: B) -> Self {
        Self {
            chunk_size: (chunk_size as usize).max(1),
            buffers,
            buf: None,
            next_index: 0,
            total: 0,
        }
    }

    /// Bytes pushed so far.
    pub fn total(&self) -> u64 {
        self.total
    }

    /// Feeds the next piece of the stream; returns the chunks it completed, in order.
    pub fn push(&mut self, data: Bytes) -> Vec<Chunk> {
        self.split(data).into_iter().map(seal).collect()
    }

    /// Ends the stream; returns the final short chunk, if any.
    pub fn finish(self) -> Option<Chunk> {
        self.finish_split().map(seal)
    }

    /// As [`Chunker::push`], but the chunks are not hashed: `(index, bytes)`, for a
    /// caller that hashes them elsewhere (another thread) with [`seal`].
    pub fn split(&mut self, mut data: Bytes) -> Vec<(usize, Bytes)> {
        self.total += data.len() as u64;
        let mut out = Vec::new();
        if let Some((mut buf, have)) = self.buf.take() {
            let take = (self.chunk_size - have).min(data.len());
            self.buffers.append(&mut buf, &data.split_to(take));
            if have + take == self.chunk_size {
                let full = self.buffers.freeze(buf);
                out.push(self.next(full));
            } else {
                self.buf = Some((buf, have + take));
            }
        }
        while data.len() >= self.chunk_size {
            let piece = data.split_to(self.chunk_size);
            out.push(self.next(piece));
        }
        if !data.is_empty() {
            let mut buf = self.buffers.take(self.chunk_size);
            self.buffers.append(&mut buf, &data);
            self.buf = Some((buf, data.len()));
        }
        out
    }

    /// As [`Chunker::finish`], not hashed.
    pub fn finish_split(mut self) -> Option<(usize, Bytes)> {
        let (buf, _) = self.buf.take()?;
        let rest = self.buffers.freeze(buf);
        Some(self.next(rest))
    }

    fn next(&mut self, bytes: Bytes) -> (usize, Bytes) {
        let i = self.next_index;
        self.next_index += 1;
        (i, bytes)
    }
}

/// Names chunk `index` of `bytes` by its BLAKE3.
pub fn seal((index, bytes): (usize, Bytes)) -> Chunk {
    Chunk {
        index,
        id: ChunkId::of(&bytes),
        bytes,
    }
}

/// Chunks a whole buffer at once (tests, benchmarks, small objects).
pub fn chunk_all(data: Bytes, chunk_size: u32) -> Vec<Chunk> {
    let mut c = Chunker::new(chunk_size);
    let mut out = c.push(data);
    out.extend(c.finish());
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn any_split_gives_same_chunks(data in proptest::collection::vec(any::<u8>(), 0..5000), cuts in proptest::collection::vec(0usize..5000, 0..10), cs in 1u32..700) {
            let data = Bytes::from(data);
            let whole = chunk_all(data.clone(), cs);
            let mut cuts: Vec<usize> = cuts.into_iter().map(|c| c % (data.len() + 1)).collect();
            cuts.sort_unstable();
            let mut c = Chunker::new(cs);
            let mut got = Vec::new();
            let mut prev = 0;
            for cut in cuts.into_iter().chain([data.len()]) {
                got.extend(c.push(data.slice(prev..cut)));
                prev = cut;
            }
            got.extend(c.finish());
            prop_assert_eq!(&got, &whole);
            let joined: Vec<u8> = got.iter().flat_map(|c| c.bytes.iter().copied()).collect();
            prop_assert_eq!(&joined[..], &data[..]);
            for (i, c) in got.iter().enumerate() {
                prop_assert_eq!(c.index, i);
                prop_assert!(c.id.verifies(&c.bytes));
                prop_assert!(c.bytes.len() <= cs as usize);
            }
        }
    }
}
