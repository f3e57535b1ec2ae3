//! The upload queue over real QUIC: with every slot taken, a request waits and is
//! served when a slot frees; beyond the queue (or a peer's share of it), `busy` at once;
//! a waiter that cancels or waits too long gives its place up.

use super::*;

/// One upload slot (so the global limit binds), a queue of `queue` with one place per
/// peer, and a wait of `wait`.
fn queued(queue: usize, wait: Duration) -> UploadLimits {
    UploadLimits {
        max_uploads: 1,
        max_uploads_per_peer: 4,
        upload_queue: queue,
        upload_queue_per_peer: 1,
        upload_queue_wait: wait,
        ..UploadLimits::UNLIMITED
    }
}

fn waits(m: &Metrics, result: &str) -> u64 {
    m.upload_queue_wait
        .with_label_values(&[result])
        .get_sample_count()
}

struct Fleet {
    server: PeerEndpoint,
    metrics: Metrics,
    source: Arc<Stalled>,
    clients: Vec<Arc<PeerEndpoint>>,
}

/// A server with a [`Stalled`] source holding `chunks`, and `clients` clients.
async fn fleet(limits: UploadLimits, chunks: &[Bytes], clients: usize) -> (Fleet, Vec<ChunkId>) {
    let mut names = vec!["server".to_owned()];
    names.extend((0..clients).map(|i| format!("client{i}")));
    let names: Vec<&str> = names.iter().map(String::as_str).collect();
    let pki = pki(&names);
    let source = Arc::new(Stalled::default());
    let ids = chunks
        .iter()
        .map(|b| source.inner.insert(b.clone()))
        .collect();
    let (server, metrics) = node(&pki.identity(0).unwrap(), options(limits), source.clone()).await;
    let mut out = Vec::new();
    for i in 0..clients {
        let (c, _) = node(
            &pki.identity(i + 1).unwrap(),
            options(UploadLimits::UNLIMITED),
            Arc::new(MemorySource::new()),
        )
        .await;
        out.push(Arc::new(c));
    }
    let f = Fleet {
        server,
        metrics,
        source,
        clients: out,
    };
    (f, ids)
}

impl Fleet {
    fn fetch(
        &self,
        client: usize,
        id: ChunkId,
        len: usize,
    ) -> tokio::task::JoinHandle<Result<Bytes, PeerError>> {
        let (c, peer) = (self.clients[client].clone(), addr(&self.server));
        tokio::spawn(async move { c.fetch(&peer, id, len as u32).await })
    }

    async fn entered(&self, n: usize) {
        eventually(&format!("{n} uploads started"), || {
            self.source.entered.load(Ordering::SeqCst) == n
        })
        .await;
    }

    async fn queued(&self, n: usize) {
        eventually(&format!("{n} requests queued"), || {
            self.server.queued_uploads() == n
        })
        .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_slots_queue_a_request_until_one_frees() {
    let (a, b) = (data(20, 300_000), data(21, 200_000));
    let (f, ids) = fleet(
        queued(4, Duration::from_secs(30)),
        &[a.clone(), b.clone()],
        2,
    )
    .await;
    let first = f.fetch(0, ids[0], a.len());
    f.entered(1).await;
    let second = f.fetch(1, ids[1], b.len());
    f.queued(1).await;
    assert_eq!(f.server.active_uploads(), 1);
    assert!(!second.is_finished(), "waits for the slot");
    // The slot frees: the waiter takes it and is served, no `busy` anywhere.
    f.source.release.add_permits(1);
    assert_eq!(first.await.unwrap().unwrap(), a);
    f.entered(2).await;
    assert_eq!(f.server.queued_uploads(), 0);
    f.source.release.add_permits(1);
    let got = second.await.unwrap().unwrap();
    assert_eq!(got, b);
    assert_eq!(ChunkId::of(&got), ids[1]);
    assert_eq!(f.metrics.uploads_refused.get(), 0);
    assert_eq!(f.metrics.uploads_queued.get(), 1);
    assert_eq!(waits(&f.metrics, "served"), 1);
    eventually("slots released", || f.server.active_uploads() == 0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_queue_and_a_peers_share_answer_busy_at_once() {
    let chunks: Vec<Bytes> = (0..5).map(|i| data(30 + i, 50_000)).collect();
    let (f, ids) = fleet(queued(2, Duration::from_secs(30)), &chunks, 3).await;
    let slot = f.fetch(0, ids[0], 50_000);
    f.entered(1).await;
    let waiting0 = f.fetch(0, ids[1], 50_000);
    f.queued(1).await;
    // Client 0 already has its one place in the queue, which has room for another.
    let e = f.fetch(0, ids[2], 50_000).await.unwrap().unwrap_err();
    assert!(matches!(e, PeerError::Busy { .. }), "{e:?}");
    let waiting1 = f.fetch(1, ids[3], 50_000);
    f.queued(2).await;
    // The queue is full.
    let e = f.fetch(2, ids[4], 50_000).await.unwrap().unwrap_err();
    assert!(matches!(e, PeerError::Busy { .. }), "{e:?}");
    assert_eq!(f.metrics.uploads_refused.get(), 2);
    // First come, first served.
    f.source.release.add_permits(1);
    assert_eq!(slot.await.unwrap().unwrap(), chunks[0]);
    f.entered(2).await;
    assert_eq!(f.server.queued_uploads(), 1, "client 1 still waits");
    f.source.release.add_permits(1);
    assert_eq!(waiting0.await.unwrap().unwrap(), chunks[1]);
    f.entered(3).await;
    f.source.release.add_permits(1);
    assert_eq!(waiting1.await.unwrap().unwrap(), chunks[3]);
    assert_eq!(waits(&f.metrics, "served"), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queued_requester_that_cancels_frees_its_place() {
    let chunks: Vec<Bytes> = (0..3).map(|i| data(40 + i, 40_000)).collect();
    let (f, ids) = fleet(queued(1, Duration::from_secs(30)), &chunks, 3).await;
    let slot = f.fetch(0, ids[0], 40_000);
    f.entered(1).await;
    let cancelled = f.fetch(1, ids[1], 40_000);
    f.queued(1).await;
    // The requester drops its fetch (the scheduler cancelled it): its streams are
    // dropped, the server sees the stop and gives the place up.
    cancelled.abort();
    f.queued(0).await;
    eventually("the wait is recorded as cancelled", || {
        waits(&f.metrics, "cancelled") == 1
    })
    .await;
    let next = f.fetch(2, ids[2], 40_000);
    f.queued(1).await;
    assert_eq!(
        f.metrics.uploads_refused.get(),
        0,
        "the freed place was taken"
    );
    f.source.release.add_permits(1);
    assert_eq!(slot.await.unwrap().unwrap(), chunks[0]);
    f.entered(2).await;
    f.source.release.add_permits(1);
    assert_eq!(next.await.unwrap().unwrap(), chunks[2]);
    // The cancelled request never reached the source.
    assert_eq!(f.source.entered.load(Ordering::SeqCst), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wait_past_the_limit_answers_busy() {
    let chunks: Vec<Bytes> = (0..2).map(|i| data(50 + i, 10_000)).collect();
    let wait = Duration::from_millis(200);
    let (f, ids) = fleet(queued(4, wait), &chunks, 2).await;
    let slot = f.fetch(0, ids[0], 10_000);
    f.entered(1).await;
    let started = tokio::time::Instant::now();
    let e = f.fetch(1, ids[1], 10_000).await.unwrap().unwrap_err();
    assert!(matches!(e, PeerError::Busy { .. }), "{e:?}");
    assert!(started.elapsed() >= wait, "answered only after the wait");
    assert_eq!(f.server.queued_uploads(), 0);
    assert_eq!(waits(&f.metrics, "busy"), 1);
    assert_eq!(f.metrics.uploads_refused.get(), 1);
    f.source.release.add_permits(1);
    assert_eq!(slot.await.unwrap().unwrap(), chunks[0]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_answers_waiters_shutting_down() {
    let chunks: Vec<Bytes> = (0..2).map(|i| data(60 + i, 10_000)).collect();
    let (f, ids) = fleet(queued(4, Duration::from_secs(30)), &chunks, 2).await;
    let slot = f.fetch(0, ids[0], 10_000);
    f.entered(1).await;
    let waiter = f.fetch(1, ids[1], 10_000);
    f.queued(1).await;
    let server = Arc::new(f.server);
    let stopping = tokio::spawn({
        let server = server.clone();
        async move { server.shutdown().await }
    });
    let e = waiter.await.unwrap().unwrap_err();
    assert!(
        matches!(e, PeerError::Remote(ErrorCode::SHUTTING_DOWN)),
        "{e:?}"
    );
    // The upload in progress still finishes.
    f.source.release.add_permits(1);
    assert_eq!(slot.await.unwrap().unwrap(), chunks[0]);
    stopping.await.unwrap();
}
