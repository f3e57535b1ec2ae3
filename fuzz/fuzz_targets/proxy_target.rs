//! The proxy's request-target handling: `normalize_path`, `mirror_path` and the whole
//! resolution of a request-target (absolute-form or `/m/NAME/...`) to the origin URL
//! (the first byte picks which).
//!
//! Properties: an accepted mirror path starts with the mirror's prefix and has no dot
//! segment; normalisation is idempotent; a resolved target is an absolute URL, resolves
//! to itself again, and for a mirror request lies under that mirror's upstream.
#![no_main]

use std::collections::HashMap;
use std::sync::OnceLock;

use http::Uri;
use libfuzzer_sys::fuzz_target;
use shoal_agent::proxy::fuzzing::{mirror_path, normalize_path, request_target};

const MIRRORS: [(&str, &str, &str); 3] = [
    // name, upstream, what every resolved URL of it starts with
    (
        "deb",
        "http://deb.example/debian/",
        "http://deb.example/debian/",
    ),
    ("r", "https://R.Example:8443", "https://r.example:8443/"),
    (
        "npm",
        "https://registry.example/a/b",
        "https://registry.example/a/b/",
    ),
];

fn mirrors() -> &'static HashMap<String, Uri> {
    static M: OnceLock<HashMap<String, Uri>> = OnceLock::new();
    M.get_or_init(|| {
        MIRRORS
            .iter()
            .map(|(n, u, _)| ((*n).to_owned(), u.parse().expect("fixed mirror URL")))
            .collect()
    })
}

fn no_dot_segments(p: &str) {
    assert!(p.split('/').all(|s| s != "." && s != ".."), "{p}");
}

fuzz_target!(|data: &[u8]| {
    let Some((&which, rest)) = data.split_first() else {
        return;
    };
    match which % 3 {
        0 => {
            let Ok(tail) = std::str::from_utf8(rest) else {
                return;
            };
            if let Ok(p) = mirror_path("/prefix", tail) {
                assert!(p.starts_with("/prefix/"), "{tail:?} -> {p}");
                no_dot_segments(&p);
                assert_eq!(normalize_path(&p).as_deref(), Ok(p.as_str()), "{tail:?}");
            }
        }
        1 => {
            let Ok(raw) = std::str::from_utf8(rest) else {
                return;
            };
            if let Ok(p) = normalize_path(raw) {
                assert!(p.starts_with('/'), "{raw:?} -> {p}");
                no_dot_segments(&p);
                assert_eq!(normalize_path(&p).as_deref(), Ok(p.as_str()), "{raw:?}");
            }
        }
        _ => {
            let Ok(uri) = Uri::try_from(rest) else {
                return;
            };
            let Ok(url) = request_target(mirrors(), &uri) else {
                return;
            };
            assert!(
                url.scheme().is_some() && url.host().is_some(),
                "{uri} -> {url}"
            );
            no_dot_segments(url.path());
            assert_eq!(request_target(mirrors(), &url).as_ref(), Ok(&url), "{uri}");
            if uri.scheme().is_none() {
                let name = uri
                    .path()
                    .strip_prefix("/m/")
                    .and_then(|r| r.split('/').next());
                let (_, _, under) = MIRRORS
                    .iter()
                    .find(|(n, _, _)| Some(*n) == name)
                    .expect("only configured mirrors resolve");
                assert!(url.to_string().starts_with(under), "{uri} -> {url}");
            }
        }
    }
});
