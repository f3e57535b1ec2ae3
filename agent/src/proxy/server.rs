//! Accepting client connections: the source check (`proxy.allow_clients`), admission
//! ([`super::conns`]), timeouts, and graceful shutdown.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use std::convert::Infallible;

use bytes::Bytes;
use http::{Request, Response};
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use prometheus::Histogram;
use tokio::net::TcpListener;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};
use tokio::task::JoinSet;

use super::Proxy;
use super::conns::{Busy, Conns};
use crate::config::ProxyConfig;
use crate::object::read::ProxyBody;

/// How long shutdown waits for responses in progress.
const DRAIN_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// A running proxy listener.
#[derive(Debug)]
pub struct ProxyServer;

/// Connections from sources outside `proxy.allow_clients` being answered `403` at once.
const REFUSING_MAX: usize = 64;

/// Serves `proxy` on `listener` until `shutdown` resolves, then lets open
/// connections finish their current response (up to [`DRAIN_TIMEOUT`]). `conns` is
/// shared by every listener of the proxy (see [`super::conns`]).
pub async fn serve(
    listener: TcpListener,
    proxy: Arc<Proxy>,
    cfg: ProxyConfig,
    conns: Conns,
    shutdown: impl Future<Output = ()>,
) {
    let (closing, _) = watch::channel(false);
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(cfg.header_read_timeout)
        .max_buf_size((cfg.max_header_size.as_u64() as usize).max(8192) * 2)
        .max_header_size(cfg.max_header_size.as_u64() as usize)
        .keep_alive(true);
    let refusing = Arc::new(Semaphore::new(REFUSING_MAX));
    let mut reap = tokio::time::interval(conns.reap_interval());
    reap.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut tasks = JoinSet::new();
    tokio::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            _ = &mut shutdown => break,
            _ = reap.tick() => {
                conns.reap();
                continue;
            }
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    // EMFILE and friends: back off briefly instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        while tasks.try_join_next().is_some() {}
        let _ = stream.set_nodelay(true);
        let source = peer.ip().to_canonical();
        if !cfg.allow_clients.iter().any(|n| n.contains(&source)) {
            proxy.metrics().clients_refused.inc();
            if let Ok(p) = refusing.clone().try_acquire_owned() {
                tasks.spawn(refuse(stream, peer, p));
            }
            continue;
        }
        let slot = match conns.admit(source) {
            Ok(s) => s,
            Err(e) => {
                tracing::debug!(%peer, error = %e, "client connection shed at accept");
                continue;
            }
        };
        let svc = {
            let (proxy, slot) = (proxy.clone(), slot.clone());
            service_fn(move |mut req: Request<Incoming>| {
                let busy = slot.busy();
                req.extensions_mut().insert(slot.clone());
                let proxy = proxy.clone();
                async move {
                    let resp = proxy.handle(req).await?;
                    Ok::<_, Infallible>(resp.map(|b| hold(b, busy)))
                }
            })
        };
        // A client that stops reading is closed after `send_timeout`.
        let mut stream = tokio_io_timeout::TimeoutStream::new(stream);
        stream.set_write_timeout(Some(cfg.send_timeout));
        let conn = builder
            .serve_connection(TokioIo::new(Box::pin(stream)), svc)
            .with_upgrades();
        let mut closing = closing.subscribe();
        tasks.spawn(async move {
            tokio::pin!(conn);
            let res = tokio::select! {
                r = conn.as_mut() => r,
                _ = slot.shed() => {
                    tracing::debug!(%peer, "client connection shed");
                    Ok(())
                }
                _ = async { drop(closing.wait_for(|c| *c).await) } => {
                    // Finish the response in progress, then close.
                    conn.as_mut().graceful_shutdown();
                    conn.await
                }
            };
            if let Err(e) = res {
                tracing::debug!(%peer, error = %e, "client connection ended with an error");
            }
        });
    }
    closing.send_replace(true);
    let all = async { while tasks.join_next().await.is_some() {} };
    if tokio::time::timeout(DRAIN_TIMEOUT, all).await.is_err() {
        tracing::warn!("client connections still open after {DRAIN_TIMEOUT:?}; closing them");
        tasks.abort_all();
    }
}

/// Answers every request of a connection from a refused source with `403` and closes
/// it; no origin is contacted.
async fn refuse(
    stream: tokio::net::TcpStream,
    peer: std::net::SocketAddr,
    _permit: OwnedSemaphorePermit,
) {
    let svc = service_fn(move |_req: Request<Incoming>| async move {
        let mut r = super::respond::error(
            http::StatusCode::FORBIDDEN,
            &format!(
                "client {} is not allowed to use this proxy (proxy.allow_clients)",
                peer.ip().to_canonical()
            ),
        );
        r.headers_mut().insert(
            http::header::CONNECTION,
            http::HeaderValue::from_static("close"),
        );
        Ok::<_, Infallible>(r)
    });
    let conn = http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(REFUSE_HEAD_TIMEOUT)
        .keep_alive(false)
        .serve_connection(TokioIo::new(stream), svc);
    if let Err(e) = conn.await {
        tracing::debug!(%peer, error = %e, "refused client connection ended with an error");
    }
}

/// Time a refused client has to send the head that is answered `403`.
const REFUSE_HEAD_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(2);

/// `body`, keeping `busy` alive until hyper drops it (the response is done).
fn hold(body: ProxyBody, busy: Busy) -> ProxyBody {
    body.map_frame(move |f| {
        let _ = &busy;
        f
    })
    .boxed()
}

pin_project_lite::pin_project! {
    /// A body that records the time to its first data frame (`ttfb`) and the request
    /// duration (`hist`) when it ends or is dropped. A body with no data (HEAD, 304,
    /// an empty object, a tunnel's `200`) counts its first byte when it ends; a client
    /// that hangs up before the first byte adds no time to first byte.
    struct Observed {
        #[pin]
        inner: ProxyBody,
        ttfb: Option<Histogram>,
        hist: Option<Histogram>,
        start: Instant,
    }

    impl PinnedDrop for Observed {
        fn drop(this: Pin<&mut Self>) {
            let this = this.project();
            let secs = this.start.elapsed().as_secs_f64();
            if this.inner.is_end_stream()
                && let Some(h) = this.ttfb.take() {
                    h.observe(secs);
                }
            if let Some(h) = this.hist.take() {
                h.observe(secs);
            }
        }
    }
}

impl Body for Observed {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, std::io::Error>>> {
        let this = self.project();
        let r = this.inner.poll_frame(cx);
        let first = match &r {
            Poll::Ready(Some(Ok(f))) => f.data_ref().is_some_and(|d| !d.is_empty()),
            Poll::Ready(None) => true,
            _ => false,
        };
        if first && let Some(h) = this.ttfb.take() {
            h.observe(this.start.elapsed().as_secs_f64());
        }
        if let Poll::Ready(None) = r
            && let Some(h) = this.hist.take()
        {
            h.observe(this.start.elapsed().as_secs_f64());
        }
        r
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// Wraps `resp`'s body so its time to first body byte lands in `ttfb` and its
/// duration in `hist`, both counted from `start`.
pub(super) fn observe(
    resp: Response<ProxyBody>,
    ttfb: Histogram,
    hist: Histogram,
    start: Instant,
) -> Response<ProxyBody> {
    resp.map(|b| {
        ProxyBody::new(Observed {
            inner: b,
            ttfb: Some(ttfb),
            hist: Some(hist),
            start,
        })
    })
}
