//! One registry's `hosts.toml` (containerd's registry host configuration): written
//! whole and atomically, and checked for `/ready`.
//!
//! containerd reads `CERTS_DIR/HOST/hosts.toml` at every pull, so a written file takes
//! effect at the next pull without a restart; a torn file would fail pulls, hence the
//! write to a temporary name in the same directory, `fsync`, then `rename`.

use std::io::Write;
use std::path::{Path, PathBuf};

use crate::registries::RegistryHost;

/// What `hosts.toml` of one registry says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostsFile {
    pub registry: RegistryHost,
    /// The registry itself (containerd's fallback when the agent fails).
    pub server: String,
    /// The agent's mirror URL for this registry (`AGENT/m/NAME`).
    pub mirror: String,
}

/// The outcome of writing one file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Written {
    Created,
    Updated,
    Unchanged,
}

/// Whether a registry's pulls go through this agent, as `/ready` reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Wired {
    Yes,
    /// No `hosts.toml` for the registry.
    Missing,
    /// A `hosts.toml` that does not name this agent's mirror URL.
    Elsewhere,
    /// It could not be read.
    Unreadable(String),
}

impl HostsFile {
    /// `CERTS_DIR/HOST/hosts.toml`.
    pub fn path(&self, certs_dir: &Path) -> PathBuf {
        certs_dir.join(self.registry.as_str()).join("hosts.toml")
    }

    /// The file's text.
    pub fn render(&self) -> String {
        format!(
            "# Written by `shoal-agent containerd-config` (rewritten on every run; edit the\n\
             # agent's [[mirrors]] instead). Pulls of {reg} go to the node's Shoal agent\n\
             # first; if it fails, containerd falls back to the registry itself (server).\n\
             server = \"{server}\"\n\
             \n\
             [host.\"{mirror}\"]\n  \
             capabilities = [\"pull\", \"resolve\"]\n",
            reg = self.registry,
            server = self.server,
            mirror = self.mirror,
        )
    }

    /// Writes the file under `certs_dir` (creating `HOST/`) unless it already says
    /// exactly this.
    pub fn write(&self, certs_dir: &Path) -> std::io::Result<Written> {
        let path = self.path(certs_dir);
        let text = self.render();
        let before = match std::fs::read_to_string(&path) {
            Ok(t) if t == text => return Ok(Written::Unchanged),
            Ok(_) => Written::Updated,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Written::Created,
            Err(e) => return Err(e),
        };
        let dir = certs_dir.join(self.registry.as_str());
        std::fs::create_dir_all(&dir)?;
        let tmp = dir.join(format!(".hosts.toml.shoal-{}", std::process::id()));
        let res = (|| {
            let mut f = std::fs::File::create(&tmp)?;
            f.write_all(text.as_bytes())?;
            f.sync_all()?;
            std::fs::rename(&tmp, &path)?;
            // The rename itself is durable once the directory is synced.
            std::fs::File::open(&dir)?.sync_all()
        })();
        if res.is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
        res.map(|()| before)
    }

    /// Whether the file under `certs_dir` sends this registry's pulls to `mirror`:
    /// it has a `[host."MIRROR"]` table (parsed as TOML, not searched as text).
    pub fn wired(&self, certs_dir: &Path) -> Wired {
        let text = match std::fs::read_to_string(self.path(certs_dir)) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Wired::Missing,
            Err(e) => return Wired::Unreadable(e.to_string()),
        };
        let doc: toml::Table = match text.parse() {
            Ok(d) => d,
            Err(e) => return Wired::Unreadable(format!("not TOML: {e}")),
        };
        let names = |t: &toml::Value| {
            t.as_table().is_some_and(|h| {
                h.keys()
                    .any(|k| k.trim_end_matches('/') == self.mirror.trim_end_matches('/'))
            })
        };
        if doc.get("host").is_some_and(names) {
            Wired::Yes
        } else {
            Wired::Elsewhere
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(mirror: &str) -> HostsFile {
        HostsFile {
            registry: "docker.io".parse().unwrap(),
            server: "https://registry-1.docker.io".into(),
            mirror: mirror.into(),
        }
    }

    #[test]
    fn write_is_idempotent_and_checked() {
        let d = tempfile::tempdir().unwrap();
        let f = file("http://127.0.0.1:7480/m/hub");
        assert_eq!(f.wired(d.path()), Wired::Missing);
        assert_eq!(f.write(d.path()).unwrap(), Written::Created);
        assert_eq!(f.write(d.path()).unwrap(), Written::Unchanged);
        assert_eq!(f.wired(d.path()), Wired::Yes);
        let text = std::fs::read_to_string(d.path().join("docker.io/hosts.toml")).unwrap();
        let doc: toml::Table = text.parse().unwrap();
        assert_eq!(doc["server"].as_str(), Some("https://registry-1.docker.io"));
        assert_eq!(
            doc["host"]["http://127.0.0.1:7480/m/hub"]["capabilities"]
                .as_array()
                .map(Vec::len),
            Some(2)
        );
        let other = file("http://10.0.0.1:7480/m/hub");
        assert_eq!(other.wired(d.path()), Wired::Elsewhere);
        assert_eq!(other.write(d.path()).unwrap(), Written::Updated);
        assert_eq!(f.wired(d.path()), Wired::Elsewhere);
        // No temporary file left behind.
        let names: Vec<_> = std::fs::read_dir(d.path().join("docker.io"))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("hosts.toml")]);
    }
}
