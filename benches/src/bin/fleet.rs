//! `fleet`: the fleet benchmark (see `shoal_benches::fleet` and docs/benchmarks.md).
//!
//! Exit codes: 0 all selected systems delivered verified bytes to every node;
//! 1 a system failed, was skipped or delivered wrong/incomplete bytes, or a check
//! asked for on the command line failed; 2 the harness itself failed; 3 teardown left
//! something behind.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::Parser;

use shoal_benches::fleet::cleanup::{Guard, Registry};
use shoal_benches::fleet::scenario::Scenario;
use shoal_benches::fleet::{Options, System, plot, run};

#[derive(Debug, Parser)]
#[command(about = "Fleet benchmark: direct vs BitTorrent vs Shoal on emulated links")]
struct Args {
    /// S1, S2, S3, S4 or quick.
    #[arg(long, default_value = "quick")]
    scenario: String,
    /// Ethernet MTU of every emulated link (1280-9000; 9000 = jumbo frames).
    #[arg(long, default_value_t = shoal_benches::fleet::scenario::DEFAULT_MTU)]
    mtu: u16,
    /// Generic receive offload on the emulated links: on (as real NICs) or off.
    #[arg(long, default_value = "on", value_parser = ["on", "off"])]
    gro: String,
    /// Comma-separated: direct, bittorrent, shoal.
    #[arg(long, default_value = "direct,bittorrent,shoal")]
    systems: String,
    /// Write the JSON report here.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Write the completion-time CDF (PNG) here.
    #[arg(long)]
    plot: Option<PathBuf>,
    /// Write the Markdown table here (it is always printed to stdout).
    #[arg(long)]
    markdown: Option<PathBuf>,
    /// Run the remaining systems after one fails.
    #[arg(long)]
    keep_going: bool,
    /// Parent directory of the per-run work directory.
    #[arg(long, default_value = "/var/tmp")]
    workdir: PathBuf,
    /// Keep the work directory (configs, logs) after the run (on the existing
    /// filesystem, not a fresh image).
    #[arg(long)]
    keep_workdir: bool,
    /// Use the work directory's existing filesystem instead of a fresh ext4 image
    /// mounted on a loop device for the run.
    #[arg(long)]
    no_fresh_fs: bool,
    /// Directory with shoal-agent and shoal-tracker (default: next to this binary).
    #[arg(long)]
    shoal_bin_dir: Option<PathBuf>,
    /// Do not apt-get install missing packages.
    #[arg(long)]
    no_install: bool,
    /// Per-system deadline in seconds (default: from the scenario).
    #[arg(long)]
    timeout: Option<u64>,
    /// Fail (exit 1) if Shoal's origin bytes exceed this multiple of the object size.
    #[arg(long)]
    max_shoal_origin_ratio: Option<f64>,
}

fn main() -> ExitCode {
    let registry = Registry::default();
    if let Err(e) = registry.watch_signals() {
        eprintln!("fleet: cannot install signal handling: {e}");
        return ExitCode::from(2);
    }
    let code = {
        let guard = Guard(registry.clone());
        let code = match main_inner(&registry) {
            Ok(code) => code,
            Err(e) => {
                eprintln!("fleet: error: {e:#}");
                2
            }
        };
        drop(guard);
        code
    };
    ExitCode::from(code)
}

fn main_inner(registry: &Registry) -> Result<u8> {
    let args = Args::parse();
    let scenario = Scenario::named(&args.scenario).with_context(|| {
        format!(
            "unknown scenario {:?} (one of {})",
            args.scenario,
            Scenario::NAMES.join(", ")
        )
    })?;
    let mut scenario = scenario.with_mtu(args.mtu).map_err(anyhow::Error::msg)?;
    scenario.gro = args.gro == "on";
    let mut systems = Vec::new();
    for s in args.systems.split(',').filter(|s| !s.trim().is_empty()) {
        match System::parse(s) {
            Some(sys) if !systems.contains(&sys) => systems.push(sys),
            Some(_) => {}
            None => bail!("unknown system {s:?} (direct, bittorrent, shoal)"),
        }
    }
    let shoal_bin_dir = match args.shoal_bin_dir {
        Some(d) => d,
        None => std::env::current_exe()?
            .parent()
            .context("binary has no directory")?
            .to_path_buf(),
    };
    let opts = Options {
        scenario,
        systems,
        keep_going: args.keep_going,
        workdir: args.workdir,
        keep_workdir: args.keep_workdir,
        fresh_fs: !args.no_fresh_fs,
        shoal_bin_dir,
        install: !args.no_install,
        timeout: args.timeout.map(Duration::from_secs),
    };
    let mut report = run(&opts, registry)?;

    let left = registry.teardown();
    report.cleanup_clean = Some(left.is_clean());
    if left.is_clean() {
        eprintln!("fleet: teardown complete, no namespace or process left");
    } else {
        eprintln!(
            "fleet: LEFT BEHIND namespaces {:?} pids {:?}",
            left.namespaces, left.pids
        );
    }

    let md = report.markdown();
    println!("{md}");
    if let Some(path) = &args.json {
        std::fs::write(path, serde_json::to_vec_pretty(&report)?)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    if let Some(path) = &args.markdown {
        std::fs::write(path, &md).with_context(|| format!("writing {}", path.display()))?;
    }
    if let Some(path) = &args.plot
        && let Err(e) = plot::cdf(&report, path)
    {
        eprintln!("fleet: plot failed: {e:#}");
    }

    if !left.is_clean() {
        return Ok(3);
    }
    let mut ok = report.all_ok();
    if let (Some(max), Some(shoal)) = (args.max_shoal_origin_ratio, report.system("shoal")) {
        match shoal.origin_over_object {
            Some(r) if r <= max => {}
            other => {
                eprintln!("fleet: shoal origin bytes / F = {other:?}, limit {max}");
                ok = false;
            }
        }
    }
    Ok(if ok { 0 } else { 1 })
}
