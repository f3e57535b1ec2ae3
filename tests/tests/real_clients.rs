//! Real HTTP clients through the agent, as users run them: `wget` (with `-c` resuming
//! a partial file), `apt-get update` + `apt-get download` from a Debian-style
//! repository (apt pipelines its requests and revalidates its indexes), and
//! `pip download` from a PEP 503 simple index. Each client runs twice on fresh
//! directories: every file matches the origin's bytes, and the second run takes no
//! file body from the origin (the origin's own request counts).
//!
//! A client that is not installed is skipped with a message (one `apt-get install` of
//! `wget` is tried as root); CI has all three.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use bytes::Bytes;
use sha2::{Digest, Sha256};
use shoal_tests::real::{is_root, run, which};
use shoal_tests::{Object, Origin, agent, random_bytes};

const DEADLINE: Duration = Duration::from_secs(120);

fn sha256_hex(b: &[u8]) -> String {
    hex::encode(Sha256::digest(b))
}

/// `tool` on `PATH`, installing `package` with apt-get once if we are root.
fn have(tool: &str, package: &str) -> bool {
    if which(tool).is_some() {
        return true;
    }
    if is_root() && which("apt-get").is_some() {
        let _ = Command::new("apt-get")
            .args(["install", "-y", "-q", package])
            .env("DEBIAN_FRONTEND", "noninteractive")
            .output();
    }
    which(tool).is_some()
}

fn same_file(path: &Path, want: &[u8]) {
    let got = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    assert_eq!(got.len(), want.len(), "{}: length", path.display());
    assert!(
        got == want,
        "{}: bytes differ from the origin's",
        path.display()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wget_downloads_and_resumes_through_the_agent() {
    if !have("wget", "wget") {
        eprintln!("SKIPPED wget_downloads_and_resumes_through_the_agent: wget is not installed");
        return;
    }
    let origin = Origin::start("127.0.93.1").await.unwrap();
    let data = random_bytes(3 * 1024 * 1024 + 123, 931);
    origin.put("/f/big.bin", Object::new(data.clone()));
    let dir = tempfile::tempdir().unwrap();
    let a = agent::start(agent::config("127.0.93.2", &dir.path().join("cache")))
        .await
        .unwrap();
    let proxy = format!("http://{}", a.proxy_addr());
    let url = origin.url("/f/big.bin");
    let wget = |out: &Path, resume: bool| {
        let mut c = Command::new("wget");
        c.args(["-q", "--tries=1", "--timeout=30"])
            .env("http_proxy", &proxy)
            .env_remove("no_proxy")
            .arg("-O")
            .arg(out);
        if resume {
            c.arg("-c");
        }
        c.arg(&url);
        c
    };
    for i in 0..2 {
        let out = dir.path().join(format!("big{i}.bin"));
        run(wget(&out, false), DEADLINE).await.unwrap();
        same_file(&out, &data);
    }
    assert_eq!(
        origin.requests("/f/big.bin"),
        1,
        "the second wget was not a hit"
    );
    // A partial file, resumed with `wget -c` (a Range request), from the cache.
    let part = dir.path().join("part.bin");
    std::fs::write(&part, &data[..1_000_000]).unwrap();
    run(wget(&part, true), DEADLINE).await.unwrap();
    same_file(&part, &data);
    assert_eq!(
        origin.requests("/f/big.bin"),
        1,
        "the resume went to the origin"
    );
}

/// A Debian-style repository on `origin` under `/debian` (suite `stable`, component
/// `main`, architecture `all`, unsigned): `debs` are (package, bytes). apt checks each
/// file against the size and SHA256 the indexes give, so the bytes need not be a real
/// package for `apt-get download`.
fn debian_repo(origin: &Origin, debs: &[(String, Bytes)]) {
    let mut packages = String::new();
    for (name, bytes) in debs {
        let file = format!("pool/main/{name}_1.0_all.deb");
        packages += &format!(
            "Package: {name}\nVersion: 1.0\nArchitecture: all\nMaintainer: Shoal tests <t@example.com>\n\
             Filename: {file}\nSize: {}\nSHA256: {}\nDescription: test package {name}\n\n",
            bytes.len(),
            sha256_hex(bytes)
        );
        origin.put(&format!("/debian/{file}"), Object::new(bytes.clone()));
    }
    let release = format!(
        "Suite: stable\nCodename: stable\nDate: {}\nArchitectures: all amd64\nComponents: main\nSHA256:\n {} {} main/binary-all/Packages\n",
        httpdate::fmt_http_date(std::time::SystemTime::now()),
        sha256_hex(packages.as_bytes()),
        packages.len()
    );
    origin.put(
        "/debian/dists/stable/main/binary-all/Packages",
        Object::new(packages),
    );
    origin.put("/debian/dists/stable/Release", Object::new(release));
}

/// `apt-get` confined to `root` (its own sources, lists, cache and status), through
/// `proxy`.
fn apt_get(root: &Path, proxy: SocketAddr, args: &[&str]) -> Command {
    let d = |p: &str| root.join(p).display().to_string();
    let mut c = Command::new("apt-get");
    for (k, v) in [
        ("Dir::Etc::SourceList", d("sources.list")),
        ("Dir::Etc::SourceParts", d("sources.list.d")),
        ("Dir::Etc::Parts", d("apt.conf.d")),
        ("Dir::Etc::PreferencesParts", d("preferences.d")),
        ("Dir::State", d("state")),
        ("Dir::State::status", d("state/status")),
        ("Dir::Cache", d("cache")),
        ("Acquire::http::Proxy", format!("http://{proxy}")),
        ("APT::Architecture", "amd64".into()),
        ("APT::Sandbox::User", "root".into()),
        ("Debug::NoLocking", "1".into()),
    ] {
        c.arg("-o").arg(format!("{k}={v}"));
    }
    c.args(["-q", "-y"]).args(args).current_dir(root.join("dl"));
    c
}

fn apt_root(root: &Path, origin: &Origin) {
    for d in [
        "sources.list.d",
        "apt.conf.d",
        "preferences.d",
        "state/lists/partial",
        "cache/archives/partial",
        "dl",
    ] {
        std::fs::create_dir_all(root.join(d)).unwrap();
    }
    std::fs::write(root.join("state/status"), "").unwrap();
    std::fs::write(
        root.join("sources.list"),
        format!("deb [trusted=yes] {} stable main\n", origin.url("/debian")),
    )
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn apt_update_and_download_through_the_agent() {
    if which("apt-get").is_none() {
        eprintln!("SKIPPED apt_update_and_download_through_the_agent: apt-get is not installed");
        return;
    }
    let origin = Origin::start("127.0.93.3").await.unwrap();
    let debs: Vec<(String, Bytes)> = (1..=3)
        .map(|i| {
            (
                format!("shoaltest{i}"),
                random_bytes(i * 700_000 + 17, 9300 + i as u64),
            )
        })
        .collect();
    debian_repo(&origin, &debs);
    let dir = tempfile::tempdir().unwrap();
    let a = agent::start(agent::config("127.0.93.4", &dir.path().join("cache")))
        .await
        .unwrap();
    let names: Vec<&str> = debs.iter().map(|(n, _)| n.as_str()).collect();
    for i in 0..2 {
        let root = dir.path().join(format!("apt{i}"));
        apt_root(&root, &origin);
        run(apt_get(&root, a.proxy_addr(), &["update"]), DEADLINE)
            .await
            .unwrap();
        let mut args = vec!["download"];
        args.extend(&names);
        run(apt_get(&root, a.proxy_addr(), &args), DEADLINE)
            .await
            .unwrap();
        for (name, bytes) in &debs {
            same_file(&root.join(format!("dl/{name}_1.0_all.deb")), bytes);
        }
    }
    for (name, _) in &debs {
        let path = format!("/debian/pool/main/{name}_1.0_all.deb");
        assert_eq!(
            origin.requests(&path),
            1,
            "{path}: the second apt-get download was not a hit"
        );
    }
}

/// A wheel (a zip) with the given text files and one 600 kB binary one, made by
/// Python's own `zipfile` (the script goes through a file: argv has a size limit).
async fn wheel(dir: &Path, name: &str, files: &[(&str, &str)]) -> Bytes {
    let path = dir.join(name);
    let mut script = format!(
        "import os, zipfile\nz = zipfile.ZipFile({:?}, 'w')\nz.writestr('shoal_demo_pkg/blob.bin', os.urandom(600000))\n",
        path.display().to_string()
    );
    for (n, body) in files {
        script += &format!("z.writestr({n:?}, {body:?})\n");
    }
    script += "z.close()\n";
    let py = dir.join("make_wheel.py");
    std::fs::write(&py, script).unwrap();
    let mut c = Command::new("python3");
    c.arg(&py);
    run(c, DEADLINE).await.unwrap();
    Bytes::from(std::fs::read(&path).unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pip_download_through_the_agent() {
    let pip_ok = which("python3").is_some()
        && Command::new("python3")
            .args(["-m", "pip", "--version"])
            .output()
            .is_ok_and(|o| o.status.success());
    if !pip_ok {
        eprintln!("SKIPPED pip_download_through_the_agent: python3 -m pip is not available");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let origin = Origin::start("127.0.93.5").await.unwrap();
    let name = "shoal_demo_pkg-1.0-py3-none-any.whl";
    let whl = wheel(
        dir.path(),
        name,
        &[
            ("shoal_demo_pkg/__init__.py", "X = 1\n"),
            (
                "shoal_demo_pkg-1.0.dist-info/METADATA",
                "Metadata-Version: 2.1\nName: shoal-demo-pkg\nVersion: 1.0\n",
            ),
            (
                "shoal_demo_pkg-1.0.dist-info/WHEEL",
                "Wheel-Version: 1.0\nGenerator: shoal-tests\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
            ),
            ("shoal_demo_pkg-1.0.dist-info/RECORD", ""),
        ],
    )
    .await;
    let wheel_path = format!("/simple/shoal-demo-pkg/{name}");
    origin.put(&wheel_path, Object::new(whl.clone()));
    origin.put(
        "/simple/shoal-demo-pkg/",
        Object::new(format!(
            "<!DOCTYPE html><html><body><a href=\"{name}#sha256={}\">{name}</a></body></html>\n",
            sha256_hex(&whl)
        ))
        .header("content-type", "text/html"),
    );
    let a = agent::start(agent::config("127.0.93.6", &dir.path().join("cache")))
        .await
        .unwrap();
    let host = origin.addr().ip().to_string();
    for i in 0..2 {
        let out = dir.path().join(format!("pip{i}"));
        let mut c = Command::new("python3");
        c.args(["-m", "pip", "download", "--no-cache-dir", "--no-deps"])
            .args(["--disable-pip-version-check", "--proxy"])
            .arg(format!("http://{}", a.proxy_addr()))
            .arg("--index-url")
            .arg(origin.url("/simple/"))
            .args(["--trusted-host", &host, "-d"])
            .arg(&out)
            .arg("shoal-demo-pkg")
            .env_remove("PIP_INDEX_URL")
            .env_remove("PIP_PROXY");
        run(c, DEADLINE).await.unwrap();
        same_file(&out.join(name), &whl);
    }
    assert_eq!(
        origin.requests(&wheel_path),
        1,
        "the second pip download was not a hit"
    );
}
