//! A sync's answer as the registry holds it ([`SyncReply`]): the hints borrow the
//! registry's agent and holding records, so the reply is serialized straight into
//! the response buffer without an owned [`PeerHint`] (a cloned peer id and bitmap
//! each, 32 of them per reply) in between.
//!
//! The JSON is exactly [`SyncResponse`]'s (test
//! `borrowed_reply_serializes_as_the_owned_response`), from serde or from
//! [`SyncReply::write_json`], which writes the hints without serde: none of their
//! strings can need escaping, and serde_json's escape scan of every key and value
//! (about 300 strings per 32-hint reply) was 8 % of the tracker's CPU per sync
//! (perf, `trackerbench`). [`SyncReply::to_response`]
//! gives the owned form for callers that keep it (tests, the simulator). Cannot:
//! outlive the registry borrow it came from (serialize it under the lock).

use serde::ser::{Serialize, SerializeStruct, Serializer};
use shoal_proto::tracker::{ChunkBitmap, Cursor, IndexedId, PeerHint, SyncResponse};
use shoal_proto::{Layout, Proximity};

use super::holders::Holding;
use super::peers::Peer;

/// See the module docs. Fields as in [`SyncResponse`].
#[derive(Debug)]
pub struct SyncReply<'a> {
    pub(super) layout: Option<Layout>,
    pub(super) ids: Vec<IndexedId>,
    pub(super) cursor: Option<Cursor>,
    pub(super) more: bool,
    pub(super) peers: Vec<Hint<'a>>,
    pub(super) leases: Vec<u32>,
    pub(super) lease_ttl_ms: u64,
    pub(super) leased_elsewhere: ChunkBitmap,
}

/// One peer hint, borrowing the registry's records of the peer and its holding.
#[derive(Debug, Clone, Copy)]
pub struct Hint<'a> {
    pub(super) peer: &'a Peer,
    pub(super) holding: &'a Holding,
    pub(super) proximity: Proximity,
}

impl<'a> SyncReply<'a> {
    /// The answer for a key the tracker does not know ([`SyncResponse::unknown`]).
    pub(super) fn unknown(lease_ttl_ms: u64) -> Self {
        Self {
            layout: None,
            ids: Vec::new(),
            cursor: None,
            more: false,
            peers: Vec::new(),
            leases: Vec::new(),
            lease_ttl_ms,
            leased_elsewhere: ChunkBitmap::new(),
        }
    }

    /// The owned form, with every hint copied out of the registry.
    pub fn to_response(&self) -> SyncResponse {
        SyncResponse {
            layout: self.layout,
            ids: self.ids.clone(),
            cursor: self.cursor,
            more: self.more,
            peers: self.peers.iter().map(|h| h.to_hint()).collect(),
            leases: self.leases.clone(),
            lease_ttl_ms: self.lease_ttl_ms,
            leased_elsewhere: self.leased_elsewhere.clone(),
        }
    }

    /// Hints in the reply.
    pub fn peer_count(&self) -> usize {
        self.peers.len()
    }

    /// About how many bytes this is as JSON (a hint with a small bitmap is ~130), so
    /// the response buffer is allocated once.
    pub fn json_size_hint(&self) -> usize {
        let bitmaps: usize = self
            .peers
            .iter()
            .map(|h| h.holding.have.as_bytes().len())
            .sum();
        256 + 140 * self.peers.len()
            + bitmaps * 4 / 3
            + 100 * self.ids.len()
            + 12 * self.leases.len()
    }
}

impl SyncReply<'_> {
    /// Appends the reply's JSON to `out`: the same bytes as serde_json gives for it
    /// (see the module docs).
    pub fn write_json(&self, out: &mut Vec<u8>) -> Result<(), serde_json::Error> {
        out.extend_from_slice(b"{\"layout\":");
        serde_json::to_writer(&mut *out, &self.layout)?;
        out.extend_from_slice(b",\"ids\":");
        serde_json::to_writer(&mut *out, &self.ids)?;
        out.extend_from_slice(b",\"cursor\":");
        serde_json::to_writer(&mut *out, &self.cursor)?;
        if self.more {
            out.extend_from_slice(b",\"more\":true");
        }
        out.extend_from_slice(b",\"peers\":[");
        for (i, h) in self.peers.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            h.write_json(out);
        }
        out.extend_from_slice(b"],\"leases\":");
        serde_json::to_writer(&mut *out, &self.leases)?;
        out.extend_from_slice(b",\"lease_ttl_ms\":");
        serde_json::to_writer(&mut *out, &self.lease_ttl_ms)?;
        if !self.leased_elsewhere.is_empty() {
            out.extend_from_slice(b",\"leased_elsewhere\":");
            serde_json::to_writer(&mut *out, &self.leased_elsewhere)?;
        }
        out.push(b'}');
        Ok(())
    }
}

impl Hint<'_> {
    /// As the `Serialize` impl. Nothing here needs escaping: a peer id is ASCII
    /// letters, digits, `.`, `_`, `-` ([`shoal_proto::PeerId`]); an address is digits,
    /// hex, `.`, `:`, `[`, `]`, `%`; a proximity is a variant name; a bitmap is base64.
    fn write_json(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(b"{\"id\":\"");
        out.extend_from_slice(self.peer.id.as_str().as_bytes());
        out.extend_from_slice(b"\",\"addr\":\"");
        out.extend_from_slice(self.peer.addr_text().as_bytes());
        out.extend_from_slice(b"\",\"proximity\":\"");
        out.extend_from_slice(match self.proximity {
            Proximity::SameNode => b"SameNode".as_slice(),
            Proximity::SameZone => b"SameZone",
            Proximity::SameRegion => b"SameRegion",
            Proximity::Other => b"Other",
        });
        out.push(b'"');
        if self.peer.load != 0 {
            out.extend_from_slice(b",\"load\":");
            push_decimal(out, self.peer.load);
        }
        if self.holding.complete {
            out.extend_from_slice(b",\"complete\":true");
        }
        if !self.holding.have.is_empty() {
            out.extend_from_slice(b",\"have\":\"");
            self.holding.have.append_base64(out);
            out.push(b'"');
        }
        out.push(b'}');
    }

    fn to_hint(self) -> PeerHint {
        PeerHint {
            id: self.peer.id.clone(),
            addr: self.peer.addr,
            proximity: self.proximity,
            load: self.peer.load,
            complete: self.holding.complete,
            // Empty for a complete holding.
            have: self.holding.have.clone(),
        }
    }
}

impl Serialize for SyncReply<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        // Field order and omissions as `SyncResponse`'s derive.
        let mut st = s.serialize_struct("SyncResponse", 8)?;
        st.serialize_field("layout", &self.layout)?;
        st.serialize_field("ids", &self.ids)?;
        st.serialize_field("cursor", &self.cursor)?;
        if self.more {
            st.serialize_field("more", &self.more)?;
        } else {
            st.skip_field("more")?;
        }
        st.serialize_field("peers", &self.peers)?;
        st.serialize_field("leases", &self.leases)?;
        st.serialize_field("lease_ttl_ms", &self.lease_ttl_ms)?;
        if self.leased_elsewhere.is_empty() {
            st.skip_field("leased_elsewhere")?;
        } else {
            st.serialize_field("leased_elsewhere", &self.leased_elsewhere)?;
        }
        st.end()
    }
}

impl Serialize for Hint<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        // Field order and omissions as `PeerHint`'s derive; the address as the
        // registry formatted it when the agent last changed it.
        let mut st = s.serialize_struct("PeerHint", 6)?;
        st.serialize_field("id", self.peer.id.as_str())?;
        st.serialize_field("addr", self.peer.addr_text())?;
        st.serialize_field("proximity", &self.proximity)?;
        if self.peer.load == 0 {
            st.skip_field("load")?;
        } else {
            st.serialize_field("load", &self.peer.load)?;
        }
        if self.holding.complete {
            st.serialize_field("complete", &true)?;
        } else {
            st.skip_field("complete")?;
        }
        if self.holding.have.is_empty() {
            st.skip_field("have")?;
        } else {
            st.serialize_field("have", &self.holding.have)?;
        }
        st.end()
    }
}

/// Appends `n` in decimal, as serde_json writes it.
fn push_decimal(out: &mut Vec<u8>, mut n: u32) {
    let mut buf = [0u8; 10];
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&buf[i..]);
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use std::net::SocketAddr;
    use std::time::Instant;

    use shoal_proto::ChunkId;
    use shoal_proto::tracker::{AgentInfo, IndexedId};

    use super::super::Registry;
    use super::super::tests::{agent, cfg, id, key, sync_req, topo};

    /// Byte for byte the JSON of the owned response, through every field: hints with
    /// bitmaps, a complete one, loads, an IPv6 address, a capped id list (`more`),
    /// leases and `leased_elsewhere`, and the unknown-key answer.
    #[test]
    fn borrowed_reply_serializes_as_the_owned_response() {
        let t0 = Instant::now();
        let mut c = cfg();
        c.max_ids_per_reply = 3;
        let mut reg = Registry::new(c, 1);
        let k = key("a");
        let mut first = sync_req(
            agent(1, topo("n1", "z1", "r1"), 2),
            &k,
            16,
            &[0, 1, 2, 3],
            0,
        );
        first.publish = (0..4)
            .map(|i| IndexedId {
                index: i,
                id: ChunkId::of(&[i as u8]),
            })
            .collect();
        reg.sync(t0, &id("p1"), &first).unwrap();
        let v6 = AgentInfo {
            peer_addr: SocketAddr::from(([0xfd00, 0, 0, 0, 0, 0, 0, 9], 7482)),
            ..agent(0, topo("n2", "z1", "r1"), 0)
        };
        reg.sync(t0, &id("p2"), &sync_req(v6.clone(), &k, 16, &[5, 9], 2))
            .unwrap();
        let mut seed = sync_req(agent(3, topo("n3", "z2", "r1"), 7), &k, 16, &[], 0);
        seed.complete = true;
        let other = key("b");
        let mut lessee = sync_req(agent(4, topo("n4", "z2", "r1"), 0), &other, 16, &[], 2);
        lessee.want = [6u32, 7].into_iter().collect();
        reg.sync(t0, &id("p4"), &lessee).unwrap();

        let mut cases = vec![
            (
                "p9",
                sync_req(agent(9, topo("n9", "z1", "r1"), 1), &k, 16, &[1], 0),
            ),
            ("p2", sync_req(v6.clone(), &k, 16, &[5, 9], 2)),
            (
                "p5",
                sync_req(agent(5, topo("n5", "z9", "r9"), 0), &key("c"), 16, &[], 0),
            ),
        ];
        let mut asks = sync_req(agent(6, topo("n6", "z2", "r1"), 0), &other, 16, &[], 2);
        asks.want = [6u32, 7, 8].into_iter().collect();
        cases.push(("p6", asks));
        let mut unknown = sync_req(agent(7, topo("n7", "z1", "r1"), 0), &key("zz"), 16, &[], 0);
        unknown.layout = None;
        cases.push(("p7", unknown));
        let mut hinted = 0;
        for (who, req) in &cases {
            let reply = reg.sync_reply(t0, &id(who), req).unwrap();
            hinted += reply.peer_count();
            let borrowed = serde_json::to_string(&reply).unwrap();
            let owned = serde_json::to_string(&reply.to_response()).unwrap();
            assert_eq!(borrowed, owned, "{who}");
            assert_eq!(written(&reply), owned, "{who}, written");
        }
        reg.sync(t0, &id("p3"), &seed).unwrap();
        let reply = reg.sync_reply(t0, &id("p9"), &cases[0].1).unwrap();
        let json = serde_json::to_string(&reply).unwrap();
        assert!(
            json.contains(r#""complete":true"#) && json.contains("[fd00::9]:7482"),
            "{json}"
        );
        assert_eq!(json, serde_json::to_string(&reply.to_response()).unwrap());
        assert_eq!(written(&reply), json);
        // An agent that moves is hinted at its new address.
        let moved = AgentInfo {
            peer_addr: SocketAddr::from(([10, 0, 0, 7], 9000)),
            ..v6
        };
        reg.sync(t0, &id("p2"), &sync_req(moved, &k, 16, &[5, 9], 2))
            .unwrap();
        let reply = reg.sync_reply(t0, &id("p9"), &cases[0].1).unwrap();
        let json = serde_json::to_string(&reply).unwrap();
        assert!(
            json.contains(r#""addr":"10.0.0.7:9000""#) && !json.contains("fd00"),
            "{json}"
        );
        assert_eq!(json, serde_json::to_string(&reply.to_response()).unwrap());
        assert_eq!(written(&reply), json);
        assert!(hinted >= 3, "the cases carry hints");
    }

    fn written(reply: &super::SyncReply<'_>) -> String {
        let mut out = Vec::new();
        reply.write_json(&mut out).unwrap();
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn decimals_as_serde_writes_them() {
        for n in [0u32, 1, 9, 10, 99, 100, 4_294_967_295] {
            let mut out = Vec::new();
            super::push_decimal(&mut out, n);
            assert_eq!(out, serde_json::to_vec(&n).unwrap());
        }
    }
}
