//! The serving side: accepts fleet peers and answers their chunk requests.
//!
//! Per stream: read one request frame and the end of the stream (within
//! `request_frame_timeout`), then take an upload slot: at once, or after waiting in the
//! gate's optional queue (`upload_queue`, off by default; at most `upload_queue_wait`;
//! the place is given up as soon as the requester stops the stream). Then answer `ok` + the bytes,
//! `not_found` or `error`; `busy` when the queue is full, the wait ran out, or the
//! upload-rate bucket is too far behind. Nothing is sent while a request waits: the
//! `ok` frame marks the start of the transfer, so a requester can tell queueing from
//! sending without a new frame (the wire format is unchanged). An upload keeps its slot
//! until the peer has acknowledged every byte.
//! A malformed frame resets that stream (both directions, code `STREAM_MALFORMED`) and
//! counts a strike against the connection; at [`MAX_STRIKES`] the connection is closed.

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use quinn::{Connection, RecvStream, SendStream, VarInt};
use rustls::pki_types::CertificateDer;
use shoal_pki::peer_id_of;
use shoal_proto::PeerId;
use shoal_proto::wire::{ErrorCode, Request, Response, code};

use shoal_proto::TokenBucket;

use super::limit::{Admission, Closed, Gate, Permit, Waiting, upload_bucket};
use super::quic::{FrameError, read_frame};
use super::{ChunkSource, PeerOptions};
use crate::metrics::Metrics;

/// Delay suggested in a `busy` answer caused by the concurrency limits.
const BUSY_RETRY: Duration = Duration::from_millis(100);
/// A `busy` answer is given when the upload-rate bucket is this far behind.
const MAX_BACKLOG: Duration = Duration::from_secs(1);
/// Malformed request frames tolerated per connection before it is closed.
pub(super) const MAX_STRIKES: u32 = 8;
/// Bytes written between upload-rate checks.
const PIECE: usize = 64 * 1024;

/// Shared state of the serving side.
pub(super) struct Server {
    source: Arc<dyn ChunkSource>,
    gate: Arc<Gate>,
    bucket: Option<Mutex<TokenBucket>>,
    metrics: Metrics,
    frame_timeout: Duration,
    /// Longest wait for a peer to acknowledge a sent chunk.
    ack_timeout: Duration,
    closing: AtomicBool,
}

/// Accepts connections until the endpoint closes.
pub(super) async fn accept_loop(endpoint: quinn::Endpoint, server: Arc<Server>) {
    while let Some(incoming) = endpoint.accept().await {
        tokio::spawn(server.clone().connection(incoming));
    }
}

impl Server {
    pub(super) fn new(
        options: &PeerOptions,
        source: Arc<dyn ChunkSource>,
        metrics: Metrics,
    ) -> Self {
        let rate = options.limits.upload_rate;
        Self {
            source,
            gate: Arc::new(Gate::new(options.limits)),
            bucket: (rate > 0).then(|| Mutex::new(upload_bucket(rate, Instant::now()))),
            metrics,
            frame_timeout: options.request_frame_timeout,
            ack_timeout: options.idle_timeout,
            closing: AtomicBool::new(false),
        }
    }

    pub(super) fn active_uploads(&self) -> usize {
        self.gate.active()
    }

    pub(super) fn queued_uploads(&self) -> usize {
        self.gate.queued()
    }

    /// From now on, requests (waiting ones included) are answered `error: shutting down`.
    pub(super) fn begin_shutdown(&self) {
        self.closing.store(true, Ordering::Relaxed);
        self.gate.close();
    }

    pub(super) fn is_closing(&self) -> bool {
        self.closing.load(Ordering::Relaxed)
    }

    /// Waits until no upload is in progress, or `deadline`.
    pub(super) async fn drained(&self, deadline: tokio::time::Instant) {
        self.gate.drained(deadline).await;
    }

    async fn connection(self: Arc<Self>, incoming: quinn::Incoming) {
        let remote = incoming.remote_address();
        let conn = match incoming.await {
            Ok(c) => c,
            Err(e) => {
                tracing::info!(%remote, error = %e, "peer handshake failed");
                return;
            }
        };
        let peer = match peer_of(&conn) {
            Ok(p) => p,
            Err(why) => {
                tracing::warn!(%remote, why, "peer refused: no usable peer id");
                conn.close(VarInt::from_u32(code::CLOSE_IDENTITY), b"no peer id");
                return;
            }
        };
        tracing::info!(%peer, %remote, "peer connected");
        self.metrics.peers_connected.inc();
        let strikes = Arc::new(AtomicU32::new(0));
        let reason = loop {
            match conn.accept_bi().await {
                Ok((send, recv)) => {
                    let (server, conn, peer) = (self.clone(), conn.clone(), peer.clone());
                    let strikes = strikes.clone();
                    tokio::spawn(async move {
                        server.stream(&conn, &peer, send, recv, &strikes).await;
                    });
                }
                Err(e) => break e,
            }
        };
        self.metrics.peers_connected.dec();
        tracing::info!(%peer, %remote, reason = %reason, "peer disconnected");
    }

    async fn stream(
        &self,
        conn: &Connection,
        peer: &PeerId,
        mut send: SendStream,
        mut recv: RecvStream,
        strikes: &AtomicU32,
    ) {
        let read = tokio::time::timeout(self.frame_timeout, read_frame(&mut recv, Request::decode));
        let req = match read.await {
            Ok(Ok(req)) => req,
            Err(_elapsed) => {
                tracing::debug!(%peer, "request frame timed out");
                reset(&mut send, &mut recv, code::STREAM_TIMEOUT);
                return;
            }
            Ok(Err(FrameError::Malformed(e))) => {
                self.strike(conn, peer, strikes, &e.to_string());
                reset(&mut send, &mut recv, code::STREAM_MALFORMED);
                return;
            }
            Ok(Err(FrameError::Ended)) => {
                self.strike(conn, peer, strikes, "stream ended inside the request frame");
                reset(&mut send, &mut recv, code::STREAM_MALFORMED);
                return;
            }
            Ok(Err(e)) => {
                tracing::debug!(%peer, error = %e, "request stream failed");
                return;
            }
        };
        // The requester finishes its side right after the frame (usually in the same
        // packet). Reading that end catches trailing bytes and spares a STOP_SENDING.
        match tokio::time::timeout(self.frame_timeout, recv.read_to_end(0)).await {
            Ok(Ok(_)) => {}
            Ok(Err(quinn::ReadToEndError::TooLong)) => {
                self.strike(conn, peer, strikes, "bytes after the request frame");
                reset(&mut send, &mut recv, code::STREAM_MALFORMED);
                return;
            }
            Ok(Err(e)) => {
                tracing::debug!(%peer, error = %e, "request stream failed");
                return;
            }
            Err(_elapsed) => {
                tracing::debug!(%peer, "request stream not finished in time");
                reset(&mut send, &mut recv, code::STREAM_TIMEOUT);
                return;
            }
        }
        match self.answer(peer, req, &mut send).await {
            Ok(permit) => {
                // Fails only if the peer already stopped the stream; nothing to do.
                let _ = send.finish();
                if let Some(permit) = permit {
                    // The upload holds its slot until the peer acknowledged every byte
                    // (or stopped the stream, or the connection died), so the limits
                    // count deliveries rather than bytes handed to quinn's buffers, and
                    // a graceful shutdown does not cut a delivery short.
                    let _ = tokio::time::timeout(self.ack_timeout, send.stopped()).await;
                    drop(permit);
                }
            }
            Err(e) => {
                tracing::debug!(%peer, id = %req.id, error = %e, "upload aborted");
                let _ = send.reset(VarInt::from_u32(code::STREAM_CANCELLED));
            }
        }
    }

    fn strike(&self, conn: &Connection, peer: &PeerId, strikes: &AtomicU32, why: &str) {
        let n = strikes.fetch_add(1, Ordering::Relaxed) + 1;
        tracing::warn!(%peer, strikes = n, why, "malformed request frame; stream reset");
        if n >= MAX_STRIKES {
            tracing::warn!(%peer, "too many malformed frames; closing the connection");
            conn.close(VarInt::from_u32(code::CLOSE_PROTOCOL), b"malformed frames");
        }
    }

    /// Writes the response (and the chunk); the caller finishes the stream. Returns
    /// the upload slot if a chunk was sent.
    async fn answer(
        &self,
        peer: &PeerId,
        req: Request,
        send: &mut SendStream,
    ) -> Result<Option<Permit>, quinn::WriteError> {
        let head = |r: Response| Bytes::from(r.to_vec());
        if self.closing.load(Ordering::Relaxed) {
            let code = ErrorCode::SHUTTING_DOWN;
            send.write_chunk(head(Response::Error { code })).await?;
            return Ok(None);
        }
        let permit = match self.gate.admit(peer) {
            Admission::Now(p) => p,
            Admission::Full => return self.busy(send, BUSY_RETRY).await,
            Admission::Queued(waiting) => match self.wait_for_slot(waiting, send).await {
                Waited::Slot(p) => p,
                Waited::TimedOut => return self.busy(send, BUSY_RETRY).await,
                Waited::Closed => {
                    let code = ErrorCode::SHUTTING_DOWN;
                    send.write_chunk(head(Response::Error { code })).await?;
                    return Ok(None);
                }
                Waited::Stopped => return Ok(None),
            },
        };
        if let Some(bucket) = &self.bucket {
            let backlog = lock(bucket).backlog(Instant::now());
            if backlog > MAX_BACKLOG {
                return self.busy(send, backlog).await;
            }
        }
        let Some(bytes) = self.source.chunk(&req.id).await else {
            send.write_chunk(head(Response::NotFound)).await?;
            return Ok(None);
        };
        if bytes.len() != req.len as usize {
            tracing::warn!(%peer, id = %req.id, have = bytes.len(), asked = req.len, "length mismatch");
            let code = ErrorCode::LENGTH_MISMATCH;
            send.write_chunk(head(Response::Error { code })).await?;
            return Ok(None);
        }
        let ok = head(Response::Ok { len: req.len });
        let Some(bucket) = &self.bucket else {
            send.write_all_chunks(&mut [ok, bytes]).await?;
            self.metrics.bytes_uploaded.inc_by(u64::from(req.len));
            return Ok(Some(permit));
        };
        send.write_chunk(ok).await?;
        let mut at = 0;
        while at < bytes.len() {
            let piece = bytes.slice(at..(at + PIECE).min(bytes.len()));
            at += piece.len();
            let wait = lock(bucket).take(piece.len() as f64, Instant::now());
            if !wait.is_zero() {
                tokio::time::sleep(wait).await;
            }
            let n = piece.len() as u64;
            send.write_chunk(piece).await?;
            self.metrics.bytes_uploaded.inc_by(n);
        }
        Ok(Some(permit))
    }

    /// Waits in the gate's queue for a slot, at most `upload_queue_wait`, giving the
    /// place up as soon as the requester stops the stream (it cancelled or timed out,
    /// or the connection is gone). Counts and times the wait.
    async fn wait_for_slot(&self, mut waiting: Waiting, send: &SendStream) -> Waited {
        self.metrics.uploads_queued.inc();
        let since = Instant::now();
        let wait = self.gate.limits().upload_queue_wait;
        let waited = tokio::select! {
            got = tokio::time::timeout(wait, waiting.granted()) => match got {
                Ok(Ok(permit)) => Waited::Slot(permit),
                Ok(Err(Closed)) => Waited::Closed,
                Err(_elapsed) => Waited::TimedOut,
            },
            _ = send.stopped() => Waited::Stopped,
        };
        // Leaves the queue now (if still in it), before the answer is written.
        drop(waiting);
        self.metrics
            .upload_queue_wait
            .with_label_values(&[waited.label()])
            .observe(since.elapsed().as_secs_f64());
        waited
    }

    async fn busy(
        &self,
        send: &mut SendStream,
        retry: Duration,
    ) -> Result<Option<Permit>, quinn::WriteError> {
        self.metrics.uploads_refused.inc();
        let retry_after_ms = u32::try_from(retry.as_millis()).unwrap_or(u32::MAX);
        let busy = Response::Busy { retry_after_ms };
        send.write_chunk(Bytes::from(busy.to_vec())).await?;
        Ok(None)
    }
}

/// How a wait in the upload queue ended.
#[derive(Debug)]
enum Waited {
    Slot(Permit),
    /// `upload_queue_wait` passed: answer `busy`.
    TimedOut,
    /// Shutting down.
    Closed,
    /// The requester stopped the stream: answer nothing.
    Stopped,
}

impl Waited {
    /// The `result` label of `shoal_peer_upload_queue_wait_seconds`.
    fn label(&self) -> &'static str {
        match self {
            Self::Slot(_) => "served",
            Self::TimedOut => "busy",
            Self::Closed => "shutdown",
            Self::Stopped => "cancelled",
        }
    }
}

impl std::fmt::Debug for Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Server")
            .field("active_uploads", &self.gate.active())
            .field("closing", &self.closing)
            .finish_non_exhaustive()
    }
}

fn lock(bucket: &Mutex<TokenBucket>) -> std::sync::MutexGuard<'_, TokenBucket> {
    // The bucket is plain numbers; a panic elsewhere cannot leave it inconsistent.
    bucket.lock().unwrap_or_else(|e| e.into_inner())
}

/// The peer id in the client certificate the handshake verified.
fn peer_of(conn: &Connection) -> Result<PeerId, String> {
    let any = conn.peer_identity().ok_or("no client certificate")?;
    let chain = any
        .downcast::<Vec<CertificateDer<'static>>>()
        .map_err(|_| "unexpected peer identity type")?;
    let leaf = chain.first().ok_or("empty certificate chain")?;
    peer_id_of(leaf).map_err(|e| e.to_string())
}

fn reset(send: &mut SendStream, recv: &mut RecvStream, code: u32) {
    // Both fail only if the stream is already closed in that direction.
    let _ = send.reset(VarInt::from_u32(code));
    let _ = recv.stop(VarInt::from_u32(code));
}
