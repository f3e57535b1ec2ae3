//! Leases, origin fallback and a lost tracker.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use super::*;

#[test]
fn lease_leads_to_origin_fetch_and_others_wait_then_fall_back() {
    let mut h = H::new(3, cfg());
    let acts = h.drain();
    assert_eq!(
        acts,
        [Action::WantLeases {
            indices: vec![0, 1, 2],
            max: 4
        }]
    );
    h.s.handle_leases(h.now, [1]).unwrap();
    let acts = h.drain();
    let o = origin_fetches(&acts);
    assert_eq!(
        o.iter().map(|x| (x.1, x.2)).collect::<Vec<_>>(),
        [(1, OriginReason::Lease)]
    );
    assert_eq!(h.s.leases(), [1]);
    h.at(ms(300));
    h.result(o[0].0, Outcome::Ok);
    assert!(h.s.done(1));
    assert!(h.s.leases().is_empty());
    assert_eq!(h.s.progress().from_origin, 1);
    // A fulfilled lease: ask again at once, then every 2 s.
    let want = Action::WantLeases {
        indices: vec![0, 2],
        max: 4,
    };
    assert_eq!(h.drain(), std::slice::from_ref(&want));
    assert_eq!(h.s.poll_timeout(), Some(h.t0 + ms(2300)));
    h.at(ms(2300));
    assert_eq!(
        h.drain(),
        [Action::WantLeases {
            indices: vec![0, 2],
            max: 4
        }]
    );
    h.at(ms(9999));
    assert!(origin_fetches(&h.drain()).is_empty());
    h.at(ms(10_000));
    let o = origin_fetches(&h.drain());
    assert_eq!(
        o.iter().map(|x| (x.1, x.2)).collect::<Vec<_>>(),
        [(0, OriginReason::NoPeer), (2, OriginReason::NoPeer)]
    );
}

#[test]
fn leased_chunk_held_by_a_peer_goes_to_the_peer() {
    let mut h = H::new(2, cfg());
    h.ids();
    h.drain();
    h.s.handle_leases(h.now, [0]).unwrap();
    let o = origin_fetches(&h.drain());
    assert_eq!(o.len(), 1);
    h.peer("a", Proximity::SameZone, [1]);
    assert_eq!(pairs(&h.peer_fetches()), [(1, "a")]);
}

#[test]
fn failed_lease_is_retried_then_released() {
    let mut h = H::new(1, cfg());
    h.drain();
    h.s.handle_leases(h.now, [0]).unwrap();
    let o = origin_fetches(&h.drain());
    h.result(o[0].0, Outcome::Failed);
    assert!(h.drain().is_empty());
    h.at(ms(1000));
    let o = origin_fetches(&h.drain());
    assert_eq!(o.len(), 1, "retried after 1 s");
    h.result(o[0].0, Outcome::Busy);
    h.at(ms(3000));
    let o = origin_fetches(&h.drain());
    assert_eq!(o.len(), 1, "retried after 2 s more");
    h.result(o[0].0, Outcome::Failed);
    assert_eq!(h.drain(), [Action::ReleaseLeases { indices: vec![0] }]);
    assert!(h.s.leases().is_empty());
    // Not asked for again for a while; falls back 10 s after the release.
    h.at(ms(12_999));
    assert!(h.drain().is_empty());
    h.at(ms(13_000));
    let o = origin_fetches(&h.drain());
    assert_eq!(
        o.iter().map(|x| x.2).collect::<Vec<_>>(),
        [OriginReason::NoPeer]
    );
}

#[test]
fn leased_elsewhere_suppresses_asks_and_delays_fallback() {
    let mut h = H::new(2, cfg());
    h.drain();
    h.s.handle_leased_elsewhere(h.now, [0]).unwrap();
    let want = |v: Vec<usize>| Action::WantLeases { indices: v, max: 4 };
    h.at(ms(2000));
    assert_eq!(h.drain(), [want(vec![1])]);
    h.at(ms(4000));
    assert_eq!(h.drain(), [want(vec![1])]);
    // Asked again once the half-fallback quiet time is over; still leased elsewhere.
    h.at(ms(6000));
    assert_eq!(h.drain(), [want(vec![0, 1])]);
    h.s.handle_leased_elsewhere(h.now, [0]).unwrap();
    h.at(ms(10_000));
    let o = origin_fetches(&h.drain());
    assert_eq!(o.iter().map(|x| x.1).collect::<Vec<_>>(), [1]);
    // The tracker goes quiet about chunk 0: it falls back 10 s after the last report.
    h.at(ms(15_999));
    assert!(origin_fetches(&h.drain()).is_empty());
    h.at(ms(16_000));
    let o = origin_fetches(&h.drain());
    assert_eq!(o.iter().map(|x| x.1).collect::<Vec<_>>(), [0]);
}

#[test]
fn stored_lease_triggers_an_immediate_ask() {
    let mut h = H::new(8, cfg());
    h.drain();
    h.s.handle_leases(h.now, [0, 1]).unwrap();
    let o = origin_fetches(&h.drain());
    h.at(ms(300));
    h.result(o[0].0, Outcome::Ok);
    assert_eq!(
        h.drain(),
        [Action::WantLeases {
            indices: (2..8).collect(),
            max: 3
        }]
    );
}

#[test]
fn tracker_lost_sends_all_remaining_to_origin() {
    let mut h = H::new(10, cfg());
    h.drain();
    h.s.handle_local(h.now, 2).unwrap();
    h.s.handle_tracker_lost(h.now);
    let acts = h.drain();
    assert!(!acts.iter().any(|a| matches!(a, Action::WantLeases { .. })));
    let mut inflight = origin_fetches(&acts);
    assert_eq!(
        inflight.iter().map(|x| x.1).collect::<Vec<_>>(),
        [0, 1, 3, 4],
        "origin cap 4, lowest first"
    );
    let mut got = vec![2];
    while let Some((req, index, reason)) = inflight.first().copied() {
        inflight.remove(0);
        assert_eq!(reason, OriginReason::TrackerLost);
        got.push(index);
        h.result(req, Outcome::Ok);
        let acts = h.drain();
        assert!(!acts.iter().any(|a| matches!(a, Action::WantLeases { .. })));
        inflight.extend(origin_fetches(&acts));
        assert!(h.s.progress().origin_in_flight <= 4);
    }
    got.sort_unstable();
    assert_eq!(got, (0..10).collect::<Vec<_>>());
    assert!(h.s.is_complete());
    assert_eq!(h.s.progress().local, 1);
}

#[test]
fn tracker_lost_still_uses_known_peers() {
    let mut h = H::new(
        3,
        SchedConfig {
            max_copies: 1,
            ..cfg()
        },
    );
    h.ids();
    h.peer("a", Proximity::SameZone, [1]);
    assert_eq!(pairs(&h.peer_fetches()), [(1, "a")]);
    h.s.handle_tracker_lost(h.now);
    let acts = h.drain();
    let o = origin_fetches(&acts);
    assert_eq!(o.iter().map(|x| x.1).collect::<Vec<_>>(), [0, 2]);
    // Back to normal: nothing new to start (everything is in flight).
    h.s.handle_tracker_back(h.now);
    assert!(h.drain().is_empty());
    h.result(o[0].0, Outcome::Ok);
    h.result(o[1].0, Outcome::Ok);
    assert!(!h.s.is_complete());
}

#[test]
fn fallback_when_no_holder_for_a_while() {
    let mut h = H::new(2, cfg());
    h.ids();
    h.peer("a", Proximity::SameZone, [0]);
    assert_eq!(pairs(&h.peer_fetches()), [(0, "a")]);
    assert_eq!(h.s.poll_timeout(), Some(h.t0 + ms(2000)));
    h.at(ms(9999));
    assert!(origin_fetches(&h.drain()).is_empty());
    h.at(ms(10_000));
    let o = origin_fetches(&h.drain());
    assert_eq!(
        o.iter().map(|x| (x.1, x.2)).collect::<Vec<_>>(),
        [(1, OriginReason::NoPeer)]
    );
}

#[test]
fn progress_restarts_the_fallback_clock() {
    let mut h = H::new(2, cfg());
    h.ids();
    h.peer("a", Proximity::SameZone, [0]);
    assert_eq!(pairs(&h.peer_fetches()), [(0, "a")]);
    // The swarm keeps moving: chunk 1 keeps waiting for a lease or a holder.
    h.at(ms(6000));
    h.s.handle_progress(h.now);
    h.at(ms(10_000));
    assert!(
        origin_fetches(&h.drain()).is_empty(),
        "no fallback while the swarm progresses"
    );
    // It stops moving: the clock runs out 10 s after the last progress.
    h.at(ms(16_000));
    let o = origin_fetches(&h.drain());
    assert_eq!(
        o.iter().map(|x| (x.1, x.2)).collect::<Vec<_>>(),
        [(1, OriginReason::NoPeer)]
    );
}

/// While a leased chunk comes from the origin, peer requests stay at
/// `peer_inflight_while_leased`; once it is stored the full window opens again.
#[test]
fn leased_origin_fetch_keeps_peer_requests_few() {
    let mut h = H::new(20, cfg());
    h.ids();
    h.drain();
    h.s.handle_leases(h.now, [0]).unwrap();
    let origin = origin_fetches(&h.drain());
    assert_eq!(origin.len(), 1);
    for p in ["a", "b", "c", "d"] {
        h.peer(p, Proximity::SameZone, 1..20);
    }
    let first = h.peer_fetches();
    assert_eq!(first.len(), 4, "{:?}", pairs(&first));
    h.result(first[0].0, Outcome::Ok);
    assert_eq!(h.peer_fetches().len(), 1, "one out, one in");
    h.result(origin[0].0, Outcome::Ok);
    assert!(h.s.done(0));
    // 4 per peer × 4 peers, less the 4 still in flight.
    assert_eq!(h.peer_fetches().len(), 12);
}

/// A fallback's reason says what last went wrong with the chunk's peer requests.
#[test]
fn fallback_reason_follows_peer_trouble() {
    let mut h = H::new(
        3,
        SchedConfig {
            max_copies: 1,
            max_failures: 1,
            ..cfg()
        },
    );
    h.ids();
    h.peer("a", Proximity::SameZone, [0]);
    h.peer("b", Proximity::SameZone, [1]);
    h.peer("c", Proximity::SameZone, [2]);
    let f = h.peer_fetches();
    assert_eq!(pairs(&f), [(0, "a"), (1, "b"), (2, "c")]);
    // a fails, b sends bad bytes (banned), c is given up at 6 s (2 s deadline × 3);
    // one failure drops a peer, so each chunk is left without a holder.
    h.result(f[0].0, Outcome::Failed);
    h.result(f[1].0, Outcome::Corrupt);
    h.drain();
    h.at(ms(6000));
    assert!(origin_fetches(&h.drain()).is_empty());
    h.at(ms(16_000));
    let mut o = origin_fetches(&h.drain());
    o.sort_by_key(|x| x.1);
    assert_eq!(
        o.iter().map(|x| (x.1, x.2)).collect::<Vec<_>>(),
        [
            (0, OriginReason::PeerFailed),
            (1, OriginReason::PeerCorrupt),
            (2, OriginReason::PeerTimeout)
        ]
    );
    assert!(o.iter().all(|x| x.2.is_fallback()));
    assert!(!OriginReason::Lease.is_fallback());
}
