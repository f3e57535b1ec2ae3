//! Cold-miss benchmark: a download straight from nginx next to the same download
//! through a Shoal agent whose cache is empty, nginx being the agent's origin. One
//! client on a large object, and N clients at once on N distinct objects (each
//! `size / N`, so both cases move the same bytes); with `same`, also N clients on
//! the one large object (one fill, N readers). Interleaved rounds (ABBA), curl as
//! the client (`-o /dev/null`), the agent's RSS sampled every 50 ms and its VmHWM
//! read, the machine's other load reported. Figures are reported, never asserted.
//!
//! Every agent measurement starts a new agent process on a new, empty cache
//! directory (deleted afterwards), so each round is a cold miss and its VmHWM is that
//! round's. Bytes are checked once per case before the rounds (a hashing client
//! through a fresh agent); curl's byte counts are checked on every download.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use http_body_util::BodyExt;
use serde::Serialize;

use super::load::{self, Target};
use super::servers::{self, AgentSettings, Server};
use crate::fleet::cleanup::Registry;
use crate::fleet::cpu::{cores, machine_ticks};
use crate::fleet::proc::{children_cpu_seconds, usage};

/// What to run.
#[derive(Debug, Clone)]
pub struct ColdOptions {
    /// The large object, bytes.
    pub size: u64,
    /// Clients of the multi-client cases.
    pub clients: usize,
    pub rounds: usize,
    pub chunk_size: u64,
    pub memory_size: u64,
    /// `cache.max_size` of the agent; `None`: room for every case (3 x `size`).
    pub max_size: Option<u64>,
    /// `cache.fill_buffer` of the agent; `None`: its default.
    pub fill_buffer: Option<u64>,
    /// Also run N clients on the one large object.
    pub same: bool,
    pub agent_bin: PathBuf,
    pub nginx: String,
    pub curl: String,
    pub workdir: PathBuf,
    pub keep_workdir: bool,
    pub agent_env: Vec<(String, String)>,
    /// Cold misses per origin speed for time to first byte ([`super::cold_ttfb`]);
    /// 0 skips it.
    pub ttfb_samples: usize,
    /// nginx's `limit_rate` per connection for the timed downloads (direct and the
    /// agent's origin fetches alike): a link-bound origin instead of loopback
    /// sendfile. `None`: unlimited.
    pub origin_rate: Option<String>,
}

/// One timed download set (one case, one server, one round).
#[derive(Debug, Clone, Serialize)]
pub struct ColdMeasurement {
    pub case: String,
    /// `direct` (curl from nginx) or `agent` (curl through the agent, cold cache).
    pub path: String,
    pub round: usize,
    pub clients: usize,
    pub bytes: u64,
    pub seconds: f64,
    /// Aggregate MiB/s of all clients (bytes / wall time of the slowest).
    pub mib_s: f64,
    /// Agent: largest VmRSS sampled, and VmHWM at the end, bytes.
    pub agent_rss_peak: Option<u64>,
    pub agent_hwm: Option<u64>,
    /// Share of the machine busy with processes other than the servers and curl.
    pub other_busy: f64,
    /// Agent metrics after the downloads: chunks skipped for caching, bytes on disk.
    pub skipped_chunks: Option<u64>,
    pub cached_bytes: Option<u64>,
}

/// Medians of one case.
#[derive(Debug, Clone, Serialize)]
pub struct ColdSummary {
    pub case: String,
    pub clients: usize,
    pub direct_mib_s: f64,
    pub agent_mib_s: f64,
    /// Median of the per-round agent / direct ratios.
    pub ratio: f64,
    pub agent_hwm_max: u64,
    pub other_busy_median: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct ColdReport {
    pub size_bytes: u64,
    pub clients: usize,
    pub rounds: usize,
    pub chunk_size_bytes: u64,
    pub memory_size_bytes: u64,
    pub max_size_bytes: u64,
    pub fill_buffer_bytes: Option<u64>,
    pub cores: usize,
    pub summaries: Vec<ColdSummary>,
    pub measurements: Vec<ColdMeasurement>,
    /// Time to first body byte of cold misses, per origin speed.
    pub ttfb: Vec<super::cold_ttfb::TtfbRow>,
    pub notes: Vec<String>,
}

/// A case: which files its clients download.
struct Case {
    name: String,
    files: Vec<String>,
    /// Expected BLAKE3 of each distinct file, and its size.
    sizes: Vec<u64>,
}

/// Writes `len` pseudo-random bytes (seeded) to `path`; returns their BLAKE3.
fn write_random(path: &Path, len: u64, seed: u64) -> Result<blake3::Hash> {
    use std::io::Write;
    let mut f = std::io::BufWriter::with_capacity(
        1 << 20,
        std::fs::File::create(path).with_context(|| format!("creating {}", path.display()))?,
    );
    let mut h = blake3::Hasher::new();
    // BLAKE3's output stream as the bytes: fast in any build profile, no repeats.
    let mut xof = blake3::Hasher::new()
        .update(&seed.to_le_bytes())
        .finalize_xof();
    let mut block = vec![0u8; 1 << 20];
    let mut left = len;
    while left > 0 {
        xof.fill(&mut block);
        let n = left.min(block.len() as u64) as usize;
        f.write_all(&block[..n])?;
        h.update(&block[..n]);
        left -= n as u64;
    }
    f.flush()?;
    Ok(h.finalize())
}

/// `VmRSS` of `pid`, bytes.
fn vm_rss(pid: u32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    s.lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse::<u64>().ok())
        .map(|k| k * 1024)
}

/// Samples `VmRSS` of `pid` every 50 ms until `stop`; the largest seen.
fn sample_rss(
    pid: u32,
    stop: Arc<AtomicBool>,
    peak: Arc<AtomicU64>,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        while !stop.load(Ordering::Relaxed) {
            if let Some(r) = vm_rss(pid) {
                peak.fetch_max(r, Ordering::Relaxed);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    })
}

/// Runs `clients` curls at once (each on its own file), waits for all; returns the
/// bytes received and the wall time. Every curl must get exactly its file's size.
fn curl_all(curl: &str, proxy: Option<&str>, urls: &[(String, u64)]) -> Result<(u64, f64)> {
    let t0 = Instant::now();
    let mut kids = Vec::new();
    for (url, _) in urls {
        let mut c = std::process::Command::new(curl);
        c.args([
            "-s",
            "-S",
            "-f",
            "-o",
            "/dev/null",
            "-w",
            "%{size_download}",
        ]);
        if let Some(p) = proxy {
            c.args(["-x", p]);
        }
        c.arg(url);
        c.stdout(std::process::Stdio::piped());
        kids.push(c.spawn().with_context(|| format!("starting {curl}"))?);
    }
    let mut total = 0;
    for (k, (url, want)) in kids.into_iter().zip(urls) {
        let out = k.wait_with_output()?;
        ensure!(out.status.success(), "curl {url} failed: {}", out.status);
        let got: u64 = String::from_utf8_lossy(&out.stdout)
            .trim()
            .parse()
            .unwrap_or(0);
        ensure!(got == *want, "curl {url} received {got} of {want} bytes");
        total += got;
    }
    Ok((total, t0.elapsed().as_secs_f64()))
}

/// Downloads `url` through `agent` with the hashing client and checks the BLAKE3.
async fn verify(agent: &Server, origin: &str, path: &str, want: blake3::Hash) -> Result<()> {
    let t = Target {
        name: "shoal",
        addr: agent.addr,
        uri: format!("{origin}{path}").parse()?,
        host: origin.trim_start_matches("http://").to_owned(),
    };
    let mut send = load::connect(&t).await?;
    let req = http::Request::get(t.uri.clone())
        .header(http::header::HOST, &t.host)
        .body(http_body_util::Empty::<bytes::Bytes>::new())?;
    let resp = send.send_request(req).await?;
    ensure!(
        resp.status() == 200,
        "agent answered {} for {path}",
        resp.status()
    );
    let mut body = resp.into_body();
    let mut h = blake3::Hasher::new();
    while let Some(f) = body.frame().await {
        if let Ok(d) = f?.into_data() {
            h.update(&d);
        }
    }
    ensure!(
        h.finalize() == want,
        "the agent's cold miss of {path} delivered wrong bytes"
    );
    Ok(())
}

/// One agent metric (a counter or gauge without labels) from its admin listener.
async fn metric(admin: std::net::SocketAddr, name: &str) -> Option<u64> {
    let t = Target {
        name: "admin",
        addr: admin,
        uri: "/metrics".parse().ok()?,
        host: admin.to_string(),
    };
    let mut send = load::connect(&t).await.ok()?;
    let req = http::Request::get("/metrics")
        .header(http::header::HOST, admin.to_string())
        .body(http_body_util::Empty::<bytes::Bytes>::new())
        .ok()?;
    let body = send
        .send_request(req)
        .await
        .ok()?
        .into_body()
        .collect()
        .await
        .ok()?;
    let text = String::from_utf8_lossy(&body.to_bytes()).into_owned();
    text.lines()
        .find_map(|l| l.strip_prefix(name).and_then(|r| r.strip_prefix(' ')))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .map(|v| v as u64)
}

/// CPU and wall clock of a window, for the other-load figure.
struct Mark {
    at: Instant,
    ours: f64,
    stat: Option<(u64, u64, u64)>,
}

fn cpu_of(pids: &[u32]) -> f64 {
    pids.iter()
        .filter_map(|p| usage(*p))
        .map(|u| u.cpu_seconds)
        .sum()
}

impl Mark {
    fn now(pids: &[u32]) -> Self {
        Self {
            at: Instant::now(),
            ours: cpu_of(pids) + children_cpu_seconds(),
            stat: machine_ticks(),
        }
    }

    /// Share of the machine busy with others since `self` (interrupts excluded: on
    /// loopback they are mostly ours).
    fn other_since(&self, pids: &[u32]) -> f64 {
        let ours = (cpu_of(pids) + children_cpu_seconds() - self.ours).max(0.0);
        let secs = self.at.elapsed().as_secs_f64().max(1e-9);
        match (self.stat, machine_ticks()) {
            (Some((b0, i0, t0)), Some((b1, i1, t1))) if t1 > t0 => {
                let total = (t1 - t0) as f64;
                let busy = b1.saturating_sub(b0) as f64 / total;
                let irq = i1.saturating_sub(i0) as f64 / total;
                (busy - irq - ours / (cores() as f64 * secs)).max(0.0)
            }
            _ => 0.0,
        }
    }
}

fn median(v: &mut [f64]) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// Runs the whole benchmark. Progress goes to stderr.
pub async fn run(o: &ColdOptions) -> Result<ColdReport> {
    ensure!(
        o.size > 0 && o.clients > 0 && o.rounds > 0,
        "size, clients and rounds must be positive"
    );
    let registry = Registry::default();
    let (tmp, www) = super::work_dir(&o.workdir, "coldbench-")?;
    let dir = tmp.path().to_path_buf();
    let small = (o.size / o.clients as u64).max(1);
    eprintln!(
        "coldbench: writing /big ({} bytes) and {} objects of {small} bytes in {}",
        o.size,
        o.clients,
        www.display()
    );
    let mut hashes = vec![(
        "/big".to_owned(),
        write_random(&www.join("big"), o.size, 1)?,
    )];
    for i in 0..o.clients {
        let p = format!("/m{i}");
        hashes.push((
            p.clone(),
            write_random(&www.join(&p[1..]), small, 100 + i as u64)?,
        ));
    }
    super::cold_ttfb::prepare(&www, 2 * o.ttfb_samples)?;
    let mut nginx = servers::start_nginx(
        &registry,
        &o.nginx,
        &dir,
        &www,
        "/m0",
        o.origin_rate.as_deref(),
    )
    .await?;
    // The timed downloads' path prefix: `/rated` under `--origin-rate`.
    let prefix = if o.origin_rate.is_some() {
        "/rated"
    } else {
        ""
    };
    let origin = format!("http://{}", nginx.addr);
    let mut cases = vec![Case {
        name: "1 client, one object".into(),
        files: vec!["/big".into()],
        sizes: vec![o.size],
    }];
    if o.clients > 1 {
        cases.push(Case {
            name: format!("{} clients, {} distinct objects", o.clients, o.clients),
            files: (0..o.clients).map(|i| format!("/m{i}")).collect(),
            sizes: vec![small; o.clients],
        });
        if o.same {
            cases.push(Case {
                name: format!("{} clients, one object", o.clients),
                files: vec!["/big".into(); o.clients],
                sizes: vec![o.size; o.clients],
            });
        }
    }
    let settings = AgentSettings {
        chunk_size: o.chunk_size,
        memory_size: o.memory_size,
        // By default room for every object of a case: none is streamed through as
        // too large, and nothing is evicted.
        max_size: o.max_size.unwrap_or((o.size * 3).max(1 << 30)),
        origin: origin.clone(),
    };
    let mut seq = 0usize;
    let mut fresh = || {
        seq += 1;
        dir.join(format!("agent-{seq}"))
    };
    let mut notes = Vec::new();
    let mut env = o.agent_env.clone();
    if let Some(fb) = o.fill_buffer {
        env.push(("SHOAL_AGENT__CACHE__FILL_BUFFER".into(), fb.to_string()));
    }

    // Bytes first: one hashed cold miss of each distinct file of the first object
    // kinds (the large one and one small one), each on a fresh agent.
    for path in ["/big", "/m0"] {
        let want = hashes
            .iter()
            .find(|(p, _)| p == path)
            .map(|(_, h)| *h)
            .context("hash")?;
        let d = fresh();
        std::fs::create_dir_all(&d)?;
        let agent = servers::start_agent(&registry, &o.agent_bin, &d, &settings, &env).await?;
        verify(&agent, &origin, path, want).await?;
        drop(agent);
        let _ = std::fs::remove_dir_all(&d);
        eprintln!("coldbench: {path}: the agent's cold miss delivered the right bytes");
    }

    let mut ms = Vec::new();
    for round in 0..o.rounds {
        for case in &cases {
            let order = if round % 2 == 0 {
                [false, true]
            } else {
                [true, false]
            };
            for through_agent in order {
                let urls: Vec<(String, u64)> = case
                    .files
                    .iter()
                    .zip(&case.sizes)
                    .map(|(f, s)| (format!("{origin}{prefix}{f}"), *s))
                    .collect();
                let m = if through_agent {
                    let d = fresh();
                    std::fs::create_dir_all(&d)?;
                    let mut agent =
                        servers::start_agent(&registry, &o.agent_bin, &d, &settings, &env).await?;
                    let admin = agent_admin(&d)?;
                    let pid = agent.pid();
                    let mut pids = nginx.pids();
                    pids.push(pid);
                    let stop = Arc::new(AtomicBool::new(false));
                    let peak = Arc::new(AtomicU64::new(0));
                    let sampler = sample_rss(pid, stop.clone(), peak.clone());
                    let mark = Mark::now(&pids);
                    let proxy = format!("http://{}", agent.addr);
                    let curl = o.curl.clone();
                    let (bytes, secs) =
                        tokio::task::spawn_blocking(move || curl_all(&curl, Some(&proxy), &urls))
                            .await??;
                    let other = mark.other_since(&pids);
                    stop.store(true, Ordering::Relaxed);
                    let _ = sampler.join();
                    agent.check_alive()?;
                    let hwm = usage(pid).map(|u| u.peak_rss_bytes);
                    let skipped = metric(admin, "shoal_cache_fill_skipped_chunks_total").await;
                    let cached = metric(admin, "shoal_cache_bytes").await;
                    drop(agent);
                    let _ = std::fs::remove_dir_all(&d);
                    ColdMeasurement {
                        case: case.name.clone(),
                        path: "agent".into(),
                        round,
                        clients: case.files.len(),
                        bytes,
                        seconds: secs,
                        mib_s: bytes as f64 / secs.max(1e-9) / (1 << 20) as f64,
                        agent_rss_peak: Some(peak.load(Ordering::Relaxed)),
                        agent_hwm: hwm,
                        other_busy: other,
                        skipped_chunks: skipped,
                        cached_bytes: cached,
                    }
                } else {
                    let pids = nginx.pids();
                    let mark = Mark::now(&pids);
                    let curl = o.curl.clone();
                    let (bytes, secs) =
                        tokio::task::spawn_blocking(move || curl_all(&curl, None, &urls)).await??;
                    let other = mark.other_since(&pids);
                    nginx.check_alive()?;
                    ColdMeasurement {
                        case: case.name.clone(),
                        path: "direct".into(),
                        round,
                        clients: case.files.len(),
                        bytes,
                        seconds: secs,
                        mib_s: bytes as f64 / secs.max(1e-9) / (1 << 20) as f64,
                        agent_rss_peak: None,
                        agent_hwm: None,
                        other_busy: other,
                        skipped_chunks: None,
                        cached_bytes: None,
                    }
                };
                eprintln!(
                    "coldbench: round {} {:<28} {:>6}: {:>7.0} MiB/s{} (other load {:.0} %)",
                    round + 1,
                    m.case,
                    m.path,
                    m.mib_s,
                    match (m.agent_hwm, m.skipped_chunks, m.cached_bytes) {
                        (Some(h), s, c) => format!(
                            ", agent VmHWM {} MiB, skipped {} chunks, {} MiB cached",
                            h >> 20,
                            s.unwrap_or(0),
                            c.unwrap_or(0) >> 20
                        ),
                        _ => String::new(),
                    },
                    m.other_busy * 100.0
                );
                ms.push(m);
            }
        }
    }
    let summaries = cases
        .iter()
        .map(|c| {
            let of = |path: &str| -> Vec<&ColdMeasurement> {
                ms.iter()
                    .filter(|m| m.case == c.name && m.path == path)
                    .collect()
            };
            let (d, a) = (of("direct"), of("agent"));
            let mut dv: Vec<f64> = d.iter().map(|m| m.mib_s).collect();
            let mut av: Vec<f64> = a.iter().map(|m| m.mib_s).collect();
            let mut ratios: Vec<f64> = d
                .iter()
                .zip(&a)
                .map(|(d, a)| a.mib_s / d.mib_s.max(1e-9))
                .collect();
            let mut other: Vec<f64> = d.iter().chain(&a).map(|m| m.other_busy).collect();
            ColdSummary {
                case: c.name.clone(),
                clients: c.files.len(),
                direct_mib_s: median(&mut dv),
                agent_mib_s: median(&mut av),
                ratio: median(&mut ratios),
                agent_hwm_max: a.iter().filter_map(|m| m.agent_hwm).max().unwrap_or(0),
                other_busy_median: median(&mut other),
            }
        })
        .collect();
    let mut ttfb = Vec::new();
    if o.ttfb_samples > 0 {
        eprintln!(
            "coldbench: time to first byte, {} cold misses per origin speed",
            o.ttfb_samples
        );
        let d = fresh();
        std::fs::create_dir_all(&d)?;
        let agent = servers::start_agent(&registry, &o.agent_bin, &d, &settings, &env).await?;
        // A slow sample takes seconds (the whole body is read): fewer of them.
        let n = o.ttfb_samples;
        let slow = n.min(10);
        for (case, prefix, first, n) in [("nginx", "/", 0, n), ("slow nginx", "/slow/", n, slow)] {
            let r =
                super::cold_ttfb::measure(case, nginx.addr, agent.addr, prefix, first, n).await?;
            eprintln!(
                "coldbench: {case}: first byte direct p50 {:.2} ms, agent p50 {:.2} ms p99 {:.2} ms, excess p99 {:.2} ms",
                r.direct_p50_ms, r.agent_p50_ms, r.agent_p99_ms, r.excess_p99_ms
            );
            ttfb.push(r);
        }
        drop(agent);
        let _ = std::fs::remove_dir_all(&d);
    }
    notes.push(format!(
        "curl {} as the client (-o /dev/null), nginx ({}) as the origin and the direct server, on {} cores shared with the servers",
        curl_version(&o.curl),
        nginx_version(&o.nginx),
        cores()
    ));
    if let Some(r) = &o.origin_rate {
        notes.push(format!(
            "timed downloads from nginx under `limit_rate {r}` per connection (direct, and the agent's origin fetches)"
        ));
    }
    if !o.agent_env.is_empty() {
        let e: Vec<String> = o
            .agent_env
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        notes.push(format!("agent environment: {}", e.join(" ")));
    }
    drop(nginx);
    if o.keep_workdir {
        let kept = tmp.keep();
        eprintln!("coldbench: kept {}", kept.display());
    }
    Ok(ColdReport {
        size_bytes: o.size,
        clients: o.clients,
        rounds: o.rounds,
        chunk_size_bytes: o.chunk_size,
        memory_size_bytes: o.memory_size,
        max_size_bytes: settings.max_size,
        fill_buffer_bytes: o.fill_buffer,
        cores: cores(),
        summaries,
        measurements: ms,
        ttfb,
        notes,
    })
}

/// The admin address written into an agent's config by `servers::agent_conf`.
fn agent_admin(dir: &Path) -> Result<std::net::SocketAddr> {
    let conf = std::fs::read_to_string(dir.join("agent.toml"))?;
    let mut in_admin = false;
    for l in conf.lines() {
        if l.trim() == "[admin]" {
            in_admin = true;
        } else if in_admin && let Some(v) = l.trim().strip_prefix("listen = ") {
            return Ok(v.trim_matches('"').parse()?);
        } else if l.starts_with('[') {
            in_admin = false;
        }
    }
    bail!("no [admin] listen in {}", dir.display())
}

fn curl_version(curl: &str) -> String {
    std::process::Command::new(curl)
        .arg("--version")
        .output()
        .ok()
        .and_then(|o| {
            String::from_utf8_lossy(&o.stdout)
                .split_whitespace()
                .nth(1)
                .map(str::to_owned)
        })
        .unwrap_or_else(|| "?".into())
}

fn nginx_version(nginx: &str) -> String {
    std::process::Command::new(nginx)
        .arg("-v")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stderr).trim().to_owned())
        .unwrap_or_default()
}

impl ColdReport {
    /// The report as Markdown: the summary table, then every measurement.
    pub fn markdown(&self) -> String {
        let mib = |b: u64| b as f64 / (1 << 20) as f64;
        let mut s = format!(
            "## Cold miss: direct from nginx vs through the agent (cold cache)\n\n\
             Object {:.0} MiB (the {}-client case: {} objects of {:.0} MiB), chunk {:.0} MiB, \
             memory cache {:.0} MiB, disk quota {:.0} MiB, fill buffer {}, {} rounds (ABBA), {} cores.\n\n\
             | case | direct MiB/s | agent MiB/s | agent/direct | agent VmHWM (max) | memory_size + 64 MiB | other load |\n\
             |---|---:|---:|---:|---:|---:|---:|\n",
            mib(self.size_bytes),
            self.clients,
            self.clients,
            mib(self.size_bytes / self.clients as u64),
            mib(self.chunk_size_bytes),
            mib(self.memory_size_bytes),
            mib(self.max_size_bytes),
            self.fill_buffer_bytes
                .map_or("default".into(), |b| format!("{:.0} MiB", mib(b))),
            self.rounds,
            self.cores
        );
        for x in &self.summaries {
            s += &format!(
                "| {} | {:.0} | {:.0} | {:.2} | {:.0} MiB | {:.0} MiB | {:.0} % |\n",
                x.case,
                x.direct_mib_s,
                x.agent_mib_s,
                x.ratio,
                mib(x.agent_hwm_max),
                mib(self.memory_size_bytes) + 64.0,
                x.other_busy_median * 100.0
            );
        }
        s += "\n| round | case | path | MiB/s | seconds | agent VmRSS peak | VmHWM | skipped chunks | cached MiB | other load |\n|---:|---|---|---:|---:|---:|---:|---:|---:|---:|\n";
        for m in &self.measurements {
            let o = |v: Option<u64>, f: &dyn Fn(u64) -> String| v.map_or("-".into(), f);
            s += &format!(
                "| {} | {} | {} | {:.0} | {:.2} | {} | {} | {} | {} | {:.0} % |\n",
                m.round + 1,
                m.case,
                m.path,
                m.mib_s,
                m.seconds,
                o(m.agent_rss_peak, &|b| format!("{:.0} MiB", mib(b))),
                o(m.agent_hwm, &|b| format!("{:.0} MiB", mib(b))),
                o(m.skipped_chunks, &|v| v.to_string()),
                o(m.cached_bytes, &|b| format!("{:.0}", mib(b))),
                m.other_busy * 100.0
            );
        }
        if !self.ttfb.is_empty() {
            s += &super::cold_ttfb::markdown(&self.ttfb, servers::SLOW_RATE);
        }
        s += "\n";
        for n in &self.notes {
            s += &format!("- {n}\n");
        }
        s
    }
}
