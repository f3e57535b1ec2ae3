//! Hostile local clients against one agent: CONNECT tunnels that would pin
//! connections for ever, slow and idle connection floods, and sources outside
//! `proxy.allow_clients`. Loopback only, bounded loops.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use shoal_tests::agent;
use shoal_tests::client::{eventually, get};
use shoal_tests::{Object, Origin, random_bytes};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream};

/// A TCP connection to `to` from the local address `src`.
async fn connect_from(src: &str, to: SocketAddr) -> TcpStream {
    let s = TcpSocket::new_v4().unwrap();
    s.bind(SocketAddr::new(src.parse().unwrap(), 0)).unwrap();
    s.connect(to).await.unwrap()
}

/// `GET url` through `proxy` from the local address `src`: status and body.
async fn get_from(src: &str, proxy: SocketAddr, url: &str) -> anyhow::Result<(StatusCode, Bytes)> {
    let stream = connect_from(src, proxy).await;
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(conn);
    let uri: http::Uri = url.parse()?;
    let req = Request::get(uri.clone())
        .header(http::header::HOST, uri.authority().unwrap().as_str())
        .body(Empty::<Bytes>::new())?;
    let resp = send.send_request(req).await?;
    let status = resp.status();
    Ok((status, resp.into_body().collect().await?.to_bytes()))
}

/// A TCP server on `ip` that echoes what it reads.
async fn echo_server(ip: &str) -> SocketAddr {
    let l = TcpListener::bind((ip, 0)).await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            tokio::spawn(async move {
                let mut b = [0u8; 1024];
                while let Ok(n) = s.read(&mut b).await {
                    if n == 0 || s.write_all(&b[..n]).await.is_err() {
                        break;
                    }
                }
            });
        }
    });
    addr
}

/// Opens a CONNECT tunnel to `target` through `proxy`; the status line's code and the
/// stream (positioned after the response head).
async fn connect(proxy: SocketAddr, target: SocketAddr) -> (u16, TcpStream) {
    let mut s = TcpStream::connect(proxy).await.unwrap();
    s.write_all(format!("CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut head = Vec::new();
    let mut b = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        match tokio::time::timeout(Duration::from_secs(5), s.read(&mut b)).await {
            Ok(Ok(1)) => head.push(b[0]),
            _ => break,
        }
    }
    let head = String::from_utf8_lossy(&head).into_owned();
    let code = head
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    (code, s)
}

/// Reads until EOF or an error; true if that happened within `limit`.
async fn closed_within(s: &mut TcpStream, limit: Duration) -> bool {
    let mut b = [0u8; 256];
    tokio::time::timeout(limit, async {
        loop {
            match s.read(&mut b).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await
    .is_ok()
}

#[tokio::test]
async fn tunnels_are_capped_hold_their_slot_and_time_out() {
    shoal_tests::logs();
    let ip = "127.0.0.61";
    let echo = echo_server(ip).await;
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = agent::config(ip, dir.path());
    cfg.proxy.connect_ports = vec![echo.port()];
    cfg.proxy.max_tunnels = 3;
    cfg.proxy.max_connections = 4;
    cfg.proxy.tunnel_idle_timeout = Duration::from_millis(400);
    cfg.proxy.tunnel_max_lifetime = Duration::from_secs(2);
    let a = agent::start(cfg).await.unwrap();

    let mut tunnels = Vec::new();
    for _ in 0..3 {
        let (code, mut s) = connect(a.proxy_addr(), echo).await;
        assert_eq!(code, 200);
        s.write_all(b"ping").await.unwrap();
        let mut b = [0u8; 4];
        s.read_exact(&mut b).await.unwrap();
        assert_eq!(&b, b"ping");
        tunnels.push(s);
    }
    assert_eq!(a.metrics().tunnels.get(), 3);
    let (code, _) = connect(a.proxy_addr(), echo).await;
    assert_eq!(code, 503, "over proxy.max_tunnels");
    // The tunnels hold 3 of the 4 connection slots and are never shed as idle: two
    // more plain connections make the older of them give way, not a tunnel.
    let _x = TcpStream::connect(a.proxy_addr()).await.unwrap();
    let mut y = TcpStream::connect(a.proxy_addr()).await.unwrap();
    y.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    assert!(!closed_within(&mut y, Duration::from_millis(200)).await);
    for s in &mut tunnels {
        s.write_all(b"pong").await.unwrap();
        let mut b = [0u8; 4];
        s.read_exact(&mut b).await.unwrap();
        assert_eq!(&b, b"pong", "tunnels survive a full table");
    }
    // Idle tunnels close after tunnel_idle_timeout (before: never).
    for s in &mut tunnels {
        assert!(
            closed_within(s, Duration::from_secs(5)).await,
            "idle tunnel still open"
        );
    }
    let m = a.metrics().clone();
    assert!(eventually(Duration::from_secs(5), || m.tunnels.get() == 0).await);

    // A busy tunnel closes at tunnel_max_lifetime.
    let (code, mut s) = connect(a.proxy_addr(), echo).await;
    assert_eq!(code, 200);
    let ended = tokio::time::timeout(Duration::from_secs(10), async {
        let mut b = [0u8; 4];
        loop {
            if s.write_all(b"tick").await.is_err() {
                return;
            }
            match s.read(&mut b).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    assert!(ended.is_ok(), "tunnel outlived tunnel_max_lifetime");
    a.shutdown().await;
}

#[tokio::test]
async fn connect_only_to_allowed_ports() {
    shoal_tests::logs();
    let ip = "127.0.0.62";
    let echo = echo_server(ip).await;
    let dir = tempfile::tempdir().unwrap();
    // Default connect_ports: 443 only, as Squid's SSL_ports.
    let a = agent::start(agent::config(ip, dir.path())).await.unwrap();
    let (code, mut s) = connect(a.proxy_addr(), echo).await;
    assert_eq!(code, 403, "CONNECT to port {} must be refused", echo.port());
    let mut b = vec![0u8; 4096];
    let n = tokio::time::timeout(Duration::from_secs(2), s.read(&mut b))
        .await
        .unwrap()
        .unwrap();
    let body = String::from_utf8_lossy(&b[..n]);
    assert!(body.contains("connect_ports"), "{body:?}");
    a.shutdown().await;
}

/// Opens `n` connections from `src` that send half a request head and stall, and
/// `idle` that send a whole request, read the response and stay open (keep-alive).
async fn flood(src: &str, proxy: SocketAddr, url: &str, n: usize, idle: usize) -> Vec<TcpStream> {
    let mut conns = Vec::new();
    for _ in 0..n {
        let mut s = connect_from(src, proxy).await;
        let _ = s
            .write_all(format!("GET {url} HTTP/1.1\r\nHost: x\r\n").as_bytes())
            .await;
        conns.push(s);
    }
    for _ in 0..idle {
        let mut s = connect_from(src, proxy).await;
        let _ = s
            .write_all(
                format!("GET {url} HTTP/1.1\r\nHost: x\r\nRange: bytes=0-0\r\n\r\n").as_bytes(),
            )
            .await;
        let mut b = [0u8; 4096];
        let _ = tokio::time::timeout(Duration::from_secs(2), s.read(&mut b)).await;
        conns.push(s);
    }
    conns
}

#[tokio::test]
async fn slow_and_idle_floods_do_not_delay_a_cached_get() {
    shoal_tests::logs();
    let ip = "127.0.0.63";
    let origin = Origin::start(ip).await.unwrap();
    let data = random_bytes(1 << 20, 63);
    origin.put("/one.bin", Object::new(data.clone()));
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = agent::config(ip, dir.path());
    cfg.proxy.max_connections = 128;
    cfg.proxy.max_connections_per_source = 96;
    // Long enough that waiting for a slow client to time out would fail the test.
    cfg.proxy.header_read_timeout = Duration::from_secs(60);
    let a = agent::start(cfg).await.unwrap();
    let url = origin.url("/one.bin");
    assert_eq!(get(a.proxy_addr(), &url).await.unwrap().body, data);

    // Before: 1,100 slow connections against 1,024 slots left a client waiting
    // seconds in the accept queue. Here 400 slow + 100 idle against 128 slots.
    let _flood = flood("127.0.0.64", a.proxy_addr(), &url, 400, 100).await;
    for _ in 0..5 {
        let r = tokio::time::timeout(Duration::from_secs(5), get(a.proxy_addr(), &url))
            .await
            .expect("cached GET stalled behind the flood")
            .unwrap();
        assert_eq!(blake3::hash(&r.body), blake3::hash(&data));
    }
    // Same source as the flood: the per-source cap sheds the flood's oldest idle ones.
    let (status, body) = tokio::time::timeout(
        Duration::from_secs(5),
        get_from("127.0.0.64", a.proxy_addr(), &url),
    )
    .await
    .expect("cached GET from the flooding source stalled")
    .unwrap();
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body, data);
    let shed = a.metrics().clients_shed.with_label_values(&["idle"]).get()
        + a.metrics()
            .clients_shed
            .with_label_values(&["pressure"])
            .get();
    assert!(shed >= 300, "shed {shed}");
    assert_eq!(origin.requests("/one.bin"), 1);
    a.shutdown().await;
}

#[tokio::test]
async fn sources_outside_allow_clients_get_403_and_reach_no_origin() {
    shoal_tests::logs();
    let ip = "127.0.0.65";
    let origin = Origin::start(ip).await.unwrap();
    let data = random_bytes(100_000, 65);
    origin.put("/p.bin", Object::new(data.clone()));
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = agent::config(ip, dir.path());
    cfg.proxy.allow_clients = vec!["127.0.0.66/32".parse().unwrap()];
    // The pod-facing listener is guarded the same way.
    cfg.proxy.pod_listen = Some("127.0.0.67:0".parse().unwrap());
    let a = agent::start(cfg).await.unwrap();
    let url = origin.url("/p.bin");
    let pod = a.pod_addr().expect("pod listener");
    assert_eq!(pod.ip(), "127.0.0.67".parse::<IpAddr>().unwrap());
    for listener in [a.proxy_addr(), pod] {
        let (status, body) = get_from("127.0.0.68", listener, &url).await.unwrap();
        assert_eq!(status, StatusCode::FORBIDDEN);
        let body = String::from_utf8_lossy(&body);
        assert!(body.contains("allow_clients"), "{body}");
    }
    assert_eq!(
        origin.requests("/p.bin"),
        0,
        "a refused client reached the origin"
    );
    assert_eq!(a.metrics().clients_refused.get(), 2);
    for listener in [a.proxy_addr(), pod] {
        let (status, body) = get_from("127.0.0.66", listener, &url).await.unwrap();
        assert_eq!(status, StatusCode::OK);
        assert_eq!(body, data);
    }
    a.shutdown().await;
}
