//! What the agent remembers about one cached URL: its manifest and the representation
//! headers to replay, persisted as JSON beside the chunks so a restart keeps the cache.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http::HeaderMap;
use http::header::{self, HeaderName, HeaderValue};
use serde::{Deserialize, Serialize};
use shoal_proto::{Manifest, Sha256Digest};

use super::cache_control::Directives;

/// Origin response headers that describe the bytes and are replayed on hits.
const REPLAYED: [&str; 6] = [
    "content-type",
    "content-encoding",
    "content-disposition",
    "cache-control",
    "docker-content-digest",
    "repr-digest",
];

/// Validators and replayed headers of one object version.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Repr {
    pub etag: Option<String>,
    pub last_modified: Option<String>,
    /// `(name, value)` of the [`REPLAYED`] headers the origin sent.
    pub headers: Vec<(String, String)>,
}

/// One cached URL.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ObjectMeta {
    /// The absolute origin URL.
    pub url: String,
    pub manifest: Manifest,
    pub repr: Repr,
    /// Unix milliseconds when the origin last confirmed this version.
    pub validated_at_ms: u64,
    /// Digest-named URL: never revalidated.
    pub immutable: bool,
}

impl Repr {
    /// Takes validators and replayed headers from an origin response.
    pub fn from_headers(h: &HeaderMap) -> Self {
        let s = |n: HeaderName| h.get(n).and_then(|v| v.to_str().ok()).map(str::to_owned);
        let headers = REPLAYED
            .iter()
            .filter_map(|n| {
                h.get(*n)
                    .and_then(|v| v.to_str().ok())
                    .map(|v| ((*n).to_owned(), v.to_owned()))
            })
            .collect();
        Self {
            etag: s(header::ETAG),
            last_modified: s(header::LAST_MODIFIED),
            headers,
        }
    }

    /// Takes the `Cache-Control` of a response that revalidated this version (a
    /// `304`, or the swarm's `HEAD`), when it has one (RFC 9111 §4.3.4: the stored
    /// headers are updated from the validating response).
    pub fn refresh(&mut self, h: &HeaderMap) {
        let fresh: Vec<_> = h
            .get_all(header::CACHE_CONTROL)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .collect();
        if fresh.is_empty() {
            return;
        }
        self.headers
            .retain(|(n, _)| !n.eq_ignore_ascii_case("cache-control"));
        self.headers
            .push(("cache-control".to_owned(), fresh.join(", ")));
    }

    /// Writes validators and replayed headers into `h`.
    pub fn apply(&self, h: &mut HeaderMap) {
        for (n, v) in &self.headers {
            if let (Ok(n), Ok(v)) = (
                HeaderName::from_bytes(n.as_bytes()),
                HeaderValue::from_str(v),
            ) {
                h.insert(n, v);
            }
        }
        if let Some(Ok(v)) = self.etag.as_deref().map(HeaderValue::from_str) {
            h.insert(header::ETAG, v);
        }
        if let Some(Ok(v)) = self.last_modified.as_deref().map(HeaderValue::from_str) {
            h.insert(header::LAST_MODIFIED, v);
        }
    }
}

impl ObjectMeta {
    /// The file name under which the metadata of `url` is stored.
    pub fn name_for(url: &str) -> String {
        blake3::hash(url.as_bytes()).to_hex().to_string()
    }

    /// Whether this version's bytes never change (a digest-named URL, or a URL under
    /// an `immutable` rule when it was filled): never revalidated.
    pub fn is_immutable(&self) -> bool {
        self.immutable || self.manifest.key.is_immutable()
    }

    /// How long after validation this version may be served without asking the
    /// origin: the lifetime its `Cache-Control` gives (`no-cache`: zero, else
    /// `s-maxage`, else `max-age`), or `freshness` (`cache.freshness`) when it gives
    /// none.
    pub fn lifetime(&self, freshness: Duration) -> Duration {
        Directives::parse(&self.repr.headers)
            .lifetime()
            .unwrap_or(freshness)
    }

    /// Whether this version may be served without asking the origin: immutable, or
    /// validated less than [`lifetime`](Self::lifetime) ago.
    pub fn is_fresh(&self, now: SystemTime, freshness: Duration) -> bool {
        if self.is_immutable() {
            return true;
        }
        let life = self.lifetime(freshness).as_millis();
        u128::from(unix_ms(now).saturating_sub(self.validated_at_ms)) < life
    }
}

/// Milliseconds since the Unix epoch (0 before it).
pub fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// The whole-object digest named by a URL path, if any: OCI `…/blobs/sha256:<hex>`
/// or apt `…/by-hash/SHA256/<hex>` (hex in either case).
pub fn digest_in_path(path: &str) -> Option<Sha256Digest> {
    let hexok = |h: &str| h.len() == 64 && h.bytes().all(|b| b.is_ascii_hexdigit());
    if let Some(i) = path.find("/blobs/sha256:") {
        let h = &path[i + "/blobs/sha256:".len()..];
        let h = h.split(['/', '?']).next().unwrap_or("");
        if hexok(h) {
            return Sha256Digest::from_hex(&h.to_ascii_lowercase()).ok();
        }
    }
    if let Some(i) = path.find("/by-hash/SHA256/") {
        let h = &path[i + "/by-hash/SHA256/".len()..];
        let h = h.split(['/', '?']).next().unwrap_or("");
        if hexok(h) {
            return Sha256Digest::from_hex(&h.to_ascii_lowercase()).ok();
        }
    }
    None
}

/// The `sha-256` of an RFC 9530 `Repr-Digest` field (`sha-256=:<base64>:`, other
/// algorithms and members ignored). We ask origins for the identity encoding, so the
/// representation digest is the digest of the body.
pub fn repr_digest(h: &HeaderMap) -> Option<Sha256Digest> {
    use base64::Engine as _;
    h.get_all("repr-digest")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|m| m.split_once('='))
        .filter(|(k, _)| k.trim().eq_ignore_ascii_case("sha-256"))
        .find_map(|(_, v)| {
            let b64 = v.trim().strip_prefix(':')?.strip_suffix(':')?;
            let raw = base64::engine::general_purpose::STANDARD.decode(b64).ok()?;
            let raw: [u8; 32] = raw.try_into().ok()?;
            Some(Sha256Digest::from_sha256(raw))
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digest_urls() {
        let h = "a".repeat(64);
        assert_eq!(
            digest_in_path(&format!("/v2/lib/x/blobs/sha256:{h}")).map(|d| d.to_string()),
            Some(format!("sha256:{h}"))
        );
        assert_eq!(
            digest_in_path(&format!(
                "/debian/dists/by-hash/SHA256/{}",
                h.to_uppercase()
            ))
            .map(|d| d.to_string()),
            Some(format!("sha256:{h}"))
        );
        assert_eq!(digest_in_path("/v2/lib/x/blobs/sha256:abc"), None);
        assert_eq!(digest_in_path("/pool/x.deb"), None);
    }

    #[test]
    fn repr_round_trip() {
        let mut h = HeaderMap::new();
        h.insert(header::ETAG, "\"e\"".parse().unwrap());
        h.insert(header::CONTENT_TYPE, "text/plain".parse().unwrap());
        h.insert(header::SET_COOKIE, "a=b".parse().unwrap());
        let r = Repr::from_headers(&h);
        let mut out = HeaderMap::new();
        r.apply(&mut out);
        assert_eq!(out.get(header::ETAG).unwrap(), "\"e\"");
        assert_eq!(out.get(header::CONTENT_TYPE).unwrap(), "text/plain");
        assert!(out.get(header::SET_COOKIE).is_none());
    }

    #[test]
    fn repr_digests() {
        let mut h = HeaderMap::new();
        assert_eq!(repr_digest(&h), None);
        // sha256 of "hello": 2cf24dba…
        h.insert(
            "repr-digest",
            "sha-512=:AAAA:, sha-256=:LPJNul+wow4m6DsqxbninhsWHlwfp0JecwQzYpOLmCQ=:"
                .parse()
                .unwrap(),
        );
        assert_eq!(
            repr_digest(&h).map(|d| d.to_string()).as_deref(),
            Some("sha256:2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824")
        );
        h.insert("repr-digest", "sha-256=:dG9vc2hvcnQ=:".parse().unwrap());
        assert_eq!(repr_digest(&h), None, "not 32 bytes");
        h.insert(
            "repr-digest",
            "sha-256=LPJNul+wow4m6DsqxbninhsWHlwfp0JecwQzYpOLmCQ="
                .parse()
                .unwrap(),
        );
        assert_eq!(repr_digest(&h), None, "not a byte sequence");
    }
}
