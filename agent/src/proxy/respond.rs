//! Building client responses from cached or filling objects: validators, conditional
//! requests (412, 304), ranges (206, multipart 206, 416) and HEAD, per RFC 9110.
//!
//! Preconditions are evaluated in the order of RFC 9110 §13.2.2: `If-Match`, else
//! `If-Unmodified-Since` (failing: 412); then `If-None-Match`, else
//! `If-Modified-Since` (matching: 304); then `If-Range` and `Range`. Dates that do not
//! parse, fields with more than one date, and an `If-Modified-Since` later than now
//! are ignored. Range forms and what they get: see `shoal_proto::range`.
//!
//! Where this differs from nginx 1.22 serving the same file (on purpose, RFC 9110 is
//! followed): an unparsable `If-Unmodified-Since` is ignored (nginx: 412); an
//! `If-Modified-Since` between Last-Modified and now gives 304 (nginx's default
//! `if_modified_since exact`: 200); overlapping or adjacent ranges are coalesced
//! (nginx: one part each); more than `MAX_PARTS` ranges get 200 (nginx: multipart).

use std::collections::VecDeque;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::SystemTime;

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Response, StatusCode};
use http_body::{Body, Frame, SizeHint};
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

/// One member of an `If-Match` / `If-None-Match` list.
#[derive(Debug, PartialEq, Eq)]
enum Tag<'a> {
    Any,
    /// `opaque` includes its quotes.
    Entity {
        weak: bool,
        opaque: &'a str,
    },
}

/// The members of an entity-tag list (`*`, `"a"`, `W/"b"`, …). `None` if it does not
/// parse: such a field matches nothing. Commas inside quotes belong to the tag.
fn tags(list: &str) -> Option<Vec<Tag<'_>>> {
    let mut out = Vec::new();
    let mut rest = list;
    loop {
        rest = rest.trim_start_matches([' ', '\t', ',']);
        if rest.is_empty() {
            return Some(out);
        }
        if let Some(r) = rest.strip_prefix('*') {
            out.push(Tag::Any);
            rest = r;
            continue;
        }
        let (weak, r) = match rest.strip_prefix("W/") {
            Some(r) => (true, r),
            None => (false, rest),
        };
        let body = r.strip_prefix('"')?;
        let close = body.find('"')?;
        out.push(Tag::Entity {
            weak,
            opaque: &r[..close + 2],
        });
        rest = &body[close + 1..];
        if !(rest.is_empty() || rest.starts_with([' ', '\t', ','])) {
            return None;
        }
    }
}

/// Every field line of `name`, joined as one list.
fn list(req: &HeaderMap, name: HeaderName) -> Option<String> {
    let vals: Vec<&str> = req
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .collect();
    (!vals.is_empty()).then(|| vals.join(","))
}

/// Whether our `etag` is in `list`: strong comparison (`If-Match`, RFC 9110 §8.8.3.2)
/// or weak (`If-None-Match`). `*` matches whenever we have a representation.
fn etag_in(list: &str, etag: Option<&str>, strong: bool) -> bool {
    let ours = etag
        .and_then(|e| tags(e))
        .and_then(|t| t.into_iter().next());
    let Some(members) = tags(list) else {
        return false;
    };
    members.iter().any(|t| match (t, &ours) {
        (Tag::Any, _) => true,
        (
            Tag::Entity { weak, opaque },
            Some(Tag::Entity {
                weak: our_weak,
                opaque: ours,
            }),
        ) => opaque == ours && !(strong && (*weak || *our_weak)),
        _ => false,
    })
}

/// The one HTTP-date of `name`; `None` if absent, repeated or not a date (ignored).
fn date(req: &HeaderMap, name: HeaderName) -> Option<SystemTime> {
    let mut all = req.get_all(name).iter();
    let v = all.next()?;
    if all.next().is_some() {
        return None;
    }
    httpdate::parse_http_date(v.to_str().ok()?).ok()
}

fn last_modified(repr: &Repr) -> Option<SystemTime> {
    repr.last_modified
        .as_deref()
        .and_then(|v| httpdate::parse_http_date(v).ok())
}

/// What the request's preconditions say (RFC 9110 §13.2.2 steps 1–4).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Precondition {
    Proceed,
    /// 412.
    Failed,
    /// 304.
    NotModified,
}

fn preconditions(req: &HeaderMap, repr: &Repr, now: SystemTime) -> Precondition {
    let lm = last_modified(repr);
    if let Some(im) = list(req, header::IF_MATCH) {
        if !etag_in(&im, repr.etag.as_deref(), true) {
            return Precondition::Failed;
        }
    } else if let (Some(ius), Some(lm)) = (date(req, header::IF_UNMODIFIED_SINCE), lm)
        && lm > ius
    {
        return Precondition::Failed;
    }
    if let Some(inm) = list(req, header::IF_NONE_MATCH) {
        if etag_in(&inm, repr.etag.as_deref(), false) {
            return Precondition::NotModified;
        }
    } else if let (Some(ims), Some(lm)) = (date(req, header::IF_MODIFIED_SINCE), lm) {
        // A date later than now is invalid (it cannot come from an earlier response).
        if ims <= now && lm <= ims {
            return Precondition::NotModified;
        }
    }
    Precondition::Proceed
}

/// Whether `If-Range` (if any) allows serving the requested range: an exact match of
/// a strong ETag, or of Last-Modified.
fn if_range_ok(req: &HeaderMap, repr: &Repr) -> bool {
    if req.get_all(header::IF_RANGE).iter().nth(1).is_some() {
        // Two validators: no single one to compare; the whole representation.
        return false;
    }
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
        match (httpdate::parse_http_date(v).ok(), last_modified(repr)) {
            (Some(a), Some(b)) => a == b,
            _ => false,
        }
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
        // Even if it completed by now (see `source`).
        Serve::Fill(_) => "miss",
    };
    h.insert("x-shoal-cache", HeaderValue::from_static(state));
    let now = SystemTime::now();
    if let Serve::Object(m) = &s {
        // RFC 9111 §4: a stored response used without validation carries its age.
        h.insert(header::AGE, HeaderValue::from(m.age_secs(now)));
    }
    match preconditions(req, s.repr(), now) {
        Precondition::Proceed => {}
        Precondition::Failed => {
            let mut r = error(StatusCode::PRECONDITION_FAILED, "precondition failed");
            for n in [header::ETAG, header::LAST_MODIFIED] {
                if let Some(v) = h.get(&n) {
                    r.headers_mut().insert(n, v.clone());
                }
            }
            return r;
        }
        Precondition::NotModified => {
            let mut r = Response::new(empty());
            *r.status_mut() = StatusCode::NOT_MODIFIED;
            h.remove(header::CONTENT_TYPE);
            *r.headers_mut() = h;
            return r;
        }
    }
    // `Range` is a singleton field (RFC 9110 §14.2): sent twice it is invalid, and an
    // invalid `Range` is ignored (the whole representation, 200).
    let single_range = req.get_all(header::RANGE).iter().nth(1).is_none();
    let decision = match req.get(header::RANGE).and_then(|v| v.to_str().ok()) {
        Some(r) if single_range && if_range_ok(req, s.repr()) => parse_range_header(r, size),
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
        RangeDecision::Multi(ranges) => return multipart(cache, method, h, s, &ranges),
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

/// A 206 `multipart/byteranges` answer (RFC 9110 §14.6): one part per range, each
/// with the object's Content-Type (if known) and its Content-Range, under a random
/// boundary; the length of the whole body is sent.
fn multipart(
    cache: &ObjectCache,
    method: &Method,
    mut h: HeaderMap,
    s: Serve,
    ranges: &[ByteRange],
) -> Response<ProxyBody> {
    let size = s.layout().size;
    // 16 random bytes as hex: never in the part headers, and a body that contains
    // it by chance is 2^-128 likely.
    let boundary = hex::encode(rand::random::<[u8; 16]>());
    let ctype = h
        .remove(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok().map(|v| format!("Content-Type: {v}\r\n")))
        .unwrap_or_default();
    let mut parts = VecDeque::with_capacity(ranges.len() * 2 + 1);
    let mut total = 0u64;
    for r in ranges {
        let head = format!(
            "\r\n--{boundary}\r\n{ctype}Content-Range: {}\r\n\r\n",
            r.content_range(size)
        );
        total += head.len() as u64 + r.len();
        parts.push_back(Part::Bytes(Bytes::from(head)));
        parts.push_back(Part::Range(*r));
    }
    let tail = format!("\r\n--{boundary}--\r\n");
    total += tail.len() as u64;
    parts.push_back(Part::Bytes(Bytes::from(tail)));
    if let Ok(v) = HeaderValue::from_str(&format!("multipart/byteranges; boundary={boundary}")) {
        h.insert(header::CONTENT_TYPE, v);
    }
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(total));
    let body = if method == Method::HEAD {
        empty()
    } else {
        MultipartBody {
            cache: cache.clone(),
            serve: s,
            parts,
            current: None,
            left: total,
        }
        .boxed()
    };
    let mut r = Response::new(body);
    *r.status_mut() = StatusCode::PARTIAL_CONTENT;
    *r.headers_mut() = h;
    r
}

#[derive(Debug)]
enum Part {
    Bytes(Bytes),
    Range(ByteRange),
}

/// The parts of a multipart answer in order. A range's body (and its read-ahead
/// task) is started only when the part before it is sent, so a 16-part answer reads
/// like a single range.
struct MultipartBody {
    cache: ObjectCache,
    serve: Serve,
    parts: VecDeque<Part>,
    current: Option<ProxyBody>,
    /// Bytes not yet sent.
    left: u64,
}

impl std::fmt::Debug for MultipartBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MultipartBody")
            .field("parts", &self.parts)
            .field("left", &self.left)
            .finish()
    }
}

impl Body for MultipartBody {
    type Data = Bytes;
    type Error = io::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        let this = &mut *self;
        loop {
            if let Some(body) = this.current.as_mut() {
                match Pin::new(body).poll_frame(cx) {
                    Poll::Ready(None) => this.current = None,
                    Poll::Ready(Some(Ok(f))) => {
                        if let Some(d) = f.data_ref() {
                            this.left = this.left.saturating_sub(d.len() as u64);
                        }
                        return Poll::Ready(Some(Ok(f)));
                    }
                    other => return other,
                }
            }
            match this.parts.pop_front() {
                None => return Poll::Ready(None),
                Some(Part::Bytes(b)) => {
                    this.left = this.left.saturating_sub(b.len() as u64);
                    return Poll::Ready(Some(Ok(Frame::data(b))));
                }
                Some(Part::Range(r)) => {
                    this.current = Some(this.cache.body(this.serve.clone(), r));
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.current.is_none() && self.parts.is_empty()
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.left)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

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
            h.append(*k, v.parse().unwrap());
        }
        h
    }

    #[test]
    fn precondition_order() {
        use Precondition::*;
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let lm = "Wed, 21 Oct 2015 07:28:00 GMT";
        let cases: &[(&[(&str, &str)], Precondition)] = &[
            (&[], Proceed),
            (&[("if-match", "\"v1\"")], Proceed),
            (&[("if-match", "\"x\", \"v1\"")], Proceed),
            (&[("if-match", "*")], Proceed),
            (&[("if-match", "\"v2\"")], Failed),
            (&[("if-match", "W/\"v1\"")], Failed),
            (&[("if-match", "garbage")], Failed),
            (
                &[("if-unmodified-since", "Wed, 21 Oct 2015 07:27:59 GMT")],
                Failed,
            ),
            (&[("if-unmodified-since", lm)], Proceed),
            (&[("if-unmodified-since", "garbage")], Proceed),
            // If-Match wins over If-Unmodified-Since.
            (
                &[
                    ("if-match", "\"v1\""),
                    ("if-unmodified-since", "Wed, 21 Oct 2015 07:27:59 GMT"),
                ],
                Proceed,
            ),
            (&[("if-none-match", "\"v1\"")], NotModified),
            (&[("if-none-match", "\"x\", W/\"v1\"")], NotModified),
            (
                &[("if-none-match", "\"x\""), ("if-none-match", "\"v1\"")],
                NotModified,
            ),
            (&[("if-none-match", "*")], NotModified),
            (&[("if-none-match", "\"v2\"")], Proceed),
            (&[("if-none-match", "\"a,b\"")], Proceed),
            // If-None-Match wins over If-Modified-Since.
            (
                &[("if-none-match", "\"v2\""), ("if-modified-since", lm)],
                Proceed,
            ),
            (&[("if-modified-since", lm)], NotModified),
            (
                &[("if-modified-since", "Thu, 22 Oct 2015 07:28:00 GMT")],
                NotModified,
            ),
            (
                &[("if-modified-since", "Wed, 21 Oct 2015 07:27:59 GMT")],
                Proceed,
            ),
            (&[("if-modified-since", "garbage")], Proceed),
            (
                &[("if-modified-since", lm), ("if-modified-since", lm)],
                Proceed,
            ),
            // Later than now: ignored.
            (
                &[("if-modified-since", "Fri, 01 Jan 2100 00:00:00 GMT")],
                Proceed,
            ),
            // 412 before 304.
            (
                &[("if-match", "\"v2\""), ("if-none-match", "\"v1\"")],
                Failed,
            ),
        ];
        for (h, want) in cases {
            assert_eq!(preconditions(&hm(h), &repr(), now), *want, "{h:?}");
        }
        let weak = Repr {
            etag: Some("W/\"v1\"".into()),
            ..repr()
        };
        assert_eq!(
            preconditions(&hm(&[("if-match", "W/\"v1\"")]), &weak, now),
            Failed
        );
        assert_eq!(
            preconditions(&hm(&[("if-none-match", "\"v1\"")]), &weak, now),
            NotModified
        );
        let bare = Repr::default();
        assert_eq!(
            preconditions(&hm(&[("if-match", "*")]), &bare, now),
            Proceed
        );
        assert_eq!(
            preconditions(&hm(&[("if-match", "\"v1\"")]), &bare, now),
            Failed
        );
        assert_eq!(
            preconditions(&hm(&[("if-modified-since", lm)]), &bare, now),
            Proceed
        );
    }

    #[test]
    fn entity_tag_lists() {
        assert_eq!(
            tags("\"a\", W/\"b,c\" ,*"),
            Some(vec![
                Tag::Entity {
                    weak: false,
                    opaque: "\"a\""
                },
                Tag::Entity {
                    weak: true,
                    opaque: "\"b,c\""
                },
                Tag::Any
            ])
        );
        assert_eq!(tags("\"a"), None);
        assert_eq!(tags("a"), None);
        assert_eq!(tags("\"a\"b"), None);
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
        assert!(if_range_ok(
            &hm(&[("if-range", "Wednesday, 21-Oct-15 07:28:00 GMT")]),
            &repr()
        ));
        assert!(!if_range_ok(
            &hm(&[("if-range", "Wed, 21 Oct 2015 07:28:01 GMT")]),
            &repr()
        ));
        // Two validators, even matching ones: no range.
        let mut two = HeaderMap::new();
        two.append(header::IF_RANGE, "\"v1\"".parse().unwrap());
        two.append(header::IF_RANGE, "\"v1\"".parse().unwrap());
        assert!(!if_range_ok(&two, &repr()));
    }
}
