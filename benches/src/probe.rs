//! A goodput measurement of the peer transport: two endpoints in this process, one
//! connection, chunks fetched and verified as in production. For benches and manual
//! runs; figures depend on the machine, so nothing asserts on them.

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use shoal_pki::{TlsError, dev_pki};
use shoal_proto::{ChunkId, PeerAddr};

use shoal_agent::metrics::Metrics;
use shoal_agent::transport::{
    MemorySource, PeerEndpoint, PeerError, PeerOptions, TransportError, UploadLimits,
};

/// Bytes moved and time taken by [`goodput_probe`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Goodput {
    /// Verified chunk bytes received (warm-up excluded).
    pub bytes: u64,
    pub chunks: u64,
    pub elapsed: Duration,
    /// Mean size of the UDP datagrams received (warm-up included): shows the MTU the
    /// server's path discovery reached.
    pub datagram_size: u64,
    /// Packets the client declared lost (its acknowledgements and requests).
    pub lost_packets: u64,
}

/// Why the probe could not run.
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    #[error("probe PKI: {0}")]
    Tls(#[from] TlsError),
    #[error("probe endpoint: {0}")]
    Transport(#[from] TransportError),
    #[error("probe fetch: {0}")]
    Fetch(#[from] PeerError),
    #[error("probe task: {0}")]
    Task(#[from] tokio::task::JoinError),
}

impl Goodput {
    /// Bytes per second.
    pub fn rate(&self) -> f64 {
        self.bytes as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

impl fmt::Display for Goodput {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{:.2} GiB in {} chunks, {:.3} s: {:.0} MB/s ({:.2} Gbit/s), \
             {} B/datagram received",
            self.bytes as f64 / f64::from(1u32 << 30),
            self.chunks,
            self.elapsed.as_secs_f64(),
            self.rate() / 1e6,
            self.rate() * 8.0 / 1e9,
            self.datagram_size,
        )
    }
}

/// Serves `total` bytes as `chunk_size`-byte chunks from one endpoint to another, both
/// bound to `ip` port 0, over one connection with `in_flight` requests outstanding,
/// and times it after a short warm-up. At most 64 distinct chunks are held in memory
/// and fetched round-robin; every one is verified on arrival.
pub async fn goodput_probe(
    ip: IpAddr,
    total: u64,
    chunk_size: u32,
    in_flight: usize,
) -> Result<Goodput, ProbeError> {
    let pki = dev_pki(&["probe-server".to_owned(), "probe-client".to_owned()], &[])?;
    let options = PeerOptions {
        limits: UploadLimits::UNLIMITED,
        request_timeout: Duration::from_secs(30),
        ..PeerOptions::default()
    };
    let source = Arc::new(MemorySource::new());
    let distinct = (total / u64::from(chunk_size.max(1))).clamp(1, 64);
    let mut ids: Vec<ChunkId> = Vec::new();
    for i in 0..distinct {
        let mut data = vec![0u8; chunk_size as usize];
        blake3::Hasher::new()
            .update(&i.to_le_bytes())
            .finalize_xof()
            .fill(&mut data);
        ids.push(source.insert(Bytes::from(data)));
    }
    let any = SocketAddr::new(ip, 0);
    let server = PeerEndpoint::bind(
        any,
        &pki.identity(0)?,
        options.clone(),
        source,
        Metrics::default(),
    )
    .await?;
    let client = Arc::new(
        PeerEndpoint::bind(
            any,
            &pki.identity(1)?,
            options,
            Arc::new(MemorySource::new()),
            Metrics::default(),
        )
        .await?,
    );
    let peer = PeerAddr {
        id: server.peer_id().clone(),
        addr: server
            .local_addr()
            .map_err(|source| TransportError::Bind { addr: any, source })?,
    };
    let ids = Arc::new(ids);
    // Warm-up: dial, let MTU discovery and congestion control settle.
    let warm = (64u64 << 20) / u64::from(chunk_size.max(1));
    run(&client, &peer, &ids, chunk_size, warm.max(1), in_flight).await?;

    let count = total.div_ceil(u64::from(chunk_size.max(1)));
    let start = Instant::now();
    run(&client, &peer, &ids, chunk_size, count, in_flight).await?;
    let elapsed = start.elapsed();
    // The probe dials exactly one peer.
    let stats = client.connection_stats().into_iter().next().map(|(_, s)| s);
    client.shutdown().await;
    server.shutdown().await;
    Ok(Goodput {
        bytes: count * u64::from(chunk_size),
        chunks: count,
        elapsed,
        datagram_size: stats
            .map(|s| s.udp_rx.bytes / s.udp_rx.datagrams.max(1))
            .unwrap_or(0),
        lost_packets: stats.map(|s| s.path.lost_packets).unwrap_or(0),
    })
}

/// Fetches `count` chunks, round-robin over `ids`, `in_flight` at a time.
async fn run(
    client: &Arc<PeerEndpoint>,
    peer: &PeerAddr,
    ids: &Arc<Vec<ChunkId>>,
    len: u32,
    count: u64,
    in_flight: usize,
) -> Result<(), ProbeError> {
    let next = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for _ in 0..in_flight.max(1) {
        let (client, peer, ids, next) = (client.clone(), peer.clone(), ids.clone(), next.clone());
        tasks.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= count {
                    return Ok::<(), PeerError>(());
                }
                // `ids` is never empty: `distinct` >= 1.
                let id = ids[(i % ids.len() as u64) as usize];
                client.fetch(&peer, id, len).await?;
            }
        }));
    }
    for t in tasks {
        t.await??;
    }
    Ok(())
}
