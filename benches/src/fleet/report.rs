//! Results: per-system figures, derived ratios, the Markdown table and the JSON file.

use std::fmt::Write as _;

use serde::Serialize;

use super::cpu::CpuSummary;
use super::origin::Object;
use super::scenario::Scenario;
use super::{AgentMetrics, Run, System};

/// One run of one scenario.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub scenario: String,
    pub nodes: usize,
    pub object_bytes: u64,
    pub origin_up_bits_per_second: u64,
    pub node_up_bits_per_second: u64,
    pub node_down_bits_per_second: u64,
    /// Kumar–Ross bound from the configured link rates.
    pub t_min_seconds: f64,
    /// The same bound from payload rates (configured × `payload_efficiency`).
    pub t_min_effective_seconds: f64,
    pub payload_efficiency: f64,
    /// Ethernet MTU of every emulated link.
    pub mtu: u16,
    /// Whether the veths ran with generic receive offload.
    pub gro: bool,
    pub cores: usize,
    pub started_unix: u64,
    pub systems: Vec<SystemResult>,
    /// Set after teardown: whether no namespace and no process was left behind.
    pub cleanup_clean: Option<bool>,
    /// About the run as a whole (e.g. which filesystem held the work directory).
    pub notes: Vec<String>,
}

/// Figures for one system. Times are seconds from the first client's start.
#[derive(Debug, Clone, Serialize)]
pub struct SystemResult {
    pub system: String,
    /// Why the system could not be measured (then most figures are empty).
    pub error: Option<String>,
    pub skipped: bool,
    pub completion_seconds: Vec<Option<f64>>,
    pub nodes_completed: usize,
    pub nodes_verified: usize,
    /// Every node completed with exactly the origin's bytes.
    pub all_verified: bool,
    pub start_spread_seconds: f64,
    pub p50_seconds: Option<f64>,
    pub p99_seconds: Option<f64>,
    /// Completion of the last node; `None` unless every node completed.
    pub last_seconds: Option<f64>,
    pub last_over_t_min: Option<f64>,
    pub last_over_t_min_effective: Option<f64>,
    /// Payload bytes the origin sent (see `origin_bytes_source`).
    pub origin_bytes: Option<u64>,
    pub origin_bytes_source: String,
    pub origin_requests: usize,
    /// Bytes the origin's interface sent, headers and all other traffic included.
    pub origin_wire_bytes: Option<u64>,
    pub object_bytes: u64,
    pub origin_over_object: Option<f64>,
    pub speedup_over_direct: Option<f64>,
    /// CPU time of every process this system ran (clients, servers, agents), setup
    /// included.
    pub cpu_seconds: f64,
    /// `cpu_seconds` per 10^9 bytes delivered to clients.
    pub cpu_seconds_per_gb: Option<f64>,
    /// Wall time of the whole system run, setup and teardown included.
    pub wall_seconds: f64,
    /// `cpu_seconds / (wall_seconds × cores)`: this system's share of the machine;
    /// the rest of `cpu.busy_mean` is someone else's (the machine is shared).
    pub own_cpu_share: Option<f64>,
    pub cpu: CpuSummary,
    /// Peak RSS of the per-node process (agent or aria2c), max and mean over nodes.
    pub peak_rss_max_bytes: Option<u64>,
    pub peak_rss_mean_bytes: Option<u64>,
    /// CPU seconds of the per-node processes alone (agents or aria2c), read just
    /// before they were stopped: the part of `cpu_seconds` that is the system itself
    /// rather than curl, nginx or the tracker.
    pub node_process_cpu_seconds: Option<f64>,
    pub agent_metrics: Option<AgentMetrics>,
    pub notes: Vec<String>,
}

impl Report {
    pub fn new(s: &Scenario) -> Self {
        Self {
            scenario: s.name.clone(),
            nodes: s.nodes,
            object_bytes: s.object_bytes,
            origin_up_bits_per_second: s.origin_up.bits_per_second(),
            node_up_bits_per_second: s.node_up.bits_per_second(),
            node_down_bits_per_second: s.node_down.bits_per_second(),
            t_min_seconds: s.t_min(1.0),
            t_min_effective_seconds: s.t_min(s.payload_efficiency()),
            payload_efficiency: s.payload_efficiency(),
            mtu: s.mtu,
            gro: s.gro,
            cores: super::cpu::cores(),
            started_unix: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0),
            systems: Vec::new(),
            cleanup_clean: None,
            notes: Vec::new(),
        }
    }

    /// Fill the ratios that need T_min or another system's result.
    pub fn derive(&mut self) {
        let direct_last = self
            .systems
            .iter()
            .find(|s| s.system == System::Direct.name())
            .and_then(|s| s.last_seconds);
        for s in &mut self.systems {
            s.last_over_t_min = s.last_seconds.map(|l| l / self.t_min_seconds);
            s.last_over_t_min_effective = s.last_seconds.map(|l| l / self.t_min_effective_seconds);
            s.speedup_over_direct = direct_last.zip(s.last_seconds).map(|(d, l)| d / l);
        }
    }

    pub fn system(&self, name: &str) -> Option<&SystemResult> {
        self.systems.iter().find(|s| s.system == name)
    }

    /// Every system that ran delivered verified bytes to every node.
    pub fn all_ok(&self) -> bool {
        self.systems
            .iter()
            .all(|s| s.error.is_none() && !s.skipped && s.all_verified)
    }

    pub fn markdown(&self) -> String {
        let mut md = String::new();
        let _ = writeln!(
            md,
            "### Scenario {}: N={}, F={} MiB, origin up {} Mbit/s, nodes up {} / down {} Mbit/s, MTU {}, GRO {}\n",
            self.scenario,
            self.nodes,
            self.object_bytes >> 20,
            self.origin_up_bits_per_second / 1_000_000,
            self.node_up_bits_per_second / 1_000_000,
            self.node_down_bits_per_second / 1_000_000,
            self.mtu,
            if self.gro { "on" } else { "off" },
        );
        let _ = writeln!(
            md,
            "T_min = {:.1} s from configured rates, {:.1} s from payload rates (x{:.3}).\n",
            self.t_min_seconds, self.t_min_effective_seconds, self.payload_efficiency
        );
        md.push_str(
            "| system | p50 s | p99 s | last s | last/T_min (cfg / eff) | origin bytes/F | speed-up vs direct | CPU s/GB | peak RSS/node MiB (max) | verified | machine CPU busy (ours) | valid |\n\
             |---|---|---|---|---|---|---|---|---|---|---|---|\n",
        );
        for s in &self.systems {
            if let Some(e) = &s.error {
                let _ = writeln!(
                    md,
                    "| {} | error: {} | | | | | | | | | | no |",
                    s.system,
                    e.lines().next().unwrap_or("").replace('|', "/")
                );
                continue;
            }
            if s.skipped {
                let _ = writeln!(md, "| {} | skipped | | | | | | | | | | |", s.system);
                continue;
            }
            let _ = writeln!(
                md,
                "| {} | {} | {} | {} | {} / {} | {} | {} | {} | {} | {}/{} | {:.0}% ({}%) | {} |",
                s.system,
                num(s.p50_seconds, 1),
                num(s.p99_seconds, 1),
                num(s.last_seconds, 1),
                num(s.last_over_t_min, 2),
                num(s.last_over_t_min_effective, 2),
                num(s.origin_over_object, 3),
                num(s.speedup_over_direct, 2),
                num(s.cpu_seconds_per_gb, 2),
                num(s.peak_rss_max_bytes.map(|b| b as f64 / 1048576.0), 0),
                s.nodes_verified,
                s.completion_seconds.len(),
                s.cpu.busy_mean * 100.0,
                num(s.own_cpu_share.map(|x| x * 100.0), 0),
                if s.cpu.cpu_bound {
                    "**CPU-bound**"
                } else {
                    "yes"
                },
            );
        }
        let mut notes = self.notes.clone();
        for s in &self.systems {
            if let Some(e) = &s.error {
                notes.push(format!("{}: error: {}", s.system, e.replace('\n', " / ")));
            }
            if s.cpu.cpu_bound {
                notes.push(format!(
                    "{}: machine CPU saturated (mean {:.0}%, {:.0}% of samples >= 97%): the figures measure CPU, not the network",
                    s.system,
                    s.cpu.busy_mean * 100.0,
                    s.cpu.saturated_share * 100.0
                ));
            }
            if let Some(c) = s.node_process_cpu_seconds {
                notes.push(format!(
                    "{}: per-node processes used {c:.1} of {:.1} CPU seconds",
                    s.system, s.cpu_seconds
                ));
            }
            if s.start_spread_seconds > 1.0 {
                notes.push(format!(
                    "{}: clients started over {:.2} s (> 1 s)",
                    s.system, s.start_spread_seconds
                ));
            }
            if let Some(m) = &s.agent_metrics {
                notes.push(format!(
                    "{}: agents fetched {:.1} MiB from the origin and {:.1} MiB from peers; mean swarm efficiency {}",
                    s.system,
                    m.fetched_origin_bytes / 1048576.0,
                    m.fetched_peer_bytes / 1048576.0,
                    num(m.swarm_efficiency_mean, 3)
                ));
            }
            for n in &s.notes {
                notes.push(format!("{}: {n}", s.system));
            }
        }
        if !notes.is_empty() {
            md.push('\n');
            for n in notes {
                let _ = writeln!(md, "- {n}");
            }
        }
        md
    }
}

fn num(v: Option<f64>, decimals: usize) -> String {
    match v {
        Some(v) => format!("{v:.decimals$}"),
        None => "-".into(),
    }
}

/// Nearest-rank percentile (`q` in 0..=1) of sorted `v`.
pub fn percentile(sorted: &[f64], q: f64) -> Option<f64> {
    if sorted.is_empty() {
        return None;
    }
    let rank = (q * sorted.len() as f64).ceil() as usize;
    Some(sorted[rank.clamp(1, sorted.len()) - 1])
}

impl SystemResult {
    pub fn empty(system: System, object: &Object) -> Self {
        Self {
            system: system.name().into(),
            error: None,
            skipped: false,
            completion_seconds: Vec::new(),
            nodes_completed: 0,
            nodes_verified: 0,
            all_verified: false,
            start_spread_seconds: 0.0,
            p50_seconds: None,
            p99_seconds: None,
            last_seconds: None,
            last_over_t_min: None,
            last_over_t_min_effective: None,
            origin_bytes: None,
            origin_bytes_source: String::new(),
            origin_requests: 0,
            origin_wire_bytes: None,
            object_bytes: object.bytes,
            origin_over_object: None,
            speedup_over_direct: None,
            cpu_seconds: 0.0,
            cpu_seconds_per_gb: None,
            wall_seconds: 0.0,
            own_cpu_share: None,
            cpu: CpuSummary::default(),
            peak_rss_max_bytes: None,
            peak_rss_mean_bytes: None,
            node_process_cpu_seconds: None,
            agent_metrics: None,
            notes: Vec::new(),
        }
    }

    pub fn skipped(system: System, object: &Object) -> Self {
        let mut s = Self::empty(system, object);
        s.skipped = true;
        s
    }

    /// Take a runner's measurements, verify every node's bytes, compute statistics.
    pub fn fill(&mut self, run: Run, object: &Object) {
        self.start_spread_seconds = run.spread;
        let verified: Vec<bool> = run
            .completions
            .iter()
            .zip(&run.outputs)
            .map(|(c, path)| c.is_some() && object.matches(path))
            .collect();
        self.nodes_completed = run.completions.iter().flatten().count();
        self.nodes_verified = verified.iter().filter(|&&v| v).count();
        self.all_verified =
            !run.completions.is_empty() && self.nodes_verified == run.completions.len();
        if self.nodes_verified < self.nodes_completed {
            self.notes.push(format!(
                "{} node(s) completed with wrong bytes",
                self.nodes_completed - self.nodes_verified
            ));
        }
        let mut times: Vec<f64> = run.completions.iter().flatten().copied().collect();
        times.sort_by(f64::total_cmp);
        let all = self.nodes_completed == run.completions.len() && !times.is_empty();
        self.p50_seconds = percentile(&times, 0.5).filter(|_| all);
        self.p99_seconds = percentile(&times, 0.99).filter(|_| all);
        self.last_seconds = times.last().copied().filter(|_| all);
        if !all {
            self.notes.push(format!(
                "{} of {} node(s) did not complete",
                run.completions.len() - self.nodes_completed,
                run.completions.len()
            ));
        }
        self.completion_seconds = run.completions;
        self.origin_over_object = self.origin_bytes.map(|b| b as f64 / object.bytes as f64);
        let moved = self.nodes_completed as f64 * object.bytes as f64 / 1e9;
        self.cpu_seconds_per_gb = (moved > 0.0).then(|| self.cpu_seconds / moved);
        let rss: Vec<u64> = run.node_usage.iter().map(|u| u.peak_rss_bytes).collect();
        self.peak_rss_max_bytes = rss.iter().copied().max();
        self.peak_rss_mean_bytes =
            (!rss.is_empty()).then(|| rss.iter().sum::<u64>() / rss.len() as u64);
        self.node_process_cpu_seconds = (!run.node_usage.is_empty())
            .then(|| run.node_usage.iter().map(|u| u.cpu_seconds).sum());
        self.agent_metrics = run.metrics;
        self.notes.extend(run.notes);
    }

    pub fn one_line(&self) -> String {
        if let Some(e) = &self.error {
            return format!("ERROR {}", e.lines().next().unwrap_or(""));
        }
        format!(
            "last {} s, origin {} x F, {}/{} verified, CPU {:.1} s, machine busy {:.0}%{}",
            num(self.last_seconds, 1),
            num(self.origin_over_object, 3),
            self.nodes_verified,
            self.completion_seconds.len(),
            self.cpu_seconds,
            self.cpu.busy_mean * 100.0,
            if self.cpu.cpu_bound {
                " (CPU-bound)"
            } else {
                ""
            }
        )
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_nearest_rank() {
        let v: Vec<f64> = (1..=16).map(f64::from).collect();
        assert_eq!(percentile(&v, 0.5), Some(8.0));
        assert_eq!(percentile(&v, 0.99), Some(16.0));
        assert_eq!(percentile(&[], 0.5), None);
    }

    #[test]
    fn ratios_are_derived_and_json_has_contract_keys() {
        let dir = tempfile::tempdir().unwrap();
        let object = Object::generate(dir.path(), 1000, "x").unwrap();
        let scenario = Scenario::named("quick").unwrap();
        let mut report = Report::new(&scenario);
        let mut direct = SystemResult::empty(System::Direct, &object);
        direct.last_seconds = Some(20.0);
        let mut shoal = SystemResult::empty(System::Shoal, &object);
        let copy = dir.path().join("copy");
        std::fs::copy(&object.path, &copy).unwrap();
        shoal.origin_bytes = Some(1000);
        shoal.fill(
            Run {
                completions: vec![Some(4.0), Some(5.0)],
                outputs: vec![copy.clone(), copy],
                ..Run::default()
            },
            &object,
        );
        report.systems = vec![direct, shoal];
        report.derive();
        let s = report.system("shoal").unwrap();
        assert!(s.all_verified);
        assert_eq!(s.last_seconds, Some(5.0));
        assert_eq!(s.speedup_over_direct, Some(4.0));
        assert_eq!(s.origin_over_object, Some(1.0));
        let json: serde_json::Value = serde_json::to_value(&report).unwrap();
        assert_eq!(json["scenario"], "quick");
        assert!(json["t_min_seconds"].as_f64().unwrap() > 0.0);
        for key in [
            "last_seconds",
            "origin_bytes",
            "object_bytes",
            "all_verified",
        ] {
            assert!(json["systems"][1].get(key).is_some(), "{key}");
        }
        assert!(report.markdown().contains("| shoal |"));
    }

    #[test]
    fn a_missing_node_means_no_last_time() {
        let dir = tempfile::tempdir().unwrap();
        let object = Object::generate(dir.path(), 10, "x").unwrap();
        let mut s = SystemResult::empty(System::Direct, &object);
        s.fill(
            Run {
                completions: vec![Some(1.0), None],
                outputs: vec![object.path.clone(), object.path.clone()],
                ..Run::default()
            },
            &object,
        );
        assert!(!s.all_verified);
        assert_eq!(s.last_seconds, None);
        assert_eq!(s.nodes_verified, 1);
    }
}
