//! `parse_range_header`: a client's `Range` header against an object size (the first
//! 8 input bytes, big-endian; the rest is the header value).
//!
//! Properties: a partial range is non-empty and inside the object; a multipart answer
//! has 2 to MAX_PARTS non-empty ranges inside the object, none overlapping or
//! adjacent, whose lengths add up to at most the size.
#![no_main]

use libfuzzer_sys::fuzz_target;
use shoal_proto::range::{ByteRange, MAX_PARTS, RangeDecision, parse_range_header};

fn inside(r: &ByteRange, size: u64, h: &str) {
    assert!(r.start < r.end && r.end <= size, "{h:?} size {size}: {r}");
    let _ = r.content_range(size);
}

fuzz_target!(|data: &[u8]| {
    if data.len() < 8 {
        return;
    }
    let (size, header) = data.split_at(8);
    let mut s = [0u8; 8];
    s.copy_from_slice(size);
    // Mostly small sizes, so ranges near the end are reachable; sometimes huge ones.
    let size = match u64::from_be_bytes(s) {
        n if n >> 63 == 1 => n,
        n => n % 100_000,
    };
    let Ok(h) = std::str::from_utf8(header) else {
        return;
    };
    match parse_range_header(h, size) {
        RangeDecision::Full | RangeDecision::Unsatisfiable => {}
        RangeDecision::Partial(r) => inside(&r, size, h),
        RangeDecision::Multi(v) => {
            assert!(
                (2..=MAX_PARTS).contains(&v.len()),
                "{h:?}: {} parts",
                v.len()
            );
            v.iter().for_each(|r| inside(r, size, h));
            let total: u64 = v.iter().map(ByteRange::len).sum();
            assert!(total <= size, "{h:?}: {total} > {size}");
            let mut sorted = v.clone();
            sorted.sort_by_key(|r| r.start);
            for w in sorted.windows(2) {
                assert!(w[0].end < w[1].start, "{h:?}: {} touches {}", w[0], w[1]);
            }
        }
    }
});
