//! The agent's HTTP semantics (conditionals, ranges, HEAD) as one table, run cold
//! (each row the first request for its URL: the fill is in progress or just done)
//! and warm (cached), and, if nginx is installed, against nginx serving the same
//! bytes. Each row asserts status, Content-Range, Content-Length and the body bytes
//! against slices of the known object (multipart bodies are parsed part by part).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::{Method, StatusCode};
use shoal_tests::agent;
use shoal_tests::client::{Reply, eventually, get, request};
use shoal_tests::{Object, Origin, random_bytes};

/// Object size: three full 64 KiB test chunks and a partial one.
const N: u64 = 200_003;
/// The origin's Last-Modified (`Object::new`), seconds since the epoch.
const LM: u64 = 1_700_000_000;

fn date(secs: u64) -> String {
    httpdate::fmt_http_date(SystemTime::UNIX_EPOCH + Duration::from_secs(secs))
}

/// What a row's answer must be.
#[derive(Debug, Clone)]
enum Want {
    /// 200 with the whole object.
    Whole,
    /// HEAD: the whole object's length, no body.
    HeadWhole,
    /// 206 with `[a, b)`.
    Slice(u64, u64),
    /// 206 multipart/byteranges with these parts, in order.
    Parts(Vec<(u64, u64)>),
    /// 304: no body.
    NotModified,
    /// 412: not the object.
    Failed,
    /// 416 with `Content-Range: bytes */N`.
    Unsatisfiable,
}

#[derive(Debug, Clone)]
struct Row {
    name: &'static str,
    method: Method,
    /// `{etag}` and `{lm}` are replaced by the server's validators.
    headers: Vec<(&'static str, String)>,
    want: Want,
    /// nginx 1.22 (default config) answers this row differently, on purpose (see the
    /// `proxy/respond.rs` module docs): only its status is checked.
    nginx: Option<u16>,
}

fn row(name: &'static str, headers: &[(&'static str, &str)], want: Want) -> Row {
    Row {
        name,
        method: Method::GET,
        headers: headers.iter().map(|(k, v)| (*k, v.to_string())).collect(),
        want,
        nginx: None,
    }
}

fn range(name: &'static str, spec: &str, want: Want) -> Row {
    row(name, &[("range", spec)], want)
}

fn table() -> Vec<Row> {
    use Want::*;
    let past = date(LM - 1);
    let lm = date(LM);
    let between = date(LM + 86_400);
    let future = "Fri, 01 Jan 2100 00:00:00 GMT".to_owned();
    let seventeen = format!(
        "bytes={}",
        (0..17)
            .map(|i| format!("{}-{}", i * 1000, i * 1000 + 9))
            .collect::<Vec<_>>()
            .join(",")
    );
    vec![
        row("plain GET", &[], Whole),
        Row {
            method: Method::HEAD,
            ..row("HEAD", &[], HeadWhole)
        },
        range("first bytes", "bytes=0-99", Slice(0, 100)),
        range(
            "middle, across chunks",
            "bytes=65000-140000",
            Slice(65000, 140001),
        ),
        range("suffix", "bytes=-1000", Slice(N - 1000, N)),
        range("open-ended", "bytes=150000-", Slice(150000, N)),
        range(
            "last byte, end past size",
            &format!("bytes={}-{}", N - 1, N + 100),
            Slice(N - 1, N),
        ),
        range("beyond end", &format!("bytes={N}-"), Unsatisfiable),
        range("two ranges", "bytes=0-1,5-6", Parts(vec![(0, 2), (5, 7)])),
        range(
            "three ranges, request order, across chunks",
            "bytes=190000-190009,10-19,70000-70004",
            Parts(vec![(190000, 190010), (10, 20), (70000, 70005)]),
        ),
        range(
            "one of two satisfiable",
            &format!("bytes=0-9,{}-", N + 10),
            Slice(0, 10),
        ),
        Row {
            nginx: Some(206),
            ..range("overlapping ranges coalesce", "bytes=0-1,1-2", Slice(0, 3))
        },
        range(
            "heavy overlap: whole",
            &format!("bytes=0-{},0-{}", N - 1, N - 1),
            Whole,
        ),
        Row {
            nginx: Some(206),
            ..range("17 ranges: whole", &seventeen, Whole)
        },
        range("invalid spec 100-99", "bytes=100-99", Unsatisfiable),
        range("unparsable spec", "bytes=abc", Unsatisfiable),
        range("other unit ignored", "items=0-1", Whole),
        row(
            "If-None-Match match",
            &[("if-none-match", "{etag}")],
            NotModified,
        ),
        row(
            "If-None-Match no match",
            &[("if-none-match", "\"nope\"")],
            Whole,
        ),
        row("If-None-Match *", &[("if-none-match", "*")], NotModified),
        row(
            "If-None-Match weak",
            &[("if-none-match", "W/{etag}")],
            NotModified,
        ),
        row(
            "If-None-Match list",
            &[("if-none-match", "\"a\", {etag}")],
            NotModified,
        ),
        row(
            "If-Modified-Since = Last-Modified",
            &[("if-modified-since", &lm)],
            NotModified,
        ),
        row(
            "If-Modified-Since before",
            &[("if-modified-since", &past)],
            Whole,
        ),
        Row {
            nginx: Some(200),
            ..row(
                "If-Modified-Since after, before now",
                &[("if-modified-since", &between)],
                NotModified,
            )
        },
        row(
            "If-Modified-Since in the future",
            &[("if-modified-since", &future)],
            Whole,
        ),
        row(
            "If-Modified-Since garbage",
            &[("if-modified-since", "garbage")],
            Whole,
        ),
        row(
            "If-None-Match wins over If-Modified-Since",
            &[("if-none-match", "\"nope\""), ("if-modified-since", &lm)],
            Whole,
        ),
        row("If-Match match", &[("if-match", "{etag}")], Whole),
        row("If-Match no match", &[("if-match", "\"nope\"")], Failed),
        row("If-Match *", &[("if-match", "*")], Whole),
        row("If-Match weak", &[("if-match", "W/{etag}")], Failed),
        row(
            "If-Unmodified-Since before",
            &[("if-unmodified-since", &past)],
            Failed,
        ),
        row(
            "If-Unmodified-Since = Last-Modified",
            &[("if-unmodified-since", &lm)],
            Whole,
        ),
        row(
            "If-Unmodified-Since future",
            &[("if-unmodified-since", &future)],
            Whole,
        ),
        Row {
            nginx: Some(412),
            ..row(
                "If-Unmodified-Since garbage",
                &[("if-unmodified-since", "garbage")],
                Whole,
            )
        },
        row(
            "412 before 304",
            &[("if-match", "\"nope\""), ("if-none-match", "{etag}")],
            Failed,
        ),
        row(
            "If-Match with range",
            &[("if-match", "{etag}"), ("range", "bytes=10-19")],
            Slice(10, 20),
        ),
        row(
            "If-None-Match match with range",
            &[("if-none-match", "{etag}"), ("range", "bytes=10-19")],
            NotModified,
        ),
        row(
            "If-Range match",
            &[("if-range", "{etag}"), ("range", "bytes=0-99")],
            Slice(0, 100),
        ),
        row(
            "If-Range mismatch",
            &[("if-range", "\"nope\""), ("range", "bytes=0-99")],
            Whole,
        ),
        row(
            "If-Range weak",
            &[("if-range", "W/{etag}"), ("range", "bytes=0-99")],
            Whole,
        ),
        row(
            "If-Range date = Last-Modified",
            &[("if-range", "{lm}"), ("range", "bytes=0-99")],
            Slice(0, 100),
        ),
        row(
            "If-Range other date",
            &[("if-range", &past), ("range", "bytes=0-99")],
            Whole,
        ),
    ]
}

/// Sends `r` to `server` for `url`; returns what is wrong with the answer.
async fn check(
    server: SocketAddr,
    url: &str,
    r: &Row,
    data: &Bytes,
    etag: &str,
    lm: &str,
    status_only: Option<u16>,
) -> Result<Reply, String> {
    let headers: Vec<(&str, String)> = r
        .headers
        .iter()
        .map(|(k, v)| (*k, v.replace("{etag}", etag).replace("{lm}", lm)))
        .collect();
    let refs: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let reply = request(server, r.method.clone(), url, &refs)
        .await
        .map_err(|e| format!("request failed: {e}"))?;
    let fail = |what: String| -> Result<Reply, String> {
        Err(format!("{what} (headers {:?})", reply.headers))
    };
    let status = reply.status.as_u16();
    let cl = reply.header("content-length").map(str::to_owned);
    let cr = reply.header("content-range").map(str::to_owned);
    if let Some(s) = status_only {
        return if status == s {
            Ok(reply)
        } else {
            fail(format!("status {status}, nginx gives {s}"))
        };
    }
    let want_status = match &r.want {
        Want::Whole | Want::HeadWhole => 200,
        Want::Slice(..) | Want::Parts(_) => 206,
        Want::NotModified => 304,
        Want::Failed => 412,
        Want::Unsatisfiable => 416,
    };
    if status != want_status {
        return fail(format!("status {status}, want {want_status}"));
    }
    match &r.want {
        Want::Whole | Want::HeadWhole => {
            if cl.as_deref() != Some(&N.to_string()) || cr.is_some() {
                return fail(format!("content-length {cl:?}, content-range {cr:?}"));
            }
            let body = if matches!(r.want, Want::Whole) {
                data.clone()
            } else {
                Bytes::new()
            };
            if reply.body != body {
                return fail(format!(
                    "body of {} bytes is not the object",
                    reply.body.len()
                ));
            }
        }
        Want::Slice(a, b) => {
            let want_cr = format!("bytes {a}-{}/{N}", b - 1);
            if cr.as_deref() != Some(&want_cr) || cl.as_deref() != Some(&(b - a).to_string()) {
                return fail(format!(
                    "content-range {cr:?} (want {want_cr}), content-length {cl:?}"
                ));
            }
            if reply.body != data.slice(*a as usize..*b as usize) {
                return fail(format!(
                    "body of {} bytes is not [{a}, {b})",
                    reply.body.len()
                ));
            }
        }
        Want::Parts(parts) => {
            if cr.is_some() || cl.as_deref() != Some(&reply.body.len().to_string()) {
                return fail(format!("content-range {cr:?}, content-length {cl:?}"));
            }
            if let Err(e) = multipart(&reply, parts, data) {
                return fail(e);
            }
        }
        Want::NotModified => {
            if !reply.body.is_empty() || reply.header("etag").is_none() {
                return fail(format!(
                    "304 with {} body bytes or no ETag",
                    reply.body.len()
                ));
            }
        }
        Want::Failed => {
            if reply.body.len() as u64 >= N {
                return fail("412 carries the object".into());
            }
        }
        Want::Unsatisfiable => {
            if cr.as_deref() != Some(&format!("bytes */{N}")) {
                return fail(format!("content-range {cr:?}"));
            }
        }
    }
    Ok(reply)
}

/// Checks a multipart/byteranges body: each part's Content-Type and Content-Range,
/// and its bytes against `data`.
fn multipart(reply: &Reply, parts: &[(u64, u64)], data: &Bytes) -> Result<(), String> {
    let ct = reply.header("content-type").unwrap_or("");
    let boundary = ct
        .strip_prefix("multipart/byteranges; boundary=")
        .ok_or_else(|| format!("content-type {ct:?}"))?;
    let delim = format!("\r\n--{boundary}");
    let mut rest = &reply.body[..];
    for (a, b) in parts {
        rest = rest
            .strip_prefix(delim.as_bytes())
            .and_then(|r| r.strip_prefix(b"\r\n"))
            .ok_or("missing part delimiter")?;
        let end = rest
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .ok_or("unterminated part header")?;
        let head = std::str::from_utf8(&rest[..end]).map_err(|_| "part header not UTF-8")?;
        let want_cr = format!("Content-Range: bytes {a}-{}/{N}", b - 1);
        if !head.lines().any(|l| l.eq_ignore_ascii_case(&want_cr)) {
            return Err(format!("part header {head:?}, want {want_cr}"));
        }
        if !head
            .lines()
            .any(|l| l.eq_ignore_ascii_case("Content-Type: application/octet-stream"))
        {
            return Err(format!(
                "part header {head:?} without the object's Content-Type"
            ));
        }
        rest = &rest[end + 4..];
        let len = (b - a) as usize;
        if rest.len() < len || rest[..len] != data[*a as usize..*b as usize] {
            return Err(format!("part [{a}, {b}) bytes differ"));
        }
        rest = &rest[len..];
    }
    if rest != format!("{delim}--\r\n").as_bytes() {
        return Err(format!(
            "bad closing delimiter {:?}",
            String::from_utf8_lossy(rest)
        ));
    }
    Ok(())
}

fn object(data: &Bytes) -> Object {
    Object::new(data.clone()).header("content-type", "application/octet-stream")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn semantics_table_cold_and_warm() {
    shoal_tests::logs();
    let origin = Origin::start("127.0.0.135").await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let data = random_bytes(N as usize, 135);
    let obj = object(&data);
    let etag = obj.etag.clone().unwrap();
    let lm = obj.last_modified.clone().unwrap();
    let rows = table();
    assert!(rows.len() >= 30);
    for i in 0..rows.len() {
        origin.put(&format!("/cold/{i}"), obj.clone());
    }
    origin.put("/warm", obj.clone());
    let a = agent::start(agent::config("127.0.0.135", dir.path()))
        .await
        .unwrap();
    let proxy = a.proxy_addr();
    let mut errors = Vec::new();

    // Cold: every row is the first request for its URL.
    for (i, r) in rows.iter().enumerate() {
        let url = origin.url(&format!("/cold/{i}"));
        if let Err(e) = check(proxy, &url, r, &data, &etag, &lm, None).await {
            errors.push(format!("cold {:?}: {e}", r.name));
        }
    }
    // Warm: one cached URL, every row a hit that never reaches the origin.
    let url = origin.url("/warm");
    assert_eq!(get(proxy, &url).await.unwrap().body, data);
    assert!(eventually(Duration::from_secs(10), || a.cache().cached(&url).is_some()).await);
    for r in &rows {
        match check(proxy, &url, r, &data, &etag, &lm, None).await {
            Ok(reply) => {
                let served = matches!(reply.status.as_u16(), 200 | 206 | 304);
                if served && reply.header("x-shoal-cache") != Some("hit") {
                    errors.push(format!("warm {:?}: not a cache hit", r.name));
                }
                // RFC 9111 §4: a stored response carries `Age`; RFC 9110 §7.6.3: `Via`.
                if served
                    && reply
                        .header("age")
                        .and_then(|v| v.parse::<u64>().ok())
                        .is_none()
                {
                    errors.push(format!("warm {:?}: no Age on a hit", r.name));
                }
                if reply.header("via") != Some("1.1 shoal") {
                    errors.push(format!("warm {:?}: Via {:?}", r.name, reply.header("via")));
                }
            }
            Err(e) => errors.push(format!("warm {:?}: {e}", r.name)),
        }
    }
    assert_eq!(
        origin.requests("/warm"),
        1,
        "warm rows never reach the origin"
    );
    assert!(
        errors.is_empty(),
        "{} rows wrong:\n{}",
        errors.len(),
        errors.join("\n")
    );
    a.shutdown().await;
}

/// nginx serving the same bytes with the same Last-Modified, on 127.0.0.1 and a free
/// port, in a temporary prefix. Killed when dropped.
struct Nginx {
    child: std::process::Child,
    addr: SocketAddr,
    _dir: tempfile::TempDir,
}

impl Nginx {
    async fn start(data: &Bytes) -> Option<Nginx> {
        let bin = ["/usr/sbin/nginx", "/usr/bin/nginx"]
            .into_iter()
            .find(|p| std::path::Path::new(p).exists())?;
        let dir = tempfile::tempdir().ok()?;
        let www = dir.path().join("www");
        std::fs::create_dir_all(&www).ok()?;
        let f = www.join("obj");
        std::fs::write(&f, data).ok()?;
        std::fs::File::options()
            .write(true)
            .open(&f)
            .ok()?
            .set_modified(SystemTime::UNIX_EPOCH + Duration::from_secs(LM))
            .ok()?;
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .ok()?
            .local_addr()
            .ok()?
            .port();
        let p = dir.path().display();
        let conf = format!(
            "daemon off; master_process off; worker_processes 1; pid {p}/nginx.pid;\n\
             error_log {p}/error.log;\n\
             events {{ worker_connections 64; }}\n\
             http {{ access_log off; default_type application/octet-stream;\n\
               client_body_temp_path {p}/t; proxy_temp_path {p}/t; fastcgi_temp_path {p}/t;\n\
               uwsgi_temp_path {p}/t; scgi_temp_path {p}/t;\n\
               server {{ listen 127.0.0.1:{port}; root {p}/www; }} }}\n"
        );
        std::fs::write(dir.path().join("nginx.conf"), conf).ok()?;
        let child = std::process::Command::new(bin)
            .arg("-p")
            .arg(dir.path())
            .arg("-c")
            .arg(dir.path().join("nginx.conf"))
            .stderr(std::process::Stdio::null())
            .spawn()
            .ok()?;
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().ok()?;
        let mut n = Nginx {
            child,
            addr,
            _dir: dir,
        };
        let end = tokio::time::Instant::now() + Duration::from_secs(10);
        while tokio::net::TcpStream::connect(addr).await.is_err() {
            if tokio::time::Instant::now() > end || n.child.try_wait().ok().flatten().is_some() {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Some(n)
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test]
async fn semantics_table_matches_nginx() {
    let data = random_bytes(N as usize, 135);
    let Some(ngx) = Nginx::start(&data).await else {
        eprintln!(
            "SKIPPED semantics_table_matches_nginx: nginx not installed or did not start (apt-get install nginx-light)"
        );
        return;
    };
    let url = format!("http://{}/obj", ngx.addr);
    let head = request(ngx.addr, Method::HEAD, &url, &[]).await.unwrap();
    assert_eq!(head.status, StatusCode::OK);
    let etag = head.header("etag").unwrap().to_owned();
    let lm = head.header("last-modified").unwrap().to_owned();
    assert_eq!(lm, date(LM));
    let mut errors = Vec::new();
    for r in &table() {
        if let Err(e) = check(ngx.addr, &url, r, &data, &etag, &lm, r.nginx).await {
            errors.push(format!("nginx {:?}: {e}", r.name));
        }
    }
    assert!(
        errors.is_empty(),
        "{} rows differ:\n{}",
        errors.len(),
        errors.join("\n")
    );
}
