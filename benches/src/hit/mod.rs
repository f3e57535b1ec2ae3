//! Cache-hit serving benchmark: the same file served by nginx (`sendfile on`) and by
//! a Shoal agent from its cache, one stream and N concurrent streams on loopback, in
//! interleaved rounds, plus time to first byte of a hit. Run it with
//! `cargo run --release -p shoal-benches --bin hitbench` (see docs/benchmarks.md).
//!
//! The agent runs as its own process (`shoal-agent run`), so its runtime does not
//! share threads with the load generator; the machine's cores are still shared, and
//! the load generator's CPU use is reported next to every figure. The origin that
//! fills the agent's cache runs in this process and is asked exactly once.

pub mod bound;
pub mod cold;
pub mod cold_ttfb;
pub mod load;
pub mod report;
pub mod servers;
pub mod wrk;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use shoal_demo::origin::{Object, Origin, random_bytes};

use crate::fleet::cleanup::Registry;
use crate::fleet::cpu::machine_ticks;
use crate::fleet::proc::usage;
use load::Target;
use report::{Measurement, Report, WrkRow};
use servers::{AgentSettings, Server};

/// Path of the file on both servers.
const FILE: &str = "/file";

/// What to run.
#[derive(Debug, Clone)]
pub struct Options {
    pub size: u64,
    pub streams: usize,
    pub duration: Duration,
    pub rounds: usize,
    pub chunk_size: u64,
    pub memory_size: u64,
    pub ttfb_samples: usize,
    pub agent_bin: PathBuf,
    pub nginx: String,
    /// Parent of the per-run temporary directory.
    pub workdir: PathBuf,
    pub keep_workdir: bool,
    pub wrk: bool,
    /// If set, `perf record` the agent during one extra window per mode into this dir.
    pub perf_dir: Option<PathBuf>,
    /// Extra environment of the agent process (experiments, e.g. allocator tuning).
    pub agent_env: Vec<(String, String)>,
    /// The baseline server binary (`hitbound`); `None` runs without the baseline.
    pub bound_bin: Option<PathBuf>,
    pub seed: u64,
}

/// CPU and wall clock at the start of a window.
struct Mark {
    at: Instant,
    server: Option<f64>,
    client: f64,
    stat: Option<(u64, u64, u64)>,
}

/// A fresh temporary directory under `parent` (deleted when dropped) with a `www/`
/// for nginx to serve, both world-readable: nginx's workers run as an unprivileged
/// user when started as root.
pub(crate) fn work_dir(
    parent: &std::path::Path,
    prefix: &str,
) -> Result<(tempfile::TempDir, PathBuf)> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::create_dir_all(parent)?;
    let tmp = tempfile::Builder::new()
        .prefix(prefix)
        .tempdir_in(parent)
        .context("creating the work directory")?;
    let www = tmp.path().join("www");
    std::fs::create_dir_all(&www)?;
    for d in [tmp.path(), &www] {
        std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o755))?;
    }
    Ok((tmp, www))
}

/// Prints a report's Markdown and writes it and its JSON where asked.
pub fn write_report<R: serde::Serialize>(
    report: &R,
    md: &str,
    markdown: Option<&std::path::Path>,
    json: Option<&std::path::Path>,
) -> Result<()> {
    print!("{md}");
    if let Some(p) = markdown {
        std::fs::write(p, md).with_context(|| format!("writing {}", p.display()))?;
    }
    if let Some(p) = json {
        let j = serde_json::to_string_pretty(report)?;
        std::fs::write(p, j).with_context(|| format!("writing {}", p.display()))?;
    }
    Ok(())
}

fn self_cpu() -> f64 {
    usage(std::process::id()).map_or(0.0, |u| u.cpu_seconds)
}

/// Bytes the process passed through `read()`-family calls (`rchar`), files and sockets.
fn read_chars(pid: u32) -> Option<u64> {
    let io = std::fs::read_to_string(format!("/proc/{pid}/io")).ok()?;
    io.lines()
        .find_map(|l| l.strip_prefix("rchar:"))
        .and_then(|v| v.trim().parse().ok())
}

impl Mark {
    fn now(server: Option<&Server>) -> Self {
        Self {
            at: Instant::now(),
            server: server.map(Server::cpu_seconds),
            client: self_cpu(),
            stat: machine_ticks(),
        }
    }
}

/// Runs one throughput window and records it.
async fn measure(
    target: &Target,
    server: &mut Server,
    streams: usize,
    round: usize,
    opts: &Options,
) -> Result<Measurement> {
    let m0 = Mark::now(Some(server));
    let w = load::throughput(target, streams, opts.size, opts.duration).await?;
    let m1 = Mark::now(Some(server));
    server.check_alive()?;
    let secs = m1.at.duration_since(m0.at).as_secs_f64();
    let server_cpu = match (m0.server, m1.server) {
        (Some(a), Some(b)) => Some((b - a).max(0.0)),
        _ => None,
    };
    let client_cpu = (m1.client - m0.client).max(0.0);
    let (busy, other) = match (m0.stat, m1.stat) {
        (Some((b0, i0, t0)), Some((b1, i1, t1))) if t1 > t0 => {
            let total = (t1 - t0) as f64;
            let busy = b1.saturating_sub(b0) as f64 / total;
            let irq = i1.saturating_sub(i0) as f64 / total;
            let cores = crate::fleet::cpu::cores() as f64;
            let ours = (server_cpu.unwrap_or(0.0) + client_cpu) / (cores * secs.max(1e-9));
            // Interrupt time is not charged to processes; most of it here is our own
            // loopback traffic, so it does not count as other people's load.
            (busy, (busy - irq - ours).max(0.0))
        }
        _ => (0.0, 0.0),
    };
    Ok(Measurement {
        server: target.name.to_owned(),
        streams,
        round,
        bytes: w.bytes,
        seconds: w.seconds,
        complete_responses: w.complete,
        gbps: w.rate(),
        server_cpu_seconds: server_cpu,
        client_cpu_seconds: client_cpu,
        machine_busy: busy,
        other_busy: other,
    })
}

fn nginx_version(nginx: &str) -> String {
    std::process::Command::new(nginx)
        .arg("-v")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stderr).trim().to_owned())
        .unwrap_or_else(|e| format!("unknown ({e})"))
}

/// Runs the whole benchmark and returns its report. Progress goes to stderr.
pub async fn run(opts: &Options) -> Result<Report> {
    ensure!(opts.size > 0, "size must be positive");
    ensure!(
        opts.streams > 0 && opts.rounds > 0,
        "streams and rounds must be positive"
    );
    let registry = Registry::default();
    let (tmp, www) = work_dir(&opts.workdir, "hitbench-")?;
    let dir = tmp.path().to_path_buf();

    eprintln!(
        "hitbench: generating {} bytes in {}",
        opts.size,
        dir.display()
    );
    let len = usize::try_from(opts.size).context("size does not fit in memory")?;
    let bytes = random_bytes(len, opts.seed);
    let expect = blake3::hash(&bytes);
    std::fs::write(www.join(&FILE[1..]), &bytes)?;

    let mut nginx = servers::start_nginx(&registry, &opts.nginx, &dir, &www, FILE, None).await?;
    let origin = Origin::start("127.0.0.1").await?;
    origin.put(FILE, Object::new(bytes));
    let settings = AgentSettings {
        chunk_size: opts.chunk_size,
        memory_size: opts.memory_size,
        max_size: (opts.size * 2).max(1 << 30),
        origin: format!("http://{}", origin.addr()),
    };
    let mut agent =
        servers::start_agent(&registry, &opts.agent_bin, &dir, &settings, &opts.agent_env).await?;
    // The baseline of this memory mode: the work the agent must do per byte, without
    // its logic. A partial memory cache mixes both, so it has none.
    let bound_mode = if opts.memory_size == 0 {
        Some(bound::Mode::Verify)
    } else if opts.memory_size >= opts.size + opts.size / 8 {
        Some(bound::Mode::Copy)
    } else {
        None
    };
    let mut bound = match (&opts.bound_bin, bound_mode) {
        (Some(bin), Some(mode)) => {
            let file = www.join(&FILE[1..]);
            let b =
                servers::start_bound(&registry, bin, &dir, &file, opts.chunk_size, mode).await?;
            eprintln!(
                "hitbench: baseline hitbound --mode {mode:?} (pid {}) on {}",
                b.pid(),
                b.addr
            );
            Some(b)
        }
        _ => None,
    };
    let bound_t = match &bound {
        Some(b) => Some(Target {
            name: "bound",
            addr: b.addr,
            uri: FILE.parse()?,
            host: b.addr.to_string(),
        }),
        None => None,
    };
    eprintln!(
        "hitbench: nginx (pid {}) on {}, shoal-agent (pid {}) on {}, origin on {}",
        nginx.pid(),
        nginx.addr,
        agent.pid(),
        agent.addr,
        origin.addr()
    );

    let nginx_t = Target {
        name: "nginx",
        addr: nginx.addr,
        uri: FILE.parse()?,
        host: nginx.addr.to_string(),
    };
    let shoal_t = Target {
        name: "shoal",
        addr: agent.addr,
        uri: origin.url(FILE).parse()?,
        host: origin.addr().to_string(),
    };
    let mirror_path = format!("/m/o{FILE}");
    let shoal_mirror = Target {
        uri: mirror_path.parse()?,
        host: agent.addr.to_string(),
        ..shoal_t.clone()
    };

    eprintln!("hitbench: warming the cache (one GET through the proxy) and verifying bytes");
    let t0 = Instant::now();
    let fill = load::fetch(&shoal_t).await?;
    ensure!(
        blake3::hash(&fill) == expect,
        "shoal's fill delivered wrong bytes"
    );
    drop(fill);
    let fill_seconds = t0.elapsed().as_secs_f64();
    eprintln!("hitbench: fill took {fill_seconds:.2} s");
    for t in [&shoal_t, &shoal_mirror, &nginx_t]
        .into_iter()
        .chain(bound_t.as_ref())
    {
        let b = load::fetch(t).await?;
        ensure!(
            blake3::hash(&b) == expect,
            "{} ({}) served wrong bytes",
            t.name,
            t.uri
        );
    }
    let origin_before = origin.requests(FILE);
    let mut notes = vec![format!(
        "cold fill (first GET through the proxy, origin in this process): {fill_seconds:.1} s, {:.2} GB/s; not a target of this benchmark",
        opts.size as f64 / fill_seconds.max(1e-9) / 1e9
    )];
    if !opts.agent_env.is_empty() {
        let env: Vec<String> = opts
            .agent_env
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        notes.push(format!("agent environment: {}", env.join(" ")));
    }
    if origin_before != 1 {
        notes.push(format!(
            "the origin was asked {origin_before} times while warming and verifying (expected 1)"
        ));
    }

    let mut ms = Vec::new();
    let agent_rchar0 = read_chars(agent.pid());
    let mut shoal_bytes = 0u64;
    let modes = if opts.streams == 1 {
        vec![1]
    } else {
        vec![1, opts.streams]
    };
    for round in 0..opts.rounds {
        for &streams in &modes {
            let mut order = vec![0, 1];
            if bound.is_some() {
                order.push(2);
            }
            if round % 2 == 1 {
                order.reverse();
            }
            for which in order {
                let m = match (which, &bound_t, &mut bound) {
                    (0, _, _) => measure(&nginx_t, &mut nginx, streams, round, opts).await?,
                    (2, Some(t), Some(b)) => measure(t, b, streams, round, opts).await?,
                    _ => {
                        let m = measure(&shoal_t, &mut agent, streams, round, opts).await?;
                        shoal_bytes += m.bytes;
                        m
                    }
                };
                eprintln!(
                    "hitbench: round {} {:>5} {:>2} stream(s): {:.2} GB/s ({} responses; server CPU {:.1} s, load-gen CPU {:.1} s, other load {:.0} %)",
                    round + 1,
                    m.server,
                    streams,
                    m.gbps / 1e9,
                    m.complete_responses,
                    m.server_cpu_seconds.unwrap_or(0.0),
                    m.client_cpu_seconds,
                    m.other_busy * 100.0
                );
                ms.push(m);
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
    if let (Some(a), Some(b)) = (agent_rchar0, read_chars(agent.pid())) {
        notes.push(format!(
            "the agent read {:.2} bytes through read() per byte it served (≈0: served from the memory cache; ≈1: every chunk read from its file and BLAKE3-verified)",
            (b - a) as f64 / shoal_bytes.max(1) as f64
        ));
    }

    eprintln!(
        "hitbench: time to first byte, {} requests per server",
        opts.ttfb_samples
    );
    let mut ttfb_targets = vec![nginx_t.clone(), shoal_t.clone()];
    ttfb_targets.extend(bound_t.clone());
    let lat = load::first_byte(&ttfb_targets, opts.ttfb_samples).await?;
    let ttfb: Vec<_> = ttfb_targets
        .iter()
        .zip(&lat)
        .map(|(t, l)| {
            let fb: Vec<f64> = l.iter().map(|x| x.first_byte.as_secs_f64()).collect();
            let hd: Vec<f64> = l.iter().map(|x| x.head.as_secs_f64()).collect();
            report::ttfb(t.name, &fb, &hd)
        })
        .collect();

    let mut wrk_rows = Vec::new();
    if opts.wrk {
        if wrk::available() {
            let cases = [(1, 1), (2, opts.streams)];
            for (threads, conns) in cases {
                for (name, url) in [
                    ("nginx", format!("http://{}{FILE}", nginx.addr)),
                    ("shoal", format!("http://{}{mirror_path}", agent.addr)),
                ] {
                    eprintln!("hitbench: wrk -t{threads} -c{conns} {url}");
                    let d = opts.duration;
                    let r = tokio::task::spawn_blocking({
                        let url = url.clone();
                        move || wrk::run(&url, threads, conns, d)
                    })
                    .await?;
                    let (result, error) = match r {
                        Ok(r) => (Some(r), None),
                        Err(e) => (None, Some(format!("{e:#}"))),
                    };
                    wrk_rows.push(WrkRow {
                        server: name.into(),
                        threads,
                        connections: conns,
                        url,
                        result,
                        error,
                    });
                }
            }
        } else {
            notes.push("wrk is not installed; cross-check skipped (apt-get install -y wrk)".into());
        }
    }

    if let Some(pd) = &opts.perf_dir {
        std::fs::create_dir_all(pd)?;
        for &streams in &modes {
            let out = pd.join(format!("shoal-{streams}.data"));
            eprintln!(
                "hitbench: perf record of the agent, {streams} stream(s) -> {}",
                out.display()
            );
            let secs = opts.duration.as_secs_f64() + 0.5;
            let mut perf = std::process::Command::new("perf")
                .args(["record", "-F", "499", "--call-graph", "dwarf,32768", "-o"])
                .arg(&out)
                .args([
                    "-p",
                    &agent.pid().to_string(),
                    "--",
                    "sleep",
                    &format!("{secs}"),
                ])
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .spawn()
                .context("starting perf")?;
            tokio::time::sleep(Duration::from_millis(300)).await;
            let m = measure(&shoal_t, &mut agent, streams, usize::MAX, opts).await?;
            let _ = tokio::task::spawn_blocking(move || perf.wait()).await;
            notes.push(format!(
                "perf: {} ({streams} stream(s), {:.2} GB/s while profiled)",
                out.display(),
                m.gbps / 1e9
            ));
        }
    }

    let origin_during = origin.requests(FILE) - origin_before;
    let agent_rss = agent.peak_rss();
    let memory_mode = if opts.memory_size == 0 {
        "disk: memory cache off, every chunk read from its file (page cache) and BLAKE3-verified"
    } else if opts.memory_size >= opts.size + opts.size / 8 {
        "memory-hot: the memory cache holds the whole file"
    } else {
        "partial: the memory cache holds part of the file"
    };
    notes.push(format!(
        "the load generator (hyper, HTTP/1.1 keep-alive) runs in the benchmark process on the same {} cores as the servers; its CPU competes with theirs",
        crate::fleet::cpu::cores()
    ));
    if let Some(m) = bound_mode.filter(|_| bound.is_some()) {
        notes.push(format!(
            "bound: the baseline server `hitbound --mode {}` (benches/src/hit/bound.rs): {}",
            format!("{m:?}").to_lowercase(),
            match m {
                bound::Mode::Copy => "the file's chunks held in memory and written to the socket by hyper on tokio, no cache logic (one user-to-kernel copy per byte, which nginx's sendfile does not make)",
                bound::Mode::Verify => "every chunk read from the file with pread into a reused buffer and BLAKE3-hashed, a few chunks ahead on blocking threads, written by hyper on tokio, no cache logic (one hash and two copies per byte)",
            }
        ));
    }
    drop(bound);
    drop(agent);
    drop(nginx);
    if opts.keep_workdir {
        let kept = tmp.keep();
        eprintln!("hitbench: kept {}", kept.display());
    }
    Ok(Report {
        size_bytes: opts.size,
        chunk_size_bytes: opts.chunk_size,
        memory_size_bytes: opts.memory_size,
        memory_mode: memory_mode.into(),
        streams: opts.streams,
        duration_seconds: opts.duration.as_secs_f64(),
        rounds: opts.rounds,
        agent_process: "separate process (shoal-agent run)".into(),
        nginx_version: nginx_version(&opts.nginx),
        cores: crate::fleet::cpu::cores(),
        summaries: report::summarise(&ms),
        ttfb,
        wrk: wrk_rows,
        measurements: ms,
        origin_requests_during_run: origin_during,
        agent_peak_rss_bytes: agent_rss,
        notes,
    })
}
