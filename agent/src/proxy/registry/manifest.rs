//! Registry manifests: by digest (cached under `oci-manifest:sha256:…` with their
//! `Content-Type`, verified, served only to a client whose `Accept` allows the cached
//! type) and by tag (resolved with the registry, reused for `tag_ttl`, then served as
//! the digest). See the parent module for the auth rules both follow.
//!
//! Cannot: serve a tag the registry names without a sha256 `Docker-Content-Digest`
//! from the cache (relayed instead), or convert between manifest formats.

use std::time::Instant;

use http::header::{self, HeaderMap, HeaderValue};
use http::{Method, Response, Uri};
use shoal_proto::oci::{Digest, RepoName, Tag};

use super::grants::{GrantKey, Resolved};
use super::{MirrorSettings, Outcome, accept, client_headers, head_digest, vary_accept};
use crate::config::Mode;
use crate::object::read::ProxyBody;
use crate::object::{Repr, Upstream};
use crate::proxy::{Proxy, RouteError};

impl Proxy {
    /// Serves manifest `digest` (at `url`, a by-digest URL) from the cache or a fill,
    /// to a client already accepted. `content_type`: the type the registry named for
    /// this client (a tag's resolution); else the cached copy must be one the
    /// client's `Accept` allows. Either way a misfit is relayed from the registry.
    pub(super) async fn registry_manifest(
        &self,
        headers: &HeaderMap,
        url: &Uri,
        mirror: &MirrorSettings,
        repo: &RepoName,
        digest: Digest,
        content_type: Option<String>,
    ) -> Result<(Response<ProxyBody>, &'static str, Outcome), RouteError> {
        let up = Upstream {
            key: format!("oci-manifest:{digest}"),
            digest,
            headers: client_headers(headers),
        };
        self.forget_incomplete(&up.key).await;
        let want = self.registry_want(headers, url, Mode::Cache, up);
        let fits = |r: &Repr| {
            let ct = repr_header(r, "content-type");
            match &content_type {
                Some(want) => ct.is_some_and(|c| c.eq_ignore_ascii_case(want)),
                None => accept::acceptable(headers, ct),
            }
        };
        let (mut r, label, outcome) = self
            .serve_checked(headers, mirror, repo, &digest, &want, "cache", Some(&fits))
            .await?;
        vary_accept(r.headers_mut());
        if r.status().is_success()
            && let Ok(v) = HeaderValue::from_str(&digest.to_string())
        {
            r.headers_mut().insert("docker-content-digest", v);
        }
        Ok((r, label, outcome))
    }

    /// A by-tag manifest: resolved with the registry (a `HEAD` with the client's
    /// headers, which is also its credential check) unless `tag_ttl` and `auth_ttl`
    /// both still cover it, then served as its digest.
    pub(super) async fn registry_tag(
        &self,
        headers: &HeaderMap,
        url: &Uri,
        mirror: &MirrorSettings,
        repo: &RepoName,
        tag: &Tag,
    ) -> Result<(Response<ProxyBody>, &'static str, Outcome), RouteError> {
        let now = Instant::now();
        let known = self
            .grants
            .tag(url, repo, tag, headers, mirror.tag_ttl, now)
            .filter(|r| {
                let key = GrantKey::new(headers, url, repo, &r.digest);
                self.grants.granted(&key, mirror.auth_ttl, now)
            });
        let resolved = match known {
            Some(r) => {
                self.metrics
                    .registry_auth_checks
                    .with_label_values(&["remembered"])
                    .inc();
                r
            }
            None => {
                let head = match self.check_fresh(headers, url).await? {
                    Ok(h) => h,
                    Err(refused) => return Ok((refused, "pass", Outcome::Refused)),
                };
                let Some(digest) = head_digest(&head) else {
                    // No digest to key it by: the registry's answer, uncached.
                    tracing::debug!(repo = %repo, %tag, "registry named no sha256 digest for the tag; relaying");
                    return self.registry_pass(&Method::GET, headers, url, true).await;
                };
                let content_type = head
                    .get(header::CONTENT_TYPE)
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_owned);
                if !mirror.auth_ttl.is_zero() {
                    let key = GrantKey::new(headers, url, repo, &digest);
                    self.grants.grant(key, Instant::now());
                }
                let r = Resolved {
                    digest,
                    content_type,
                };
                if !mirror.tag_ttl.is_zero() {
                    self.grants
                        .resolved(url, repo, tag, headers, r.clone(), Instant::now());
                }
                r
            }
        };
        let Some(by_digest) = with_reference(url, &resolved.digest.to_string()) else {
            return self.registry_pass(&Method::GET, headers, url, true).await;
        };
        self.registry_manifest(
            headers,
            &by_digest,
            mirror,
            repo,
            resolved.digest,
            resolved.content_type,
        )
        .await
    }

    /// A `HEAD` of `url` with the client's headers, whatever grant exists: its head.
    /// `Err`: the registry refused, with its answer to the client's GET.
    async fn check_fresh(
        &self,
        headers: &HeaderMap,
        url: &Uri,
    ) -> Result<Result<HeaderMap, Response<ProxyBody>>, RouteError> {
        let resp = self.registry_head(headers, url).await?;
        let checks = &self.metrics.registry_auth_checks;
        if resp.status().is_success() {
            checks.with_label_values(&["granted"]).inc();
            return Ok(Ok(resp.headers().clone()));
        }
        checks.with_label_values(&["refused"]).inc();
        let mut r = self.refusal(headers, url).await?;
        vary_accept(r.headers_mut());
        Ok(Err(r))
    }
}

/// A replayed header of a cached version.
fn repr_header<'a>(r: &'a Repr, name: &str) -> Option<&'a str> {
    r.headers
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

/// `url` with its last path segment (the manifest reference) replaced by
/// `reference`, query kept.
fn with_reference(url: &Uri, reference: &str) -> Option<Uri> {
    let (dir, _) = url.path().rsplit_once('/')?;
    let q = url.query().map(|q| format!("?{q}")).unwrap_or_default();
    format!(
        "{}://{}{dir}/{reference}{q}",
        url.scheme_str()?,
        url.authority()?.as_str()
    )
    .parse()
    .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references() {
        let u: Uri = "https://r.example/v2/a/b/manifests/latest?ns=docker.io"
            .parse()
            .unwrap();
        assert_eq!(
            with_reference(&u, "sha256:00").unwrap().to_string(),
            "https://r.example/v2/a/b/manifests/sha256:00?ns=docker.io"
        );
    }
}
