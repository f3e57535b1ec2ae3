//! Random input sequences against a model of the scheduler's promises, and a simulated
//! swarm that must always finish.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::{Duration, Instant};

use proptest::prelude::*;

use super::*;

const CS: u32 = 16 * 1024;
const PEERS: u8 = 5;

fn pid(p: u8) -> PeerId {
    format!("p{p}").parse().unwrap()
}

fn prox(x: u8) -> Proximity {
    [
        Proximity::SameNode,
        Proximity::SameZone,
        Proximity::SameRegion,
        Proximity::Other,
    ][usize::from(x % 4)]
}

fn outcome(x: u8) -> Outcome {
    [
        Outcome::Ok,
        Outcome::Busy,
        Outcome::NotFound,
        Outcome::Corrupt,
        Outcome::Failed,
    ][usize::from(x % 5)]
}

fn id_for(index: usize, variant: u8) -> ChunkId {
    if variant == 0 {
        ChunkId::of(&index.to_le_bytes())
    } else {
        ChunkId::of(&[variant, index as u8])
    }
}

#[derive(Debug, Clone)]
enum Op {
    Ids(Vec<(usize, u8)>),
    Peer(u8, u8, Vec<usize>),
    /// Several hints in one `handle_peers`.
    Peers(Vec<(u8, u8, Vec<usize>)>),
    Have(u8, Vec<usize>),
    Gone(u8),
    Leases(Vec<usize>),
    Elsewhere(Vec<usize>),
    Local(usize),
    Result(usize, u8),
    Bogus(u64, u8),
    Advance(u64),
    TrackerLost,
    TrackerBack,
}

fn op(n: usize) -> impl Strategy<Value = Op> {
    let idx = 0..n + 3;
    let idxs = prop::collection::vec(0..n + 3, 0..6);
    prop_oneof![
        1 => prop::collection::vec((idx.clone(), prop_oneof![9 => Just(0u8), 1 => 1u8..3]), 0..8)
            .prop_map(Op::Ids),
        1 => (0..PEERS, any::<u8>(), idxs.clone()).prop_map(|(p, x, h)| Op::Peer(p, x, h)),
        1 => prop::collection::vec((0..PEERS, any::<u8>(), idxs.clone()), 0..4).prop_map(Op::Peers),
        1 => (0..PEERS + 1, idxs.clone()).prop_map(|(p, h)| Op::Have(p, h)),
        1 => (0..PEERS + 1).prop_map(Op::Gone),
        1 => idxs.clone().prop_map(Op::Leases),
        1 => idxs.prop_map(Op::Elsewhere),
        1 => idx.clone().prop_map(Op::Local),
        4 => (any::<usize>(), any::<u8>()).prop_map(|(k, o)| Op::Result(k, o)),
        1 => (any::<u64>(), any::<u8>()).prop_map(|(r, o)| Op::Bogus(r, o)),
        3 => prop_oneof![0u64..50, 0u64..3_000, 0u64..20_000].prop_map(Op::Advance),
        1 => Just(Op::TrackerLost),
        1 => Just(Op::TrackerBack),
    ]
}

fn config() -> impl Strategy<Value = SchedConfig> {
    (
        (1usize..5, 1usize..12, 1usize..5),
        (1usize..4, 0usize..5, 1u32..4, 1u32..4),
        (0u64..4_000_000, 1u64..3_000, 1u64..20_000, 1usize..8),
    )
        .prop_map(
            |((pi, mi, oi), (copies, dups, fails, attempts), (rate, base, fb, ask))| SchedConfig {
                peer_inflight: pi,
                max_inflight: mi,
                origin_inflight: oi,
                max_copies: copies,
                max_duplicates: dups,
                max_failures: fails,
                lease_attempts: attempts,
                slow_rate: rate,
                slow_base: Duration::from_millis(base),
                origin_fallback_after: Duration::from_millis(fb),
                lease_ask_max: ask,
                ..SchedConfig::default()
            },
        )
}

/// What the scheduler has promised so far, rebuilt from its inputs and actions.
struct Model {
    n: usize,
    cfg: SchedConfig,
    t0: Instant,
    now: Instant,
    out: BTreeMap<RequestId, (usize, Option<PeerId>)>,
    banned: HashSet<PeerId>,
    ids: HashMap<usize, ChunkId>,
    leased: HashSet<usize>,
    done: HashSet<usize>,
    lost: bool,
    ever_lost: bool,
}

impl Model {
    fn check_actions(&mut self, s: &mut Scheduler) -> Result<(), TestCaseError> {
        while let Some(a) = s.poll_action() {
            match a {
                Action::FetchPeer {
                    req,
                    index,
                    id,
                    peer,
                } => {
                    prop_assert!(index < self.n && !self.done.contains(&index));
                    prop_assert!(!self.banned.contains(&peer), "fetch from banned {peer}");
                    prop_assert_eq!(self.ids.get(&index), Some(&id), "id not from tracker");
                    prop_assert!(
                        !self
                            .out
                            .values()
                            .any(|(i, p)| *i == index && p.as_ref() == Some(&peer)),
                        "same chunk twice to one peer"
                    );
                    prop_assert!(self.out.insert(req, (index, Some(peer))).is_none());
                }
                Action::FetchOrigin { req, index, reason } => {
                    prop_assert!(index < self.n && !self.done.contains(&index));
                    match reason {
                        OriginReason::Lease => {
                            prop_assert!(self.leased.contains(&index), "origin without lease")
                        }
                        OriginReason::NoPeer
                        | OriginReason::PeerFailed
                        | OriginReason::PeerTimeout
                        | OriginReason::PeerCorrupt
                        | OriginReason::TrackerLost => prop_assert!(
                            self.ever_lost
                                || self.now.saturating_duration_since(self.t0)
                                    >= self.cfg.origin_fallback_after,
                            "fallback too early"
                        ),
                    }
                    prop_assert!(self.out.insert(req, (index, None)).is_none());
                }
                Action::Cancel { req } => {
                    prop_assert!(self.out.remove(&req).is_some(), "cancel of unknown {req}");
                }
                Action::WantLeases { indices, max } => {
                    prop_assert!(!self.lost && max >= 1 && !indices.is_empty());
                    prop_assert!(indices.len() <= self.cfg.lease_ask_max);
                    let set: HashSet<_> = indices.iter().collect();
                    prop_assert_eq!(set.len(), indices.len());
                    for i in indices {
                        prop_assert!(i < self.n && !self.done.contains(&i));
                    }
                }
                Action::ReleaseLeases { indices } => {
                    for i in indices {
                        prop_assert!(self.leased.remove(&i), "release of a lease not held");
                    }
                }
            }
        }
        let cfg = &self.cfg;
        prop_assert!(self.out.len() <= cfg.max_inflight);
        let origin = self.out.values().filter(|(_, p)| p.is_none()).count();
        prop_assert!(origin <= cfg.origin_inflight);
        let mut per_peer: HashMap<&PeerId, usize> = HashMap::new();
        let mut per_chunk: HashMap<usize, usize> = HashMap::new();
        for (i, p) in self.out.values() {
            *per_chunk.entry(*i).or_default() += 1;
            if let Some(p) = p {
                *per_peer.entry(p).or_default() += 1;
            }
        }
        prop_assert!(per_peer.values().all(|&c| c <= cfg.peer_inflight));
        prop_assert!(per_chunk.values().all(|&c| c <= cfg.max_copies));
        let p = s.progress();
        prop_assert_eq!(p.in_flight, self.out.len());
        prop_assert_eq!(p.origin_in_flight, origin);
        prop_assert_eq!(p.done, self.done.len());
        prop_assert_eq!(s.is_complete(), self.done.len() == self.n);
        prop_assert!(
            s.poll_timeout().is_none_or(|t| t > self.now),
            "timer not in the future"
        );
        Ok(())
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn random_inputs_keep_promises(
        n in 0usize..12,
        cfg in config(),
        ops in prop::collection::vec(op(12), 0..80),
    ) {
        let t0 = Instant::now();
        let layout = Layout::new(n as u64 * u64::from(CS) - u64::from(n > 0), CS).unwrap();
        let mut s = Scheduler::new(t0, layout, cfg.clone()).unwrap();
        let mut m = Model {
            n, cfg: s.config().clone(), t0, now: t0, out: BTreeMap::new(), banned: HashSet::new(),
            ids: HashMap::new(), leased: HashSet::new(), done: HashSet::new(), lost: false,
            ever_lost: false,
        };
        m.check_actions(&mut s)?;
        for op in ops {
            let now = m.now;
            match op {
                Op::Ids(v) => {
                    let v: Vec<_> = v.into_iter().map(|(i, x)| (i % (n + 3), id_for(i, x))).collect();
                    for &(i, id) in &v {
                        if i < n {
                            m.ids.entry(i).or_insert(id);
                        }
                    }
                    let _ = s.handle_chunk_ids(now, v);
                }
                Op::Peer(p, x, h) => { let _ = s.handle_peer(now, pid(p), prox(x), h); }
                Op::Peers(v) => {
                    let _ = s.handle_peers(now, v.into_iter().map(|(p, x, h)| (pid(p), prox(x), h)));
                }
                Op::Have(p, h) => { let _ = s.handle_have(now, &pid(p), h); }
                Op::Gone(p) => { let _ = s.handle_peer_gone(now, &pid(p)); }
                Op::Leases(v) => {
                    m.leased.extend(v.iter().filter(|&&i| i < n && !m.done.contains(&i)));
                    let _ = s.handle_leases(now, v);
                }
                Op::Elsewhere(v) => { let _ = s.handle_leased_elsewhere(now, v); }
                Op::Local(i) => {
                    let r = s.handle_local(now, i);
                    prop_assert_eq!(r.is_ok(), i < n);
                    if i < n {
                        m.done.insert(i);
                        m.leased.remove(&i);
                    }
                }
                Op::Result(k, o) => {
                    let Some((&req, (index, peer))) = m.out.iter().nth(k % m.out.len().max(1)) else {
                        continue;
                    };
                    let (index, peer) = (*index, peer.clone());
                    m.out.remove(&req);
                    let o = outcome(o);
                    if o == Outcome::Ok {
                        m.done.insert(index);
                        m.leased.remove(&index);
                    }
                    if let (Outcome::Corrupt, Some(p)) = (o, peer) {
                        m.banned.insert(p);
                    }
                    prop_assert_eq!(s.handle_result(now, req, o), Ok(()));
                }
                Op::Bogus(r, o) => {
                    let req = RequestId(r | 1 << 40);
                    prop_assert!(s.handle_result(now, req, outcome(o)).is_err());
                }
                Op::Advance(ms) => {
                    m.now += Duration::from_millis(ms);
                    s.handle_timeout(m.now);
                }
                Op::TrackerLost => {
                    m.lost = true;
                    m.ever_lost = true;
                    s.handle_tracker_lost(now);
                }
                Op::TrackerBack => {
                    m.lost = false;
                    s.handle_tracker_back(now);
                }
            }
            m.check_actions(&mut s)?;
        }
    }
}

/// One simulated peer: where it is, what it holds, how it answers.
#[derive(Debug, Clone)]
struct SimPeer {
    prox: u8,
    have: u32,
    /// Answers to its first requests (outcome code; 5 = never answers), then `Ok`.
    script: Vec<u8>,
    delay_ms: u64,
}

fn sim_peer() -> impl Strategy<Value = SimPeer> {
    (
        any::<u8>(),
        any::<u32>(),
        prop::collection::vec(0u8..6, 0..6),
        prop_oneof![1u64..100, 100u64..10_000],
    )
        .prop_map(|(prox, have, script, delay_ms)| SimPeer {
            prox,
            have,
            script,
            delay_ms,
        })
}

enum Event {
    Reply(RequestId, Outcome),
    Grant(Vec<usize>),
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    /// Whatever the peers do (finitely often), the download finishes: nothing is left
    /// waiting on a timer that never comes.
    #[test]
    fn simulated_swarm_always_completes(
        n in 1usize..24,
        peers in prop::collection::vec(sim_peer(), 0..5),
        grant_leases in any::<bool>(),
        lose_tracker in any::<bool>(),
        local in prop::collection::vec(0usize..24, 0..4),
    ) {
        let t0 = Instant::now();
        let layout = Layout::new(n as u64 * u64::from(CS), CS).unwrap();
        let mut s = Scheduler::new(t0, layout, SchedConfig::default()).unwrap();
        let mut now = t0;
        s.handle_chunk_ids(now, (0..n).map(|i| (i, id_for(i, 0)))).unwrap();
        for i in local {
            let _ = s.handle_local(now, i);
        }
        let mut scripts: Vec<std::vec::IntoIter<u8>> = Vec::new();
        let mut slot_of = HashMap::new();
        for (k, p) in peers.iter().enumerate() {
            let have = (0..n).filter(|i| p.have & (1 << (i % 32)) != 0);
            s.handle_peer(now, pid(k as u8), prox(p.prox), have).unwrap();
            scripts.push(p.script.clone().into_iter());
            slot_of.insert(pid(k as u8), k);
        }
        if lose_tracker {
            s.handle_tracker_lost(now);
        }
        let mut events: BTreeMap<(Instant, u64), Event> = BTreeMap::new();
        let mut seq = 0u64;
        for _step in 0..20_000 {
            while let Some(a) = s.poll_action() {
                seq += 1;
                match a {
                    Action::FetchPeer { req, peer, .. } => {
                        let k = slot_of[&peer];
                        let code = scripts[k].next().unwrap_or(0);
                        if code < 5 {
                            let at = now + Duration::from_millis(peers[k].delay_ms);
                            events.insert((at, seq), Event::Reply(req, outcome(code)));
                        }
                    }
                    Action::FetchOrigin { req, .. } => {
                        events.insert((now + Duration::from_millis(300), seq), Event::Reply(req, Outcome::Ok));
                    }
                    Action::WantLeases { indices, max } => {
                        if grant_leases {
                            let g = indices.into_iter().take(max).collect();
                            events.insert((now + Duration::from_millis(20), seq), Event::Grant(g));
                        }
                    }
                    Action::Cancel { .. } | Action::ReleaseLeases { .. } => {}
                }
            }
            if s.is_complete() {
                break;
            }
            let next_event = events.keys().next().map(|k| k.0);
            let next = match (next_event, s.poll_timeout()) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
            let Some(next) = next else {
                return Err(TestCaseError::fail(format!("stuck: {:?}", s.progress())));
            };
            prop_assert!(next >= now);
            now = next;
            while let Some(entry) = events.first_entry() {
                if entry.key().0 > now {
                    break;
                }
                match entry.remove() {
                    Event::Reply(req, o) => {
                        let r = s.handle_result(now, req, o);
                        prop_assert!(matches!(r, Ok(()) | Err(SchedError::UnknownRequest(_))));
                    }
                    Event::Grant(g) => s.handle_leases(now, g).unwrap(),
                }
            }
            s.handle_timeout(now);
        }
        prop_assert!(s.is_complete(), "not done after 20000 steps: {:?}", s.progress());
        let p = s.progress();
        prop_assert_eq!(p.local + p.from_peers + p.from_origin, n);
        prop_assert_eq!(p.in_flight, 0);
    }
}
