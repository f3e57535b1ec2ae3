//! Object keys: what names one version of one URL's bytes.
//!
//! A key is built from the normalised URL plus the origin's validators (strong ETag,
//! else Last-Modified) and the length, or, for URLs that name their own digest (OCI
//! `blobs/sha256:…`, apt `by-hash`), from that digest alone. The key is opaque to the
//! tracker: it only compares keys for equality.

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
        assert!(ObjectKey::try_from("a\nb".to_string()).is_err());
        assert!(ObjectKey::try_from("x".repeat(5000)).is_err());
    }
}
