//! Splitting a byte stream into fixed-size chunks and naming each by its BLAKE3.
//!
//! The chunker never copies when input arrives in pieces that are already chunk-aligned
//! or larger than a chunk: it slices the incoming [`Bytes`]. It copies only to join
//! pieces that straddle a chunk boundary.

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

/// Accumulates a stream into chunks of `chunk_size` bytes (the last may be shorter).
#[derive(Debug)]
pub struct Chunker {
    chunk_size: usize,
    buf: BytesMut,
    next_index: usize,
    total: u64,
}

impl Chunker {
    /// `chunk_size` must be non-zero (see [`crate::manifest::Layout::new`] for bounds).
    pub fn new(chunk_size: u32) -> Self {
        let chunk_size = (chunk_size as usize).max(1);
        Self {
            chunk_size,
            buf: BytesMut::new(),
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
        if !self.buf.is_empty() {
            let need = self.chunk_size - self.buf.len();
            let take = need.min(data.len());
            self.buf.extend_from_slice(&data.split_to(take));
            if self.buf.len() == self.chunk_size {
                let full = std::mem::take(&mut self.buf).freeze();
                out.push(self.next(full));
            }
        }
        while data.len() >= self.chunk_size {
            let piece = data.split_to(self.chunk_size);
            out.push(self.next(piece));
        }
        if !data.is_empty() {
            if self.buf.capacity() < self.chunk_size {
                self.buf.reserve(self.chunk_size);
            }
            self.buf.extend_from_slice(&data);
        }
        out
    }

    /// As [`Chunker::finish`], not hashed.
    pub fn finish_split(mut self) -> Option<(usize, Bytes)> {
        if self.buf.is_empty() {
            return None;
        }
        let rest = std::mem::take(&mut self.buf).freeze();
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
