//! The tracker's own view of a phase, from two scrapes of its `/metrics`: how long its
//! handler took for syncs (`shoal_tracker_request_duration_seconds{endpoint="sync"}`:
//! from the parsed request head to the serialized reply, registry lock wait
//! included) and how long its expiry sweeps took
//! (`shoal_tracker_sweep_duration_seconds`; absent from trackers built before it).
//! Histogram figures are bucket bounds, not exact values.

use std::net::SocketAddr;

use anyhow::{Context, Result, ensure};
use http_body_util::BodyExt;

use crate::hit::load::{self, Target};

const SYNC_HIST: &str = "shoal_tracker_request_duration_seconds";
const SYNC_LABEL: &str = "endpoint=\"sync\"";
const SWEEP_HIST: &str = "shoal_tracker_sweep_duration_seconds";

/// See the module docs. Shares are of the phase's syncs; times in milliseconds.
#[derive(Debug, Clone, Copy, Default, serde::Serialize)]
pub struct ServerSide {
    pub syncs: u64,
    /// Share of syncs whose handler took more than 1 ms, and more than 5 ms.
    pub over_1ms: f64,
    pub over_5ms: f64,
    /// The handler's p99: the upper bound of the bucket it falls in.
    pub p99_ms_at_most: f64,
    pub sweeps: Option<u64>,
    pub sweep_total_ms: Option<f64>,
    /// The longest sweep: the upper bound of its bucket.
    pub sweep_max_ms_at_most: Option<f64>,
}

/// The text of the tracker's `/metrics` at `admin`.
pub async fn scrape(admin: SocketAddr) -> Result<String> {
    let t = Target {
        name: "tracker admin",
        addr: admin,
        uri: "/metrics".parse()?,
        host: admin.to_string(),
    };
    let mut send = load::connect(&t).await?;
    let resp = send.send_request(load::request(&t, None)?).await?;
    ensure!(
        resp.status().is_success(),
        "/metrics answered {}",
        resp.status()
    );
    let body = resp.into_body().collect().await?.to_bytes();
    String::from_utf8(body.to_vec()).context("/metrics is not UTF-8")
}

impl ServerSide {
    /// The difference between two scrapes.
    pub fn between(before: &str, after: &str) -> Self {
        let sync = delta(
            &buckets(before, SYNC_HIST, SYNC_LABEL),
            &buckets(after, SYNC_HIST, SYNC_LABEL),
        );
        let syncs = sync.last().map_or(0, |b| b.1);
        let over = |bound: f64| {
            let within = sync
                .iter()
                .find(|b| (b.0 - bound).abs() < 1e-12)
                .map_or(0, |b| b.1);
            syncs.saturating_sub(within) as f64 / syncs.max(1) as f64
        };
        let sweep_before = buckets(before, SWEEP_HIST, "");
        let sweep_after = buckets(after, SWEEP_HIST, "");
        let sweep = delta(&sweep_before, &sweep_after);
        let has_sweeps = !sweep_after.is_empty();
        let sum = |text: &str| value(text, &format!("{SWEEP_HIST}_sum")).unwrap_or(0.0);
        Self {
            syncs,
            over_1ms: over(0.001),
            over_5ms: over(0.005),
            p99_ms_at_most: quantile_bound(&sync, 0.99) * 1000.0,
            sweeps: has_sweeps.then(|| sweep.last().map_or(0, |b| b.1)),
            sweep_total_ms: has_sweeps.then(|| (sum(after) - sum(before)) * 1000.0),
            sweep_max_ms_at_most: has_sweeps.then(|| quantile_bound(&sweep, 1.0) * 1000.0),
        }
    }
}

/// The cumulative buckets `(le, count)` of histogram `name` whose labels contain
/// `label`, in exposition order (ascending `le`, `+Inf` last).
fn buckets(text: &str, name: &str, label: &str) -> Vec<(f64, u64)> {
    let prefix = format!("{name}_bucket{{");
    text.lines()
        .filter_map(|l| l.strip_prefix(&prefix))
        .filter(|l| l.contains(label))
        .filter_map(|l| {
            let le = l.split("le=\"").nth(1)?.split('"').next()?;
            let le = if le == "+Inf" {
                f64::INFINITY
            } else {
                le.parse().ok()?
            };
            let n = l.rsplit(' ').next()?.trim().parse::<f64>().ok()?;
            Some((le, n as u64))
        })
        .collect()
}

fn delta(before: &[(f64, u64)], after: &[(f64, u64)]) -> Vec<(f64, u64)> {
    after
        .iter()
        .map(|&(le, n)| {
            let was = before.iter().find(|b| b.0 == le).map_or(0, |b| b.1);
            (le, n.saturating_sub(was))
        })
        .collect()
}

/// The upper bound of the bucket holding quantile `q` (0 if empty).
fn quantile_bound(cumulative: &[(f64, u64)], q: f64) -> f64 {
    let total = cumulative.last().map_or(0, |b| b.1);
    if total == 0 {
        return 0.0;
    }
    let rank = (q * total as f64).ceil() as u64;
    cumulative
        .iter()
        .find(|b| b.1 >= rank)
        .map_or(f64::INFINITY, |b| b.0)
}

/// The value of the unlabelled sample `name`.
fn value(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse().ok())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn histogram_deltas() {
        let before = "x_bucket{endpoint=\"sync\",le=\"0.001\"} 10\n\
            x_bucket{endpoint=\"sync\",le=\"0.005\"} 10\n\
            x_bucket{endpoint=\"sync\",le=\"+Inf\"} 10\n";
        let after = "x_bucket{endpoint=\"sync\",le=\"0.001\"} 100\n\
            x_bucket{endpoint=\"sync\",le=\"0.005\"} 108\n\
            x_bucket{endpoint=\"sync\",le=\"+Inf\"} 110\n\
            x_bucket{endpoint=\"announce\",le=\"0.001\"} 5\n";
        let d = delta(
            &buckets(before, "x", SYNC_LABEL),
            &buckets(after, "x", SYNC_LABEL),
        );
        assert_eq!(d, vec![(0.001, 90), (0.005, 98), (f64::INFINITY, 100)]);
        assert_eq!(quantile_bound(&d, 0.5), 0.001);
        assert_eq!(quantile_bound(&d, 0.98), 0.005);
        assert_eq!(quantile_bound(&d, 0.99), f64::INFINITY);
    }
}
