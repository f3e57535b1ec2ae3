//! `coldbench`: a cold miss through a Shoal agent next to the same download straight
//! from nginx, its origin; 1 and N clients, the agent's RSS sampled (see
//! `shoal_benches::hit::cold` and docs/benchmarks.md). Figures are reported, never
//! asserted.
//!
//! Exit codes: 0 the run completed (targets met or not); 2 the harness failed
//! (a server did not start, a download failed or delivered wrong bytes).

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use bytesize::ByteSize;
use clap::Parser;

use shoal_benches::hit::cold::{ColdOptions, run};

#[derive(Debug, Parser)]
#[command(about = "Cold miss: curl from nginx vs curl through a Shoal agent with an empty cache")]
struct Args {
    /// The large object (the 1-client case; N clients get N objects of SIZE / N).
    #[arg(long, default_value = "2GiB")]
    size: ByteSize,
    /// Clients of the multi-client cases.
    #[arg(long, default_value_t = 16)]
    clients: usize,
    /// Interleaved rounds (each measures every case direct and through the agent).
    #[arg(long, default_value_t = 4)]
    rounds: usize,
    /// The agent's chunk size.
    #[arg(long, default_value = "1MiB")]
    chunk_size: ByteSize,
    /// The agent's memory cache.
    #[arg(long, default_value = "256MiB")]
    memory_size: ByteSize,
    /// The agent's disk quota (`cache.max_size`; default: 3 x SIZE, at least 1 GiB,
    /// room for every case). Smaller, e.g. SIZE / 4 with the 16-client case, makes the
    /// cache evict as fast as it fills, as a full cache in service does.
    #[arg(long)]
    max_size: Option<ByteSize>,
    /// The agent's `cache.fill_buffer` (default: the agent's default).
    #[arg(long)]
    fill_buffer: Option<ByteSize>,
    /// Also run N clients on the one large object (one fill, N readers).
    #[arg(long)]
    same: bool,
    /// The shoal-agent binary (default: next to this binary).
    #[arg(long)]
    agent_bin: Option<PathBuf>,
    #[arg(long, default_value = "nginx")]
    nginx: String,
    #[arg(long, default_value = "curl")]
    curl: String,
    /// Parent directory of the run's temporary directory (needs about 2 x SIZE free,
    /// plus SIZE for the agent's cache).
    #[arg(long, default_value = "/var/tmp")]
    workdir: PathBuf,
    #[arg(long)]
    keep_workdir: bool,
    /// Cold misses per origin speed (nginx, and nginx under limit_rate) for time to
    /// first byte; 0 skips it.
    #[arg(long, default_value_t = 50)]
    ttfb_samples: usize,
    /// nginx `limit_rate` per connection for the timed downloads, direct and through
    /// the agent alike (e.g. `200m`): a link-bound origin instead of loopback sendfile.
    #[arg(long)]
    origin_rate: Option<String>,
    /// Extra environment variable of the agent process, KEY=VALUE (repeatable).
    #[arg(long, value_name = "KEY=VALUE", value_parser = parse_env)]
    agent_env: Vec<(String, String)>,
    #[arg(long)]
    json: Option<PathBuf>,
    #[arg(long)]
    markdown: Option<PathBuf>,
}

fn parse_env(s: &str) -> Result<(String, String), String> {
    s.split_once('=')
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .ok_or_else(|| format!("expected KEY=VALUE, got {s:?}"))
}

fn main() -> ExitCode {
    match main_inner(Args::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("coldbench: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn main_inner(a: Args) -> Result<()> {
    let agent_bin = match a.agent_bin {
        Some(p) => p,
        None => std::env::current_exe()?
            .parent()
            .context("binary has no directory")?
            .join("shoal-agent"),
    };
    let opts = ColdOptions {
        size: a.size.as_u64(),
        clients: a.clients.max(1),
        rounds: a.rounds.max(1),
        chunk_size: a.chunk_size.as_u64(),
        memory_size: a.memory_size.as_u64(),
        max_size: a.max_size.map(|b| b.as_u64()),
        fill_buffer: a.fill_buffer.map(|b| b.as_u64()),
        same: a.same,
        agent_bin,
        nginx: a.nginx,
        curl: a.curl,
        workdir: a.workdir,
        keep_workdir: a.keep_workdir,
        agent_env: a.agent_env,
        ttfb_samples: a.ttfb_samples,
        origin_rate: a.origin_rate,
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the runtime")?;
    let report = rt.block_on(run(&opts))?;
    let md = report.markdown();
    shoal_benches::hit::write_report(&report, &md, a.markdown.as_deref(), a.json.as_deref())?;
    Ok(())
}
