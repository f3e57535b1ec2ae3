//! `shoal-tracker`: parses flags, loads the configuration, starts tracing, runs the
//! tracker until SIGTERM or Ctrl-C. Exit codes: 0 clean stop, 2 bad configuration,
//! 3 bad TLS files, 4 cannot listen, 1 anything else.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use shoal_pki::Identity;
use shoal_tracker::app::{StartError, Tracker};
use shoal_tracker::config::Config;
use tracing_subscriber::EnvFilter;

/// jemalloc rather than glibc's malloc: with 10,000 agents' connections and their
/// TLS and HTTP buffers, glibc's allocator (bin searches, chunk consolidation) was
/// about a fifth of the tracker's CPU per sync (`trackerbench`, docs/benchmarks.md).
#[global_allocator]
static ALLOC: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

#[derive(Debug, Parser)]
#[command(
    name = "shoal-tracker",
    version,
    about = "Shoal tracker: peer hints and origin leases"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Serve agents until SIGTERM or Ctrl-C.
    Run {
        /// TOML configuration (see configs/tracker.toml).
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// Overrides server.listen.
        #[arg(long)]
        listen: Option<SocketAddr>,
        /// Overrides admin.listen.
        #[arg(long)]
        admin: Option<SocketAddr>,
        /// Log as JSON lines.
        #[arg(long)]
        log_json: bool,
    },
}

fn main() -> ExitCode {
    let Cmd::Run {
        config,
        listen,
        admin,
        log_json,
    } = Cli::parse().cmd;
    let filter = EnvFilter::try_from_env("SHOAL_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    // Colour only on a terminal: journald and log files would get escape codes.
    let sub = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stdout()));
    if log_json {
        sub.json().init();
    } else {
        sub.init();
    }

    let mut overrides = Vec::new();
    if let Some(a) = listen {
        overrides.push(("server.listen", a.to_string()));
    }
    if let Some(a) = admin {
        overrides.push(("admin.listen", a.to_string()));
    }
    let cfg = match Config::load(config.as_deref(), &overrides) {
        Ok(c) => c,
        Err(e) => return fail(2, &e),
    };
    let identity = match cfg
        .tls
        .paths()
        .map_err(anyhow::Error::from)
        .and_then(|(ca, cert, key)| Identity::load(ca, cert, key).map_err(anyhow::Error::from))
    {
        Ok(i) => i,
        Err(e) => return fail(3, &e),
    };
    // With connection threads of its own, the main runtime only accepts, serves the
    // admin endpoint and sweeps: one thread does.
    let mut builder = if cfg.server.threads > 0 {
        tokio::runtime::Builder::new_current_thread()
    } else {
        tokio::runtime::Builder::new_multi_thread()
    };
    let rt = match builder.enable_all().build() {
        Ok(rt) => rt,
        Err(e) => return fail(1, &e),
    };
    rt.block_on(async move {
        let running = match Tracker::start(cfg, identity, prometheus::Registry::new()).await {
            Ok(r) => r,
            Err(e @ StartError::Bind { .. }) => return fail(4, &e),
            Err(e @ StartError::Tls(_)) => return fail(3, &e),
            Err(e @ StartError::Config(_)) => return fail(2, &e),
            Err(e @ StartError::Threads { .. }) => return fail(1, &e),
        };
        if let Err(e) = stop_signal().await {
            return fail(1, &e);
        }
        tracing::info!("stopping");
        running.shutdown().await;
        ExitCode::SUCCESS
    })
}

async fn stop_signal() -> std::io::Result<()> {
    #[cfg(unix)]
    {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        tokio::select! {
            r = tokio::signal::ctrl_c() => r,
            _ = term.recv() => Ok(()),
        }
    }
    #[cfg(not(unix))]
    {
        tokio::signal::ctrl_c().await
    }
}

fn fail(code: u8, e: &dyn std::fmt::Display) -> ExitCode {
    tracing::error!("{e}");
    ExitCode::from(code)
}
