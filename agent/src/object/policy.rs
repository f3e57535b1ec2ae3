//! Caching policy, pure: which origin responses may be cached and under which version
//! key ([`cacheable`], [`version_key`]), and which headers the agent's own origin
//! requests carry ([`origin_headers`]). No I/O and no state: what a response's status
//! and headers say, and nothing else.

use http::header::{self, HeaderMap, HeaderValue};
use http::{StatusCode, Uri};
use shoal_proto::{Layout, ObjectKey, Sha256Digest, Validator};

use super::{Want, meta};

/// Layout (in `chunk_size` chunks), key and URL digest of a cacheable response with
/// `status` and headers `h`; `None` to pass it through.
pub(super) fn cacheable(
    want: &Want,
    status: StatusCode,
    h: &HeaderMap,
    chunk_size: u32,
) -> Option<(Layout, ObjectKey, Option<Sha256Digest>)> {
    if status != StatusCode::OK {
        return None;
    }
    let cc = h
        .get_all(header::CACHE_CONTROL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .collect::<Vec<_>>()
        .join(",");
    let cc = cc.to_ascii_lowercase();
    if cc
        .split(',')
        .any(|d| matches!(d.trim(), "no-store" | "private"))
    {
        return None;
    }
    // A representation that varies by request headers other than the encoding
    // (which we pin to identity) cannot be shared under its URL alone; a
    // registry object is keyed and checked by its digest, whatever it varies by.
    let varies = want.upstream.is_none()
        && h.get_all(header::VARY)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|f| !f.trim().eq_ignore_ascii_case("accept-encoding") && !f.trim().is_empty());
    if varies || h.contains_key(header::SET_COOKIE) || h.contains_key(header::CONTENT_RANGE) {
        return None;
    }
    if h.get(header::CONTENT_ENCODING)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|e| e != "identity")
    {
        // We asked for identity; a server that compresses anyway is not cached.
        return None;
    }
    let size: u64 = h
        .get(header::CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()?;
    if size < want.min_size {
        return None;
    }
    let layout = Layout::new(size, chunk_size).ok()?;
    let (key, digest) = match &want.upstream {
        Some(u) => (
            ObjectKey::immutable(&u.digest.to_string(), size).ok()?,
            Some(u.digest),
        ),
        None => version_key(&want.url, want.immutable, h, size)?,
    };
    Some((layout, key, digest))
}

/// The key of the version a `200` with headers `h` and length `size` is of `url`,
/// and the whole-object digest its bytes must have, if known:
///
/// - a digest-named URL: keyed by that digest, which is checked;
/// - a URL under an `immutable` rule: keyed by URL and length whatever the
///   validators (see [`ObjectKey::immutable_url`]), checked against the origin's
///   `Repr-Digest: sha-256` if it sends one;
/// - else by URL, validator and length; no validator: `None`, not cached.
pub(super) fn version_key(
    url: &Uri,
    immutable: bool,
    h: &HeaderMap,
    size: u64,
) -> Option<(ObjectKey, Option<Sha256Digest>)> {
    if let Some(d) = meta::digest_in_path(url.path()) {
        return Some((ObjectKey::immutable(&d.to_string(), size).ok()?, Some(d)));
    }
    let url = url.to_string();
    if immutable {
        return Some((
            ObjectKey::immutable_url(&url, size).ok()?,
            meta::repr_digest(h),
        ));
    }
    let etag = h.get(header::ETAG).and_then(|v| v.to_str().ok());
    let lm = h.get(header::LAST_MODIFIED).and_then(|v| v.to_str().ok());
    let v = Validator::from_headers(etag, lm)?;
    Some((ObjectKey::versioned(&url, &v, size).ok()?, None))
}

/// The headers of the agent's own origin requests: no client headers but the
/// leader's `User-Agent`, identity encoding (see the module docs).
pub(super) fn origin_headers(want: &Want) -> HeaderMap {
    let mut h = want
        .upstream
        .as_ref()
        .map(|u| u.headers.clone())
        .unwrap_or_default();
    if let Some(ua) = &want.user_agent {
        h.insert(header::USER_AGENT, ua.clone());
    }
    h.insert(
        header::ACCEPT_ENCODING,
        HeaderValue::from_static("identity"),
    );
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, v.parse().unwrap());
        }
        h
    }

    #[test]
    fn version_keys() {
        let hex = "ab".repeat(32);
        let by_hash: Uri = format!("http://h/debian/dists/x/by-hash/SHA256/{hex}")
            .parse()
            .unwrap();
        let pool: Uri = "http://h/debian/pool/main/f/foo.deb".parse().unwrap();
        let none = headers(&[]);
        let etag = headers(&[("etag", "\"e1\"")]);
        let digest = Some(Sha256Digest::from_hex(&hex).unwrap());

        // A digest in the URL: keyed and checked by it, validators or not.
        let (k, d) = version_key(&by_hash, false, &none, 10).unwrap();
        assert_eq!(
            k,
            ObjectKey::immutable(&format!("sha256:{hex}"), 10).unwrap()
        );
        assert_eq!(d, digest);
        assert_eq!(version_key(&by_hash, true, &etag, 10).unwrap().0, k);

        // No validator, no rule: not cached.
        assert!(version_key(&pool, false, &none, 10).is_none());
        // An immutable rule: URL and length, whatever the validators.
        let (k, d) = version_key(&pool, true, &none, 10).unwrap();
        assert_eq!(k, ObjectKey::immutable_url(&pool.to_string(), 10).unwrap());
        assert_eq!(d, None);
        assert_eq!(version_key(&pool, true, &etag, 10).unwrap().0, k);
        assert!(k.is_immutable());
        // ...checked against the origin's Repr-Digest when it sends one.
        let rd = headers(&[(
            "repr-digest",
            "sha-256=:q6urq6urq6urq6urq6urq6urq6urq6urq6urq6urq6s=:",
        )]);
        assert_eq!(version_key(&pool, true, &rd, 10).unwrap().1, digest);
        // Without the rule: the validator's key, never immutable.
        let (k, d) = version_key(&pool, false, &etag, 10).unwrap();
        assert!(!k.is_immutable());
        assert_eq!(d, None);
    }
}
