//! Transport tests: real QUIC over 127.0.0.1 (port 0) with an in-memory dev PKI.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use shoal_pki::{DevPki, Identity, dev_pki};
use shoal_proto::wire::{self, ErrorCode, Request, Response};
use tokio::sync::Semaphore;

use super::*;

const LOCAL: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

fn pki(names: &[&str]) -> DevPki {
    let names: Vec<String> = names.iter().map(|s| s.to_string()).collect();
    dev_pki(&names, &[]).unwrap()
}

fn options(limits: UploadLimits) -> PeerOptions {
    PeerOptions {
        limits,
        request_timeout: Duration::from_secs(10),
        ..PeerOptions::default()
    }
}

async fn node(
    identity: &Identity,
    options: PeerOptions,
    source: Arc<dyn ChunkSource>,
) -> (PeerEndpoint, Metrics) {
    let metrics = Metrics::default();
    let ep = PeerEndpoint::bind(
        SocketAddr::new(LOCAL, 0),
        identity,
        options,
        source,
        metrics.clone(),
    )
    .await
    .unwrap();
    (ep, metrics)
}

fn addr(ep: &PeerEndpoint) -> PeerAddr {
    PeerAddr {
        id: ep.peer_id().clone(),
        addr: ep.local_addr().unwrap(),
    }
}

/// Deterministic pseudo-random bytes.
fn data(seed: u64, len: usize) -> Bytes {
    let mut v = vec![0u8; len];
    blake3::Hasher::new()
        .update(&seed.to_le_bytes())
        .finalize_xof()
        .fill(&mut v);
    Bytes::from(v)
}

fn count(m: &Metrics, result: &str) -> u64 {
    m.peer_requests.with_label_values(&[result]).get()
}

/// Polls `cond` every few milliseconds until it holds or 10 s pass.
async fn eventually(what: &str, cond: impl Fn() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !cond() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// A source that holds every request until released (one per permit added).
struct Stalled {
    inner: MemorySource,
    entered: AtomicUsize,
    release: Semaphore,
}

impl Default for Stalled {
    fn default() -> Self {
        Self {
            inner: MemorySource::new(),
            entered: AtomicUsize::new(0),
            release: Semaphore::new(0),
        }
    }
}

impl ChunkSource for Stalled {
    fn chunk<'a>(&'a self, id: &'a ChunkId) -> ChunkFuture<'a> {
        Box::pin(async move {
            self.entered.fetch_add(1, Ordering::SeqCst);
            // Each permit added lets exactly one request through.
            self.release.acquire().await.ok()?.forget();
            self.inner.chunk(id).await
        })
    }
}

#[tokio::test]
async fn fetch_round_trip_verifies_bytes() {
    let pki = pki(&["server", "client"]);
    let source = Arc::new(MemorySource::new());
    let bytes = data(1, 1 << 20);
    let id = source.insert(bytes.clone());
    let (server, sm) = node(
        &pki.identity(0).unwrap(),
        options(UploadLimits::UNLIMITED),
        source,
    )
    .await;
    let (client, cm) = node(
        &pki.identity(1).unwrap(),
        options(UploadLimits::UNLIMITED),
        Arc::new(MemorySource::new()),
    )
    .await;
    let got = client.fetch(&addr(&server), id, 1 << 20).await.unwrap();
    assert_eq!(got, bytes);
    assert_eq!(ChunkId::of(&got), id);
    assert_eq!(count(&cm, "ok"), 1);
    assert_eq!(cm.bytes_fetched.with_label_values(&["peer"]).get(), 1 << 20);
    assert_eq!(sm.bytes_uploaded.get(), 1 << 20);
    eventually("server sees the peer", || sm.peers_connected.get() == 1).await;
    assert_eq!(cm.peers_connected.get(), 1);
    client.shutdown().await;
    server.shutdown().await;
    eventually("connection gone", || sm.peers_connected.get() == 0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_concurrent_fetches_share_one_connection() {
    let pki = pki(&["server", "client"]);
    let source = Arc::new(MemorySource::new());
    let chunks: Vec<(ChunkId, Bytes)> = (0..64)
        .map(|i| {
            let b = data(i, 64 * 1024 + i as usize);
            (source.insert(b.clone()), b)
        })
        .collect();
    let (server, sm) = node(
        &pki.identity(0).unwrap(),
        options(UploadLimits::UNLIMITED),
        source,
    )
    .await;
    let (client, cm) = node(
        &pki.identity(1).unwrap(),
        options(UploadLimits::UNLIMITED),
        Arc::new(MemorySource::new()),
    )
    .await;
    let peer = addr(&server);
    let fetches = chunks
        .iter()
        .map(|(id, b)| client.fetch(&peer, *id, b.len() as u32));
    let results = futures_util::future::join_all(fetches).await;
    for ((id, want), got) in chunks.iter().zip(results) {
        let got = got.unwrap();
        assert_eq!(&got, want);
        assert_eq!(ChunkId::of(&got), *id);
    }
    assert_eq!(count(&cm, "ok"), 64);
    assert_eq!(
        cm.peers_connected.get(),
        1,
        "one dial for 64 concurrent fetches"
    );
    eventually("server sees one connection", || {
        sm.peers_connected.get() == 1
    })
    .await;
}

#[tokio::test]
async fn missing_chunk_is_not_found() {
    let pki = pki(&["server", "client"]);
    let (server, _) = node(
        &pki.identity(0).unwrap(),
        options(UploadLimits::UNLIMITED),
        Arc::new(MemorySource::new()),
    )
    .await;
    let (client, cm) = node(
        &pki.identity(1).unwrap(),
        options(UploadLimits::UNLIMITED),
        Arc::new(MemorySource::new()),
    )
    .await;
    let e = client
        .fetch(&addr(&server), ChunkId::of(b"nope"), 4)
        .await
        .unwrap_err();
    assert!(matches!(e, PeerError::NotFound), "{e:?}");
    assert_eq!(count(&cm, "not_found"), 1);
}

#[tokio::test]
async fn wrong_length_is_a_remote_error() {
    let pki = pki(&["server", "client"]);
    let source = Arc::new(MemorySource::new());
    let id = source.insert(data(2, 1000));
    let (server, _) = node(
        &pki.identity(0).unwrap(),
        options(UploadLimits::UNLIMITED),
        source,
    )
    .await;
    let (client, _) = node(
        &pki.identity(1).unwrap(),
        options(UploadLimits::UNLIMITED),
        Arc::new(MemorySource::new()),
    )
    .await;
    let e = client.fetch(&addr(&server), id, 999).await.unwrap_err();
    assert!(
        matches!(e, PeerError::Remote(ErrorCode::LENGTH_MISMATCH)),
        "{e:?}"
    );
    let e = client
        .fetch(&addr(&server), id, wire::MAX_CHUNK + 1)
        .await
        .unwrap_err();
    assert!(
        matches!(e, PeerError::Protocol(ProtocolError::RequestTooLarge(_))),
        "{e:?}"
    );
}

#[tokio::test]
async fn zero_upload_limit_answers_busy() {
    let pki = pki(&["server", "client"]);
    let source = Arc::new(MemorySource::new());
    let id = source.insert(data(3, 1000));
    let none = UploadLimits {
        max_uploads: 0,
        ..UploadLimits::UNLIMITED
    };
    let (server, sm) = node(&pki.identity(0).unwrap(), options(none), source).await;
    let (client, cm) = node(
        &pki.identity(1).unwrap(),
        options(UploadLimits::UNLIMITED),
        Arc::new(MemorySource::new()),
    )
    .await;
    let e = client.fetch(&addr(&server), id, 1000).await.unwrap_err();
    assert!(
        matches!(e, PeerError::Busy { retry_after } if retry_after > Duration::ZERO),
        "{e:?}"
    );
    assert_eq!(sm.uploads_refused.get(), 1);
    assert_eq!(count(&cm, "busy"), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn saturated_per_peer_limit_answers_busy_at_once() {
    let pki = pki(&["server", "client"]);
    let source = Arc::new(Stalled::default());
    let bytes = data(4, 5000);
    let id = source.inner.insert(bytes.clone());
    let one = UploadLimits {
        max_uploads: 8,
        max_uploads_per_peer: 1,
        ..UploadLimits::UNLIMITED
    };
    let (server, sm) = node(&pki.identity(0).unwrap(), options(one), source.clone()).await;
    let (client, _) = node(
        &pki.identity(1).unwrap(),
        options(UploadLimits::UNLIMITED),
        Arc::new(MemorySource::new()),
    )
    .await;
    let client = Arc::new(client);
    let peer = addr(&server);
    let first = tokio::spawn({
        let (client, peer) = (client.clone(), peer.clone());
        async move { client.fetch(&peer, id, 5000).await }
    });
    eventually("first request holds the slot", || {
        source.entered.load(Ordering::SeqCst) == 1
    })
    .await;
    assert_eq!(server.active_uploads(), 1);
    let e = client.fetch(&peer, id, 5000).await.unwrap_err();
    assert!(matches!(e, PeerError::Busy { .. }), "{e:?}");
    assert_eq!(sm.uploads_refused.get(), 1);
    source.release.add_permits(1);
    assert_eq!(first.await.unwrap().unwrap(), bytes);
    eventually("slot released", || server.active_uploads() == 0).await;
}

#[tokio::test]
async fn lying_peer_is_corrupt() {
    let pki = pki(&["liar", "client"]);
    let source = Arc::new(MemorySource::new());
    let honest = data(5, 100_000);
    let id = ChunkId::of(&honest);
    source.insert_as(id, data(6, 100_000));
    let (server, _) = node(
        &pki.identity(0).unwrap(),
        options(UploadLimits::UNLIMITED),
        source,
    )
    .await;
    let (client, cm) = node(
        &pki.identity(1).unwrap(),
        options(UploadLimits::UNLIMITED),
        Arc::new(MemorySource::new()),
    )
    .await;
    let e = client.fetch(&addr(&server), id, 100_000).await.unwrap_err();
    assert!(matches!(e, PeerError::Corrupt) && e.blames_peer(), "{e:?}");
    assert_eq!(cm.verify_failures.with_label_values(&["peer"]).get(), 1);
    assert_eq!(cm.bytes_fetched.with_label_values(&["peer"]).get(), 0);
    assert_eq!(count(&cm, "corrupt"), 1);
}

#[tokio::test]
async fn slow_peer_times_out() {
    let pki = pki(&["server", "client"]);
    let source = Arc::new(Stalled::default());
    let id = source.inner.insert(data(7, 10));
    let (server, _) = node(
        &pki.identity(0).unwrap(),
        options(UploadLimits::UNLIMITED),
        source,
    )
    .await;
    let quick = PeerOptions {
        request_timeout: Duration::from_millis(300),
        ..options(UploadLimits::UNLIMITED)
    };
    let (client, cm) = node(
        &pki.identity(1).unwrap(),
        quick,
        Arc::new(MemorySource::new()),
    )
    .await;
    let e = client.fetch(&addr(&server), id, 10).await.unwrap_err();
    assert!(matches!(e, PeerError::Timeout), "{e:?}");
    assert_eq!(count(&cm, "timeout"), 1);
}

#[tokio::test]
async fn client_cert_from_another_ca_is_refused() {
    let fleet = pki(&["server"]);
    let rogue = pki(&["rogue"]);
    let source = Arc::new(MemorySource::new());
    let id = source.insert(data(8, 10));
    let (server, sm) = node(
        &fleet.identity(0).unwrap(),
        options(UploadLimits::UNLIMITED),
        source,
    )
    .await;
    // The rogue trusts the fleet CA, so only the server can be the one refusing.
    let bundle = format!("{}{}", fleet.ca_pem, rogue.ca_pem);
    let r = &rogue.certs[0];
    let rogue_id = Identity::from_pem(&bundle, &r.cert_pem, &r.key_pem).unwrap();
    let (client, cm) = node(
        &rogue_id,
        options(UploadLimits::UNLIMITED),
        Arc::new(MemorySource::new()),
    )
    .await;
    let e = client.fetch(&addr(&server), id, 10).await.unwrap_err();
    assert!(matches!(e, PeerError::Connect(_)), "{e:?}");
    assert_eq!(count(&cm, "connect"), 1);
    assert_eq!(sm.peers_connected.get(), 0);
    assert_eq!(sm.bytes_uploaded.get(), 0);
}

#[tokio::test]
async fn server_cert_from_another_ca_is_refused() {
    let fleet = pki(&["client"]);
    let rogue = pki(&["server"]);
    let source = Arc::new(MemorySource::new());
    let id = source.insert(data(9, 10));
    let (server, sm) = node(
        &rogue.identity(0).unwrap(),
        options(UploadLimits::UNLIMITED),
        source,
    )
    .await;
    let (client, _) = node(
        &fleet.identity(0).unwrap(),
        options(UploadLimits::UNLIMITED),
        Arc::new(MemorySource::new()),
    )
    .await;
    let e = client.fetch(&addr(&server), id, 10).await.unwrap_err();
    assert!(
        matches!(e, PeerError::Connect(ConnectFailure::Handshake(_))),
        "{e:?}"
    );
    assert_eq!(sm.bytes_uploaded.get(), 0);
}

#[tokio::test]
async fn malformed_frame_resets_only_that_stream() {
    let pki = pki(&["server", "raw"]);
    let source = Arc::new(MemorySource::new());
    let bytes = data(10, 3000);
    let id = source.insert(bytes.clone());
    let opts = PeerOptions {
        request_frame_timeout: Duration::from_millis(200),
        ..options(UploadLimits::UNLIMITED)
    };
    let (server, _) = node(&pki.identity(0).unwrap(), opts.clone(), source).await;
    // A raw quinn client with a fleet certificate, to send what PeerEndpoint never would.
    let raw = quic::endpoint(SocketAddr::new(LOCAL, 0), &pki.identity(1).unwrap(), &opts).unwrap();
    let conn = raw
        .connect(server.local_addr().unwrap(), "server")
        .unwrap()
        .await
        .unwrap();
    let reset_code = |e: quinn::ReadToEndError| match e {
        quinn::ReadToEndError::Read(quinn::ReadError::Reset(c)) => c.into_inner(),
        other => panic!("expected a reset, got {other:?}"),
    };

    // Garbage: wrong version.
    let (mut send, mut recv) = conn.open_bi().await.unwrap();
    send.write_all(&[9, 9, 9, 9]).await.unwrap();
    send.finish().unwrap();
    let e = recv.read_to_end(1024).await.unwrap_err();
    assert_eq!(reset_code(e), u64::from(wire::code::STREAM_MALFORMED));

    // Truncated: half a request, then end of stream.
    let (mut send, mut recv) = conn.open_bi().await.unwrap();
    send.write_all(&Request { id, len: 3000 }.to_bytes()[..20])
        .await
        .unwrap();
    send.finish().unwrap();
    let e = recv.read_to_end(1024).await.unwrap_err();
    assert_eq!(reset_code(e), u64::from(wire::code::STREAM_MALFORMED));

    // Trailing bytes after a valid request.
    let (mut send, mut recv) = conn.open_bi().await.unwrap();
    send.write_all(&Request { id, len: 3000 }.to_bytes())
        .await
        .unwrap();
    send.write_all(b"extra").await.unwrap();
    send.finish().unwrap();
    let e = recv.read_to_end(1 << 20).await.unwrap_err();
    assert_eq!(reset_code(e), u64::from(wire::code::STREAM_MALFORMED));

    // Silence: the request-frame deadline resets the stream.
    let (mut send, mut recv) = conn.open_bi().await.unwrap();
    send.write_all(&[wire::VERSION]).await.unwrap();
    let e = recv.read_to_end(1024).await.unwrap_err();
    assert_eq!(reset_code(e), u64::from(wire::code::STREAM_TIMEOUT));

    // The same connection still serves a good request.
    let (mut send, mut recv) = conn.open_bi().await.unwrap();
    send.write_all(&Request { id, len: 3000 }.to_bytes())
        .await
        .unwrap();
    send.finish().unwrap();
    let all = recv.read_to_end(1 << 20).await.unwrap();
    let head = Response::Ok { len: 3000 }.to_vec();
    assert_eq!(&all[..head.len()], &head[..]);
    assert_eq!(&all[head.len()..], &bytes[..]);
    assert!(conn.close_reason().is_none());
}

#[tokio::test]
async fn too_many_malformed_frames_close_the_connection() {
    let pki = pki(&["server", "raw"]);
    let opts = options(UploadLimits::UNLIMITED);
    let (server, _) = node(
        &pki.identity(0).unwrap(),
        opts.clone(),
        Arc::new(MemorySource::new()),
    )
    .await;
    let raw = quic::endpoint(SocketAddr::new(LOCAL, 0), &pki.identity(1).unwrap(), &opts).unwrap();
    let conn = raw
        .connect(server.local_addr().unwrap(), "server")
        .unwrap()
        .await
        .unwrap();
    for _ in 0..server::MAX_STRIKES {
        let Ok((mut send, mut recv)) = conn.open_bi().await else {
            break;
        };
        let _ = send.write_all(&[0xff; 8]).await;
        let _ = send.finish();
        let _ = recv.read_to_end(64).await;
    }
    let reason = tokio::time::timeout(Duration::from_secs(10), conn.closed())
        .await
        .unwrap();
    assert!(
        matches!(reason, quinn::ConnectionError::ApplicationClosed(ref c)
            if c.error_code.into_inner() == u64::from(wire::code::CLOSE_PROTOCOL)),
        "{reason:?}"
    );
}

#[tokio::test]
async fn rate_limited_upload_delivers_intact_bytes() {
    let pki = pki(&["server", "client"]);
    let source = Arc::new(MemorySource::new());
    let bytes = data(11, 600_000);
    let id = source.insert(bytes.clone());
    let paced = UploadLimits {
        upload_rate: 4 << 20,
        ..UploadLimits::UNLIMITED
    };
    let (server, sm) = node(&pki.identity(0).unwrap(), options(paced), source).await;
    let (client, _) = node(
        &pki.identity(1).unwrap(),
        options(UploadLimits::UNLIMITED),
        Arc::new(MemorySource::new()),
    )
    .await;
    assert_eq!(
        client.fetch(&addr(&server), id, 600_000).await.unwrap(),
        bytes
    );
    assert_eq!(sm.bytes_uploaded.get(), 600_000);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_shutdown_lets_uploads_finish() {
    let pki = pki(&["server", "client"]);
    let source = Arc::new(Stalled::default());
    let bytes = data(12, 10_000);
    let id = source.inner.insert(bytes.clone());
    let (server, _) = node(
        &pki.identity(0).unwrap(),
        options(UploadLimits::UNLIMITED),
        source.clone(),
    )
    .await;
    let server = Arc::new(server);
    let quick = PeerOptions {
        request_timeout: Duration::from_millis(500),
        ..options(UploadLimits::UNLIMITED)
    };
    let (client, _) = node(
        &pki.identity(1).unwrap(),
        quick,
        Arc::new(MemorySource::new()),
    )
    .await;
    let client = Arc::new(client);
    let peer = addr(&server);
    let first = tokio::spawn({
        let (client, peer) = (client.clone(), peer.clone());
        async move { client.fetch(&peer, id, 10_000).await }
    });
    eventually("upload in progress", || {
        source.entered.load(Ordering::SeqCst) == 1
    })
    .await;
    let stopping = tokio::spawn({
        let server = server.clone();
        async move { server.shutdown().await }
    });
    eventually("server stopping", || server.is_shutting_down()).await;
    // New requests on the open connection are refused; the one in progress goes on.
    let e = client.fetch(&peer, id, 10_000).await.unwrap_err();
    assert!(
        matches!(e, PeerError::Remote(ErrorCode::SHUTTING_DOWN)),
        "{e:?}"
    );
    source.release.add_permits(1);
    assert_eq!(first.await.unwrap().unwrap(), bytes);
    stopping.await.unwrap();
    // Nobody answers any more.
    let e = client.fetch(&peer, id, 10_000).await.unwrap_err();
    assert!(!e.blames_peer(), "{e:?}");
    client.shutdown().await;
    let e = client.fetch(&peer, id, 10_000).await.unwrap_err();
    assert!(matches!(e, PeerError::Shutdown), "{e:?}");
}

#[tokio::test]
async fn peer_closing_its_connection_is_reported_gone() {
    let pki = pki(&["server", "client"]);
    let source = Arc::new(MemorySource::new());
    let id = source.insert(data(13, 1000));
    let (server, _) = node(
        &pki.identity(0).unwrap(),
        options(UploadLimits::UNLIMITED),
        source,
    )
    .await;
    let (client, cm) = node(
        &pki.identity(1).unwrap(),
        options(UploadLimits::UNLIMITED),
        Arc::new(MemorySource::new()),
    )
    .await;
    let mut gone = client.gone();
    client.fetch(&addr(&server), id, 1000).await.unwrap();
    assert!(gone.try_recv().is_err(), "nothing gone while connected");
    // The server stops (it closes every connection): the client hears of it.
    server.close();
    let who = tokio::time::timeout(Duration::from_secs(10), gone.recv())
        .await
        .expect("a gone event")
        .unwrap();
    assert_eq!(&who, server.peer_id());
    // Our own shutdown is not the peer leaving.
    let (server2, _) = node(
        &pki.identity(0).unwrap(),
        options(UploadLimits::UNLIMITED),
        Arc::new(MemorySource::new()),
    )
    .await;
    let _ = client.fetch(&addr(&server2), id, 1000).await;
    assert_eq!(cm.peers_connected.get(), 1);
    client.close();
    // The watcher sends its event (if any) before the gauge falls.
    eventually("connection closed", || cm.peers_connected.get() == 0).await;
    assert!(gone.try_recv().is_err(), "our own close is not reported");
    server2.shutdown().await;
}

mod queue;
