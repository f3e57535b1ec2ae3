//! System "shoal": one shoal-tracker on the tracker node, one shoal-agent per node;
//! each node's client is curl through its local agent (`curl -x`). Binaries and their
//! command lines follow the contract in `docs/benchmarks.md`; any step that fails
//! becomes this system's error in the report, never the whole run's.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, bail};

use super::clients::{launch, wait_exits};
use super::netns::{Node, SUBNET};
use super::origin::url;
use super::proc::{Proc, run as run_cmd, stop_all, wait_until};
use super::{AgentMetrics, Ctx, Run};

const TRACKER_PORT: u16 = 7443;
const PEER_PORT: u16 = 7000;
const PROXY: &str = "127.0.0.1:3128";
const ADMIN: &str = "127.0.0.1:9091";
const TRACKER_ADMIN: &str = "127.0.0.1:9090";
const READY_TIMEOUT: Duration = Duration::from_secs(60);

pub fn run(ctx: &Ctx<'_>) -> Result<Run> {
    let agent_bin = binary(ctx.shoal_bin_dir, "shoal-agent")?;
    let tracker_bin = binary(ctx.shoal_bin_dir, "shoal-tracker")?;
    let dir = &ctx.dir;
    let fleet = ctx.fleet;

    let certs = dir.join("certs");
    let mut names = vec![fleet.tracker.name.clone()];
    let mut ips = vec![fleet.tracker.ip.to_string()];
    for a in &fleet.agents {
        names.push(a.name.clone());
        ips.push(a.ip.to_string());
    }
    run_cmd(
        None,
        &agent_bin.display().to_string(),
        &[
            "certs",
            "--out",
            &certs.display().to_string(),
            "--names",
            &names.join(","),
            "--ips",
            &ips.join(","),
        ],
    )
    .context("shoal-agent certs")?;
    let tls = |name: &str| {
        format!(
            "[tls]\nca = {:?}\ncert = {:?}\nkey = {:?}\n",
            certs.join("ca.pem").display().to_string(),
            certs.join(format!("{name}.pem")).display().to_string(),
            certs.join(format!("{name}.key.pem")).display().to_string(),
        )
    };

    let tracker = &fleet.tracker;
    let tracker_conf = dir.join("tracker.toml");
    std::fs::write(
        &tracker_conf,
        format!(
            "[server]\nlisten = \"{}:{TRACKER_PORT}\"\n\n[admin]\nlisten = \"{TRACKER_ADMIN}\"\n\n{}",
            tracker.ip,
            tls(&tracker.name)
        ),
    )?;
    let logs = dir.join("logs");
    std::fs::create_dir_all(&logs)?;
    // FLEET_SHOAL_LOG (a RUST_LOG filter) traces agents and tracker into logs/, e.g.
    // `shoal_agent::swarm=debug` for every chunk stored with its source (keep the work
    // directory to read them).
    let filter = std::env::var("FLEET_SHOAL_LOG").unwrap_or_else(|_| "warn".into());
    let env = [("RUST_LOG", filter.as_str())];
    let mut tracker_proc = Proc::spawn(
        ctx.registry,
        "shoal-tracker",
        Some(&tracker.ns),
        &tracker_bin,
        ["run", "--config", &tracker_conf.display().to_string()],
        &logs.join("tracker.log"),
        &env,
    )?;
    wait_ready(
        &mut tracker_proc,
        tracker,
        TRACKER_ADMIN,
        &logs.join("tracker.log"),
    )?;

    let tracker_url = format!("https://{}:{TRACKER_PORT}", tracker.ip);
    let max_size = (2 * ctx.object.bytes).max(2 << 30);
    let mut agents = Vec::with_capacity(fleet.agents.len());
    for node in &fleet.agents {
        let conf = dir.join(format!("{}.toml", node.name));
        let cache = dir.join("cache").join(&node.name);
        std::fs::write(
            &conf,
            agent_config(node, &cache, max_size, &tracker_url, &tls(&node.name)),
        )?;
        let log = logs.join(format!("{}.agent.log", node.name));
        agents.push(Proc::spawn(
            ctx.registry,
            &format!("shoal-agent {}", node.name),
            Some(&node.ns),
            &agent_bin,
            ["run", "--config", &conf.display().to_string()],
            &log,
            &env,
        )?);
    }
    for (proc, node) in agents.iter_mut().zip(&fleet.agents) {
        let log = logs.join(format!("{}.agent.log", node.name));
        wait_ready(proc, node, ADMIN, &log)?;
    }

    let out = dir.join("out");
    std::fs::create_dir_all(&out)?;
    let url = url(&fleet.origin);
    let proxy = format!("http://{PROXY}");
    let mut l = launch(
        ctx.registry,
        &fleet.agents,
        &dir.join("clients"),
        |_| Vec::new(),
        |node| {
            let file = out.join(&node.name).display().to_string();
            let args = ["-sS", "--fail", "-x", &proxy, "-o", &file, &url];
            ("curl".into(), args.iter().map(|s| s.to_string()).collect())
        },
    )?;
    let completions = wait_exits(&mut l, ctx.timeout);

    let mut notes = Vec::new();
    let mut metrics = AgentMetrics::default();
    for node in &fleet.agents {
        match scrape(node, ADMIN) {
            Ok(text) => {
                metrics.add(&text);
                let _ = std::fs::write(logs.join(format!("{}.metrics", node.name)), text);
            }
            Err(e) => notes.push(format!("{}: metrics unavailable: {e:#}", node.name)),
        }
    }
    let node_usage = agents.iter().filter_map(Proc::usage).collect();
    let mut crashed = Vec::new();
    for p in &mut agents {
        if p.poll().is_some() {
            crashed.push(p.label.clone());
        }
    }
    if !crashed.is_empty() {
        notes.push(format!("exited during the run: {}", crashed.join(", ")));
    }
    stop_all(&mut agents);
    tracker_proc.stop();
    Ok(Run {
        t0: Some(l.t0),
        spread: l.spread,
        completions,
        outputs: fleet.agents.iter().map(|n| out.join(&n.name)).collect(),
        node_usage,
        metrics: Some(metrics),
        notes,
        ..Run::default()
    })
}

fn binary(dir: &Path, name: &str) -> Result<PathBuf> {
    let path = dir.join(name);
    if !path.is_file() {
        bail!(
            "{} not found; build it with `cargo build --release -p shoal-agent -p shoal-tracker` \
             or pass --shoal-bin-dir",
            path.display()
        );
    }
    Ok(path)
}

fn agent_config(node: &Node, cache: &Path, max_size: u64, tracker: &str, tls: &str) -> String {
    format!(
        r#"[proxy]
listen = "{PROXY}"

[admin]
listen = "{ADMIN}"

[cache]
dir = {cache:?}
max_size = "{max_mib}MiB"
# Its quota is set above; a build host's small free space must not lower it.
min_free = "0B"
# The swarm-node profile (docs/operations.md, "A node that mostly swarms"): no memory
# cache (hits come from the page cache, checked on read) and small fill and read
# buffers, which keeps an agent within 64 MiB (docs/benchmarks.md, Peak RSS).
memory_size = "0B"
fill_buffer = "4MiB"
read_buffer = "4MiB"
chunk_size = "1MiB"

[egress]
allow_cidrs = ["{SUBNET}"]

[peer]
listen = "{ip}:{PEER_PORT}"

[tracker]
urls = ["{tracker}"]

{tls}
[topology]
node = "{name}"
zone = "zone-a"
region = "region-1"
"#,
        cache = cache.display().to_string(),
        max_mib = max_size.div_ceil(1 << 20),
        ip = node.ip,
        name = node.name,
    )
}

/// Poll `http://ADMIN/ready` from inside `node`'s namespace until it answers 200.
fn wait_ready(proc: &mut Proc, node: &Node, admin: &str, log: &Path) -> Result<()> {
    let url = format!("http://{admin}/ready");
    wait_until(&format!("{} /ready", proc.label), READY_TIMEOUT, || {
        if let Some((status, _)) = proc.poll() {
            let tail = std::fs::read_to_string(log).unwrap_or_default();
            let tail: String = tail.lines().rev().take(20).collect::<Vec<_>>().join("\n");
            bail!(
                "{} exited ({status}); log tail (newest first):\n{tail}",
                proc.label
            );
        }
        let code = run_cmd(
            Some(&node.ns),
            "curl",
            &[
                "-s",
                "-o",
                "/dev/null",
                "-w",
                "%{http_code}",
                "--max-time",
                "1",
                &url,
            ],
        )
        .unwrap_or_default();
        Ok(code.trim() == "200")
    })
}

fn scrape(node: &Node, admin: &str) -> Result<String> {
    let url = format!("http://{admin}/metrics");
    run_cmd(
        Some(&node.ns),
        "curl",
        &["-sS", "--fail", "--max-time", "5", &url],
    )
}
