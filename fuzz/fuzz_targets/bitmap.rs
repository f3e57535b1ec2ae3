//! `ChunkBitmap::from_base64`: the have-sets in every sync and announce.
//!
//! Properties: a decoded bitmap is canonical (no trailing zero byte) and re-encodes to
//! a string that decodes to the same set; its count, end and iterator agree; `missing`
//! and `iter` partition `0..end`.
#![no_main]

use libfuzzer_sys::fuzz_target;
use shoal_proto::tracker::{ChunkBitmap, MAX_BITMAP_BYTES};

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(b) = ChunkBitmap::from_base64(s) else {
        return;
    };
    assert!(b.as_bytes().len() <= MAX_BITMAP_BYTES);
    assert_ne!(b.as_bytes().last(), Some(&0), "trailing zero byte kept");
    let again = ChunkBitmap::from_base64(&b.to_base64()).expect("own encoding decodes");
    assert_eq!(again, b);
    let set: Vec<u32> = b.iter().collect();
    assert_eq!(set.len() as u64, u64::from(b.count()));
    assert_eq!(set.last().map_or(0, |&i| u64::from(i) + 1), b.end());
    let Ok(end) = u32::try_from(b.end()) else {
        return;
    };
    assert!(b.is_full(end) == (b.missing(end).next().is_none()));
    assert_eq!(
        u64::from(b.count()) + b.missing(end).count() as u64,
        b.end()
    );
    assert!(set.iter().all(|&i| b.contains(i)));
    assert_eq!(set.into_iter().collect::<ChunkBitmap>(), b);
});
