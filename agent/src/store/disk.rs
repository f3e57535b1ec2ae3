//! Blocking file operations of the chunk store. Call from `spawn_blocking`.
//!
//! Layout under the cache directory:
//! `chunks/<first 2 hex>/<64 hex>` holds one chunk, exactly its bytes;
//! `tmp/<64 hex>.<pid>.<seq>` is a chunk being written, renamed into `chunks/` when
//! complete. `tmp/` is on the same filesystem, so the rename is atomic: a reader or a
//! restart sees the whole chunk or none of it.
//!
//! Chunk files are written with `O_DIRECT` where the filesystem allows it (Linux;
//! anything else, or a filesystem that refuses the flag, falls back to buffered
//! writes for the life of the process). Measured in the fleet benchmark, copying each
//! received chunk into the page cache was the agent's single largest cost (13 % of
//! the machine in S1, more than BLAKE3 and AES-GCM together), and the copy bought
//! nothing: hot chunks are served from the memory cache, and every disk read is
//! verified in user space, so `sendfile` is not an option anyway. Direct writes also
//! keep a node agent from flushing other workloads' pages out of the host's page
//! cache. Reads stay buffered, so a chunk read twice from disk is read from the device
//! once.
//!
//! Chunk writes are not fsynced. After a power loss a renamed file may be short or
//! zero-filled; that is caught when it is read (every disk read is BLAKE3-verified)
//! and the file is then deleted. Syncing every chunk would cost far more than
//! re-fetching the rare lost one.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use shoal_proto::id::ChunkId;
use shoal_proto::manifest::MAX_CHUNK_SIZE;

use super::StoreError;
use super::buffers::Buffers;

/// Bytes read (and hashed) per `read()` of a chunk file: small enough to be hashed
/// while still in the CPU's L2 cache, large enough to keep the calls few (four per
/// 1 MiB chunk).
const PIECE: usize = 256 * 1024;

/// What [`Layout::read_verified`] found.
#[derive(Debug)]
pub(crate) enum ChunkRead {
    /// No chunk file of that id.
    Missing,
    /// The file's bytes: they hashed to the id, or (`proved`) the file's `fstat`
    /// after the read still matched the proof of an earlier verification. `proof`
    /// is a new proof to keep, when asked for and the file's last change is settled.
    Verified {
        data: Bytes,
        proof: Option<Proof>,
        proved: bool,
    },
    /// A file whose bytes do not hash to the id (or whose length is not the indexed one).
    Corrupt,
}

/// How old a chunk file's last change (ctime) must be before a verification of it
/// is recorded as a [`Proof`]. File timestamps are coarse (a clock tick): a file
/// changed within the same tick as the change before keeps its ctime. Once the last
/// change is this far in the past, any later one gets a later ctime.
const PROOF_MARGIN: Duration = if cfg!(test) {
    Duration::from_millis(50)
} else {
    Duration::from_secs(1)
};

/// A chunk file as it was (`fstat`, after the read) when its bytes last hashed to its
/// id: the fields that any write, truncation or replacement of the file changes. The
/// ctime cannot be set from user space: even a write that puts the mtime back moves it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Proof {
    dev: u64,
    ino: u64,
    size: u64,
    mtime: (i64, i64),
    ctime: (i64, i64),
}

impl Proof {
    fn of(m: &fs::Metadata) -> Self {
        use std::os::unix::fs::MetadataExt;
        Self {
            dev: m.dev(),
            ino: m.ino(),
            size: m.size(),
            mtime: (m.mtime(), m.mtime_nsec()),
            ctime: (m.ctime(), m.ctime_nsec()),
        }
    }

    /// The proof of `m`, if its last change is at least [`PROOF_MARGIN`] old.
    fn settled(m: &fs::Metadata) -> Option<Self> {
        let p = Self::of(m);
        let changed = Duration::new(
            u64::try_from(p.ctime.0).ok()?,
            u32::try_from(p.ctime.1).ok()?,
        );
        let now = SystemTime::now().duration_since(UNIX_EPOCH).ok()?;
        (changed.saturating_add(PROOF_MARGIN) <= now).then_some(p)
    }
}

/// A chunk file found by [`Layout::scan`].
#[derive(Debug)]
pub(crate) struct Found {
    pub(crate) id: ChunkId,
    pub(crate) len: u64,
    pub(crate) modified: SystemTime,
}

/// Paths of one cache directory.
#[derive(Debug, Clone)]
pub(crate) struct Layout {
    pub(crate) root: PathBuf,
    pub(crate) chunks: PathBuf,
    pub(crate) tmp: PathBuf,
    /// Whether chunk files are still written with `O_DIRECT`; cleared (for every
    /// clone) the first time the filesystem refuses it.
    direct: Arc<AtomicBool>,
    /// Read buffers, reused (shared by every clone).
    buffers: Buffers,
}

impl Layout {
    pub(crate) fn new(root: &Path) -> Self {
        Self {
            root: root.to_path_buf(),
            chunks: root.join("chunks"),
            tmp: root.join("tmp"),
            direct: Arc::new(AtomicBool::new(direct::SUPPORTED)),
            buffers: Buffers::default(),
        }
    }

    /// The chunk buffers (shared by every clone).
    pub(crate) fn buffers(&self) -> &Buffers {
        &self.buffers
    }

    pub(crate) fn chunk_path(&self, id: &ChunkId) -> PathBuf {
        let hex = id.to_hex();
        self.chunks.join(&hex[..2]).join(hex)
    }

    /// Creates the directories and proves that a file can be written (a read-only
    /// mount passes `create_dir_all` on an existing tree but fails here).
    pub(crate) fn prepare(&self) -> Result<(), StoreError> {
        for d in [&self.chunks, &self.tmp] {
            fs::create_dir_all(d).map_err(|source| StoreError::Write {
                path: d.clone(),
                source,
            })?;
        }
        let probe = self.tmp.join(format!("probe.{}", std::process::id()));
        let res = File::create(&probe).and_then(|mut f| f.write_all(b"shoal"));
        let _ = fs::remove_file(&probe);
        res.map_err(|source| StoreError::Write {
            path: probe,
            source,
        })
    }

    /// Lists every valid chunk file. With `tidy`, also empties `tmp/` and deletes
    /// anything else under `chunks/`: names that are not a lowercase id in its right
    /// subdirectory, empty files, files over [`MAX_CHUNK_SIZE`], symlinks and stray
    /// directories. Without it (a read-only disk) nothing is touched. Does not hash: a
    /// corrupt chunk is caught when it is read.
    pub(crate) fn scan(&self, tidy: bool) -> Vec<Found> {
        let delete = |p: &Path| {
            if tidy {
                delete(p);
            }
        };
        for e in read_dir(&self.tmp) {
            delete(&e.path());
        }
        let mut found = Vec::new();
        for sub in read_dir(&self.chunks) {
            let sub_path = sub.path();
            let prefix = sub.file_name().to_str().map(str::to_owned);
            let is_dir = sub.file_type().is_ok_and(|t| t.is_dir());
            let Some(prefix) = prefix.filter(|p| is_dir && is_hex_prefix(p)) else {
                delete(&sub_path);
                continue;
            };
            for e in read_dir(&sub_path) {
                match valid_chunk(&e, &prefix) {
                    Some(f) => found.push(f),
                    None => delete(&e.path()),
                }
            }
        }
        found
    }

    /// Writes `bytes` to a temporary file and renames it to the chunk's path,
    /// creating missing directories on the way.
    pub(crate) fn write(&self, id: &ChunkId, bytes: &[u8], seq: u64) -> Result<(), StoreError> {
        let tmp = self
            .tmp
            .join(format!("{}.{}.{seq}", id.to_hex(), std::process::id()));
        let res = self.write_at(&tmp, id, bytes);
        if res.is_err() {
            let _ = fs::remove_file(&tmp);
        }
        res
    }

    fn write_at(&self, tmp: &Path, id: &ChunkId, bytes: &[u8]) -> Result<(), StoreError> {
        let werr = |path: &Path| {
            let path = path.to_path_buf();
            move |source| StoreError::Write { path, source }
        };
        let direct = self.direct.load(Ordering::Relaxed);
        let f = match create(tmp, direct) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                fs::create_dir_all(&self.tmp).map_err(werr(&self.tmp))?;
                create(tmp, direct)
            }
            r => r,
        };
        let written = match f {
            Ok(mut f) if direct => direct::write(&mut f, bytes),
            Ok(mut f) => f.write_all(bytes),
            Err(e) => Err(e),
        };
        match written {
            Err(e) if direct && e.raw_os_error() == Some(direct::REFUSED) => {
                self.direct.store(false, Ordering::Relaxed);
                tracing::info!(dir = %self.root.display(), error = %e,
                    "filesystem refuses O_DIRECT; writing chunks through the page cache");
                File::create(tmp).and_then(|mut f| f.write_all(bytes))
            }
            r => r,
        }
        .map_err(werr(tmp))?;
        let dst = self.chunk_path(id);
        match fs::rename(tmp, &dst) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                if let Some(parent) = dst.parent() {
                    fs::create_dir_all(parent).map_err(werr(parent))?;
                }
                fs::rename(tmp, &dst)
            }
            r => r,
        }
        .map_err(werr(&dst))
    }

    /// Reads the chunk file of `id`, which the index says is `len` bytes long, and
    /// checks it against the id; [`ChunkRead::Missing`] if there is no such file.
    ///
    /// The file is read in [`PIECE`]s straight into the buffer that is returned, and
    /// each piece is hashed right after its `read()`, while it is still in the CPU's
    /// cache, instead of reading the whole chunk and then hashing it back from memory.
    /// At most `min(len, MAX_CHUNK_SIZE)` bytes are read: a file that is longer (or
    /// shorter) than indexed is not the chunk that was written and fails.
    ///
    /// With `proof` (an earlier verification of this file), the bytes are not hashed
    /// if the file's `fstat` after the read equals the proof; if it does not, they
    /// are hashed as usual. A write to the file changes its ctime before it changes
    /// its bytes, so a file whose `fstat` after the last `read()` still matches was not
    /// written since the proof, up to that read. With `record`, a successful hash
    /// returns a new proof (if the file's last change is settled).
    pub(crate) fn read_verified(
        &self,
        id: &ChunkId,
        len: u64,
        proof: Option<Proof>,
        record: bool,
    ) -> Result<ChunkRead, StoreError> {
        let path = self.chunk_path(id);
        let rerr = |source| StoreError::Read {
            path: path.clone(),
            source,
        };
        let mut f = match File::open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(ChunkRead::Missing),
            Err(e) => return Err(rerr(e)),
        };
        let len = len.min(u64::from(MAX_CHUNK_SIZE)) as usize;
        // A reused buffer (buffers.rs): no allocation, no page faults.
        let mut data = self.buffers.take(len);
        let mut hasher = blake3::Hasher::new();
        let mut filled = 0;
        while filled < len {
            let end = (filled + PIECE).min(len);
            let n = read_some(&mut f, &mut data[filled..end]).map_err(rerr)?;
            if n == 0 {
                break;
            }
            if proof.is_none() {
                hasher.update(&data[filled..filled + n]);
            }
            filled += n;
        }
        let longer = filled == len && read_some(&mut f, &mut [0u8; 1]).map_err(rerr)? > 0;
        if filled < len || longer {
            return Ok(ChunkRead::Corrupt);
        }
        let meta = if proof.is_some() || record {
            Some(f.metadata().map_err(rerr)?)
        } else {
            None
        };
        if let Some(p) = proof {
            if meta.as_ref().is_some_and(|m| Proof::of(m) == p) {
                return Ok(ChunkRead::Verified {
                    data: self.buffers.freeze(data, len),
                    proof: None,
                    proved: true,
                });
            }
            // Changed since its proof: hash it after all.
            hasher.update(&data[..len]);
        }
        // blake3::Hash equality is constant-time.
        if hasher.finalize() != blake3::Hash::from_bytes(*id.as_bytes()) {
            return Ok(ChunkRead::Corrupt);
        }
        Ok(ChunkRead::Verified {
            data: self.buffers.freeze(data, len),
            proof: meta.as_ref().filter(|_| record).and_then(Proof::settled),
            proved: false,
        })
    }

    /// Deletes the chunk file; a missing file is fine, other errors are logged.
    pub(crate) fn remove(&self, id: &ChunkId) {
        delete(&self.chunk_path(id));
    }
}

/// One `read()` into `buf`, retried when interrupted; 0 at the end of the file.
fn read_some(f: &mut File, buf: &mut [u8]) -> io::Result<usize> {
    loop {
        match f.read(buf) {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            r => return r,
        }
    }
}

/// Creates (truncates) `path` for writing, with `O_DIRECT` if `direct`.
fn create(path: &Path, direct: bool) -> io::Result<File> {
    let mut o = OpenOptions::new();
    o.write(true).create(true).truncate(true);
    if direct {
        direct::flag(&mut o);
    }
    o.open(path)
}

/// `O_DIRECT` writes: the buffer address, the file offset and the length must be
/// multiples of the device's logical block size, so a chunk that is not (a short last
/// chunk, a slice of an origin frame) is copied into a block-aligned, zero-padded
/// buffer, written whole, and the file truncated to the chunk's length; a full chunk
/// joined in an aligned buffer (`buffers.rs`) is written as it is. Buffers are pooled: a fresh 1 MiB allocation per chunk costs page
/// faults that a reused one does not.
#[cfg(target_os = "linux")]
mod direct {
    use super::*;
    use std::os::unix::fs::OpenOptionsExt;
    use std::sync::Mutex;

    pub(super) const SUPPORTED: bool = true;
    /// The error a filesystem (or a misaligned request) gives for `O_DIRECT`.
    pub(super) const REFUSED: i32 = libc::EINVAL;
    use crate::store::buffers::ALIGN;
    /// Buffers kept for reuse; more concurrent writers allocate and drop their own.
    const POOL_MAX: usize = 4;
    static POOL: Mutex<Vec<Vec<u8>>> = Mutex::new(Vec::new());

    pub(super) fn flag(o: &mut OpenOptions) {
        o.custom_flags(libc::O_DIRECT);
    }

    pub(super) fn write(f: &mut File, bytes: &[u8]) -> io::Result<()> {
        // A chunk joined in an aligned buffer (`buffers.rs`), of whole blocks: as is.
        if bytes.as_ptr().align_offset(ALIGN) == 0 && bytes.len().is_multiple_of(ALIGN) {
            return f.write_all(bytes);
        }
        let padded = bytes.len().next_multiple_of(ALIGN);
        let mut buf = take(padded + ALIGN);
        let off = buf.as_ptr().align_offset(ALIGN);
        let res = match buf.get_mut(off..off + padded) {
            Some(block) => {
                block[..bytes.len()].copy_from_slice(bytes);
                block[bytes.len()..].fill(0);
                f.write_all(block)
                    .and_then(|()| f.set_len(bytes.len() as u64))
            }
            // `align_offset` may decline to align; write through the page cache then.
            None => Err(io::Error::from_raw_os_error(REFUSED)),
        };
        give(buf);
        res
    }

    fn take(len: usize) -> Vec<u8> {
        let pooled = POOL.lock().map(|mut p| p.pop()).unwrap_or(None);
        match pooled {
            Some(b) if b.len() >= len => b,
            _ => vec![0; len],
        }
    }

    fn give(buf: Vec<u8>) {
        if let Ok(mut p) = POOL.lock()
            && p.len() < POOL_MAX
        {
            p.push(buf);
        }
    }
}

#[cfg(not(target_os = "linux"))]
mod direct {
    use super::*;

    pub(super) const SUPPORTED: bool = false;
    pub(super) const REFUSED: i32 = 0;

    pub(super) fn flag(_: &mut OpenOptions) {}

    pub(super) fn write(f: &mut File, bytes: &[u8]) -> io::Result<()> {
        f.write_all(bytes)
    }
}

fn valid_chunk(e: &fs::DirEntry, prefix: &str) -> Option<Found> {
    let name = e.file_name();
    let name = name.to_str()?;
    let id: ChunkId = name.parse().ok()?;
    // FromStr accepts upper case; only the canonical spelling is ours.
    if id.to_hex() != name || !name.starts_with(prefix) {
        return None;
    }
    // DirEntry::metadata does not follow symlinks: a symlink is not a file here.
    let meta = e.metadata().ok()?;
    let len = meta.len();
    if !meta.is_file() || len == 0 || len > u64::from(MAX_CHUNK_SIZE) {
        return None;
    }
    Some(Found {
        id,
        len,
        modified: meta.modified().unwrap_or(SystemTime::UNIX_EPOCH),
    })
}

fn is_hex_prefix(s: &str) -> bool {
    s.len() == 2 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// Entries of `dir`; an unreadable or missing directory is logged and yields none.
fn read_dir(dir: &Path) -> Vec<fs::DirEntry> {
    match fs::read_dir(dir) {
        Ok(it) => it.filter_map(Result::ok).collect(),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Vec::new(),
        Err(e) => {
            tracing::warn!(dir = %dir.display(), error = %e, "cannot list cache directory");
            Vec::new()
        }
    }
}

/// Removes a file, symlink or directory tree; logs failures other than "not found".
fn delete(path: &Path) {
    let res = match fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() => fs::remove_dir_all(path),
        Ok(_) => fs::remove_file(path),
        Err(e) => Err(e),
    };
    match res {
        Ok(()) => tracing::debug!(path = %path.display(), "deleted from cache directory"),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => tracing::warn!(path = %path.display(), error = %e, "cannot delete"),
    }
}
