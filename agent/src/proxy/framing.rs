//! Request framing checks, made before anything else (RFC 9112 §3.2, §6.3; RFC 9110
//! §9.3.1): exactly one valid `Host` on HTTP/1.1, and no request content.
//!
//! hyper's server already answers 400 to a malformed head, to a `Transfer-Encoding`
//! that does not end in `chunked` or arrives on HTTP/1.0, and to differing
//! `Content-Length`s. When `Content-Length` and `Transfer-Encoding` come together it
//! drops the `Content-Length` and keeps reading chunked, so the pair cannot be seen
//! here: every request with `Transfer-Encoding` is refused instead (the agent relays
//! only GET and HEAD, which carry no content).
//!
//! Request content is refused, not streamed upstream: GET content has no defined
//! semantics (RFC 9110 §9.3.1), none of the clients the agent serves sends any, and a
//! body forwarded without its framing (or framing without its body) desynchronises
//! the pooled origin connection. A refused request's connection is closed after the
//! answer, since its unread body would otherwise be parsed as the next request.

use http::header::{self, HeaderMap};
use http::{Method, Version};

/// Why a request's framing was refused: the client's fault, answered with 400 and
/// `Connection: close`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FramingError {
    #[error("an HTTP/1.1 request needs a Host header (RFC 9112 §3.2)")]
    NoHost,
    #[error("{0} Host headers; exactly one is allowed (RFC 9112 §3.2)")]
    ManyHosts(usize),
    #[error("Host header {0:?} is not host[:port] (RFC 9112 §3.2)")]
    BadHost(String),
    #[error(
        "request content with Transfer-Encoding is not accepted (and with Content-Length \
         too the framing is ambiguous, RFC 9112 §6.3)"
    )]
    TransferEncoding,
    #[error(
        "{method} with {len} bytes of content is not proxied: GET content has no defined \
         semantics (RFC 9110 §9.3.1); send the request without a body"
    )]
    Content { method: Method, len: u64 },
}

/// Checks `Host` and content framing. Methods other than GET, HEAD and CONNECT with a
/// `Content-Length` pass here and are refused later (501).
pub fn check(method: &Method, version: Version, h: &HeaderMap) -> Result<(), FramingError> {
    let hosts: Vec<_> = h.get_all(header::HOST).iter().collect();
    match hosts.as_slice() {
        [] if version >= Version::HTTP_11 => return Err(FramingError::NoHost),
        [] => {}
        [v] => {
            let ok = v.is_empty()
                || v.to_str()
                    .ok()
                    .and_then(|s| s.parse::<http::uri::Authority>().ok())
                    .is_some_and(|a| !a.host().is_empty() && !a.as_str().contains('@'));
            if !ok {
                let shown = String::from_utf8_lossy(v.as_bytes()).into_owned();
                return Err(FramingError::BadHost(shown));
            }
        }
        many => return Err(FramingError::ManyHosts(many.len())),
    }
    if h.contains_key(header::TRANSFER_ENCODING) {
        return Err(FramingError::TransferEncoding);
    }
    let len = content_length(h);
    if len > 0 && matches!(*method, Method::GET | Method::HEAD | Method::CONNECT) {
        return Err(FramingError::Content {
            method: method.clone(),
            len,
        });
    }
    Ok(())
}

/// Whether the request declares content; its connection is not reused.
pub fn declares_content(h: &HeaderMap) -> bool {
    h.contains_key(header::TRANSFER_ENCODING) || content_length(h) > 0
}

/// The declared `Content-Length` (hyper has already refused invalid ones), 0 if none.
fn content_length(h: &HeaderMap) -> u64 {
    h.get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use http::HeaderValue;

    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    #[test]
    fn host_rules() {
        let get = |v, p: &[(&str, &str)]| check(&Method::GET, v, &headers(p));
        assert_eq!(get(Version::HTTP_11, &[("host", "a:80")]), Ok(()));
        assert_eq!(get(Version::HTTP_11, &[("host", "[::1]:8080")]), Ok(()));
        assert_eq!(get(Version::HTTP_11, &[("host", "")]), Ok(()));
        assert_eq!(get(Version::HTTP_10, &[]), Ok(()));
        assert_eq!(get(Version::HTTP_11, &[]), Err(FramingError::NoHost));
        assert_eq!(
            get(Version::HTTP_11, &[("host", "a"), ("host", "b")]),
            Err(FramingError::ManyHosts(2))
        );
        assert_eq!(
            get(Version::HTTP_10, &[("host", "a"), ("host", "a")]),
            Err(FramingError::ManyHosts(2))
        );
        for bad in ["a, b", "a/b", "u@a", "a b", ":80"] {
            assert_eq!(
                get(Version::HTTP_11, &[("host", bad)]),
                Err(FramingError::BadHost(bad.into())),
                "{bad}"
            );
        }
    }

    #[test]
    fn content_refused_on_get_head_connect() {
        let h = |p: &[(&str, &str)]| headers(&[&[("host", "a")], p].concat());
        let cl40 = h(&[("content-length", "40")]);
        for m in [Method::GET, Method::HEAD, Method::CONNECT] {
            assert_eq!(
                check(&m, Version::HTTP_11, &cl40),
                Err(FramingError::Content {
                    method: m.clone(),
                    len: 40
                })
            );
        }
        assert_eq!(check(&Method::POST, Version::HTTP_11, &cl40), Ok(()));
        let cl0 = h(&[("content-length", "0")]);
        assert_eq!(check(&Method::GET, Version::HTTP_11, &cl0), Ok(()));
        assert!(!declares_content(&cl0));
        assert!(declares_content(&cl40));
        let te = h(&[("transfer-encoding", "chunked")]);
        assert_eq!(
            check(&Method::GET, Version::HTTP_11, &te),
            Err(FramingError::TransferEncoding)
        );
        assert_eq!(
            check(&Method::POST, Version::HTTP_11, &te),
            Err(FramingError::TransferEncoding)
        );
        assert!(declares_content(&te));
    }
}
