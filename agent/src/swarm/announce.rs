//! The periodic announce: every `tracker.announce_interval`, tell the tracker which
//! object versions (and which of their chunks) this agent holds. All tracker state is
//! soft, so this is what refills a restarted tracker; ids are sent only for the keys
//! the tracker says it lacks (`want_ids`), keeping a steady-state announce small.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use shoal_proto::tracker::{ChunkBitmap, HeldObject, IndexedId};

use super::Swarm;
use crate::object::{ObjectCache, ObjectMeta};

/// Objects per announce request.
const BATCH: usize = 256;

/// Announces until `stop` resolves. The first announce happens at once.
pub async fn run(
    cache: ObjectCache,
    swarm: Arc<Swarm>,
    interval: Duration,
    stop: impl Future<Output = ()>,
) {
    tokio::pin!(stop);
    loop {
        once(&cache, &swarm).await;
        tokio::select! {
            _ = &mut stop => return,
            _ = tokio::time::sleep(interval) => {}
        }
    }
}

/// One announce round.
pub async fn once(cache: &ObjectCache, swarm: &Swarm) {
    swarm.tracker.set_load(
        // Waiting requests count: a holder with a queue is as loaded as one serving it.
        u32::try_from(swarm.peers.active_uploads() + swarm.peers.queued_uploads())
            .unwrap_or(u32::MAX),
    );
    let metas = cache.all();
    for batch in metas.chunks(BATCH) {
        let objects: Vec<HeldObject> = batch.iter().map(|m| held(cache, m, false)).collect();
        if objects.is_empty() {
            continue;
        }
        match swarm.tracker.announce(objects).await {
            Ok(resp) if !resp.want_ids.is_empty() => {
                let again: Vec<HeldObject> = batch
                    .iter()
                    .filter(|m| resp.want_ids.contains(&m.manifest.key))
                    .map(|m| held(cache, m, true))
                    .collect();
                if let Err(e) = swarm.tracker.announce(again).await {
                    tracing::debug!(error = %e, "announce with ids failed");
                }
            }
            Ok(_) => {}
            Err(e) => {
                tracing::debug!(error = %e, "announce failed; will retry next interval");
                return;
            }
        }
    }
}

fn held(cache: &ObjectCache, m: &ObjectMeta, with_ids: bool) -> HeldObject {
    let mut have = ChunkBitmap::new();
    let mut publish = Vec::new();
    for (i, id) in m.manifest.chunks.iter().enumerate() {
        // Chunk counts fit in u32 (MAX_OBJECT_SIZE / MIN_CHUNK_SIZE = 2^26).
        let index = i as u32;
        if cache.store().contains(id) {
            have.insert(index);
        }
        if with_ids {
            publish.push(IndexedId { index, id: *id });
        }
    }
    let n = m.manifest.chunks.len() as u32;
    HeldObject {
        key: m.manifest.key.clone(),
        layout: m.manifest.layout,
        complete: have.is_full(n),
        have,
        publish,
    }
}
