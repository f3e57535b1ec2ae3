//! Blocking file operations of the chunk store. Call from `spawn_blocking`.
//!
//! Layout under the cache directory:
//! `chunks/<first 2 hex>/<64 hex>` holds one chunk, exactly its bytes;
//! `tmp/<64 hex>.<pid>.<seq>` is a chunk being written, renamed into `chunks/` when
//! complete. `tmp/` is on the same filesystem, so the rename is atomic: a reader or a
//! restart sees the whole chunk or none of it.
//!
//! Chunk writes are not fsynced. After a power loss a renamed file may be short or
//! zero-filled; that is caught when it is read (every disk read is BLAKE3-verified)
//! and the file is then deleted. Syncing every chunk would cost far more than
//! re-fetching the rare lost one.

use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use shoal_proto::id::ChunkId;
use shoal_proto::manifest::MAX_CHUNK_SIZE;

use super::StoreError;

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
}

impl Layout {
    pub(crate) fn new(root: &Path) -> Self {
        Self {
            root: root.to_path_buf(),
            chunks: root.join("chunks"),
            tmp: root.join("tmp"),
        }
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

    /// Empties `tmp/` and lists every valid chunk file, deleting anything else under
    /// `chunks/`: names that are not a lowercase id in its right subdirectory, empty
    /// files, files over [`MAX_CHUNK_SIZE`], symlinks and stray directories. Does not
    /// hash: a corrupt chunk is caught when it is read.
    pub(crate) fn scan(&self) -> Vec<Found> {
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
        let mut f = match File::create(tmp) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                fs::create_dir_all(&self.tmp).map_err(werr(&self.tmp))?;
                File::create(tmp)
            }
            r => r,
        }
        .map_err(werr(tmp))?;
        f.write_all(bytes).map_err(werr(tmp))?;
        drop(f);
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

    /// The chunk file's bytes, unverified; `None` if there is no such file. Reads at
    /// most [`MAX_CHUNK_SIZE`] + 1 bytes, so a file swapped for a huge one cannot
    /// exhaust memory (it then fails verification).
    pub(crate) fn read(&self, id: &ChunkId) -> Result<Option<Vec<u8>>, StoreError> {
        let path = self.chunk_path(id);
        let rerr = |source| StoreError::Read {
            path: path.clone(),
            source,
        };
        let f = match File::open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(rerr(e)),
        };
        let hint = f.metadata().map(|m| m.len()).unwrap_or(0);
        let cap = hint.min(u64::from(MAX_CHUNK_SIZE)) as usize;
        let mut buf = Vec::with_capacity(cap);
        f.take(u64::from(MAX_CHUNK_SIZE) + 1)
            .read_to_end(&mut buf)
            .map_err(rerr)?;
        Ok(Some(buf))
    }

    /// Deletes the chunk file; a missing file is fine, other errors are logged.
    pub(crate) fn remove(&self, id: &ChunkId) {
        delete(&self.chunk_path(id));
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
