//! The admin listener's mechanics: plain HTTP/1.1 on a node-local address, a cap on
//! concurrent connections (over it, new ones are closed at once: scrapers need few),
//! a header deadline, and a graceful stop (live connections finish their request,
//! up to a grace period, then are dropped). What is served (`/metrics`, `/live`,
//! `/ready`, ...) is the caller's `handler`.
//!
//! Not here: authentication. Whoever reaches the listener may use it, so it must stay
//! node-local (or reachable only from the scraper).

use std::convert::Infallible;
use std::error::Error as StdError;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use http::{Request, Response};
use hyper::body::{Body, Incoming};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinSet;

/// Caps and deadlines of an admin listener.
#[derive(Debug, Clone, Copy)]
pub struct AdminLimits {
    /// Connections served at once; more are closed on accept.
    pub max_connections: usize,
    /// Time a client has to send its request headers.
    pub header_timeout: Duration,
    /// How long live connections may finish after the stop, before they are dropped.
    pub grace: Duration,
}

impl Default for AdminLimits {
    fn default() -> Self {
        Self {
            max_connections: 64,
            header_timeout: Duration::from_secs(5),
            grace: Duration::from_secs(5),
        }
    }
}

/// Serves `handler` on `listener` until `shutdown` resolves, then drains.
pub async fn serve<H, F, B>(
    listener: TcpListener,
    limits: AdminLimits,
    handler: H,
    shutdown: impl Future<Output = ()>,
) where
    H: Fn(Request<Incoming>) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = Response<B>> + Send + 'static,
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn StdError + Send + Sync>>,
{
    tokio::pin!(shutdown);
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout)
        .keep_alive(true);
    let permits = Arc::new(Semaphore::new(limits.max_connections));
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut conns = JoinSet::new();
    loop {
        let stream = tokio::select! {
            _ = &mut shutdown => break,
            r = listener.accept() => match r {
                Ok((stream, _)) => stream,
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning.
                    tracing::warn!(error = %e, "admin accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        while conns.try_join_next().is_some() {}
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            continue;
        };
        let h = handler.clone();
        let svc = service_fn(move |req| {
            let fut = h(req);
            async move { Ok::<_, Infallible>(fut.await) }
        });
        let conn = builder.serve_connection(TokioIo::new(stream), svc);
        let mut stop = stop_rx.clone();
        conns.spawn(async move {
            tokio::pin!(conn);
            tokio::select! {
                _ = conn.as_mut() => {}
                _ = stop.changed() => {
                    conn.as_mut().graceful_shutdown();
                    let _ = conn.await;
                }
            }
            drop(permit);
        });
    }
    let _ = stop_tx.send(true);
    let all = async { while conns.join_next().await.is_some() {} };
    if tokio::time::timeout(limits.grace, all).await.is_err() {
        tracing::warn!(
            open = conns.len(),
            "admin connections still open after the grace period; closing"
        );
        conns.abort_all();
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    use bytes::Bytes;
    use http_body_util::Full;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpStream;

    async fn get(addr: std::net::SocketAddr) -> String {
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(b"GET /x HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).await.unwrap();
        out
    }

    #[tokio::test]
    async fn serves_the_handler_caps_connections_and_stops() {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let limits = AdminLimits {
            max_connections: 1,
            ..AdminLimits::default()
        };
        let server = tokio::spawn(serve(
            l,
            limits,
            |req: Request<Incoming>| async move {
                Response::new(Full::new(Bytes::from(format!("path={}", req.uri().path()))))
            },
            async {
                let _ = rx.await;
            },
        ));
        // One idle connection holds the only slot: the next is closed unanswered.
        let idle = TcpStream::connect(addr).await.unwrap();
        let mut refused = TcpStream::connect(addr).await.unwrap();
        refused
            .write_all(b"GET /x HTTP/1.1\r\nHost: a\r\n\r\n")
            .await
            .unwrap();
        let mut buf = Vec::new();
        let n = refused.read_to_end(&mut buf).await.unwrap_or(0);
        assert_eq!(n, 0, "over the cap: closed without an answer");
        drop(idle);
        // The slot comes back once the idle connection is gone.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            let out = get(addr).await;
            if out.contains("path=/x") {
                break;
            }
            assert!(tokio::time::Instant::now() < deadline, "slot never freed");
            tokio::task::yield_now().await;
        }
        tx.send(()).unwrap();
        tokio::time::timeout(Duration::from_secs(10), server)
            .await
            .unwrap()
            .unwrap();
    }
}
