//! The origin: a random object of the scenario's size served by nginx (Debian package)
//! from the origin namespace. nginx's access log records the body bytes of every
//! response, which is the origin egress we report for HTTP-based systems.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, bail};

use super::cleanup::Registry;
use super::netns::Node;
use super::proc::{Proc, run, wait_until};

/// Name of the object file (and URL path) on the origin.
pub const OBJECT_NAME: &str = "release.bin";

/// The object every node downloads.
#[derive(Debug, Clone)]
pub struct Object {
    pub path: PathBuf,
    pub bytes: u64,
    pub blake3: blake3::Hash,
}

impl Object {
    /// Write `bytes` pseudo-random bytes (BLAKE3 XOF of `seed`) to `dir/release.bin`.
    pub fn generate(dir: &Path, bytes: u64, seed: &str) -> Result<Self> {
        std::fs::create_dir_all(dir)?;
        let path = dir.join(OBJECT_NAME);
        let mut file = std::io::BufWriter::new(std::fs::File::create(&path)?);
        let mut xof = blake3::Hasher::new_derive_key("shoal fleet benchmark object")
            .update(seed.as_bytes())
            .finalize_xof();
        let mut hasher = blake3::Hasher::new();
        let mut buf = vec![0u8; 1 << 20];
        let mut left = bytes;
        while left > 0 {
            let n = left.min(buf.len() as u64) as usize;
            xof.fill(&mut buf[..n]);
            hasher.update(&buf[..n]);
            file.write_all(&buf[..n])?;
            left -= n as u64;
        }
        file.flush()?;
        Ok(Self {
            path,
            bytes,
            blake3: hasher.finalize(),
        })
    }

    /// Whether the file at `path` has exactly this object's bytes.
    pub fn matches(&self, path: &Path) -> bool {
        let Ok(meta) = std::fs::metadata(path) else {
            return false;
        };
        if meta.len() != self.bytes {
            return false;
        }
        let Ok(mut file) = std::fs::File::open(path) else {
            return false;
        };
        let mut hasher = blake3::Hasher::new();
        std::io::copy(&mut file, &mut hasher).is_ok() && hasher.finalize() == self.blake3
    }
}

/// The URL of the object on `origin`.
pub fn url(origin: &Node) -> String {
    format!("http://{}/{OBJECT_NAME}", origin.ip)
}

/// A running nginx. Stopping it (drop) flushes its access log.
#[derive(Debug)]
pub struct Nginx {
    proc: Proc,
    access_log: PathBuf,
}

impl Nginx {
    /// Start nginx in `origin`'s namespace serving `root` on port 80, with its
    /// configuration, logs and temporary files under `dir`.
    pub fn start(registry: &Registry, origin: &Node, root: &Path, dir: &Path) -> Result<Self> {
        let nginx = find_nginx()?;
        std::fs::create_dir_all(dir)?;
        let access_log = dir.join("access.log");
        let conf = dir.join("nginx.conf");
        let d = dir.display();
        let access = format!("{} fleet", access_log.display());
        std::fs::write(
            &conf,
            format!(
                r#"daemon off;
master_process on;
worker_processes 1;
user root;
pid {d}/nginx.pid;
error_log {d}/error.log warn;
events {{ worker_connections 4096; }}
http {{
    log_format fleet '$status $body_bytes_sent "$request" "$http_range" $request_time';
    access_log {access};
    client_body_temp_path {d}/body;
    proxy_temp_path {d}/proxy;
    fastcgi_temp_path {d}/fastcgi;
    uwsgi_temp_path {d}/uwsgi;
    scgi_temp_path {d}/scgi;
    sendfile on;
    tcp_nopush on;
    keepalive_requests 100000;
    server {{
        listen {ip}:80 backlog=4096;
        root {root};
        location / {{ }}
    }}
}}
"#,
                ip = origin.ip,
                root = root.display(),
            ),
        )?;
        let log = dir.join("nginx.out");
        let conf_s = conf.display().to_string();
        let proc = Proc::spawn(
            registry,
            "nginx",
            Some(&origin.ns),
            &nginx,
            ["-c", conf_s.as_str(), "-p", &d.to_string()],
            &log,
            &[],
        )?;
        let mut this = Self { proc, access_log };
        let probe = format!("http://{}/", origin.ip);
        wait_until("nginx to listen", Duration::from_secs(10), || {
            if let Some((status, _)) = this.proc.poll() {
                bail!(
                    "nginx exited ({status}): {}",
                    std::fs::read_to_string(&log).unwrap_or_default()
                );
            }
            Ok(run(
                Some(&origin.ns),
                "curl",
                &["-s", "-o", "/dev/null", "--max-time", "1", &probe],
            )
            .is_ok())
        })?;
        // The probe is in the log; start counting after it.
        let _ = std::fs::write(&this.access_log, b"");
        this.proc.started = std::time::SystemTime::now();
        Ok(this)
    }

    /// Stop nginx and return the body bytes it sent (sum over the access log) and the
    /// number of requests.
    pub fn finish(mut self) -> Result<(u64, usize)> {
        self.proc.stop();
        let text = std::fs::read_to_string(&self.access_log)
            .with_context(|| format!("reading {}", self.access_log.display()))?;
        Ok(parse_access_log(&text))
    }
}

/// Sum `$body_bytes_sent` (second field) over all lines of a `fleet`-format log.
pub fn parse_access_log(text: &str) -> (u64, usize) {
    let mut bytes = 0;
    let mut requests = 0;
    for line in text.lines() {
        if let Some(b) = line
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse::<u64>().ok())
        {
            bytes += b;
            requests += 1;
        }
    }
    (bytes, requests)
}

fn find_nginx() -> Result<PathBuf> {
    for p in ["/usr/sbin/nginx", "/usr/bin/nginx"] {
        if Path::new(p).exists() {
            return Ok(PathBuf::from(p));
        }
    }
    bail!("nginx not found (apt-get install nginx-light, or run without --no-install)")
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn object_is_deterministic_and_verifiable() {
        let dir = tempfile::tempdir().unwrap();
        let a = Object::generate(&dir.path().join("a"), 3 << 20 | 5, "seed").unwrap();
        let b = Object::generate(&dir.path().join("b"), 3 << 20 | 5, "seed").unwrap();
        assert_eq!(a.blake3, b.blake3);
        assert!(a.matches(&b.path));
        let c = Object::generate(&dir.path().join("c"), 3 << 20 | 5, "other").unwrap();
        assert!(!a.matches(&c.path));
        std::fs::write(dir.path().join("short"), b"abc").unwrap();
        assert!(!a.matches(&dir.path().join("short")));
    }

    #[test]
    fn access_log_sums_body_bytes() {
        let log = "200 100 \"GET /x HTTP/1.1\" \"-\" 0.1\n206 50 \"GET /x HTTP/1.1\" \"bytes=0-49\" 0.0\n";
        assert_eq!(parse_access_log(log), (150, 2));
    }
}
