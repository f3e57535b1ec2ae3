//! Real counterparts of a container-image pipeline, started by the tests on 127.0.x.y:
//! the distribution registry (`docker-registry`, with no auth, htpasswd or token auth),
//! a token server, a storage front that redirects blob downloads, `containerd` + `ctr`
//! and `skopeo`. Installed by `tests/scripts/install-registry-tools.sh`; every
//! `start` returns [`Missing`] (the test skips) when it cannot run the tool, so the
//! tests pass, saying why, on a machine without the packages or without root.
//!
//! Processes are killed when their handle drops. Nothing here uses a fixed port: a
//! free one is found by binding port 0 on the test's own address.

pub mod containerd;
pub mod front;
pub mod image;
pub mod registry;
pub mod token;

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::task::AbortHandle;

/// Why a real-component test cannot run here (it skips, printing this).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct Missing(pub String);

/// Skips the calling test (prints why and returns) unless every tool is usable.
#[macro_export]
macro_rules! require_real {
    ($($tool:expr),+ $(,)?) => {
        if let Err(e) = $crate::real::available(&[$($tool),+]) {
            eprintln!("SKIPPED {}: {e}", module_path!());
            return;
        }
    };
}

/// Checks that we are root and that every tool is on `PATH`, installing the test
/// packages once (`tests/scripts/install-registry-tools.sh`) if one is missing.
pub fn available(tools: &[&str]) -> Result<(), Missing> {
    if !is_root() {
        return Err(Missing(
            "not root (containerd needs root; the registry tests skip)".into(),
        ));
    }
    static INSTALL: std::sync::Once = std::sync::Once::new();
    if tools.iter().any(|t| which(t).is_none()) {
        INSTALL.call_once(|| {
            let script =
                Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/install-registry-tools.sh");
            let _ = Command::new("bash")
                .arg(script)
                .stdout(Stdio::null())
                .status();
        });
    }
    match tools.iter().find(|t| which(t).is_none()) {
        Some(t) => Err(Missing(format!(
            "{t} is not installed and tests/scripts/install-registry-tools.sh could not install it"
        ))),
        None => Ok(()),
    }
}

/// Whether this process runs as root (`id -u` rather than libc: this crate has no
/// libc dependency).
pub fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

/// The path of `tool` on `PATH`.
pub fn which(tool: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")?
        .to_str()?
        .split(':')
        .map(|d| Path::new(d).join(tool))
        .find(|p| p.is_file())
}

/// A child process killed (and reaped) on drop.
#[derive(Debug)]
pub struct Proc(Child);

impl Proc {
    /// Starts `cmd` with stdout and stderr appended to `log`.
    pub fn spawn(mut cmd: Command, log: &Path) -> anyhow::Result<Self> {
        let out = std::fs::File::create(log)?;
        let err = out.try_clone()?;
        let child = cmd.stdin(Stdio::null()).stdout(out).stderr(err).spawn()?;
        Ok(Proc(child))
    }

    /// Whether the process is still running.
    pub fn alive(&mut self) -> bool {
        matches!(self.0.try_wait(), Ok(None))
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A TCP port that was free on `ip` a moment ago (for tools that need a port number
/// in their config rather than taking a listener).
pub fn free_port(ip: &str) -> anyhow::Result<SocketAddr> {
    let l = std::net::TcpListener::bind((ip, 0))?;
    Ok(l.local_addr()?)
}

/// Runs `cmd` to completion off the async runtime, with a deadline; returns its
/// output, or an error naming the command with its stderr when it fails.
pub async fn run(mut cmd: Command, deadline: Duration) -> anyhow::Result<String> {
    let name = format!("{cmd:?}");
    let task = tokio::task::spawn_blocking(move || cmd.stdin(Stdio::null()).output());
    let out = tokio::time::timeout(deadline, task)
        .await
        .map_err(|_| anyhow::anyhow!("{name}: no result within {deadline:?}"))???;
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    if !out.status.success() {
        anyhow::bail!(
            "{name}: {}: {}{}",
            out.status,
            String::from_utf8_lossy(&out.stderr),
            stdout
        );
    }
    Ok(stdout)
}

/// A running in-process HTTP/1.1 server; stops accepting when dropped.
#[derive(Debug)]
pub struct Server {
    pub addr: SocketAddr,
    accept: AbortHandle,
}

impl Server {
    /// Serves `handler` on `ip`:0.
    pub async fn start<F, Fut>(ip: &str, handler: F) -> std::io::Result<Self>
    where
        F: Fn(Request<Incoming>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Response<Full<Bytes>>> + Send + 'static,
    {
        let l = TcpListener::bind((ip, 0)).await?;
        let addr = l.local_addr()?;
        let handler = Arc::new(handler);
        let task = tokio::spawn(async move {
            while let Ok((s, _)) = l.accept().await {
                let h = handler.clone();
                tokio::spawn(async move {
                    let svc = service_fn(move |req| {
                        let h = h.clone();
                        async move { Ok::<_, Infallible>(h(req).await) }
                    });
                    let _ = http1::Builder::new()
                        .serve_connection(TokioIo::new(s), svc)
                        .await;
                });
            }
        });
        Ok(Server {
            addr,
            accept: task.abort_handle(),
        })
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

/// Polls `f` (an async check) every 50 ms until it is true or `deadline` passes.
pub async fn until<F, Fut>(deadline: Duration, mut f: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let end = tokio::time::Instant::now() + deadline;
    loop {
        if f().await {
            return true;
        }
        if tokio::time::Instant::now() > end {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// `GET PATH` (origin-form, as a registry client sends it to a mirror) to `addr`
/// with `Host: addr` and `headers`; the whole answer.
pub async fn origin_form_get(
    addr: SocketAddr,
    path: &str,
    headers: &[(&str, &str)],
) -> anyhow::Result<crate::client::Reply> {
    let s = tokio::net::TcpStream::connect(addr).await?;
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(s)).await?;
    tokio::spawn(conn);
    let mut req = Request::get(path).header(http::header::HOST, addr.to_string());
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let resp = send
        .send_request(req.body(http_body_util::Empty::<Bytes>::new())?)
        .await?;
    let (parts, body) = resp.into_parts();
    let body = http_body_util::BodyExt::collect(body).await?.to_bytes();
    Ok(crate::client::Reply {
        status: parts.status,
        headers: parts.headers,
        body,
    })
}
