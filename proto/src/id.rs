//! Content identifiers.
//!
//! A [`ChunkId`] is the BLAKE3 hash of a chunk's bytes; it is how chunks are named on
//! disk, on the wire and in manifests. A [`ManifestId`] is the BLAKE3 hash of a
//! manifest's canonical encoding. Both print as 64 lowercase hex digits.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Length in bytes of a BLAKE3 digest.
pub const HASH_LEN: usize = 32;

/// A hex string that is not a 32-byte digest.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("not a 64-digit hex BLAKE3 digest: {0:?}")]
pub struct ParseIdError(String);

macro_rules! hash_id {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name([u8; HASH_LEN]);

        impl $name {
            /// Wraps raw digest bytes.
            pub const fn from_bytes(bytes: [u8; HASH_LEN]) -> Self {
                Self(bytes)
            }

            /// The raw digest bytes.
            pub const fn as_bytes(&self) -> &[u8; HASH_LEN] {
                &self.0
            }

            /// Hashes `data` with BLAKE3.
            pub fn of(data: &[u8]) -> Self {
                Self(*blake3::hash(data).as_bytes())
            }

            /// Whether `data` hashes to this id.
            pub fn verifies(&self, data: &[u8]) -> bool {
                // blake3::Hash equality is constant-time.
                blake3::hash(data) == blake3::Hash::from_bytes(self.0)
            }

            /// Lowercase hex, 64 characters.
            pub fn to_hex(&self) -> String {
                hex::encode(self.0)
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&hex::encode(self.0))
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                // Short form keeps logs readable; Display gives the full id.
                write!(f, "{}({}…)", stringify!($name), &hex::encode(&self.0[..6]))
            }
        }

        impl FromStr for $name {
            type Err = ParseIdError;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                let mut out = [0u8; HASH_LEN];
                if s.len() != HASH_LEN * 2 {
                    return Err(ParseIdError(s.chars().take(80).collect()));
                }
                hex::decode_to_slice(s, &mut out)
                    .map_err(|_| ParseIdError(s.chars().take(80).collect()))?;
                Ok(Self(out))
            }
        }

        impl From<blake3::Hash> for $name {
            fn from(h: blake3::Hash) -> Self {
                Self(*h.as_bytes())
            }
        }

        impl Serialize for $name {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(&self.to_hex())
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
                s.parse().map_err(serde::de::Error::custom)
            }
        }
    };
}

hash_id!(
    /// BLAKE3 of one chunk's bytes.
    ChunkId
);
hash_id!(
    /// BLAKE3 of a manifest's canonical encoding (see [`crate::manifest`]).
    ManifestId
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_round_trip_and_verify() {
        let id = ChunkId::of(b"hello");
        let s = id.to_string();
        assert_eq!(s.len(), 64);
        assert_eq!(s.parse::<ChunkId>().unwrap(), id);
        assert!(id.verifies(b"hello"));
        assert!(!id.verifies(b"hellO"));
        assert_eq!(s, blake3::hash(b"hello").to_hex().as_str());
    }

    #[test]
    fn rejects_bad_hex() {
        assert!("zz".parse::<ChunkId>().is_err());
        assert!("g".repeat(64).parse::<ChunkId>().is_err());
        assert!("a".repeat(63).parse::<ChunkId>().is_err());
    }

    #[test]
    fn serde_is_hex_string() {
        let id = ChunkId::of(b"x");
        let j = serde_json::to_string(&id).unwrap();
        assert_eq!(j, format!("\"{id}\""));
        assert_eq!(serde_json::from_str::<ChunkId>(&j).unwrap(), id);
    }
}
