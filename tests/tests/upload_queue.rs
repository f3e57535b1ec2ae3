//! A flash crowd with the upload queue on (`peer.upload_queue`, off by default): one
//! upload slot per agent, so requests wait for slots instead of getting `busy`, and
//! every agent still gets the object byte for byte.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use http::StatusCode;
use shoal_tests::client::get;
use shoal_tests::swarm::TestSwarm;
use shoal_tests::{Object, random_bytes};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn flash_crowd_with_queued_uploads_is_byte_identical() {
    let s = TestSwarm::builder()
        .net(57)
        .agents(6)
        .tweak(|_, c| {
            c.peer.max_uploads = 1;
            c.peer.max_uploads_per_peer = 1;
            c.peer.upload_queue = 4;
            c.peer.upload_queue_per_peer = 1;
            c.peer.upload_queue_wait = Duration::from_secs(1);
            // Slow uploads, so slots stay taken long enough for requests to wait.
            c.peer.upload_rate = bytesize::ByteSize::mib(8);
        })
        .spawn()
        .await
        .unwrap();
    let data = random_bytes(6 << 20, 57);
    s.origin.put("/queued.bin", Object::new(data.clone()));
    let url = s.origin.url("/queued.bin");
    let barrier = std::sync::Arc::new(tokio::sync::Barrier::new(6));
    let tasks: Vec<_> = (0..6)
        .map(|i| {
            let (proxy, url, b) = (s.agent(i).proxy_addr(), url.clone(), barrier.clone());
            tokio::spawn(async move {
                b.wait().await;
                get(proxy, &url).await
            })
        })
        .collect();
    let want = blake3::hash(&data);
    for t in tasks {
        let r = t.await.unwrap().unwrap();
        assert_eq!(r.status, StatusCode::OK);
        assert_eq!(blake3::hash(&r.body), want, "byte-identical");
    }
    let queued: u64 = (0..6)
        .map(|i| s.agent(i).metrics().uploads_queued.get())
        .sum();
    let served: u64 = (0..6)
        .map(|i| {
            s.agent(i)
                .metrics()
                .upload_queue_wait
                .with_label_values(&["served"])
                .get_sample_count()
        })
        .sum();
    assert!(queued > 0, "some requests waited for a slot");
    assert!(served > 0, "and were served after waiting");
    let peer: u64 = (0..6).map(|i| s.fetched(i).0).sum();
    assert!(peer > 0, "agents shared: {peer} peer bytes");
    let origin = s.origin.bytes_sent();
    assert!(
        origin as f64 <= 1.5 * data.len() as f64,
        "origin sent {origin} for {} bytes",
        data.len()
    );
    s.shutdown().await;
}
