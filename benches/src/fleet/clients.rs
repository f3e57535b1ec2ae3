//! Starting the per-node clients at (nearly) the same instant and timing them.

use std::path::PathBuf;
use std::thread;
use std::time::{Duration, Instant, SystemTime};

use anyhow::Result;

use super::cleanup::Registry;
use super::netns::Node;
use super::proc::{Proc, stop_all};

/// Seconds from `t0` to `t` (0 if `t` is earlier).
pub fn since(t0: SystemTime, t: SystemTime) -> f64 {
    t.duration_since(t0).map(|d| d.as_secs_f64()).unwrap_or(0.0)
}

/// One client per node, started back to back.
#[derive(Debug)]
pub struct Launch {
    /// When the first client was started: completion times count from here.
    pub t0: SystemTime,
    /// Seconds between the first and the last start.
    pub spread: f64,
    pub procs: Vec<Proc>,
}

/// Start `command(node)` = (program, args) in every node's namespace, logging to
/// `logs/<node>.log`.
pub fn launch(
    registry: &Registry,
    nodes: &[Node],
    logs: &std::path::Path,
    envs: impl Fn(&Node) -> Vec<(String, String)>,
    command: impl Fn(&Node) -> (String, Vec<String>),
) -> Result<Launch> {
    std::fs::create_dir_all(logs)?;
    let t0 = SystemTime::now();
    let mut procs = Vec::with_capacity(nodes.len());
    for node in nodes {
        let (program, args) = command(node);
        let env = envs(node);
        let env_refs: Vec<(&str, &str)> =
            env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        let log: PathBuf = logs.join(format!("{}.log", node.name));
        procs.push(Proc::spawn(
            registry,
            &node.name,
            Some(&node.ns),
            &program,
            &args,
            &log,
            &env_refs,
        )?);
    }
    let last = procs.last().map(|p| p.started).unwrap_or(t0);
    Ok(Launch {
        t0,
        spread: since(t0, last),
        procs,
    })
}

/// Wait until every process has exited or `timeout` passed; a process that exits 0
/// completes at its exit time, one that fails or is still running at the deadline
/// (then stopped) has `None`.
pub fn wait_exits(launch: &mut Launch, timeout: Duration) -> Vec<Option<f64>> {
    let deadline = Instant::now() + timeout;
    loop {
        // Poll every process each round (no short-circuit): a process's completion
        // time is when a poll first sees it exited.
        let running = launch
            .procs
            .iter_mut()
            .map(Proc::poll)
            .filter(Option::is_none)
            .count();
        let done = running == 0;
        if done || Instant::now() >= deadline {
            break;
        }
        thread::sleep(Duration::from_millis(10));
    }
    // Record who finished before stopping the rest.
    let finished: Vec<Option<(std::process::ExitStatus, SystemTime)>> =
        launch.procs.iter_mut().map(Proc::poll).collect();
    stop_all(&mut launch.procs);
    finished
        .into_iter()
        .map(|f| match f {
            Some((status, at)) if status.success() => Some(since(launch.t0, at)),
            _ => None,
        })
        .collect()
}
