//! Operator signals that tell the truth: `/ready` falls when shutdown begins and while
//! the cache directory is unusable; time to first byte is measured at the first body
//! byte, not when the response head is ready.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use http::{Method, StatusCode};
use shoal_tests::agent::{config, start};
use shoal_tests::client::{get, request};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

const IP: &str = "127.0.0.61";
/// How long the slow origin holds the body back after the head.
const BODY_DELAY: Duration = Duration::from_millis(300);

async fn ready(admin: std::net::SocketAddr) -> anyhow::Result<(StatusCode, String)> {
    let r = request(admin, Method::GET, &format!("http://{admin}/ready"), &[]).await?;
    Ok((r.status, String::from_utf8_lossy(&r.body).into_owned()))
}

/// An origin that sends a complete head at once and the body `BODY_DELAY` later.
async fn slow_body_origin(body: &'static [u8]) -> std::net::SocketAddr {
    let l = TcpListener::bind((IP, 0)).await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = l.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let mut buf = vec![0u8; 8192];
                let mut got = Vec::new();
                while !got.windows(4).any(|w| w == b"\r\n\r\n") {
                    match s.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => got.extend_from_slice(&buf[..n]),
                    }
                }
                let head = format!(
                    "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nCache-Control: no-store\r\n\r\n",
                    body.len()
                );
                if s.write_all(head.as_bytes()).await.is_err() || s.flush().await.is_err() {
                    return;
                }
                tokio::time::sleep(BODY_DELAY).await;
                let _ = s.write_all(body).await;
            });
        }
    });
    addr
}

/// The sum of every `shoal_time_to_first_byte_seconds` observation, and their count.
fn ttfb(reg: &prometheus::Registry) -> (f64, u64) {
    reg.gather()
        .iter()
        .filter(|f| f.name() == "shoal_time_to_first_byte_seconds")
        .flat_map(|f| f.get_metric().iter())
        .map(|m| {
            let h = m.get_histogram();
            (h.get_sample_sum(), h.get_sample_count())
        })
        .fold((0.0, 0), |(s, c), (s2, c2)| (s + s2, c + c2))
}

#[tokio::test]
async fn ready_falls_when_shutdown_begins() {
    shoal_tests::logs();
    let dir = tempfile::tempdir().unwrap();
    let a = start(config(IP, dir.path())).await.unwrap();
    let admin = a.admin_addr();
    assert_eq!(ready(admin).await.unwrap().0, StatusCode::OK);
    assert!(a.is_ready());
    let drain = a.begin_shutdown();
    // The admin listener is still up (it stops last) and says so.
    let (status, body) = ready(admin).await.unwrap();
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert!(body.contains("shutting down"), "{body}");
    drain.await;
    assert!(
        ready(admin).await.is_err(),
        "admin listener stopped after the drain"
    );
}

#[tokio::test]
async fn ready_is_false_while_the_cache_dir_is_unusable() {
    shoal_tests::logs();
    let tmp = tempfile::tempdir().unwrap();
    // Root ignores permissions: a path under a regular file can be neither created
    // nor read.
    let blocker = tmp.path().join("file");
    std::fs::write(&blocker, b"not a directory").unwrap();
    let a = start(config(IP, &blocker.join("cache"))).await.unwrap();
    let (status, body) = ready(a.admin_addr()).await.unwrap();
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert!(body.contains("cache directory"), "{body}");
    assert!(!a.is_ready());
    // It still serves (from the origin).
    let origin = slow_body_origin(b"still served").await;
    let r = get(a.proxy_addr(), &format!("http://{origin}/x"))
        .await
        .unwrap();
    assert_eq!(&r.body[..], b"still served");
    a.shutdown().await;
}

#[tokio::test]
async fn ttfb_is_observed_at_the_first_body_byte() {
    shoal_tests::logs();
    let dir = tempfile::tempdir().unwrap();
    let reg = prometheus::Registry::new();
    let a = shoal_agent::app::Agent::start(config(IP, dir.path()), reg.clone())
        .await
        .unwrap();
    let origin = slow_body_origin(b"late body").await;
    let r = get(a.proxy_addr(), &format!("http://{origin}/slow"))
        .await
        .unwrap();
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(&r.body[..], b"late body");
    let (sum, count) = ttfb(&reg);
    assert_eq!(count, 1, "one response, one observation");
    assert!(
        sum >= BODY_DELAY.as_secs_f64(),
        "TTFB {sum:.3} s: the head came at once, the first body byte {BODY_DELAY:?} later"
    );
    a.shutdown().await;
}
