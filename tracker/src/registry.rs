//! The tracker's state: object layouts, chunk ids, who holds which chunks, origin
//! leases. Pure: every call takes `now` and does no I/O, so tests drive it with
//! simulated time.
//!
//! All state is soft. Agents repeat everything they know every announce interval, so
//! a restarted tracker is whole again after one interval; nothing is persisted.
//! Expiry is explicit rather than delegated to a cache library (moka): one request
//! touches a peer, an object, its holders and its leases together, and they must
//! expire consistently (a forgotten peer's chunks and leases go with it) at times the
//! tests control. The API layer keeps one `Registry` behind a `Mutex`; every call is
//! short, bounded by the request's size and the object's holder count.
//!
//! Agents are interned (`peers`): inside the registry an agent is a small integer
//! slot and its topology labels are integers too, so ranking compares no strings.
//! Each object's holders are a vector with an index by slot and a count of complete
//! holders (`holders`).
//!
//! Work per call: a sync ranks at most `max(8 × max_peers_per_reply, 256)` holders
//! of its object (see `rank::candidates`; below that, all of them), plus one pass over
//! the holders for a chunk that only holders outside that sample offer, plus
//! O(chunks / 8 + wanted) for lease search (each candidate also checked against the
//! request's released indices); announces are O(objects announced). Expired state
//! is swept every `min(peer_ttl, object_ttl, lease_ttl) / 4`, O(all holdings): about
//! 1 ms with 10,000 agents, 38 ms when all 10,000 lapse at once (`trackerbench
//! --sweep-only`, docs/benchmarks.md), with the registry lock held.
//!
//! Non-goals: no persistence, no replication between replicas (agents pick a replica
//! per key by rendezvous hashing), no proof that an agent really holds what it claims.

mod holders;
mod peers;
mod rank;
mod reply;

use std::collections::hash_map::Entry;
use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use shoal_proto::manifest::ManifestError;
use shoal_proto::tracker::{
    AnnounceRequest, AnnounceResponse, ChunkBitmap, Cursor, HeldObject, IndexedId, Refusal,
    SyncRequest, SyncResponse,
};
use shoal_proto::{ChunkId, Layout, ObjectKey, PeerId};

use crate::config::RegistryConfig;
use holders::Holders;
use peers::{Peers, Slot};
use rank::{Requester, rank};
pub use reply::{Hint, SyncReply};

/// Most conflicts kept for [`Registry::drain_events`] between drains (all are counted).
const MAX_CONFLICT_LOG: usize = 64;

/// A request the registry refused as a whole. The agent's fault; answered 400.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RegistryError {
    #[error("invalid layout: {0}")]
    Layout(#[from] ManifestError),
    #[error("chunk index {index} is outside the object's {count} chunks")]
    Index { index: u64, count: u32 },
}

/// Something an agent said that contradicts what the tracker already recorded. The
/// tracker keeps the first version; a conflict means the origin changed the bytes
/// behind unchanged validators, or an agent is broken or lying.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Conflict {
    ChunkId {
        key: ObjectKey,
        index: u32,
        kept: ChunkId,
        offered: ChunkId,
        by: PeerId,
    },
    Layout {
        key: ObjectKey,
        kept: Layout,
        offered: Layout,
        by: PeerId,
    },
}

/// What happened since the last [`Registry::drain_events`], for metrics and logs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Events {
    pub leases_granted: u64,
    pub leases_expired: u64,
    /// Leases their holder gave back ([`SyncRequest::release`]).
    pub leases_released: u64,
    /// Every conflict, including those not kept in `conflict_log`.
    pub conflicts: u64,
    /// The first few conflicts, for logging.
    pub conflict_log: Vec<Conflict>,
    /// Published chunk ids ignored because their agent was over
    /// `max_published_per_agent`.
    pub publishes_refused: u64,
}

/// The directory. See the module docs.
#[derive(Debug)]
pub struct Registry {
    cfg: RegistryConfig,
    peers: Peers,
    objects: HashMap<ObjectKey, Object>,
    next_epoch: u64,
    next_sweep: Option<Instant>,
    events: Events,
    /// Live chunk ids each agent first-published, over all objects (the budget of
    /// `max_published_per_agent`); given back when their object expires.
    published: HashMap<PeerId, u64>,
}

#[derive(Debug)]
struct Object {
    layout: Layout,
    count: u32,
    /// Names this life of the object, for cursors.
    epoch: u64,
    ids: HashMap<u32, ChunkId>,
    /// Indices in `ids`, in the order they were first published (cursor positions).
    log: Vec<u32>,
    /// Who holds which chunks. A sync samples a window of it that starts at the
    /// requester's own position, or at a point mixed from its slot and the epoch if it
    /// holds nothing (see `rank::candidates`).
    holders: Holders,
    /// Union of every holder's chunks; recomputed when `held_dirty`.
    held: ChunkBitmap,
    held_dirty: bool,
    leases: BTreeMap<u32, Lease>,
    last_active: Instant,
    /// How many of `ids` each agent published first.
    publishers: HashMap<PeerId, u64>,
}

/// An agent's allowance of first publications (`max_published_per_agent`).
#[derive(Debug)]
struct Budget<'a> {
    used: &'a mut HashMap<PeerId, u64>,
    max: u64,
}

#[derive(Debug)]
struct Lease {
    holder: PeerId,
    expires: Instant,
}

/// What one sync asks of [`Object::grant`].
#[derive(Debug)]
struct Ask<'a> {
    /// Live leases the requester may hold on this object after the grant.
    max: u32,
    /// Live leases the object may have in all.
    cap: u32,
    /// Chunks the requester asked for, granted first.
    want: &'a ChunkBitmap,
    /// Chunks the requester just gave back: not granted to it again now.
    release: &'a [u32],
}

impl Registry {
    /// An empty registry. `epoch_seed` should differ between tracker lives (the wall
    /// clock is fine) so cursors from a previous life are recognised as stale.
    pub fn new(cfg: RegistryConfig, epoch_seed: u64) -> Self {
        Self {
            cfg,
            peers: Peers::default(),
            objects: HashMap::new(),
            next_epoch: epoch_seed,
            next_sweep: None,
            events: Events::default(),
            published: HashMap::new(),
        }
    }

    /// Records one sync of `req.key` by `peer` and answers it.
    pub fn sync(
        &mut self,
        now: Instant,
        peer: &PeerId,
        req: &SyncRequest,
    ) -> Result<SyncResponse, RegistryError> {
        self.sync_reply(now, peer, req).map(|r| r.to_response())
    }

    /// As [`Registry::sync`], with the answer borrowing the registry: serialize it
    /// before the next call (no hint is copied out; see [`SyncReply`]).
    pub fn sync_reply(
        &mut self,
        now: Instant,
        peer: &PeerId,
        req: &SyncRequest,
    ) -> Result<SyncReply<'_>, RegistryError> {
        self.maybe_sweep(now);
        self.sync_inner(now, peer, req)
    }

    fn sync_inner(
        &mut self,
        now: Instant,
        peer: &PeerId,
        req: &SyncRequest,
    ) -> Result<SyncReply<'_>, RegistryError> {
        let proposed = req.layout.map(checked_layout).transpose()?;
        let slot = self.peers.touch(now, peer, &req.agent);
        let lease_ttl_ms = self.cfg.lease_ttl.as_millis() as u64;
        let key = &req.key;
        let obj = match (self.objects.entry(key.clone()), proposed) {
            (Entry::Occupied(o), _) => o.into_mut(),
            (Entry::Vacant(v), Some(layout)) => {
                let epoch = self.next_epoch;
                self.next_epoch = self.next_epoch.wrapping_add(1);
                v.insert(Object::new(layout, epoch, now))
            }
            (Entry::Vacant(_), None) => return Ok(SyncReply::unknown(lease_ttl_ms)),
        };
        obj.last_active = now;

        let agrees = proposed.is_none_or(|l| l == obj.layout);
        let mut granted = 0;
        let mut leased_elsewhere = ChunkBitmap::new();
        if agrees {
            check_indices(obj.count, &req.have, &req.publish)?;
            check_indices(obj.count, &req.want, &[])?;
            let budget = Budget {
                used: &mut self.published,
                max: self.cfg.max_published_per_agent,
            };
            obj.publish(key, peer, &req.publish, budget, &mut self.events);
            let complete = req.complete || req.have.is_full(obj.count);
            obj.hold(now, slot, &req.have, complete);
            // Expire only after recording what the agent holds: a chunk reported at
            // its deadline fulfils its lease.
            self.events.leases_expired += obj.expire_leases(now);
            self.events.leases_released += obj.release(peer, &req.release);
            obj.renew(now, peer, &req.renew, self.cfg.lease_ttl);
            if !complete && req.want_leases > 0 {
                let ask = Ask {
                    max: req.want_leases.min(self.cfg.max_leases_per_agent),
                    cap: self.cfg.max_leases_per_object,
                    want: &req.want,
                    release: &req.release,
                };
                granted = obj.grant(now, peer, ask, self.cfg.lease_ttl);
            }
            leased_elsewhere = obj.leased_elsewhere(peer, &req.want);
        } else if let Some(offered) = proposed
            && (!req.have.is_empty() || req.complete || !req.publish.is_empty())
        {
            self.events.leases_expired += obj.expire_leases(now);
            // An agent that has not started just adopts the layout; one that already
            // holds chunks under another geometry is ignored and reported.
            self.events.conflict(Conflict::Layout {
                key: key.clone(),
                kept: obj.layout,
                offered,
                by: peer.clone(),
            });
        }
        self.events.leases_granted += granted;

        obj.refresh_held();
        let obj = &*obj;
        let holding = obj.holders.get(slot).filter(|_| agrees);
        let peers = match (holding, self.peers.get(slot)) {
            (Some(h), _) if h.complete => Vec::new(),
            (_, Some(p)) => {
                let me = Requester {
                    slot,
                    place: p.place,
                    have: holding.map_or(&holders::EMPTY, |h| &h.have),
                    sample: holding.map_or(0, |h| h.sample),
                };
                rank(now, &self.peers, obj, &me, &self.cfg)
            }
            // `touch` just recorded the requester.
            (_, None) => Vec::new(),
        };
        let (ids, cursor, more) = obj.ids_since(req.cursor, self.cfg.max_ids_per_reply);
        Ok(SyncReply {
            layout: Some(obj.layout),
            ids,
            cursor: Some(cursor),
            more,
            peers,
            leases: obj.leases_of(peer),
            lease_ttl_ms,
            leased_elsewhere,
        })
    }

    /// Records a batch of held objects. Objects that cannot be recorded are listed in
    /// the response's `refused`; the rest of the batch still counts.
    pub fn announce(
        &mut self,
        now: Instant,
        peer: &PeerId,
        req: &AnnounceRequest,
    ) -> AnnounceResponse {
        self.maybe_sweep(now);
        let slot = self.peers.touch(now, peer, &req.agent);
        let mut resp = AnnounceResponse::default();
        for held in &req.objects {
            match self.announce_one(now, slot, peer, held) {
                Ok(wants_ids) => {
                    resp.accepted += 1;
                    if wants_ids {
                        resp.want_ids.push(held.key.clone());
                    }
                }
                Err(reason) => resp.refused.push(Refusal {
                    key: held.key.clone(),
                    reason,
                }),
            }
        }
        resp
    }

    /// Records one announced object; `Ok(true)` if the tracker lacks the id of a chunk
    /// the agent holds.
    fn announce_one(
        &mut self,
        now: Instant,
        slot: Slot,
        peer: &PeerId,
        held: &HeldObject,
    ) -> Result<bool, String> {
        let layout = checked_layout(held.layout).map_err(|e| e.to_string())?;
        // Layout::new bounds the count by 2^26. Checked before an object is created.
        check_indices(layout.chunk_count() as u32, &held.have, &held.publish)
            .map_err(|e| e.to_string())?;
        let obj = match self.objects.entry(held.key.clone()) {
            Entry::Occupied(o) => o.into_mut(),
            Entry::Vacant(v) => {
                let epoch = self.next_epoch;
                self.next_epoch = self.next_epoch.wrapping_add(1);
                v.insert(Object::new(layout, epoch, now))
            }
        };
        if obj.layout != layout {
            self.events.conflict(Conflict::Layout {
                key: held.key.clone(),
                kept: obj.layout,
                offered: layout,
                by: peer.clone(),
            });
            return Err(format!(
                "layout {}/{} differs from the tracker's {}/{}",
                layout.size, layout.chunk_size, obj.layout.size, obj.layout.chunk_size
            ));
        }
        obj.last_active = now;
        let budget = Budget {
            used: &mut self.published,
            max: self.cfg.max_published_per_agent,
        };
        obj.publish(&held.key, peer, &held.publish, budget, &mut self.events);
        let complete = held.complete || held.have.is_full(obj.count);
        obj.hold(now, slot, &held.have, complete);
        self.events.leases_expired += obj.expire_leases(now);
        let lacks = if complete {
            obj.ids.len() < obj.count as usize
        } else {
            held.have.iter().any(|i| !obj.ids.contains_key(&i))
        };
        Ok(lacks)
    }

    /// Forgets expired peers, holdings, leases and objects. Called by every request
    /// when due; call it from a timer too so gauges stay true on an idle tracker.
    pub fn sweep(&mut self, now: Instant) {
        let peer_ttl = self.cfg.peer_ttl;
        let live = |seen: Instant| now.saturating_duration_since(seen) < peer_ttl;
        self.peers.retain(|p| live(p.last_seen));
        let object_ttl = self.cfg.object_ttl;
        let mut expired = 0;
        let published = &mut self.published;
        let peers = &self.peers;
        self.objects.retain(|_, o| {
            // A forgotten agent's slot may be reused after this sweep: its holdings go
            // now (they have expired anyway unless `now` went backwards).
            o.held_dirty |= o
                .holders
                .retain(|h| live(h.last_seen) && peers.is_live(h.slot));
            expired += o.expire_leases(now);
            let keep = now.saturating_duration_since(o.last_active) < object_ttl;
            if !keep {
                expired += o.leases.len() as u64;
                for (p, n) in &o.publishers {
                    if let Some(used) = published.get_mut(p) {
                        *used = used.saturating_sub(*n);
                        if *used == 0 {
                            published.remove(p);
                        }
                    }
                }
            }
            keep
        });
        self.events.leases_expired += expired;
        self.next_sweep = Some(now + self.sweep_interval());
    }

    fn maybe_sweep(&mut self, now: Instant) {
        if self.sweep_due(now) {
            self.sweep(now);
        }
    }

    /// Whether the next call would sweep first.
    pub fn sweep_due(&self, now: Instant) -> bool {
        self.next_sweep.is_none_or(|t| now >= t)
    }

    /// How often expired state is swept.
    pub fn sweep_interval(&self) -> Duration {
        let c = &self.cfg;
        (c.peer_ttl.min(c.object_ttl).min(c.lease_ttl) / 4).max(Duration::from_millis(10))
    }

    /// Takes the counters and conflicts accumulated since the last call.
    pub fn drain_events(&mut self) -> Events {
        std::mem::take(&mut self.events)
    }

    /// Agents currently known.
    pub fn peer_count(&self) -> usize {
        self.peers.len()
    }

    /// Object versions currently known.
    pub fn object_count(&self) -> usize {
        self.objects.len()
    }

    pub fn config(&self) -> &RegistryConfig {
        &self.cfg
    }

    /// Checks the registry's internal indexes against each other (tests).
    #[cfg(test)]
    fn check(&self) {
        self.peers.check();
        for o in self.objects.values() {
            o.holders.check();
            for h in o.holders.iter() {
                assert!(
                    self.peers.is_live(h.slot),
                    "holder {:?} is a live agent",
                    h.slot
                );
            }
        }
    }
}

impl Events {
    fn conflict(&mut self, c: Conflict) {
        self.conflicts += 1;
        if self.conflict_log.len() < MAX_CONFLICT_LOG {
            self.conflict_log.push(c);
        }
    }
}

impl Object {
    fn new(layout: Layout, epoch: u64, now: Instant) -> Self {
        Self {
            layout,
            // Layout::new bounds the count by 2^26.
            count: layout.chunk_count() as u32,
            epoch,
            ids: HashMap::new(),
            log: Vec::new(),
            holders: Holders::new(layout.chunk_count() as u32),
            held: ChunkBitmap::new(),
            held_dirty: false,
            leases: BTreeMap::new(),
            last_active: now,
            publishers: HashMap::new(),
        }
    }

    /// Records first publications within `by`'s budget; counts different ids for
    /// known indices.
    fn publish(
        &mut self,
        key: &ObjectKey,
        by: &PeerId,
        ids: &[IndexedId],
        budget: Budget<'_>,
        events: &mut Events,
    ) {
        let mut used = budget.used.get(by).copied().unwrap_or(0);
        let mut first = 0;
        for p in ids {
            match self.ids.entry(p.index) {
                Entry::Vacant(_) if used >= budget.max => events.publishes_refused += 1,
                Entry::Vacant(v) => {
                    v.insert(p.id);
                    self.log.push(p.index);
                    used += 1;
                    first += 1;
                }
                Entry::Occupied(o) if *o.get() != p.id => events.conflict(Conflict::ChunkId {
                    key: key.clone(),
                    index: p.index,
                    kept: *o.get(),
                    offered: p.id,
                    by: by.clone(),
                }),
                Entry::Occupied(_) => {}
            }
        }
        if first > 0 {
            budget.used.insert(by.clone(), used);
            *self.publishers.entry(by.clone()).or_insert(0) += first;
        }
    }

    /// Replaces `slot`'s holding and fulfils leases on chunks it now holds. A complete
    /// holding keeps an empty bitmap (and stays out of `held`): a 1 TiB object would
    /// otherwise cost 8 MiB per seed.
    fn hold(&mut self, now: Instant, slot: Slot, have: &ChunkBitmap, complete: bool) {
        if !complete && have.is_empty() {
            self.held_dirty |= self.holders.remove(slot);
            return;
        }
        if complete {
            self.leases.clear();
        } else {
            self.leases.retain(|i, _| !have.contains(*i));
        }
        // A shrinking holding (eviction) may remove chunks from the union.
        self.held_dirty |= self.holders.set(now, slot, have, complete).shrank;
        if !self.held_dirty && !complete {
            self.held.union_with(have);
        }
    }

    /// Extends `peer`'s leases on `indices` (others' leases are left alone).
    fn renew(&mut self, now: Instant, peer: &PeerId, indices: &[u32], ttl: Duration) {
        for i in indices {
            if let Some(l) = self.leases.get_mut(i)
                && &l.holder == peer
            {
                l.expires = now + ttl;
            }
        }
    }

    /// Drops `peer`'s leases on `indices` (others' leases are left alone); returns how
    /// many were dropped.
    fn release(&mut self, peer: &PeerId, indices: &[u32]) -> u64 {
        let mut n = 0;
        for i in indices {
            if self.leases.get(i).is_some_and(|l| &l.holder == peer) {
                self.leases.remove(i);
                n += 1;
            }
        }
        n
    }

    /// Grants `peer` leases on chunks nobody holds or leases, up to `ask.max` live
    /// leases for this peer and `ask.cap` for the object: first the chunks of
    /// `ask.want`, lowest first, then, room left, the lowest other free chunks (so an
    /// agent whose wanted chunks are all leased elsewhere still gets work at once;
    /// they are chunks it lacks and nobody holds, which its scheduler fetches from
    /// the origin under the lease), never one of `ask.release`. Returns how many were
    /// granted now.
    fn grant(&mut self, now: Instant, peer: &PeerId, ask: Ask<'_>, ttl: Duration) -> u64 {
        let live = self.leases.values().filter(|l| &l.holder == peer).count() as u32;
        let total = self.leases.len() as u32;
        let room = ask
            .max
            .saturating_sub(live)
            .min(ask.cap.saturating_sub(total)) as usize;
        if room == 0 || self.holders.any_complete() {
            return 0;
        }
        self.refresh_held();
        let free = |i: &u32| {
            *i < self.count
                && !self.held.contains(*i)
                && !self.leases.contains_key(i)
                && !ask.release.contains(i)
        };
        let mut pick: Vec<u32> = ask.want.iter().filter(free).take(room).collect();
        if pick.len() < room {
            let rest = room - pick.len();
            let others: Vec<u32> = self
                .held
                .missing(self.count)
                .filter(|i| free(i) && !ask.want.contains(*i))
                .take(rest)
                .collect();
            pick.extend(others);
        }
        for &i in &pick {
            self.leases.insert(
                i,
                Lease {
                    holder: peer.clone(),
                    expires: now + ttl,
                },
            );
        }
        pick.len() as u64
    }

    /// Recomputes `held` if a holding shrank or went away since.
    fn refresh_held(&mut self) {
        if self.held_dirty {
            let mut u = ChunkBitmap::new();
            for h in self.holders.iter() {
                u.union_with(&h.have);
            }
            self.held = u;
            self.held_dirty = false;
        }
    }

    /// The chunks of `want` with a live lease held by another agent than `peer`.
    fn leased_elsewhere(&self, peer: &PeerId, want: &ChunkBitmap) -> ChunkBitmap {
        want.iter()
            .filter(|i| self.leases.get(i).is_some_and(|l| &l.holder != peer))
            .collect()
    }

    /// Drops lapsed leases; returns how many.
    fn expire_leases(&mut self, now: Instant) -> u64 {
        let before = self.leases.len();
        self.leases.retain(|_, l| now < l.expires);
        (before - self.leases.len()) as u64
    }

    fn leases_of(&self, peer: &PeerId) -> Vec<u32> {
        self.leases
            .iter()
            .filter(|(_, l)| &l.holder == peer)
            .map(|(i, _)| *i)
            .collect()
    }

    /// At most `max` ids published after `cursor`, the cursor to send next, and
    /// whether more remain after them.
    fn ids_since(&self, cursor: Option<Cursor>, max: usize) -> (Vec<IndexedId>, Cursor, bool) {
        let start = match cursor {
            Some(c) if c.epoch == self.epoch && (c.pos as usize) <= self.log.len() => {
                c.pos as usize
            }
            _ => 0,
        };
        let end = start.saturating_add(max).min(self.log.len());
        let ids = self.log[start..end]
            .iter()
            .filter_map(|i| self.ids.get(i).map(|id| IndexedId { index: *i, id: *id }))
            .collect();
        let cursor = Cursor {
            epoch: self.epoch,
            // end ≤ log.len() ≤ count ≤ 2^26.
            pos: end as u32,
        };
        (ids, cursor, end < self.log.len())
    }
}

/// A layout that passed [`Layout::new`]'s bounds.
fn checked_layout(l: Layout) -> Result<Layout, RegistryError> {
    Ok(Layout::new(l.size, l.chunk_size)?)
}

fn check_indices(
    count: u32,
    have: &ChunkBitmap,
    publish: &[IndexedId],
) -> Result<(), RegistryError> {
    if have.end() > u64::from(count) {
        return Err(RegistryError::Index {
            index: have.end() - 1,
            count,
        });
    }
    match publish.iter().find(|p| p.index >= count) {
        Some(p) => Err(RegistryError::Index {
            index: u64::from(p.index),
            count,
        }),
        None => Ok(()),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests;

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod index_tests;
