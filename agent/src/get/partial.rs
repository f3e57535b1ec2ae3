//! The partial download: `FILE.part` (the bytes so far) and `FILE.part.meta` (a small
//! JSON sidecar: the URL and the validator the bytes are of), so a later run can ask
//! for the rest with `Range` + `If-Range` and gets the whole object again if it
//! changed. No extended attributes: the sidecar works on every file system.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// What `FILE.part.meta` holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Meta {
    /// The URL the bytes are of.
    pub url: String,
    /// The strong `ETag` or else `Last-Modified` of the version, as sent (the
    /// `If-Range` value).
    pub validator: String,
    /// The whole object's length, if the answer said.
    pub total: Option<u64>,
}

/// `FILE.part`.
pub fn part_path(out: &Path) -> PathBuf {
    suffixed(out, ".part")
}

/// `FILE.part.meta`.
pub fn meta_path(out: &Path) -> PathBuf {
    suffixed(out, ".part.meta")
}

fn suffixed(p: &Path, suffix: &str) -> PathBuf {
    let mut s = p.as_os_str().to_owned();
    s.push(suffix);
    PathBuf::from(s)
}

/// The length of `FILE.part` and its sidecar, if both exist, the sidecar is for
/// `url`, and the part is not longer than the object. Anything else: `None` (start
/// from zero).
pub async fn resumable(out: &Path, url: &str) -> Option<(u64, Meta)> {
    let data = tokio::fs::read(meta_path(out)).await.ok()?;
    let meta: Meta = serde_json::from_slice(&data).ok()?;
    if meta.url != url || meta.validator.is_empty() {
        return None;
    }
    let len = tokio::fs::metadata(part_path(out)).await.ok()?.len();
    if len == 0 || meta.total.is_some_and(|t| len >= t) {
        return None;
    }
    Some((len, meta))
}

/// Writes the sidecar (before the first byte of the part, so a part never exists
/// without knowing what it is of).
pub async fn save(out: &Path, meta: &Meta) -> std::io::Result<()> {
    let json = serde_json::to_vec(meta).map_err(std::io::Error::other)?;
    tokio::fs::write(meta_path(out), json).await
}

/// Removes the part and its sidecar (missing files are fine).
pub async fn discard(out: &Path) {
    let _ = tokio::fs::remove_file(part_path(out)).await;
    let _ = tokio::fs::remove_file(meta_path(out)).await;
}
