//! containerd wiring: `shoal-agent containerd-config` writes, for every `[[mirrors]]`
//! entry with a `registry`, `CERTS_DIR/REGISTRY/hosts.toml` sending that registry's
//! pulls to this agent's `/m/NAME` (falling back to the registry itself), and
//! `/ready` reports whether each of those files still names this agent ([`Wiring`]).
//!
//! `CERTS_DIR` is the registry `config_path` of containerd's `config.toml`
//! ([`config_path`]), or `containerd.certs_dir`, which must then be one of its
//! directories. A `config.toml` without `config_path` fails the command, saying so:
//! containerd would ignore the files. Only with `certs_dir` set may `config.toml` be
//! absent (containerd 2.x defaults `config_path` to `/etc/containerd/certs.d`; 1.x
//! has no default, and this cannot tell which one runs). No
//! containerd restart is needed: containerd reads `hosts.toml` at every pull. What it
//! does not do: remove files of registries no longer configured (they may be the
//! operator's own), or edit containerd's `config.toml`.

pub mod cli;
pub mod config_path;
pub mod hosts;

use std::net::SocketAddr;
use std::path::PathBuf;

use crate::config::Config;
use hosts::{HostsFile, Wired, Written};

/// Why `containerd-config` wrote nothing (the operator's to fix; never retried).
#[derive(Debug, thiserror::Error)]
pub enum WiringError {
    #[error("containerd config {path}: cannot read it: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("containerd config {path}: {source}")]
    ConfigPath {
        path: PathBuf,
        source: config_path::ConfigPathError,
    },
    #[error(
        "containerd config {path} reads hosts files from {config_path}, not from containerd.certs_dir {certs_dir}"
    )]
    Mismatch {
        path: PathBuf,
        config_path: String,
        certs_dir: PathBuf,
    },
    #[error(
        "no [[mirrors]] entry has a registry = \"HOST\" (e.g. registry = \"docker.io\"): nothing to write"
    )]
    NoRegistries,
    #[error("cannot write {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// The hosts files this configuration stands for, and where they go.
#[derive(Debug, Clone)]
pub struct Wiring {
    pub certs_dir: PathBuf,
    pub files: Vec<HostsFile>,
}

/// One line per registry: what was done.
#[derive(Debug, Clone)]
pub struct Report {
    pub path: PathBuf,
    pub outcome: Written,
}

impl Wiring {
    /// The files for `cfg`'s registry mirrors, under `certs_dir`.
    pub fn new(cfg: &Config, certs_dir: PathBuf) -> Self {
        let agent = agent_url(cfg);
        let files = cfg
            .mirrors
            .iter()
            .filter_map(|m| {
                Some(HostsFile {
                    registry: m.registry.clone()?,
                    server: m.upstream.trim_end_matches('/').to_owned(),
                    mirror: format!("{}/m/{}", agent.trim_end_matches('/'), m.name),
                })
            })
            .collect();
        Wiring { certs_dir, files }
    }

    /// What `/ready` checks: `cfg`'s files under `containerd.certs_dir`, when it is
    /// set and some mirror has a `registry`.
    pub fn for_ready(cfg: &Config) -> Option<Self> {
        let w = Self::new(cfg, cfg.containerd.certs_dir.clone()?);
        (!w.files.is_empty()).then_some(w)
    }

    /// `containerd-config`: resolves the hosts directory and writes every file.
    pub fn write_all(cfg: &Config) -> Result<Vec<Report>, WiringError> {
        let certs_dir = certs_dir(cfg)?;
        let w = Self::new(cfg, certs_dir);
        if w.files.is_empty() {
            return Err(WiringError::NoRegistries);
        }
        w.files
            .iter()
            .map(|f| {
                let path = f.path(&w.certs_dir);
                match f.write(&w.certs_dir) {
                    Ok(outcome) => Ok(Report { path, outcome }),
                    Err(source) => Err(WiringError::Write { path, source }),
                }
            })
            .collect()
    }

    /// Each registry and whether it is wired, for `/ready`.
    pub fn check(&self) -> Vec<(&HostsFile, Wired)> {
        self.files
            .iter()
            .map(|f| (f, f.wired(&self.certs_dir)))
            .collect()
    }

    /// `/ready`'s lines: `containerd REGISTRY: wired (PATH)` or why not.
    pub fn status_lines(&self) -> String {
        let mut out = String::new();
        for (f, w) in self.check() {
            let path = f.path(&self.certs_dir);
            let p = path.display();
            let line = match w {
                Wired::Yes => format!("containerd {}: wired ({p})\n", f.registry),
                Wired::Missing => format!(
                    "containerd {}: NOT wired: no {p} (run shoal-agent containerd-config)\n",
                    f.registry
                ),
                Wired::Elsewhere => format!(
                    "containerd {}: NOT wired: {p} does not name {}\n",
                    f.registry, f.mirror
                ),
                Wired::Unreadable(e) => {
                    format!("containerd {}: NOT wired: {p}: {e}\n", f.registry)
                }
            };
            out.push_str(&line);
        }
        out
    }
}

/// `containerd.agent_url`, else `http://` + `proxy.listen` (unspecified → loopback).
pub fn agent_url(cfg: &Config) -> String {
    if let Some(u) = &cfg.containerd.agent_url {
        return u.trim_end_matches('/').to_owned();
    }
    let l = cfg.proxy.listen;
    let ip = match l.ip() {
        std::net::IpAddr::V4(v) if v.is_unspecified() => std::net::Ipv4Addr::LOCALHOST.into(),
        std::net::IpAddr::V6(v) if v.is_unspecified() => std::net::Ipv6Addr::LOCALHOST.into(),
        ip => ip,
    };
    format!("http://{}", SocketAddr::new(ip, l.port()))
}

/// The hosts directory to write: see the module docs.
fn certs_dir(cfg: &Config) -> Result<PathBuf, WiringError> {
    let file = &cfg.containerd.config_file;
    let wanted = cfg.containerd.certs_dir.as_ref();
    let text = match std::fs::read_to_string(file) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && wanted.is_some() => {
            return Ok(wanted.cloned().unwrap_or_default());
        }
        Err(source) => {
            return Err(WiringError::Read {
                path: file.clone(),
                source,
            });
        }
    };
    let dirs = config_path::config_path(&text).map_err(|source| WiringError::ConfigPath {
        path: file.clone(),
        source,
    })?;
    match wanted {
        None => Ok(dirs[0].clone()),
        Some(w) if dirs.contains(w) => Ok(w.clone()),
        Some(w) => Err(WiringError::Mismatch {
            path: file.clone(),
            config_path: dirs
                .iter()
                .map(|d| d.display().to_string())
                .collect::<Vec<_>>()
                .join(":"),
            certs_dir: w.clone(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    use crate::config::Mirror;

    fn cfg(dir: &Path) -> Config {
        let mut c = Config::default();
        c.proxy.listen = "0.0.0.0:7480".parse().unwrap();
        c.mirrors = vec![
            Mirror {
                name: "hub".into(),
                upstream: "https://registry-1.docker.io/".into(),
                registry: Some("docker.io".parse().unwrap()),
                ..Mirror::default()
            },
            Mirror {
                name: "deb".into(),
                upstream: "https://deb.debian.org".into(),
                ..Mirror::default()
            },
        ];
        c.containerd.config_file = dir.join("config.toml");
        c
    }

    #[test]
    fn writes_from_config_path_and_reports_wiring() {
        let d = tempfile::tempdir().unwrap();
        let mut c = cfg(d.path());
        let certs = d.path().join("certs.d");
        std::fs::write(
            &c.containerd.config_file,
            format!(
                "version = 2\n[plugins.\"io.containerd.grpc.v1.cri\".registry]\n  config_path = \"{}\"\n",
                certs.display()
            ),
        )
        .unwrap();
        let r = Wiring::write_all(&c).unwrap();
        assert_eq!(r.len(), 1, "only the mirror with a registry");
        assert_eq!(r[0].path, certs.join("docker.io/hosts.toml"));
        assert_eq!(r[0].outcome, Written::Created);
        let text = std::fs::read_to_string(&r[0].path).unwrap();
        assert!(
            text.contains("server = \"https://registry-1.docker.io\"\n"),
            "{text}"
        );
        assert!(
            text.contains("[host.\"http://127.0.0.1:7480/m/hub\"]"),
            "{text}"
        );

        assert!(Wiring::for_ready(&c).is_none(), "no certs_dir: not checked");
        c.containerd.certs_dir = Some(certs.clone());
        let lines = Wiring::for_ready(&c).unwrap().status_lines();
        assert!(
            lines.starts_with("containerd docker.io: wired ("),
            "{lines}"
        );
        c.containerd.agent_url = Some("http://10.1.2.3:7480".into());
        let lines = Wiring::for_ready(&c).unwrap().status_lines();
        assert!(
            lines.contains("NOT wired")
                && lines.contains("does not name http://10.1.2.3:7480/m/hub"),
            "{lines}"
        );
    }

    #[test]
    fn says_why_it_cannot() {
        let d = tempfile::tempdir().unwrap();
        let mut c = cfg(d.path());
        let e = Wiring::write_all(&c).unwrap_err().to_string();
        assert!(e.contains("cannot read"), "{e}");
        std::fs::write(&c.containerd.config_file, "version = 2\n").unwrap();
        let e = Wiring::write_all(&c).unwrap_err().to_string();
        assert!(e.contains("config_path is not set"), "{e}");
        assert!(!e.contains('\n'), "one line: {e}");
        let certs = d.path().join("certs.d");
        std::fs::write(
            &c.containerd.config_file,
            format!(
                "[plugins.\"io.containerd.cri.v1.images\".registry]\nconfig_path = \"/etc/containerd/certs.d:{}\"\n",
                certs.display()
            ),
        )
        .unwrap();
        c.containerd.certs_dir = Some(d.path().join("elsewhere"));
        let e = Wiring::write_all(&c).unwrap_err().to_string();
        assert!(e.contains("not from containerd.certs_dir"), "{e}");
        c.containerd.certs_dir = Some(certs.clone());
        assert_eq!(
            Wiring::write_all(&c).unwrap().len(),
            1,
            "a later directory of the list"
        );
        // Without containerd's config file, certs_dir alone is enough.
        std::fs::remove_file(&c.containerd.config_file).unwrap();
        assert_eq!(
            Wiring::write_all(&c).unwrap()[0].outcome,
            Written::Unchanged
        );
        c.mirrors.retain(|m| m.registry.is_none());
        assert!(matches!(
            Wiring::write_all(&c),
            Err(WiringError::NoRegistries)
        ));
    }
}
