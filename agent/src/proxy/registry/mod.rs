//! Registry mirrors (OCI Distribution Spec v1.1): `[[mirrors]]` with
//! `kind = "registry"`, or `"auto"` for paths under `/v2/`.
//!
//! - **Auth passes through.** The `/v2/` ping, tag lists and referrers are relayed
//!   uncached with the client's `Authorization`, and so are `401` + `WWW-Authenticate`
//!   answers, so containerd's token flow works unchanged. Requests with
//!   `Authorization` are cached all the same, but a cached blob or manifest is served
//!   to a client only after the registry accepted *that* client's credentials for
//!   *that* repository and object: the fill the client's own request started (a
//!   `200` to it), else a `HEAD` of the same URL with the client's headers, its
//!   success remembered for `auth_ttl` ([`grants`]). A client the registry refuses gets
//!   the registry's own answer to its request (status, `WWW-Authenticate`, body),
//!   relayed, and no cached byte.
//! - **Blobs** (`/v2/<name>/blobs/sha256:…`) are keyed by digest only
//!   (`oci:sha256:<hex>`): stored once per node whatever repository or registry named
//!   them, swarmed by the digest's object key, and sha256-checked as they are
//!   assembled (a mismatch cuts the response and keeps nothing).
//! - **Manifests**: the client's `Accept` reaches the registry; by-digest manifests are
//!   cached under `oci-manifest:sha256:<hex>` with their `Content-Type` and verified;
//!   by-tag requests are resolved with a `HEAD` (the registry's
//!   `Docker-Content-Digest` and `Content-Type`; reused for `tag_ttl` when set), then
//!   served as that digest, from the cache when the cached copy's type is one the
//!   client accepts ([`accept`]). Manifest answers carry `Vary: Accept`.
//! - **Redirects** from the registry to storage are followed by the agent on fills
//!   (`origin::redirect`: at most 5 hops, egress policy on every hop, no
//!   `Authorization` to another host); the cache key stays the digest, never a signed
//!   storage URL.
//!
//! Credentials live only in the request being served and in the fill it started
//! (memory, for the fill's life); grants keep their sha256. Peers and the tracker see
//! object keys (digest and size) and chunk ids only.
//!
//! Cannot: push (only `GET`/`HEAD` are proxied), cache tag lists or referrers, or
//! verify `sha512` digests (refused with `400`). A client's `HEAD` is relayed, not
//! answered from the cache. Several registries behind one mirror (containerd's
//! `?ns=`) are not routed here: [`upstream_for`] is the hook for that.

pub mod accept;
pub mod grants;
mod manifest;

use std::sync::Arc;
use std::time::{Duration, Instant};

use http::header::{self, HeaderMap, HeaderValue};
use http::{Method, Response, StatusCode, Uri};
use shoal_proto::oci::{Digest, OciPathError, Reference, RegistryPath, RepoName};

use super::{Proxy, RouteError, respond};
use crate::config::{Mirror, MirrorKind, Mode};
use crate::object::read::ProxyBody;
use crate::object::{Lookup, Repr, Upstream, Want};
use crate::origin::reason::FetchReason;
use crate::origin::redirect;
use grants::GrantKey;

/// The registry settings of one mirror.
#[derive(Debug, Clone)]
pub struct MirrorSettings {
    pub kind: MirrorKind,
    pub tag_ttl: Duration,
    pub auth_ttl: Duration,
}

impl MirrorSettings {
    pub fn of(m: &Mirror) -> Self {
        Self {
            kind: m.kind,
            tag_ttl: m.tag_ttl,
            auth_ttl: m.auth_ttl,
        }
    }

    /// Whether a request whose path under the mirror's upstream prefix is `tail`
    /// is a registry request (see `Mirror::kind`).
    pub fn is_registry(&self, tail: &str) -> bool {
        match self.kind {
            MirrorKind::Registry => true,
            MirrorKind::Http => false,
            MirrorKind::Auto => tail == "/v2" || tail.starts_with("/v2/"),
        }
    }
}

/// The upstream URL of a registry request under a mirror: today the mirror's own
/// upstream (`url`, already resolved by the proxy). The hook for routing one mirror
/// to several registries (containerd's `?ns=`): pick the registry here.
pub fn upstream_for(url: Uri) -> Uri {
    url
}

/// What one registry request ended as (`result` of `shoal_registry_requests_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    Cache,
    Fill,
    Pass,
    Refused,
    Invalid,
    Error,
}

impl Outcome {
    fn label(self) -> &'static str {
        match self {
            Outcome::Cache => "cache",
            Outcome::Fill => "fill",
            Outcome::Pass => "pass",
            Outcome::Refused => "refused",
            Outcome::Invalid => "invalid",
            Outcome::Error => "error",
        }
    }
}

/// `kind` of `shoal_registry_requests_total`.
fn kind(p: &Result<RegistryPath, OciPathError>) -> &'static str {
    match p {
        Err(_) => "invalid",
        Ok(RegistryPath::Ping) => "ping",
        Ok(RegistryPath::Manifest {
            reference: Reference::Tag(_),
            ..
        }) => "manifest_tag",
        Ok(RegistryPath::Manifest { .. }) => "manifest_digest",
        Ok(RegistryPath::Blob { .. }) => "blob",
        Ok(RegistryPath::Tags { .. }) => "tags",
        Ok(RegistryPath::Referrers { .. }) => "referrers",
    }
}

/// An OCI error response (`{"errors":[{"code","message"}]}`).
pub fn oci_error(status: StatusCode, code: &str, message: &str) -> Response<ProxyBody> {
    let body = serde_json::json!({"errors": [{"code": code, "message": message}]});
    let mut r = Response::new(respond::full(body.to_string()));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r
}

/// The client headers a registry sees on the agent's requests for this client:
/// `Authorization` and `Accept` (the agent adds its own `User-Agent` and encoding).
fn client_headers(h: &HeaderMap) -> HeaderMap {
    let mut out = HeaderMap::new();
    for name in [header::AUTHORIZATION, header::ACCEPT] {
        for v in h.get_all(&name) {
            out.append(name.clone(), v.clone());
        }
    }
    if let Some(ua) = h.get(header::USER_AGENT) {
        out.insert(header::USER_AGENT, ua.clone());
    }
    out
}

/// Whether the registry's answer to a `HEAD` says it accepts the client: a success,
/// or a redirect to storage (registries authorise before redirecting).
fn accepted(status: StatusCode) -> bool {
    status.is_success() || redirect::is_redirect(status)
}

/// The result of asking whether a client may have cached bytes.
enum Check {
    /// A grant within `auth_ttl`: nothing was asked.
    Remembered,
    /// The registry accepted a `HEAD` just now.
    Granted,
    /// The registry refused: its answer to the client's own request, to relay.
    Refused(Response<ProxyBody>),
}

impl Proxy {
    /// The mirror settings and registry path of a `/m/NAME/…` request whose mirror
    /// treats it as a registry request; `None` for every other request.
    pub(super) fn registry_path(
        &self,
        target: &Uri,
        url: &Uri,
    ) -> Option<(MirrorSettings, Result<RegistryPath, OciPathError>)> {
        if target.scheme().is_some() {
            return None;
        }
        let rest = target.path().strip_prefix("/m/")?;
        let name = rest.split('/').next()?;
        let settings = self.registries.get(name)?;
        let base = self.mirrors.get(name)?;
        let prefix = base.path().trim_end_matches('/');
        let tail = url.path().strip_prefix(prefix).unwrap_or(url.path());
        if !settings.is_registry(tail) {
            return None;
        }
        Some((settings.clone(), RegistryPath::parse(tail)))
    }

    /// Handles one registry request (see the module docs).
    pub(super) async fn registry(
        &self,
        method: &Method,
        headers: &HeaderMap,
        url: Uri,
        mirror: MirrorSettings,
        path: Result<RegistryPath, OciPathError>,
    ) -> Result<(Response<ProxyBody>, &'static str), RouteError> {
        let kind = kind(&path);
        let url = upstream_for(url);
        let res = match path {
            Err(e) => Ok((
                oci_error(StatusCode::BAD_REQUEST, e.code(), &e.to_string()),
                "error",
                Outcome::Invalid,
            )),
            Ok(p) => {
                self.registry_endpoint(method, headers, &url, &mirror, p)
                    .await
            }
        };
        let outcome = match &res {
            Ok((_, _, o)) => *o,
            Err(_) => Outcome::Error,
        };
        self.metrics
            .registry_requests
            .with_label_values(&[kind, outcome.label()])
            .inc();
        res.map(|(r, label, _)| (r, label))
    }

    async fn registry_endpoint(
        &self,
        method: &Method,
        headers: &HeaderMap,
        url: &Uri,
        mirror: &MirrorSettings,
        path: RegistryPath,
    ) -> Result<(Response<ProxyBody>, &'static str, Outcome), RouteError> {
        let (mode, _) = self.rules.decide(&url.to_string());
        let name = match (&path, path.name()) {
            (RegistryPath::Manifest { .. } | RegistryPath::Blob { .. }, Some(n)) => n.clone(),
            // The ping, tag lists, referrers: relayed, auth challenges included.
            _ => return self.registry_pass(method, headers, url, false).await,
        };
        if mode == Mode::Pass {
            let r = self
                .pass(method.clone(), url, headers.clone(), FetchReason::RulePass)
                .await?;
            return Ok((r, "pass", Outcome::Pass));
        }
        let manifest = matches!(path, RegistryPath::Manifest { .. });
        if method == Method::HEAD {
            // Relayed; a success is the registry accepting this client for this
            // object (the digest in the path, or the one a tag names).
            let (r, label, o) = self.registry_pass(method, headers, url, manifest).await?;
            let named = match &path {
                RegistryPath::Blob { digest, .. }
                | RegistryPath::Manifest {
                    reference: Reference::Digest(digest),
                    ..
                } => Some(*digest),
                _ => head_digest(r.headers()),
            };
            if let Some(d) = named.filter(|_| r.status().is_success())
                && !mirror.auth_ttl.is_zero()
            {
                self.grants
                    .grant(GrantKey::new(headers, url, &name, &d), Instant::now());
            }
            return Ok((r, label, o));
        }
        match path {
            RegistryPath::Blob { digest, .. } => {
                self.registry_blob(headers, url, mirror, &name, digest, mode)
                    .await
            }
            RegistryPath::Manifest {
                reference: Reference::Digest(d),
                ..
            } => {
                self.registry_manifest(headers, url, mirror, &name, d, None)
                    .await
            }
            RegistryPath::Manifest {
                reference: Reference::Tag(t),
                ..
            } => self.registry_tag(headers, url, mirror, &name, &t).await,
            _ => self.registry_pass(method, headers, url, false).await,
        }
    }

    /// Relays the client's request uncached (`vary`: add `Vary: Accept`).
    async fn registry_pass(
        &self,
        method: &Method,
        headers: &HeaderMap,
        url: &Uri,
        vary: bool,
    ) -> Result<(Response<ProxyBody>, &'static str, Outcome), RouteError> {
        let mut r = self
            .pass(
                method.clone(),
                url,
                headers.clone(),
                FetchReason::RegistryPass,
            )
            .await?;
        if vary {
            vary_accept(r.headers_mut());
        }
        Ok((r, "pass", Outcome::Pass))
    }

    /// Whether the client of `headers` may have the cached bytes of `digest` in
    /// `repo` at the registry of `url`: a grant within `auth_ttl`, else a `HEAD` of
    /// `url` with the client's headers.
    async fn check(
        &self,
        headers: &HeaderMap,
        url: &Uri,
        mirror: &MirrorSettings,
        repo: &RepoName,
        digest: &Digest,
    ) -> Result<Check, RouteError> {
        let key = GrantKey::new(headers, url, repo, digest);
        let checks = &self.metrics.registry_auth_checks;
        if self.grants.granted(&key, mirror.auth_ttl, Instant::now()) {
            checks.with_label_values(&["remembered"]).inc();
            return Ok(Check::Remembered);
        }
        let resp = self.registry_head(headers, url).await?;
        if accepted(resp.status()) {
            checks.with_label_values(&["granted"]).inc();
            if !mirror.auth_ttl.is_zero() {
                self.grants.grant(key, Instant::now());
            }
            return Ok(Check::Granted);
        }
        checks.with_label_values(&["refused"]).inc();
        tracing::debug!(status = %resp.status(), repo = %repo, "registry refused the client; relaying its answer");
        Ok(Check::Refused(self.refusal(headers, url).await?))
    }

    /// The registry's own answer to the client's GET (a refused client: status,
    /// `WWW-Authenticate` and body as the registry sends them), relayed uncached.
    async fn refusal(
        &self,
        headers: &HeaderMap,
        url: &Uri,
    ) -> Result<Response<ProxyBody>, RouteError> {
        Ok(self
            .pass(Method::GET, url, headers.clone(), FetchReason::RegistryPass)
            .await?)
    }

    async fn registry_blob(
        &self,
        headers: &HeaderMap,
        url: &Uri,
        mirror: &MirrorSettings,
        repo: &RepoName,
        digest: Digest,
        mode: Mode,
    ) -> Result<(Response<ProxyBody>, &'static str, Outcome), RouteError> {
        let want = self.blob_want(headers, client_headers(headers), url, digest, mode);
        let label = if want.mode == Mode::P2p {
            "p2p"
        } else {
            "cache"
        };
        self.forget_incomplete(&blob_key(&digest)).await;
        let (mut r, label, outcome) = self
            .serve_checked(headers, mirror, repo, &digest, &want, label, None)
            .await?;
        if r.status().is_success()
            && let Ok(v) = HeaderValue::from_str(&digest.to_string())
        {
            r.headers_mut().insert("docker-content-digest", v);
        }
        Ok((r, label, outcome))
    }

    /// Looks `want` up and serves it only to a client the registry accepted: one
    /// whose own request started the fill (the registry answered it `200`: remembered
    /// as a grant), or, for cached bytes and other clients' fills, one that passes
    /// [`Proxy::check`]. Nothing is sent to the client before that.
    #[allow(clippy::too_many_arguments)]
    async fn serve_checked(
        &self,
        headers: &HeaderMap,
        mirror: &MirrorSettings,
        repo: &RepoName,
        digest: &Digest,
        want: &Want,
        label: &'static str,
        fits: Option<&(dyn Fn(&Repr) -> bool + Sync)>,
    ) -> Result<(Response<ProxyBody>, &'static str, Outcome), RouteError> {
        let url = &want.url;
        let lookup = self.cache.lookup(want).await?;
        let led = match (&lookup, &want.upstream) {
            (Lookup::Fill(f), Some(mine)) => f
                .upstream
                .as_ref()
                .is_some_and(|(_, theirs)| Arc::ptr_eq(theirs, mine)),
            _ => false,
        };
        let cached_bytes = matches!(
            lookup,
            Lookup::Object(_) | Lookup::Fill(_) | Lookup::Stale(_)
        );
        if led {
            self.metrics
                .registry_auth_checks
                .with_label_values(&["granted"])
                .inc();
            if !mirror.auth_ttl.is_zero() {
                let key = GrantKey::new(headers, url, repo, digest);
                self.grants.grant(key, Instant::now());
            }
        } else if cached_bytes
            && let Check::Refused(r) = self.check(headers, url, mirror, repo, digest).await?
        {
            return Ok((r, "pass", Outcome::Refused));
        }
        let (r, label) = self
            .serve_found(&Method::GET, headers, url, lookup, label, fits)
            .await?;
        let outcome = outcome_of(&r, label);
        Ok((r, label, outcome))
    }

    /// The fill of blob `digest` named by `url`: keyed [`blob_key`] (one copy
    /// whatever repository or registry named it), checked against the digest, fetched
    /// with `fill_headers`; swarmed when the URL's rule is `p2p`, else cached.
    pub(super) fn blob_want(
        &self,
        headers: &HeaderMap,
        fill_headers: HeaderMap,
        url: &Uri,
        digest: Digest,
        mode: Mode,
    ) -> Want {
        let up = Upstream {
            key: blob_key(&digest),
            digest,
            headers: fill_headers,
        };
        let mode = if mode == Mode::P2p {
            Mode::P2p
        } else {
            Mode::Cache
        };
        self.registry_want(headers, url, mode, up)
    }

    /// A `HEAD` of `url` with the client's credentials and `Accept`: the registry's
    /// answer to "may this client have it?" (and "which digest does this tag name?"),
    /// counted as `registry_auth`.
    pub(super) async fn registry_head(
        &self,
        headers: &HeaderMap,
        url: &Uri,
    ) -> Result<Response<hyper::body::Incoming>, crate::origin::OriginError> {
        self.cache
            .origin()
            .send(
                Method::HEAD,
                url,
                client_headers(headers),
                "head",
                FetchReason::RegistryAuth,
            )
            .await
    }

    fn registry_want(&self, headers: &HeaderMap, url: &Uri, mode: Mode, up: Upstream) -> Want {
        Want {
            url: url.clone(),
            mode,
            min_size: 0,
            revalidate: false,
            user_agent: headers.get(header::USER_AGENT).cloned(),
            immutable: true,
            upstream: Some(Arc::new(up)),
        }
    }

    /// Forgets the cached version of `key` if the disk no longer holds all its
    /// chunks (evicted): a registry object cannot be repaired chunk by chunk without
    /// its client's request, so it is filled anew.
    async fn forget_incomplete(&self, key: &str) {
        if let Some(m) = self.cache.cached(key) {
            let store = self.cache.store();
            if !m.manifest.chunks.iter().all(|id| store.contains(id)) {
                tracing::debug!(%key, "registry object lost chunks; filling it anew");
                self.cache.invalidate(key).await;
            }
        }
    }
}

/// The sha256 digest a registry's answer names (`Docker-Content-Digest`).
fn head_digest(h: &HeaderMap) -> Option<Digest> {
    h.get("docker-content-digest")
        .and_then(|v| v.to_str().ok())
        .and_then(|d| Digest::parse(d.trim()).ok())
}

/// Where a response's bytes came from, for the metric.
fn outcome_of(r: &Response<ProxyBody>, label: &str) -> Outcome {
    if label == "pass" {
        return Outcome::Pass;
    }
    match r.headers().get(super::SOURCE_HEADER).map(|v| v.as_bytes()) {
        Some(b"cache") => Outcome::Cache,
        _ => Outcome::Fill,
    }
}

/// Adds `Accept` to the response's `Vary`.
fn vary_accept(h: &mut HeaderMap) {
    let has = h
        .get_all(header::VARY)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|f| f.trim().eq_ignore_ascii_case("accept"));
    if !has {
        h.append(header::VARY, HeaderValue::from_static("Accept"));
    }
}

/// The index and flight key of blob `digest`.
pub(super) fn blob_key(digest: &Digest) -> String {
    format!("oci:{digest}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auto_kind_reads_the_path() {
        let m = |kind| MirrorSettings {
            kind,
            tag_ttl: Duration::ZERO,
            auth_ttl: Duration::ZERO,
        };
        assert!(m(MirrorKind::Auto).is_registry("/v2/"));
        assert!(m(MirrorKind::Auto).is_registry("/v2"));
        assert!(m(MirrorKind::Auto).is_registry("/v2/a/blobs/x"));
        assert!(!m(MirrorKind::Auto).is_registry("/v2x/a"));
        assert!(!m(MirrorKind::Auto).is_registry("/debian/v2/"));
        assert!(m(MirrorKind::Registry).is_registry("/debian/"));
        assert!(!m(MirrorKind::Http).is_registry("/v2/"));
    }

    #[test]
    fn vary_and_errors() {
        let mut h = HeaderMap::new();
        vary_accept(&mut h);
        vary_accept(&mut h);
        assert_eq!(h.get_all(header::VARY).iter().count(), 1);
        let e = oci_error(StatusCode::BAD_REQUEST, "NAME_INVALID", "bad \"name\"");
        assert_eq!(e.status(), StatusCode::BAD_REQUEST);
        assert_eq!(e.headers()[header::CONTENT_TYPE], "application/json");
    }

    #[test]
    fn client_headers_keep_only_auth_accept_and_agent() {
        let mut h = HeaderMap::new();
        h.insert(header::AUTHORIZATION, HeaderValue::from_static("Bearer t"));
        h.append(header::ACCEPT, HeaderValue::from_static("a/b"));
        h.append(header::ACCEPT, HeaderValue::from_static("c/d"));
        h.insert(header::RANGE, HeaderValue::from_static("bytes=0-1"));
        h.insert(header::COOKIE, HeaderValue::from_static("x=1"));
        let out = client_headers(&h);
        assert_eq!(out.len(), 3);
        assert_eq!(out.get_all(header::ACCEPT).iter().count(), 2);
        assert!(!out.contains_key(header::RANGE));
    }
}
