//! `shoal-demo` (also started by `shoal-agent demo`): a whole swarm in one process, on
//! embedded defaults.
//!
//! Starts a real HTTP origin serving one generated object, a tracker, and N agents on
//! 127.0.0.x addresses (port 0) with a freshly generated fleet PKI; then every agent's
//! proxy is asked for the object at the same moment (a flash crowd), every byte is
//! verified against the object's BLAKE3, and the figures are reported: per-agent
//! completion time, where each agent's bytes came from, and origin bytes divided by
//! the object size. Everything is torn down at the end, the cache directories too.
//!
//! [`origin`] is also the HTTP origin the integration tests and benchmarks use.

pub mod origin;
mod report;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use bytesize::ByteSize;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use shoal_pki::dev_pki;
use shoal_tracker::app::Tracker;
use tokio::net::TcpStream;
use tokio::sync::Barrier;

pub use origin::{Object, Origin, random_bytes};
pub use report::{AgentResult, Report};
use shoal_agent::app::{Agent, RunningAgent};
use shoal_agent::config::Config;
use shoal_agent::metrics::Source;

/// What to run.
#[derive(Debug, Clone)]
pub struct DemoOptions {
    pub agents: usize,
    pub size: u64,
    pub chunk_size: u64,
    /// Upload limit per agent, bytes/s (0 = none): makes a loopback swarm behave
    /// more like a network with finite links.
    pub upload_rate: u64,
}

/// Why the demo could not run.
#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    #[error("demo setup: {0}")]
    Setup(String),
    #[error("agent {agent}: {reason}")]
    Agent { agent: usize, reason: String },
}

impl Default for DemoOptions {
    fn default() -> Self {
        Self {
            agents: 8,
            size: 256 << 20,
            chunk_size: 1 << 20,
            upload_rate: 0,
        }
    }
}

fn setup<E: std::fmt::Display>(what: &str) -> impl FnOnce(E) -> DemoError + '_ {
    move |e| DemoError::Setup(format!("{what}: {e}"))
}

/// Address of the demo's node `n`: `127.0.0.(n + 2)`, so the origin (`n = 0`) is
/// 127.0.0.2, the tracker 127.0.0.3 and agent `i` (`n = 10 + i`) 127.0.0.12 and up.
fn ip(n: usize) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(127, 0, (n / 250) as u8, (n % 250 + 2) as u8))
}

/// Runs the demo and returns its report.
pub async fn run(opts: DemoOptions) -> Result<Report, DemoError> {
    if opts.agents == 0 || opts.agents > 200 {
        return Err(DemoError::Setup("--agents must be 1..=200".into()));
    }
    let dir = std::env::temp_dir().join(format!("shoal-demo-{}", std::process::id()));
    let _cleanup = RemoveDir(dir.clone());
    std::fs::create_dir_all(&dir).map_err(setup("temporary directory"))?;

    let data = random_bytes(usize::try_from(opts.size).map_err(setup("size"))?, 0x5eed);
    let want = blake3::hash(&data);
    let origin = Origin::start(&ip(0).to_string())
        .await
        .map_err(setup("origin"))?;
    origin.put("/release.bin", Object::new(data.clone()));
    drop(data);

    let mut names = vec!["tracker".to_owned()];
    let mut ips = vec![vec![ip(1)]];
    for i in 0..opts.agents {
        names.push(format!("agent-{}", i + 1));
        ips.push(vec![ip(10 + i)]);
    }
    let pki = dev_pki(&names, &ips).map_err(setup("certificates"))?;
    let mut tcfg = shoal_tracker::config::Config::default();
    tcfg.server.listen = SocketAddr::new(ip(1), 0);
    tcfg.admin.listen = SocketAddr::new(ip(1), 0);
    let tracker = Tracker::start(
        tcfg,
        pki.identity(0).map_err(setup("tracker identity"))?,
        prometheus::Registry::new(),
    )
    .await
    .map_err(setup("tracker"))?;
    let tracker_url = format!("https://{}", tracker.local_addr());

    let mut agents = Vec::new();
    for i in 0..opts.agents {
        let mut c = Config::default();
        let a = ip(10 + i);
        c.proxy.listen = SocketAddr::new(a, 0);
        c.admin.listen = SocketAddr::new(a, 0);
        c.peer.listen = SocketAddr::new(a, 0);
        c.peer.upload_rate = ByteSize::b(opts.upload_rate);
        c.cache.dir = dir.join(format!("agent-{}", i + 1));
        c.cache.chunk_size = ByteSize::b(opts.chunk_size);
        c.cache.memory_size = ByteSize::mib(32);
        // The demo's objects are small and deleted at its end: it caches even on a
        // disk with less free space than the default reserve.
        c.cache.min_free = Some(ByteSize::b(0));
        c.egress.allow_cidrs = vec!["127.0.0.0/8".parse().map_err(setup("cidr"))?];
        c.tracker.urls = vec![tracker_url.clone()];
        c.tracker.poll_interval = Duration::from_millis(100);
        c.topology.zone = format!("zone-{}", i % 2);
        let id = pki.identity(i + 1).map_err(setup("agent identity"))?;
        let agent = Agent::start_with(c, prometheus::Registry::new(), Some(id))
            .await
            .map_err(|e| DemoError::Agent {
                agent: i + 1,
                reason: e.to_string(),
            })?;
        agents.push(agent);
    }

    let url = origin.url("/release.bin");
    let barrier = Arc::new(Barrier::new(agents.len()));
    let start = Instant::now();
    let mut tasks = Vec::new();
    for a in &agents {
        let (proxy, url, barrier) = (a.proxy_addr(), url.clone(), barrier.clone());
        tasks.push(tokio::spawn(async move {
            barrier.wait().await;
            fetch(proxy, &url).await
        }));
    }
    let mut results = Vec::new();
    for (i, (t, a)) in tasks.into_iter().zip(&agents).enumerate() {
        let r = t.await.map_err(|e| DemoError::Agent {
            agent: i + 1,
            reason: e.to_string(),
        })?;
        let (hash, bytes, ttfb, done) = r.map_err(|reason| DemoError::Agent {
            agent: i + 1,
            reason,
        })?;
        results.push(agent_result(
            i,
            a,
            hash == want && bytes == opts.size,
            ttfb,
            done,
            start,
        ));
    }
    let report = Report::new(&opts, origin.bytes_sent(), results, start.elapsed());

    futures_util::future::join_all(agents.into_iter().map(|a| a.shutdown())).await;
    tracker.shutdown().await;
    Ok(report)
}

fn agent_result(
    i: usize,
    a: &RunningAgent,
    verified: bool,
    ttfb: Instant,
    done: Instant,
    start: Instant,
) -> AgentResult {
    let m = a.metrics();
    AgentResult {
        name: format!("agent-{}", i + 1),
        completion: done.duration_since(start),
        ttfb: ttfb.duration_since(start),
        peer_bytes: m
            .bytes_fetched
            .with_label_values(&[Source::Peer.label()])
            .get(),
        origin_bytes: m
            .bytes_fetched
            .with_label_values(&[Source::Origin.label()])
            .get(),
        verified,
        metrics_url: format!("http://{}/metrics", a.admin_addr()),
    }
}

/// GETs `url` through the proxy at `proxy`, hashing the body as it streams.
/// Returns (hash, length, first byte time, last byte time).
async fn fetch(
    proxy: SocketAddr,
    url: &str,
) -> Result<(blake3::Hash, u64, Instant, Instant), String> {
    let stream = TcpStream::connect(proxy)
        .await
        .map_err(|e| format!("connect to proxy: {e}"))?;
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| e.to_string())?;
    tokio::spawn(conn);
    let uri: http::Uri = url.parse().map_err(|e| format!("bad URL {url}: {e}"))?;
    let host = uri.authority().map(|a| a.to_string()).unwrap_or_default();
    let req = http::Request::get(uri)
        .header(http::header::HOST, host)
        .body(Empty::<Bytes>::new())
        .map_err(|e| e.to_string())?;
    let resp = send
        .send_request(req)
        .await
        .map_err(|e| format!("request: {e}"))?;
    if !resp.status().is_success() {
        return Err(format!("proxy answered {}", resp.status()));
    }
    let mut body = resp.into_body();
    let mut h = blake3::Hasher::new();
    let mut n = 0u64;
    let mut first = None;
    while let Some(f) = body.frame().await {
        let f = f.map_err(|e| format!("body cut after {n} bytes: {e}"))?;
        if let Ok(d) = f.into_data() {
            first.get_or_insert_with(Instant::now);
            n += d.len() as u64;
            h.update(&d);
        }
    }
    let done = Instant::now();
    Ok((h.finalize(), n, first.unwrap_or(done), done))
}

/// Removes the demo's directory when dropped (also on early return).
struct RemoveDir(PathBuf);

impl Drop for RemoveDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
