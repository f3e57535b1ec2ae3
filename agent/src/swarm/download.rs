//! One object version's download through the swarm: the I/O around the scheduler.
//!
//! The download ends with a [`FillError`] when the origin no longer serves the version
//! (a ranged answer of other validators or another range, see `object::version`), when
//! origin bytes contradict the swarm's id for a chunk, or when a digest-named object
//! hashes wrong; transient origin and peer failures are retried by the scheduler. Ids
//! already published stay on the tracker (they were hashed from answers of this
//! version); nothing later is published.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use sha2::{Digest, Sha256};
use shoal_proto::sched::{Action, Outcome, RequestId, SchedError, Scheduler};
use shoal_proto::tracker::{ChunkBitmap, Cursor, IndexedId, SyncResponse};
use shoal_proto::{Chunk, ChunkId, Layout, ObjectKey, PeerAddr, PeerId, Sha256Digest};
use tokio::sync::broadcast;
use tokio::task::{AbortHandle, JoinHandle, JoinSet};

use super::Swarm;
use crate::discovery::TrackerError;
use crate::metrics::Source;
use crate::object::fill::{complete, finish};
use crate::object::{Fill, FillError, ObjectCache};
use crate::origin::reason::FetchReason;
use crate::transport::PeerError;

/// What a fetch task brings back.
enum Fetched {
    Peer(ChunkId, Result<Bytes, PeerError>),
    Origin(Result<Bytes, FillError>),
}

struct Download {
    cache: ObjectCache,
    swarm: Arc<Swarm>,
    fill: Arc<Fill>,
    key: ObjectKey,
    layout: Layout,
    sched: Scheduler,
    ids: Vec<Option<ChunkId>>,
    have: ChunkBitmap,
    publish: Vec<IndexedId>,
    /// The scheduler's last lease ask, sent with the next sync: how many, and which.
    want_leases: u32,
    want: ChunkBitmap,
    /// Leases the scheduler gave up, sent with the next sync (again if it fails).
    release: Vec<u32>,
    cursor: Option<Cursor>,
    tasks: JoinSet<(RequestId, usize, Fetched)>,
    aborts: HashMap<RequestId, AbortHandle>,
    /// The chunk that completes the object, released to readers only by `finish`.
    last: Option<(Chunk, Source)>,
    tracker_lost: bool,
    /// The tracker knows this key with another layout: we do not share it.
    solo: bool,
    next_sync: Instant,
}

/// Starts the download task of `fill` (registered as the URL's flight by the caller).
pub fn spawn(
    cache: ObjectCache,
    swarm: Arc<Swarm>,
    fill: Arc<Fill>,
    key: ObjectKey,
    digest: Option<Sha256Digest>,
) {
    tokio::spawn(async move {
        let url = fill.url.clone();
        let now = Instant::now();
        let sched = match Scheduler::new(now, fill.layout, swarm.sched.clone()) {
            Ok(s) => s,
            Err(e) => {
                let e = FillError::Internal(format!("cannot plan the download of {url}: {e}"));
                cache.abort_fill(&fill, e).await;
                return;
            }
        };
        let n = fill.layout.chunk_count();
        let mut d = Download {
            layout: fill.layout,
            cache,
            swarm,
            fill,
            key,
            sched,
            ids: vec![None; n],
            have: ChunkBitmap::new(),
            publish: Vec::new(),
            want_leases: 0,
            want: ChunkBitmap::new(),
            release: Vec::new(),
            cursor: None,
            tasks: JoinSet::new(),
            aborts: HashMap::new(),
            last: None,
            tracker_lost: false,
            solo: false,
            next_sync: now,
        };
        match d.run().await {
            Ok(()) => d.finish(digest).await,
            Err(e) => {
                // Nothing more is fetched, stored or published for this version.
                d.tasks.abort_all();
                d.cache.abort_fill(&d.fill, e).await;
            }
        }
    });
}

impl Download {
    async fn run(&mut self) -> Result<(), FillError> {
        let mut sync: Option<JoinHandle<Result<SyncResponse, TrackerError>>> = None;
        let mut sent: Vec<IndexedId> = Vec::new();
        let mut sent_release: Vec<u32> = Vec::new();
        let mut gone = Some(self.swarm.peers.gone());
        loop {
            self.drain();
            if self.sched.is_complete() {
                return Ok(());
            }
            let now = Instant::now();
            if sync.is_none() && !self.solo && now >= self.next_sync {
                sent = std::mem::take(&mut self.publish);
                let mut req = self.swarm.tracker.request(self.key.clone());
                req.layout = Some(self.layout);
                req.have = self.have.clone();
                req.publish = sent.clone();
                req.want_leases = std::mem::take(&mut self.want_leases);
                req.want = std::mem::take(&mut self.want);
                sent_release = std::mem::take(&mut self.release);
                req.release = sent_release.clone();
                req.cursor = self.cursor;
                req.renew = self.sched.leases().into_iter().map(|i| i as u32).collect();
                let tracker = self.swarm.tracker.clone();
                sync = Some(tokio::spawn(async move { tracker.sync(req).await }));
                self.next_sync = now + self.swarm.poll_interval;
            }
            let timer = self
                .sched
                .poll_timeout()
                .unwrap_or(now + Duration::from_secs(3600));
            let sync_at = if sync.is_none() && !self.solo {
                self.next_sync
            } else {
                now + Duration::from_secs(3600)
            };
            tokio::select! {
                r = async {
                    match sync.as_mut() {
                        Some(s) => s.await,
                        None => std::future::pending().await,
                    }
                }, if sync.is_some() => {
                    sync = None;
                    match r {
                        Ok(Ok(resp)) => self.on_sync(resp),
                        Ok(Err(e)) => {
                            // Publish and release again next time; the tracker may not
                            // have seen them. (A lease ask is not repeated: the
                            // scheduler asks again after its interval.)
                            self.publish.append(&mut sent);
                            self.release.append(&mut sent_release);
                            self.on_tracker_error(e);
                        }
                        Err(e) => tracing::error!(error = %e, "tracker sync task failed"),
                    }
                }
                Some(j) = self.tasks.join_next(), if !self.tasks.is_empty() => {
                    match j {
                        Ok((req, index, f)) => self.on_fetched(req, index, f).await?,
                        Err(e) if e.is_cancelled() => {}
                        Err(e) => tracing::error!(error = %e, "chunk fetch task failed"),
                    }
                }
                r = async {
                    match gone.as_mut() {
                        Some(rx) => rx.recv().await,
                        None => std::future::pending().await,
                    }
                }, if gone.is_some() => match r {
                    Ok(peer) => self.on_peer_gone(&peer),
                    // Missed events only delay rescheduling: those requests fail or
                    // time out on their own.
                    Err(broadcast::error::RecvError::Lagged(n)) => {
                        tracing::debug!(missed = n, "peer-gone events missed");
                    }
                    Err(broadcast::error::RecvError::Closed) => gone = None,
                },
                _ = tokio::time::sleep_until(timer.into()) => self.sched.handle_timeout(Instant::now()),
                _ = tokio::time::sleep_until(sync_at.into()) => {}
            }
        }
    }

    /// Performs every action the scheduler has ready.
    fn drain(&mut self) {
        while let Some(a) = self.sched.poll_action() {
            match a {
                Action::FetchPeer {
                    req,
                    index,
                    id,
                    peer,
                } => {
                    let addr = self
                        .swarm
                        .addrs
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .get(&peer)
                        .copied();
                    let Some(addr) = addr else {
                        let r = self
                            .sched
                            .handle_result(Instant::now(), req, Outcome::Failed);
                        self.noted(r);
                        continue;
                    };
                    let sw = self.swarm.clone();
                    let len = self.layout.chunk_len(index);
                    let h = self.tasks.spawn(async move {
                        let r = sw.peers.fetch(&PeerAddr { id: peer, addr }, id, len).await;
                        (req, index, Fetched::Peer(id, r))
                    });
                    self.aborts.insert(req, h);
                }
                Action::FetchOrigin { req, index, reason } => {
                    let reason = FetchReason::of_chunk(reason, self.solo);
                    let (cache, url, repr, layout) = (
                        self.cache.clone(),
                        self.fill.url.clone(),
                        self.fill.repr.clone(),
                        self.layout,
                    );
                    let up = self.fill.upstream.clone();
                    let h = self.tasks.spawn(async move {
                        let r = cache
                            .fetch_range(&url, up.as_ref(), &repr, layout, index, reason, false)
                            .await;
                        (req, index, Fetched::Origin(r))
                    });
                    self.aborts.insert(req, h);
                }
                Action::Cancel { req } => {
                    if let Some(h) = self.aborts.remove(&req) {
                        h.abort();
                    }
                }
                Action::WantLeases { indices, max } => {
                    self.want_leases = u32::try_from(max).unwrap_or(u32::MAX);
                    self.want = indices
                        .iter()
                        .filter_map(|&i| u32::try_from(i).ok())
                        .collect();
                    self.next_sync = Instant::now();
                }
                // Handed back at once, so the tracker can grant them to another agent
                // rather than wait for the lease to lapse.
                Action::ReleaseLeases { indices } => {
                    self.release
                        .extend(indices.iter().filter_map(|&i| u32::try_from(i).ok()));
                    self.next_sync = Instant::now();
                }
            }
        }
    }

    fn on_sync(&mut self, resp: SyncResponse) {
        let now = Instant::now();
        tracing::trace!(ids = resp.ids.len(), peers = resp.peers.len(), leases = ?resp.leases, "tracker sync");
        if self.tracker_lost {
            tracing::info!(key = %self.key, "tracker back; resuming swarm download");
            self.sched.handle_tracker_back(now);
            self.tracker_lost = false;
        }
        if let Some(l) = resp.layout
            && l != self.layout
        {
            tracing::warn!(key = %self.key, ours = ?self.layout, tracker = ?l, "layout differs from the swarm's; downloading alone");
            self.solo = true;
            self.sched.handle_tracker_lost(now);
            return;
        }
        let mut new_ids = Vec::new();
        for IndexedId { index, id } in resp.ids {
            let i = index as usize;
            match self.ids.get(i).copied() {
                Some(None) => {
                    if let Some(slot) = self.ids.get_mut(i) {
                        *slot = Some(id);
                    }
                    new_ids.push((i, id));
                }
                // The id we know (from the tracker, or hashed from origin bytes and
                // published) stays; bytes are checked against it.
                Some(Some(known)) if known != id => {
                    let e = SchedError::IdConflict {
                        index: i,
                        known,
                        new: id,
                    };
                    self.noted(Err(e));
                }
                Some(Some(_)) => {}
                None => self.noted(Err(SchedError::IndexOutOfRange {
                    index: i,
                    chunks: self.ids.len(),
                })),
            }
        }
        if !new_ids.is_empty() || !resp.leases.is_empty() {
            self.sched.handle_progress(now);
        }
        let r = self.sched.handle_chunk_ids(now, new_ids.iter().copied());
        self.noted(r);
        for (i, id) in new_ids {
            // Another object may have brought this chunk already.
            if !self.fill.has(i) && self.cache.store().contains(&id) {
                let r = self.sched.handle_local(now, i);
                self.noted(r);
                self.local(i, id);
            }
        }
        let n = self.layout.chunk_count();
        for hint in resp.peers {
            if hint.id == self.swarm.me {
                continue;
            }
            self.swarm
                .addrs
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(hint.id.clone(), hint.addr);
            let have: Vec<usize> = if hint.complete {
                (0..n).collect()
            } else {
                hint.have.iter().map(|i| i as usize).collect()
            };
            let r = self.sched.handle_peer(now, hint.id, hint.proximity, have);
            self.noted(r);
        }
        let r = self
            .sched
            .handle_leases(now, resp.leases.iter().map(|&i| i as usize));
        self.noted(r);
        // Chunks we asked for that another agent is fetching from the origin: wait
        // for its announce instead of asking again or falling back.
        let r = self
            .sched
            .handle_leased_elsewhere(now, resp.leased_elsewhere.iter().map(|i| i as usize));
        self.noted(r);
        self.cursor = resp.cursor;
        if resp.more {
            // The tracker capped the ids; page on at once.
            self.next_sync = now;
        }
    }

    /// A peer closed its connection to us (shut down, restarted): its requests are
    /// rescheduled, not counted against it; a later tracker hint brings it back.
    fn on_peer_gone(&mut self, peer: &PeerId) {
        if self.sched.peer_status(peer).is_some() {
            tracing::debug!(key = %self.key, %peer, "peer gone; rescheduling its requests");
            let r = self.sched.handle_peer_gone(Instant::now(), peer);
            self.noted(r);
        }
    }

    /// Logs and counts an input the scheduler refused. A second id for a chunk is
    /// worth a warning: the origin changed behind unchanged validators, or a
    /// publisher lied (the first id is kept, so bytes are still checked against it).
    fn noted(&self, r: Result<(), SchedError>) {
        let Err(e) = r else { return };
        self.swarm.metrics.sched_error(&e);
        match e {
            SchedError::IdConflict { .. } => {
                tracing::warn!(key = %self.key, error = %e, "tracker sent a conflicting chunk id");
            }
            SchedError::UnknownRequest(_) => tracing::trace!(key = %self.key, error = %e),
            _ => tracing::debug!(key = %self.key, error = %e, "scheduler refused an input"),
        }
    }

    fn on_tracker_error(&mut self, e: TrackerError) {
        if e.is_rate_limited() {
            return;
        }
        if !self.tracker_lost {
            tracing::warn!(key = %self.key, error = %e, "tracker unreachable; fetching from the origin");
            self.tracker_lost = true;
            self.sched.handle_tracker_lost(Instant::now());
        }
    }

    /// Takes in one fetch's result. An origin that changed the object, or whose bytes
    /// contradict the swarm's id, ends the download.
    async fn on_fetched(
        &mut self,
        req: RequestId,
        index: usize,
        f: Fetched,
    ) -> Result<(), FillError> {
        self.aborts.remove(&req);
        let outcome = match f {
            Fetched::Peer(id, Ok(bytes)) => {
                self.accept(index, id, bytes, Source::Peer).await;
                Outcome::Ok
            }
            Fetched::Peer(_, Err(e)) => {
                tracing::debug!(chunk = index, error = %e, "peer fetch failed");
                match e {
                    PeerError::Busy { .. } => Outcome::Busy,
                    PeerError::NotFound => Outcome::NotFound,
                    PeerError::Corrupt => Outcome::Corrupt,
                    _ => Outcome::Failed,
                }
            }
            Fetched::Origin(Ok(bytes)) => {
                let id = ChunkId::of(&bytes);
                match self.ids.get(index).copied().flatten() {
                    Some(known) if known != id => {
                        // Either the origin changed under the same validator, or the
                        // publisher lied; neither is fixable here.
                        self.swarm.metrics.verify_failed(Source::Origin);
                        return Err(FillError::IdMismatch { index });
                    }
                    Some(_) => {}
                    None => {
                        if let Some(slot) = self.ids.get_mut(index) {
                            *slot = Some(id);
                        }
                        self.publish.push(IndexedId {
                            index: index as u32,
                            id,
                        });
                    }
                }
                self.accept(index, id, bytes, Source::Origin).await;
                Outcome::Ok
            }
            // A transient origin failure: the scheduler retries (with back-off).
            Fetched::Origin(Err(e @ FillError::Origin(_))) => {
                tracing::debug!(chunk = index, error = %e, "origin range fetch failed");
                Outcome::Failed
            }
            // The origin changed (or we cannot ask it at all): nothing of this
            // version is used any more.
            Fetched::Origin(Err(e)) => return Err(e),
        };
        let r = self.sched.handle_result(Instant::now(), req, outcome);
        self.noted(r);
        Ok(())
    }

    /// Stores a verified chunk and hands it to readers (except the very last one).
    async fn accept(&mut self, index: usize, id: ChunkId, bytes: Bytes, source: Source) {
        if self.fill.has(index) || self.last.as_ref().is_some_and(|(c, _)| c.index == index) {
            return;
        }
        self.have.insert(index as u32);
        tracing::debug!(me = %self.swarm.me, chunk = index, source = source.label(), done = self.fill.done() + 1, "chunk stored");
        let chunk = Chunk { index, id, bytes };
        if self.fill.done() + 1 == self.layout.chunk_count() {
            self.last = Some((chunk, source));
        } else {
            complete(&self.cache, &self.fill, chunk, source).await;
        }
    }

    /// A chunk already in the store (shared with another object).
    fn local(&mut self, index: usize, id: ChunkId) {
        self.have.insert(index as u32);
        let pin = self.cache.store().pin([id]);
        self.fill
            .complete(index, id, Source::Cache, None, Some(pin));
    }

    async fn finish(mut self, digest: Option<Sha256Digest>) {
        if let Some(d) = &digest
            && let Err(e) = self.check_digest(d).await
        {
            if let FillError::DigestMismatch { from, .. } = &e {
                self.swarm.metrics.verify_failed(*from);
            }
            self.cache.abort_fill(&self.fill, e).await;
            return;
        }
        let (last, source) = match self.last.take() {
            Some((c, s)) => (vec![c], s),
            None => (Vec::new(), Source::Peer),
        };
        finish(
            &self.cache,
            &self.fill,
            self.key.clone(),
            digest,
            last,
            source,
        )
        .await;
        // Announced only now that the last chunk is stored, so peers asking at once
        // find it.
        if !self.solo {
            let mut req = self.swarm.tracker.request(self.key.clone());
            req.layout = Some(self.layout);
            req.have = ChunkBitmap::full(self.layout.chunk_count() as u32);
            req.complete = true;
            req.publish = std::mem::take(&mut self.publish);
            if let Err(e) = self.swarm.tracker.sync(req).await {
                tracing::debug!(error = %e, "final tracker sync failed; the periodic announce will retry");
            }
        }
    }

    /// Checks the whole-object digest a URL names before the last chunk is released.
    /// A mismatch is the origin's when every chunk came from it, else the swarm's
    /// (a peer's bytes, or the ids their publisher gave the tracker).
    async fn check_digest(&self, want: &Sha256Digest) -> Result<(), FillError> {
        let mut h = Sha256::new();
        let mut all_origin = true;
        for i in 0..self.layout.chunk_count() {
            let (bytes, source) = match &self.last {
                Some((c, s)) if c.index == i => (c.bytes.clone(), *s),
                _ => {
                    let r = self.fill.wait(i).await?;
                    let bytes = match r.held {
                        Some(b) => b,
                        None => self
                            .cache
                            .store()
                            .get(&r.id)
                            .await
                            .ok()
                            .flatten()
                            .ok_or_else(|| {
                                FillError::Store(format!(
                                    "chunk {i} vanished before the digest check"
                                ))
                            })?,
                    };
                    (bytes, r.source)
                }
            };
            all_origin &= source == Source::Origin;
            h.update(&bytes);
        }
        let got = Sha256Digest::from_sha256(h.finalize().into());
        if got == *want {
            return Ok(());
        }
        Err(FillError::DigestMismatch {
            from: if all_origin {
                Source::Origin
            } else {
                Source::Peer
            },
            got,
            want: *want,
        })
    }
}
