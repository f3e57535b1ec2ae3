//! OCI Distribution Spec v1.1 request paths, without I/O: which registry endpoint a
//! `/v2/...` path names, with the repository name, tag and digest checked against the
//! spec's grammar, so the agent never builds a cache key or an upstream URL from a
//! path the spec does not allow.
//!
//! Read endpoints only: `/v2/` (the API ping), `/v2/<name>/manifests/<reference>`,
//! `/v2/<name>/blobs/<digest>`, `/v2/<name>/tags/list` and
//! `/v2/<name>/referrers/<digest>`. `<name>` is one or more `/`-separated components
//! matching `[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*`, at most [`MAX_NAME`] bytes; a
//! reference is a tag (`[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}`) or a digest.
//!
//! Cannot: accept digests other than `sha256:<64 lower-case hex>` (the spec also
//! registers `sha512`; no registry the agent serves uses it, and the agent verifies
//! only sha256), or the write endpoints (uploads, deletes): the agent only reads.
//! The path must already be in canonical form (the proxy's `target` module): a `%`
//! left in it is refused, not decoded.

use std::fmt;

/// Longest repository name accepted, bytes. The spec lets clients cap
/// `host/name` at 255 characters; the name alone at 255 is the generous reading.
pub const MAX_NAME: usize = 255;

/// A repository name (`library/debian`), checked against the spec's grammar.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct RepoName(String);

/// A tag, `[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Tag(String);

/// A `sha256:<64 lower-case hex>` digest (the shared [`Sha256Digest`]).
pub use crate::digest::Sha256Digest as Digest;

/// What a manifest request names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reference {
    Tag(Tag),
    Digest(Digest),
}

/// The endpoint a registry request path names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RegistryPath {
    /// `/v2/`: the API version check, which also carries the auth challenge.
    Ping,
    /// `/v2/<name>/manifests/<reference>`.
    Manifest {
        name: RepoName,
        reference: Reference,
    },
    /// `/v2/<name>/blobs/<digest>`.
    Blob { name: RepoName, digest: Digest },
    /// `/v2/<name>/tags/list`.
    Tags { name: RepoName },
    /// `/v2/<name>/referrers/<digest>`.
    Referrers { name: RepoName, digest: Digest },
}

/// Why a path is not a registry read endpoint; each maps to an OCI error code.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OciPathError {
    #[error("not a registry API path: it must start with /v2/")]
    NotV2,
    #[error("not a registry read endpoint (manifests, blobs, tags/list, referrers)")]
    Endpoint,
    #[error("invalid repository name: {0}")]
    Name(&'static str),
    #[error("invalid tag: it must match [A-Za-z0-9_][A-Za-z0-9_.-]{{0,127}}")]
    Tag,
    #[error("invalid digest: only sha256:<64 lower-case hex> is supported")]
    Digest,
}

impl OciPathError {
    /// The OCI error code for the error body (spec, "Error Codes").
    pub fn code(&self) -> &'static str {
        match self {
            OciPathError::NotV2 | OciPathError::Endpoint => "UNSUPPORTED",
            OciPathError::Name(_) => "NAME_INVALID",
            OciPathError::Tag => "MANIFEST_INVALID",
            OciPathError::Digest => "DIGEST_INVALID",
        }
    }
}

impl RepoName {
    /// `s` if it is a valid repository name.
    pub fn parse(s: &str) -> Result<Self, OciPathError> {
        if s.is_empty() {
            return Err(OciPathError::Name("empty"));
        }
        if s.len() > MAX_NAME {
            return Err(OciPathError::Name("longer than 255 bytes"));
        }
        if !s.split('/').all(component_ok) {
            return Err(OciPathError::Name(
                "each component must match [a-z0-9]+((\\.|_|__|-+)[a-z0-9]+)*",
            ));
        }
        Ok(Self(s.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl Tag {
    /// `s` if it is a valid tag.
    pub fn parse(s: &str) -> Result<Self, OciPathError> {
        let b = s.as_bytes();
        let word = |c: u8| c.is_ascii_alphanumeric() || c == b'_';
        match b.split_first() {
            Some((&first, rest))
                if word(first)
                    && rest.len() <= 127
                    && rest.iter().all(|&c| word(c) || c == b'.' || c == b'-') =>
            {
                Ok(Self(s.to_owned()))
            }
            _ => Err(OciPathError::Tag),
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for RepoName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Display for Tag {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Display for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Reference::Tag(t) => t.fmt(f),
            Reference::Digest(d) => d.fmt(f),
        }
    }
}

impl Reference {
    /// A digest if `s` has a `:` (tags cannot), else a tag.
    pub fn parse(s: &str) -> Result<Self, OciPathError> {
        if s.contains(':') {
            Digest::parse(s)
                .map(Reference::Digest)
                .map_err(|_| OciPathError::Digest)
        } else {
            Tag::parse(s).map(Reference::Tag)
        }
    }
}

impl RegistryPath {
    /// The endpoint `path` (no query) names. `/v2` and `/v2/` are the ping.
    pub fn parse(path: &str) -> Result<Self, OciPathError> {
        let rest = match path.strip_prefix("/v2") {
            Some("" | "/") => return Ok(RegistryPath::Ping),
            Some(r) => r.strip_prefix('/').ok_or(OciPathError::NotV2)?,
            None => return Err(OciPathError::NotV2),
        };
        // The name may hold `/` and even a component spelled `manifests`: the
        // endpoint is read from the end, where names cannot reach.
        let (head, last) = rest.rsplit_once('/').ok_or(OciPathError::Endpoint)?;
        let (name, kind) = head.rsplit_once('/').ok_or(OciPathError::Endpoint)?;
        match (kind, last) {
            ("tags", "list") => Ok(RegistryPath::Tags {
                name: RepoName::parse(name)?,
            }),
            ("manifests", r) => Ok(RegistryPath::Manifest {
                name: RepoName::parse(name)?,
                reference: Reference::parse(r)?,
            }),
            ("blobs", d) => Ok(RegistryPath::Blob {
                name: RepoName::parse(name)?,
                digest: Digest::parse(d).map_err(|_| OciPathError::Digest)?,
            }),
            ("referrers", d) => Ok(RegistryPath::Referrers {
                name: RepoName::parse(name)?,
                digest: Digest::parse(d).map_err(|_| OciPathError::Digest)?,
            }),
            _ => Err(OciPathError::Endpoint),
        }
    }

    /// The repository the path is in; `None` for the ping.
    pub fn name(&self) -> Option<&RepoName> {
        match self {
            RegistryPath::Ping => None,
            RegistryPath::Manifest { name, .. }
            | RegistryPath::Blob { name, .. }
            | RegistryPath::Tags { name }
            | RegistryPath::Referrers { name, .. } => Some(name),
        }
    }

    /// The path in canonical form (what [`RegistryPath::parse`] reads back).
    pub fn to_path(&self) -> String {
        match self {
            RegistryPath::Ping => "/v2/".to_owned(),
            RegistryPath::Manifest { name, reference } => {
                format!("/v2/{name}/manifests/{reference}")
            }
            RegistryPath::Blob { name, digest } => format!("/v2/{name}/blobs/{digest}"),
            RegistryPath::Tags { name } => format!("/v2/{name}/tags/list"),
            RegistryPath::Referrers { name, digest } => {
                format!("/v2/{name}/referrers/{digest}")
            }
        }
    }
}

/// `[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*`.
fn component_ok(c: &str) -> bool {
    let b = c.as_bytes();
    let alnum = |x: u8| x.is_ascii_lowercase() || x.is_ascii_digit();
    let mut i = 0;
    loop {
        // An alphanumeric run.
        let start = i;
        while i < b.len() && alnum(b[i]) {
            i += 1;
        }
        if i == start {
            return false;
        }
        if i == b.len() {
            return true;
        }
        // One separator: `.`, `_`, `__` or `-+`.
        match b[i] {
            b'.' => i += 1,
            b'_' => {
                i += 1;
                if b.get(i) == Some(&b'_') {
                    i += 1;
                }
            }
            b'-' => {
                while b.get(i) == Some(&b'-') {
                    i += 1;
                }
            }
            _ => return false,
        }
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    const HEX: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    fn p(s: &str) -> Result<RegistryPath, OciPathError> {
        RegistryPath::parse(s)
    }

    #[test]
    fn endpoints() {
        assert_eq!(p("/v2/"), Ok(RegistryPath::Ping));
        assert_eq!(p("/v2"), Ok(RegistryPath::Ping));
        let m = p("/v2/library/debian/manifests/bookworm-slim").unwrap();
        assert_eq!(m.name().unwrap().as_str(), "library/debian");
        assert!(matches!(
            &m,
            RegistryPath::Manifest { reference: Reference::Tag(t), .. } if t.as_str() == "bookworm-slim"
        ));
        let d = format!("sha256:{HEX}");
        let b = p(&format!("/v2/a/b/c/blobs/{d}")).unwrap();
        assert!(matches!(&b, RegistryPath::Blob { digest, .. } if digest.to_string() == d));
        assert_eq!(b.name().unwrap().as_str(), "a/b/c");
        assert!(matches!(
            p(&format!("/v2/x/manifests/{d}")),
            Ok(RegistryPath::Manifest {
                reference: Reference::Digest(_),
                ..
            })
        ));
        assert!(matches!(
            p("/v2/x/tags/list"),
            Ok(RegistryPath::Tags { .. })
        ));
        assert!(matches!(
            p(&format!("/v2/x/referrers/{d}")),
            Ok(RegistryPath::Referrers { .. })
        ));
        // A component spelled like an endpoint is part of the name.
        let m = p("/v2/manifests/blobs/manifests/latest").unwrap();
        assert_eq!(m.name().unwrap().as_str(), "manifests/blobs");
    }

    #[test]
    fn refusals() {
        assert_eq!(p("/v1/x"), Err(OciPathError::NotV2));
        assert_eq!(p("/v2x/a/manifests/b"), Err(OciPathError::NotV2));
        assert_eq!(p("/v2/x"), Err(OciPathError::Endpoint));
        assert_eq!(p("/v2/x/manifests"), Err(OciPathError::Endpoint));
        assert_eq!(p("/v2/x/blobs/uploads/"), Err(OciPathError::Endpoint));
        assert_eq!(p("/v2/_catalog"), Err(OciPathError::Endpoint));
        assert_eq!(p("/v2/x/manifests/"), Err(OciPathError::Tag));
        assert_eq!(p("/v2/x/manifests/.latest"), Err(OciPathError::Tag));
        assert_eq!(p("/v2/x/manifests/-x"), Err(OciPathError::Tag));
        assert_eq!(
            p(&format!("/v2/x/manifests/{}", "a".repeat(129))),
            Err(OciPathError::Tag)
        );
        assert!(p(&format!("/v2/x/manifests/{}", "a".repeat(128))).is_ok());
        assert_eq!(p("/v2/x/blobs/latest"), Err(OciPathError::Digest));
        assert_eq!(p("/v2/x/blobs/sha256:abc"), Err(OciPathError::Digest));
        let upper = HEX.to_ascii_uppercase();
        assert_eq!(
            p(&format!("/v2/x/blobs/sha256:{upper}")),
            Err(OciPathError::Digest)
        );
        assert_eq!(
            p(&format!("/v2/x/blobs/sha512:{HEX}{HEX}")),
            Err(OciPathError::Digest)
        );
        assert_eq!(
            p(&format!("/v2/x/manifests/sha512:{HEX}")),
            Err(OciPathError::Digest)
        );
        for bad in [
            "/v2/X/manifests/a",
            "/v2/a..b/manifests/a",
            "/v2/a___b/manifests/a",
            "/v2/-a/manifests/a",
            "/v2/a-/manifests/a",
            "/v2/a//b/manifests/a",
            "/v2//manifests/a",
            "/v2/a%2Fb/manifests/a",
            "/v2/../manifests/a",
        ] {
            assert!(matches!(p(bad), Err(OciPathError::Name(_))), "{bad}");
        }
        for good in ["a.b", "a_b", "a__b", "a---b", "a-b.c_d__e", "0"] {
            assert!(p(&format!("/v2/{good}/manifests/a")).is_ok(), "{good}");
        }
        assert!(RepoName::parse(&"a".repeat(256)).is_err());
        assert!(RepoName::parse(&"a".repeat(255)).is_ok());
        assert_eq!(OciPathError::Digest.code(), "DIGEST_INVALID");
        assert_eq!(OciPathError::Name("x").code(), "NAME_INVALID");
    }

    /// Direct reading of `[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*` by tokens.
    fn spec_slow(c: &str) -> bool {
        let mut tokens: Vec<(bool, String)> = Vec::new();
        for ch in c.chars() {
            let alnum = ch.is_ascii_lowercase() || ch.is_ascii_digit();
            match tokens.last_mut() {
                Some((a, s)) if *a == alnum => s.push(ch),
                _ => tokens.push((alnum, ch.to_string())),
            }
        }
        !tokens.is_empty()
            && tokens.first().is_some_and(|t| t.0)
            && tokens.last().is_some_and(|t| t.0)
            && tokens.iter().filter(|t| !t.0).all(|(_, s)| {
                s == "." || s == "_" || s == "__" || (!s.is_empty() && s.chars().all(|c| c == '-'))
            })
    }

    proptest! {
        /// Whatever the bytes, parsing never panics; an accepted path prints back to
        /// itself and parses to the same endpoint.
        #[test]
        fn accepted_paths_round_trip(tail in "[a-z0-9._/:A-Z%-]{0,80}") {
            let path = format!("/v2/{tail}");
            if let Ok(r) = RegistryPath::parse(&path) {
                let again = RegistryPath::parse(&r.to_path());
                prop_assert_eq!(again.as_ref(), Ok(&r));
                if let Some(n) = r.name() {
                    prop_assert!(n.as_str().split('/').all(spec_slow), "{}", n);
                }
            }
        }

        /// The hand-written component check agrees with the grammar read token by token.
        #[test]
        fn component_matches_grammar(c in "[a-c0-1._-]{0,12}") {
            prop_assert_eq!(component_ok(&c), spec_slow(&c), "{}", c);
        }

        #[test]
        fn tags(t in "[A-Za-z0-9_.:-]{0,130}") {
            let ok = Tag::parse(&t).is_ok();
            let want = !t.is_empty()
                && t.len() <= 128
                && !t.starts_with(['.', '-'])
                && !t.contains(':');
            prop_assert_eq!(ok, want, "{}", t);
        }

        #[test]
        fn digests_round_trip(raw in prop::array::uniform32(any::<u8>())) {
            let d = Digest::from_sha256(raw);
            prop_assert_eq!(Digest::parse(&d.to_string()), Ok(d));
        }
    }
}
