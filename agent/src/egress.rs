//! Egress policy: which origins the agent may connect to.
//!
//! A forward proxy that fetches whatever URL it is given is a server-side request
//! forgery tool: `GET http://169.254.169.254/` would hand a client the node's cloud
//! credentials. So every origin connection is checked twice: the host name against
//! `egress.allow_hosts`, and every resolved address (after DNS, so a public name that
//! resolves to an internal address is caught too) against the internal ranges below,
//! unless `egress.allow_cidrs` opens them. The proxy never follows redirects itself;
//! each redirect the client follows is a new request and is checked again.
//!
//! Refused by default: unspecified, loopback, private (RFC 1918, IPv6 ULA), link-local
//! (169.254.0.0/16, fe80::/10), CGNAT (100.64.0.0/10), multicast, broadcast, reserved
//! and documentation ranges, and every IPv6 form that embeds an IPv4 address
//! (IPv4-mapped/-compatible, NAT64 64:ff9b::/96, 6to4 2002::/16, Teredo 2001::/32).

use std::future::Future;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use hyper_util::client::legacy::connect::dns::Name;
use ipnet::IpNet;

use crate::config::EgressConfig;

/// Why an origin was refused. Always the client's request that is at fault.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EgressDenied {
    #[error("egress refused: host {0:?} is not in egress.allow_hosts")]
    Host(String),
    #[error("egress refused: {ip} is a {class} address (allow it with egress.allow_cidrs)")]
    Address { ip: IpAddr, class: &'static str },
    #[error("egress refused: {0:?} resolved to no allowed address")]
    NoAllowedAddress(String),
}

/// The compiled policy. Cheap to clone.
#[derive(Debug, Clone)]
pub struct EgressPolicy {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    allow_cidrs: Vec<IpNet>,
    any_host: bool,
    exact: Vec<String>,
    suffixes: Vec<String>,
}

impl EgressPolicy {
    pub fn new(cfg: &EgressConfig) -> Self {
        let mut exact = Vec::new();
        let mut suffixes = Vec::new();
        let mut any_host = false;
        for h in &cfg.allow_hosts {
            let h = h.trim().to_ascii_lowercase();
            if h == "*" {
                any_host = true;
            } else if let Some(s) = h.strip_prefix("*.") {
                suffixes.push(format!(".{s}"));
            } else {
                exact.push(h);
            }
        }
        Self {
            inner: Arc::new(Inner {
                allow_cidrs: cfg.allow_cidrs.clone(),
                any_host,
                exact,
                suffixes,
            }),
        }
    }

    /// Checks a URL host (name or literal address, IPv6 with or without brackets).
    pub fn check_host(&self, host: &str) -> Result<(), EgressDenied> {
        let bare = host.trim_start_matches('[').trim_end_matches(']');
        if let Ok(ip) = bare.parse::<IpAddr>() {
            // Literal addresses are checked by range only; they never reach DNS.
            return self.check_ip(ip);
        }
        let h = bare.trim_end_matches('.').to_ascii_lowercase();
        let i = &self.inner;
        if i.any_host || i.exact.contains(&h) || i.suffixes.iter().any(|s| h.ends_with(s.as_str()))
        {
            Ok(())
        } else {
            Err(EgressDenied::Host(h))
        }
    }

    /// Checks one address.
    pub fn check_ip(&self, ip: IpAddr) -> Result<(), EgressDenied> {
        let Some(class) = internal_class(ip) else {
            return Ok(());
        };
        let allowed = |a: IpAddr| self.inner.allow_cidrs.iter().any(|n| n.contains(&a));
        if allowed(ip) {
            return Ok(());
        }
        // An IPv4-mapped address is the IPv4 address: honour an IPv4 allowance for it.
        if let IpAddr::V6(v6) = ip {
            if let Some(v4) = v6.to_ipv4_mapped() {
                if allowed(IpAddr::V4(v4)) {
                    return Ok(());
                }
            }
        }
        Err(EgressDenied::Address { ip, class })
    }
}

/// The class of an internal address, or `None` for a public unicast one.
pub fn internal_class(ip: IpAddr) -> Option<&'static str> {
    match ip {
        IpAddr::V4(v4) => v4_class(v4),
        IpAddr::V6(v6) => v6_class(v6),
    }
}

fn v4_class(ip: Ipv4Addr) -> Option<&'static str> {
    let o = ip.octets();
    Some(match o {
        [0, ..] => "unspecified",
        [127, ..] => "loopback",
        [10, ..] => "private",
        [172, b, ..] if (16..32).contains(&b) => "private",
        [192, 168, ..] => "private",
        [169, 254, ..] => "link-local",
        [100, b, ..] if (64..128).contains(&b) => "CGNAT",
        [192, 0, 0, _] => "IETF protocol assignment",
        [192, 0, 2, _] | [198, 51, 100, _] | [203, 0, 113, _] => "documentation",
        [198, 18 | 19, ..] => "benchmarking",
        [224..=239, ..] => "multicast",
        [240..=255, ..] => "reserved",
        _ => return None,
    })
}

fn v6_class(ip: Ipv6Addr) -> Option<&'static str> {
    let s = ip.segments();
    if ip.is_unspecified() {
        return Some("unspecified");
    }
    if ip.is_loopback() {
        return Some("loopback");
    }
    Some(match s {
        [0, 0, 0, 0, 0, 0xffff, ..] => "IPv4-mapped",
        [0, 0, 0, 0, 0, 0, ..] => "IPv4-compatible",
        [0x64, 0xff9b, 0, 0, 0, 0, ..] | [0x64, 0xff9b, 1, ..] => "NAT64",
        [0x2002, ..] => "6to4",
        [0x2001, 0, ..] => "Teredo",
        [0x2001, 0xdb8, ..] => "documentation",
        [a, ..] if a & 0xffc0 == 0xfe80 => "link-local",
        [a, ..] if a & 0xffc0 == 0xfec0 => "site-local",
        [a, ..] if a & 0xfe00 == 0xfc00 => "unique local",
        [a, ..] if a & 0xff00 == 0xff00 => "multicast",
        _ => return None,
    })
}

/// A DNS resolver for hyper-util's connector that drops refused addresses, so a name
/// cannot smuggle a connection to an internal address.
#[derive(Debug, Clone)]
pub struct PolicyResolver {
    policy: EgressPolicy,
}

impl PolicyResolver {
    pub fn new(policy: EgressPolicy) -> Self {
        Self { policy }
    }
}

type ResolveFuture =
    Pin<Box<dyn Future<Output = io::Result<std::vec::IntoIter<SocketAddr>>> + Send>>;

impl tower_service::Service<Name> for PolicyResolver {
    type Response = std::vec::IntoIter<SocketAddr>;
    type Error = io::Error;
    type Future = ResolveFuture;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), io::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, name: Name) -> Self::Future {
        let policy = self.policy.clone();
        Box::pin(async move {
            let host = name.as_str().to_owned();
            policy.check_host(&host).map_err(denied)?;
            let addrs: Vec<SocketAddr> =
                tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            let mut last = None;
            let ok: Vec<SocketAddr> = addrs
                .into_iter()
                .filter(|a| match policy.check_ip(a.ip()) {
                    Ok(()) => true,
                    Err(e) => {
                        last = Some(e);
                        false
                    }
                })
                .collect();
            if ok.is_empty() {
                return Err(denied(last.unwrap_or(EgressDenied::NoAllowedAddress(host))));
            }
            Ok(ok.into_iter())
        })
    }
}

fn denied(e: EgressDenied) -> io::Error {
    io::Error::new(io::ErrorKind::PermissionDenied, e)
}

/// Finds an [`EgressDenied`] anywhere in an error's source chain (hyper wraps it).
pub fn find_denied(err: &(dyn std::error::Error + 'static)) -> Option<EgressDenied> {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(err);
    while let Some(e) = cur {
        if let Some(d) = e.downcast_ref::<EgressDenied>() {
            return Some(d.clone());
        }
        if let Some(io) = e.downcast_ref::<io::Error>() {
            if let Some(d) = io.get_ref().and_then(|i| i.downcast_ref::<EgressDenied>()) {
                return Some(d.clone());
            }
        }
        cur = e.source();
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(cidrs: &[&str], hosts: &[&str]) -> EgressPolicy {
        EgressPolicy::new(&EgressConfig {
            allow_cidrs: cidrs.iter().map(|c| c.parse().unwrap()).collect(),
            allow_hosts: hosts.iter().map(|h| h.to_string()).collect(),
        })
    }

    #[test]
    fn internal_ranges_refused_by_default() {
        let p = policy(&[], &["*"]);
        for a in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "172.31.255.255",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "0.0.0.0",
            "255.255.255.255",
            "224.0.0.1",
            "::1",
            "::",
            "fe80::1",
            "fd00::1",
            "::ffff:127.0.0.1",
            "::ffff:8.8.8.8",
            "64:ff9b::8.8.8.8",
            "2002:7f00:1::",
            "2001:0:4136::",
            "::127.0.0.1",
        ] {
            let ip: IpAddr = a.parse().unwrap();
            assert!(p.check_ip(ip).is_err(), "{a} should be refused");
            assert!(p.check_host(a).is_err(), "{a} as host should be refused");
        }
        for a in [
            "8.8.8.8",
            "172.32.0.1",
            "100.128.0.1",
            "2606:4700::1111",
            "1.1.1.1",
        ] {
            assert!(
                p.check_ip(a.parse().unwrap()).is_ok(),
                "{a} should be allowed"
            );
        }
        assert!(p.check_host("[::1]").is_err());
    }

    #[test]
    fn allow_cidrs_open_ranges() {
        let p = policy(&["127.0.0.0/8"], &["*"]);
        assert!(p.check_ip("127.0.0.5".parse().unwrap()).is_ok());
        assert!(p.check_ip("::ffff:127.0.0.5".parse().unwrap()).is_ok());
        assert!(p.check_ip("169.254.169.254".parse().unwrap()).is_err());
    }

    #[test]
    fn host_patterns() {
        let p = policy(&[], &["deb.debian.org", "*.example.com"]);
        assert!(p.check_host("deb.debian.org").is_ok());
        assert!(p.check_host("DEB.debian.org.").is_ok());
        assert!(p.check_host("a.example.com").is_ok());
        assert!(p.check_host("example.com").is_err());
        assert!(p.check_host("evil.com").is_err());
    }

    #[test]
    fn denied_found_through_io_error() {
        let e = denied(EgressDenied::Host("x".into()));
        assert_eq!(find_denied(&e), Some(EgressDenied::Host("x".into())));
    }

    #[tokio::test]
    async fn resolver_drops_loopback() {
        use tower_service::Service;
        let mut r = PolicyResolver::new(policy(&[], &["*"]));
        let name: Name = "localhost".parse().unwrap();
        let err = r.call(name).await.unwrap_err();
        assert!(find_denied(&err).is_some(), "{err}");
        let mut r = PolicyResolver::new(policy(&["127.0.0.0/8", "::1/128"], &["*"]));
        let addrs: Vec<_> = r
            .call("localhost".parse().unwrap())
            .await
            .unwrap()
            .collect();
        assert!(!addrs.is_empty());
    }
}
