//! Test clients: HTTP/1.1 through the agent's proxy (absolute-form), and raw bytes.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Method, Request, StatusCode};
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A complete response.
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Reply {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

/// Sends `method url` to `server` (the agent's proxy address, or the origin itself)
/// with the URL in absolute form (or origin form, `/m/NAME/...`, with `Host: server`),
/// and reads the whole response. A body that ends with
/// an error (the agent cut it) is an `Err`.
pub async fn request(
    server: SocketAddr,
    method: Method,
    url: &str,
    headers: &[(&str, &str)],
) -> anyhow::Result<Reply> {
    let stream = TcpStream::connect(server).await?;
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(conn);
    let uri: http::Uri = url.parse()?;
    // Absolute form names its host; origin form (`/m/NAME/...`) is for `server` itself.
    let host = uri
        .authority()
        .map_or_else(|| server.to_string(), |a| a.as_str().to_owned());
    let mut req = Request::builder()
        .method(method)
        .uri(uri.clone())
        .header(http::header::HOST, host);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let resp = send.send_request(req.body(Empty::<Bytes>::new())?).await?;
    let (parts, body) = resp.into_parts();
    let body = body.collect().await?.to_bytes();
    Ok(Reply {
        status: parts.status,
        headers: parts.headers,
        body,
    })
}

/// `GET url` through the proxy at `proxy`.
pub async fn get(proxy: SocketAddr, url: &str) -> anyhow::Result<Reply> {
    request(proxy, Method::GET, url, &[]).await
}

/// `GET url` with extra headers through the proxy at `proxy`.
pub async fn get_with(
    proxy: SocketAddr,
    url: &str,
    headers: &[(&str, &str)],
) -> anyhow::Result<Reply> {
    request(proxy, Method::GET, url, headers).await
}

/// Writes `raw` to `addr` and reads until the server closes or 5 s pass.
pub async fn raw(addr: SocketAddr, raw: &[u8]) -> anyhow::Result<String> {
    let mut s = TcpStream::connect(addr).await?;
    s.write_all(raw).await?;
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out)).await;
    Ok(String::from_utf8_lossy(&out).into_owned())
}

/// Polls `f` until it returns true or `deadline` passes.
pub async fn eventually(deadline: Duration, mut f: impl FnMut() -> bool) -> bool {
    let end = tokio::time::Instant::now() + deadline;
    loop {
        if f() {
            return true;
        }
        if tokio::time::Instant::now() > end {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
