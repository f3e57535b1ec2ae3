//! Reading an object version's bytes for a client: chunk by chunk, in order, each
//! verified (by the store on disk reads, or on arrival for fills), read a few chunks
//! ahead, and streamed into the response body as it is ready.
//!
//! A chunk that is gone or corrupt on disk is fetched again from the origin with a
//! `Range` request guarded by `If-Range`; the answer must be of the cached version
//! (see [`super::version`]) and match the manifest's id. If it is not, the response is
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

/// The response body type of the proxy.
pub type ProxyBody = BoxBody<Bytes, io::Error>;

/// Where a body task sends its frames; an `Err` ends the response with a reset.
pub(super) type Frames = mpsc::Sender<Result<Frame<Bytes>, io::Error>>;

/// Chunks read ahead of the one being sent.
const READ_AHEAD: usize = 3;

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
        let bytes = match self
            .fetch_range(
                s.url(),
                upstream.as_ref(),
                s.repr(),
                s.layout(),
                index,
                reason,
            )
            .await
        {
            Ok(b) => b,
            Err(e) => {
                if e.is_origin_changed() {
                    self.forget(s).await;
                }
                return Err(e);
            }
        };
        if !id.verifies(&bytes) {
            self.inner.metrics.verify_failed(Source::Origin);
            self.forget(s).await;
            return Err(FillError::IdMismatch { index });
        }
        if let Err(e) = self.inner.store.put(id, bytes.clone()).await {
            tracing::debug!(error = %e, "repaired chunk not stored");
        }
        Ok(bytes)
    }

    /// Fetches the bytes of chunk `index` of the version `repr` of `url` with a `Range`
    /// request guarded by `If-Range` ([`ObjectCache::range_response`]), sent for
    /// `reason`; counts them as fetched from the origin. The caller verifies or hashes
    /// the bytes.
    pub async fn fetch_range(
        &self,
        url: &str,
        upstream: Option<&(Uri, Arc<super::Upstream>)>,
        repr: &Repr,
        layout: Layout,
        index: usize,
        reason: FetchReason,
    ) -> Result<Bytes, FillError> {
        let bounds = layout.chunk_bounds(index);
        let len = bounds.end - bounds.start;
        let resp = self
            .range_response(url, upstream, repr, bounds, layout.size, reason)
            .await?;
        let mut body = resp.into_body();
        let mut buf = BytesMut::with_capacity(len as usize);
        while let Some(d) = next_data(&mut body, self.inner.origin.read_timeout(), url).await? {
            if buf.len() as u64 + d.len() as u64 > len {
                return Err(self.changed(url, Changed::Longer(len)));
            }
            buf.extend_from_slice(&d);
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
    /// ([`version::check`]), else it is [`FillError::OriginChanged`] (counted in
    /// `shoal_origin_changed_total`). A `5xx` or `429` is a transient
    /// [`FillError::Origin`]. The caller checks the body's length.
    pub(crate) async fn range_response(
        &self,
        url: &str,
        upstream: Option<&(Uri, Arc<super::Upstream>)>,
        repr: &Repr,
        bounds: std::ops::Range<u64>,
        size: u64,
        reason: FetchReason,
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
        // holds none.
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
                            return (i, Ok(None), None);
                        }
                        // A swarm fill's error comes again from `read_chunk`.
                        if let Err(e) = f.wait(i).await
                            && origin
                        {
                            return (i, Err(e), None);
                        }
                        if origin && passed() {
                            return (i, Ok(None), None);
                        }
                    }
                    let share = this.inner.read_budget.take(&holder, len).await;
                    (i, this.read_chunk(&s, i).await.map(Some), Some(share))
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
            let frame = match r {
                Ok(None) => continue,
                Ok(Some((bytes, source))) => {
                    let b = layout.chunk_bounds(i);
                    let part = ByteRange::new(b.start.max(pos), b.end).intersect(range);
                    if part.is_empty() {
                        // Sent early, as the origin's bytes arrived.
                        continue;
                    }
                    let lo = (part.start - b.start) as usize;
                    let hi = (part.end - b.start) as usize;
                    pos = part.end;
                    sent.store(pos, Ordering::Relaxed);
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
