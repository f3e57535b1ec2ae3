//! An insider with a valid fleet certificate that announces everything and serves
//! garbage: corrupted, truncated and foreign chunks. No bad byte may reach a client.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use bytes::Bytes;
use shoal_agent::discovery::TrackerClient;
use shoal_agent::metrics::Metrics;
use shoal_agent::transport::{ChunkFuture, ChunkSource, PeerEndpoint, PeerOptions};
use shoal_proto::tracker::{ChunkBitmap, HeldObject, IndexedId};
use shoal_proto::{ChunkId, Layout, ObjectKey, Validator, chunker::chunk_all};
use shoal_tests::agent::TEST_CHUNK;
use shoal_tests::client::get;
use shoal_tests::swarm::{TestSwarm, ip};
use shoal_tests::{Object, random_bytes};

/// Serves wrong bytes for every chunk it is asked for, cycling through three lies.
struct Liar {
    chunks: HashMap<ChunkId, Bytes>,
    other: Bytes,
    served: AtomicUsize,
}

impl ChunkSource for Liar {
    fn chunk<'a>(&'a self, id: &'a ChunkId) -> ChunkFuture<'a> {
        Box::pin(async move {
            let real = self.chunks.get(id)?.clone();
            let n = self.served.fetch_add(1, Ordering::Relaxed);
            Some(match n % 3 {
                0 => {
                    let mut v = real.to_vec();
                    v[real.len() / 2] ^= 1;
                    Bytes::from(v)
                }
                1 => real.slice(..real.len() / 2),
                _ => self.other.clone(),
            })
        })
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn lying_peer_is_dropped_and_no_bad_byte_is_served() {
    let s = TestSwarm::builder()
        .net(34)
        .agents(2)
        .spare(1)
        .spawn()
        .await
        .unwrap();
    let data = random_bytes(1 << 20, 34);
    let obj = Object::new(data.clone());
    let etag = obj.etag.clone().unwrap();
    s.origin.put("/evil", obj);
    let url = s.origin.url("/evil");

    // The liar holds the real chunk list (so its announce looks plausible) and an
    // unrelated chunk to pass off as others.
    let chunks = chunk_all(data.clone(), TEST_CHUNK as u32);
    let liar = Arc::new(Liar {
        chunks: chunks.iter().map(|c| (c.id, c.bytes.clone())).collect(),
        other: random_bytes(TEST_CHUNK as usize, 99),
        served: AtomicUsize::new(0),
    });
    let identity = s.pki.identity(3).unwrap();
    let endpoint = PeerEndpoint::bind(
        SocketAddr::new(ip(34, 12), 0),
        &identity,
        PeerOptions::default(),
        liar.clone(),
        Metrics::default(),
    )
    .await
    .unwrap();
    let cfg = s.config(2, std::path::Path::new("/nonexistent"));
    let tracker = TrackerClient::new(
        &cfg.tracker,
        identity
            .client_config(&[shoal_proto::tracker::ALPN])
            .unwrap(),
        endpoint.local_addr().unwrap(),
        Default::default(),
        Metrics::default(),
    )
    .unwrap();
    let key = ObjectKey::versioned(&url, &Validator::ETag(etag), data.len() as u64).unwrap();
    let layout = Layout::new(data.len() as u64, TEST_CHUNK as u32).unwrap();
    let held = HeldObject {
        key,
        layout,
        have: ChunkBitmap::full(chunks.len() as u32),
        complete: true,
        publish: chunks
            .iter()
            .map(|c| IndexedId {
                index: c.index as u32,
                id: c.id,
            })
            .collect(),
    };
    tracker.announce(vec![held]).await.unwrap();

    for i in 0..2 {
        let r = get(s.agent(i).proxy_addr(), &url).await.unwrap();
        assert_eq!(
            blake3::hash(&r.body),
            blake3::hash(&data),
            "agent {i} got exactly the object"
        );
    }
    assert!(
        liar.served.load(Ordering::Relaxed) > 0,
        "the liar was asked"
    );
    let m = s.agent(0).metrics();
    assert!(
        m.verify_failures.with_label_values(&["peer"]).get() >= 1,
        "corrupt chunks were caught"
    );
    // Agent 1 could use agent 0 as an honest peer.
    assert!(s.fetched(1).0 > 0);
    endpoint.close();
    s.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn foreign_certificates_and_spoofed_addresses_are_refused() {
    let s = TestSwarm::builder()
        .net(35)
        .agents(1)
        .spare(1)
        .spawn()
        .await
        .unwrap();
    let data = random_bytes(300_000, 35);
    s.origin.put("/f", Object::new(data.clone()));
    get(s.agent(0).proxy_addr(), &s.origin.url("/f"))
        .await
        .unwrap();
    let cfg = s.config(5, std::path::Path::new("/nonexistent"));

    // Same name as a fleet member, but signed by another CA.
    let foreign = shoal_pki::dev_pki(&["agent-1".to_owned()], &[vec![ip(35, 40)]]).unwrap();
    let fid = foreign.identity(0).unwrap();
    let ep = PeerEndpoint::bind(
        SocketAddr::new(ip(35, 40), 0),
        &fid,
        PeerOptions::default(),
        Arc::new(shoal_agent::transport::MemorySource::new()),
        Metrics::default(),
    )
    .await
    .unwrap();
    let id = chunk_all(data.clone(), TEST_CHUNK as u32)[0].id;
    let target = shoal_proto::PeerAddr {
        id: "agent-1".parse().unwrap(),
        addr: s.agent(0).peer_addr().unwrap(),
    };
    let e = ep.fetch(&target, id, TEST_CHUNK as u32).await.unwrap_err();
    assert!(
        matches!(e, shoal_agent::transport::PeerError::Connect(_)),
        "{e}"
    );
    let t = TrackerClient::new(
        &cfg.tracker,
        fid.client_config(&[shoal_proto::tracker::ALPN]).unwrap(),
        ep.local_addr().unwrap(),
        Default::default(),
        Metrics::default(),
    )
    .unwrap();
    let key = ObjectKey::try_from("k".to_owned()).unwrap();
    assert!(
        t.sync(t.request(key.clone())).await.is_err(),
        "tracker refuses a foreign CA"
    );

    // A fleet member announcing an address that is neither its source nor its certificate's.
    let real = s.pki.identity(2).unwrap();
    let spoof = TrackerClient::new(
        &cfg.tracker,
        real.client_config(&[shoal_proto::tracker::ALPN]).unwrap(),
        SocketAddr::new(ip(35, 99), 7482),
        Default::default(),
        Metrics::default(),
    )
    .unwrap();
    match spoof.sync(spoof.request(key)).await {
        Err(shoal_agent::discovery::TrackerError::Refused { status: 403, .. }) => {}
        other => panic!("spoofed announce not refused: {other:?}"),
    }
    ep.close();
    s.shutdown().await;
}
