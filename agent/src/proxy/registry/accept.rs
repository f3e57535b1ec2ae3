//! Whether a cached manifest's `Content-Type` is one the client's `Accept` allows,
//! without I/O. Registries pick the manifest representation by `Accept` (distribution
//! answers `404` for an OCI manifest to a client that does not accept OCI types), so a
//! cached copy is served only to clients that would have been given it.
//!
//! Cannot: rank by `q` values (a registry returns the one representation it has;
//! the only question is whether it is acceptable). `q=0` excludes a type.

use http::HeaderMap;
use http::header;

/// Whether a response of `content_type` satisfies the `Accept` fields of `h`: yes when
/// the client sent none (or only empty ones), or one of its media ranges (`*/*`,
/// `type/*`, `type/subtype`, parameters other than `q` ignored) matches with `q` above
/// zero. A missing `content_type` is acceptable only without `Accept`.
pub fn acceptable(h: &HeaderMap, content_type: Option<&str>) -> bool {
    let ranges: Vec<&str> = h
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|r| !r.is_empty())
        .collect();
    if ranges.is_empty() {
        return true;
    }
    let Some(ct) = content_type else {
        return false;
    };
    let essence = |s: &str| {
        s.split(';')
            .next()
            .unwrap_or("")
            .trim()
            .to_ascii_lowercase()
    };
    let ct = essence(ct);
    let (ct_type, _) = ct.split_once('/').unwrap_or((ct.as_str(), ""));
    ranges.iter().any(|r| {
        let zero = r.split(';').skip(1).any(|p| {
            p.split_once('=').is_some_and(|(k, v)| {
                k.trim().eq_ignore_ascii_case("q")
                    && v.trim().parse::<f32>().is_ok_and(|q| q <= 0.0)
            })
        });
        if zero {
            return false;
        }
        let m = essence(r);
        m == "*/*" || m == ct || m.strip_suffix("/*").is_some_and(|t| t == ct_type)
    })
}

#[cfg(test)]
mod tests {
    use http::HeaderValue;

    use super::*;

    const OCI: &str = "application/vnd.oci.image.manifest.v1+json";
    const DOCKER: &str = "application/vnd.docker.distribution.manifest.v2+json";

    fn accept(vals: &[&'static str]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for v in vals {
            h.append(header::ACCEPT, HeaderValue::from_static(v));
        }
        h
    }

    #[test]
    fn media_ranges() {
        assert!(acceptable(&HeaderMap::new(), Some(OCI)));
        assert!(acceptable(&HeaderMap::new(), None));
        assert!(acceptable(&accept(&[OCI]), Some(OCI)));
        assert!(acceptable(&accept(&[DOCKER, OCI]), Some(OCI)));
        assert!(acceptable(
            &accept(&[
                "application/vnd.docker.distribution.manifest.v2+json, application/vnd.oci.image.manifest.v1+json"
            ]),
            Some(OCI)
        ));
        assert!(!acceptable(&accept(&[DOCKER]), Some(OCI)));
        assert!(!acceptable(&accept(&[DOCKER]), None));
        assert!(acceptable(&accept(&["*/*"]), Some(OCI)));
        assert!(acceptable(&accept(&["application/*"]), Some(OCI)));
        assert!(!acceptable(&accept(&["text/*"]), Some(OCI)));
        assert!(acceptable(
            &accept(&[DOCKER]),
            Some("Application/VND.docker.distribution.manifest.v2+json; charset=utf-8")
        ));
        assert!(!acceptable(
            &accept(&["application/vnd.oci.image.manifest.v1+json;q=0"]),
            Some(OCI)
        ));
        assert!(acceptable(
            &accept(&["application/vnd.oci.image.manifest.v1+json; q=0.5"]),
            Some(OCI)
        ));
    }
}
