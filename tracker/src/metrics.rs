//! The tracker's Prometheus metrics. Names are a contract (`docs/tracker-api.md`);
//! every metric is registered in a [`Registry`] passed in, never a global one, so
//! several trackers can run in one process (tests, the demo).

use prometheus::{Histogram, HistogramVec, IntCounter, IntCounterVec, IntGauge, Registry};
use shoal_node::metrics::Registrar;

use crate::registry::Events;

/// Why a request or connection was refused, as the `reason` label of
/// `shoal_tracker_rejected_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reject {
    /// The announced `peer_addr` is neither the source IP nor an IP SAN (403).
    Spoofed,
    /// Over the per-agent request rate (429).
    RateLimited,
    /// Unparsable JSON or an invalid field (400).
    BadRequest,
    /// Body over `limits.max_body_size` (413).
    TooLarge,
    /// Unknown path or method (404/405).
    NotFound,
    /// TLS handshake failed or timed out (no client certificate, wrong CA, …).
    Handshake,
    /// Closed at accept: `limits.max_connections` or `limits.max_handshakes` reached.
    Shed,
    /// Closed at accept: `limits.max_connections_per_source` reached for its IP.
    PerSource,
    /// The request body did not arrive within `limits.body_timeout` (408).
    BodyTimeout,
}

impl Reject {
    pub fn label(self) -> &'static str {
        match self {
            Reject::Spoofed => "spoofed",
            Reject::RateLimited => "rate_limited",
            Reject::BadRequest => "bad_request",
            Reject::TooLarge => "too_large",
            Reject::NotFound => "not_found",
            Reject::Handshake => "handshake",
            Reject::Shed => "shed",
            Reject::PerSource => "per_source",
            Reject::BodyTimeout => "body_timeout",
        }
    }

    const ALL: [Reject; 9] = [
        Reject::Spoofed,
        Reject::RateLimited,
        Reject::BadRequest,
        Reject::TooLarge,
        Reject::NotFound,
        Reject::Handshake,
        Reject::Shed,
        Reject::PerSource,
        Reject::BodyTimeout,
    ];
}

/// Every metric the tracker exports. Cheap to clone (handles are `Arc`s).
#[derive(Debug, Clone)]
pub struct Metrics {
    registry: Registry,
    /// `shoal_tracker_announces_total`: announce calls answered 200.
    pub announces: IntCounter,
    /// `shoal_tracker_syncs_total`: sync calls answered 200.
    pub syncs: IntCounter,
    /// `shoal_tracker_objects`: object versions known.
    pub objects: IntGauge,
    /// `shoal_tracker_peers`: agents known.
    pub peers: IntGauge,
    pub leases_granted: IntCounter,
    /// `shoal_tracker_leases_expired_total`: leases that lapsed unfulfilled.
    pub leases_expired: IntCounter,
    /// `shoal_tracker_leases_released_total`: leases their holder gave back.
    pub leases_released: IntCounter,
    /// `shoal_tracker_conflicts_total`: chunk ids or layouts contradicting the first.
    pub conflicts: IntCounter,
    /// `shoal_tracker_publishes_refused_total`: chunk ids ignored because their agent
    /// was over `registry.max_published_per_agent`.
    pub publishes_refused: IntCounter,
    /// `shoal_tracker_rejected_total{reason}`: see [`Reject`].
    pub rejected: IntCounterVec,
    /// `shoal_tracker_request_duration_seconds{endpoint}`: `sync`, `announce`, `other`.
    pub request_duration: HistogramVec,
    /// `shoal_tracker_sweep_duration_seconds`: one expiry sweep step, registry lock
    /// held (requests arriving meanwhile wait for it).
    pub sweep_duration: Histogram,
}

impl Metrics {
    /// Creates and registers every metric in `registry`.
    pub fn new(registry: Registry) -> Self {
        let reg = Registrar::new(&registry);
        let counter = |name: &str, help: &str| reg.counter(name, help);
        let gauge = |name: &str, help: &str| reg.gauge(name, help);
        let buckets = vec![
            0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
        ];
        let m = Self {
            announces: counter("shoal_tracker_announces_total", "Announce calls answered."),
            syncs: counter("shoal_tracker_syncs_total", "Sync calls answered."),
            objects: gauge("shoal_tracker_objects", "Object versions known."),
            peers: gauge("shoal_tracker_peers", "Agents known."),
            leases_granted: counter(
                "shoal_tracker_leases_granted_total",
                "Origin leases granted.",
            ),
            leases_expired: counter(
                "shoal_tracker_leases_expired_total",
                "Origin leases that lapsed before their chunk was announced.",
            ),
            leases_released: counter(
                "shoal_tracker_leases_released_total",
                "Origin leases given back by their holder (its origin fetches kept failing).",
            ),
            conflicts: counter(
                "shoal_tracker_conflicts_total",
                "Chunk ids or layouts that contradicted the first recorded.",
            ),
            publishes_refused: counter(
                "shoal_tracker_publishes_refused_total",
                "Published chunk ids ignored: the agent was over its publish budget.",
            ),
            rejected: reg.counter_vec(
                "shoal_tracker_rejected_total",
                "Requests and connections refused, by reason.",
                &["reason"],
            ),
            request_duration: reg.histogram_vec(
                "shoal_tracker_request_duration_seconds",
                "Time to answer an agent's request, by endpoint.",
                &["endpoint"],
                &buckets,
            ),
            sweep_duration: reg.histogram(
                "shoal_tracker_sweep_duration_seconds",
                "Time one expiry sweep step held the registry lock.",
                &[
                    0.00001, 0.000025, 0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005,
                    0.01, 0.025, 0.05, 0.1,
                ],
            ),
            registry,
        };
        for r in Reject::ALL {
            m.rejected.with_label_values(&[r.label()]);
        }
        m
    }

    /// Counts one refusal.
    pub fn reject(&self, why: Reject) {
        self.rejected.with_label_values(&[why.label()]).inc();
    }

    /// Adds a registry's drained events and sets the gauges.
    pub fn record(&self, ev: &Events, objects: usize, peers: usize) {
        self.leases_granted.inc_by(ev.leases_granted);
        self.leases_expired.inc_by(ev.leases_expired);
        self.leases_released.inc_by(ev.leases_released);
        self.conflicts.inc_by(ev.conflicts);
        self.publishes_refused.inc_by(ev.publishes_refused);
        self.objects.set(objects as i64);
        self.peers.set(peers as i64);
    }

    /// Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        shoal_node::metrics::render(&self.registry)
    }

    pub fn registry(&self) -> &Registry {
        &self.registry
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new(Registry::new())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn contract_names_exported() {
        let m = Metrics::default();
        m.announces.inc();
        m.syncs.inc();
        m.reject(Reject::Spoofed);
        m.record(
            &Events {
                leases_granted: 3,
                leases_expired: 1,
                leases_released: 7,
                conflicts: 2,
                conflict_log: Vec::new(),
                publishes_refused: 6,
            },
            4,
            5,
        );
        m.request_duration
            .with_label_values(&["sync"])
            .observe(0.001);
        m.sweep_duration.observe(0.0001);
        let text = m.render();
        for name in [
            "shoal_tracker_announces_total 1",
            "shoal_tracker_syncs_total 1",
            "shoal_tracker_objects 4",
            "shoal_tracker_peers 5",
            "shoal_tracker_leases_granted_total 3",
            "shoal_tracker_leases_expired_total 1",
            "shoal_tracker_leases_released_total 7",
            "shoal_tracker_conflicts_total 2",
            "shoal_tracker_publishes_refused_total 6",
            "shoal_tracker_rejected_total{reason=\"spoofed\"} 1",
            "shoal_tracker_rejected_total{reason=\"rate_limited\"} 0",
            "shoal_tracker_request_duration_seconds_bucket{endpoint=\"sync\"",
            "shoal_tracker_sweep_duration_seconds_count 1",
        ] {
            assert!(text.contains(name), "missing {name}\n{text}");
        }
        let _other = Metrics::default();
    }
}
