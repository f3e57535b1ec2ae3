//! The baseline server of the hit benchmark: the least work a user-space server on
//! the agent's stack (tokio, hyper HTTP/1.1) can do to serve the file the way the
//! agent must, with none of the agent's logic (no proxy parsing, cache lookup, index,
//! metrics or per-chunk bookkeeping). It answers every `GET` with the whole file,
//! in chunk-sized frames, and ignores `Range` except `bytes=0-0` (for time to first
//! byte).
//!
//! - `copy`: the file is held in memory as chunk-sized [`Bytes`]; a response writes
//!   them. One user-to-kernel copy per byte, as the agent's memory-hot hits: what
//!   separates this from nginx's `sendfile` is that copy.
//! - `verify`: every chunk is read from the file with `pread` into a reused buffer
//!   and BLAKE3-hashed as it is read (256 KiB pieces), on blocking threads, a few
//!   chunks ahead, as the agent's verified disk hits: one hash, one read copy and one
//!   socket copy per byte. The hash is computed and dropped (there is nothing to
//!   compare it with); the cost is the same.
//!
//! The ratio of the agent to this server is how much the agent's own logic costs;
//! the ratio of this server to nginx is what the work the agent must do costs on
//! this machine.

use std::convert::Infallible;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, Result};
use bytes::Bytes;
use futures_util::StreamExt;
use http::{Request, Response, StatusCode, header};
use http_body_util::{BodyExt, StreamBody, combinators::BoxBody};
use hyper::body::{Frame, Incoming};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use shoal_agent::store::Buffers;

/// Chunks read ahead of the one being sent (the agent's `READ_AHEAD`).
const READ_AHEAD: usize = 3;
/// Read and hash granularity (the agent's disk reads).
const PIECE: usize = 256 * 1024;

/// What the baseline does per byte.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
pub enum Mode {
    /// Serve chunks held in memory.
    Copy,
    /// Read every chunk from the file and hash it.
    Verify,
}

/// What to serve.
#[derive(Debug, Clone)]
pub struct Bound {
    pub file: PathBuf,
    pub chunk_size: usize,
    pub mode: Mode,
}

struct State {
    bound: Bound,
    len: u64,
    file: std::fs::File,
    /// `copy` mode: the file's chunks.
    chunks: Vec<Bytes>,
    buffers: Buffers,
}

type Body = BoxBody<Bytes, std::io::Error>;

/// Serves `bound` on `listener` until the process is stopped.
pub async fn serve(listener: tokio::net::TcpListener, bound: Bound) -> Result<()> {
    anyhow::ensure!(bound.chunk_size > 0, "chunk size must be positive");
    let file = std::fs::File::open(&bound.file)
        .with_context(|| format!("opening {}", bound.file.display()))?;
    let len = file.metadata()?.len();
    let chunks = match bound.mode {
        Mode::Copy => {
            let all = Bytes::from(std::fs::read(&bound.file)?);
            (0..all.len())
                .step_by(bound.chunk_size)
                .map(|at| all.slice(at..(at + bound.chunk_size).min(all.len())))
                .collect()
        }
        Mode::Verify => Vec::new(),
    };
    let state = Arc::new(State {
        bound,
        len,
        file,
        chunks,
        buffers: Buffers::default(),
    });
    loop {
        let (stream, _) = listener.accept().await?;
        let _ = stream.set_nodelay(true);
        let state = state.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |req| {
                let state = state.clone();
                async move { Ok::<_, Infallible>(respond(&state, &req)) }
            });
            let _ = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}

fn respond(state: &Arc<State>, req: &Request<Incoming>) -> Response<Body> {
    let first_byte = req
        .headers()
        .get(header::RANGE)
        .is_some_and(|r| r.as_bytes() == b"bytes=0-0");
    let (status, len) = if first_byte {
        (StatusCode::PARTIAL_CONTENT, 1.min(state.len))
    } else {
        (StatusCode::OK, state.len)
    };
    let mut r = Response::new(body(state.clone(), len));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(header::CONTENT_LENGTH, header::HeaderValue::from(len));
    if first_byte {
        r.headers_mut().insert(
            header::CONTENT_RANGE,
            header::HeaderValue::from_str(&format!("bytes 0-0/{}", state.len))
                .unwrap_or_else(|_| header::HeaderValue::from_static("bytes */0")),
        );
    }
    r
}

/// The first `len` bytes of the file, chunk by chunk.
fn body(state: Arc<State>, len: u64) -> Body {
    let chunk = state.bound.chunk_size as u64;
    let count = len.div_ceil(chunk);
    let frames = futures_util::stream::iter(0..count)
        .map(move |i| {
            let state = state.clone();
            async move {
                let at = i * chunk;
                let n = (len - at).min(chunk) as usize;
                let b = match state.bound.mode {
                    Mode::Copy => state
                        .chunks
                        .get(i as usize)
                        .map(|c| c.slice(..n.min(c.len())))
                        .ok_or_else(|| std::io::Error::other("no such chunk"))?,
                    Mode::Verify => {
                        // The whole chunk, as the agent must read it to verify it.
                        let whole = (state.len - at).min(chunk) as usize;
                        let s = state.clone();
                        tokio::task::spawn_blocking(move || read_hashed(&s, at, whole))
                            .await
                            .map_err(std::io::Error::other)??
                            .slice(..n)
                    }
                };
                Ok(Frame::data(b))
            }
        })
        .buffered(READ_AHEAD);
    BodyExt::boxed(StreamBody::new(frames))
}

/// `n` bytes at `at`, read into a reused buffer and hashed piece by piece.
fn read_hashed(state: &State, at: u64, n: usize) -> std::io::Result<Bytes> {
    let mut buf = state.buffers.take(n);
    let mut hasher = blake3::Hasher::new();
    let mut filled = 0;
    while filled < n {
        let end = (filled + PIECE).min(n);
        let got = state
            .file
            .read_at(&mut buf[filled..end], at + filled as u64)?;
        if got == 0 {
            return Err(std::io::Error::other("file shorter than announced"));
        }
        hasher.update(&buf[filled..filled + got]);
        filled += got;
    }
    std::hint::black_box(hasher.finalize());
    Ok(state.buffers.freeze(buf, n))
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use crate::hit::load::{Target, fetch};

    #[tokio::test]
    async fn both_modes_serve_the_file_exactly() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("f");
        // Three and a half chunks of 64 KiB, and a piece boundary inside none of them.
        let bytes: Vec<u8> = (0..(7 * 32 * 1024))
            .map(|i: u32| (i * 7 + i / 251) as u8)
            .collect();
        std::fs::write(&file, &bytes).unwrap();
        for mode in [Mode::Copy, Mode::Verify] {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = listener.local_addr().unwrap();
            let bound = Bound {
                file: file.clone(),
                chunk_size: 64 * 1024,
                mode,
            };
            let server = tokio::spawn(serve(listener, bound));
            let t = Target {
                name: "bound",
                addr,
                uri: "/f".parse().unwrap(),
                host: addr.to_string(),
            };
            let got = fetch(&t).await.unwrap();
            assert_eq!(blake3::hash(&got), blake3::hash(&bytes), "{mode:?}");
            server.abort();
        }
    }
}
