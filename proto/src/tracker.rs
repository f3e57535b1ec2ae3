//! Tracker messages: what agents and the tracker say to each other.
//!
//! The transport is HTTP/1.1 + JSON over mutual TLS (see `docs/tracker-api.md`); this
//! module only defines the bodies so the agent, the tracker and tests share one
//! definition. Two calls exist:
//!
//! - `POST /v1/sync` ([`SyncRequest`] → [`SyncResponse`]): one object the agent is
//!   downloading, every poll interval. Carries what the agent holds and the chunk ids it
//!   hashed from origin bytes, the chunks it wants origin leases on and the leases it
//!   gives back; returns the authoritative layout, new chunk ids, ranked peer hints,
//!   origin leases and which wanted chunks are leased to others (the lease fields
//!   carry the fetch scheduler's inputs and outputs one to one: see
//!   [`crate::sched`], "The tracker contract").
//! - `POST /v1/announce` ([`AnnounceRequest`] → [`AnnounceResponse`]): every held
//!   object, in one batch, every announce interval; refills a restarted tracker.
//!
//! The agent's identity ([`crate::PeerId`]) is never in a body: the tracker takes it
//! from the client certificate. Unknown JSON fields are ignored (newer agents may send
//! more); missing optional fields take their defaults.
//!
//! # Bitmaps
//!
//! A [`ChunkBitmap`] travels as a base64 (standard alphabet, padded) string of a bitset:
//! chunk `i` is bit `i % 8` (least significant first) of byte `i / 8`. Trailing zero
//! bytes are dropped, so an empty set is `""` and two equal sets encode identically.
//! An object held whole is sent as `complete: true` with an empty bitmap, which keeps
//! periodic announces of big caches small.

use std::net::SocketAddr;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::id::ChunkId;
use crate::key::ObjectKey;
use crate::manifest::{Layout, MAX_OBJECT_SIZE, MIN_CHUNK_SIZE};
use crate::peer::{PeerId, Proximity, Topology};

/// Path of the per-object sync call.
pub const SYNC_PATH: &str = "/v1/sync";
/// Path of the batched announce call.
pub const ANNOUNCE_PATH: &str = "/v1/announce";
/// ALPN protocol id of the tracker's TLS listener.
pub const ALPN: &[u8] = b"http/1.1";

/// Most chunks any valid [`Layout`] can have (1 TiB in 16 KiB chunks = 2^26).
pub const MAX_CHUNKS: u64 = MAX_OBJECT_SIZE / MIN_CHUNK_SIZE as u64;
/// Largest bitmap accepted when decoding, in bytes (covers [`MAX_CHUNKS`]).
pub const MAX_BITMAP_BYTES: usize = (MAX_CHUNKS / 8) as usize;

/// A set of chunk indices of one object. See the module docs for the encoding.
#[derive(Clone, Default, PartialEq, Eq, Hash)]
pub struct ChunkBitmap {
    /// Invariant: no trailing zero byte.
    bytes: Vec<u8>,
}

/// A bitmap string that is not base64 or longer than [`MAX_BITMAP_BYTES`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BitmapError {
    #[error("bitmap is not base64")]
    Encoding,
    #[error("bitmap longer than {MAX_BITMAP_BYTES} bytes")]
    TooLong,
}

/// Where a reader of an object's chunk-id table stopped, so the next sync returns
/// only ids published since. `epoch` names one life of the object on one tracker: a
/// cursor from another epoch (the tracker restarted, the object expired, another
/// replica answered) is ignored and the whole table is sent again.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Cursor {
    pub epoch: u64,
    /// Number of table entries already returned, in publication order.
    pub pos: u32,
}

/// The id of one chunk, by index.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct IndexedId {
    pub index: u32,
    pub id: ChunkId,
}

/// Who is asking, sent with every request (the identity itself comes from the
/// certificate).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentInfo {
    /// The agent's QUIC address. Its IP must be the TCP source IP of the request or an
    /// IP SAN of the agent's certificate, else the tracker answers 403.
    pub peer_addr: SocketAddr,
    #[serde(default)]
    pub topology: Topology,
    /// Chunk uploads in flight right now; lower-loaded peers are hinted first.
    #[serde(default)]
    pub load: u32,
}

/// `POST /v1/sync` body.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SyncRequest {
    pub agent: AgentInfo,
    pub key: ObjectKey,
    /// The layout this agent would use. The first proposal for a key becomes
    /// authoritative; `None` asks without creating the object.
    #[serde(default)]
    pub layout: Option<Layout>,
    /// Chunk indices held (verified, on disk). Replaces the previous report.
    #[serde(default)]
    pub have: ChunkBitmap,
    /// Holds every chunk (`have` is then ignored).
    #[serde(default)]
    pub complete: bool,
    /// Chunk ids this agent computed from origin bytes since its last sync.
    #[serde(default)]
    pub publish: Vec<IndexedId>,
    /// How many origin leases the agent would take now (0 = none).
    #[serde(default)]
    pub want_leases: u32,
    /// The chunks the agent would take those leases on (its scheduler's
    /// [`WantLeases`](crate::sched::Action::WantLeases) indices). The tracker grants
    /// the free ones among them first, lowest index first, then (room left) the lowest
    /// free chunks as for an empty set; it answers the ones leased to others in
    /// [`SyncResponse::leased_elsewhere`]. Empty (older agents): lowest free chunks.
    #[serde(default, skip_serializing_if = "ChunkBitmap::is_empty")]
    pub want: ChunkBitmap,
    /// Leases this agent gives back (its origin fetches of them keep failing): the
    /// tracker drops them at once, so another agent can be granted them, and grants
    /// them to nobody in this sync's answer to this agent.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub release: Vec<u32>,
    /// The cursor from the previous response for this key, if any.
    #[serde(default)]
    pub cursor: Option<Cursor>,
    /// Leases this agent still works on: the tracker extends them by its lease TTL.
    /// A slow origin can take longer than one TTL per chunk; an agent that stops
    /// syncing (or stops listing a lease) lets it lapse.
    #[serde(default)]
    pub renew: Vec<u32>,
}

/// A peer worth asking for chunks of the synced object.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerHint {
    pub id: PeerId,
    /// QUIC address.
    pub addr: SocketAddr,
    /// Relative to the requester.
    pub proximity: Proximity,
    /// Uploads in flight, as last reported by the peer (omitted when 0).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub load: u32,
    /// Holds every chunk (`have` is then empty). Omitted when false.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub complete: bool,
    /// Omitted when empty (a complete peer).
    #[serde(default, skip_serializing_if = "ChunkBitmap::is_empty")]
    pub have: ChunkBitmap,
}

/// For `skip_serializing_if`: a hint's defaults stay off the wire (a 32-hint reply
/// is ~15 % smaller; readers default them, as every version has).
fn is_zero(n: &u32) -> bool {
    *n == 0
}

/// `POST /v1/sync` answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SyncResponse {
    /// The authoritative layout; adopt it. `None`: the tracker does not know the key
    /// and the request proposed none.
    pub layout: Option<Layout>,
    /// Chunk ids published since the request's cursor (all of them for a new cursor).
    #[serde(default)]
    pub ids: Vec<IndexedId>,
    /// Send this back in the next sync of this key.
    #[serde(default)]
    pub cursor: Option<Cursor>,
    /// The tracker capped `ids` (its `max_ids_per_reply`): sync again at once with
    /// `cursor` for the rest.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub more: bool,
    /// At most the tracker's `max_peers_per_reply`, best first: same node, zone,
    /// region, other; then lower load; then more recently heard from. Only peers holding
    /// a chunk the requester lacks are listed.
    #[serde(default)]
    pub peers: Vec<PeerHint>,
    /// Every chunk index this agent holds a live origin lease on for this key
    /// (granted now or earlier), lowest first: fetch these from the origin.
    #[serde(default)]
    pub leases: Vec<u32>,
    /// A lease not fulfilled (chunk announced) within this many milliseconds of its
    /// grant lapses and may be granted to someone else.
    #[serde(default)]
    pub lease_ttl_ms: u64,
    /// Chunks of the request's `want` that another agent holds a live lease on: wait
    /// for that agent to announce them rather than asking again (or going to the
    /// origin). Empty from older trackers.
    #[serde(default, skip_serializing_if = "ChunkBitmap::is_empty")]
    pub leased_elsewhere: ChunkBitmap,
}

/// One held object in an announce.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HeldObject {
    pub key: ObjectKey,
    pub layout: Layout,
    #[serde(default)]
    pub have: ChunkBitmap,
    /// Holds every chunk (`have` is then ignored).
    #[serde(default)]
    pub complete: bool,
    /// Chunk ids of held chunks; send them only for keys the tracker listed in
    /// [`AnnounceResponse::want_ids`].
    #[serde(default)]
    pub publish: Vec<IndexedId>,
}

/// `POST /v1/announce` body.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AnnounceRequest {
    pub agent: AgentInfo,
    pub objects: Vec<HeldObject>,
}

/// An announced object the tracker did not record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Refusal {
    pub key: ObjectKey,
    /// One line, for logs.
    pub reason: String,
}

/// `POST /v1/announce` answer.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AnnounceResponse {
    /// Objects recorded.
    pub accepted: u32,
    /// Keys for which the tracker lacks the id of a chunk this agent holds (it
    /// restarted, or the object expired): announce them again soon with `publish`.
    #[serde(default)]
    pub want_ids: Vec<ObjectKey>,
    #[serde(default)]
    pub refused: Vec<Refusal>,
}

/// Body of every 4xx/5xx answer from the tracker.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    /// One line saying what was wrong.
    pub error: String,
}

impl ChunkBitmap {
    /// The empty set.
    pub const fn new() -> Self {
        Self { bytes: Vec::new() }
    }

    /// Every index in `0..count`.
    pub fn full(count: u32) -> Self {
        let mut bytes = vec![0xFF; (count / 8) as usize];
        let rest = count % 8;
        if rest != 0 {
            bytes.push((1u8 << rest) - 1);
        }
        Self { bytes }
    }

    /// From raw bitset bytes (see the module docs).
    pub fn from_bytes(mut bytes: Vec<u8>) -> Self {
        while bytes.last() == Some(&0) {
            bytes.pop();
        }
        Self { bytes }
    }

    /// The canonical bitset bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// Adds `index`.
    pub fn insert(&mut self, index: u32) {
        let byte = (index / 8) as usize;
        if self.bytes.len() <= byte {
            self.bytes.resize(byte + 1, 0);
        }
        self.bytes[byte] |= 1 << (index % 8);
    }

    /// Removes `index`.
    pub fn remove(&mut self, index: u32) {
        let byte = (index / 8) as usize;
        if let Some(b) = self.bytes.get_mut(byte) {
            *b &= !(1 << (index % 8));
            while self.bytes.last() == Some(&0) {
                self.bytes.pop();
            }
        }
    }

    pub fn contains(&self, index: u32) -> bool {
        self.bytes
            .get((index / 8) as usize)
            .is_some_and(|b| b & (1 << (index % 8)) != 0)
    }

    pub fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }

    /// Number of indices in the set.
    pub fn count(&self) -> u32 {
        self.bytes.iter().map(|b| b.count_ones()).sum()
    }

    /// One past the highest index in the set (0 when empty).
    pub fn end(&self) -> u64 {
        match self.bytes.last() {
            // Invariant: the last byte is non-zero.
            Some(b) => (self.bytes.len() as u64 - 1) * 8 + u64::from(8 - b.leading_zeros()),
            None => 0,
        }
    }

    /// Whether every index in `0..count` is in the set.
    pub fn is_full(&self, count: u32) -> bool {
        self.count() >= count && self.end() <= u64::from(count)
    }

    /// Indices in the set, ascending.
    pub fn iter(&self) -> impl Iterator<Item = u32> + '_ {
        self.bytes.iter().enumerate().flat_map(|(i, &b)| {
            (0..8u32)
                .filter(move |bit| b & (1 << bit) != 0)
                .map(move |bit| i as u32 * 8 + bit)
        })
    }

    /// Indices in `0..count` not in the set, ascending.
    pub fn missing(&self, count: u32) -> impl Iterator<Item = u32> + '_ {
        let bytes = count.div_ceil(8) as usize;
        (0..bytes)
            .filter(move |&i| self.bytes.get(i).copied().unwrap_or(0) != 0xFF)
            .flat_map(move |i| {
                let b = self.bytes.get(i).copied().unwrap_or(0);
                (0..8u32)
                    .filter(move |bit| b & (1 << bit) == 0)
                    .map(move |bit| i as u32 * 8 + bit)
            })
            .filter(move |&i| i < count)
    }

    /// Adds every index of `other`.
    pub fn union_with(&mut self, other: &ChunkBitmap) {
        if self.bytes.len() < other.bytes.len() {
            self.bytes.resize(other.bytes.len(), 0);
        }
        for (a, b) in self.bytes.iter_mut().zip(&other.bytes) {
            *a |= b;
        }
    }

    /// Whether every index of `self` is also in `other`.
    pub fn is_subset(&self, other: &ChunkBitmap) -> bool {
        self.bytes
            .iter()
            .enumerate()
            .all(|(i, &a)| a & !other.bytes.get(i).copied().unwrap_or(0) == 0)
    }

    /// The set encoded as base64 (see the module docs).
    pub fn to_base64(&self) -> String {
        STANDARD.encode(&self.bytes)
    }

    /// Appends [`ChunkBitmap::to_base64`]'s text to `out` (no `String` in between).
    pub fn append_base64(&self, out: &mut Vec<u8>) {
        let start = out.len();
        // At most MAX_BITMAP_BYTES: the length cannot overflow.
        let len = base64::encoded_len(self.bytes.len(), true).unwrap_or(0);
        out.resize(start + len, 0);
        // The slice has exactly the room encoded_len gives.
        let written = STANDARD
            .encode_slice(&self.bytes, &mut out[start..])
            .unwrap_or(0);
        out.truncate(start + written);
    }

    /// Parses [`ChunkBitmap::to_base64`] output, refusing anything longer than
    /// [`MAX_BITMAP_BYTES`] before decoding it.
    pub fn from_base64(s: &str) -> Result<Self, BitmapError> {
        if s.len() > MAX_BITMAP_BYTES.div_ceil(3) * 4 {
            return Err(BitmapError::TooLong);
        }
        let bytes = STANDARD.decode(s).map_err(|_| BitmapError::Encoding)?;
        if bytes.len() > MAX_BITMAP_BYTES {
            return Err(BitmapError::TooLong);
        }
        Ok(Self::from_bytes(bytes))
    }
}

impl FromIterator<u32> for ChunkBitmap {
    fn from_iter<I: IntoIterator<Item = u32>>(iter: I) -> Self {
        let mut b = Self::new();
        for i in iter {
            b.insert(i);
        }
        b
    }
}

impl std::fmt::Debug for ChunkBitmap {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ChunkBitmap({} set, end {})", self.count(), self.end())
    }
}

impl Serialize for ChunkBitmap {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        // A reply carries up to 32 bitmaps, most of them small: encode those on the
        // stack rather than into a String each.
        let mut buf = [0u8; 128];
        if self.bytes.len() <= 96
            && let Ok(n) = STANDARD.encode_slice(&self.bytes, &mut buf)
            && let Ok(text) = std::str::from_utf8(&buf[..n])
        {
            return s.serialize_str(text);
        }
        s.serialize_str(&self.to_base64())
    }
}

impl<'de> Deserialize<'de> for ChunkBitmap {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        Self::from_base64(&s).map_err(serde::de::Error::custom)
    }
}

impl SyncResponse {
    /// The answer for a key the tracker does not know.
    pub fn unknown(lease_ttl_ms: u64) -> Self {
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
}

impl PeerHint {
    /// Whether this peer holds chunk `index`.
    pub fn has(&self, index: u32) -> bool {
        self.complete || self.have.contains(index)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn bitmap_set_ops() {
        let mut b = ChunkBitmap::new();
        assert!(b.is_empty());
        assert_eq!(b.end(), 0);
        b.insert(0);
        b.insert(9);
        b.insert(63);
        assert!(b.contains(9) && !b.contains(8) && !b.contains(1000));
        assert_eq!(b.count(), 3);
        assert_eq!(b.end(), 64);
        assert_eq!(b.iter().collect::<Vec<_>>(), vec![0, 9, 63]);
        b.remove(63);
        assert_eq!(b.end(), 10);
        assert_eq!(b.as_bytes().len(), 2, "trailing zero bytes dropped");
        b.remove(1000);
        let full = ChunkBitmap::full(10);
        assert!(full.is_full(10) && !full.is_full(11));
        assert!(b.is_subset(&full) && !full.is_subset(&b));
        assert_eq!(
            b.missing(12).collect::<Vec<_>>(),
            vec![1, 2, 3, 4, 5, 6, 7, 8, 10, 11]
        );
        assert_eq!(full.missing(10).count(), 0);
        let mut u: ChunkBitmap = [12u32].into_iter().collect();
        u.union_with(&full);
        assert_eq!(u.count(), 11);
        assert!(ChunkBitmap::full(0).is_empty());
        assert!(ChunkBitmap::full(16).is_full(16));
    }

    /// Small bitmaps are encoded on the stack, larger ones into a String: the JSON is
    /// the same base64 either way, on both sides of the 96-byte boundary.
    #[test]
    fn bitmap_json_is_base64_at_every_size() {
        for len in [0usize, 1, 2, 3, 8, 95, 96, 97, 128, 1000] {
            let b: ChunkBitmap = (0..len as u32 * 8).filter(|i| i % 3 != 1).collect();
            let json = serde_json::to_string(&b).unwrap();
            assert_eq!(json, format!("\"{}\"", b.to_base64()), "{len} bytes");
            assert_eq!(serde_json::from_str::<ChunkBitmap>(&json).unwrap(), b);
            let mut appended = b"x".to_vec();
            b.append_base64(&mut appended);
            assert_eq!(appended, format!("x{}", b.to_base64()).into_bytes());
        }
    }

    #[test]
    fn bitmap_encoding_is_canonical() {
        let b: ChunkBitmap = [0u32, 9].into_iter().collect();
        assert_eq!(b.to_base64(), STANDARD.encode([0x01, 0x02]));
        assert_eq!(serde_json::to_string(&b).unwrap(), "\"AQI=\"");
        let padded = ChunkBitmap::from_base64(&STANDARD.encode([0x01, 0x02, 0, 0])).unwrap();
        assert_eq!(padded, b);
        assert_eq!(ChunkBitmap::from_base64("").unwrap(), ChunkBitmap::new());
        assert_eq!(ChunkBitmap::from_base64("!!"), Err(BitmapError::Encoding));
        let huge = "A".repeat(MAX_BITMAP_BYTES / 3 * 4 + 8);
        assert_eq!(ChunkBitmap::from_base64(&huge), Err(BitmapError::TooLong));
    }

    #[test]
    fn sync_messages_round_trip_with_defaults() {
        let j = r#"{"agent":{"peer_addr":"127.0.0.1:7482"},"key":"d1 sha256:ab 10","extra":1}"#;
        let r: SyncRequest = serde_json::from_str(j).unwrap();
        assert_eq!(r.layout, None);
        assert!(r.have.is_empty() && r.publish.is_empty() && !r.complete);
        assert_eq!(r.agent.load, 0);

        let req = SyncRequest {
            agent: AgentInfo {
                peer_addr: "10.0.0.1:7482".parse().unwrap(),
                topology: Topology {
                    node: "n1".into(),
                    zone: "z".into(),
                    region: "r".into(),
                },
                load: 3,
            },
            key: ObjectKey::immutable("sha256:ab", 10).unwrap(),
            layout: Some(Layout::new(10, 1 << 20).unwrap()),
            have: [1u32, 2].into_iter().collect(),
            complete: false,
            publish: vec![IndexedId {
                index: 1,
                id: ChunkId::of(b"x"),
            }],
            want_leases: 2,
            want: [3u32, 4, 9].into_iter().collect(),
            release: vec![5],
            cursor: Some(Cursor { epoch: 7, pos: 3 }),
            renew: vec![1],
        };
        let back: SyncRequest =
            serde_json::from_str(&serde_json::to_string(&req).unwrap()).unwrap();
        assert_eq!(back, req);

        let resp = SyncResponse {
            peers: vec![PeerHint {
                id: "a".parse().unwrap(),
                addr: "10.0.0.2:7482".parse().unwrap(),
                proximity: Proximity::SameZone,
                load: 0,
                complete: true,
                have: ChunkBitmap::new(),
            }],
            leases: vec![4],
            leased_elsewhere: [3u32, 9].into_iter().collect(),
            ..SyncResponse::unknown(10_000)
        };
        let back: SyncResponse =
            serde_json::from_str(&serde_json::to_string(&resp).unwrap()).unwrap();
        assert_eq!(back, resp);
        assert!(back.peers[0].has(12345));
    }

    /// A hint leaves its defaults out (load 0, not complete, an empty bitmap) and
    /// still reads as before; the old form with every field parses to the same hint.
    #[test]
    fn hint_defaults_stay_off_the_wire() {
        let partial = PeerHint {
            id: "a".parse().unwrap(),
            addr: "10.0.0.2:7482".parse().unwrap(),
            proximity: Proximity::SameRegion,
            load: 0,
            complete: false,
            have: [1u32].into_iter().collect(),
        };
        let json = serde_json::to_string(&partial).unwrap();
        assert_eq!(
            json,
            r#"{"id":"a","addr":"10.0.0.2:7482","proximity":"SameRegion","have":"Ag=="}"#
        );
        let old = r#"{"id":"a","addr":"10.0.0.2:7482","proximity":"SameRegion","load":0,"complete":false,"have":"Ag=="}"#;
        assert_eq!(serde_json::from_str::<PeerHint>(old).unwrap(), partial);
        assert_eq!(serde_json::from_str::<PeerHint>(&json).unwrap(), partial);
        let seed = PeerHint {
            load: 3,
            complete: true,
            have: ChunkBitmap::new(),
            ..partial
        };
        let json = serde_json::to_string(&seed).unwrap();
        assert_eq!(
            json,
            r#"{"id":"a","addr":"10.0.0.2:7482","proximity":"SameRegion","load":3,"complete":true}"#
        );
        assert_eq!(serde_json::from_str::<PeerHint>(&json).unwrap(), seed);
    }

    /// The lease contract's fields: on the wire as a base64 bitmap and a list, left out
    /// when empty, and defaulted when an older peer leaves them out.
    #[test]
    fn lease_contract_fields_round_trip() {
        let j = r#"{"agent":{"peer_addr":"127.0.0.1:7482"},"key":"d1 sha256:ab 10","want_leases":2,"want":"GA==","release":[7]}"#;
        let r: SyncRequest = serde_json::from_str(j).unwrap();
        assert_eq!(r.want.iter().collect::<Vec<_>>(), vec![3, 4]);
        assert_eq!((r.want_leases, r.release.clone()), (2, vec![7]));
        let v: serde_json::Value = serde_json::to_value(&r).unwrap();
        assert_eq!(v["want"], "GA==");
        assert_eq!(v["release"], serde_json::json!([7]));

        let old: SyncRequest = serde_json::from_str(
            r#"{"agent":{"peer_addr":"127.0.0.1:7482"},"key":"d1 sha256:ab 10","want_leases":2}"#,
        )
        .unwrap();
        assert!(old.want.is_empty() && old.release.is_empty());
        let v: serde_json::Value = serde_json::to_value(&old).unwrap();
        assert!(v.get("want").is_none() && v.get("release").is_none());

        let resp = SyncResponse {
            leased_elsewhere: [0u32, 17].into_iter().collect(),
            ..SyncResponse::unknown(1)
        };
        let v: serde_json::Value = serde_json::to_value(&resp).unwrap();
        assert_eq!(v["leased_elsewhere"], "AQAC");
        let back: SyncResponse = serde_json::from_value(v).unwrap();
        assert_eq!(
            back.leased_elsewhere.iter().collect::<Vec<_>>(),
            vec![0, 17]
        );
        let old: SyncResponse = serde_json::from_str(r#"{"layout":null}"#).unwrap();
        assert!(old.leased_elsewhere.is_empty());
        assert!(
            serde_json::to_value(SyncResponse::unknown(1)).unwrap()["leased_elsewhere"].is_null()
        );
    }

    #[test]
    fn announce_round_trip() {
        let a = AnnounceRequest {
            agent: AgentInfo {
                peer_addr: "[::1]:1".parse().unwrap(),
                topology: Topology::default(),
                load: 0,
            },
            objects: vec![HeldObject {
                key: ObjectKey::immutable("sha256:cd", 1).unwrap(),
                layout: Layout::new(1, 1 << 20).unwrap(),
                have: ChunkBitmap::new(),
                complete: true,
                publish: Vec::new(),
            }],
        };
        let back: AnnounceRequest =
            serde_json::from_str(&serde_json::to_string(&a).unwrap()).unwrap();
        assert_eq!(back, a);
        let r: AnnounceResponse = serde_json::from_str(r#"{"accepted":1}"#).unwrap();
        assert_eq!(r.accepted, 1);
        assert!(r.want_ids.is_empty());
    }
}
