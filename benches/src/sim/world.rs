//! The event loop: agents, the tracker and the origin, driven by a priority queue of
//! timestamped events (simulated nanoseconds; no clock is read).

use std::cmp::Ordering;
use std::collections::{BinaryHeap, HashMap, HashSet};
use std::net::{Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use shoal_proto::sched::{Action, Outcome, RequestId, SchedConfig, Scheduler};
use shoal_proto::tracker::{
    AgentInfo, AnnounceRequest, ChunkBitmap, Cursor, HeldObject, IndexedId, SyncRequest,
    SyncResponse,
};
use shoal_proto::{ChunkId, Layout, ObjectKey, PeerId, Topology, Validator};
use shoal_tracker::registry::Registry;

use super::net::{FlowId, Net, NodeIx};
use super::upload::{Admit, Policy, Uploads, Waiter};
use super::{SimConfig, SimResult};
use crate::fleet::scenario::PAYLOAD_EFFICIENCY;

const NS: f64 = 1e9;

/// Something that happens at one instant.
#[derive(Debug)]
enum Ev {
    /// The agent's HEAD answer is back: its download starts.
    Start(usize),
    /// The scheduler timer armed at this instant.
    Timer(usize),
    /// The next periodic sync is due.
    SyncDue(usize),
    /// A sync reaches the tracker.
    SyncAt(usize, Box<SyncRequest>),
    /// Its answer reaches the agent.
    SyncBack(usize, Box<SyncResponse>),
    /// The final (complete) sync reaches the tracker; nobody waits for the answer.
    FinalAt(usize, Box<SyncRequest>),
    /// A complete agent's periodic announce reaches the tracker.
    Announce(usize),
    /// A peer request reaches the holder.
    AskPeer {
        client: usize,
        server: usize,
        req: RequestId,
        index: usize,
    },
    /// An origin range request reaches the origin.
    AskOrigin {
        client: usize,
        req: RequestId,
        index: usize,
    },
    /// A queued request's longest wait at the holder is over.
    QueueWait {
        client: usize,
        server: usize,
        req: RequestId,
    },
    /// An answer (the last byte of a chunk, `Busy`, `NotFound`) reaches the client.
    Answer {
        client: usize,
        req: RequestId,
        index: usize,
        outcome: Outcome,
    },
    /// A flow may have sent its last byte.
    FlowDone { id: FlowId, version: u64 },
}

struct Entry {
    at: u64,
    seq: u64,
    ev: Ev,
}

impl PartialEq for Entry {
    fn eq(&self, o: &Self) -> bool {
        (self.at, self.seq) == (o.at, o.seq)
    }
}
impl Eq for Entry {}
impl PartialOrd for Entry {
    fn partial_cmp(&self, o: &Self) -> Option<Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for Entry {
    /// Reversed: the heap pops the earliest (then the first scheduled).
    fn cmp(&self, o: &Self) -> Ordering {
        (o.at, o.seq).cmp(&(self.at, self.seq))
    }
}

/// What a running flow carries.
#[derive(Debug, Clone, Copy)]
struct Carry {
    client: usize,
    req: RequestId,
    index: usize,
    /// The serving agent; `None` for the origin.
    server: Option<usize>,
}

/// A request of an agent's scheduler that is still out.
#[derive(Debug, Clone, Copy, Default)]
struct Out {
    flow: Option<FlowId>,
    /// Waiting in this holder's upload queue.
    queued_at: Option<usize>,
}

struct Agent {
    id: PeerId,
    info: AgentInfo,
    sched: Option<Scheduler>,
    have: ChunkBitmap,
    ids: Vec<Option<ChunkId>>,
    publish: Vec<IndexedId>,
    want_leases: u32,
    want: ChunkBitmap,
    release: Vec<u32>,
    cursor: Option<Cursor>,
    syncing: bool,
    next_sync: u64,
    sync_armed: Option<u64>,
    timer_armed: Option<u64>,
    out: HashMap<RequestId, Out>,
    /// A digest of the holdings last fed to the scheduler per hinted peer (see
    /// [`World::on_sync`]; a digest, not the bitmap, as this map has an entry per
    /// agent and peer: 10,000 agents know millions of peers between them).
    hinted: HashMap<u32, u64>,
    done_at: Option<u64>,
    /// Uploads being served and waiting.
    uploads: Uploads,
}

pub(super) struct World {
    cfg: SimConfig,
    t0: Instant,
    now: u64,
    seq: u64,
    queue: BinaryHeap<Entry>,
    agents: Vec<Agent>,
    /// One-way delay of each node to the core (ns): agents, then origin, then tracker.
    lat: Vec<u64>,
    net: Net,
    carry: HashMap<FlowId, Carry>,
    connected: HashSet<(usize, usize)>,
    registry: Registry,
    key: ObjectKey,
    layout: Layout,
    policy: Policy,
    stats: SimResult,
}

/// A small deterministic generator (SplitMix64).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `[lo, hi]` nanoseconds.
    fn between(&mut self, lo: Duration, hi: Duration) -> u64 {
        let (lo, hi) = (lo.as_nanos() as u64, hi.as_nanos() as u64);
        if hi <= lo {
            return lo;
        }
        lo + self.next() % (hi - lo + 1)
    }
}

fn peer_name(i: usize) -> PeerId {
    PeerId::try_from(format!("n{i}")).unwrap_or_else(|_| unreachable!("n<digits> is a valid id"))
}

fn peer_index(p: &PeerId) -> Option<usize> {
    p.as_str().strip_prefix('n')?.parse().ok()
}

/// A 64-bit digest of a holdings bitmap.
fn digest(bytes: &[u8]) -> u64 {
    u64::from_le_bytes(
        blake3::hash(bytes).as_bytes()[..8]
            .try_into()
            .unwrap_or([0; 8]),
    )
}

fn chunk_id(index: usize) -> ChunkId {
    ChunkId::of(&(index as u64).to_le_bytes())
}

impl World {
    pub(super) fn new(cfg: &SimConfig) -> Self {
        let s = &cfg.scenario;
        let n = s.nodes;
        let eff = PAYLOAD_EFFICIENCY;
        let mut up = vec![s.node_up.bytes_per_second() * eff; n];
        let mut down = vec![s.node_down.bytes_per_second() * eff; n];
        up.push(s.origin_up.bytes_per_second() * eff);
        down.push(f64::INFINITY);
        let mut rng = Rng(cfg.seed);
        let mut lat: Vec<u64> = (0..n)
            .map(|_| rng.between(cfg.latency.0, cfg.latency.1))
            .collect();
        let server = cfg.server_latency.as_nanos() as u64;
        lat.push(server); // origin
        lat.push(server); // tracker
        let layout = Layout::new(s.object_bytes, cfg.chunk_size)
            .unwrap_or_else(|e| panic!("scenario layout: {e}"));
        let key = ObjectKey::versioned(
            "http://origin.sim/object",
            &Validator::ETag("\"sim\"".into()),
            s.object_bytes,
        )
        .unwrap_or_else(|e| panic!("object key: {e}"));
        let count = layout.chunk_count();
        let agents = (0..n)
            .map(|i| Agent {
                id: peer_name(i),
                info: AgentInfo {
                    peer_addr: SocketAddr::from((
                        Ipv4Addr::new(10, (i >> 16) as u8, (i >> 8) as u8, i as u8),
                        7482,
                    )),
                    topology: Topology {
                        node: format!("n{i}"),
                        zone: "zone-a".into(),
                        region: "region-1".into(),
                    },
                    load: 0,
                },
                sched: None,
                have: ChunkBitmap::new(),
                ids: vec![None; count],
                publish: Vec::new(),
                want_leases: 0,
                want: ChunkBitmap::new(),
                release: Vec::new(),
                cursor: None,
                syncing: false,
                next_sync: 0,
                sync_armed: None,
                timer_armed: None,
                out: HashMap::new(),
                hinted: HashMap::new(),
                done_at: None,
                uploads: Uploads::default(),
            })
            .collect();
        let mut w = Self {
            cfg: cfg.clone(),
            t0: Instant::now(),
            now: 0,
            seq: 0,
            queue: BinaryHeap::new(),
            agents,
            lat,
            net: if cfg.exact_sharing {
                Net::new(up, down).exact()
            } else {
                Net::new(up, down)
            },
            carry: HashMap::new(),
            connected: HashSet::new(),
            registry: Registry::new(cfg.registry.clone(), cfg.seed),
            key,
            layout,
            policy: Policy {
                max: cfg.max_uploads,
                per_peer: cfg.max_uploads_per_peer,
                queue: cfg.upload_queue,
                queue_per_peer: cfg.upload_queue_per_peer,
                fewest_first: cfg.upload_queue_fewest_first,
            },
            stats: SimResult {
                completions: Vec::new(),
                agents: n,
                origin_bytes: 0,
                object_bytes: s.object_bytes,
                t_min: cfg.t_min(),
                tracker_requests: 0,
                busy: 0,
                queued: 0,
                queue_timeouts: 0,
                queue_cancelled: 0,
                queue_wait: 0.0,
                peer_cancelled: 0,
                peer_transfers: 0,
                origin_requests: 0,
                sched_errors: 0,
                events: 0,
                end: 0.0,
            },
        };
        for a in 0..n {
            let start = rng.between(Duration::ZERO, cfg.start_spread);
            let head = 2 * (w.lat[a] + w.lat[w.origin()]);
            w.at(start + head, Ev::Start(a));
        }
        w
    }

    pub(super) fn run(mut self) -> SimResult {
        let limit = self.cfg.time_limit.as_nanos() as u64;
        while let Some(e) = self.queue.pop() {
            if e.at > limit || self.stats.completions.len() == self.agents.len() {
                break;
            }
            self.now = e.at;
            self.stats.events += 1;
            self.handle(e.ev);
        }
        self.stats.end = self.now as f64 / NS;
        self.stats.completions.sort_by(|a, b| a.total_cmp(b));
        self.stats
    }

    fn origin(&self) -> NodeIx {
        self.agents.len()
    }

    fn tracker(&self) -> NodeIx {
        self.agents.len() + 1
    }

    /// One-way delay from node `a` to node `b` (ns).
    fn delay(&self, a: NodeIx, b: NodeIx) -> u64 {
        self.lat[a] + self.lat[b]
    }

    fn instant(&self) -> Instant {
        self.t0 + Duration::from_nanos(self.now)
    }

    fn ns(&self, t: Instant) -> u64 {
        t.saturating_duration_since(self.t0).as_nanos() as u64
    }

    fn at(&mut self, at: u64, ev: Ev) {
        self.seq += 1;
        self.queue.push(Entry {
            at,
            seq: self.seq,
            ev,
        });
    }

    fn after(&mut self, delay: u64, ev: Ev) {
        self.at(self.now + delay, ev);
    }

    /// The loss bound of a flow on the path between `a` and `b` (bytes/s).
    fn loss_cap(&self, a: NodeIx, b: NodeIx) -> f64 {
        let rtt = 2.0 * self.delay(a, b) as f64 / NS;
        if self.cfg.loss <= 0.0 || rtt <= 0.0 {
            return f64::INFINITY;
        }
        self.cfg.mss / rtt * (1.5 / self.cfg.loss).sqrt()
    }

    fn handle(&mut self, ev: Ev) {
        match ev {
            Ev::Start(a) => self.start(a),
            Ev::Timer(a) => {
                if self.agents[a].timer_armed == Some(self.now) {
                    self.agents[a].timer_armed = None;
                    let now = self.instant();
                    if let Some(s) = self.agents[a].sched.as_mut() {
                        s.handle_timeout(now);
                    }
                    self.step(a);
                }
            }
            Ev::SyncDue(a) => {
                if self.agents[a].sync_armed == Some(self.now) {
                    self.agents[a].sync_armed = None;
                    self.step(a);
                }
            }
            Ev::SyncAt(a, req) => {
                self.stats.tracker_requests += 1;
                let now = self.instant();
                let id = self.agents[a].id.clone();
                let resp = self.registry.sync(now, &id, &req);
                let back = self.delay(self.tracker(), a);
                match resp {
                    Ok(r) => self.after(back, Ev::SyncBack(a, Box::new(r))),
                    Err(_) => {
                        self.stats.sched_errors += 1;
                        self.agents[a].syncing = false;
                    }
                }
            }
            Ev::SyncBack(a, resp) => {
                self.agents[a].syncing = false;
                self.on_sync(a, *resp);
                self.step(a);
            }
            Ev::FinalAt(a, req) => {
                self.stats.tracker_requests += 1;
                let now = self.instant();
                let id = self.agents[a].id.clone();
                if self.registry.sync(now, &id, &req).is_err() {
                    self.stats.sched_errors += 1;
                }
            }
            Ev::Announce(a) => self.announce(a),
            Ev::AskPeer {
                client,
                server,
                req,
                index,
            } => self.ask_peer(client, server, req, index),
            Ev::QueueWait {
                client,
                server,
                req,
            } => self.queue_wait_over(client, server, req),
            Ev::AskOrigin { client, req, index } => {
                if !self.agents[client].out.contains_key(&req) {
                    return;
                }
                let o = self.origin();
                let len = self.layout.chunk_len(index);
                let cap = self.loss_cap(o, client);
                let id = self.net.start(self.now, o, client, u64::from(len), cap);
                self.carry.insert(
                    id,
                    Carry {
                        client,
                        req,
                        index,
                        server: None,
                    },
                );
                if let Some(out) = self.agents[client].out.get_mut(&req) {
                    out.flow = Some(id);
                }
                self.flush_net();
            }
            Ev::Answer {
                client,
                req,
                index,
                outcome,
            } => self.answer(client, req, index, outcome),
            Ev::FlowDone { id, version } => self.flow_done(id, version),
        }
    }

    fn start(&mut self, a: usize) {
        let now = self.instant();
        let cfg = SchedConfig {
            salt: u64::from_le_bytes(
                blake3::hash(self.agents[a].id.as_str().as_bytes()).as_bytes()[..8]
                    .try_into()
                    .unwrap_or([0; 8]),
            ),
            ..self.cfg.sched.clone()
        };
        match Scheduler::new(now, self.layout, cfg) {
            Ok(s) => self.agents[a].sched = Some(s),
            Err(e) => panic!("scheduler: {e}"),
        }
        self.agents[a].next_sync = self.now;
        self.step(a);
    }

    /// After any input to agent `a`: perform its actions, sync if due, re-arm timers.
    fn step(&mut self, a: usize) {
        if self.agents[a].done_at.is_some() {
            return;
        }
        self.drain(a);
        if self.agents[a]
            .sched
            .as_ref()
            .is_some_and(Scheduler::is_complete)
        {
            self.complete(a);
            return;
        }
        self.maybe_sync(a);
        let timer = self.agents[a]
            .sched
            .as_ref()
            .and_then(Scheduler::poll_timeout)
            .map(|t| self.ns(t).max(self.now + 1));
        if timer.is_some() && timer != self.agents[a].timer_armed {
            self.agents[a].timer_armed = timer;
            if let Some(t) = timer {
                self.at(t, Ev::Timer(a));
            }
        }
    }

    fn drain(&mut self, a: usize) {
        loop {
            let Some(action) = self.agents[a]
                .sched
                .as_mut()
                .and_then(Scheduler::poll_action)
            else {
                return;
            };
            match action {
                Action::FetchPeer {
                    req, index, peer, ..
                } => {
                    let Some(server) = peer_index(&peer).filter(|&s| s < self.agents.len()) else {
                        self.result(a, req, Outcome::Failed);
                        continue;
                    };
                    self.agents[a].out.insert(req, Out::default());
                    let mut delay = self.delay(a, server);
                    let pair = (a.min(server), a.max(server));
                    if self.connected.insert(pair) {
                        delay += 2 * self.delay(a, server);
                    }
                    self.after(
                        delay,
                        Ev::AskPeer {
                            client: a,
                            server,
                            req,
                            index,
                        },
                    );
                }
                Action::FetchOrigin { req, index, .. } => {
                    self.stats.origin_requests += 1;
                    self.agents[a].out.insert(req, Out::default());
                    let d = self.delay(a, self.origin());
                    self.after(
                        d,
                        Ev::AskOrigin {
                            client: a,
                            req,
                            index,
                        },
                    );
                }
                Action::Cancel { req } => self.cancel(a, req),
                Action::WantLeases { indices, max } => {
                    let ag = &mut self.agents[a];
                    ag.want_leases = u32::try_from(max).unwrap_or(u32::MAX);
                    ag.want = indices
                        .iter()
                        .filter_map(|&i| u32::try_from(i).ok())
                        .collect();
                    ag.next_sync = self.now;
                }
                Action::ReleaseLeases { indices } => {
                    let ag = &mut self.agents[a];
                    ag.release
                        .extend(indices.iter().filter_map(|&i| u32::try_from(i).ok()));
                    ag.next_sync = self.now;
                }
            }
        }
    }

    fn result(&mut self, a: usize, req: RequestId, outcome: Outcome) {
        let now = self.instant();
        if let Some(s) = self.agents[a].sched.as_mut()
            && s.handle_result(now, req, outcome).is_err()
        {
            self.stats.sched_errors += 1;
        }
    }

    fn cancel(&mut self, a: usize, req: RequestId) {
        let Some(out) = self.agents[a].out.remove(&req) else {
            return;
        };
        if let Some(s) = out.queued_at
            && self.agents[s].uploads.remove(a, req).is_some()
        {
            self.stats.queue_cancelled += 1;
        }
        if let Some(id) = out.flow {
            if self.carry.get(&id).is_some_and(|c| c.server.is_some()) {
                self.stats.peer_cancelled += 1;
            }
            self.stop_flow(id);
        }
    }

    /// Ends a flow early or on time; frees the holder's upload slot and counts origin
    /// bytes sent.
    fn stop_flow(&mut self, id: FlowId) {
        let Some(f) = self.net.stop(self.now, id) else {
            return;
        };
        if let Some(c) = self.carry.remove(&id) {
            match c.server {
                Some(s) => {
                    self.agents[s].uploads.finished(c.client);
                    self.serve_queue(s);
                }
                None => {
                    let len = f64::from(self.layout.chunk_len(c.index));
                    self.stats.origin_bytes += (len - f.remaining()).round().max(0.0) as u64;
                }
            }
        }
        self.flush_net();
    }

    fn flush_net(&mut self) {
        for d in self.net.take_due() {
            self.at(
                d.at,
                Ev::FlowDone {
                    id: d.id,
                    version: d.version,
                },
            );
        }
    }

    fn flow_done(&mut self, id: FlowId, version: u64) {
        if self.net.flow(id).map(|f| f.version) != Some(version) {
            return;
        }
        let Some(c) = self.carry.get(&id).copied() else {
            return;
        };
        self.stop_flow(id);
        if c.server.is_some() {
            self.stats.peer_transfers += 1;
        }
        let from = c.server.unwrap_or(self.origin());
        let d = self.delay(from, c.client);
        self.after(
            d,
            Ev::Answer {
                client: c.client,
                req: c.req,
                index: c.index,
                outcome: Outcome::Ok,
            },
        );
    }

    fn ask_peer(&mut self, client: usize, server: usize, req: RequestId, index: usize) {
        if !self.agents[client].out.contains_key(&req) {
            return;
        }
        let outcome = if !self.agents[server].have.contains(index as u32) {
            Outcome::NotFound
        } else {
            let w = Waiter {
                client,
                req,
                index,
                since: self.now,
            };
            match self.agents[server].uploads.admit(&self.policy, w) {
                Admit::Start => {
                    self.upload(server, w);
                    return;
                }
                Admit::Queued => {
                    self.stats.queued += 1;
                    if let Some(out) = self.agents[client].out.get_mut(&req) {
                        out.queued_at = Some(server);
                    }
                    let wait = self.cfg.upload_queue_wait.as_nanos() as u64;
                    self.after(
                        wait,
                        Ev::QueueWait {
                            client,
                            server,
                            req,
                        },
                    );
                    return;
                }
                Admit::Busy => {
                    self.stats.busy += 1;
                    Outcome::Busy
                }
            }
        };
        self.reply(server, client, req, index, outcome);
    }

    /// `server`'s answer reaches `client` after their one-way delay.
    fn reply(
        &mut self,
        server: usize,
        client: usize,
        req: RequestId,
        index: usize,
        outcome: Outcome,
    ) {
        let back = self.delay(server, client);
        self.after(
            back,
            Ev::Answer {
                client,
                req,
                index,
                outcome,
            },
        );
    }

    /// Starts sending `w`'s chunk from `server` (its slot is taken).
    fn upload(&mut self, server: usize, w: Waiter) {
        let len = u64::from(self.layout.chunk_len(w.index));
        let cap = self.loss_cap(server, w.client);
        let id = self.net.start(self.now, server, w.client, len, cap);
        self.carry.insert(
            id,
            Carry {
                client: w.client,
                req: w.req,
                index: w.index,
                server: Some(server),
            },
        );
        if let Some(out) = self.agents[w.client].out.get_mut(&w.req) {
            out.flow = Some(id);
            out.queued_at = None;
        }
        self.flush_net();
    }

    /// Gives `server`'s free slots to its first eligible waiters.
    fn serve_queue(&mut self, server: usize) {
        while let Some(w) = self.agents[server].uploads.next(&self.policy) {
            self.stats.queue_wait += self.now.saturating_sub(w.since) as f64 / NS;
            self.upload(server, w);
        }
    }

    /// A waiter's longest wait is over: it leaves the queue with `Busy`.
    fn queue_wait_over(&mut self, client: usize, server: usize, req: RequestId) {
        let Some(w) = self.agents[server].uploads.remove(client, req) else {
            return;
        };
        self.stats.busy += 1;
        self.stats.queue_timeouts += 1;
        if let Some(out) = self.agents[client].out.get_mut(&req) {
            out.queued_at = None;
        }
        self.reply(server, client, req, w.index, Outcome::Busy);
    }

    fn answer(&mut self, a: usize, req: RequestId, index: usize, outcome: Outcome) {
        if self.agents[a].out.remove(&req).is_none() || self.agents[a].done_at.is_some() {
            return;
        }
        if outcome == Outcome::Ok {
            let ag = &mut self.agents[a];
            if ag.ids[index].is_none() {
                // From the origin: the agent hashed it and publishes the id.
                let id = chunk_id(index);
                ag.ids[index] = Some(id);
                ag.publish.push(IndexedId {
                    index: index as u32,
                    id,
                });
            }
            ag.have.insert(index as u32);
        }
        self.result(a, req, outcome);
        self.step(a);
    }

    fn sync_request(&mut self, a: usize) -> SyncRequest {
        let layout = self.layout;
        let load = u32::try_from(self.agents[a].uploads.load()).unwrap_or(u32::MAX);
        let ag = &mut self.agents[a];
        ag.info.load = load;
        SyncRequest {
            agent: ag.info.clone(),
            key: self.key.clone(),
            layout: Some(layout),
            have: ag.have.clone(),
            complete: false,
            publish: std::mem::take(&mut ag.publish),
            want_leases: std::mem::take(&mut ag.want_leases),
            want: std::mem::take(&mut ag.want),
            release: std::mem::take(&mut ag.release),
            cursor: ag.cursor,
            renew: ag
                .sched
                .as_ref()
                .map(|s| s.leases().into_iter().map(|i| i as u32).collect())
                .unwrap_or_default(),
        }
    }

    fn maybe_sync(&mut self, a: usize) {
        let ag = &self.agents[a];
        if ag.syncing || ag.sched.is_none() {
            return;
        }
        if self.now >= ag.next_sync {
            let req = self.sync_request(a);
            let ag = &mut self.agents[a];
            ag.syncing = true;
            ag.next_sync = self.now + self.cfg.poll_interval.as_nanos() as u64;
            let d = self.delay(a, self.tracker());
            self.after(d, Ev::SyncAt(a, Box::new(req)));
        } else if ag.sync_armed != Some(ag.next_sync) {
            let t = ag.next_sync;
            self.agents[a].sync_armed = Some(t);
            self.at(t, Ev::SyncDue(a));
        }
    }

    fn on_sync(&mut self, a: usize, resp: SyncResponse) {
        let now = self.instant();
        let n = self.layout.chunk_count();
        let ag = &mut self.agents[a];
        let Some(sched) = ag.sched.as_mut() else {
            return;
        };
        let mut errors = 0;
        let mut new_ids = Vec::new();
        for IndexedId { index, id } in resp.ids {
            if let Some(slot @ None) = ag.ids.get_mut(index as usize) {
                *slot = Some(id);
                new_ids.push((index as usize, id));
            }
        }
        if !new_ids.is_empty() || !resp.leases.is_empty() {
            sched.handle_progress(now);
        }
        errors += u64::from(sched.handle_chunk_ids(now, new_ids).is_err());
        let mut batch = Vec::new();
        for hint in resp.peers {
            if hint.id == ag.id {
                continue;
            }
            // A hint that repeats what the scheduler already knows of that peer is not
            // fed again: `handle_peer` would replace the holding by the same one and
            // re-plan, and the re-plan happens anyway at the end of this reply
            // (`handle_leases`). This changes only the order in which requests are
            // planned within one instant, and keeps a 10,000-agent run tractable.
            let known = if hint.complete {
                digest(ChunkBitmap::full(n as u32).as_bytes())
            } else {
                digest(hint.have.as_bytes())
            };
            if let Some(p) = peer_index(&hint.id).and_then(|p| u32::try_from(p).ok())
                && ag.hinted.insert(p, known) == Some(known)
            {
                continue;
            }
            let have: Vec<usize> = if hint.complete {
                (0..n).collect()
            } else {
                hint.have.iter().map(|i| i as usize).collect()
            };
            if self.cfg.batch_hints {
                batch.push((hint.id, hint.proximity, have));
            } else {
                errors += u64::from(
                    sched
                        .handle_peer(now, hint.id, hint.proximity, have)
                        .is_err(),
                );
            }
        }
        if !batch.is_empty() {
            errors += u64::from(sched.handle_peers(now, batch).is_err());
        }
        errors += u64::from(
            sched
                .handle_leases(now, resp.leases.iter().map(|&i| i as usize))
                .is_err(),
        );
        errors += u64::from(
            sched
                .handle_leased_elsewhere(now, resp.leased_elsewhere.iter().map(|i| i as usize))
                .is_err(),
        );
        ag.cursor = resp.cursor;
        if resp.more {
            ag.next_sync = self.now;
        }
        self.stats.sched_errors += errors;
    }

    fn complete(&mut self, a: usize) {
        self.agents[a].done_at = Some(self.now);
        self.stats.completions.push(self.now as f64 / NS);
        // The download task ends: whatever it still has out is dropped.
        let outs: Vec<RequestId> = self.agents[a].out.keys().copied().collect();
        let mut outs = outs;
        outs.sort_unstable();
        for r in outs {
            self.cancel(a, r);
        }
        let mut req = self.sync_request(a);
        req.have = ChunkBitmap::full(self.layout.chunk_count() as u32);
        req.complete = true;
        req.want_leases = 0;
        req.want = ChunkBitmap::new();
        req.renew = Vec::new();
        let d = self.delay(a, self.tracker());
        self.after(d, Ev::FinalAt(a, Box::new(req)));
        // Arrival times at the tracker: every interval, one one-way delay later.
        let every = self.cfg.announce_interval.as_nanos() as u64;
        self.after(every + d, Ev::Announce(a));
    }

    fn announce(&mut self, a: usize) {
        self.stats.tracker_requests += 1;
        let req = AnnounceRequest {
            agent: self.agents[a].info.clone(),
            objects: vec![HeldObject {
                key: self.key.clone(),
                layout: self.layout,
                have: ChunkBitmap::new(),
                complete: true,
                publish: Vec::new(),
            }],
        };
        let now = self.instant();
        let id = self.agents[a].id.clone();
        self.registry.announce(now, &id, &req);
        let every = self.cfg.announce_interval.as_nanos() as u64;
        self.after(every, Ev::Announce(a));
    }
}
