//! `hitbench`: cache-hit serving throughput and time to first byte of a Shoal agent
//! next to nginx serving the same file (see `shoal_benches::hit` and
//! docs/benchmarks.md). Figures are reported, never asserted.
//!
//! Exit codes: 0 the run completed (targets met or not); 2 the harness failed
//! (a server did not start, served wrong bytes, or a request failed).

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result};
use bytesize::ByteSize;
use clap::Parser;

use shoal_benches::hit::{Options, run};

#[derive(Debug, Parser)]
#[command(about = "Cache-hit serving: Shoal agent vs nginx (sendfile) on loopback")]
struct Args {
    /// File size (e.g. 1GiB, 256MiB).
    #[arg(long, default_value = "1GiB")]
    size: ByteSize,
    /// Concurrent streams of the multi-stream mode.
    #[arg(long, default_value_t = 16)]
    streams: usize,
    /// Seconds per measurement window.
    #[arg(long, default_value_t = 5)]
    duration: u64,
    /// Interleaved rounds (each measures every server in every mode once).
    #[arg(long, default_value_t = 5)]
    rounds: usize,
    /// The agent's chunk size.
    #[arg(long, default_value = "1MiB")]
    chunk_size: ByteSize,
    /// The agent's memory cache (0 = off: every chunk read from disk and verified).
    #[arg(long, default_value = "256MiB")]
    memory_size: ByteSize,
    /// Range requests per server for time to first byte.
    #[arg(long, default_value_t = 200)]
    ttfb_samples: usize,
    /// The shoal-agent binary (default: next to this binary).
    #[arg(long)]
    agent_bin: Option<PathBuf>,
    /// The nginx binary.
    #[arg(long, default_value = "nginx")]
    nginx: String,
    /// Parent directory of the run's temporary directory.
    #[arg(long, default_value = "/var/tmp")]
    workdir: PathBuf,
    /// Keep the work directory (configs, logs, the file, the cache).
    #[arg(long)]
    keep_workdir: bool,
    /// Skip the wrk cross-check.
    #[arg(long)]
    no_wrk: bool,
    /// Record the agent with `perf record` during one extra window per mode, into DIR.
    #[arg(long, value_name = "DIR")]
    perf_dir: Option<PathBuf>,
    /// Extra environment variable of the agent process, KEY=VALUE (repeatable).
    #[arg(long, value_name = "KEY=VALUE", value_parser = parse_env)]
    agent_env: Vec<(String, String)>,
    /// The baseline server binary (default: `hitbound` next to this binary, if there).
    #[arg(long)]
    bound_bin: Option<PathBuf>,
    /// Run without the baseline server.
    #[arg(long)]
    no_bound: bool,
    /// Write the JSON report here.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Write the Markdown report here (it is always printed to stdout).
    #[arg(long)]
    markdown: Option<PathBuf>,
}

fn main() -> ExitCode {
    let args = Args::parse();
    match main_inner(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("hitbench: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn parse_env(s: &str) -> Result<(String, String), String> {
    s.split_once('=')
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .ok_or_else(|| format!("expected KEY=VALUE, got {s:?}"))
}

fn main_inner(a: Args) -> Result<()> {
    let agent_bin = match a.agent_bin {
        Some(p) => p,
        None => std::env::current_exe()?
            .parent()
            .context("binary has no directory")?
            .join("shoal-agent"),
    };
    let bound_bin = match (a.no_bound, a.bound_bin) {
        (true, _) => None,
        (false, Some(p)) => Some(p),
        (false, None) => Some(agent_bin.with_file_name("hitbound")).filter(|p| p.is_file()),
    };
    let opts = Options {
        size: a.size.as_u64(),
        streams: a.streams,
        duration: Duration::from_secs(a.duration.max(1)),
        rounds: a.rounds,
        chunk_size: a.chunk_size.as_u64(),
        memory_size: a.memory_size.as_u64(),
        ttfb_samples: a.ttfb_samples.max(1),
        agent_bin,
        nginx: a.nginx,
        workdir: a.workdir,
        keep_workdir: a.keep_workdir,
        wrk: !a.no_wrk,
        perf_dir: a.perf_dir,
        agent_env: a.agent_env,
        bound_bin,
        seed: 1,
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
