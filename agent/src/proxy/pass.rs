//! Pass-through: relaying an origin response uncached, and `CONNECT` tunnels.

use std::io;
use std::time::Duration;

use bytes::Bytes;
use http::{Response, StatusCode};
use http_body::Frame;
use http_body_util::StreamBody;
use http_body_util::combinators::BoxBody;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio::sync::mpsc;

use crate::egress::{EgressDenied, EgressPolicy};
use crate::metrics::{Metrics, Source};
use crate::object::read::ProxyBody;
use crate::origin::{OriginError, next_data, strip_hop_by_hop};

/// Relays an origin response as is (hop-by-hop headers removed), streaming its body
/// with `read_timeout` between frames; an origin failure mid-body cuts the response.
pub fn relay(
    resp: Response<Incoming>,
    read_timeout: Duration,
    host: String,
    metrics: Metrics,
) -> Response<ProxyBody> {
    let (mut parts, mut body) = resp.into_parts();
    strip_hop_by_hop(&mut parts.headers);
    let (tx, rx) = mpsc::channel::<Result<Frame<Bytes>, io::Error>>(4);
    tokio::spawn(async move {
        loop {
            let f = match next_data(&mut body, read_timeout, &host).await {
                Ok(Some(d)) => {
                    metrics.served(Source::Origin, d.len() as u64);
                    Ok(Frame::data(d))
                }
                Ok(None) => return,
                Err(e) => Err(io::Error::other(e.to_string())),
            };
            let stop = f.is_err();
            if tx.send(f).await.is_err() || stop {
                return;
            }
        }
    });
    let stream =
        futures_util::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|f| (f, rx)) });
    Response::from_parts(parts, BoxBody::new(StreamBody::new(stream)))
}

/// Opens the TCP connection for `CONNECT host:port`, applying the egress policy to
/// the name and to every resolved address.
pub async fn connect_upstream(
    policy: &EgressPolicy,
    host: &str,
    port: u16,
    timeout: Duration,
) -> Result<TcpStream, OriginError> {
    policy.check_host(host)?;
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    let upstream_err = |detail: String| OriginError::Upstream {
        host: host.to_owned(),
        detail,
    };
    let addrs: Vec<_> =
        match tokio::time::timeout(timeout, tokio::net::lookup_host((bare, port))).await {
            Err(_) => {
                return Err(OriginError::Timeout {
                    host: host.to_owned(),
                    after: timeout,
                });
            }
            Ok(Err(e)) => return Err(upstream_err(format!("name resolution failed: {e}"))),
            Ok(Ok(a)) => a.collect(),
        };
    let mut refused = None;
    let allowed: Vec<_> = addrs
        .into_iter()
        .filter(|a| match policy.check_ip(a.ip()) {
            Ok(()) => true,
            Err(e) => {
                refused = Some(e);
                false
            }
        })
        .collect();
    if allowed.is_empty() {
        return Err(refused
            .unwrap_or_else(|| EgressDenied::NoAllowedAddress(host.to_owned()))
            .into());
    }
    let mut last = String::from("no address");
    for a in allowed {
        match tokio::time::timeout(timeout, TcpStream::connect(a)).await {
            Ok(Ok(s)) => return Ok(s),
            Ok(Err(e)) => last = e.to_string(),
            Err(_) => last = format!("connect timed out after {timeout:?}"),
        }
    }
    Err(upstream_err(last))
}

/// Splices the upgraded client connection and `upstream` until either side closes.
pub fn tunnel(upgrade: hyper::upgrade::OnUpgrade, mut upstream: TcpStream) {
    tokio::spawn(async move {
        match upgrade.await {
            Ok(up) => {
                let mut client = TokioIo::new(up);
                if let Err(e) = tokio::io::copy_bidirectional(&mut client, &mut upstream).await {
                    tracing::debug!(error = %e, "tunnel closed");
                }
            }
            Err(e) => tracing::debug!(error = %e, "CONNECT upgrade failed"),
        }
    });
}

/// 200 for a CONNECT that will be tunnelled.
pub fn connect_ok() -> Response<ProxyBody> {
    let mut r = Response::new(super::respond::empty());
    *r.status_mut() = StatusCode::OK;
    r
}
