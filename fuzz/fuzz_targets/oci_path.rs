//! The registry path parser (`shoal_proto::oci::RegistryPath::parse`): every
//! `/v2/...` path a registry client sends through a registry mirror.
//!
//! Properties: an accepted path prints back (`to_path`) to a path that parses to the
//! same endpoint; its repository name is at most 255 bytes of lower-case
//! alphanumerics and `._-/` that never starts, ends or doubles a `/`; a digest prints
//! as `sha256:` + 64 lower-case hex; a tag is 1..=128 bytes without `:`.
#![no_main]

use libfuzzer_sys::fuzz_target;
use shoal_proto::oci::{MAX_NAME, Reference, RegistryPath};

fuzz_target!(|data: &[u8]| {
    let Ok(path) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(r) = RegistryPath::parse(path) else {
        return;
    };
    let printed = r.to_path();
    assert_eq!(RegistryPath::parse(&printed).as_ref(), Ok(&r), "{path:?}");
    if let Some(n) = r.name() {
        let n = n.as_str();
        assert!(!n.is_empty() && n.len() <= MAX_NAME, "{path:?}");
        assert!(
            n.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-/".contains(&b)),
            "{path:?}"
        );
        assert!(!n.starts_with('/') && !n.ends_with('/') && !n.contains("//"), "{path:?}");
    }
    let digest_ok = |d: &str| {
        d.len() == 71
            && d.starts_with("sha256:")
            && d[7..].bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    };
    match &r {
        RegistryPath::Blob { digest, .. } | RegistryPath::Referrers { digest, .. } => {
            assert!(digest_ok(&digest.to_string()), "{path:?}");
        }
        RegistryPath::Manifest { reference, .. } => match reference {
            Reference::Digest(d) => assert!(digest_ok(&d.to_string()), "{path:?}"),
            Reference::Tag(t) => {
                let t = t.as_str();
                assert!(!t.is_empty() && t.len() <= 128 && !t.contains(':'), "{path:?}");
            }
        },
        RegistryPath::Ping | RegistryPath::Tags { .. } => {}
    }
});
