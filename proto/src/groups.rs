//! Verifying a chunk in 64 KiB groups instead of whole: the chaining values of its
//! groups, and the root they make.
//!
//! A [`ChunkId`] is the BLAKE3 hash of the whole chunk, and BLAKE3 is a tree of
//! 1 KiB leaves. Every 64 KiB-aligned group of a chunk longer than one group is a
//! complete subtree of that tree (a subtree's left side is always the largest power
//! of two of leaves that leaves something on the right, so for more than 64 leaves it
//! is a multiple of 64), the trailing group too, however short. So the groups'
//! non-root chaining values ([`Groups::of`], one pass over the bytes) merge into the
//! chunk's hash ([`Groups::root`]), and once that root is checked against the id, a
//! group read again later is checked on its own against its value
//! ([`Groups::verifies`]): a reader holds 64 KiB, not the chunk, and still sends no
//! byte it has not checked. This is the outboard of bao with 64 KiB groups, one level
//! deep, kept in memory rather than stored.
//!
//! A chunk of at most one group has no interior: its group is checked against the id
//! itself.
//!
//! Pure computation, no I/O. Built on `blake3::hazmat` (the tree API meant for this);
//! `groups_merge_to_the_hash_of_the_whole` checks it against `blake3::hash`.

use blake3::hazmat::{
    ChainingValue, HasherExt, Mode, merge_subtrees_non_root, merge_subtrees_root,
};

use crate::ChunkId;

/// Bytes per group: 64 BLAKE3 leaves.
pub const GROUP_LEN: usize = 64 * 1024;

/// The chaining values of one chunk's groups, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Groups {
    len: u64,
    cvs: Box<[ChainingValue]>,
}

impl Groups {
    /// Group `index`'s byte range in a chunk of `len` bytes, if it has one.
    pub fn bounds(len: u64, index: usize) -> Option<std::ops::Range<u64>> {
        let start = (index as u64).checked_mul(GROUP_LEN as u64)?;
        (start < len || (index == 0 && len == 0))
            .then(|| start..(start + GROUP_LEN as u64).min(len))
    }

    /// Groups in a chunk of `len` bytes (an empty chunk has one, empty).
    pub fn count(len: u64) -> usize {
        len.div_ceil(GROUP_LEN as u64).max(1) as usize
    }

    /// The value of group `index` of a chunk of `len` bytes, from its bytes: its
    /// non-root chaining value, or for a chunk of one group its hash.
    pub fn value_of(len: u64, index: usize, bytes: &[u8]) -> ChainingValue {
        if len <= GROUP_LEN as u64 {
            return *blake3::hash(bytes).as_bytes();
        }
        let offset = index as u64 * GROUP_LEN as u64;
        blake3::Hasher::new()
            .set_input_offset(offset)
            .update(bytes)
            .finalize_non_root()
    }

    /// Groups from the values of a chunk of `len` bytes, one per group in order;
    /// `None` if their count does not fit `len`. Not checked against any id: see
    /// [`Groups::check`].
    pub fn from_values(len: u64, cvs: Vec<ChainingValue>) -> Option<Self> {
        (cvs.len() == Self::count(len)).then(|| Self {
            len,
            cvs: cvs.into_boxed_slice(),
        })
    }

    /// The groups of `chunk`, hashed in one pass.
    pub fn of(chunk: &[u8]) -> Self {
        let len = chunk.len() as u64;
        let cvs = (0..Self::count(len))
            .map(|i| {
                let r = Self::bounds(len, i).unwrap_or(0..0);
                Self::value_of(len, i, &chunk[r.start as usize..r.end as usize])
            })
            .collect();
        Self { len, cvs }
    }

    /// The chunk's length.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Whether the chunk is empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// How many groups.
    pub fn group_count(&self) -> usize {
        self.cvs.len()
    }

    /// The BLAKE3 hash of the whole chunk, from the groups' values.
    pub fn root(&self) -> blake3::Hash {
        if self.cvs.len() == 1 {
            return blake3::Hash::from_bytes(self.cvs[0]);
        }
        let (l, r) = self.split(0, self.cvs.len(), self.len);
        merge_subtrees_root(&l, &r, Mode::Hash)
    }

    /// Whether these groups make the chunk `id` (constant-time comparison).
    pub fn check(&self, id: &ChunkId) -> bool {
        self.root() == blake3::Hash::from_bytes(*id.as_bytes())
    }

    /// Whether `bytes` are group `index` (constant-time comparison).
    pub fn verifies(&self, index: usize, bytes: &[u8]) -> bool {
        let Some(r) = Self::bounds(self.len, index) else {
            return false;
        };
        if bytes.len() as u64 != r.end - r.start {
            return false;
        }
        let Some(want) = self.cvs.get(index) else {
            return false;
        };
        blake3::Hash::from_bytes(Self::value_of(self.len, index, bytes))
            == blake3::Hash::from_bytes(*want)
    }

    /// The two children's values of the subtree of groups `lo..hi` covering `len`
    /// bytes (at least two groups).
    fn split(&self, lo: usize, hi: usize, len: u64) -> (ChainingValue, ChainingValue) {
        let left_len = blake3::hazmat::left_subtree_len(len);
        let mid = lo + (left_len / GROUP_LEN as u64) as usize;
        (
            self.subtree(lo, mid, left_len),
            self.subtree(mid, hi, len - left_len),
        )
    }

    /// The non-root value of the subtree of groups `lo..hi` covering `len` bytes.
    fn subtree(&self, lo: usize, hi: usize, len: u64) -> ChainingValue {
        if hi - lo == 1 {
            return self.cvs[lo];
        }
        let (l, r) = self.split(lo, hi, len);
        merge_subtrees_non_root(&l, &r, Mode::Hash)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn data(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i * 31 + i / 1024) as u8).collect()
    }

    #[test]
    fn groups_merge_to_the_hash_of_the_whole() {
        let g = GROUP_LEN;
        for len in [
            0,
            1,
            1024,
            g - 1,
            g,
            g + 1,
            2 * g,
            2 * g + 1,
            3 * g,
            3 * g + 500,
            5 * g,
            7 * g + 1023,
            8 * g,
            16 * g,
            16 * g - 1,
            17 * g,
            4 * 1024 * 1024,
        ] {
            let d = data(len);
            let groups = Groups::of(&d);
            assert_eq!(groups.group_count(), Groups::count(len as u64));
            assert_eq!(groups.root(), blake3::hash(&d), "len {len}");
            assert!(groups.check(&ChunkId::of(&d)));
        }
    }

    #[test]
    fn each_group_verifies_alone_and_a_changed_byte_does_not() {
        let d = data(5 * GROUP_LEN + 77);
        let groups = Groups::of(&d);
        for i in 0..groups.group_count() {
            let r = Groups::bounds(d.len() as u64, i).unwrap();
            let mut piece = d[r.start as usize..r.end as usize].to_vec();
            assert!(groups.verifies(i, &piece));
            // The same bytes are not another group's (the offset is hashed in).
            if i > 0 && piece.len() == GROUP_LEN {
                assert!(!groups.verifies(i - 1, &piece));
            }
            let mid = piece.len() / 2;
            piece[mid] ^= 1;
            assert!(!groups.verifies(i, &piece));
            piece.pop();
            assert!(!groups.verifies(i, &piece));
        }
        assert!(!groups.verifies(groups.group_count(), &[]));
    }

    #[test]
    fn a_single_group_chunk_checks_against_the_id() {
        let d = data(1000);
        let groups = Groups::of(&d);
        assert_eq!(groups.group_count(), 1);
        assert!(groups.verifies(0, &d));
        assert!(groups.check(&ChunkId::of(&d)));
        assert!(!groups.check(&ChunkId::of(b"other")));
    }

    #[test]
    fn values_that_do_not_fit_the_length_are_refused() {
        assert!(Groups::from_values(3 * GROUP_LEN as u64, vec![[0; 32]; 2]).is_none());
        let d = data(3 * GROUP_LEN);
        let g = Groups::of(&d);
        let again = Groups::from_values(3 * GROUP_LEN as u64, g.cvs.to_vec()).unwrap();
        assert_eq!(again, g);
        // Swapped values make another root: refused by the id.
        let mut cvs = g.cvs.to_vec();
        cvs.swap(0, 1);
        let swapped = Groups::from_values(3 * GROUP_LEN as u64, cvs).unwrap();
        assert!(!swapped.check(&ChunkId::of(&d)));
    }

    proptest! {
        #[test]
        fn any_length_roots_to_blake3(len in 0usize..(20 * GROUP_LEN)) {
            let d = data(len);
            prop_assert_eq!(Groups::of(&d).root(), blake3::hash(&d));
        }
    }
}
