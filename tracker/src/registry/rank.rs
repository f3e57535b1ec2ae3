//! Which holders a sync hints: a sample of a large swarm ([`candidates`]), ranked by
//! proximity, load and freshness ([`rank`]), chosen so every offered chunk stays
//! covered ([`choose`]).
//!
//! Everything here works on interned agents ([`Slot`], [`Place`]): no peer-id or label
//! string is compared or hashed per candidate. Cannot: find the nearest, least loaded
//! holders outside the sample.

use std::time::{Duration, Instant};

use shoal_proto::Proximity;
use shoal_proto::tracker::ChunkBitmap;

use super::Object;
use super::holders::Holding;
use super::peers::{Peers, Place, Slot};
use super::reply::Hint;
use crate::config::RegistryConfig;

/// Holders ranked per hint allowed in a reply, when the object has more ([`candidates`]).
const SAMPLE_PER_HINT: usize = 8;
/// Fewest holders ranked per sync.
const MIN_SAMPLE: usize = 256;

/// The agent a sync answers.
#[derive(Debug)]
pub(super) struct Requester<'a> {
    pub slot: Slot,
    pub place: Place,
    pub have: &'a ChunkBitmap,
    /// `have`'s [`Holders::sample`](super::holders::Holders::sample).
    pub sample: u64,
}

/// Up to `max_peers_per_reply` live holders of `obj` for `me`, among those holding a
/// chunk `me` lacks, ranked by proximity, then load, then freshness in whole seconds,
/// then a per-requester hash that spreads requesters over equally good peers; chosen
/// by [`choose`] so that every chunk some candidate holds is covered.
pub(super) fn rank<'a>(
    now: Instant,
    peers: &'a Peers,
    obj: &'a Object,
    me: &Requester<'_>,
    cfg: &RegistryConfig,
) -> Vec<Hint<'a>> {
    let max = cfg.max_peers_per_reply;
    let sample = max.saturating_mul(SAMPLE_PER_HINT).max(MIN_SAMPLE);
    let found: Vec<_> = candidates(now, obj, me, cfg.peer_ttl, sample)
        .into_iter()
        .filter_map(|h| Some((h, peers.get(h.slot)?)))
        .collect();
    // Sorting packed keys is several times cheaper than sorting the tuples.
    let salt = me.slot.mix(obj.epoch);
    let mut keys: Vec<u128> = found
        .iter()
        .enumerate()
        .map(|(i, (h, p))| {
            let age = now.saturating_duration_since(p.last_seen).as_secs();
            let key = SortKey {
                proximity: me.place.proximity(&p.place),
                load: p.load,
                age: u32::try_from(age).unwrap_or(u32::MAX),
                spread: h.slot.mix(salt),
            };
            key.pack(i)
        })
        .collect();
    let sorted = best_first(&mut keys, max);
    let holdings: Vec<&Holding> = keys.iter().map(|&k| found[SortKey::index(k)].0).collect();
    let ranked = Ranked {
        holdings: &holdings,
        keys: &keys,
        sorted,
    };
    // The reply stays small for any object: bitmaps past the byte budget are left out
    // (the best-ranked chosen peer is always listed).
    let budget = usize::try_from(cfg.max_hint_bytes_per_reply.as_u64()).unwrap_or(usize::MAX);
    let mut spent = 0usize;
    choose(&ranked, me.have, obj.count, max)
        .into_iter()
        .map(|k| found[SortKey::index(keys[k])])
        .filter(|(h, _)| {
            let bytes = h.have.as_bytes().len();
            let fits = spent == 0 || spent.saturating_add(bytes) <= budget;
            if fits {
                spent = spent.saturating_add(bytes.max(1));
            }
            fits
        })
        .map(|(holding, peer)| Hint {
            peer,
            holding,
            proximity: me.place.proximity(&peer.place),
        })
        .collect()
}

/// Puts the best `max` of `keys` first, sorted, and returns how many that is; the
/// rest stay unordered after them. A reply lists at most `max` hints and [`choose`]
/// reads the order past them only to find the best holder of a rare chunk (a scan
/// for the least key), so sorting every candidate (256 of them in a large swarm) is
/// not needed.
fn best_first(keys: &mut [u128], max: usize) -> usize {
    let k = max.min(keys.len());
    if k < keys.len() {
        keys.select_nth_unstable(k);
    }
    keys[..k].sort_unstable();
    k
}

/// A candidate's rank: lower is better, compared field by field.
#[derive(Debug, Clone, Copy)]
struct SortKey {
    proximity: Proximity,
    load: u32,
    /// Whole seconds since the peer was heard from.
    age: u32,
    /// Spreads requesters over equally good peers; only its top 30 bits count.
    spread: u64,
}

impl SortKey {
    /// The key in one integer that sorts like (proximity, load, age, spread), with
    /// the candidate's index `i` (below 2^32: candidates fit in memory) in the low bits.
    fn pack(self, i: usize) -> u128 {
        (self.proximity as u128) << 126
            | u128::from(self.load) << 94
            | u128::from(self.age) << 62
            | u128::from(self.spread >> 34) << 32
            | (i as u128 & 0xFFFF_FFFF)
    }

    fn index(packed: u128) -> usize {
        (packed & 0xFFFF_FFFF) as usize
    }
}

/// The holders a sync ranks: every live holder (other than the requester) holding a
/// chunk it lacks, if there are at most `sample` holders. Above that, the first
/// `sample` such holders from a point of the holder table fixed per requester (its
/// own position if it holds something; so
/// different requesters see different holders, and one requester mostly the same
/// ones: every hinted peer costs the agent's scheduler work on each of its passes),
/// then, for the chunks the requester lacks and none of those offers, the
/// first other holder of each: every chunk some live holder offers stays covered, as
/// [`choose`] promises, while the cost of a sync stops growing with the swarm.
///
/// Ranking all holders cost about 6 ms of CPU per sync with 10,000 holders of one
/// object (comparing, hashing and sorting every one; `trackerbench`, a loaded
/// machine): under 200 syncs/s per core. Sampled, about 0.6 ms; with the holders in a
/// vector (the window starts in O(1)), a count of complete holders and interned ids
/// (no string compared or hashed per candidate), see docs/benchmarks.md.
/// The price: the nearest, least loaded holders are found within the sample only.
fn candidates<'a>(
    now: Instant,
    obj: &'a Object,
    me: &Requester<'_>,
    peer_ttl: Duration,
    sample: usize,
) -> Vec<&'a Holding> {
    // `seen > now - ttl` is `now - seen < ttl` without a subtraction per holder.
    let cutoff = now.checked_sub(peer_ttl);
    let eligible = |h: &&Holding| {
        h.slot != me.slot
            && cutoff.is_none_or(|c| h.last_seen > c)
            && (h.complete || h.sample & !me.sample != 0 || !h.have.is_subset(me.have))
    };
    let n = obj.holders.len();
    if n <= sample {
        return obj.holders.iter().filter(eligible).collect();
    }
    // A holder's window starts at its own place in the table: stable while it stays
    // there, and every holder is in as many windows as any other. A requester holding
    // nothing yet starts at a point mixed from its slot (the remainder is below n).
    let start = obj
        .holders
        .position(me.slot)
        .unwrap_or_else(|| (me.slot.mix(obj.epoch) % n as u64) as usize);
    let mut picked: Vec<_> = obj
        .holders
        .window(start)
        .filter(eligible)
        .take(sample)
        .collect();
    // What some holder offers and neither the requester nor the sample has: take the
    // sample's holdings away until nothing is left (after a few holders, usually; each
    // is a cache miss on its bitmap, so not all of them).
    let mut lacking = if obj.holders.any_complete() {
        minus(&ChunkBitmap::full(obj.count), me.have)
            .as_bytes()
            .to_vec()
    } else {
        minus(&obj.held, me.have).as_bytes().to_vec()
    };
    for h in &picked {
        if lacking.iter().all(|&b| b == 0) {
            return picked;
        }
        if h.complete {
            return picked;
        }
        for (l, b) in lacking.iter_mut().zip(h.have.as_bytes()) {
            *l &= !b;
        }
    }
    let mut lacking = ChunkBitmap::from_bytes(lacking);
    if lacking.is_empty() {
        return picked;
    }
    for h in obj.holders.iter() {
        if !eligible(&h) || !(h.complete || intersects(&h.have, &lacking)) {
            continue;
        }
        picked.push(h);
        lacking = if h.complete {
            ChunkBitmap::new()
        } else {
            minus(&lacking, &h.have)
        };
        if lacking.is_empty() {
            break;
        }
    }
    picked
}

/// The chunks of `a` not in `b`.
fn minus(a: &ChunkBitmap, b: &ChunkBitmap) -> ChunkBitmap {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    let bytes = a
        .iter()
        .enumerate()
        .map(|(i, x)| x & !b.get(i).copied().unwrap_or(0))
        .collect();
    ChunkBitmap::from_bytes(bytes)
}

/// Whether `a` and `b` share a chunk.
fn intersects(a: &ChunkBitmap, b: &ChunkBitmap) -> bool {
    a.as_bytes()
        .iter()
        .zip(b.as_bytes())
        .any(|(x, y)| x & y != 0)
}

/// Candidates in rank order as far as [`choose`] needs it: the first `sorted` best
/// first, the rest unordered but every one ranked after them (by `keys`, lower first).
struct Ranked<'a> {
    holdings: &'a [&'a Holding],
    keys: &'a [u128],
    /// At least `min(len, max)` for the `max` given to [`choose`].
    sorted: usize,
}

/// Which of `ranked` to send to a requester holding `have` of `count` chunks, at most
/// `max`, as positions in `ranked`, best first: the better half by rank; then, for
/// every chunk the requester lacks that none of those holds but some candidate does,
/// its best-ranked holder; then the rest by rank.
///
/// Ranking alone sent the same nearest, least loaded holders to everyone, and the few
/// agents holding a new chunk fell outside a 32-peer reply: in a 48-agent flash crowd
/// (fleet S4) most agents saw some chunks as held by nobody, fell back to the origin
/// for them after `origin_fallback`, and the origin sent 1.1-2.4x the object.
///
/// The same choice as with every candidate sorted: the first and last steps stay
/// within the sorted `max` (at most `max` are chosen), and a rare chunk's holder past
/// them is the least key among the unordered rest.
///
/// Cost: one bitmap union per candidate, then at most `max` scans of `ranked`.
fn choose(ranked: &Ranked<'_>, have: &ChunkBitmap, count: u32, max: usize) -> Vec<usize> {
    let holdings = ranked.holdings;
    let (n, sorted) = (holdings.len(), ranked.sorted.min(holdings.len()));
    let mut c = Cover {
        ranked: holdings,
        count,
        chosen: vec![false; n],
        covered: have.clone(),
        n: 0,
    };
    for k in 0..n.min(max.div_ceil(2)) {
        c.take(k);
    }
    let offered = if holdings.iter().any(|h| h.complete) {
        ChunkBitmap::full(count)
    } else if count <= 64 {
        // The inline samples are the whole bitmaps: no cache miss per candidate.
        let s = holdings.iter().fold(0u64, |s, h| s | h.sample);
        ChunkBitmap::from_bytes(s.to_le_bytes().to_vec())
    } else {
        let mut offered = ChunkBitmap::new();
        for h in holdings {
            offered.union_with(&h.have);
        }
        offered
    };
    let wanted: Vec<u32> = c
        .covered
        .missing(count)
        .filter(|&i| offered.contains(i))
        .collect();
    for i in wanted {
        if c.n >= max {
            break;
        }
        if c.covered.contains(i) {
            continue;
        }
        let holds =
            |k: &usize| !c.chosen[*k] && (holdings[*k].complete || holdings[*k].have.contains(i));
        let best = (0..sorted)
            .find(holds)
            .or_else(|| (sorted..n).filter(holds).min_by_key(|&k| ranked.keys[k]));
        if let Some(k) = best {
            c.take(k);
        }
    }
    // Reaches past `sorted` only if every candidate is sorted (fewer than `max` are
    // chosen, so `max` sorted ones leave enough unchosen).
    for k in 0..n {
        if c.n >= max {
            break;
        }
        if !c.chosen[k] {
            c.take(k);
        }
    }
    let mut picked: Vec<usize> = (0..sorted).filter(|&k| c.chosen[k]).collect();
    let mut rest: Vec<usize> = (sorted..n).filter(|&k| c.chosen[k]).collect();
    rest.sort_unstable_by_key(|&k| ranked.keys[k]);
    picked.extend(rest);
    picked
}

/// [`choose`]'s running state.
struct Cover<'a> {
    ranked: &'a [&'a Holding],
    count: u32,
    chosen: Vec<bool>,
    /// Chunks the requester has or a chosen holder offers.
    covered: ChunkBitmap,
    n: usize,
}

impl Cover<'_> {
    fn take(&mut self, k: usize) {
        self.chosen[k] = true;
        self.n += 1;
        if self.ranked[k].complete {
            self.covered = ChunkBitmap::full(self.count);
        } else {
            self.covered.union_with(&self.ranked[k].have);
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
#[path = "rank_tests.rs"]
mod tests;
