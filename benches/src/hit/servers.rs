//! The servers under test, each its own process started from a generated config:
//! nginx (Debian package, `sendfile on`) serving the file from a directory,
//! `shoal-agent run` caching the same bytes from an in-process origin, and the
//! baseline `hitbound` ([`super::bound`]). Both are
//! stopped by pid when dropped (SIGTERM, SIGKILL after two seconds), also on error.

use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result};

use crate::fleet::cleanup::{Registry, descendants};
use crate::fleet::proc::{Proc, usage};

/// How long a server may take to answer its first request.
const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// A free TCP port on 127.0.0.1 (bound, read and released; a tiny race is possible).
pub fn free_port() -> Result<u16> {
    let l = TcpListener::bind("127.0.0.1:0").context("finding a free port")?;
    Ok(l.local_addr()?.port())
}

/// A running server process.
#[derive(Debug)]
pub struct Server {
    pub addr: SocketAddr,
    proc: Proc,
    log: PathBuf,
}

impl Server {
    pub fn pid(&self) -> u32 {
        self.proc.pid()
    }

    /// The server's process and its children (nginx workers).
    pub fn pids(&self) -> Vec<u32> {
        let mut v = descendants(&[self.pid()]);
        v.push(self.pid());
        v
    }

    /// CPU seconds used so far by the process and its children.
    pub fn cpu_seconds(&self) -> f64 {
        self.pids()
            .into_iter()
            .filter_map(usage)
            .map(|u| u.cpu_seconds)
            .sum()
    }

    /// Peak resident memory of the main process, bytes.
    pub fn peak_rss(&self) -> Option<u64> {
        usage(self.pid()).map(|u| u.peak_rss_bytes)
    }

    /// Fails with the log's tail if the process has exited.
    pub fn check_alive(&mut self) -> Result<()> {
        if let Some((status, _)) = self.proc.poll() {
            anyhow::bail!(
                "{} exited ({status}); log {}:\n{}",
                self.proc.label,
                self.log.display(),
                tail(&self.log)
            );
        }
        Ok(())
    }

    /// Waits until `GET path` answers 200 (or fails with the log's tail).
    pub async fn wait_ready(&mut self, name: &'static str, path: &str) -> Result<()> {
        let r = super::load::wait_ready(name, self.addr, path, READY_TIMEOUT).await;
        self.check_alive()?;
        r.with_context(|| format!("log {}:\n{}", self.log.display(), tail(&self.log)))
    }
}

fn tail(log: &Path) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(20)..].join("\n")
}

/// nginx's rate under `/slow/` (the same files as `/`), bytes per second in nginx's
/// syntax: an origin whose bytes trickle in. nginx sends one second's worth at once
/// (its budget is `rate × (elapsed seconds + 1)`), so the rate must be well under a
/// chunk per second for the first chunk to arrive slowly.
pub const SLOW_RATE: &str = "512k";

/// The nginx configuration: two workers, sendfile, no access log, everything else
/// (pid, logs, temporary paths) inside `dir`; `/slow/` serves the root at
/// [`SLOW_RATE`]; with `rated`, `/rated/` serves it at that rate per connection (a
/// link-bound origin: coldbench `--origin-rate`).
pub fn nginx_conf(dir: &Path, root: &Path, port: u16, rated: Option<&str>) -> String {
    let d = dir.display();
    let rated = rated.map_or(String::new(), |r| {
        format!(
            "        location /rated/ {{\n            alias {}/;\n            limit_rate {r};\n        }}\n",
            root.display()
        )
    });
    format!(
        r#"daemon off;
worker_processes 2;
pid {d}/nginx.pid;
error_log {d}/nginx.error.log warn;
events {{ worker_connections 1024; }}
http {{
    sendfile on;
    tcp_nopush on;
    access_log off;
    default_type application/octet-stream;
    keepalive_requests 1000000;
    client_body_temp_path {d}/nginx-tmp/body;
    proxy_temp_path {d}/nginx-tmp/proxy;
    fastcgi_temp_path {d}/nginx-tmp/fastcgi;
    uwsgi_temp_path {d}/nginx-tmp/uwsgi;
    scgi_temp_path {d}/nginx-tmp/scgi;
    server {{
        listen 127.0.0.1:{port};
        root {root};
        location /slow/ {{
            alias {root}/;
            limit_rate {SLOW_RATE};
        }}
{rated}    }}
}}
"#,
        root = root.display()
    )
}

/// Starts `nginx` (a program name or path) serving `root` on a free port.
pub async fn start_nginx(
    registry: &Registry,
    nginx: &str,
    dir: &Path,
    root: &Path,
    probe_path: &str,
    rated: Option<&str>,
) -> Result<Server> {
    let port = free_port()?;
    std::fs::create_dir_all(dir.join("nginx-tmp"))?;
    let conf = dir.join("nginx.conf");
    std::fs::write(&conf, nginx_conf(dir, root, port, rated))?;
    let log = dir.join("nginx.out.log");
    let err = dir.join("nginx.error.log");
    let args = [
        "-p".into(),
        dir.as_os_str().to_owned(),
        "-c".into(),
        conf.as_os_str().to_owned(),
        "-e".into(),
        err.as_os_str().to_owned(),
    ];
    let proc = Proc::spawn(registry, "nginx", None, nginx, args, &log, &[])?;
    let mut s = Server {
        addr: SocketAddr::from(([127, 0, 0, 1], port)),
        proc,
        log: err,
    };
    s.wait_ready("nginx", probe_path).await?;
    Ok(s)
}

/// Starts the baseline server (`hitbound`, [`super::bound`]) serving `file`.
pub async fn start_bound(
    registry: &Registry,
    bin: &Path,
    dir: &Path,
    file: &Path,
    chunk_size: u64,
    mode: super::bound::Mode,
) -> Result<Server> {
    anyhow::ensure!(
        bin.is_file(),
        "{} not found; build it with `cargo build --release -p shoal-benches --bin hitbound`",
        bin.display()
    );
    let port = free_port()?;
    let mode = match mode {
        super::bound::Mode::Copy => "copy",
        super::bound::Mode::Verify => "verify",
    };
    let log = dir.join(format!("bound-{mode}.log"));
    let args = [
        "--listen".into(),
        format!("127.0.0.1:{port}").into(),
        "--file".into(),
        file.as_os_str().to_owned(),
        "--chunk-size".into(),
        chunk_size.to_string().into(),
        "--mode".into(),
        std::ffi::OsString::from(mode),
    ];
    let proc = Proc::spawn(registry, "hitbound", None, bin, args, &log, &[])?;
    let mut s = Server {
        addr: SocketAddr::from(([127, 0, 0, 1], port)),
        proc,
        log,
    };
    s.wait_ready("bound", "/").await?;
    Ok(s)
}

/// Settings of the agent under test.
#[derive(Debug, Clone)]
pub struct AgentSettings {
    pub chunk_size: u64,
    pub memory_size: u64,
    pub max_size: u64,
    /// `http://127.0.0.1:PORT` of the origin; also the upstream of mirror `o`.
    pub origin: String,
}

/// The agent's TOML: loopback listeners on the given ports, cache in `dir/cache`,
/// loopback origins allowed, a mirror `o` onto the origin (for clients such as wrk
/// that cannot send absolute-form requests), and one hour of freshness so that every
/// request in the run is a pure hit (no revalidation).
pub fn agent_conf(dir: &Path, s: &AgentSettings, proxy: u16, admin: u16) -> String {
    format!(
        r#"[proxy]
listen = "127.0.0.1:{proxy}"
[admin]
listen = "127.0.0.1:{admin}"
[cache]
dir = "{cache}"
max_size = {max}
min_free = "0B"
memory_size = {mem}
chunk_size = {chunk}
freshness = "1h"
[egress]
allow_cidrs = ["127.0.0.0/8"]
[peer]
listen = "127.0.0.1:0"
[[mirrors]]
name = "o"
upstream = "{origin}"
"#,
        cache = dir.join("cache").display(),
        max = s.max_size,
        mem = s.memory_size,
        chunk = s.chunk_size,
        origin = s.origin,
    )
}

/// Starts `shoal-agent run --config DIR/agent.toml` and waits for its `/ready`.
pub async fn start_agent(
    registry: &Registry,
    bin: &Path,
    dir: &Path,
    settings: &AgentSettings,
    env: &[(String, String)],
) -> Result<Server> {
    anyhow::ensure!(
        bin.is_file(),
        "{} not found; build it with `cargo build --release -p shoal-agent` or pass --agent-bin",
        bin.display()
    );
    let (proxy, admin) = (free_port()?, free_port()?);
    let conf = dir.join("agent.toml");
    std::fs::write(&conf, agent_conf(dir, settings, proxy, admin))?;
    let log = dir.join("agent.log");
    let args = ["run".into(), "--config".into(), conf.as_os_str().to_owned()];
    let mut envs = vec![("RUST_LOG", "warn")];
    envs.extend(env.iter().map(|(k, v)| (k.as_str(), v.as_str())));
    let proc = Proc::spawn(registry, "shoal-agent", None, bin, args, &log, &envs)?;
    let mut s = Server {
        addr: SocketAddr::from(([127, 0, 0, 1], proxy)),
        proc,
        log: log.clone(),
    };
    // Readiness is on the admin listener.
    let r = super::load::wait_ready(
        "shoal admin",
        SocketAddr::from(([127, 0, 0, 1], admin)),
        "/ready",
        READY_TIMEOUT,
    )
    .await;
    s.check_alive()?;
    r.with_context(|| format!("log {}:\n{}", log.display(), tail(&log)))?;
    Ok(s)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn nginx_conf_has_the_asked_settings() {
        let c = nginx_conf(Path::new("/w"), Path::new("/w/www"), 8080, Some("100m"));
        for s in [
            "daemon off;",
            "worker_processes 2;",
            "sendfile on;",
            "tcp_nopush on;",
            "access_log off;",
            "listen 127.0.0.1:8080;",
            "root /w/www;",
            "pid /w/nginx.pid;",
            "location /rated/ {",
            "limit_rate 100m;",
        ] {
            assert!(c.contains(s), "missing {s}");
        }
        assert!(!nginx_conf(Path::new("/w"), Path::new("/w/www"), 8080, None).contains("/rated/"));
    }

    #[test]
    fn agent_conf_loads() {
        let dir = tempfile::tempdir().unwrap();
        let s = AgentSettings {
            chunk_size: 1 << 20,
            memory_size: 256 << 20,
            max_size: 4 << 30,
            origin: "http://127.0.0.1:9".into(),
        };
        let path = dir.path().join("a.toml");
        std::fs::write(&path, agent_conf(dir.path(), &s, 1234, 1235)).unwrap();
        let c =
            shoal_agent::config::Config::load_from_env(Some(&path), &[], Some(Default::default()))
                .unwrap();
        assert_eq!(c.proxy.listen.port(), 1234);
        assert_eq!(c.cache.memory_size.as_u64(), 256 << 20);
        assert_eq!(c.cache.chunk_size.as_u64(), 1 << 20);
        assert_eq!(c.mirrors.len(), 1);
        assert_eq!(c.cache.freshness, Duration::from_secs(3600));
    }
}
