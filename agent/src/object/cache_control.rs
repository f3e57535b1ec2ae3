//! The stored `Cache-Control` of a cached version, read as a shared cache reads it
//! (RFC 9111 §5.2.2): how long the origin lets it be served without asking
//! ([`Directives::lifetime`]) and whether it may ever be served stale.
//!
//! Not read: `Expires` and the origin's `Age` (not stored; a response with
//! `Expires` but no `max-age` gets `cache.freshness`), and the qualified form
//! `no-cache="field"` (it only concerns those fields, which are not replayed).

use std::time::Duration;

/// RFC 9111 §1.2.2: a delta-seconds value too large to represent is taken as 2^31.
const DELTA_MAX: u64 = 2_147_483_648;

/// The directives of the stored `Cache-Control` header(s) that a shared cache obeys.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Directives {
    /// Bare `no-cache`: every use must be validated with the origin first.
    pub no_cache: bool,
    /// `must-revalidate` or `proxy-revalidate`.
    pub must_revalidate: bool,
    /// `max-age=N`; `Some(0)` when its value is not a number (RFC 9111 §4.2.1:
    /// invalid freshness information makes a response stale).
    pub max_age: Option<u64>,
    /// `s-maxage=N`, which wins over `max-age` in a shared cache.
    pub s_maxage: Option<u64>,
    /// `stale-if-error=N` (RFC 5861).
    pub stale_if_error: Option<u64>,
}

impl Directives {
    /// Reads every `Cache-Control` among stored `(name, value)` headers; the first
    /// occurrence of a directive wins.
    pub fn parse(headers: &[(String, String)]) -> Self {
        let mut d = Self::default();
        let values = headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case("cache-control"))
            .flat_map(|(_, v)| v.split(','));
        for dir in values {
            let (name, arg) = match dir.split_once('=') {
                Some((n, a)) => (n.trim(), Some(a.trim().trim_matches('"'))),
                None => (dir.trim(), None),
            };
            // Read on every fresh-or-not decision: compared in place, not lowered.
            let is = |n: &str| name.eq_ignore_ascii_case(n);
            if is("no-cache") && arg.is_none() {
                d.no_cache = true;
            } else if is("must-revalidate") || is("proxy-revalidate") {
                d.must_revalidate = true;
            } else if is("max-age") {
                d.max_age = d.max_age.or(Some(arg.map_or(0, delta_seconds)));
            } else if is("s-maxage") {
                d.s_maxage = d.s_maxage.or(Some(arg.map_or(0, delta_seconds)));
            } else if is("stale-if-error")
                && let Some(n) = arg.filter(|a| is_digits(a))
            {
                d.stale_if_error = d.stale_if_error.or(Some(delta_seconds(n)));
            }
        }
        d
    }

    /// The freshness lifetime the origin gave (RFC 9111 §4.2.1): zero for
    /// `no-cache`, else `s-maxage`, else `max-age`; `None` when it gave none (the
    /// agent's `cache.freshness` applies).
    pub fn lifetime(&self) -> Option<Duration> {
        if self.no_cache {
            return Some(Duration::ZERO);
        }
        self.s_maxage.or(self.max_age).map(Duration::from_secs)
    }

    /// Whether the origin forbids serving it stale: `no-cache`, `must-revalidate`,
    /// `proxy-revalidate`, or `s-maxage` (which implies `proxy-revalidate`, RFC 9111
    /// §5.2.2.10).
    pub fn forbids_stale(&self) -> bool {
        self.no_cache || self.must_revalidate || self.s_maxage.is_some()
    }
}

fn is_digits(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit())
}

/// A delta-seconds value: 0 when it is not one (stale), capped at 2^31.
fn delta_seconds(s: &str) -> u64 {
    if !is_digits(s) {
        return 0;
    }
    s.parse::<u64>().map_or(DELTA_MAX, |n| n.min(DELTA_MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cc(values: &[&str]) -> Directives {
        let h: Vec<_> = values
            .iter()
            .map(|v| ("Cache-Control".to_owned(), (*v).to_owned()))
            .collect();
        Directives::parse(&h)
    }

    #[test]
    fn lifetimes_as_a_shared_cache_reads_them() {
        let secs = |n| Some(Duration::from_secs(n));
        assert_eq!(cc(&[]).lifetime(), None);
        assert_eq!(cc(&["public"]).lifetime(), None);
        assert_eq!(cc(&["max-age=300"]).lifetime(), secs(300));
        assert_eq!(cc(&["max-age=\"300\""]).lifetime(), secs(300));
        assert_eq!(cc(&["max-age=300, s-maxage=10"]).lifetime(), secs(10));
        assert_eq!(cc(&["s-maxage=0", "max-age=600"]).lifetime(), secs(0));
        assert_eq!(cc(&["max-age=600, no-cache"]).lifetime(), secs(0));
        assert_eq!(cc(&["No-Cache"]).lifetime(), secs(0));
        assert_eq!(cc(&["no-cache=\"set-cookie\""]).lifetime(), None);
        assert_eq!(cc(&["max-age=0"]).lifetime(), secs(0));
        assert_eq!(cc(&["max-age=abc"]).lifetime(), secs(0), "invalid: stale");
        assert_eq!(cc(&["max-age=-5"]).lifetime(), secs(0));
        assert_eq!(cc(&["max-age"]).lifetime(), secs(0));
        assert_eq!(
            cc(&["max-age=60", "max-age=5"]).lifetime(),
            secs(60),
            "first wins"
        );
        assert_eq!(
            cc(&["max-age=99999999999999999999999"]).lifetime(),
            secs(DELTA_MAX)
        );
    }

    #[test]
    fn what_forbids_serving_stale() {
        for v in [
            "no-cache",
            "must-revalidate",
            "Proxy-Revalidate",
            "s-maxage=60",
        ] {
            assert!(cc(&[v]).forbids_stale(), "{v}");
        }
        for v in [
            "max-age=60",
            "public",
            "no-cache=\"x\"",
            "stale-if-error=30",
        ] {
            assert!(!cc(&[v]).forbids_stale(), "{v}");
        }
        assert_eq!(cc(&["stale-if-error=30"]).stale_if_error, Some(30));
        assert_eq!(cc(&["stale-if-error=x"]).stale_if_error, None);
    }
}
