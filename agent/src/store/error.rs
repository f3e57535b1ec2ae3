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
    /// Pinned chunks fill the quota; the chunk was kept in memory only.
    #[error("chunk store: no room for {len} bytes: quota of {max} bytes is pinned")]
    Full { len: u64, max: u64 },
    /// Caller bug: a chunk must be 1..=16 MiB.
    #[error("chunk store: chunk of {len} bytes is outside 1..={MAX_CHUNK_SIZE}")]
    Size { len: usize },
    /// Caller bug: record names are 64 lowercase hex digits.
    #[error("chunk store: {0:?} is not a record name (64 lowercase hex digits)")]
    RecordName(String),
    /// A blocking file task panicked or was cancelled at shutdown.
    #[error("chunk store: file task failed: {0}")]
    Task(#[from] tokio::task::JoinError),
}
