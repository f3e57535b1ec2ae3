//! The one-version rule for ranged origin responses (flow 7 of the design): a `206`
//! is used in a fill only when its `Content-Range` is exactly the range asked for
//! (`bytes START-END/COMPLETE`, COMPLETE the version's size) and its validator (the
//! version's strong ETag, else its Last-Modified) is the version's own. A validator
//! missing from the response where the version has one is a mismatch too.
//!
//! This is what stops an origin that changes an object during a fill and ignores
//! `If-Range` (object stores, simple servers and CDN nodes do) from making one object
//! out of two versions. It cannot catch an origin that changes the bytes and keeps
//! the validators: that is caught only where a chunk id is already known (the
//! manifest, the tracker) or the URL names a digest.

use std::ops::Range;

use http::StatusCode;
use http::header::{self, HeaderMap};
use shoal_proto::Validator;

use super::meta::Repr;

/// Why a ranged origin response does not belong to the version being filled.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Changed {
    /// Not `206` (a `200` means `If-Range` did not match, or ranges are ignored).
    #[error("range request answered {0}")]
    Status(StatusCode),
    /// No `Content-Range`, or more than one.
    #[error("no single Content-Range in the 206")]
    NoContentRange,
    /// A `Content-Range` other than the one asked for.
    #[error("Content-Range {got:?}, asked for bytes {start}-{last}/{size}")]
    ContentRange {
        got: String,
        start: u64,
        last: u64,
        size: u64,
    },
    /// The response's ETag is not the version's strong ETag (or is missing).
    #[error("ETag {got:?}, the version has {want}")]
    ETag { want: String, got: Option<String> },
    /// The response's Last-Modified is not the version's (or is missing).
    #[error("Last-Modified {got:?}, the version has {want}")]
    LastModified { want: String, got: Option<String> },
    /// The body ran past the range asked for.
    #[error("range body longer than the {0} bytes asked for")]
    Longer(u64),
}

/// Whether a `200` answer to a range request is the whole of the version `repr`
/// (complete length `size`): an origin that ignores `Range`. Its validator must be
/// the version's, as for a `206`, and a `Content-Length` (if any) must be `size`.
pub(crate) fn is_whole(status: StatusCode, headers: &HeaderMap, repr: &Repr, size: u64) -> bool {
    if status != StatusCode::OK {
        return false;
    }
    let length = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .map(|v| v.trim().parse::<u64>());
    if matches!(length, Some(Ok(n)) if n != size) || matches!(length, Some(Err(_))) {
        return false;
    }
    validator_matches(headers, repr).is_ok()
}

/// Checks the head of the answer to a `Range: bytes={start}-{end-1}` request for
/// `bounds` of the version `repr` whose complete length is `size`.
pub(crate) fn check(
    status: StatusCode,
    headers: &HeaderMap,
    repr: &Repr,
    bounds: Range<u64>,
    size: u64,
) -> Result<(), Changed> {
    if status != StatusCode::PARTIAL_CONTENT {
        return Err(Changed::Status(status));
    }
    let mut ranges = headers.get_all(header::CONTENT_RANGE).iter();
    let (Some(got), None) = (ranges.next(), ranges.next()) else {
        return Err(Changed::NoContentRange);
    };
    let last = bounds.end.saturating_sub(1);
    if got.to_str().ok().and_then(content_range) != Some((bounds.start, last, size)) {
        return Err(Changed::ContentRange {
            got: String::from_utf8_lossy(got.as_bytes()).into_owned(),
            start: bounds.start,
            last,
            size,
        });
    }
    validator_matches(headers, repr)
}

/// Whether the response's validator is the version's own (none needed for a
/// digest-named version).
fn validator_matches(headers: &HeaderMap, repr: &Repr) -> Result<(), Changed> {
    let value = |n| {
        headers
            .get(n)
            .map(|v| String::from_utf8_lossy(v.as_bytes()).trim().to_owned())
    };
    match Validator::from_headers(repr.etag.as_deref(), repr.last_modified.as_deref()) {
        Some(Validator::ETag(want)) => {
            let got = value(header::ETAG);
            if got.as_deref() != Some(want.as_str()) {
                return Err(Changed::ETag { want, got });
            }
        }
        Some(Validator::LastModified(want)) => {
            let got = value(header::LAST_MODIFIED);
            if got.as_deref() != Some(want.as_str()) {
                return Err(Changed::LastModified { want, got });
            }
        }
        // A digest-named version: the whole-object digest is its check.
        None => {}
    }
    Ok(())
}

/// `bytes FIRST-LAST/COMPLETE` as numbers; `None` for anything else (`*`, other
/// units, signs, spaces inside numbers).
fn content_range(v: &str) -> Option<(u64, u64, u64)> {
    let (unit, rest) = v.trim().split_once(' ')?;
    if !unit.eq_ignore_ascii_case("bytes") {
        return None;
    }
    let (range, complete) = rest.trim_start().split_once('/')?;
    let (first, last) = range.split_once('-')?;
    let num = |s: &str| {
        if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        s.parse::<u64>().ok()
    };
    Some((num(first)?, num(last)?, num(complete)?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn repr(etag: Option<&str>, lm: Option<&str>) -> Repr {
        Repr {
            etag: etag.map(str::to_owned),
            last_modified: lm.map(str::to_owned),
            headers: Vec::new(),
        }
    }

    fn head(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    const LM: &str = "Tue, 14 Nov 2023 22:13:20 GMT";
    const PARTIAL: StatusCode = StatusCode::PARTIAL_CONTENT;

    #[test]
    fn exact_range_and_validator_pass() {
        let r = repr(Some("\"v1\""), Some(LM));
        let h = head(&[("content-range", "bytes 100-199/1000"), ("etag", "\"v1\"")]);
        assert_eq!(check(PARTIAL, &h, &r, 100..200, 1000), Ok(()));
        // Unit case and surrounding space do not matter.
        let h = head(&[
            ("content-range", " Bytes 100-199/1000 "),
            ("etag", "\"v1\""),
        ]);
        assert_eq!(check(PARTIAL, &h, &r, 100..200, 1000), Ok(()));
    }

    #[test]
    fn other_version_is_refused() {
        let r = repr(Some("\"v1\""), Some(LM));
        let h = head(&[("content-range", "bytes 0-99/1000"), ("etag", "\"v2\"")]);
        assert!(matches!(
            check(PARTIAL, &h, &r, 0..100, 1000),
            Err(Changed::ETag { got: Some(g), .. }) if g == "\"v2\""
        ));
        // A missing ETag where the version has one.
        let h = head(&[("content-range", "bytes 0-99/1000"), ("last-modified", LM)]);
        assert!(matches!(
            check(PARTIAL, &h, &r, 0..100, 1000),
            Err(Changed::ETag { got: None, .. })
        ));
        // A weak ETag with the same opaque tag is not the strong one.
        let h = head(&[("content-range", "bytes 0-99/1000"), ("etag", "W/\"v1\"")]);
        assert!(check(PARTIAL, &h, &r, 0..100, 1000).is_err());
    }

    #[test]
    fn last_modified_when_no_strong_etag() {
        let r = repr(Some("W/\"weak\""), Some(LM));
        let ok = head(&[("content-range", "bytes 0-99/1000"), ("last-modified", LM)]);
        assert_eq!(check(PARTIAL, &ok, &r, 0..100, 1000), Ok(()));
        let later = head(&[
            ("content-range", "bytes 0-99/1000"),
            ("last-modified", "Wed, 15 Nov 2023 22:13:20 GMT"),
        ]);
        assert!(matches!(
            check(PARTIAL, &later, &r, 0..100, 1000),
            Err(Changed::LastModified { .. })
        ));
        let none = head(&[("content-range", "bytes 0-99/1000")]);
        assert!(matches!(
            check(PARTIAL, &none, &r, 0..100, 1000),
            Err(Changed::LastModified { got: None, .. })
        ));
        // No validator at all (digest-named): only the range is checked.
        let r = repr(None, None);
        assert_eq!(check(PARTIAL, &none, &r, 0..100, 1000), Ok(()));
    }

    #[test]
    fn wrong_content_range_is_refused() {
        let r = repr(Some("\"v1\""), None);
        for bad in [
            "bytes 101-200/1000", // shifted
            "bytes 100-198/1000", // shorter
            "bytes 100-199/1001", // another complete length
            "bytes 100-199/*",    // unknown complete length
            "bytes */1000",
            "bytes 100-199",
            "items 100-199/1000",
            "bytes +100-199/1000",
            "bytes 100-199/1000, bytes 0-1/1000",
            "",
        ] {
            let h = head(&[("content-range", bad), ("etag", "\"v1\"")]);
            assert!(
                matches!(
                    check(PARTIAL, &h, &r, 100..200, 1000),
                    Err(Changed::ContentRange { .. })
                ),
                "{bad:?} accepted"
            );
        }
        let h = head(&[("etag", "\"v1\"")]);
        assert_eq!(
            check(PARTIAL, &h, &r, 100..200, 1000),
            Err(Changed::NoContentRange)
        );
        let h = head(&[
            ("content-range", "bytes 100-199/1000"),
            ("content-range", "bytes 100-199/1000"),
            ("etag", "\"v1\""),
        ]);
        assert_eq!(
            check(PARTIAL, &h, &r, 100..200, 1000),
            Err(Changed::NoContentRange)
        );
    }

    #[test]
    fn whole_body_is_refused() {
        let r = repr(Some("\"v1\""), None);
        let h = head(&[("etag", "\"v1\"")]);
        assert_eq!(
            check(StatusCode::OK, &h, &r, 0..100, 1000),
            Err(Changed::Status(StatusCode::OK))
        );
    }
}
