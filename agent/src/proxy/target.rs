//! Request paths in canonical form, without I/O: one spelling per resource (so one
//! cache key), and no way out of a mirror's upstream prefix.
//!
//! [`normalize_path`] applies RFC 3986 §6.2.2 (percent-encoding with upper-case hex,
//! unreserved characters decoded, so `%2e` and `%2E` are dots) and then §5.2.4
//! (dot-segment removal; `..` above the root stays at the root). What an origin
//! might read as a dot segment although RFC 3986 does not is refused instead of
//! guessed at: a segment that hides `.` or `..` behind an encoded separator (`..%2F`,
//! `%2E%2E%5C`), a `;` parameter (`..;x`, which Tomcat reads as `..`) or an encoded
//! `;`; a raw backslash (some servers split on it); and `%00`.
//!
//! Cannot: know how an origin maps paths to files. An origin that decodes twice reads
//! `%252e%252e` (forwarded unchanged: `%25` is reserved) as `..`; that is its bug.
//! The query is not touched: signed URLs compare it byte for byte.

/// Why a request path was refused: the client's fault, answered with 400.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    #[error("malformed percent-encoding in the path at byte {0} (RFC 3986 §2.1)")]
    BadPercent(usize),
    #[error("a backslash in the path is refused: some origins read it as a separator")]
    Backslash,
    #[error("%00 in the path is refused")]
    Nul,
    #[error(
        "path segment {0:?} hides a dot segment behind an encoded separator or a ';' \
         parameter; refused as ambiguous"
    )]
    HiddenDots(String),
    #[error("the path must start with '/'")]
    Relative,
}

/// `raw` (an absolute path, no query) in canonical form: starts with `/`, no dot
/// segments, percent-encoding normalised. Empty segments (`//`) are kept: they are
/// distinct resources to most origins.
pub fn normalize_path(raw: &str) -> Result<String, PathError> {
    if raw.is_empty() {
        return Ok("/".to_owned());
    }
    if !raw.starts_with('/') {
        return Err(PathError::Relative);
    }
    let encoded = normalize_percent(raw)?;
    let mut out: Vec<&str> = Vec::new();
    let mut segments = encoded[1..].split('/').peekable();
    let mut trailing_slash = false;
    while let Some(seg) = segments.next() {
        let last = segments.peek().is_none();
        match seg {
            "." => trailing_slash = last,
            ".." => {
                out.pop();
                trailing_slash = last;
            }
            s => {
                if hides_dots(s) {
                    return Err(PathError::HiddenDots(s.to_owned()));
                }
                out.push(s);
                trailing_slash = false;
            }
        }
    }
    let mut path = String::with_capacity(encoded.len());
    for s in &out {
        path.push('/');
        path.push_str(s);
    }
    if trailing_slash || path.is_empty() {
        path.push('/');
    }
    Ok(path)
}

/// The upstream path for mirror path `tail` (what follows `/m/NAME`) under `prefix`
/// (the upstream URL's path): dot segments in `tail` cannot climb above `prefix`.
pub fn mirror_path(prefix: &str, tail: &str) -> Result<String, PathError> {
    let tail = if tail.is_empty() {
        "/".to_owned()
    } else if tail.starts_with('/') {
        normalize_path(tail)?
    } else {
        normalize_path(&format!("/{tail}"))?
    };
    Ok(format!("{}{tail}", prefix.trim_end_matches('/')))
}

/// Percent-encoding per RFC 3986 §6.2.2.1-2: upper-case hex, unreserved decoded.
fn normalize_percent(raw: &str) -> Result<String, PathError> {
    let b = raw.as_bytes();
    let mut out = String::with_capacity(raw.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' => {
                let v = hex_at(b, i).ok_or(PathError::BadPercent(i))?;
                if v == 0 {
                    return Err(PathError::Nul);
                }
                if is_unreserved(v) {
                    out.push(char::from(v));
                } else {
                    out.push_str(&format!("%{v:02X}"));
                }
                i += 3;
            }
            b'\\' => return Err(PathError::Backslash),
            _ => {
                // Copy a run of other bytes at once (keeps multi-byte UTF-8 intact).
                let end = b[i..]
                    .iter()
                    .position(|&c| c == b'%' || c == b'\\')
                    .map_or(b.len(), |p| i + p);
                out.push_str(&raw[i..end]);
                i = end;
            }
        }
    }
    Ok(out)
}

/// Whether an origin could read `seg` (already percent-normalised, not itself `.` or
/// `..`) as containing a dot segment: decoded, split at `/` and `\`, each piece cut
/// at `;`.
fn hides_dots(seg: &str) -> bool {
    if !seg.contains('.') {
        return false;
    }
    let decoded = decode(seg);
    decoded
        .split(['/', '\\'])
        .map(|piece| piece.split(';').next().unwrap_or(piece))
        .any(|p| p == "." || p == "..")
}

/// Percent-decodes `s` (already validated), lossily for non-UTF-8 bytes.
fn decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match hex_at(b, i) {
            Some(v) => {
                out.push(v);
                i += 3;
            }
            None => {
                out.push(b[i]);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The byte that `%XY` at `b[i]` encodes, if there is one (two hex digits, no sign).
fn hex_at(b: &[u8], i: usize) -> Option<u8> {
    match b.get(i..i + 3)? {
        [b'%', h, l] if h.is_ascii_hexdigit() && l.is_ascii_hexdigit() => {
            let digit = |c: u8| {
                char::from(c)
                    .to_digit(16)
                    .and_then(|d| u8::try_from(d).ok())
            };
            Some(digit(*h)? * 16 + digit(*l)?)
        }
        _ => None,
    }
}

/// RFC 3986 §2.3.
fn is_unreserved(c: u8) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, b'-' | b'.' | b'_' | b'~')
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn n(s: &str) -> Result<String, PathError> {
        normalize_path(s)
    }

    #[test]
    fn rfc3986_dot_segment_examples() {
        // RFC 3986 §5.4 examples, absolute paths only.
        assert_eq!(n("/a/b/c/./../../g").unwrap(), "/a/g");
        assert_eq!(n("/a/b/c/g;x=1/./y").unwrap(), "/a/b/c/g;x=1/y");
        assert_eq!(n("/a/b/..").unwrap(), "/a/");
        assert_eq!(n("/a/b/.").unwrap(), "/a/b/");
        assert_eq!(n("/..").unwrap(), "/");
        assert_eq!(n("/../../g").unwrap(), "/g");
        assert_eq!(n("/a//../b").unwrap(), "/a/b");
        assert_eq!(n("/a//b/").unwrap(), "/a//b/");
        assert_eq!(n("").unwrap(), "/");
        assert_eq!(n("/").unwrap(), "/");
        assert_eq!(n("/g.").unwrap(), "/g.");
        assert_eq!(n("/.g/..g/g../...").unwrap(), "/.g/..g/g../...");
        assert_eq!(n("relative"), Err(PathError::Relative));
    }

    #[test]
    fn percent_encoding_is_canonical() {
        assert_eq!(n("/%7euser/%41%62c").unwrap(), "/~user/Abc");
        assert_eq!(n("/a%2fb").unwrap(), "/a%2Fb");
        assert_eq!(n("/sp%20ace/%e2%82%ac").unwrap(), "/sp%20ace/%E2%82%AC");
        assert_eq!(n("/100%25").unwrap(), "/100%25");
        assert_eq!(n("/caf\u{e9}").unwrap(), "/caf\u{e9}");
        assert_eq!(n("/@scope%2fpkg").unwrap(), "/@scope%2Fpkg");
        assert_eq!(n("/a%"), Err(PathError::BadPercent(2)));
        assert_eq!(n("/a%4"), Err(PathError::BadPercent(2)));
        assert_eq!(n("/a%zz"), Err(PathError::BadPercent(2)));
        assert_eq!(n("/a%+f"), Err(PathError::BadPercent(2)));
        assert_eq!(n("/a%00b"), Err(PathError::Nul));
    }

    /// The eight escape spellings of issue 8 and their relatives: each resolves
    /// inside the prefix or is refused.
    #[test]
    fn mirror_escapes_stay_inside_or_are_refused() {
        let m = |t: &str| mirror_path("/prefix", t);
        let inside = [
            ("/../x", "/prefix/x"),
            ("/%2e%2e/x", "/prefix/x"),
            ("/%2E%2E/x", "/prefix/x"),
            ("/.%2e/x", "/prefix/x"),
            ("/%2e./x", "/prefix/x"),
            ("/./../x", "/prefix/x"),
            ("/a/../../x", "/prefix/x"),
            ("/.%2E/", "/prefix/"),
            ("/%2e%2e", "/prefix/"),
            ("/a/%2e/b", "/prefix/a/b"),
            ("/..", "/prefix/"),
            ("", "/prefix/"),
            ("x/y", "/prefix/x/y"),
        ];
        for (tail, want) in inside {
            assert_eq!(m(tail).as_deref(), Ok(want), "{tail}");
        }
        let hidden = |s: &str| Err(PathError::HiddenDots(s.to_owned()));
        assert_eq!(m("/..%2fx"), hidden("..%2Fx"));
        assert_eq!(m("/..%2Fx"), hidden("..%2Fx"));
        assert_eq!(m("/%2e%2e%2fx"), hidden("..%2Fx"));
        assert_eq!(m("/a%2f..%2f..%2fx"), hidden("a%2F..%2F..%2Fx"));
        assert_eq!(m("/..%5cx"), hidden("..%5Cx"));
        assert_eq!(m("/..;/x"), hidden("..;"));
        assert_eq!(m("/..;jsessionid=1/x"), hidden("..;jsessionid=1"));
        assert_eq!(m("/.%2e;/x"), hidden("..;"));
        assert_eq!(m("/..%3b/x"), hidden("..%3B"));
        assert_eq!(m("/..\\x"), Err(PathError::Backslash));
        assert_eq!(m("/a\\b"), Err(PathError::Backslash));
        assert_eq!(m("/..%00/x"), Err(PathError::Nul));
        // Encoded separators without dots are data, kept encoded.
        assert_eq!(m("/a%2fb").as_deref(), Ok("/prefix/a%2Fb"));
        assert_eq!(m("/...%2fx").as_deref(), Ok("/prefix/...%2Fx"));
        assert_eq!(mirror_path("/", "/../x").as_deref(), Ok("/x"));
        assert_eq!(mirror_path("", "/../x").as_deref(), Ok("/x"));
    }

    #[test]
    fn spellings_of_one_resource_agree() {
        let want = n("/pool/main/a.deb").unwrap();
        for s in [
            "/pool/main/a.deb",
            "/pool/./main/a.deb",
            "/pool/x/../main/a.deb",
            "/pool/%6dain/a%2edeb",
            "/pool/%6Dain/a%2Edeb",
            "/%2e/pool/main/a.deb",
        ] {
            assert_eq!(n(s).unwrap(), want, "{s}");
        }
    }

    fn piece() -> impl Strategy<Value = String> {
        prop::sample::select(vec![
            "/", ".", "..", "%2e", "%2E", "%2f", "%2F", "%5c", ";", "a", "%41", "~", "%7e", "%25",
            "x%2e", "//",
        ])
        .prop_map(str::to_owned)
    }

    proptest! {
        /// Whatever the tail, an accepted mirror path stays under the prefix, has no
        /// dot segment an origin could resolve, and is a fixed point.
        #[test]
        fn never_escapes_the_prefix(parts in prop::collection::vec(piece(), 0..12)) {
            let tail = parts.concat();
            if let Ok(p) = mirror_path("/prefix", &tail) {
                prop_assert!(p.starts_with("/prefix/"), "{tail} -> {p}");
                for seg in p.split('/') {
                    prop_assert!(seg != "." && seg != "..", "{tail} -> {p}");
                    prop_assert!(!hides_dots(seg), "{tail} -> {p}");
                }
                prop_assert_eq!(normalize_path(&p), Ok(p.clone()));
            }
        }

        #[test]
        fn normalisation_is_idempotent(s in "/[a-z./%0-9A-F;~]{0,24}") {
            if let Ok(p) = normalize_path(&s) {
                prop_assert_eq!(normalize_path(&p), Ok(p.clone()));
            }
        }
    }
}
