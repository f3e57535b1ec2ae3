//! Container images through the agent with the real components: the distribution
//! registry (no auth, htpasswd, token auth with a token server of our own, a storage
//! front that redirects blob downloads), `containerd` + `ctr` pulling through the
//! agent's registry mirror with `--hosts-dir`, and `skopeo` pushing the seeded image.
//!
//! Each test asserts on digests (what containerd stored) and on the registry's own
//! access log (blob bytes it sent), not on the agent's word. Every test skips, saying
//! why, when not root or when `tests/scripts/install-registry-tools.sh` cannot install
//! the tools. Addresses: 127.0.NET.x with NET 110-119, port 0 or a free port.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;
use std::time::Duration;

use http::StatusCode;
use shoal_agent::app::RunningAgent;
use shoal_agent::config::{Config, Mirror};
use shoal_agent::containerd::Wiring;
use shoal_tests::real::containerd::{Containerd, hosts_dir};
use shoal_tests::real::front::Front;
use shoal_tests::real::image::{self, Image};
use shoal_tests::real::registry::{self, Auth, Registry};
use shoal_tests::real::token::{self, TokenServer};
use shoal_tests::real::{origin_form_get, run};
use shoal_tests::require_real;
use shoal_tests::swarm::TestSwarm;

const TOOLS: [&str; 5] = ["docker-registry", "containerd", "ctr", "skopeo", "htpasswd"];
const USER: &str = "alice";
const PASS: &str = "s3cret-pass";
const CREDS: &str = "alice:s3cret-pass";
const REPO: &str = "demo/app";
const MIRROR: &str = "reg";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    NoAuth,
    Htpasswd,
    Token,
}

/// A registry seeded with one image, maybe behind a token server and a redirecting
/// storage front.
struct Upstream {
    registry: Registry,
    token: Option<TokenServer>,
    front: Option<Front>,
    image: Image,
    mode: Mode,
    _layout: tempfile::TempDir,
}

impl Upstream {
    /// Starts the registry on 127.0.NET.6 (token server .3, front .4, store .5),
    /// pushes a three-layer image as `demo/app:1`.
    async fn start(net: u8, mode: Mode, redirect: bool, seed: u64) -> Upstream {
        let ip = |n: u8| format!("127.0.{net}.{n}");
        let token = match mode {
            Mode::Token => Some(TokenServer::start(&ip(3), &[(USER, PASS)]).await.unwrap()),
            _ => None,
        };
        let auth = match (mode, &token) {
            (Mode::NoAuth, _) => Auth::None,
            (Mode::Htpasswd, _) => Auth::Htpasswd {
                users: vec![(USER.into(), PASS.into())],
            },
            (Mode::Token, Some(t)) => Auth::Token {
                realm: t.realm.clone(),
                service: token::SERVICE.into(),
                issuer: token::ISSUER.into(),
                cert_pem: t.cert_pem.clone(),
            },
            (Mode::Token, None) => unreachable!(),
        };
        let registry = Registry::start(&ip(6), &auth).await.unwrap();
        let image = Image::generate(&[700_000, 300_000, 90_000], seed);
        let layout = tempfile::tempdir().unwrap();
        image.write_layout(layout.path(), "1").unwrap();
        let creds = (mode != Mode::NoAuth).then_some(CREDS);
        registry::push(
            layout.path(),
            "1",
            &format!("{}/{REPO}:1", registry.host()),
            creds,
        )
        .await
        .unwrap_or_else(|e| panic!("skopeo push: {e:#}\nregistry log:\n{}", registry.log()));
        let front = if redirect {
            Some(
                Front::start(&ip(4), &ip(5), registry.addr, registry.root.clone())
                    .await
                    .unwrap(),
            )
        } else {
            None
        };
        Upstream {
            registry,
            token,
            front,
            image,
            mode,
            _layout: layout,
        }
    }

    /// The image reference containerd pulls (named by the registry's address).
    fn reference(&self) -> String {
        format!("{}/{REPO}:1", self.registry.host())
    }

    /// Where the agent's mirror points: the front if there is one.
    fn upstream_url(&self) -> String {
        match &self.front {
            Some(f) => format!("http://{}", f.addr),
            None => format!("http://{}", self.registry.addr),
        }
    }

    /// Blob bytes the registry side sent: its access log plus the storage front's.
    fn blob_bytes(&self) -> u64 {
        self.registry.blob_bytes() + self.front.as_ref().map_or(0, Front::store_bytes)
    }

    fn creds(&self) -> Option<&'static str> {
        (self.mode != Mode::NoAuth).then_some(CREDS)
    }

    /// The agent's `[[mirrors]]` entry for this registry, registry-aware mode.
    fn mirrors(&self) -> Vec<Mirror> {
        mirrors(&format!(
            "[[mirrors]]\nname = \"{MIRROR}\"\nupstream = \"{}\"\nkind = \"registry\"\n",
            self.upstream_url()
        ))
    }
}

/// `[[mirrors]]` parsed from TOML, so this file builds whatever fields `Mirror` has.
fn mirrors(toml_text: &str) -> Vec<Mirror> {
    #[derive(serde::Deserialize)]
    struct M {
        mirrors: Vec<Mirror>,
    }
    match toml::from_str::<M>(toml_text) {
        Ok(m) => m.mirrors,
        Err(e) => panic!("this agent has no registry mirror mode ({e}): {toml_text}"),
    }
}

fn agent_config(ip: &str, dir: &std::path::Path, up: &Upstream) -> Config {
    let mut c = shoal_tests::agent::config(ip, dir);
    c.mirrors = up.mirrors();
    c
}

/// A hosts directory sending the registry's pulls to `agent`'s mirror.
fn hosts_for(ctd: &Containerd, name: &str, up: &Upstream, agent: &RunningAgent) -> PathBuf {
    hosts_dir(
        &ctd.dir().join(name),
        &up.registry.host(),
        &format!("http://{}/m/{MIRROR}", agent.proxy_addr()),
    )
    .unwrap()
}

/// Bytes the agent served to clients from its cache or its peers (not relayed from
/// the registry).
fn served_stored(a: &RunningAgent) -> u64 {
    let m = a.metrics();
    m.bytes_served.with_label_values(&["cache"]).get()
        + m.bytes_served.with_label_values(&["peer"]).get()
}

/// Pulls `up`'s image through `hosts`, asserts containerd stored exactly the image's
/// digests under the manifest's digest, then forgets it (empty content store again).
async fn pull_and_check(ctd: &Containerd, hosts: &std::path::Path, up: &Upstream, what: &str) {
    let r = up.reference();
    if let Err(e) = ctd.pull(&r, hosts, up.creds()).await {
        panic!(
            "{what}: ctr pull {r}: {e:#}\nregistry log (tail):\n{}",
            tail(&up.registry.log(), 15)
        );
    }
    assert_eq!(
        ctd.image_digest(&r).await.unwrap().as_deref(),
        Some(up.image.manifest.digest.as_str()),
        "{what}: the image's manifest digest"
    );
    assert_eq!(
        ctd.content().await.unwrap(),
        up.image.digests(),
        "{what}: containerd holds exactly the manifest, config and layers"
    );
    ctd.forget(&r).await.unwrap();
    assert!(
        ctd.content().await.unwrap().is_empty(),
        "{what}: content store emptied for the next pull"
    );
}

fn tail(s: &str, n: usize) -> String {
    let v: Vec<&str> = s.lines().collect();
    v[v.len().saturating_sub(n)..].join("\n")
}

/// One node, two pulls from two (emptied) content stores: the first costs the
/// registry one copy of the image's blobs, the second nothing.
/// What [`two_pulls`] leaves running for further checks.
struct Node {
    up: Upstream,
    agent: RunningAgent,
    ctd: Containerd,
    _cache: tempfile::TempDir,
}

async fn two_pulls(net: u8, mode: Mode, redirect: bool) -> Node {
    let up = Upstream::start(net, mode, redirect, u64::from(net)).await;
    let dir = tempfile::tempdir().unwrap();
    let agent =
        shoal_tests::agent::start(agent_config(&format!("127.0.{net}.10"), dir.path(), &up))
            .await
            .unwrap();
    let ctd = Containerd::start().await.unwrap();
    let hosts = hosts_for(&ctd, "hosts", &up, &agent);
    let want = up.image.blob_bytes();

    let before = up.blob_bytes();
    assert_eq!(before, 0, "the push downloaded no blobs");
    pull_and_check(&ctd, &hosts, &up, "first pull").await;
    let first = up.blob_bytes();
    assert!(
        first >= want && first as f64 <= 1.05 * want as f64,
        "first pull: the registry sent {first} blob bytes for an image of {want}"
    );

    pull_and_check(&ctd, &hosts, &up, "second pull").await;
    let second = up.blob_bytes() - first;
    assert_eq!(
        second,
        0,
        "second pull ({mode:?}, redirect {redirect}): the registry sent {second} blob bytes; log:\n{}",
        tail(&up.registry.log(), 20)
    );
    assert!(
        served_stored(&agent) >= want,
        "second pull served from the agent's cache"
    );
    Node {
        up,
        agent,
        ctd,
        _cache: dir,
    }
}

/// Clients the registry refuses (wrong password, no credentials, a token without
/// access, a forged token) get the registry's refusal and not one cached byte, after
/// an authorised client has cached every blob.
async fn refused_get_nothing(up: &Upstream, agent: &RunningAgent, ctd: &Containerd) {
    let cached = served_stored(agent);
    let sent = up.blob_bytes();
    let r = up.reference();
    let hosts = hosts_for(ctd, "hosts-refused", up, agent);
    for creds in [Some("alice:wrong-pass"), Some("mallory:s3cret-pass"), None] {
        let out = ctd.pull(&r, &hosts, creds).await;
        assert!(
            out.is_err(),
            "ctr pull with {creds:?} must be refused: {out:?}"
        );
        assert!(
            ctd.content()
                .await
                .unwrap()
                .iter()
                .all(|d| !up.image.blobs().any(|b| &b.digest == d)),
            "no blob stored for {creds:?}"
        );
    }
    let basic_wrong = format!(
        "Basic {}",
        base64::Engine::encode(
            &base64::engine::general_purpose::STANDARD,
            "alice:wrong-pass"
        )
    );
    let mut auths: Vec<Option<String>> =
        vec![None, Some(basic_wrong), Some("Bearer not.a.token".into())];
    if let Some(t) = &up.token {
        // A genuine token from the registry's own token server, granting nothing.
        let url = format!(
            "{}?service={}&scope=repository:{REPO}:pull",
            t.realm,
            token::SERVICE
        );
        let reply = shoal_tests::client::get(addr_of(&t.realm), &url)
            .await
            .unwrap();
        assert_eq!(reply.status, StatusCode::OK);
        let v: serde_json::Value = serde_json::from_slice(&reply.body).unwrap();
        auths.push(Some(format!("Bearer {}", v["token"].as_str().unwrap())));
    }
    for layer in &up.image.layers {
        let path = format!("/m/{MIRROR}/v2/{REPO}/blobs/{}", layer.digest);
        for a in &auths {
            let h: Vec<(&str, &str)> = a.iter().map(|v| ("authorization", v.as_str())).collect();
            let reply = origin_form_get(agent.proxy_addr(), &path, &h)
                .await
                .unwrap();
            assert!(
                reply.status == StatusCode::UNAUTHORIZED || reply.status == StatusCode::FORBIDDEN,
                "{a:?}: {} for a blob the registry refuses",
                reply.status
            );
            assert_ne!(
                reply.body.as_ref(),
                layer.bytes.as_slice(),
                "{a:?} got the blob"
            );
        }
    }
    assert_eq!(
        served_stored(agent) - cached,
        0,
        "refused clients were served cached bytes"
    );
    assert_eq!(
        up.blob_bytes() - sent,
        0,
        "refused clients cost the registry blob bytes"
    );
}

fn addr_of(url: &str) -> std::net::SocketAddr {
    let u: http::Uri = url.parse().unwrap();
    u.authority().unwrap().as_str().parse().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn no_auth_second_pull_costs_the_registry_nothing() {
    require_real!(TOOLS[0], TOOLS[1], TOOLS[2], TOOLS[3], TOOLS[4]);
    shoal_tests::logs();
    let n = two_pulls(110, Mode::NoAuth, false).await;
    n.agent.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn htpasswd_second_pull_from_cache_and_refused_clients_get_nothing() {
    require_real!(TOOLS[0], TOOLS[1], TOOLS[2], TOOLS[3], TOOLS[4]);
    shoal_tests::logs();
    let n = two_pulls(111, Mode::Htpasswd, false).await;
    refused_get_nothing(&n.up, &n.agent, &n.ctd).await;
    n.agent.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn token_auth_second_pull_from_cache_and_refused_clients_get_nothing() {
    require_real!(TOOLS[0], TOOLS[1], TOOLS[2], TOOLS[3], TOOLS[4]);
    shoal_tests::logs();
    let n = two_pulls(112, Mode::Token, false).await;
    let tokens = n.up.token.as_ref().unwrap().issued();
    assert!(
        tokens
            .iter()
            .any(|t| t.user.as_deref() == Some(USER) && !t.granted.is_empty()),
        "containerd went through the token flow: {tokens:?}"
    );
    refused_get_nothing(&n.up, &n.agent, &n.ctd).await;
    n.agent.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn redirected_blobs_are_followed_by_the_agent_and_cached() {
    require_real!(TOOLS[0], TOOLS[1], TOOLS[2], TOOLS[3], TOOLS[4]);
    shoal_tests::logs();
    let n = two_pulls(113, Mode::Token, true).await;
    let up = &n.up;
    let front = up.front.as_ref().unwrap();
    assert!(
        front.redirects() >= up.image.layers.len() as u64,
        "blob GETs were redirected"
    );
    assert_eq!(
        up.registry.blob_bytes(),
        0,
        "every blob byte came from the storage front, none from the registry itself"
    );
    n.agent.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn swarm_second_node_takes_the_blobs_from_the_first() {
    require_real!(TOOLS[0], TOOLS[1], TOOLS[2], TOOLS[3], TOOLS[4]);
    let net = 114;
    let up = Upstream::start(net, Mode::Htpasswd, false, 114).await;
    let m = up.mirrors();
    let mut s = TestSwarm::builder()
        .net(net)
        .agents(2)
        .tweak(move |_, c| c.mirrors = m.clone())
        .spawn()
        .await
        .unwrap();
    let ctd = Containerd::start().await.unwrap();
    let want = up.image.blob_bytes();
    let h0 = hosts_for(&ctd, "hosts-0", &up, s.agent(0));
    pull_and_check(&ctd, &h0, &up, "node 1").await;
    let first = up.blob_bytes();
    assert!(first >= want, "node 1 fetched the blobs from the registry");

    let h1 = hosts_for(&ctd, "hosts-1", &up, s.agent(1));
    pull_and_check(&ctd, &h1, &up, "node 2").await;
    assert_eq!(
        up.blob_bytes() - first,
        0,
        "node 2 cost the registry blob bytes; log:\n{}",
        tail(&up.registry.log(), 20)
    );
    let (peer, origin) = s.fetched(1);
    assert!(
        peer as f64 >= 0.9 * want as f64,
        "node 2 took its blobs from node 1: {peer} peer bytes, {origin} origin bytes, image {want}"
    );
    s.stop_tracker().await;
    s.shutdown().await;
}

/// skopeo (containers/image: podman and CRI-O pull the same way) through the agent.
/// containers/image takes a mirror's path as part of the repository name
/// (`AGENT/m/reg/demo/app` → `GET /v2/m/reg/demo/app/…`) and pings `GET /v2/` first;
/// the agent routes both (`registries::Routes`) to the one registry mirror.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn skopeo_inspects_and_copies_through_the_mirror() {
    require_real!(TOOLS[0], TOOLS[3]);
    shoal_tests::logs();
    let up = Upstream::start(115, Mode::NoAuth, false, 115).await;
    let dir = tempfile::tempdir().unwrap();
    let agent = shoal_tests::agent::start(agent_config("127.0.115.10", dir.path(), &up))
        .await
        .unwrap();
    let src = format!("docker://{}/m/{MIRROR}/{REPO}:1", agent.proxy_addr());
    let mut cmd = std::process::Command::new("skopeo");
    cmd.args(["inspect", "--raw", "--tls-verify=false", &src]);
    let raw = run(cmd, Duration::from_secs(60)).await.unwrap();
    assert_eq!(
        image::digest(raw.as_bytes()),
        up.image.manifest.digest,
        "skopeo saw the manifest byte for byte"
    );
    let out = tempfile::tempdir().unwrap();
    let dest = format!("oci:{}:1", out.path().display());
    let mut cmd = std::process::Command::new("skopeo");
    cmd.args(["copy", "--src-tls-verify=false", &src, &dest]);
    run(cmd, Duration::from_secs(60)).await.unwrap();
    for b in up.image.blobs() {
        let got = std::fs::read(out.path().join("blobs/sha256").join(b.hex())).unwrap();
        assert_eq!(got, b.bytes, "blob {} copied intact", b.digest);
    }
    let first = up.blob_bytes();
    assert!(first >= up.image.blob_bytes());
    let out2 = tempfile::tempdir().unwrap();
    let mut cmd = std::process::Command::new("skopeo");
    let dest = format!("oci:{}:1", out2.path().display());
    cmd.args(["copy", "--src-tls-verify=false", &src, &dest]);
    run(cmd, Duration::from_secs(60)).await.unwrap();
    assert_eq!(
        up.blob_bytes() - first,
        0,
        "the second copy came from the agent's cache"
    );
    agent.shutdown().await;
}

/// `shoal-agent containerd-config` (the library call behind it) reads containerd's
/// own `config_path` and writes `certs.d/REGISTRY/hosts.toml`; ctr pulls through
/// exactly that directory; `/ready` says the registry is wired (and, once the file is
/// gone, that it is not, still answering 200); a hosts.toml naming the bare agent URL
/// works through containerd's `?ns=REGISTRY`; a containerd config without
/// `config_path` is refused in one line.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn containerd_config_wires_pulls_and_ns_routes_them() {
    require_real!(TOOLS[0], TOOLS[1], TOOLS[2], TOOLS[3], TOOLS[4]);
    shoal_tests::logs();
    let up = Upstream::start(116, Mode::Htpasswd, false, 116).await;
    let ctd = Containerd::start().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = shoal_tests::agent::config("127.0.116.10", dir.path());
    // A real port: the hosts.toml containerd-config writes names it.
    cfg.proxy.listen = shoal_tests::real::free_port("127.0.116.10").unwrap();
    cfg.mirrors = mirrors(&format!(
        "[[mirrors]]\nname = \"{MIRROR}\"\nupstream = \"{}\"\nkind = \"registry\"\nregistry = \"{}\"\n",
        up.upstream_url(),
        up.registry.host()
    ));
    cfg.containerd.config_file = ctd.config_file();
    cfg.containerd.certs_dir = Some(ctd.certs_dir());
    let written = Wiring::write_all(&cfg).unwrap();
    let file = ctd.certs_dir().join(up.registry.host()).join("hosts.toml");
    assert_eq!(written.len(), 1);
    assert_eq!(written[0].path, file);

    let mut plain = cfg.clone();
    plain.containerd.config_file = ctd.dir().join("stock-config.toml");
    plain.containerd.certs_dir = None;
    std::fs::write(&plain.containerd.config_file, "version = 2\n").unwrap();
    let e = Wiring::write_all(&plain).unwrap_err().to_string();
    assert!(
        e.contains("config_path is not set") && !e.contains('\n'),
        "{e}"
    );

    let agent = shoal_tests::agent::start(cfg).await.unwrap();
    let ready = origin_form_get(agent.admin_addr(), "/ready", &[])
        .await
        .unwrap();
    let body = String::from_utf8_lossy(&ready.body).into_owned();
    assert_eq!(ready.status, StatusCode::OK);
    assert!(
        body.contains(&format!("containerd {}: wired", up.registry.host())),
        "{body}"
    );

    pull_and_check(
        &ctd,
        &ctd.certs_dir(),
        &up,
        "through the written hosts.toml",
    )
    .await;
    let first = up.blob_bytes();
    assert!(first >= up.image.blob_bytes());

    let bare = hosts_dir(
        &ctd.dir().join("bare"),
        &up.registry.host(),
        &format!("http://{}", agent.proxy_addr()),
    )
    .unwrap();
    pull_and_check(&ctd, &bare, &up, "through the bare agent URL (?ns=)").await;
    assert_eq!(
        up.blob_bytes() - first,
        0,
        "the ?ns= pull was served from the cache"
    );

    std::fs::remove_file(&file).unwrap();
    let ready = origin_form_get(agent.admin_addr(), "/ready", &[])
        .await
        .unwrap();
    let body = String::from_utf8_lossy(&ready.body).into_owned();
    assert_eq!(
        ready.status,
        StatusCode::OK,
        "wiring never changes the status"
    );
    assert!(body.contains("NOT wired"), "{body}");
    agent.shutdown().await;
}

/// The routing of registry requests that name no mirror in their path, against an
/// in-process origin (no root or packages needed): containerd's `?ns=REGISTRY` and
/// containers/image's `/v2/m/NAME/…` reach the mirror's upstream with the blob's
/// bytes; an `ns` no mirror stands for is not routed (`400`, nothing fetched).
#[tokio::test]
async fn ns_and_prefixed_paths_reach_the_right_mirror() {
    shoal_tests::logs();
    let origin = shoal_tests::Origin::start("127.0.117.1").await.unwrap();
    let data = shoal_tests::random_bytes(300_000, 117);
    let d = image::digest(&data);
    origin.put(
        &format!("/v2/{REPO}/blobs/{d}"),
        shoal_tests::Object::new(data.clone()),
    );
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = shoal_tests::agent::config("127.0.117.10", dir.path());
    cfg.mirrors = mirrors(&format!(
        "[[mirrors]]\nname = \"{MIRROR}\"\nupstream = \"http://{}\"\nkind = \"registry\"\nregistry = \"reg.example:5000\"\n\n\
         [[mirrors]]\nname = \"other\"\nupstream = \"http://127.0.117.2:9\"\nregistry = \"other.example\"\n",
        origin.addr()
    ));
    let agent = shoal_tests::agent::start(cfg).await.unwrap();
    for path in [
        format!("/v2/{REPO}/blobs/{d}?ns=reg.example%3A5000"),
        format!("/v2/m/{MIRROR}/{REPO}/blobs/{d}"),
    ] {
        let r = origin_form_get(agent.proxy_addr(), &path, &[])
            .await
            .unwrap();
        assert_eq!(r.status, StatusCode::OK, "{path}");
        assert_eq!(r.body, data, "{path}: the blob's bytes");
    }
    let before = origin.bytes_sent();
    let r = origin_form_get(
        agent.proxy_addr(),
        &format!("/v2/{REPO}/blobs/{d}?ns=unknown.example"),
        &[],
    )
    .await
    .unwrap();
    assert_eq!(
        r.status,
        StatusCode::BAD_REQUEST,
        "no mirror for that registry"
    );
    assert_eq!(origin.bytes_sent(), before);
    agent.shutdown().await;
}
