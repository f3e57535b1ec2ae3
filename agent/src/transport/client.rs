//! The fetching side: one pooled connection per peer, one stream per chunk request.
//!
//! The received bytes are hashed as they arrive (in 64 KiB blocks, so BLAKE3 keeps its
//! SIMD speed) and checked against the chunk id before they are returned.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use quinn::{Connection, ReadError, RecvStream, VarInt, WriteError};
use shoal_proto::wire::{MAX_CHUNK, Request, Response, code};
use shoal_proto::{ChunkId, PeerAddr, PeerId};

use super::quic::{FrameError, read_frame};
use super::{ConnectFailure, PeerError, ProtocolError};
use crate::metrics::{Metrics, Source};

/// QUIC transport error codes that carry a TLS alert (RFC 9001 §4.8).
const TLS_ALERTS: std::ops::RangeInclusive<u64> = 0x100..=0x1ff;
/// Bytes hashed at a time while a chunk arrives.
const HASH_BLOCK: usize = 64 * 1024;
/// Peer-gone events buffered for a slow receiver (see [`Pool::gone`]).
const GONE_BACKLOG: usize = 256;

type Slot = Arc<tokio::sync::Mutex<Option<Connection>>>;

/// Connections we dialled, by peer id.
#[derive(Debug)]
pub(super) struct Pool {
    endpoint: quinn::Endpoint,
    /// One slot per peer; its async lock makes concurrent fetches share one dial.
    slots: Mutex<HashMap<PeerId, Slot>>,
    timeout: Duration,
    metrics: Metrics,
    closing: Arc<AtomicBool>,
    /// Peers whose connection they ended (see [`Pool::gone`]).
    gone: tokio::sync::broadcast::Sender<PeerId>,
}

impl Pool {
    pub(super) fn new(endpoint: quinn::Endpoint, timeout: Duration, metrics: Metrics) -> Self {
        Self {
            endpoint,
            slots: Mutex::new(HashMap::new()),
            timeout,
            metrics,
            closing: Arc::new(AtomicBool::new(false)),
            gone: tokio::sync::broadcast::channel(GONE_BACKLOG).0,
        }
    }

    /// See [`super::PeerEndpoint::gone`].
    pub(super) fn gone(&self) -> tokio::sync::broadcast::Receiver<PeerId> {
        self.gone.subscribe()
    }

    /// Statistics of every live connection we dialled (diagnostics, the probe).
    pub(super) fn stats(&self) -> Vec<(PeerId, quinn::ConnectionStats)> {
        let slots: Vec<(PeerId, Slot)> = {
            let slots = self.slots.lock().unwrap_or_else(|e| e.into_inner());
            slots.iter().map(|(k, v)| (k.clone(), v.clone())).collect()
        };
        slots
            .into_iter()
            .filter_map(|(id, slot)| {
                let held = slot.try_lock().ok()?;
                let conn = held.as_ref()?;
                Some((id, conn.stats()))
            })
            .collect()
    }

    pub(super) fn begin_shutdown(&self) {
        self.closing.store(true, Ordering::Relaxed);
    }

    /// See [`super::PeerEndpoint::fetch`]. Counts the outcome in the metrics.
    pub(super) async fn fetch(
        &self,
        peer: &PeerAddr,
        id: ChunkId,
        len: u32,
    ) -> Result<Bytes, PeerError> {
        let result = if self.closing.load(Ordering::Relaxed) {
            Err(PeerError::Shutdown)
        } else if len > MAX_CHUNK {
            Err(PeerError::Protocol(ProtocolError::RequestTooLarge(len)))
        } else {
            tokio::time::timeout(self.timeout, self.request(peer, id, len))
                .await
                .unwrap_or(Err(PeerError::Timeout))
        };
        let result = match result {
            Err(PeerError::Closed(_)) if self.closing.load(Ordering::Relaxed) => {
                Err(PeerError::Shutdown)
            }
            other => other,
        };
        let label = match &result {
            Ok(bytes) => {
                self.metrics.fetched(Source::Peer, bytes.len() as u64);
                "ok"
            }
            Err(e) => {
                if matches!(e, PeerError::Corrupt) {
                    self.metrics.verify_failed(Source::Peer);
                }
                tracing::debug!(peer = %peer.id, %id, error = %e, "peer fetch failed");
                e.label()
            }
        };
        self.metrics.peer_requests.with_label_values(&[label]).inc();
        result
    }

    async fn request(&self, peer: &PeerAddr, id: ChunkId, len: u32) -> Result<Bytes, PeerError> {
        let conn = self.connection(peer).await?;
        // Failures after the dial are explained by how the connection ended, if it did.
        Self::exchange(&conn, id, len)
            .await
            .map_err(|e| match (&e, conn.close_reason()) {
                (PeerError::Closed(_), Some(reason)) => ended(reason),
                _ => e,
            })
    }

    async fn exchange(conn: &Connection, id: ChunkId, len: u32) -> Result<Bytes, PeerError> {
        let (mut send, mut recv) = conn.open_bi().await.map_err(ended)?;
        send.write_all(&Request { id, len }.to_bytes())
            .await
            .map_err(write_failed)?;
        // Fails only if the stream is already gone, which the read below reports.
        let _ = send.finish();
        let response = read_frame(&mut recv, Response::decode)
            .await
            .map_err(|e| match e {
                FrameError::Malformed(w) => PeerError::Protocol(ProtocolError::Frame(w)),
                FrameError::Ended => PeerError::Protocol(ProtocolError::NoResponse),
                other => PeerError::Closed(other.to_string()),
            })?;
        match response {
            Response::Ok { len: got } if got != len => {
                let _ = recv.stop(VarInt::from_u32(code::STREAM_CANCELLED));
                Err(PeerError::Protocol(ProtocolError::Length {
                    want: len,
                    got,
                }))
            }
            Response::Ok { .. } => read_chunk(&mut recv, id, len).await,
            Response::NotFound => Err(PeerError::NotFound),
            Response::Busy { retry_after_ms } => Err(PeerError::Busy {
                retry_after: Duration::from_millis(u64::from(retry_after_ms)),
            }),
            Response::Error { code } => Err(PeerError::Remote(code)),
        }
    }

    /// The live connection to `peer`, dialling it (by peer id) if there is none.
    async fn connection(&self, peer: &PeerAddr) -> Result<Connection, PeerError> {
        let slot = {
            // Plain map of handles; a panic cannot leave it inconsistent.
            let mut slots = self.slots.lock().unwrap_or_else(|e| e.into_inner());
            slots.entry(peer.id.clone()).or_default().clone()
        };
        let mut held = slot.lock().await;
        if let Some(c) = held.as_ref()
            && c.close_reason().is_none()
            && c.remote_address() == peer.addr
        {
            return Ok(c.clone());
        }
        *held = None;
        let connecting =
            self.endpoint
                .connect(peer.addr, peer.id.as_str())
                .map_err(|e| match e {
                    quinn::ConnectError::EndpointStopping => PeerError::Shutdown,
                    e => PeerError::Connect(ConnectFailure::Dial(e)),
                })?;
        let conn = connecting
            .await
            .map_err(|e| PeerError::Connect(ConnectFailure::Handshake(e)))?;
        tracing::debug!(peer = %peer.id, addr = %peer.addr, "connected to peer");
        self.metrics.peers_connected.inc();
        let (metrics, watched, id) = (self.metrics.clone(), conn.clone(), peer.id.clone());
        let (gone, closing) = (self.gone.clone(), self.closing.clone());
        tokio::spawn(async move {
            let reason = watched.closed().await;
            tracing::debug!(peer = %id, %reason, "connection to peer closed");
            if ended_by_peer(&reason) && !closing.load(Ordering::Relaxed) {
                // No receiver (no download running) is fine.
                let _ = gone.send(id);
            }
            // Last, so a caller that sees the gauge fall has seen the event too.
            metrics.peers_connected.dec();
        });
        *held = Some(conn.clone());
        Ok(conn)
    }
}

/// Reads exactly `len` chunk bytes and the end of the stream, hashing as they come.
async fn read_chunk(recv: &mut RecvStream, id: ChunkId, len: u32) -> Result<Bytes, PeerError> {
    let want = len as usize;
    let mut buf = BytesMut::with_capacity(want);
    let mut hasher = blake3::Hasher::new();
    let mut hashed = 0;
    while buf.len() < want {
        match recv.read_chunk(want - buf.len(), true).await {
            Ok(Some(chunk)) => buf.extend_from_slice(&chunk.bytes),
            Ok(None) => {
                return Err(PeerError::Protocol(ProtocolError::Truncated {
                    want: len,
                    got: buf.len(),
                }));
            }
            Err(e) => return Err(read_failed(e)),
        }
        let ready = hashed + (buf.len() - hashed) / HASH_BLOCK * HASH_BLOCK;
        if ready > hashed {
            hasher.update(&buf[hashed..ready]);
            hashed = ready;
        }
    }
    hasher.update(&buf[hashed..]);
    match recv.read_chunk(1, true).await {
        Ok(None) => {}
        Ok(Some(_)) => return Err(PeerError::Protocol(ProtocolError::Trailing)),
        Err(e) => return Err(read_failed(e)),
    }
    // Equality of blake3::Hash is constant-time.
    if hasher.finalize() != blake3::Hash::from_bytes(*id.as_bytes()) {
        return Err(PeerError::Corrupt);
    }
    Ok(buf.freeze())
}

/// The error for a connection that ended. In TLS 1.3 the client finishes its side of
/// the handshake before the server has checked the client's certificate, so a refused
/// certificate shows up as a connection closed with a TLS alert just after the dial:
/// that is reported as [`PeerError::Connect`], like any other refused handshake.
fn ended(e: quinn::ConnectionError) -> PeerError {
    match &e {
        quinn::ConnectionError::ConnectionClosed(close)
            if (TLS_ALERTS).contains(&u64::from(close.error_code)) =>
        {
            PeerError::Connect(ConnectFailure::Handshake(e))
        }
        _ => PeerError::Closed(e.to_string()),
    }
}

/// Whether the peer ended the connection (closed it, reset it after a restart, or
/// broke it off with a transport error other than a TLS alert, which is a refused
/// handshake), as opposed to an idle timeout or a close of our own.
fn ended_by_peer(reason: &quinn::ConnectionError) -> bool {
    use quinn::ConnectionError as E;
    match reason {
        E::ApplicationClosed(_) | E::Reset => true,
        E::ConnectionClosed(c) => !TLS_ALERTS.contains(&u64::from(c.error_code)),
        _ => false,
    }
}

fn read_failed(e: ReadError) -> PeerError {
    match e {
        ReadError::Reset(code) => PeerError::Closed(format!("stream reset by peer (code {code})")),
        other => PeerError::Closed(other.to_string()),
    }
}

fn write_failed(e: WriteError) -> PeerError {
    match e {
        WriteError::Stopped(code) => {
            PeerError::Closed(format!("request stopped by peer (code {code})"))
        }
        other => PeerError::Closed(other.to_string()),
    }
}
