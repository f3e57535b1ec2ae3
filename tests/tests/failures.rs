//! Failure suite, swarm side: garbage on the peer port and a tracker that dies and
//! comes back in the middle of a flash crowd. Every client must get the origin's exact
//! bytes. The rest of the suite: `agent/tests/kill9.rs` (SIGKILL mid-fill, restart),
//! `tests/tests/disk_faults.rs` (full and read-only cache disk, needs root),
//! `tests/tests/hostile.rs` (a peer serving wrong bytes), `tests/tests/abuse.rs`
//! (connection floods); docs/operations.md lists them.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use shoal_tests::client::{eventually, get};
use shoal_tests::swarm::TestSwarm;
use shoal_tests::{Object, random_bytes};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn garbage_udp_on_the_peer_port_changes_nothing() {
    let s = TestSwarm::builder()
        .net(41)
        .agents(2)
        .spawn()
        .await
        .unwrap();
    let data = random_bytes(2 << 20, 41);
    s.origin.put("/g", Object::new(data.clone()));
    let url = s.origin.url("/g");
    let want = blake3::hash(&data);
    assert_eq!(
        blake3::hash(&get(s.agent(0).proxy_addr(), &url).await.unwrap().body),
        want
    );

    // 20,000 datagrams at agent 0's QUIC port: random bytes, QUIC-looking long
    // headers with random connection ids, empty and maximum-size ones.
    let peer = s.agent(0).peer_addr().expect("peer listener");
    let sock = tokio::net::UdpSocket::bind("127.0.41.200:0").await.unwrap();
    let mut seed = 41u64;
    let mut next = || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    for i in 0..20_000u32 {
        let len = match i % 4 {
            0 => 0,
            1 => 1200,
            2 => 1500,
            _ => (next() % 1400) as usize,
        };
        let mut pkt: Vec<u8> = (0..len).map(|_| next() as u8).collect();
        if i % 3 == 0 && pkt.len() > 6 {
            pkt[0] = 0xc0 | (pkt[0] & 0x0f); // long header, "Initial"
            pkt[1..5].copy_from_slice(&1u32.to_be_bytes()); // QUIC v1
        }
        let _ = sock.send_to(&pkt, peer).await;
    }

    // Agent 1 still gets the object from agent 0, whole and verified.
    let r = get(s.agent(1).proxy_addr(), &url).await.unwrap();
    assert_eq!(blake3::hash(&r.body), want);
    assert!(s.fetched(1).0 > 0, "agent 1 took nothing from its peer");
    assert_eq!(
        s.agent(0)
            .metrics()
            .verify_failures
            .with_label_values(&["peer"])
            .get(),
        0
    );
    s.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn tracker_killed_and_restarted_mid_download() {
    let mut s = TestSwarm::builder()
        .net(42)
        .agents(4)
        .tweak(|_, c| c.peer.upload_rate = bytesize::ByteSize::mib(4))
        .spawn()
        .await
        .unwrap();
    let data = random_bytes(8 << 20, 42);
    s.origin.put("/t", Object::new(data.clone()));
    let url = s.origin.url("/t");
    let clients: Vec<_> = (0..4)
        .map(|i| {
            let (p, url) = (s.agent(i).proxy_addr(), url.clone());
            tokio::spawn(async move { get(p, &url).await })
        })
        .collect();
    // Kill the tracker once the crowd is moving chunks between peers.
    let moving = eventually(Duration::from_secs(20), || {
        (0..4).any(|i| s.agent(i).metrics().bytes_uploaded.get() > 0)
    })
    .await;
    assert!(moving, "no peer traffic before the tracker was killed");
    s.stop_tracker().await;
    tokio::task::yield_now().await;
    s.restart_tracker().await.unwrap();
    let want = blake3::hash(&data);
    for c in clients {
        let r = c.await.unwrap().unwrap();
        assert_eq!(blake3::hash(&r.body), want);
    }
    // Every agent serves it from its cache afterwards, and the fresh tracker learns
    // the holders again.
    for i in 0..4 {
        let r = get(s.agent(i).proxy_addr(), &url).await.unwrap();
        assert_eq!(r.header("x-shoal-cache"), Some("hit"));
        assert_eq!(blake3::hash(&r.body), want);
    }
    s.shutdown().await;
}
