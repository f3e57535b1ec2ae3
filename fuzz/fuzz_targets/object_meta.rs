//! The agent's on-disk object metadata (`ObjectMeta` JSON, read back at startup).
//!
//! Properties: what decodes has a valid manifest, re-encodes to JSON that decodes to
//! the same JSON; replaying its headers into a response never panics; a digest found
//! in its URL is `sha256:` and 64 lowercase hex digits.
#![no_main]

use libfuzzer_sys::fuzz_target;
use shoal_agent::object::meta::{ObjectMeta, digest_in_path};
use shoal_proto::Layout;

fuzz_target!(|data: &[u8]| {
    let Ok(m) = serde_json::from_slice::<ObjectMeta>(data) else {
        return;
    };
    let l = m.manifest.layout;
    assert_eq!(Layout::new(l.size, l.chunk_size), Ok(l));
    assert_eq!(m.manifest.chunks.len(), l.chunk_count());
    let json = serde_json::to_string(&m).expect("metadata encodes");
    let back: ObjectMeta = serde_json::from_str(&json).unwrap_or_else(|e| panic!("{json}: {e}"));
    assert_eq!(
        serde_json::to_string(&back).ok().as_deref(),
        Some(json.as_str())
    );
    let mut h = http::HeaderMap::new();
    m.repr.apply(&mut h);
    let _ = m.is_fresh(
        std::time::SystemTime::now(),
        std::time::Duration::from_secs(60),
    );
    if let Some(d) = digest_in_path(&m.url) {
        let text = d.to_string();
        let hex = text.strip_prefix("sha256:").expect("sha256: prefix");
        assert!(
            hex.len() == 64 && hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')),
            "{d}"
        );
    }
});
