//! Following an origin's redirects for registry mirrors (a registry sends blob
//! downloads to its storage: S3, a CDN), without I/O: where the next hop goes and
//! which request headers it may carry. The egress policy is applied to every hop by
//! the origin client itself (each hop is one [`super::OriginClient::send`]).
//!
//! `301`, `302`, `303`, `307` and `308` with one `Location` are followed (relative
//! references resolved against the current URL, RFC 9110 §10.2.2); the method stays
//! `GET`/`HEAD` (the agent sends no others). `Authorization` is dropped as soon as a
//! hop leaves the first URL's scheme, host and port, and never comes back, as curl and
//! containerd do: a signed storage URL carries its own authority in the query.
//!
//! Cannot: follow `Refresh` headers or HTML redirects, or a `Location` that is not an
//! `http`/`https` URL (refused as an origin error).

use http::header::{self, HeaderMap};
use http::{StatusCode, Uri};

/// Most redirects followed for one request.
pub const MAX_HOPS: usize = 5;

/// Why a redirect could not be followed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RedirectError {
    #[error("redirect {0} without a usable Location")]
    NoLocation(StatusCode),
    #[error("redirect to {0:?}: only http:// and https:// URLs are followed")]
    Scheme(String),
    #[error("more than {MAX_HOPS} redirects")]
    TooMany,
}

/// Whether `status` is a redirect the agent follows.
pub fn is_redirect(status: StatusCode) -> bool {
    matches!(status.as_u16(), 301 | 302 | 303 | 307 | 308)
}

/// The URL a redirect answer (`status`, `headers`) to a request for `current`
/// sends the next request to; `Ok(None)` when it is not a redirect.
pub fn next_hop(
    current: &Uri,
    status: StatusCode,
    headers: &HeaderMap,
) -> Result<Option<Uri>, RedirectError> {
    if !is_redirect(status) {
        return Ok(None);
    }
    let mut all = headers.get_all(header::LOCATION).iter();
    let (Some(loc), None) = (all.next(), all.next()) else {
        return Err(RedirectError::NoLocation(status));
    };
    let loc = loc
        .to_str()
        .map_err(|_| RedirectError::NoLocation(status))?
        .trim();
    if loc.is_empty() {
        return Err(RedirectError::NoLocation(status));
    }
    if let Some((scheme, _)) = loc.split_once("://")
        && !scheme.eq_ignore_ascii_case("http")
        && !scheme.eq_ignore_ascii_case("https")
    {
        return Err(RedirectError::Scheme(loc.to_owned()));
    }
    let next = resolve(current, loc).ok_or(RedirectError::NoLocation(status))?;
    match next.scheme_str() {
        Some("http" | "https") if next.host().is_some() => Ok(Some(next)),
        _ => Err(RedirectError::Scheme(loc.to_owned())),
    }
}

/// Whether `a` and `b` are the same origin (scheme, host, port) for credentials.
pub fn same_origin(a: &Uri, b: &Uri) -> bool {
    let port = |u: &Uri| {
        u.port_u16().or(match u.scheme_str() {
            Some("https") => Some(443),
            Some("http") => Some(80),
            _ => None,
        })
    };
    a.scheme_str() == b.scheme_str()
        && a.host().map(str::to_ascii_lowercase) == b.host().map(str::to_ascii_lowercase)
        && port(a) == port(b)
}

/// `loc` (absolute, scheme-relative `//host/p`, absolute-path `/p` or, rarely,
/// relative `p`) against `base`. The fragment is dropped.
fn resolve(base: &Uri, loc: &str) -> Option<Uri> {
    let loc = loc.split('#').next().unwrap_or(loc);
    if loc.contains("://") {
        return loc.parse().ok();
    }
    let scheme = base.scheme_str()?;
    if let Some(rest) = loc.strip_prefix("//") {
        return format!("{scheme}://{rest}").parse().ok();
    }
    let auth = base.authority()?.as_str();
    if loc.starts_with('/') {
        return format!("{scheme}://{auth}{loc}").parse().ok();
    }
    let dir = base
        .path()
        .rsplit_once('/')
        .map_or("", |(d, _)| d)
        .to_owned();
    format!("{scheme}://{auth}{dir}/{loc}").parse().ok()
}

#[cfg(test)]
mod tests {
    use http::HeaderValue;

    use super::*;

    fn loc(v: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(header::LOCATION, HeaderValue::from_str(v).unwrap());
        h
    }

    #[test]
    fn hops() {
        let cur: Uri = "https://reg.example/v2/a/blobs/sha256:x".parse().unwrap();
        let hop = |s: u16, l: &str| {
            next_hop(&cur, StatusCode::from_u16(s).unwrap(), &loc(l))
                .map(|u| u.map(|u| u.to_string()))
        };
        assert_eq!(
            hop(307, "https://s3.example/b/o?X-Sig=1")
                .unwrap()
                .as_deref(),
            Some("https://s3.example/b/o?X-Sig=1")
        );
        assert_eq!(
            hop(302, "/other/p?q").unwrap().as_deref(),
            Some("https://reg.example/other/p?q")
        );
        assert_eq!(
            hop(303, "//cdn.example/x").unwrap().as_deref(),
            Some("https://cdn.example/x")
        );
        assert_eq!(
            hop(301, "c#frag").unwrap().as_deref(),
            Some("https://reg.example/v2/a/blobs/c")
        );
        assert_eq!(hop(200, "https://x/").unwrap(), None);
        assert_eq!(hop(304, "https://x/").unwrap(), None);
        assert!(matches!(
            hop(307, "file:///etc/passwd"),
            Err(RedirectError::Scheme(_))
        ));
        assert!(matches!(
            hop(307, "ftp://x/y"),
            Err(RedirectError::Scheme(_))
        ));
        assert_eq!(
            next_hop(&cur, StatusCode::TEMPORARY_REDIRECT, &HeaderMap::new()),
            Err(RedirectError::NoLocation(StatusCode::TEMPORARY_REDIRECT))
        );
        let mut two = loc("https://a/");
        two.append(header::LOCATION, HeaderValue::from_static("https://b/"));
        assert!(next_hop(&cur, StatusCode::FOUND, &two).is_err());
    }

    #[test]
    fn origins() {
        let u = |s: &str| s.parse::<Uri>().unwrap();
        assert!(same_origin(
            &u("https://r.example/a"),
            &u("https://R.example:443/b")
        ));
        assert!(!same_origin(
            &u("https://r.example/a"),
            &u("http://r.example/a")
        ));
        assert!(!same_origin(
            &u("https://r.example/a"),
            &u("https://r.example:8443/a")
        ));
        assert!(!same_origin(
            &u("https://r.example/a"),
            &u("https://s3.example/a")
        ));
    }
}
