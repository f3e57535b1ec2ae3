//! System "bittorrent": opentracker on the tracker node, aria2c seeding from the origin
//! node (a torrent made with mktorrent over the same object file), one aria2c per node
//! that keeps seeding after it completes. A node's completion time is when aria2c runs
//! its `--on-bt-download-complete` hook. Origin egress is the seeder's upload counter
//! (aria2 JSON-RPC `uploadLength`).

use std::path::Path;
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context, Result, bail};

use super::clients::{launch, since};
use super::netns::Node;
use super::origin::OBJECT_NAME;
use super::proc::{Proc, run as run_cmd, stop_all, wait_until};
use super::{Ctx, Run};

const TRACKER_PORT: u16 = 6969;
const PEER_PORT: &str = "6881";
const RPC_PORT: &str = "6800";
/// mktorrent piece length exponent: 2^18 = 256 KiB (mktorrent's default).
const PIECE_EXP: &str = "18";

/// Flags shared by the seeder and the leechers: no DHT/LPD (no internet, and the
/// tracker is the fair equivalent of Shoal's), seed forever, no preallocation.
const COMMON: &[&str] = &[
    "--enable-dht=false",
    "--enable-dht6=false",
    "--bt-enable-lpd=false",
    "--disable-ipv6=true",
    "--seed-ratio=0.0",
    "--file-allocation=none",
    "--summary-interval=0",
    "--console-log-level=warn",
    "--allow-overwrite=true",
];

pub fn run(ctx: &Ctx<'_>) -> Result<Run> {
    let dir = &ctx.dir;
    let torrent = dir.join("release.torrent");
    let announce = format!("http://{}:{TRACKER_PORT}/announce", ctx.fleet.tracker.ip);
    run_cmd(
        None,
        "mktorrent",
        &[
            "-a",
            &announce,
            "-l",
            PIECE_EXP,
            "-o",
            &torrent.display().to_string(),
            &ctx.object.path.display().to_string(),
        ],
    )
    .context("mktorrent")?;
    let info_hash = info_hash(&torrent)?;

    // Debian's opentracker only tracks whitelisted torrents. It chroots into `-d`, so
    // the whitelist path in its config is relative to that directory.
    let ot_dir = dir.join("opentracker");
    std::fs::create_dir_all(&ot_dir)?;
    std::fs::write(ot_dir.join("whitelist"), format!("{info_hash}\n"))?;
    let ot_conf = ot_dir.join("opentracker.conf");
    std::fs::write(&ot_conf, "access.whitelist /whitelist\n")?;
    let tracker = &ctx.fleet.tracker;
    let ip = tracker.ip.to_string();
    let port = TRACKER_PORT.to_string();
    let mut opentracker = Proc::spawn(
        ctx.registry,
        "opentracker",
        Some(&tracker.ns),
        "opentracker",
        [
            "-i",
            &ip,
            "-p",
            &port,
            "-P",
            &port,
            "-d",
            &ot_dir.display().to_string(),
            "-f",
            &ot_conf.display().to_string(),
        ],
        &dir.join("opentracker.log"),
        &[],
    )?;
    wait_until(
        "opentracker to accept the torrent",
        Duration::from_secs(10),
        || {
            if opentracker.poll().is_some() {
                bail!(
                    "opentracker exited; see {}",
                    dir.join("opentracker.log").display()
                );
            }
            authorized(tracker, &info_hash)
        },
    )?;

    let seed_dir = ctx
        .object
        .path
        .parent()
        .context("object path has no parent")?
        .display()
        .to_string();
    let mut seeder_args: Vec<String> = COMMON.iter().map(|s| s.to_string()).collect();
    seeder_args.extend([
        format!("--dir={seed_dir}"),
        "--bt-seed-unverified=true".into(),
        format!("--listen-port={PEER_PORT}"),
        "--enable-rpc=true".into(),
        format!("--rpc-listen-port={RPC_PORT}"),
        torrent.display().to_string(),
    ]);
    let mut seeder = Proc::spawn(
        ctx.registry,
        "seeder",
        Some(&ctx.fleet.origin.ns),
        "aria2c",
        &seeder_args,
        &dir.join("seeder.log"),
        &[],
    )?;
    wait_until("the seeder to announce", Duration::from_secs(60), || {
        if seeder.poll().is_some() {
            bail!("seeder exited; see {}", dir.join("seeder.log").display());
        }
        Ok(scrape_complete(tracker, &info_hash)? >= 1)
    })?;

    let hook = dir.join("done-hook.sh");
    std::fs::write(
        &hook,
        "#!/bin/sh\ndate +%s.%N > \"$FLEET_DONE.tmp\" && mv \"$FLEET_DONE.tmp\" \"$FLEET_DONE\"\n",
    )?;
    set_executable(&hook)?;
    let done = dir.join("done");
    let out = dir.join("out");
    std::fs::create_dir_all(&done)?;
    let mut l = launch(
        ctx.registry,
        &ctx.fleet.agents,
        &dir.join("logs"),
        |node| {
            vec![(
                "FLEET_DONE".to_owned(),
                done.join(&node.name).display().to_string(),
            )]
        },
        |node| {
            let mut args: Vec<String> = COMMON.iter().map(|s| s.to_string()).collect();
            args.extend([
                format!("--dir={}", out.join(&node.name).display()),
                format!("--listen-port={PEER_PORT}"),
                format!("--on-bt-download-complete={}", hook.display()),
                torrent.display().to_string(),
            ]);
            ("aria2c".into(), args)
        },
    )?;

    let deadline = Instant::now() + ctx.timeout;
    let mut completions = vec![None; ctx.fleet.agents.len()];
    loop {
        for (i, node) in ctx.fleet.agents.iter().enumerate() {
            if completions[i].is_none() {
                completions[i] = read_done(&done.join(&node.name)).map(|t| since(l.t0, t));
            }
        }
        let pending: Vec<usize> = (0..completions.len())
            .filter(|&i| completions[i].is_none())
            .collect();
        if pending.is_empty() || Instant::now() >= deadline {
            break;
        }
        // A leecher that died will never complete.
        if pending.iter().all(|&i| l.procs[i].poll().is_some()) {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }

    let mut notes = Vec::new();
    let origin_payload = match seeder_uploaded(&ctx.fleet.origin) {
        Ok(b) => Some(b),
        Err(e) => {
            notes.push(format!("seeder upload counter unavailable: {e:#}"));
            None
        }
    };
    let node_usage = l.procs.iter().filter_map(Proc::usage).collect();
    stop_all(&mut l.procs);
    seeder.stop();
    opentracker.stop();
    Ok(Run {
        t0: Some(l.t0),
        spread: l.spread,
        completions,
        outputs: ctx
            .fleet
            .agents
            .iter()
            .map(|n| out.join(&n.name).join(OBJECT_NAME))
            .collect(),
        origin_payload,
        node_usage,
        notes,
        ..Run::default()
    })
}

fn set_executable(path: &Path) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755))?;
    Ok(())
}

/// Unix time written by the completion hook.
fn read_done(path: &Path) -> Option<SystemTime> {
    let text = std::fs::read_to_string(path).ok()?;
    let secs: f64 = text.trim().parse().ok()?;
    Some(SystemTime::UNIX_EPOCH + Duration::from_secs_f64(secs))
}

/// The torrent's info hash (40 hex digits), as printed by `aria2c -S`.
fn info_hash(torrent: &Path) -> Result<String> {
    let out = run_cmd(None, "aria2c", &["-S", &torrent.display().to_string()])?;
    out.lines()
        .find_map(|l| l.trim().strip_prefix("Info Hash:"))
        .map(|h| h.trim().to_owned())
        .filter(|h| h.len() == 40)
        .context("no info hash in `aria2c -S` output")
}

/// `%xx`-escaped raw bytes of a hex info hash.
fn escape(info_hash: &str) -> Result<String> {
    let mut escaped = String::new();
    for pair in info_hash.as_bytes().chunks(2) {
        escaped.push('%');
        escaped.push_str(std::str::from_utf8(pair)?);
    }
    Ok(escaped)
}

/// Whether the tracker accepts announces for `info_hash` (a `stopped` announce, which
/// adds no peer, is answered without a failure reason).
fn authorized(tracker: &Node, info_hash: &str) -> Result<bool> {
    let url = format!(
        "http://{}:{TRACKER_PORT}/announce?info_hash={}&peer_id=fleet-probe-00000000&port=1&left=0&compact=1&event=stopped",
        tracker.ip,
        escape(info_hash)?
    );
    let body = run_cmd(Some(&tracker.ns), "curl", &["-sS", "--max-time", "2", &url])?;
    Ok(!body.contains("failure reason"))
}

/// Number of seeders ("complete") the tracker reports for `info_hash`.
fn scrape_complete(tracker: &Node, info_hash: &str) -> Result<u64> {
    let url = format!(
        "http://{}:{TRACKER_PORT}/scrape?info_hash={}",
        tracker.ip,
        escape(info_hash)?
    );
    let body = run_cmd(Some(&tracker.ns), "curl", &["-sS", "--max-time", "2", &url])?;
    match parse_scrape_complete(&body) {
        Some(n) => Ok(n),
        // An unknown info hash: the tracker answers with an empty file list.
        None if body.contains("5:files") => Ok(0),
        None => bail!("unexpected scrape reply {body:?}"),
    }
}

/// The first `8:completei<N>e` in a bencoded scrape reply.
fn parse_scrape_complete(body: &str) -> Option<u64> {
    let at = body.find("8:completei")? + "8:completei".len();
    let digits: String = body[at..]
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    digits.parse().ok()
}

/// Bytes the origin's seeder uploaded, from aria2's JSON-RPC.
fn seeder_uploaded(origin: &Node) -> Result<u64> {
    let body =
        r#"{"jsonrpc":"2.0","id":"fleet","method":"aria2.tellActive","params":[["uploadLength"]]}"#;
    let url = format!("http://127.0.0.1:{RPC_PORT}/jsonrpc");
    let reply = run_cmd(
        Some(&origin.ns),
        "curl",
        &["-sS", "--max-time", "5", "-d", body, &url],
    )?;
    let v: serde_json::Value = serde_json::from_str(&reply).context("aria2 RPC reply")?;
    v["result"]
        .as_array()
        .and_then(|r| r.first())
        .and_then(|d| d["uploadLength"].as_str())
        .and_then(|s| s.parse().ok())
        .context("no uploadLength in aria2 RPC reply")
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn scrape_reply_is_parsed() {
        let body =
            "d5:filesd20:xxxxxxxxxxxxxxxxxxxxd8:completei3e10:downloadedi0e10:incompletei5eeee";
        assert_eq!(parse_scrape_complete(body), Some(3));
        assert_eq!(parse_scrape_complete("d5:filesdee"), None);
    }
}
