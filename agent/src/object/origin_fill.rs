//! Filling an object from one streaming origin GET: chunk, hash, store, announce each
//! chunk to the fill's readers as it completes.

use std::sync::Arc;
use std::time::SystemTime;

use hyper::body::Incoming;
use sha2::{Digest, Sha256};
use shoal_proto::{Chunk, Chunker, Manifest, ObjectKey};

use super::{Fill, FillError, ObjectCache, ObjectMeta, meta};
use crate::metrics::Source;
use crate::origin::reason::FetchReason;
use crate::origin::{OriginError, next_data};

/// Starts the fill task. It runs to the end even if every client leaves, so the
/// object is cached for the next one.
pub(super) fn spawn(
    cache: ObjectCache,
    fill: Arc<Fill>,
    body: Incoming,
    key: ObjectKey,
    digest: Option<String>,
) {
    tokio::spawn(async move {
        match run(&cache, &fill, body, digest.as_deref()).await {
            Ok(last) => finish(&cache, &fill, key, digest, last, Source::Origin).await,
            Err(e) => cache.abort_fill(&fill, e).await,
        }
    });
}

/// Stores the last chunks, records the object, ends the flight, and only then tells
/// readers the last chunks are there: a client that saw its last byte and asks again
/// finds the object cached, and an agent stopped right after keeps it.
pub(crate) async fn finish(
    cache: &ObjectCache,
    fill: &Arc<Fill>,
    key: ObjectKey,
    digest: Option<String>,
    last: Vec<Chunk>,
    source: Source,
) {
    let url = fill.url.clone();
    let mut held = Vec::new();
    for c in last {
        let stored = cache.inner.store.put(c.id, c.bytes.clone()).await.is_ok();
        held.push((c, stored));
    }
    let mut ids = fill.chunk_ids_partial();
    for (c, _) in &held {
        if let Some(slot) = ids.get_mut(c.index) {
            *slot = Some(c.id);
        }
    }
    let ids: Option<Vec<_>> = ids.into_iter().collect();
    // Remembered only if the disk holds every chunk (the fill pins them): an object
    // the disk kept in part would cost origin `Range` repairs on every later "hit".
    let on_disk = |m: &Manifest| {
        m.chunks
            .iter()
            .all(|id| cache.inner.store.chunk_len(id).is_some())
    };
    match ids.map(|ids| Manifest::new(key, fill.layout, ids, digest.clone())) {
        Some(Ok(manifest)) if on_disk(&manifest) => {
            let m = ObjectMeta {
                url: url.clone(),
                manifest,
                repr: fill.repr.clone(),
                validated_at_ms: meta::unix_ms(SystemTime::now()),
                immutable: digest.is_some(),
            };
            cache.remember(Arc::new(m)).await;
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
}

async fn run(
    cache: &ObjectCache,
    fill: &Fill,
    mut body: Incoming,
    digest: Option<&str>,
) -> Result<Vec<Chunk>, FillError> {
    let inner = &cache.inner;
    let host = fill.url.clone();
    let broke = |detail: String| {
        FillError::from(OriginError::Upstream {
            host: host.clone(),
            detail,
        })
    };
    let size = fill.layout.size;
    let mut chunker = Chunker::new(fill.layout.chunk_size);
    let mut sha = digest.map(|_| Sha256::new());
    // The newest chunk is held back until the next one arrives: with a digest to
    // check, so no client sees a clean end of bad bytes; and so `finish` can record
    // the object before readers see the end.
    let mut pending: Option<Chunk> = None;
    loop {
        let data = next_data(&mut body, inner.origin.read_timeout(), &host).await?;
        let Some(data) = data else { break };
        if chunker.total() + data.len() as u64 > size {
            return Err(broke(format!(
                "origin sent more than its Content-Length of {size} bytes"
            )));
        }
        let reason = fill.origin.unwrap_or(FetchReason::CacheMode);
        inner.metrics.origin_fetched(reason, data.len() as u64);
        if let Some(s) = sha.as_mut() {
            s.update(&data);
        }
        // The newest chunk is always held back: it may be the last (see `finish`).
        for c in chunker.push(data) {
            if let Some(prev) = pending.replace(c) {
                store_chunk(cache, fill, prev).await;
            }
        }
    }
    if chunker.total() != size {
        return Err(broke(format!(
            "origin closed after {} of {size} bytes",
            chunker.total()
        )));
    }
    let last = chunker.finish();
    if let (Some(s), Some(want)) = (sha, digest) {
        let got = format!("sha256:{}", hex::encode(s.finalize()));
        if got != want {
            inner.metrics.verify_failed(Source::Origin);
            return Err(FillError::DigestMismatch {
                from: Source::Origin,
                got,
                want: want.to_owned(),
            });
        }
    }
    Ok(pending.into_iter().chain(last).collect())
}

/// Stores a verified chunk and completes it in the fill; if the store cannot keep
/// it, the fill holds the bytes.
pub(crate) async fn store_chunk(cache: &ObjectCache, fill: &Fill, c: Chunk) {
    complete(cache, fill, c, Source::Origin).await
}

/// As [`store_chunk`], for chunks from any source.
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
