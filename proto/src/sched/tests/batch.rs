//! Batched peer hints, and planning over large objects and many peers (where the
//! planning step's bitmap pick is checked against the chunk × peer scan it replaced:
//! `start_peers` asserts both agree in every test build).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use super::*;

#[test]
fn batched_hints_are_planned_together() {
    // One call per hint plans after the first: the far peer, first in the reply, gets
    // the first requests although a nearer one is in the same reply.
    let mut h = H::new(8, cfg());
    h.ids();
    h.peer("far", Proximity::Other, 0..8);
    h.peer("near", Proximity::SameNode, 0..8);
    let one_by_one = h.peer_fetches();
    assert_eq!(
        &pairs(&one_by_one)[..4],
        [(0, "far"), (1, "far"), (2, "far"), (3, "far")]
    );

    // The same reply as one batch: the near peer first, up to its cap, then the far.
    let mut h = H::new(8, cfg());
    h.ids();
    h.s.handle_peers(
        h.now,
        [
            (pid("far"), Proximity::Other, 0..8),
            (pid("near"), Proximity::SameNode, 0..8),
        ],
    )
    .unwrap();
    let batched = h.peer_fetches();
    assert_eq!(
        pairs(&batched),
        [
            (0, "near"),
            (1, "near"),
            (2, "near"),
            (3, "near"),
            (4, "far"),
            (5, "far"),
            (6, "far"),
            (7, "far"),
        ]
    );
}

#[test]
fn batched_hints_report_the_first_bad_index_and_apply_the_rest() {
    let mut h = H::new(4, cfg());
    h.ids();
    let r = h.s.handle_peers(
        h.now,
        [
            (pid("a"), Proximity::SameZone, vec![0, 9]),
            (pid("b"), Proximity::SameZone, vec![7, 1]),
        ],
    );
    assert_eq!(
        r,
        Err(SchedError::IndexOutOfRange {
            index: 9,
            chunks: 4
        })
    );
    let mut got = pairs(&h.peer_fetches())
        .into_iter()
        .map(|(i, p)| (i, p.to_string()))
        .collect::<Vec<_>>();
    got.sort();
    assert_eq!(got, [(0, "a".to_string()), (1, "b".to_string())]);
}

#[test]
fn many_peers_over_many_words_complete_from_holders_only() {
    // 200 chunks (4 bitmap words), 70 peers each holding a pseudo-random third; peers
    // answer Busy now and then. Every pick is checked against the scan (see the module
    // docs); every fetch must go to a peer that holds the chunk.
    const N: usize = 200;
    let mut h = H::new(
        N,
        SchedConfig {
            peer_window_start: 1,
            ..cfg()
        },
    );
    h.ids();
    let holds = |p: usize, i: usize| (p * 7919 + i * 104_729).is_multiple_of(3) || i % 70 == p;
    let hints: Vec<_> = (0..70)
        .map(|p| {
            let have: Vec<usize> = (0..N).filter(|&i| holds(p, i)).collect();
            (pid(&format!("p{p}")), Proximity::SameZone, have)
        })
        .collect();
    h.s.handle_peers(h.now, hints).unwrap();
    let mut out: Vec<(RequestId, usize, usize)> = Vec::new();
    let mut step = 0u64;
    loop {
        for a in h.drain() {
            match a {
                Action::FetchPeer {
                    req, index, peer, ..
                } => {
                    let p: usize = peer.as_str()[1..].parse().unwrap();
                    assert!(
                        holds(p, index),
                        "chunk {index} asked of {peer}, which lacks it"
                    );
                    out.push((req, index, p));
                }
                Action::Cancel { req } => out.retain(|o| o.0 != req),
                Action::FetchOrigin { index, .. } => panic!("chunk {index} sent to the origin"),
                Action::WantLeases { .. } | Action::ReleaseLeases { .. } => {}
            }
        }
        if h.s.is_complete() {
            break;
        }
        step += 1;
        assert!(step < 10_000, "stuck: {:?}", h.s.progress());
        if out.is_empty() {
            h.at(ms(step * 100));
            continue;
        }
        let (req, _, _) = out.remove(0);
        let o = if step.is_multiple_of(5) {
            Outcome::Busy
        } else {
            Outcome::Ok
        };
        h.result(req, o);
    }
    assert_eq!(h.s.progress().from_peers, N);
    assert!(out.is_empty());
}
