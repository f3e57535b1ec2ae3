//! Registry scenarios with simulated time.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use shoal_proto::tracker::AgentInfo;
use shoal_proto::{Proximity, Topology};

use super::*;

const CHUNK: u32 = 1 << 20;

pub(super) fn cfg() -> RegistryConfig {
    RegistryConfig {
        peer_ttl: Duration::from_secs(90),
        object_ttl: Duration::from_secs(600),
        lease_ttl: Duration::from_secs(10),
        max_leases_per_agent: 2,
        max_leases_per_object: 8,
        max_peers_per_reply: 32,
        max_ids_per_reply: 8192,
        max_hint_bytes_per_reply: bytesize::ByteSize::kib(256),
        max_published_per_agent: 262_144,
    }
}

pub(super) fn id(n: &str) -> PeerId {
    n.parse().unwrap()
}

pub(super) fn key(n: &str) -> ObjectKey {
    ObjectKey::immutable(&format!("sha256:{n}"), 0).unwrap()
}

/// An object of `chunks` full chunks.
pub(super) fn layout(chunks: u32) -> Layout {
    Layout::new(u64::from(chunks) * u64::from(CHUNK), CHUNK).unwrap()
}

pub(super) fn topo(node: &str, zone: &str, region: &str) -> Topology {
    Topology {
        node: node.into(),
        zone: zone.into(),
        region: region.into(),
    }
}

pub(super) fn agent(port: u16, t: Topology, load: u32) -> AgentInfo {
    AgentInfo {
        peer_addr: SocketAddr::from(([10, 0, 0, 1], port)),
        topology: t,
        load,
    }
}

fn chunk_id(i: u32) -> ChunkId {
    ChunkId::of(&i.to_be_bytes())
}

pub(super) fn sync_req(
    a: AgentInfo,
    k: &ObjectKey,
    chunks: u32,
    have: &[u32],
    want: u32,
) -> SyncRequest {
    SyncRequest {
        agent: a,
        key: k.clone(),
        layout: Some(layout(chunks)),
        have: have.iter().copied().collect(),
        complete: false,
        publish: Vec::new(),
        want_leases: want,
        want: ChunkBitmap::new(),
        release: Vec::new(),
        cursor: None,
        renew: Vec::new(),
    }
}

pub(super) fn held(k: &ObjectKey, chunks: u32, have: &[u32], publish: bool) -> HeldObject {
    HeldObject {
        key: k.clone(),
        layout: layout(chunks),
        have: have.iter().copied().collect(),
        complete: false,
        publish: if publish {
            have.iter()
                .map(|&i| IndexedId {
                    index: i,
                    id: chunk_id(i),
                })
                .collect()
        } else {
            Vec::new()
        },
    }
}

pub(super) fn hint_ids(r: &SyncResponse) -> Vec<String> {
    r.peers.iter().map(|p| p.id.to_string()).collect()
}

#[test]
fn unknown_key_without_layout_creates_nothing() {
    let t0 = Instant::now();
    let mut reg = Registry::new(cfg(), 1);
    let mut req = sync_req(agent(1, Topology::default(), 0), &key("a"), 4, &[], 1);
    req.layout = None;
    let r = reg.sync(t0, &id("a"), &req).unwrap();
    assert_eq!(r.layout, None);
    assert!(r.leases.is_empty());
    assert_eq!(reg.object_count(), 0);
    assert_eq!(reg.peer_count(), 1);
}

#[test]
fn first_layout_wins_and_conflicting_holders_are_ignored() {
    let t0 = Instant::now();
    let mut reg = Registry::new(cfg(), 1);
    let k = key("a");
    let r = reg
        .sync(
            t0,
            &id("a"),
            &sync_req(agent(1, Topology::default(), 0), &k, 4, &[0], 0),
        )
        .unwrap();
    assert_eq!(r.layout, Some(layout(4)));
    // A newcomer proposing another geometry adopts the tracker's.
    let r = reg
        .sync(
            t0,
            &id("b"),
            &sync_req(agent(2, Topology::default(), 0), &k, 8, &[], 0),
        )
        .unwrap();
    assert_eq!(r.layout, Some(layout(4)));
    assert_eq!(reg.drain_events().conflicts, 0);
    // One already holding chunks under another geometry is not recorded, and counted.
    reg.sync(
        t0,
        &id("c"),
        &sync_req(agent(3, Topology::default(), 0), &k, 8, &[5], 0),
    )
    .unwrap();
    let ev = reg.drain_events();
    assert_eq!(ev.conflicts, 1);
    assert!(matches!(ev.conflict_log[0], Conflict::Layout { .. }));
    let r = reg
        .sync(
            t0,
            &id("b"),
            &sync_req(agent(2, Topology::default(), 0), &k, 4, &[], 0),
        )
        .unwrap();
    assert_eq!(hint_ids(&r), vec!["a"]);
}

#[test]
fn bad_layout_and_indices_are_refused() {
    let t0 = Instant::now();
    let mut reg = Registry::new(cfg(), 1);
    let k = key("a");
    let mut req = sync_req(agent(1, Topology::default(), 0), &k, 4, &[], 0);
    req.layout = Some(Layout {
        size: 10,
        chunk_size: 1,
    });
    assert!(matches!(
        reg.sync(t0, &id("a"), &req),
        Err(RegistryError::Layout(_))
    ));
    let req = sync_req(agent(1, Topology::default(), 0), &k, 4, &[4], 0);
    assert_eq!(
        reg.sync(t0, &id("a"), &req),
        Err(RegistryError::Index { index: 4, count: 4 })
    );
    let mut req = sync_req(agent(1, Topology::default(), 0), &k, 4, &[], 0);
    req.publish = vec![IndexedId {
        index: 9,
        id: chunk_id(9),
    }];
    assert!(matches!(
        reg.sync(t0, &id("a"), &req),
        Err(RegistryError::Index { index: 9, .. })
    ));
}

#[test]
fn hints_ranked_by_proximity_then_load_then_freshness() {
    let t0 = Instant::now();
    let mut reg = Registry::new(cfg(), 1);
    let k = key("a");
    let me = topo("n1", "z1", "r1");
    let holders = [
        ("other", topo("n9", "z9", "r9"), 0),
        ("region", topo("n3", "z2", "r1"), 0),
        ("zone-busy", topo("n2", "z1", "r1"), 5),
        ("zone-idle", topo("n4", "z1", "r1"), 1),
        ("node", topo("n1", "z7", "r7"), 9),
    ];
    for (i, (name, t, load)) in holders.iter().enumerate() {
        let req = sync_req(agent(i as u16 + 10, t.clone(), *load), &k, 8, &[0], 0);
        reg.sync(t0, &id(name), &req).unwrap();
    }
    // "stale" is in the same zone, idle, but last heard 5s ago.
    let req = sync_req(agent(30, topo("n5", "z1", "r1"), 1), &k, 8, &[1], 0);
    reg.sync(t0, &id("stale"), &req).unwrap();
    let t1 = t0 + Duration::from_secs(5);
    let req = sync_req(agent(31, topo("n4", "z1", "r1"), 1), &k, 8, &[0], 0);
    reg.sync(t1, &id("zone-idle"), &req).unwrap();
    for (i, (name, t, load)) in holders.iter().enumerate() {
        if *name != "zone-idle" {
            let req = sync_req(agent(i as u16 + 10, t.clone(), *load), &k, 8, &[0], 0);
            reg.sync(t1, &id(name), &req).unwrap();
        }
    }

    let r = reg
        .sync(
            t1,
            &id("me"),
            &sync_req(agent(1, me.clone(), 0), &k, 8, &[], 0),
        )
        .unwrap();
    assert_eq!(
        hint_ids(&r),
        vec!["node", "zone-idle", "stale", "zone-busy", "region", "other"]
    );
    assert_eq!(r.peers[0].proximity, Proximity::SameNode);
    assert_eq!(r.peers[5].proximity, Proximity::Other);
    assert_eq!(r.peers[1].addr, SocketAddr::from(([10, 0, 0, 1], 31)));

    // Peers holding nothing the requester lacks are not hinted.
    let r = reg
        .sync(t1, &id("me"), &sync_req(agent(1, me, 0), &k, 8, &[0], 0))
        .unwrap();
    assert_eq!(hint_ids(&r), vec!["stale"]);
}

/// A chunk only far, loaded peers hold still gets a holder in the reply: otherwise the
/// requester would see it as held by nobody and fetch it from the origin.
#[test]
fn capped_hints_cover_every_held_chunk() {
    let t0 = Instant::now();
    let mut c = cfg();
    c.max_peers_per_reply = 4;
    let mut reg = Registry::new(c, 1);
    let k = key("a");
    // Six near, idle peers hold chunks 0..2; two far, loaded ones alone hold 2 and 3.
    for i in 0..6u16 {
        let t = topo(&format!("n{i}"), "z1", "r");
        reg.sync(
            t0,
            &id(&format!("near{i}")),
            &sync_req(agent(i, t, 0), &k, 4, &[0, 1], 0),
        )
        .unwrap();
    }
    for (i, chunk) in [(10u16, 2u32), (11, 3)] {
        let t = topo(&format!("n{i}"), "z9", "r9");
        reg.sync(
            t0,
            &id(&format!("far{chunk}")),
            &sync_req(agent(i, t, 50), &k, 4, &[chunk], 0),
        )
        .unwrap();
    }
    let me = topo("me", "z1", "r");
    let r = reg
        .sync(
            t0,
            &id("me"),
            &sync_req(agent(99, me.clone(), 0), &k, 4, &[], 0),
        )
        .unwrap();
    let got = hint_ids(&r);
    assert_eq!(got.len(), 4, "{got:?}");
    assert!(
        got.contains(&"far2".to_owned()) && got.contains(&"far3".to_owned()),
        "{got:?}"
    );
    // Still ranked best first: the near peers lead.
    assert!(
        got[0].starts_with("near") && got[1].starts_with("near"),
        "{got:?}"
    );
    for chunk in 0..4 {
        assert!(
            r.peers.iter().any(|p| p.has(chunk)),
            "chunk {chunk} uncovered"
        );
    }
    // A requester that already has 2 and 3 gets near peers only.
    let r = reg
        .sync(
            t0,
            &id("me"),
            &sync_req(agent(99, me, 0), &k, 4, &[2, 3], 0),
        )
        .unwrap();
    assert!(
        hint_ids(&r).iter().all(|p| p.starts_with("near")),
        "{:?}",
        hint_ids(&r)
    );
}

#[test]
fn hints_capped_and_none_for_complete_requester() {
    let t0 = Instant::now();
    let mut c = cfg();
    c.max_peers_per_reply = 3;
    let mut reg = Registry::new(c, 1);
    let k = key("a");
    for i in 0..10u16 {
        let t = topo(&format!("n{i}"), if i >= 7 { "z1" } else { "z2" }, "r");
        reg.sync(
            t0,
            &id(&format!("p{i}")),
            &sync_req(agent(i, t, 0), &k, 4, &[1], 0),
        )
        .unwrap();
    }
    let me = topo("me", "z1", "r");
    let r = reg
        .sync(
            t0,
            &id("me"),
            &sync_req(agent(99, me.clone(), 0), &k, 4, &[], 0),
        )
        .unwrap();
    let mut got = hint_ids(&r);
    got.sort();
    assert_eq!(got, vec!["p7", "p8", "p9"], "the three same-zone peers");
    let mut req = sync_req(agent(99, me, 0), &k, 4, &[], 0);
    req.complete = true;
    assert!(reg.sync(t0, &id("me"), &req).unwrap().peers.is_empty());
    // A complete holder is hinted without a bitmap.
    let r = reg
        .sync(
            t0,
            &id("p0"),
            &sync_req(agent(0, topo("n0", "z2", "r"), 0), &k, 4, &[1], 0),
        )
        .unwrap();
    let seed = r.peers.iter().find(|p| p.id.as_str() == "me").unwrap();
    assert!(seed.complete && seed.have.is_empty() && seed.has(3));
}

#[test]
fn leases_one_holder_per_chunk_lowest_first_capped_per_agent() {
    let t0 = Instant::now();
    let mut reg = Registry::new(cfg(), 1);
    let k = key("a");
    let a = || agent(1, Topology::default(), 0);
    let b = || agent(2, Topology::default(), 0);
    let r = reg
        .sync(t0, &id("a"), &sync_req(a(), &k, 8, &[], 5))
        .unwrap();
    assert_eq!(
        r.leases,
        vec![0, 1],
        "capped at max_leases_per_agent, lowest first"
    );
    assert_eq!(r.lease_ttl_ms, 10_000);
    let r = reg
        .sync(t0, &id("b"), &sync_req(b(), &k, 8, &[], 2))
        .unwrap();
    assert_eq!(r.leases, vec![2, 3], "never a chunk leased to another");
    // Asking again returns the same live leases, no new grants.
    let r = reg
        .sync(t0, &id("a"), &sync_req(a(), &k, 8, &[], 2))
        .unwrap();
    assert_eq!(r.leases, vec![0, 1]);
    assert_eq!(reg.drain_events().leases_granted, 4);
    // Fulfilled by announcing the chunk; room for one more, skipping held chunk 4.
    let c = agent(3, Topology::default(), 0);
    reg.announce(
        t0,
        &id("c"),
        &AnnounceRequest {
            agent: c,
            objects: vec![held(&k, 8, &[4], true)],
        },
    );
    let r = reg
        .sync(t0, &id("a"), &sync_req(a(), &k, 8, &[0], 2))
        .unwrap();
    assert_eq!(r.leases, vec![1, 5]);
    // Wanting none grants none; a complete holder makes leases moot.
    let r = reg
        .sync(
            t0,
            &id("d"),
            &sync_req(agent(4, Topology::default(), 0), &k, 8, &[], 0),
        )
        .unwrap();
    assert!(r.leases.is_empty());
    let mut req = sync_req(agent(5, Topology::default(), 0), &k, 8, &[], 0);
    req.complete = true;
    reg.sync(t0, &id("seed"), &req).unwrap();
    let r = reg
        .sync(
            t0,
            &id("d"),
            &sync_req(agent(4, Topology::default(), 0), &k, 8, &[], 2),
        )
        .unwrap();
    assert!(r.leases.is_empty());
    let r = reg
        .sync(t0, &id("b"), &sync_req(b(), &k, 8, &[], 2))
        .unwrap();
    assert!(
        r.leases.is_empty(),
        "a complete holding fulfils every lease"
    );
}

#[test]
fn leases_expire_and_are_granted_again() {
    let t0 = Instant::now();
    let mut reg = Registry::new(cfg(), 1);
    let k = key("a");
    let a = || agent(1, Topology::default(), 0);
    let b = || agent(2, Topology::default(), 0);
    assert_eq!(
        reg.sync(t0, &id("a"), &sync_req(a(), &k, 4, &[], 2))
            .unwrap()
            .leases,
        vec![0, 1]
    );
    assert_eq!(
        reg.sync(t0, &id("b"), &sync_req(b(), &k, 4, &[], 2))
            .unwrap()
            .leases,
        vec![2, 3]
    );
    // a delivers chunk 0 in time, b both of its chunks; a's chunk 1 lapses.
    let t1 = t0 + Duration::from_secs(5);
    reg.sync(t1, &id("a"), &sync_req(a(), &k, 4, &[0], 0))
        .unwrap();
    reg.sync(t1, &id("b"), &sync_req(b(), &k, 4, &[2, 3], 0))
        .unwrap();
    let t2 = t0 + Duration::from_secs(10);
    let r = reg
        .sync(t2, &id("b"), &sync_req(b(), &k, 4, &[2, 3], 2))
        .unwrap();
    assert_eq!(r.leases, vec![1], "a's lapsed lease goes to b");
    let ev = reg.drain_events();
    assert_eq!(ev.leases_expired, 1);
    assert_eq!(ev.leases_granted, 5);
    // An idle object's leases lapse in a sweep, counted once.
    reg.sweep(t2 + Duration::from_secs(11));
    assert_eq!(reg.drain_events().leases_expired, 1);
    reg.sweep(t2 + Duration::from_secs(30));
    assert_eq!(reg.drain_events().leases_expired, 0);
}

#[test]
fn first_publisher_wins_and_conflicts_are_counted() {
    let t0 = Instant::now();
    let mut reg = Registry::new(cfg(), 1);
    let k = key("a");
    let mut req = sync_req(agent(1, Topology::default(), 0), &k, 4, &[0], 0);
    req.publish = vec![IndexedId {
        index: 0,
        id: chunk_id(0),
    }];
    let r = reg.sync(t0, &id("a"), &req).unwrap();
    assert_eq!(r.ids, req.publish);
    let mut liar = sync_req(agent(2, Topology::default(), 0), &k, 4, &[0], 0);
    liar.publish = vec![
        IndexedId {
            index: 0,
            id: chunk_id(99),
        },
        IndexedId {
            index: 1,
            id: chunk_id(1),
        },
    ];
    let r = reg.sync(t0, &id("b"), &liar).unwrap();
    assert_eq!(r.ids[0].id, chunk_id(0), "first publisher kept");
    assert_eq!(r.ids.len(), 2);
    let ev = reg.drain_events();
    assert_eq!(ev.conflicts, 1);
    assert!(
        matches!(&ev.conflict_log[0], Conflict::ChunkId { index: 0, by, .. } if by.as_str() == "b")
    );
}

#[test]
fn cursor_returns_only_new_ids_and_stale_epochs_get_all() {
    let t0 = Instant::now();
    let mut reg = Registry::new(cfg(), 1000);
    let k = key("a");
    let mut req = sync_req(agent(1, Topology::default(), 0), &k, 4, &[0, 1], 0);
    req.publish = (0..2)
        .map(|i| IndexedId {
            index: i,
            id: chunk_id(i),
        })
        .collect();
    let r1 = reg.sync(t0, &id("a"), &req).unwrap();
    assert_eq!(r1.ids.len(), 2);
    let mut reader = sync_req(agent(2, Topology::default(), 0), &k, 4, &[], 0);
    reader.cursor = r1.cursor;
    assert!(reg.sync(t0, &id("b"), &reader).unwrap().ids.is_empty());
    req.publish = vec![IndexedId {
        index: 3,
        id: chunk_id(3),
    }];
    req.have = [0, 1, 3].into_iter().collect();
    reg.sync(t0, &id("a"), &req).unwrap();
    let r = reg.sync(t0, &id("b"), &reader).unwrap();
    assert_eq!(
        r.ids,
        vec![IndexedId {
            index: 3,
            id: chunk_id(3)
        }]
    );
    assert_eq!(r.cursor.unwrap().pos, 3);
    // A cursor from another life of the object (or another tracker) is ignored.
    reader.cursor = Some(Cursor { epoch: 7, pos: 3 });
    assert_eq!(reg.sync(t0, &id("b"), &reader).unwrap().ids.len(), 3);
}

#[test]
fn silent_peers_and_idle_objects_expire() {
    let t0 = Instant::now();
    let mut reg = Registry::new(cfg(), 1);
    let k = key("a");
    reg.sync(
        t0,
        &id("old"),
        &sync_req(agent(1, Topology::default(), 0), &k, 4, &[0], 2),
    )
    .unwrap();
    let t1 = t0 + Duration::from_secs(60);
    reg.sync(
        t1,
        &id("new"),
        &sync_req(agent(2, Topology::default(), 0), &k, 4, &[1], 0),
    )
    .unwrap();
    let t2 = t0 + Duration::from_secs(91);
    let r = reg
        .sync(
            t2,
            &id("me"),
            &sync_req(agent(3, Topology::default(), 0), &k, 4, &[], 4),
        )
        .unwrap();
    assert_eq!(hint_ids(&r), vec!["new"], "old is forgotten after peer_ttl");
    assert_eq!(r.leases, vec![0, 2], "its chunk is leasable again");
    assert_eq!(reg.peer_count(), 2);
    // Nobody touches the object for object_ttl: it and everyone in it are gone.
    reg.sweep(t2 + Duration::from_secs(600));
    assert_eq!(reg.object_count(), 0);
    assert_eq!(reg.peer_count(), 0);
    let mut ask = sync_req(agent(3, Topology::default(), 0), &k, 4, &[], 0);
    ask.layout = None;
    assert_eq!(
        reg.sync(t2 + Duration::from_secs(601), &id("me"), &ask)
            .unwrap()
            .layout,
        None
    );
}

#[test]
fn restarted_registry_is_complete_after_one_announce_round() {
    let t0 = Instant::now();
    let k = key("a");
    let k2 = key("b");
    let mut before = Registry::new(cfg(), 1);
    let mut req = sync_req(agent(1, Topology::default(), 0), &k, 4, &[0, 1, 2, 3], 0);
    req.publish = (0..4)
        .map(|i| IndexedId {
            index: i,
            id: chunk_id(i),
        })
        .collect();
    let want = before.sync(t0, &id("a"), &req).unwrap();

    // The tracker restarts. Agents announce what they hold; the tracker asks for ids
    // it lacks and they announce again with them.
    let mut after = Registry::new(cfg(), 2);
    let a = AnnounceRequest {
        agent: agent(1, Topology::default(), 0),
        objects: vec![held(&k, 4, &[0, 1, 2, 3], false), held(&k2, 2, &[0], false)],
    };
    let r = after.announce(t0, &id("a"), &a);
    assert_eq!(r.accepted, 2);
    assert_eq!(r.want_ids, vec![k.clone(), k2.clone()]);
    let b = AnnounceRequest {
        agent: agent(2, Topology::default(), 0),
        objects: vec![held(&k, 4, &[1, 2], true)],
    };
    assert!(after.announce(t0, &id("b"), &b).want_ids.is_empty());
    let a2 = AnnounceRequest {
        agent: agent(1, Topology::default(), 0),
        objects: vec![held(&k, 4, &[0, 1, 2, 3], true), held(&k2, 2, &[0], true)],
    };
    let r = after.announce(t0, &id("a"), &a2);
    assert!(r.want_ids.is_empty() && r.refused.is_empty());

    let mut newcomer = sync_req(agent(3, Topology::default(), 0), &k, 4, &[], 2);
    newcomer.layout = None;
    let got = after.sync(t0, &id("c"), &newcomer).unwrap();
    assert_eq!(got.layout, want.layout);
    let mut ids = got.ids.clone();
    ids.sort_by_key(|i| i.index);
    assert_eq!(ids, want.ids);
    let mut hints = hint_ids(&got);
    hints.sort();
    assert_eq!(hints, vec!["a", "b"]);
    assert!(
        got.leases.is_empty(),
        "a holds everything: no origin fetch needed"
    );

    // A held object under another layout is refused, the rest of the batch counts.
    let bad = AnnounceRequest {
        agent: agent(4, Topology::default(), 0),
        objects: vec![held(&k, 8, &[0], false), held(&k2, 2, &[1], false)],
    };
    let r = after.announce(t0, &id("d"), &bad);
    assert_eq!(r.accepted, 1);
    assert_eq!(r.refused.len(), 1);
    assert!(r.refused[0].reason.contains("layout"), "{:?}", r.refused);
    assert_eq!(after.drain_events().conflicts, 1);
    // An index out of range is refused without creating the object.
    let bad = AnnounceRequest {
        agent: agent(4, Topology::default(), 0),
        objects: vec![held(&key("c"), 2, &[5], false)],
    };
    let r = after.announce(t0, &id("d"), &bad);
    assert!(
        r.refused[0].reason.contains("chunk index 5"),
        "{:?}",
        r.refused
    );
    assert_eq!(after.object_count(), 2);
}

#[test]
fn shrinking_holding_frees_chunks_for_leases() {
    let t0 = Instant::now();
    let mut reg = Registry::new(cfg(), 1);
    let k = key("a");
    reg.sync(
        t0,
        &id("a"),
        &sync_req(agent(1, Topology::default(), 0), &k, 3, &[0, 1], 0),
    )
    .unwrap();
    let r = reg
        .sync(
            t0,
            &id("b"),
            &sync_req(agent(2, Topology::default(), 0), &k, 3, &[], 2),
        )
        .unwrap();
    assert_eq!(r.leases, vec![2]);
    // a evicts chunk 0.
    reg.sync(
        t0,
        &id("a"),
        &sync_req(agent(1, Topology::default(), 0), &k, 3, &[1], 0),
    )
    .unwrap();
    let r = reg
        .sync(
            t0,
            &id("b"),
            &sync_req(agent(2, Topology::default(), 0), &k, 3, &[], 2),
        )
        .unwrap();
    assert_eq!(r.leases, vec![0, 2]);
}

#[test]
fn renewed_leases_outlive_the_ttl_and_the_object_cap_holds() {
    let t0 = Instant::now();
    let mut c = cfg();
    c.max_leases_per_object = 3;
    let mut reg = Registry::new(c, 1);
    let k = key("r");
    let a = || agent(1, Topology::default(), 0);
    let b = || agent(2, Topology::default(), 0);
    assert_eq!(
        reg.sync(t0, &id("a"), &sync_req(a(), &k, 8, &[], 2))
            .unwrap()
            .leases,
        vec![0, 1]
    );
    // Only one lease is left under the object cap of 3.
    assert_eq!(
        reg.sync(t0, &id("b"), &sync_req(b(), &k, 8, &[], 2))
            .unwrap()
            .leases,
        vec![2]
    );
    // a is still fetching chunk 0 (a slow origin) and renews it; it gave up on 1.
    let mut renew = sync_req(a(), &k, 8, &[], 0);
    renew.renew = vec![0, 2];
    reg.sync(t0 + Duration::from_secs(8), &id("a"), &renew)
        .unwrap();
    let t1 = t0 + Duration::from_secs(12);
    let r = reg
        .sync(t1, &id("b"), &sync_req(b(), &k, 8, &[], 2))
        .unwrap();
    assert_eq!(
        r.leases,
        vec![1, 2],
        "1 and b's own 2 lapsed and are granted again; a's renewed 0 is still a's"
    );
    let r = reg
        .sync(t1, &id("a"), &sync_req(a(), &k, 8, &[], 2))
        .unwrap();
    assert_eq!(r.leases, vec![0], "a keeps 0; the cap of 3 leaves no room");
}

fn publish_all(n: u32) -> Vec<IndexedId> {
    (0..n)
        .map(|i| IndexedId {
            index: i,
            id: chunk_id(i),
        })
        .collect()
}

#[test]
fn sync_replies_are_paged_by_cursor() {
    let t0 = Instant::now();
    let mut reg = Registry::new(
        RegistryConfig {
            max_ids_per_reply: 3,
            ..cfg()
        },
        1,
    );
    let k = key("a");
    let mut req = sync_req(agent(1, Topology::default(), 0), &k, 8, &[], 0);
    req.publish = publish_all(8);
    reg.sync(t0, &id("a"), &req).unwrap();
    let mut reader = sync_req(agent(2, Topology::default(), 0), &k, 8, &[], 0);
    let mut got = Vec::new();
    let mut pages = 0;
    loop {
        let r = reg.sync(t0, &id("b"), &reader).unwrap();
        assert!(r.ids.len() <= 3, "{} ids in one reply", r.ids.len());
        got.extend(r.ids.iter().map(|i| i.index));
        reader.cursor = r.cursor;
        pages += 1;
        if !r.more {
            break;
        }
        assert!(pages < 10, "paging does not end");
    }
    got.sort_unstable();
    assert_eq!(got, (0..8).collect::<Vec<_>>());
    assert_eq!(pages, 3);
}

#[test]
fn publishes_past_the_agent_budget_are_ignored_and_given_back_on_expiry() {
    let t0 = Instant::now();
    let mut reg = Registry::new(
        RegistryConfig {
            max_published_per_agent: 5,
            ..cfg()
        },
        1,
    );
    // One agent floods two keys with ids; only its budget is kept.
    for name in ["a", "b"] {
        let mut req = sync_req(agent(1, Topology::default(), 0), &key(name), 4, &[], 0);
        req.publish = publish_all(4);
        reg.sync(t0, &id("evil"), &req).unwrap();
    }
    let ev = reg.drain_events();
    assert_eq!(ev.publishes_refused, 3);
    let kept: usize = ["a", "b"]
        .iter()
        .map(|n| {
            let r = reg
                .sync(
                    t0,
                    &id("reader"),
                    &sync_req(agent(2, Topology::default(), 0), &key(n), 4, &[], 0),
                )
                .unwrap();
            r.ids.len()
        })
        .sum();
    assert_eq!(kept, 5);
    // Another agent has its own budget.
    let mut req = sync_req(agent(3, Topology::default(), 0), &key("b"), 4, &[], 0);
    req.publish = publish_all(4);
    reg.sync(t0, &id("good"), &req).unwrap();
    assert_eq!(reg.drain_events().publishes_refused, 0);
    // When the objects expire, the budget comes back.
    let later = t0 + Duration::from_secs(601);
    reg.sweep(later);
    assert_eq!(reg.object_count(), 0);
    let mut req = sync_req(agent(1, Topology::default(), 0), &key("c"), 4, &[], 0);
    req.publish = publish_all(4);
    reg.sync(later, &id("evil"), &req).unwrap();
    assert_eq!(reg.drain_events().publishes_refused, 0);
}

#[test]
fn hint_bitmaps_stay_within_the_reply_budget() {
    let t0 = Instant::now();
    // 80,000 chunks: each partial holder's bitmap is ~10 KB.
    let chunks = 80_000;
    let mut reg = Registry::new(
        RegistryConfig {
            max_hint_bytes_per_reply: bytesize::ByteSize::kib(32),
            ..cfg()
        },
        1,
    );
    let k = key("big");
    for p in 0..20u16 {
        // Every holder lacks chunk 0 so none is complete; each has a distinct tail chunk.
        let mut have: Vec<u32> = (1..chunks - 20).collect();
        have.push(chunks - 20 + u32::from(p));
        reg.sync(
            t0,
            &id(&format!("p{p}")),
            &sync_req(agent(100 + p, Topology::default(), 0), &k, chunks, &have, 0),
        )
        .unwrap();
    }
    let r = reg
        .sync(
            t0,
            &id("new"),
            &sync_req(agent(1, Topology::default(), 0), &k, chunks, &[], 0),
        )
        .unwrap();
    let bytes: usize = r.peers.iter().map(|p| p.have.as_bytes().len()).sum();
    assert!(!r.peers.is_empty());
    assert!(bytes <= 32 * 1024, "{bytes} bytes of bitmaps");
    assert!(r.peers.len() < 20, "{} peers", r.peers.len());
}

/// `sync_req` asking for leases on `want` (at most `max`) and giving back `release`.
fn lease_req(
    port: u16,
    k: &ObjectKey,
    have: &[u32],
    want: &[u32],
    max: u32,
    release: &[u32],
) -> SyncRequest {
    let mut r = sync_req(agent(port, Topology::default(), 0), k, 16, have, max);
    r.want = want.iter().copied().collect();
    r.release = release.to_vec();
    r
}

#[test]
fn wanted_chunks_are_granted_first_and_leased_elsewhere_answered() {
    let t0 = Instant::now();
    let mut reg = Registry::new(cfg(), 1);
    let k = key("a");
    // a wants 9, 3 and 12: the lowest wanted first, not the lowest free (0).
    let r = reg
        .sync(t0, &id("a"), &lease_req(1, &k, &[], &[12, 3, 9], 2, &[]))
        .unwrap();
    assert_eq!(r.leases, vec![3, 9]);
    assert!(r.leased_elsewhere.is_empty());
    // b wants 3, 9 (a's), 12 and 5 (held by c): it gets 12, then the lowest free chunk
    // outside its list (0) to fill its room; 3 and 9 come back as leased elsewhere,
    // the held 5 is neither granted nor reported.
    reg.announce(
        t0,
        &id("c"),
        &AnnounceRequest {
            agent: agent(3, Topology::default(), 0),
            objects: vec![held(&k, 16, &[5], true)],
        },
    );
    let r = reg
        .sync(t0, &id("b"), &lease_req(2, &k, &[], &[3, 5, 9, 12], 2, &[]))
        .unwrap();
    assert_eq!(r.leases, vec![0, 12]);
    assert_eq!(r.leased_elsewhere.iter().collect::<Vec<_>>(), vec![3, 9]);
    // Asking for one's own leases reports nothing as leased elsewhere.
    let r = reg
        .sync(t0, &id("a"), &lease_req(1, &k, &[], &[3, 9, 12], 2, &[]))
        .unwrap();
    assert_eq!(r.leases, vec![3, 9]);
    assert_eq!(r.leased_elsewhere.iter().collect::<Vec<_>>(), vec![12]);
    // Wanting past the object's chunks is refused like `have`.
    assert!(matches!(
        reg.sync(t0, &id("a"), &lease_req(1, &k, &[], &[16], 2, &[])),
        Err(RegistryError::Index { index: 16, .. })
    ));
}

#[test]
fn released_leases_are_dropped_and_go_to_others() {
    let t0 = Instant::now();
    let mut reg = Registry::new(cfg(), 1);
    let k = key("a");
    let r = reg
        .sync(t0, &id("a"), &lease_req(1, &k, &[], &[0, 1], 2, &[]))
        .unwrap();
    assert_eq!(r.leases, vec![0, 1]);
    // b's release of a's lease changes nothing.
    let r = reg
        .sync(t0, &id("b"), &lease_req(2, &k, &[], &[0], 1, &[0]))
        .unwrap();
    assert_eq!(r.leased_elsewhere.iter().collect::<Vec<_>>(), vec![0]);
    assert_eq!(r.leases, vec![2], "0 is still a's");
    assert_eq!(reg.drain_events().leases_released, 0);
    // a gives 0 back (its origin fetches failed) while asking again: it is not granted
    // 0 again in the same answer, keeps 1 and is given the next free chunk instead.
    let r = reg
        .sync(t0, &id("a"), &lease_req(1, &k, &[], &[0, 1], 2, &[0]))
        .unwrap();
    assert_eq!(r.leases, vec![1, 3]);
    assert_eq!(reg.drain_events().leases_released, 1);
    // At once (no TTL wait) the chunk is free for someone else.
    let r = reg
        .sync(t0, &id("c"), &lease_req(3, &k, &[], &[0], 1, &[]))
        .unwrap();
    assert_eq!(r.leases, vec![0]);
    assert!(r.leased_elsewhere.is_empty());
}

/// Past the sample size a sync ranks a window of the holders, yet a chunk that only
/// one holder outside any window offers is still in every reply, and different
/// requesters are sent different holders.
#[test]
fn large_swarms_are_sampled_but_every_chunk_stays_covered() {
    let t0 = Instant::now();
    let mut reg = Registry::new(cfg(), 1);
    let k = key("a");
    let t = topo("n", "z1", "r");
    for i in 0..1000u16 {
        let req = sync_req(agent(i, t.clone(), 0), &k, 4, &[0], 0);
        reg.sync(t0, &id(&format!("p{i}")), &req).unwrap();
    }
    let req = sync_req(agent(2000, t.clone(), 0), &k, 4, &[3], 0);
    reg.sync(t0, &id("rare"), &req).unwrap();
    let mut seen = std::collections::HashSet::new();
    for r in 0..20u16 {
        let req = sync_req(agent(3000 + r, t.clone(), 0), &k, 4, &[], 0);
        let resp = reg.sync(t0, &id(&format!("me{r}")), &req).unwrap();
        assert_eq!(resp.peers.len(), 32);
        assert!(resp.peers.iter().any(|p| p.has(3)), "chunk 3 uncovered");
        assert!(resp.peers.iter().any(|p| p.has(0)));
        seen.extend(hint_ids(&resp));
    }
    assert!(
        seen.len() > 100,
        "only {} distinct holders hinted",
        seen.len()
    );
}
