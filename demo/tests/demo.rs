//! The demo binary end to end: the real `shoal-demo` process, a small swarm, its JSON
//! report. The figures are the demo's own measurements (origin body bytes counted by
//! the origin, every response hashed against the object's BLAKE3).

use std::process::Command;

#[test]
fn demo_swarm_verifies_every_byte_and_spares_the_origin() {
    let out = Command::new(env!("CARGO_BIN_EXE_shoal-demo"))
        .args([
            "--agents",
            "3",
            "--size",
            "6MiB",
            "--chunk-size",
            "256KiB",
            "--json",
        ])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "shoal-demo failed: {stderr}");
    let r: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(r["all_verified"], true, "{r}");
    assert_eq!(r["agents"], 3);
    assert_eq!(r["object_bytes"], 6 << 20);
    let per_agent = r["per_agent"].as_array().unwrap();
    assert_eq!(per_agent.len(), 3);
    assert!(per_agent.iter().all(|a| a["verified"] == true), "{r}");
    // Three agents asking at once: the origin sends about one copy, not three.
    let ratio = r["origin_ratio"].as_f64().unwrap();
    assert!(
        (1.0..1.5).contains(&ratio),
        "origin sent {ratio} x the object: {r}"
    );
}

#[test]
fn demo_refuses_bad_flags_with_a_message() {
    let out = Command::new(env!("CARGO_BIN_EXE_shoal-demo"))
        .args(["--agents", "many"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--agents"));
}
