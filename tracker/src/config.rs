//! The tracker's one typed configuration.
//!
//! Layers, lowest first: built-in defaults (the `Default` impls here) < `--config FILE`
//! (TOML) < environment `SHOAL_TRACKER__SECTION__KEY` < command-line flags (applied by
//! the binary through [`Config::load`]'s `overrides`). Unknown keys are errors that
//! name the key. Nothing else in the tracker reads files or the environment for
//! settings. Durations are humantime (`90s`, `250ms`), sizes are byte sizes (`4MiB`).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use bytesize::ByteSize;
use serde::Deserialize;

/// Why the configuration could not be loaded. Always the operator's to fix.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("configuration: {0}")]
    Load(#[from] config::ConfigError),
    #[error("configuration: {0}")]
    Invalid(String),
}

/// Most `server.threads`: a guard against a typo, far above any core count.
const MAX_THREADS: usize = 1024;

/// Everything the tracker can be told.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    pub server: ServerConfig,
    pub admin: AdminConfig,
    pub tls: TlsConfig,
    pub registry: RegistryConfig,
    pub limits: LimitsConfig,
}

/// The agents' listener (HTTPS, mutual TLS).
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServerConfig {
    /// Default `0.0.0.0:7490`.
    pub listen: SocketAddr,
    /// Threads serving agents' connections, each with its own single-threaded runtime:
    /// a connection stays on one thread for its life, so a request wakes one thread
    /// and never hands work to another. `0` (default): connections share the runtime
    /// the tracker was started on (the binary's: one work-stealing worker per core).
    /// Set it to the cores the tracker may use; see docs/operations.md.
    pub threads: usize,
}

/// The admin listener: `/metrics`, `/live`, `/ready` (plain HTTP).
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AdminConfig {
    /// Default `127.0.0.1:7491`. Expose it only to the scraper (pod IP, not a Service).
    pub listen: SocketAddr,
}

/// Fleet PKI (PEM files). All three are required by [`Config::load`]; a tracker
/// without a fleet certificate cannot authenticate agents.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TlsConfig {
    /// The fleet CA certificate; agents must present a certificate it signed.
    pub ca: Option<PathBuf>,
    /// The tracker's certificate chain.
    pub cert: Option<PathBuf>,
    /// The tracker's private key.
    pub key: Option<PathBuf>,
}

/// Soft-state lifetimes and reply sizes.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RegistryConfig {
    /// An agent not heard from for this long is forgotten, with everything it held.
    /// Default `90s`; keep it above 2× the agents' `tracker.announce_interval`.
    #[serde(with = "humantime_serde")]
    pub peer_ttl: Duration,
    /// An object no agent synced or announced for this long is forgotten (layout and
    /// chunk ids). Default `10m`; must not be below `peer_ttl`.
    #[serde(with = "humantime_serde")]
    pub object_ttl: Duration,
    /// An origin lease whose chunk is not announced within this time lapses and may be
    /// granted again. Default `10s`; raise it for slow origins or huge chunks.
    #[serde(with = "humantime_serde")]
    pub lease_ttl: Duration,
    /// Live origin leases one agent may hold per object. Default 2; lower spreads the
    /// origin's upload over more agents, higher lets a lone agent fetch faster.
    pub max_leases_per_agent: u32,
    /// Live origin leases per object, all agents together. Default 8. The origin's
    /// upload is shared by the chunks being fetched at once: fewer leases finish each
    /// chunk sooner, so peers start copying it sooner. Raise it when the origin's
    /// upload is far larger than one agent's download link.
    pub max_leases_per_object: u32,
    /// Peer hints per sync reply. Default 32.
    pub max_peers_per_reply: usize,
    /// Chunk ids per sync reply; a reply that stops short says `more` and the agent
    /// asks again at once with the new cursor. Default 8192 (about 0.6 MB of JSON).
    pub max_ids_per_reply: usize,
    /// Bytes of peer `have` bitmaps per sync reply (before base64). Peers past the
    /// budget are left out (at least one is always listed). Default `256KiB`.
    pub max_hint_bytes_per_reply: ByteSize,
    /// Chunk ids one agent may have first-published and still live in the registry,
    /// over all objects; publishes past it are ignored (and counted). Default 262144
    /// (256 GiB of content at 1 MiB chunks). A real agent publishes only what it hashed
    /// from origins within `object_ttl`; raise it for agents that fill more than that.
    pub max_published_per_agent: u64,
}

/// Protection against overload and misbehaving agents.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LimitsConfig {
    /// Sustained requests per second per agent (by certificate); more get 429.
    /// Default 50 (an agent syncing 5 objects every 200ms needs 25).
    pub requests_per_second: f64,
    /// Requests an agent may send in a burst above the sustained rate. Default 100.
    pub burst: u32,
    /// Largest request body; larger gets 413. Default `4MiB`.
    pub max_body_size: ByteSize,
    /// Time a client has for each request head. Default `10s`.
    #[serde(with = "humantime_serde")]
    pub header_read_timeout: Duration,
    /// Time a client has for the TLS handshake, from the accept. Default `3s` (a
    /// handshake takes one or two round trips); keep it below the agents'
    /// `tracker.timeout`.
    #[serde(with = "humantime_serde")]
    pub handshake_timeout: Duration,
    /// Time a client has to send a whole request body once its head is read; slower
    /// clients get `408` and the connection is closed. Default `10s`.
    #[serde(with = "humantime_serde")]
    pub body_timeout: Duration,
    /// Concurrent connections, handshaking or established. A connection accepted above
    /// it is closed at once (counted as `shed`), so the accept queue never backs up
    /// behind silent clients. Default 8192; keep it above the number of agents that use
    /// this replica (they keep connections open).
    pub max_connections: usize,
    /// Concurrent TLS handshakes; more are closed at once (`shed`). Default 256.
    /// Unauthenticated clients hold only these, for at most `handshake_timeout`.
    pub max_handshakes: usize,
    /// Concurrent connections from one source IP, checked before TLS; more are closed
    /// at once (`per_source`). Default 64; an agent uses one or two. Raise it when many
    /// agents reach the tracker through one NAT address.
    pub max_connections_per_source: usize,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([0, 0, 0, 0], 7490)),
            threads: 0,
        }
    }
}

impl Default for AdminConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 7491)),
        }
    }
}

impl Default for RegistryConfig {
    fn default() -> Self {
        Self {
            peer_ttl: Duration::from_secs(90),
            object_ttl: Duration::from_secs(600),
            lease_ttl: Duration::from_secs(10),
            max_leases_per_agent: 2,
            max_leases_per_object: 8,
            max_peers_per_reply: 32,
            max_ids_per_reply: 8192,
            max_hint_bytes_per_reply: ByteSize::kib(256),
            max_published_per_agent: 262_144,
        }
    }
}

impl Default for LimitsConfig {
    fn default() -> Self {
        Self {
            requests_per_second: 50.0,
            burst: 100,
            max_body_size: ByteSize::mib(4),
            header_read_timeout: Duration::from_secs(10),
            handshake_timeout: Duration::from_secs(3),
            body_timeout: Duration::from_secs(10),
            max_connections: 8192,
            max_handshakes: 256,
            max_connections_per_source: 64,
        }
    }
}

impl Config {
    /// Loads defaults < `file` < environment (`SHOAL_TRACKER__…`) < `overrides`
    /// (`("section.key", value)` pairs from command-line flags), then validates,
    /// including that `tls.ca`, `tls.cert` and `tls.key` are set.
    pub fn load(file: Option<&Path>, overrides: &[(&str, String)]) -> Result<Self, ConfigError> {
        Self::load_from_env(file, overrides, None)
    }

    /// As [`Config::load`], with the environment given explicitly (tests).
    pub fn load_from_env(
        file: Option<&Path>,
        overrides: &[(&str, String)],
        env: Option<HashMap<String, String>>,
    ) -> Result<Self, ConfigError> {
        let layers = shoal_node::config::Layers {
            file,
            overrides,
            env: env.as_ref(),
        };
        let cfg: Config =
            shoal_node::config::layered("SHOAL_TRACKER", &[], layers)?.try_deserialize()?;
        cfg.validate()?;
        cfg.tls.paths()?;
        Ok(cfg)
    }

    /// Cross-field checks that serde cannot express (TLS paths excepted: a tracker
    /// started in-process gets its identity directly).
    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad = |m: &str| Err(ConfigError::Invalid(m.to_owned()));
        if self.server.threads > MAX_THREADS {
            return Err(ConfigError::Invalid(format!(
                "server.threads must be at most {MAX_THREADS}"
            )));
        }
        let r = &self.registry;
        if r.peer_ttl.is_zero() || r.lease_ttl.is_zero() {
            return bad("registry.peer_ttl and registry.lease_ttl must be above zero");
        }
        if r.object_ttl < r.peer_ttl {
            return bad("registry.object_ttl must be at least registry.peer_ttl");
        }
        if r.max_peers_per_reply == 0 {
            return bad("registry.max_peers_per_reply must be at least 1");
        }
        let l = &self.limits;
        if !(l.requests_per_second.is_finite() && l.requests_per_second > 0.0) {
            return bad("limits.requests_per_second must be a positive number");
        }
        if l.burst == 0 {
            return bad("limits.burst must be at least 1");
        }
        if l.max_connections == 0 || l.max_handshakes == 0 || l.max_connections_per_source == 0 {
            return bad(
                "limits.max_connections, limits.max_handshakes and limits.max_connections_per_source must be at least 1",
            );
        }
        if l.handshake_timeout.is_zero() || l.body_timeout.is_zero() {
            return bad("limits.handshake_timeout and limits.body_timeout must be above zero");
        }
        if r.max_ids_per_reply == 0 {
            return bad("registry.max_ids_per_reply must be at least 1");
        }
        if l.max_body_size.as_u64() < 1024 {
            return bad("limits.max_body_size must be at least 1KiB");
        }
        Ok(())
    }
}

impl TlsConfig {
    /// `(ca, cert, key)`, or an error naming the first missing key.
    pub fn paths(&self) -> Result<(&Path, &Path, &Path), ConfigError> {
        fn need<'a>(p: &'a Option<PathBuf>, name: &str) -> Result<&'a Path, ConfigError> {
            p.as_deref()
                .ok_or_else(|| ConfigError::Invalid(format!("{name} is required (mutual TLS)")))
        }
        Ok((
            need(&self.ca, "tls.ca")?,
            need(&self.cert, "tls.cert")?,
            need(&self.key, "tls.key")?,
        ))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    fn tls_env() -> HashMap<String, String> {
        ["CA", "CERT", "KEY"]
            .into_iter()
            .map(|k| (format!("SHOAL_TRACKER__TLS__{k}"), format!("/x/{k}.pem")))
            .collect()
    }

    #[test]
    fn defaults_are_valid_but_tls_is_required() {
        let c = Config::load_from_env(None, &[], Some(tls_env())).unwrap();
        assert_eq!(c.server.listen, "0.0.0.0:7490".parse().unwrap());
        assert_eq!(c.admin.listen, "127.0.0.1:7491".parse().unwrap());
        assert_eq!(c.registry.max_peers_per_reply, 32);
        assert_eq!(c.registry.max_leases_per_agent, 2);
        let e = Config::load_from_env(None, &[], Some(HashMap::new()))
            .unwrap_err()
            .to_string();
        assert!(e.contains("tls.ca"), "{e}");
    }

    #[test]
    fn shipped_config_parses() {
        let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("../configs/tracker.toml");
        let c = Config::load_from_env(Some(&p), &[], Some(HashMap::new())).unwrap();
        assert_eq!(c.registry.peer_ttl, Duration::from_secs(90));
        assert_eq!(c.registry.lease_ttl, Duration::from_secs(10));
        assert_eq!(c.limits.max_body_size, ByteSize::mib(4));
        assert_eq!(c.limits.burst, 100);
        assert_eq!(c.server.threads, 0);
    }

    #[test]
    fn unknown_key_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("t.toml");
        std::fs::write(&p, "[registry]\npeer_tl = \"1s\"\n").unwrap();
        let e = Config::load_from_env(Some(&p), &[], Some(tls_env()))
            .unwrap_err()
            .to_string();
        assert!(e.contains("peer_tl"), "{e}");
    }

    #[test]
    fn layering_env_over_file_flags_over_env() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("t.toml");
        std::fs::write(
            &p,
            "[registry]\nlease_ttl = \"5s\"\nmax_leases_per_agent = 3\n[limits]\nburst = 7\n",
        )
        .unwrap();
        let mut env = tls_env();
        env.insert(
            "SHOAL_TRACKER__REGISTRY__MAX_LEASES_PER_AGENT".into(),
            "4".into(),
        );
        env.insert("SHOAL_TRACKER__SERVER__LISTEN".into(), "127.0.0.1:1".into());
        let c = Config::load_from_env(
            Some(&p),
            &[("server.listen", "127.0.0.2:2".into())],
            Some(env),
        )
        .unwrap();
        assert_eq!(c.registry.lease_ttl, Duration::from_secs(5));
        assert_eq!(c.registry.max_leases_per_agent, 4);
        assert_eq!(c.limits.burst, 7);
        assert_eq!(c.server.listen, "127.0.0.2:2".parse().unwrap());
    }

    #[test]
    fn bad_values_are_explained() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("t.toml");
        std::fs::write(&p, "[registry]\nobject_ttl = \"1s\"\n").unwrap();
        let e = Config::load_from_env(Some(&p), &[], Some(tls_env()))
            .unwrap_err()
            .to_string();
        assert!(e.contains("registry.object_ttl"), "{e}");
        std::fs::write(&p, "[server]\nthreads = 5000\n").unwrap();
        let e = Config::load_from_env(Some(&p), &[], Some(tls_env()))
            .unwrap_err()
            .to_string();
        assert!(e.contains("server.threads"), "{e}");
        std::fs::write(&p, "[limits]\nrequests_per_second = 0\n").unwrap();
        let e = Config::load_from_env(Some(&p), &[], Some(tls_env()))
            .unwrap_err()
            .to_string();
        assert!(e.contains("limits.requests_per_second"), "{e}");
    }
}
