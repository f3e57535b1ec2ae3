//! Pass-through: relaying an origin response uncached, and `CONNECT` tunnels (with
//! an idle timeout and a maximum lifetime; caps and ports are checked by the caller).

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{Response, StatusCode};
use http_body::Frame;
use http_body_util::StreamBody;
use http_body_util::combinators::BoxBody;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::mpsc;

use crate::egress::{EgressDenied, EgressPolicy};
use crate::metrics::{Metrics, Source};
use crate::object::read::ProxyBody;
use crate::origin::reason::FetchReason;
use crate::origin::{OriginError, next_data, strip_hop_by_hop};

/// Relays an origin response as is (hop-by-hop headers removed), streaming its body
/// with `read_timeout` between frames; an origin failure mid-body cuts the response.
/// Its bytes count in `shoal_origin_bytes_total{reason=why}`.
pub fn relay(
    resp: Response<Incoming>,
    read_timeout: Duration,
    host: String,
    metrics: Metrics,
    why: FetchReason,
) -> Response<ProxyBody> {
    let (mut parts, mut body) = resp.into_parts();
    strip_hop_by_hop(&mut parts.headers);
    let (tx, rx) = mpsc::channel::<Result<Frame<Bytes>, io::Error>>(4);
    tokio::spawn(async move {
        loop {
            let f = match next_data(&mut body, read_timeout, &host).await {
                Ok(Some(d)) => {
                    metrics.served(Source::Origin, d.len() as u64);
                    metrics.origin_relayed(why, d.len() as u64);
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

/// Deadlines of one `CONNECT` tunnel.
#[derive(Debug, Clone, Copy)]
pub struct TunnelLimits {
    /// No bytes either way for this long: closed.
    pub idle: Duration,
    /// Closed after this long, whatever it carries.
    pub lifetime: Duration,
}

/// What a tunnel holds while open: its `proxy.max_tunnels` slot and its client
/// connection's slot (marked busy, so it is never shed as idle).
#[derive(Debug)]
pub struct TunnelHold {
    pub permit: tokio::sync::OwnedSemaphorePermit,
    pub busy: Option<super::conns::Busy>,
    /// `shoal_tunnels`, raised while the tunnel is open.
    pub gauge: prometheus::IntGauge,
}

/// Splices the upgraded client connection and `upstream` until either side closes,
/// nothing moves for `limits.idle`, or `limits.lifetime` has passed.
pub fn tunnel(
    upgrade: hyper::upgrade::OnUpgrade,
    upstream: TcpStream,
    limits: TunnelLimits,
    hold: TunnelHold,
) {
    tokio::spawn(async move {
        hold.gauge.inc();
        let up = match upgrade.await {
            Ok(up) => up,
            Err(e) => {
                tracing::debug!(error = %e, "CONNECT upgrade failed");
                hold.gauge.dec();
                return;
            }
        };
        let start = tokio::time::Instant::now();
        let last = Arc::new(AtomicU64::new(0));
        let mut client = Activity::new(TokioIo::new(up), last.clone(), start);
        let mut upstream = Activity::new(upstream, last.clone(), start);
        let copy = tokio::io::copy_bidirectional(&mut client, &mut upstream);
        tokio::pin!(copy);
        let end = tokio::time::sleep(limits.lifetime);
        tokio::pin!(end);
        let mut check = tokio::time::interval((limits.idle / 4).max(Duration::from_millis(10)));
        loop {
            tokio::select! {
                r = &mut copy => {
                    if let Err(e) = r {
                        tracing::debug!(error = %e, "tunnel closed");
                    }
                    break;
                }
                _ = &mut end => {
                    tracing::debug!(after = ?limits.lifetime, "tunnel closed at its maximum lifetime");
                    break;
                }
                _ = check.tick() => {
                    let idle_ms = (start.elapsed().as_millis() as u64)
                        .saturating_sub(last.load(Ordering::Relaxed));
                    if idle_ms >= limits.idle.as_millis() as u64 {
                        tracing::debug!(after = ?limits.idle, "idle tunnel closed");
                        break;
                    }
                }
            }
        }
        hold.gauge.dec();
        drop(hold);
    });
}

pin_project_lite::pin_project! {
    /// A stream that records, in milliseconds after `start`, when it last read bytes.
    struct Activity<S> {
        #[pin]
        inner: S,
        last: Arc<AtomicU64>,
        start: tokio::time::Instant,
    }
}

impl<S> Activity<S> {
    fn new(inner: S, last: Arc<AtomicU64>, start: tokio::time::Instant) -> Self {
        Self { inner, last, start }
    }
}

impl<S: AsyncRead> AsyncRead for Activity<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.project();
        let before = buf.filled().len();
        let r = this.inner.poll_read(cx, buf);
        if buf.filled().len() > before {
            this.last
                .store(this.start.elapsed().as_millis() as u64, Ordering::Relaxed);
        }
        r
    }
}

impl<S: AsyncWrite> AsyncWrite for Activity<S> {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, b: &[u8]) -> Poll<io::Result<usize>> {
        self.project().inner.poll_write(cx, b)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.project().inner.poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.project().inner.poll_shutdown(cx)
    }
}

/// 200 for a CONNECT that will be tunnelled.
pub fn connect_ok() -> Response<ProxyBody> {
    let mut r = Response::new(super::respond::empty());
    *r.status_mut() = StatusCode::OK;
    r
}
