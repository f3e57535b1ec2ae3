//! The demo's figures, as a table for people and JSON for scripts.

use std::fmt::Write as _;
use std::time::Duration;

use serde::Serialize;

use super::DemoOptions;

/// One agent's outcome.
#[derive(Debug, Clone, Serialize)]
pub struct AgentResult {
    pub name: String,
    #[serde(serialize_with = "secs")]
    pub completion: Duration,
    #[serde(serialize_with = "secs")]
    pub ttfb: Duration,
    pub peer_bytes: u64,
    pub origin_bytes: u64,
    pub verified: bool,
    pub metrics_url: String,
}

/// The whole run.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub agents: usize,
    pub object_bytes: u64,
    pub chunk_bytes: u64,
    /// Body bytes the origin sent (all requests).
    pub origin_bytes: u64,
    /// Bytes agents received from each other.
    pub peer_bytes: u64,
    pub origin_ratio: f64,
    pub all_verified: bool,
    pub completion_seconds: Vec<f64>,
    pub swarm_efficiency: f64,
    pub wall_seconds: f64,
    pub per_agent: Vec<AgentResult>,
}

fn secs<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_f64(d.as_secs_f64())
}

impl Report {
    pub fn new(
        opts: &DemoOptions,
        origin_bytes: u64,
        per_agent: Vec<AgentResult>,
        wall: Duration,
    ) -> Self {
        let peer_bytes: u64 = per_agent.iter().map(|a| a.peer_bytes).sum();
        let fetched_origin: u64 = per_agent.iter().map(|a| a.origin_bytes).sum();
        let total = peer_bytes + fetched_origin;
        Self {
            agents: opts.agents,
            object_bytes: opts.size,
            chunk_bytes: opts.chunk_size,
            origin_bytes,
            peer_bytes,
            origin_ratio: if opts.size == 0 {
                0.0
            } else {
                origin_bytes as f64 / opts.size as f64
            },
            all_verified: per_agent.iter().all(|a| a.verified),
            completion_seconds: per_agent
                .iter()
                .map(|a| a.completion.as_secs_f64())
                .collect(),
            swarm_efficiency: if total == 0 {
                0.0
            } else {
                peer_bytes as f64 / total as f64
            },
            wall_seconds: wall.as_secs_f64(),
            per_agent,
        }
    }

    /// A table for a terminal.
    pub fn table(&self) -> String {
        let mib = |b: u64| b as f64 / (1024.0 * 1024.0);
        let mut s = String::new();
        let _ = writeln!(
            s,
            "Flash crowd: {} agents fetched one {:.0} MiB object ({} KiB chunks) at the same moment.\n",
            self.agents,
            mib(self.object_bytes),
            self.chunk_bytes / 1024
        );
        let _ = writeln!(
            s,
            "{:<10} {:>9} {:>9} {:>11} {:>11} {:>8}  metrics",
            "agent", "ttfb s", "done s", "peer MiB", "origin MiB", "verified"
        );
        for a in &self.per_agent {
            let _ = writeln!(
                s,
                "{:<10} {:>9.3} {:>9.3} {:>11.1} {:>11.1} {:>8}  {}",
                a.name,
                a.ttfb.as_secs_f64(),
                a.completion.as_secs_f64(),
                mib(a.peer_bytes),
                mib(a.origin_bytes),
                if a.verified { "yes" } else { "NO" },
                a.metrics_url
            );
        }
        let last = self.completion_seconds.iter().copied().fold(0.0, f64::max);
        let _ = writeln!(s);
        let _ = writeln!(
            s,
            "origin sent          {:.1} MiB = {:.3} x the object",
            mib(self.origin_bytes),
            self.origin_ratio
        );
        let _ = writeln!(s, "peers exchanged      {:.1} MiB", mib(self.peer_bytes));
        let _ = writeln!(
            s,
            "swarm efficiency     {:.3} (peer bytes / all bytes fetched)",
            self.swarm_efficiency
        );
        let _ = writeln!(s, "last agent done      {last:.3} s");
        let _ = writeln!(
            s,
            "all bytes verified   {}",
            if self.all_verified {
                "yes (BLAKE3 of every response = the object's)"
            } else {
                "NO"
            }
        );
        s
    }
}
