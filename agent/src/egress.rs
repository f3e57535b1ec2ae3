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
//! Refused by default: every range of the IANA IPv4 and IPv6 Special-Purpose Address
//! Registries whose "Globally Reachable" is not True (loopback, private, link-local,
//! CGNAT, documentation, benchmarking, IPv4-mapped/-compatible/-translated, discard,
//! NAT64 local-use, SRv6 SIDs, ORCHID, Teredo, …), multicast, and IPv6 outside global
//! unicast `2000::/3`. One explicit table per family ([`V4_RANGES`], [`V6_RANGES`]),
//! longest prefix wins, so the registry's globally reachable exceptions inside a
//! refused block (PCP and TURN anycast, AMT, AS112, ORCHIDv2, DETs) pass. NAT64
//! `64:ff9b::/96` and 6to4 `2002::/16` addresses are judged by the IPv4 address they
//! embed. The std `is_*` helpers are not used: several are unstable and the stable
//! ones miss ranges.
//!
//! Not done: the tables are a snapshot (2025) of the registries, not fetched; a
//! public address that itself forwards to an internal network (an origin that is a
//! proxy, a NAT64 gateway that translates non-global IPv4) is beyond what an address
//! check can see.

use std::future::Future;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use hyper_util::client::legacy::connect::dns::Name;
use ipnet::IpNet;

use crate::config::EgressConfig;
use Reach::{EmbedsV4, Global, Refused};

/// Why an origin was refused. Always the client's request that is at fault.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EgressDenied {
    #[error("egress refused: host {0:?} is not in egress.allow_hosts")]
    Host(String),
    #[error(
        "egress refused: {ip} is in a refused range ({class} address; allow it with egress.allow_cidrs)"
    )]
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
        // An address that embeds the IPv4 address it reaches (IPv4-mapped, NAT64,
        // 6to4) is that IPv4 address: honour an IPv4 allowance for it.
        if let IpAddr::V6(v6) = ip
            && let Some(v4) = embedded_v4(v6)
            && allowed(IpAddr::V4(v4))
        {
            return Ok(());
        }
        Err(EgressDenied::Address { ip, class })
    }
}

/// The class of an internal address, or `None` for a globally reachable one.
///
/// The longest matching prefix of [`V4_RANGES`] / [`V6_RANGES`] decides; an address no
/// row matches is globally reachable (IPv4) or outside every special range of
/// global unicast `2000::/3` (IPv6; the `::/0` row refuses everything else). An
/// address that embeds an IPv4 address the network will actually deliver to (NAT64
/// `64:ff9b::/96`, 6to4 `2002::/16`) has the class of that IPv4 address.
pub fn internal_class(ip: IpAddr) -> Option<&'static str> {
    match ip {
        IpAddr::V4(v4) => v4_class(v4),
        IpAddr::V6(v6) => v6_class(v6),
    }
}

/// What the address ranges of one table row are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Reach {
    /// Not globally reachable: refused, with this class name.
    Refused(&'static str),
    /// Globally reachable (an exception inside a refused range, or listed to document it).
    Global,
    /// Judged by the IPv4 address embedded at this bit offset (32 bits).
    EmbedsV4(u32),
}

/// One row: `prefix/len`, what it is, and where it is defined.
#[derive(Debug, Clone, Copy)]
struct Row<A> {
    prefix: A,
    len: u32,
    reach: Reach,
    /// Registry name and RFC, for the reader (and the tests).
    #[allow(dead_code)]
    what: &'static str,
}

const fn v4(a: [u8; 4], len: u32, reach: Reach, what: &'static str) -> Row<u32> {
    Row {
        prefix: u32::from_be_bytes(a),
        len,
        reach,
        what,
    }
}

const fn v6(s: [u16; 8], len: u32, reach: Reach, what: &'static str) -> Row<u128> {
    let mut p: u128 = 0;
    let mut i = 0;
    while i < 8 {
        p = (p << 16) | s[i] as u128;
        i += 1;
    }
    Row {
        prefix: p,
        len,
        reach,
        what,
    }
}

/// The IANA IPv4 Special-Purpose Address Registry (as of 2025), every row whose
/// "Globally Reachable" is not True refused, plus multicast (RFC 5771), which the
/// registry leaves to its own. Rows marked `Global` are the registry's globally
/// reachable entries: exceptions inside a refused block, or listed so that a reader
/// sees they were considered.
#[rustfmt::skip]
const V4_RANGES: &[Row<u32>] = &[
    v4([0, 0, 0, 0], 8, Refused("this-network"), "\"This network\" RFC 791"),
    v4([10, 0, 0, 0], 8, Refused("private"), "Private-Use RFC 1918"),
    v4([100, 64, 0, 0], 10, Refused("CGNAT"), "Shared Address Space RFC 6598"),
    v4([127, 0, 0, 0], 8, Refused("loopback"), "Loopback RFC 1122"),
    v4([169, 254, 0, 0], 16, Refused("link-local"), "Link Local RFC 3927"),
    v4([172, 16, 0, 0], 12, Refused("private"), "Private-Use RFC 1918"),
    v4([192, 0, 0, 0], 24, Refused("IETF protocol assignment"), "IETF Protocol Assignments RFC 6890 (incl. 192.0.0.0/29 DS-Lite, 192.0.0.8/32, 192.0.0.170-171/32 NAT64 discovery)"),
    v4([192, 0, 0, 9], 32, Global, "Port Control Protocol Anycast RFC 7723"),
    v4([192, 0, 0, 10], 32, Global, "TURN Anycast RFC 8155"),
    v4([192, 0, 2, 0], 24, Refused("documentation"), "TEST-NET-1 RFC 5737"),
    v4([192, 31, 196, 0], 24, Global, "AS112-v4 RFC 7535"),
    v4([192, 52, 193, 0], 24, Global, "AMT RFC 7450"),
    v4([192, 88, 99, 0], 24, Refused("6to4 relay anycast (deprecated)"), "Deprecated 6to4 Relay Anycast RFC 7526"),
    v4([192, 168, 0, 0], 16, Refused("private"), "Private-Use RFC 1918"),
    v4([192, 175, 48, 0], 24, Global, "Direct Delegation AS112 Service RFC 7534"),
    v4([198, 18, 0, 0], 15, Refused("benchmarking"), "Benchmarking RFC 2544"),
    v4([198, 51, 100, 0], 24, Refused("documentation"), "TEST-NET-2 RFC 5737"),
    v4([203, 0, 113, 0], 24, Refused("documentation"), "TEST-NET-3 RFC 5737"),
    v4([224, 0, 0, 0], 4, Refused("multicast"), "Multicast RFC 5771"),
    v4([240, 0, 0, 0], 4, Refused("reserved"), "Reserved RFC 1112"),
    v4([255, 255, 255, 255], 32, Refused("broadcast"), "Limited Broadcast RFC 919"),
];

/// The IANA IPv6 Special-Purpose Address Registry (as of 2025), as for
/// [`V4_RANGES`], plus what the IPv6 Address Space registry does not allocate as
/// global unicast: the `::/0` row refuses everything outside `2000::/3` that no
/// longer row allows (multicast, ULA, link- and site-local and the reserved blocks
/// are listed for their names).
#[rustfmt::skip]
const V6_RANGES: &[Row<u128>] = &[
    v6([0; 8], 0, Refused("not global unicast"), "outside 2000::/3, IPv6 Address Space registry RFC 4291"),
    v6([0x2000, 0, 0, 0, 0, 0, 0, 0], 3, Global, "Global Unicast RFC 4291"),
    v6([0; 8], 128, Refused("unspecified"), "Unspecified Address RFC 4291"),
    v6([0, 0, 0, 0, 0, 0, 0, 1], 128, Refused("loopback"), "Loopback Address RFC 4291"),
    v6([0; 8], 96, Refused("IPv4-compatible"), "IPv4-Compatible (deprecated) RFC 4291"),
    v6([0, 0, 0, 0, 0, 0xffff, 0, 0], 96, Refused("IPv4-mapped"), "IPv4-mapped Address RFC 4291"),
    v6([0, 0, 0, 0, 0xffff, 0, 0, 0], 96, Refused("IPv4-translated"), "IPv4-translated Address RFC 2765"),
    v6([0x64, 0xff9b, 0, 0, 0, 0, 0, 0], 96, EmbedsV4(96), "IPv4-IPv6 Translat. (NAT64 well-known prefix) RFC 6052"),
    v6([0x64, 0xff9b, 1, 0, 0, 0, 0, 0], 48, Refused("NAT64 local-use"), "Local-use IPv4/IPv6 Translation RFC 8215"),
    v6([0x100, 0, 0, 0, 0, 0, 0, 0], 64, Refused("discard-only"), "Discard-Only Address Block RFC 6666"),
    v6([0x100, 0, 0, 1, 0, 0, 0, 0], 64, Refused("dummy"), "Dummy IPv6 Prefix RFC 9780"),
    v6([0x2001, 0, 0, 0, 0, 0, 0, 0], 23, Refused("IETF protocol assignment"), "IETF Protocol Assignments RFC 2928"),
    v6([0x2001, 0, 0, 0, 0, 0, 0, 0], 32, Refused("Teredo"), "TEREDO RFC 4380 (embeds an obfuscated IPv4)"),
    v6([0x2001, 1, 0, 0, 0, 0, 0, 1], 128, Global, "Port Control Protocol Anycast RFC 7723"),
    v6([0x2001, 1, 0, 0, 0, 0, 0, 2], 128, Global, "TURN Anycast RFC 8155"),
    v6([0x2001, 1, 0, 0, 0, 0, 0, 3], 128, Global, "DNS-SD Service Registration Protocol Anycast RFC 9665"),
    v6([0x2001, 2, 0, 0, 0, 0, 0, 0], 48, Refused("benchmarking"), "Benchmarking RFC 5180"),
    v6([0x2001, 3, 0, 0, 0, 0, 0, 0], 32, Global, "AMT RFC 7450"),
    v6([0x2001, 4, 0x112, 0, 0, 0, 0, 0], 48, Global, "AS112-v6 RFC 7535"),
    v6([0x2001, 0x10, 0, 0, 0, 0, 0, 0], 28, Refused("ORCHID (deprecated)"), "Deprecated ORCHID RFC 4843"),
    v6([0x2001, 0x20, 0, 0, 0, 0, 0, 0], 28, Global, "ORCHIDv2 RFC 7343"),
    v6([0x2001, 0x30, 0, 0, 0, 0, 0, 0], 28, Global, "Drone Remote ID Protocol Entity Tags RFC 9374"),
    v6([0x2001, 0xdb8, 0, 0, 0, 0, 0, 0], 32, Refused("documentation"), "Documentation RFC 3849"),
    v6([0x2002, 0, 0, 0, 0, 0, 0, 0], 16, EmbedsV4(16), "6to4 RFC 3056"),
    v6([0x2620, 0x4f, 0x8000, 0, 0, 0, 0, 0], 48, Global, "Direct Delegation AS112 Service RFC 7534"),
    v6([0x3fff, 0, 0, 0, 0, 0, 0, 0], 20, Refused("documentation"), "Documentation RFC 9637"),
    v6([0x5f00, 0, 0, 0, 0, 0, 0, 0], 16, Refused("SRv6 SID"), "Segment Routing (SRv6) SIDs RFC 9602"),
    v6([0xfc00, 0, 0, 0, 0, 0, 0, 0], 7, Refused("unique local"), "Unique-Local RFC 4193"),
    v6([0xfe80, 0, 0, 0, 0, 0, 0, 0], 10, Refused("link-local"), "Link-Local Unicast RFC 4291"),
    v6([0xfec0, 0, 0, 0, 0, 0, 0, 0], 10, Refused("site-local"), "Site-Local (deprecated) RFC 3879"),
    v6([0xff00, 0, 0, 0, 0, 0, 0, 0], 8, Refused("multicast"), "Multicast RFC 4291"),
];

/// The longest row of `table` that contains `a` (`bits` wide).
fn longest<A>(table: &[Row<A>], a: A, bits: u32) -> Option<&Row<A>>
where
    A: Copy + Eq + std::ops::Shr<u32, Output = A>,
{
    table
        .iter()
        .filter(|r| r.len == 0 || (a >> (bits - r.len)) == (r.prefix >> (bits - r.len)))
        .max_by_key(|r| r.len)
}

fn v4_class(ip: Ipv4Addr) -> Option<&'static str> {
    match longest(V4_RANGES, u32::from(ip), 32).map(|r| r.reach) {
        Some(Refused(c)) => Some(c),
        // No IPv4 row embeds another address.
        Some(Global | EmbedsV4(_)) | None => None,
    }
}

fn v6_class(ip: Ipv6Addr) -> Option<&'static str> {
    match longest(V6_RANGES, u128::from(ip), 128).map(|r| r.reach) {
        Some(Refused(c)) => Some(c),
        Some(EmbedsV4(_)) => embedded_v4(ip).and_then(v4_class),
        Some(Global) | None => None,
    }
}

/// The IPv4 address a NAT64 (`64:ff9b::/96`) or 6to4 (`2002::/16`) address delivers
/// to, or that an IPv4-mapped address is.
fn embedded_v4(ip: Ipv6Addr) -> Option<Ipv4Addr> {
    if let Some(v4) = ip.to_ipv4_mapped() {
        return Some(v4);
    }
    let a = u128::from(ip);
    let at = match longest(V6_RANGES, a, 128)?.reach {
        EmbedsV4(at) => at,
        _ => return None,
    };
    // `at` is 16 or 96: the 32 bits after it fit.
    Some(Ipv4Addr::from((a >> (96 - at)) as u32))
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
        if let Some(io) = e.downcast_ref::<io::Error>()
            && let Some(d) = io.get_ref().and_then(|i| i.downcast_ref::<EgressDenied>())
        {
            return Some(d.clone());
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

    /// One address in every row of the special-purpose tables, and globally reachable
    /// addresses that must pass. `Some(class)`: refused with that class.
    const CASES: &[(&str, Option<&str>)] = &[
        // IPv4 registry.
        ("0.0.0.0", Some("this-network")),
        ("0.1.2.3", Some("this-network")),
        ("10.1.2.3", Some("private")),
        ("100.64.0.1", Some("CGNAT")),
        ("100.127.255.254", Some("CGNAT")),
        ("127.0.0.1", Some("loopback")),
        ("127.255.0.9", Some("loopback")),
        ("169.254.169.254", Some("link-local")),
        ("172.16.0.1", Some("private")),
        ("172.31.255.255", Some("private")),
        ("192.0.0.1", Some("IETF protocol assignment")),
        ("192.0.0.8", Some("IETF protocol assignment")),
        ("192.0.0.170", Some("IETF protocol assignment")),
        ("192.0.0.9", None),
        ("192.0.0.10", None),
        ("192.0.2.1", Some("documentation")),
        ("192.31.196.1", None),
        ("192.52.193.1", None),
        ("192.88.99.1", Some("6to4 relay anycast (deprecated)")),
        ("192.168.1.1", Some("private")),
        ("192.175.48.6", None),
        ("198.18.0.1", Some("benchmarking")),
        ("198.19.255.1", Some("benchmarking")),
        ("198.51.100.7", Some("documentation")),
        ("203.0.113.9", Some("documentation")),
        ("224.0.0.1", Some("multicast")),
        ("239.255.255.250", Some("multicast")),
        ("240.0.0.1", Some("reserved")),
        ("255.255.255.254", Some("reserved")),
        ("255.255.255.255", Some("broadcast")),
        // Globally reachable IPv4 next to the refused blocks.
        ("8.8.8.8", None),
        ("1.1.1.1", None),
        ("9.255.255.255", None),
        ("11.0.0.0", None),
        ("100.63.255.255", None),
        ("100.128.0.1", None),
        ("126.255.255.255", None),
        ("128.0.0.0", None),
        ("169.253.255.255", None),
        ("172.15.255.255", None),
        ("172.32.0.1", None),
        ("192.0.1.1", None),
        ("192.167.255.255", None),
        ("198.17.255.255", None),
        ("198.20.0.0", None),
        ("223.255.255.255", None),
        // IPv6 registry.
        ("::", Some("unspecified")),
        ("::1", Some("loopback")),
        ("::127.0.0.1", Some("IPv4-compatible")),
        ("::8.8.8.8", Some("IPv4-compatible")),
        ("::ffff:127.0.0.1", Some("IPv4-mapped")),
        ("::ffff:8.8.8.8", Some("IPv4-mapped")),
        ("::ffff:0:127.0.0.1", Some("IPv4-translated")),
        ("::ffff:0:8.8.8.8", Some("IPv4-translated")),
        ("::2:0:0:1", Some("not global unicast")),
        ("64:ff9b::7f00:1", Some("loopback")),
        ("64:ff9b::a9fe:a9fe", Some("link-local")),
        ("64:ff9b::a00:1", Some("private")),
        ("64:ff9b::808:808", None),
        ("64:ff9b:1::808:808", Some("NAT64 local-use")),
        ("100::1", Some("discard-only")),
        ("100::ffff:ffff:ffff:ffff", Some("discard-only")),
        ("100:0:0:1::1", Some("dummy")),
        ("100:0:0:2::1", Some("not global unicast")),
        ("2001::1", Some("Teredo")),
        ("2001:0:4136:e378:8000:63bf:3fff:fdd2", Some("Teredo")),
        ("2001:1::1", None),
        ("2001:1::2", None),
        ("2001:1::3", None),
        ("2001:1::4", Some("IETF protocol assignment")),
        ("2001:2::1", Some("benchmarking")),
        ("2001:2:0:ffff::1", Some("benchmarking")),
        ("2001:3::1", None),
        ("2001:4:112::1", None),
        ("2001:4:113::1", Some("IETF protocol assignment")),
        ("2001:10::1", Some("ORCHID (deprecated)")),
        ("2001:1f::1", Some("ORCHID (deprecated)")),
        ("2001:20::1", None),
        ("2001:30::1", None),
        ("2001:40::1", Some("IETF protocol assignment")),
        ("2001:1ff::1", Some("IETF protocol assignment")),
        ("2001:db8::1", Some("documentation")),
        ("2002:7f00:1::", Some("loopback")),
        ("2002:c0a8:101::1", Some("private")),
        ("2002:a9fe:a9fe::1", Some("link-local")),
        ("2002:808:808::1", None),
        ("2620:4f:8000::1", None),
        ("3fff::1", Some("documentation")),
        ("3fff:fff::1", Some("documentation")),
        ("5f00::1", Some("SRv6 SID")),
        ("fc00::1", Some("unique local")),
        ("fd00::1", Some("unique local")),
        ("fe80::1", Some("link-local")),
        ("febf::1", Some("link-local")),
        ("fec0::1", Some("site-local")),
        ("ff02::1", Some("multicast")),
        ("ff0e::1", Some("multicast")),
        ("4000::1", Some("not global unicast")),
        ("e000::1", Some("not global unicast")),
        // Globally reachable IPv6 next to the refused blocks.
        ("2606:4700::1111", None),
        ("2001:4860:4860::8888", None),
        ("2001:200::1", None),
        ("2001:db9::1", None),
        ("2003::1", None),
        ("2a00:1450:4001::1", None),
        ("3ffe::1", None),
        ("3fff:1000::1", None),
    ];

    #[test]
    fn special_purpose_table() {
        let p = policy(&[], &["*"]);
        for (a, want) in CASES {
            let ip: IpAddr = a.parse().unwrap();
            assert_eq!(internal_class(ip), *want, "{a}");
            assert_eq!(p.check_ip(ip).is_err(), want.is_some(), "{a} by check_ip");
            // Literal hosts, bracketed or not, as in URLs and CONNECT targets.
            assert_eq!(p.check_host(a).is_err(), want.is_some(), "{a} as host");
            if ip.is_ipv6() {
                assert_eq!(
                    p.check_host(&format!("[{a}]")).is_err(),
                    want.is_some(),
                    "[{a}] as host"
                );
            }
        }
    }

    #[test]
    fn every_row_has_a_case() {
        let addrs: Vec<IpAddr> = CASES.iter().map(|(a, _)| a.parse().unwrap()).collect();
        for row in V4_RANGES {
            let hit = addrs.iter().any(|a| match a {
                IpAddr::V4(v) => longest(V4_RANGES, u32::from(*v), 32)
                    .is_some_and(|r| r.prefix == row.prefix && r.len == row.len),
                IpAddr::V6(_) => false,
            });
            assert!(
                hit,
                "no test address in {} ({})",
                Ipv4Addr::from(row.prefix),
                row.what
            );
        }
        for row in V6_RANGES {
            let hit = addrs.iter().any(|a| match a {
                IpAddr::V6(v) => longest(V6_RANGES, u128::from(*v), 128)
                    .is_some_and(|r| r.prefix == row.prefix && r.len == row.len),
                IpAddr::V4(_) => false,
            });
            assert!(
                hit,
                "no test address in {} ({})",
                Ipv6Addr::from(row.prefix),
                row.what
            );
        }
    }

    #[test]
    fn embedded_v4_allowance() {
        let p = policy(&["10.0.0.0/8"], &["*"]);
        assert!(p.check_ip("::ffff:10.1.2.3".parse().unwrap()).is_ok());
        assert!(p.check_ip("64:ff9b::10.1.2.3".parse().unwrap()).is_ok());
        assert!(p.check_ip("2002:a01:203::1".parse().unwrap()).is_ok());
        assert!(p.check_ip("64:ff9b::127.0.0.1".parse().unwrap()).is_err());
        // Not an address that delivers to IPv4: no allowance by its IPv4 bits.
        assert!(p.check_ip("::ffff:0:10.1.2.3".parse().unwrap()).is_err());
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
