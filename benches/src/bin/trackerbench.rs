//! `trackerbench`: syncs per second per core and sync latency of a real
//! `shoal-tracker` process with many simulated agents over loopback mutual TLS (see
//! `shoal_benches::trackload`). Figures are reported, never asserted. Needs
//! `ulimit -n` above twice the agent count:
//! `cargo build --release -p shoal-tracker -p shoal-benches && target/release/trackerbench`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use clap::Parser;

use shoal_benches::fleet::cleanup::Registry;
use shoal_benches::fleet::proc::Proc;
use shoal_benches::hit::load::wait_ready;
use shoal_benches::hit::servers::free_port;
use shoal_benches::trackload::{self, Phase, Workload, server};

#[derive(Debug, Parser)]
#[command(about = "Tracker syncs/s per core and latency with many simulated agents")]
struct Args {
    /// Simulated agents, each with its own certificate and TLS connection.
    #[arg(long, default_value_t = 10_000)]
    agents: usize,
    /// Objects the agents are spread over (1: every agent syncs the same object).
    #[arg(long, default_value_t = 1)]
    objects: usize,
    /// Chunks per object.
    #[arg(long, default_value_t = 64)]
    chunks: u32,
    /// Share of the chunks each agent holds.
    #[arg(long, default_value_t = 0.5)]
    held: f64,
    /// Closed-loop worker tasks.
    #[arg(long, default_value_t = 64)]
    workers: usize,
    /// Paced rates to measure latency at (syncs per second), comma-separated.
    #[arg(long, default_value = "1000,2000", value_delimiter = ',')]
    rates: Vec<f64>,
    /// Seconds per phase.
    #[arg(long, default_value_t = 10)]
    duration: u64,
    /// The tracker binary (default: next to this one). Repeat it to compare binaries
    /// in one run: they take turns, in the order `--order` gives.
    #[arg(long)]
    tracker_bin: Vec<PathBuf>,
    /// Names of the `--tracker-bin`s in the table (default: `A`, `B`, …).
    #[arg(long, value_delimiter = ',')]
    labels: Vec<String>,
    /// The rounds, as labels: `ABBA` runs A, B, B, A (default: each binary once).
    /// Certificates are minted once; every round starts a fresh tracker.
    #[arg(long)]
    order: Option<String>,
    /// Write the figures as JSON here.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Write every paced sync's latency parts as CSV here (round, phase, then the
    /// fields of `trackload::Sample`, seconds).
    #[arg(long)]
    trace: Option<PathBuf>,
    /// The tracker's `SHOAL_LOG` (its log is `tracker.log` in the run's directory,
    /// kept with `--keep-logs`).
    #[arg(long, default_value = "warn")]
    tracker_log: String,
    /// Copy each round's tracker log here as `tracker-ROUND.log`.
    #[arg(long)]
    keep_logs: Option<PathBuf>,
    /// Only time the registry's expiry sweep in this process (no tracker, no
    /// network) with `--agents` holders, then exit.
    #[arg(long)]
    sweep_only: bool,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("trackerbench: cannot start the async runtime: {e}");
            return ExitCode::from(2);
        }
    };
    match rt.block_on(bench(&args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("trackerbench: {e:#}");
            ExitCode::from(2)
        }
    }
}

async fn bench(args: &Args) -> Result<()> {
    let bins = if args.tracker_bin.is_empty() {
        vec![std::env::current_exe()?.with_file_name("shoal-tracker")]
    } else {
        args.tracker_bin.clone()
    };
    let labels: Vec<String> = (0..bins.len())
        .map(|i| {
            args.labels
                .get(i)
                .cloned()
                .unwrap_or_else(|| char::from(b'A' + (i % 26) as u8).to_string())
        })
        .collect();
    let order: Vec<usize> = match &args.order {
        None => (0..bins.len()).collect(),
        Some(o) => o
            .chars()
            .map(|c| {
                labels
                    .iter()
                    .position(|l| l.starts_with(c))
                    .with_context(|| format!("--order names {c}, which is no label's initial"))
            })
            .collect::<Result<_>>()?,
    };
    let w = workload(args);
    let cost = trackload::sweep::cost(&w)?;
    println!("{cost}");
    if args.sweep_only {
        return Ok(());
    }
    let dir = tempfile::Builder::new()
        .prefix("trackerbench-")
        .tempdir_in("/var/tmp")?;
    let t = Instant::now();
    let names = trackload::names(args.agents);
    let ips = vec![vec![std::net::IpAddr::from([127, 0, 0, 1])]];
    let pki = shoal_pki::dev_pki(&names, &ips)?;
    std::fs::write(dir.path().join("ca.pem"), &pki.ca_pem)?;
    std::fs::write(dir.path().join("tracker.pem"), &pki.certs[0].cert_pem)?;
    std::fs::write(dir.path().join("tracker.key.pem"), &pki.certs[0].key_pem)?;
    let identities = (1..names.len())
        .map(|i| pki.identity(i))
        .collect::<Result<Vec<_>, _>>()?;
    println!(
        "minted {} certificates in {:.1} s",
        names.len(),
        t.elapsed().as_secs_f64()
    );
    let mut rows: Vec<(String, Phase)> = Vec::new();
    for (round, &b) in order.iter().enumerate() {
        let name = format!("{} (round {})", labels[b], round + 1);
        println!("\nround {}: {name}, {}", round + 1, bins[b].display());
        let phases = run_tracker(args, &bins[b], dir.path(), identities.clone()).await?;
        if let Some(keep) = &args.keep_logs {
            std::fs::create_dir_all(keep)?;
            std::fs::copy(
                dir.path().join("tracker.log"),
                keep.join(format!("tracker-{}.log", round + 1)),
            )?;
        }
        rows.extend(phases.into_iter().map(|p| (name.clone(), p)));
    }
    println!(
        "\n{} agents, {} object(s) of {} chunks, each agent holding ~{:.0} %; machine load {}",
        args.agents,
        args.objects,
        args.chunks,
        args.held * 100.0,
        loadavg()
    );
    println!(
        "| tracker | phase | syncs | errors | syncs/s | tracker CPU s per 10k syncs | syncs/s per core | p50 ms | p99 ms | max ms | load |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|");
    for (t, p) in &rows {
        println!(
            "| {t} | {} | {} | {} | {:.0} | {:.2} | {:.0} | {:.2} | {:.2} | {:.1} | {} |",
            p.name,
            p.syncs,
            p.errors,
            p.syncs_per_second,
            p.tracker_cpu_seconds * 10_000.0 / p.syncs.max(1) as f64,
            p.syncs_per_core_second,
            p.p50_ms,
            p.p99_ms,
            p.max_ms,
            p.load_after
        );
    }
    println!(
        "\nWhere the time went (ms). Client: p99 of each part alone, then the mean of each part over the syncs at or above the p99 (spawn = the benchmark's own scheduling; wait = connection busy; exchange = request written to response head parsed; read = body and JSON). Tracker: its handler time from its histogram (bucket bounds), and its expiry sweeps."
    );
    println!(
        "| tracker | phase | p99 spawn | p99 wait | p99 exchange | p99 read | tail n | tail spawn | tail wait | tail exchange | tail read | handler > 1 ms | handler > 5 ms | handler p99 ≤ | sweeps | sweep total ms | sweep max ≤ |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|");
    for (t, p) in &rows {
        let b = p.breakdown.unwrap_or_default();
        let s = p.server.unwrap_or_default();
        let opt = |v: Option<f64>| v.map_or("-".to_owned(), |v| format!("{v:.2}"));
        println!(
            "| {t} | {} | {:.2} | {:.2} | {:.2} | {:.2} | {} | {:.2} | {:.2} | {:.2} | {:.2} | {:.3} % | {:.3} % | {} | {} | {} | {} |",
            p.name,
            b.p99_spawn_ms,
            b.p99_wait_ms,
            b.p99_exchange_ms,
            b.p99_read_ms,
            b.tail_syncs,
            b.tail_spawn_ms,
            b.tail_wait_ms,
            b.tail_exchange_ms,
            b.tail_read_ms,
            s.over_1ms * 100.0,
            s.over_5ms * 100.0,
            s.p99_ms_at_most,
            s.sweeps.map_or("-".to_owned(), |n| n.to_string()),
            opt(s.sweep_total_ms),
            opt(s.sweep_max_ms_at_most),
        );
    }
    if let Some(path) = &args.trace {
        let mut csv = String::from("round,phase,at,total,spawn,wait,exchange,read\n");
        for (t, p) in &rows {
            for x in &p.samples {
                csv.push_str(&format!(
                    "\"{t}\",\"{}\",{:.6},{:.6},{:.6},{:.6},{:.6},{:.6}\n",
                    p.name, x.at, x.total, x.spawn, x.wait, x.exchange, x.read
                ));
            }
        }
        std::fs::write(path, csv)?;
    }
    for (t, p) in &rows {
        if let Some(e) = &p.first_error {
            println!("{t}, {}: first error: {e}", p.name);
        }
    }
    if let Some(path) = &args.json {
        let out: Vec<_> = rows
            .iter()
            .map(|(t, p)| serde_json::json!({"tracker": t, "phase": p}))
            .collect();
        std::fs::write(path, serde_json::to_string_pretty(&out)?)?;
    }
    Ok(())
}

/// One round: a fresh tracker from `bin`, every agent connected and synced once, then
/// the closed loop and each paced rate.
async fn run_tracker(
    args: &Args,
    bin: &Path,
    dir: &Path,
    identities: Vec<shoal_pki::Identity>,
) -> Result<Vec<Phase>> {
    let listen = SocketAddr::from(([127, 0, 0, 1], free_port()?));
    let admin = SocketAddr::from(([127, 0, 0, 1], free_port()?));
    let config = dir.join("tracker.toml");
    std::fs::write(
        &config,
        trackload::tracker_config(dir, listen, admin, args.agents),
    )?;
    let registry = Registry::default();
    let log = dir.join("tracker.log");
    let tracker = Proc::spawn(
        &registry,
        "shoal-tracker",
        None,
        bin,
        ["run", "--config", &config.display().to_string()],
        &log,
        &[("SHOAL_LOG", args.tracker_log.as_str())],
    )
    .with_context(|| format!("starting {}", bin.display()))?;
    wait_ready("tracker admin", admin, "/ready", Duration::from_secs(30)).await?;

    let w = workload(args);
    let t = Instant::now();
    let cpu0 = tracker.usage().map_or(0.0, |u| u.cpu_seconds);
    let agents = trackload::connect_all(identities, listen, &w, 32).await?;
    let setup = t.elapsed().as_secs_f64();
    let cpu = tracker.usage().map_or(0.0, |u| u.cpu_seconds) - cpu0;
    println!(
        "{} agents connected (TLS 1.3, mutual) and synced once in {setup:.1} s; tracker CPU {cpu:.1} s ({:.2} ms per handshake + first sync); tracker pid {}",
        agents.len(),
        cpu * 1000.0 / agents.len().max(1) as f64,
        tracker.pid()
    );

    let d = Duration::from_secs(args.duration);
    let mut phases: Vec<Phase> = Vec::new();
    let m0 = server::scrape(admin).await?;
    let mut p = trackload::closed_loop(&agents, tracker.pid(), args.workers, d).await?;
    p.load_after = loadavg();
    let mut m1 = server::scrape(admin).await?;
    p.server = Some(server::ServerSide::between(&m0, &m1));
    phases.push(p);
    for &rate in &args.rates {
        let mut p = trackload::paced(&agents, tracker.pid(), rate, d).await?;
        p.load_after = loadavg();
        let m2 = server::scrape(admin).await?;
        p.server = Some(server::ServerSide::between(&m1, &m2));
        m1 = m2;
        phases.push(p);
    }
    let rss = tracker.usage().map_or(0, |u| u.peak_rss_bytes);
    println!("tracker peak RSS {} MiB", rss >> 20);
    drop(agents);
    drop(tracker);
    Ok(phases)
}

/// The 1-minute load average (the machine's other load, this benchmark included).
fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .split_whitespace()
        .next()
        .unwrap_or("?")
        .to_owned()
}

/// The simulated fleet the flags describe.
fn workload(args: &Args) -> Workload {
    Workload {
        agents: args.agents,
        objects: args.objects,
        chunks: args.chunks,
        held: args.held,
        seed: 1,
    }
}
