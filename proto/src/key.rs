//! Object keys: what names one version of one URL's bytes.
//!
//! A key is built from the normalised URL plus the origin's validators (strong ETag,
//! else Last-Modified) and the length ([`ObjectKey::versioned`]); for URLs that name
//! their own digest (OCI `blobs/sha256:…`, apt `by-hash`), from that digest alone
//! ([`ObjectKey::immutable`]); for URLs an operator's rule declares immutable (Debian
//! `pool/`), from the URL and the length ([`ObjectKey::immutable_url`]). The key is
//! opaque to the tracker: it only compares keys for equality.
//!
//! An immutable URL's key trusts the operator: if the bytes behind such a URL change
//! without changing length, old and new versions share one key. Wrong bytes are still
//! never served (every chunk is checked against its id, and the whole object against
//! a digest where one is known), but fills of that URL can fail. Use it only where
//! the origin never rewrites a URL.

use std::fmt;

use serde::{Deserialize, Serialize};

/// Longest key accepted, in bytes. Keys travel in tracker messages and wire frames.
pub const MAX_KEY_LEN: usize = 4096;

/// What the origin vouches identifies this version of the bytes.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Validator {
    /// A strong entity tag, quotes included (`"abc"`). Weak tags (`W/"…"`) are not validators here.
    ETag(String),
    /// An HTTP-date from `Last-Modified`.
    LastModified(String),
}

/// A key that is empty, too long or holds control characters.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid object key: {0}")]
pub struct InvalidKey(&'static str);

/// Names one object version. See the module docs.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct ObjectKey(String);

impl Validator {
    /// The validator for an origin response: a strong ETag if there is one, else
    /// Last-Modified. `None` if neither (such a response is not shared through the swarm).
    pub fn from_headers(etag: Option<&str>, last_modified: Option<&str>) -> Option<Self> {
        match etag {
            Some(t) if is_strong_etag(t) => Some(Self::ETag(t.to_owned())),
            _ => last_modified.map(|lm| Self::LastModified(lm.to_owned())),
        }
    }
}

/// Whether `tag` is a strong entity tag (`"…"`, not `W/"…"`).
pub fn is_strong_etag(tag: &str) -> bool {
    tag.len() >= 2 && tag.starts_with('"') && tag.ends_with('"')
}

impl ObjectKey {
    /// The key of the bytes of `url` as identified by `validator` and `size`.
    /// `url` should already be normalised (scheme and host lower-case, no fragment).
    pub fn versioned(url: &str, validator: &Validator, size: u64) -> Result<Self, InvalidKey> {
        let v = match validator {
            Validator::ETag(t) => format!("etag:{t}"),
            Validator::LastModified(d) => format!("lm:{d}"),
        };
        Self::try_from(format!("v1 {url} {v} {size}"))
    }

    /// The key of an immutable object named by its own digest (e.g. `sha256:…`).
    pub fn immutable(digest: &str, size: u64) -> Result<Self, InvalidKey> {
        Self::try_from(format!("d1 {digest} {size}"))
    }

    /// The key of an object whose URL never changes its bytes (an operator's
    /// `immutable` rule): the URL and the length, whatever validators the origin sends
    /// (mirrors behind one name often send different ETags for the same file).
    pub fn immutable_url(url: &str, size: u64) -> Result<Self, InvalidKey> {
        Self::try_from(format!("u1 {url} {size}"))
    }

    /// Whether this key names bytes that never change: a digest or an immutable URL.
    /// Such a version is never revalidated.
    pub fn is_immutable(&self) -> bool {
        self.0.starts_with("d1 ") || self.0.starts_with("u1 ")
    }

    /// The canonical string form.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for ObjectKey {
    type Error = InvalidKey;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        if s.is_empty() {
            return Err(InvalidKey("empty"));
        }
        if s.len() > MAX_KEY_LEN {
            return Err(InvalidKey("longer than 4096 bytes"));
        }
        if s.chars().any(char::is_control) {
            return Err(InvalidKey("control character"));
        }
        Ok(Self(s))
    }
}

impl From<ObjectKey> for String {
    fn from(k: ObjectKey) -> Self {
        k.0
    }
}

impl fmt::Display for ObjectKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for ObjectKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ObjectKey({:?})", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validator_prefers_strong_etag() {
        let v = Validator::from_headers(Some("\"a\""), Some("Mon, 01 Jan 2024 00:00:00 GMT"));
        assert_eq!(v, Some(Validator::ETag("\"a\"".into())));
        let v = Validator::from_headers(Some("W/\"a\""), Some("lm"));
        assert_eq!(v, Some(Validator::LastModified("lm".into())));
        assert_eq!(Validator::from_headers(Some("W/\"a\""), None), None);
    }

    #[test]
    fn keys_differ_by_version_and_size() {
        let a = ObjectKey::versioned("http://h/x", &Validator::ETag("\"1\"".into()), 10).unwrap();
        let b = ObjectKey::versioned("http://h/x", &Validator::ETag("\"2\"".into()), 10).unwrap();
        let c = ObjectKey::versioned("http://h/x", &Validator::ETag("\"1\"".into()), 11).unwrap();
        assert_ne!(a, b);
        assert_ne!(a, c);
        assert!(!a.is_immutable());
        assert!(ObjectKey::try_from("a\nb".to_string()).is_err());
        assert!(ObjectKey::try_from("x".repeat(5000)).is_err());
    }

    #[test]
    fn immutable_url_keys() {
        let a = ObjectKey::immutable_url("http://h/pool/f.deb", 10).unwrap();
        let b = ObjectKey::immutable_url("http://h/pool/f.deb", 11).unwrap();
        let c = ObjectKey::immutable_url("http://h/pool/g.deb", 10).unwrap();
        assert_eq!(
            a,
            ObjectKey::immutable_url("http://h/pool/f.deb", 10).unwrap()
        );
        assert_ne!(a, b);
        assert_ne!(a, c);
        assert_eq!(a.as_str(), "u1 http://h/pool/f.deb 10");
        assert!(a.is_immutable());
        // Never equal to a versioned or digest key of the same URL.
        let v = ObjectKey::versioned("http://h/pool/f.deb", &Validator::ETag("\"1\"".into()), 10)
            .unwrap();
        assert_ne!(a, v);
        assert!(
            ObjectKey::immutable("sha256:ab", 10)
                .unwrap()
                .is_immutable()
        );
        assert!(ObjectKey::immutable_url(&"x".repeat(5000), 1).is_err());
        assert!(ObjectKey::immutable_url("http://h/a\nb", 1).is_err());
    }
}
