//! Container-image benchmarks with the real components (ignored: run them with
//! `benches/scripts/registry_pull.sh`, release build, as root). Figures go to
//! docs/benchmarks.md.
//!
//! - `cold_pull_through_agent_vs_direct`: `ctr images pull` of a five-layer image
//!   (31 MiB of blobs) straight from the registry, and through a fresh agent (empty
//!   cache, 1 MiB chunks), alternately, `SHOAL_BENCH_ROUNDS` rounds (default 5),
//!   once with `ctr images pull` (fetch and unpack) and once with `ctr content fetch`
//!   (no unpack); prints each time, the medians and direct ÷ agent (the issue's
//!   target: ≥ 0.9).
//! - `flash_crowd_of_eight_nodes`: eight agents and a tracker, eight containerd
//!   instances pulling the same image at once; prints registry blob bytes ÷ image
//!   blob bytes (target ≤ 1.05) and the slowest pull; every node's content store is
//!   checked against the image's digests.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytesize::ByteSize;
use shoal_agent::config::Mirror;
use shoal_tests::real::containerd::{Containerd, hosts_dir};
use shoal_tests::real::image::Image;
use shoal_tests::real::registry::{self, Auth, Registry};
use shoal_tests::require_real;
use shoal_tests::swarm::TestSwarm;

const LAYERS: [usize; 5] = [16 << 20, 8 << 20, 4 << 20, 2 << 20, 1 << 20];

/// The layer sizes: [`LAYERS`] times `SHOAL_BENCH_IMAGE_SCALE` (default 1). `ctr`
/// ends a pull on its progress ticker (100 ms), so a pull's time is a multiple of
/// 100 ms plus ctr's start: with the 31 MiB image (0.3-0.6 s) one tick is 15-30 % of
/// the figure; `SHOAL_BENCH_IMAGE_SCALE=8` (248 MiB) brings it to about 4 %.
fn layers() -> Vec<usize> {
    let scale = std::env::var("SHOAL_BENCH_IMAGE_SCALE")
        .ok()
        .and_then(|v| v.parse::<usize>().ok())
        .unwrap_or(1)
        .max(1);
    LAYERS.iter().map(|l| l * scale).collect()
}
/// Rounds of the cold-pull comparison (`SHOAL_BENCH_ROUNDS`, default 5).
fn rounds() -> usize {
    std::env::var("SHOAL_BENCH_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5)
}

/// The 1-minute load average, printed with the figures (a shared machine is noisy).
fn load() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().next().unwrap_or("?").to_owned())
        .unwrap_or_else(|_| "?".into())
}

fn mirror(upstream: &str) -> Vec<Mirror> {
    #[derive(serde::Deserialize)]
    struct M {
        mirrors: Vec<Mirror>,
    }
    let t =
        format!("[[mirrors]]\nname = \"reg\"\nupstream = \"{upstream}\"\nkind = \"registry\"\n");
    toml::from_str::<M>(&t).unwrap().mirrors
}

async fn seeded(ip: &str, seed: u64) -> (Registry, Image, tempfile::TempDir) {
    let reg = Registry::start(ip, &Auth::None).await.unwrap();
    let image = Image::generate(&layers(), seed);
    let layout = tempfile::tempdir().unwrap();
    image.write_layout(layout.path(), "1").unwrap();
    registry::push(
        layout.path(),
        "1",
        &format!("{}/bench/app:1", reg.host()),
        None,
    )
    .await
    .unwrap();
    (reg, image, layout)
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

/// Seconds for one `ctr images pull` (`unpack`) or `ctr content fetch`, checked
/// against the image's digests and emptied afterwards.
async fn timed_pull(
    ctd: &Containerd,
    hosts: &std::path::Path,
    r: &str,
    image: &Image,
    unpack: bool,
) -> f64 {
    let t = Instant::now();
    if unpack {
        ctd.pull(r, hosts, None).await.unwrap();
    } else {
        ctd.fetch(r, hosts).await.unwrap();
    }
    let s = t.elapsed().as_secs_f64();
    assert_eq!(
        ctd.content().await.unwrap(),
        image.digests(),
        "pulled intact"
    );
    ctd.purge(r, &image.digests()).await.unwrap();
    assert!(
        ctd.content().await.unwrap().is_empty(),
        "content store emptied"
    );
    s
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "benchmark: benches/scripts/registry_pull.sh"]
async fn cold_pull_through_agent_vs_direct() {
    require_real!("docker-registry", "containerd", "ctr", "skopeo");
    let (reg, image, _layout) = seeded("127.0.120.6", 120).await;
    let r = format!("{}/bench/app:1", reg.host());
    let ctd = Containerd::start().await.unwrap();
    let direct = hosts_dir(
        &ctd.dir().join("direct"),
        &reg.host(),
        &format!("http://{}", reg.addr),
    )
    .unwrap();
    let rounds = rounds();
    let mib = image.blob_bytes() as f64 / f64::from(1 << 20);
    for (unpack, what) in [(true, "ctr images pull"), (false, "ctr content fetch")] {
        let (mut d, mut a) = (Vec::new(), Vec::new());
        for round in 0..rounds {
            d.push(timed_pull(&ctd, &direct, &r, &image, unpack).await);
            let dir = tempfile::tempdir().unwrap();
            let mut cfg = shoal_tests::agent::config("127.0.120.10", dir.path());
            cfg.cache.chunk_size = ByteSize::mib(1);
            cfg.cache.memory_size = ByteSize::mib(64);
            cfg.mirrors = mirror(&format!("http://{}", reg.addr));
            let agent = shoal_tests::agent::start(cfg).await.unwrap();
            let via = hosts_dir(
                &ctd.dir().join(format!("agent-{unpack}-{round}")),
                &reg.host(),
                &format!("http://{}/m/reg", agent.proxy_addr()),
            )
            .unwrap();
            a.push(timed_pull(&ctd, &via, &r, &image, unpack).await);
            agent.shutdown().await;
            eprintln!(
                "{what} round {round}: direct {:.3} s, through a cold agent {:.3} s",
                d[round], a[round]
            );
        }
        let (md, ma) = (median(&mut d), median(&mut a));
        println!(
            "cold {what} of {mib:.0} MiB in {} layers, median of {rounds}: direct {md:.3} s, through the agent {ma:.3} s, direct/agent = {:.2} (load {})",
            LAYERS.len(),
            md / ma,
            load()
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "benchmark: benches/scripts/registry_pull.sh"]
async fn flash_crowd_of_eight_nodes() {
    require_real!("docker-registry", "containerd", "ctr", "skopeo");
    const N: usize = 8;
    let (reg, image, _layout) = seeded("127.0.121.6", 121).await;
    let r = format!("{}/bench/app:1", reg.host());
    let m = mirror(&format!("http://{}", reg.addr));
    let s = TestSwarm::builder()
        .net(121)
        .agents(N)
        .tweak(move |_, c| {
            c.mirrors = m.clone();
            c.cache.chunk_size = ByteSize::mib(1);
            c.cache.memory_size = ByteSize::mib(64);
        })
        .spawn()
        .await
        .unwrap();
    let mut nodes = Vec::new();
    for i in 0..N {
        let ctd = Containerd::start().await.unwrap();
        let h = hosts_dir(
            &ctd.dir().join("hosts"),
            &reg.host(),
            &format!("http://{}/m/reg", s.agent(i).proxy_addr()),
        )
        .unwrap();
        nodes.push((Arc::new(ctd), h));
    }
    let barrier = Arc::new(tokio::sync::Barrier::new(N));
    let start = Instant::now();
    let tasks: Vec<_> = nodes
        .iter()
        .map(|(ctd, h)| {
            let (ctd, h, r, b) = (ctd.clone(), h.clone(), r.clone(), barrier.clone());
            tokio::spawn(async move {
                b.wait().await;
                ctd.pull(&r, &h, None).await.unwrap();
                start.elapsed()
            })
        })
        .collect();
    let mut times: Vec<Duration> = Vec::new();
    for t in tasks {
        times.push(t.await.unwrap());
    }
    for (ctd, _) in &nodes {
        assert_eq!(
            ctd.content().await.unwrap(),
            image.digests(),
            "every node verified"
        );
    }
    let sent = reg.blob_bytes();
    let ratio = sent as f64 / image.blob_bytes() as f64;
    let slowest = times.iter().max().unwrap().as_secs_f64();
    let fastest = times.iter().min().unwrap().as_secs_f64();
    let peer: u64 = (0..N).map(|i| s.fetched(i).0).sum();
    println!(
        "flash crowd, {N} nodes, {:.0} MiB image: registry blob bytes / image blob bytes = {ratio:.3} ({sent} / {}), peer bytes {peer}, pulls done in {fastest:.2}..{slowest:.2} s, every node verified (load {})",
        image.blob_bytes() as f64 / f64::from(1 << 20),
        image.blob_bytes(),
        load()
    );
    s.shutdown().await;
}
