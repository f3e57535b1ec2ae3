//! `shoal-demo`: a local swarm (origin, tracker, agents) through one flash crowd.
//! `shoal-agent demo ARGS` runs this binary; see the library docs for what it does.

use std::process::ExitCode;

use bytesize::ByteSize;
use clap::Parser;

use shoal_demo::DemoOptions;

/// Run a whole swarm in this process (origin, tracker, agents) through one flash crowd.
#[derive(Parser)]
#[command(name = "shoal-demo", version)]
struct DemoArgs {
    /// Number of agents.
    #[arg(long, default_value_t = 8)]
    agents: usize,
    /// Object size (e.g. 256MiB).
    #[arg(long, default_value = "256MiB")]
    size: ByteSize,
    /// Chunk size (16KiB..16MiB).
    #[arg(long, default_value = "1MiB")]
    chunk_size: ByteSize,
    /// Upload limit per agent per second (0 = none), to mimic finite links.
    #[arg(long, default_value = "0B")]
    upload_rate: ByteSize,
    /// Print one JSON object instead of a table.
    #[arg(long)]
    json: bool,
}

fn main() -> ExitCode {
    demo(DemoArgs::parse())
}

fn demo(a: DemoArgs) -> ExitCode {
    // The demo prints its own report; keep logs to warnings unless RUST_LOG says otherwise.
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr)
        .init();
    let opts = DemoOptions {
        agents: a.agents,
        size: a.size.as_u64(),
        chunk_size: a.chunk_size.as_u64(),
        upload_rate: a.upload_rate.as_u64(),
    };
    let rt = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("shoal-demo: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    if !a.json {
        eprintln!(
            "starting an origin, a tracker and {} agents on 127.0.0.x ...",
            a.agents
        );
    }
    match rt.block_on(shoal_demo::run(opts)) {
        Ok(r) => {
            if a.json {
                match serde_json::to_string_pretty(&r) {
                    Ok(j) => println!("{j}"),
                    Err(e) => {
                        eprintln!("shoal-demo: {e}");
                        return ExitCode::FAILURE;
                    }
                }
            } else {
                print!("{}", r.table());
            }
            if r.all_verified {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
        Err(e) => {
            eprintln!("shoal-demo: {e}");
            ExitCode::FAILURE
        }
    }
}
