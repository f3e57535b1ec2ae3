//! How much room the cache directory's filesystem has, so the chunk quota follows it.
//!
//! The effective quota is `min(cache.max_size, ours + available − reserve)`: `ours` is
//! the chunk bytes the store has on disk (they could be given back by eviction),
//! `available` what the filesystem still grants an unprivileged writer, and the
//! reserve (`cache.min_free`, by default [`reserve`]) is kept free for object
//! records, directories, block rounding and the node's other programs. A configured quota far above the disk (the default 10 GiB on a small
//! volume) thus never leads to `ENOSPC` in the first place; the store re-reads the
//! figures every [`REFRESH`] while writing and at once after an `ENOSPC`.
//!
//! Non-goals: the store does not shrink while it is idle (another program filling
//! the disk is noticed at the next chunk write); block rounding of small files is
//! covered by the reserve, not computed.

use std::io;
use std::path::Path;
use std::time::Duration;

/// How often the filesystem's free space is read while chunks are being written.
pub const REFRESH: Duration = Duration::from_secs(2);

/// The reserve is 2 % of the filesystem, at least this much…
const MIN_RESERVE: u64 = 1024 * 1024;
/// …and at most this much.
const MAX_RESERVE: u64 = 1024 * 1024 * 1024;

/// Size and free space of a filesystem, bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Space {
    pub total: u64,
    /// Free bytes an unprivileged writer may still use (`f_bavail`).
    pub available: u64,
}

/// Where the store learns [`Space`]. Injectable so tests can fake a small disk.
pub trait SpaceSource: Send + Sync + std::fmt::Debug {
    /// The filesystem holding `dir`. Blocking; called from `spawn_blocking`.
    fn space(&self, dir: &Path) -> io::Result<Space>;
}

/// The real source: `statvfs(2)` (Linux; elsewhere unsupported, so the configured
/// quota alone applies).
#[derive(Debug, Clone, Copy, Default)]
pub struct Statvfs;

impl SpaceSource for Statvfs {
    #[cfg(target_os = "linux")]
    // `fsblkcnt_t` and `c_ulong` are 32 bits on some targets, 64 on this one.
    #[allow(clippy::useless_conversion)]
    fn space(&self, dir: &Path) -> io::Result<Space> {
        let s = nix::sys::statvfs::statvfs(dir).map_err(io::Error::from)?;
        let frag = u64::from(s.fragment_size());
        Ok(Space {
            total: u64::from(s.blocks()).saturating_mul(frag),
            available: u64::from(s.blocks_available()).saturating_mul(frag),
        })
    }

    #[cfg(not(target_os = "linux"))]
    fn space(&self, _dir: &Path) -> io::Result<Space> {
        Err(io::Error::from(io::ErrorKind::Unsupported))
    }
}

/// Bytes kept free on a filesystem of `total` bytes: 2 %, within 1 MiB..=1 GiB.
pub fn reserve(total: u64) -> u64 {
    (total / 50).clamp(MIN_RESERVE, MAX_RESERVE)
}

/// The effective quota for `ours` bytes of chunks on a filesystem in state `space`,
/// given the configured quota and the bytes to keep free (`None`: [`reserve`]).
pub fn effective(configured: u64, min_free: Option<u64>, ours: u64, space: Space) -> u64 {
    let keep = min_free.unwrap_or_else(|| reserve(space.total));
    let room = ours.saturating_add(space.available).saturating_sub(keep);
    configured.min(room)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1024 * 1024;

    #[test]
    fn quota_follows_free_space() {
        let small = Space {
            total: 64 * MIB,
            available: 40 * MIB,
        };
        // 10 GiB configured on a 64 MiB disk: the disk decides (reserve 1.28 MiB).
        assert_eq!(
            effective(10 << 30, None, 20 * MIB, small),
            60 * MIB - 64 * MIB / 50
        );
        // A small configured quota wins.
        assert_eq!(effective(8 * MIB, None, 20 * MIB, small), 8 * MIB);
        // A full disk: only what we hold, less the reserve (eviction frees it).
        let full = Space {
            total: 64 * MIB,
            available: 0,
        };
        assert_eq!(
            effective(10 << 30, None, 20 * MIB, full),
            20 * MIB - 64 * MIB / 50
        );
        assert_eq!(effective(10 << 30, None, 0, full), 0);
        // `cache.min_free` replaces the 2 % rule: 0 keeps nothing back, more keeps more.
        assert_eq!(effective(10 << 30, Some(0), 20 * MIB, small), 60 * MIB);
        assert_eq!(
            effective(10 << 30, Some(50 * MIB), 20 * MIB, small),
            10 * MIB
        );
        assert_eq!(effective(10 << 30, Some(0), 0, full), 0);
        assert_eq!(reserve(8 * MIB), MIN_RESERVE);
        assert_eq!(reserve(u64::MAX), MAX_RESERVE);
    }

    #[test]
    fn statvfs_reads_the_tempdir() {
        let tmp = std::env::temp_dir();
        match Statvfs.space(&tmp) {
            Ok(s) => assert!(s.total >= s.available && s.total > 0, "{s:?}"),
            Err(e) => assert_eq!(e.kind(), io::ErrorKind::Unsupported),
        }
    }
}
