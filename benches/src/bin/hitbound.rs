//! `hitbound`: the hit benchmark's baseline server (see `shoal_benches::hit::bound`),
//! started by `hitbench` as its own process. Serves one file on one address until
//! stopped.
//!
//! Exit codes: 2 if it cannot start (file, address); it does not stop on its own.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use bytesize::ByteSize;
use clap::Parser;
use shoal_benches::hit::bound::{Bound, Mode, serve};

#[derive(Debug, Parser)]
#[command(about = "Baseline server of hitbench: the file, chunk by chunk, no cache logic")]
struct Args {
    /// Address to listen on.
    #[arg(long)]
    listen: SocketAddr,
    /// The file to serve (every GET gets all of it).
    #[arg(long)]
    file: PathBuf,
    /// Frame (chunk) size.
    #[arg(long, default_value = "1MiB")]
    chunk_size: ByteSize,
    /// copy: chunks held in memory; verify: read and BLAKE3-hash every chunk.
    #[arg(long, value_enum)]
    mode: Mode,
}

fn main() -> ExitCode {
    let a = Args::parse();
    let bound = Bound {
        file: a.file,
        chunk_size: usize::try_from(a.chunk_size.as_u64()).unwrap_or(usize::MAX),
        mode: a.mode,
    };
    let listen = a.listen;
    let run = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(anyhow::Error::from)
        .and_then(|rt| {
            rt.block_on(async move {
                let l = tokio::net::TcpListener::bind(listen)
                    .await
                    .with_context(|| format!("binding {listen}"))?;
                serve(l, bound).await
            })
        });
    match run {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("hitbound: {e:#}");
            ExitCode::from(2)
        }
    }
}
