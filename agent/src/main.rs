//! `shoal-agent`: the command line. Parses flags, loads the configuration, starts
//! logging and runs the library; everything else lives in the library.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use shoal_agent::app::Agent;
use shoal_agent::config::Config;

#[derive(Parser)]
#[command(
    name = "shoal-agent",
    version,
    about = "Shoal edge agent: HTTP proxy and peer-to-peer chunk cache"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Option<Cmd>,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the agent (the default). Without --config it runs on built-in defaults.
    Run(RunArgs),
}

#[derive(clap::Args, Default)]
struct RunArgs {
    /// TOML configuration file (see configs/agent.toml).
    #[arg(long, short)]
    config: Option<PathBuf>,
    /// Overrides proxy.listen.
    #[arg(long)]
    listen: Option<String>,
    /// Overrides admin.listen.
    #[arg(long)]
    admin: Option<String>,
    /// Overrides cache.dir.
    #[arg(long)]
    cache_dir: Option<PathBuf>,
    /// Log as JSON lines instead of text.
    #[arg(long)]
    log_json: bool,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.cmd.unwrap_or(Cmd::Run(RunArgs::default())) {
        Cmd::Run(a) => run(a),
    }
}

fn init_logs(json: bool) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let b = tracing_subscriber::fmt().with_env_filter(filter);
    if json { b.json().init() } else { b.init() }
}

fn run(a: RunArgs) -> ExitCode {
    init_logs(a.log_json);
    let mut overrides = Vec::new();
    if let Some(l) = a.listen {
        overrides.push(("proxy.listen", l));
    }
    if let Some(l) = a.admin {
        overrides.push(("admin.listen", l));
    }
    if let Some(d) = a.cache_dir {
        overrides.push(("cache.dir", d.display().to_string()));
    }
    let cfg = match Config::load(a.config.as_deref(), &overrides) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("shoal-agent: {e}");
            return ExitCode::from(2);
        }
    };
    let rt = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("shoal-agent: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    rt.block_on(async move {
        let mut agent = match Agent::start(cfg, prometheus::Registry::new()).await {
            Ok(a) => a,
            Err(e) => {
                eprintln!("shoal-agent: {e}");
                return ExitCode::FAILURE;
            }
        };
        tokio::select! {
            _ = shutdown_signal() => tracing::info!("shutting down"),
            _ = agent.wait() => {
                tracing::error!("a listener stopped unexpectedly");
                return ExitCode::FAILURE;
            }
        }
        agent.shutdown().await;
        ExitCode::SUCCESS
    })
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => return ctrl_c.await.unwrap_or(()),
            };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}
