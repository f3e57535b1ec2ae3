//! HTTP byte ranges (RFC 9110 §14).
//!
//! [`parse_range_header`] turns a `Range` header into a decision for an object of known
//! size: serve it whole (200), one range (206), several (206 `multipart/byteranges`)
//! or refuse (416). What each form gets (nginx 1.22 answers the same, except where noted):
//!
//! - a unit other than `bytes`, or `bytes=` with no range: ignored, 200 (RFC 9110 §14.2);
//! - a syntactically invalid byte range set (`bytes=abc`, `bytes=100-99`, one bad
//!   spec among good ones): 416, as nginx does (RFC 9110 §14.2 allows ignoring or
//!   rejecting it; a client that sends garbage learns it at once instead of
//!   receiving the whole object);
//! - no satisfiable range (`bytes=N-` for size N, `bytes=-0`): 416;
//! - unsatisfiable specs among satisfiable ones are dropped; one left: 206;
//! - several: overlapping or adjacent ranges are coalesced (then sent in ascending
//!   order, else in request order; nginx does not coalesce), then two up to
//!   [`MAX_PARTS`] parts get a multipart answer; more parts, or ranges whose lengths
//!   add up to more than the object (heavy overlap, RFC 9110 §14.2's denial-of-service
//!   case, as nginx), get the whole object (200).

use std::fmt;

/// A half-open byte range `[start, end)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ByteRange {
    pub start: u64,
    pub end: u64,
}

/// Most parts of a `multipart/byteranges` answer, after coalescing; a request for more
/// gets the whole object.
pub const MAX_PARTS: usize = 16;

/// What to do with a request's `Range` header for an object of a given size.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RangeDecision {
    /// No usable range: answer 200 with the whole object.
    Full,
    /// Answer 206 with this range (never empty).
    Partial(ByteRange),
    /// Answer 206 `multipart/byteranges` with these ranges, in this order: two to
    /// [`MAX_PARTS`], none empty, none overlapping or adjacent to another.
    Multi(Vec<ByteRange>),
    /// Answer 416 with `Content-Range: bytes */size`.
    Unsatisfiable,
}

impl ByteRange {
    /// `[start, end)`; an `end` below `start` gives an empty range.
    pub const fn new(start: u64, end: u64) -> Self {
        Self {
            start,
            end: if end < start { start } else { end },
        }
    }

    /// Length in bytes.
    pub const fn len(&self) -> u64 {
        self.end - self.start
    }

    pub const fn is_empty(&self) -> bool {
        self.end == self.start
    }

    /// Intersection with `other` (empty if disjoint).
    pub fn intersect(&self, other: ByteRange) -> ByteRange {
        ByteRange::new(self.start.max(other.start), self.end.min(other.end))
    }

    /// `Content-Range` value for this range of an object of `size` bytes.
    pub fn content_range(&self, size: u64) -> String {
        format!(
            "bytes {}-{}/{}",
            self.start,
            self.end.saturating_sub(1),
            size
        )
    }
}

impl fmt::Display for ByteRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "[{}, {})", self.start, self.end)
    }
}

/// One `first-last`, `first-` or `-suffix` item.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Spec {
    FromTo(u64, u64),
    From(u64),
    Suffix(u64),
}

fn parse_spec(s: &str) -> Option<Spec> {
    let s = s.trim();
    let (a, b) = s.split_once('-')?;
    let num = |t: &str| -> Option<u64> {
        if t.is_empty() || t.len() > 19 || !t.bytes().all(|c| c.is_ascii_digit()) {
            return None;
        }
        t.parse().ok()
    };
    match (a.is_empty(), b.is_empty()) {
        (true, true) => None,
        (true, false) => Some(Spec::Suffix(num(b)?)),
        (false, true) => Some(Spec::From(num(a)?)),
        (false, false) => {
            let (x, y) = (num(a)?, num(b)?);
            (x <= y).then_some(Spec::FromTo(x, y))
        }
    }
}

/// Decides how to answer `header` (the `Range` value) for an object of `size` bytes.
/// See the module docs for what each form gets.
pub fn parse_range_header(header: &str, size: u64) -> RangeDecision {
    let h = header.trim();
    let Some(rest) = h
        .get(..6)
        .filter(|u| u.eq_ignore_ascii_case("bytes="))
        .map(|_| &h[6..])
    else {
        return RangeDecision::Full;
    };
    let specs: Option<Vec<Spec>> = rest
        .split(',')
        .filter(|p| !p.trim().is_empty())
        .map(parse_spec)
        .collect();
    let Some(specs) = specs else {
        return RangeDecision::Unsatisfiable;
    };
    if specs.is_empty() {
        return RangeDecision::Full;
    }
    let ranges: Vec<ByteRange> = specs.iter().filter_map(|s| resolve(*s, size)).collect();
    let total = ranges.iter().fold(0u64, |t, r| t.saturating_add(r.len()));
    match ranges.as_slice() {
        [] => RangeDecision::Unsatisfiable,
        [one] => RangeDecision::Partial(*one),
        _ if total > size => RangeDecision::Full,
        _ => match coalesce(ranges).as_slice() {
            [one] => RangeDecision::Partial(*one),
            many if many.len() > MAX_PARTS => RangeDecision::Full,
            many => RangeDecision::Multi(many.to_vec()),
        },
    }
}

/// `ranges` in request order if no two overlap or touch, else merged in ascending order.
fn coalesce(ranges: Vec<ByteRange>) -> Vec<ByteRange> {
    let mut sorted = ranges.clone();
    sorted.sort_by_key(|r| r.start);
    if sorted.windows(2).all(|w| w[0].end < w[1].start) {
        return ranges;
    }
    let mut out: Vec<ByteRange> = Vec::with_capacity(sorted.len());
    for r in sorted {
        match out.last_mut() {
            Some(last) if r.start <= last.end => last.end = last.end.max(r.end),
            _ => out.push(r),
        }
    }
    out
}

/// The part of the object `spec` selects; `None` if it is unsatisfiable.
fn resolve(spec: Spec, size: u64) -> Option<ByteRange> {
    match spec {
        Spec::FromTo(a, b) if a < size => Some(ByteRange::new(a, b.saturating_add(1).min(size))),
        Spec::From(a) if a < size => Some(ByteRange::new(a, size)),
        Spec::Suffix(n) if n > 0 && size > 0 => Some(ByteRange::new(size.saturating_sub(n), size)),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use RangeDecision::*;

    fn r(a: u64, b: u64) -> ByteRange {
        ByteRange::new(a, b)
    }

    #[test]
    fn table() {
        let n = 1000;
        let many: String = "bytes=".to_owned()
            + &(0..17)
                .map(|i| format!("{}-{}", i * 10, i * 10 + 1))
                .collect::<Vec<_>>()
                .join(",");
        let sixteen: String = "bytes=".to_owned()
            + &(0..16)
                .map(|i| format!("{}-{}", i * 10, i * 10 + 1))
                .collect::<Vec<_>>()
                .join(",");
        let cases: Vec<(&str, RangeDecision)> = vec![
            ("bytes=0-0", Partial(r(0, 1))),
            ("bytes=0-999", Partial(r(0, 1000))),
            ("bytes=0-5000", Partial(r(0, 1000))),
            ("bytes=500-", Partial(r(500, 1000))),
            ("bytes=-100", Partial(r(900, 1000))),
            ("bytes=-5000", Partial(r(0, 1000))),
            ("bytes=999-999", Partial(r(999, 1000))),
            ("Bytes=1-2", Partial(r(1, 3))),
            (" bytes=1-2", Partial(r(1, 3))),
            ("bytes=1000-", Unsatisfiable),
            ("bytes=1000-1001", Unsatisfiable),
            ("bytes=-0", Unsatisfiable),
            // Invalid syntax: rejected (see the module docs).
            ("bytes=5-1", Unsatisfiable),
            ("bytes=100-99", Unsatisfiable),
            ("bytes=abc", Unsatisfiable),
            ("bytes=0-1,abc", Unsatisfiable),
            ("bytes=-", Unsatisfiable),
            ("bytes=1-2-3", Unsatisfiable),
            // Ignored.
            ("items=0-1", Full),
            ("bytes=", Full),
            ("bytes", Full),
            ("", Full),
            // Several ranges.
            ("bytes=0-1,5-6", Multi(vec![r(0, 2), r(5, 7)])),
            ("bytes=5-6,0-1", Multi(vec![r(5, 7), r(0, 2)])),
            (
                "bytes=0-1, 5-6, -2",
                Multi(vec![r(0, 2), r(5, 7), r(998, 1000)]),
            ),
            ("bytes=0-1,1-2", Partial(r(0, 3))),
            ("bytes=0-1,2-3", Partial(r(0, 4))),
            ("bytes=5-6,0-1,1-3", Multi(vec![r(0, 4), r(5, 7)])),
            ("bytes=0-1,2000-", Partial(r(0, 2))),
            ("bytes=2000-,3000-", Unsatisfiable),
            ("bytes=0-999,0-999", Full),
            ("bytes=0-600,400-999", Full),
            ("bytes=0-500,400-700", Partial(r(0, 701))),
            (&many, Full),
        ];
        for (h, want) in &cases {
            assert_eq!(parse_range_header(h, n), *want, "{h}");
        }
        match parse_range_header(&sixteen, n) {
            Multi(v) => assert_eq!(v.len(), MAX_PARTS),
            other => panic!("16 ranges: {other:?}"),
        }
        assert_eq!(parse_range_header("bytes=0-", 0), Unsatisfiable);
    }

    #[test]
    fn content_range() {
        assert_eq!(ByteRange::new(0, 10).content_range(100), "bytes 0-9/100");
    }
}
