//! The built `shoal-agent` binary's `get` and `status` commands: exit codes, the one
//! line of error, plain progress lines when stderr is not a terminal, and
//! `--standalone`. The library behaviour is tested in tests/tests/get.rs.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::process::{Command, Output};

use shoal_agent::app::{Agent, RunningAgent};
use shoal_agent::config::Config;
use shoal_demo::origin::{Object, Origin, random_bytes};

const BIN: &str = env!("CARGO_BIN_EXE_shoal-agent");

async fn agent(ip: &str, dir: &Path) -> RunningAgent {
    let mut c = Config::default();
    c.proxy.listen = format!("{ip}:0").parse().unwrap();
    c.admin.listen = format!("{ip}:0").parse().unwrap();
    c.cache.dir = dir.to_path_buf();
    c.egress.allow_cidrs = vec!["127.0.0.0/8".parse().unwrap()];
    Agent::start(c, prometheus::Registry::new()).await.unwrap()
}

/// Runs the binary off the async runtime (the agent it talks to runs on it).
async fn run(args: Vec<String>) -> Output {
    tokio::task::spawn_blocking(move || Command::new(BIN).args(args).output().unwrap())
        .await
        .unwrap()
}

fn args(a: &[&str]) -> Vec<String> {
    a.iter().map(|s| (*s).to_owned()).collect()
}

#[tokio::test]
async fn get_status_and_exit_codes() {
    let origin = Origin::start("127.0.0.151").await.unwrap();
    let data = random_bytes(300_000, 51);
    origin.put("/c.bin", Object::new(data.clone()));
    let cache = tempfile::tempdir().unwrap();
    let out = tempfile::tempdir().unwrap();
    let a = agent("127.0.0.151", cache.path()).await;
    let proxy = format!("http://{}", a.proxy_addr());
    let url = origin.url("/c.bin");
    let file = out.path().join("c.bin");
    let f = file.to_str().unwrap();

    let o = run(args(&["get", &url, "-o", f, "--agent", &proxy])).await;
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(0), "{err}");
    assert_eq!(std::fs::read(&file).unwrap(), data);
    // Not a terminal: plain lines, no bar control codes.
    assert!(
        err.contains("get c.bin: ") && !err.contains('\u{1b}'),
        "{err}"
    );

    let bad = out.path().join("bad");
    let digest = format!("blake3:{}", blake3::hash(b"not it").to_hex());
    let o = run(args(&[
        "get",
        &url,
        "-o",
        bad.to_str().unwrap(),
        "--agent",
        &proxy,
        "--digest",
        &digest,
        "--quiet",
    ]))
    .await;
    assert_eq!(o.status.code(), Some(6));
    assert!(!bad.exists());
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(err.lines().count(), 1, "one line of error: {err}");
    assert!(err.starts_with("shoal-agent get: digest mismatch"), "{err}");

    let o = run(args(&[
        "get", &url, "--digest", "md5:00", "--agent", &proxy,
    ]))
    .await;
    assert_eq!(o.status.code(), Some(2));

    let o = run(args(&[
        "get",
        &origin.url("/nope"),
        "-o",
        f,
        "--agent",
        &proxy,
    ]))
    .await;
    assert_eq!(o.status.code(), Some(4));

    let admin = format!("http://{}", a.admin_addr());
    let o = run(args(&["status", "--admin", &admin])).await;
    let text = String::from_utf8_lossy(&o.stdout);
    assert_eq!(o.status.code(), Some(0));
    assert!(text.contains("ready:           yes"), "{text}");
    assert!(text.contains("origin share:    100.0%"), "{text}");

    a.shutdown().await;
    let o = run(args(&["get", &url, "-o", f, "--agent", &proxy, "--quiet"])).await;
    assert_eq!(o.status.code(), Some(3));
    let o = run(args(&["status", "--admin", &admin])).await;
    assert_eq!(o.status.code(), Some(3));
}

#[tokio::test]
async fn standalone_downloads_through_a_one_shot_agent() {
    let origin = Origin::start("127.0.0.152").await.unwrap();
    let data = random_bytes(200_000, 52);
    origin.put("/s.bin", Object::new(data.clone()));
    let out = tempfile::tempdir().unwrap();
    let cfg = out.path().join("agent.toml");
    std::fs::write(&cfg, "[egress]\nallow_cidrs = [\"127.0.0.0/8\"]\n").unwrap();
    let cache = out.path().join("cache");
    let file = out.path().join("s.bin");
    let o = run(args(&[
        "get",
        &origin.url("/s.bin"),
        "-o",
        file.to_str().unwrap(),
        "--standalone",
        "--config",
        cfg.to_str().unwrap(),
        "--cache-dir",
        cache.to_str().unwrap(),
        "--quiet",
    ]))
    .await;
    assert_eq!(
        o.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert_eq!(std::fs::read(&file).unwrap(), data);
    assert_eq!(origin.requests("/s.bin"), 1);
    // The one-shot agent cached it in the directory given.
    assert!(cache.join("objects").read_dir().unwrap().next().is_some());
}
