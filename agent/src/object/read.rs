//! Reading an object version's bytes for a client: chunk by chunk, in order, each
//! verified (by the store on disk reads, or on arrival for fills), read a few chunks
//! ahead, and streamed into the response body as it is ready.
//!
//! A chunk that is gone or corrupt on disk is fetched again from the origin with a
//! `Range` request guarded by `If-Range`; the answer must be of the cached version
//! (see [`super::version`]) and match the manifest's id. An origin that ignores
//! `Range` (a `200` with the version's validator) is read through to the chunk. If it is not, the response is
//! cut (the client sees a reset, never a clean end of wrong bytes) and the object is
//! forgotten so the next request fetches it anew. A manifest that does not fit its
//! layout (metadata damaged on disk) also cuts the response and is forgotten.
//!
//! A response streaming from a plain origin fill does not wait for the chunk it needs
//! to be complete: it sends the origin's bytes of that chunk as the fill receives them
//! ([`Fill::follow`], `cut`), then the rest of the chunk once it is complete. A range
//! that ends before the fill completes its chunk ends then. Responses from a swarm
//! fill or a cached object read whole chunks, as before.

use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::{Bytes, BytesMut};
use futures_util::StreamExt;
use http::header::{self, HeaderValue};
use http::{Method, Response, StatusCode, Uri};
use http_body::Frame;
use http_body_util::StreamBody;
use http_body_util::combinators::BoxBody;
use hyper::body::Incoming;
use shoal_proto::{ByteRange, ChunkId, Layout};
use tokio::sync::mpsc;

use super::budget::Holder;
use super::version::{self, Changed};
use super::{Fill, FillError, ObjectCache, ObjectMeta, Repr};
use crate::metrics::Source;
use crate::origin::reason::FetchReason;
use crate::origin::{OriginError, next_data};
use crate::store::GroupedChunk;
use shoal_proto::groups::Groups;

/// The response body type of the proxy.
pub type ProxyBody = BoxBody<Bytes, io::Error>;

/// Where a body task sends its frames; an `Err` ends the response with a reset.
pub(super) type Frames = mpsc::Sender<Result<Frame<Bytes>, io::Error>>;

/// Chunks read ahead of the one being sent.
const READ_AHEAD: usize = 3;

/// What a read of one chunk of a response got.
enum Got {
    /// Its bytes, verified, and where they came from.
    Whole(Bytes, Source),
    /// To be sent one group at a time (no room in the read budget).
    Grouped(Groupable, Source),
    /// Already sent, as the origin's bytes arrived (`cut`).
    Passed,
}

/// Where a chunk sent one group at a time comes from.
#[derive(Debug)]
enum Groupable {
    /// The memory cache: each group is copied out, so the response never holds the
    /// chunk (which the cache may evict meanwhile).
    Memory(ChunkId, u64),
    /// A file checked against the id, each group checked again as it is read.
    Disk(GroupedChunk),
}

/// What a response is served from.
#[derive(Debug, Clone)]
pub enum Serve {
    Object(Arc<ObjectMeta>),
    Fill(Arc<Fill>),
}

impl Serve {
    pub fn layout(&self) -> Layout {
        match self {
            Serve::Object(m) => m.manifest.layout,
            Serve::Fill(f) => f.layout,
        }
    }

    pub fn repr(&self) -> &Repr {
        match self {
            Serve::Object(m) => &m.repr,
            Serve::Fill(f) => &f.repr,
        }
    }

    pub fn url(&self) -> &str {
        match self {
            Serve::Object(m) => &m.url,
            Serve::Fill(f) => &f.url,
        }
    }
}

impl ObjectCache {
    /// The verified bytes of chunk `index` and where they came from.
    pub async fn read_chunk(&self, s: &Serve, index: usize) -> Result<(Bytes, Source), FillError> {
        let (id, source) = match s {
            Serve::Object(m) => match m.manifest.chunks.get(index) {
                Some(id) => (*id, Source::Cache),
                None => {
                    self.forget(s).await;
                    return Err(FillError::Store(format!(
                        "the manifest of {} has no chunk {index}",
                        m.url
                    )));
                }
            },
            Serve::Fill(f) => {
                let r = f.wait(index).await?;
                if let Some(b) = r.held {
                    return Ok((b, r.source));
                }
                (r.id, r.source)
            }
        };
        // Indexed but not returned: the disk's copy failed verification, could not
        // be read or vanished; not indexed: evicted.
        let reason = if self.inner.store.contains(&id) {
            FetchReason::VerifyFailed
        } else {
            FetchReason::Evicted
        };
        if let Ok(Some(b)) = self.inner.store.get(&id).await {
            return Ok((b, source));
        }
        let b = self.repair(s, index, id, reason).await?;
        Ok((b, Source::Origin))
    }

    /// Chunk `index` ready to be sent one group at a time (from the memory cache, or
    /// opened on disk and checked), and where it came from; `None` when that is not
    /// how to read it: a fill holds its bytes (shared, not copied), or it is neither
    /// in memory nor on disk, or failed its check ([`ObjectCache::read_chunk`] then
    /// repairs it).
    async fn read_grouped(
        &self,
        s: &Serve,
        index: usize,
    ) -> Result<Option<(Groupable, Source)>, FillError> {
        let (id, source) = match s {
            Serve::Object(m) => match m.manifest.chunks.get(index) {
                Some(id) => (*id, Source::Cache),
                None => return Ok(None),
            },
            Serve::Fill(f) => {
                let r = f.wait(index).await?;
                if r.held.is_some() {
                    return Ok(None);
                }
                (r.id, r.source)
            }
        };
        let store = &self.inner.store;
        if let Some(b) = store.memory_get(&id) {
            return Ok(Some((Groupable::Memory(id, b.len() as u64), source)));
        }
        match store.open_grouped(&id).await {
            Ok(Some(g)) => {
                self.inner.metrics.cache_reads_grouped.inc();
                Ok(Some((Groupable::Disk(g), source)))
            }
            Ok(None) => Ok(None),
            Err(e) => {
                tracing::debug!(chunk = %id, error = %e, "grouped read failed; reading whole");
                Ok(None)
            }
        }
    }

    /// Fetches chunk `index` again from the origin and checks it against `id`. An
    /// origin that no longer serves the version makes the object forgotten.
    async fn repair(
        &self,
        s: &Serve,
        index: usize,
        id: ChunkId,
        reason: FetchReason,
    ) -> Result<Bytes, FillError> {
        let upstream = match s {
            Serve::Fill(f) => f.upstream.clone(),
            Serve::Object(_) => None,
        };
        if upstream.is_none() && super::is_registry_key(s.url()) {
            // A registry object's fetch URL and credentials belong to the request
            // that filled it: forgotten, so the next request fills it anew.
            self.forget(s).await;
            return Err(FillError::Store(format!(
                "chunk {index} of {} is gone from the disk; forgotten",
                s.url()
            )));
        }
        // An origin that ignores `Range` is read through to the chunk: the bytes are
        // checked against `id` below, and the alternative (forgetting the object)
        // fetches all of it again on the next request anyway.
        let bytes = match self
            .fetch_chunk(
                s.url(),
                upstream.as_ref(),
                s.repr(),
                s.layout(),
                (index, id),
                reason,
                true,
            )
            .await
        {
            Ok(b) => b,
            Err(e) => {
                if e.is_origin_changed() || matches!(e, FillError::IdMismatch { .. }) {
                    self.forget(s).await;
                }
                return Err(e);
            }
        };
        if let Err(e) = self.inner.store.put(id, bytes.clone()).await {
            tracing::debug!(error = %e, "repaired chunk not stored");
        }
        Ok(bytes)
    }

    /// Chunk `index` of `url` fetched again ([`ObjectCache::fetch_range`]) and checked
    /// against its id `id`; a mismatch is counted as an origin verification failure.
    #[allow(clippy::too_many_arguments)]
    pub(super) async fn fetch_chunk(
        &self,
        url: &str,
        upstream: Option<&(Uri, Arc<super::Upstream>)>,
        repr: &Repr,
        layout: Layout,
        (index, id): (usize, ChunkId),
        reason: FetchReason,
        whole_ok: bool,
    ) -> Result<Bytes, FillError> {
        let bytes = self
            .fetch_range(url, upstream, repr, layout, index, reason, whole_ok)
            .await?;
        if !id.verifies(&bytes) {
            self.inner.metrics.verify_failed(Source::Origin);
            return Err(FillError::IdMismatch { index });
        }
        Ok(bytes)
    }

    /// Fetches the bytes of chunk `index` of the version `repr` of `url` with a `Range`
    /// request guarded by `If-Range` ([`ObjectCache::range_response`]), sent for
    /// `reason`; counts them as fetched from the origin. With `whole_ok`, an origin
    /// that answers `200` with the whole version (it ignores `Range`) is read up to
    /// the chunk's end, the bytes before it skipped. The caller verifies or hashes
    /// the bytes.
    #[allow(clippy::too_many_arguments)]
    pub async fn fetch_range(
        &self,
        url: &str,
        upstream: Option<&(Uri, Arc<super::Upstream>)>,
        repr: &Repr,
        layout: Layout,
        index: usize,
        reason: FetchReason,
        whole_ok: bool,
    ) -> Result<Bytes, FillError> {
        let bounds = layout.chunk_bounds(index);
        let len = bounds.end - bounds.start;
        let resp = self
            .range_response(
                url,
                upstream,
                repr,
                bounds.clone(),
                layout.size,
                reason,
                whole_ok,
            )
            .await?;
        // Bytes of the body before the chunk: only in a whole answer.
        let mut skip = if resp.status() == StatusCode::OK {
            bounds.start
        } else {
            0
        };
        let skipped = skip;
        let mut body = resp.into_body();
        let mut buf = BytesMut::with_capacity(len as usize);
        let timeout = self.inner.origin.read_timeout();
        while let Some(mut d) = next_data(&mut body, timeout, url).await? {
            if skip > 0 {
                let n = skip.min(d.len() as u64);
                skip -= n;
                d = d.slice(n as usize..);
            }
            if buf.len() as u64 + d.len() as u64 > len {
                if skipped > 0 {
                    // A whole answer goes on past the chunk: take what is ours.
                    let need = (len - buf.len() as u64) as usize;
                    buf.extend_from_slice(&d[..need]);
                    break;
                }
                return Err(self.changed(url, Changed::Longer(len)));
            }
            buf.extend_from_slice(&d);
        }
        if skipped > 0 {
            tracing::info!(%url, chunk = index, skipped, "origin ignored Range: read through to the chunk");
            self.inner.metrics.origin_fetched(reason, skipped);
        }
        if buf.len() as u64 != len {
            return Err(OriginError::Upstream {
                host: url.to_owned(),
                detail: format!("range response ended after {} of {len} bytes", buf.len()),
            }
            .into());
        }
        self.inner.metrics.origin_fetched(reason, len);
        Ok(buf.freeze())
    }

    /// Sends a `Range` request for `bounds` of the version `repr` (complete length
    /// `size`) of `url`, guarded by `If-Range`, for `reason`, and returns the answer
    /// with its body unread. The head must be of this version, exactly this range
    /// ([`version::check`]), or with `whole_ok` a `200` of the whole version
    /// ([`version::is_whole`]); else it is [`FillError::OriginChanged`] (counted in
    /// `shoal_origin_changed_total`). A `5xx` or `429` is a transient
    /// [`FillError::Origin`]. The caller checks the body's length.
    #[allow(clippy::too_many_arguments)]
    pub(crate) async fn range_response(
        &self,
        url: &str,
        upstream: Option<&(Uri, Arc<super::Upstream>)>,
        repr: &Repr,
        bounds: std::ops::Range<u64>,
        size: u64,
        reason: FetchReason,
        whole_ok: bool,
    ) -> Result<Response<Incoming>, FillError> {
        let uri: Uri = match upstream {
            Some((u, _)) => u.clone(),
            None => url
                .parse()
                .map_err(|_| FillError::Internal(format!("unparsable URL {url:?}")))?,
        };
        let mut h = upstream.map(|(_, u)| u.headers.clone()).unwrap_or_default();
        let range = format!("bytes={}-{}", bounds.start, bounds.end.saturating_sub(1));
        h.insert(
            header::RANGE,
            HeaderValue::from_str(&range)
                .map_err(|_| FillError::Internal(format!("bad range header {range:?}")))?,
        );
        h.insert(
            header::ACCEPT_ENCODING,
            HeaderValue::from_static("identity"),
        );
        let validator = repr
            .etag
            .as_deref()
            .filter(|e| shoal_proto::key::is_strong_etag(e));
        if let Some(Ok(v)) = validator
            .or(repr.last_modified.as_deref())
            .map(HeaderValue::from_str)
        {
            h.insert(header::IF_RANGE, v);
        }
        let origin = &self.inner.origin;
        let resp = if upstream.is_some() {
            origin
                .send_following(Method::GET, &uri, h, "range", reason)
                .await?
        } else {
            origin.send(Method::GET, &uri, h, "range", reason).await?
        };
        let status = resp.status();
        if status.is_server_error() || status == StatusCode::TOO_MANY_REQUESTS {
            return Err(OriginError::Upstream {
                host: url.to_owned(),
                detail: format!("range request answered {status}"),
            }
            .into());
        }
        if whole_ok && version::is_whole(status, resp.headers(), repr, size) {
            return Ok(resp);
        }
        version::check(status, resp.headers(), repr, bounds, size)
            .map_err(|why| self.changed(url, why))?;
        Ok(resp)
    }

    /// Counts and logs a ranged answer of `url` that is not of the version asked for.
    pub(crate) fn changed(&self, url: &str, why: Changed) -> FillError {
        self.inner.metrics.origin_changed.inc();
        tracing::warn!(%url, %why, "origin changed during a fill");
        FillError::OriginChanged { why }
    }

    async fn forget(&self, s: &Serve) {
        if let Serve::Object(m) = s {
            self.invalidate(&m.url).await;
        }
    }

    /// A body streaming `range` of `s`. Reading runs in its own task, a few chunks
    /// ahead; a read error ends the body with an error, which makes hyper drop the
    /// connection instead of finishing the response.
    ///
    /// A range far past what a fill has is served from an origin range request of
    /// its own instead ([`super::ahead`]).
    pub fn body(&self, s: Serve, range: ByteRange) -> ProxyBody {
        let (tx, rx) = mpsc::channel::<Result<Frame<Bytes>, io::Error>>(READ_AHEAD);
        let this = self.clone();
        tokio::spawn(async move {
            match super::ahead::ahead_of(&s, range) {
                Some(f) => this.serve_ahead(s, f, range, tx).await,
                None => this.stream(s, range, tx).await,
            }
        });
        let stream =
            futures_util::stream::unfold(
                rx,
                |mut rx| async move { rx.recv().await.map(|f| (f, rx)) },
            );
        BoxBody::new(StreamBody::new(stream))
    }

    /// Sends `range` of `s` into `tx`, chunk by chunk, until done, a read error
    /// (sent as the last item) or the receiver is gone.
    pub(super) async fn stream(&self, s: Serve, range: ByteRange, tx: Frames) {
        let this = self.clone();
        let layout = s.layout();
        let chunks = layout.chunks_for(range);
        let _pin = match &s {
            Serve::Object(m) => match m.manifest.chunks.get(chunks.clone()) {
                Some(ids) => Some(this.inner.store.pin(ids.iter().copied())),
                None => {
                    // Metadata damaged on disk: cut the response, fetch anew next time.
                    let e = FillError::Store(format!(
                        "the manifest of {} has {} chunk ids, its layout {}",
                        m.url,
                        m.manifest.chunks.len(),
                        layout.chunk_count()
                    ));
                    tracing::warn!(url = s.url(), error = %e, "response cut");
                    this.forget(&s).await;
                    let _ = tx.send(Err(io::Error::other(e.to_string()))).await;
                    return;
                }
            },
            Serve::Fill(_) => None,
        };
        // Counted so the fill knows whether it may wait for a slow reader (`behind`).
        let _reading = match &s {
            Serve::Fill(f) => Some(f.reader()),
            Serve::Object(_) => None,
        };
        // A plain origin fill's bytes are followed as they arrive (`cut`).
        let follow = match &s {
            Serve::Fill(f) if f.origin.is_some() => Some(f.clone()),
            _ => None,
        };
        // Sent up to here: past a chunk's start once its first bytes went out early.
        let mut pos = range.start;
        // The same, for the reads ahead: a chunk sent early is not read again (the
        // fill may have dropped its bytes, and a repair would fetch it for nothing).
        let sent = Arc::new(AtomicU64::new(pos));
        // Read-ahead within `cache.read_buffer` (`budget`): a share is taken once the
        // chunk can be read (a fill's chunk is there), so waiting for a slow fill
        // holds none. With no room, the read at the send position takes the
        // response's floor, and a chunk on disk is then read one group at a time.
        let holder = Arc::new(Holder::default());
        let reads = futures_util::stream::iter(chunks)
            .map(|i| {
                let (this, s, sent) = (this.clone(), s.clone(), sent.clone());
                let holder = holder.clone();
                let b = layout.chunk_bounds(i);
                let end = b.end.min(range.end);
                let len = (b.end - b.start) as usize;
                async move {
                    let passed = || sent.load(Ordering::Relaxed) >= end;
                    if let Serve::Fill(f) = &s {
                        let origin = f.origin.is_some();
                        if origin && passed() {
                            return (i, Ok(Got::Passed), None);
                        }
                        // A swarm fill's error comes again from `read_chunk`.
                        if let Err(e) = f.wait(i).await
                            && origin
                        {
                            return (i, Err(e), None);
                        }
                        if origin && passed() {
                            return (i, Ok(Got::Passed), None);
                        }
                    }
                    // The head: every byte before this chunk is sent.
                    let head = || sent.load(Ordering::Relaxed) >= b.start;
                    let mut share = this.inner.read_budget.take(&holder, len, head).await;
                    if share.is_floor() {
                        match this.read_grouped(&s, i).await {
                            // Each group takes the floor again when it is sent.
                            Ok(Some((g, source))) => return (i, Ok(Got::Grouped(g, source)), None),
                            Ok(None) => {
                                tracing::debug!(
                                    url = s.url(),
                                    chunk = i,
                                    "read whole under the floor"
                                );
                                share.hold(len);
                            }
                            Err(e) => return (i, Err(e), None),
                        }
                    }
                    let r = this.read_chunk(&s, i).await;
                    (i, r.map(|(b, src)| Got::Whole(b, src)), Some(share))
                }
            })
            .buffered(READ_AHEAD);
        futures_util::pin_mut!(reads);
        loop {
            if let Some(f) = &follow
                && pos < range.end
            {
                let r = this.cut_through(f, &mut pos, range.end, &tx).await;
                sent.store(pos, Ordering::Relaxed);
                holder.advanced();
                match r {
                    Ok(true) => {}
                    Ok(false) => return,
                    Err(e) => {
                        tracing::warn!(url = s.url(), pos, error = %e, "response cut");
                        let _ = tx.send(Err(io::Error::other(e.to_string()))).await;
                        return;
                    }
                }
            }
            if pos >= range.end {
                // All sent (a range that ended before the fill completed its chunk).
                return;
            }
            let Some((i, r, share)) = reads.next().await else {
                return;
            };
            let b = layout.chunk_bounds(i);
            let part = ByteRange::new(b.start.max(pos), b.end).intersect(range);
            let frame = match r {
                Ok(Got::Passed) => continue,
                // Sent early, as the origin's bytes arrived.
                Ok(_) if part.is_empty() => continue,
                Ok(Got::Grouped(g, source)) => {
                    let sent_all = this
                        .send_grouped(g, source, b.start, part, &holder, &sent, &tx)
                        .await;
                    match sent_all {
                        Ok(true) => {
                            pos = part.end;
                            continue;
                        }
                        Ok(false) => return,
                        Err(e) => {
                            // The chunk is deleted (the next read repairs it); what
                            // was sent of it was checked.
                            tracing::warn!(url = s.url(), chunk = i, error = %e, "response cut");
                            Err(io::Error::other(e.to_string()))
                        }
                    }
                }
                Ok(Got::Whole(bytes, source)) => {
                    let lo = (part.start - b.start) as usize;
                    let hi = (part.end - b.start) as usize;
                    pos = part.end;
                    sent.store(pos, Ordering::Relaxed);
                    holder.advanced();
                    if hi > bytes.len() {
                        Err(io::Error::other(format!(
                            "chunk {i} shorter than its layout"
                        )))
                    } else {
                        this.inner.metrics.served(source, (hi - lo) as u64);
                        let part = bytes.slice(lo..hi);
                        Ok(Frame::data(match share {
                            Some(share) => share.charge(part),
                            None => part,
                        }))
                    }
                }
                Err(e) => {
                    tracing::warn!(url = s.url(), chunk = i, error = %e, "response cut");
                    Err(io::Error::other(e.to_string()))
                }
            };
            let stop = frame.is_err();
            if tx.send(frame).await.is_err() || stop {
                return;
            }
        }
    }

    /// Sends `part` (object offsets) of the chunk `g` starting at `start`, one
    /// checked group at a time, each under a share of its own: at the send position,
    /// so with no room in the budget it waits for the response's floor, i.e. for the
    /// group before it to be in the socket. `Ok(false)`: the client left.
    #[allow(clippy::too_many_arguments)]
    async fn send_grouped(
        &self,
        mut g: Groupable,
        source: Source,
        start: u64,
        part: ByteRange,
        holder: &Arc<Holder>,
        sent: &AtomicU64,
        tx: &Frames,
    ) -> Result<bool, FillError> {
        let len = match &g {
            Groupable::Memory(_, len) => *len,
            Groupable::Disk(d) => d.len(),
        };
        let (lo, hi) = (part.start - start, part.end - start);
        for gi in GroupedChunk::group_of(lo)..=GroupedChunk::group_of(hi - 1) {
            let Some(gb) = Groups::bounds(len, gi) else {
                return Err(FillError::Store(format!(
                    "group {gi} is outside a chunk of {len} bytes"
                )));
            };
            let glen = (gb.end - gb.start) as usize;
            let share = self.inner.read_budget.take(holder, glen, || true).await;
            let bytes = self.group_bytes(&mut g, gi, gb.clone()).await?;
            let from = (lo.max(gb.start) - gb.start) as usize;
            let to = (hi.min(gb.end) - gb.start) as usize;
            self.inner.metrics.served(source, (to - from) as u64);
            sent.store(start + gb.start + to as u64, Ordering::Relaxed);
            holder.advanced();
            let frame = Frame::data(share.charge(bytes.slice(from..to)));
            if tx.send(Ok(frame)).await.is_err() {
                return Ok(false);
            }
        }
        Ok(true)
    }

    /// Group `gi` (bytes `gb` of the chunk) of `g`: copied out of the memory cache,
    /// or read from disk and checked. A chunk the memory cache evicted meanwhile is
    /// opened on disk and `g` goes on from there; one gone from both cuts the
    /// response.
    async fn group_bytes(
        &self,
        g: &mut Groupable,
        gi: usize,
        gb: std::ops::Range<u64>,
    ) -> Result<Bytes, FillError> {
        loop {
            let (id, len) = match g {
                Groupable::Disk(d) => {
                    return d
                        .read(gi)
                        .await
                        .map_err(|e| FillError::Store(e.to_string()));
                }
                Groupable::Memory(id, len) => (*id, *len),
            };
            if let Some(b) = self.inner.store.memory_get(&id)
                && b.len() as u64 == len
            {
                return Ok(Bytes::copy_from_slice(
                    &b[gb.start as usize..gb.end as usize],
                ));
            }
            match self.inner.store.open_grouped(&id).await {
                Ok(Some(d)) => {
                    self.inner.metrics.cache_reads_grouped.inc();
                    *g = Groupable::Disk(d);
                }
                Ok(None) => {
                    return Err(FillError::Store(format!(
                        "chunk {id} left the memory cache and is not on disk"
                    )));
                }
                Err(e) => return Err(FillError::Store(e.to_string())),
            }
        }
    }

    /// Sends the origin's bytes of the fill `f` from `pos` (up to `end`) as they
    /// arrive, until the chunk holding `pos` is done (then it is read as usual).
    /// `Ok(false)`: the client left.
    async fn cut_through(
        &self,
        f: &Fill,
        pos: &mut u64,
        end: u64,
        tx: &Frames,
    ) -> Result<bool, FillError> {
        while *pos < end {
            let Some(pieces) = f.follow(*pos, end).await? else {
                break;
            };
            for b in pieces {
                let n = b.len() as u64;
                self.inner.metrics.served(Source::Origin, n);
                if tx.send(Ok(Frame::data(b))).await.is_err() {
                    return Ok(false);
                }
                *pos += n;
            }
        }
        Ok(true)
    }
}
