//! The emulated fleet: one bridge namespace and one namespace per node, each joined to
//! the bridge by a veth pair, with `tc tbf` shaping upload on the node's `eth0` and
//! download on the bridge-side peer. Addresses are private to these namespaces
//! (10.77.0.0/16); nothing is routed anywhere else.
//!
//! Every link has the scenario's MTU (1 500 bytes, or jumbo frames) and, unless the
//! scenario turns it off, generic receive offload on both ends of every veth, as real
//! NICs have it (veths default to off): a receiver then handles a burst of one flow's
//! packets as one, for TCP and for UDP sockets that ask for it (`UDP_GRO`; quinn does).
//!
//! Not emulated: latency and loss (netem is not available here), so every RTT is
//! near zero and TCP ramps up faster than on a real network.

use std::net::Ipv4Addr;

use anyhow::{Context, Result, bail};

use super::cleanup::Registry;
use super::proc::run;
use super::scenario::{Rate, Scenario};

/// The subnet on the bridge, for `[egress] allow_cidrs` and the like.
pub const SUBNET: &str = "10.77.0.0/16";
const PREFIX_LEN: u8 = 16;
/// Queueing budget of every tbf (tc's `latency`): how long a packet may wait.
const TBF_LATENCY: &str = "50ms";

/// One emulated host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Node {
    /// Role name: `origin`, `tracker`, `agent-1`...
    pub name: String,
    /// Network namespace name (unique per run).
    pub ns: String,
    pub ip: Ipv4Addr,
}

/// The namespaces of one run. Created by [`Fleet::create`]; torn down by the
/// [`Registry`] they were registered with.
#[derive(Debug, Clone)]
pub struct Fleet {
    pub prefix: String,
    pub bridge_ns: String,
    pub origin: Node,
    pub tracker: Node,
    pub agents: Vec<Node>,
}

/// A switch does not run a firewall on the frames it forwards. Where `br_netfilter` is
/// loaded (Docker loads it), every bridged frame goes through iptables unless these
/// per-namespace switches are off; that per-packet cost fell on QUIC's 1.5 KB packets
/// ~40 times as often per byte as on TCP's 64 KB offloaded segments (4 % of the machine
/// in a Shoal S1 run). Best effort: without the module the keys do not exist.
fn bypass_netfilter(bridge_ns: &str) {
    for family in ["iptables", "ip6tables", "arptables"] {
        let key = format!("net.bridge.bridge-nf-call-{family}=0");
        let _ = run(Some(bridge_ns), "sysctl", &["-q", "-w", &key]);
    }
}

impl Fleet {
    /// Build the topology for `scenario` with namespace names starting `prefix-`.
    pub fn create(prefix: &str, scenario: &Scenario, registry: &Registry) -> Result<Self> {
        if scenario.nodes == 0 || scenario.nodes > 250 {
            bail!("node count {} out of range 1..=250", scenario.nodes);
        }
        let bridge_ns = format!("{prefix}-br");
        add_ns(&bridge_ns, registry)?;
        let br = Some(bridge_ns.as_str());
        run(br, "ip", &["link", "add", "br0", "type", "bridge"])?;
        let mtu = scenario.mtu.to_string();
        run(br, "ip", &["link", "set", "br0", "mtu", &mtu])?;
        run(br, "ip", &["link", "set", "br0", "up"])?;
        bypass_netfilter(&bridge_ns);

        let origin = Node {
            name: "origin".into(),
            ns: format!("{prefix}-origin"),
            ip: Ipv4Addr::new(10, 77, 0, 2),
        };
        let tracker = Node {
            name: "tracker".into(),
            ns: format!("{prefix}-tracker"),
            ip: Ipv4Addr::new(10, 77, 0, 3),
        };
        let agents: Vec<Node> = (1..=scenario.nodes)
            .map(|i| Node {
                name: format!("agent-{i}"),
                ns: format!("{prefix}-a{i}"),
                ip: Ipv4Addr::new(10, 77, 1, i as u8),
            })
            .collect();

        let link = |up, down| Link {
            up,
            down,
            mtu: scenario.mtu,
            gro: scenario.gro,
        };
        attach(
            &bridge_ns,
            0,
            &origin,
            &link(Some(scenario.origin_up), None),
            registry,
        )
        .context("attaching origin")?;
        attach(&bridge_ns, 1, &tracker, &link(None, None), registry)
            .context("attaching tracker")?;
        for (i, node) in agents.iter().enumerate() {
            attach(
                &bridge_ns,
                i + 2,
                node,
                &link(Some(scenario.node_up), Some(scenario.node_down)),
                registry,
            )
            .with_context(|| format!("attaching {}", node.name))?;
        }
        Ok(Self {
            prefix: prefix.to_owned(),
            bridge_ns,
            origin,
            tracker,
            agents,
        })
    }

    /// Every namespace of this fleet, bridge first.
    pub fn namespaces(&self) -> Vec<String> {
        let mut all = vec![
            self.bridge_ns.clone(),
            self.origin.ns.clone(),
            self.tracker.ns.clone(),
        ];
        all.extend(self.agents.iter().map(|n| n.ns.clone()));
        all
    }

    /// Stops whatever still runs in the fleet's namespaces and deletes them (the
    /// registry forgets them; what cannot be deleted stays registered for teardown).
    pub fn destroy(self, registry: &Registry) {
        for ns in self.namespaces() {
            registry.remove_namespace(&ns);
        }
    }

    /// Bytes sent by `node`'s `eth0` so far (all headers included).
    pub fn tx_bytes(node: &Node) -> Result<u64> {
        let out = run(
            Some(&node.ns),
            "cat",
            &["/sys/class/net/eth0/statistics/tx_bytes"],
        )?;
        out.trim()
            .parse()
            .with_context(|| format!("parsing tx_bytes of {}", node.name))
    }
}

fn add_ns(name: &str, registry: &Registry) -> Result<()> {
    run(None, "ip", &["netns", "add", name])?;
    registry.add_namespace(name);
    run(Some(name), "ip", &["link", "set", "lo", "up"])?;
    Ok(())
}

/// How one node's link is set up.
struct Link {
    /// Shaping on the node's `eth0` (its upload).
    up: Option<Rate>,
    /// Shaping on the bridge-side peer (the node's download).
    down: Option<Rate>,
    mtu: u16,
    gro: bool,
}

/// Create `node`'s namespace and veth pair (`eth0` in the node, `p<port>` on the
/// bridge) and shape it: `up` on `eth0`, `down` on the bridge-side peer.
fn attach(
    bridge_ns: &str,
    port: usize,
    node: &Node,
    link: &Link,
    registry: &Registry,
) -> Result<()> {
    add_ns(&node.ns, registry)?;
    let peer = format!("p{port}");
    let br = Some(bridge_ns);
    let ns = Some(node.ns.as_str());
    run(
        br,
        "ip",
        &[
            "link", "add", &peer, "type", "veth", "peer", "name", "eth0", "netns", &node.ns,
        ],
    )?;
    let mtu = link.mtu.to_string();
    run(br, "ip", &["link", "set", &peer, "mtu", &mtu])?;
    run(ns, "ip", &["link", "set", "eth0", "mtu", &mtu])?;
    if link.gro {
        run(br, "ethtool", &["-K", &peer, "gro", "on"])?;
        run(ns, "ethtool", &["-K", "eth0", "gro", "on"])?;
    }
    run(br, "ip", &["link", "set", &peer, "master", "br0"])?;
    run(br, "ip", &["link", "set", &peer, "up"])?;
    let cidr = format!("{}/{PREFIX_LEN}", node.ip);
    run(ns, "ip", &["addr", "add", &cidr, "dev", "eth0"])?;
    run(ns, "ip", &["link", "set", "eth0", "up"])?;
    if let Some(rate) = link.up {
        shape(&node.ns, "eth0", rate)?;
    }
    if let Some(rate) = link.down {
        shape(bridge_ns, &peer, rate)?;
    }
    Ok(())
}

/// Root tbf on `dev` in `ns`. The bucket holds 5 ms at `rate` but at least 64 KiB,
/// so that a GSO super-packet fits and timer granularity does not cap the rate.
fn shape(ns: &str, dev: &str, rate: Rate) -> Result<()> {
    let burst = ((rate.bytes_per_second() * 0.005) as u64).max(64 * 1024);
    run(
        Some(ns),
        "tc",
        &[
            "qdisc",
            "add",
            "dev",
            dev,
            "root",
            "tbf",
            "rate",
            &rate.tc(),
            "burst",
            &burst.to_string(),
            "latency",
            TBF_LATENCY,
        ],
    )?;
    Ok(())
}
