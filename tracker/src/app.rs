//! Wiring: listeners, TLS, connections, the admin endpoint and the expiry timer.
//!
//! [`Tracker::start`] binds both listeners (port 0 allowed) and returns a
//! [`RunningTracker`]; the binary, the in-process tests and the agent's demo all start
//! trackers this way. Dropping a `RunningTracker` stops it in the background;
//! [`RunningTracker::shutdown`] stops it and waits.
//!
//! Agents' connections run on the runtime the tracker was started on, or, with
//! `server.threads` set, on that many threads of their own ([`ConnThreads`]), each
//! a single-threaded runtime: the accept loop hands each new connection to the next
//! thread, where it stays. On the work-stealing runtime a request that wakes one
//! worker also wakes another to look for work (1.45 futex calls per sync,
//! docs/benchmarks.md); on a thread of its own it wakes that thread only.

use std::collections::HashMap;
use std::convert::Infallible;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, PoisonError};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use shoal_node::admin::AdminLimits;
use shoal_proto::tracker::ALPN;
use tokio::net::{TcpListener, TcpStream};
use tokio::runtime::Handle;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};
use tokio::task::{JoinHandle, JoinSet};
use tokio_rustls::TlsAcceptor;

use crate::api::{Api, ClientInfo};
use crate::config::{Config, ConfigError};
use crate::metrics::{Metrics, Reject};
use shoal_pki::{Identity, TlsError, ip_sans_of, peer_id_of};

/// How long open connections get to finish their requests at shutdown.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// Why the tracker could not start. The operator's to fix.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("cannot listen on {addr} ({what}): {source}")]
    Bind {
        what: &'static str,
        addr: SocketAddr,
        source: io::Error,
    },
    #[error("TLS: {0}")]
    Tls(#[from] TlsError),
    #[error("cannot start {threads} connection threads: {source}")]
    Threads { threads: usize, source: io::Error },
}

/// Entry point; see the module docs.
#[derive(Debug)]
pub struct Tracker;

/// A started tracker.
#[derive(Debug)]
pub struct RunningTracker {
    local_addr: SocketAddr,
    admin_addr: SocketAddr,
    metrics: Metrics,
    stop: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
    threads: Option<ConnThreads>,
}

/// The threads of `server.threads` (see the module docs). Dropping it stops them:
/// each runtime then drops the tasks it still has.
#[derive(Debug)]
struct ConnThreads {
    handles: Vec<Handle>,
    /// Dropped to stop the threads.
    stop: watch::Sender<()>,
    joins: Vec<std::thread::JoinHandle<()>>,
}

#[derive(Debug, Clone)]
struct ConnLimits {
    header_read_timeout: Duration,
    handshake_timeout: Duration,
    max_connections: usize,
    max_handshakes: usize,
    max_connections_per_source: usize,
}

impl Tracker {
    /// Validates `cfg`, binds `cfg.server.listen` (mutual TLS, ALPN `http/1.1`) and
    /// `cfg.admin.listen` (plain HTTP), registers metrics in `registry` and starts
    /// serving. Must be called inside a tokio runtime.
    pub async fn start(
        cfg: Config,
        identity: Identity,
        registry: prometheus::Registry,
    ) -> Result<RunningTracker, StartError> {
        cfg.validate()?;
        let server = identity.server_config(&[ALPN])?;
        let acceptor = TlsAcceptor::from(Arc::new(server));
        let bind = |what, addr| async move {
            TcpListener::bind(addr)
                .await
                .map_err(|source| StartError::Bind { what, addr, source })
        };
        let threads = match cfg.server.threads {
            0 => None,
            n => Some(
                ConnThreads::start(n)
                    .map_err(|source| StartError::Threads { threads: n, source })?,
            ),
        };
        let handles = threads.as_ref().map_or(Vec::new(), |t| t.handles.clone());
        let listener = bind("server.listen", cfg.server.listen).await?;
        let admin = bind("admin.listen", cfg.admin.listen).await?;
        let addr_of = |l: &TcpListener, what, addr| {
            l.local_addr()
                .map_err(|source| StartError::Bind { what, addr, source })
        };
        let local_addr = addr_of(&listener, "server.listen", cfg.server.listen)?;
        let admin_addr = addr_of(&admin, "admin.listen", cfg.admin.listen)?;

        let metrics = Metrics::new(registry);
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        let api = Arc::new(Api::new(&cfg, metrics.clone(), seed));
        let (stop, stop_rx) = watch::channel(false);
        let l = &cfg.limits;
        let limits = ConnLimits {
            header_read_timeout: l.header_read_timeout,
            handshake_timeout: l.handshake_timeout,
            max_connections: l.max_connections,
            max_handshakes: l.max_handshakes,
            max_connections_per_source: l.max_connections_per_source,
        };
        let tasks = vec![
            tokio::spawn(serve(
                listener,
                acceptor,
                api.clone(),
                limits,
                handles,
                stop_rx.clone(),
            )),
            tokio::spawn(serve_admin(admin, metrics.clone(), stop_rx.clone())),
            tokio::spawn(sweeper(api, stop_rx)),
        ];
        tracing::info!(%local_addr, %admin_addr, peer_id = %identity.peer_id(), "tracker listening");
        Ok(RunningTracker {
            local_addr,
            admin_addr,
            metrics,
            stop,
            tasks,
            threads,
        })
    }
}

impl ConnThreads {
    /// `n` threads, each running a single-threaded runtime until stopped.
    fn start(n: usize) -> io::Result<Self> {
        let (stop, stopped) = watch::channel(());
        let mut handles = Vec::with_capacity(n);
        let mut joins = Vec::with_capacity(n);
        for i in 0..n {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            handles.push(rt.handle().clone());
            let mut stopped = stopped.clone();
            let join = std::thread::Builder::new()
                .name(format!("tracker-conn-{i}"))
                .spawn(move || {
                    rt.block_on(async move { while stopped.changed().await.is_ok() {} });
                })?;
            joins.push(join);
        }
        Ok(Self {
            handles,
            stop,
            joins,
        })
    }

    /// Stops the threads and waits for them.
    async fn stop(self) {
        let Self { stop, joins, .. } = self;
        drop(stop);
        let joined = tokio::task::spawn_blocking(move || {
            joins
                .into_iter()
                .map(|j| j.join())
                .filter(Result::is_err)
                .count()
        })
        .await;
        if !matches!(joined, Ok(0)) {
            tracing::error!("a connection thread panicked");
        }
    }
}

impl RunningTracker {
    /// The agents' listener (resolved when port 0 was asked for).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The admin listener.
    pub fn admin_addr(&self) -> SocketAddr {
        self.admin_addr
    }

    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// Stops accepting, lets open connections finish their requests (up to 5 s), and
    /// waits for every task.
    pub async fn shutdown(mut self) {
        let _ = self.stop.send(true);
        for t in self.tasks.drain(..) {
            if let Err(e) = t.await
                && e.is_panic()
            {
                tracing::error!(error = %e, "tracker task panicked");
            }
        }
        if let Some(t) = self.threads.take() {
            t.stop().await;
        }
        tracing::info!("tracker stopped");
    }
}

/// Accepts agent connections until `stop`.
///
/// The loop never waits for a free slot: a connection over a cap is closed at once
/// (and counted), so silent or slow clients cannot fill the accept queue in front of
/// real agents. Caps, in the order they are checked: per source IP (before any TLS),
/// all connections, concurrent handshakes; a handshake must finish within
/// `limits.handshake_timeout`. Connections run on `threads` in turn (the current
/// runtime if there are none).
async fn serve(
    listener: TcpListener,
    acceptor: TlsAcceptor,
    api: Arc<Api>,
    limits: ConnLimits,
    threads: Vec<Handle>,
    mut stop: watch::Receiver<bool>,
) {
    let gate = Arc::new(Gate::new(&limits));
    let mut conns = JoinSet::new();
    let mut next = 0usize;
    loop {
        let (tcp, source) = tokio::select! {
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            _ = stop.changed() => break,
        };
        while conns.try_join_next().is_some() {}
        // A reply is one write, but a TLS alert or a reply split by a full socket
        // buffer must not wait for the agent's delayed ACK (Nagle).
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::debug!(%source, error = %e, "TCP_NODELAY not set");
        }
        let admitted = match gate.admit(source.ip()) {
            Ok(a) => a,
            Err(why) => {
                api.metrics().reject(why);
                tracing::debug!(%source, reason = why.label(), "connection shed at accept");
                drop(tcp);
                continue;
            }
        };
        let (acceptor, api, limits, stop) =
            (acceptor.clone(), api.clone(), limits.clone(), stop.clone());
        if threads.is_empty() {
            conns.spawn(async move {
                connection(tcp, source, acceptor, api, limits, admitted, stop).await;
            });
            continue;
        }
        // The socket leaves this runtime's reactor for the thread's.
        let tcp = match tcp.into_std() {
            Ok(t) => t,
            Err(e) => {
                tracing::debug!(%source, error = %e, "connection lost at hand-over");
                continue;
            }
        };
        let thread = &threads[next % threads.len()];
        next = next.wrapping_add(1);
        conns.spawn_on(
            async move {
                match TcpStream::from_std(tcp) {
                    Ok(tcp) => {
                        connection(tcp, source, acceptor, api, limits, admitted, stop).await;
                    }
                    Err(e) => tracing::debug!(%source, error = %e, "connection lost at hand-over"),
                }
            },
            thread,
        );
    }
    drain(conns).await;
}

/// Admission control at accept: see [`serve`].
#[derive(Debug)]
struct Gate {
    conns: Arc<Semaphore>,
    handshakes: Arc<Semaphore>,
    per_source: Arc<std::sync::Mutex<HashMap<IpAddr, usize>>>,
    max_per_source: usize,
}

/// What an admitted connection holds; dropping it gives every slot back.
#[derive(Debug)]
struct Admitted {
    _conn: OwnedSemaphorePermit,
    handshake: Option<OwnedSemaphorePermit>,
    _source: SourceSlot,
}

#[derive(Debug)]
struct SourceSlot {
    ip: IpAddr,
    map: Arc<std::sync::Mutex<HashMap<IpAddr, usize>>>,
}

impl Gate {
    fn new(l: &ConnLimits) -> Self {
        Self {
            conns: Arc::new(Semaphore::new(l.max_connections)),
            handshakes: Arc::new(Semaphore::new(l.max_handshakes)),
            per_source: Arc::default(),
            max_per_source: l.max_connections_per_source,
        }
    }

    fn admit(&self, ip: IpAddr) -> Result<Admitted, Reject> {
        let ip = ip.to_canonical();
        let source = {
            let mut m = self
                .per_source
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            let n = m.entry(ip).or_insert(0);
            if *n >= self.max_per_source {
                return Err(Reject::PerSource);
            }
            *n += 1;
            SourceSlot {
                ip,
                map: self.per_source.clone(),
            }
        };
        let conn = self
            .conns
            .clone()
            .try_acquire_owned()
            .map_err(|_| Reject::Shed)?;
        let handshake = self
            .handshakes
            .clone()
            .try_acquire_owned()
            .map_err(|_| Reject::Shed)?;
        Ok(Admitted {
            _conn: conn,
            handshake: Some(handshake),
            _source: source,
        })
    }
}

impl Drop for SourceSlot {
    fn drop(&mut self) {
        let mut m = self.map.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(n) = m.get_mut(&self.ip) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                m.remove(&self.ip);
            }
        }
    }
}

/// One agent connection: TLS handshake, identity from the certificate, HTTP/1.1.
async fn connection(
    tcp: TcpStream,
    source: SocketAddr,
    acceptor: TlsAcceptor,
    api: Arc<Api>,
    limits: ConnLimits,
    mut admitted: Admitted,
    mut stop: watch::Receiver<bool>,
) {
    let refuse = |why: String| {
        api.metrics().reject(Reject::Handshake);
        tracing::debug!(%source, reason = %why, "connection refused");
    };
    let tls = match tokio::time::timeout(limits.handshake_timeout, acceptor.accept(tcp)).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => return refuse(format!("TLS handshake: {e}")),
        Err(_) => return refuse("TLS handshake timed out".into()),
    };
    // Authenticated (or about to be refused): the handshake slot is free again.
    admitted.handshake = None;
    // The verifier requires a client certificate, so one is present after a handshake.
    let Some(cert) = tls.get_ref().1.peer_certificates().and_then(|c| c.first()) else {
        return refuse("no client certificate".into());
    };
    let peer = match peer_id_of(cert) {
        Ok(p) => p,
        Err(e) => return refuse(format!("client certificate: {e}")),
    };
    let client = Arc::new(ClientInfo {
        ip_sans: ip_sans_of(cert),
        peer,
        source,
    });
    let svc = service_fn(move |req: Request<Incoming>| {
        let (api, client) = (api.clone(), client.clone());
        async move { Ok::<_, Infallible>(api.handle(&client, req).await) }
    });
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .serve_connection(TokioIo::new(tls), svc);
    tokio::pin!(conn);
    tokio::select! {
        r = conn.as_mut() => {
            if let Err(e) = r {
                tracing::debug!(%source, error = %e, "connection ended with an error");
            }
        }
        _ = stop.changed() => {
            conn.as_mut().graceful_shutdown();
            let _ = conn.await;
        }
    }
    drop(admitted);
}

/// `/metrics`, `/live`, `/ready` in plain HTTP, until `stop` (node-local: see
/// `shoal_node::admin` for its caps and deadlines).
async fn serve_admin(listener: TcpListener, metrics: Metrics, mut stop: watch::Receiver<bool>) {
    let handler = move |req: Request<Incoming>| {
        let response = admin(&metrics, &req);
        async move { response }
    };
    let stopped = async move {
        let _ = stop.changed().await;
    };
    shoal_node::admin::serve(listener, AdminLimits::default(), handler, stopped).await;
}

fn admin(metrics: &Metrics, req: &Request<Incoming>) -> Response<Full<Bytes>> {
    let (status, ctype, body) = match req.uri().path() {
        "/metrics" => (
            StatusCode::OK,
            shoal_node::metrics::CONTENT_TYPE,
            metrics.render(),
        ),
        "/live" | "/ready" => (StatusCode::OK, "text/plain", "ok\n".to_owned()),
        _ => (
            StatusCode::NOT_FOUND,
            "text/plain",
            "not found\n".to_owned(),
        ),
    };
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::header::HeaderValue::from_static(ctype),
    );
    r
}

/// Expires soft state on a timer so gauges stay true on an idle tracker.
async fn sweeper(api: Arc<Api>, mut stop: watch::Receiver<bool>) {
    let mut tick = tokio::time::interval(api.sweep_interval());
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => api.sweep(Instant::now()),
            _ = stop.changed() => break,
        }
    }
}

/// Waits for connections to finish (up to [`SHUTDOWN_GRACE`]), then aborts the rest.
async fn drain(mut conns: JoinSet<()>) {
    let all = async { while conns.join_next().await.is_some() {} };
    if tokio::time::timeout(SHUTDOWN_GRACE, all).await.is_err() {
        tracing::warn!(
            open = conns.len(),
            "connections still open after the grace period; closing"
        );
        conns.abort_all();
    }
}
