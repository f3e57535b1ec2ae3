//! Machine-wide CPU use while a system runs, from `/proc/stat`, to tell a network-bound
//! measurement from a CPU-bound one. The machine is shared (builds of other people may
//! run at the same time), so this is the only honest validity check we have.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::{self, JoinHandle};
use std::time::{Duration, SystemTime};

/// Mean busy share at or above which a run counts as CPU-bound.
pub const SATURATED_MEAN: f64 = 0.90;
/// Share of samples at or above [`SATURATED_SAMPLE`] busy at or above which a run
/// counts as CPU-bound even if the mean is lower.
pub const SATURATED_SHARE: f64 = 0.5;
/// Busy share of one sample that counts as saturated.
pub const SATURATED_SAMPLE: f64 = 0.97;

const INTERVAL: Duration = Duration::from_millis(250);

/// Summary of the samples taken during one system's run.
#[derive(Debug, Clone, Copy, Default, PartialEq, serde::Serialize)]
pub struct CpuSummary {
    pub cores: usize,
    pub samples: usize,
    /// Mean share of all cores busy (0..1).
    pub busy_mean: f64,
    /// 90th percentile of the per-sample busy share.
    pub busy_p90: f64,
    /// Share of samples at least [`SATURATED_SAMPLE`] busy.
    pub saturated_share: f64,
    pub cpu_bound: bool,
}

/// A background sampler; [`Monitor::finish`] stops it and summarises.
#[derive(Debug)]
pub struct Monitor {
    stop: Arc<AtomicBool>,
    handle: JoinHandle<Vec<(SystemTime, f64)>>,
}

impl Monitor {
    pub fn start() -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let handle = thread::spawn(move || {
            let mut samples = Vec::new();
            let mut prev = read_stat();
            while !flag.load(Ordering::Relaxed) {
                thread::sleep(INTERVAL);
                let now = read_stat();
                if let (Some(a), Some(b)) = (prev, now) {
                    let total = b.total.saturating_sub(a.total);
                    if total > 0 {
                        let busy = b.busy.saturating_sub(a.busy) as f64 / total as f64;
                        samples.push((SystemTime::now(), busy));
                    }
                }
                prev = now;
            }
            samples
        });
        Self { stop, handle }
    }

    /// Stop sampling and summarise the samples taken between `from` and `to` (the
    /// distribution phase, without setup and teardown).
    pub fn finish(self, from: SystemTime, to: SystemTime) -> CpuSummary {
        self.stop.store(true, Ordering::Relaxed);
        let samples: Vec<f64> = self
            .handle
            .join()
            .unwrap_or_default()
            .into_iter()
            .filter(|(t, _)| *t >= from && *t <= to + INTERVAL)
            .map(|(_, s)| s)
            .collect();
        summarise(&samples, cores())
    }
}

#[derive(Debug, Clone, Copy)]
struct Stat {
    busy: u64,
    total: u64,
}

fn read_stat() -> Option<Stat> {
    let (busy, _, total) = machine_ticks()?;
    Some(Stat { busy, total })
}

/// (busy, interrupt, total) jiffies of all cores from `/proc/stat`'s `cpu` line:
/// user nice system idle iowait irq softirq steal [guest guest_nice], guest time being
/// already in user. Busy is everything but idle and iowait; interrupt (irq + softirq,
/// loopback TCP processing among others) is part of busy.
pub fn machine_ticks() -> Option<(u64, u64, u64)> {
    let text = std::fs::read_to_string("/proc/stat").ok()?;
    let line = text.lines().find(|l| l.starts_with("cpu "))?;
    let v: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|s| s.parse().ok())
        .collect();
    let total: u64 = v.iter().take(8).sum();
    let at = |i: usize| v.get(i).copied().unwrap_or(0);
    Some((total.saturating_sub(at(3) + at(4)), at(5) + at(6), total))
}

/// Number of CPUs listed in `/proc/stat`.
pub fn cores() -> usize {
    std::fs::read_to_string("/proc/stat")
        .map(|t| {
            t.lines()
                .filter(|l| l.starts_with("cpu") && !l.starts_with("cpu "))
                .count()
        })
        .unwrap_or(1)
        .max(1)
}

fn summarise(samples: &[f64], cores: usize) -> CpuSummary {
    if samples.is_empty() {
        return CpuSummary {
            cores,
            ..CpuSummary::default()
        };
    }
    let mean = samples.iter().sum::<f64>() / samples.len() as f64;
    let mut sorted = samples.to_vec();
    sorted.sort_by(f64::total_cmp);
    let p90 = sorted[((sorted.len() as f64 * 0.9).ceil() as usize).clamp(1, sorted.len()) - 1];
    let saturated =
        samples.iter().filter(|&&s| s >= SATURATED_SAMPLE).count() as f64 / samples.len() as f64;
    CpuSummary {
        cores,
        samples: samples.len(),
        busy_mean: mean,
        busy_p90: p90,
        saturated_share: saturated,
        cpu_bound: mean >= SATURATED_MEAN || saturated >= SATURATED_SHARE,
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn idle_machine_is_not_cpu_bound() {
        let s = summarise(&[0.1, 0.2, 0.3, 0.2], 2);
        assert!(!s.cpu_bound);
        assert!((s.busy_mean - 0.2).abs() < 1e-9);
        assert!((s.busy_p90 - 0.3).abs() < 1e-9);
    }

    #[test]
    fn saturated_machine_is_cpu_bound() {
        assert!(summarise(&[0.99, 0.98, 1.0, 0.5], 2).cpu_bound);
        assert!(summarise(&[0.95; 10], 2).cpu_bound);
        assert!(!summarise(&[], 2).cpu_bound);
    }

    #[test]
    fn stat_is_readable() {
        assert!(read_stat().is_some());
        assert!(cores() >= 1);
    }
}
