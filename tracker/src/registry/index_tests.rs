//! The registry's indexes (interned agents and labels, holder positions, the count of
//! complete holders) against a model, through re-syncs, completion, removal, expiry
//! and slot reuse.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use proptest::prelude::*;
use shoal_proto::tracker::{AnnounceRequest, PeerHint, SyncResponse};
use shoal_proto::{Proximity, Topology};

use super::tests::{agent, cfg, held, hint_ids, id, key, sync_req, topo};
use super::*;

/// Leases granted to a fresh agent asking for two: none while a holder is complete.
fn leases_for(reg: &mut Registry, now: Instant, k: &ObjectKey, who: &str) -> Vec<u32> {
    let req = sync_req(agent(999, Topology::default(), 0), k, 8, &[], 2);
    let r = reg.sync(now, &id(who), &req).unwrap();
    reg.check();
    r.leases
}

fn seed(reg: &mut Registry, now: Instant, k: &ObjectKey, have: &[u32], complete: bool) {
    let mut req = sync_req(agent(1, Topology::default(), 0), k, 8, have, 0);
    req.complete = complete;
    reg.sync(now, &id("seed"), &req).unwrap();
    reg.check();
}

#[test]
fn complete_holders_are_counted_through_resync_removal_and_expiry() {
    let t0 = Instant::now();
    let mut reg = Registry::new(cfg(), 1);
    let k = key("a");
    seed(&mut reg, t0, &k, &[], true);
    assert!(
        leases_for(&mut reg, t0, &k, "x0").is_empty(),
        "a seed exists"
    );
    // Re-syncing as complete, twice, still counts one seed.
    seed(&mut reg, t0, &k, &[], true);
    seed(&mut reg, t0, &k, &(0..8).collect::<Vec<_>>(), false);
    assert!(leases_for(&mut reg, t0, &k, "x1").is_empty());
    // The seed evicts a chunk: no longer complete, leases on the chunk nobody holds.
    seed(&mut reg, t0, &k, &[0, 1, 2, 3, 4, 5, 6], false);
    assert_eq!(leases_for(&mut reg, t0, &k, "x2"), vec![7]);
    // Complete again (fulfils every lease), then drops everything: leases again.
    seed(&mut reg, t0, &k, &[], true);
    assert!(leases_for(&mut reg, t0, &k, "x3").is_empty());
    seed(&mut reg, t0, &k, &[], false);
    assert_eq!(leases_for(&mut reg, t0, &k, "x4"), vec![0, 1]);
    // Complete via announce, then expiry of the seed.
    let mut h = held(&k, 8, &[], false);
    h.complete = true;
    reg.announce(
        t0,
        &id("seed"),
        &AnnounceRequest {
            agent: agent(1, Topology::default(), 0),
            objects: vec![h],
        },
    );
    reg.check();
    assert!(leases_for(&mut reg, t0, &k, "x5").is_empty());
    let later = t0 + Duration::from_secs(91);
    reg.sweep(later);
    reg.check();
    assert_eq!(leases_for(&mut reg, later, &k, "x6"), vec![0, 1]);
}

/// Agents forgotten by a sweep free their slots and labels; new agents take them, and
/// no reply ever names a forgotten agent or shows a newcomer with a forgotten
/// agent's chunks. Past the sample size, so replies come from the window.
#[test]
fn reused_slots_never_carry_a_forgotten_agents_holding() {
    let t0 = Instant::now();
    let mut reg = Registry::new(cfg(), 1);
    let k = key("a");
    let sync = |reg: &mut Registry, now, name: String, port: u16, zone: &str, have: &[u32]| {
        let req = sync_req(agent(port, topo(&name, zone, "r"), 0), &k, 4, have, 0);
        reg.sync(now, &id(&name), &req).unwrap()
    };
    for i in 0..400u16 {
        sync(
            &mut reg,
            t0,
            format!("old{i}"),
            i,
            &format!("old-zone{i}"),
            &[0],
        );
    }
    let t1 = t0 + Duration::from_secs(60);
    for i in 0..300u16 {
        sync(&mut reg, t1, format!("live{i}"), 1000 + i, "z", &[1]);
    }
    // The old agents are forgotten; newcomers take their slots.
    let t2 = t0 + Duration::from_secs(91);
    reg.sweep(t2);
    reg.check();
    assert_eq!(reg.peer_count(), 300);
    for i in 0..400u16 {
        sync(&mut reg, t2, format!("new{i}"), 2000 + i, "z", &[2]);
    }
    reg.check();
    let mut seen = HashSet::new();
    for r in 0..30u16 {
        let resp = sync(&mut reg, t2, format!("me{r}"), 3000 + r, "z", &[]);
        for p in &resp.peers {
            let name = p.id.as_str();
            let want: &[u32] = if name.starts_with("live") {
                &[1]
            } else if name.starts_with("new") {
                &[2]
            } else {
                panic!("{name} hinted: not a live holder");
            };
            assert_eq!(p.have.iter().collect::<Vec<_>>(), want, "{name}'s chunks");
            assert_eq!(p.proximity, Proximity::SameZone, "{name}'s labels");
        }
        assert!(resp.peers.iter().any(|p| p.has(1)) && resp.peers.iter().any(|p| p.has(2)));
        seen.extend(hint_ids(&resp));
    }
    assert!(
        seen.len() > 100,
        "only {} distinct holders hinted",
        seen.len()
    );
}

/// Agents of the proptest: few enough that every eligible holder fits in a reply.
const AGENTS: usize = 20;
const CHUNKS: u32 = 8;

#[derive(Debug, Clone)]
enum Op {
    Sync {
        agent: usize,
        obj: usize,
        have: u8,
        complete: bool,
        zone: u8,
    },
    Announce {
        agent: usize,
        obj: usize,
        have: u8,
        complete: bool,
    },
    Advance(u64),
    Sweep,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (0..AGENTS, 0..2usize, any::<u8>(), prop::bool::weighted(0.15), 0..4u8)
            .prop_map(|(agent, obj, have, complete, zone)| Op::Sync { agent, obj, have, complete, zone }),
        2 => (0..AGENTS, 0..2usize, any::<u8>(), prop::bool::weighted(0.15))
            .prop_map(|(agent, obj, have, complete)| Op::Announce { agent, obj, have, complete }),
        2 => (0..50u64).prop_map(Op::Advance),
        1 => Just(Op::Sweep),
    ]
}

/// What the model knows of one holding: chunks (all of them if complete), when.
type Held = (u8, Instant);

fn bits(b: u8) -> Vec<u32> {
    (0..CHUNKS).filter(|i| b & (1 << i) != 0).collect()
}

fn hint_bits(p: &PeerHint) -> u8 {
    (0..CHUNKS)
        .filter(|&i| p.has(i))
        .fold(0, |b, i| b | (1 << i))
}

/// A sync's hints against the model: exactly the live other holders with a chunk the
/// requester lacks, each with its chunks.
fn check_hints(
    resp: &SyncResponse,
    me: usize,
    mine: Option<u8>,
    holdings: &HashMap<usize, Held>,
    now: Instant,
    ttl: Duration,
) -> Result<(), TestCaseError> {
    let mine = mine.unwrap_or(0);
    if mine == 0xFF {
        prop_assert!(resp.peers.is_empty(), "a complete requester gets no hints");
        return Ok(());
    }
    let want: HashMap<String, u8> = holdings
        .iter()
        .filter(|(a, (have, seen))| {
            **a != me && now.saturating_duration_since(*seen) < ttl && have & !mine != 0
        })
        .map(|(a, (have, _))| (format!("a{a}"), *have))
        .collect();
    let got: HashMap<String, u8> = resp
        .peers
        .iter()
        .map(|p| (p.id.to_string(), hint_bits(p)))
        .collect();
    prop_assert_eq!(got.len(), resp.peers.len(), "a peer hinted twice");
    prop_assert_eq!(got, want);
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 128, ..ProptestConfig::default() })]

    /// Random syncs, announces, time steps and sweeps: the indexes stay consistent and
    /// every reply hints exactly the live holders that have something to offer.
    #[test]
    fn indexes_follow_a_model(ops in prop::collection::vec(op(), 1..120)) {
        let mut c = cfg();
        // Objects outlive the run: the model tracks agents and holdings only.
        c.object_ttl = Duration::from_secs(86_400);
        let ttl = c.peer_ttl;
        let mut reg = Registry::new(c, 7);
        let keys = [key("p0"), key("p1")];
        let mut now = Instant::now();
        // Per object: agent -> (chunks, last report).
        let mut model: [HashMap<usize, Held>; 2] = [HashMap::new(), HashMap::new()];
        for op in ops {
            match op {
                Op::Sync { agent: a, obj, have, complete, zone } => {
                    let t = topo(&format!("n{a}"), &format!("z{zone}"), "r");
                    let mut req = sync_req(agent(a as u16, t, 0), &keys[obj], CHUNKS, &bits(have), 0);
                    req.complete = complete;
                    let resp = reg.sync(now, &id(&format!("a{a}")), &req).unwrap();
                    let have = if complete { 0xFF } else { have };
                    if have == 0 {
                        model[obj].remove(&a);
                    } else {
                        model[obj].insert(a, (have, now));
                    }
                    check_hints(&resp, a, model[obj].get(&a).map(|h| h.0), &model[obj], now, ttl)?;
                }
                Op::Announce { agent: a, obj, have, complete } => {
                    let mut h = held(&keys[obj], CHUNKS, &bits(have), false);
                    h.complete = complete;
                    let req = AnnounceRequest {
                        agent: agent(a as u16, topo(&format!("n{a}"), "z0", "r"), 0),
                        objects: vec![h],
                    };
                    reg.announce(now, &id(&format!("a{a}")), &req);
                    let have = if complete { 0xFF } else { have };
                    if have == 0 {
                        model[obj].remove(&a);
                    } else {
                        model[obj].insert(a, (have, now));
                    }
                }
                Op::Advance(s) => now += Duration::from_secs(s),
                Op::Sweep => reg.sweep(now),
            }
            reg.check();
        }
    }
}
