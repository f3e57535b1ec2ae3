//! Peer choice, caps, deadlines, endgame and peer standing.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use super::*;

#[test]
fn single_peer_fetches_everything_in_order() {
    let mut h = H::new(10, cfg());
    h.ids();
    h.peer("a", Proximity::SameZone, 0..10);
    let mut order = Vec::new();
    let mut inflight = h.peer_fetches();
    assert_eq!(pairs(&inflight), [(0, "a"), (1, "a"), (2, "a"), (3, "a")]);
    while let Some((req, index, _)) = inflight.first().cloned() {
        inflight.remove(0);
        order.push(index);
        h.result(req, Outcome::Ok);
        assert!(h.s.done(index));
        inflight.extend(h.peer_fetches());
    }
    assert_eq!(order, (0..10).collect::<Vec<_>>());
    assert!(h.s.is_complete());
    let p = h.s.progress();
    assert_eq!((p.from_peers, p.from_origin, p.in_flight), (10, 0, 0));
    assert_eq!(p.bytes_done, 10 * u64::from(CS));
    assert_eq!(h.s.poll_timeout(), None);
}

#[test]
fn rarest_chunks_first() {
    let mut h = H::new(
        6,
        SchedConfig {
            peer_inflight: 1,
            ..cfg()
        },
    );
    // Peers before ids, so that the first plan sees both.
    h.peer("a", Proximity::SameZone, 0..6);
    h.peer("b", Proximity::SameZone, 0..3);
    assert!(h.peer_fetches().is_empty(), "no ids yet");
    h.ids();
    // 3..6 have one holder, 0..3 two: a takes the rarest, b what it can.
    assert_eq!(pairs(&h.peer_fetches()), [(3, "a"), (0, "b")]);
}

#[test]
fn nearest_then_least_loaded() {
    let mut h = H::new(
        10,
        SchedConfig {
            peer_inflight: 2,
            ..cfg()
        },
    );
    h.ids();
    h.peer("far", Proximity::Other, []);
    h.peer("near", Proximity::SameNode, []);
    h.s.handle_have(h.now, &pid("far"), 0..10).unwrap();
    assert_eq!(pairs(&h.peer_fetches()), [(0, "far"), (1, "far")]);
    h.s.handle_have(h.now, &pid("near"), 0..10).unwrap();
    assert_eq!(pairs(&h.peer_fetches()), [(2, "near"), (3, "near")]);

    let mut h = H::new(10, cfg());
    h.ids();
    h.peer("a", Proximity::SameZone, []);
    h.peer("b", Proximity::SameZone, []);
    h.peer("c", Proximity::Other, 0..10);
    h.drain();
    // c got 0..4; a and b, equally near, share the rest by load.
    h.s.handle_have(h.now, &pid("a"), 0..10).unwrap();
    h.s.handle_have(h.now, &pid("b"), 0..10).unwrap();
    let got = h.peer_fetches();
    assert_eq!(got.len(), 4 + 4);
    assert_eq!(pairs(&got)[..4], [(4, "a"), (5, "a"), (6, "a"), (7, "a")]);
}

#[test]
fn least_loaded_alternates() {
    let mut h = H::new(
        4,
        SchedConfig {
            max_copies: 1,
            ..cfg()
        },
    );
    h.peer("a", Proximity::SameZone, 0..4);
    h.peer("b", Proximity::SameZone, 0..4);
    h.ids();
    assert_eq!(
        pairs(&h.peer_fetches()),
        [(0, "a"), (1, "b"), (2, "a"), (3, "b")]
    );
}

#[test]
fn slow_request_is_duplicated_then_loser_cancelled() {
    // Chunks 1 and 2 have no holder, so this is not the endgame.
    let mut h = H::new(3, cfg());
    h.ids();
    h.peer("a", Proximity::SameZone, [0]);
    h.peer("b", Proximity::Other, [0]);
    let first = h.peer_fetches();
    assert_eq!(pairs(&first), [(0, "a")]);
    h.at(ms(1999));
    assert!(h.peer_fetches().is_empty(), "not slow yet");
    assert_eq!(h.s.poll_timeout(), Some(h.t0 + ms(2000)));
    h.at(ms(2000));
    let dup = h.peer_fetches();
    assert_eq!(pairs(&dup), [(0, "b")]);
    h.result(dup[0].0, Outcome::Ok);
    assert_eq!(cancels(&h.drain()), [first[0].0]);
    assert!(h.s.done(0));
    // The slow peer's late answer is ignored.
    assert_eq!(
        h.s.handle_result(h.now, first[0].0, Outcome::Ok),
        Err(SchedError::UnknownRequest(first[0].0))
    );
    assert_eq!(h.s.progress().from_peers, 1);
}

#[test]
fn request_given_up_after_three_deadlines() {
    let mut h = H::new(2, cfg());
    h.ids();
    h.peer("a", Proximity::SameZone, [0]);
    let first = h.peer_fetches();
    h.at(ms(2000));
    assert!(
        h.peer_fetches().is_empty(),
        "no other holder to duplicate to"
    );
    h.at(ms(6000));
    let acts = h.drain();
    assert_eq!(cancels(&acts), [first[0].0]);
    assert!(h.peer_fetches().is_empty(), "a backs off for 1 s");
    h.at(ms(7000));
    let again = h.peer_fetches();
    assert_eq!(pairs(&again), [(0, "a")]);
    assert_ne!(again[0].0, first[0].0);
    assert_eq!(h.s.peer_status(&pid("a")), Some(PeerStatus::Active));
}

#[test]
fn endgame_duplicates_bounded_and_losers_cancelled() {
    let mut h = H::new(
        4,
        SchedConfig {
            max_duplicates: 2,
            ..cfg()
        },
    );
    h.peer("a", Proximity::SameZone, 0..4);
    h.peer("b", Proximity::SameZone, 0..4);
    h.ids();
    let got = h.peer_fetches();
    // Four first requests, then (endgame: all four in flight) two duplicates, oldest then lowest first.
    assert_eq!(
        pairs(&got),
        [(0, "a"), (1, "b"), (2, "a"), (3, "b"), (0, "b"), (1, "a")]
    );
    assert_eq!(h.s.progress().in_flight, 6);
    // The duplicate of 0 wins: the original is cancelled, and a duplicate slot opens.
    h.result(got[4].0, Outcome::Ok);
    let acts = h.drain();
    assert_eq!(cancels(&acts), [got[0].0]);
    let more: Vec<_> = acts
        .iter()
        .filter_map(|a| match a {
            Action::FetchPeer { index, peer, .. } => Some((*index, peer.to_string())),
            _ => None,
        })
        .collect();
    assert_eq!(more, [(2, "b".to_string())]);
    // Never more than max_copies per chunk.
    h.at(ms(5000));
    assert!(h.peer_fetches().is_empty());
}

#[test]
fn corrupt_peer_is_banned_and_chunk_refetched_elsewhere() {
    let mut h = H::new(
        2,
        SchedConfig {
            peer_inflight: 1,
            max_copies: 1,
            ..cfg()
        },
    );
    h.peer("a", Proximity::SameNode, 0..2);
    h.peer("b", Proximity::Other, 0..2);
    h.ids();
    let got = h.peer_fetches();
    assert_eq!(pairs(&got), [(0, "a"), (1, "b")]);
    h.result(got[0].0, Outcome::Corrupt);
    assert_eq!(h.s.peer_status(&pid("a")), Some(PeerStatus::Banned));
    assert!(h.peer_fetches().is_empty(), "b is at its cap");
    h.result(got[1].0, Outcome::Ok);
    assert_eq!(pairs(&h.peer_fetches()), [(0, "b")]);
    // Re-announcing does not lift the ban.
    h.peer("a", Proximity::SameNode, 0..2);
    assert_eq!(h.s.peer_status(&pid("a")), Some(PeerStatus::Banned));
    assert_eq!(h.s.progress().banned, 1);
}

#[test]
fn corrupt_peer_loses_its_other_requests() {
    let mut h = H::new(
        4,
        SchedConfig {
            max_copies: 1,
            ..cfg()
        },
    );
    h.peer("a", Proximity::SameNode, 0..4);
    h.peer("b", Proximity::Other, 0..4);
    h.ids();
    let got = h.peer_fetches();
    assert_eq!(pairs(&got), [(0, "a"), (1, "a"), (2, "a"), (3, "a")]);
    h.result(got[0].0, Outcome::Corrupt);
    let acts = h.drain();
    assert_eq!(cancels(&acts), [got[1].0, got[2].0, got[3].0]);
    let refetch: Vec<_> = acts
        .iter()
        .filter_map(|a| match a {
            Action::FetchPeer { index, peer, .. } => Some((*index, peer.as_str() == "b")),
            _ => None,
        })
        .collect();
    assert_eq!(refetch, [(0, true), (1, true), (2, true), (3, true)]);
}

#[test]
fn busy_peer_backs_off_with_jitter_and_doubles() {
    let mut h = H::new(
        3,
        SchedConfig {
            peer_inflight: 1,
            max_copies: 1,
            ..cfg()
        },
    );
    h.ids();
    h.peer("a", Proximity::SameZone, 0..3);
    let mut t = Duration::ZERO;
    // Back-offs: 250 ms, then 500 ms, each plus up to 50 % jitter.
    for base in [250, 500] {
        let got = h.peer_fetches();
        assert_eq!(pairs(&got), [(0, "a")]);
        h.result(got[0].0, Outcome::Busy);
        let wait = h.s.poll_timeout().unwrap() - h.now;
        assert!(wait >= ms(base) && wait < ms(base * 3 / 2), "{wait:?}");
        h.at(t + wait - ms(1));
        assert!(h.peer_fetches().is_empty(), "still backing off");
        t += wait;
        h.at(t);
    }
    let got = h.peer_fetches();
    h.result(got[0].0, Outcome::Ok);
    let got = h.peer_fetches();
    h.result(got[0].0, Outcome::Busy);
    let wait = h.s.poll_timeout().unwrap() - h.now;
    assert!(wait < ms(375), "a success reset the streak: {wait:?}");
}

#[test]
fn busy_answers_to_requests_sent_together_count_once() {
    let mut h = H::new(
        4,
        SchedConfig {
            max_copies: 1,
            ..cfg()
        },
    );
    h.ids();
    h.peer("a", Proximity::SameZone, 0..4);
    let got = h.peer_fetches();
    assert_eq!(got.len(), 4);
    for (req, _, _) in &got {
        h.result(*req, Outcome::Busy);
    }
    let wait = h.s.poll_timeout().unwrap() - h.now;
    assert!(wait < ms(375), "one setback, not four: {wait:?}");
    // Likewise one connection reset failing four requests is one failure.
    h.at(wait);
    let got = h.peer_fetches();
    assert_eq!(got.len(), 2, "the window halved on Busy");
    for (req, _, _) in &got {
        h.result(*req, Outcome::Failed);
    }
    assert_eq!(h.s.peer_status(&pid("a")), Some(PeerStatus::Active));
}

#[test]
fn peer_window_grows_with_success() {
    let mut h = H::new(10, SchedConfig::default());
    h.ids();
    h.peer("a", Proximity::SameZone, 0..10);
    let mut sizes = Vec::new();
    for _ in 0..4 {
        let got = h.peer_fetches();
        sizes.push(got.len());
        for (req, _, _) in got {
            h.result(req, Outcome::Ok);
        }
    }
    // One at first; its success allows two; their successes allow four (the cap); the
    // last three chunks.
    assert_eq!(sizes, [1, 2, 4, 3]);
    assert!(h.s.is_complete());
}

#[test]
fn busy_sends_the_chunk_to_another_holder() {
    let mut h = H::new(
        3,
        SchedConfig {
            max_copies: 1,
            ..cfg()
        },
    );
    h.peer("a", Proximity::SameNode, [0]);
    h.peer("b", Proximity::Other, [0]);
    h.ids();
    let got = h.peer_fetches();
    assert_eq!(pairs(&got), [(0, "a")]);
    h.result(got[0].0, Outcome::Busy);
    assert_eq!(pairs(&h.peer_fetches()), [(0, "b")]);
}

#[test]
fn peer_gone_mid_transfer_requests_reassigned() {
    let mut h = H::new(
        4,
        SchedConfig {
            max_copies: 1,
            ..cfg()
        },
    );
    h.peer("a", Proximity::SameZone, 0..4);
    h.peer("b", Proximity::SameZone, 0..4);
    h.ids();
    let got = h.peer_fetches();
    assert_eq!(pairs(&got), [(0, "a"), (1, "b"), (2, "a"), (3, "b")]);
    h.s.handle_peer_gone(h.now, &pid("a")).unwrap();
    let acts = h.drain();
    assert_eq!(cancels(&acts), [got[0].0, got[2].0]);
    let re: Vec<_> = acts
        .iter()
        .filter_map(|a| match a {
            Action::FetchPeer { index, peer, .. } => Some((*index, peer.to_string())),
            _ => None,
        })
        .collect();
    assert_eq!(re, [(0, "b".to_string()), (2, "b".to_string())]);
    assert_eq!(h.s.peer_status(&pid("a")), Some(PeerStatus::Gone));
    // A gone peer comes back when announced again.
    h.peer("a", Proximity::SameZone, 0..4);
    assert_eq!(h.s.peer_status(&pid("a")), Some(PeerStatus::Active));
}

#[test]
fn repeated_failures_drop_the_peer() {
    let mut h = H::new(
        2,
        SchedConfig {
            max_copies: 1,
            ..cfg()
        },
    );
    h.ids();
    h.peer("a", Proximity::SameZone, [0]);
    let mut t = 0;
    for k in 0..3 {
        let got = h.peer_fetches();
        assert_eq!(pairs(&got), [(0, "a")], "attempt {k}");
        h.result(got[0].0, Outcome::Failed);
        t += 1000 << k;
        h.at(ms(t));
    }
    assert_eq!(h.s.peer_status(&pid("a")), Some(PeerStatus::Dropped));
    assert!(h.peer_fetches().is_empty());
    assert_eq!(h.s.progress().dropped, 1);
    // With its only holder dropped, chunk 0 falls back to the origin 10 s later.
    h.at(ms(t + 10_000));
    assert_eq!(origin_fetches(&h.drain()).len(), 2);
}

#[test]
fn caps_hold() {
    let mut h = H::new(100, cfg());
    for p in 0..10 {
        h.peer(&format!("p{p}"), Proximity::SameZone, 0..100);
    }
    h.ids();
    let got = h.peer_fetches();
    assert_eq!(got.len(), 32);
    for p in 0..10 {
        let name = format!("p{p}");
        assert!(got.iter().filter(|x| x.2 == name).count() <= 4);
    }
}

#[test]
fn local_chunk_cancels_its_requests() {
    let mut h = H::new(2, cfg());
    h.ids();
    h.peer("a", Proximity::SameZone, [0]);
    let got = h.peer_fetches();
    h.s.handle_local(h.now, 0).unwrap();
    assert_eq!(cancels(&h.drain()), [got[0].0]);
    assert!(h.s.done(0));
    h.s.handle_local(h.now, 0).unwrap();
    assert_eq!(h.s.progress().local, 1);
}

#[test]
fn bad_inputs_are_refused_without_harm() {
    let mut h = H::new(2, cfg());
    let oor = SchedError::IndexOutOfRange {
        index: 7,
        chunks: 2,
    };
    assert_eq!(h.s.handle_local(h.now, 7), Err(oor.clone()));
    assert_eq!(
        h.s.handle_chunk_ids(h.now, [(7, cid(7)), (0, cid(0))]),
        Err(oor.clone())
    );
    assert_eq!(
        h.s.handle_chunk_ids(h.now, [(0, cid(9))]),
        Err(SchedError::IdConflict {
            index: 0,
            known: cid(0),
            new: cid(9)
        })
    );
    assert_eq!(
        h.s.handle_peer(h.now, pid("a"), Proximity::Other, [7, 0]),
        Err(oor.clone())
    );
    assert_eq!(h.s.handle_leases(h.now, [7]), Err(oor));
    assert_eq!(
        h.s.handle_have(h.now, &pid("zz"), [0]),
        Err(SchedError::UnknownPeer(pid("zz")))
    );
    assert!(h.s.handle_peer_gone(h.now, &pid("zz")).is_err());
    let bogus = RequestId(12345);
    assert_eq!(
        h.s.handle_result(h.now, bogus, Outcome::Ok),
        Err(SchedError::UnknownRequest(bogus))
    );
    // The valid parts applied: chunk 0 has its id and a holder.
    let got = h.peer_fetches();
    assert_eq!(pairs(&got), [(0, "a")]);
    h.result(got[0].0, Outcome::Ok);
    assert!(h.s.handle_result(h.now, got[0].0, Outcome::Ok).is_err());
    assert_eq!(h.s.progress().done, 1);
    assert!(
        Scheduler::new(
            h.now,
            Layout {
                size: 1,
                chunk_size: 0
            },
            cfg()
        )
        .is_err()
    );
}

#[test]
fn empty_object_is_complete_at_once() {
    let mut h = H::new(0, cfg());
    assert!(h.s.is_complete());
    assert!(h.drain().is_empty());
    assert_eq!(h.s.poll_timeout(), None);
}
