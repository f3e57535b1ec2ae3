//! Manifests: the canonical binary encoding (`Manifest::decode`), and the JSON of
//! `Manifest` and `Layout` as the tracker sends them and the agent stores them (the
//! first byte picks which).
//!
//! Properties: a decoded manifest lists exactly `layout.chunk_count()` ids of a layout
//! within bounds; the binary encoding is canonical (decode then encode gives the input
//! back); JSON and binary round trips give equal manifests; layout geometry covers the
//! object exactly.
#![no_main]

use libfuzzer_sys::fuzz_target;
use shoal_proto::{ByteRange, Layout, Manifest};

fn manifest_ok(m: &Manifest) {
    layout_ok(&m.layout);
    assert_eq!(m.chunks.len(), m.layout.chunk_count());
    assert_eq!(Manifest::decode(&m.encode()).as_ref(), Ok(m));
    let json = serde_json::to_string(m).expect("a manifest encodes");
    let back: Manifest = serde_json::from_str(&json).unwrap_or_else(|e| panic!("{json}: {e}"));
    assert_eq!(&back, m);
}

fn layout_ok(l: &Layout) {
    assert_eq!(Layout::new(l.size, l.chunk_size).as_ref(), Ok(l));
    let n = l.chunk_count();
    let sum: u64 = (0..n.min(64)).map(|i| u64::from(l.chunk_len(i))).sum();
    if n <= 64 {
        assert_eq!(sum, l.size, "{l:?}");
    }
    if n > 0 {
        assert!(l.chunk_len(n - 1) > 0, "{l:?}: empty last chunk");
        assert_eq!(l.chunk_bounds(n - 1).end, l.size);
        assert_eq!(l.chunks_for(ByteRange::new(0, l.size)), 0..n);
    }
    assert_eq!(l.chunk_len(n), 0);
    let json = serde_json::to_string(l).expect("a layout encodes");
    assert_eq!(serde_json::from_str::<Layout>(&json).ok().as_ref(), Some(l));
}

fuzz_target!(|data: &[u8]| {
    let Some((&which, rest)) = data.split_first() else {
        return;
    };
    match which % 3 {
        0 => {
            if let Ok(m) = Manifest::decode(rest) {
                assert_eq!(m.encode(), rest, "binary encoding is not canonical");
                manifest_ok(&m);
            }
        }
        1 => {
            if let Ok(m) = serde_json::from_slice::<Manifest>(rest) {
                manifest_ok(&m);
            }
        }
        _ => {
            if let Ok(l) = serde_json::from_slice::<Layout>(rest) {
                layout_ok(&l);
            }
        }
    }
});
