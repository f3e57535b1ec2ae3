//! `containerd` (1.6 on Debian bookworm) with its own root, state and socket in a
//! temporary directory (the CRI plugin off: no kubelet here), driven with `ctr`.
//!
//! Pulls use `ctr images pull --hosts-dir DIR`, which reads `DIR/HOST/hosts.toml` as
//! containerd's CRI does from its `config_path`. [`hosts_dir`] writes one whose
//! fallback `server` is a closed port, so a pull that does not go through the mirror
//! fails instead of quietly reaching the registry.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use super::{Proc, run, until};

/// A running containerd.
#[derive(Debug)]
pub struct Containerd {
    sock: PathBuf,
    log: PathBuf,
    _proc: Proc,
    dir: tempfile::TempDir,
}

impl Containerd {
    /// Starts containerd and waits until `ctr version` reaches it.
    pub async fn start() -> anyhow::Result<Self> {
        let dir = tempfile::tempdir()?;
        let d = dir.path();
        let sock = d.join("containerd.sock");
        let config = format!(
            r#"version = 2
root = "{root}"
state = "{state}"
disabled_plugins = ["io.containerd.grpc.v1.cri", "io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.devmapper"]
[grpc]
  address = "{sock}"
[ttrpc]
  address = "{sock}.ttrpc"
[debug]
  address = ""
[metrics]
  address = ""
# Read by `shoal-agent containerd-config` (the CRI plugin that would use it is off;
# ctr takes --hosts-dir instead).
[plugins."io.containerd.grpc.v1.cri".registry]
  config_path = "{certs}"
"#,
            certs = d.join("certs.d").display(),
            root = d.join("root").display(),
            state = d.join("state").display(),
            sock = sock.display(),
        );
        let cfg = d.join("config.toml");
        std::fs::write(&cfg, config)?;
        let log = d.join("containerd.log");
        let mut cmd = Command::new("containerd");
        cmd.arg("--config").arg(&cfg);
        let proc = Proc::spawn(cmd, &log)?;
        let c = Containerd {
            sock,
            log,
            _proc: proc,
            dir,
        };
        let up = until(Duration::from_secs(20), || async {
            c.ctr(&["version"], Duration::from_secs(5)).await.is_ok()
        })
        .await;
        if !up {
            anyhow::bail!("containerd did not come up: {}", c.log());
        }
        Ok(c)
    }

    /// Runs `ctr --address SOCK ARGS…`.
    pub async fn ctr(&self, args: &[&str], deadline: Duration) -> anyhow::Result<String> {
        let mut cmd = Command::new("ctr");
        cmd.arg("--address").arg(&self.sock).args(args);
        run(cmd, deadline).await
    }

    /// `ctr images pull --hosts-dir HOSTS [--user CREDS] REFERENCE` (unpacked too).
    pub async fn pull(
        &self,
        reference: &str,
        hosts: &Path,
        creds: Option<&str>,
    ) -> anyhow::Result<String> {
        let hosts = hosts.display().to_string();
        let mut args = vec!["images", "pull", "--hosts-dir", hosts.as_str()];
        if let Some(c) = creds {
            args.extend(["--user", c]);
        }
        args.push(reference);
        self.ctr(&args, Duration::from_secs(120)).await
    }

    /// `ctr content fetch --hosts-dir HOSTS REFERENCE`: every blob of the image for
    /// this platform into the content store, nothing unpacked.
    pub async fn fetch(&self, reference: &str, hosts: &Path) -> anyhow::Result<String> {
        let hosts = hosts.display().to_string();
        let args = ["content", "fetch", "--hosts-dir", hosts.as_str(), reference];
        self.ctr(&args, Duration::from_secs(120)).await
    }

    /// Removes the image record, if any, and every blob in `digests`.
    pub async fn purge(&self, reference: &str, digests: &BTreeSet<String>) -> anyhow::Result<()> {
        let _ = self
            .ctr(
                &["images", "rm", "--sync", reference],
                Duration::from_secs(30),
            )
            .await;
        let mut args = vec!["content", "rm"];
        args.extend(digests.iter().map(String::as_str));
        let _ = self.ctr(&args, Duration::from_secs(30)).await;
        Ok(())
    }

    /// Removes the image and garbage-collects its content (`images rm --sync`), so
    /// the next pull starts from an empty content store.
    pub async fn forget(&self, reference: &str) -> anyhow::Result<()> {
        self.ctr(
            &["images", "rm", "--sync", reference],
            Duration::from_secs(30),
        )
        .await?;
        Ok(())
    }

    /// Digests in the content store (`ctr content ls -q`).
    pub async fn content(&self) -> anyhow::Result<BTreeSet<String>> {
        let out = self
            .ctr(&["content", "ls", "-q"], Duration::from_secs(30))
            .await?;
        Ok(out
            .lines()
            .map(|l| l.trim().to_owned())
            .filter(|l| !l.is_empty())
            .collect())
    }

    /// The target digest of image `reference` (`ctr images ls`).
    pub async fn image_digest(&self, reference: &str) -> anyhow::Result<Option<String>> {
        let out = self.ctr(&["images", "ls"], Duration::from_secs(30)).await?;
        Ok(out.lines().find_map(|l| {
            let mut f = l.split_whitespace();
            (f.next() == Some(reference))
                .then(|| f.nth(1).map(str::to_owned))
                .flatten()
        }))
    }

    /// containerd's log so far (for failure messages).
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// containerd's `config.toml`.
    pub fn config_file(&self) -> PathBuf {
        self.dir.path().join("config.toml")
    }

    /// The registry `config_path` its `config.toml` names (not created).
    pub fn certs_dir(&self) -> PathBuf {
        self.dir.path().join("certs.d")
    }

    /// A scratch directory that lives as long as this containerd.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

/// Writes `DIR/REGISTRY/hosts.toml` sending pulls and resolves of `registry`
/// (`host:port`) to `mirror` (e.g. `http://AGENT/m/NAME`), with an unreachable
/// fallback server, and returns `DIR`.
pub fn hosts_dir(dir: &Path, registry: &str, mirror: &str) -> std::io::Result<PathBuf> {
    let d = dir.join(registry);
    std::fs::create_dir_all(&d)?;
    std::fs::write(
        d.join("hosts.toml"),
        format!(
            "# fallback: a closed port, so only the mirror can serve\n\
             server = \"http://127.0.0.1:1\"\n\n\
             [host.\"{mirror}\"]\n  capabilities = [\"pull\", \"resolve\"]\n"
        ),
    )?;
    Ok(dir.to_path_buf())
}
