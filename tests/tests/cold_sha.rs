//! The whole-object sha256 of a digest-named URL, computed off the fill's task
//! (`object/whole.rs`), still guards the object's end: with the wrong bytes in the
//! *last* chunk of a many-chunk object, the client gets every earlier chunk and then a
//! reset (never a clean end, never the last chunk), and nothing is recorded; with the
//! right bytes, the same object is delivered whole and cached.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::time::Duration;

use sha2::{Digest, Sha256};
use shoal_tests::agent::{self, TEST_CHUNK};
use shoal_tests::client::eventually;
use shoal_tests::{Object, Origin, random_bytes};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// 40 chunks and a short one.
const SIZE: usize = 40 * TEST_CHUNK as usize + 1234;

/// `GET url` through `proxy` on a raw connection: the body bytes read until the
/// connection ended, and whether it ended with all `Content-Length` bytes.
async fn raw_get(proxy: SocketAddr, url: &str) -> (Vec<u8>, bool) {
    let mut s = TcpStream::connect(proxy).await.unwrap();
    let req = format!("GET {url} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes()).await.unwrap();
    let mut all = Vec::new();
    let mut b = vec![0u8; 1 << 16];
    loop {
        match s.read(&mut b).await {
            Ok(0) | Err(_) => break,
            Ok(n) => all.extend_from_slice(&b[..n]),
        }
    }
    let end = all
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("a response head")
        + 4;
    let head = String::from_utf8_lossy(&all[..end]).to_lowercase();
    assert!(head.starts_with("http/1.1 200"), "{head}");
    let body = all.split_off(end);
    let whole = body.len() == SIZE;
    (body, whole)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_last_byte_never_reaches_the_client_and_nothing_is_kept() {
    shoal_tests::logs();
    let ip = "127.0.0.243";
    let origin = Origin::start(ip).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let good = random_bytes(SIZE, 243);
    let mut bad = good.to_vec();
    *bad.last_mut().unwrap() ^= 0x80;
    let hex = hex::encode(Sha256::digest(&good));
    let bad_path = format!("/debian/dists/x/by-hash/SHA256/{hex}");
    let mut o = Object::new(bytes::Bytes::from(bad));
    o.etag = None;
    origin.put(&bad_path, o);
    let a = agent::start(agent::config(ip, dir.path())).await.unwrap();

    let url = origin.url(&bad_path);
    let (body, whole) = raw_get(a.proxy_addr(), &url).await;
    assert!(!whole, "the client must not see a clean end of wrong bytes");
    let last_chunk = (SIZE as u64 / TEST_CHUNK * TEST_CHUNK) as usize;
    assert!(
        body.len() <= last_chunk,
        "{} bytes reached the client, the last chunk starts at {last_chunk}",
        body.len()
    );
    assert_eq!(&body[..], &good[..body.len()], "what arrived is the prefix");
    assert!(a.cache().cached(&url).is_none(), "nothing recorded");
    assert!(
        a.metrics()
            .verify_failures
            .with_label_values(&["origin"])
            .get()
            >= 1
    );

    // The same object with the right bytes: delivered whole, then cached.
    let good_path = format!("/debian/dists/y/by-hash/SHA256/{hex}");
    let mut o = Object::new(good.clone());
    o.etag = None;
    origin.put(&good_path, o);
    let url = origin.url(&good_path);
    let (body, whole) = raw_get(a.proxy_addr(), &url).await;
    assert!(whole);
    assert_eq!(&body[..], &good[..]);
    assert!(
        eventually(Duration::from_secs(10), || a.cache().cached(&url).is_some()).await,
        "the good object is cached"
    );
    a.shutdown().await;
}
