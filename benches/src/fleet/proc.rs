//! Processes inside namespaces: spawning through `ip netns exec` (which execs, so the
//! child's pid is the program's), registering them for teardown, and reading their
//! CPU time and peak memory from `/proc`.

use std::ffi::OsStr;
use std::fs::File;
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context, Result, bail};

use super::cleanup::{Registry, terminate};

/// Kernel clock ticks per second for `/proc/*/stat` times (USER_HZ, 100 on Linux).
const TICKS_PER_SECOND: f64 = 100.0;

/// A process the harness started; killed and reaped on drop.
#[derive(Debug)]
pub struct Proc {
    pub label: String,
    pub started: SystemTime,
    child: Child,
    registry: Registry,
    exited: Option<(ExitStatus, SystemTime)>,
}

impl Proc {
    /// Run `program args` in namespace `ns` (or the harness's own if `None`), stdout
    /// and stderr appended to `log`.
    pub fn spawn<I, S>(
        registry: &Registry,
        label: &str,
        ns: Option<&str>,
        program: impl AsRef<OsStr>,
        args: I,
        log: &Path,
        envs: &[(&str, &str)],
    ) -> Result<Self>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let out = File::options()
            .create(true)
            .append(true)
            .open(log)
            .with_context(|| format!("opening log {}", log.display()))?;
        let err = out.try_clone()?;
        let mut cmd = match ns {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns]).arg(program.as_ref());
                c
            }
            None => Command::new(program.as_ref()),
        };
        clear_proxy_env(&mut cmd);
        cmd.args(args)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .envs(envs.iter().copied());
        let started = SystemTime::now();
        let child = cmd
            .spawn()
            .with_context(|| format!("spawning {label} ({:?})", program.as_ref()))?;
        registry.add_pid(child.id());
        Ok(Self {
            label: label.to_owned(),
            started,
            child,
            registry: registry.clone(),
            exited: None,
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Exit status and time, if it has exited (non-blocking).
    pub fn poll(&mut self) -> Option<(ExitStatus, SystemTime)> {
        if self.exited.is_none()
            && let Ok(Some(status)) = self.child.try_wait()
        {
            self.exited = Some((status, SystemTime::now()));
            self.registry.forget_pid(self.child.id());
        }
        self.exited
    }

    /// CPU seconds (user + system) and peak RSS in bytes of the running process.
    pub fn usage(&self) -> Option<Usage> {
        if self.exited.is_some() {
            return None;
        }
        usage(self.child.id())
    }

    /// SIGTERM (then SIGKILL after 2 s) this process and its descendants; reap it.
    pub fn stop(&mut self) {
        if self.poll().is_none() {
            let mut victims = super::cleanup::descendants(&[self.child.id()]);
            victims.push(self.child.id());
            terminate(&victims);
            let status = self.child.wait().unwrap_or_default();
            self.exited = Some((status, SystemTime::now()));
            self.registry.forget_pid(self.child.id());
        }
    }
}

/// Stop many processes at once: one SIGTERM round for all of them and their
/// descendants, one shared two-second grace period, then SIGKILL; reap all.
pub fn stop_all(procs: &mut [Proc]) {
    let running: Vec<u32> = procs
        .iter_mut()
        .filter_map(|p| p.poll().is_none().then(|| p.pid()))
        .collect();
    let mut victims = super::cleanup::descendants(&running);
    victims.extend(&running);
    terminate(&victims);
    for p in procs {
        p.stop();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Resource use of one process.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Usage {
    pub cpu_seconds: f64,
    pub peak_rss_bytes: u64,
}

/// Read `/proc/PID/stat` and `/proc/PID/status`.
pub fn usage(pid: u32) -> Option<Usage> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    // After the comm field: state(0) ppid(1) ... utime(11) stime(12).
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let hwm_kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    Some(Usage {
        cpu_seconds: (utime + stime) / TICKS_PER_SECOND,
        peak_rss_bytes: hwm_kib * 1024,
    })
}

/// CPU seconds of all reaped children of this process (`cutime + cstime`).
pub fn children_cpu_seconds() -> f64 {
    let Ok(stat) = std::fs::read_to_string("/proc/self/stat") else {
        return 0.0;
    };
    let Some((_, rest)) = stat.rsplit_once(')') else {
        return 0.0;
    };
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let get = |i: usize| {
        fields
            .get(i)
            .and_then(|s| s.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    (get(13) + get(14)) / TICKS_PER_SECOND
}

/// Run a short command to completion (in `ns` if given) and return its stdout;
/// fails on a non-zero exit, with stderr in the message.
pub fn run(ns: Option<&str>, program: &str, args: &[&str]) -> Result<String> {
    let mut cmd = match ns {
        Some(ns) => {
            let mut c = Command::new("ip");
            c.args(["netns", "exec", ns, program]);
            c
        }
        None => Command::new(program),
    };
    clear_proxy_env(&mut cmd);
    let out = cmd
        .args(args)
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running {program}"))?;
    if !out.status.success() {
        bail!(
            "{program} {} failed ({}): {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Keep the harness's own proxy settings away from the clients it measures.
fn clear_proxy_env(cmd: &mut Command) {
    for var in [
        "http_proxy",
        "https_proxy",
        "all_proxy",
        "no_proxy",
        "HTTP_PROXY",
        "HTTPS_PROXY",
        "ALL_PROXY",
        "NO_PROXY",
    ] {
        cmd.env_remove(var);
    }
}

/// Poll `check` every 100 ms until it returns `Ok(true)` or `timeout` passes.
pub fn wait_until(
    what: &str,
    timeout: Duration,
    mut check: impl FnMut() -> Result<bool>,
) -> Result<()> {
    let deadline = Instant::now() + timeout;
    let mut last_err = None;
    while Instant::now() < deadline {
        match check() {
            Ok(true) => return Ok(()),
            Ok(false) => {}
            Err(e) => last_err = Some(e),
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    match last_err {
        Some(e) => Err(e.context(format!("timed out after {timeout:?} waiting for {what}"))),
        None => bail!("timed out after {timeout:?} waiting for {what}"),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn usage_of_self_is_readable() {
        let u = usage(std::process::id()).unwrap();
        assert!(u.peak_rss_bytes > 0);
    }

    #[test]
    fn spawned_process_is_reaped_and_forgotten() {
        let dir = tempfile::tempdir().unwrap();
        let registry = Registry::default();
        let mut p = Proc::spawn(
            &registry,
            "sh",
            None,
            "sh",
            ["-c", "echo hi"],
            &dir.path().join("log"),
            &[],
        )
        .unwrap();
        wait_until("exit", Duration::from_secs(5), || Ok(p.poll().is_some())).unwrap();
        assert!(p.poll().unwrap().0.success());
        let log = std::fs::read_to_string(dir.path().join("log")).unwrap();
        assert_eq!(log.trim(), "hi");
    }
}
