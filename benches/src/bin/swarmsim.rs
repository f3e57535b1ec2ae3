//! `swarmsim`: the flash-crowd simulation (`shoal_benches::sim`) for fleet scenarios at
//! several fleet sizes. Figures are reported, never asserted:
//! `cargo run --release -p shoal-benches --bin swarmsim -- --scenario S4 --nodes 48,1000`.

use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::Parser;
use serde::Serialize;

use shoal_benches::fleet::scenario::Scenario;
use shoal_benches::sim::{SimConfig, SimResult, run};

#[derive(Debug, Parser)]
#[command(about = "Deterministic swarm simulation: real schedulers, real tracker registry")]
struct Args {
    /// Fleet scenarios (S1, S2, S3, S4, quick), comma-separated.
    #[arg(long, default_value = "S1,S2,S3,S4", value_delimiter = ',')]
    scenario: Vec<String>,
    /// Agent counts, comma-separated (replacing the scenario's N).
    #[arg(long, default_value = "48,1000", value_delimiter = ',')]
    nodes: Vec<usize>,
    /// Divide the scenario's object size by this (to shorten large runs; the chunk
    /// size stays).
    #[arg(long, default_value_t = 1)]
    object_divisor: u64,
    /// Seed of the latency and start-time draws.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// One-way delay of each agent to the core, uniform in `MIN MAX` milliseconds (two values).
    #[arg(long, default_value = "0,0", value_delimiter = ',', num_args = 2)]
    latency_ms: Vec<f64>,
    /// One-way delay of the origin and the tracker to the core, milliseconds.
    #[arg(long, default_value_t = 0.0)]
    server_latency_ms: f64,
    /// Packet loss probability of every path.
    #[arg(long, default_value_t = 0.0)]
    loss: f64,
    /// Simulated seconds after which a run stops.
    #[arg(long, default_value_t = 3600)]
    time_limit: u64,
    /// Global max-min bandwidth sharing (exact, slow: small fleets only).
    #[arg(long)]
    exact_sharing: bool,
    /// Upload queue lengths to run (requests that wait for a slot instead of `Busy`;
    /// 0 = `Busy` at once), comma-separated: every scenario and N runs once per value.
    #[arg(long, default_value = "0", value_delimiter = ',')]
    upload_queue: Vec<usize>,
    /// Waiting requests one peer may have in a holder's queue.
    #[arg(long, default_value_t = 1)]
    queue_per_peer: usize,
    /// Longest wait in an upload queue, milliseconds (then `Busy`).
    #[arg(long, default_value_t = 4000.0)]
    queue_wait_ms: f64,
    /// A freed upload slot goes to the waiter whose chunk the holder has sent least
    /// often (instead of the oldest waiter).
    #[arg(long)]
    queue_fewest_first: bool,
    /// Feed each tracker reply's hints to the scheduler with one
    /// `Scheduler::handle_peers` (one re-plan knowing them all) instead of one
    /// `handle_peer` per hint.
    #[arg(long)]
    batch_hints: bool,
    /// The scheduler's back-off after a `Busy`, milliseconds (default: the
    /// scheduler's, 250).
    #[arg(long)]
    busy_backoff_ms: Option<f64>,
    /// Chunk uploads an agent serves at once (`peer.max_uploads`, default 8).
    #[arg(long, default_value_t = 8)]
    max_uploads: usize,
    /// Write every run's figures (and completion times) to this JSON file.
    #[arg(long)]
    json: Option<std::path::PathBuf>,
}

#[derive(Debug, Serialize)]
struct Row {
    scenario: String,
    nodes: usize,
    object_bytes: u64,
    seed: u64,
    latency_ms: Vec<f64>,
    server_latency_ms: f64,
    loss: f64,
    exact_sharing: bool,
    upload_queue: usize,
    upload_queue_per_peer: usize,
    upload_queue_wait_ms: f64,
    upload_queue_fewest_first: bool,
    t_min_seconds: f64,
    finished: usize,
    last_seconds: Option<f64>,
    p50_seconds: Option<f64>,
    origin_ratio: f64,
    tracker_requests_per_node_second: f64,
    busy: u64,
    queued: u64,
    queue_timeouts: u64,
    queue_cancelled: u64,
    queue_wait_seconds: f64,
    peer_cancelled: u64,
    peer_transfers: u64,
    origin_requests: u64,
    sched_errors: u64,
    events: u64,
    wall_seconds: f64,
    completion_seconds: Vec<f64>,
}

fn ms(x: f64) -> Duration {
    Duration::from_secs_f64(x.max(0.0) / 1000.0)
}

fn main() -> ExitCode {
    let args = Args::parse();
    let mut rows = Vec::new();
    println!(
        "| scenario | N | F | queue | T_min | last ÷ T_min | p50 ÷ T_min | origin ÷ F | tracker req/node/s | busy/transfer | queued/transfer | mean wait s | timeouts | cancelled/transfer | wall s |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|");
    for name in &args.scenario {
        let Some(mut scenario) = Scenario::named(name) else {
            eprintln!(
                "swarmsim: unknown scenario {name:?} (want one of {:?})",
                Scenario::NAMES
            );
            return ExitCode::from(2);
        };
        scenario.object_bytes /= args.object_divisor.max(1);
        for (&n, &queue) in args
            .nodes
            .iter()
            .flat_map(|n| args.upload_queue.iter().map(move |q| (n, q)))
        {
            let cfg = SimConfig {
                scenario: Scenario {
                    nodes: n,
                    ..scenario.clone()
                },
                seed: args.seed,
                latency: (ms(args.latency_ms[0]), ms(args.latency_ms[1])),
                server_latency: ms(args.server_latency_ms),
                loss: args.loss,
                time_limit: Duration::from_secs(args.time_limit),
                exact_sharing: args.exact_sharing,
                upload_queue: queue,
                upload_queue_per_peer: args.queue_per_peer,
                upload_queue_wait: ms(args.queue_wait_ms),
                upload_queue_fewest_first: args.queue_fewest_first,
                batch_hints: args.batch_hints,
                max_uploads: args.max_uploads,
                ..SimConfig::default()
            };
            let mut cfg = cfg;
            if let Some(b) = args.busy_backoff_ms {
                cfg.sched.busy_backoff = ms(b);
            }
            let started = Instant::now();
            let r = run(&cfg);
            let wall = started.elapsed().as_secs_f64();
            print_row(&cfg, &r, wall);
            rows.push(row(&cfg, &r, &args, wall));
        }
    }
    if let Some(path) = &args.json {
        let text = match serde_json::to_string_pretty(&rows) {
            Ok(t) => t,
            Err(e) => {
                eprintln!("swarmsim: {e}");
                return ExitCode::from(2);
            }
        };
        if let Err(e) = std::fs::write(path, text) {
            eprintln!("swarmsim: cannot write {}: {e}", path.display());
            return ExitCode::from(2);
        }
    }
    ExitCode::SUCCESS
}

fn print_row(cfg: &SimConfig, r: &SimResult, wall: f64) {
    let ratio = |x: Option<f64>| match x {
        Some(v) if r.all_done() => format!("{:.3}", v / r.t_min),
        Some(v) => format!(
            "{:.3} ({} of {} done)",
            v / r.t_min,
            r.completions.len(),
            r.agents
        ),
        None => "none done".into(),
    };
    let per = |x: u64| x as f64 / r.peer_transfers.max(1) as f64;
    let served = r
        .queued
        .saturating_sub(r.queue_timeouts + r.queue_cancelled);
    println!(
        "| {} | {} | {} MiB | {} | {:.1} s | {} | {} | {:.3} | {:.2} | {:.2} | {:.2} | {:.2} | {} | {:.3} | {:.1} |",
        cfg.scenario.name,
        r.agents,
        r.object_bytes >> 20,
        cfg.upload_queue,
        r.t_min,
        ratio(r.last()),
        ratio(r.quantile(0.5)),
        r.origin_ratio(),
        r.tracker_rate(),
        per(r.busy),
        per(r.queued),
        r.queue_wait / served.max(1) as f64,
        r.queue_timeouts,
        per(r.peer_cancelled),
        wall,
    );
}

fn row(cfg: &SimConfig, r: &SimResult, args: &Args, wall: f64) -> Row {
    Row {
        scenario: cfg.scenario.name.clone(),
        nodes: r.agents,
        object_bytes: r.object_bytes,
        seed: cfg.seed,
        latency_ms: args.latency_ms.clone(),
        server_latency_ms: args.server_latency_ms,
        loss: cfg.loss,
        exact_sharing: cfg.exact_sharing,
        upload_queue: cfg.upload_queue,
        upload_queue_per_peer: cfg.upload_queue_per_peer,
        upload_queue_wait_ms: cfg.upload_queue_wait.as_secs_f64() * 1000.0,
        upload_queue_fewest_first: cfg.upload_queue_fewest_first,
        t_min_seconds: r.t_min,
        finished: r.completions.len(),
        last_seconds: r.last(),
        p50_seconds: r.quantile(0.5),
        origin_ratio: r.origin_ratio(),
        tracker_requests_per_node_second: r.tracker_rate(),
        busy: r.busy,
        queued: r.queued,
        queue_timeouts: r.queue_timeouts,
        queue_cancelled: r.queue_cancelled,
        queue_wait_seconds: r.queue_wait,
        peer_cancelled: r.peer_cancelled,
        peer_transfers: r.peer_transfers,
        origin_requests: r.origin_requests,
        sched_errors: r.sched_errors,
        events: r.events,
        wall_seconds: wall,
        completion_seconds: r.completions.clone(),
    }
}
