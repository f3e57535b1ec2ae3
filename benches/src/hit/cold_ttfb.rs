//! Time to first body byte of cold misses (issue 11.5: a cold miss within the
//! origin's own time to first byte + 5 ms): the same request straight to nginx and
//! through one agent for which every request is a cold miss, alternating sample by
//! sample.
//!
//! Every sample names a URL the agent has never seen (`/ttfb-N`, symlinks to one
//! file in nginx's root, so nginx answers all of them from the page cache the same
//! way), so each is a cold miss without restarting the agent. A full `GET` is sent
//! and its whole body read (keep-alive), and the time from sending the request to
//! the first non-empty body frame is recorded. Two origin speeds: nginx at full
//! loopback speed, and nginx under `limit_rate` (`/slow/`, at most 10 samples: each
//! takes seconds; see
//! [`super::servers::nginx_conf`]), where bytes trickle in as from a distant origin
//! and a cache that waited for a whole chunk before the first byte would show it.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Instant;

use anyhow::{Context, Result, ensure};
use http::StatusCode;
use http_body_util::BodyExt;
use serde::Serialize;

use super::load::{Target, connect, request};
use super::report::percentile;

/// Bytes of the file behind every `/ttfb-N`: two default chunks.
pub const FILE_LEN: u64 = 2 << 20;

/// One origin speed's figures, milliseconds.
#[derive(Debug, Clone, Serialize)]
pub struct TtfbRow {
    pub case: String,
    pub samples: usize,
    pub direct_p50_ms: f64,
    pub direct_p99_ms: f64,
    pub agent_p50_ms: f64,
    pub agent_p99_ms: f64,
    /// Per sample, agent minus the direct request next to it.
    pub excess_p50_ms: f64,
    pub excess_p99_ms: f64,
}

/// Writes the shared file and `count` symlinks to it in `www` (nginx's root).
pub fn prepare(www: &Path, count: usize) -> Result<()> {
    let file = www.join("ttfb");
    let bytes: Vec<u8> = (0..FILE_LEN).map(|i| (i * 31 + i / 4099) as u8).collect();
    std::fs::write(&file, bytes).with_context(|| format!("writing {}", file.display()))?;
    for i in 0..count {
        let link = www.join(format!("ttfb-{i}"));
        let _ = std::fs::remove_file(&link);
        std::os::unix::fs::symlink("ttfb", &link)
            .with_context(|| format!("linking {}", link.display()))?;
    }
    Ok(())
}

/// `samples` cold misses through `agent` of `nginx`'s `{prefix}ttfb-{first + i}`,
/// each next to the same request straight to nginx.
pub async fn measure(
    case: &str,
    nginx: SocketAddr,
    agent: SocketAddr,
    prefix: &str,
    first: usize,
    samples: usize,
) -> Result<TtfbRow> {
    let mut direct = Vec::with_capacity(samples);
    let mut through = Vec::with_capacity(samples);
    for i in 0..samples {
        let path = format!("{prefix}ttfb-{}", first + i);
        let d = Target {
            name: "nginx",
            addr: nginx,
            uri: path.parse()?,
            host: nginx.to_string(),
        };
        let a = Target {
            name: "shoal",
            addr: agent,
            uri: format!("http://{nginx}{path}").parse()?,
            host: nginx.to_string(),
        };
        // Alternate who goes first; nginx's answer is from the page cache either way.
        let (x, y) = if i % 2 == 0 {
            let x = first_body_byte(&d).await?;
            (x, first_body_byte(&a).await?)
        } else {
            let y = first_body_byte(&a).await?;
            (first_body_byte(&d).await?, y)
        };
        direct.push(x);
        through.push(y);
    }
    let excess: Vec<f64> = through.iter().zip(&direct).map(|(a, d)| a - d).collect();
    let ms = |v: &[f64], p: f64| percentile(v, p) * 1e3;
    Ok(TtfbRow {
        case: case.to_owned(),
        samples,
        direct_p50_ms: ms(&direct, 50.0),
        direct_p99_ms: ms(&direct, 99.0),
        agent_p50_ms: ms(&through, 50.0),
        agent_p99_ms: ms(&through, 99.0),
        excess_p50_ms: ms(&excess, 50.0),
        excess_p99_ms: ms(&excess, 99.0),
    })
}

/// Seconds from sending a full GET of `t` (new connection, made before the clock
/// starts) to its first body byte; the whole body is read and its length checked.
async fn first_body_byte(t: &Target) -> Result<f64> {
    let mut send = connect(t).await?;
    let req = request(t, None)?;
    let t0 = Instant::now();
    let resp = send.send_request(req).await?;
    ensure!(
        resp.status() == StatusCode::OK,
        "{} answered {} to GET {}",
        t.name,
        resp.status(),
        t.uri
    );
    let mut body = resp.into_body();
    let (mut first, mut len) = (None, 0u64);
    while let Some(f) = body.frame().await {
        if let Some(d) = f?.data_ref() {
            if first.is_none() && !d.is_empty() {
                first = Some(t0.elapsed().as_secs_f64());
            }
            len += d.len() as u64;
        }
    }
    ensure!(
        len == FILE_LEN,
        "{} sent {len} of {FILE_LEN} bytes of {}",
        t.name,
        t.uri
    );
    first.with_context(|| format!("{}: empty body for {}", t.name, t.uri))
}

/// The Markdown table of `rows`.
pub fn markdown(rows: &[TtfbRow], slow_rate: &str) -> String {
    let mut s = format!(
        "\nTime to first body byte of a cold miss ({} MiB objects, each sample a URL the agent \
         has not seen, next to the same GET straight to nginx; \"slow\" is nginx with \
         `limit_rate {slow_rate}`). Target: agent ≤ origin + 5 ms.\n\n\
         | origin | samples | direct p50 / p99 | agent p50 / p99 | agent − direct p50 / p99 |\n\
         |---|---:|---:|---:|---:|\n",
        FILE_LEN >> 20
    );
    for r in rows {
        s += &format!(
            "| {} | {} | {:.2} / {:.2} ms | {:.2} / {:.2} ms | {:.2} / {:.2} ms |\n",
            r.case,
            r.samples,
            r.direct_p50_ms,
            r.direct_p99_ms,
            r.agent_p50_ms,
            r.agent_p99_ms,
            r.excess_p50_ms,
            r.excess_p99_ms
        );
    }
    s
}
