//! The distribution registry (`/usr/bin/docker-registry serve CONFIG`, 2.8 on Debian
//! bookworm) with filesystem storage in a temporary directory, in one of three auth
//! modes, and its access log read back as the record of what it sent.
//!
//! The access log (combined log format, one line per request) is the registry's own
//! account of blob bytes: `GET /v2/NAME/blobs/sha256:… HTTP/1.1" 200 BYTES`. It is
//! written when a response completes, so read it after the client has finished.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use super::{Proc, free_port, until};

/// How the registry authenticates clients.
#[derive(Debug, Clone)]
pub enum Auth {
    None,
    /// Basic auth against an htpasswd file of bcrypt lines.
    Htpasswd {
        users: Vec<(String, String)>,
    },
    /// Bearer tokens from the token server at `realm`, signed by the key whose
    /// self-signed certificate is `cert_pem`.
    Token {
        realm: String,
        service: String,
        issuer: String,
        cert_pem: String,
    },
}

/// One access-log line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Access {
    pub method: String,
    pub path: String,
    pub status: u16,
    pub bytes: u64,
}

/// A running registry.
#[derive(Debug)]
pub struct Registry {
    pub addr: SocketAddr,
    /// The storage root (`docker/registry/v2/blobs/sha256/xx/HEX/data` below it).
    pub root: PathBuf,
    log: PathBuf,
    proc: Proc,
    _dir: tempfile::TempDir,
}

impl Access {
    /// Whether this is a blob download that sent blob bytes (`GET …/blobs/sha256:…`
    /// answered `200` or `206`; a refusal's bytes are its error body).
    pub fn is_blob_get(&self) -> bool {
        self.method == "GET"
            && self.path.contains("/blobs/sha256:")
            && matches!(self.status, 200 | 206)
    }
}

impl Registry {
    /// Starts the registry on `ip` (a free port) and waits until `/v2/` answers.
    pub async fn start(ip: &str, auth: &Auth) -> anyhow::Result<Self> {
        let dir = tempfile::tempdir()?;
        let addr = free_port(ip)?;
        let root = dir.path().join("storage");
        let auth_yaml = match auth {
            Auth::None => String::new(),
            Auth::Htpasswd { users } => {
                let file = dir.path().join("htpasswd");
                let mut lines = String::new();
                for (u, p) in users {
                    lines += &bcrypt_line(u, p).await?;
                }
                std::fs::write(&file, lines)?;
                format!(
                    "auth:\n  htpasswd:\n    realm: shoal-test\n    path: {}\n",
                    file.display()
                )
            }
            Auth::Token {
                realm,
                service,
                issuer,
                cert_pem,
            } => {
                let file = dir.path().join("token-ca.pem");
                std::fs::write(&file, cert_pem)?;
                format!(
                    "auth:\n  token:\n    realm: {realm}\n    service: {service}\n    issuer: {issuer}\n    rootcertbundle: {}\n",
                    file.display()
                )
            }
        };
        let config = format!(
            "version: 0.1\nlog:\n  level: info\n  accesslog:\n    disabled: false\n\
             storage:\n  filesystem:\n    rootdirectory: {}\n  maintenance:\n    uploadpurging:\n      enabled: false\n\
             http:\n  addr: {addr}\n  secret: shoal-test-secret\n{auth_yaml}",
            root.display()
        );
        let cfg = dir.path().join("config.yml");
        std::fs::write(&cfg, config)?;
        let log = dir.path().join("registry.log");
        let mut cmd = Command::new("docker-registry");
        cmd.arg("serve").arg(&cfg);
        let mut proc = Proc::spawn(cmd, &log)?;
        let url = format!("http://{addr}/v2/");
        let up = until(Duration::from_secs(15), || {
            let url = url.clone();
            async move {
                crate::client::request(addr, http::Method::GET, &url, &[])
                    .await
                    .is_ok_and(|r| r.status == 200 || r.status == 401)
            }
        })
        .await;
        if !up || !proc.alive() {
            anyhow::bail!(
                "docker-registry did not come up on {addr}: {}",
                std::fs::read_to_string(&log).unwrap_or_default()
            );
        }
        Ok(Registry {
            addr,
            root,
            log,
            proc,
            _dir: dir,
        })
    }

    /// `host:port`, as it appears in image references.
    pub fn host(&self) -> String {
        self.addr.to_string()
    }

    /// Every request logged so far.
    pub fn accesses(&self) -> Vec<Access> {
        std::fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
            .filter_map(parse_access)
            .collect()
    }

    /// Bytes sent in blob downloads so far.
    pub fn blob_bytes(&self) -> u64 {
        self.accesses()
            .iter()
            .filter(|a| a.is_blob_get())
            .map(|a| a.bytes)
            .sum()
    }

    /// The file holding blob `hex` in the registry's storage.
    pub fn blob_path(&self, hex: &str) -> Option<PathBuf> {
        let p = self
            .root
            .join("docker/registry/v2/blobs/sha256")
            .join(hex.get(..2)?)
            .join(hex)
            .join("data");
        p.is_file().then_some(p)
    }

    /// The registry's log so far (for failure messages).
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Whether the process still runs.
    pub fn alive(&mut self) -> bool {
        self.proc.alive()
    }
}

/// `user:$2y$…` for an htpasswd file, from `htpasswd -nbB` (apache2-utils).
async fn bcrypt_line(user: &str, pass: &str) -> anyhow::Result<String> {
    let mut cmd = Command::new("htpasswd");
    cmd.args(["-nbB", "-C", "4", user, pass]);
    let out = super::run(cmd, Duration::from_secs(20)).await?;
    Ok(format!("{}\n", out.trim()))
}

/// `127.0.0.1 - - [date] "GET /path HTTP/1.1" 200 1234 "" "agent"`.
fn parse_access(line: &str) -> Option<Access> {
    let (_, rest) = line.split_once("] \"")?;
    let (request, rest) = rest.split_once("\" ")?;
    let mut req = request.split(' ');
    let method = req.next()?.to_owned();
    let path = req.next()?.to_owned();
    let mut nums = rest.split(' ');
    let status = nums.next()?.parse().ok()?;
    let bytes = nums.next()?.parse().unwrap_or(0);
    Some(Access {
        method,
        path,
        status,
        bytes,
    })
}

/// Pushes OCI layout `layout` (tag `tag`) to `dest` (`HOST/NAME:TAG`) with skopeo.
pub async fn push(layout: &Path, tag: &str, dest: &str, creds: Option<&str>) -> anyhow::Result<()> {
    let mut cmd = Command::new("skopeo");
    cmd.args(["copy", "--dest-tls-verify=false"]);
    if let Some(c) = creds {
        cmd.args(["--dest-creds", c]);
    }
    cmd.arg(format!("oci:{}:{tag}", layout.display()))
        .arg(format!("docker://{dest}"));
    super::run(cmd, Duration::from_secs(60)).await.map(drop)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn access_line() {
        let l = r#"127.0.0.1 - - [01/Dec/2026:13:46:43 +0000] "GET /v2/demo/app/blobs/sha256:14cd HTTP/1.1" 200 200245 "" "containerd/1.6.20~ds1""#;
        let a = parse_access(l).unwrap();
        assert!(a.is_blob_get());
        assert_eq!((a.status, a.bytes), (200, 200245));
        assert!(parse_access("time=\"x\" level=info msg=\"response completed\"").is_none());
    }
}
