//! Reading a chunk from disk 64 KiB at a time, every byte still checked before it
//! is handed out: for a response that has no room in the read budget
//! (`object::budget`), which may hold one group instead of a whole chunk.
//!
//! [`ChunkStore::open_grouped`] checks the file against the chunk's id in one pass
//! that keeps only the groups' chaining values ([`Groups`], 32 bytes per 64 KiB);
//! [`GroupedChunk::read`] then reads one group again and checks it against its
//! value. A file changed between the two fails the second check: counted as a
//! disk verification failure, the chunk forgotten, and the caller cuts the response.
//! The values of chunks checked lately are kept (`GROUPS_MAX` chunks, about
//! 700 bytes each), so many responses reading the same chunks hash each file once
//! more per read, not twice.
//!
//! Costs: a chunk read this way is hashed twice (once whole, once group by group)
//! unless its values are kept, and takes a `pread` per group; it is the path of
//! responses whose clients are slower than the budget, where the CPU is not what
//! bounds them.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::sync::Arc;

use bytes::Bytes;
use shoal_proto::groups::{GROUP_LEN, Groups};
use shoal_proto::id::ChunkId;
use shoal_proto::manifest::MAX_CHUNK_SIZE;

use super::{ChunkStore, StoreError};
use crate::metrics::Source;

/// Chunks whose group values are kept.
pub(super) const GROUPS_MAX: u64 = 4096;

/// A chunk file checked against its id, read one group at a time.
pub struct GroupedChunk {
    store: ChunkStore,
    id: ChunkId,
    file: Arc<File>,
    groups: Arc<Groups>,
}

/// What the first pass found.
enum Opened {
    Missing,
    Corrupt,
    Checked(File, Arc<Groups>),
}

impl ChunkStore {
    /// The chunk on disk, checked against `id` and ready to be read in groups, or
    /// `None` if it is not on disk or failed the check (deleted and counted, as in
    /// [`ChunkStore::get`]). The memory cache is not consulted: callers that can
    /// share its bytes ask it first.
    pub async fn open_grouped(&self, id: &ChunkId) -> Result<Option<GroupedChunk>, StoreError> {
        let Some(len) = self.index().len_of(id) else {
            return Ok(None);
        };
        let path = self.inner.layout.chunk_path(id);
        let known = self.inner.groups.get(id);
        let cid = *id;
        let opened = tokio::task::spawn_blocking(move || -> Result<Opened, StoreError> {
            let rerr = |source| StoreError::Read {
                path: path.clone(),
                source,
            };
            let file = match File::open(&path) {
                Ok(f) => f,
                Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Opened::Missing),
                Err(e) => return Err(rerr(e)),
            };
            let size = file.metadata().map_err(rerr)?.len();
            if size != len || size > u64::from(MAX_CHUNK_SIZE) {
                return Ok(Opened::Corrupt);
            }
            if let Some(g) = known.filter(|g| g.len() == len) {
                return Ok(Opened::Checked(file, g));
            }
            let mut buf = vec![0u8; GROUP_LEN];
            let mut values = Vec::with_capacity(Groups::count(len));
            for i in 0..Groups::count(len) {
                let r = Groups::bounds(len, i).unwrap_or(0..0);
                let piece = &mut buf[..(r.end - r.start) as usize];
                file.read_exact_at(piece, r.start).map_err(rerr)?;
                values.push(Groups::value_of(len, i, piece));
            }
            match Groups::from_values(len, values) {
                Some(g) if g.check(&cid) => Ok(Opened::Checked(file, Arc::new(g))),
                _ => Ok(Opened::Corrupt),
            }
        })
        .await??;
        match opened {
            Opened::Checked(file, groups) => {
                self.inner.groups.insert(*id, groups.clone());
                self.index().touch(id);
                Ok(Some(GroupedChunk {
                    store: self.clone(),
                    id: *id,
                    file: Arc::new(file),
                    groups,
                }))
            }
            Opened::Corrupt => {
                self.corrupt(id).await;
                Ok(None)
            }
            Opened::Missing => {
                self.missing(id).await;
                Ok(None)
            }
        }
    }

    /// An indexed chunk file that is gone: logged and forgotten.
    pub(super) async fn missing(&self, id: &ChunkId) {
        tracing::warn!(chunk = %id, "indexed chunk file is missing; forgetting it");
        self.forget_and_delete(id).await;
    }

    /// A chunk file that failed its check: counted, logged, deleted and forgotten.
    pub(super) async fn corrupt(&self, id: &ChunkId) {
        self.inner.metrics.verify_failed(Source::Cache);
        tracing::warn!(
            chunk = %id,
            path = %self.inner.layout.chunk_path(id).display(),
            "chunk file failed BLAKE3 verification; deleting it"
        );
        self.inner.groups.invalidate(id);
        self.forget_and_delete(id).await;
    }
}

impl std::fmt::Debug for GroupedChunk {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GroupedChunk")
            .field("id", &self.id)
            .field("len", &self.len())
            .finish_non_exhaustive()
    }
}

impl GroupedChunk {
    /// The chunk's length.
    pub fn len(&self) -> u64 {
        self.groups.len()
    }

    /// Whether the chunk is empty.
    pub fn is_empty(&self) -> bool {
        self.groups.is_empty()
    }

    /// The byte range of group `index` in the chunk.
    pub fn bounds(&self, index: usize) -> Option<std::ops::Range<u64>> {
        Groups::bounds(self.len(), index)
    }

    /// The group holding byte `offset` of the chunk.
    pub fn group_of(offset: u64) -> usize {
        (offset / GROUP_LEN as u64) as usize
    }

    /// Group `index`'s bytes, read again and checked against its value. A group that
    /// does not check (the file changed since it was opened) is
    /// [`StoreError::Corrupt`]; the chunk is then deleted and counted.
    pub async fn read(&self, index: usize) -> Result<Bytes, StoreError> {
        let Some(r) = self.bounds(index) else {
            return Err(StoreError::Corrupt {
                id: self.id,
                detail: format!("no group {index} in a chunk of {} bytes", self.len()),
            });
        };
        let (file, groups) = (self.file.clone(), self.groups.clone());
        let path = self.store.inner.layout.chunk_path(&self.id);
        let read = tokio::task::spawn_blocking(move || -> Result<Option<Bytes>, StoreError> {
            let mut buf = vec![0u8; (r.end - r.start) as usize];
            file.read_exact_at(&mut buf, r.start)
                .map_err(|source| StoreError::Read { path, source })?;
            Ok(groups.verifies(index, &buf).then(|| Bytes::from(buf)))
        })
        .await??;
        match read {
            Some(b) => Ok(b),
            None => {
                self.store.corrupt(&self.id).await;
                Err(StoreError::Corrupt {
                    id: self.id,
                    detail: format!("group {index} changed on disk after its check"),
                })
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::metrics::Metrics;
    use crate::store::StoreConfig;

    async fn store(dir: &std::path::Path) -> (ChunkStore, Metrics) {
        let m = Metrics::default();
        let cfg = StoreConfig {
            dir: dir.to_path_buf(),
            max_size: 1 << 30,
            high_watermark: 0.9,
            low_watermark: 0.5,
            memory_size: 0,
            verify_window: Duration::ZERO,
            min_free: Some(0),
        };
        (ChunkStore::open(cfg, m.clone()).await, m)
    }

    fn chunk(len: usize, seed: u8) -> (ChunkId, Bytes) {
        let data: Vec<u8> = (0..len)
            .map(|i| (i as u8).wrapping_mul(seed) ^ (i >> 9) as u8)
            .collect();
        (ChunkId::of(&data), Bytes::from(data))
    }

    async fn read_all(g: &GroupedChunk) -> Result<Vec<u8>, StoreError> {
        let mut out = Vec::new();
        for i in 0..Groups::count(g.len()) {
            out.extend_from_slice(&g.read(i).await?);
        }
        Ok(out)
    }

    fn flip(path: &std::path::Path, at: usize) {
        let mut b = std::fs::read(path).unwrap();
        b[at] ^= 1;
        std::fs::write(path, &b).unwrap();
    }

    #[tokio::test]
    async fn groups_read_back_the_chunk_for_any_length() {
        let tmp = tempfile::tempdir().unwrap();
        let (s, m) = store(tmp.path()).await;
        for (len, seed) in [
            (1, 3),
            (1000, 5),
            (GROUP_LEN, 7),
            (GROUP_LEN + 1, 9),
            (1 << 20, 11),
            (3 * GROUP_LEN + 999, 13),
        ] {
            let (id, b) = chunk(len, seed);
            s.put(id, b.clone()).await.unwrap();
            let g = s.open_grouped(&id).await.unwrap().unwrap();
            assert_eq!(g.len(), len as u64);
            assert_eq!(read_all(&g).await.unwrap(), b[..], "len {len}");
            // Opened again: from the kept values, the same bytes.
            let g = s.open_grouped(&id).await.unwrap().unwrap();
            assert_eq!(read_all(&g).await.unwrap(), b[..]);
        }
        assert_eq!(m.verify_failures.with_label_values(&["disk"]).get(), 0);
        let (absent, _) = chunk(10, 1);
        assert!(s.open_grouped(&absent).await.unwrap().is_none());
    }

    #[tokio::test]
    async fn a_file_corrupt_before_its_check_is_refused_deleted_and_counted() {
        let tmp = tempfile::tempdir().unwrap();
        let (s, m) = store(tmp.path()).await;
        let (id, b) = chunk(5 * GROUP_LEN, 17);
        s.put(id, b).await.unwrap();
        let path = s.inner.layout.chunk_path(&id);
        flip(&path, 3 * GROUP_LEN + 5);
        assert!(s.open_grouped(&id).await.unwrap().is_none());
        assert_eq!(m.verify_failures.with_label_values(&["disk"]).get(), 1);
        assert!(!path.exists());
        assert!(!s.contains(&id));
    }

    #[tokio::test]
    async fn a_group_changed_after_the_check_is_caught_when_read() {
        let tmp = tempfile::tempdir().unwrap();
        let (s, m) = store(tmp.path()).await;
        let (id, b) = chunk(4 * GROUP_LEN + 10, 19);
        s.put(id, b.clone()).await.unwrap();
        let g = s.open_grouped(&id).await.unwrap().unwrap();
        assert_eq!(&g.read(0).await.unwrap()[..], &b[..GROUP_LEN]);
        let path = s.inner.layout.chunk_path(&id);
        flip(&path, 2 * GROUP_LEN + 100);
        // The groups before and after it are still the right bytes...
        assert_eq!(&g.read(1).await.unwrap()[..], &b[GROUP_LEN..2 * GROUP_LEN]);
        // ...the changed one is refused, and the chunk goes.
        assert!(matches!(g.read(2).await, Err(StoreError::Corrupt { .. })));
        assert_eq!(m.verify_failures.with_label_values(&["disk"]).get(), 1);
        assert!(!s.contains(&id));
        assert!(s.open_grouped(&id).await.unwrap().is_none());
        // A group that does not exist is an error, not a panic.
        assert!(matches!(g.read(99).await, Err(StoreError::Corrupt { .. })));
    }

    #[tokio::test]
    async fn a_file_of_another_length_than_indexed_is_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let (s, m) = store(tmp.path()).await;
        let (id, b) = chunk(2 * GROUP_LEN, 23);
        s.put(id, b.clone()).await.unwrap();
        let path = s.inner.layout.chunk_path(&id);
        let mut longer = b.to_vec();
        longer.push(0);
        std::fs::write(&path, &longer).unwrap();
        assert!(s.open_grouped(&id).await.unwrap().is_none());
        assert_eq!(m.verify_failures.with_label_values(&["disk"]).get(), 1);
    }
}
