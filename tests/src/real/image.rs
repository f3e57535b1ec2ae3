//! A small multi-layer OCI image made in memory and written as an OCI image layout
//! (`oci-layout`, `index.json`, `blobs/sha256/…`), for `skopeo copy oci:DIR:TAG …`.
//!
//! Layers are gzip'd tar archives (`application/vnd.oci.image.layer.v1.tar+gzip`)
//! holding one file of random bytes each, so containerd can unpack them. The gzip is
//! written with stored (uncompressed) deflate blocks: random bytes do not compress,
//! and skopeo would otherwise compress an uncompressed layer on push, changing every
//! digest. Not a general image builder: one file per layer, no directories.

use std::collections::BTreeSet;
use std::path::Path;

use sha2::{Digest, Sha256};

/// One content-addressed blob.
#[derive(Debug, Clone)]
pub struct Blob {
    /// `sha256:<hex>`.
    pub digest: String,
    pub media_type: &'static str,
    pub bytes: Vec<u8>,
}

/// An image: its manifest, its config and its layers.
#[derive(Debug, Clone)]
pub struct Image {
    pub manifest: Blob,
    pub config: Blob,
    pub layers: Vec<Blob>,
}

const MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const CONFIG: &str = "application/vnd.oci.image.config.v1+json";
const LAYER: &str = "application/vnd.oci.image.layer.v1.tar+gzip";

impl Blob {
    fn new(media_type: &'static str, bytes: Vec<u8>) -> Self {
        Blob {
            digest: digest(&bytes),
            media_type,
            bytes,
        }
    }

    fn descriptor(&self) -> serde_json::Value {
        serde_json::json!({
            "mediaType": self.media_type,
            "digest": self.digest,
            "size": self.bytes.len(),
        })
    }

    /// The hex part of the digest.
    pub fn hex(&self) -> &str {
        self.digest.trim_start_matches("sha256:")
    }
}

impl Image {
    /// An image with one layer per entry of `layer_sizes` (bytes of file content),
    /// its bytes derived from `seed`.
    pub fn generate(layer_sizes: &[usize], seed: u64) -> Self {
        let mut diff_ids = Vec::new();
        let layers: Vec<Blob> = layer_sizes
            .iter()
            .enumerate()
            .map(|(i, &n)| {
                let data = crate::random_bytes(n, seed.wrapping_mul(31).wrapping_add(i as u64));
                let tar = tar_one(&format!("layer{i}.bin"), &data);
                diff_ids.push(digest(&tar));
                Blob::new(LAYER, gzip_stored(&tar))
            })
            .collect();
        let config = serde_json::json!({
            "architecture": "amd64",
            "os": "linux",
            "config": {},
            "rootfs": { "type": "layers", "diff_ids": diff_ids },
        });
        let config = Blob::new(CONFIG, config.to_string().into_bytes());
        let manifest = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": MANIFEST,
            "config": config.descriptor(),
            "layers": layers.iter().map(Blob::descriptor).collect::<Vec<_>>(),
        });
        let manifest = Blob::new(MANIFEST, manifest.to_string().into_bytes());
        Image {
            manifest,
            config,
            layers,
        }
    }

    /// The config and layer blobs (what `/v2/NAME/blobs/…` serves).
    pub fn blobs(&self) -> impl Iterator<Item = &Blob> {
        std::iter::once(&self.config).chain(&self.layers)
    }

    /// Bytes of every blob (config and layers), the manifest not included.
    pub fn blob_bytes(&self) -> u64 {
        self.blobs().map(|b| b.bytes.len() as u64).sum()
    }

    /// Every digest a complete pull stores: manifest, config, layers.
    pub fn digests(&self) -> BTreeSet<String> {
        std::iter::once(&self.manifest)
            .chain(self.blobs())
            .map(|b| b.digest.clone())
            .collect()
    }

    /// Writes the image as an OCI image layout in `dir`, tagged `tag`.
    pub fn write_layout(&self, dir: &Path, tag: &str) -> std::io::Result<()> {
        let blobs = dir.join("blobs/sha256");
        std::fs::create_dir_all(&blobs)?;
        for b in std::iter::once(&self.manifest).chain(self.blobs()) {
            std::fs::write(blobs.join(b.hex()), &b.bytes)?;
        }
        let mut desc = self.manifest.descriptor();
        desc["annotations"] = serde_json::json!({ "org.opencontainers.image.ref.name": tag });
        let index = serde_json::json!({ "schemaVersion": 2, "manifests": [desc] });
        std::fs::write(dir.join("index.json"), index.to_string())?;
        std::fs::write(dir.join("oci-layout"), r#"{"imageLayoutVersion":"1.0.0"}"#)
    }
}

/// `sha256:<hex>` of `bytes`.
pub fn digest(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

/// A POSIX ustar archive holding one regular file.
fn tar_one(name: &str, data: &[u8]) -> Vec<u8> {
    let mut h = [0u8; 512];
    let field = |h: &mut [u8; 512], at: usize, v: &[u8]| h[at..at + v.len()].copy_from_slice(v);
    field(&mut h, 0, name.as_bytes());
    field(&mut h, 100, b"0000644\0");
    field(&mut h, 108, b"0000000\0");
    field(&mut h, 116, b"0000000\0");
    field(&mut h, 124, format!("{:011o}\0", data.len()).as_bytes());
    field(&mut h, 136, b"00000000000\0");
    h[156] = b'0';
    field(&mut h, 257, b"ustar\0");
    field(&mut h, 263, b"00");
    // The checksum is computed with its own field as spaces.
    field(&mut h, 148, b"        ");
    let sum: u32 = h.iter().map(|&b| u32::from(b)).sum();
    field(&mut h, 148, format!("{sum:06o}\0 ").as_bytes());
    let mut out = h.to_vec();
    out.extend_from_slice(data);
    out.resize(out.len().div_ceil(512) * 512, 0);
    out.resize(out.len() + 1024, 0);
    out
}

/// `data` as a gzip member (RFC 1952) of stored deflate blocks (RFC 1951 §3.2.4).
fn gzip_stored(data: &[u8]) -> Vec<u8> {
    let mut out = vec![0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 0xff];
    let mut blocks = data.chunks(0xffff).peekable();
    if blocks.peek().is_none() {
        out.extend_from_slice(&[1, 0, 0, 0xff, 0xff]);
    }
    while let Some(b) = blocks.next() {
        out.push(u8::from(blocks.peek().is_none()));
        let len = b.len() as u16;
        out.extend_from_slice(&len.to_le_bytes());
        out.extend_from_slice(&(!len).to_le_bytes());
        out.extend_from_slice(b);
    }
    out.extend_from_slice(&crc32(data).to_le_bytes());
    out.extend_from_slice(&(data.len() as u32).to_le_bytes());
    out
}

/// CRC-32 (IEEE 802.3, reflected, as gzip uses it).
fn crc32(data: &[u8]) -> u32 {
    let mut table = [0u32; 256];
    for (i, t) in table.iter_mut().enumerate() {
        let mut c = i as u32;
        for _ in 0..8 {
            c = if c & 1 == 1 {
                0xEDB8_8320 ^ (c >> 1)
            } else {
                c >> 1
            };
        }
        *t = c;
    }
    !data.iter().fold(!0u32, |c, &b| {
        table[((c ^ u32::from(b)) & 0xff) as usize] ^ (c >> 8)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc_and_gzip() {
        assert_eq!(crc32(b"123456789"), 0xCBF4_3926);
        let g = gzip_stored(&[7u8; 70_000]);
        assert_eq!(g.len(), 10 + 2 * 5 + 70_000 + 8);
        assert_eq!(&g[..2], &[0x1f, 0x8b]);
    }
}
