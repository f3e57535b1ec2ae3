//! Named fleet scenarios and the Kumar–Ross lower bound on distribution time.
//!
//! Rates are link rates as configured on `tc tbf` (bits per second on the wire,
//! Ethernet header included). What a TCP or QUIC payload can get out of such a link is
//! less; [`Scenario::payload_efficiency`] models that for the "effective" bound (it
//! depends on the links' MTU). The bound says nothing about latency: the emulated links
//! have near-zero RTT (no netem).

use std::fmt;

/// Share of a tbf-shaped link rate that is TCP payload with a 1500-byte MTU and TCP
/// timestamps: 1448 payload bytes per 1514-byte Ethernet frame.
pub const PAYLOAD_EFFICIENCY: f64 = 1448.0 / 1514.0;

/// The Ethernet MTU of every emulated link unless a run asks for another.
pub const DEFAULT_MTU: u16 = 1500;
/// The largest MTU a run may ask for (jumbo frames, as cloud VPCs offer).
pub const MAX_MTU: u16 = 9000;
/// The smallest MTU a run may ask for: QUIC needs 1 200-byte UDP payloads.
pub const MIN_MTU: u16 = 1280;

/// A link rate in bits per second, as handed to `tc`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Rate(u64);

impl Rate {
    /// `n` megabits per second (10^6 bit/s, like tc's `mbit`).
    pub const fn mbit(n: u64) -> Self {
        Self(n * 1_000_000)
    }

    pub const fn bits_per_second(self) -> u64 {
        self.0
    }

    pub fn bytes_per_second(self) -> f64 {
        self.0 as f64 / 8.0
    }

    /// The rate in tc's syntax (`100000000bit`).
    pub fn tc(self) -> String {
        format!("{}bit", self.0)
    }
}

impl fmt::Display for Rate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_multiple_of(1_000_000) {
            write!(f, "{} Mbit/s", self.0 / 1_000_000)
        } else {
            write!(f, "{} bit/s", self.0)
        }
    }
}

/// One fleet shape: how many nodes, how big the release, how fast every link.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Scenario {
    pub name: String,
    /// Number of downloading nodes (the origin and tracker are extra).
    pub nodes: usize,
    /// Size of the object every node downloads, in bytes.
    pub object_bytes: u64,
    /// Origin upload cap (u_s).
    pub origin_up: Rate,
    /// Upload cap of every node (u_i).
    pub node_up: Rate,
    /// Download cap of every node (d_i).
    pub node_down: Rate,
    /// Ethernet MTU of every link (veths and bridge), bytes.
    pub mtu: u16,
    /// Generic receive offload on every veth, as real NICs have it (`ethtool -K … gro
    /// on`): the receiving side coalesces a burst of packets of one flow before the IP
    /// stack, TCP segments and, for sockets that ask (`UDP_GRO`, as quinn does), UDP
    /// datagrams. Linux veths have it off by default.
    pub gro: bool,
}

const MIB: u64 = 1024 * 1024;

impl Scenario {
    /// Names accepted by [`Scenario::named`], in report order.
    pub const NAMES: [&'static str; 5] = ["S1", "S2", "S3", "S4", "quick"];

    /// The scenario called `name` (case-insensitive), if there is one.
    pub fn named(name: &str) -> Option<Self> {
        let (nodes, mib, origin, up, down) = match name.to_ascii_lowercase().as_str() {
            "s1" => (16, 256, 100, 100, 100),
            "s2" => (24, 128, 100, 25, 100),
            "s3" => (16, 128, 20, 50, 50),
            "s4" => (48, 64, 50, 20, 20),
            "quick" => (8, 16, 100, 100, 100),
            _ => return None,
        };
        let canonical = if name.eq_ignore_ascii_case("quick") {
            "quick".to_owned()
        } else {
            name.to_ascii_uppercase()
        };
        Some(Self {
            name: canonical,
            nodes,
            object_bytes: mib * MIB,
            origin_up: Rate::mbit(origin),
            node_up: Rate::mbit(up),
            node_down: Rate::mbit(down),
            mtu: DEFAULT_MTU,
            gro: true,
        })
    }

    /// The same scenario on links with MTU `mtu` (checked to be in
    /// [`MIN_MTU`]`..=`[`MAX_MTU`]).
    pub fn with_mtu(mut self, mtu: u16) -> Result<Self, String> {
        if !(MIN_MTU..=MAX_MTU).contains(&mtu) {
            return Err(format!("MTU {mtu} out of range {MIN_MTU}..={MAX_MTU}"));
        }
        self.mtu = mtu;
        Ok(self)
    }

    /// Share of the link rate that is TCP payload at this MTU with TCP timestamps
    /// (IP 20 + TCP 32 bytes of headers per packet, Ethernet 14 per frame):
    /// [`PAYLOAD_EFFICIENCY`] at 1 500 bytes, 0.993 at 9 000.
    pub fn payload_efficiency(&self) -> f64 {
        let mtu = f64::from(self.mtu);
        (mtu - 52.0) / (mtu + 14.0)
    }

    /// Kumar–Ross minimum distribution time in seconds,
    /// `max(F/u_s, F/d_min, N·F/(u_s + Σu_i))`, with every rate multiplied by
    /// `efficiency` (1.0 for the configured rates, [`Scenario::payload_efficiency`] for
    /// payload).
    pub fn t_min(&self, efficiency: f64) -> f64 {
        let f = self.object_bytes as f64;
        let n = self.nodes as f64;
        let us = self.origin_up.bytes_per_second() * efficiency;
        let ui = self.node_up.bytes_per_second() * efficiency;
        let dmin = self.node_down.bytes_per_second() * efficiency;
        let origin_bound = f / us;
        let download_bound = f / dmin;
        let upload_bound = n * f / (us + n * ui);
        origin_bound.max(download_bound).max(upload_bound)
    }

    /// Time in seconds for every node to download straight from the origin if the
    /// origin's upload is the only limit (`N·F/u_s`, payload rates).
    pub fn direct_bound(&self) -> f64 {
        let e = self.payload_efficiency();
        let per_node = self.object_bytes as f64 / (self.node_down.bytes_per_second() * e);
        let shared =
            self.nodes as f64 * self.object_bytes as f64 / (self.origin_up.bytes_per_second() * e);
        per_node.max(shared)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn named_scenarios_exist() {
        for name in Scenario::NAMES {
            let s = Scenario::named(name).unwrap();
            assert_eq!(s.name, name);
        }
        assert!(Scenario::named("S9").is_none());
        assert_eq!(Scenario::named("s2").unwrap().nodes, 24);
    }

    #[test]
    fn t_min_s1_is_origin_or_download_bound() {
        let s = Scenario::named("S1").unwrap();
        // F = 256 MiB at 12.5 MB/s.
        let expect = 256.0 * MIB as f64 / 12.5e6;
        assert!((s.t_min(1.0) - expect).abs() < 1e-9);
        assert!(s.t_min(PAYLOAD_EFFICIENCY) > s.t_min(1.0));
    }

    #[test]
    fn t_min_s4_is_download_bound() {
        let s = Scenario::named("S4").unwrap();
        let f = 64.0 * MIB as f64;
        // u_s = 6.25 MB/s, u_i = d_i = 2.5 MB/s, N = 48.
        let upload = 48.0 * f / (6.25e6 + 48.0 * 2.5e6);
        let download = f / 2.5e6;
        assert!(download > upload);
        assert!((s.t_min(1.0) - download).abs() < 1e-9);
    }

    #[test]
    fn t_min_s2_upload_bound() {
        let s = Scenario::named("S2").unwrap();
        let f = 128.0 * MIB as f64;
        let upload = 24.0 * f / (12.5e6 + 24.0 * 3.125e6);
        assert!((s.t_min(1.0) - upload).abs() < 1e-9);
    }

    #[test]
    fn payload_efficiency_follows_the_mtu() {
        let s = Scenario::named("S1").unwrap();
        assert_eq!(s.mtu, DEFAULT_MTU);
        assert!((s.payload_efficiency() - PAYLOAD_EFFICIENCY).abs() < 1e-12);
        let jumbo = s.clone().with_mtu(9000).unwrap();
        assert!((jumbo.payload_efficiency() - 8948.0 / 9014.0).abs() < 1e-12);
        assert!(jumbo.t_min(jumbo.payload_efficiency()) < s.t_min(s.payload_efficiency()));
        assert!(s.clone().with_mtu(9001).is_err());
        assert!(s.with_mtu(1000).is_err());
    }

    #[test]
    fn rate_formats_for_tc() {
        assert_eq!(Rate::mbit(20).tc(), "20000000bit");
        assert_eq!(Rate::mbit(20).to_string(), "20 Mbit/s");
    }
}
