//! The proxy's framing checks (`Host`, request content) on arbitrary header sets:
//! byte 0 picks the method, byte 1 the version, the rest is `name:value` lines.
//!
//! Properties: an accepted request has at most one `Host` (exactly one on HTTP/1.1),
//! a valid host[:port] without user info if not empty, no `Transfer-Encoding`, and
//! for GET, HEAD and CONNECT declares no content.
#![no_main]

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Version};
use libfuzzer_sys::fuzz_target;
use shoal_agent::proxy::fuzzing::{check_framing, declares_content};

fuzz_target!(|data: &[u8]| {
    let [m, v, rest @ ..] = data else {
        return;
    };
    let method = match m % 5 {
        0 => Method::GET,
        1 => Method::HEAD,
        2 => Method::CONNECT,
        3 => Method::POST,
        _ => Method::OPTIONS,
    };
    let version = match v % 4 {
        0 => Version::HTTP_09,
        1 => Version::HTTP_10,
        2 => Version::HTTP_11,
        _ => Version::HTTP_2,
    };
    let mut h = HeaderMap::new();
    for line in rest.split(|&b| b == b'\n') {
        let Some(colon) = line.iter().position(|&b| b == b':') else {
            continue;
        };
        let (name, value) = (&line[..colon], &line[colon + 1..]);
        if let (Ok(n), Ok(v)) = (HeaderName::from_bytes(name), HeaderValue::from_bytes(value)) {
            h.append(n, v);
        }
    }
    if check_framing(&method, version, &h).is_err() {
        return;
    }
    let hosts: Vec<_> = h.get_all(header::HOST).iter().collect();
    assert!(hosts.len() <= 1, "{hosts:?}");
    if version >= Version::HTTP_11 {
        assert_eq!(hosts.len(), 1);
    }
    if let Some(host) = hosts.first().filter(|v| !v.is_empty()) {
        let a: http::uri::Authority = host
            .to_str()
            .expect("ascii host")
            .parse()
            .expect("authority");
        assert!(!a.host().is_empty() && !a.as_str().contains('@'), "{a}");
    }
    assert!(!h.contains_key(header::TRANSFER_ENCODING));
    if matches!(method, Method::GET | Method::HEAD | Method::CONNECT) {
        assert!(
            !declares_content(&h),
            "{method} with content accepted: {h:?}"
        );
    }
});
