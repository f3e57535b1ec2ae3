//! Wiring: builds every part of an agent from its [`Config`] and runs the listeners.
//! Tests and the demo run several agents in one process through [`Agent::start`].

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use prometheus::Registry;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::admin::{self, Ready};
use crate::config::{Config, ConfigError};
use crate::egress::EgressPolicy;
use crate::metrics::Metrics;
use crate::object::{CacheSettings, ObjectCache};
use crate::origin::OriginClient;
use crate::proxy::{self, Proxy};
use crate::store::{ChunkStore, MetaStore, StoreConfig};
use crate::swarm::{Swarm, SwarmError, announce};
use shoal_pki::Identity;

/// Why an agent could not start. Always a local problem (configuration, ports, files).
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot listen on {what} address {addr}: {source}")]
    Bind {
        what: &'static str,
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("configuration: {0}")]
    Config(#[from] ConfigError),
    #[error("origin.ca_file {}: {source}", path.display())]
    OriginCaRead {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("origin.ca_file {}: {reason}", path.display())]
    OriginCaPem { path: PathBuf, reason: String },
    #[error("tls.ca, tls.cert and tls.key are required when tracker.urls is set")]
    TlsMissing,
    #[error("fleet TLS identity: {0}")]
    Tls(#[from] shoal_pki::TlsError),
    #[error("swarm setup: {0}")]
    Swarm(#[from] Box<SwarmError>),
}

impl From<SwarmError> for StartError {
    fn from(e: SwarmError) -> Self {
        Self::Swarm(Box::new(e))
    }
}

/// Entry point; see [`Agent::start`].
#[derive(Debug)]
pub struct Agent;

/// A started agent. Dropping it does not stop it; call [`RunningAgent::shutdown`].
#[derive(Debug)]
pub struct RunningAgent {
    proxy_addr: SocketAddr,
    /// `proxy.pod_listen`, resolved.
    pod_addr: Option<SocketAddr>,
    admin_addr: SocketAddr,
    metrics: Metrics,
    cache: ObjectCache,
    swarm: Option<Arc<Swarm>>,
    /// Stops the proxy listeners and the announcer.
    stop: watch::Sender<bool>,
    /// Stops the admin listener, last, so `/ready` answers 503 while the rest drains.
    admin_stop: watch::Sender<bool>,
    admin_task: tokio::task::Id,
    ready: Ready,
    tasks: JoinSet<()>,
}

impl Agent {
    /// Opens the store, binds every listener (port 0 allowed) and starts serving. With
    /// a tracker configured, the TLS identity is loaded from `tls.*`.
    pub async fn start(cfg: Config, registry: Registry) -> Result<RunningAgent, StartError> {
        Self::start_with(cfg, registry, None).await
    }

    /// As [`Agent::start`], with the TLS identity given (tests and the demo use
    /// in-memory certificates).
    pub async fn start_with(
        cfg: Config,
        registry: Registry,
        identity: Option<Identity>,
    ) -> Result<RunningAgent, StartError> {
        // `Config::load` validated it; a hand-built one (tests, the demo) is checked here.
        cfg.validate_settings()?;
        let metrics = Metrics::new(registry);
        let store = ChunkStore::open(StoreConfig::from(&cfg.cache), metrics.clone()).await;
        let meta = MetaStore::new(cfg.cache.dir.join("objects"));
        let policy = EgressPolicy::new(&cfg.egress);
        let extra_roots = match &cfg.origin.ca_file {
            None => Vec::new(),
            Some(p) => load_pem_certs(p)?,
        };
        let origin = OriginClient::new(&cfg.origin, policy.clone(), metrics.clone(), extra_roots);
        let settings = CacheSettings {
            // Within 16KiB..=16MiB: checked by validate_settings above.
            chunk_size: cfg.cache.chunk_size.as_u64() as u32,
            freshness: cfg.cache.freshness,
            stale_if_error: cfg.cache.stale_if_error,
            fill_buffer: cfg.cache.fill_buffer.as_u64(),
            read_buffer: cfg.cache.read_buffer.as_u64(),
            max_fills: cfg.cache.max_fills,
        };
        let ready = Ready::with_store(store.clone())
            .with_wiring(crate::containerd::Wiring::for_ready(&cfg));
        let swarm = if cfg.swarm_enabled() {
            let identity = match identity {
                Some(i) => i,
                None => {
                    let (Some(ca), Some(cert), Some(key)) =
                        (&cfg.tls.ca, &cfg.tls.cert, &cfg.tls.key)
                    else {
                        return Err(StartError::TlsMissing);
                    };
                    Identity::load(ca, cert, key)?
                }
            };
            let sw = Swarm::start(&cfg, &identity, store.clone(), metrics.clone()).await?;
            Some(Arc::new(sw))
        } else {
            None
        };
        let cache = ObjectCache::open(
            store,
            meta,
            origin,
            metrics.clone(),
            settings,
            swarm.clone(),
        )
        .await;
        let proxy = Arc::new(Proxy::new(&cfg, cache.clone(), policy, metrics.clone()));

        let bind = |what: &'static str, addr: SocketAddr| async move {
            TcpListener::bind(addr)
                .await
                .map_err(|source| StartError::Bind { what, addr, source })
        };
        let proxy_l = bind("proxy", cfg.proxy.listen).await?;
        let pod_l = match cfg.proxy.pod_listen {
            Some(a) => Some(bind("proxy.pod_listen", a).await?),
            None => None,
        };
        let pod_addr = pod_l
            .as_ref()
            .zip(cfg.proxy.pod_listen)
            .map(|(l, a)| local(l, a));
        let admin_l = bind("admin", cfg.admin.listen).await?;
        let proxy_addr = local(&proxy_l, cfg.proxy.listen);
        let admin_addr = local(&admin_l, cfg.admin.listen);

        let (stop, _) = watch::channel(false);
        let stopped = |rx: watch::Receiver<bool>| async move {
            let mut rx = rx;
            let _ = rx.wait_for(|s| *s).await;
        };
        let (admin_stop, _) = watch::channel(false);
        let mut tasks = JoinSet::new();
        // One connection table for both listeners: the caps are the node's.
        let conns = proxy::conns::Conns::new(&cfg.proxy, metrics.clone());
        if let Some(l) = pod_l {
            tasks.spawn(proxy::serve(
                l,
                proxy.clone(),
                cfg.proxy.clone(),
                conns.clone(),
                stopped(stop.subscribe()),
            ));
        }
        tasks.spawn(proxy::serve(
            proxy_l,
            proxy.clone(),
            cfg.proxy.clone(),
            conns,
            stopped(stop.subscribe()),
        ));
        let admin_task = tasks
            .spawn(admin::serve(
                admin_l,
                metrics.clone(),
                ready.clone(),
                Some(proxy),
                stopped(admin_stop.subscribe()),
            ))
            .id();
        if let Some(sw) = &swarm {
            let interval = cfg.tracker.announce_interval;
            tasks.spawn(announce::run(
                cache.clone(),
                sw.clone(),
                interval,
                stopped(stop.subscribe()),
            ));
        }
        ready.set(true);
        tracing::info!(proxy = %proxy_addr, admin = %admin_addr, cache = %cfg.cache.dir.display(), "agent started");
        Ok(RunningAgent {
            proxy_addr,
            pod_addr,
            admin_addr,
            metrics,
            cache,
            swarm,
            stop,
            admin_stop,
            admin_task,
            ready,
            tasks,
        })
    }
}

/// Every certificate in a PEM file; errors name the file.
fn load_pem_certs(
    p: &std::path::Path,
) -> Result<Vec<rustls::pki_types::CertificateDer<'static>>, StartError> {
    use rustls::pki_types::pem::PemObject as _;
    let path = p.to_path_buf();
    let data = std::fs::read(p).map_err(|source| StartError::OriginCaRead {
        path: path.clone(),
        source,
    })?;
    let certs: Result<Vec<_>, _> =
        rustls::pki_types::CertificateDer::pem_slice_iter(&data).collect();
    let certs = certs.map_err(|e| StartError::OriginCaPem {
        path: path.clone(),
        reason: e.to_string(),
    })?;
    if certs.is_empty() {
        return Err(StartError::OriginCaPem {
            path,
            reason: "no PEM certificate in it".into(),
        });
    }
    Ok(certs)
}

fn local(l: &TcpListener, fallback: SocketAddr) -> SocketAddr {
    l.local_addr().unwrap_or(fallback)
}

/// How long a shutdown waits for queued write-behind chunks to reach the disk.
const WRITE_DRAIN_GRACE: std::time::Duration = std::time::Duration::from_secs(30);

impl RunningAgent {
    pub fn proxy_addr(&self) -> SocketAddr {
        self.proxy_addr
    }

    /// The pod-facing proxy listener (`proxy.pod_listen`), if configured.
    pub fn pod_addr(&self) -> Option<SocketAddr> {
        self.pod_addr
    }

    pub fn admin_addr(&self) -> SocketAddr {
        self.admin_addr
    }

    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    pub fn cache(&self) -> &ObjectCache {
        &self.cache
    }

    /// The QUIC address peers dial, when the swarm is on.
    pub fn peer_addr(&self) -> Option<SocketAddr> {
        self.swarm.as_ref().and_then(|s| s.peer_addr())
    }

    pub fn swarm(&self) -> Option<&Arc<Swarm>> {
        self.swarm.as_ref()
    }

    /// Stops at once, without letting responses or uploads finish (a crash, in tests).
    pub fn kill(mut self) {
        if let Some(sw) = &self.swarm {
            sw.close();
        }
        self.tasks.abort_all();
    }

    /// Stops accepting, lets in-flight responses finish, and returns. `/ready`
    /// answers 503 from the start; the admin listener stops last.
    pub async fn shutdown(self) {
        self.begin_shutdown().await;
    }

    /// [`RunningAgent::shutdown`] in two steps, for tests that look at the agent while
    /// it drains: readiness falls and listeners stop accepting at once; the returned
    /// future drains and stops.
    pub fn begin_shutdown(mut self) -> impl std::future::Future<Output = ()> {
        self.ready.set(false);
        self.stop.send_replace(true);
        async move {
            if let Some(sw) = &self.swarm {
                sw.shutdown().await;
            }
            let mut admin_live = true;
            loop {
                if admin_live && self.tasks.len() == 1 {
                    self.admin_stop.send_replace(true);
                }
                let id = match self.tasks.join_next_with_id().await {
                    None => break,
                    Some(Ok((id, ()))) => id,
                    Some(Err(e)) => e.id(),
                };
                admin_live &= id != self.admin_task;
            }
            // Chunks written behind the last responses reach the disk before the
            // process goes, so the objects recorded ahead of them survive a restart.
            if !self.cache.drain_writes(WRITE_DRAIN_GRACE).await {
                tracing::warn!(
                    "stopping with chunk writes still queued; their objects are repaired or refetched after the restart"
                );
            }
        }
    }

    /// Whether `/ready` would answer 200 now.
    pub fn is_ready(&self) -> bool {
        self.ready.get()
    }

    /// Resolves when any listener task ends (it only ends on shutdown or a bug).
    pub async fn wait(&mut self) {
        let _ = self.tasks.join_next().await;
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use bytesize::ByteSize;

    use super::*;

    /// Review defect (d)12: a hand-built configuration `Config::load` would refuse
    /// (here a 1-byte chunk size, which `as u32` and the layout math would take) does
    /// not start an agent.
    #[tokio::test]
    async fn start_refuses_a_config_load_would_refuse() {
        let dir = tempfile::tempdir().unwrap();
        let mut cfg = Config::default();
        cfg.cache.dir = dir.path().to_path_buf();
        cfg.proxy.listen = "127.0.0.1:0".parse().unwrap();
        cfg.admin.listen = "127.0.0.1:0".parse().unwrap();
        cfg.cache.chunk_size = ByteSize::b(1);
        let e = Agent::start(cfg, Registry::new()).await.unwrap_err();
        assert!(matches!(e, StartError::Config(_)), "{e}");
        assert!(e.to_string().contains("cache.chunk_size"), "{e}");
    }
}
