//! Which clients may be served cached registry bytes: the registry's acceptance of
//! one credential for one object (digest) in one repository, remembered for
//! `mirrors.auth_ttl`, and tag resolutions remembered for `mirrors.tag_ttl`, in
//! bounded in-memory caches.
//!
//! A credential is remembered only as the sha256 of its `Authorization` value (or
//! `anonymous`): never in clear, never on disk, never logged, never sent to peers or
//! the tracker. Grants are per registry (scheme, host, port of the upstream URL) and
//! repository, because registries authorise per repository (`repository:NAME:pull`),
//! and per digest, because a registry serves a blob only in repositories that hold
//! it: a client allowed to pull one repository does not get another repository's
//! private layer from the cache by naming its digest.
//!
//! Cannot: notice a credential revoked at the registry before its grant expires (at
//! most `auth_ttl`); a restarted agent asks again.

use std::time::{Duration, Instant};

use http::Uri;
use http::header::{self, HeaderMap};
use sha2::{Digest as _, Sha256};
use shoal_proto::oci::{Digest, RepoName, Tag};

/// Most grants and tag resolutions kept; the oldest go first beyond.
const CAPACITY: u64 = 16_384;

/// Who asked, for what: (credential digest, registry, repository, object digest).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct GrantKey {
    credential: String,
    registry: String,
    repo: String,
    object: Digest,
}

impl GrantKey {
    /// The key of a request with headers `h` for object `object` of `repo` at the
    /// registry of `url`.
    pub fn new(h: &HeaderMap, url: &Uri, repo: &RepoName, object: &Digest) -> Self {
        let credential = match h.get(header::AUTHORIZATION) {
            Some(v) => hex::encode(Sha256::digest(v.as_bytes())),
            None => "anonymous".to_owned(),
        };
        Self {
            credential,
            registry: registry_of(url),
            repo: repo.as_str().to_owned(),
            object: *object,
        }
    }
}

/// `scheme://authority` of `url`.
fn registry_of(url: &Uri) -> String {
    format!(
        "{}://{}",
        url.scheme_str().unwrap_or(""),
        url.authority().map_or("", |a| a.as_str())
    )
}

/// What a tag named when it was last resolved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resolved {
    pub digest: Digest,
    pub content_type: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct TagKey {
    registry: String,
    repo: String,
    tag: String,
    /// The client's `Accept`: the registry's answer depends on it.
    accept: String,
}

/// See the module docs. Cheap to share (`moka` caches are internally synchronised).
#[derive(Debug)]
pub struct Grants {
    grants: moka::sync::Cache<GrantKey, Instant>,
    tags: moka::sync::Cache<TagKey, (Instant, Resolved)>,
}

impl Default for Grants {
    fn default() -> Self {
        Self::new()
    }
}

impl Grants {
    pub fn new() -> Self {
        Self {
            grants: moka::sync::Cache::new(CAPACITY),
            tags: moka::sync::Cache::new(CAPACITY),
        }
    }

    /// Whether `key` was granted less than `ttl` before `now`.
    pub fn granted(&self, key: &GrantKey, ttl: Duration, now: Instant) -> bool {
        !ttl.is_zero()
            && self
                .grants
                .get(key)
                .is_some_and(|at| now.saturating_duration_since(at) < ttl)
    }

    /// Records that the registry accepted `key` at `now`.
    pub fn grant(&self, key: GrantKey, now: Instant) {
        self.grants.insert(key, now);
    }

    /// The resolution of `tag` less than `ttl` old, if any.
    pub fn tag(
        &self,
        url: &Uri,
        repo: &RepoName,
        tag: &Tag,
        h: &HeaderMap,
        ttl: Duration,
        now: Instant,
    ) -> Option<Resolved> {
        if ttl.is_zero() {
            return None;
        }
        let (at, r) = self.tags.get(&tag_key(url, repo, tag, h))?;
        (now.saturating_duration_since(at) < ttl).then_some(r)
    }

    /// Records what `tag` resolved to at `now`.
    pub fn resolved(
        &self,
        url: &Uri,
        repo: &RepoName,
        tag: &Tag,
        h: &HeaderMap,
        r: Resolved,
        now: Instant,
    ) {
        self.tags.insert(tag_key(url, repo, tag, h), (now, r));
    }
}

fn tag_key(url: &Uri, repo: &RepoName, tag: &Tag, h: &HeaderMap) -> TagKey {
    let accept: Vec<&str> = h
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .collect();
    TagKey {
        registry: registry_of(url),
        repo: repo.as_str().to_owned(),
        tag: tag.as_str().to_owned(),
        accept: accept.join(","),
    }
}

#[cfg(test)]
mod tests {
    use http::HeaderValue;

    use super::*;

    #[test]
    fn grants_are_per_credential_registry_and_repo() {
        let g = Grants::new();
        let url: Uri = "https://r.example/v2/a/blobs/x".parse().unwrap();
        let other: Uri = "https://s.example/v2/a/blobs/x".parse().unwrap();
        let a = RepoName::parse("team/a").unwrap();
        let b = RepoName::parse("team/b").unwrap();
        let mut alice = HeaderMap::new();
        alice.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("Basic YWxpY2U6cA=="),
        );
        let mut bob = HeaderMap::new();
        bob.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("Basic Ym9iOnA="),
        );
        let anon = HeaderMap::new();
        let x = Digest::from_sha256([1; 32]);
        let y = Digest::from_sha256([2; 32]);
        let t0 = Instant::now();
        let ttl = Duration::from_secs(60);
        g.grant(GrantKey::new(&alice, &url, &a, &x), t0);
        assert!(g.granted(&GrantKey::new(&alice, &url, &a, &x), ttl, t0));
        assert!(!g.granted(&GrantKey::new(&bob, &url, &a, &x), ttl, t0));
        assert!(!g.granted(&GrantKey::new(&anon, &url, &a, &x), ttl, t0));
        assert!(!g.granted(&GrantKey::new(&alice, &url, &b, &x), ttl, t0));
        assert!(!g.granted(&GrantKey::new(&alice, &other, &a, &x), ttl, t0));
        // Another object of the same repository is asked about on its own.
        assert!(!g.granted(&GrantKey::new(&alice, &url, &a, &y), ttl, t0));
        // Expired, and a zero TTL never remembers.
        assert!(!g.granted(&GrantKey::new(&alice, &url, &a, &x), ttl, t0 + ttl));
        assert!(!g.granted(&GrantKey::new(&alice, &url, &a, &x), Duration::ZERO, t0));
        // The credential is kept as a digest only.
        let k = GrantKey::new(&alice, &url, &a, &x);
        assert_eq!(k.credential.len(), 64);
        assert!(!format!("{k:?}").contains("YWxpY2U"));
        assert_eq!(GrantKey::new(&anon, &url, &a, &x).credential, "anonymous");
    }

    #[test]
    fn tags_expire_and_depend_on_accept() {
        let g = Grants::new();
        let url: Uri = "https://r.example/v2/a/manifests/1".parse().unwrap();
        let repo = RepoName::parse("a").unwrap();
        let tag = Tag::parse("1").unwrap();
        let mut oci = HeaderMap::new();
        oci.insert(
            header::ACCEPT,
            HeaderValue::from_static("application/vnd.oci.image.manifest.v1+json"),
        );
        let r = Resolved {
            digest: Digest::from_sha256([7; 32]),
            content_type: Some("application/vnd.oci.image.manifest.v1+json".into()),
        };
        let t0 = Instant::now();
        let ttl = Duration::from_secs(5);
        g.resolved(&url, &repo, &tag, &oci, r.clone(), t0);
        assert_eq!(g.tag(&url, &repo, &tag, &oci, ttl, t0), Some(r));
        assert_eq!(g.tag(&url, &repo, &tag, &HeaderMap::new(), ttl, t0), None);
        assert_eq!(g.tag(&url, &repo, &tag, &oci, ttl, t0 + ttl), None);
        assert_eq!(g.tag(&url, &repo, &tag, &oci, Duration::ZERO, t0), None);
    }
}
