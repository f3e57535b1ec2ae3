//! Chunker + BLAKE3 throughput: what one core spends to split and name an object.
//!
//! Two feeds per chunk size: the whole object as one buffer (the chunker only slices,
//! so this is BLAKE3 alone) and 64 KiB pieces, as bodies arrive from hyper (adds the
//! copy that joins pieces into chunks). Throughput is reported in bytes of object.

use std::hint::black_box;
use std::time::Duration;

use bytes::Bytes;
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use shoal_proto::chunker::{Chunker, chunk_all};

const OBJECT: usize = 64 * 1024 * 1024;
const PIECE: usize = 64 * 1024;

/// Deterministic incompressible bytes (BLAKE3 in XOF mode).
fn random(len: usize) -> Bytes {
    let mut data = vec![0u8; len];
    blake3::Hasher::new()
        .update(b"shoal bench")
        .finalize_xof()
        .fill(&mut data);
    Bytes::from(data)
}

fn chunking(c: &mut Criterion) {
    let data = random(OBJECT);
    let mut g = c.benchmark_group("chunk_64MiB");
    g.throughput(Throughput::Bytes(OBJECT as u64))
        .sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(4));
    for cs in [256 * 1024u32, 1024 * 1024, 4 * 1024 * 1024] {
        let label = format!("{}KiB", cs / 1024);
        g.bench_with_input(BenchmarkId::new("whole", &label), &cs, |b, &cs| {
            b.iter(|| black_box(chunk_all(data.clone(), cs)).len())
        });
        g.bench_with_input(BenchmarkId::new("pieces_64KiB", &label), &cs, |b, &cs| {
            b.iter(|| {
                let mut ch = Chunker::new(cs);
                let mut n = 0;
                let mut off = 0;
                while off < data.len() {
                    let end = (off + PIECE).min(data.len());
                    n += black_box(ch.push(data.slice(off..end))).len();
                    off = end;
                }
                n + usize::from(ch.finish().is_some())
            })
        });
    }
    g.finish();
}

criterion_group!(benches, chunking);
criterion_main!(benches);
