//! Stale-if-error (RFC 5861): when revalidating a stale object fails on the origin's
//! side (a 5xx, a timeout, a refused or broken connection), the stale copy is served
//! for a while instead of the error.
//!
//! The window is counted from the end of freshness (`validated_at` + the origin's
//! lifetime or `cache.freshness`, [`ObjectMeta::lifetime`])
//! and is `cache.stale_if_error`, or the origin's own `Cache-Control:
//! stale-if-error=N` when the stored response carried one. `cache.stale_if_error =
//! 0s` turns the feature off whatever the origin says. Never served stale: responses
//! the origin marked `must-revalidate`, `proxy-revalidate`, `s-maxage` or `no-cache`.
//!
//! Non-goals: the client's own `max-stale` / `stale-if-error` request directives are
//! not read (a client's `no-cache` or `max-age=0` asks for revalidation, which was
//! attempted); `stale-while-revalidate` is not implemented; errors that are ours or
//! the client's (egress refusal, bad URL) are passed on, never hidden.

use std::time::{Duration, SystemTime};

use http::StatusCode;

use super::ObjectMeta;
use super::cache_control::Directives;
use super::meta::unix_ms;
use crate::origin::OriginError;

/// Why revalidation failed in a way that may be answered from the stale copy.
#[derive(Debug)]
pub(crate) enum Failure<'a> {
    Error(&'a OriginError),
    Status(StatusCode),
}

impl Failure<'_> {
    /// Whether the origin's side failed: a 5xx, an unreachable origin or a timeout.
    fn is_origin_fault(&self) -> bool {
        match self {
            Failure::Status(s) => s.is_server_error(),
            Failure::Error(e) => matches!(
                e,
                OriginError::Upstream { .. } | OriginError::Timeout { .. }
            ),
        }
    }
}

impl std::fmt::Display for Failure<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Failure::Error(e) => e.fmt(f),
            Failure::Status(s) => write!(f, "origin answered {s}"),
        }
    }
}

impl ObjectMeta {
    /// Seconds since the origin last confirmed this version (the `Age` header).
    pub fn age_secs(&self, now: SystemTime) -> u64 {
        unix_ms(now).saturating_sub(self.validated_at_ms) / 1000
    }

    /// Whether this stale version may be served because revalidating it failed
    /// with `failure`. `freshness` is `cache.freshness`, `window` is
    /// `cache.stale_if_error`.
    pub(crate) fn serve_stale(
        &self,
        failure: &Failure<'_>,
        now: SystemTime,
        freshness: Duration,
        window: Duration,
    ) -> bool {
        if window.is_zero() || !failure.is_origin_fault() {
            return false;
        }
        let d = Directives::parse(&self.repr.headers);
        if d.forbids_stale() {
            return false;
        }
        let window_ms = d
            .stale_if_error
            .map_or(window.as_millis() as u64, |s| s.saturating_mul(1000));
        let stale_since = self
            .validated_at_ms
            .saturating_add(self.lifetime(freshness).as_millis() as u64);
        unix_ms(now).saturating_sub(stale_since) <= window_ms
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::object::Repr;
    use shoal_proto::{Layout, Manifest, ObjectKey, Validator};

    fn meta(cc: Option<&str>, validated_secs_ago: u64, now: SystemTime) -> ObjectMeta {
        let layout = Layout::new(10, 16384).unwrap();
        let v = Validator::from_headers(Some("\"e\""), None).unwrap();
        let key = ObjectKey::versioned("http://o/x", &v, 10).unwrap();
        let ids = vec![shoal_proto::ChunkId::of(b"0123456789")];
        let mut repr = Repr::default();
        if let Some(cc) = cc {
            repr.headers.push(("cache-control".into(), cc.into()));
        }
        ObjectMeta {
            url: "http://o/x".into(),
            manifest: Manifest::new(key, layout, ids, None).unwrap(),
            repr,
            validated_at_ms: unix_ms(now) - validated_secs_ago * 1000,
            immutable: false,
        }
    }

    #[test]
    fn window_directives_and_faults() {
        let now = SystemTime::now();
        let fresh = Duration::from_secs(60);
        let win = Duration::from_secs(300);
        let s503 = Failure::Status(StatusCode::SERVICE_UNAVAILABLE);
        let timeout = OriginError::Timeout {
            host: "o".into(),
            after: Duration::from_secs(1),
        };
        let denied = OriginError::BadUrl("x".into(), "no host");
        // 2 min stale (3 min since validation, 1 min fresh): within 5 min.
        let m = meta(None, 180, now);
        assert!(m.serve_stale(&s503, now, fresh, win));
        assert!(m.serve_stale(&Failure::Error(&timeout), now, fresh, win));
        assert!(!m.serve_stale(&Failure::Error(&denied), now, fresh, win));
        assert!(!m.serve_stale(&Failure::Status(StatusCode::NOT_FOUND), now, fresh, win));
        assert!(!m.serve_stale(&s503, now, fresh, Duration::ZERO), "off");
        assert!(
            !meta(None, 400, now).serve_stale(&s503, now, fresh, win),
            "past the window"
        );
        for cc in ["must-revalidate", "max-age=5, Proxy-Revalidate", "no-cache"] {
            assert!(
                !meta(Some(cc), 180, now).serve_stale(&s503, now, fresh, win),
                "{cc}"
            );
        }
        // The origin's window overrides ours, both ways.
        assert!(
            !meta(Some("max-age=60, stale-if-error=30"), 180, now)
                .serve_stale(&s503, now, fresh, win)
        );
        assert!(meta(Some("stale-if-error=3600"), 1000, now).serve_stale(&s503, now, fresh, win));
        assert_eq!(m.age_secs(now), 180);
    }
}
