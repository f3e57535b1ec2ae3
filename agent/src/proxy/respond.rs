//! Building client responses from cached or filling objects: validators, conditional
//! requests (304), ranges (206/416) and HEAD, per RFC 9110.

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderValue};
use http::{Method, Response, StatusCode};
use http_body_util::{BodyExt, Empty, Full};
use shoal_proto::{ByteRange, RangeDecision, range::parse_range_header};

use crate::object::read::{ProxyBody, Serve};
use crate::object::{ObjectCache, Repr};

/// An empty body.
pub fn empty() -> ProxyBody {
    Empty::new().map_err(|never| match never {}).boxed()
}

/// A small fixed body.
pub fn full(b: impl Into<Bytes>) -> ProxyBody {
    Full::new(b.into()).map_err(|never| match never {}).boxed()
}

/// A one-line plain-text error response.
pub fn error(status: StatusCode, msg: &str) -> Response<ProxyBody> {
    let mut r = Response::new(full(format!("{msg}\n")));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

/// Weak comparison of an `If-None-Match` list against our ETag.
fn none_match(list: &str, etag: Option<&str>) -> bool {
    let Some(etag) = etag else { return false };
    let strip = |t: &str| t.trim().trim_start_matches("W/").to_owned();
    let ours = strip(etag);
    list.split(',').any(|t| t.trim() == "*" || strip(t) == ours)
}

/// Whether the client's cached copy is current: 304.
fn not_modified(req: &HeaderMap, repr: &Repr) -> bool {
    if let Some(inm) = req.get(header::IF_NONE_MATCH).and_then(|v| v.to_str().ok()) {
        return none_match(inm, repr.etag.as_deref());
    }
    let ims = req
        .get(header::IF_MODIFIED_SINCE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| httpdate::parse_http_date(v).ok());
    let lm = repr
        .last_modified
        .as_deref()
        .and_then(|v| httpdate::parse_http_date(v).ok());
    matches!((ims, lm), (Some(ims), Some(lm)) if lm <= ims)
}

/// Whether `If-Range` (if any) allows serving the requested range.
fn if_range_ok(req: &HeaderMap, repr: &Repr) -> bool {
    let Some(v) = req.get(header::IF_RANGE).and_then(|v| v.to_str().ok()) else {
        return true;
    };
    let v = v.trim();
    if v.starts_with('"') || v.starts_with("W/") {
        // Strong comparison: weak tags never match.
        repr.etag
            .as_deref()
            .is_some_and(|e| shoal_proto::key::is_strong_etag(e) && e == v)
    } else {
        repr.last_modified.as_deref() == Some(v)
    }
}

/// The response to `method` with request headers `req` from `s`.
pub fn respond(
    cache: &ObjectCache,
    method: &Method,
    req: &HeaderMap,
    s: Serve,
) -> Response<ProxyBody> {
    let layout = s.layout();
    let size = layout.size;
    let mut h = HeaderMap::new();
    s.repr().apply(&mut h);
    h.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    let state = match &s {
        Serve::Object(_) => "hit",
        Serve::Fill(f) if f.is_complete() => "hit",
        Serve::Fill(_) => "miss",
    };
    h.insert("x-shoal-cache", HeaderValue::from_static(state));
    if not_modified(req, s.repr()) {
        let mut r = Response::new(empty());
        *r.status_mut() = StatusCode::NOT_MODIFIED;
        h.remove(header::CONTENT_TYPE);
        *r.headers_mut() = h;
        return r;
    }
    let decision = match req.get(header::RANGE).and_then(|v| v.to_str().ok()) {
        Some(r) if if_range_ok(req, s.repr()) => parse_range_header(r, size),
        _ => RangeDecision::Full,
    };
    let (status, range) = match decision {
        RangeDecision::Full => (StatusCode::OK, ByteRange::new(0, size)),
        RangeDecision::Partial(r) => {
            if let Ok(v) = HeaderValue::from_str(&r.content_range(size)) {
                h.insert(header::CONTENT_RANGE, v);
            }
            (StatusCode::PARTIAL_CONTENT, r)
        }
        RangeDecision::Unsatisfiable => {
            let mut r = error(StatusCode::RANGE_NOT_SATISFIABLE, "range not satisfiable");
            if let Ok(v) = HeaderValue::from_str(&format!("bytes */{size}")) {
                r.headers_mut().insert(header::CONTENT_RANGE, v);
            }
            return r;
        }
    };
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(range.len()));
    let body = if method == Method::HEAD || range.is_empty() {
        empty()
    } else {
        cache.body(s, range)
    };
    let mut r = Response::new(body);
    *r.status_mut() = status;
    *r.headers_mut() = h;
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    fn repr() -> Repr {
        Repr {
            etag: Some("\"v1\"".into()),
            last_modified: Some("Wed, 21 Oct 2015 07:28:00 GMT".into()),
            headers: vec![],
        }
    }

    fn hm(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, v.parse().unwrap());
        }
        h
    }

    #[test]
    fn conditionals() {
        assert!(not_modified(&hm(&[("if-none-match", "\"v1\"")]), &repr()));
        assert!(not_modified(
            &hm(&[("if-none-match", "\"x\", W/\"v1\"")]),
            &repr()
        ));
        assert!(not_modified(&hm(&[("if-none-match", "*")]), &repr()));
        assert!(!not_modified(&hm(&[("if-none-match", "\"v2\"")]), &repr()));
        // If-None-Match wins over If-Modified-Since.
        assert!(!not_modified(
            &hm(&[
                ("if-none-match", "\"v2\""),
                ("if-modified-since", "Wed, 21 Oct 2015 07:28:00 GMT")
            ]),
            &repr()
        ));
        assert!(not_modified(
            &hm(&[("if-modified-since", "Wed, 21 Oct 2015 07:28:00 GMT")]),
            &repr()
        ));
        assert!(!not_modified(
            &hm(&[("if-modified-since", "Wed, 21 Oct 2015 07:27:59 GMT")]),
            &repr()
        ));
        assert!(!not_modified(
            &hm(&[("if-modified-since", "garbage")]),
            &repr()
        ));
    }

    #[test]
    fn if_range() {
        assert!(if_range_ok(&hm(&[]), &repr()));
        assert!(if_range_ok(&hm(&[("if-range", "\"v1\"")]), &repr()));
        assert!(!if_range_ok(&hm(&[("if-range", "W/\"v1\"")]), &repr()));
        assert!(!if_range_ok(&hm(&[("if-range", "\"v0\"")]), &repr()));
        assert!(if_range_ok(
            &hm(&[("if-range", "Wed, 21 Oct 2015 07:28:00 GMT")]),
            &repr()
        ));
    }
}
