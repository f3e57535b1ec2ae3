//! The fleet benchmark: how fast one release reaches every node of an emulated fleet,
//! and how much of it the origin had to send, for Shoal and for its competitors
//! (every node straight from the origin; BitTorrent with opentracker + aria2c), in the
//! same run on the same topology.
//!
//! Needs root, `ip netns`, `tc tbf`, and the Debian packages nginx, aria2, opentracker,
//! mktorrent and curl (installed with apt-get if missing, unless told not to). Emulates
//! bandwidth only: no latency or loss (netem is unavailable), so RTTs are near zero.
//! Runs on one machine, so the systems compete with each other's CPU; every run
//! records machine CPU use and is flagged CPU-bound (invalid) when it saturated it.
//! See `docs/benchmarks.md` for how to run it and for results.

pub mod bittorrent;
pub mod cleanup;
pub mod clients;
pub mod cpu;
pub mod direct;
pub mod disk;
pub mod netns;
pub mod origin;
pub mod plot;
pub mod proc;
pub mod report;
pub mod scenario;
pub mod shoal;

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use anyhow::{Context, Result, bail};

use cleanup::Registry;
use netns::Fleet;
use origin::{Nginx, Object};
use proc::{Usage, children_cpu_seconds};
use report::{Report, SystemResult};
use scenario::Scenario;

/// A distribution system under test.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum System {
    Direct,
    BitTorrent,
    Shoal,
}

impl System {
    pub const ALL: [System; 3] = [System::Direct, System::BitTorrent, System::Shoal];

    pub fn name(self) -> &'static str {
        match self {
            System::Direct => "direct",
            System::BitTorrent => "bittorrent",
            System::Shoal => "shoal",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL
            .into_iter()
            .find(|sys| sys.name().eq_ignore_ascii_case(s.trim()))
            .or(match s.trim().to_ascii_lowercase().as_str() {
                "bt" | "torrent" => Some(System::BitTorrent),
                _ => None,
            })
    }

    /// (binary, Debian package) pairs this system needs besides ip, tc, curl, nginx.
    fn tools(self) -> &'static [(&'static str, &'static str)] {
        match self {
            System::Direct | System::Shoal => &[],
            System::BitTorrent => &[
                ("aria2c", "aria2"),
                ("opentracker", "opentracker"),
                ("mktorrent", "mktorrent"),
            ],
        }
    }
}

impl fmt::Display for System {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// What to run and where.
#[derive(Debug, Clone)]
pub struct Options {
    pub scenario: Scenario,
    pub systems: Vec<System>,
    /// Continue with the remaining systems after one fails.
    pub keep_going: bool,
    /// Parent of the per-run work directory (object, downloads, caches, logs).
    pub workdir: PathBuf,
    /// Leave the work directory in place (logs, configs) after the run.
    pub keep_workdir: bool,
    /// Put the work directory on a fresh ext4 image (see [`disk`]); ignored with
    /// `keep_workdir`, which needs the files to outlive the run.
    pub fresh_fs: bool,
    /// Where `shoal-agent` and `shoal-tracker` are.
    pub shoal_bin_dir: PathBuf,
    /// Install missing Debian packages with apt-get.
    pub install: bool,
    /// Per-system deadline for all clients to finish; `None` = derived from the
    /// scenario: twice the direct-download bound plus a minute for direct, and at most
    /// max(10·T_min, 120 s) for the peer-to-peer systems.
    pub timeout: Option<Duration>,
}

/// Everything a system runner needs.
#[derive(Debug)]
pub struct Ctx<'a> {
    pub fleet: &'a Fleet,
    pub registry: &'a Registry,
    pub object: &'a Object,
    pub scenario: &'a Scenario,
    /// This system's own work directory.
    pub dir: PathBuf,
    pub shoal_bin_dir: &'a Path,
    pub timeout: Duration,
}

/// What a system runner measured. Completion times count from the moment the first
/// client was started; `None` = did not complete.
#[derive(Debug, Default)]
pub struct Run {
    /// When the first client started.
    pub t0: Option<SystemTime>,
    pub spread: f64,
    pub completions: Vec<Option<f64>>,
    /// The file each node ended up with, in node order.
    pub outputs: Vec<PathBuf>,
    /// Origin payload bytes counted by the system itself (when nginx does not serve).
    pub origin_payload: Option<u64>,
    /// Resource use of the per-node long-running process (agent, aria2c).
    pub node_usage: Vec<Usage>,
    pub metrics: Option<AgentMetrics>,
    pub notes: Vec<String>,
}

/// Sums of Shoal agents' Prometheus counters over all agents.
#[derive(Debug, Default, Clone, Copy, PartialEq, serde::Serialize)]
pub struct AgentMetrics {
    pub agents_scraped: usize,
    pub fetched_origin_bytes: f64,
    pub fetched_peer_bytes: f64,
    /// Mean of `shoal_swarm_efficiency` over the agents that export it.
    pub swarm_efficiency_mean: Option<f64>,
    #[serde(skip)]
    efficiency_sum: f64,
    #[serde(skip)]
    efficiency_count: usize,
}

impl AgentMetrics {
    /// Add one agent's `/metrics` text.
    pub fn add(&mut self, text: &str) {
        self.agents_scraped += 1;
        self.fetched_origin_bytes += metric(
            text,
            "shoal_bytes_fetched_total",
            Some(("source", "origin")),
        );
        self.fetched_peer_bytes +=
            metric(text, "shoal_bytes_fetched_total", Some(("source", "peer")));
        if text
            .lines()
            .any(|l| l.starts_with("shoal_swarm_efficiency"))
        {
            self.efficiency_sum += metric(text, "shoal_swarm_efficiency", None);
            self.efficiency_count += 1;
            self.swarm_efficiency_mean = Some(self.efficiency_sum / self.efficiency_count as f64);
        }
    }
}

/// Sum of the samples of `name` (with label `k="v"` if given) in Prometheus text.
pub fn metric(text: &str, name: &str, label: Option<(&str, &str)>) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            let (metric_name, labels) = match series.split_once('{') {
                Some((n, rest)) => (n, rest),
                None => (series, ""),
            };
            if metric_name != name {
                return None;
            }
            if let Some((k, v)) = label
                && !labels.contains(&format!("{k}=\"{v}\""))
            {
                return None;
            }
            value.trim().parse::<f64>().ok()
        })
        .sum()
}

/// Make sure the tools for `systems` exist, installing Debian packages if allowed.
pub fn ensure_tools(systems: &[System], install: bool) -> Result<()> {
    let mut needed = vec![
        ("ip", "iproute2"),
        ("tc", "iproute2"),
        ("curl", "curl"),
        ("ethtool", "ethtool"),
    ];
    if !Path::new("/usr/sbin/nginx").exists() {
        needed.push(("nginx", "nginx-light"));
    }
    for s in systems {
        needed.extend_from_slice(s.tools());
    }
    let missing: Vec<&str> = needed
        .iter()
        .filter(|(bin, _)| !on_path(bin))
        .map(|&(_, pkg)| pkg)
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    if !install {
        bail!("missing Debian packages: {}", missing.join(" "));
    }
    eprintln!("fleet: installing {}", missing.join(" "));
    let apt = |args: &[&str]| {
        std::process::Command::new("apt-get")
            .args(args)
            .env("DEBIAN_FRONTEND", "noninteractive")
            .status()
            .map(|s| s.success())
            .unwrap_or(false)
    };
    let mut install_args = vec!["install", "-y", "-q"];
    install_args.extend(&missing);
    // Install; if that fails the package lists may be missing: update, then retry.
    let installed = apt(&install_args) || (apt(&["update", "-q"]) && apt(&install_args));
    if !installed {
        bail!("apt-get install {} failed", missing.join(" "));
    }
    Ok(())
}

fn on_path(bin: &str) -> bool {
    std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d.join(bin).is_file()))
        .unwrap_or(false)
        || Path::new("/usr/sbin").join(bin).is_file()
}

/// A name prefix no earlier run used: `shf-` + 6 hex digits.
pub fn run_prefix() -> String {
    let nanos = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let mix = blake3::hash(format!("{nanos}-{}", std::process::id()).as_bytes());
    format!("shf-{}", &mix.to_hex()[..6])
}

/// Build the fleet, run every selected system on it, and return the report. The
/// caller owns `registry` and must tear it down (see [`cleanup::Guard`]).
pub fn run(opts: &Options, registry: &Registry) -> Result<Report> {
    ensure_tools(&opts.systems, opts.install)?;
    let prefix = run_prefix();
    let workdir = opts.workdir.join(&prefix);
    std::fs::create_dir_all(&workdir).with_context(|| format!("creating {}", workdir.display()))?;
    registry.set_workdir(workdir.clone(), opts.keep_workdir);
    let fs_note = if opts.fresh_fs && !opts.keep_workdir {
        // Every system leaves N copies of the object (caches, downloads) before they
        // are deleted, and the www object and BitTorrent seed are there too.
        let size = 3 * opts.scenario.nodes as u64 * opts.scenario.object_bytes + (4 << 30);
        match disk::mount_fresh(&workdir, size, registry) {
            Ok(()) => None,
            Err(e) => Some(format!(
                "work directory on the existing filesystem (fresh ext4 failed: {e:#})"
            )),
        }
    } else {
        Some("work directory on the existing filesystem".to_owned())
    };
    eprintln!(
        "fleet: run {prefix}, scenario {}, work dir {}",
        opts.scenario.name,
        workdir.display()
    );

    let www = workdir.join("www");
    let object = Object::generate(&www, opts.scenario.object_bytes, &prefix)?;
    let direct_timeout = Duration::from_secs_f64(2.0 * opts.scenario.direct_bound() + 60.0);
    // A peer-to-peer system that needs more than ten times the bound has failed; do
    // not let it hold the run for as long as direct may take.
    let p2p_timeout = direct_timeout.min(Duration::from_secs_f64(
        (10.0 * opts.scenario.t_min(opts.scenario.payload_efficiency())).max(120.0),
    ));

    let mut report = Report::new(&opts.scenario);
    report.notes.extend(fs_note);
    let mut stop = false;
    for &system in &opts.systems {
        if stop {
            report.systems.push(SystemResult::skipped(system, &object));
            continue;
        }
        eprintln!("fleet: running {system}");
        // A fresh network per system, so that nothing one system left in the kernel
        // (orphaned sockets, neighbour entries) meets the next. With one network for
        // all, 2-6 of 48 Shoal agents in S4 right after BitTorrent could not reach
        // their tracker for the whole run (no neighbour entry for it, SYNs unanswered,
        // aria2c's orphaned connections to the old tracker still in LAST-ACK) and
        // fetched everything from the origin: 2.9-4.6 x F, against 1.000 x F in ten
        // Shoal-only runs.
        let fleet_prefix = format!("{prefix}{}", &system.name()[..1]);
        let fleet = Fleet::create(&fleet_prefix, &opts.scenario, registry)
            .with_context(|| format!("building the fleet for {system}"))?;
        let ctx = Ctx {
            fleet: &fleet,
            registry,
            object: &object,
            scenario: &opts.scenario,
            dir: workdir.join(system.name()),
            shoal_bin_dir: &opts.shoal_bin_dir,
            timeout: opts.timeout.unwrap_or(match system {
                System::Direct => direct_timeout,
                System::BitTorrent | System::Shoal => p2p_timeout,
            }),
        };
        let result = run_system(system, &ctx, &www);
        fleet.destroy(registry);
        eprintln!("fleet: {system}: {}", result.one_line());
        if result.error.is_some() && !opts.keep_going {
            stop = true;
        }
        report.systems.push(result);
    }
    report.derive();
    Ok(report)
}

/// Writes back dirty pages before a system starts, so that the previous system's (or
/// run's) gigabytes of writeback are not charged to this one's machine CPU.
fn settle_disk() {
    if let Err(e) = std::process::Command::new("sync").status() {
        eprintln!("fleet: sync failed: {e}");
    }
}

fn run_system(system: System, ctx: &Ctx<'_>, www: &Path) -> SystemResult {
    let mut result = SystemResult::empty(system, ctx.object);
    if let Err(e) = std::fs::create_dir_all(&ctx.dir) {
        result.error = Some(format!("creating {}: {e}", ctx.dir.display()));
        return result;
    }
    let nginx = match Nginx::start(ctx.registry, &ctx.fleet.origin, www, &ctx.dir.join("nginx")) {
        Ok(n) => n,
        Err(e) => {
            result.error = Some(format!("starting nginx: {e:#}"));
            return result;
        }
    };
    settle_disk();
    let tx0 = Fleet::tx_bytes(&ctx.fleet.origin).ok();
    let cpu0 = children_cpu_seconds();
    let monitor = cpu::Monitor::start();
    let started = SystemTime::now();
    let outcome = match system {
        System::Direct => direct::run(ctx),
        System::BitTorrent => bittorrent::run(ctx),
        System::Shoal => shoal::run(ctx),
    };
    let ended = SystemTime::now();
    let nginx_counts = nginx.finish();
    let tx1 = Fleet::tx_bytes(&ctx.fleet.origin).ok();
    let cpu1 = children_cpu_seconds();
    result.cpu_seconds = cpu1 - cpu0;
    result.wall_seconds = ended
        .duration_since(started)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0);
    result.own_cpu_share = (result.wall_seconds > 0.0)
        .then(|| result.cpu_seconds / (result.wall_seconds * cpu::cores() as f64));
    result.origin_wire_bytes = tx0.zip(tx1).map(|(a, b)| b.saturating_sub(a));
    match outcome {
        Ok(run) => {
            // The distribution phase: from the first client's start to the last
            // completion (or to the end, if some never completed).
            let from = run.t0.unwrap_or(started);
            let all_done = run.completions.iter().all(Option::is_some);
            let last = run
                .completions
                .iter()
                .flatten()
                .fold(0.0_f64, |a, &b| a.max(b));
            let to = if all_done && !run.completions.is_empty() {
                from + Duration::from_secs_f64(last)
            } else {
                ended
            };
            result.cpu = monitor.finish(from, to);
            match (run.origin_payload, &nginx_counts) {
                (Some(b), _) => {
                    result.origin_bytes = Some(b);
                    result.origin_bytes_source = "seeder upload counter".into();
                }
                (None, Ok((b, n))) => {
                    result.origin_bytes = Some(*b);
                    result.origin_requests = *n;
                    result.origin_bytes_source = "nginx access log".into();
                }
                (None, Err(e)) => result.notes.push(format!("nginx log: {e:#}")),
            }
            result.fill(run, ctx.object);
        }
        Err(e) => {
            result.cpu = monitor.finish(started, ended);
            result.error = Some(format!("{e:#}"));
        }
    }
    // Free the disk for the next system; keep logs.
    for sub in ["out", "cache"] {
        let _ = std::fs::remove_dir_all(ctx.dir.join(sub));
    }
    result
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn systems_parse() {
        assert_eq!(System::parse("BitTorrent"), Some(System::BitTorrent));
        assert_eq!(System::parse(" shoal"), Some(System::Shoal));
        assert_eq!(System::parse("bt"), Some(System::BitTorrent));
        assert_eq!(System::parse("ftp"), None);
    }

    #[test]
    fn metrics_are_summed_by_label() {
        let text = "# HELP x\n\
            shoal_bytes_fetched_total{source=\"origin\"} 100\n\
            shoal_bytes_fetched_total{source=\"peer\"} 300\n\
            shoal_swarm_efficiency 0.75\n";
        let mut m = AgentMetrics::default();
        m.add(text);
        m.add(text);
        assert_eq!(m.fetched_origin_bytes, 200.0);
        assert_eq!(m.fetched_peer_bytes, 600.0);
        assert_eq!(m.swarm_efficiency_mean, Some(0.75));
        assert_eq!(metric(text, "shoal_swarm", None), 0.0);
    }

    #[test]
    fn prefixes_differ() {
        let a = run_prefix();
        std::thread::sleep(Duration::from_millis(1));
        assert_ne!(a, run_prefix());
        assert!(a.starts_with("shf-") && a.len() == 10);
    }
}
