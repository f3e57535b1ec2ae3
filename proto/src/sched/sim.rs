//! A whole fleet of schedulers against a toy tracker, simulated time: the flash crowd.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::{Duration, Instant};

use super::*;

const CS: u32 = 16 * 1024;
/// Concurrent uploads an agent serves before answering `Busy`.
const UPLOAD_SLOTS: usize = 4;

fn name(a: usize) -> PeerId {
    format!("agent-{a}").parse().unwrap()
}

enum Ev {
    /// A request's answer reaches `agent`; `server` frees an upload slot.
    Reply {
        agent: usize,
        req: RequestId,
        index: usize,
        outcome: Outcome,
        server: Option<usize>,
    },
    /// `agent` announces `index` to the tracker, which tells everyone else.
    Announce { agent: usize, index: usize },
    /// The tracker's answer to a lease request.
    Leases {
        agent: usize,
        granted: Vec<usize>,
        elsewhere: Vec<usize>,
    },
}

struct Fleet {
    now: Instant,
    agents: Vec<Scheduler>,
    have: Vec<HashSet<usize>>,
    uploads: Vec<usize>,
    /// Tracker state: lease holder and announced holders per chunk.
    leases: HashMap<usize, usize>,
    holders: HashMap<usize, HashSet<usize>>,
    events: BTreeMap<(Instant, u64), Ev>,
    seq: u64,
    origin_fetches: usize,
    busy: usize,
}

impl Fleet {
    fn at(&mut self, after_ms: u64, ev: Ev) {
        self.seq += 1;
        let t = self.now + Duration::from_millis(after_ms);
        self.events.insert((t, self.seq), ev);
    }

    fn act(&mut self, agent: usize) {
        while let Some(a) = self.agents[agent].poll_action() {
            match a {
                Action::FetchPeer {
                    req, index, peer, ..
                } => {
                    let server = (0..self.agents.len()).find(|&s| name(s) == peer).unwrap();
                    let (outcome, ms, server) = if self.uploads[server] >= UPLOAD_SLOTS {
                        self.busy += 1;
                        (Outcome::Busy, 1, None)
                    } else if self.have[server].contains(&index) {
                        self.uploads[server] += 1;
                        (Outcome::Ok, 50, Some(server))
                    } else {
                        (Outcome::NotFound, 1, None)
                    };
                    self.at(
                        ms,
                        Ev::Reply {
                            agent,
                            req,
                            index,
                            outcome,
                            server,
                        },
                    );
                }
                Action::FetchOrigin { req, index, .. } => {
                    self.origin_fetches += 1;
                    self.at(
                        200,
                        Ev::Reply {
                            agent,
                            req,
                            index,
                            outcome: Outcome::Ok,
                            server: None,
                        },
                    );
                }
                Action::WantLeases { indices, max } => {
                    let mut granted = Vec::new();
                    let mut elsewhere = Vec::new();
                    for i in indices {
                        let held = self.holders.get(&i).is_some_and(|h| !h.is_empty());
                        match self.leases.get(&i) {
                            Some(&a) if a != agent => elsewhere.push(i),
                            None if !held && granted.len() < max => {
                                self.leases.insert(i, agent);
                                granted.push(i);
                            }
                            _ => {}
                        }
                    }
                    self.at(
                        10,
                        Ev::Leases {
                            agent,
                            granted,
                            elsewhere,
                        },
                    );
                }
                Action::ReleaseLeases { indices } => {
                    for i in indices {
                        self.leases.remove(&i);
                    }
                }
                Action::Cancel { .. } => {}
            }
        }
    }

    fn handle(&mut self, ev: Ev) {
        let now = self.now;
        match ev {
            Ev::Reply {
                agent,
                req,
                index,
                outcome,
                server,
            } => {
                if let Some(s) = server {
                    self.uploads[s] -= 1;
                }
                if self.agents[agent].handle_result(now, req, outcome).is_ok()
                    && outcome == Outcome::Ok
                    && self.have[agent].insert(index)
                {
                    self.at(20, Ev::Announce { agent, index });
                }
            }
            Ev::Announce { agent, index } => {
                self.holders.entry(index).or_default().insert(agent);
                self.leases.remove(&index);
                for other in (0..self.agents.len()).filter(|&o| o != agent) {
                    self.agents[other]
                        .handle_have(now, &name(agent), [index])
                        .unwrap();
                }
            }
            Ev::Leases {
                agent,
                granted,
                elsewhere,
            } => {
                let s = &mut self.agents[agent];
                s.handle_leases(now, granted).unwrap();
                s.handle_leased_elsewhere(now, elsewhere).unwrap();
            }
        }
    }
}

/// Twenty agents want the same new 24-chunk object at the same instant. With leases the
/// origin serves each chunk once, and every agent finishes long before any fallback.
#[test]
fn flash_crowd_fetches_one_copy_from_origin() {
    let (agents, chunks): (usize, usize) = (20, 24);
    let t0 = Instant::now();
    let layout = Layout::new(chunks as u64 * u64::from(CS), CS).unwrap();
    let mut f = Fleet {
        now: t0,
        agents: (0..agents)
            .map(|a| {
                let cfg = SchedConfig {
                    salt: a as u64,
                    ..SchedConfig::default()
                };
                Scheduler::new(t0, layout, cfg).unwrap()
            })
            .collect(),
        have: vec![HashSet::new(); agents],
        uploads: vec![0; agents],
        leases: HashMap::new(),
        holders: HashMap::new(),
        events: BTreeMap::new(),
        seq: 0,
        origin_fetches: 0,
        busy: 0,
    };
    for a in 0..agents {
        let ids = (0..chunks).map(|i| (i, ChunkId::of(&i.to_le_bytes())));
        f.agents[a].handle_chunk_ids(t0, ids).unwrap();
        for other in (0..agents).filter(|&o| o != a) {
            f.agents[a]
                .handle_peer(t0, name(other), Proximity::SameZone, [])
                .unwrap();
        }
    }
    for _ in 0..100_000 {
        for a in 0..agents {
            f.act(a);
        }
        if f.agents.iter().all(Scheduler::is_complete) {
            break;
        }
        let timers = f.agents.iter().filter_map(Scheduler::poll_timeout);
        let next = f.events.keys().map(|k| k.0).chain(timers).min().unwrap();
        f.now = next;
        while let Some(e) = f.events.first_entry() {
            if e.key().0 > next {
                break;
            }
            let ev = e.remove();
            f.handle(ev);
        }
        for s in &mut f.agents {
            s.handle_timeout(next);
        }
    }
    assert!(f.agents.iter().all(Scheduler::is_complete));
    assert_eq!(f.origin_fetches, chunks, "one copy from the origin");
    let from_origin: usize = f.agents.iter().map(|s| s.progress().from_origin).sum();
    assert_eq!(from_origin, chunks);
    // Nobody fell back to the origin, and Busy answers stayed about one per peer
    // transfer (4× as many before windows and jitter). Pure rarest first, which the
    // agent runs, sends a little more to the newest holders than the urgent window of
    // 4 this sim used to run with (482 busy answers for 456 transfers, where the
    // window of 4 stayed within 456): hence 5/4.
    assert!(f.now - t0 < SchedConfig::default().origin_fallback_after);
    let peer_transfers = agents * chunks - chunks;
    assert!(f.busy <= peer_transfers * 5 / 4, "{} busy answers", f.busy);
}
