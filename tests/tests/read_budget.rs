//! Clients that read slowly or not at all: their responses' read-ahead stays within
//! `cache.read_buffer` (plus one chunk each), other clients still get their bytes,
//! a stalled client is disconnected after `proxy.send_timeout` and gives its share
//! back, and a slow client that resumes gets every byte right.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::time::Duration;

use bytesize::ByteSize;
use shoal_tests::client::{eventually, get};
use shoal_tests::{Object, Origin, agent, random_bytes};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

const MIB: usize = 1 << 20;
const SIZE: usize = 24 * MIB;

/// A connection with a small receive buffer that sends a GET for `url` and reads
/// nothing yet.
async fn stalled_get(proxy: SocketAddr, url: &str) -> TcpStream {
    let sock = TcpSocket::new_v4().unwrap();
    sock.set_recv_buffer_size(4096).unwrap();
    let mut s = sock.connect(proxy).await.unwrap();
    let req = format!("GET {url} HTTP/1.1\r\nHost: o\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes()).await.unwrap();
    s
}

/// Reads `s` to its end (or a reset); the body after the head.
async fn drain(mut s: TcpStream) -> Vec<u8> {
    let mut all = Vec::new();
    let mut buf = vec![0u8; 256 * 1024];
    loop {
        match s.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => all.extend_from_slice(&buf[..n]),
        }
    }
    match all.windows(4).position(|w| w == b"\r\n\r\n") {
        Some(p) => all.split_off(p + 4),
        None => Vec::new(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_clients_hold_at_most_the_read_buffer_and_resume_intact() {
    shoal_tests::logs();
    let ip = "127.0.63.1";
    let origin = Origin::start(ip).await.unwrap();
    let data = random_bytes(SIZE, 631);
    origin.put("/big", Object::new(data.clone()));
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = agent::config(ip, dir.path());
    cfg.cache.read_buffer = ByteSize::mib(4);
    cfg.cache.chunk_size = ByteSize::mib(1);
    // Nothing in memory: every hit reads the disk into buffers of its own.
    cfg.cache.memory_size = ByteSize::b(0);
    let a = agent::start(cfg).await.unwrap();
    let url = origin.url("/big");
    assert_eq!(get(a.proxy_addr(), &url).await.unwrap().body, data);
    assert!(eventually(Duration::from_secs(20), || a.cache().cached(&url).is_some()).await);

    let gauge = &a.metrics().cache_read_buffer_bytes;
    let stalled: Vec<_> = {
        let mut v = Vec::new();
        for _ in 0..12 {
            v.push(stalled_get(a.proxy_addr(), &url).await);
        }
        v
    };
    // Each stalled response fills its socket and its queue, then waits: at most
    // the budget plus one chunk each (without the budget: 6 chunks each, 72 MiB).
    let limit = (4 + 12) * MIB as i64;
    let settled = eventually(Duration::from_secs(20), || {
        a.metrics().cache_read_buffer_waits.get() > 0 && gauge.get() > 0
    })
    .await;
    assert!(settled, "the budget never filled");
    for _ in 0..20 {
        assert!(gauge.get() <= limit, "{} > {limit}", gauge.get());
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // A client that reads is not held up by them.
    let r = get(a.proxy_addr(), &url).await.unwrap();
    assert_eq!(blake3::hash(&r.body), blake3::hash(&data));
    // The stalled clients resume and get every byte.
    let bodies = futures_util::future::join_all(stalled.into_iter().map(drain)).await;
    for b in &bodies {
        assert_eq!(b.len(), SIZE);
        assert_eq!(blake3::hash(b), blake3::hash(&data));
    }
    assert!(eventually(Duration::from_secs(10), || gauge.get() == 0).await);
    a.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stops_reading_is_closed_after_send_timeout() {
    shoal_tests::logs();
    let ip = "127.0.63.2";
    let origin = Origin::start(ip).await.unwrap();
    let data = random_bytes(SIZE, 632);
    origin.put("/big", Object::new(data.clone()));
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = agent::config(ip, dir.path());
    cfg.proxy.send_timeout = Duration::from_millis(500);
    let a = agent::start(cfg).await.unwrap();
    let url = origin.url("/big");
    assert_eq!(get(a.proxy_addr(), &url).await.unwrap().body, data);
    assert!(eventually(Duration::from_secs(20), || a.cache().cached(&url).is_some()).await);

    let s = stalled_get(a.proxy_addr(), &url).await;
    let gauge = &a.metrics().cache_read_buffer_bytes;
    assert!(eventually(Duration::from_secs(10), || gauge.get() > 0).await);
    // Past the timeout the agent gives up on it: its buffers are freed...
    assert!(
        eventually(Duration::from_secs(20), || gauge.get() == 0).await,
        "a stalled client still holds {} bytes",
        gauge.get()
    );
    // ...and the client, reading at last, finds a cut response.
    let body = drain(s).await;
    assert!(body.len() < SIZE, "got all {} bytes", body.len());
    assert_eq!(
        &body[..],
        &data[..body.len()],
        "a prefix of the right bytes"
    );
    a.shutdown().await;
}
