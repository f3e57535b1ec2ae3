//! Filling an object from one streaming origin GET: chunk, hash, hand each chunk to
//! the fill's readers as it completes, and write it behind (`behind`). Before a chunk
//! is complete its bytes are already held for readers waiting on it (`cut`): they
//! follow the origin's frames (cut-through), woken when the origin pauses or every
//! `cut::COALESCE` bytes, not per frame.

use std::collections::VecDeque;
use std::sync::Arc;

use bytes::Bytes;
use futures_util::FutureExt;
use hyper::body::Incoming;
use shoal_proto::chunker::seal;
use shoal_proto::{Chunk, Chunker, ObjectKey, Sha256Digest};
use tokio::task::JoinHandle;

use super::behind::Behind;
use super::whole::Whole;
use super::{Fill, FillError, ObjectCache};
use crate::metrics::Source;
use crate::origin::reason::FetchReason;
use crate::origin::{OriginError, next_data};

/// Chunks hashed at once on blocking threads, ahead of the one released next: the
/// origin stream, BLAKE3 and the readers run side by side.
const HASHING: usize = 2;

/// Chunks all origin fills together may have being hashed at once: two more than the
/// cores, at least 4. One fill keeps its whole pipeline (`HASHING` + 1); many
/// concurrent cold misses, which the cores cannot hash faster anyway, wait for a slot
/// with one joined chunk each instead of holding three, and stop reading their
/// origins meanwhile. So the chunks being hashed are bounded by the machine, not by
/// the number of fills (docs/operations.md, the memory formula).
pub(super) fn hash_slots() -> usize {
    let cores = std::thread::available_parallelism().map_or(2, usize::from);
    (cores + 2).max(4)
}

/// Starts the fill task. It runs to the end even if every client leaves, so the
/// object is cached for the next one.
pub(super) fn spawn(
    cache: ObjectCache,
    fill: Arc<Fill>,
    body: Incoming,
    key: ObjectKey,
    digest: Option<Sha256Digest>,
) {
    // Cut-through (`cut`): every byte but the last one, or for an object whose digest
    // is checked at the end, every chunk but the last one (released after the check).
    let layout = fill.layout;
    let limit = match digest {
        Some(_) => {
            layout
                .chunk_bounds(layout.chunk_count().saturating_sub(1))
                .start
        }
        None => layout.size.saturating_sub(1),
    };
    fill.open_cut(limit);
    tokio::spawn(async move {
        let mut behind = Behind::start(&cache, &fill);
        match run(&cache, &fill, &mut behind, body, digest.as_ref()).await {
            Ok(last) => behind.finish(&cache, &fill, key, digest, last).await,
            Err(e) => cache.abort_fill(&fill, e).await,
        }
    });
}

async fn run(
    cache: &ObjectCache,
    fill: &Fill,
    behind: &mut Behind,
    mut body: Incoming,
    digest: Option<&Sha256Digest>,
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
    // Origin frames are joined into chunks in reused, aligned buffers (`store::buffers`).
    let mut chunker = Chunker::with_buffers(fill.layout.chunk_size, inner.store.buffers());
    // The whole-object sha256, on a thread of its own, fed the chunks in order.
    let sha = digest.map(|_| Whole::start());
    // The last chunk, held back until the end (see `release`).
    let mut pending: Option<Chunk> = None;
    // Chunks being hashed on blocking threads while the next ones arrive, in order.
    let mut hashing: VecDeque<JoinHandle<Chunk>> = VecDeque::new();
    // Followers were not woken for the latest bytes (`cut`): they are when the origin
    // pauses.
    let mut owed = false;
    loop {
        // Past the pipeline's depth, wait for the oldest hash; otherwise take whichever
        // comes first, the oldest hash or the origin's next bytes, so a hashed chunk
        // reaches the readers at once even while the origin pauses.
        if hashing.len() > HASHING {
            if owed {
                fill.announce();
                owed = false;
            }
            let c = hashed(&mut hashing).await?;
            release(cache, fill, behind, &mut pending, c).await;
            continue;
        }
        let mut next = std::pin::pin!(next_data(&mut body, inner.origin.read_timeout(), &host));
        // More from the origin already: followers' wake-up can wait (coalesced).
        let ready = if owed {
            next.as_mut().now_or_never()
        } else {
            None
        };
        let data = match ready {
            Some(d) => d?,
            None => {
                if owed {
                    // The origin paused: followers get what arrived.
                    fill.announce();
                    owed = false;
                }
                match hashing.front_mut() {
                    Some(h) => tokio::select! {
                        r = h => {
                            hashing.pop_front();
                            let c = r.map_err(|e| FillError::Internal(format!("chunk hashing task failed: {e}")))?;
                            release(cache, fill, behind, &mut pending, c).await;
                            continue;
                        }
                        d = next => d?,
                    },
                    None => next.await?,
                }
            }
        };
        let Some(data) = data else { break };
        owed = take(cache, fill, &mut chunker, &sha, &mut hashing, data).await?;
        // Release what is already hashed.
        while hashing.front().is_some_and(JoinHandle::is_finished) {
            let c = hashed(&mut hashing).await?;
            release(cache, fill, behind, &mut pending, c).await;
        }
    }
    while !hashing.is_empty() {
        let c = hashed(&mut hashing).await?;
        release(cache, fill, behind, &mut pending, c).await;
    }
    if chunker.total() != size {
        return Err(broke(format!(
            "origin closed after {} of {size} bytes",
            chunker.total()
        )));
    }
    let last = chunker.finish_split();
    if let Some((i, b)) = &last {
        fill.joined(fill.layout.chunk_bounds(*i).start, b);
    }
    if let (Some(s), Some((_, b))) = (&sha, &last) {
        s.feed(b.clone()).await?;
    }
    let last = last.map(seal);
    if let (Some(s), Some(want)) = (sha, digest) {
        let got = s.finish().await?;
        if got != *want {
            inner.metrics.verify_failed(Source::Origin);
            return Err(FillError::DigestMismatch {
                from: Source::Origin,
                got,
                want: *want,
            });
        }
    }
    Ok(pending.into_iter().chain(last).collect())
}

/// Takes the origin's next frame: held for followers (`cut`), joined into chunks,
/// each complete chunk fed to the sha256 (if any) and handed to a blocking thread to
/// hash. Whether followers are owed a wake-up ([`Fill::push`]).
async fn take(
    cache: &ObjectCache,
    fill: &Fill,
    chunker: &mut Chunker<crate::store::Buffers>,
    sha: &Option<Whole>,
    hashing: &mut VecDeque<JoinHandle<Chunk>>,
    data: Bytes,
) -> Result<bool, FillError> {
    let size = fill.layout.size;
    if chunker.total() + data.len() as u64 > size {
        return Err(FillError::from(OriginError::Upstream {
            host: fill.url.clone(),
            detail: format!("origin sent more than its Content-Length of {size} bytes"),
        }));
    }
    let reason = fill.origin.unwrap_or(FetchReason::CacheMode);
    cache
        .inner
        .metrics
        .origin_fetched(reason, data.len() as u64);
    let mut owed = fill.push(chunker.total(), data.clone());
    for piece in chunker.split(data) {
        fill.joined(fill.layout.chunk_bounds(piece.0).start, &piece.1);
        if let Some(s) = sha {
            s.feed(piece.1.clone()).await?;
        }
        let slots = &cache.inner.hash_slots;
        let slot = match slots.clone().try_acquire_owned() {
            Ok(s) => s,
            Err(_) => {
                // Other fills keep the cores busy: the followers get what arrived
                // before this fill waits its turn.
                if owed {
                    fill.announce();
                    owed = false;
                }
                slots
                    .clone()
                    .acquire_owned()
                    .await
                    .map_err(|_| FillError::Internal("hash slots closed".into()))?
            }
        };
        hashing.push_back(tokio::task::spawn_blocking(move || {
            let c = seal(piece);
            drop(slot);
            c
        }));
    }
    Ok(owed)
}

/// The oldest chunk being hashed, once hashed.
async fn hashed(hashing: &mut VecDeque<JoinHandle<Chunk>>) -> Result<Chunk, FillError> {
    match hashing.pop_front() {
        Some(h) => h
            .await
            .map_err(|e| FillError::Internal(format!("chunk hashing task failed: {e}"))),
        None => Err(FillError::Internal("no chunk being hashed".into())),
    }
}

/// Hands `c` to the readers and the disk at once, unless it is the object's last
/// chunk: that one is held back for `finish` (a digest to check first, so no client
/// sees a clean end of bad bytes; and the object recorded before readers see its end).
/// Every other chunk is complete for readers as soon as it is hashed; its bytes
/// reached the readers following it (`cut`) as they arrived.
async fn release(
    cache: &ObjectCache,
    fill: &Fill,
    behind: &mut Behind,
    pending: &mut Option<Chunk>,
    c: Chunk,
) {
    if c.index + 1 >= fill.layout.chunk_count() {
        *pending = Some(c);
        return;
    }
    fill.complete(c.index, c.id, Source::Origin, Some(c.bytes.clone()), None);
    behind.offer(cache, fill, c).await;
}
