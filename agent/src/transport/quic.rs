//! quinn endpoint construction and QUIC tuning.
//!
//! Tuning for goodput on loopback and LAN, measured with the goodput probe (`benches/src/probe.rs`) (1 GiB,
//! one connection, release build; figures in the commit that set them). On loopback the
//! transport is CPU-bound: AES-GCM both ways, BLAKE3 on receipt and three copies per
//! byte. What mattered, and what did not:
//!
//! - **Datagram size (mattered most).** Per-packet work dominates, so we advertise a
//!   65 527-byte `max_udp_payload_size` and let MTU discovery (DPLPMTUD) probe upwards,
//!   but only to [`MTU_CEILING`] = 6 500 bytes. quinn 0.11 sends up to 10 datagrams per
//!   GSO `sendmsg`, and Linux refuses a GSO send above 64 KiB with `EMSGSIZE`, which
//!   quinn-udp drops silently: with a 64 KiB MTU almost every batch vanished, black-hole
//!   detection fell back to 1 200 bytes, and goodput halved. 6 500 × 10 fits. Loopback
//!   and jumbo-frame LANs settle at 6 500, an ordinary LAN at ~1 450 (lost probes are not
//!   counted as congestion, so probing costs nothing there). Turning GSO off instead and
//!   probing to 64 KiB was no faster on loopback and half as fast at a 1 500-byte MTU.
//! - **Stream order.** Send fairness is off: quinn sends streams in the order they were
//!   written instead of round-robin, so chunks complete in request order (what in-order
//!   streaming to a client wants) and the bytes being copied, encrypted and hashed stay
//!   in cache. With 8 requests of 1 MiB in flight this gave +50–80 % goodput.
//! - **Flow-control windows (no measurable effect on loopback).** quinn's defaults
//!   (1.25 MB per stream, 10 MB send window) assume 100 Mbit/s × 100 ms. A chunk is up to
//!   16 MiB and on a LAN a few milliseconds of scheduling delay at 10 Gbit/s is several
//!   MB in flight, so: per-stream receive window 8 MiB, connection receive window and
//!   send window 32 MiB. That bounds what one peer can make us buffer to 32 MiB.
//! - **Socket buffers.** 4 MiB send/receive socket buffers (Linux caps them at
//!   `net.core.{r,w}mem_max`), so a burst at line rate is not dropped by the kernel.
//! - **Streams.** The server allows `max_uploads_per_peer + 16` (plus
//!   `upload_queue_per_peer` when `upload_queue` is on)
//!   concurrent streams per connection, so a requester over its share gets a quick
//!   `busy` (or a place in the upload queue) rather than queueing inside QUIC; the client side allows none (we never serve on connections we dial).
//!   No unidirectional streams, no datagrams, no keep-alive (idle pooled connections
//!   are let go and redialled).

use std::net::{SocketAddr, UdpSocket};
use std::sync::Arc;

use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use quinn::{
    IdleTimeout, MtuDiscoveryConfig, ReadError, ReadExactError, RecvStream, TransportConfig, VarInt,
};
use shoal_pki::Identity;
use shoal_proto::wire::{Decode, MAX_FRAME_LEN, WireError};

use super::{ALPN, PeerOptions, TransportError};

/// Per-stream receive window, bytes.
const STREAM_WINDOW: u32 = 8 << 20;
/// Per-connection receive window and send window, bytes.
const CONNECTION_WINDOW: u32 = 32 << 20;
/// Largest UDP payload we accept (quinn's maximum).
const MAX_UDP_PAYLOAD: u16 = 65_527;
/// Largest UDP payload MTU discovery probes for: 10 GSO segments must fit in 64 KiB.
const MTU_CEILING: u16 = 6_500;
/// Requested UDP socket buffer sizes, bytes.
const SOCKET_BUFFER: usize = 4 << 20;
/// Streams per connection beyond the per-peer upload limit (answered `busy`).
const STREAM_HEADROOM: u32 = 16;
/// Upper bound of concurrent streams per connection.
const MAX_STREAMS: u32 = 1024;

/// A bound endpoint that serves (mutual TLS, our ALPN) and dials with our identity.
pub(super) fn endpoint(
    listen: SocketAddr,
    identity: &Identity,
    options: &PeerOptions,
) -> Result<quinn::Endpoint, TransportError> {
    let quic = |e: quinn::crypto::rustls::NoInitialCipherSuite| TransportError::Quic(e.to_string());
    let server_tls = QuicServerConfig::try_from(identity.server_config(&[ALPN])?).map_err(quic)?;
    let client_tls = QuicClientConfig::try_from(identity.client_config(&[ALPN])?).map_err(quic)?;

    let limits = &options.limits;
    // A peer's places in the upload queue exist only when there is a queue.
    let queued = if limits.upload_queue > 0 {
        limits.upload_queue_per_peer
    } else {
        0
    };
    let streams = u32::try_from(limits.max_uploads_per_peer.saturating_add(queued))
        .unwrap_or(u32::MAX)
        .saturating_add(STREAM_HEADROOM)
        .min(MAX_STREAMS);
    let mut server = quinn::ServerConfig::with_crypto(Arc::new(server_tls));
    server.transport_config(Arc::new(transport(options, VarInt::from_u32(streams))));
    let mut client = quinn::ClientConfig::new(Arc::new(client_tls));
    client.transport_config(Arc::new(transport(options, VarInt::from_u32(0))));

    let mut config = quinn::EndpointConfig::default();
    config
        .max_udp_payload_size(MAX_UDP_PAYLOAD)
        .map_err(|e| TransportError::Quic(e.to_string()))?;

    let bind_err = |source| TransportError::Bind {
        addr: listen,
        source,
    };
    let socket = UdpSocket::bind(listen).map_err(bind_err)?;
    tune_socket(&socket);
    let runtime = Arc::new(quinn::TokioRuntime);
    let mut endpoint =
        quinn::Endpoint::new(config, Some(server), socket, runtime).map_err(bind_err)?;
    endpoint.set_default_client_config(client);
    Ok(endpoint)
}

/// Transport parameters for one side; `incoming_bidi` is how many concurrent
/// streams the other side may open towards us.
fn transport(options: &PeerOptions, incoming_bidi: VarInt) -> TransportConfig {
    let mut t = TransportConfig::default();
    t.max_concurrent_bidi_streams(incoming_bidi)
        .max_concurrent_uni_streams(VarInt::from_u32(0))
        .stream_receive_window(VarInt::from_u32(STREAM_WINDOW))
        .receive_window(VarInt::from_u32(CONNECTION_WINDOW))
        .send_window(u64::from(CONNECTION_WINDOW))
        .datagram_receive_buffer_size(None)
        .keep_alive_interval(None)
        .send_fairness(false);
    // Idle timeouts above 2^62 ms are impossible; fall back to quinn's default then.
    if let Ok(idle) = IdleTimeout::try_from(options.idle_timeout) {
        t.max_idle_timeout(Some(idle));
    }
    let mut mtu = MtuDiscoveryConfig::default();
    mtu.upper_bound(MTU_CEILING);
    t.mtu_discovery_config(Some(mtu));
    t
}

/// Best effort: the kernel may cap the sizes, and a failure only costs goodput.
fn tune_socket(socket: &UdpSocket) {
    let state = match quinn::udp::UdpSocketState::new(socket.into()) {
        Ok(s) => s,
        Err(e) => {
            tracing::debug!(error = %e, "cannot inspect UDP socket");
            return;
        }
    };
    if let Err(e) = state.set_recv_buffer_size(socket.into(), SOCKET_BUFFER) {
        tracing::debug!(error = %e, "cannot enlarge UDP receive buffer");
    }
    if let Err(e) = state.set_send_buffer_size(socket.into(), SOCKET_BUFFER) {
        tracing::debug!(error = %e, "cannot enlarge UDP send buffer");
    }
}

/// Why a frame could not be read from a stream.
#[derive(Debug, thiserror::Error)]
pub(super) enum FrameError {
    #[error("{0}")]
    Malformed(#[from] WireError),
    #[error("stream ended inside a frame")]
    Ended,
    #[error("stream reset by the peer (code {0})")]
    Reset(VarInt),
    #[error("{0}")]
    Lost(String),
}

/// Reads exactly one frame from `recv` (never a byte past it), decoding with
/// `decode` (`Request::decode` or `Response::decode`).
pub(super) async fn read_frame<T>(
    recv: &mut RecvStream,
    decode: fn(&[u8]) -> Result<Decode<T>, WireError>,
) -> Result<T, FrameError> {
    let mut buf = [0u8; MAX_FRAME_LEN];
    let mut have = 0;
    loop {
        let need = match decode(&buf[..have])? {
            Decode::Frame(frame, _) => return Ok(frame),
            Decode::NeedMore(n) => n,
        };
        // The decoder never asks for more than MAX_FRAME_LEN in total.
        let Some(dst) = buf.get_mut(have..have + need) else {
            return Err(FrameError::Malformed(WireError::FrameTooLarge {
                len: have + need,
            }));
        };
        recv.read_exact(dst).await.map_err(|e| match e {
            ReadExactError::FinishedEarly(_) => FrameError::Ended,
            ReadExactError::ReadError(ReadError::Reset(code)) => FrameError::Reset(code),
            ReadExactError::ReadError(e) => FrameError::Lost(e.to_string()),
        })?;
        have += need;
    }
}
