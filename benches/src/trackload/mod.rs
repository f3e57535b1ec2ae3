//! Tracker load benchmark: many simulated agents syncing with a real `shoal-tracker`
//! process over loopback with mutual TLS, as agents do.
//!
//! Every simulated agent has its own certificate from one development CA (the
//! tracker takes the agent's identity from the certificate, so one connection cannot
//! speak for several agents) and its own keep-alive TLS connection. Setup: the
//! certificates are minted, the tracker started with them, every agent connects and
//! syncs once (so the tracker knows every agent as a holder of the object it syncs).
//! Then the measured phases:
//!
//! - **closed loop**: `workers` tasks, each cycling through its share of the agents,
//!   send syncs back to back for `duration`; gives the most syncs per second this
//!   machine gets and the tracker's CPU per sync.
//! - **paced**: syncs sent at a fixed total rate, round-robin over the agents, each on
//!   its agent's connection; latency is measured from the scheduled send time (a
//!   sync that waits for a busy connection counts its wait).
//!
//! The tracker's CPU comes from `/proc/PID/stat` before and after each phase, so the
//! load generator's own CPU (same machine) is not counted; syncs/s per core is syncs
//! ÷ tracker CPU seconds. What it cannot say: the cost with real agents' changing
//! holdings (each agent here re-sends the same bitmap and cursor), and anything about
//! more than one tracker replica or another machine's network stack.

pub mod server;
pub mod sweep;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use bytes::Bytes;
use http::{Request, header};
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use shoal_pki::Identity;
use shoal_proto::tracker::{
    ALPN, AgentInfo, ChunkBitmap, Cursor, IndexedId, SYNC_PATH, SyncRequest, SyncResponse,
};
use shoal_proto::{ChunkId, Layout, ObjectKey, Topology, Validator};
use tokio::net::TcpStream;
use tokio::sync::Mutex;
use tokio_rustls::TlsConnector;

use crate::fleet::proc::usage;

/// What the simulated fleet looks like.
#[derive(Debug, Clone)]
pub struct Workload {
    pub agents: usize,
    /// Objects the agents are spread over (agent `i` syncs object `i % objects`).
    pub objects: usize,
    /// Chunks per object.
    pub chunks: u32,
    /// Share of an object's chunks each agent holds (chosen at random per agent).
    pub held: f64,
    pub seed: u64,
}

/// One simulated agent: its connection and the sync it repeats.
#[derive(Debug)]
pub struct Agent {
    send: Mutex<SendRequest<Full<Bytes>>>,
    body: Bytes,
}

/// Figures of one measured phase.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Phase {
    pub name: String,
    pub syncs: u64,
    pub errors: u64,
    pub seconds: f64,
    pub tracker_cpu_seconds: f64,
    pub syncs_per_second: f64,
    /// Syncs per second of tracker CPU.
    pub syncs_per_core_second: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
    /// The first error, if any.
    pub first_error: Option<String>,
    /// The machine's 1-minute load average after the phase (filled by the caller).
    pub load_after: String,
    /// Paced phases: where the latency went.
    pub breakdown: Option<Breakdown>,
    /// The tracker's own view of the phase, from its metrics (filled by the caller).
    pub server: Option<server::ServerSide>,
    /// Paced phases: every sync, sorted by latency (for `--trace`).
    #[serde(skip)]
    pub samples: Vec<Sample>,
}

/// Connects every agent (at most `parallel` handshakes at once) to the tracker at
/// `addr`, and syncs each once so the tracker knows its holding.
pub async fn connect_all(
    identities: Vec<Identity>,
    addr: SocketAddr,
    w: &Workload,
    parallel: usize,
) -> Result<Vec<Arc<Agent>>> {
    let sem = Arc::new(tokio::sync::Semaphore::new(parallel.max(1)));
    let mut tasks = tokio::task::JoinSet::new();
    for (i, id) in identities.into_iter().enumerate() {
        let sem = sem.clone();
        let w = w.clone();
        tasks.spawn(async move {
            let _permit = sem.acquire_owned().await?;
            // A handshake can miss the tracker's deadline on a loaded machine: retry.
            let mut tries = 0;
            loop {
                match connect(i, &id, addr, &w).await {
                    Ok(agent) => return Ok::<_, anyhow::Error>((i, agent)),
                    Err(e) if tries >= 5 => return Err(e),
                    Err(_) => tries += 1,
                }
            }
        });
    }
    let mut agents: Vec<Option<Arc<Agent>>> = vec![None; w.agents];
    while let Some(r) = tasks.join_next().await {
        let (i, a) = r??;
        agents[i] = Some(Arc::new(a));
    }
    agents
        .into_iter()
        .enumerate()
        .map(|(i, a)| a.with_context(|| format!("agent {i} did not connect")))
        .collect()
}

async fn connect(i: usize, id: &Identity, addr: SocketAddr, w: &Workload) -> Result<Agent> {
    let tls = id.client_config(&[ALPN])?;
    let tcp = TcpStream::connect(addr)
        .await
        .with_context(|| format!("agent {i}: connecting to {addr}"))?;
    tcp.set_nodelay(true)?;
    let name = ServerName::IpAddress(addr.ip().into());
    let stream = TlsConnector::from(Arc::new(tls))
        .connect(name, tcp)
        .await
        .with_context(|| format!("agent {i}: TLS handshake"))?;
    let (send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    let mut req = sync_request(i, w, addr.port());
    let first = serde_json::to_vec(&req)?;
    let send = Mutex::new(send);
    let resp = post(&send, Bytes::from(first)).await?;
    // Later syncs carry the cursor (no ids again) and no publications.
    req.cursor = resp.cursor;
    req.publish.clear();
    let body = Bytes::from(serde_json::to_vec(&req)?);
    Ok(Agent { send, body })
}

/// Agent `i`'s sync: its object, a random share of its chunks, and (for the first
/// agent of each object) every chunk id, as if it had fetched them from the origin.
fn sync_request(i: usize, w: &Workload, port: u16) -> SyncRequest {
    let object = i % w.objects.max(1);
    let layout = Layout {
        size: u64::from(w.chunks) << 20,
        chunk_size: 1 << 20,
    };
    let key = ObjectKey::versioned(
        &format!("http://origin.bench/object-{object}"),
        &Validator::ETag("\"bench\"".into()),
        layout.size,
    )
    .unwrap_or_else(|e| unreachable!("a short key is valid: {e}"));
    let mut rng = w.seed ^ (i as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    let mut have = ChunkBitmap::new();
    for c in 0..w.chunks {
        rng = splitmix(rng);
        if (rng >> 11) as f64 / (1u64 << 53) as f64 <= w.held {
            have.insert(c);
        }
    }
    let publish = if i < w.objects.max(1) {
        (0..w.chunks)
            .map(|c| IndexedId {
                index: c,
                id: ChunkId::of(&c.to_le_bytes()),
            })
            .collect()
    } else {
        Vec::new()
    };
    SyncRequest {
        agent: AgentInfo {
            peer_addr: SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), port),
            topology: Topology {
                node: format!("a{i}"),
                zone: format!("zone-{}", i % 3),
                region: "region-1".into(),
            },
            load: (i % 5) as u32,
        },
        key,
        layout: Some(layout),
        have,
        complete: false,
        publish,
        want_leases: 0,
        want: ChunkBitmap::new(),
        release: Vec::new(),
        cursor: None::<Cursor>,
        renew: Vec::new(),
    }
}

fn splitmix(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

async fn post(send: &Mutex<SendRequest<Full<Bytes>>>, body: Bytes) -> Result<SyncResponse> {
    post_timed(send, body).await.map(|(r, _)| r)
}

/// When one sync reached each step on the client (see [`Sample`]).
#[derive(Debug, Clone, Copy)]
struct Stamps {
    /// The connection was free and ready: the request is handed to hyper.
    sent: Instant,
    /// The response head was parsed.
    head: Instant,
}

async fn post_timed(
    send: &Mutex<SendRequest<Full<Bytes>>>,
    body: Bytes,
) -> Result<(SyncResponse, Stamps)> {
    let req = Request::post(SYNC_PATH)
        .header(header::HOST, "tracker")
        .header(header::CONTENT_TYPE, "application/json")
        .body(Full::new(body))?;
    let mut s = send.lock().await;
    s.ready().await?;
    let sent = Instant::now();
    let resp = s.send_request(req).await?;
    let head = Instant::now();
    drop(s);
    let status = resp.status();
    let bytes = resp.into_body().collect().await?.to_bytes();
    if !status.is_success() {
        bail!(
            "sync answered {status}: {}",
            String::from_utf8_lossy(&bytes)
        );
    }
    Ok((serde_json::from_slice(&bytes)?, Stamps { sent, head }))
}

/// Syncs back to back from `workers` tasks for `duration`.
pub async fn closed_loop(
    agents: &[Arc<Agent>],
    tracker_pid: u32,
    workers: usize,
    duration: Duration,
) -> Result<Phase> {
    let stop = Arc::new(AtomicBool::new(false));
    let cpu0 = cpu(tracker_pid)?;
    let t0 = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    let workers = workers.clamp(1, agents.len().max(1));
    for k in 0..workers {
        let mine: Vec<Arc<Agent>> = agents.iter().skip(k).step_by(workers).cloned().collect();
        let stop = stop.clone();
        tasks.spawn(async move {
            let mut lat = Vec::new();
            let mut errors = 0u64;
            let mut first = None;
            for a in mine.iter().cycle() {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                let t = Instant::now();
                match post(&a.send, a.body.clone()).await {
                    Ok(_) => lat.push(t.elapsed().as_secs_f64()),
                    Err(e) => {
                        errors += 1;
                        first.get_or_insert(format!("{e:#}"));
                    }
                }
            }
            (lat, errors, first)
        });
    }
    tokio::time::sleep(duration).await;
    stop.store(true, Ordering::Relaxed);
    let mut lat = Vec::new();
    let mut errors = 0;
    let mut first = None;
    while let Some(r) = tasks.join_next().await {
        let (l, e, f) = r?;
        lat.extend(l);
        errors += e;
        first = first.or(f);
    }
    let seconds = t0.elapsed().as_secs_f64();
    let cpu_s = cpu(tracker_pid)? - cpu0;
    Ok(phase(
        format!("closed loop, {workers} workers"),
        lat,
        (errors, first),
        seconds,
        cpu_s,
    ))
}

/// Syncs at `rate` per second in total for `duration`, round-robin over the agents.
pub async fn paced(
    agents: &[Arc<Agent>],
    tracker_pid: u32,
    rate: f64,
    duration: Duration,
) -> Result<Phase> {
    let cpu0 = cpu(tracker_pid)?;
    let t0 = Instant::now();
    let total = (rate * duration.as_secs_f64()).round() as u64;
    let mut tasks = tokio::task::JoinSet::new();
    for k in 0..total {
        let due = t0 + Duration::from_secs_f64(k as f64 / rate);
        tokio::time::sleep_until(due.into()).await;
        let a = agents[(k as usize) % agents.len()].clone();
        tasks.spawn(async move {
            let started = Instant::now();
            let r = post_timed(&a.send, a.body.clone()).await;
            let done = Instant::now();
            r.map(|(_, st)| Sample::new(t0, due, started, st, done))
        });
    }
    let mut samples = Vec::new();
    let mut errors = 0;
    let mut first = None;
    while let Some(r) = tasks.join_next().await {
        match r? {
            Ok(s) => samples.push(s),
            Err(e) => {
                errors += 1;
                first.get_or_insert(format!("{e:#}"));
            }
        }
    }
    let seconds = t0.elapsed().as_secs_f64();
    let cpu_s = cpu(tracker_pid)? - cpu0;
    let lat = samples.iter().map(|s| s.total).collect();
    let mut p = phase(
        format!("paced, {rate:.0} syncs/s"),
        lat,
        (errors, first),
        seconds,
        cpu_s,
    );
    p.breakdown = Some(Breakdown::of(&mut samples));
    p.samples = samples;
    Ok(p)
}

/// One paced sync, split into the parts of its latency (seconds). `total` is from
/// the scheduled send time to the parsed reply, and is the sum of the parts.
#[derive(Debug, Clone, Copy, serde::Serialize)]
pub struct Sample {
    /// Scheduled send time, seconds since the phase began.
    pub at: f64,
    pub total: f64,
    /// Due → the task ran: the benchmark's own scheduling (its pacing loop and
    /// runtime).
    pub spawn: f64,
    /// The task ran → the agent's connection was free and ready.
    pub wait: f64,
    /// Request handed to hyper → response head parsed: the tracker, both kernels'
    /// loopback path, and the benchmark's connection task waking.
    pub exchange: f64,
    /// Head → body read and JSON parsed (benchmark side).
    pub read: f64,
}

/// Where a phase's latency went: the p99 of each part on its own, and the mean of
/// each part over the syncs whose total is at or above the p99 (what the tail is
/// made of).
#[derive(Debug, Clone, Copy, Default, serde::Serialize)]
pub struct Breakdown {
    pub p99_spawn_ms: f64,
    pub p99_wait_ms: f64,
    pub p99_exchange_ms: f64,
    pub p99_read_ms: f64,
    pub tail_syncs: usize,
    pub tail_spawn_ms: f64,
    pub tail_wait_ms: f64,
    pub tail_exchange_ms: f64,
    pub tail_read_ms: f64,
}

impl Sample {
    fn new(t0: Instant, due: Instant, started: Instant, st: Stamps, done: Instant) -> Self {
        let d = |a: Instant, b: Instant| b.saturating_duration_since(a).as_secs_f64();
        Self {
            at: d(t0, due),
            total: d(due, done),
            spawn: d(due, started),
            wait: d(started, st.sent),
            exchange: d(st.sent, st.head),
            read: d(st.head, done),
        }
    }
}

impl Breakdown {
    /// Sorts `samples` by total latency.
    fn of(samples: &mut [Sample]) -> Self {
        if samples.is_empty() {
            return Self::default();
        }
        let p99 = |f: fn(&Sample) -> f64, s: &[Sample]| {
            let mut v: Vec<f64> = s.iter().map(f).collect();
            v.sort_by(|a, b| a.total_cmp(b));
            let rank = ((0.99 * v.len() as f64).ceil() as usize).clamp(1, v.len());
            v[rank - 1] * 1000.0
        };
        let mut b = Self {
            p99_spawn_ms: p99(|s| s.spawn, samples),
            p99_wait_ms: p99(|s| s.wait, samples),
            p99_exchange_ms: p99(|s| s.exchange, samples),
            p99_read_ms: p99(|s| s.read, samples),
            ..Self::default()
        };
        samples.sort_by(|a, b| a.total.total_cmp(&b.total));
        let rank = ((0.99 * samples.len() as f64).ceil() as usize).clamp(1, samples.len());
        let tail = &samples[rank - 1..];
        let mean =
            |f: fn(&Sample) -> f64| tail.iter().map(f).sum::<f64>() * 1000.0 / tail.len() as f64;
        b.tail_syncs = tail.len();
        b.tail_spawn_ms = mean(|s| s.spawn);
        b.tail_wait_ms = mean(|s| s.wait);
        b.tail_exchange_ms = mean(|s| s.exchange);
        b.tail_read_ms = mean(|s| s.read);
        b
    }
}

fn cpu(pid: u32) -> Result<f64> {
    usage(pid)
        .map(|u| u.cpu_seconds)
        .with_context(|| format!("reading /proc/{pid}/stat: the tracker exited?"))
}

fn phase(
    name: String,
    mut lat: Vec<f64>,
    (errors, first_error): (u64, Option<String>),
    seconds: f64,
    cpu_s: f64,
) -> Phase {
    lat.sort_by(|a, b| a.total_cmp(b));
    let q = |p: f64| {
        if lat.is_empty() {
            return f64::NAN;
        }
        let rank = ((p * lat.len() as f64).ceil() as usize).clamp(1, lat.len());
        lat[rank - 1] * 1000.0
    };
    let syncs = lat.len() as u64;
    Phase {
        name,
        syncs,
        errors,
        seconds,
        tracker_cpu_seconds: cpu_s,
        syncs_per_second: syncs as f64 / seconds.max(1e-9),
        syncs_per_core_second: syncs as f64 / cpu_s.max(1e-9),
        p50_ms: q(0.5),
        p99_ms: q(0.99),
        max_ms: q(1.0),
        first_error,
        load_after: String::new(),
        breakdown: None,
        server: None,
        samples: Vec::new(),
    }
}

/// The tracker's configuration for the benchmark: loopback listeners, the given TLS
/// files, connection limits above the agent count, a 10 s handshake deadline (3 s by
/// default: thousands of handshakes at once on a shared 2-core machine miss it), a
/// 10 min head deadline (it also closes idle keep-alive connections, and agents
/// connected early idle through the rest of the setup), defaults otherwise.
pub fn tracker_config(dir: &Path, listen: SocketAddr, admin: SocketAddr, agents: usize) -> String {
    let d = dir.display();
    let conns = agents + 1024;
    format!(
        r#"[server]
listen = "{listen}"

[admin]
listen = "{admin}"

[tls]
ca = "{d}/ca.pem"
cert = "{d}/tracker.pem"
key = "{d}/tracker.key.pem"

[limits]
max_connections = {conns}
max_connections_per_source = {conns}
handshake_timeout = "10s"
header_read_timeout = "10m"
"#
    )
}

/// The names the development CA certifies: the tracker, then `a0`, `a1`, ….
pub fn names(agents: usize) -> Vec<String> {
    std::iter::once("tracker".to_owned())
        .chain((0..agents).map(|i| format!("a{i}")))
        .collect()
}
