//! What the agent sends an origin for a client request: only end-to-end headers, no
//! client content, one `Host`, the client's `User-Agent` with `shoal/VERSION`, and
//! mirror paths that stay under their upstream prefix with one cache key each.
//! Malformed framing is refused before any origin is contacted.
//!
//! The origin here is a raw TCP server that answers each request before reading its
//! body (then skips `Content-Length` bytes) and keeps the connection alive: the kind
//! of origin a forwarded `Content-Length` without its body desynchronises.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::StatusCode;
use shoal_tests::agent;
use shoal_tests::client::{self, get_with};
use shoal_tests::random_bytes;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const UA_TOKEN: &str = concat!("shoal/", env!("CARGO_PKG_VERSION"));
/// What the origin answers for a path it does not serve: cacheable, and wrong.
const WRONG: &[u8] = b"WRONG BYTES: not the object you asked for";

/// One request head as the origin parsed it.
#[derive(Debug, Clone)]
struct Head {
    line: String,
    path: String,
    headers: Vec<(String, String)>,
}

impl Head {
    fn all(&self, name: &str) -> Vec<&str> {
        self.headers
            .iter()
            .filter(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
            .collect()
    }
}

/// A keep-alive origin that answers before reading request content.
struct EagerOrigin {
    addr: SocketAddr,
    log: Arc<Mutex<Vec<Head>>>,
}

impl EagerOrigin {
    async fn start(ip: &str, routes: HashMap<String, Bytes>) -> Self {
        let l = TcpListener::bind(format!("{ip}:0")).await.unwrap();
        let addr = l.local_addr().unwrap();
        let log = Arc::new(Mutex::new(Vec::new()));
        let routes = Arc::new(routes);
        tokio::spawn({
            let log = log.clone();
            async move {
                while let Ok((s, _)) = l.accept().await {
                    tokio::spawn(serve(s, routes.clone(), log.clone()));
                }
            }
        });
        Self { addr, log }
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    fn heads(&self) -> Vec<Head> {
        self.log.lock().unwrap().clone()
    }

    fn count(&self, path: &str) -> usize {
        self.heads().iter().filter(|h| h.path == path).count()
    }
}

async fn serve(mut s: TcpStream, routes: Arc<HashMap<String, Bytes>>, log: Arc<Mutex<Vec<Head>>>) {
    let mut buf = Vec::new();
    let mut tmp = [0u8; 4096];
    loop {
        let end = loop {
            if let Some(p) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break p + 4;
            }
            match s.read(&mut tmp).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&tmp[..n]),
            }
        };
        let text = String::from_utf8_lossy(&buf[..end]).into_owned();
        buf.drain(..end);
        let mut lines = text.split("\r\n");
        let line = lines.next().unwrap_or_default().to_owned();
        let method = line.split(' ').next().unwrap_or_default().to_owned();
        let path = line.split(' ').nth(1).unwrap_or_default().to_owned();
        let headers: Vec<(String, String)> = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
            .collect();
        let head = Head {
            line,
            path: path.clone(),
            headers,
        };
        let content: usize = head
            .all("content-length")
            .first()
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        log.lock().unwrap().push(head);
        if path == "/clte" {
            // Both framings: 5 by Content-Length, 12 by the chunked coding.
            let resp = "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\
                        ETag: \"clte\"\r\n\r\nc\r\nchunked-body\r\n0\r\n\r\n";
            if s.write_all(resp.as_bytes()).await.is_err() {
                return;
            }
            continue;
        }
        let (body, etag) = match routes.get(&path) {
            Some(b) => (b.clone(), format!("\"{}\"", blake3::hash(b).to_hex())),
            None => (Bytes::from_static(WRONG), "\"wrong\"".to_owned()),
        };
        let mut resp = format!(
            "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nETag: {etag}\r\n\
             Last-Modified: Mon, 01 Jan 2024 00:00:00 GMT\r\n\r\n",
            body.len()
        )
        .into_bytes();
        if method != "HEAD" {
            resp.extend_from_slice(&body);
        }
        if s.write_all(&resp).await.is_err() {
            return;
        }
        // Only now skip the request's content, as its framing says.
        while buf.len() < content {
            match s.read(&mut tmp).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&tmp[..n]),
            }
        }
        buf.drain(..content);
    }
}

/// Sends `req` raw and returns the answer and how long the agent kept the
/// connection open (`client::raw` gives up after 5 s).
async fn raw_timed(proxy: SocketAddr, req: &[u8]) -> (String, Duration) {
    let t = Instant::now();
    let r = client::raw(proxy, req).await.unwrap();
    (r, t.elapsed())
}

fn status_lines(r: &str) -> usize {
    r.matches("HTTP/1.1 ").count()
}

#[tokio::test]
async fn request_content_never_desyncs_the_origin_connection() {
    shoal_tests::logs();
    let ip = "127.0.0.81";
    let b_path = "/b-object-with-a-name-longer-than-the-smuggled-body.bin";
    let b_data = random_bytes(30_000, 81);
    let routes = HashMap::from([
        ("/a".to_owned(), random_bytes(1000, 82)),
        ("/hdr".to_owned(), random_bytes(100, 83)),
        (b_path.to_owned(), b_data.clone()),
    ]);
    let origin = EagerOrigin::start(ip, routes).await;
    let dir = tempfile::tempdir().unwrap();
    let a = agent::start(agent::config(ip, dir.path())).await.unwrap();
    let proxy = a.proxy_addr();
    let host = origin.addr.to_string();

    // Client A: a pass-mode GET (Cookie) with 40 bytes of content.
    let req_a = format!(
        "GET {} HTTP/1.1\r\nHost: {host}\r\nCookie: s=1\r\nContent-Length: 40\r\n\r\n{}",
        origin.url("/a"),
        "x".repeat(40),
    );
    let (ra, open) = raw_timed(proxy, req_a.as_bytes()).await;

    // Client B: another URL, cacheable. Its bytes are its own, and so are the cached
    // ones (before the fix the origin took B's request line as A's body, and B got,
    // and the cache kept, the answer to the rest of B's request).
    for want in ["miss", "hit"] {
        let r = get_with(proxy, &origin.url(b_path), &[]).await.unwrap();
        assert_eq!(r.status, StatusCode::OK);
        assert_eq!(
            blake3::hash(&r.body),
            blake3::hash(&b_data),
            "{want}: {:?}",
            String::from_utf8_lossy(&r.body[..r.body.len().min(60)])
        );
        assert_eq!(r.header("x-shoal-cache"), Some(want));
    }
    assert_eq!(origin.count(b_path), 1);

    // A was refused (content on a GET is not proxied) and its connection closed.
    assert!(ra.starts_with("HTTP/1.1 400"), "{ra}");
    assert!(ra.contains("RFC 9110 §9.3.1"), "{ra}");
    assert!(
        ra.to_ascii_lowercase().contains("connection: close"),
        "{ra}"
    );
    assert!(
        open < Duration::from_secs(4),
        "closed after the 400 ({open:?})"
    );
    // A request pipelined after the refused content is not answered.
    let pipelined = format!(
        "{req_a}GET {} HTTP/1.1\r\nHost: {host}\r\n\r\n",
        origin.url("/a")
    );
    let (r, _) = raw_timed(proxy, pipelined.as_bytes()).await;
    assert!(r.starts_with("HTTP/1.1 400"), "{r}");
    assert_eq!(status_lines(&r), 1, "the connection is not reused: {r}");
    assert_eq!(origin.count("/a"), 0, "refused before the origin");

    // A pass-mode request full of headers that must not travel.
    let req = format!(
        "GET {} HTTP/1.1\r\nHost: {host}\r\nHost: {host}\r\nCookie: s=1\r\n\
         Content-Length: 0\r\nConnection: close, x-hop\r\nX-Hop: 1\r\nKeep-Alive: 5\r\n\
         Proxy-Authorization: Basic eDp5\r\nProxy-Connection: keep-alive\r\nTE: trailers\r\n\
         Expect: 100-continue\r\nX-Forwarded-For: 10.0.0.1\r\nAccept: */*\r\n\r\n",
        origin.url("/hdr"),
    );
    let (r, _) = raw_timed(proxy, req.as_bytes()).await;
    assert!(r.starts_with("HTTP/1.1 400"), "two Host headers: {r}");
    let req = req.replacen(&format!("Host: {host}\r\n"), "", 1);
    let (r, _) = raw_timed(proxy, req.as_bytes()).await;
    assert!(r.starts_with("HTTP/1.1 200"), "{r}");
    let heads = origin.heads();
    let hdr: Vec<_> = heads.iter().filter(|h| h.path == "/hdr").collect();
    assert_eq!(hdr.len(), 1);
    let mut names: Vec<_> = hdr[0]
        .headers
        .iter()
        .map(|(k, _)| k.to_ascii_lowercase())
        .collect();
    names.sort();
    assert_eq!(
        names,
        ["accept", "cookie", "host", "user-agent", "via"],
        "{hdr:?}"
    );
    assert_eq!(hdr[0].all("via"), ["1.1 shoal"], "{hdr:?}");
    for h in &heads {
        assert_eq!(h.all("host").len(), 1, "{h:?}");
        assert!(h.all("content-length").is_empty(), "{h:?}");
        assert!(h.all("transfer-encoding").is_empty(), "{h:?}");
        assert!(h.line.ends_with(" HTTP/1.1"), "{h:?}");
    }
    assert!(heads.iter().all(|h| h.path != "/a"));
    a.shutdown().await;
}

#[tokio::test]
async fn bad_framing_and_hosts_get_400_before_the_origin() {
    shoal_tests::logs();
    let ip = "127.0.0.82";
    let routes = HashMap::from([("/x".to_owned(), random_bytes(500, 84))]);
    let origin = EagerOrigin::start(ip, routes).await;
    let dir = tempfile::tempdir().unwrap();
    let a = agent::start(agent::config(ip, dir.path())).await.unwrap();
    let proxy = a.proxy_addr();
    let url = origin.url("/x");
    let h = origin.addr.to_string();
    let refused = [
        (
            "CL+TE",
            format!(
                "GET {url} HTTP/1.1\r\nHost: {h}\r\nContent-Length: 5\r\n\
                 Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n"
            ),
        ),
        (
            "TE+CL",
            format!(
                "GET {url} HTTP/1.1\r\nHost: {h}\r\nTransfer-Encoding: chunked\r\n\
                 Content-Length: 5\r\n\r\n0\r\n\r\n"
            ),
        ),
        (
            "TE",
            format!(
                "GET {url} HTTP/1.1\r\nHost: {h}\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"
            ),
        ),
        ("no Host", format!("GET {url} HTTP/1.1\r\n\r\n")),
        (
            "two Hosts",
            format!("GET {url} HTTP/1.1\r\nHost: {h}\r\nHost: other\r\n\r\n"),
        ),
        (
            "bad Host",
            format!("GET {url} HTTP/1.1\r\nHost: a, b\r\n\r\n"),
        ),
        (
            "GET content, cache mode",
            format!("GET {url} HTTP/1.1\r\nHost: {h}\r\nContent-Length: 3\r\n\r\nabc"),
        ),
        (
            "HEAD content",
            format!("HEAD {url} HTTP/1.1\r\nHost: {h}\r\nContent-Length: 3\r\n\r\nabc"),
        ),
        (
            "mirror, no Host",
            "GET /m/none/x HTTP/1.1\r\n\r\n".to_owned(),
        ),
    ];
    for (what, req) in &refused {
        let (r, open) = raw_timed(proxy, req.as_bytes()).await;
        assert!(r.starts_with("HTTP/1.1 400"), "{what}: {r}");
        assert!(
            r.to_ascii_lowercase().contains("connection: close"),
            "{what}: {r}"
        );
        assert!(open < Duration::from_secs(4), "{what}: closed ({open:?})");
    }
    assert!(origin.heads().is_empty(), "{:?}", origin.heads());

    // Accepted: a Host that differs from an absolute-form target (the target wins),
    // an HTTP/1.0 request without Host, and `Content-Length: 0`.
    for req in [
        format!("GET {url} HTTP/1.1\r\nHost: elsewhere.example\r\nConnection: close\r\n\r\n"),
        format!("GET {url} HTTP/1.0\r\n\r\n"),
        format!(
            "GET {url} HTTP/1.1\r\nHost: {h}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
        ),
    ] {
        let r = client::raw(proxy, req.as_bytes()).await.unwrap();
        assert!(r.starts_with("HTTP/1.") && r[..12].ends_with("200"), "{r}");
    }
    assert_eq!(origin.count("/x"), 1, "one fill, then hits");

    // User info in the target is refused, not proxied with it dropped (RFC 9110
    // §4.2.4: it hides the real authority), and the origin is not asked.
    let with_user = url.replacen("http://", "http://user:secret@", 1);
    let r = client::raw(
        proxy,
        format!("GET {with_user} HTTP/1.1\r\nHost: {h}\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await
    .unwrap();
    assert!(r.starts_with("HTTP/1.1 400"), "{r}");
    assert!(r.contains("user info"), "{r}");
    assert_eq!(origin.count("/x"), 1);

    // `Range` twice is invalid and ignored: the whole object, 200 (so is a range
    // under two `If-Range` validators).
    for extra in [
        "Range: bytes=0-9\r\nRange: bytes=10-19\r\n",
        "Range: bytes=0-9\r\nIf-Range: \"a\"\r\nIf-Range: \"b\"\r\n",
    ] {
        let r = client::raw(
            proxy,
            format!("GET {url} HTTP/1.1\r\nHost: {h}\r\n{extra}Connection: close\r\n\r\n")
                .as_bytes(),
        )
        .await
        .unwrap();
        assert!(r.starts_with("HTTP/1.1 200"), "{extra}: {r}");
        assert!(
            r.to_ascii_lowercase().contains("content-length: 500"),
            "{extra}: {r}"
        );
    }
    a.shutdown().await;
}

#[tokio::test]
async fn mirror_paths_stay_under_the_prefix_with_one_key() {
    shoal_tests::logs();
    let ip = "127.0.0.83";
    let x = random_bytes(2000, 85);
    let deb = random_bytes(40_000, 86);
    let routes = HashMap::from([
        ("/prefix/x".to_owned(), x.clone()),
        ("/prefix/".to_owned(), random_bytes(10, 87)),
        ("/prefix/pool/a.deb".to_owned(), deb.clone()),
    ]);
    let origin = EagerOrigin::start(ip, routes).await;
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = agent::config(ip, dir.path());
    cfg.mirrors.push(shoal_agent::config::Mirror {
        name: "up".into(),
        upstream: format!("http://{}/prefix", origin.addr),
        ..Default::default()
    });
    let a = agent::start(cfg).await.unwrap();
    let proxy = a.proxy_addr();
    let get = |path: &str| {
        let req = format!("GET {path} HTTP/1.1\r\nHost: agent\r\nConnection: close\r\n\r\n");
        async move { client::raw(proxy, req.as_bytes()).await.unwrap() }
    };
    let variants = [
        "/m/up/../x",
        "/m/up/%2e%2e/x",
        "/m/up/%2E%2E/x",
        "/m/up/..%2fx",
        "/m/up/..%2Fx",
        "/m/up/.%2e/x",
        "/m/up/%2e./x",
        "/m/up/./../x",
        "/m/up/a/../../x",
        "/m/up/%2e%2e%2fx",
        "/m/up/.%2E/",
        "/m/up/..;/x",
        "/m/up/..%5cx",
        "/m/up/..\\x",
        "/m/up/%2e%2e%5c..%5cx",
        "/m/up/..%00/x",
    ];
    for v in variants {
        let r = get(v).await;
        let ok = r.starts_with("HTTP/1.1 200");
        assert!(ok || r.starts_with("HTTP/1.1 400"), "{v}: {r}");
        assert!(!r.contains(std::str::from_utf8(WRONG).unwrap()), "{v}: {r}");
        if ok && v.ends_with("x") {
            assert!(
                r.ends_with(&*String::from_utf8_lossy(&x[x.len() - 40..])),
                "{v}"
            );
        }
    }
    for h in origin.heads() {
        let p = h.path.to_ascii_lowercase();
        assert!(p.starts_with("/prefix/"), "{h:?}");
        for bad in ["..", "%2e", "%2f", "%5c", "\\", ";"] {
            assert!(!p.contains(bad), "{bad} in {h:?}");
        }
    }
    assert!(
        origin.count("/prefix/x") <= 1,
        "every spelling of /x is one key"
    );

    // Two spellings of one resource: one origin fetch.
    for path in [
        "/m/up/pool/a.deb",
        "/m/up/pool/./%61.deb",
        "/m/up/x/../pool/a%2Edeb",
    ] {
        let r = get(path).await;
        assert!(r.starts_with("HTTP/1.1 200"), "{path}: {r}");
        assert!(
            r.ends_with(&*String::from_utf8_lossy(&deb[deb.len() - 40..])),
            "{path}"
        );
    }
    assert_eq!(origin.count("/prefix/pool/a.deb"), 1);
    assert_eq!(a.cache().len(), 3, "{:?}", a.cache().all());

    // Forward-proxy targets get the same canonical form.
    let r = get_with(proxy, &origin.url("/prefix/pool/../pool/%61.deb"), &[])
        .await
        .unwrap();
    assert_eq!(r.body, deb);
    assert_eq!(r.header("x-shoal-cache"), Some("hit"));
    a.shutdown().await;
}

#[tokio::test]
async fn client_user_agent_is_kept_with_shoal_appended() {
    shoal_tests::logs();
    let ip = "127.0.0.84";
    let routes = HashMap::from([
        ("/pass".to_owned(), random_bytes(100, 88)),
        ("/fill".to_owned(), random_bytes(100_000, 89)),
        ("/anon".to_owned(), random_bytes(100, 90)),
    ]);
    let origin = EagerOrigin::start(ip, routes).await;
    let dir = tempfile::tempdir().unwrap();
    let a = agent::start(agent::config(ip, dir.path())).await.unwrap();
    let proxy = a.proxy_addr();
    let ua = |p: &str| {
        let heads = origin.heads();
        let h = heads.iter().find(|h| h.path == p).unwrap();
        (
            h.all("user-agent")
                .iter()
                .map(|s| s.to_string())
                .collect::<Vec<_>>(),
            h.all("accept-encoding")
                .iter()
                .map(|s| s.to_string())
                .collect::<Vec<_>>(),
        )
    };
    let r = get_with(
        proxy,
        &origin.url("/pass"),
        &[
            ("user-agent", "Debian APT-HTTP/1.3 (2.6.1)"),
            ("cookie", "a=1"),
            ("accept-encoding", "gzip"),
        ],
    )
    .await
    .unwrap();
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(
        ua("/pass"),
        (
            vec![format!("Debian APT-HTTP/1.3 (2.6.1) {UA_TOKEN}")],
            vec!["gzip".to_owned()]
        ),
        "pass-through keeps the client's encoding too"
    );
    let r = get_with(proxy, &origin.url("/fill"), &[("user-agent", "curl/8.5.0")])
        .await
        .unwrap();
    assert_eq!(r.header("x-shoal-cache"), Some("miss"));
    assert_eq!(
        ua("/fill"),
        (
            vec![format!("curl/8.5.0 {UA_TOKEN}")],
            vec!["identity".to_owned()]
        ),
        "cached fills ask for identity"
    );
    get_with(proxy, &origin.url("/anon"), &[]).await.unwrap();
    assert_eq!(ua("/anon").0, vec![UA_TOKEN.to_owned()]);
    a.shutdown().await;
}

#[tokio::test]
async fn origin_response_with_both_framings_is_relayed_chunked_not_cached() {
    shoal_tests::logs();
    let ip = "127.0.0.85";
    let after = random_bytes(20_000, 91);
    let routes = HashMap::from([("/after".to_owned(), after.clone())]);
    let origin = EagerOrigin::start(ip, routes).await;
    let dir = tempfile::tempdir().unwrap();
    let a = agent::start(agent::config(ip, dir.path())).await.unwrap();
    let proxy = a.proxy_addr();
    for _ in 0..2 {
        let r = get_with(proxy, &origin.url("/clte"), &[]).await.unwrap();
        assert_eq!(r.status, StatusCode::OK);
        assert_eq!(&r.body[..], b"chunked-body");
        assert_eq!(r.header("content-length"), None);
        assert_ne!(r.header("x-shoal-cache"), Some("hit"));
    }
    assert_eq!(origin.count("/clte"), 2, "never cached");
    let r = get_with(proxy, &origin.url("/after"), &[]).await.unwrap();
    assert_eq!(blake3::hash(&r.body), blake3::hash(&after));
    assert!(a.cache().cached(&origin.url("/clte")).is_none());
    a.shutdown().await;
}
