//! The agent's one typed configuration.
//!
//! Layers, lowest first: built-in defaults (the `Default` impls here) < `--config FILE`
//! (TOML) < environment `SHOAL_AGENT__SECTION__KEY` (lists comma-separated) < command-line
//! flags (applied by the binary through [`Config::load`]'s `overrides`). Unknown keys are
//! errors that name the key. Nothing else in the agent reads files or the environment for
//! settings. Durations are humantime (`30s`, `250ms`), sizes are byte sizes (`512MiB`).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use bytesize::ByteSize;
use ipnet::IpNet;
use serde::Deserialize;

/// Why the configuration could not be loaded. Always the operator's to fix.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("configuration: {0}")]
    Load(#[from] config::ConfigError),
    #[error("configuration: {0}")]
    Invalid(String),
}

/// Everything the agent can be told.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    pub proxy: ProxyConfig,
    pub admin: AdminConfig,
    pub cache: CacheConfig,
    pub egress: EgressConfig,
    pub origin: OriginConfig,
    /// URL rules, first match wins; a URL no rule matches uses the default (see [`Rule`]).
    pub rules: Vec<Rule>,
    /// Named upstreams served under `/m/NAME/…` (e.g. an HTTPS registry).
    pub mirrors: Vec<Mirror>,
    pub peer: PeerConfig,
    pub tracker: TrackerConfig,
    pub tls: TlsConfig,
    pub topology: TopologyConfig,
    pub containerd: ContainerdConfig,
}

/// The HTTP listener local clients use.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ProxyConfig {
    /// Address for clients. Default `127.0.0.1:7480` (node-local). Use the node's
    /// address or `0.0.0.0` only where the port is not reachable from outside the node.
    pub listen: SocketAddr,
    /// Concurrent client connections; more wait in the accept queue. Default 1024.
    pub max_connections: usize,
    /// Time a client has to send the complete request head. Default `10s`. It also
    /// bounds how long an idle keep-alive connection stays open: hyper starts this
    /// timer whenever it waits for the next request head.
    #[serde(with = "humantime_serde")]
    pub header_read_timeout: Duration,
    /// Largest request head (request line + headers). Default `64KiB`.
    pub max_header_size: ByteSize,
    /// Concurrent connections from one source IP. Default 512. At the cap (or at
    /// `max_connections`) a new connection sheds that source's (or anyone's) oldest
    /// idle connection, one waiting for a request head; if none is idle, the new one
    /// is closed. Node-local clients all come from loopback: keep it high.
    pub max_connections_per_source: usize,
    /// Above half of `max_connections` open, a connection waiting for a request head
    /// (new, slow or idle keep-alive) is closed after this instead of
    /// `header_read_timeout`. Default `1s`.
    #[serde(with = "humantime_serde")]
    pub header_read_timeout_under_pressure: Duration,
    /// Source networks allowed to use the proxy (CIDRs). Default loopback only
    /// (`127.0.0.0/8`, `::1/128`). Any other source gets `403` before any origin is
    /// contacted (`shoal_client_refused_total`). Add the node's pod CIDR when
    /// `pod_listen` is set; never a network beyond the node.
    pub allow_clients: Vec<IpNet>,
    /// A second proxy listener for pods on this node (e.g. the node's address from the
    /// downward API, `HOST_IP:7480`). Default none. Guarded by `allow_clients` like
    /// `listen`.
    pub pod_listen: Option<SocketAddr>,
    /// Ports `CONNECT` may tunnel to (as Squid's `SSL_ports`). Default `[443]`.
    pub connect_ports: Vec<u16>,
    /// `CONNECT` tunnels open at once; more get `503`. Default 256. A tunnel also
    /// holds its client connection's slot for its whole life.
    pub max_tunnels: usize,
    /// A tunnel with no bytes either way for this long is closed. Default `5m`.
    #[serde(with = "humantime_serde")]
    pub tunnel_idle_timeout: Duration,
    /// A tunnel is closed after this long whatever it carries. Default `1h`.
    #[serde(with = "humantime_serde")]
    pub tunnel_max_lifetime: Duration,
    /// A client connection whose socket takes no bytes for this long while the
    /// agent has some to send is closed (as nginx's `send_timeout`): a client that
    /// stops reading does not hold its response's buffers (`cache.read_buffer`)
    /// forever. Default `60s`. Counts for `CONNECT` tunnels too.
    #[serde(with = "humantime_serde")]
    pub send_timeout: Duration,
}

/// The admin listener: `/metrics`, `/live`, `/ready`.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AdminConfig {
    /// Default `127.0.0.1:7481`.
    pub listen: SocketAddr,
}

/// The chunk store and memory cache.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CacheConfig {
    /// Directory for chunks and object metadata. Default `/var/cache/shoal`. If it
    /// cannot be created or written, the agent still serves, passing requests through.
    pub dir: PathBuf,
    /// Disk quota for chunks. Default `10GiB`. The quota in force is lower when the
    /// filesystem has less room: chunk bytes held plus free space, less `min_free`.
    pub max_size: ByteSize,
    /// Free space the cache leaves on its filesystem for everything else on the node
    /// (like nginx's `proxy_cache_path ... min_free=`). Default: 2 % of the
    /// filesystem, within 1MiB..=1GiB. On a disk with less free space than this the
    /// agent caches nothing new (`shoal_cache_write_skipped_total{reason="full"}`)
    /// and still serves, from memory, peers and the origin.
    pub min_free: Option<ByteSize>,
    /// Eviction starts when usage exceeds this share of `max_size`. Default 0.95.
    pub high_watermark: f64,
    /// Eviction stops when usage is below this share of `max_size`. Default 0.90.
    pub low_watermark: f64,
    /// In-memory budget for hot chunks and manifests (moka, weighted by bytes). Default `256MiB`.
    pub memory_size: ByteSize,
    /// Chunk size for new object versions. Default `1MiB` (see docs/benchmarks.md).
    /// Bounds: 16KiB..=16MiB.
    pub chunk_size: ByteSize,
    /// How long a cached object is served without asking the origin again when the
    /// origin's `Cache-Control` gives no lifetime of its own (RFC 9111 §4.2.1:
    /// `s-maxage`, else `max-age`, wins either way; `no-cache` means every request is
    /// revalidated; `Expires` is not read). Default `60s`. Digest-named (immutable)
    /// URLs are never revalidated.
    #[serde(with = "humantime_serde")]
    pub freshness: Duration,
    /// Stale-if-error (RFC 5861): when revalidating a stale object gets a 5xx, a
    /// timeout or a refused connection, the stale copy is served (with `Age`) for up
    /// to this long past its freshness; the origin's `Cache-Control:
    /// stale-if-error=N` overrides it, `must-revalidate`/`proxy-revalidate`/`no-cache`/
    /// `s-maxage` forbid it. Default `5m`; `0s` turns it off. Raise it to ride out long origin
    /// outages with content that may be out of date.
    #[serde(with = "humantime_serde")]
    pub stale_if_error: Duration,
    /// Chunk bytes that origin fills, together, may queue for the disk (write-behind).
    /// A cold miss hands each chunk to its clients at once and writes it behind; when
    /// this much is already queued and a client is waiting for the next chunk, the
    /// chunk is skipped for caching (`shoal_cache_fill_skipped_chunks_total`) rather
    /// than slowing the client; after the fill it is written from the memory cache or
    /// fetched again by `Range`, and only then is the object recorded. With no
    /// client waiting, the fill waits for the disk instead (backpressure to the
    /// origin). Default `32MiB`; at least one chunk is always let through. Raise it
    /// when the disk is fast but bursty (skips with a mostly idle disk); it counts in
    /// the memory formula of docs/operations.md.
    pub fill_buffer: ByteSize,
    /// How long a chunk file that was read from disk and BLAKE3-verified may be
    /// served again without hashing it, as long as its `fstat` (device, inode, size,
    /// mtime, ctime) is unchanged: any write, truncation or replacement of the file
    /// voids the proof, and the next read hashes it. Default `0s`: every disk read is
    /// hashed. A window makes disk hits cost about a third less CPU (docs/benchmarks.md);
    /// what it gives up (a device-level corruption under an unchanged file is caught
    /// only when the window ends) is in docs/architecture.md ("Verification proofs").
    #[serde(with = "humantime_serde")]
    pub verify_window: Duration,
    /// Chunk bytes that responses, together, may hold between reading them (from the
    /// memory cache, disk, a fill or a repair) and the client's socket taking them:
    /// each response reads a few chunks ahead within this budget, and past it waits
    /// for a slow client's bytes to drain, holding at most one 64 KiB group outside
    /// it (disk chunks are then read in checked groups). It bounds the memory of many slow clients
    /// (docs/operations.md's formula); too small a budget for many fast streams costs
    /// hit throughput. Default `32MiB`; at least one chunk.
    pub read_buffer: ByteSize,
    /// Cold misses of objects larger than two chunks that may fill from the origin
    /// at once. Each such fill holds its origin connection's buffers and the chunk
    /// it is assembling besides the shared `fill_buffer`; past the limit a further
    /// cold miss is streamed through uncached (`shoal_cache_fill_limit_total`), so
    /// the client still gets its bytes and memory stays within the formula of
    /// docs/operations.md. Swarm fills, small objects and hits do not count.
    /// Default `16`; at least 1.
    pub max_fills: usize,
}

/// Which origins may be fetched from.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EgressConfig {
    /// Address ranges that are allowed although they are loopback, link-local,
    /// private, CGNAT or otherwise internal. Default empty: all such are refused.
    pub allow_cidrs: Vec<IpNet>,
    /// Host names (exact, or `*.suffix`) that may be fetched; `*` allows any host.
    /// Default `["*"]`.
    pub allow_hosts: Vec<String>,
}

/// Connections to origins.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct OriginConfig {
    /// Extra CA certificates (PEM) trusted for HTTPS origins, besides the Web PKI
    /// roots built in. Default: none. Set it for mirrors under a private CA.
    pub ca_file: Option<PathBuf>,
    /// TCP + TLS connect deadline. Default `10s`.
    #[serde(with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// Time from sending a request to the response head. Default `30s`.
    #[serde(with = "humantime_serde")]
    pub header_timeout: Duration,
    /// Longest silence while reading a response body. Default `30s`.
    #[serde(with = "humantime_serde")]
    pub read_timeout: Duration,
}

/// How a URL is handled.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Chunked, cached and shared with peers through the tracker.
    P2p,
    /// Cached on this node only, revalidated with the origin.
    Cache,
    /// Proxied without caching.
    Pass,
}

/// One URL rule.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rule {
    /// Regular expression matched against the absolute URL (`http://host/path?query`).
    pub pattern: String,
    pub mode: Mode,
    /// Responses smaller than this are passed through instead. Default 0.
    #[serde(default)]
    pub min_size: ByteSize,
    /// The bytes behind a matching URL never change (Debian `pool/`, versioned
    /// release files): cached without a validator, keyed by URL and length, shared
    /// through the swarm, never revalidated (not even for a client's
    /// `Cache-Control: no-cache` / `max-age=0`), and checked against a
    /// `Repr-Digest: sha-256=…` the origin sends. Default false. Set it only for paths
    /// the origin never rewrites: a changed file under the same URL and length is not
    /// noticed (it is never served mixed, but fills of it fail).
    #[serde(default)]
    pub immutable: bool,
}

/// A named upstream: `http://AGENT/m/NAME/rest` fetches `UPSTREAM/rest`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Mirror {
    /// `[A-Za-z0-9._-]+`.
    pub name: String,
    /// `http://` or `https://` base URL (TLS verified against the Web PKI roots).
    pub upstream: String,
    /// How requests under this mirror are handled: `"auto"` (default: a path starting
    /// with `/v2/` or equal to `/v2` is a container registry request, anything else a
    /// plain HTTP one), `"registry"` (every request is an OCI Distribution request;
    /// other paths get `400` with an OCI error body) or `"http"` (never registry-aware:
    /// the plain cache, as before registry mode existed). Set `"registry"` for a mirror
    /// of a container registry, `"http"` for a file server that happens to have `/v2/`.
    #[serde(default)]
    pub kind: MirrorKind,
    /// Registry mirrors: how long a tag's resolution (tag → digest and content type)
    /// is reused without asking the registry. Default `0s`: every by-tag manifest
    /// request is resolved with the registry (a `HEAD`), so a moved tag is seen at
    /// once. A few seconds spare the registry in a flash crowd of one tag, at the cost
    /// of seeing a moved tag that much later.
    #[serde(default, with = "humantime_serde")]
    pub tag_ttl: Duration,
    /// Registry mirrors: how long the registry's acceptance of one client's
    /// credentials (or of anonymous access) for one blob or manifest in one repository
    /// is remembered, during which that client gets the cached bytes without the agent
    /// asking the registry again.
    /// Default `60s`. Lower it where revoked credentials must stop working sooner;
    /// `0s` checks with the registry before every cached response.
    #[serde(default = "default_auth_ttl", with = "humantime_serde")]
    pub auth_ttl: Duration,
    /// Registry mirrors: the registry this mirror stands for, as image names spell it
    /// (`docker.io`, `ghcr.io`, `registry.example.internal:5000`). Default: none. With
    /// it, `GET /v2/…?ns=HOST` (containerd names the registry in `ns` when a
    /// `hosts.toml` host is the bare agent URL) is served by this mirror, and
    /// `shoal-agent containerd-config` writes `certs.d/HOST/hosts.toml` for it. At most
    /// one mirror per registry.
    #[serde(default)]
    pub registry: Option<crate::registries::RegistryHost>,
}

fn default_auth_ttl() -> Duration {
    Duration::from_secs(60)
}

impl Default for Mirror {
    /// No name or upstream (not valid as is); `kind`, `tag_ttl`, `auth_ttl` at their
    /// defaults. For struct-update syntax in tests.
    fn default() -> Self {
        Self {
            name: String::new(),
            upstream: String::new(),
            kind: MirrorKind::Auto,
            tag_ttl: Duration::ZERO,
            auth_ttl: default_auth_ttl(),
            registry: None,
        }
    }
}

/// See [`Mirror::kind`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MirrorKind {
    #[default]
    Auto,
    Registry,
    Http,
}

/// The QUIC peer endpoint (serves and fetches chunks).
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PeerConfig {
    /// UDP address. Default `0.0.0.0:7482`. Only used when `tracker.urls` is set.
    pub listen: SocketAddr,
    /// The address other agents dial, announced to the tracker. Default: `listen`,
    /// which must then not be unspecified (`0.0.0.0`). On Kubernetes set it from the
    /// downward API (`SHOAL_AGENT__PEER__ADVERTISE=$(HOST_IP):7482`).
    pub advertise: Option<SocketAddr>,
    /// Chunk requests served at once, all peers together; more get `busy` at once and
    /// go elsewhere. Default 8: an upload link shared by many chunks finishes none of
    /// them soon (64 × 1 MiB on a 20 Mbit/s link is 27 s each), while `busy` costs a
    /// requester one round trip. Raise it only for links far faster than the peers'.
    pub max_uploads: usize,
    /// Chunk requests served at once to one peer. Default 4.
    pub max_uploads_per_peer: usize,
    /// Upload budget in bytes per second, all peers together; 0 = unlimited. Default 0.
    pub upload_rate: ByteSize,
    /// Hard deadline for one chunk request to a peer, connecting included. Default
    /// `20s`. Slow requests are duplicated to other holders well before this (the
    /// scheduler's slow deadline, 2 s + 4 s per MiB); this only bounds a stalled peer.
    #[serde(with = "humantime_serde")]
    pub request_timeout: Duration,
    /// A chunk that no reachable peer holds and nobody holds an origin lease for is
    /// fetched from the origin by this agent after this long. Default `10s`. Lower
    /// means faster recovery from a vanished lease holder, at the cost of more origin
    /// traffic when leases are slow.
    #[serde(with = "humantime_serde")]
    pub origin_fallback: Duration,
    /// Idle QUIC connections are closed after this. Default `30s`.
    #[serde(with = "humantime_serde")]
    pub idle_timeout: Duration,
    /// Chunk requests that wait (first come, first served) for an upload slot when all
    /// `max_uploads` are taken, instead of getting `busy` at once; more get `busy`.
    /// Default 0: off, `busy` at once. In the swarm simulation a queue made flash
    /// crowds slower, not faster (S2 and S4 at 48 agents: 1.45 and 1.79 × the bound
    /// without, 3.4 and 3.2 × with 4 places; docs/benchmarks.md, "Upload queue"):
    /// `busy` is what spreads requesters over chunks and holders, and a queue takes
    /// it away. Try it only with a fleet measurement. Each waiter is one open stream
    /// and no chunk bytes (the chunk is read once it has a slot).
    pub upload_queue: usize,
    /// Of the waiting requests, at most this many from one peer. Default 1, so the
    /// queue holds requests of `upload_queue` different peers and no peer can take
    /// more than its share; a requester with more to ask goes to other holders.
    pub upload_queue_per_peer: usize,
    /// Longest wait in the upload queue; then the request gets `busy`. Default `4s`.
    /// Keep it well under the requesters' slow-request deadline (2 s + 4 s per MiB
    /// of chunk) so a queued request is not duplicated elsewhere as slow.
    #[serde(with = "humantime_serde")]
    pub upload_queue_wait: Duration,
}

/// The tracker client.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TrackerConfig {
    /// Tracker replicas (`https://host:port`). Empty (default) = no swarm: the agent is
    /// a caching proxy only.
    pub urls: Vec<String>,
    /// How often held objects are re-announced. Default `30s`.
    #[serde(with = "humantime_serde")]
    pub announce_interval: Duration,
    /// How often an object being downloaded is synced with the tracker. Default `200ms`.
    #[serde(with = "humantime_serde")]
    pub poll_interval: Duration,
    /// Deadline for one tracker request. Default `5s` (a loaded tracker's TLS handshake
    /// can take seconds).
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    /// Pause before trying an unreachable tracker again. Default `2s`: while every
    /// replica is in back-off, downloads fetch their missing chunks from the origin, so
    /// a long pause after one slow answer costs origin traffic.
    #[serde(with = "humantime_serde")]
    pub backoff: Duration,
}

/// Fleet PKI for mutual TLS with peers and the tracker (PEM files).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TlsConfig {
    /// The fleet CA certificate.
    pub ca: Option<PathBuf>,
    /// This agent's certificate chain; its DNS name is the agent's peer id.
    pub cert: Option<PathBuf>,
    /// This agent's private key.
    pub key: Option<PathBuf>,
}

/// Where this agent is; peers nearer by these labels are preferred.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TopologyConfig {
    /// Node name. Default: empty (the certificate's name is the peer id regardless).
    pub node: String,
    pub zone: String,
    pub region: String,
}

/// How `shoal-agent containerd-config` wires containerd to this agent's registry
/// mirrors, and where `/ready` checks that it is.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ContainerdConfig {
    /// containerd's own configuration, read by `containerd-config` for its registry
    /// `config_path` (1.x: `plugins."io.containerd.grpc.v1.cri".registry`, 2.x:
    /// `plugins."io.containerd.cri.v1.images".registry`). Default
    /// `/etc/containerd/config.toml`.
    pub config_file: PathBuf,
    /// The hosts directory (`certs.d`) to write and check. Default: none
    /// (`containerd-config` writes the first directory of `config_file`'s
    /// `config_path`). When set and `config_file` exists, it must be one of
    /// `config_path`'s directories (else `containerd-config` fails, saying so); when
    /// `config_file` is absent it is used as is. `/ready` reports whether each
    /// registry mirror is wired only when this is set (the agent does not read
    /// containerd's config at run time); set it where the agent can read that
    /// directory, e.g. `/etc/containerd/certs.d`.
    pub certs_dir: Option<PathBuf>,
    /// The URL containerd reaches this agent's proxy at, written into `hosts.toml`.
    /// Default: `http://` + `proxy.listen`, with an unspecified address (`0.0.0.0`,
    /// `::`) replaced by loopback. Set it when containerd sees the agent at another
    /// address.
    pub agent_url: Option<String>,
}

impl Default for ContainerdConfig {
    fn default() -> Self {
        Self {
            config_file: PathBuf::from("/etc/containerd/config.toml"),
            certs_dir: None,
            agent_url: None,
        }
    }
}

impl Default for ProxyConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 7480)),
            max_connections: 1024,
            header_read_timeout: Duration::from_secs(10),
            max_header_size: ByteSize::kib(64),
            max_connections_per_source: 512,
            header_read_timeout_under_pressure: Duration::from_secs(1),
            // Constant, valid prefixes.
            allow_clients: vec![
                IpNet::new_assert(
                    std::net::IpAddr::V4(std::net::Ipv4Addr::new(127, 0, 0, 0)),
                    8,
                ),
                IpNet::new_assert(std::net::IpAddr::V6(std::net::Ipv6Addr::LOCALHOST), 128),
            ],
            pod_listen: None,
            connect_ports: vec![443],
            max_tunnels: 256,
            tunnel_idle_timeout: Duration::from_secs(300),
            tunnel_max_lifetime: Duration::from_secs(3600),
            send_timeout: Duration::from_secs(60),
        }
    }
}

impl Default for AdminConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 7481)),
        }
    }
}

impl Default for CacheConfig {
    fn default() -> Self {
        Self {
            dir: PathBuf::from("/var/cache/shoal"),
            max_size: ByteSize::gib(10),
            min_free: None,
            high_watermark: 0.95,
            low_watermark: 0.90,
            memory_size: ByteSize::mib(256),
            chunk_size: ByteSize::mib(1),
            freshness: Duration::from_secs(60),
            stale_if_error: Duration::from_secs(300),
            fill_buffer: ByteSize::mib(32),
            verify_window: Duration::ZERO,
            read_buffer: ByteSize::mib(32),
            max_fills: 16,
        }
    }
}

impl Default for EgressConfig {
    fn default() -> Self {
        Self {
            allow_cidrs: Vec::new(),
            allow_hosts: vec!["*".to_owned()],
        }
    }
}

impl Default for OriginConfig {
    fn default() -> Self {
        Self {
            ca_file: None,
            connect_timeout: Duration::from_secs(10),
            header_timeout: Duration::from_secs(30),
            read_timeout: Duration::from_secs(30),
        }
    }
}

impl Default for PeerConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([0, 0, 0, 0], 7482)),
            advertise: None,
            origin_fallback: Duration::from_secs(10),
            max_uploads: 8,
            max_uploads_per_peer: 4,
            upload_rate: ByteSize::b(0),
            request_timeout: Duration::from_secs(20),
            idle_timeout: Duration::from_secs(30),
            upload_queue: 0,
            upload_queue_per_peer: 1,
            upload_queue_wait: Duration::from_secs(4),
        }
    }
}

impl Default for TrackerConfig {
    fn default() -> Self {
        Self {
            urls: Vec::new(),
            announce_interval: Duration::from_secs(30),
            poll_interval: Duration::from_millis(200),
            timeout: Duration::from_secs(5),
            backoff: Duration::from_secs(2),
        }
    }
}

const TLS_REQUIRED: &str =
    "tracker.urls is set, so tls.ca, tls.cert and tls.key are required (mutual TLS)";

impl Config {
    /// Loads defaults < `file` < environment (`SHOAL_AGENT__…`) < `overrides`
    /// (`("section.key", value)` pairs from command-line flags), then validates.
    pub fn load(file: Option<&Path>, overrides: &[(&str, String)]) -> Result<Self, ConfigError> {
        Self::load_from_env(file, overrides, None)
    }

    /// As [`Config::load`], with the environment given explicitly (tests).
    pub fn load_from_env(
        file: Option<&Path>,
        overrides: &[(&str, String)],
        env: Option<std::collections::HashMap<String, String>>,
    ) -> Result<Self, ConfigError> {
        let layers = shoal_node::config::Layers {
            file,
            overrides,
            env: env.as_ref(),
        };
        let lists = ["egress.allow_cidrs", "egress.allow_hosts", "tracker.urls"];
        let cfg: Config =
            shoal_node::config::layered("SHOAL_AGENT", &lists, layers)?.try_deserialize()?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// Cross-field checks that serde cannot express: [`Config::validate_settings`], and
    /// that `tls.*` paths are set when `tracker.urls` is.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if !self.tracker.urls.is_empty()
            && (self.tls.ca.is_none() || self.tls.cert.is_none() || self.tls.key.is_none())
        {
            return Err(ConfigError::Invalid(TLS_REQUIRED.into()));
        }
        self.validate_settings()
    }

    /// Every check but the one an in-memory TLS identity makes moot (the `tls.*`
    /// paths): what [`crate::app::Agent::start_with`] checks again, so a configuration
    /// built by hand cannot start an agent that `Config::load` would have refused.
    pub fn validate_settings(&self) -> Result<(), ConfigError> {
        let bad = |m: String| Err(ConfigError::Invalid(m));
        let c = &self.cache;
        if !(0.0 < c.low_watermark
            && c.low_watermark <= c.high_watermark
            && c.high_watermark <= 1.0)
        {
            return bad(format!(
                "cache.low_watermark ({}) and cache.high_watermark ({}) must satisfy 0 < low <= high <= 1",
                c.low_watermark, c.high_watermark
            ));
        }
        let cs = c.chunk_size.as_u64();
        let (lo, hi) = (
            shoal_proto::manifest::MIN_CHUNK_SIZE,
            shoal_proto::manifest::MAX_CHUNK_SIZE,
        );
        if cs < u64::from(lo) || cs > u64::from(hi) {
            return bad(format!(
                "cache.chunk_size ({cs} bytes) must be within {lo}..={hi}"
            ));
        }
        if c.max_fills == 0 {
            return bad("cache.max_fills must be at least 1".into());
        }
        if self.proxy.max_connections == 0 {
            return bad("proxy.max_connections must be at least 1".into());
        }
        let p = &self.proxy;
        if p.max_connections_per_source == 0 || p.max_tunnels == 0 {
            return bad(
                "proxy.max_connections_per_source and proxy.max_tunnels must be at least 1".into(),
            );
        }
        if p.header_read_timeout_under_pressure.is_zero()
            || p.tunnel_idle_timeout.is_zero()
            || p.tunnel_max_lifetime.is_zero()
            || p.send_timeout.is_zero()
        {
            return bad("proxy.header_read_timeout_under_pressure, proxy.tunnel_idle_timeout, proxy.tunnel_max_lifetime and proxy.send_timeout must be above zero".into());
        }
        for r in &self.rules {
            if let Err(e) = regex::Regex::new(&r.pattern) {
                return bad(format!(
                    "rules: pattern {:?} is not a valid regular expression: {e}",
                    r.pattern
                ));
            }
        }
        for m in &self.mirrors {
            let name_ok = !m.name.is_empty()
                && m.name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
            if !name_ok {
                return bad(format!(
                    "mirrors: name {:?} must be [A-Za-z0-9._-]+",
                    m.name
                ));
            }
            match m.upstream.parse::<http::Uri>() {
                Ok(u) if matches!(u.scheme_str(), Some("http" | "https")) && u.host().is_some() => {
                }
                _ => {
                    return bad(format!(
                        "mirrors.{}: upstream {:?} must be an http(s):// URL",
                        m.name, m.upstream
                    ));
                }
            }
        }
        if let Err(e) = crate::registries::check_mirrors(&self.mirrors) {
            return bad(e);
        }
        if let Some(u) = &self.containerd.agent_url {
            match u.parse::<http::Uri>() {
                Ok(u) if matches!(u.scheme_str(), Some("http" | "https")) && u.host().is_some() => {
                }
                _ => {
                    return bad(format!(
                        "containerd.agent_url: {u:?} must be an http(s):// URL"
                    ));
                }
            }
        }
        for u in &self.tracker.urls {
            match u.parse::<http::Uri>() {
                Ok(u) if u.scheme_str() == Some("https") && u.host().is_some() => {}
                _ => return bad(format!("tracker.urls: {u:?} must be an https:// URL")),
            }
        }
        if self.swarm_enabled()
            && self
                .peer
                .advertise
                .unwrap_or(self.peer.listen)
                .ip()
                .is_unspecified()
        {
            return bad(format!(
                "peer.listen is {} and peer.advertise is not set: other agents need an address to dial",
                self.peer.listen
            ));
        }
        Ok(())
    }

    /// Whether the agent joins a swarm (tracker configured).
    pub fn swarm_enabled(&self) -> bool {
        !self.tracker.urls.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    #[test]
    fn defaults_are_valid() {
        let c = Config::load_from_env(None, &[], Some(HashMap::new())).unwrap();
        assert_eq!(c.proxy.listen, "127.0.0.1:7480".parse().unwrap());
        assert_eq!(c.admin.listen, "127.0.0.1:7481".parse().unwrap());
        assert_eq!(c.cache.chunk_size, ByteSize::mib(1));
        assert_eq!(c.cache.min_free, None);
        assert!(!c.swarm_enabled());
    }

    #[test]
    fn shipped_config_parses() {
        let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("../configs/agent.toml");
        let c = Config::load_from_env(Some(&p), &[], Some(HashMap::new())).unwrap();
        assert_eq!(c.cache.max_size, ByteSize::gib(10));
        assert_eq!(c.cache.stale_if_error, Duration::from_secs(300));
        assert_eq!(c.cache.fill_buffer, ByteSize::mib(32));
        assert_eq!(c.cache.verify_window, Duration::ZERO);
        assert_eq!(c.cache.read_buffer, ByteSize::mib(32));
        assert_eq!(c.cache.max_fills, 16);
    }

    /// The commented registry mirror example in configs/agent.toml parses, with the
    /// keys and values it documents.
    #[test]
    fn registry_mirror_example_parses() {
        let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("../configs/agent.toml");
        let text = std::fs::read_to_string(p).unwrap();
        let start = text.find("# registry-mirror-example").unwrap();
        let block: String = text[start..]
            .lines()
            .skip(1)
            .take_while(|l| l.starts_with('#'))
            .map(|l| {
                let l = &l[1..];
                format!("{}\n", l.strip_prefix(' ').unwrap_or(l))
            })
            .collect();
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("a.toml");
        std::fs::write(&f, &block).unwrap();
        let c = Config::load_from_env(Some(&f), &[], Some(HashMap::new())).unwrap();
        assert_eq!(c.mirrors.len(), 2, "{block}");
        assert_eq!(c.mirrors[0].kind, MirrorKind::Registry);
        assert_eq!(c.mirrors[0].tag_ttl, Duration::from_secs(5));
        assert_eq!(c.mirrors[0].auth_ttl, Duration::from_secs(30));
        assert_eq!(c.mirrors[1].kind, MirrorKind::Auto);
        assert_eq!(c.mirrors[1].tag_ttl, Duration::ZERO);
        assert_eq!(c.mirrors[1].auth_ttl, Duration::from_secs(60));
    }

    #[test]
    fn registries_example_parses() {
        let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("../configs/agent.toml");
        let text = std::fs::read_to_string(p).unwrap();
        let start = text.find("# registries-example").unwrap();
        let block: String = text[start..]
            .lines()
            .skip(1)
            .take_while(|l| l.starts_with('#'))
            .map(|l| format!("{}\n", l[1..].strip_prefix(' ').unwrap_or(&l[1..])))
            .collect();
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("a.toml");
        std::fs::write(&f, &block).unwrap();
        let c = Config::load_from_env(Some(&f), &[], Some(HashMap::new())).unwrap();
        let hosts: Vec<_> = c
            .mirrors
            .iter()
            .map(|m| m.registry.clone().unwrap())
            .collect();
        assert_eq!(hosts[0].as_str(), "docker.io");
        assert_eq!(hosts[1].as_str(), "registry.k8s.io");
        assert_eq!(
            c.containerd.config_file,
            Path::new("/etc/containerd/config.toml")
        );
        std::fs::write(&f, format!("{block}\n[[mirrors]]\nname = \"x\"\nupstream = \"https://x.example\"\nregistry = \"docker.io\"\n")).unwrap();
        let e = Config::load_from_env(Some(&f), &[], Some(HashMap::new())).unwrap_err();
        assert!(e.to_string().contains("one mirror per registry"), "{e}");
        std::fs::write(&f, "[[mirrors]]\nname = \"x\"\nupstream = \"https://x.example\"\nregistry = \"https://docker.io\"\n").unwrap();
        let e = Config::load_from_env(Some(&f), &[], Some(HashMap::new())).unwrap_err();
        assert!(e.to_string().contains("host[:port]"), "{e}");
    }

    #[test]
    fn upload_queue_keys_parse() {
        let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("../configs/agent.toml");
        let c = Config::load_from_env(Some(&p), &[], Some(HashMap::new())).unwrap();
        let d = PeerConfig::default();
        assert_eq!(c.peer.upload_queue, d.upload_queue);
        assert_eq!(c.peer.upload_queue_per_peer, d.upload_queue_per_peer);
        assert_eq!(c.peer.upload_queue_wait, d.upload_queue_wait);
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("a.toml");
        std::fs::write(
            &f,
            "[peer]\nupload_queue = 3\nupload_queue_per_peer = 2\nupload_queue_wait = \"1500ms\"\n",
        )
        .unwrap();
        let c = Config::load_from_env(Some(&f), &[], Some(HashMap::new())).unwrap();
        assert_eq!(c.peer.upload_queue, 3);
        assert_eq!(c.peer.upload_queue_per_peer, 2);
        assert_eq!(c.peer.upload_queue_wait, Duration::from_millis(1500));
        let o = crate::transport::PeerOptions::from_config(&c.peer);
        assert_eq!(o.limits.upload_queue, 3);
        assert_eq!(o.limits.upload_queue_wait, Duration::from_millis(1500));
    }

    #[test]
    fn immutable_rule_parses() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("a.toml");
        std::fs::write(
            &p,
            "[[rules]]\npattern = '/pool/'\nmode = \"cache\"\nimmutable = true\n\n[[rules]]\npattern = 'x'\nmode = \"pass\"\n",
        )
        .unwrap();
        let c = Config::load_from_env(Some(&p), &[], Some(HashMap::new())).unwrap();
        assert!(c.rules[0].immutable);
        assert!(!c.rules[1].immutable);
    }

    #[test]
    fn unknown_key_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("a.toml");
        std::fs::write(&p, "[cache]\nmax_sise = \"1GiB\"\n").unwrap();
        let e = Config::load_from_env(Some(&p), &[], Some(HashMap::new()))
            .unwrap_err()
            .to_string();
        assert!(e.contains("max_sise"), "{e}");
    }

    #[test]
    fn min_free_is_a_size_and_unset_by_default() {
        for (text, want) in [("0B", 0), ("512MiB", 512 << 20), ("5GiB", 5 << 30)] {
            let env = HashMap::from([("SHOAL_AGENT__CACHE__MIN_FREE".to_owned(), text.to_owned())]);
            let c = Config::load_from_env(None, &[], Some(env)).unwrap();
            assert_eq!(c.cache.min_free, Some(ByteSize::b(want)), "{text}");
        }
        let env = HashMap::from([("SHOAL_AGENT__CACHE__MIN_FREE".to_owned(), "lots".to_owned())]);
        assert!(Config::load_from_env(None, &[], Some(env)).is_err());
    }

    #[test]
    fn layering_env_over_file_flags_over_env() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("a.toml");
        std::fs::write(
            &p,
            "[cache]\nmax_size = \"1GiB\"\nmin_free = \"5GiB\"\nfreshness = \"5m\"\n",
        )
        .unwrap();
        let env = HashMap::from([
            ("SHOAL_AGENT__CACHE__MAX_SIZE".to_owned(), "2GiB".to_owned()),
            (
                "SHOAL_AGENT__EGRESS__ALLOW_CIDRS".to_owned(),
                "127.0.0.0/8,10.0.0.0/8".to_owned(),
            ),
        ]);
        let c = Config::load_from_env(
            Some(&p),
            &[("proxy.listen", "127.0.0.2:1".into())],
            Some(env),
        )
        .unwrap();
        assert_eq!(c.cache.max_size, ByteSize::gib(2));
        assert_eq!(c.cache.min_free, Some(ByteSize::gib(5)));
        assert_eq!(c.cache.freshness, Duration::from_secs(300));
        assert_eq!(c.egress.allow_cidrs.len(), 2);
        assert_eq!(c.proxy.listen, "127.0.0.2:1".parse().unwrap());
    }

    #[test]
    fn bad_values_are_explained() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("a.toml");
        std::fs::write(&p, "[cache]\nlow_watermark = 0.99\nhigh_watermark = 0.5\n").unwrap();
        let e = Config::load_from_env(Some(&p), &[], Some(HashMap::new()))
            .unwrap_err()
            .to_string();
        assert!(e.contains("watermark"), "{e}");
        let env = HashMap::from([("SHOAL_AGENT__CACHE__MAX_FILLS".to_owned(), "0".to_owned())]);
        let e = Config::load_from_env(None, &[], Some(env))
            .unwrap_err()
            .to_string();
        assert!(e.contains("cache.max_fills"), "{e}");
        std::fs::write(&p, "[tracker]\nurls = [\"https://t:1\"]\n").unwrap();
        let e = Config::load_from_env(Some(&p), &[], Some(HashMap::new()))
            .unwrap_err()
            .to_string();
        assert!(e.contains("tls.ca"), "{e}");
    }
}
