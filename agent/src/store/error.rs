//! The store's error type.

use std::path::PathBuf;

use shoal_proto::manifest::MAX_CHUNK_SIZE;

/// What went wrong in the store. All of these are local (our disk, our caller), never
/// a peer's or the origin's fault; a caller that gets one from `put` still holds the
/// bytes and should serve them anyway.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A chunk file exists but could not be read (missing or corrupt files are
    /// `Ok(None)` from [`ChunkStore::get`](super::ChunkStore::get), not errors).
    #[error("chunk store: reading {}: {source}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    /// Creating, writing or renaming a file failed (disk full, read-only, …). The
    /// store is now unwritable until a retry succeeds.
    #[error("chunk store: writing {}: {source}", path.display())]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    /// The directory failed recently; the write was not attempted (memory only).
    #[error("chunk store: {} is not writable; keeping chunks in memory only", dir.display())]
    Unwritable { dir: PathBuf },
    /// The directory is on a read-only filesystem: its chunks are served, new ones
    /// are kept in memory only; the write was not attempted.
    #[error("chunk store: {} is read-only; keeping new chunks in memory only", dir.display())]
    ReadOnly { dir: PathBuf },
    /// Pinned chunks and writes in progress fill the (effective) quota, or the disk
    /// had no room even after eviction; the chunk was kept in memory only.
    #[error(
        "chunk store: no room for {len} bytes: the quota of {max} bytes is held by pinned chunks and writes in progress"
    )]
    Full { len: u64, max: u64 },
    /// Caller bug: a chunk must be 1..=16 MiB.
    #[error("chunk store: chunk of {len} bytes is outside 1..={MAX_CHUNK_SIZE}")]
    Size { len: usize },
    /// Caller bug: record names are 64 lowercase hex digits.
    #[error("chunk store: {0:?} is not a record name (64 lowercase hex digits)")]
    RecordName(String),
    /// A chunk file changed on disk while it was being read in groups
    /// ([`GroupedChunk::read`](super::GroupedChunk::read)); it is deleted.
    #[error("chunk store: chunk {id} is corrupt on disk: {detail}")]
    Corrupt {
        id: shoal_proto::id::ChunkId,
        detail: String,
    },
    /// A blocking file task panicked or was cancelled at shutdown.
    #[error("chunk store: file task failed: {0}")]
    Task(#[from] tokio::task::JoinError),
}

impl StoreError {
    /// A write failed because the filesystem (or the user's disk quota) is full.
    pub fn is_no_space(&self) -> bool {
        let StoreError::Write { source, .. } = self else {
            return false;
        };
        #[cfg(target_os = "linux")]
        if source.raw_os_error() == Some(libc::EDQUOT) {
            return true;
        }
        source.kind() == std::io::ErrorKind::StorageFull
    }

    /// A write failed because the filesystem is mounted read-only.
    pub fn is_read_only(&self) -> bool {
        matches!(self, StoreError::Write { source, .. }
            if source.kind() == std::io::ErrorKind::ReadOnlyFilesystem)
    }
}
