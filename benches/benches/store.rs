//! Chunk store costs for one 1 MiB chunk: put (temp file + rename, no fsync), get from
//! disk (read + BLAKE3 verify), get from memory (no hash), and the two halves of a
//! disk get on their own (plain file read, BLAKE3) to show what verify-on-read costs.
//! Files are in a temporary directory, so reads come from the page cache.

// A benchmark whose setup fails has nothing to measure: aborting is the right answer.
#![allow(clippy::expect_used)]

use std::hint::black_box;
use std::time::Duration;

use bytes::Bytes;
use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use shoal_agent::metrics::Metrics;
use shoal_agent::store::{ChunkStore, StoreConfig};
use shoal_proto::id::ChunkId;

const CHUNK: usize = 1024 * 1024;

/// Chunk `n`: deterministic incompressible bytes and their id.
fn chunk(n: u64) -> (ChunkId, Bytes) {
    let mut data = vec![0u8; CHUNK];
    blake3::Hasher::new()
        .update(&n.to_le_bytes())
        .finalize_xof()
        .fill(&mut data);
    (ChunkId::of(&data), Bytes::from(data))
}

fn open(rt: &tokio::runtime::Runtime, dir: &std::path::Path, memory_size: u64) -> ChunkStore {
    let cfg = StoreConfig {
        dir: dir.to_path_buf(),
        // Small enough that the put benchmark also pays for eviction, as in steady state.
        max_size: 256 * CHUNK as u64,
        high_watermark: 0.95,
        low_watermark: 0.90,
        memory_size,
        verify_window: std::time::Duration::ZERO,
        min_free: Some(0),
    };
    rt.block_on(ChunkStore::open(cfg, Metrics::default()))
}

fn store(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let tmp = tempfile::tempdir().expect("temporary directory");
    let mut g = c.benchmark_group("store_1MiB");
    g.throughput(Throughput::Bytes(CHUNK as u64))
        .sample_size(20)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3));

    // Memory cache off: the put is the disk write alone.
    let disk = open(&rt, &tmp.path().join("disk"), 0);
    let mut n = 0u64;
    g.bench_function("put", |b| {
        b.iter_batched(
            || {
                n += 1;
                chunk(n)
            },
            |(id, bytes)| rt.block_on(disk.put(id, bytes)).is_ok(),
            BatchSize::PerIteration,
        )
    });

    let (id, bytes) = chunk(u64::MAX);
    rt.block_on(disk.put(id, bytes.clone())).expect("put");
    g.bench_function("get_disk_verified", |b| {
        b.iter(|| rt.block_on(disk.get(black_box(&id))).ok().flatten())
    });

    let mem = open(&rt, &tmp.path().join("mem"), 64 * CHUNK as u64);
    rt.block_on(mem.put(id, bytes.clone())).expect("put");
    g.bench_function("get_memory", |b| {
        b.iter(|| rt.block_on(mem.get(black_box(&id))).ok().flatten())
    });

    let hex = id.to_hex();
    let path = tmp
        .path()
        .join("disk")
        .join("chunks")
        .join(&hex[..2])
        .join(&hex);
    g.bench_function("read_file_only", |b| {
        b.iter(|| std::fs::read(black_box(&path)).map(|v| v.len()).ok())
    });
    g.bench_function("blake3_only", |b| {
        b.iter(|| blake3::hash(black_box(&bytes)))
    });
    g.finish();
}

criterion_group!(benches, store);
criterion_main!(benches);
