use std::fs;
use std::path::Path;

use super::space::Space;
use super::*;

const KIB: usize = 1024;

fn cfg(dir: &Path, max_size: u64, memory_size: u64) -> StoreConfig {
    StoreConfig {
        dir: dir.to_path_buf(),
        max_size,
        high_watermark: 0.9,
        low_watermark: 0.5,
        memory_size,
        verify_window: Duration::ZERO,
        // Nothing kept back: the host's free space must not decide these tests.
        min_free: Some(0),
    }
}

/// Chunk `n`: `len` pseudo-random bytes and their id.
fn chunk(n: u32, len: usize) -> (ChunkId, Bytes) {
    let mut data = vec![0u8; len];
    blake3::Hasher::new()
        .update(&n.to_le_bytes())
        .finalize_xof()
        .fill(&mut data);
    (ChunkId::of(&data), Bytes::from(data))
}

async fn open(dir: &Path, max_size: u64, memory_size: u64) -> (ChunkStore, Metrics) {
    let m = Metrics::default();
    let s = ChunkStore::open(cfg(dir, max_size, memory_size), m.clone()).await;
    (s, m)
}

fn disk_failures(m: &Metrics) -> u64 {
    m.verify_failures.with_label_values(&["disk"]).get()
}

#[tokio::test]
async fn put_get_round_trip() {
    let tmp = tempfile::tempdir().unwrap();
    let (s, m) = open(tmp.path(), 1 << 30, 1 << 20).await;
    assert!(s.writable());
    let chunks: Vec<_> = (0..3).map(|n| chunk(n, 10 * KIB + n as usize)).collect();
    for (id, b) in &chunks {
        s.put(*id, b.clone()).await.unwrap();
        s.put(*id, b.clone()).await.unwrap(); // idempotent
    }
    for (id, b) in &chunks {
        assert!(s.contains(id));
        assert_eq!(s.get(id).await.unwrap().as_ref(), Some(b));
        let path = s.inner.layout.chunk_path(id);
        assert_eq!(fs::read(&path).unwrap(), b[..], "{}", path.display());
        assert_eq!(s.chunk_len(id), Some(b.len() as u64));
    }
    let want = (30 * KIB + 3) as u64;
    assert_eq!(
        s.usage(),
        Usage {
            bytes: want,
            chunks: 3
        }
    );
    assert_eq!(m.cache_bytes.get(), want as i64);
    assert_eq!(m.cache_chunks.get(), 3);
    let (absent, _) = chunk(99, 10);
    assert!(!s.contains(&absent));
    assert_eq!(s.get(&absent).await.unwrap(), None);
    assert!(matches!(
        s.put(ChunkId::of(b""), Bytes::new()).await,
        Err(StoreError::Size { len: 0 })
    ));
    s.remove(&chunks[0].0).await;
    assert!(!s.contains(&chunks[0].0));
    assert!(!s.inner.layout.chunk_path(&chunks[0].0).exists());
    assert_eq!(s.usage().chunks, 2);
    assert_eq!(fs::read_dir(tmp.path().join("tmp")).unwrap().count(), 0);
}

#[tokio::test]
async fn restart_keeps_chunks_and_usage() {
    let tmp = tempfile::tempdir().unwrap();
    let chunks: Vec<_> = (0..4).map(|n| chunk(n, 4 * KIB)).collect();
    let usage = {
        let (s, _) = open(tmp.path(), 1 << 30, 1 << 20).await;
        for (id, b) in &chunks {
            s.put(*id, b.clone()).await.unwrap();
        }
        s.usage()
    };
    let (s, m) = open(tmp.path(), 1 << 30, 0).await;
    assert_eq!(s.usage(), usage);
    assert_eq!(m.cache_chunks.get(), 4);
    let mut ids = s.ids();
    ids.sort();
    let mut want: Vec<_> = chunks.iter().map(|c| c.0).collect();
    want.sort();
    assert_eq!(ids, want);
    for (id, b) in &chunks {
        assert_eq!(s.get(id).await.unwrap().as_ref(), Some(b));
    }
}

#[tokio::test]
async fn open_deletes_temp_partial_and_junk() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let (good, gb) = chunk(1, 2 * KIB);
    let (other, ob) = chunk(2, 2 * KIB);
    let layout = Layout::new(root);
    let good_path = layout.chunk_path(&good);
    fs::create_dir_all(good_path.parent().unwrap()).unwrap();
    fs::write(&good_path, &gb).unwrap();
    fs::create_dir_all(&layout.tmp).unwrap();
    fs::write(layout.tmp.join(format!("{other}.1.1")), &ob[..100]).unwrap();
    let hex = other.to_hex();
    let junk = [
        // Valid id in the wrong subdirectory.
        layout
            .chunks
            .join(if &hex[..2] == "00" { "01" } else { "00" })
            .join(&hex),
        // Upper-case spelling of a valid id.
        layout
            .chunks
            .join(hex[..2].to_uppercase())
            .join(hex.to_uppercase()),
        layout.chunks.join(&hex[..2]).join(format!("{hex}.partial")),
        layout.chunks.join("zz").join("x"),
        layout.chunks.join("stray-file"),
    ];
    for p in &junk {
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        fs::write(p, &ob).unwrap();
    }
    // Empty and oversized files with valid names.
    let (empty, _) = chunk(3, 1);
    let empty_path = layout.chunk_path(&empty);
    fs::create_dir_all(empty_path.parent().unwrap()).unwrap();
    fs::write(&empty_path, b"").unwrap();
    let (huge, _) = chunk(4, 1);
    let huge_path = layout.chunk_path(&huge);
    fs::create_dir_all(huge_path.parent().unwrap()).unwrap();
    fs::File::create(&huge_path)
        .unwrap()
        .set_len(u64::from(MAX_CHUNK_SIZE) + 1)
        .unwrap();
    // A symlink named like a chunk.
    let (link, _) = chunk(5, 1);
    let link_path = layout.chunk_path(&link);
    fs::create_dir_all(link_path.parent().unwrap()).unwrap();
    std::os::unix::fs::symlink(&good_path, &link_path).unwrap();
    // Not ours to touch.
    fs::create_dir_all(root.join("objects")).unwrap();
    fs::write(root.join("objects").join("keep"), b"k").unwrap();

    let (s, _) = open(root, 1 << 30, 0).await;
    assert_eq!(s.ids(), vec![good]);
    assert_eq!(s.usage().bytes, gb.len() as u64);
    assert!(good_path.exists());
    for p in junk.iter().chain([&empty_path, &huge_path, &link_path]) {
        assert!(fs::symlink_metadata(p).is_err(), "{} survived", p.display());
    }
    assert!(!layout.chunks.join("zz").exists());
    assert_eq!(fs::read_dir(&layout.tmp).unwrap().count(), 0);
    assert!(root.join("objects").join("keep").exists());
}

#[tokio::test]
async fn corrupt_file_is_deleted_and_counted() {
    let tmp = tempfile::tempdir().unwrap();
    // Memory cache on, cleared before the read, so the disk copy is what is checked.
    for memory in [0, 1 << 20] {
        let (s, m) = open(tmp.path(), 1 << 30, memory).await;
        let (id, b) = chunk(memory as u32, 8 * KIB);
        s.put(id, b).await.unwrap();
        let path = s.inner.layout.chunk_path(&id);
        let mut data = fs::read(&path).unwrap();
        data[1234] ^= 0x01;
        fs::write(&path, &data).unwrap();
        s.clear_memory();
        assert_eq!(s.get(&id).await.unwrap(), None);
        assert!(!path.exists());
        assert!(!s.contains(&id));
        assert_eq!(disk_failures(&m), 1);
        assert_eq!(s.usage(), Usage::default());
        assert_eq!(m.cache_bytes.get(), 0);
    }
}

#[tokio::test]
async fn quota_evicts_lru_to_low_watermark() {
    let tmp = tempfile::tempdir().unwrap();
    // 10 KiB quota: high 9 KiB, low 5 KiB.
    let (s, m) = open(tmp.path(), 10 * KIB as u64, 0).await;
    let chunks: Vec<_> = (0..10).map(|n| chunk(n, KIB)).collect();
    for (id, b) in &chunks[..9] {
        s.put(*id, b.clone()).await.unwrap();
    }
    assert_eq!(m.cache_evictions.get(), 0);
    // Reading 0 and 1 makes 2 the coldest.
    for (id, _) in &chunks[..2] {
        assert!(s.get(id).await.unwrap().is_some());
    }
    s.put(chunks[9].0, chunks[9].1.clone()).await.unwrap();
    assert_eq!(m.cache_evictions.get(), 5);
    assert_eq!(
        s.usage(),
        Usage {
            bytes: 5 * KIB as u64,
            chunks: 5
        }
    );
    let want: Vec<_> = [7, 8, 0, 1, 9].iter().map(|&i| chunks[i].0).collect();
    assert_eq!(s.ids(), want);
    for (i, (id, _)) in chunks.iter().enumerate() {
        let kept = want.contains(id);
        assert_eq!(s.inner.layout.chunk_path(id).exists(), kept, "chunk {i}");
        assert_eq!(s.get(id).await.unwrap().is_some(), kept, "chunk {i}");
    }
    assert_eq!(m.cache_bytes.get(), 5 * KIB as i64);
}

#[tokio::test]
async fn pinned_chunks_are_never_evicted() {
    let tmp = tempfile::tempdir().unwrap();
    let (s, m) = open(tmp.path(), 10 * KIB as u64, 1 << 20).await;
    let chunks: Vec<_> = (0..15).map(|n| chunk(n, KIB)).collect();
    let ids = |r: std::ops::Range<usize>| chunks[r].iter().map(|c| c.0).collect::<Vec<_>>();
    let outer = s.pin(ids(0..2));
    let inner = s.pin(ids(0..1));
    for (id, b) in &chunks[..10] {
        s.put(*id, b.clone()).await.unwrap();
    }
    // 10 KiB > 9 KiB: 0 and 1 are pinned, so 2..=6 go.
    assert_eq!(m.cache_evictions.get(), 5);
    assert_eq!(s.ids(), [ids(0..2), ids(7..10)].concat());
    drop(outer);
    // 0 is still pinned by `inner`, 1 is not any more: the next eviction (at 10 KiB)
    // takes 1, 7, 8, 9, 10.
    for (id, b) in &chunks[10..15] {
        s.put(*id, b.clone()).await.unwrap();
    }
    assert_eq!(m.cache_evictions.get(), 10);
    assert_eq!(s.ids(), [ids(0..1), ids(11..15)].concat());
    drop(inner);

    // A quota filled by pins refuses the write but keeps the chunk in memory.
    let tmp = tempfile::tempdir().unwrap();
    let (s, _) = open(tmp.path(), 2 * KIB as u64, 1 << 20).await;
    let _pin = s.pin(ids(0..2));
    for (id, b) in &chunks[..2] {
        s.put(*id, b.clone()).await.unwrap();
    }
    let (id, b) = &chunks[2];
    assert!(matches!(
        s.put(*id, b.clone()).await,
        Err(StoreError::Full { .. })
    ));
    assert!(s.writable());
    assert_eq!(s.get(id).await.unwrap().as_ref(), Some(b));
    assert_eq!(s.ids(), ids(0..2));
}

#[tokio::test]
async fn unusable_dir_runs_from_memory_and_recovers() {
    let tmp = tempfile::tempdir().unwrap();
    // Root ignores permissions, so use a path whose parent is a regular file.
    let blocker = tmp.path().join("file");
    fs::write(&blocker, b"not a directory").unwrap();
    let dir = blocker.join("cache");
    let m = Metrics::default();
    let s = ChunkStore::open_with(
        cfg(&dir, 1 << 30, 1 << 20),
        m.clone(),
        Duration::from_secs(3600),
        Arc::new(Statvfs),
    )
    .await;
    assert!(!s.writable());
    assert!(!s.usable(), "neither writable nor a read-only cache");
    let (id, b) = chunk(1, 4 * KIB);
    assert!(matches!(
        s.put(id, b.clone()).await,
        Err(StoreError::Unwritable { .. })
    ));
    assert!(s.contains(&id));
    assert_eq!(s.get(&id).await.unwrap(), Some(b.clone()));
    assert_eq!(s.usage(), Usage::default());

    // With a zero retry interval the next put tries again and, once the path is
    // usable, scans the directory and writes.
    let s = ChunkStore::open_with(
        cfg(&dir, 1 << 30, 1 << 20),
        m.clone(),
        Duration::ZERO,
        Arc::new(Statvfs),
    )
    .await;
    assert!(s.put(id, b.clone()).await.is_err());
    fs::remove_file(&blocker).unwrap();
    s.put(id, b.clone()).await.unwrap();
    assert!(s.writable());
    assert!(s.usable());
    assert_eq!(s.ids(), vec![id]);
}

#[tokio::test]
async fn write_error_marks_unwritable_until_retry() {
    let tmp = tempfile::tempdir().unwrap();
    let m = Metrics::default();
    let s = ChunkStore::open_with(
        cfg(tmp.path(), 1 << 30, 1 << 20),
        m.clone(),
        Duration::ZERO,
        Arc::new(Statvfs),
    )
    .await;
    assert!(s.writable());
    // Replace tmp/ by a file: creating a temporary file now fails (ENOTDIR).
    let tmp_dir = tmp.path().join("tmp");
    fs::remove_dir(&tmp_dir).unwrap();
    fs::write(&tmp_dir, b"x").unwrap();
    let (id, b) = chunk(1, 4 * KIB);
    assert!(matches!(
        s.put(id, b.clone()).await,
        Err(StoreError::Write { .. })
    ));
    assert!(!s.writable());
    assert_eq!(m.cache_write_errors.get(), 1);
    assert_eq!(s.get(&id).await.unwrap(), Some(b.clone()));
    assert_eq!(s.usage(), Usage::default());

    // Retry after the interval (zero here) once the disk is fixed.
    fs::remove_file(&tmp_dir).unwrap();
    s.put(id, b.clone()).await.unwrap();
    assert!(s.writable());
    assert_eq!(s.ids(), vec![id]);

    // With a long interval a failed write is not retried at once.
    let s = ChunkStore::open_with(
        cfg(tmp.path(), 1 << 30, 0),
        m.clone(),
        Duration::from_secs(3600),
        Arc::new(Statvfs),
    )
    .await;
    fs::remove_dir(&tmp_dir).unwrap();
    fs::write(&tmp_dir, b"x").unwrap();
    let (id2, b2) = chunk(2, 4 * KIB);
    assert!(matches!(
        s.put(id2, b2.clone()).await,
        Err(StoreError::Write { .. })
    ));
    fs::remove_file(&tmp_dir).unwrap();
    assert!(matches!(
        s.put(id2, b2).await,
        Err(StoreError::Unwritable { .. })
    ));
    assert_eq!(m.cache_write_errors.get(), 2);
}

#[test]
fn config_conversion() {
    let c = CacheConfig::default();
    let s = StoreConfig::from(&c);
    assert_eq!(s.max_size, c.max_size.as_u64());
    assert_eq!(s.memory_size, c.memory_size.as_u64());
    assert_eq!(s.dir, c.dir);
}

/// Direct (`O_DIRECT`) writes pad to whole blocks and truncate: every length round-trips
/// byte for byte and the file holds exactly the chunk, also when a pooled buffer from
/// a longer chunk (with its tail of stale bytes) is reused for a shorter one.
#[test]
fn chunk_files_hold_exactly_the_bytes_at_any_length() {
    let tmp = tempfile::tempdir().unwrap();
    let layout = Layout::new(tmp.path());
    layout.prepare().unwrap();
    for (n, len) in [
        (1u32, 1usize),
        (2, 4095),
        (3, 4096),
        (4, 4097),
        (5, 1024 * KIB + 3),
        (6, 3),
    ] {
        let (id, bytes) = chunk(n, len);
        layout.write(&id, &bytes, u64::from(n)).unwrap();
        let path = layout.chunk_path(&id);
        assert_eq!(
            fs::metadata(&path).unwrap().len(),
            len as u64,
            "length {len}"
        );
        match layout.read_verified(&id, len as u64, None, false).unwrap() {
            disk::ChunkRead::Verified { data, .. } => assert_eq!(data, bytes, "length {len}"),
            other => panic!("length {len}: {other:?}"),
        }
    }
    // Nothing left in tmp/.
    assert_eq!(fs::read_dir(&layout.tmp).unwrap().count(), 0);
}

/// Reading in pieces hashes every byte: a flipped bit in the first, a middle or the
/// last (partial) piece, a file one byte shorter or longer than indexed, all fail;
/// the intact file reads back byte for byte. Through the store, a corrupt file is
/// never returned, is counted and deleted.
#[tokio::test]
async fn pieced_read_catches_corruption_anywhere() {
    let tmp = tempfile::tempdir().unwrap();
    let (s, m) = open(tmp.path(), 1 << 30, 0).await;
    let layout = &s.inner.layout;
    let len = 1024 * KIB + 3; // four whole pieces and a partial one
    let mut failures = 0;
    for (n, damage) in [0usize, 1, 300 * KIB, len - 1, usize::MAX - 1, usize::MAX]
        .into_iter()
        .enumerate()
    {
        let (id, bytes) = chunk(100 + n as u32, len);
        s.put(id, bytes.clone()).await.unwrap();
        let path = layout.chunk_path(&id);
        let mut data = bytes.to_vec();
        match damage {
            0 => {}
            usize::MAX => data.push(0),
            x if x == usize::MAX - 1 => {
                data.pop();
            }
            at => data[at] ^= 0x80,
        }
        fs::write(&path, &data).unwrap();
        let read = layout.read_verified(&id, len as u64, None, false).unwrap();
        let got = s.get(&id).await.unwrap();
        if damage == 0 {
            assert!(
                matches!(read, disk::ChunkRead::Verified { ref data, .. } if data[..] == bytes[..])
            );
            assert_eq!(got.as_ref(), Some(&bytes));
        } else {
            failures += 1;
            assert!(matches!(read, disk::ChunkRead::Corrupt), "damage {damage}");
            assert_eq!(got, None, "damage {damage}");
            assert!(!path.exists(), "damage {damage}");
            assert!(!s.contains(&id));
        }
        assert_eq!(disk_failures(&m), failures, "damage {damage}");
    }
    let (absent, _) = chunk(99, 10);
    assert!(matches!(
        layout.read_verified(&absent, 10, None, false).unwrap(),
        disk::ChunkRead::Missing
    ));
}

/// Under a verify window, a settled chunk file is served unhashed while its `fstat`
/// is unchanged; a file changed in place afterwards (same size, mtime put back) is
/// hashed again, caught, deleted and counted, and its proof is gone.
#[tokio::test]
async fn proof_skips_the_hash_until_the_file_changes() {
    let tmp = tempfile::tempdir().unwrap();
    let m = Metrics::default();
    let mut c = cfg(tmp.path(), 1 << 30, 0);
    c.verify_window = Duration::from_secs(600);
    let s = ChunkStore::open(c, m.clone()).await;
    let (id, bytes) = chunk(7, 300 * KIB);
    s.put(id, bytes.clone()).await.unwrap();
    let proofs = s.inner.proofs.as_ref().unwrap();
    // The file's last change must be settled (disk::PROOF_MARGIN, 50 ms in tests).
    let deadline = Instant::now() + Duration::from_secs(10);
    while !proofs.contains_key(&id) {
        assert!(Instant::now() < deadline, "no proof recorded");
        assert_eq!(s.get(&id).await.unwrap().as_ref(), Some(&bytes));
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(m.cache_reads_proved.get(), 0);
    for n in 1..=3 {
        assert_eq!(s.get(&id).await.unwrap().as_ref(), Some(&bytes));
        assert_eq!(m.cache_reads_proved.get(), n);
    }
    let path = s.inner.layout.chunk_path(&id);
    let mtime = fs::metadata(&path).unwrap().modified().unwrap();
    let mut data = bytes.to_vec();
    data[200 * KIB] ^= 0x04;
    fs::write(&path, &data).unwrap();
    fs::File::options()
        .write(true)
        .open(&path)
        .unwrap()
        .set_modified(mtime)
        .unwrap();
    assert_eq!(s.get(&id).await.unwrap(), None);
    assert_eq!(m.cache_reads_proved.get(), 3);
    assert_eq!(disk_failures(&m), 1);
    assert!(!path.exists());
    assert!(!s.contains(&id));
    assert!(!proofs.contains_key(&id));
}

/// A disk of `free` bytes (for us) beside a huge filesystem: `available` is what is
/// left after the chunk files in the store and the bytes `others` took.
#[derive(Debug)]
struct FakeDisk {
    free: u64,
    others: AtomicU64,
}

const FAKE_TOTAL: u64 = 100 << 20;

impl FakeDisk {
    fn new(free: u64) -> Arc<Self> {
        Arc::new(Self {
            free,
            others: AtomicU64::new(0),
        })
    }
}

impl SpaceSource for FakeDisk {
    fn space(&self, dir: &Path) -> std::io::Result<Space> {
        let used = chunk_file_bytes(dir) + self.others.load(Ordering::Relaxed);
        Ok(Space {
            total: FAKE_TOTAL,
            available: self.free.saturating_sub(used),
        })
    }
}

/// Sum of the sizes of the files under `dir/chunks`.
fn chunk_file_bytes(dir: &Path) -> u64 {
    let mut n = 0;
    for sub in fs::read_dir(dir.join("chunks"))
        .into_iter()
        .flatten()
        .flatten()
    {
        for f in fs::read_dir(sub.path()).into_iter().flatten().flatten() {
            n += f.metadata().map(|m| m.len()).unwrap_or(0);
        }
    }
    n
}

/// The quota follows the disk: a 10 GiB configured quota on a disk with 640 KiB to
/// spare (beyond the reserve) keeps usage under 640 KiB by evicting, every chunk is
/// still written (caching goes on), and when another program takes half of it, the
/// next write evicts down to the new quota. Objects larger than it do not `fit`.
#[tokio::test]
async fn quota_follows_free_space() {
    let tmp = tempfile::tempdir().unwrap();
    let reserve = space::reserve(FAKE_TOTAL);
    let disk = FakeDisk::new(reserve + 640 * KIB as u64);
    let m = Metrics::default();
    // The default `cache.min_free`: 2 % of the (fake) filesystem.
    let mut c = cfg(tmp.path(), 10 << 30, 0);
    c.min_free = None;
    let s = ChunkStore::open_with(c, m.clone(), RETRY_INTERVAL, disk.clone()).await;
    assert_eq!(s.quota(), 640 * KIB as u64);
    assert_eq!(m.cache_quota_bytes.get(), 640 * KIB as i64);
    let chunks: Vec<_> = (0..30).map(|n| chunk(n, 64 * KIB)).collect();
    for (id, b) in &chunks {
        s.put(*id, b.clone()).await.unwrap();
        assert!(s.chunk_len(id).is_some(), "just written");
        assert!(s.usage().bytes <= s.quota());
        assert!(chunk_file_bytes(tmp.path()) <= 640 * KIB as u64);
    }
    assert!(m.cache_evictions.get() > 0);
    assert!(s.writable());
    assert!(s.fits(640 * KIB as u64).await);
    assert!(!s.fits(640 * KIB as u64 + 1).await);

    // Another program takes 320 KiB: the quota halves and the next write evicts.
    disk.others.store(320 * KIB as u64, Ordering::Relaxed);
    assert_eq!(s.limit(true).await, 320 * KIB as u64);
    let (id, b) = chunk(99, 64 * KIB);
    s.put(id, b).await.unwrap();
    assert!(s.usage().bytes <= 320 * KIB as u64, "{:?}", s.usage());
    assert!(s.chunk_len(&id).is_some());
    assert_eq!(m.cache_write_skipped.with_label_values(&["full"]).get(), 0);
}

/// A disk with less free space than the default reserve (2 % of it) caches nothing
/// new, counted as `full`; `cache.min_free` lowered below the free space lets it.
#[tokio::test]
async fn min_free_decides_whether_a_nearly_full_disk_caches() {
    let (id, b) = chunk(7, 64 * KIB);
    for (min_free, cached) in [
        (None, false),
        (Some(0), true),
        (Some(512 * KIB as u64), true),
    ] {
        let tmp = tempfile::tempdir().unwrap();
        let m = Metrics::default();
        let mut c = cfg(tmp.path(), 10 << 30, 0);
        c.min_free = min_free;
        // 1 MiB free on a 100 MiB filesystem: under its 2 MiB default reserve.
        let disk = FakeDisk::new(1 << 20);
        let s = ChunkStore::open_with(c, m.clone(), RETRY_INTERVAL, disk).await;
        let want = (1 << 20) - min_free.unwrap_or(1 << 20).min(1 << 20);
        assert_eq!(s.quota(), want, "min_free {min_free:?}");
        let put = s.put(id, b.clone()).await;
        assert_eq!(put.is_ok(), cached, "min_free {min_free:?}: {put:?}");
        assert_eq!(s.chunk_len(&id).is_some(), cached);
        let skipped = m.cache_write_skipped.with_label_values(&["full"]).get();
        assert_eq!(skipped, u64::from(!cached));
    }
}

/// Many writers at once never take the store past its quota: every byte is reserved
/// before it is written, so the index (indexed + reserved + being deleted) and the
/// files on disk stay within 64 KiB at every point, sampled while 64 tasks put 4 KiB
/// chunks; a write that finds the quota held by writes in progress is skipped as
/// `full`, never over-committed.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_puts_never_exceed_the_quota() {
    let tmp = tempfile::tempdir().unwrap();
    let quota = 64 * KIB as u64;
    let (s, m) = open(tmp.path(), quota, 0).await;
    assert_eq!(s.quota(), quota);
    let done = Arc::new(AtomicBool::new(false));
    let sampler = {
        let (s, done, dir) = (s.clone(), done.clone(), tmp.path().to_path_buf());
        tokio::spawn(async move {
            let mut samples = 0u64;
            while !done.load(Ordering::Acquire) {
                let committed = s.index().committed();
                assert!(committed <= quota, "committed {committed} > {quota}");
                assert!(s.usage().bytes <= quota);
                let on_disk = chunk_file_bytes(&dir);
                assert!(on_disk <= quota, "files {on_disk} > {quota}");
                samples += 1;
                tokio::task::yield_now().await;
            }
            samples
        })
    };
    for round in 0..4u32 {
        let mut tasks = tokio::task::JoinSet::new();
        for n in 0..64u32 {
            let s = s.clone();
            tasks.spawn(async move {
                let (id, b) = chunk(round * 1000 + n, 4 * KIB);
                match s.put(id, b).await {
                    Ok(()) => true,
                    Err(StoreError::Full { .. }) => false,
                    Err(e) => panic!("unexpected {e}"),
                }
            });
        }
        let stored = tasks.join_all().await.into_iter().filter(|ok| *ok).count();
        assert!(stored > 0, "round {round}: nothing stored");
    }
    done.store(true, Ordering::Release);
    assert!(sampler.await.unwrap() > 0);
    let peak = s.index().peak();
    assert!(peak <= quota, "peak {peak} > {quota}");
    assert!(s.usage().bytes <= quota);
    let committed = s.index().committed();
    assert_eq!(committed, s.usage().bytes, "no reservation leaked");
    assert_eq!(chunk_file_bytes(tmp.path()), s.usage().bytes);
    let skipped = m.cache_write_skipped.with_label_values(&["full"]).get();
    assert_eq!(
        u64::from(256u32) - skipped,
        s.usage().chunks + m.cache_evictions.get(),
        "every put is stored (and maybe evicted since) or skipped"
    );
}

/// A directory that cannot be written at start (here `tmp/` is a file; on a real
/// read-only mount the probe fails the same way) is still indexed: its chunks are
/// served, verified, and nothing in it is deleted or written (not even junk).
#[tokio::test]
async fn unwritable_dir_serves_the_chunks_it_holds() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let chunks: Vec<_> = (0..3).map(|n| chunk(n, 8 * KIB)).collect();
    {
        let (s, _) = open(root, 1 << 30, 0).await;
        for (id, b) in &chunks {
            s.put(*id, b.clone()).await.unwrap();
        }
    }
    let layout = Layout::new(root);
    fs::remove_dir(&layout.tmp).unwrap();
    fs::write(&layout.tmp, b"not a directory").unwrap();
    let junk = layout.chunks.join("stray-file");
    fs::write(&junk, b"x").unwrap();
    let (s, m) = open(root, 1 << 30, 0).await;
    assert!(!s.writable());
    assert_eq!(s.usage().chunks, 3);
    for (id, b) in &chunks {
        assert_eq!(s.get(id).await.unwrap().as_ref(), Some(b));
    }
    assert!(junk.exists(), "nothing deleted");
    let (id, b) = chunk(9, 8 * KIB);
    assert!(matches!(
        s.put(id, b.clone()).await,
        Err(StoreError::Unwritable { .. })
    ));
    assert_eq!(
        m.cache_write_skipped
            .with_label_values(&["unwritable"])
            .get(),
        1
    );
    assert_eq!(
        s.get(&id).await.unwrap(),
        None,
        "memory cache off: not kept"
    );
    assert_eq!(s.usage().chunks, 3);
}

/// A source that claims a huge empty disk, whatever the truth.
#[derive(Debug)]
struct LyingDisk;

impl SpaceSource for LyingDisk {
    fn space(&self, _dir: &Path) -> std::io::Result<Space> {
        Ok(Space {
            total: 1 << 40,
            available: 1 << 40,
        })
    }
}

/// `ENOSPC` evicts and caching goes on: on a real 2 MiB tmpfs whose free space the
/// store is lied to about (so the quota cannot prevent it), every write that meets
/// `ENOSPC` lowers the quota to what the store holds, evicts and retries; the store
/// never turns unwritable and the newest chunks are on disk. Needs root (mount);
/// skipped otherwise.
#[tokio::test]
async fn enospc_evicts_and_resumes() {
    let tmp = tempfile::tempdir().unwrap();
    let mounted = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=2m", "tmpfs"])
        .arg(tmp.path())
        .output()
        .is_ok_and(|o| o.status.success());
    if !mounted {
        eprintln!("SKIP enospc_evicts_and_resumes: cannot mount a tmpfs (needs root)");
        return;
    }
    struct Unmount<'a>(&'a Path);
    impl Drop for Unmount<'_> {
        fn drop(&mut self) {
            let _ = std::process::Command::new("umount")
                .arg("-l")
                .arg(self.0)
                .status();
        }
    }
    let _guard = Unmount(tmp.path());
    let m = Metrics::default();
    let s = ChunkStore::open_with(
        cfg(tmp.path(), 10 << 30, 0),
        m.clone(),
        RETRY_INTERVAL,
        Arc::new(LyingDisk),
    )
    .await;
    let chunks: Vec<_> = (0..64).map(|n| chunk(n, 64 * KIB)).collect();
    let mut stored = 0;
    for (id, b) in &chunks {
        if s.put(*id, b.clone()).await.is_ok() {
            stored += 1;
        }
        assert!(s.writable(), "ENOSPC must not switch the disk off");
    }
    let (last, _) = chunks[63];
    assert!(s.chunk_len(&last).is_some(), "the newest chunk is on disk");
    assert!(m.cache_evictions.get() > 0);
    assert!(m.cache_write_errors.get() > 0, "ENOSPC was met");
    assert!(stored >= 60, "stored {stored} of 64");
    assert!(s.usage().bytes <= 2 << 20);
    drop(s);
}

/// Chunks read back from disk go into the memory cache within its budget at once:
/// moka weighs inserts only when it applies them (in batches of 64, or every 300
/// ms), so 16 clients reading a large object from disk let it hold far more than
/// `memory_size` until then.
#[tokio::test]
async fn disk_reads_keep_the_memory_cache_within_its_budget() {
    let tmp = tempfile::tempdir().unwrap();
    let budget = 256 * KIB as u64;
    let (s, _) = open(tmp.path(), 1 << 30, budget).await;
    let chunks: Vec<_> = (0..24).map(|n| chunk(n, 64 * KIB)).collect();
    for (id, b) in &chunks {
        s.put(*id, b.clone()).await.unwrap();
    }
    let memory = s.inner.memory.as_ref().unwrap();
    let held = || memory.iter().map(|(_, b)| b.len() as u64).sum::<u64>();
    // Most chunks were evicted from memory: reading them goes to disk.
    for (id, b) in &chunks {
        assert_eq!(s.get(id).await.unwrap().as_ref(), Some(b));
        assert!(
            held() <= budget + 64 * KIB as u64,
            "the memory cache holds {} bytes, budget {budget}",
            held()
        );
    }
}
