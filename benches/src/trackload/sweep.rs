//! What one expiry sweep of the tracker's registry costs with the benchmark's fleet,
//! in this process (no tracker, no network): the time a request that arrives during
//! a sweep waits for the registry lock. Timed with the defaults' TTLs: a sweep while
//! every agent is fresh (what the benchmark's phases see: they end within the 90 s
//! `peer_ttl`); sweeps of a fleet whose agents were last heard from spread evenly
//! over one `peer_ttl` (steady churn: each sweep forgets the agents that fell out of
//! the window since the last one); and a sweep when every agent has lapsed at once
//! (the worst case: a fleet that lost its tracker for longer than the TTL).

use std::fmt;
use std::time::{Duration, Instant};

use anyhow::Result;
use shoal_proto::PeerId;
use shoal_tracker::config::RegistryConfig;
use shoal_tracker::registry::Registry;

use super::{Workload, sync_request};

/// Sweeps timed per case.
const ROUNDS: usize = 20;

/// See the module docs. Times in microseconds.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Cost {
    pub agents: usize,
    /// One sync of the built registry (its ranking), for scale.
    pub sync_us: f64,
    /// Median and longest sweep with every agent fresh.
    pub fresh_median_us: f64,
    pub fresh_max_us: f64,
    /// Median and longest sweep of the steady-churn fleet, one per sweep interval.
    pub steady_median_us: f64,
    pub steady_max_us: f64,
    /// Longest sweep call, and all of them together, when every agent lapsed at
    /// once (calls repeated until the registry is empty).
    pub lapsed_max_us: f64,
    pub lapsed_total_us: f64,
    pub lapsed_calls: usize,
}

/// Builds a registry with `w`'s agents (each synced once) and times its sweeps.
pub fn cost(w: &Workload) -> Result<Cost> {
    let cfg = RegistryConfig::default();
    let ttl = cfg.peer_ttl.max(cfg.object_ttl);
    let t0 = Instant::now();
    // Agent i syncs at `t0 + i × spread`.
    let build = |spread: Duration| -> Result<Registry> {
        let mut reg = Registry::new(cfg.clone(), 1);
        for i in 0..w.agents {
            let peer: PeerId = format!("a{i}").parse()?;
            let req = sync_request(i, w, 7482);
            reg.sync(t0 + spread * i as u32, &peer, &req)?;
        }
        Ok(reg)
    };

    let spread = cfg.peer_ttl / w.agents.max(1) as u32;
    let mut reg = build(spread)?;
    let step = reg.sweep_interval();
    let mut steady: Vec<f64> = (0..ROUNDS)
        .map(|k| {
            let now = t0 + cfg.peer_ttl + step * k as u32;
            let t = Instant::now();
            reg.sweep(now);
            micros(t.elapsed())
        })
        .collect();
    steady.sort_by(|a, b| a.total_cmp(b));

    let mut reg = build(Duration::ZERO)?;
    let peer: PeerId = "a0".parse()?;
    let req = sync_request(0, w, 7482);
    let t = Instant::now();
    reg.sync(t0, &peer, &req)?;
    let sync_us = micros(t.elapsed());

    let mut fresh: Vec<f64> = (0..ROUNDS)
        .map(|k| {
            let now = t0 + Duration::from_millis(k as u64 + 1);
            let t = Instant::now();
            reg.sweep(now);
            micros(t.elapsed())
        })
        .collect();
    fresh.sort_by(|a, b| a.total_cmp(b));

    let later = t0 + ttl + Duration::from_secs(1);
    let (mut max, mut total, mut calls) = (0f64, 0f64, 0);
    // Bounded: a sweep that makes no progress must not hang the benchmark.
    while (reg.peer_count() > 0 || reg.object_count() > 0) && calls < 1_000_000 {
        let t = Instant::now();
        reg.sweep(later);
        let us = micros(t.elapsed());
        max = max.max(us);
        total += us;
        calls += 1;
    }
    Ok(Cost {
        agents: w.agents,
        sync_us,
        fresh_median_us: fresh[fresh.len() / 2],
        fresh_max_us: fresh.last().copied().unwrap_or(0.0),
        steady_median_us: steady[steady.len() / 2],
        steady_max_us: steady.last().copied().unwrap_or(0.0),
        lapsed_max_us: max,
        lapsed_total_us: total,
        lapsed_calls: calls,
    })
}

fn micros(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

impl fmt::Display for Cost {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "registry sweep with {} agents (in process): fresh median {:.0} µs, max {:.0} µs; \
             steady churn median {:.0} µs, max {:.0} µs; \
             all lapsed: longest call {:.0} µs, {} call(s), {:.0} µs in all; one sync {:.0} µs",
            self.agents,
            self.fresh_median_us,
            self.fresh_max_us,
            self.steady_median_us,
            self.steady_max_us,
            self.lapsed_max_us,
            self.lapsed_calls,
            self.lapsed_total_us,
            self.sync_us
        )
    }
}
