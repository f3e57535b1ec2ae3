//! containerd wiring: `shoal-agent containerd-config` writes, for every `[[mirrors]]`
//! entry with a `registry`, `CERTS_DIR/REGISTRY/hosts.toml` sending that registry's
//! pulls to this agent's `/m/NAME` (falling back to the registry itself), and
//! `/ready` reports whether each of those files still names this agent ([`Wiring`]).
//!
//! `CERTS_DIR` is `containerd.certs_dir`, else the registry `config_path` of
//! containerd's `config.toml` ([`config_path`]); when neither gives one the command
//! fails saying so, since containerd without `config_path` ignores hosts files. No
//! containerd restart is needed: containerd reads `hosts.toml` at every pull. What it
//! does not do: remove files of registries no longer configured (they may be the
//! operator's own), or edit containerd's `config.toml`.

pub mod cli;
pub mod config_path;
pub mod hosts;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

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
        let certs_dir = match &cfg.containerd.certs_dir {
            Some(d) => d.clone(),
            None => certs_dir_of(&cfg.containerd.config_file)?,
        };
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

/// The hosts directory containerd's config file names.
fn certs_dir_of(file: &Path) -> Result<PathBuf, WiringError> {
    let text = std::fs::read_to_string(file).map_err(|source| WiringError::Read {
        path: file.to_path_buf(),
        source,
    })?;
    config_path::config_path(&text).map_err(|source| WiringError::ConfigPath {
        path: file.to_path_buf(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
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
        c.mirrors.retain(|m| m.registry.is_none());
        c.containerd.certs_dir = Some(d.path().to_path_buf());
        assert!(matches!(
            Wiring::write_all(&c),
            Err(WiringError::NoRegistries)
        ));
    }
}
