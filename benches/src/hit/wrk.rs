//! Cross-check with `wrk` (if installed): a C load generator that is lighter than the
//! hyper client. wrk cannot send absolute-form requests, so the agent is addressed
//! through its mirror path (`/m/o/file`), which maps to the same cached URL.

use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result, bail};

/// One wrk run's figures.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct WrkResult {
    /// Bytes per second (`Transfer/sec`, headers included, which is negligible here).
    pub bytes_per_second: f64,
    pub requests_per_second: f64,
}

/// Whether `wrk` can be run.
pub fn available() -> bool {
    Command::new("wrk")
        .arg("--version")
        .output()
        .is_ok_and(|o| !o.stdout.is_empty() || !o.stderr.is_empty())
}

/// `wrk -t THREADS -c CONNS -d SECONDS url`.
pub fn run(url: &str, threads: usize, conns: usize, duration: Duration) -> Result<WrkResult> {
    let secs = duration.as_secs().max(1).to_string();
    let out = Command::new("wrk")
        .args(["-t", &threads.to_string(), "-c", &conns.to_string()])
        .args(["-d", &format!("{secs}s"), "--timeout", "60s", url])
        .output()
        .context("running wrk")?;
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        bail!(
            "wrk {url} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    parse(&text).with_context(|| format!("unexpected wrk output:\n{text}"))
}

/// Parses wrk's summary (`Requests/sec:` and `Transfer/sec:` lines); errors if wrk
/// reports socket errors or non-2xx responses.
pub fn parse(text: &str) -> Result<WrkResult> {
    if let Some(l) = text
        .lines()
        .find(|l| l.contains("Non-2xx") || l.contains("Socket errors"))
    {
        bail!("wrk saw errors: {}", l.trim());
    }
    let field = |name: &str| {
        text.lines()
            .find_map(|l| l.trim().strip_prefix(name))
            .map(str::trim)
            .with_context(|| format!("no {name} line"))
    };
    let rps: f64 = field("Requests/sec:")?.parse()?;
    let transfer = field("Transfer/sec:")?;
    let split = transfer
        .find(|c: char| c.is_ascii_alphabetic())
        .context("no unit")?;
    let (num, unit) = transfer.split_at(split);
    let scale = match unit {
        "B" => 1.0,
        "KB" => 1024.0,
        "MB" => 1024.0 * 1024.0,
        "GB" => 1024.0 * 1024.0 * 1024.0,
        "TB" => 1024.0 * 1024.0 * 1024.0 * 1024.0,
        u => bail!("unknown unit {u:?}"),
    };
    Ok(WrkResult {
        bytes_per_second: num.trim().parse::<f64>()? * scale,
        requests_per_second: rps,
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn parses_summary() {
        let t = "Running 5s test @ http://127.0.0.1:1/file\n  1 threads and 1 connections\n\
                 Thread Stats   Avg      Stdev     Max   +/- Stdev\n\
                 Latency   500.00ms  10.00ms 600.00ms   90.00%\n\
                 10 requests in 5.00s, 5.00GB read\nRequests/sec:      2.00\nTransfer/sec:      1.50GB\n";
        let r = parse(t).unwrap();
        assert!((r.requests_per_second - 2.0).abs() < 1e-9);
        assert!((r.bytes_per_second - 1.5 * 1024.0 * 1024.0 * 1024.0).abs() < 1.0);
    }

    #[test]
    fn errors_are_reported() {
        let t = "Socket errors: connect 0, read 1, write 0, timeout 0\nRequests/sec: 1\nTransfer/sec: 1MB\n";
        assert!(parse(t).is_err());
        assert!(parse("nothing").is_err());
    }
}
