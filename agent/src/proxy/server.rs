//! Accepting client connections with caps and timeouts, and graceful shutdown.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use bytes::Bytes;
use http::Response;
use http_body::{Body, Frame, SizeHint};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use prometheus::Histogram;
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch};

use super::Proxy;
use crate::config::ProxyConfig;
use crate::object::read::ProxyBody;

/// How long shutdown waits for responses in progress.
const DRAIN_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// A running proxy listener.
#[derive(Debug)]
pub struct ProxyServer;

/// Serves `proxy` on `listener` until `shutdown` resolves, then lets open
/// connections finish their current response (bounded by the caller).
pub async fn serve(
    listener: TcpListener,
    proxy: Arc<Proxy>,
    cfg: ProxyConfig,
    shutdown: impl Future<Output = ()>,
) {
    let permits = Arc::new(Semaphore::new(cfg.max_connections));
    let (closing, _) = watch::channel(false);
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(cfg.header_read_timeout)
        .max_buf_size((cfg.max_header_size.as_u64() as usize).max(8192) * 2)
        .max_header_size(cfg.max_header_size.as_u64() as usize)
        .keep_alive(true);
    tokio::pin!(shutdown);
    loop {
        let permit = tokio::select! {
            _ = &mut shutdown => break,
            p = permits.clone().acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => break,
            },
        };
        let (stream, peer) = tokio::select! {
            _ = &mut shutdown => break,
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
        let _ = stream.set_nodelay(true);
        let proxy = proxy.clone();
        let svc = service_fn(move |req| proxy.clone().handle(req));
        let conn = builder
            .serve_connection(TokioIo::new(stream), svc)
            .with_upgrades();
        let mut closing = closing.subscribe();
        tokio::spawn(async move {
            tokio::pin!(conn);
            let res = tokio::select! {
                r = conn.as_mut() => r,
                _ = async { drop(closing.wait_for(|c| *c).await) } => {
                    // Finish the response in progress, then close.
                    conn.as_mut().graceful_shutdown();
                    conn.await
                }
            };
            if let Err(e) = res {
                tracing::debug!(%peer, error = %e, "client connection ended with an error");
            }
            drop(permit);
        });
    }
    closing.send_replace(true);
    // Every connection holds a permit: having them all back means all are closed.
    let all = u32::try_from(cfg.max_connections).unwrap_or(u32::MAX);
    let drained = tokio::time::timeout(DRAIN_TIMEOUT, permits.acquire_many(all)).await;
    if drained.is_err() {
        tracing::warn!("client connections still open after {DRAIN_TIMEOUT:?}; closing them");
    }
}

pin_project_lite::pin_project! {
    /// A body that records the request duration when it ends or is dropped.
    struct Observed {
        #[pin]
        inner: ProxyBody,
        hist: Option<Histogram>,
        start: Instant,
    }

    impl PinnedDrop for Observed {
        fn drop(this: Pin<&mut Self>) {
            let this = this.project();
            if let Some(h) = this.hist.take() {
                h.observe(this.start.elapsed().as_secs_f64());
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
        if let Poll::Ready(None) = r {
            if let Some(h) = this.hist.take() {
                h.observe(this.start.elapsed().as_secs_f64());
            }
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

/// Wraps `resp`'s body so its duration lands in `hist`.
pub(super) fn observe(
    resp: Response<ProxyBody>,
    hist: Histogram,
    start: Instant,
) -> Response<ProxyBody> {
    resp.map(|b| {
        ProxyBody::new(Observed {
            inner: b,
            hist: Some(hist),
            start,
        })
    })
}
