//! The agent's Prometheus metrics. Names are a contract (docs/operations.md lists them); every
//! metric is registered in a [`Registry`] passed in, never a global one, so several
//! agents can run in one process (tests, the demo).

use shoal_proto::sched::SchedError;

use crate::origin::reason::FetchReason;
use prometheus::{Gauge, Histogram, HistogramVec, IntCounter, IntCounterVec, IntGauge, Registry};
use shoal_node::metrics::Registrar;

/// Where bytes came from or went to, as the `source` label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    Cache,
    Peer,
    Origin,
}

impl Source {
    pub fn label(self) -> &'static str {
        match self {
            Source::Cache => "cache",
            Source::Peer => "peer",
            Source::Origin => "origin",
        }
    }
}

/// Every metric the agent exports. Cheap to clone (handles are `Arc`s).
#[derive(Debug, Clone)]
pub struct Metrics {
    registry: Registry,
    /// `shoal_bytes_served_total{source}`: bytes sent to local clients.
    pub bytes_served: IntCounterVec,
    /// `shoal_bytes_fetched_total{source}`: bytes received from peers or origins.
    pub bytes_fetched: IntCounterVec,
    /// `shoal_bytes_uploaded_total`: bytes served to other agents.
    pub bytes_uploaded: IntCounter,
    /// `shoal_swarm_efficiency`: peer / (peer + origin) bytes fetched since start.
    pub swarm_efficiency: Gauge,
    /// `shoal_chunk_verify_failures_total{source}`: `disk`, `peer`, `origin`.
    pub verify_failures: IntCounterVec,
    /// `shoal_requests_total{mode,status}`.
    pub requests: IntCounterVec,
    /// `shoal_request_duration_seconds{mode}`: until the last byte was sent.
    pub request_duration: HistogramVec,
    /// `shoal_time_to_first_byte_seconds{mode}`: until the first body byte was handed to
    /// the client's connection (a body without bytes: until it ended).
    pub ttfb: HistogramVec,
    pub cache_bytes: IntGauge,
    pub cache_chunks: IntGauge,
    pub cache_evictions: IntCounter,
    /// `shoal_cache_write_errors_total`: chunk writes that failed (disk full, unwritable).
    pub cache_write_errors: IntCounter,
    pub peers_connected: IntGauge,
    /// `shoal_peer_requests_total{result}`: chunk requests we made to peers.
    pub peer_requests: IntCounterVec,
    /// `shoal_uploads_refused_total`: requests answered `busy`.
    pub uploads_refused: IntCounter,
    pub tracker_errors: IntCounter,
    pub tracker_announce_duration: Histogram,
    pub ssrf_blocked: IntCounter,
    /// `shoal_origin_requests_total{kind}`: `get`, `range`, `head`, `revalidate`, `pass`.
    pub origin_requests: IntCounterVec,
    /// `shoal_origin_changed_total`: ranged origin responses refused because they are
    /// not of the version being filled (validators or `Content-Range`); each ends its fill.
    pub origin_changed: IntCounter,
    /// `shoal_client_connections_shed_total{reason}`: client connections closed to
    /// protect the others: `idle` (oldest idle shed for a new one), `pressure` (waited
    /// for a head past the pressure deadline), `full` (nothing idle to shed).
    pub clients_shed: IntCounterVec,
    /// `shoal_client_refused_total`: connections from sources outside
    /// `proxy.allow_clients` (answered 403).
    pub clients_refused: IntCounter,
    /// `shoal_tunnels`: `CONNECT` tunnels open.
    pub tunnels: IntGauge,
    /// `shoal_cache_write_skipped_total{reason}`: chunks kept in memory only, not
    /// written: `full` (quota held by pinned chunks and writes in progress),
    /// `no_space` (`ENOSPC` even after eviction), `read_only`, `unwritable`.
    pub cache_write_skipped: IntCounterVec,
    /// `shoal_cache_quota_bytes`: the effective chunk quota (configured, or less when
    /// the disk has less room).
    pub cache_quota_bytes: IntGauge,
    /// `shoal_cache_too_large_total`: responses streamed through uncached because the
    /// object is larger than the effective quota.
    pub cache_too_large: IntCounter,
    /// `shoal_cache_fill_limit_total`: cold misses streamed through uncached because
    /// `cache.max_fills` origin fills were already running.
    pub cache_fill_limit: IntCounter,
    /// `shoal_stale_served_total`: stale objects served because revalidation failed
    /// (RFC 5861 `stale-if-error`).
    pub stale_served: IntCounter,
    /// `shoal_sched_errors_total{kind}`: inputs a swarm download's scheduler refused:
    /// `id_conflict` (the tracker named a second id for a chunk: the first is kept;
    /// a changed origin or a lying publisher), `index_out_of_range`, `unknown_peer`,
    /// `unknown_request` (a late answer to a cancelled request: harmless), `layout`.
    pub sched_errors: IntCounterVec,
    /// `shoal_fills_in_flight`: object versions being filled (from the origin or the
    /// swarm) right now.
    pub fills_in_flight: IntGauge,
    /// `shoal_prefetch_total{result}`: URLs handled by `POST /v1/prefetch`: `cached`
    /// (filled, or already cached), `uncacheable` (passed through, nothing kept),
    /// `failed` (the origin or the swarm failed), `refused` (not accepted: bad URL, or
    /// a `pass` rule).
    pub prefetch: IntCounterVec,
    /// `shoal_origin_fetches_total{reason}`: every request sent to an origin, by the
    /// one [`FetchReason`] it was sent for.
    pub origin_fetches: IntCounterVec,
    /// `shoal_origin_bytes_total{reason}`: origin body bytes by the reason of their
    /// request, pass-through bytes included (which `shoal_bytes_fetched_total` does
    /// not count).
    pub origin_bytes: IntCounterVec,
    /// `shoal_registry_requests_total{kind,result}`: requests under registry mirrors.
    /// `kind`: `ping`, `manifest_tag`, `manifest_digest`, `blob`, `tags`, `referrers`,
    /// `invalid` (refused path). `result`: `cache` (cached bytes, after the registry
    /// accepted the client), `fill` (fetched and cached), `pass` (relayed uncached),
    /// `refused` (the registry refused the client: its answer relayed, no cached
    /// bytes), `invalid` (`400`), `error` (the agent or the registry failed).
    pub registry_requests: IntCounterVec,
    /// `shoal_registry_digest_mismatch_total`: registry blobs and manifests whose bytes
    /// did not hash to their digest: the response was cut, nothing was kept.
    pub registry_digest_mismatch: IntCounter,
    /// `shoal_registry_auth_checks_total{result}`: whether a client may have cached
    /// registry bytes: `remembered` (a grant within `auth_ttl`), `granted` (the
    /// registry accepted a `HEAD` with the client's credentials), `refused`.
    pub registry_auth_checks: IntCounterVec,
    /// `shoal_cache_fill_skipped_chunks_total`: chunks of origin fills handed to their
    /// clients but not written, because the fill buffer (`cache.fill_buffer`) was full
    /// while a client waited: the disk was slower than the client.
    pub cache_fill_skipped_chunks: IntCounter,
    /// `shoal_cache_fill_skipped_bytes_total`: the bytes of those chunks.
    pub cache_fill_skipped_bytes: IntCounter,
    /// `shoal_cache_fills_incomplete_total`: origin fills served in full but not
    /// recorded at their end because chunks were skipped; their gaps are filled
    /// after them (`shoal_cache_fill_gaps_total`).
    pub cache_fills_incomplete: IntCounter,
    /// `shoal_cache_fill_gaps_total{outcome}`: fills with skipped chunks, once those
    /// were written from memory or fetched again by `Range`: `recorded` (the object is
    /// cached), `failed` (a fetch or write failed: the next request fills it anew),
    /// `superseded` (another version or fill of the URL came first).
    pub cache_fill_gaps: IntCounterVec,
    /// `shoal_cache_fill_buffer_bytes`: chunk bytes queued for the disk by fills
    /// (at most `cache.fill_buffer`).
    pub cache_fill_buffer_bytes: IntGauge,
    /// `shoal_cache_reads_proved_total`: chunks read from disk and served without
    /// hashing them again, under a proof of their last verification that the file's
    /// `fstat` still matches (`cache.verify_window`; 0 when it is off).
    pub cache_reads_proved: IntCounter,
    /// `shoal_cache_read_buffer_bytes`: chunk bytes responses hold read ahead of
    /// their clients (at most `cache.read_buffer` plus one group per response).
    pub cache_read_buffer_bytes: IntGauge,
    /// `shoal_cache_read_buffer_waits_total`: chunk reads that waited for room in
    /// `cache.read_buffer` (clients slower than the agent, or many streams).
    pub cache_read_buffer_waits: IntCounter,
    /// `shoal_cache_reads_grouped_total`: chunks read from disk 64 KiB at a time,
    /// each group checked on its own, by responses with no room in
    /// `cache.read_buffer` (`store/grouped.rs`).
    pub cache_reads_grouped: IntCounter,
    /// `shoal_peer_uploads_queued_total`: peer chunk requests that found every upload
    /// slot taken and waited in the upload queue (`peer.upload_queue`).
    pub uploads_queued: IntCounter,
    /// `shoal_peer_upload_queue_wait_seconds{result}`: how long those waited, by how
    /// the wait ended: `served` (got a slot), `busy` (`peer.upload_queue_wait` passed),
    /// `cancelled` (the requester stopped the stream), `shutdown`.
    pub upload_queue_wait: HistogramVec,
}

impl Metrics {
    /// Creates and registers every metric in `registry`.
    pub fn new(registry: Registry) -> Self {
        let reg = Registrar::new(&registry);
        let counter_vec =
            |name: &str, help: &str, labels: &[&str]| reg.counter_vec(name, help, labels);
        let counter = |name: &str, help: &str| reg.counter(name, help);
        let gauge = |name: &str, help: &str| reg.gauge(name, help);
        let latency = [
            0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
            60.0, 300.0,
        ];
        let hist_vec = |name: &str, help: &str, labels: &[&str]| {
            reg.histogram_vec(name, help, labels, &latency)
        };
        let m = Self {
            bytes_served: counter_vec(
                "shoal_bytes_served_total",
                "Bytes sent to local clients, by source.",
                &["source"],
            ),
            bytes_fetched: counter_vec(
                "shoal_bytes_fetched_total",
                "Bytes received from peers or origins.",
                &["source"],
            ),
            bytes_uploaded: counter(
                "shoal_bytes_uploaded_total",
                "Bytes served to other agents.",
            ),
            swarm_efficiency: reg.float_gauge(
                "shoal_swarm_efficiency",
                "Peer bytes / (peer + origin bytes) fetched since start.",
            ),
            verify_failures: counter_vec(
                "shoal_chunk_verify_failures_total",
                "Chunks that failed BLAKE3 verification, by source.",
                &["source"],
            ),
            requests: counter_vec(
                "shoal_requests_total",
                "Client requests by rule mode and status.",
                &["mode", "status"],
            ),
            request_duration: hist_vec(
                "shoal_request_duration_seconds",
                "Client request duration.",
                &["mode"],
            ),
            ttfb: hist_vec(
                "shoal_time_to_first_byte_seconds",
                "Time until the first body byte was sent to the client (for a response without a body, until it ended).",
                &["mode"],
            ),
            cache_bytes: gauge("shoal_cache_bytes", "Bytes of chunks on disk."),
            cache_chunks: gauge("shoal_cache_chunks", "Chunks on disk."),
            cache_evictions: counter(
                "shoal_cache_evictions_total",
                "Chunks evicted to stay under quota.",
            ),
            cache_write_errors: counter(
                "shoal_cache_write_errors_total",
                "Chunk writes that failed.",
            ),
            peers_connected: gauge("shoal_peers_connected", "Live QUIC connections."),
            peer_requests: counter_vec(
                "shoal_peer_requests_total",
                "Chunk requests made to peers, by result.",
                &["result"],
            ),
            uploads_refused: counter(
                "shoal_uploads_refused_total",
                "Peer chunk requests answered busy.",
            ),
            tracker_errors: counter("shoal_tracker_errors_total", "Failed tracker requests."),
            tracker_announce_duration: reg.histogram(
                "shoal_tracker_announce_duration_seconds",
                "Tracker request duration.",
                &latency,
            ),
            ssrf_blocked: counter(
                "shoal_ssrf_blocked_total",
                "Egress refused by address policy.",
            ),
            origin_requests: counter_vec(
                "shoal_origin_requests_total",
                "Requests sent to origins, by kind.",
                &["kind"],
            ),
            origin_changed: counter(
                "shoal_origin_changed_total",
                "Ranged origin responses refused as not of the version being filled.",
            ),
            clients_shed: counter_vec(
                "shoal_client_connections_shed_total",
                "Client connections closed to protect the others, by reason.",
                &["reason"],
            ),
            clients_refused: counter(
                "shoal_client_refused_total",
                "Client connections from sources outside proxy.allow_clients.",
            ),
            tunnels: gauge("shoal_tunnels", "CONNECT tunnels open."),
            cache_write_skipped: counter_vec(
                "shoal_cache_write_skipped_total",
                "Chunks not written to disk (kept in memory only), by reason.",
                &["reason"],
            ),
            cache_quota_bytes: gauge(
                "shoal_cache_quota_bytes",
                "Effective chunk quota: configured, or less when the disk has less room.",
            ),
            cache_too_large: counter(
                "shoal_cache_too_large_total",
                "Responses streamed through uncached: larger than the effective quota.",
            ),
            cache_fill_limit: counter(
                "shoal_cache_fill_limit_total",
                "Cold misses streamed through uncached: cache.max_fills origin fills were running.",
            ),
            stale_served: counter(
                "shoal_stale_served_total",
                "Stale objects served because revalidation failed (stale-if-error).",
            ),
            sched_errors: counter_vec(
                "shoal_sched_errors_total",
                "Inputs a swarm download's scheduler refused, by kind.",
                &["kind"],
            ),
            fills_in_flight: gauge(
                "shoal_fills_in_flight",
                "Object versions being filled from the origin or the swarm.",
            ),
            prefetch: counter_vec(
                "shoal_prefetch_total",
                "URLs handled by POST /v1/prefetch, by result.",
                &["result"],
            ),
            origin_fetches: counter_vec(
                "shoal_origin_fetches_total",
                "Requests sent to origins, by the reason they were sent.",
                &["reason"],
            ),
            origin_bytes: counter_vec(
                "shoal_origin_bytes_total",
                "Origin body bytes received, by the reason of their request.",
                &["reason"],
            ),
            registry_requests: counter_vec(
                "shoal_registry_requests_total",
                "Requests under registry mirrors, by endpoint kind and result.",
                &["kind", "result"],
            ),
            registry_digest_mismatch: counter(
                "shoal_registry_digest_mismatch_total",
                "Registry blobs and manifests whose bytes did not hash to their digest.",
            ),
            registry_auth_checks: counter_vec(
                "shoal_registry_auth_checks_total",
                "Checks that a client may have cached registry bytes, by result.",
                &["result"],
            ),
            cache_fill_skipped_chunks: counter(
                "shoal_cache_fill_skipped_chunks_total",
                "Origin fill chunks served but not written: the disk was slower than the client.",
            ),
            cache_fill_skipped_bytes: counter(
                "shoal_cache_fill_skipped_bytes_total",
                "Bytes of origin fill chunks served but not written: the disk was slower than the client.",
            ),
            cache_fills_incomplete: counter(
                "shoal_cache_fills_incomplete_total",
                "Origin fills served in full but not recorded at their end because chunks were skipped.",
            ),
            cache_fill_gaps: counter_vec(
                "shoal_cache_fill_gaps_total",
                "Fills with skipped chunks after those were written or fetched again, by outcome.",
                &["outcome"],
            ),
            cache_fill_buffer_bytes: gauge(
                "shoal_cache_fill_buffer_bytes",
                "Chunk bytes queued for the disk by fills.",
            ),
            cache_reads_proved: counter(
                "shoal_cache_reads_proved_total",
                "Chunks read from disk and served under a verification proof, not re-hashed.",
            ),
            cache_read_buffer_bytes: gauge(
                "shoal_cache_read_buffer_bytes",
                "Chunk bytes responses hold read ahead of their clients.",
            ),
            cache_read_buffer_waits: counter(
                "shoal_cache_read_buffer_waits_total",
                "Chunk reads that waited for room in cache.read_buffer.",
            ),
            cache_reads_grouped: counter(
                "shoal_cache_reads_grouped_total",
                "Chunks read from disk in checked 64 KiB groups (no room in cache.read_buffer).",
            ),
            uploads_queued: counter(
                "shoal_peer_uploads_queued_total",
                "Peer chunk requests that waited in the upload queue for a slot.",
            ),
            upload_queue_wait: hist_vec(
                "shoal_peer_upload_queue_wait_seconds",
                "Time peer chunk requests waited in the upload queue, by how the wait ended.",
                &["result"],
            ),
            registry,
        };
        for r in ["idle", "pressure", "full"] {
            m.clients_shed.with_label_values(&[r]);
        }
        for s in ["cache", "peer", "origin"] {
            m.bytes_served.with_label_values(&[s]);
        }
        for s in ["peer", "origin"] {
            m.bytes_fetched.with_label_values(&[s]);
        }
        for s in ["disk", "peer", "origin"] {
            m.verify_failures.with_label_values(&[s]);
        }
        for r in ["full", "no_space", "read_only", "unwritable"] {
            m.cache_write_skipped.with_label_values(&[r]);
        }
        for k in [
            "id_conflict",
            "index_out_of_range",
            "unknown_peer",
            "unknown_request",
        ] {
            m.sched_errors.with_label_values(&[k]);
        }
        for r in ["cached", "uncacheable", "failed", "refused"] {
            m.prefetch.with_label_values(&[r]);
        }
        for o in ["recorded", "failed", "superseded"] {
            m.cache_fill_gaps.with_label_values(&[o]);
        }
        for r in FetchReason::ALL {
            m.origin_fetches.with_label_values(&[r.label()]);
            m.origin_bytes.with_label_values(&[r.label()]);
        }
        m
    }

    /// Counts one chunk (or assembled object) that failed verification, by where its
    /// bytes came from: [`Source::Cache`] is the disk (memory is not re-verified).
    pub fn verify_failed(&self, source: Source) {
        let label = match source {
            Source::Cache => "disk",
            s => s.label(),
        };
        self.verify_failures.with_label_values(&[label]).inc();
    }

    /// Counts one input a scheduler refused; see [`Metrics::sched_errors`].
    pub fn sched_error(&self, e: &SchedError) {
        let kind = match e {
            SchedError::IdConflict { .. } => "id_conflict",
            SchedError::IndexOutOfRange { .. } => "index_out_of_range",
            SchedError::UnknownPeer(_) => "unknown_peer",
            SchedError::UnknownRequest(_) => "unknown_request",
            SchedError::Layout(_) => "layout",
        };
        self.sched_errors.with_label_values(&[kind]).inc();
    }

    /// Counts `n` origin body bytes fetched into the cache for `reason` (also as
    /// `shoal_bytes_fetched_total{source="origin"}`).
    pub fn origin_fetched(&self, reason: FetchReason, n: u64) {
        self.fetched(Source::Origin, n);
        self.origin_relayed(reason, n);
    }

    /// Counts `n` origin body bytes for `reason` only (relayed, not cached).
    pub fn origin_relayed(&self, reason: FetchReason, n: u64) {
        self.origin_bytes
            .with_label_values(&[reason.label()])
            .inc_by(n);
    }

    /// Counts `n` bytes fetched from `source` and updates the efficiency gauge.
    pub fn fetched(&self, source: Source, n: u64) {
        self.bytes_fetched
            .with_label_values(&[source.label()])
            .inc_by(n);
        let peer = self.bytes_fetched.with_label_values(&["peer"]).get() as f64;
        let origin = self.bytes_fetched.with_label_values(&["origin"]).get() as f64;
        if peer + origin > 0.0 {
            self.swarm_efficiency.set(peer / (peer + origin));
        }
    }

    /// Counts `n` bytes sent to a client from `source`.
    pub fn served(&self, source: Source, n: u64) {
        self.bytes_served
            .with_label_values(&[source.label()])
            .inc_by(n);
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
mod tests {
    use super::*;

    #[test]
    fn contract_names_exported() {
        let m = Metrics::default();
        m.fetched(Source::Peer, 30);
        m.fetched(Source::Origin, 10);
        m.served(Source::Cache, 5);
        m.requests.with_label_values(&["cache", "200"]).inc();
        m.request_duration
            .with_label_values(&["cache"])
            .observe(0.1);
        m.ttfb.with_label_values(&["cache"]).observe(0.01);
        m.tracker_announce_duration.observe(0.01);
        let text = m.render();
        for name in [
            "shoal_bytes_served_total{source=\"cache\"} 5",
            "shoal_bytes_fetched_total{source=\"peer\"} 30",
            "shoal_bytes_uploaded_total",
            "shoal_swarm_efficiency 0.75",
            "shoal_chunk_verify_failures_total",
            "shoal_requests_total",
            "shoal_request_duration_seconds",
            "shoal_time_to_first_byte_seconds",
            "shoal_cache_bytes",
            "shoal_cache_chunks",
            "shoal_cache_evictions_total",
            "shoal_peers_connected",
            "shoal_tracker_errors_total",
            "shoal_tracker_announce_duration_seconds",
            "shoal_ssrf_blocked_total",
            "shoal_origin_changed_total",
            "shoal_cache_write_skipped_total{reason=\"no_space\"} 0",
            "shoal_cache_quota_bytes",
            "shoal_cache_too_large_total",
            "shoal_cache_fill_limit_total 0",
            "shoal_stale_served_total",
            "shoal_fills_in_flight 0",
            "shoal_prefetch_total{result=\"cached\"} 0",
            "shoal_origin_fetches_total{reason=\"cold_lease\"} 0",
            "shoal_origin_bytes_total{reason=\"tracker_down\"} 0",
            "shoal_registry_digest_mismatch_total 0",
            "shoal_peer_uploads_queued_total 0",
        ] {
            assert!(text.contains(name), "missing {name}\n{text}");
        }
        // Two agents in one process must not clash.
        let _other = Metrics::default();
    }

    #[test]
    fn verify_failures_and_sched_errors_by_their_source() {
        let m = Metrics::default();
        m.verify_failed(Source::Cache);
        m.verify_failed(Source::Origin);
        m.verify_failed(Source::Origin);
        let id = shoal_proto::ChunkId::of(b"a");
        m.sched_error(&SchedError::IdConflict {
            index: 1,
            known: id,
            new: shoal_proto::ChunkId::of(b"b"),
        });
        let text = m.render();
        for line in [
            "shoal_chunk_verify_failures_total{source=\"disk\"} 1",
            "shoal_chunk_verify_failures_total{source=\"origin\"} 2",
            "shoal_chunk_verify_failures_total{source=\"peer\"} 0",
            "shoal_sched_errors_total{kind=\"id_conflict\"} 1",
            "shoal_sched_errors_total{kind=\"unknown_peer\"} 0",
        ] {
            assert!(text.contains(line), "missing {line}\n{text}");
        }
    }
}
