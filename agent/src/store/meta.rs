//! Small durable records beside the chunks: the object layer keeps its per-URL
//! metadata here, one file per record, named by 64 lowercase hex digits.
//!
//! A save writes `<name>.tmp.<pid>.<seq>`, fsyncs it and renames it over `<name>`, so
//! a record is always either its old or its new content. The directory itself is not
//! fsynced: after a power loss a just-saved record may be missing, never torn.
//! Non-goals: record contents are opaque here, and nothing bounds how many there are.

use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use super::StoreError;

/// Records larger than this are skipped by [`MetaStore::load_all`]. A sanity bound
/// against a stray huge file: a manifest of a 1 TiB object at 1 MiB chunks lists
/// 1 Mi ids, 64 MiB in hex.
const MAX_RECORD: u64 = 256 * 1024 * 1024;

/// Atomic small-file records in one directory (`<cache dir>/objects`). Cheap to clone.
#[derive(Debug, Clone)]
pub struct MetaStore {
    dir: PathBuf,
    seq: Arc<AtomicU64>,
}

impl MetaStore {
    /// Records live in `dir`, created on the first save.
    pub fn new(dir: PathBuf) -> Self {
        Self {
            dir,
            seq: Arc::new(AtomicU64::new(0)),
        }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Replaces record `name` with `data`, atomically.
    pub async fn save(&self, name: &str, data: &[u8]) -> Result<(), StoreError> {
        check_name(name)?;
        let dir = self.dir.clone();
        let dst = dir.join(name);
        let seq = self.seq.fetch_add(1, Ordering::Relaxed);
        let tmp = dir.join(format!("{name}.tmp.{}.{seq}", std::process::id()));
        let data = data.to_vec();
        blocking(move || {
            let res = write_synced(&dir, &tmp, &data).and_then(|()| {
                fs::rename(&tmp, &dst).map_err(|source| StoreError::Write {
                    path: dst.clone(),
                    source,
                })
            });
            if res.is_err() {
                let _ = fs::remove_file(&tmp);
            }
            res
        })
        .await
    }

    /// Every record, in no particular order. Deletes leftover temporary files;
    /// unreadable or oversized records are logged and skipped, other names ignored.
    pub async fn load_all(&self) -> Vec<(String, Vec<u8>)> {
        let dir = self.dir.clone();
        blocking(move || Ok(load_dir(&dir)))
            .await
            .unwrap_or_else(|e| {
                tracing::warn!(error = %e, "cannot load object records");
                Vec::new()
            })
    }

    /// Deletes record `name`; a missing record is fine, other failures are logged.
    pub async fn remove(&self, name: &str) {
        if check_name(name).is_err() {
            return;
        }
        let path = self.dir.join(name);
        let res = blocking(move || match fs::remove_file(&path) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => {
                Err(StoreError::Write { path, source: e })
            }
            _ => Ok(()),
        })
        .await;
        if let Err(e) = res {
            tracing::warn!(error = %e, "cannot delete object record");
        }
    }
}

/// Whether `name` is a record name: exactly 64 lowercase hex digits.
pub fn is_record_name(name: &str) -> bool {
    name.len() == 64 && name.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

fn check_name(name: &str) -> Result<(), StoreError> {
    if is_record_name(name) {
        Ok(())
    } else {
        Err(StoreError::RecordName(name.chars().take(80).collect()))
    }
}

fn write_synced(dir: &Path, tmp: &Path, data: &[u8]) -> Result<(), StoreError> {
    let werr = |path: &Path| {
        let path = path.to_path_buf();
        move |source| StoreError::Write { path, source }
    };
    fs::create_dir_all(dir).map_err(werr(dir))?;
    let mut f = File::create(tmp).map_err(werr(tmp))?;
    f.write_all(data).map_err(werr(tmp))?;
    f.sync_all().map_err(werr(tmp))
}

fn load_dir(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let entries = match fs::read_dir(dir) {
        Ok(it) => it,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Vec::new(),
        Err(e) => {
            tracing::warn!(dir = %dir.display(), error = %e, "cannot list object records");
            return Vec::new();
        }
    };
    let mut out = Vec::new();
    for e in entries.filter_map(Result::ok) {
        let path = e.path();
        let Some(name) = e.file_name().to_str().map(str::to_owned) else {
            continue;
        };
        if name.len() > 64 && is_record_name(&name[..64]) && name[64..].starts_with(".tmp.") {
            let _ = fs::remove_file(&path);
            continue;
        }
        if !is_record_name(&name) {
            continue;
        }
        match read_record(&path) {
            Ok(data) => out.push((name, data)),
            Err(err) => {
                tracing::warn!(path = %path.display(), error = %err, "skipping object record")
            }
        }
    }
    out
}

fn read_record(path: &Path) -> io::Result<Vec<u8>> {
    let f = File::open(path)?;
    let len = f.metadata()?.len();
    if len > MAX_RECORD {
        return Err(io::Error::other(format!(
            "{len} bytes, over the {MAX_RECORD} byte bound"
        )));
    }
    let mut buf = Vec::with_capacity(len as usize);
    f.take(MAX_RECORD).read_to_end(&mut buf)?;
    Ok(buf)
}

/// Runs blocking file work off the async threads.
async fn blocking<T, F>(f: F) -> Result<T, StoreError>
where
    F: FnOnce() -> Result<T, StoreError> + Send + 'static,
    T: Send + 'static,
{
    tokio::task::spawn_blocking(f).await?
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn round_trip_replace_remove() {
        let tmp = tempfile::tempdir().unwrap();
        let m = MetaStore::new(tmp.path().join("objects"));
        assert!(m.load_all().await.is_empty(), "missing dir is empty");
        let a = "a".repeat(64);
        let b = "0123456789abcdef".repeat(4);
        m.save(&a, b"one").await.unwrap();
        m.save(&a, b"two").await.unwrap();
        m.save(&b, b"").await.unwrap();
        // A crashed save and a foreign file.
        fs::write(m.dir().join(format!("{a}.tmp.1.2")), b"partial").unwrap();
        fs::write(m.dir().join("README"), b"x").unwrap();
        let mut all = m.load_all().await;
        all.sort();
        assert_eq!(all, vec![(b.clone(), vec![]), (a.clone(), b"two".to_vec())]);
        assert!(!m.dir().join(format!("{a}.tmp.1.2")).exists());
        m.remove(&a).await;
        m.remove(&a).await;
        assert_eq!(m.load_all().await, vec![(b, vec![])]);
    }

    #[tokio::test]
    async fn bad_names_are_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let m = MetaStore::new(tmp.path().to_path_buf());
        for bad in ["../x", &"A".repeat(64), &"a".repeat(63), ""] {
            assert!(matches!(
                m.save(bad, b"x").await,
                Err(StoreError::RecordName(_))
            ));
        }
    }
}
