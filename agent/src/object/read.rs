//! Reading an object version's bytes for a client: chunk by chunk, in order, each
//! verified (by the store on disk reads, or on arrival for fills), read a few chunks
//! ahead, and streamed into the response body as it is ready.
//!
//! A chunk that is gone or corrupt on disk is fetched again from the origin with a
//! `Range` request guarded by `If-Range`, and checked against the manifest's id; if
//! that fails the response is cut (the client sees a reset, never a clean end of
//! wrong bytes) and the object is forgotten so the next request fetches it anew.

use std::io;
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use futures_util::StreamExt;
use http::header::{self, HeaderMap, HeaderValue};
use http::{Method, StatusCode, Uri};
use http_body::Frame;
use http_body_util::StreamBody;
use http_body_util::combinators::BoxBody;
use shoal_proto::{ByteRange, ChunkId, Layout};
use tokio::sync::mpsc;

use super::{Fill, FillFailed, ObjectCache, ObjectMeta, Repr};
use crate::metrics::Source;
use crate::origin::{OriginError, next_data};

/// The response body type of the proxy.
pub type ProxyBody = BoxBody<Bytes, io::Error>;

/// Chunks read ahead of the one being sent.
const READ_AHEAD: usize = 3;

/// What a response is served from.
#[derive(Debug, Clone)]
pub enum Serve {
    Object(Arc<ObjectMeta>),
    Fill(Arc<Fill>),
}

/// Why a chunk could not be produced.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error(transparent)]
    Fill(#[from] FillFailed),
    #[error("re-fetching a chunk: {0}")]
    Origin(#[from] OriginError),
    #[error("origin no longer has the cached version of {url}: {why}")]
    OriginChanged { url: String, why: String },
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
    pub async fn read_chunk(&self, s: &Serve, index: usize) -> Result<(Bytes, Source), ReadError> {
        let (id, source) = match s {
            Serve::Object(m) => match m.manifest.chunks.get(index) {
                Some(id) => (*id, Source::Cache),
                None => {
                    return Err(ReadError::OriginChanged {
                        url: m.url.clone(),
                        why: format!("no chunk {index}"),
                    });
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
        if let Ok(Some(b)) = self.inner.store.get(&id).await {
            return Ok((b, source));
        }
        let b = self.repair(s, index, id).await?;
        Ok((b, Source::Origin))
    }

    /// Fetches chunk `index` again from the origin and checks it against `id`.
    async fn repair(&self, s: &Serve, index: usize, id: ChunkId) -> Result<Bytes, ReadError> {
        let bytes = match self.fetch_range(s.url(), s.repr(), s.layout(), index).await {
            Ok(b) => b,
            Err(e) => {
                if matches!(e, ReadError::OriginChanged { .. }) {
                    self.forget(s).await;
                }
                return Err(e);
            }
        };
        if !id.verifies(&bytes) {
            self.inner
                .metrics
                .verify_failures
                .with_label_values(&["origin"])
                .inc();
            self.forget(s).await;
            return Err(ReadError::OriginChanged {
                url: s.url().to_owned(),
                why: format!("chunk {index} from the origin does not match the manifest"),
            });
        }
        if let Err(e) = self.inner.store.put(id, bytes.clone()).await {
            tracing::debug!(error = %e, "repaired chunk not stored");
        }
        Ok(bytes)
    }

    /// Fetches the bytes of chunk `index` of the version `repr` of `url` with a `Range`
    /// request guarded by `If-Range`; counts them as fetched from the origin. The
    /// caller verifies or hashes them.
    pub async fn fetch_range(
        &self,
        url: &str,
        repr: &Repr,
        layout: Layout,
        index: usize,
    ) -> Result<Bytes, ReadError> {
        let changed = |why: String| ReadError::OriginChanged {
            url: url.to_owned(),
            why,
        };
        let uri: Uri = url.parse().map_err(|_| changed("unparsable URL".into()))?;
        let bounds = layout.chunk_bounds(index);
        let len = (bounds.end - bounds.start) as usize;
        let mut h = HeaderMap::new();
        let range = format!("bytes={}-{}", bounds.start, bounds.end.saturating_sub(1));
        h.insert(
            header::RANGE,
            HeaderValue::from_str(&range).map_err(|_| changed("bad range".into()))?,
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
        let resp = self
            .inner
            .origin
            .send(Method::GET, &uri, h, "range")
            .await?;
        if resp.status() != StatusCode::PARTIAL_CONTENT {
            return Err(changed(format!("range request answered {}", resp.status())));
        }
        let mut body = resp.into_body();
        let mut buf = BytesMut::with_capacity(len);
        while let Some(d) = next_data(&mut body, self.inner.origin.read_timeout(), url).await? {
            if buf.len() + d.len() > len {
                return Err(changed("range response longer than asked".into()));
            }
            buf.extend_from_slice(&d);
        }
        if buf.len() != len {
            return Err(ReadError::Origin(OriginError::Upstream {
                host: url.to_owned(),
                detail: format!("range response ended after {} of {len} bytes", buf.len()),
            }));
        }
        self.inner.metrics.fetched(Source::Origin, len as u64);
        Ok(buf.freeze())
    }

    async fn forget(&self, s: &Serve) {
        if let Serve::Object(m) = s {
            self.invalidate(&m.url).await;
        }
    }

    /// A body streaming `range` of `s`. Reading runs in its own task, a few chunks
    /// ahead; a read error ends the body with an error, which makes hyper drop the
    /// connection instead of finishing the response.
    pub fn body(&self, s: Serve, range: ByteRange) -> ProxyBody {
        let (tx, rx) = mpsc::channel::<Result<Frame<Bytes>, io::Error>>(READ_AHEAD);
        let this = self.clone();
        tokio::spawn(async move {
            let layout = s.layout();
            let chunks = layout.chunks_for(range);
            let _pin = match &s {
                Serve::Object(m) => Some(
                    this.inner
                        .store
                        .pin(m.manifest.chunks[chunks.clone()].iter().copied()),
                ),
                Serve::Fill(_) => None,
            };
            let reads = futures_util::stream::iter(chunks)
                .map(|i| {
                    let (this, s) = (this.clone(), s.clone());
                    async move { (i, this.read_chunk(&s, i).await) }
                })
                .buffered(READ_AHEAD);
            futures_util::pin_mut!(reads);
            while let Some((i, r)) = reads.next().await {
                let frame = match r {
                    Ok((bytes, source)) => {
                        let b = layout.chunk_bounds(i);
                        let part = ByteRange::new(b.start, b.end).intersect(range);
                        let lo = (part.start - b.start) as usize;
                        let hi = (part.end - b.start) as usize;
                        if hi > bytes.len() {
                            Err(io::Error::other(format!(
                                "chunk {i} shorter than its layout"
                            )))
                        } else {
                            this.inner.metrics.served(source, (hi - lo) as u64);
                            Ok(Frame::data(bytes.slice(lo..hi)))
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
        });
        let stream =
            futures_util::stream::unfold(
                rx,
                |mut rx| async move { rx.recv().await.map(|f| (f, rx)) },
            );
        BoxBody::new(StreamBody::new(stream))
    }
}
