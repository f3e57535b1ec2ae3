//! `shoal-agent status`: what a node is doing, from its admin API (`/ready` and
//! `/metrics`): readiness, fills in flight, peers, the origin's share of fetched
//! bytes, bytes served by source and, where the agent exports
//! `shoal_origin_fetches_total{reason}`, the most frequent reasons for going to the
//! origin. Counters are totals since the agent started, not rates.

use std::fmt;

use bytes::Bytes;
use bytesize::ByteSize;
use http::header;
use http::{Request, StatusCode};
use http_body_util::Full;

use super::{Endpoint, GetError, client};

/// Origin-fetch reasons shown.
const TOP_REASONS: usize = 5;

/// One sample of the Prometheus text format.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub name: String,
    pub labels: Vec<(String, String)>,
    pub value: f64,
}

impl Sample {
    pub fn label(&self, k: &str) -> Option<&str> {
        self.labels
            .iter()
            .find(|(n, _)| n == k)
            .map(|(_, v)| v.as_str())
    }
}

/// A node's state, as `status` prints it.
#[derive(Debug, Clone, PartialEq)]
pub struct Status {
    pub ready: bool,
    /// `shoal_fills_in_flight`, if exported.
    pub fills_in_flight: Option<f64>,
    pub peers: Option<f64>,
    /// `shoal_bytes_fetched_total` by source: (peer, origin).
    pub fetched: (f64, f64),
    /// `shoal_bytes_served_total` by source, in the order cache, peer, origin.
    pub served: [(String, f64); 3],
    /// `shoal_origin_fetches_total{reason}`, largest first; `None` when the agent
    /// does not export it.
    pub reasons: Option<Vec<(String, f64)>>,
}

impl Status {
    /// Reads the status from `/metrics` text and the `/ready` answer.
    pub fn from_metrics(text: &str, ready: bool) -> Self {
        let samples = parse(text);
        let one = |name: &str| samples.iter().find(|s| s.name == name).map(|s| s.value);
        let by = |name: &str, label: &str, v: &str| {
            samples
                .iter()
                .filter(|s| s.name == name && s.label(label) == Some(v))
                .map(|s| s.value)
                .sum::<f64>()
        };
        let served = ["cache", "peer", "origin"]
            .map(|s| (s.to_owned(), by("shoal_bytes_served_total", "source", s)));
        let fetches: Vec<&Sample> = samples
            .iter()
            .filter(|s| s.name == "shoal_origin_fetches_total")
            .collect();
        let reasons = (!fetches.is_empty()).then(|| {
            let mut r: Vec<(String, f64)> = Vec::new();
            for s in fetches {
                let reason = s.label("reason").unwrap_or("").to_owned();
                match r.iter_mut().find(|(n, _)| *n == reason) {
                    Some((_, v)) => *v += s.value,
                    None => r.push((reason, s.value)),
                }
            }
            r.retain(|(_, v)| *v > 0.0);
            r.sort_by(|a, b| b.1.total_cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
            r
        });
        Status {
            ready,
            fills_in_flight: one("shoal_fills_in_flight"),
            peers: one("shoal_peers_connected"),
            fetched: (
                by("shoal_bytes_fetched_total", "source", "peer"),
                by("shoal_bytes_fetched_total", "source", "origin"),
            ),
            served,
            reasons,
        }
    }
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = |v: Option<f64>| v.map_or_else(|| "n/a".to_owned(), |v| format!("{v}"));
        let b = |v: f64| ByteSize::b(v as u64).to_string();
        writeln!(
            f,
            "ready:           {}",
            if self.ready { "yes" } else { "no" }
        )?;
        writeln!(f, "fills in flight: {}", n(self.fills_in_flight))?;
        writeln!(f, "peers connected: {}", n(self.peers))?;
        let (peer, origin) = self.fetched;
        let share = if peer + origin > 0.0 {
            format!("{:.1}%", 100.0 * origin / (peer + origin))
        } else {
            "n/a (nothing fetched yet)".to_owned()
        };
        writeln!(
            f,
            "origin share:    {share} ({} from the origin, {} from peers)",
            b(origin),
            b(peer)
        )?;
        let served: Vec<String> = self
            .served
            .iter()
            .map(|(s, v)| format!("{s} {}", b(*v)))
            .collect();
        writeln!(f, "bytes served:    {}", served.join(", "))?;
        match &self.reasons {
            None => writeln!(
                f,
                "origin fetches by reason: n/a (not exported by this agent)"
            ),
            Some(r) if r.is_empty() => writeln!(f, "origin fetches by reason: none yet"),
            Some(r) => {
                let total: f64 = r.iter().map(|(_, v)| v).sum();
                writeln!(f, "origin fetches by reason (top {TOP_REASONS}):")?;
                for (reason, v) in r.iter().take(TOP_REASONS) {
                    writeln!(f, "  {reason:<16} {v} ({:.0}%)", 100.0 * v / total)?;
                }
                Ok(())
            }
        }
    }
}

/// Asks the admin listener `admin` for `/ready` and `/metrics`.
pub async fn status(admin: &Endpoint) -> Result<Status, GetError> {
    let ready = fetch(admin, "/ready").await?.0 == StatusCode::OK;
    let (status, text) = fetch(admin, "/metrics").await?;
    if status != StatusCode::OK {
        return Err(GetError::status(&admin.url("/metrics"), status, text));
    }
    Ok(Status::from_metrics(&text, ready))
}

async fn fetch(admin: &Endpoint, path: &str) -> Result<(StatusCode, String), GetError> {
    let url = admin.url(path);
    let req = Request::get(&url)
        .header(header::HOST, admin.authority())
        .body(Full::new(Bytes::new()))
        .map_err(|e| GetError::Usage(e.to_string()))?;
    let resp = admin.send(req).await?;
    let status = resp.status();
    let body = client::read_all(resp, 16 << 20)
        .await
        .map_err(|e| GetError::AgentDown {
            agent: url,
            reason: e,
        })?;
    Ok((status, String::from_utf8_lossy(&body).into_owned()))
}

/// The samples of a Prometheus text exposition (format 0.0.4). Comment lines and
/// lines that do not parse are skipped; timestamps are ignored.
pub fn parse(text: &str) -> Vec<Sample> {
    text.lines().filter_map(parse_line).collect()
}

fn parse_line(line: &str) -> Option<Sample> {
    let line = line.trim();
    if line.is_empty() || line.starts_with('#') {
        return None;
    }
    let name_end = line.find(|c: char| c == '{' || c.is_whitespace())?;
    let name = line[..name_end].to_owned();
    let mut rest = &line[name_end..];
    let mut labels = Vec::new();
    if let Some(r) = rest.strip_prefix('{') {
        let (l, after) = parse_labels(r)?;
        labels = l;
        rest = after;
    }
    let value = rest.split_whitespace().next()?;
    let value = match value {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        v => v.parse().ok()?,
    };
    Some(Sample {
        name,
        labels,
        value,
    })
}

/// `k="v",...}` → the labels and what follows the `}`.
fn parse_labels(mut s: &str) -> Option<(Vec<(String, String)>, &str)> {
    let mut out = Vec::new();
    loop {
        s = s.trim_start().trim_start_matches(',').trim_start();
        if let Some(after) = s.strip_prefix('}') {
            return Some((out, after));
        }
        let eq = s.find('=')?;
        let key = s[..eq].trim().to_owned();
        s = s[eq + 1..].trim_start().strip_prefix('"')?;
        let mut value = String::new();
        let mut chars = s.char_indices();
        let end = loop {
            let (i, c) = chars.next()?;
            match c {
                '\\' => match chars.next()?.1 {
                    'n' => value.push('\n'),
                    c => value.push(c),
                },
                '"' => break i,
                c => value.push(c),
            }
        };
        out.push((key, value));
        s = &s[end + 1..];
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_exposition() {
        let text = "# HELP x y\n# TYPE x counter\n\
            shoal_bytes_fetched_total{source=\"origin\"} 25\n\
            shoal_bytes_fetched_total{source=\"peer\"} 75\n\
            shoal_peers_connected 3\n\
            weird{a=\"q\\\"uo,te\",b=\"\"} 1.5 1700000000\n\
            shoal_origin_fetches_total{reason=\"no_peer\"} 2\n\
            shoal_origin_fetches_total{reason=\"cold_lease\"} 7\n\
            shoal_origin_fetches_total{reason=\"rule_pass\"} 0\n";
        let s = parse(text);
        let w = s.iter().find(|s| s.name == "weird").unwrap();
        assert_eq!(w.label("a"), Some("q\"uo,te"));
        assert_eq!(w.label("b"), Some(""));
        assert_eq!(w.value, 1.5);
        let st = Status::from_metrics(text, true);
        assert_eq!(st.fetched, (75.0, 25.0));
        assert_eq!(st.peers, Some(3.0));
        assert_eq!(st.fills_in_flight, None);
        assert_eq!(
            st.reasons,
            Some(vec![("cold_lease".into(), 7.0), ("no_peer".into(), 2.0)])
        );
        let out = st.to_string();
        assert!(out.contains("origin share:    25.0%"), "{out}");
        assert!(out.contains("cold_lease"), "{out}");
        let none = Status::from_metrics("shoal_peers_connected 0\n", false).to_string();
        assert!(none.contains("ready:           no"), "{none}");
        assert!(none.contains("by reason: n/a"), "{none}");
    }
}
