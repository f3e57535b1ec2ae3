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
    /// Run a whole swarm on this machine (origin, tracker, agents) through one flash
    /// crowd: starts the `shoal-demo` binary.
    Demo(DemoArgs),
    /// Write a development fleet CA and certificates (not for production).
    Certs(CertsArgs),
    /// Download a URL through the node's agent (or a one-shot one), or prefetch URLs
    /// into its cache. Exit codes: docs/operations.md ("shoal-agent get").
    Get(shoal_agent::get::cli::GetArgs),
    /// Print what the node's agent is doing (from its admin API).
    Status(shoal_agent::get::cli::StatusArgs),
    /// Write containerd's certs.d/REGISTRY/hosts.toml for each [[mirrors]] entry with a
    /// `registry`, pointing its pulls at this agent (no containerd restart needed).
    ContainerdConfig(shoal_agent::containerd::cli::ContainerdArgs),
}

/// Everything after `demo` goes to `shoal-demo` (`shoal-agent demo --help` lists it).
#[derive(clap::Args)]
#[command(disable_help_flag = true)]
struct DemoArgs {
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    args: Vec<std::ffi::OsString>,
}

#[derive(clap::Args)]
struct CertsArgs {
    /// Output directory (created).
    #[arg(long)]
    out: PathBuf,
    /// Comma-separated names; each gets NAME.pem and NAME.key.pem with that DNS name.
    #[arg(long, value_delimiter = ',', required = true)]
    names: Vec<String>,
    /// Comma-separated IP addresses, one per name in order, added as IP SANs.
    #[arg(long, value_delimiter = ',')]
    ips: Vec<std::net::IpAddr>,
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
        Cmd::Demo(a) => demo(a.args),
        Cmd::Certs(a) => certs(a),
        Cmd::Get(a) => shoal_agent::get::cli::get(a),
        Cmd::Status(a) => shoal_agent::get::cli::status(a),
        Cmd::ContainerdConfig(a) => shoal_agent::containerd::cli::run(a),
    }
}

/// `shoal-agent demo`: runs the `shoal-demo` binary, which carries the tracker and the
/// origin this binary does not link. Under `cargo run` cargo builds and runs it; else
/// it is looked up next to this executable (an install, or `target/<profile>/`).
fn demo(args: Vec<std::ffi::OsString>) -> ExitCode {
    use std::os::unix::process::CommandExt;
    let exe = std::env::current_exe().ok();
    let dir = exe.as_ref().and_then(|e| e.parent());
    let mut cmd = if let Some(cargo) = std::env::var_os("CARGO") {
        // Under `cargo run -p shoal-agent -- demo`, which builds only this package's
        // binary: have cargo build (or find up to date) and run the demo, same profile.
        let mut c = std::process::Command::new(cargo);
        c.args(["run", "-p", "shoal-demo"]);
        if dir.is_some_and(|d| d.ends_with("release")) {
            c.arg("--release");
        }
        if let Some(manifest_dir) = std::env::var_os("CARGO_MANIFEST_DIR") {
            c.current_dir(manifest_dir);
        }
        c.arg("--");
        c
    } else if let Some(bin) = dir.map(|d| d.join("shoal-demo")).filter(|p| p.is_file()) {
        std::process::Command::new(bin)
    } else {
        eprintln!(
            "shoal-agent demo: the demo is the separate binary `shoal-demo` (it carries a \
             tracker and an origin the agent does not link) and none is installed next to \
             this one; build it with `cargo build --release -p shoal-demo`"
        );
        return ExitCode::from(2);
    };
    let err = cmd.args(args).exec();
    eprintln!("shoal-agent demo: cannot start shoal-demo: {err}");
    ExitCode::FAILURE
}

fn certs(a: CertsArgs) -> ExitCode {
    if !a.ips.is_empty() && a.ips.len() != a.names.len() {
        eprintln!(
            "shoal-agent certs: --ips needs one address per name ({} names, {} addresses)",
            a.names.len(),
            a.ips.len()
        );
        return ExitCode::from(2);
    }
    let ips: Vec<Vec<std::net::IpAddr>> = if a.ips.is_empty() {
        vec![Vec::new(); a.names.len()]
    } else {
        a.ips.iter().map(|i| vec![*i]).collect()
    };
    match shoal_pki::write_dev_pki(&a.out, &a.names, &ips) {
        Ok(()) => {
            println!(
                "wrote {}/ca.pem and a certificate per name (development use only)",
                a.out.display()
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("shoal-agent certs: {e}");
            ExitCode::FAILURE
        }
    }
}

fn init_logs(json: bool) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // Colour only on a terminal: journald and log files would get escape codes.
    let b = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stdout()));
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
