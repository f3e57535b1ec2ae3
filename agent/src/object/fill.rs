//! A fill: one object version being fetched, shared by every client that wants it.
//!
//! Chunks complete in any order (the origin fills in order, the swarm out of order);
//! readers wait for the chunk they need next and are woken on every completion. A
//! chunk that could not be written to disk is held in the fill's memory until the
//! fill is dropped, so a full or read-only disk never fails a client.
//!
//! An origin fill (`origin_fill`, `behind`) hands each chunk to readers with its
//! bytes before it is written (write-behind): the bytes stay held until the store has
//! them, and a chunk the disk did not take (skipped or failed) is held only until a
//! few newer ones are ([`Fill::trim`]); a reader that falls further behind reads it
//! from the memory cache or fetches it again from the origin. The fill counts the
//! readers blocked on a chunk that is not there yet ([`Fill::waiting`]): while none
//! is, nobody is held up by the fill, and it may wait for the disk.
//!
//! A plain origin fill also holds the origin's bytes of the chunks it has not
//! completed yet (`cut`): a reader waiting on such a chunk follows them
//! ([`Fill::follow`]) and sends them as they arrive, so a cold miss's first byte
//! waits for the origin's first frame, not for a whole chunk to arrive and be hashed.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use bytes::Bytes;
use shoal_proto::{Chunk, ChunkId, Layout, Manifest, ObjectKey, Sha256Digest};
use tokio::sync::watch;

use crate::metrics::Source;
use crate::object::Upstream;
use crate::object::cut::Cut;
use crate::object::error::FillError;
use crate::object::meta::{self, Repr};
use crate::object::{ObjectCache, ObjectMeta};
use crate::origin::reason::FetchReason;
use crate::store::PinGuard;

/// A completed chunk as a reader sees it.
#[derive(Debug, Clone)]
pub struct Ready {
    pub id: ChunkId,
    pub source: Source,
    /// The bytes, when they are not in the store (write failed).
    pub held: Option<Bytes>,
}

#[derive(Debug)]
struct State {
    chunks: Vec<Option<(ChunkId, Source)>>,
    done: usize,
    /// The first chunk not done yet (`chunks.len()` when complete).
    frontier: usize,
    held: HashMap<usize, Bytes>,
    failed: Option<FillError>,
    pins: Vec<PinGuard>,
    /// Readers in [`Fill::wait`], by the chunk they wait for (counted from their first
    /// look until they return or are dropped: a suspended wait may outlive its chunk).
    waits: BTreeMap<usize, usize>,
    /// Responses streaming from the fill ([`Fill::reader`]).
    readers: usize,
    /// Held chunks not queued for the disk (skipped, or their write failed), by
    /// index: the ones [`Fill::trim`] may drop.
    loose: BTreeMap<usize, ()>,
    /// Origin bytes of chunks not completed yet, for followers (`cut`).
    cut: Cut,
}

/// See the module docs.
#[derive(Debug)]
pub struct Fill {
    pub url: String,
    pub layout: Layout,
    pub repr: Repr,
    /// Set when every byte comes from one origin response (a plain fill), to the
    /// reason of its request; `None` for a swarm fill (chunk by chunk).
    pub origin: Option<FetchReason>,
    /// Registry mirrors: the URL to fetch chunks from and how (`url` is then the
    /// digest key, not a URL).
    pub upstream: Option<(http::Uri, Arc<Upstream>)>,
    state: Mutex<State>,
    tx: watch::Sender<()>,
    /// Wakes readers following the origin's bytes ([`Fill::follow`]) only.
    cut_tx: watch::Sender<()>,
}

impl Fill {
    pub fn new(url: String, layout: Layout, repr: Repr) -> Self {
        let (tx, _) = watch::channel(());
        let n = layout.chunk_count();
        let state = State {
            chunks: vec![None; n],
            done: 0,
            frontier: 0,
            held: HashMap::new(),
            failed: None,
            pins: Vec::new(),
            waits: BTreeMap::new(),
            readers: 0,
            loose: BTreeMap::new(),
            cut: Cut::default(),
        };
        Self {
            url,
            layout,
            repr,
            origin: None,
            upstream: None,
            state: Mutex::new(state),
            tx,
            cut_tx: watch::channel(()).0,
        }
    }

    /// Marks the fill as streamed from one origin response sent for `reason`.
    pub fn with_origin(mut self, reason: FetchReason) -> Self {
        self.origin = Some(reason);
        self
    }

    /// Makes origin requests for chunks go to `url` as `upstream` says (when set).
    pub fn with_upstream(mut self, url: http::Uri, upstream: Option<Arc<Upstream>>) -> Self {
        self.upstream = upstream.map(|u| (url, u));
        self
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // A panic while holding this lock would be a bug in this module; the state
        // stays consistent because every mutation is a single assignment.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Records chunk `index` as verified. `held` carries its bytes if the store
    /// could not keep them; `pin` keeps a stored chunk from eviction while the fill
    /// lives. Out-of-range and repeated completions are ignored.
    pub fn complete(
        &self,
        index: usize,
        id: ChunkId,
        source: Source,
        held: Option<Bytes>,
        pin: Option<PinGuard>,
    ) {
        {
            let mut s = self.lock();
            let Some(slot) = s.chunks.get_mut(index) else {
                return;
            };
            if slot.is_some() {
                return;
            }
            *slot = Some((id, source));
            s.done += 1;
            while s.chunks.get(s.frontier).is_some_and(Option::is_some) {
                s.frontier += 1;
            }
            let floor = self.layout.chunk_bounds(s.frontier).start;
            s.cut.trim(floor);
            if let Some(b) = held {
                s.held.insert(index, b);
                s.loose.insert(index, ());
            }
            s.pins.extend(pin);
        }
        self.tx.send_replace(());
    }

    /// Stops the fill; waiting readers get the error (the first one, if called
    /// again).
    pub fn fail(&self, e: FillError) {
        {
            let mut s = self.lock();
            if s.failed.is_none() {
                s.failed = Some(e);
            }
            s.cut.close();
        }
        self.tx.send_replace(());
        self.cut_tx.send_replace(());
    }

    /// Chunks done so far.
    pub fn done(&self) -> usize {
        self.lock().done
    }

    /// The first chunk not done yet: every chunk before it is done (the chunk count
    /// when complete). A plain fill's chunks complete in order, so this is where its
    /// origin stream is; a swarm fill may hold chunks past it.
    pub fn frontier(&self) -> usize {
        self.lock().frontier
    }

    pub fn is_complete(&self) -> bool {
        self.lock().done == self.layout.chunk_count()
    }

    pub fn failed(&self) -> Option<FillError> {
        self.lock().failed.clone()
    }

    /// Whether chunk `index` is done.
    pub fn has(&self, index: usize) -> bool {
        self.lock().chunks.get(index).is_some_and(Option::is_some)
    }

    /// The chunk ids, once every chunk is done.
    pub fn chunk_ids(&self) -> Option<Vec<ChunkId>> {
        self.lock()
            .chunks
            .iter()
            .map(|c| c.map(|(id, _)| id))
            .collect()
    }

    /// The ids known so far.
    pub fn chunk_ids_partial(&self) -> Vec<Option<ChunkId>> {
        self.lock()
            .chunks
            .iter()
            .map(|c| c.map(|(id, _)| id))
            .collect()
    }

    /// Waits until chunk `index` is done (or the fill failed).
    pub async fn wait(&self, index: usize) -> Result<Ready, FillError> {
        let mut rx = self.tx.subscribe();
        let mut blocked: Option<Blocked<'_>> = None;
        loop {
            {
                let s = self.lock();
                match s.chunks.get(index) {
                    None => {
                        return Err(FillError::Internal(format!(
                            "no chunk {index} in a fill of {} chunks",
                            s.chunks.len()
                        )));
                    }
                    Some(Some((id, source))) => {
                        return Ok(Ready {
                            id: *id,
                            source: *source,
                            held: s.held.get(&index).cloned(),
                        });
                    }
                    Some(None) => {}
                }
                if let Some(f) = &s.failed {
                    return Err(f.clone());
                }
            }
            if blocked.is_none() {
                blocked = Some(Blocked::new(self, index));
            }
            if rx.changed().await.is_err() {
                // The sender lives in self, so this cannot happen while we hold &self.
                return Err(FillError::Internal("fill dropped".into()));
            }
        }
    }

    /// Readers waiting for a chunk at or past the frontier: held up by the fill (a
    /// plain fill completes in order, so none of those chunks is done).
    pub fn waiting(&self) -> usize {
        let s = self.lock();
        s.waits.range(s.frontier..).map(|(_, n)| n).sum()
    }

    /// Responses streaming from the fill now.
    pub fn readers(&self) -> usize {
        self.lock().readers
    }

    /// Counts a response streaming from the fill while the guard lives.
    pub fn reader(self: &Arc<Self>) -> Reading {
        self.lock().readers += 1;
        Reading(self.clone())
    }

    /// Held chunks not queued for the disk (see [`Fill::trim`]).
    pub fn loose(&self) -> usize {
        self.lock().loose.len()
    }

    /// Marks held chunk `index` as queued for the disk: [`Fill::trim`] keeps it
    /// until [`Fill::stored`] or [`Fill::unqueued`].
    pub fn queued(&self, index: usize) {
        self.lock().loose.remove(&index);
    }

    /// The store has chunk `index` now: its bytes are no longer held (readers read
    /// it from the store); `pin` keeps it from eviction while the fill lives.
    pub fn stored(&self, index: usize, pin: PinGuard) {
        {
            let mut s = self.lock();
            s.held.remove(&index);
            s.loose.remove(&index);
            s.pins.push(pin);
        }
        self.tx.send_replace(());
    }

    /// Chunk `index` was queued for the disk but not written: held as a loose chunk.
    pub fn unqueued(&self, index: usize) {
        let mut s = self.lock();
        if s.held.contains_key(&index) {
            s.loose.insert(index, ());
        }
    }

    /// Drops the bytes of the oldest loose chunks (not on disk, not queued) until at
    /// most `keep` are held. Readers that still need them read them from the memory
    /// cache or fetch them from the origin again ([`ObjectCache::read_chunk`]).
    ///
    /// [`ObjectCache::read_chunk`]: crate::object::ObjectCache::read_chunk
    pub fn trim(&self, keep: usize) {
        let mut s = self.lock();
        while s.loose.len() > keep {
            let Some((i, ())) = s.loose.pop_first() else {
                break;
            };
            s.held.remove(&i);
        }
    }

    /// Starts holding the origin's bytes before `limit` for followers (`cut`): a
    /// plain origin fill, before any reader can see it.
    pub(crate) fn open_cut(&self, limit: u64) {
        self.lock().cut.open(limit);
    }

    /// The origin's next bytes, at object offset `at`, before they are chunked.
    /// Followers are woken when enough is new (`cut::COALESCE`); the rest waits for
    /// [`Fill::announce`]. Whether some followers were not woken for them.
    pub(crate) fn push(&self, at: u64, data: Bytes) -> bool {
        let (wake, owed) = {
            let mut s = self.lock();
            let wake = s.cut.push(at, data) && s.cut.announce();
            (wake, s.cut.followers > 0 && s.cut.end() > s.cut.announced())
        };
        if wake {
            self.cut_tx.send_replace(());
        }
        owed
    }

    /// The chunk starting at `at` was joined into `bytes` (before it is hashed).
    pub(crate) fn joined(&self, at: u64, bytes: &Bytes) {
        self.lock().cut.joined(at, bytes);
    }

    /// Wakes followers if bytes arrived since they were last woken (the origin
    /// paused). Whether there were.
    pub(crate) fn announce(&self) -> bool {
        let news = self.lock().cut.announce();
        if news {
            self.cut_tx.send_replace(());
        }
        news
    }

    /// The origin's bytes from object offset `pos` (up to `upto`) while the chunk
    /// holding `pos` is not done: waits until some arrive past `pos` and returns them
    /// (slices of what the fill holds, no copies), or `None` once the chunk is done
    /// (read it with [`Fill::wait`]) or when `pos` is never served early (a swarm
    /// fill, or the end held back). Counted as a reader blocked on that chunk while
    /// it waits.
    pub async fn follow(&self, pos: u64, upto: u64) -> Result<Option<Vec<Bytes>>, FillError> {
        let cs = u64::from(self.layout.chunk_size);
        let index = usize::try_from(pos / cs).unwrap_or(usize::MAX);
        let mut rx = self.tx.subscribe();
        let mut cut_rx = self.cut_tx.subscribe();
        let mut blocked: Option<(Blocked<'_>, Following<'_>)> = None;
        loop {
            {
                let s = self.lock();
                if let Some(f) = &s.failed {
                    return Err(f.clone());
                }
                if !s.chunks.get(index).is_some_and(Option::is_none) || !s.cut.covers(pos) {
                    return Ok(None);
                }
                let got = s.cut.from(pos, upto);
                if !got.is_empty() {
                    return Ok(Some(got));
                }
            }
            if blocked.is_none() {
                blocked = Some((Blocked::new(self, index), Following::new(self)));
                // Bytes may have come in before we counted as following.
                continue;
            }
            tokio::select! {
                r = rx.changed() => if r.is_err() {
                    return Err(FillError::Internal("fill dropped".into()));
                },
                r = cut_rx.changed() => if r.is_err() {
                    return Err(FillError::Internal("fill dropped".into()));
                },
            }
        }
    }

    /// Waits until `ready` holds for the fill's state, or the fill failed. Woken on
    /// every change: a chunk done or stored, a reader blocked.
    pub(crate) async fn until(&self, ready: impl Fn(&Fill) -> bool) {
        let mut rx = self.tx.subscribe();
        loop {
            if ready(self) || self.lock().failed.is_some() {
                return;
            }
            if rx.changed().await.is_err() {
                return;
            }
        }
    }

    /// Waits until the fill is complete or failed.
    pub async fn finished(&self) -> Result<(), FillError> {
        let mut rx = self.tx.subscribe();
        loop {
            {
                let s = self.lock();
                if let Some(f) = &s.failed {
                    return Err(f.clone());
                }
                if s.done == self.layout.chunk_count() {
                    return Ok(());
                }
            }
            if rx.changed().await.is_err() {
                return Err(FillError::Internal("fill dropped".into()));
            }
        }
    }
}

/// A response streaming from a fill ([`Fill::reader`]); its drop wakes the fill's
/// task, which may be waiting for its slowest reader.
#[derive(Debug)]
pub struct Reading(Arc<Fill>);

impl Drop for Reading {
    fn drop(&mut self) {
        {
            let mut s = self.0.lock();
            s.readers = s.readers.saturating_sub(1);
        }
        self.0.tx.send_replace(());
    }
}

/// A reader blocked in [`Fill::wait`], counted in `waiting` while it lives (also
/// when its wait is cancelled). Creating one wakes the fill's task, which may be
/// waiting for the disk only while no reader is held up.
struct Blocked<'a>(&'a Fill, usize);

impl<'a> Blocked<'a> {
    fn new(f: &'a Fill, index: usize) -> Self {
        *f.lock().waits.entry(index).or_default() += 1;
        f.tx.send_replace(());
        Self(f, index)
    }
}

impl Drop for Blocked<'_> {
    fn drop(&mut self) {
        let mut s = self.0.lock();
        if let Some(n) = s.waits.get_mut(&self.1) {
            *n -= 1;
            if *n == 0 {
                s.waits.remove(&self.1);
            }
        }
    }
}

/// A reader in [`Fill::follow`], counted as a follower while it lives: the fill wakes
/// followers only while there is one.
struct Following<'a>(&'a Fill);

impl<'a> Following<'a> {
    fn new(f: &'a Fill) -> Self {
        f.lock().cut.followers += 1;
        Self(f)
    }
}

impl Drop for Following<'_> {
    fn drop(&mut self) {
        let mut s = self.0.lock();
        s.cut.followers = s.cut.followers.saturating_sub(1);
    }
}

// What every fill does at its end, whoever fetched the chunks (the origin GET in
// `origin_fill`, the swarm download in `crate::swarm`).

/// Stores the last chunks, records the object, ends the flight, and only then tells
/// readers the last chunks are there: a client that saw its last byte and asks again
/// finds the object cached, and an agent stopped right after keeps it.
pub(crate) async fn finish(
    cache: &ObjectCache,
    fill: &Arc<Fill>,
    key: ObjectKey,
    digest: Option<Sha256Digest>,
    last: Vec<Chunk>,
    source: Source,
) {
    let mut held = Vec::new();
    for c in last {
        let stored = cache.inner.store.put(c.id, c.bytes.clone()).await.is_ok();
        held.push((c, stored));
    }
    conclude(cache, fill, key, digest, held, source, Record::OnDisk).await;
}

/// Whether a fill's object is recorded at its end ([`conclude`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Record {
    /// Not recorded: chunks were skipped for caching.
    Skip,
    /// Recorded if the disk holds every chunk.
    OnDisk,
    /// Recorded if every chunk is on disk or in the memory cache: its writes are
    /// still queued behind (the write-behind forgets the object if one fails).
    Readable,
}

/// The end of every fill, once its last chunks (`held`, each with whether the store
/// took it) are known: records the object as `record` says, ends the flight, and
/// only then completes the last chunks for readers. With [`Record::Skip`], the
/// object it would have recorded, for the caller to record once the disk holds it.
pub(crate) async fn conclude(
    cache: &ObjectCache,
    fill: &Arc<Fill>,
    key: ObjectKey,
    digest: Option<Sha256Digest>,
    held: Vec<(Chunk, bool)>,
    source: Source,
    record: Record,
) -> Option<ObjectMeta> {
    let url = fill.url.clone();
    let mut ids = fill.chunk_ids_partial();
    for (c, _) in &held {
        if let Some(slot) = ids.get_mut(c.index) {
            *slot = Some(c.id);
        }
    }
    let ids: Option<Vec<_>> = ids.into_iter().collect();
    // Remembered only if the disk holds every chunk (the fill pins them): an object
    // the disk kept in part would cost origin `Range` repairs on every later "hit".
    let store = &cache.inner.store;
    let on_disk = |m: &Manifest| {
        m.chunks.iter().all(|id| {
            store.chunk_len(id).is_some() || (record == Record::Readable && store.contains(id))
        })
    };
    let meta = |manifest| ObjectMeta {
        url: url.clone(),
        manifest,
        repr: fill.repr.clone(),
        validated_at_ms: meta::unix_ms(SystemTime::now()),
        immutable: digest.is_some(),
    };
    let mut later = None;
    match ids.map(|ids| Manifest::new(key, fill.layout, ids, digest.map(|d| d.to_string()))) {
        Some(Ok(manifest)) if record == Record::Skip => {
            tracing::info!(%url, "object served, not recorded yet: chunks were skipped while the disk was behind");
            cache.inner.metrics.cache_fills_incomplete.inc();
            later = Some(meta(manifest));
        }
        Some(Ok(manifest)) if on_disk(&manifest) => {
            cache.remember(Arc::new(meta(manifest))).await;
        }
        Some(Err(e)) => tracing::error!(%url, error = %e, "manifest rejected"),
        Some(Ok(_)) => {
            tracing::info!(%url, "object served but not cached: the disk did not keep all its chunks")
        }
        None => {}
    }
    cache.end_flight(&url, fill);
    for (c, stored) in held {
        if stored {
            let pin = cache.inner.store.pin([c.id]);
            fill.complete(c.index, c.id, source, None, Some(pin));
        } else {
            fill.complete(c.index, c.id, source, Some(c.bytes), None);
        }
    }
    later
}

/// Stores a verified chunk from any source and completes it in the fill; if the store
/// cannot keep it, the fill holds the bytes.
pub(crate) async fn complete(cache: &ObjectCache, fill: &Fill, c: Chunk, source: Source) {
    let store = &cache.inner.store;
    match store.put(c.id, c.bytes.clone()).await {
        Ok(()) => {
            let pin = store.pin([c.id]);
            fill.complete(c.index, c.id, source, None, Some(pin));
        }
        Err(e) => {
            tracing::debug!(error = %e, "chunk kept in memory only");
            fill.complete(c.index, c.id, source, Some(c.bytes), None);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn readers_wake_in_any_order() {
        let layout = Layout::new(40_000, 16384).unwrap();
        let f = Arc::new(Fill::new("http://o/x".into(), layout, Repr::default()));
        let r = {
            let f = f.clone();
            tokio::spawn(async move { f.wait(2).await })
        };
        f.complete(0, ChunkId::of(b"a"), Source::Origin, None, None);
        f.complete(
            2,
            ChunkId::of(b"c"),
            Source::Peer,
            Some(Bytes::from_static(b"c")),
            None,
        );
        let got = r.await.unwrap().unwrap();
        assert_eq!(got.id, ChunkId::of(b"c"));
        assert_eq!(got.held.as_deref(), Some(&b"c"[..]));
        assert!(!f.is_complete());
        assert_eq!(f.frontier(), 1);
        f.complete(1, ChunkId::of(b"b"), Source::Origin, None, None);
        f.complete(1, ChunkId::of(b"x"), Source::Origin, None, None);
        assert!(f.is_complete());
        assert_eq!(f.frontier(), 3);
        f.finished().await.unwrap();
        assert_eq!(f.chunk_ids().unwrap()[1], ChunkId::of(b"b"));
    }

    #[tokio::test]
    async fn followers_get_the_origin_bytes_until_their_chunk_is_done() {
        let layout = Layout::new(40_000, 16384).unwrap();
        let f = Arc::new(Fill::new("http://o/x".into(), layout, Repr::default()));
        let data = Bytes::from((0..40_000u32).map(|i| (i % 251) as u8).collect::<Vec<_>>());
        // Not opened (a swarm fill): nothing is served early.
        f.push(0, data.slice(..100));
        assert!(f.follow(10, 40_000).await.unwrap().is_none());
        f.open_cut(39_999);
        f.push(0, data.slice(..200));
        let got = f.follow(150, 40_000).await.unwrap().unwrap();
        assert_eq!(got.concat(), &data[150..200]);
        let r = {
            let f = f.clone();
            tokio::spawn(async move { f.follow(200, 300).await })
        };
        // The follower counts as waiting on chunk 0, and is woken at the pause.
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(5);
        while f.waiting() == 0 {
            assert!(tokio::time::Instant::now() < deadline, "no follower");
            tokio::task::yield_now().await;
        }
        assert!(f.push(200, data.slice(200..1000)), "owed a wake-up");
        assert!(f.announce());
        let got = r.await.unwrap().unwrap().unwrap();
        assert_eq!(got.concat(), &data[200..300]);
        // Chunk 0 done: read from the fill; chunk 1's bytes still follow.
        f.push(1000, data.slice(1000..20_000));
        f.complete(0, ChunkId::of(&data[..16384]), Source::Origin, None, None);
        assert!(f.follow(500, 40_000).await.unwrap().is_none());
        let got = f.follow(16384, 17_000).await.unwrap().unwrap();
        assert_eq!(got.concat(), &data[16384..17_000]);
        // The last byte is held back; a failure reaches followers.
        f.push(20_000, data.slice(20_000..));
        let got = f.follow(39_000, 40_000).await.unwrap().unwrap();
        assert_eq!(got.concat(), &data[39_000..39_999]);
        f.fail(FillError::Internal("origin reset".into()));
        assert!(f.follow(39_999, 40_000).await.is_err());
    }

    #[tokio::test]
    async fn failure_reaches_waiters() {
        let layout = Layout::new(40_000, 16384).unwrap();
        let f = Arc::new(Fill::new("http://o/x".into(), layout, Repr::default()));
        let r = {
            let f = f.clone();
            tokio::spawn(async move { f.wait(1).await })
        };
        tokio::task::yield_now().await;
        f.fail(FillError::Internal("origin reset".into()));
        f.fail(FillError::Store("second".into()));
        let e = r.await.unwrap().unwrap_err();
        assert!(
            matches!(&e, FillError::Internal(w) if w == "origin reset"),
            "{e}"
        );
        assert!(f.wait(9).await.is_err());
    }
}
