//! The whole-object sha256 a registry blob must hash to, computed on a blocking
//! thread of its own while the fill's task reads the origin and the chunks' BLAKE3
//! runs on others: fed the object's chunks in order, it takes the sha256 off the
//! task that reads the origin stream (where it ran in line with every frame before).
//!
//! At most [`QUEUED`] chunks wait for the thread: when the sha256 falls behind, the
//! fill waits (and with it the origin stream, through TCP), so the queue holds a few
//! chunks' [`Bytes`] handles at most, no copies. The digest is known only after the
//! last chunk: the fill still checks it before it releases the object's last chunk to
//! any reader, so no client sees a clean end of bytes that do not match. What this
//! cannot do: tell anything before the end (a sha256 has no intermediate answer).

use bytes::Bytes;
use sha2::{Digest, Sha256};
use shoal_proto::Sha256Digest;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use super::FillError;

/// Chunks queued for the sha256 thread at most.
const QUEUED: usize = 4;

/// The sha256 of one fill's bytes, being computed ([`Whole::start`]).
#[derive(Debug)]
pub(super) struct Whole {
    tx: mpsc::Sender<Bytes>,
    task: JoinHandle<Sha256Digest>,
}

impl Whole {
    /// Starts the thread; it ends when the `Whole` is finished or dropped.
    pub(super) fn start() -> Self {
        let (tx, mut rx) = mpsc::channel::<Bytes>(QUEUED);
        let task = tokio::task::spawn_blocking(move || {
            let mut h = Sha256::new();
            while let Some(b) = rx.blocking_recv() {
                h.update(&b);
            }
            Sha256Digest::from_sha256(h.finalize().into())
        });
        Self { tx, task }
    }

    /// Hashes `bytes` next (after every earlier call's); waits while [`QUEUED`]
    /// chunks are waiting.
    pub(super) async fn feed(&self, bytes: Bytes) -> Result<(), FillError> {
        self.tx
            .send(bytes)
            .await
            .map_err(|_| FillError::Internal("the sha256 thread is gone".into()))
    }

    /// The sha256 of everything fed, once the thread has hashed it all.
    pub(super) async fn finish(self) -> Result<Sha256Digest, FillError> {
        let Self { tx, task } = self;
        drop(tx);
        task.await
            .map_err(|e| FillError::Internal(format!("sha256 task failed: {e}")))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn pieces_hash_as_the_whole_in_order() {
        let data: Vec<u8> = (0..100_000u32).map(|i| (i * 7 % 251) as u8).collect();
        let whole = Whole::start();
        for piece in data.chunks(4096 + 3) {
            whole.feed(Bytes::copy_from_slice(piece)).await.unwrap();
        }
        let got = whole.finish().await.unwrap();
        let want = Sha256Digest::from_sha256(Sha256::digest(&data).into());
        assert_eq!(got, want);
        // Nothing fed: the digest of nothing.
        let empty = Whole::start().finish().await.unwrap();
        assert_eq!(empty, Sha256Digest::from_sha256(Sha256::digest(b"").into()));
    }
}
