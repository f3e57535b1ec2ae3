//! [`Sha256Digest`]: a whole-object SHA-256, parsed once from `sha256:<64 hex>` (OCI
//! blob and manifest digests, apt `by-hash` paths, RFC 9530 `Repr-Digest`) and
//! compared as bytes thereafter. Only SHA-256: other algorithms are not recognised,
//! so their objects are keyed and checked like any other URL.

use std::fmt;
use std::str::FromStr;

/// A `sha256:<64 lower-case hex>` digest.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Sha256Digest([u8; 32]);

/// Not `sha256:` followed by 64 lower-case hex digits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("not a digest: want sha256:<64 lower-case hex digits>")]
pub struct DigestError;

impl Sha256Digest {
    /// `sha256:<64 lower-case hex>`, exactly (the OCI canonical form).
    pub fn parse(s: &str) -> Result<Self, DigestError> {
        let hex = s.strip_prefix("sha256:").ok_or(DigestError)?;
        Self::from_hex(hex)
    }

    /// 64 lower-case hex digits, without the algorithm prefix.
    pub fn from_hex(hex: &str) -> Result<Self, DigestError> {
        if hex.len() != 64 || !hex.bytes().all(|c| matches!(c, b'0'..=b'9' | b'a'..=b'f')) {
            return Err(DigestError);
        }
        let mut raw = [0u8; 32];
        hex::decode_to_slice(hex, &mut raw).map_err(|_| DigestError)?;
        Ok(Self(raw))
    }

    /// The digest of `raw` sha256 bytes.
    pub fn from_sha256(raw: [u8; 32]) -> Self {
        Self(raw)
    }

    pub fn bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// The 64 lower-case hex digits.
    pub fn hex(&self) -> String {
        hex::encode(self.0)
    }
}

impl fmt::Display for Sha256Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "sha256:{}", self.hex())
    }
}

impl FromStr for Sha256Digest {
    type Err = DigestError;
    fn from_str(s: &str) -> Result<Self, DigestError> {
        Self::parse(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn canonical_form_only() {
        let hex = "ab".repeat(32);
        let d = Sha256Digest::parse(&format!("sha256:{hex}")).unwrap();
        assert_eq!(d.to_string(), format!("sha256:{hex}"));
        assert_eq!(d.bytes(), &[0xab; 32]);
        assert_eq!(Sha256Digest::from_hex(&hex), Ok(d));
        for bad in [
            String::new(),
            hex.clone(),
            format!("sha256:{}", hex.to_uppercase()),
            format!("sha256:{}", &hex[1..]),
            format!("sha512:{hex}"),
            format!("sha256:{hex}0"),
        ] {
            assert_eq!(Sha256Digest::parse(&bad), Err(DigestError), "{bad:?}");
        }
    }
}
