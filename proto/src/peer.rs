//! Peer identity and address as the swarm sees them.

use std::fmt;
use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

/// A peer's name: the DNS name in its fleet certificate (usually the node name).
/// 1–253 characters of `[A-Za-z0-9._-]`.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Deserialize)]
#[serde(try_from = "String")]
pub struct PeerId(String);

/// A name that is empty, too long or has characters outside `[A-Za-z0-9._-]`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid peer id {0:?}: want 1-253 characters of [A-Za-z0-9._-]")]
pub struct InvalidPeerId(String);

impl PeerId {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for PeerId {
    type Error = InvalidPeerId;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        let ok = !s.is_empty()
            && s.len() <= 253
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
        if ok {
            Ok(Self(s))
        } else {
            Err(InvalidPeerId(s.chars().take(80).collect()))
        }
    }
}

impl std::str::FromStr for PeerId {
    type Err = InvalidPeerId;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::try_from(s.to_owned())
    }
}

impl From<PeerId> for String {
    fn from(p: PeerId) -> Self {
        p.0
    }
}

/// As a JSON string, like `String` (written in place: `#[serde(into)]` would clone it).
impl Serialize for PeerId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

impl fmt::Display for PeerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for PeerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PeerId({})", self.0)
    }
}

/// Where a peer is, relative to us: lower is nearer. Derived from topology labels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Proximity {
    SameNode = 0,
    SameZone = 1,
    SameRegion = 2,
    Other = 3,
}

/// Topology labels of one agent.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Topology {
    pub node: String,
    pub zone: String,
    pub region: String,
}

impl Topology {
    /// How near `other` is to `self`. Empty labels never match.
    pub fn proximity(&self, other: &Topology) -> Proximity {
        let eq = |a: &str, b: &str| !a.is_empty() && a == b;
        if eq(&self.node, &other.node) {
            Proximity::SameNode
        } else if eq(&self.zone, &other.zone) {
            Proximity::SameZone
        } else if eq(&self.region, &other.region) {
            Proximity::SameRegion
        } else {
            Proximity::Other
        }
    }
}

/// A peer's id and QUIC address.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct PeerAddr {
    pub id: PeerId,
    pub addr: SocketAddr,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peer_id_rules() {
        assert!("agent-1.zone_a".parse::<PeerId>().is_ok());
        assert!("".parse::<PeerId>().is_err());
        assert!("a b".parse::<PeerId>().is_err());
        assert!("a/b".parse::<PeerId>().is_err());
    }

    #[test]
    fn peer_id_json_is_a_plain_string() {
        let id: PeerId = "n7.zone-1".parse().unwrap();
        assert_eq!(serde_json::to_string(&id).unwrap(), "\"n7.zone-1\"");
        assert_eq!(serde_json::from_str::<PeerId>("\"n7.zone-1\"").unwrap(), id);
        assert!(serde_json::from_str::<PeerId>("\"no spaces\"").is_err());
    }

    #[test]
    fn proximity_order() {
        let me = Topology {
            node: "n1".into(),
            zone: "z1".into(),
            region: "r1".into(),
        };
        let t = |n: &str, z: &str, r: &str| Topology {
            node: n.into(),
            zone: z.into(),
            region: r.into(),
        };
        assert_eq!(me.proximity(&t("n1", "z9", "r9")), Proximity::SameNode);
        assert_eq!(me.proximity(&t("n2", "z1", "r1")), Proximity::SameZone);
        assert_eq!(me.proximity(&t("n2", "z2", "r1")), Proximity::SameRegion);
        assert_eq!(me.proximity(&t("n2", "z2", "r2")), Proximity::Other);
        assert_eq!(
            Topology::default().proximity(&Topology::default()),
            Proximity::Other
        );
    }
}
