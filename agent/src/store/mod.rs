//! The agent's verified chunk store: one file per chunk on disk under a quota, plus
//! a byte-weighted memory cache of hot chunks.
//!
//! Trust model: bytes handed to [`ChunkStore::put`] were verified by the caller; bytes
//! read back from disk are verified again (BLAKE3) on every read, and a file that fails
//! is deleted and counted. The memory cache is trusted and not re-hashed. With a
//! verify window (`cache.verify_window`, off by default) a chunk file that verified is
//! served unhashed for up to that long while its `fstat` after each read still equals
//! the one recorded with the hash (`disk::Proof`); docs/architecture.md says what
//! that does and does not catch.
//!
//! The index of what is on disk lives in memory and is rebuilt at [`ChunkStore::open`]
//! by listing the directory (sizes from metadata, no hashing: corruption is caught on
//! read). Recency is tracked in memory; across a restart the order is the files'
//! modification times, i.e. write order. A disk quota with high/low watermarks evicts
//! least-recently-used chunks that no [`PinGuard`] holds.
//!
//! The quota: the effective quota ([`ChunkStore::quota`]) is the configured one or
//! less when the filesystem has less room (`space.rs`). Every write reserves its
//! bytes in the index before it touches the disk (released if it fails), evicting
//! first when the reservation would pass the high watermark, so concurrent writes
//! never take the store past the quota. A write that still meets `ENOSPC` re-reads
//! the free space, evicts and tries once more; if there is still no room that chunk
//! is skipped (memory only) and caching goes on with the next one.
//!
//! Failure policy: the store never stops the agent from serving. If the directory
//! cannot be created or written (other than `ENOSPC`), new chunks are kept in memory
//! only, [`ChunkStore::writable`] is false, and a write is attempted again at most
//! every 30 s. A directory that cannot be written at start (a read-only mount) is
//! still indexed, without deleting anything, and its chunks are served (verified on
//! read as always). Skipped writes are counted in
//! `shoal_cache_write_skipped_total{reason}`. `disk.rs` documents the layout and why
//! chunks are not fsynced.
//!
//! Non-goals: one agent per cache directory (two would delete each other's temporary
//! files at start); deduplication across directories; persistence of the LRU order.
//! Races between a put and an eviction/removal of the same id can leave the index
//! naming a file that is gone; the next read notices and forgets it.

mod buffers;
mod disk;
mod error;
mod grouped;
mod index;
mod meta;
pub mod space;

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use bytes::Bytes;
use shoal_proto::id::ChunkId;
use shoal_proto::manifest::MAX_CHUNK_SIZE;

use crate::config::CacheConfig;
use crate::metrics::Metrics;
use disk::{ChunkRead, Layout, Proof};
use index::Index;

pub use buffers::Buffers;
pub use error::StoreError;
pub use grouped::GroupedChunk;
pub use meta::{MetaStore, is_record_name};
use space::{SpaceSource, Statvfs};

/// How long the store waits after a failed write before it tries the disk again.
pub const RETRY_INTERVAL: Duration = Duration::from_secs(30);

/// Verification proofs kept at most (about 100 bytes each): with 1 MiB chunks, the
/// hottest 32 GiB of the disk cache.
const PROOFS_MAX: u64 = 32 * 1024;

/// Settings of one [`ChunkStore`].
#[derive(Debug, Clone)]
pub struct StoreConfig {
    /// Cache directory; chunks go to `<dir>/chunks`, temporary files to `<dir>/tmp`.
    pub dir: PathBuf,
    /// Disk quota for chunk bytes (file sizes, not blocks used).
    pub max_size: u64,
    /// Eviction starts when usage exceeds this share of `max_size` (0..=1).
    pub high_watermark: f64,
    /// Eviction stops at or below this share of `max_size` (0..=high).
    pub low_watermark: f64,
    /// Memory cache budget in bytes of chunk data; 0 disables the memory cache.
    pub memory_size: u64,
    /// How long a verified chunk file is served again unhashed while its `fstat` is
    /// unchanged (`cache.verify_window`); zero hashes every disk read.
    pub verify_window: Duration,
    /// Bytes left free on the cache's filesystem (`cache.min_free`); `None`: 2 % of
    /// it, within 1 MiB..=1 GiB ([`space::reserve`]).
    pub min_free: Option<u64>,
}

/// Bytes and chunks on disk, as indexed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    pub bytes: u64,
    pub chunks: u64,
}

/// Verified chunks on disk and in memory. Cheap to clone; all clones share one store.
#[derive(Clone)]
pub struct ChunkStore {
    inner: Arc<Inner>,
}

struct Inner {
    layout: Layout,
    /// The configured quota (`cache.max_size`).
    max_size: u64,
    /// Bytes to leave free on the filesystem (`cache.min_free`).
    min_free: Option<u64>,
    /// Watermarks as shares (0..=1) of the effective quota.
    high_share: f64,
    low_share: f64,
    /// The effective quota, bytes: `max_size` or less when the disk has less room.
    limit: AtomicU64,
    /// When `limit` was last computed from the filesystem's free space.
    space_at: Mutex<Option<Instant>>,
    space: Arc<dyn SpaceSource>,
    metrics: Metrics,
    index: Mutex<Index>,
    memory: Option<moka::sync::Cache<ChunkId, Bytes>>,
    /// Proofs of the last verification of chunk files, each kept for the verify
    /// window from when it was hashed (a proved read does not extend it); `None`
    /// when the window is zero.
    proofs: Option<moka::sync::Cache<ChunkId, Proof>>,
    /// The group values of chunk files checked lately (`grouped.rs`).
    groups: moka::sync::Cache<ChunkId, Arc<shoal_proto::groups::Groups>>,
    /// False after a failed open or write, until a write succeeds again.
    writable: AtomicBool,
    /// The last failure was a read-only filesystem: files are left alone.
    read_only: AtomicBool,
    /// Directories exist and were scanned (tidied) into the index.
    prepared: AtomicBool,
    /// While unwritable: no write is attempted before this instant.
    retry_at: Mutex<Option<Instant>>,
    retry_interval: Duration,
    /// Makes temporary file names unique within this process.
    seq: AtomicU64,
    /// Every chunk write holds this shared; [`ChunkStore::pause_writes`] takes it
    /// exclusively (a test hook: a disk that does not keep up).
    writes: Arc<tokio::sync::RwLock<()>>,
}

/// Chunk writes wait while this lives ([`ChunkStore::pause_writes`]).
#[must_use = "writes resume when the guard is dropped"]
pub struct WritePause {
    _guard: tokio::sync::OwnedRwLockWriteGuard<()>,
}

/// Keeps chunks from eviction while alive (a transfer in progress). Pins nest: a chunk
/// stays pinned until every guard naming it is dropped. Ids need not be stored yet.
#[must_use = "chunks are unpinned when the guard is dropped"]
pub struct PinGuard {
    inner: Arc<Inner>,
    ids: Vec<ChunkId>,
}

impl From<&CacheConfig> for StoreConfig {
    fn from(c: &CacheConfig) -> Self {
        Self {
            dir: c.dir.clone(),
            max_size: c.max_size.as_u64(),
            high_watermark: c.high_watermark,
            low_watermark: c.low_watermark,
            memory_size: c.memory_size.as_u64(),
            verify_window: c.verify_window,
            min_free: c.min_free.map(|b| b.as_u64()),
        }
    }
}

impl ChunkStore {
    /// Opens (creating if needed) the store in `cfg.dir` and rebuilds its index,
    /// deleting temporary files and anything that is not a plausible chunk. Never
    /// fails: an unusable directory is logged and the store runs memory-only.
    pub async fn open(cfg: StoreConfig, metrics: Metrics) -> Self {
        Self::open_with(cfg, metrics, RETRY_INTERVAL, Arc::new(Statvfs)).await
    }

    async fn open_with(
        cfg: StoreConfig,
        metrics: Metrics,
        retry_interval: Duration,
        space: Arc<dyn SpaceSource>,
    ) -> Self {
        let high_share = cfg.high_watermark.clamp(0.0, 1.0);
        let memory = (cfg.memory_size > 0).then(|| {
            moka::sync::Cache::builder()
                .max_capacity(cfg.memory_size)
                .weigher(|_: &ChunkId, b: &Bytes| u32::try_from(b.len()).unwrap_or(u32::MAX))
                .build()
        });
        let proofs = (!cfg.verify_window.is_zero()).then(|| {
            moka::sync::Cache::builder()
                .max_capacity(PROOFS_MAX)
                .time_to_live(cfg.verify_window)
                .build()
        });
        let store = Self {
            inner: Arc::new(Inner {
                layout: Layout::new(&cfg.dir),
                max_size: cfg.max_size,
                min_free: cfg.min_free,
                high_share,
                low_share: cfg.low_watermark.clamp(0.0, high_share),
                limit: AtomicU64::new(cfg.max_size),
                space_at: Mutex::new(None),
                space,
                metrics,
                index: Mutex::new(Index::default()),
                memory,
                proofs,
                groups: moka::sync::Cache::new(grouped::GROUPS_MAX),
                writable: AtomicBool::new(false),
                read_only: AtomicBool::new(false),
                prepared: AtomicBool::new(false),
                retry_at: Mutex::new(None),
                retry_interval,
                seq: AtomicU64::new(0),
                writes: Arc::new(tokio::sync::RwLock::new(())),
            }),
        };
        store.refresh().await;
        store.prepare().await;
        store
    }

    /// Whether chunks currently reach the disk.
    pub fn writable(&self) -> bool {
        self.inner.writable.load(Ordering::Acquire)
    }

    /// Whether the disk is of use: writable, or a read-only filesystem whose chunks
    /// are still served. False when the directory can be neither written nor read as
    /// a cache (it cannot be created, a write failed with an I/O error): the agent
    /// then serves from memory and the origin only, and `/ready` says so.
    pub fn usable(&self) -> bool {
        self.writable() || self.inner.read_only.load(Ordering::Acquire)
    }

    /// The effective quota in bytes, as last computed (see the module docs).
    pub fn quota(&self) -> u64 {
        self.inner.limit.load(Ordering::Relaxed)
    }

    /// Whether an object of `size` bytes can be kept whole: at most the effective
    /// quota. One that cannot is better streamed through than cached in part.
    pub async fn fits(&self, size: u64) -> bool {
        size <= self.limit(false).await
    }

    /// Whether the chunk is on disk (indexed) or in memory.
    pub fn contains(&self, id: &ChunkId) -> bool {
        self.index().contains(id)
            || self
                .inner
                .memory
                .as_ref()
                .is_some_and(|m| m.contains_key(id))
    }

    /// The chunk's bytes if the memory cache holds them (trusted, not hashed; the
    /// recency of the disk copy is not touched).
    pub fn memory_get(&self, id: &ChunkId) -> Option<Bytes> {
        self.inner.memory.as_ref().and_then(|m| m.get(id))
    }

    /// The store's reused chunk buffers: a fill's chunker joins origin frames in them
    /// (`buffers.rs`).
    pub(crate) fn buffers(&self) -> buffers::Buffers {
        self.inner.layout.buffers().clone()
    }

    /// Length of the chunk on disk, if indexed.
    pub fn chunk_len(&self, id: &ChunkId) -> Option<u64> {
        self.index().len_of(id)
    }

    /// The chunk's bytes, verified, or `None` if it is neither in memory nor on disk
    /// (including a disk copy that failed verification: it is deleted and counted in
    /// `verify_failures{source="disk"}`). Marks the chunk as recently used.
    pub async fn get(&self, id: &ChunkId) -> Result<Option<Bytes>, StoreError> {
        if let Some(b) = self.inner.memory.as_ref().and_then(|m| m.get(id)) {
            self.index().touch(id);
            return Ok(Some(b));
        }
        let Some(len) = self.index().len_of(id) else {
            return Ok(None);
        };
        let layout = self.inner.layout.clone();
        let cid = *id;
        let proofs = self.inner.proofs.as_ref();
        let proof = proofs.and_then(|p| p.get(id));
        let record = proofs.is_some();
        // One blocking task reads and verifies the chunk (disk.rs hashes as it reads).
        let read =
            tokio::task::spawn_blocking(move || layout.read_verified(&cid, len, proof, record))
                .await??;
        match read {
            ChunkRead::Verified {
                data,
                proof: new,
                proved,
            } => {
                if proved {
                    self.inner.metrics.cache_reads_proved.inc();
                } else if let Some(p) = proofs {
                    match new {
                        Some(new) => p.insert(*id, new),
                        None => p.invalidate(id),
                    }
                }
                let b = data;
                if let Some(m) = &self.inner.memory {
                    bounded_insert(m, *id, b.clone());
                }
                self.index().touch(id);
                Ok(Some(b))
            }
            ChunkRead::Corrupt => {
                self.corrupt(id).await;
                Ok(None)
            }
            ChunkRead::Missing => {
                self.missing(id).await;
                Ok(None)
            }
        }
    }

    /// Stores a chunk the caller has verified (`id == BLAKE3(bytes)`): into memory at
    /// once, then to disk (temporary file, rename) under a reservation of its bytes,
    /// evicting down to the low watermark first when the reservation would pass the
    /// high one. On `Err` the chunk is still in memory (if the memory cache is on) and
    /// the caller should serve its own copy.
    pub async fn put(&self, id: ChunkId, bytes: Bytes) -> Result<(), StoreError> {
        debug_assert!(id.verifies(&bytes), "put of unverified chunk {id}");
        let len = bytes.len();
        if len == 0 || len > MAX_CHUNK_SIZE as usize {
            return Err(StoreError::Size { len });
        }
        // A write-behind chunk is already there (queued chunks are held in memory).
        if let Some(m) = &self.inner.memory
            && !m.contains_key(&id)
        {
            bounded_insert(m, id, bytes.clone());
        }
        if self.index().touch(&id) {
            return Ok(());
        }
        if !self.ready_to_write().await {
            let dir = self.inner.layout.root.clone();
            return Err(if self.inner.read_only.load(Ordering::Acquire) {
                self.skipped("read_only", StoreError::ReadOnly { dir })
            } else {
                self.skipped("unwritable", StoreError::Unwritable { dir })
            });
        }
        let len = len as u64;
        let limit = self.limit(false).await;
        self.reserve(len, limit, "full").await?;
        let mut res = self.write(id, &bytes).await;
        if res.as_ref().is_err_and(StoreError::is_no_space) {
            // The filesystem is fuller than we knew: look again, evict, retry once.
            self.index().release(len);
            self.inner.metrics.cache_write_errors.inc();
            tracing::debug!(chunk = %id, "ENOSPC; reading free space again and evicting");
            let limit = self.shrink().await;
            self.reserve(len, limit, "no_space").await?;
            res = self.write(id, &bytes).await;
        }
        if let Err(e) = res {
            self.index().release(len);
            self.inner.metrics.cache_write_errors.inc();
            if e.is_no_space() {
                tracing::warn!(chunk = %id, error = %e, "no room on the cache disk even after eviction; chunk kept in memory only");
                return Err(self.skipped("no_space", e));
            }
            self.mark_unwritable(e.is_read_only());
            tracing::warn!(chunk = %id, error = %e, "chunk write failed; caching in memory only for now");
            return Err(e);
        }
        if !self.inner.writable.swap(true, Ordering::AcqRel) {
            tracing::info!(dir = %self.inner.layout.root.display(), "cache directory is writable again");
        }
        let mut ix = self.index();
        ix.commit(id, len);
        self.publish(&ix);
        Ok(())
    }

    /// Puts a verified chunk into the memory cache only (nothing on disk): a chunk
    /// a fill skipped for the disk, so readers behind the fill may still find it.
    pub fn hold_in_memory(&self, id: ChunkId, bytes: Bytes) {
        if let Some(m) = &self.inner.memory {
            bounded_insert(m, id, bytes);
        }
    }

    /// Holds every chunk write (the file write, after its reservation) until the
    /// guard is dropped: a test hook for a disk slower than the network. Writes in
    /// progress finish first.
    pub async fn pause_writes(&self) -> WritePause {
        WritePause {
            _guard: self.inner.writes.clone().write_owned().await,
        }
    }

    /// Pins `ids` against eviction until the guard is dropped.
    pub fn pin(&self, ids: impl IntoIterator<Item = ChunkId>) -> PinGuard {
        let mut guard = PinGuard {
            inner: Arc::clone(&self.inner),
            ids: Vec::new(),
        };
        guard.extend(ids);
        guard
    }

    /// Disk usage as indexed.
    pub fn usage(&self) -> Usage {
        self.index().usage()
    }

    /// Ids of the chunks on disk, least recently used first (memory-only chunks are
    /// not listed: they may vanish at any moment).
    pub fn ids(&self) -> Vec<ChunkId> {
        self.index().ids()
    }

    /// Deletes the chunk from memory and disk.
    pub async fn remove(&self, id: &ChunkId) {
        if let Some(m) = &self.inner.memory {
            m.invalidate(id);
        }
        self.forget_and_delete(id).await;
    }

    /// Empties the memory cache (disk untouched).
    pub fn clear_memory(&self) {
        if let Some(m) = &self.inner.memory {
            m.invalidate_all();
        }
    }

    fn index(&self) -> MutexGuard<'_, Index> {
        // The index stays consistent even if a holder panicked: every mutation
        // completes before the guard is released.
        self.inner
            .index
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    fn publish(&self, ix: &Index) {
        let u = ix.usage();
        let m = &self.inner.metrics;
        m.cache_bytes
            .set(i64::try_from(u.bytes).unwrap_or(i64::MAX));
        m.cache_chunks
            .set(i64::try_from(u.chunks).unwrap_or(i64::MAX));
    }

    /// Counts a skipped chunk write and passes its error on.
    fn skipped(&self, reason: &'static str, e: StoreError) -> StoreError {
        self.inner
            .metrics
            .cache_write_skipped
            .with_label_values(&[reason])
            .inc();
        e
    }

    async fn write(&self, id: ChunkId, bytes: &Bytes) -> Result<(), StoreError> {
        let _writing = self.inner.writes.read().await;
        let layout = self.inner.layout.clone();
        let seq = self.inner.seq.fetch_add(1, Ordering::Relaxed);
        let bytes = bytes.clone();
        tokio::task::spawn_blocking(move || layout.write(&id, &bytes, seq))
            .await
            .map_err(StoreError::from)
            .and_then(|r| r)
    }

    /// Reserves `len` bytes under `limit`, evicting first if the high watermark
    /// would be passed. A refusal is counted as a skip for `reason`.
    async fn reserve(&self, len: u64, limit: u64, reason: &'static str) -> Result<(), StoreError> {
        let (high, low) = self.watermarks(limit);
        if self.index().committed().saturating_add(len) > high {
            self.evict_to(low.saturating_sub(len)).await;
        }
        if self.index().reserve(len, limit) {
            Ok(())
        } else {
            Err(self.skipped(reason, StoreError::Full { len, max: limit }))
        }
    }

    /// High and low watermarks of `limit`, bytes.
    fn watermarks(&self, limit: u64) -> (u64, u64) {
        let share = |w: f64| (limit as f64 * w) as u64;
        let high = share(self.inner.high_share);
        (high, share(self.inner.low_share).min(high))
    }

    /// The effective quota, read again from the filesystem when older than
    /// [`space::REFRESH`] (or `force`).
    async fn limit(&self, force: bool) -> u64 {
        let due = force || {
            let at = self
                .inner
                .space_at
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            at.is_none_or(|t| t.elapsed() >= space::REFRESH)
        };
        if due {
            self.refresh().await;
        }
        self.quota()
    }

    /// Recomputes the effective quota from the filesystem; `None` (and the
    /// configured quota) when its free space cannot be read.
    async fn refresh(&self) -> Option<u64> {
        *self
            .inner
            .space_at
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Some(Instant::now());
        let src = Arc::clone(&self.inner.space);
        let dir = self.inner.layout.root.clone();
        let res = tokio::task::spawn_blocking(move || src.space(&dir)).await;
        let limit = match res {
            Ok(Ok(space)) => {
                let ours = self.index().on_disk();
                Some(space::effective(
                    self.inner.max_size,
                    self.inner.min_free,
                    ours,
                    space,
                ))
            }
            Ok(Err(e)) => {
                tracing::debug!(error = %e, "cannot read the cache disk's free space; using cache.max_size");
                None
            }
            Err(e) => {
                tracing::debug!(error = %e, "free space task failed");
                None
            }
        };
        self.set_limit(limit.unwrap_or(self.inner.max_size));
        limit
    }

    /// After `ENOSPC`: the quota becomes at most what the store holds now (the disk
    /// says it is full, whatever its figures claimed), so the retry evicts.
    async fn shrink(&self) -> u64 {
        let fresh = self.refresh().await.unwrap_or(self.inner.max_size);
        let limit = fresh.min(self.index().on_disk());
        self.set_limit(limit);
        limit
    }

    fn set_limit(&self, limit: u64) {
        let old = self.inner.limit.swap(limit, Ordering::Relaxed);
        if old != limit {
            tracing::debug!(quota = limit, "effective cache quota");
        }
        self.inner
            .metrics
            .cache_quota_bytes
            .set(i64::try_from(limit).unwrap_or(i64::MAX));
    }

    /// Whether a write may be attempted now: the disk is writable, or a retry is
    /// due and the directory proves writable.
    async fn ready_to_write(&self) -> bool {
        self.writable() || (self.retry_due() && self.prepare().await)
    }

    /// Creates the directories and proves a file can be written; the first time it
    /// succeeds, also tidies and scans the directory into the index. Returns whether
    /// the disk is usable; on failure marks the store unwritable, and the first
    /// time indexes the chunks already there without touching any file, so a
    /// read-only disk is still served.
    async fn prepare(&self) -> bool {
        let first = !self.inner.prepared.load(Ordering::Acquire);
        let layout = self.inner.layout.clone();
        let res = tokio::task::spawn_blocking(move || {
            layout.prepare().map(|()| first.then(|| layout.scan(true)))
        })
        .await
        .map_err(StoreError::from)
        .and_then(|r| r);
        let dir = self.inner.layout.root.display();
        match res {
            Ok(found) => {
                self.inner.read_only.store(false, Ordering::Release);
                if let Some(found) = found {
                    let usage = self.index_found(found);
                    self.inner.prepared.store(true, Ordering::Release);
                    tracing::info!(%dir, chunks = usage.chunks, bytes = usage.bytes, "chunk store opened");
                } else {
                    tracing::info!(%dir, "cache directory is writable again");
                }
                self.inner.writable.store(true, Ordering::Release);
                let limit = self.limit(true).await;
                let (high, low) = self.watermarks(limit);
                if self.index().committed() > high {
                    self.evict_to(low).await;
                }
                true
            }
            Err(e) => {
                let read_only = e.is_read_only();
                self.mark_unwritable(read_only);
                if first && self.usage().chunks == 0 {
                    let layout = self.inner.layout.clone();
                    let found = tokio::task::spawn_blocking(move || layout.scan(false))
                        .await
                        .unwrap_or_default();
                    let usage = self.index_found(found);
                    tracing::warn!(%dir, error = %e, chunks = usage.chunks, bytes = usage.bytes,
                        "cache directory cannot be written; serving the chunks it holds, new chunks in memory only");
                } else {
                    tracing::debug!(%dir, error = %e, "cache directory still cannot be written");
                }
                false
            }
        }
    }

    /// Indexes scanned chunk files, oldest first; returns the usage after.
    fn index_found(&self, mut found: Vec<disk::Found>) -> Usage {
        found.sort_by_key(|f| f.modified);
        let mut ix = self.index();
        for f in found {
            ix.insert(f.id, f.len);
        }
        self.publish(&ix);
        ix.usage()
    }

    /// While unwritable, allows one write attempt per retry interval.
    fn retry_due(&self) -> bool {
        let mut at = self
            .inner
            .retry_at
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let now = Instant::now();
        match *at {
            Some(t) if now < t => false,
            _ => {
                *at = Some(now + self.inner.retry_interval);
                true
            }
        }
    }

    fn mark_unwritable(&self, read_only: bool) {
        self.inner.writable.store(false, Ordering::Release);
        self.inner.read_only.store(read_only, Ordering::Release);
        *self
            .inner
            .retry_at
            .lock()
            .unwrap_or_else(PoisonError::into_inner) =
            Some(Instant::now() + self.inner.retry_interval);
    }

    /// Evicts unpinned chunks, least recently used first, down to `target` bytes
    /// committed.
    async fn evict_to(&self, target: u64) {
        let (victims, freed) = {
            let mut ix = self.index();
            let v = ix.evict(target);
            self.publish(&ix);
            v
        };
        if victims.is_empty() {
            return;
        }
        if let Some(p) = &self.inner.proofs {
            for id in &victims {
                p.invalidate(id);
            }
        }
        self.inner
            .metrics
            .cache_evictions
            .inc_by(victims.len() as u64);
        tracing::debug!(chunks = victims.len(), "evicted chunks to stay under quota");
        let layout = self.inner.layout.clone();
        let res = tokio::task::spawn_blocking(move || {
            for id in &victims {
                layout.remove(id);
            }
        })
        .await;
        self.index().deleted(freed);
        if let Err(e) = res {
            tracing::warn!(error = %e, "deleting evicted chunk files failed");
        }
    }

    /// Forgets the chunk and deletes its file (left alone on a read-only disk).
    async fn forget_and_delete(&self, id: &ChunkId) {
        if let Some(p) = &self.inner.proofs {
            p.invalidate(id);
        }
        {
            let mut ix = self.index();
            ix.remove(id);
            self.publish(&ix);
        }
        if self.inner.read_only.load(Ordering::Acquire) {
            return;
        }
        let layout = self.inner.layout.clone();
        let id = *id;
        if let Err(e) = tokio::task::spawn_blocking(move || layout.remove(&id)).await {
            tracing::warn!(error = %e, "deleting chunk file failed");
        }
    }
}

/// Inserts into the memory cache and applies the insert (evicting) at once. moka
/// applies writes in batches of 64 or every 300 ms, and until then they are not
/// weighed: with chunk-sized entries arriving at a fill's rate that let the cache hold
/// 100-190 MiB past `cache.memory_size` (docs/benchmarks.md, Cold miss and memory).
fn bounded_insert(m: &moka::sync::Cache<ChunkId, Bytes>, id: ChunkId, bytes: Bytes) {
    m.insert(id, bytes);
    m.run_pending_tasks();
}

impl PinGuard {
    /// Pins more chunks under this guard.
    pub fn extend(&mut self, ids: impl IntoIterator<Item = ChunkId>) {
        let mut ix = self
            .inner
            .index
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        for id in ids {
            ix.pin(id);
            self.ids.push(id);
        }
    }
}

impl Drop for PinGuard {
    fn drop(&mut self) {
        let mut ix = self
            .inner
            .index
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        for id in &self.ids {
            ix.unpin(id);
        }
    }
}

impl std::fmt::Debug for ChunkStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChunkStore")
            .field("dir", &self.inner.layout.root)
            .field("usage", &self.usage())
            .field("writable", &self.writable())
            .finish()
    }
}

impl std::fmt::Debug for WritePause {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("WritePause")
    }
}

impl std::fmt::Debug for PinGuard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PinGuard")
            .field("chunks", &self.ids.len())
            .finish()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests;
