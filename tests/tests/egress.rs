//! The special-purpose address table through the proxy: absolute-form GETs and
//! CONNECT to literal addresses of ranges the old policy let through.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use http::{Method, StatusCode};
use shoal_tests::agent;
use shoal_tests::client::{self, get};

/// One address per range the policy used to miss.
const MISSED: &[&str] = &[
    "[100::1]",
    "[100:0:0:1::1]",
    "[3fff::1]",
    "[5f00::1]",
    "[::ffff:0:7f00:1]",
    "[::2:0:0:1]",
    "[2001:2::1]",
    "[2001:10::1]",
    "192.88.99.1",
    "[64:ff9b:1::a9fe:a9fe]",
    "[64:ff9b::a9fe:a9fe]",
];

#[tokio::test]
async fn special_purpose_literals_refused_for_get_and_connect() {
    shoal_tests::logs();
    let dir = tempfile::tempdir().unwrap();
    let a = agent::start(agent::config("127.0.0.137", dir.path()))
        .await
        .unwrap();
    for host in MISSED {
        let r = get(a.proxy_addr(), &format!("http://{host}/x"))
            .await
            .unwrap();
        assert_eq!(r.status, StatusCode::FORBIDDEN, "GET {host}");
        assert!(
            String::from_utf8_lossy(&r.body).contains("egress refused"),
            "GET {host}: {:?}",
            r.body
        );
        let target = format!("{host}:443");
        let r = client::request(a.proxy_addr(), Method::CONNECT, &target, &[])
            .await
            .unwrap();
        assert_eq!(r.status, StatusCode::FORBIDDEN, "CONNECT {host}");
    }
    assert_eq!(a.metrics().ssrf_blocked.get(), 2 * MISSED.len() as u64);
    a.shutdown().await;
}
