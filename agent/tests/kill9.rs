//! Failure suite: the agent binary killed with SIGKILL in the middle of a fill, then
//! started again on the same cache directory. No wrong byte may reach a client, before
//! or after, and the restarted agent must be ready within seconds.
//!
//! Runs the real binary (`CARGO_BIN_EXE_shoal-agent`) against a small origin written
//! here: the first GET stalls after 1 MiB, so the kill lands mid-fill.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};

const IP: &str = "127.0.0.71";
const SIZE: usize = 4 << 20;

fn object() -> Vec<u8> {
    (0..SIZE)
        .map(|i| (i as u32).wrapping_mul(2_654_435_761).to_be_bytes()[0])
        .collect()
}

/// Serves `/obj` (ETag, Accept-Ranges). The first GET sends 1 MiB and then stalls for
/// ever; later GETs send everything.
async fn origin(body: Arc<Vec<u8>>) -> (SocketAddr, Arc<AtomicUsize>) {
    let l = TcpListener::bind((IP, 0)).await.unwrap();
    let addr = l.local_addr().unwrap();
    let gets = Arc::new(AtomicUsize::new(0));
    let count = gets.clone();
    tokio::spawn(async move {
        while let Ok((s, _)) = l.accept().await {
            let (body, count) = (body.clone(), count.clone());
            tokio::spawn(async move {
                let (r, mut w) = s.into_split();
                let mut r = BufReader::new(r);
                let mut line = String::new();
                if r.read_line(&mut line).await.unwrap_or(0) == 0 {
                    return;
                }
                loop {
                    let mut h = String::new();
                    if r.read_line(&mut h).await.unwrap_or(0) == 0 || h == "\r\n" {
                        break;
                    }
                }
                let head = format!(
                    "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nETag: \"v1\"\r\nAccept-Ranges: bytes\r\nConnection: close\r\n\r\n",
                    body.len()
                );
                if line.starts_with("HEAD") {
                    let _ = w.write_all(head.as_bytes()).await;
                    return;
                }
                let n = count.fetch_add(1, Ordering::SeqCst);
                let _ = w.write_all(head.as_bytes()).await;
                if n == 0 {
                    let _ = w.write_all(&body[..1 << 20]).await;
                    std::future::pending::<()>().await;
                }
                let _ = w.write_all(&body).await;
            });
        }
    });
    (addr, gets)
}

struct Agent {
    child: Child,
    proxy: SocketAddr,
    admin: SocketAddr,
}

/// Starts the agent binary on `dir` and reads its proxy and admin addresses from
/// the "agent started" log line.
fn start(config: &std::path::Path) -> Agent {
    let mut child = Command::new(env!("CARGO_BIN_EXE_shoal-agent"))
        .args(["run", "--config"])
        .arg(config)
        .env("RUST_LOG", "info")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let out = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(out).lines() {
            let Ok(line) = line else { return };
            let line = strip_ansi(&line);
            if line.contains("agent started") {
                let _ = tx.send(line.clone());
            }
        }
    });
    let line = rx
        .recv_timeout(Duration::from_secs(20))
        .expect("agent did not start");
    let field = |name: &str| -> SocketAddr {
        let at = line.find(&format!("{name}=")).expect(name) + name.len() + 1;
        line[at..]
            .split_whitespace()
            .next()
            .unwrap()
            .parse()
            .unwrap()
    };
    Agent {
        proxy: field("proxy"),
        admin: field("admin"),
        child,
    }
}

fn strip_ansi(s: &str) -> String {
    let mut out = String::new();
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for d in chars.by_ref() {
                if d.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// `GET url` through `proxy`: the response head and the body bytes read before the
/// connection ended (or `limit` bytes, whichever first).
async fn get(proxy: SocketAddr, url: &str, limit: usize) -> (String, Vec<u8>, TcpStream) {
    let mut s = TcpStream::connect(proxy).await.unwrap();
    let host = url.trim_start_matches("http://").split('/').next().unwrap();
    s.write_all(
        format!("GET {url} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await
    .unwrap();
    let mut buf = Vec::new();
    let mut b = vec![0u8; 64 * 1024];
    let head_end = loop {
        let n = s.read(&mut b).await.unwrap();
        assert!(n > 0, "no response head");
        buf.extend_from_slice(&b[..n]);
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let mut body = buf[head_end..].to_vec();
    while body.len() < limit {
        match tokio::time::timeout(Duration::from_secs(20), s.read(&mut b)).await {
            Ok(Ok(0)) | Ok(Err(_)) | Err(_) => break,
            Ok(Ok(n)) => body.extend_from_slice(&b[..n]),
        }
    }
    (head, body, s)
}

async fn ready(admin: SocketAddr) -> bool {
    let Ok(mut s) = TcpStream::connect(admin).await else {
        return false;
    };
    let _ = s
        .write_all(b"GET /ready HTTP/1.1\r\nHost: admin\r\nConnection: close\r\n\r\n")
        .await;
    let mut out = String::new();
    let _ = tokio::time::timeout(Duration::from_secs(2), s.read_to_string(&mut out)).await;
    out.starts_with("HTTP/1.1 200")
}

#[tokio::test]
async fn sigkill_mid_fill_then_restart_serves_only_right_bytes() {
    let body = Arc::new(object());
    let want = blake3::hash(&body);
    let (origin, gets) = origin(body.clone()).await;
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("agent.toml");
    std::fs::write(
        &config,
        format!(
            "[proxy]\nlisten = \"{IP}:0\"\n[admin]\nlisten = \"{IP}:0\"\n[cache]\ndir = \"{}\"\nchunk_size = \"64KiB\"\nmemory_size = \"1MiB\"\n[egress]\nallow_cidrs = [\"127.0.0.0/8\"]\n",
            dir.path().join("cache").display()
        ),
    )
    .unwrap();
    let url = format!("http://{origin}/obj");

    let mut a = start(&config);
    let (head, part, _conn) = get(a.proxy, &url, 512 * 1024).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(part.len() >= 512 * 1024);
    assert_eq!(&part[..], &body[..part.len()], "bytes before the kill");
    a.child.kill().unwrap(); // SIGKILL
    a.child.wait().unwrap();

    let t0 = Instant::now();
    let mut a = start(&config);
    let mut up = false;
    while t0.elapsed() < Duration::from_secs(10) {
        if ready(a.admin).await {
            up = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(up, "not ready within 10 s of a restart after SIGKILL");
    eprintln!("ready {:?} after the restart", t0.elapsed());

    let (head, got, _) = get(a.proxy, &url, SIZE + 1).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert_eq!(got.len(), SIZE);
    assert_eq!(blake3::hash(&got), want, "wrong bytes after the restart");
    let (head, got, _) = get(a.proxy, &url, SIZE + 1).await;
    assert!(
        head.to_ascii_lowercase().contains("x-shoal-cache: hit"),
        "{head}"
    );
    assert_eq!(blake3::hash(&got), want);
    assert_eq!(
        gets.load(Ordering::SeqCst),
        2,
        "one stalled GET, one full GET"
    );
    a.child.kill().unwrap();
    a.child.wait().unwrap();
}
