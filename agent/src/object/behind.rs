//! Write-behind for origin fills: a chunk goes to the fill's readers the moment it is
//! hashed, and to the disk through a queue served by a writer task of its own, so a
//! cold miss streams at the origin's pace, not the disk's.
//!
//! The queue is bounded in bytes across all fills ([`Budget`], `cache.fill_buffer`).
//! When it is full, the fill asks whether anyone is held up by it: if a reader is
//! blocked on the next chunk, the chunk is *skipped* for caching (counted in
//! `shoal_cache_fill_skipped_chunks_total`, kept in the memory cache if it fits) and
//! the fill goes on; if no reader is, the fill waits for the disk, which stops
//! reading the origin (backpressure through TCP). A fill that skipped a chunk is not
//! recorded at its end (`shoal_cache_fills_incomplete_total`); once its queued writes
//! are done, its gaps are filled ([`fill_gaps`]): each skipped chunk is written from
//! the memory cache if it is still there, else fetched again from the origin by
//! `Range`, and then the object is recorded. So the origin sends the skipped chunks
//! twice, not the whole object, and the next request is a hit.
//!
//! Chunks not on disk and not queued (skipped, or their write failed) are held for
//! readers only while they are among the newest [`LOOSE`] ([`loose_keep`]: fewer, down
//! to one, while more than two fills run, so all fills together hold at most
//! max([`LOOSE_ALL`], fills) such chunks); past that, with no reader blocked, the fill
//! waits (backpressure again), and with one blocked, the oldest are dropped: a reader
//! that far behind reads them from the memory cache or fetches them from the origin
//! again. So a fill holds at most its share of the budget plus its loose chunks, and a
//! slow client never slows a fast one.
//!
//! Not done here: the BLAKE3 of each chunk is still computed before the chunk is
//! complete for readers (on blocking threads, `origin_fill`: the manifest and the
//! memory cache need the id; readers waiting on it already got its bytes as they
//! arrived, `cut`), also for a chunk that will be skipped; swarm fills
//! (`crate::swarm`) store each chunk before releasing it, as before.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use shoal_proto::{Chunk, ObjectKey, Sha256Digest};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use tokio::task::JoinHandle;

use super::fill::Record;
use super::meta::ObjectMeta;
use super::{Fill, ObjectCache};
use crate::metrics::Source;
use crate::origin::reason::FetchReason;

/// Loose chunks (not on disk, not queued) a fill keeps holding for its readers: more
/// than a reader's read-ahead (`read::READ_AHEAD`, 3), whose suspended waits may
/// still ask for the newest few.
pub(crate) const LOOSE: usize = 4;

/// Loose chunks all origin fills together keep, when more than two run: each keeps
/// `LOOSE_ALL / fills`, at least one. Loose chunks are outside every budget and mostly
/// outside the memory cache too (it does not admit every chunk offered), so with a
/// fixed [`LOOSE`] per fill 16 concurrent cold misses on a slow disk held 64 of them
/// (measured: 44 MiB of VmHWM, docs/benchmarks.md).
pub(crate) const LOOSE_ALL: usize = 8;

/// The loose chunks one fill keeps while `fills` origin fills run.
pub(crate) fn loose_keep(fills: usize) -> usize {
    (LOOSE_ALL / fills.max(1)).clamp(1, LOOSE)
}

/// One running origin fill, counted in `Inner::origin_fills` while it lives.
struct Active(Arc<AtomicUsize>);

impl Active {
    fn start(n: &Arc<AtomicUsize>) -> Self {
        n.fetch_add(1, Ordering::Relaxed);
        Self(n.clone())
    }
}

impl Drop for Active {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Budget units are KiB, so a budget past 4 GiB still fits the semaphore's `u32`
/// acquisitions.
const UNIT: u64 = 1024;

/// Chunk bytes all origin fills may have queued for the disk at once. Cheap to clone.
#[derive(Debug, Clone)]
pub(crate) struct Budget {
    sem: Arc<Semaphore>,
    /// Units in all; a chunk larger than the budget takes all of it.
    total: u32,
}

/// One chunk waiting for the disk, with its share of the budget.
struct Job {
    chunk: Chunk,
    _permit: OwnedSemaphorePermit,
}

/// The write-behind of one origin fill. Dropping it (a failed fill) lets the writer
/// finish what is queued.
pub(super) struct Behind {
    tx: mpsc::UnboundedSender<Job>,
    writer: JoinHandle<()>,
    skipped: u64,
    _active: Active,
}

impl Budget {
    /// A budget of `bytes`, at least one chunk of `chunk_size`.
    pub(crate) fn new(bytes: u64, chunk_size: u32) -> Self {
        let units = bytes.max(u64::from(chunk_size)).div_ceil(UNIT);
        let total = u32::try_from(units).unwrap_or(u32::MAX);
        Self {
            sem: Arc::new(Semaphore::new(total as usize)),
            total,
        }
    }

    fn units(&self, len: usize) -> u32 {
        let u = (len as u64).div_ceil(UNIT);
        u32::try_from(u).unwrap_or(u32::MAX).min(self.total)
    }

    pub(super) fn try_take(&self, len: usize) -> Option<OwnedSemaphorePermit> {
        self.sem
            .clone()
            .try_acquire_many_owned(self.units(len))
            .ok()
    }

    /// Waits for room; `None` only if the semaphore were closed (it never is).
    pub(super) async fn take(&self, len: usize) -> Option<OwnedSemaphorePermit> {
        self.sem
            .clone()
            .acquire_many_owned(self.units(len))
            .await
            .ok()
    }
}

impl Behind {
    /// Starts the writer task of `fill`.
    pub(super) fn start(cache: &ObjectCache, fill: &Arc<Fill>) -> Self {
        let (tx, mut rx) = mpsc::unbounded_channel::<Job>();
        let active = Active::start(&cache.inner.origin_fills);
        let (cache, fill) = (cache.clone(), fill.clone());
        let writer = tokio::spawn(async move {
            let store = &cache.inner.store;
            let gauge = &cache.inner.metrics.cache_fill_buffer_bytes;
            while let Some(job) = rx.recv().await {
                let c = job.chunk;
                let len = c.bytes.len() as i64;
                match store.put(c.id, c.bytes).await {
                    Ok(()) => fill.stored(c.index, store.pin([c.id])),
                    Err(e) => {
                        tracing::debug!(url = %fill.url, chunk = c.index, error = %e, "chunk not written; held in memory");
                        fill.unqueued(c.index);
                    }
                }
                gauge.sub(len);
            }
        });
        Self {
            tx,
            writer,
            skipped: 0,
            _active: active,
        }
    }

    /// Hands chunk `c`, already completed in `fill` with its bytes held, to the disk:
    /// queued if the budget has room; else skipped if a reader is blocked on the
    /// fill, else queued once the disk made room. Then keeps the loose chunks within
    /// [`LOOSE`] (see the module docs).
    pub(super) async fn offer(&mut self, cache: &ObjectCache, fill: &Fill, c: Chunk) {
        let budget = &cache.inner.fill_budget;
        let len = c.bytes.len();
        let permit = match budget.try_take(len) {
            Some(p) => Some(p),
            None if fill.waiting() > 0 => None,
            None => tokio::select! {
                p = budget.take(len) => p,
                () = fill.until(|f| f.waiting() > 0) => None,
            },
        };
        match permit {
            Some(p) => self.queue(cache, fill, c, p),
            None => self.skip(cache, c),
        }
        let keep = loose_keep(cache.inner.origin_fills.load(Ordering::Relaxed));
        if fill.loose() > keep {
            // Nobody is held up: wait for a slow reader to catch up (or leave)
            // rather than drop chunks it is about to read.
            fill.until(|f| f.waiting() > 0 || f.readers() == 0 || f.loose() <= keep)
                .await;
            fill.trim(keep);
        }
    }

    fn queue(&self, cache: &ObjectCache, fill: &Fill, c: Chunk, permit: OwnedSemaphorePermit) {
        fill.queued(c.index);
        // Readable at once from memory (a recorded object whose writes are still
        // queued, a reader that fell behind): the write puts it there again anyway.
        cache.inner.store.hold_in_memory(c.id, c.bytes.clone());
        let (index, len) = (c.index, c.bytes.len() as i64);
        let job = Job {
            chunk: c,
            _permit: permit,
        };
        if self.tx.send(job).is_ok() {
            cache.inner.metrics.cache_fill_buffer_bytes.add(len);
        } else {
            // The writer is gone (it panicked): the chunk stays held, loose.
            fill.unqueued(index);
        }
    }

    fn skip(&mut self, cache: &ObjectCache, c: Chunk) {
        self.skipped += 1;
        let m = &cache.inner.metrics;
        m.cache_fill_skipped_chunks.inc();
        m.cache_fill_skipped_bytes.inc_by(c.bytes.len() as u64);
        // A reader that falls behind may still find it here, not at the origin.
        cache.inner.store.hold_in_memory(c.id, c.bytes);
    }

    /// The fill's end, after its last chunks (`last`, not yet released to readers)
    /// arrived and checked. With nothing skipped, they are queued too, and the
    /// object is recorded at once when every chunk is on disk or in the memory cache
    /// (queued chunks are), its writes finishing behind ([`forget_unwritten`]), else
    /// after every queued write (at most the budget's worth) if the disk then holds it
    /// all; with a skip, nothing is awaited and the object is recorded only once its
    /// gaps are filled ([`fill_gaps`], after the queued writes). Then the
    /// last chunks are released ([`super::fill::conclude`]): a client's last byte
    /// waits for the disk only when the memory cache cannot hold the object.
    pub(super) async fn finish(
        mut self,
        cache: &ObjectCache,
        fill: &Arc<Fill>,
        key: ObjectKey,
        digest: Option<Sha256Digest>,
        last: Vec<Chunk>,
    ) {
        let keep = self.skipped == 0;
        let budget = &cache.inner.fill_budget;
        for c in &last {
            let permit = if keep {
                budget.take(c.bytes.len()).await
            } else {
                // Written if there is room, else skipped too: its gap is filled later.
                budget.try_take(c.bytes.len())
            };
            match permit {
                Some(p) => self.queue(cache, fill, c.clone(), p),
                None => self.skip(cache, c.clone()),
            }
        }
        let Self { tx, writer, .. } = self;
        drop(tx);
        let store = &cache.inner.store;
        // Every chunk either on disk or in the memory cache (queued chunks are put
        // there when queued): the object is recorded now and its last chunks
        // released, without waiting for the disk; the writes finish behind, and a
        // failed one forgets the object. Otherwise (no memory cache, or it evicted a
        // queued chunk) the writes are awaited first, as the disk must then hold it.
        let readable = keep && {
            let mut ids = fill.chunk_ids_partial();
            for c in &last {
                if let Some(slot) = ids.get_mut(c.index) {
                    *slot = Some(c.id);
                }
            }
            ids.iter().all(|id| {
                id.is_some_and(|id| store.chunk_len(&id).is_some() || store.contains(&id))
            })
        };
        let mut writer = Some(writer);
        // Counted before any reader sees the end, so a shutdown right after it waits.
        let running = readable.then(|| {
            cache.inner.writers.send_modify(|n| *n += 1);
            Running(cache.inner.writers.clone())
        });
        if keep
            && !readable
            && let Some(w) = writer.take()
            && let Err(e) = w.await
        {
            tracing::warn!(url = %fill.url, error = %e, "chunk writer task failed");
        }
        let later = super::fill::conclude(
            cache,
            fill,
            key,
            digest,
            with_stored(store, keep, last),
            Source::Origin,
            match (keep, readable) {
                (false, _) => Record::Skip,
                (true, false) => Record::OnDisk,
                (true, true) => Record::Readable,
            },
        )
        .await;
        if let Some(m) = later
            && let Some(w) = writer.take()
        {
            tokio::spawn(fill_gaps(cache.clone(), fill.clone(), m, w));
        }
        if let Some(running) = running
            && let Some(w) = writer.take()
        {
            let (cache, fill) = (cache.clone(), fill.clone());
            tokio::spawn(async move {
                forget_unwritten(&cache, &fill, w).await;
                drop(running);
            });
        }
    }
}

/// The end of a fill that skipped chunks for caching (the disk was behind its
/// client), after its queued writes (`writer`): each chunk of `m` the disk lacks is
/// written from the memory cache if it still holds it, else fetched again from the
/// origin by `Range` and checked against its id
/// (`shoal_origin_fetches_total{reason="skipped"}`); then `m` is recorded. Gives up
/// (the next request fills the object anew) when a fetch or write fails, and leaves
/// the URL alone once another version or fill of it came first
/// (`shoal_cache_fill_gaps_total{outcome}`). One chunk at a time: the gaps of a disk
/// that was behind are few, and the origin is not asked for them all at once.
async fn fill_gaps(cache: ObjectCache, fill: Arc<Fill>, m: ObjectMeta, writer: JoinHandle<()>) {
    if let Err(e) = writer.await {
        tracing::warn!(url = %fill.url, error = %e, "chunk writer task failed");
    }
    let store = &cache.inner.store;
    let _pin = store.pin(m.manifest.chunks.iter().copied());
    let outcome = |o: &str| {
        cache
            .inner
            .metrics
            .cache_fill_gaps
            .with_label_values(&[o])
            .inc();
    };
    let mut fetched = 0usize;
    for (i, id) in m.manifest.chunks.iter().enumerate() {
        if cache.superseded(&m) {
            outcome("superseded");
            return;
        }
        if store.chunk_len(id).is_some() {
            continue;
        }
        if let Some(b) = store.memory_get(id)
            && store.put(*id, b).await.is_ok()
        {
            continue;
        }
        // Not read through a `200` of an origin that ignores `Range`: for every gap
        // that would be the object up to it.
        let got = cache
            .fetch_chunk(
                &fill.url,
                fill.upstream.as_ref(),
                &fill.repr,
                fill.layout,
                (i, *id),
                FetchReason::Skipped,
                false,
            )
            .await;
        fetched += 1;
        // A stored chunk is on disk (`put` succeeds only then), pinned above.
        let stored = match got {
            Ok(b) => store.put(*id, b).await.map_err(|e| e.to_string()),
            Err(e) => Err(e.to_string()),
        };
        if let Err(e) = stored {
            tracing::info!(url = %m.url, chunk = i, error = %e, "a skipped chunk could not be fetched and stored again; object not cached");
            outcome("failed");
            return;
        }
    }
    if cache.superseded(&m) {
        outcome("superseded");
        return;
    }
    tracing::info!(url = %m.url, fetched, "skipped chunks written; object recorded");
    cache.remember(Arc::new(m)).await;
    outcome("recorded");
}

/// Counts a writer task down when it ends.
struct Running(tokio::sync::watch::Sender<usize>);

impl Drop for Running {
    fn drop(&mut self) {
        self.0.send_modify(|n| *n = n.saturating_sub(1));
    }
}

impl ObjectCache {
    /// Waits until the queued writes of every object recorded ahead of them are done
    /// (on disk or failed), at most `grace`: an agent stopped right after a client's
    /// last byte keeps that object. Fills still running are not waited for. Whether
    /// everything drained.
    pub async fn drain_writes(&self, grace: std::time::Duration) -> bool {
        let mut rx = self.inner.writers.subscribe();
        tokio::time::timeout(grace, rx.wait_for(|n| *n == 0))
            .await
            .is_ok_and(|r| r.is_ok())
    }
}

/// Each last chunk with whether the disk has it.
fn with_stored(
    store: &crate::store::ChunkStore,
    keep: bool,
    last: Vec<Chunk>,
) -> Vec<(Chunk, bool)> {
    last.into_iter()
        .map(|c| {
            let stored = keep && store.chunk_len(&c.id).is_some();
            (c, stored)
        })
        .collect()
}

/// Once the writes of a fill recorded ahead of them are done: forgets the object if
/// the disk did not take every chunk (a write failed, or the chunk was evicted at
/// once), so the next request fills it anew rather than repairing chunk by chunk.
async fn forget_unwritten(cache: &ObjectCache, fill: &Fill, writer: JoinHandle<()>) {
    if let Err(e) = writer.await {
        tracing::warn!(url = %fill.url, error = %e, "chunk writer task failed");
    }
    let store = &cache.inner.store;
    let Some(ids) = fill.chunk_ids() else { return };
    let recorded = cache
        .cached(&fill.url)
        .is_some_and(|m| m.manifest.chunks == ids);
    if recorded && !ids.iter().all(|id| store.chunk_len(id).is_some()) {
        tracing::info!(url = %fill.url, "chunks recorded ahead of their writes did not reach the disk; forgotten");
        cache.invalidate(&fill.url).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loose_chunks_of_all_fills_stay_within_max_of_loose_all_and_fills() {
        // One or two fills keep the full read-ahead margin.
        assert_eq!(loose_keep(0), LOOSE);
        assert_eq!(loose_keep(1), LOOSE);
        assert_eq!(loose_keep(2), LOOSE);
        // Many keep at least the newest one.
        assert_eq!(loose_keep(16), 1);
        assert_eq!(loose_keep(10_000), 1);
        for fills in 1..200 {
            let keep = loose_keep(fills);
            assert!((1..=LOOSE).contains(&keep), "{fills}: {keep}");
            assert!(
                keep * fills <= LOOSE_ALL.max(fills),
                "{fills} fills keep {keep} each"
            );
        }
    }
}
