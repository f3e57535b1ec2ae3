//! Slowloris against one agent: connections that keep trickling a request head, a
//! byte at a time, never finishing it. Sending bytes must not buy a connection more
//! time than the header deadline, and a legitimate client from another source is
//! served while the flood is held. Loopback only; the flood is bounded (200
//! connections, 10 s).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use shoal_tests::agent;
use shoal_tests::client::get;
use shoal_tests::{Object, Origin, random_bytes};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpSocket;
use tokio::sync::mpsc;

/// How long a trickler may live at most, whatever the agent does.
const TRICKLE_BOUND: Duration = Duration::from_secs(10);

/// What happened to one trickling connection.
#[derive(Debug)]
struct Trickled {
    /// From connect until the agent closed it (`None`: still open at the bound).
    closed_after: Option<Duration>,
    /// Head bytes it managed to send.
    sent: usize,
}

/// Connects from `src` and sends `head` one byte every `every` until the agent closes
/// the connection or [`TRICKLE_BOUND`] passes.
async fn trickle(src: &str, proxy: SocketAddr, head: Vec<u8>, every: Duration) -> Trickled {
    let sock = TcpSocket::new_v4().unwrap();
    sock.bind(SocketAddr::new(src.parse().unwrap(), 0)).unwrap();
    let start = Instant::now();
    let Ok(mut s) = sock.connect(proxy).await else {
        return Trickled {
            closed_after: Some(Duration::ZERO),
            sent: 0,
        };
    };
    let mut tick = tokio::time::interval(every);
    let mut sent = 0;
    let mut b = [0u8; 512];
    let closed = tokio::time::timeout(TRICKLE_BOUND, async {
        loop {
            tokio::select! {
                r = s.read(&mut b) => match r {
                    Ok(0) | Err(_) => return,
                    Ok(_) => {} // a 408 or similar before the close
                },
                _ = tick.tick() => {
                    let byte = head[sent % head.len()];
                    if s.write_all(&[byte]).await.is_err() {
                        return;
                    }
                    sent += 1;
                }
            }
        }
    })
    .await;
    Trickled {
        closed_after: closed.is_ok().then(|| start.elapsed()),
        sent,
    }
}

#[tokio::test]
async fn trickling_heads_are_closed_by_the_deadline_while_a_get_is_served() {
    shoal_tests::logs();
    let ip = "127.0.0.69";
    let origin = Origin::start(ip).await.unwrap();
    let data = random_bytes(1 << 20, 69);
    origin.put("/one.bin", Object::new(data.clone()));
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = agent::config(ip, dir.path());
    cfg.proxy.max_connections = 64;
    cfg.proxy.max_connections_per_source = 48;
    cfg.proxy.header_read_timeout = Duration::from_secs(2);
    cfg.proxy.header_read_timeout_under_pressure = Duration::from_millis(500);
    let a = agent::start(cfg).await.unwrap();
    let url = origin.url("/one.bin");
    assert_eq!(get(a.proxy_addr(), &url).await.unwrap().body, data);

    // 200 connections from one source, each sending a byte every 50 ms: always
    // "making progress", never finishing the head.
    let head = format!("GET {url} HTTP/1.1\r\nHost: x\r\nX-Pad: ").into_bytes();
    let (tx, mut rx) = mpsc::unbounded_channel();
    let proxy = a.proxy_addr();
    for _ in 0..200 {
        let (tx, head) = (tx.clone(), head.clone());
        tokio::spawn(async move {
            let _ = tx.send(trickle("127.0.0.70", proxy, head, Duration::from_millis(50)).await);
        });
    }
    drop(tx);

    // Served while the flood is held, byte for byte, from the cache.
    for _ in 0..3 {
        let t = Instant::now();
        let r = tokio::time::timeout(Duration::from_secs(5), get(a.proxy_addr(), &url))
            .await
            .expect("cached GET stalled behind the trickling flood")
            .unwrap();
        assert_eq!(blake3::hash(&r.body), blake3::hash(&data));
        assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());
    }

    let mut done = Vec::new();
    while let Some(t) = rx.recv().await {
        done.push(t);
    }
    assert_eq!(done.len(), 200);
    let still_open = done.iter().filter(|t| t.closed_after.is_none()).count();
    assert_eq!(
        still_open, 0,
        "trickling connections outlived the header deadline"
    );
    // Held ones lived until a deadline (the pressure one, or header_read_timeout),
    // never longer: 2 s plus scheduling slack, although every one kept sending.
    let longest = done.iter().filter_map(|t| t.closed_after).max().unwrap();
    assert!(
        longest < Duration::from_secs(4),
        "longest trickler {longest:?}"
    );
    let held = done
        .iter()
        .filter(|t| {
            t.closed_after
                .is_some_and(|d| d >= Duration::from_millis(400))
        })
        .count();
    assert!(held >= 1, "the flood was never held: {done:?}");
    assert!(done.iter().any(|t| t.sent >= 8), "no trickler sent bytes");
    let shed = |r: &str| a.metrics().clients_shed.with_label_values(&[r]).get();
    // Beyond the source's 48 the flood only took the place of its own oldest.
    let (idle, pressure) = (shed("idle"), shed("pressure"));
    assert!(idle + pressure >= 200 - 48, "shed {idle} + {pressure}");
    assert_eq!(origin.requests("/one.bin"), 1);
    a.shutdown().await;
}
