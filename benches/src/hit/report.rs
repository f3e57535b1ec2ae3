//! Figures of a hit benchmark run: raw per-round measurements, their medians, the
//! shoal/nginx ratios, time to first byte, and the Markdown rendering.

use std::fmt::Write as _;

use serde::Serialize;

use super::wrk::WrkResult;

/// Targets from the issue (reported, not asserted).
pub const TARGET_SINGLE_GBPS: f64 = 1.5;
pub const TARGET_RATIO: f64 = 0.8;
pub const TARGET_TTFB_MS: f64 = 5.0;

/// One server, one mode, one round.
#[derive(Debug, Clone, Serialize)]
pub struct Measurement {
    pub server: String,
    pub streams: usize,
    pub round: usize,
    pub bytes: u64,
    pub seconds: f64,
    pub complete_responses: u64,
    /// 10^9 bytes per second.
    pub gbps: f64,
    /// CPU seconds of the server's processes during the window.
    pub server_cpu_seconds: Option<f64>,
    /// CPU seconds of this benchmark process (the load generator) during the window.
    pub client_cpu_seconds: f64,
    /// Share of all cores busy during the window (whole machine, 0..1).
    pub machine_busy: f64,
    /// Share of all cores used by processes other than server and load generator
    /// (other people's builds on a shared machine), without interrupt time, 0..1.
    pub other_busy: f64,
}

/// Medians over rounds for one server and mode.
#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    pub server: String,
    pub streams: usize,
    pub rounds: usize,
    pub gbps_median: f64,
    pub gbps_min: f64,
    pub gbps_max: f64,
    /// Shoal's median over nginx's median, same mode (shoal rows only).
    pub ratio_to_nginx: Option<f64>,
    /// Shoal's median over the baseline server's (`bound`), same mode (shoal rows of
    /// runs with a baseline only).
    pub ratio_to_bound: Option<f64>,
    pub server_cpu_seconds_per_gb: Option<f64>,
    pub client_cpu_seconds_per_gb: f64,
    pub other_busy_median: f64,
}

/// Time to first byte of a hit, `Range: bytes=0-0` on a keep-alive connection.
#[derive(Debug, Clone, Serialize)]
pub struct Ttfb {
    pub server: String,
    pub samples: usize,
    pub first_byte_p50_ms: f64,
    pub first_byte_p99_ms: f64,
    pub first_byte_max_ms: f64,
    pub head_p50_ms: f64,
}

/// One wrk cross-check row.
#[derive(Debug, Clone, Serialize)]
pub struct WrkRow {
    pub server: String,
    pub threads: usize,
    pub connections: usize,
    pub url: String,
    pub result: Option<WrkResult>,
    pub error: Option<String>,
}

/// The whole run.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub size_bytes: u64,
    pub chunk_size_bytes: u64,
    pub memory_size_bytes: u64,
    /// `memory-hot` (the memory cache holds the whole file), `disk` (memory cache
    /// off: every chunk read from a file and BLAKE3-verified) or `partial`.
    pub memory_mode: String,
    pub streams: usize,
    pub duration_seconds: f64,
    pub rounds: usize,
    pub agent_process: String,
    pub nginx_version: String,
    pub cores: usize,
    pub summaries: Vec<Summary>,
    pub ttfb: Vec<Ttfb>,
    pub wrk: Vec<WrkRow>,
    pub measurements: Vec<Measurement>,
    /// Requests the origin saw during the measurements (0: every response was a hit).
    pub origin_requests_during_run: u64,
    pub agent_peak_rss_bytes: Option<u64>,
    pub notes: Vec<String>,
}

/// Median (mean of the middle two for even lengths); 0 for an empty slice.
pub fn median(v: &[f64]) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    let n = s.len();
    if n % 2 == 1 {
        s[n / 2]
    } else {
        (s[n / 2 - 1] + s[n / 2]) / 2.0
    }
}

/// Nearest-rank percentile `p` (0..=100); 0 for an empty slice.
pub fn percentile(v: &[f64], p: f64) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    let rank = ((p / 100.0) * s.len() as f64).ceil() as usize;
    s[rank.clamp(1, s.len()) - 1]
}

/// Medians per (server, streams), in first-seen order, with shoal/nginx ratios.
pub fn summarise(ms: &[Measurement]) -> Vec<Summary> {
    let mut keys: Vec<(String, usize)> = Vec::new();
    for m in ms {
        let k = (m.server.clone(), m.streams);
        if !keys.contains(&k) {
            keys.push(k);
        }
    }
    let mut out: Vec<Summary> = keys
        .into_iter()
        .map(|(server, streams)| {
            let rows: Vec<&Measurement> = ms
                .iter()
                .filter(|m| m.server == server && m.streams == streams)
                .collect();
            let g: Vec<f64> = rows.iter().map(|m| m.gbps).collect();
            let per_gb = |cpu: f64, m: &Measurement| cpu / (m.bytes.max(1) as f64 / 1e9);
            let server_cpu: Option<Vec<f64>> = rows
                .iter()
                .map(|m| m.server_cpu_seconds.map(|c| per_gb(c, m)))
                .collect();
            let client_cpu: Vec<f64> = rows
                .iter()
                .map(|m| per_gb(m.client_cpu_seconds, m))
                .collect();
            let other: Vec<f64> = rows.iter().map(|m| m.other_busy).collect();
            Summary {
                rounds: rows.len(),
                gbps_median: median(&g),
                gbps_min: g.iter().copied().fold(f64::INFINITY, f64::min),
                gbps_max: g.iter().copied().fold(0.0, f64::max),
                ratio_to_nginx: None,
                ratio_to_bound: None,
                server_cpu_seconds_per_gb: server_cpu.map(|v| median(&v)),
                client_cpu_seconds_per_gb: median(&client_cpu),
                other_busy_median: median(&other),
                server,
                streams,
            }
        })
        .collect();
    let nginx: Vec<(usize, f64)> = out
        .iter()
        .filter(|s| s.server == "nginx")
        .map(|s| (s.streams, s.gbps_median))
        .collect();
    let bound: Vec<(usize, f64)> = out
        .iter()
        .filter(|s| s.server == "bound")
        .map(|s| (s.streams, s.gbps_median))
        .collect();
    let ratio = |base: &[(usize, f64)], s: &Summary| {
        base.iter()
            .find(|(n, g)| *n == s.streams && *g > 0.0)
            .map(|(_, g)| s.gbps_median / g)
    };
    for s in out.iter_mut().filter(|s| s.server != "nginx") {
        s.ratio_to_nginx = ratio(&nginx, s);
        if s.server == "shoal" {
            s.ratio_to_bound = ratio(&bound, s);
        }
    }
    out
}

/// TTFB figures from latencies in seconds.
pub fn ttfb(server: &str, first_byte: &[f64], head: &[f64]) -> Ttfb {
    let ms = |v: f64| v * 1e3;
    Ttfb {
        server: server.to_owned(),
        samples: first_byte.len(),
        first_byte_p50_ms: ms(percentile(first_byte, 50.0)),
        first_byte_p99_ms: ms(percentile(first_byte, 99.0)),
        first_byte_max_ms: ms(first_byte.iter().copied().fold(0.0, f64::max)),
        head_p50_ms: ms(percentile(head, 50.0)),
    }
}

fn mib(b: u64) -> String {
    if b >= 1 << 30 && b.is_multiple_of(1 << 30) {
        format!("{} GiB", b >> 30)
    } else {
        format!("{} MiB", b as f64 / (1 << 20) as f64)
    }
}

fn yes(ok: bool) -> &'static str {
    if ok { "met" } else { "NOT met" }
}

impl Report {
    /// The Markdown tables and notes.
    pub fn markdown(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(
            s,
            "### {} file, {} chunks, memory cache {} ({})\n",
            mib(self.size_bytes),
            mib(self.chunk_size_bytes),
            mib(self.memory_size_bytes),
            self.memory_mode
        );
        let _ = writeln!(
            s,
            "Throughput: median of {} interleaved rounds of {:.0} s per server and mode; \
             GB/s = 10^9 bytes/s; CPU in seconds per GB served.\n",
            self.rounds, self.duration_seconds
        );
        s.push_str(
            "| server | streams | GB/s (median) | min – max | ÷ nginx | shoal ÷ bound | server CPU s/GB | load-gen CPU s/GB | other load |\n\
             |---|---:|---:|---:|---:|---:|---:|---:|---:|\n",
        );
        for m in &self.summaries {
            let _ = writeln!(
                s,
                "| {} | {} | {:.2} | {:.2} – {:.2} | {} | {} | {} | {:.2} | {:.0} % |",
                m.server,
                m.streams,
                m.gbps_median / 1e9,
                m.gbps_min / 1e9,
                m.gbps_max / 1e9,
                m.ratio_to_nginx
                    .map(|r| format!("{r:.2}x"))
                    .unwrap_or_default(),
                m.ratio_to_bound
                    .map(|r| format!("{r:.2}x"))
                    .unwrap_or_default(),
                m.server_cpu_seconds_per_gb
                    .map(|c| format!("{c:.2}"))
                    .unwrap_or_else(|| "–".into()),
                m.client_cpu_seconds_per_gb,
                m.other_busy_median * 100.0
            );
        }
        if let Some(t) = self.ttfb.first() {
            let _ = writeln!(
                s,
                "\nTime to first byte of a hit (`Range: bytes=0-0`, keep-alive, {} requests per server, alternating):\n",
                t.samples
            );
        }
        s.push_str(
            "| server | first byte p50 | p99 | max | head p50 |\n|---|---:|---:|---:|---:|\n",
        );
        for t in &self.ttfb {
            let _ = writeln!(
                s,
                "| {} | {:.3} ms | {:.3} ms | {:.3} ms | {:.3} ms |",
                t.server,
                t.first_byte_p50_ms,
                t.first_byte_p99_ms,
                t.first_byte_max_ms,
                t.head_p50_ms
            );
        }
        if !self.wrk.is_empty() {
            s.push_str(
                "\nCross-check with wrk (one run each; shoal through its mirror path). wrk \
                 reads 8 KiB per read() call, so with large bodies the client is the \
                 bottleneck: compare the two servers, not the absolute figures.\n\n",
            );
            s.push_str("| server | wrk | GB/s | req/s |\n|---|---|---:|---:|\n");
            for w in &self.wrk {
                let (g, r) = match (&w.result, &w.error) {
                    (Some(r), _) => (
                        format!("{:.2}", r.bytes_per_second / 1e9),
                        format!("{:.2}", r.requests_per_second),
                    ),
                    (None, Some(e)) => (format!("error: {e}"), String::new()),
                    _ => (String::new(), String::new()),
                };
                let _ = writeln!(
                    s,
                    "| {} | -t{} -c{} | {g} | {r} |",
                    w.server, w.threads, w.connections
                );
            }
        }
        s.push('\n');
        let single = self
            .summaries
            .iter()
            .find(|m| m.server == "shoal" && m.streams == 1);
        if let Some(m) = single {
            let g = m.gbps_median / 1e9;
            let r = m.ratio_to_nginx.unwrap_or(0.0);
            let _ = writeln!(
                s,
                "Targets: one stream ≥ {TARGET_SINGLE_GBPS} GB/s: {g:.2} ({}); ≥ {TARGET_RATIO}x nginx: {r:.2}x ({}).",
                yes(g >= TARGET_SINGLE_GBPS),
                yes(r >= TARGET_RATIO)
            );
        }
        if let Some(t) = self.ttfb.iter().find(|t| t.server == "shoal") {
            let _ = writeln!(
                s,
                "Time to first byte < {TARGET_TTFB_MS} ms: p50 {:.3} ms, p99 {:.3} ms ({}).",
                t.first_byte_p50_ms,
                t.first_byte_p99_ms,
                yes(t.first_byte_p99_ms < TARGET_TTFB_MS)
            );
        }
        let _ = writeln!(
            s,
            "Origin requests during the measurements: {} (0 = every response was a cache hit).",
            self.origin_requests_during_run
        );
        let _ = writeln!(
            s,
            "Agent: {}. nginx: {}. Cores: {}.",
            self.agent_process, self.nginx_version, self.cores
        );
        for n in &self.notes {
            let _ = writeln!(s, "- {n}");
        }
        s
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    fn m(server: &str, streams: usize, gbps: f64) -> Measurement {
        Measurement {
            server: server.into(),
            streams,
            round: 0,
            bytes: (gbps * 1e9) as u64,
            seconds: 1.0,
            complete_responses: 1,
            gbps,
            server_cpu_seconds: Some(0.5),
            client_cpu_seconds: 0.25,
            machine_busy: 0.5,
            other_busy: 0.1,
        }
    }

    #[test]
    fn medians_and_percentiles() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), 2.5);
        assert_eq!(median(&[]), 0.0);
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&v, 50.0), 50.0);
        assert_eq!(percentile(&v, 99.0), 99.0);
        assert_eq!(percentile(&v, 100.0), 100.0);
        assert_eq!(percentile(&[7.0], 99.0), 7.0);
    }

    #[test]
    fn ratios_are_per_mode() {
        let ms = vec![
            m("nginx", 1, 2.0e9),
            m("shoal", 1, 1.0e9),
            m("nginx", 1, 4.0e9),
            m("shoal", 1, 3.0e9),
            m("nginx", 16, 4.0e9),
            m("shoal", 16, 2.0e9),
        ];
        let s = summarise(&ms);
        assert_eq!(s.len(), 4);
        let shoal1 = s
            .iter()
            .find(|x| x.server == "shoal" && x.streams == 1)
            .unwrap();
        assert_eq!(shoal1.rounds, 2);
        assert!((shoal1.ratio_to_nginx.unwrap() - 2.0 / 3.0).abs() < 1e-9);
        let shoal16 = s
            .iter()
            .find(|x| x.server == "shoal" && x.streams == 16)
            .unwrap();
        assert!((shoal16.ratio_to_nginx.unwrap() - 0.5).abs() < 1e-9);
        assert!(
            s.iter()
                .filter(|x| x.server == "nginx")
                .all(|x| x.ratio_to_nginx.is_none())
        );
        // 0.5 CPU seconds for 1 GB.
        let nginx1 = s
            .iter()
            .find(|x| x.server == "nginx" && x.streams == 1)
            .unwrap();
        assert!(nginx1.server_cpu_seconds_per_gb.unwrap() > 0.0);
        assert!(
            s.iter().all(|x| x.ratio_to_bound.is_none()),
            "no baseline run"
        );
    }

    #[test]
    fn shoal_rows_get_a_ratio_to_the_baseline() {
        let ms = vec![
            m("nginx", 1, 4.0e9),
            m("shoal", 1, 2.0e9),
            m("bound", 1, 2.5e9),
        ];
        let s = summarise(&ms);
        let get = |name: &str| s.iter().find(|x| x.server == name).unwrap();
        assert!((get("shoal").ratio_to_bound.unwrap() - 0.8).abs() < 1e-9);
        assert!((get("bound").ratio_to_nginx.unwrap() - 0.625).abs() < 1e-9);
        assert!(get("bound").ratio_to_bound.is_none());
        assert!(get("nginx").ratio_to_bound.is_none());
    }
}
