//! HTTP byte ranges (RFC 9110 §14).
//!
//! [`parse_range_header`] turns a `Range` header into a decision for an object of known
//! size: serve it whole, serve one range (206), or refuse (416). Multi-range requests
//! are answered with the whole object, which RFC 9110 allows; a header we cannot parse
//! or a unit other than `bytes` is ignored, as the RFC requires.

use std::fmt;

/// A half-open byte range `[start, end)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ByteRange {
    pub start: u64,
    pub end: u64,
}

/// What to do with a request's `Range` header for an object of a given size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RangeDecision {
    /// No usable range: answer 200 with the whole object.
    Full,
    /// Answer 206 with this range (never empty).
    Partial(ByteRange),
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
pub fn parse_range_header(header: &str, size: u64) -> RangeDecision {
    let Some(rest) = header.trim().strip_prefix("bytes=") else {
        return RangeDecision::Full;
    };
    let specs: Option<Vec<Spec>> = rest
        .split(',')
        .filter(|p| !p.trim().is_empty())
        .map(parse_spec)
        .collect();
    let Some(specs) = specs else {
        return RangeDecision::Full;
    };
    match specs.as_slice() {
        [] => RangeDecision::Full,
        [one] => resolve(*one, size),
        many => {
            // Several ranges: if none is satisfiable the answer is 416, else the whole body.
            if many
                .iter()
                .all(|s| resolve(*s, size) == RangeDecision::Unsatisfiable)
            {
                RangeDecision::Unsatisfiable
            } else {
                RangeDecision::Full
            }
        }
    }
}

fn resolve(spec: Spec, size: u64) -> RangeDecision {
    let r = match spec {
        Spec::FromTo(a, b) if a < size => ByteRange::new(a, b.saturating_add(1).min(size)),
        Spec::From(a) if a < size => ByteRange::new(a, size),
        Spec::Suffix(n) if n > 0 && size > 0 => ByteRange::new(size.saturating_sub(n), size),
        _ => return RangeDecision::Unsatisfiable,
    };
    RangeDecision::Partial(r)
}

#[cfg(test)]
mod tests {
    use super::*;
    use RangeDecision::*;

    #[test]
    fn table() {
        let n = 1000;
        let cases: &[(&str, RangeDecision)] = &[
            ("bytes=0-0", Partial(ByteRange::new(0, 1))),
            ("bytes=0-999", Partial(ByteRange::new(0, 1000))),
            ("bytes=0-5000", Partial(ByteRange::new(0, 1000))),
            ("bytes=500-", Partial(ByteRange::new(500, 1000))),
            ("bytes=-100", Partial(ByteRange::new(900, 1000))),
            ("bytes=-5000", Partial(ByteRange::new(0, 1000))),
            ("bytes=999-999", Partial(ByteRange::new(999, 1000))),
            ("bytes=1000-", Unsatisfiable),
            ("bytes=1000-1001", Unsatisfiable),
            ("bytes=-0", Unsatisfiable),
            ("bytes=5-1", Full),
            ("bytes=abc", Full),
            ("items=0-1", Full),
            ("bytes=", Full),
            ("bytes=0-1,5-6", Full),
            ("bytes=2000-,3000-", Unsatisfiable),
            (" bytes=1-2", Partial(ByteRange::new(1, 3))),
        ];
        for (h, want) in cases {
            assert_eq!(parse_range_header(h, n), *want, "{h}");
        }
        assert_eq!(parse_range_header("bytes=0-", 0), Unsatisfiable);
    }

    #[test]
    fn content_range() {
        assert_eq!(ByteRange::new(0, 10).content_range(100), "bytes 0-9/100");
    }
}
