//! `goodput`: loopback goodput of the peer transport (QUIC, verified chunks) for a few
//! chunk sizes and request depths (see `shoal_benches::probe`). Figures are reported,
//! never asserted: `cargo run --release -p shoal-benches --bin goodput`.

use std::net::{IpAddr, Ipv4Addr};
use std::process::ExitCode;

use bytesize::ByteSize;
use clap::Parser;

use shoal_benches::probe::goodput_probe;

#[derive(Debug, Parser)]
#[command(about = "Peer-transport goodput over one loopback QUIC connection")]
struct Args {
    /// Bytes moved per configuration.
    #[arg(long, default_value = "1GiB")]
    total: ByteSize,
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
            eprintln!("goodput: cannot start the async runtime: {e}");
            return ExitCode::from(2);
        }
    };
    let ip = IpAddr::V4(Ipv4Addr::LOCALHOST);
    for (chunk, in_flight) in [
        (1u32 << 20, 1usize),
        (1 << 20, 8),
        (4 << 20, 4),
        (256 << 10, 16),
    ] {
        match rt.block_on(goodput_probe(ip, args.total.as_u64(), chunk, in_flight)) {
            Ok(g) => println!("goodput chunk={chunk} in_flight={in_flight}: {g}"),
            Err(e) => {
                eprintln!("goodput: {e}");
                return ExitCode::from(2);
            }
        }
    }
    ExitCode::SUCCESS
}
