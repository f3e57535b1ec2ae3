//! Everything the harness creates is registered here and torn down by id: child
//! processes (and their descendants), network namespaces, the work directory.
//!
//! Teardown runs from three places: [`Guard`]'s `Drop` (normal end and panics), the
//! signal thread started by [`Registry::watch_signals`] (Ctrl-C, SIGTERM, SIGHUP), and
//! explicitly at the end of a run, which also checks that nothing is left. It is
//! idempotent and never kills anything it did not start: processes are signalled by
//! the pids the harness spawned, their descendants found through `/proc`, and the
//! processes still inside the harness's own namespaces (`ip netns pids`).

use std::collections::{BTreeSet, HashMap};
use std::path::PathBuf;
use std::process::Command;
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread;
use std::time::{Duration, Instant};

use nix::sys::signal::{SigSet, Signal, kill};
use nix::unistd::Pid;

use super::disk::{Mount, unmount};

/// Shared list of what to tear down.
#[derive(Debug, Clone, Default)]
pub struct Registry {
    inner: Arc<Mutex<Inner>>,
}

#[derive(Debug, Default)]
struct Inner {
    namespaces: Vec<String>,
    pids: BTreeSet<u32>,
    workdir: Option<PathBuf>,
    keep_workdir: bool,
    mounts: Vec<Mount>,
}

/// What teardown could not remove.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Leftovers {
    pub namespaces: Vec<String>,
    pub pids: Vec<u32>,
    /// Work directories still mounted.
    pub mounts: Vec<PathBuf>,
}

impl Leftovers {
    pub fn is_clean(&self) -> bool {
        self.namespaces.is_empty() && self.pids.is_empty() && self.mounts.is_empty()
    }
}

/// Runs [`Registry::teardown`] when dropped (end of scope or unwinding panic).
#[derive(Debug)]
pub struct Guard(pub Registry);

impl Registry {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding this lock leaves plain lists behind; keep using them.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn add_namespace(&self, name: &str) {
        self.lock().namespaces.push(name.to_owned());
    }

    /// Kill what runs in `ns`, delete it, and forget it once it is gone.
    pub fn remove_namespace(&self, ns: &str) {
        let in_ns = netns_pids(ns);
        if !in_ns.is_empty() {
            terminate(&in_ns);
        }
        let _ = Command::new("ip").args(["netns", "delete", ns]).output();
        if !list_netns().iter().any(|n| n == ns) {
            self.lock().namespaces.retain(|n| n != ns);
        }
    }

    pub fn add_pid(&self, pid: u32) {
        self.lock().pids.insert(pid);
    }

    /// Forget a pid once its process has been reaped (its number may be reused).
    pub fn forget_pid(&self, pid: u32) {
        self.lock().pids.remove(&pid);
    }

    pub fn add_mount(&self, m: Mount) {
        self.lock().mounts.push(m);
    }

    pub fn set_workdir(&self, dir: PathBuf, keep: bool) {
        let mut inner = self.lock();
        inner.workdir = Some(dir);
        inner.keep_workdir = keep;
    }

    /// Block SIGINT, SIGTERM and SIGHUP in this thread (call before any other thread
    /// exists, so all inherit the mask) and tear down from a dedicated thread when one
    /// arrives, then exit with 128 + signal. Children get a clean mask from `Command`.
    pub fn watch_signals(&self) -> nix::Result<()> {
        let mut set = SigSet::empty();
        set.add(Signal::SIGINT);
        set.add(Signal::SIGTERM);
        set.add(Signal::SIGHUP);
        set.thread_block()?;
        let registry = self.clone();
        thread::Builder::new()
            .name("fleet-signals".into())
            .spawn(move || {
                if let Ok(signal) = set.wait() {
                    eprintln!("fleet: got {signal:?}, tearing down");
                    let left = registry.teardown();
                    report_leftovers(&left);
                    std::process::exit(128 + signal as i32);
                }
            })
            .map_err(|_| nix::Error::EAGAIN)?;
        Ok(())
    }

    /// Kill every registered process and its descendants, then every process still in
    /// a registered namespace, delete the namespaces, unmount the work directory's
    /// filesystem, delete the work directory, and return what is still there.
    pub fn teardown(&self) -> Leftovers {
        let mut inner = self.lock();
        let roots: Vec<u32> = inner.pids.iter().copied().collect();
        let mut victims = descendants(&roots);
        victims.extend(roots.iter().copied());
        terminate(&victims);
        for ns in &inner.namespaces {
            let in_ns = netns_pids(ns);
            if !in_ns.is_empty() {
                eprintln!(
                    "fleet: killing {} leftover process(es) in {ns}",
                    in_ns.len()
                );
                terminate(&in_ns);
            }
        }
        for ns in &inner.namespaces {
            let _ = Command::new("ip").args(["netns", "delete", ns]).output();
        }
        let existing = list_netns();
        let namespaces: Vec<String> = inner
            .namespaces
            .iter()
            .filter(|ns| existing.contains(*ns))
            .cloned()
            .collect();
        let pids: Vec<u32> = victims.into_iter().filter(|&p| alive(p)).collect();
        inner.namespaces = namespaces.clone();
        inner.pids.clear();
        let mounts: Vec<PathBuf> = std::mem::take(&mut inner.mounts)
            .into_iter()
            .filter(|m| !unmount(m))
            .map(|m| m.dir)
            .collect();
        if let Some(dir) = inner.workdir.take() {
            if inner.keep_workdir {
                eprintln!("fleet: keeping work directory {}", dir.display());
            } else {
                let _ = std::fs::remove_dir_all(&dir);
            }
        }
        Leftovers {
            namespaces,
            pids,
            mounts,
        }
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        let left = self.0.teardown();
        report_leftovers(&left);
    }
}

fn report_leftovers(left: &Leftovers) {
    if !left.is_clean() {
        eprintln!(
            "fleet: LEFT BEHIND namespaces {:?} pids {:?} mounts {:?}",
            left.namespaces, left.pids, left.mounts
        );
    }
}

/// SIGTERM, wait up to two seconds, SIGKILL whatever is left.
pub fn terminate(pids: &[u32]) {
    for &pid in pids {
        signal(pid, Signal::SIGTERM);
    }
    let deadline = Instant::now() + Duration::from_secs(2);
    while Instant::now() < deadline && pids.iter().any(|&p| alive(p)) {
        thread::sleep(Duration::from_millis(20));
    }
    for &pid in pids {
        if alive(pid) {
            signal(pid, Signal::SIGKILL);
        }
    }
}

pub fn signal(pid: u32, sig: Signal) {
    if let Ok(raw) = i32::try_from(pid) {
        let _ = kill(Pid::from_raw(raw), sig);
    }
}

/// Whether `pid` exists and is not a zombie.
pub fn alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .is_some_and(|state| state != "Z" && state != "X"),
        Err(_) => false,
    }
}

/// All transitive children of `roots` (not including `roots`), from `/proc/*/stat`.
pub fn descendants(roots: &[u32]) -> Vec<u32> {
    let mut children: HashMap<u32, Vec<u32>> = HashMap::new();
    if let Ok(dir) = std::fs::read_dir("/proc") {
        for entry in dir.flatten() {
            let Some(pid) = entry
                .file_name()
                .to_str()
                .and_then(|s| s.parse::<u32>().ok())
            else {
                continue;
            };
            let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
                continue;
            };
            let ppid = stat
                .rsplit_once(')')
                .and_then(|(_, rest)| rest.split_whitespace().nth(1))
                .and_then(|s| s.parse::<u32>().ok());
            if let Some(ppid) = ppid {
                children.entry(ppid).or_default().push(pid);
            }
        }
    }
    let mut out = Vec::new();
    let mut stack: Vec<u32> = roots.to_vec();
    while let Some(p) = stack.pop() {
        for &c in children.get(&p).map(Vec::as_slice).unwrap_or(&[]) {
            if !out.contains(&c) && !roots.contains(&c) {
                out.push(c);
                stack.push(c);
            }
        }
    }
    out
}

/// Pids of processes in network namespace `ns`.
pub fn netns_pids(ns: &str) -> Vec<u32> {
    Command::new("ip")
        .args(["netns", "pids", ns])
        .output()
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .split_whitespace()
                .filter_map(|s| s.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

/// Names from `ip netns list` (the first word of every line).
pub fn list_netns() -> Vec<String> {
    Command::new("ip")
        .args(["netns", "list"])
        .output()
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .filter_map(|l| l.split_whitespace().next().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn own_process_is_alive_and_child_is_found() {
        assert!(alive(std::process::id()));
        let mut child = Command::new("sleep").arg("30").spawn().unwrap();
        let found = descendants(&[std::process::id()]);
        assert!(found.contains(&child.id()));
        terminate(&[child.id()]);
        child.wait().unwrap();
        assert!(!alive(child.id()));
    }

    #[test]
    fn teardown_kills_registered_process_tree() {
        let registry = Registry::default();
        let mut child = Command::new("sh")
            .args(["-c", "sleep 30 & wait"])
            .spawn()
            .unwrap();
        registry.add_pid(child.id());
        // Wait for the grandchild to exist.
        let deadline = Instant::now() + Duration::from_secs(5);
        while descendants(&[child.id()]).is_empty() && Instant::now() < deadline {
            thread::sleep(Duration::from_millis(10));
        }
        let grandchildren = descendants(&[child.id()]);
        assert!(!grandchildren.is_empty());
        let left = registry.teardown();
        child.wait().unwrap();
        assert!(left.is_clean(), "{left:?}");
        assert!(grandchildren.iter().all(|&p| !alive(p)));
    }
}
