//! A swarm in one process: an origin, a tracker and N agents on 127.0.x.y addresses
//! (port 0), with an in-memory fleet PKI. `TestSwarm::builder().agents(8).spawn()`.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use bytesize::ByteSize;
use shoal_agent::app::{Agent, RunningAgent};
use shoal_agent::config::Config;
use shoal_pki::{DevPki, Identity, dev_pki};
use shoal_tracker::app::{RunningTracker, Tracker};

use crate::agent::TEST_CHUNK;
use crate::origin::Origin;

/// Adjusts agent `i`'s configuration before it starts.
pub type Tweak = Box<dyn Fn(usize, &mut Config) + Send>;

/// Builds a [`TestSwarm`].
pub struct Builder {
    agents: usize,
    net: u8,
    spare: usize,
    tweak: Option<Tweak>,
}

/// A running swarm. Agents are `Option`s so a test can kill one.
pub struct TestSwarm {
    pub origin: Origin,
    pub tracker: Option<RunningTracker>,
    pub agents: Vec<Option<RunningAgent>>,
    pub pki: DevPki,
    tracker_addr: SocketAddr,
    dirs: Vec<tempfile::TempDir>,
    net: u8,
    tweak: Option<Tweak>,
}

/// `127.0.NET.n`.
pub fn ip(net: u8, n: usize) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(127, 0, net, n as u8))
}

impl Builder {
    /// Number of agents started at once.
    pub fn agents(mut self, n: usize) -> Self {
        self.agents = n;
        self
    }

    /// Certificates for this many more agents, to be added with [`TestSwarm::add_agent`].
    pub fn spare(mut self, n: usize) -> Self {
        self.spare = n;
        self
    }

    /// The third octet of every address: tests running at once must differ.
    pub fn net(mut self, net: u8) -> Self {
        self.net = net;
        self
    }

    /// Adjusts each agent's configuration (agent index from 0).
    pub fn tweak(mut self, f: impl Fn(usize, &mut Config) + Send + 'static) -> Self {
        self.tweak = Some(Box::new(f));
        self
    }

    pub async fn spawn(self) -> anyhow::Result<TestSwarm> {
        crate::logs();
        let net = self.net;
        let total = self.agents + self.spare;
        let mut names = vec!["tracker".to_owned()];
        let mut ips = vec![vec![ip(net, 2)]];
        for i in 0..total {
            names.push(format!("agent-{}", i + 1));
            ips.push(vec![ip(net, 10 + i)]);
        }
        let pki = dev_pki(&names, &ips)?;
        let origin = Origin::start(&ip(net, 1).to_string()).await?;
        let tracker = start_tracker(&pki, SocketAddr::new(ip(net, 2), 0)).await?;
        let mut s = TestSwarm {
            origin,
            tracker_addr: tracker.local_addr(),
            tracker: Some(tracker),
            agents: Vec::new(),
            pki,
            dirs: Vec::new(),
            net,
            tweak: self.tweak,
        };
        for _ in 0..self.agents {
            s.add_agent().await?;
        }
        Ok(s)
    }
}

async fn start_tracker(pki: &DevPki, listen: SocketAddr) -> anyhow::Result<RunningTracker> {
    let mut c = shoal_tracker::config::Config::default();
    c.server.listen = listen;
    c.admin.listen = SocketAddr::new(listen.ip(), 0);
    c.registry.lease_ttl = Duration::from_secs(2);
    Ok(Tracker::start(c, pki.identity(0)?, prometheus::Registry::new()).await?)
}

impl TestSwarm {
    pub fn builder() -> Builder {
        Builder {
            agents: 4,
            net: 1,
            spare: 0,
            tweak: None,
        }
    }

    /// The config agent `i` (from 0) gets.
    pub fn config(&self, i: usize, dir: &std::path::Path) -> Config {
        let mut c = crate::agent::config(&ip(self.net, 10 + i).to_string(), dir);
        c.cache.chunk_size = ByteSize::b(TEST_CHUNK);
        c.tracker.urls = vec![format!("https://{}", self.tracker_addr)];
        c.tracker.poll_interval = Duration::from_millis(50);
        c.tracker.announce_interval = Duration::from_millis(500);
        c.tracker.backoff = Duration::from_millis(500);
        c.tracker.timeout = Duration::from_secs(2);
        c.peer.request_timeout = Duration::from_secs(2);
        c.peer.origin_fallback = Duration::from_secs(2);
        if let Some(t) = &self.tweak {
            t(i, &mut c);
        }
        c
    }

    /// Starts the next agent (its index is returned).
    pub async fn add_agent(&mut self) -> anyhow::Result<usize> {
        let i = self.agents.len();
        let dir = tempfile::tempdir()?;
        let cfg = self.config(i, dir.path());
        let id: Identity = self.pki.identity(i + 1)?;
        let a = Agent::start_with(cfg, prometheus::Registry::new(), Some(id)).await?;
        self.dirs.push(dir);
        self.agents.push(Some(a));
        Ok(i)
    }

    /// Agent `i`; panics if it was killed.
    pub fn agent(&self, i: usize) -> &RunningAgent {
        self.agents[i].as_ref().expect("agent was killed")
    }

    /// Stops the tracker (its state is lost: it is all soft).
    pub async fn stop_tracker(&mut self) {
        if let Some(t) = self.tracker.take() {
            t.shutdown().await;
        }
    }

    /// Starts a fresh tracker on the same address.
    pub async fn restart_tracker(&mut self) -> anyhow::Result<()> {
        self.stop_tracker().await;
        self.tracker = Some(start_tracker(&self.pki, self.tracker_addr).await?);
        Ok(())
    }

    /// Bytes each agent fetched from (peers, origin).
    pub fn fetched(&self, i: usize) -> (u64, u64) {
        let m = self.agent(i).metrics();
        (
            m.bytes_fetched.with_label_values(&["peer"]).get(),
            m.bytes_fetched.with_label_values(&["origin"]).get(),
        )
    }

    pub async fn shutdown(mut self) {
        for a in self.agents.drain(..).flatten() {
            a.shutdown().await;
        }
        self.stop_tracker().await;
    }
}
