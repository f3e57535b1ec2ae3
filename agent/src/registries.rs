//! Several registries through one agent: which `[[mirrors]]` entry stands for which
//! container registry, and the routing of registry requests that do not name a
//! mirror in their path.
//!
//! Two request shapes are routed to a mirror's `/m/NAME/v2/…` here ([`Routes`]):
//! - containerd's: `GET /v2/REPO/…?ns=HOST`. containerd adds `ns=` (the registry of
//!   the image being pulled) to every request it sends to a `hosts.toml` mirror, so
//!   one host entry naming the bare agent URL serves every registry whose mirror has
//!   `registry = "HOST"`;
//! - containers/image's (skopeo, podman, CRI-O): a `registries.conf` mirror
//!   `location = "AGENT/m/NAME"` becomes `GET /v2/m/NAME/REPO/…`, the path prefix
//!   being taken as part of the repository name.
//!
//! The bare ping `GET /v2/` (or `/v2`) without `ns`, which containers/image sends
//! before anything else, goes to the one registry mirror (`kind = "registry"` or a
//! `registry` set) when there is exactly one.
//!
//! What this cannot do: route any other `/v2/` request that has neither (`docker pull`
//! against the agent as a registry, a client without `ns`), or a ping when several
//! registry mirrors are configured; those are left to the proxy, which refuses them as
//! it always has. `ns` only picks the mirror: the upstream is
//! the mirror's, never a host taken from the request.

use std::collections::HashMap;
use std::fmt;

use http::Uri;
use serde::Deserialize;

use crate::config::{Mirror, MirrorKind};

/// A registry's name as image references spell it: `docker.io`, `ghcr.io`,
/// `registry.example.internal:5000`, `127.0.0.1:5000`, `[::1]:5000`. Lower-cased; no
/// scheme, user info, path or query.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Deserialize)]
#[serde(try_from = "String")]
pub struct RegistryHost(String);

/// Why a string is not a [`RegistryHost`] (the operator's configuration).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "registry {0:?} must be a host[:port] as in image names (docker.io, ghcr.io, registry.example:5000)"
)]
pub struct BadRegistryHost(pub String);

/// The routing table: registry host → mirror name, and the names of the mirrors
/// that may be registry mirrors (`kind` other than `http`).
#[derive(Debug, Clone, Default)]
pub struct Routes {
    by_host: HashMap<RegistryHost, String>,
    registry_mirrors: Vec<String>,
    /// The mirror answering a bare `/v2/` ping: the only one of kind `registry` or
    /// with a `registry`, if there is exactly one.
    ping: Option<String>,
}

impl RegistryHost {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for RegistryHost {
    type Error = BadRegistryHost;

    fn try_from(s: String) -> Result<Self, Self::Error> {
        let bad = || BadRegistryHost(s.clone());
        let lower = s.to_ascii_lowercase();
        let (host, port) = if let Some(rest) = lower.strip_prefix('[') {
            let (v6, after) = rest.split_once(']').ok_or_else(bad)?;
            v6.parse::<std::net::Ipv6Addr>().map_err(|_| bad())?;
            let port = match after {
                "" => None,
                a => Some(a.strip_prefix(':').ok_or_else(bad)?),
            };
            (None, port)
        } else {
            match lower.rsplit_once(':') {
                Some((h, p)) => (Some(h), Some(p)),
                None => (Some(lower.as_str()), None),
            }
        };
        if let Some(h) = host {
            let label_ok = |l: &str| {
                !l.is_empty()
                    && l.len() <= 63
                    && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
                    && !l.starts_with('-')
                    && !l.ends_with('-')
            };
            if h.is_empty() || h.len() > 253 || !h.split('.').all(label_ok) {
                return Err(bad());
            }
        }
        if let Some(p) = port
            && (p.is_empty() || !p.bytes().all(|b| b.is_ascii_digit()) || p.parse::<u16>().is_err())
        {
            return Err(bad());
        }
        Ok(RegistryHost(lower))
    }
}

impl std::str::FromStr for RegistryHost {
    type Err = BadRegistryHost;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::try_from(s.to_owned())
    }
}

impl fmt::Display for RegistryHost {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The configuration rules for `registry`: one mirror per registry, and not on a
/// `kind = "http"` mirror (it would never answer as a registry).
pub fn check_mirrors(mirrors: &[Mirror]) -> Result<(), String> {
    let mut seen: HashMap<&RegistryHost, &str> = HashMap::new();
    for m in mirrors {
        let Some(r) = &m.registry else { continue };
        if m.kind == MirrorKind::Http {
            return Err(format!(
                "mirrors.{}: registry = {r:?} needs kind \"registry\" or \"auto\", not \"http\"",
                m.name
            ));
        }
        if let Some(other) = seen.insert(r, &m.name) {
            return Err(format!(
                "mirrors.{} and mirrors.{other}: both have registry = \"{r}\" (one mirror per registry)",
                m.name
            ));
        }
    }
    Ok(())
}

impl Routes {
    pub fn new(mirrors: &[Mirror]) -> Self {
        let registry_mirrors = mirrors
            .iter()
            .filter(|m| m.kind != MirrorKind::Http)
            .map(|m| m.name.clone())
            .collect();
        let by_host = mirrors
            .iter()
            .filter_map(|m| Some((m.registry.clone()?, m.name.clone())))
            .collect();
        let mut sure = mirrors
            .iter()
            .filter(|m| m.kind == MirrorKind::Registry || m.registry.is_some());
        let ping = match (sure.next(), sure.next()) {
            (Some(m), None) => Some(m.name.clone()),
            _ => None,
        };
        Routes {
            by_host,
            registry_mirrors,
            ping,
        }
    }

    /// The mirror serving `registry`, if one is configured.
    pub fn mirror_for(&self, registry: &RegistryHost) -> Option<&str> {
        self.by_host.get(registry).map(String::as_str)
    }

    /// `uri` (an origin-form request target) rewritten to `/m/NAME/v2/…` (query kept
    /// byte for byte) when it is a registry request this table routes; `None` leaves
    /// it to the proxy as it is.
    pub fn route(&self, uri: &Uri) -> Option<Uri> {
        if uri.scheme().is_some() || uri.authority().is_some() {
            return None;
        }
        let path = uri.path();
        let rest = if path == "/v2" {
            ""
        } else {
            path.strip_prefix("/v2/")?
        };
        let q = uri.query().map(|q| format!("?{q}")).unwrap_or_default();
        if let Some(after) = rest.strip_prefix("m/") {
            let (name, tail) = after.split_once('/').unwrap_or((after, ""));
            if self.registry_mirrors.iter().any(|m| m == name) {
                return format!("/m/{name}/v2/{tail}{q}").parse().ok();
            }
        }
        let ns = uri
            .query()
            .and_then(|q| q.split('&').find_map(|p| p.strip_prefix("ns=")));
        let Some(ns) = ns else {
            let name = self.ping.as_ref().filter(|_| rest.is_empty())?;
            return format!("/m/{name}/v2/{q}").parse().ok();
        };
        let host = RegistryHost::try_from(percent_decode(ns)?).ok()?;
        let name = self.by_host.get(&host)?;
        format!("/m/{name}{path}{q}").parse().ok()
    }
}

/// `%XX` decoded; `None` for a malformed escape or a result that is not UTF-8.
fn percent_decode(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = std::str::from_utf8(b.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host(s: &str) -> Result<RegistryHost, BadRegistryHost> {
        s.parse()
    }

    fn mirror(name: &str, registry: Option<&str>, kind: MirrorKind) -> Mirror {
        Mirror {
            name: name.into(),
            upstream: "https://r.example".into(),
            kind,
            registry: registry.map(|r| host(r).unwrap()),
            ..Mirror::default()
        }
    }

    #[test]
    fn registry_hosts() {
        for ok in [
            "docker.io",
            "GHCR.io",
            "registry.k8s.io",
            "quay.io",
            "registry.example.internal:5000",
            "127.0.0.1:5000",
            "localhost",
            "[::1]:5000",
            "[fd00::1]",
        ] {
            let h = host(ok).unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(h.as_str(), ok.to_ascii_lowercase());
        }
        for bad in [
            "",
            "https://docker.io",
            "docker.io/library",
            "docker.io:",
            "docker.io:99999",
            "-a.io",
            "a..io",
            "user@docker.io",
            "[::1",
            "[zz::1]:5",
            "[::1]x",
            "docker.io?x",
        ] {
            assert!(host(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn one_mirror_per_registry_and_not_http() {
        let a = mirror("a", Some("docker.io"), MirrorKind::Registry);
        let b = mirror("b", Some("docker.io"), MirrorKind::Auto);
        assert!(
            check_mirrors(&[a.clone(), b])
                .unwrap_err()
                .contains("one mirror")
        );
        let h = mirror("h", Some("ghcr.io"), MirrorKind::Http);
        assert!(check_mirrors(&[h]).unwrap_err().contains("not \"http\""));
        let c = mirror("c", Some("ghcr.io"), MirrorKind::Auto);
        assert!(check_mirrors(&[a, c]).is_ok());
    }

    #[test]
    fn routes_ns_and_prefixed_paths() {
        let r = Routes::new(&[
            mirror("hub", Some("docker.io"), MirrorKind::Registry),
            mirror("local", Some("127.0.0.1:5000"), MirrorKind::Auto),
            mirror("files", None, MirrorKind::Http),
        ]);
        let route = |s: &str| r.route(&s.parse().unwrap()).map(|u| u.to_string());
        assert_eq!(
            route("/v2/library/alpine/manifests/3?ns=docker.io").as_deref(),
            Some("/m/hub/v2/library/alpine/manifests/3?ns=docker.io")
        );
        // containerd percent-encodes the port's colon; the query is kept as sent.
        assert_eq!(
            route("/v2/a/blobs/sha256:00?ns=127.0.0.1%3A5000").as_deref(),
            Some("/m/local/v2/a/blobs/sha256:00?ns=127.0.0.1%3A5000")
        );
        assert_eq!(
            route("/v2?ns=DOCKER.IO").as_deref(),
            Some("/m/hub/v2?ns=DOCKER.IO")
        );
        assert_eq!(
            route("/v2/m/hub/library/alpine/manifests/3").as_deref(),
            Some("/m/hub/v2/library/alpine/manifests/3")
        );
        // Not routed: unknown registry, no ns, an http-kind mirror, not /v2, absolute form,
        // a ping with two registry mirrors.
        assert_eq!(route("/v2/"), None);
        assert_eq!(route("/v2/x/manifests/1?ns=ghcr.io"), None);
        assert_eq!(route("/v2/x/manifests/1"), None);
        assert_eq!(route("/v2/m/files/x/manifests/1"), None);
        assert_eq!(route("/v2x/a?ns=docker.io"), None);
        assert_eq!(route("/m/hub/v2/a?ns=docker.io"), None);
        assert_eq!(route("http://docker.io/v2/a?ns=docker.io"), None);
        assert_eq!(route("/v2/a?ns=%zz"), None);
        assert_eq!(route("/v2/a?ns=evil.example%2Fx"), None);

        let one = Routes::new(&[
            mirror("hub", None, MirrorKind::Registry),
            mirror("deb", None, MirrorKind::Auto),
        ]);
        let route = |s: &str| one.route(&s.parse().unwrap()).map(|u| u.to_string());
        assert_eq!(route("/v2/").as_deref(), Some("/m/hub/v2/"));
        assert_eq!(route("/v2").as_deref(), Some("/m/hub/v2/"));
        assert_eq!(route("/v2/x/manifests/1"), None, "only the ping");
    }
}
