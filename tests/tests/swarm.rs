//! Several agents, a tracker and an origin: flash crowds, warm swarms, failures.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use http::StatusCode;
use shoal_tests::client::{eventually, get};
use shoal_tests::swarm::TestSwarm;
use shoal_tests::{Object, random_bytes};

/// Every agent GETs `url` at once; returns the bodies' hashes.
async fn crowd(s: &TestSwarm, idx: &[usize], url: &str) -> Vec<blake3::Hash> {
    let barrier = std::sync::Arc::new(tokio::sync::Barrier::new(idx.len()));
    let tasks: Vec<_> = idx
        .iter()
        .map(|&i| {
            let (proxy, url, b) = (s.agent(i).proxy_addr(), url.to_owned(), barrier.clone());
            tokio::spawn(async move {
                b.wait().await;
                get(proxy, &url).await
            })
        })
        .collect();
    let mut out = Vec::new();
    for t in tasks {
        let r = t.await.unwrap().unwrap();
        assert_eq!(r.status, StatusCode::OK);
        out.push(blake3::hash(&r.body));
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn flash_crowd_then_warm_swarm() {
    let mut s = TestSwarm::builder()
        .net(31)
        .agents(8)
        .spare(1)
        .spawn()
        .await
        .unwrap();
    let data = random_bytes(6 << 20, 31);
    s.origin.put("/release.bin", Object::new(data.clone()));
    let url = s.origin.url("/release.bin");
    let want = blake3::hash(&data);

    let hashes = crowd(&s, &(0..8).collect::<Vec<_>>(), &url).await;
    assert!(
        hashes.iter().all(|h| *h == want),
        "every agent byte-identical"
    );
    let origin = s.origin.bytes_sent();
    assert!(
        origin as f64 <= 1.15 * data.len() as f64,
        "origin sent {origin} for {} bytes",
        data.len()
    );
    let peer: u64 = (0..8).map(|i| s.fetched(i).0).sum();
    assert!(
        peer >= 6 * data.len() as u64,
        "agents shared: {peer} peer bytes"
    );

    // A later agent on a warm swarm takes nothing from the origin.
    let late = s.add_agent().await.unwrap();
    let r = get(s.agent(late).proxy_addr(), &url).await.unwrap();
    assert_eq!(blake3::hash(&r.body), want);
    assert_eq!(s.fetched(late).1, 0, "no origin bytes for the late agent");
    assert_eq!(s.origin.bytes_sent(), origin);
    s.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn agent_killed_mid_transfer_others_finish() {
    // Slow uploads so the crowd is still running when one agent dies.
    let mut s = TestSwarm::builder()
        .net(32)
        .agents(5)
        .tweak(|_, c| c.peer.upload_rate = bytesize::ByteSize::mib(4))
        .spawn()
        .await
        .unwrap();
    let data = random_bytes(8 << 20, 32);
    s.origin.put("/big", Object::new(data.clone()));
    let url = s.origin.url("/big");
    let mut clients: Vec<_> = (0..5)
        .map(|i| {
            let (p, url) = (s.agent(i).proxy_addr(), url.clone());
            Some(tokio::spawn(async move { get(p, &url).await }))
        })
        .collect();
    // Kill the first agent seen uploading to the others. Which agent that is depends
    // on who the tracker names first, so it is not fixed: under load an agent that
    // got everything from its peers may never upload at all.
    let uploader = || (0..5).find(|&i| s.agent(i).metrics().bytes_uploaded.get() > 0);
    assert!(
        eventually(Duration::from_secs(30), || uploader().is_some()).await,
        "no agent uploaded anything"
    );
    let v = uploader().unwrap();
    let unfinished = (0..5)
        .filter(|&i| i != v && !clients[i].as_ref().unwrap().is_finished())
        .count();
    s.agents[v].take().unwrap().kill();
    clients[v].take().unwrap().abort();
    let want = blake3::hash(&data);
    for t in clients.into_iter().flatten() {
        let r = t.await.unwrap().unwrap();
        assert_eq!(blake3::hash(&r.body), want);
    }
    assert!(
        unfinished > 0,
        "the crowd had finished before agent {v} died"
    );
    s.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn tracker_down_serves_from_origin_and_swarm_resumes() {
    let mut s = TestSwarm::builder()
        .net(33)
        .agents(3)
        .spawn()
        .await
        .unwrap();
    let data = random_bytes(2 << 20, 33);
    s.origin.put("/t", Object::new(data.clone()));
    let url = s.origin.url("/t");
    s.stop_tracker().await;
    let r = get(s.agent(0).proxy_addr(), &url).await.unwrap();
    assert_eq!(r.body, data);
    assert!(s.agent(0).metrics().tracker_errors.get() > 0);
    assert_eq!(s.fetched(0).0, 0);
    // The tracker comes back empty; agent 0 re-announces what it holds.
    s.restart_tracker().await.unwrap();
    assert!(
        eventually(Duration::from_secs(10), || {
            s.tracker
                .as_ref()
                .unwrap()
                .metrics()
                .render()
                .contains("shoal_tracker_objects 1")
        })
        .await,
        "agent 0 re-announced its object"
    );
    let before = s.origin.bytes_sent();
    let r = get(s.agent(1).proxy_addr(), &url).await.unwrap();
    assert_eq!(r.body, data);
    assert_eq!(s.fetched(1).1, 0, "agent 1 took everything from its peer");
    assert_eq!(s.origin.bytes_sent(), before);
    s.shutdown().await;
}
