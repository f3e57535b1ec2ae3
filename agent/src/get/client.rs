//! One HTTP/1.1 request to the agent (proxy or admin listener) over a fresh
//! connection, with hyper's client. Proxy requests carry the URL in absolute form.

use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, Uri};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use super::GetError;

/// How long connecting to the agent and getting its answer's head may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How much of an error answer's body is read for the one-line message.
const ERROR_BODY: usize = 4096;

/// An agent listener: `http://HOST:PORT`.
#[derive(Debug, Clone)]
pub struct Endpoint {
    authority: String,
}

impl Endpoint {
    /// Parses `http://HOST:PORT` (the port is required; a trailing `/` is fine).
    pub fn parse(s: &str) -> Result<Self, GetError> {
        let bad = || GetError::Usage(format!("agent address {s:?}: want http://HOST:PORT"));
        let u: Uri = s.parse().map_err(|_| bad())?;
        if u.scheme_str() != Some("http") || u.port_u16().is_none() {
            return Err(bad());
        }
        let authority = u.authority().ok_or_else(bad)?.as_str().to_owned();
        Ok(Self { authority })
    }

    pub fn from_addr(addr: std::net::SocketAddr) -> Self {
        Self {
            authority: addr.to_string(),
        }
    }

    /// `http://HOST:PORT{path}`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.authority)
    }

    /// Sends `req` and returns the answer's head with its body still to read.
    /// Failing to connect or to get a head is [`GetError::AgentDown`].
    pub async fn send(&self, req: Request<Full<Bytes>>) -> Result<Response<Incoming>, GetError> {
        let down = |reason: String| GetError::AgentDown {
            agent: format!("http://{}", self.authority),
            reason,
        };
        let exchange = async {
            let stream = TcpStream::connect(&self.authority)
                .await
                .map_err(|e| down(e.to_string()))?;
            let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
                .await
                .map_err(|e| down(e.to_string()))?;
            tokio::spawn(conn);
            send.send_request(req)
                .await
                .map_err(|e| down(format!("no answer: {e}")))
        };
        match tokio::time::timeout(CONNECT_TIMEOUT, exchange).await {
            Ok(r) => r,
            Err(_) => Err(down(format!("no answer within {CONNECT_TIMEOUT:?}"))),
        }
    }

    /// The host for a `Host` header of requests to this listener.
    pub fn authority(&self) -> &str {
        &self.authority
    }
}

/// The first line of an error answer's body (at most a few KiB read), or the
/// status's reason phrase.
pub async fn error_message(resp: Response<Incoming>) -> String {
    let reason = resp
        .status()
        .canonical_reason()
        .unwrap_or("error")
        .to_owned();
    let body = match tokio::time::timeout(
        CONNECT_TIMEOUT,
        Limited::new(resp.into_body(), ERROR_BODY).collect(),
    )
    .await
    {
        Ok(Ok(b)) => b.to_bytes(),
        _ => return reason,
    };
    let text = String::from_utf8_lossy(&body);
    match text.lines().map(str::trim).find(|l| !l.is_empty()) {
        Some(l) => l.chars().take(200).collect(),
        None => reason,
    }
}

/// Reads a whole (small) answer body, at most `limit` bytes.
pub async fn read_all(resp: Response<Incoming>, limit: usize) -> Result<Bytes, String> {
    Limited::new(resp.into_body(), limit)
        .collect()
        .await
        .map(|c| c.to_bytes())
        .map_err(|e| e.to_string())
}
