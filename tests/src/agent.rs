//! Starting agents for tests: a config on a 127.0.0.x address, port 0, with a
//! temporary cache directory and loopback origins allowed.

use std::path::Path;

use bytesize::ByteSize;
use shoal_agent::app::{Agent, RunningAgent};
use shoal_agent::config::Config;

/// Chunk size used by tests: small, so test objects have many chunks.
pub const TEST_CHUNK: u64 = 64 * 1024;

/// A test config: listeners on `ip`:0, cache in `dir`, loopback origins allowed.
pub fn config(ip: &str, dir: &Path) -> Config {
    let mut c = Config::default();
    c.proxy.listen = format!("{ip}:0").parse().expect("test ip");
    c.admin.listen = format!("{ip}:0").parse().expect("test ip");
    c.peer.listen = format!("{ip}:0").parse().expect("test ip");
    c.cache.dir = dir.to_path_buf();
    c.cache.chunk_size = ByteSize::b(TEST_CHUNK);
    c.cache.memory_size = ByteSize::mib(8);
    // Keep nothing back for the host: a build machine's disk may have under the
    // default reserve (1 GiB) free, and that must not decide what a test caches.
    c.cache.min_free = Some(ByteSize::b(0));
    c.egress.allow_cidrs = vec!["127.0.0.0/8".parse().expect("cidr")];
    c
}

/// Starts an agent with its own metrics registry.
pub async fn start(cfg: Config) -> anyhow::Result<RunningAgent> {
    Ok(Agent::start(cfg, prometheus::Registry::new()).await?)
}
