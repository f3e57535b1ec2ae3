//! `--digest ALG:HEX`: the digest a download must have, checked while it streams.

use std::fmt;
use std::str::FromStr;

use sha2::{Digest as _, Sha256};
use shoal_proto::Sha256Digest;

/// A whole-object digest: `sha256:<64 hex>` or `blake3:<64 hex>`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expected {
    Sha256(Sha256Digest),
    Blake3([u8; 32]),
}

/// Why a `--digest` value was refused.
#[derive(Debug, thiserror::Error)]
#[error("--digest {0:?}: want sha256:<64 hex digits> or blake3:<64 hex digits>")]
pub struct BadDigest(String);

impl FromStr for Expected {
    type Err = BadDigest;

    fn from_str(s: &str) -> Result<Self, BadDigest> {
        let bad = || BadDigest(s.to_owned());
        let (alg, hex) = s.split_once(':').ok_or_else(bad)?;
        // Either case on the command line; the digest types take lower case.
        let hex = hex.trim().to_ascii_lowercase();
        match alg.to_ascii_lowercase().as_str() {
            "sha256" | "sha-256" => Sha256Digest::from_hex(&hex)
                .map(Expected::Sha256)
                .map_err(|_| bad()),
            "blake3" => {
                let mut out = [0u8; 32];
                hex::decode_to_slice(&hex, &mut out).map_err(|_| bad())?;
                Ok(Expected::Blake3(out))
            }
            _ => Err(bad()),
        }
    }
}

impl fmt::Display for Expected {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Expected::Sha256(d) => d.fmt(f),
            Expected::Blake3(d) => write!(f, "blake3:{}", hex::encode(d)),
        }
    }
}

impl Expected {
    /// A hasher of this digest's algorithm.
    pub fn hasher(&self) -> Hasher {
        match self {
            Expected::Sha256(_) => Hasher::Sha256(Box::default()),
            Expected::Blake3(_) => Hasher::Blake3(Box::default()),
        }
    }
}

/// An incremental hash of the bytes written so far.
#[derive(Debug, Clone)]
pub enum Hasher {
    Sha256(Box<Sha256>),
    Blake3(Box<blake3::Hasher>),
}

impl Hasher {
    pub fn update(&mut self, b: &[u8]) {
        match self {
            Hasher::Sha256(h) => h.update(b),
            Hasher::Blake3(h) => {
                h.update(b);
            }
        }
    }

    /// The digest of everything passed to [`Hasher::update`].
    pub fn finish(self) -> Expected {
        match self {
            Hasher::Sha256(h) => Expected::Sha256(Sha256Digest::from_sha256(h.finalize().into())),
            Hasher::Blake3(h) => Expected::Blake3(*h.finalize().as_bytes()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_hashes() {
        let want: Expected =
            "sha256:ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
                .parse()
                .unwrap();
        let mut h = want.hasher();
        h.update(b"ab");
        h.update(b"c");
        assert_eq!(h.finish(), want);
        let b3 = format!("blake3:{}", blake3::hash(b"abc").to_hex());
        let want: Expected = b3.parse().unwrap();
        let mut h = want.hasher();
        h.update(b"abc");
        assert_eq!(h.finish().to_string(), b3);
        for bad in ["sha256:zz", "md5:00", "abc", "sha256:00"] {
            assert!(bad.parse::<Expected>().is_err(), "{bad}");
        }
    }
}
