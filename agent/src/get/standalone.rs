//! `get --standalone`: a one-shot agent in this process, with its own cache
//! directory and the tracker and TLS settings of a config file, so a machine without
//! a running agent still downloads through the swarm. Its listeners take free ports
//! (the proxy and admin on 127.0.0.1, the peer port on the configured address), so
//! it runs beside a node's agent; it stops when the download ends.

use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use crate::app::Agent;
use crate::config::Config;

use super::{Endpoint, GetError, Options, Report, download};

/// Runs `o` (its `agent` is ignored) through a one-shot agent configured by `config`
/// (built-in defaults without), caching in `cache_dir` (a fresh directory under the
/// system's temporary directory, removed afterwards, without).
pub async fn run(
    config: Option<&Path>,
    cache_dir: Option<PathBuf>,
    o: &Options,
) -> Result<Report, GetError> {
    let mut cfg = Config::load(config, &[]).map_err(|e| GetError::Usage(e.to_string()))?;
    let loopback = std::net::SocketAddr::from(([127, 0, 0, 1], 0));
    cfg.proxy.listen = loopback;
    cfg.proxy.pod_listen = None;
    cfg.admin.listen = loopback;
    cfg.peer.listen.set_port(0);
    let temp = cache_dir.is_none();
    cfg.cache.dir = match cache_dir {
        Some(d) => d,
        None => {
            let nanos = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos());
            std::env::temp_dir().join(format!("shoal-get-{}-{nanos}", std::process::id()))
        }
    };
    let dir = cfg.cache.dir.clone();
    let agent = Agent::start(cfg, prometheus::Registry::new())
        .await
        .map_err(|e| GetError::Standalone(e.to_string()))?;
    let o = Options {
        agent: Endpoint::from_addr(agent.proxy_addr()),
        ..o.clone()
    };
    let res = download(&o).await;
    agent.shutdown().await;
    if temp {
        let _ = tokio::fs::remove_dir_all(&dir).await;
    }
    res
}
