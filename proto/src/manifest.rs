//! Manifests: the chunk list of one object version, and chunk geometry.
//!
//! # Canonical encoding (version 1)
//!
//! All integers big-endian. The encoding is the input to [`ManifestId`], so two agents
//! that hashed the same bytes with the same chunk size produce the same id.
//!
//! ```text
//! magic     4 bytes  "SHM1"
//! key_len   u16      then key_len bytes of UTF-8 (the ObjectKey)
//! size      u64      object length in bytes
//! chunk     u32      chunk size in bytes
//! count     u32      number of chunk ids, = ceil(size / chunk)
//! ids       count × 32 bytes
//! dig_len   u16      then dig_len bytes of UTF-8 (whole-object digest, e.g. "sha256:…"; 0 = none)
//! ```

use std::ops::Range;

use serde::{Deserialize, Serialize};

use crate::id::{ChunkId, HASH_LEN, ManifestId};
use crate::key::{MAX_KEY_LEN, ObjectKey};
use crate::range::ByteRange;

/// Smallest chunk size accepted (except for the last chunk of an object).
pub const MIN_CHUNK_SIZE: u32 = 16 * 1024;
/// Largest chunk size accepted. Bounds memory per in-flight chunk.
pub const MAX_CHUNK_SIZE: u32 = 16 * 1024 * 1024;
/// Largest object a manifest can describe (1 TiB).
pub const MAX_OBJECT_SIZE: u64 = 1 << 40;
/// Longest whole-object digest a manifest carries, in bytes. Real ones are
/// `sha256:<64 hex>` (71 bytes); the bound keeps the canonical encoding's u16 length
/// exact, so a manifest always encodes to bytes that decode back to it.
pub const MAX_DIGEST_LEN: usize = 1024;

const MAGIC: &[u8; 4] = b"SHM1";

/// Chunk geometry of an object: its length and the fixed chunk size.
///
/// Decoding (serde) goes through [`Layout::new`], so a decoded layout is always within
/// bounds; a value built by hand from the public fields is not checked until it is
/// passed to something that validates it (`Manifest::new`, the scheduler, the tracker).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "RawLayout")]
pub struct Layout {
    /// Object length in bytes.
    pub size: u64,
    /// Chunk size in bytes; every chunk but the last has exactly this length.
    pub chunk_size: u32,
}

/// Why a layout, manifest or encoding was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ManifestError {
    #[error("chunk size {0} outside {MIN_CHUNK_SIZE}..={MAX_CHUNK_SIZE}")]
    ChunkSize(u32),
    #[error("object size {0} exceeds {MAX_OBJECT_SIZE}")]
    ObjectSize(u64),
    #[error("manifest lists {got} chunks, the layout needs {want}")]
    ChunkCount { got: usize, want: usize },
    #[error("manifest encoding is malformed: {0}")]
    Malformed(&'static str),
    #[error("whole-object digest of {0} bytes exceeds {MAX_DIGEST_LEN}")]
    DigestTooLong(usize),
}

/// The chunk list of one object version.
///
/// Decoding (serde: the tracker's JSON, the agent's on-disk metadata) goes through
/// [`Manifest::new`], so a decoded manifest always lists exactly
/// `layout.chunk_count()` chunk ids of a layout within bounds. The JSON shape is the
/// derived one (`key`, `layout`, `chunks`, `digest`), unchanged since version 1.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "RawManifest")]
pub struct Manifest {
    pub key: ObjectKey,
    pub layout: Layout,
    /// BLAKE3 of every chunk, in order.
    pub chunks: Vec<ChunkId>,
    /// A whole-object digest vouched for by the origin or the URL (`sha256:<hex>`), if any.
    pub digest: Option<String>,
}

/// A [`Layout`] as decoded, before [`Layout::new`] has checked it.
#[derive(Deserialize)]
struct RawLayout {
    size: u64,
    chunk_size: u32,
}

impl TryFrom<RawLayout> for Layout {
    type Error = ManifestError;
    fn try_from(r: RawLayout) -> Result<Self, Self::Error> {
        Self::new(r.size, r.chunk_size)
    }
}

/// A [`Manifest`] as decoded, before [`Manifest::new`] has checked it. The layout has
/// already passed [`Layout::new`] (its own `try_from`).
#[derive(Deserialize)]
struct RawManifest {
    key: ObjectKey,
    layout: Layout,
    chunks: Vec<ChunkId>,
    digest: Option<String>,
}

impl TryFrom<RawManifest> for Manifest {
    type Error = ManifestError;
    fn try_from(r: RawManifest) -> Result<Self, Self::Error> {
        Self::new(r.key, r.layout, r.chunks, r.digest)
    }
}

impl Layout {
    /// Checks bounds. Every other method assumes a layout that passed.
    pub fn new(size: u64, chunk_size: u32) -> Result<Self, ManifestError> {
        if !(MIN_CHUNK_SIZE..=MAX_CHUNK_SIZE).contains(&chunk_size) {
            return Err(ManifestError::ChunkSize(chunk_size));
        }
        if size > MAX_OBJECT_SIZE {
            return Err(ManifestError::ObjectSize(size));
        }
        Ok(Self { size, chunk_size })
    }

    /// Number of chunks; 0 for an empty object.
    pub fn chunk_count(&self) -> usize {
        // size ≤ 2^40 and chunk ≥ 2^14, so the count fits in usize on 32-bit too.
        self.size.div_ceil(u64::from(self.chunk_size)) as usize
    }

    /// Byte offsets `[start, end)` of chunk `index` (empty past the end).
    pub fn chunk_bounds(&self, index: usize) -> Range<u64> {
        let start = (index as u64)
            .saturating_mul(u64::from(self.chunk_size))
            .min(self.size);
        let end = start
            .saturating_add(u64::from(self.chunk_size))
            .min(self.size);
        start..end
    }

    /// Length of chunk `index` in bytes.
    pub fn chunk_len(&self, index: usize) -> u32 {
        let b = self.chunk_bounds(index);
        // bounded by chunk_size, a u32
        (b.end - b.start) as u32
    }

    /// Indices of the chunks that hold any byte of `range` (empty for an empty range).
    pub fn chunks_for(&self, range: ByteRange) -> Range<usize> {
        if range.is_empty() || range.start >= self.size {
            return 0..0;
        }
        let cs = u64::from(self.chunk_size);
        let first = (range.start / cs) as usize;
        let last = ((range.end.min(self.size) - 1) / cs) as usize;
        first..last + 1
    }
}

impl Manifest {
    /// Builds a manifest, checking that `chunks` matches the layout. An empty digest
    /// means none (the binary encoding cannot tell them apart, so neither does this).
    pub fn new(
        key: ObjectKey,
        layout: Layout,
        chunks: Vec<ChunkId>,
        digest: Option<String>,
    ) -> Result<Self, ManifestError> {
        let layout = Layout::new(layout.size, layout.chunk_size)?;
        let digest = digest.filter(|d| !d.is_empty());
        if let Some(d) = digest.as_deref().filter(|d| d.len() > MAX_DIGEST_LEN) {
            return Err(ManifestError::DigestTooLong(d.len()));
        }
        if chunks.len() != layout.chunk_count() {
            return Err(ManifestError::ChunkCount {
                got: chunks.len(),
                want: layout.chunk_count(),
            });
        }
        Ok(Self {
            key,
            layout,
            chunks,
            digest,
        })
    }

    /// The canonical encoding (see module docs).
    pub fn encode(&self) -> Vec<u8> {
        let key = self.key.as_str().as_bytes();
        let dig = self.digest.as_deref().unwrap_or("").as_bytes();
        let mut out = Vec::with_capacity(
            4 + 2 + key.len() + 16 + self.chunks.len() * HASH_LEN + 2 + dig.len(),
        );
        out.extend_from_slice(MAGIC);
        // ObjectKey is at most MAX_KEY_LEN (4096) bytes, so it fits in u16.
        out.extend_from_slice(&(key.len() as u16).to_be_bytes());
        out.extend_from_slice(key);
        out.extend_from_slice(&self.layout.size.to_be_bytes());
        out.extend_from_slice(&self.layout.chunk_size.to_be_bytes());
        out.extend_from_slice(&(self.chunks.len() as u32).to_be_bytes());
        for c in &self.chunks {
            out.extend_from_slice(c.as_bytes());
        }
        // Manifest::new bounds the digest by MAX_DIGEST_LEN, far below u16::MAX; a
        // value built by hand with a longer one is cut (and will not decode back).
        let dig_len = dig.len().min(u16::MAX as usize);
        out.extend_from_slice(&(dig_len as u16).to_be_bytes());
        out.extend_from_slice(&dig[..dig_len]);
        out
    }

    /// Parses a canonical encoding, checking every bound.
    pub fn decode(mut buf: &[u8]) -> Result<Self, ManifestError> {
        use ManifestError::Malformed;
        fn take<'a>(buf: &mut &'a [u8], n: usize) -> Result<&'a [u8], ManifestError> {
            if buf.len() < n {
                return Err(Malformed("truncated"));
            }
            let (a, b) = buf.split_at(n);
            *buf = b;
            Ok(a)
        }
        fn be<const N: usize>(buf: &mut &[u8]) -> Result<[u8; N], ManifestError> {
            let s = take(buf, N)?;
            let mut a = [0u8; N];
            a.copy_from_slice(s);
            Ok(a)
        }
        if take(&mut buf, 4)? != MAGIC {
            return Err(Malformed("bad magic"));
        }
        let key_len = u16::from_be_bytes(be(&mut buf)?) as usize;
        if key_len > MAX_KEY_LEN {
            return Err(Malformed("key too long"));
        }
        let key = std::str::from_utf8(take(&mut buf, key_len)?)
            .map_err(|_| Malformed("key not UTF-8"))?;
        let key = ObjectKey::try_from(key.to_owned()).map_err(|_| Malformed("invalid key"))?;
        let size = u64::from_be_bytes(be(&mut buf)?);
        let chunk_size = u32::from_be_bytes(be(&mut buf)?);
        let layout = Layout::new(size, chunk_size)?;
        let count = u32::from_be_bytes(be(&mut buf)?) as usize;
        if count != layout.chunk_count() {
            return Err(ManifestError::ChunkCount {
                got: count,
                want: layout.chunk_count(),
            });
        }
        let ids = take(
            &mut buf,
            count
                .checked_mul(HASH_LEN)
                .ok_or(Malformed("count overflow"))?,
        )?;
        let chunks = ids
            .chunks_exact(HASH_LEN)
            .map(|c| {
                let mut a = [0u8; HASH_LEN];
                a.copy_from_slice(c);
                ChunkId::from_bytes(a)
            })
            .collect();
        let dig_len = u16::from_be_bytes(be(&mut buf)?) as usize;
        if dig_len > MAX_DIGEST_LEN {
            return Err(ManifestError::DigestTooLong(dig_len));
        }
        let dig = std::str::from_utf8(take(&mut buf, dig_len)?)
            .map_err(|_| Malformed("digest not UTF-8"))?;
        if !buf.is_empty() {
            return Err(Malformed("trailing bytes"));
        }
        let digest = (!dig.is_empty()).then(|| dig.to_owned());
        Ok(Self {
            key,
            layout,
            chunks,
            digest,
        })
    }

    /// BLAKE3 of the canonical encoding.
    pub fn id(&self) -> ManifestId {
        ManifestId::of(&self.encode())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::key::Validator;
    use proptest::prelude::*;

    fn key() -> ObjectKey {
        ObjectKey::versioned("http://o/f", &Validator::ETag("\"e\"".into()), 100).unwrap()
    }

    #[test]
    fn geometry() {
        let l = Layout::new(100_000, 16384).unwrap();
        assert_eq!(l.chunk_count(), 7);
        assert_eq!(l.chunk_bounds(6), 98304..100_000);
        assert_eq!(l.chunk_len(6), 1696);
        assert_eq!(l.chunk_bounds(7), 100_000..100_000);
        assert_eq!(l.chunks_for(ByteRange::new(0, 1)), 0..1);
        assert_eq!(l.chunks_for(ByteRange::new(16383, 16385)), 0..2);
        assert_eq!(l.chunks_for(ByteRange::new(0, 100_000)), 0..7);
        assert_eq!(Layout::new(0, 16384).unwrap().chunk_count(), 0);
        assert!(Layout::new(1, 10).is_err());
    }

    #[test]
    fn encode_decode_round_trip() {
        let l = Layout::new(40_000, 16384).unwrap();
        let ids = (0..3u8).map(|i| ChunkId::of(&[i])).collect();
        let m = Manifest::new(key(), l, ids, Some("sha256:ab".into())).unwrap();
        let enc = m.encode();
        assert_eq!(Manifest::decode(&enc).unwrap(), m);
        assert_eq!(m.id(), ManifestId::of(&enc));
        assert!(Manifest::decode(&enc[..enc.len() - 1]).is_err());
        let mut extra = enc.clone();
        extra.push(0);
        assert!(Manifest::decode(&extra).is_err());
    }

    /// A digest too long for the encoding's u16 length was cut on encode (mid-UTF-8
    /// even), so the manifest's bytes did not decode back and its id was not of it.
    #[test]
    fn long_digest_refused() {
        let l = Layout::new(40_000, 16384).unwrap();
        let ids: Vec<ChunkId> = (0..3u8).map(|i| ChunkId::of(&[i])).collect();
        let long = format!("sha256:{}", "\u{e9}".repeat(40_000));
        assert_eq!(
            Manifest::new(key(), l, ids.clone(), Some(long.clone())),
            Err(ManifestError::DigestTooLong(long.len()))
        );
        let j = serde_json::json!({"key": key(), "layout": l, "chunks": ids, "digest": long});
        let e = serde_json::from_value::<Manifest>(j)
            .unwrap_err()
            .to_string();
        assert!(e.contains("digest of 80007 bytes exceeds 1024"), "{e}");
        let ok = "x".repeat(MAX_DIGEST_LEN);
        let m = Manifest::new(key(), l, ids, Some(ok)).unwrap();
        assert_eq!(Manifest::decode(&m.encode()).unwrap(), m);
        let mut enc = m.encode();
        // Lengthen the digest by one byte: refused on decode too.
        let at = enc.len() - MAX_DIGEST_LEN - 2;
        enc[at..at + 2].copy_from_slice(&((MAX_DIGEST_LEN + 1) as u16).to_be_bytes());
        enc.push(b'x');
        assert_eq!(
            Manifest::decode(&enc),
            Err(ManifestError::DigestTooLong(MAX_DIGEST_LEN + 1))
        );
    }

    #[test]
    fn wrong_count_refused() {
        let l = Layout::new(40_000, 16384).unwrap();
        assert!(Manifest::new(key(), l, vec![], None).is_err());
    }

    /// A manifest as the agent's metadata files and the tracker's bodies hold it today
    /// (the derived serde shape). Decoding must keep accepting it byte for byte.
    const TODAY_JSON: &str = r#"{"key":"d1 sha256:ab 40000","layout":{"size":40000,"chunk_size":16384},"chunks":["0000000000000000000000000000000000000000000000000000000000000000","1111111111111111111111111111111111111111111111111111111111111111","2222222222222222222222222222222222222222222222222222222222222222"],"digest":"sha256:ab"}"#;

    /// A chunk id in JSON: one hex digit (`i % 16`) 64 times, quoted.
    fn hex_id(i: usize) -> String {
        format!("\"{}\"", format!("{:x}", i % 16).repeat(64))
    }

    /// A manifest JSON with `n` chunk ids for a layout of `size` / `chunk_size`.
    fn json(size: u64, chunk_size: u32, n: usize) -> String {
        let ids: Vec<String> = (0..n).map(hex_id).collect();
        format!(
            r#"{{"key":"d1 sha256:ab {size}","layout":{{"size":{size},"chunk_size":{chunk_size}}},"chunks":[{}],"digest":null}}"#,
            ids.join(",")
        )
    }

    fn decode_json(j: &str) -> Result<Manifest, String> {
        serde_json::from_str::<Manifest>(j).map_err(|e| e.to_string())
    }

    #[test]
    fn decodes_todays_json() {
        let ids = (0..3u8)
            .map(|i| ChunkId::from_bytes([i * 0x11; 32]))
            .collect();
        let want = Manifest::new(
            ObjectKey::immutable("sha256:ab", 40_000).unwrap(),
            Layout::new(40_000, 16384).unwrap(),
            ids,
            Some("sha256:ab".into()),
        )
        .unwrap();
        assert_eq!(decode_json(TODAY_JSON).unwrap(), want);
        // And the encoding did not change: what is written is what was written before.
        assert_eq!(serde_json::to_string(&want).unwrap(), TODAY_JSON);
        // No digest: `null`, and an absent field, both decode to `None`.
        let m = decode_json(&json(40_000, 16384, 3)).unwrap();
        assert_eq!(m.digest, None);
        assert_eq!(m.chunks.len(), 3);
        let absent = json(40_000, 16384, 3).replace(r#","digest":null"#, "");
        assert_eq!(decode_json(&absent).unwrap(), m);
        // An empty digest is none too: the binary encoding writes both as length 0, so
        // a JSON `""` kept as `Some("")` would not survive a round trip (found by fuzzing).
        let empty = json(40_000, 16384, 3).replace("\"digest\":null", "\"digest\":\"\"");
        let m2 = decode_json(&empty).unwrap();
        assert_eq!(m2, m);
        assert_eq!(Manifest::decode(&m2.encode()), Ok(m2));
    }

    #[test]
    fn decode_refuses_chunk_size_zero() {
        let e = decode_json(&json(1, 0, 1)).unwrap_err();
        assert!(e.contains("chunk size 0 outside"), "{e}");
        let e = serde_json::from_str::<Layout>(r#"{"size":1,"chunk_size":0}"#).unwrap_err();
        assert!(e.to_string().contains("chunk size 0 outside"), "{e}");
        // Below the minimum and above the maximum too.
        assert!(decode_json(&json(1, MIN_CHUNK_SIZE - 1, 1)).is_err());
        assert!(decode_json(&json(1, MAX_CHUNK_SIZE + 1, 1)).is_err());
        assert!(decode_json(&json(MAX_OBJECT_SIZE + 1, MAX_CHUNK_SIZE, 0)).is_err());
    }

    #[test]
    fn decode_refuses_chunk_count_mismatch() {
        // 40 000 bytes in 16 KiB chunks is 3 chunks.
        assert!(decode_json(&json(40_000, 16384, 3)).is_ok());
        for n in [0, 1, 2, 4, 9] {
            let e = decode_json(&json(40_000, 16384, n)).unwrap_err();
            assert!(
                e.contains(&format!("manifest lists {n} chunks, the layout needs 3")),
                "{n}: {e}"
            );
        }
        // An empty object lists no chunk.
        assert!(decode_json(&json(0, 16384, 0)).is_ok());
        assert!(decode_json(&json(0, 16384, 1)).is_err());
        // The size is what counts, not the chunk list: one byte more is one chunk more.
        assert!(decode_json(&json(3 * 16384 + 1, 16384, 3)).is_err());
    }

    proptest! {
        #[test]
        fn decode_never_panics(data in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = Manifest::decode(&data);
        }

        /// Any JSON of the manifest's shape, sane or not, either fails to decode or
        /// yields a manifest whose chunk list matches its layout (so slicing `chunks` by
        /// `chunks_for` cannot go out of bounds and nothing divides by zero).
        #[test]
        fn json_decode_is_valid_or_error(
            size in prop_oneof![0u64..200_000, any::<u64>()],
            chunk_size in prop_oneof![Just(0u32), 0u32..100_000, any::<u32>()],
            n in 0usize..16,
        ) {
            if let Ok(m) = serde_json::from_str::<Manifest>(&json(size, chunk_size, n)) {
                prop_assert_eq!(m.chunks.len(), m.layout.chunk_count());
                prop_assert!(m.layout.chunk_size >= MIN_CHUNK_SIZE);
                let all = m.layout.chunks_for(ByteRange::new(0, m.layout.size));
                prop_assert!(all.end <= m.chunks.len());
            }
        }

        #[test]
        fn json_decode_never_panics(data in proptest::collection::vec(any::<u8>(), 0..256)) {
            let _ = serde_json::from_slice::<Manifest>(&data);
        }

        #[test]
        fn chunks_for_covers_range(size in 1u64..10_000_000, cs in 16384u32..100_000, a in 0u64..10_000_000, n in 1u64..1_000_000) {
            let l = Layout::new(size, cs).unwrap();
            let start = a % size;
            let r = ByteRange::new(start, (start + n).min(size));
            let c = l.chunks_for(r);
            prop_assert!(l.chunk_bounds(c.start).start <= r.start);
            prop_assert!(l.chunk_bounds(c.end - 1).end >= r.end);
            prop_assert!(l.chunk_bounds(c.start).end > r.start);
        }
    }
}
