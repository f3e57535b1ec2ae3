//! A small OCI registry for registry-mirror tests, behaving as the distribution
//! registry does where the agent depends on it:
//!
//! - manifests by tag and by digest (`GET`/`HEAD`), `Content-Type` = the media type,
//!   `Docker-Content-Digest`, `ETag`; an OCI manifest asked for with an `Accept` that
//!   lacks its type gets distribution's `404 MANIFEST_UNKNOWN` ("OCI manifest found,
//!   but accept header does not support OCI manifests");
//! - blobs (`GET`/`HEAD`, single `Range`, `Accept-Ranges: bytes`), optionally served
//!   corrupted (same length, one byte flipped) or redirected (`307`) to a second
//!   "storage" server on another address, with a signed-looking query;
//! - auth: none, basic (`user:password`) or bearer (a `WWW-Authenticate: Bearer
//!   realm=…,service=…,scope=repository:NAME:pull` challenge and a token endpoint at
//!   `/token` that wants basic credentials and issues a token for one repository);
//! - counts requests and body bytes served per path (storage included) so a test can
//!   assert "the second pull took 0 blob bytes from the registry", and records whether
//!   storage ever saw an `Authorization` header.
//!
//! Also [`get`]: an origin-form request through an agent's `/m/NAME/…` mirror path.

use std::collections::{HashMap, HashSet};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use base64::Engine as _;
use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use sha2::{Digest as _, Sha256};
use tokio::net::TcpListener;
use tokio::task::AbortHandle;

use crate::client::Reply;

pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
/// What containerd sends when resolving a tag.
pub const CONTAINERD_ACCEPT: &str = "application/vnd.docker.distribution.manifest.v2+json, application/vnd.docker.distribution.manifest.list.v2+json, application/vnd.oci.image.manifest.v1+json, application/vnd.oci.image.index.v1+json, */*";

/// `sha256:<hex>` of `b`.
pub fn digest(b: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(b)))
}

/// How the registry wants clients to authenticate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Auth {
    None,
    /// `Authorization: Basic base64(user:password)`.
    Basic {
        user: String,
        password: String,
    },
    /// Bearer tokens from `/token`, which wants these basic credentials.
    Bearer {
        user: String,
        password: String,
    },
}

#[derive(Debug, Default)]
struct Content {
    /// repo → tag → manifest digest.
    tags: HashMap<String, HashMap<String, String>>,
    /// digest → (media type, bytes).
    manifests: HashMap<String, (String, Bytes)>,
    /// digest → bytes.
    blobs: HashMap<String, Bytes>,
    /// Blobs served with one byte flipped.
    corrupt: HashSet<String>,
    /// repo → blobs it holds (as distribution links blobs into repositories).
    links: HashMap<String, HashSet<String>>,
}

#[derive(Debug, Default)]
struct Counters {
    /// path → (requests, body bytes).
    paths: HashMap<String, (u64, u64)>,
    storage_saw_authorization: bool,
    /// Authorization values the registry saw (to check what reached it).
    authorizations: Vec<String>,
}

#[derive(Debug)]
struct Shared {
    content: Mutex<Content>,
    counters: Mutex<Counters>,
    auth: Auth,
    /// Redirect blob GETs to this storage address.
    storage: Mutex<Option<SocketAddr>>,
    registry_addr: Mutex<Option<SocketAddr>>,
    /// Blob GETs wait until this is true ([`RegistryOrigin::hold_blobs`]).
    open: tokio::sync::watch::Sender<bool>,
    /// Blob GETs that arrived (before the gate).
    arrived: Mutex<u64>,
}

/// A running fake registry (and its storage server, when redirects are on).
#[derive(Debug, Clone)]
pub struct RegistryOrigin {
    pub addr: SocketAddr,
    /// The storage server's address (blob GETs redirect there once
    /// [`RegistryOrigin::redirect_blobs`] is called).
    pub storage_addr: SocketAddr,
    shared: Arc<Shared>,
    tasks: Arc<Vec<AbortHandle>>,
}

impl Drop for RegistryOrigin {
    fn drop(&mut self) {
        if Arc::strong_count(&self.tasks) == 1 {
            for t in self.tasks.iter() {
                t.abort();
            }
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl RegistryOrigin {
    /// A registry on `ip`:0 and its storage server on `storage_ip`:0.
    pub async fn start(ip: &str, storage_ip: &str, auth: Auth) -> std::io::Result<Self> {
        let shared = Arc::new(Shared {
            content: Mutex::new(Content::default()),
            counters: Mutex::new(Counters::default()),
            auth,
            storage: Mutex::new(None),
            registry_addr: Mutex::new(None),
            open: tokio::sync::watch::channel(true).0,
            arrived: Mutex::new(0),
        });
        let reg = TcpListener::bind((ip, 0)).await?;
        let sto = TcpListener::bind((storage_ip, 0)).await?;
        let addr = reg.local_addr()?;
        let storage_addr = sto.local_addr()?;
        *lock(&shared.registry_addr) = Some(addr);
        let t1 = serve(reg, shared.clone(), false);
        let t2 = serve(sto, shared.clone(), true);
        Ok(Self {
            addr,
            storage_addr,
            shared,
            tasks: Arc::new(vec![t1, t2]),
        })
    }

    /// Adds a blob; returns its digest.
    pub fn blob(&self, bytes: Bytes) -> String {
        let d = digest(&bytes);
        lock(&self.shared.content).blobs.insert(d.clone(), bytes);
        d
    }

    /// Makes blob `digest` available in `repo` (`image` links its layers itself).
    pub fn link(&self, repo: &str, digest: &str) {
        lock(&self.shared.content)
            .links
            .entry(repo.to_owned())
            .or_default()
            .insert(digest.to_owned());
    }

    /// Adds a manifest of `media_type` and points `repo:tag` at it; returns its digest.
    pub fn manifest(&self, repo: &str, tag: &str, media_type: &str, bytes: Bytes) -> String {
        let d = digest(&bytes);
        let mut c = lock(&self.shared.content);
        c.manifests
            .insert(d.clone(), (media_type.to_owned(), bytes));
        c.tags
            .entry(repo.to_owned())
            .or_default()
            .insert(tag.to_owned(), d.clone());
        d
    }

    /// An image manifest (JSON) of `media_type` naming `layers`, tagged `repo:tag`;
    /// returns (manifest digest, manifest bytes).
    pub fn image(
        &self,
        repo: &str,
        tag: &str,
        media_type: &str,
        layers: &[String],
    ) -> (String, Bytes) {
        let layer_json: Vec<String> = layers
            .iter()
            .map(|d| {
                let size = lock(&self.shared.content)
                    .blobs
                    .get(d)
                    .map_or(0, |b| b.len());
                format!(
                    r#"{{"mediaType":"application/vnd.oci.image.layer.v1.tar+gzip","digest":"{d}","size":{size}}}"#
                )
            })
            .collect();
        let body = Bytes::from(format!(
            r#"{{"schemaVersion":2,"mediaType":"{media_type}","tag":"{tag}","layers":[{}]}}"#,
            layer_json.join(",")
        ));
        let d = self.manifest(repo, tag, media_type, body.clone());
        for l in layers {
            self.link(repo, l);
        }
        (d, body)
    }

    /// Serves blob `digest` with one byte flipped from now on.
    pub fn corrupt(&self, digest: &str) {
        lock(&self.shared.content).corrupt.insert(digest.to_owned());
    }

    /// Blob GETs wait before answering until [`RegistryOrigin::release_blobs`].
    pub fn hold_blobs(&self) {
        self.shared.open.send_replace(false);
    }

    pub fn release_blobs(&self) {
        self.shared.open.send_replace(true);
    }

    /// Blob GETs received so far (counted on arrival, held or not).
    pub fn blob_gets_arrived(&self) -> u64 {
        *lock(&self.shared.arrived)
    }

    /// Blob GETs are answered `307` to the storage server from now on.
    pub fn redirect_blobs(&self) {
        *lock(&self.shared.storage) = Some(self.storage_addr);
    }

    /// (requests, body bytes) served at `path` (registry or storage).
    pub fn served(&self, path: &str) -> (u64, u64) {
        lock(&self.shared.counters)
            .paths
            .get(path)
            .copied()
            .unwrap_or_default()
    }

    /// Body bytes of blobs served, registry and storage together.
    pub fn blob_bytes(&self) -> u64 {
        lock(&self.shared.counters)
            .paths
            .iter()
            .filter(|(p, _)| p.contains("/blobs/") || p.starts_with("/storage/"))
            .map(|(_, (_, b))| *b)
            .sum()
    }

    /// Requests for blobs (registry GET/HEAD and storage).
    pub fn blob_requests(&self) -> u64 {
        lock(&self.shared.counters)
            .paths
            .iter()
            .filter(|(p, _)| p.contains("/blobs/") || p.starts_with("/storage/"))
            .map(|(_, (n, _))| *n)
            .sum()
    }

    /// Whether the storage server ever received an `Authorization` header.
    pub fn storage_saw_authorization(&self) -> bool {
        lock(&self.shared.counters).storage_saw_authorization
    }

    /// Every `Authorization` value the registry received.
    pub fn authorizations(&self) -> Vec<String> {
        lock(&self.shared.counters).authorizations.clone()
    }

    /// A valid `Authorization` value for `repo` (basic, or a bearer token the token
    /// endpoint would issue); `None` without auth.
    pub fn credentials(&self, repo: &str) -> Option<String> {
        match &self.shared.auth {
            Auth::None => None,
            Auth::Basic { user, password } => Some(basic(user, password)),
            Auth::Bearer { user, password } => {
                Some(format!("Bearer {}", token(user, password, repo)))
            }
        }
    }
}

/// `Basic base64(user:password)`.
pub fn basic(user: &str, password: &str) -> String {
    let b = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
    format!("Basic {b}")
}

/// The token the token endpoint issues to `user` for `repo`.
fn token(user: &str, password: &str, repo: &str) -> String {
    hex::encode(Sha256::digest(
        format!("{user}\0{password}\0{repo}").as_bytes(),
    ))
}

fn serve(l: TcpListener, shared: Arc<Shared>, storage: bool) -> AbortHandle {
    tokio::spawn(async move {
        while let Ok((s, _)) = l.accept().await {
            let shared = shared.clone();
            tokio::spawn(async move {
                let svc = service_fn(move |req| {
                    let shared = shared.clone();
                    async move {
                        let blob_get =
                            req.method() == Method::GET && req.uri().path().contains("/blobs/");
                        if blob_get && !storage {
                            *lock(&shared.arrived) += 1;
                            let mut rx = shared.open.subscribe();
                            let _ = rx.wait_for(|open| *open).await;
                        }
                        let r = if storage {
                            handle_storage(&shared, &req)
                        } else {
                            handle(&shared, &req)
                        };
                        Ok::<_, Infallible>(r)
                    }
                });
                let _ = http1::Builder::new()
                    .serve_connection(TokioIo::new(s), svc)
                    .await;
            });
        }
    })
    .abort_handle()
}

fn resp(status: StatusCode, headers: &[(&str, String)], body: Bytes) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(body));
    *r.status_mut() = status;
    for (k, v) in headers {
        if let Ok(v) = HeaderValue::from_str(v) {
            r.headers_mut().append(
                header::HeaderName::from_bytes(k.as_bytes()).expect("name"),
                v,
            );
        }
    }
    r
}

fn oci_err(
    status: StatusCode,
    code: &str,
    msg: &str,
    extra: &[(&str, String)],
) -> Response<Full<Bytes>> {
    let mut h = vec![("content-type", "application/json".to_owned())];
    h.extend(extra.iter().cloned());
    resp(
        status,
        &h,
        Bytes::from(format!(
            r#"{{"errors":[{{"code":"{code}","message":"{msg}","detail":null}}]}}"#
        )),
    )
}

fn count(shared: &Shared, path: &str, bytes: u64) {
    let mut c = lock(&shared.counters);
    let e = c.paths.entry(path.to_owned()).or_default();
    e.0 += 1;
    e.1 += bytes;
}

/// The repository, endpoint and reference of `/v2/<name>/<kind>/<ref>`.
fn split(path: &str) -> Option<(&str, &str, &str)> {
    let rest = path.strip_prefix("/v2/")?;
    let (head, reference) = rest.rsplit_once('/')?;
    let (name, kind) = head.rsplit_once('/')?;
    Some((name, kind, reference))
}

/// `None` if `h` may pull `repo`, else the 401 to send.
fn authorize(shared: &Shared, h: &HeaderMap, repo: Option<&str>) -> Option<Response<Full<Bytes>>> {
    let got = h.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok());
    let addr = lock(&shared.registry_addr)
        .map(|a| a.to_string())
        .unwrap_or_default();
    match &shared.auth {
        Auth::None => None,
        Auth::Basic { user, password } => {
            if got == Some(basic(user, password).as_str()) {
                None
            } else {
                Some(oci_err(
                    StatusCode::UNAUTHORIZED,
                    "UNAUTHORIZED",
                    "authentication required",
                    &[(
                        "www-authenticate",
                        "Basic realm=\"fake-registry\"".to_owned(),
                    )],
                ))
            }
        }
        Auth::Bearer { user, password } => {
            let ok = match (got, repo) {
                (Some(g), Some(r)) => g == format!("Bearer {}", token(user, password, r)),
                // The ping: any token this server issued would do; accept a valid
                // one for any repository is not checkable without state: ask for one.
                (Some(g), None) => g.starts_with("Bearer ") && g.len() == 7 + 64,
                _ => false,
            };
            if ok {
                return None;
            }
            let scope = repo
                .map(|r| format!(",scope=\"repository:{r}:pull\""))
                .unwrap_or_default();
            Some(oci_err(
                StatusCode::UNAUTHORIZED,
                "UNAUTHORIZED",
                "authentication required",
                &[(
                    "www-authenticate",
                    format!(
                        "Bearer realm=\"http://{addr}/token\",service=\"fake-registry\"{scope}"
                    ),
                )],
            ))
        }
    }
}

fn handle(shared: &Shared, req: &Request<Incoming>) -> Response<Full<Bytes>> {
    let path = req.uri().path().to_owned();
    let h = req.headers();
    if let Some(a) = h.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()) {
        lock(&shared.counters).authorizations.push(a.to_owned());
    }
    let head = req.method() == Method::HEAD;
    let r = if path == "/token" {
        token_endpoint(shared, req)
    } else if path == "/v2/" || path == "/v2" {
        match authorize(shared, h, None) {
            None => resp(
                StatusCode::OK,
                &[("content-type", "application/json".into())],
                Bytes::from_static(b"{}"),
            ),
            Some(r) => r,
        }
    } else {
        match split(&path) {
            Some((repo, kind, reference)) => match authorize(shared, h, Some(repo)) {
                Some(r) => r,
                None => match kind {
                    "manifests" => manifest(shared, h, repo, reference),
                    "blobs" => blob(shared, req, repo, reference, head),
                    _ => oci_err(StatusCode::NOT_FOUND, "UNSUPPORTED", "unsupported", &[]),
                },
            },
            None => oci_err(StatusCode::NOT_FOUND, "UNSUPPORTED", "unsupported", &[]),
        }
    };
    let body_len = if head {
        0
    } else {
        hyper::body::Body::size_hint(r.body()).exact().unwrap_or(0)
    };
    count(shared, &path, body_len);
    if head {
        // HEAD: same head, no body (hyper keeps Content-Length as set).
        let (parts, body) = r.into_parts();
        let len = hyper::body::Body::size_hint(&body).exact().unwrap_or(0);
        let mut r = Response::from_parts(parts, Full::new(Bytes::new()));
        r.headers_mut()
            .insert(header::CONTENT_LENGTH, HeaderValue::from(len));
        return r;
    }
    r
}

fn token_endpoint(shared: &Shared, req: &Request<Incoming>) -> Response<Full<Bytes>> {
    let Auth::Bearer { user, password } = &shared.auth else {
        return resp(StatusCode::NOT_FOUND, &[], Bytes::new());
    };
    let got = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    if got != Some(basic(user, password).as_str()) {
        return resp(
            StatusCode::UNAUTHORIZED,
            &[],
            Bytes::from_static(b"bad credentials"),
        );
    }
    let scope = req
        .uri()
        .query()
        .unwrap_or("")
        .split('&')
        .find_map(|kv| kv.strip_prefix("scope="))
        .unwrap_or("");
    let repo = scope
        .strip_prefix("repository:")
        .and_then(|s| s.strip_suffix(":pull"))
        .unwrap_or("");
    let t = token(user, password, repo);
    resp(
        StatusCode::OK,
        &[("content-type", "application/json".into())],
        Bytes::from(format!(r#"{{"token":"{t}","access_token":"{t}"}}"#)),
    )
}

fn accepts(h: &HeaderMap, media_type: &str) -> bool {
    h.get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|a| a.split(';').next().unwrap_or("").trim() == media_type)
}

fn manifest(shared: &Shared, h: &HeaderMap, repo: &str, reference: &str) -> Response<Full<Bytes>> {
    let c = lock(&shared.content);
    let d = if reference.starts_with("sha256:") {
        Some(reference.to_owned())
    } else {
        c.tags.get(repo).and_then(|t| t.get(reference)).cloned()
    };
    let Some((d, (mt, body))) = d.and_then(|d| c.manifests.get(&d).map(|m| (d, m.clone()))) else {
        return oci_err(
            StatusCode::NOT_FOUND,
            "MANIFEST_UNKNOWN",
            "manifest unknown",
            &[],
        );
    };
    if mt.starts_with("application/vnd.oci.") && !accepts(h, &mt) {
        return oci_err(
            StatusCode::NOT_FOUND,
            "MANIFEST_UNKNOWN",
            "OCI manifest found, but accept header does not support OCI manifests",
            &[],
        );
    }
    if mt == DOCKER_MANIFEST && !accepts(h, &mt) {
        // distribution would convert to schema 1; this registry refuses instead.
        return oci_err(
            StatusCode::NOT_FOUND,
            "MANIFEST_UNKNOWN",
            "schema 1 not served",
            &[],
        );
    }
    resp(
        StatusCode::OK,
        &[
            ("content-type", mt),
            ("docker-content-digest", d.clone()),
            ("etag", format!("\"{d}\"")),
        ],
        body,
    )
}

fn blob_bytes(shared: &Shared, d: &str) -> Option<Bytes> {
    let c = lock(&shared.content);
    let b = c.blobs.get(d)?.clone();
    if c.corrupt.contains(d) && !b.is_empty() {
        let mut v = b.to_vec();
        v[b.len() / 2] ^= 0x01;
        return Some(Bytes::from(v));
    }
    Some(b)
}

/// A blob's bytes, honouring one `Range: bytes=A-B`.
fn ranged(
    req: &Request<Incoming>,
    d: &str,
    b: Bytes,
    extra: &[(&str, String)],
) -> Response<Full<Bytes>> {
    let mut h = vec![
        ("content-type", "application/octet-stream".to_owned()),
        ("docker-content-digest", d.to_owned()),
        ("etag", format!("\"{d}\"")),
        ("accept-ranges", "bytes".to_owned()),
    ];
    h.extend(extra.iter().cloned());
    let range = req
        .headers()
        .get(header::RANGE)
        .and_then(|v| v.to_str().ok())
        .and_then(|r| r.strip_prefix("bytes="))
        .and_then(|r| r.split_once('-'))
        .and_then(|(a, z)| Some((a.parse::<usize>().ok()?, z.parse::<usize>().ok()?)));
    match range {
        Some((a, z)) if a <= z && z < b.len() => {
            h.push(("content-range", format!("bytes {a}-{z}/{}", b.len())));
            resp(StatusCode::PARTIAL_CONTENT, &h, b.slice(a..=z))
        }
        _ => resp(StatusCode::OK, &h, b),
    }
}

fn blob(
    shared: &Shared,
    req: &Request<Incoming>,
    repo: &str,
    d: &str,
    head: bool,
) -> Response<Full<Bytes>> {
    let linked = lock(&shared.content)
        .links
        .get(repo)
        .is_some_and(|l| l.contains(d));
    let Some(b) = blob_bytes(shared, d).filter(|_| linked) else {
        return oci_err(
            StatusCode::NOT_FOUND,
            "BLOB_UNKNOWN",
            "blob unknown to registry",
            &[],
        );
    };
    if !head && let Some(s) = *lock(&shared.storage) {
        let hex = d.trim_start_matches("sha256:");
        return resp(
            StatusCode::TEMPORARY_REDIRECT,
            &[(
                "location",
                format!("http://{s}/storage/{hex}?X-Amz-Signature=deadbeef&X-Amz-Expires=60"),
            )],
            Bytes::new(),
        );
    }
    ranged(req, d, b, &[])
}

fn handle_storage(shared: &Shared, req: &Request<Incoming>) -> Response<Full<Bytes>> {
    let path = req.uri().path().to_owned();
    if req.headers().contains_key(header::AUTHORIZATION) {
        lock(&shared.counters).storage_saw_authorization = true;
    }
    let d = format!("sha256:{}", path.trim_start_matches("/storage/"));
    let signed = req
        .uri()
        .query()
        .is_some_and(|q| q.contains("X-Amz-Signature="));
    let r = match blob_bytes(shared, &d) {
        Some(b) if signed => ranged(req, &d, b, &[]),
        Some(_) => resp(StatusCode::FORBIDDEN, &[], Bytes::from_static(b"unsigned")),
        None => resp(StatusCode::NOT_FOUND, &[], Bytes::new()),
    };
    let n = if req.method() == Method::HEAD {
        0
    } else {
        hyper::body::Body::size_hint(r.body()).exact().unwrap_or(0)
    };
    count(shared, &path, n);
    r
}

/// `GET`/`HEAD path` (origin form, e.g. `/m/reg/v2/…`) sent to `agent` with `headers`;
/// the whole response. A body the agent cut is an `Err`.
pub async fn request(
    agent: SocketAddr,
    method: Method,
    path: &str,
    headers: &[(&str, &str)],
) -> anyhow::Result<Reply> {
    crate::client::request(agent, method, path, headers).await
}

/// `GET path` through `agent`.
pub async fn get(agent: SocketAddr, path: &str, headers: &[(&str, &str)]) -> anyhow::Result<Reply> {
    request(agent, Method::GET, path, headers).await
}
