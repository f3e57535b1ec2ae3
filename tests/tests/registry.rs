//! Registry mirrors (OCI Distribution) against the fake registry of
//! `shoal_tests::registry_origin`: pulls as containerd makes them (ping, challenge,
//! token, manifest by tag with containerd's `Accept`, blobs), in every auth mode, with
//! the registry's own counters as the measure of what the agent saved.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http::{Method, StatusCode};
use shoal_agent::app::RunningAgent;
use shoal_agent::config::{Config, Mirror, MirrorKind};
use shoal_tests::client::eventually;
use shoal_tests::registry_origin::{
    self as reg, Auth, CONTAINERD_ACCEPT, DOCKER_MANIFEST, OCI_MANIFEST, RegistryOrigin, basic,
    digest, get,
};
use shoal_tests::swarm::TestSwarm;
use shoal_tests::{agent, random_bytes};

const REPO: &str = "team/app";

fn mirror(name: &str, r: &RegistryOrigin) -> Mirror {
    Mirror {
        name: name.into(),
        upstream: format!("http://{}", r.addr),
        kind: MirrorKind::Registry,
        ..Default::default()
    }
}

fn users() -> (String, String) {
    ("alice".to_owned(), "s3cret".to_owned())
}

/// A registry with three layers (sizes around the 64 KiB test chunk) and an OCI image
/// manifest `REPO:v1` naming them.
async fn registry(ip: &str, storage_ip: &str, auth: Auth) -> (RegistryOrigin, Vec<Bytes>) {
    let r = RegistryOrigin::start(ip, storage_ip, auth).await.unwrap();
    let layers: Vec<Bytes> = [300_000usize, 70_000, 1_000]
        .iter()
        .enumerate()
        .map(|(i, n)| random_bytes(*n, 90 + i as u64))
        .collect();
    let digests: Vec<String> = layers.iter().map(|b| r.blob(b.clone())).collect();
    r.image(REPO, "v1", OCI_MANIFEST, &digests);
    (r, layers)
}

async fn start(cfg: Config) -> RunningAgent {
    agent::start(cfg).await.unwrap()
}

fn agent_config(ip: &str, dir: &std::path::Path, r: &RegistryOrigin) -> Config {
    let mut c = agent::config(ip, dir);
    c.mirrors.push(mirror("reg", r));
    c
}

/// What a pull fetched.
#[derive(Debug)]
struct Pulled {
    manifest_digest: String,
    manifest_len: u64,
    layers: Vec<Bytes>,
}

/// The `Authorization` a client gets for `repo` the way containerd does: from the
/// challenge of the mirror's ping (`Basic`: the credentials; `Bearer`: a token from
/// the realm, fetched from the registry directly as containerd does).
async fn login(agent: SocketAddr, creds: Option<&(String, String)>, repo: &str) -> Option<String> {
    let ping = get(agent, "/m/reg/v2/", &[]).await.unwrap();
    if ping.status == StatusCode::OK {
        return None;
    }
    assert_eq!(
        ping.status,
        StatusCode::UNAUTHORIZED,
        "the registry's challenge is relayed"
    );
    let challenge = ping
        .header("www-authenticate")
        .expect("WWW-Authenticate relayed")
        .to_owned();
    let (user, password) = creds?;
    if challenge.starts_with("Basic") {
        return Some(basic(user, password));
    }
    let realm = challenge
        .split("realm=\"")
        .nth(1)
        .and_then(|s| s.split('"').next())
        .expect("realm");
    let (host, path) = realm
        .strip_prefix("http://")
        .and_then(|r| r.split_once('/'))
        .expect("http realm");
    let addr: SocketAddr = host.parse().unwrap();
    let t = reg::request(
        addr,
        Method::GET,
        &format!("/{path}?service=fake-registry&scope=repository:{repo}:pull"),
        &[("authorization", &basic(user, password))],
    )
    .await
    .unwrap();
    assert_eq!(t.status, StatusCode::OK);
    let v: serde_json::Value = serde_json::from_slice(&t.body).unwrap();
    Some(format!("Bearer {}", v["token"].as_str().unwrap()))
}

/// A pull of `REPO:v1` through `agent`: manifest by tag with containerd's Accept,
/// then every layer, each checked against its digest.
async fn pull(agent: SocketAddr, creds: Option<&(String, String)>) -> Pulled {
    let auth = login(agent, creds, REPO).await;
    let mut h: Vec<(&str, &str)> = vec![("accept", CONTAINERD_ACCEPT)];
    if let Some(a) = &auth {
        h.push(("authorization", a));
    }
    let m = get(agent, &format!("/m/reg/v2/{REPO}/manifests/v1"), &h)
        .await
        .unwrap();
    assert_eq!(m.status, StatusCode::OK, "{:?}", m.body);
    assert_eq!(m.header("content-type"), Some(OCI_MANIFEST));
    let manifest_digest = digest(&m.body);
    assert_eq!(
        m.header("docker-content-digest"),
        Some(manifest_digest.as_str())
    );
    assert!(m.header("vary").is_some_and(|v| v.contains("Accept")));
    let v: serde_json::Value = serde_json::from_slice(&m.body).unwrap();
    let mut layers = Vec::new();
    for l in v["layers"].as_array().unwrap() {
        let d = l["digest"].as_str().unwrap();
        let b = get(agent, &format!("/m/reg/v2/{REPO}/blobs/{d}"), &h)
            .await
            .unwrap();
        assert_eq!(b.status, StatusCode::OK);
        assert_eq!(digest(&b.body), d, "layer bytes match their digest");
        layers.push(b.body);
    }
    Pulled {
        manifest_digest,
        manifest_len: m.body.len() as u64,
        layers,
    }
}

fn total(layers: &[Bytes]) -> u64 {
    layers.iter().map(|b| b.len() as u64).sum()
}

/// One node, two pulls: the second takes 0 blob bytes (and no blob request at all,
/// within `auth_ttl`) from the registry.
async fn pull_twice(ip: &str, auth: Auth) {
    shoal_tests::logs();
    let (r, layers) = registry(ip, ip, auth.clone()).await;
    let dir = tempfile::tempdir().unwrap();
    let a = start(agent_config(ip, dir.path(), &r)).await;
    let creds = users();
    let creds = (auth != Auth::None).then_some(&creds);
    let first = pull(a.proxy_addr(), creds).await;
    assert!(first.layers == layers, "layers differ");
    assert_eq!(r.blob_bytes(), total(&layers), "cold pull: each blob once");
    assert_eq!(
        r.blob_requests(),
        3,
        "cold pull: one GET per blob, no extra HEAD (the fill's own answer is the check)"
    );
    let (blob_requests, blob_bytes) = (r.blob_requests(), r.blob_bytes());
    let second = pull(a.proxy_addr(), creds).await;
    assert!(second.layers == layers, "layers differ");
    assert_eq!(second.manifest_digest, first.manifest_digest);
    assert_eq!(
        r.blob_bytes(),
        blob_bytes,
        "second pull: 0 blob bytes from the registry"
    );
    assert_eq!(
        r.blob_requests(),
        blob_requests,
        "grants remembered: no blob request"
    );
    for l in &layers {
        let key = format!("oci:{}", digest(l));
        assert!(a.cache().cached(&key).is_some(), "{key} cached by digest");
    }
    let m = a.metrics();
    assert_eq!(
        m.registry_requests
            .with_label_values(&["blob", "cache"])
            .get(),
        3
    );
    assert_eq!(
        m.registry_requests
            .with_label_values(&["blob", "fill"])
            .get(),
        3
    );
    a.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn pull_twice_anonymous_zero_blob_bytes() {
    pull_twice("127.0.0.201", Auth::None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn pull_twice_basic_zero_blob_bytes() {
    let (user, password) = users();
    pull_twice("127.0.0.202", Auth::Basic { user, password }).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn pull_twice_bearer_zero_blob_bytes() {
    let (user, password) = users();
    pull_twice("127.0.0.203", Auth::Bearer { user, password }).await;
}

/// After a good client filled the cache: no credentials, wrong credentials and a
/// token for another repository each get the registry's 401 (challenge and body),
/// never a cached byte, for blobs and manifests alike.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn refused_clients_get_the_registry_answer_and_no_cached_bytes() {
    shoal_tests::logs();
    let ip = "127.0.0.204";
    let (user, password) = users();
    let (r, layers) = registry(ip, ip, Auth::Bearer { user, password }).await;
    // The same blob is also in another repository the token below is not for.
    let dir = tempfile::tempdir().unwrap();
    let a = start(agent_config(ip, dir.path(), &r)).await;
    let good = pull(a.proxy_addr(), Some(&users())).await;
    let big = digest(&layers[0]);
    let other_token = login(a.proxy_addr(), Some(&users()), "team/other")
        .await
        .unwrap();
    let manifest = format!("/m/reg/v2/{REPO}/manifests/{}", good.manifest_digest);
    let by_tag = format!("/m/reg/v2/{REPO}/manifests/v1");
    let blob = format!("/m/reg/v2/{REPO}/blobs/{big}");
    let wrong = format!("Bearer {}", "0".repeat(64));
    let cases: [(&str, Vec<(&str, &str)>); 3] = [
        ("no credentials", vec![]),
        ("wrong token", vec![("authorization", wrong.as_str())]),
        (
            "token for another repository",
            vec![("authorization", other_token.as_str())],
        ),
    ];
    for (what, auth) in &cases {
        for path in [&blob, &manifest, &by_tag] {
            let mut h = auth.clone();
            h.push(("accept", CONTAINERD_ACCEPT));
            let resp = get(a.proxy_addr(), path, &h).await.unwrap();
            assert_eq!(resp.status, StatusCode::UNAUTHORIZED, "{what} {path}");
            assert!(
                resp.header("www-authenticate")
                    .is_some_and(|c| c.starts_with("Bearer realm=")),
                "{what} {path}: the registry's challenge"
            );
            assert!(
                String::from_utf8_lossy(&resp.body).contains("UNAUTHORIZED"),
                "{what} {path}: the registry's body"
            );
            assert_ne!(
                resp.header("x-shoal-source"),
                Some("cache"),
                "{what} {path}"
            );
            assert!(
                resp.body.len() < 1000,
                "{what} {path}: no blob or manifest bytes"
            );
        }
    }
    let refused = a
        .metrics()
        .registry_auth_checks
        .with_label_values(&["refused"])
        .get();
    assert_eq!(refused, 9);
    assert_eq!(
        a.metrics()
            .registry_requests
            .with_label_values(&["blob", "refused"])
            .get(),
        3
    );
    // The good client is still served from the cache.
    let again = pull(a.proxy_addr(), Some(&users())).await;
    assert!(again.layers == layers, "layers differ");
    // Credentials never reach the disk in clear.
    let token = login(a.proxy_addr(), Some(&users()), REPO).await.unwrap();
    let secret = token.trim_start_matches("Bearer ");
    for e in walk(dir.path()) {
        let data = std::fs::read(&e).unwrap();
        assert!(
            !data.windows(secret.len()).any(|w| w == secret.as_bytes()),
            "{} holds the token",
            e.display()
        );
    }
    a.shutdown().await;
}

fn walk(p: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    if let Ok(rd) = std::fs::read_dir(p) {
        for e in rd.flatten() {
            let path = e.path();
            if path.is_dir() {
                out.extend(walk(&path));
            } else {
                out.push(path);
            }
        }
    }
    out
}

/// A blob whose bytes do not hash to its digest: the client's response is cut (an
/// error, never a clean end), counted, and nothing is cached: the next request goes
/// to the registry again.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn digest_mismatch_resets_and_caches_nothing() {
    shoal_tests::logs();
    let ip = "127.0.0.205";
    let (r, layers) = registry(ip, ip, Auth::None).await;
    let dir = tempfile::tempdir().unwrap();
    let a = start(agent_config(ip, dir.path(), &r)).await;
    let d = digest(&layers[0]);
    r.corrupt(&d);
    let path = format!("/m/reg/v2/{REPO}/blobs/{d}");
    let res = get(a.proxy_addr(), &path, &[]).await;
    assert!(
        res.is_err(),
        "the response is cut: {:?}",
        res.map(|r| r.status)
    );
    assert_eq!(a.metrics().registry_digest_mismatch.get(), 1);
    assert!(a.cache().cached(&format!("oci:{d}")).is_none());
    let before = r.blob_bytes();
    let res = get(a.proxy_addr(), &path, &[]).await;
    assert!(res.is_err());
    assert_eq!(
        r.blob_bytes(),
        before + layers[0].len() as u64,
        "asked the registry again"
    );
    assert_eq!(a.metrics().registry_digest_mismatch.get(), 2);
    // A manifest by digest is verified the same way: here a good one is cached.
    let m = get(
        a.proxy_addr(),
        &format!("/m/reg/v2/{REPO}/manifests/v1"),
        &[("accept", OCI_MANIFEST)],
    )
    .await
    .unwrap();
    assert_eq!(m.status, StatusCode::OK);
    assert!(
        a.cache()
            .cached(&format!("oci-manifest:{}", digest(&m.body)))
            .is_some()
    );
    a.shutdown().await;
}

/// Blob GETs redirected to storage on another address: the agent follows the
/// redirect itself without sending `Authorization` there, caches under the digest
/// (not the signed URL), and refuses a hop the egress policy does not allow.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn redirects_followed_with_egress_on_every_hop() {
    shoal_tests::logs();
    let (user, password) = users();
    let (r, layers) = registry("127.0.0.206", "127.0.0.207", Auth::Basic { user, password }).await;
    r.redirect_blobs();
    let dir = tempfile::tempdir().unwrap();
    let a = start(agent_config("127.0.0.208", dir.path(), &r)).await;
    let first = pull(a.proxy_addr(), Some(&users())).await;
    assert!(first.layers == layers, "layers differ");
    let storage: u64 = layers
        .iter()
        .map(|l| {
            r.served(&format!(
                "/storage/{}",
                digest(l).trim_start_matches("sha256:")
            ))
            .1
        })
        .sum();
    assert_eq!(
        storage,
        total(&layers),
        "every blob came from storage, once"
    );
    assert!(
        !r.storage_saw_authorization(),
        "Authorization never left the registry's host"
    );
    let before = r.blob_bytes();
    let second = pull(a.proxy_addr(), Some(&users())).await;
    assert!(second.layers == layers, "layers differ");
    assert_eq!(r.blob_bytes(), before, "second pull: 0 blob bytes");
    a.shutdown().await;

    // An agent that may reach the registry but not the storage address.
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = agent_config("127.0.0.209", dir.path(), &r);
    cfg.egress.allow_cidrs = vec!["127.0.0.206/32".parse().unwrap()];
    let b = start(cfg).await;
    let before = r.blob_bytes();
    let auth = basic(&users().0, &users().1);
    let d = digest(&layers[1]);
    let resp = get(
        b.proxy_addr(),
        &format!("/m/reg/v2/{REPO}/blobs/{d}"),
        &[("authorization", &auth)],
    )
    .await
    .unwrap();
    assert_eq!(resp.status, StatusCode::FORBIDDEN, "{:?}", resp.body);
    assert!(b.metrics().ssrf_blocked.get() >= 1);
    assert_eq!(
        r.blob_bytes(),
        before,
        "nothing fetched from the refused hop"
    );
    assert!(b.cache().cached(&format!("oci:{d}")).is_none());
    b.shutdown().await;
}

/// A tag is resolved with the registry on every request (tag_ttl 0): a moved tag is
/// served at once. With tag_ttl the old resolution is kept that long. A cached
/// manifest is not served to a client whose Accept excludes its type.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn tags_are_resolved_and_accept_is_honoured() {
    shoal_tests::logs();
    let ip = "127.0.0.210";
    let (r, _) = registry(ip, ip, Auth::None).await;
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = agent_config(ip, dir.path(), &r);
    cfg.mirrors.push(Mirror {
        tag_ttl: Duration::from_secs(600),
        ..mirror("slow", &r)
    });
    let a = start(cfg).await;
    let p = a.proxy_addr();
    let tag = |m: &'static str| format!("/m/{m}/v2/{REPO}/manifests/v1");
    let oci = [("accept", OCI_MANIFEST)];
    let v1 = get(p, &tag("reg"), &oci).await.unwrap();
    let v1_slow = get(p, &tag("slow"), &oci).await.unwrap();
    assert_eq!(v1.body, v1_slow.body);
    let blob = r.blob(Bytes::from_static(b"another layer"));
    let (d2, b2) = r.image(REPO, "v1", OCI_MANIFEST, &[blob]);
    let moved = get(p, &tag("reg"), &oci).await.unwrap();
    assert_eq!(moved.body, b2, "tag_ttl 0: the moved tag at once");
    assert_eq!(moved.header("docker-content-digest"), Some(d2.as_str()));
    let kept = get(p, &tag("slow"), &oci).await.unwrap();
    assert_eq!(kept.body, v1.body, "within tag_ttl: the old resolution");
    // The old digest is still cached; a client accepting only Docker types gets the
    // registry's 404 (an OCI manifest), not the cached copy.
    let old = format!("/m/reg/v2/{REPO}/manifests/{}", digest(&v1.body));
    let cached = get(p, &old, &oci).await.unwrap();
    assert_eq!(cached.header("x-shoal-source"), Some("cache"));
    let docker = get(p, &old, &[("accept", DOCKER_MANIFEST)]).await.unwrap();
    assert_eq!(docker.status, StatusCode::NOT_FOUND);
    assert!(String::from_utf8_lossy(&docker.body).contains("accept header does not support OCI"));
    assert!(docker.header("vary").is_some_and(|v| v.contains("Accept")));
    // Without the client's Accept the registry would have refused the fill (issue 10's
    // first symptom): the fill forwards it.
    assert_eq!(v1.status, StatusCode::OK);
    // Invalid paths: 400 with an OCI error body.
    for bad in [
        "/m/reg/v2/Team/app/manifests/v1",
        "/m/reg/v2/team/app/blobs/sha256:xyz",
        "/m/reg/v2/_catalog",
    ] {
        let e = get(p, bad, &[]).await.unwrap();
        assert_eq!(e.status, StatusCode::BAD_REQUEST, "{bad}");
        let v: serde_json::Value = serde_json::from_slice(&e.body).unwrap();
        assert!(v["errors"][0]["code"].is_string(), "{bad}");
    }
    a.shutdown().await;
}

/// Two agents in a swarm: the second node's blobs come from the first (0 registry
/// blob bytes), keyed by digest whatever repository names them.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn swarm_second_node_blobs_come_from_the_first() {
    shoal_tests::logs();
    let (user, password) = users();
    let (r, layers) = registry(
        "127.0.201.100",
        "127.0.201.100",
        Auth::Basic { user, password },
    )
    .await;
    let m = mirror("reg", &r);
    let s = TestSwarm::builder()
        .net(201)
        .agents(2)
        .tweak(move |_, c| c.mirrors.push(m.clone()))
        .spawn()
        .await
        .unwrap();
    let first = pull(s.agent(0).proxy_addr(), Some(&users())).await;
    assert!(first.layers == layers, "layers differ");
    assert_eq!(r.blob_bytes(), total(&layers));
    let tracker = s.tracker.as_ref().unwrap();
    let objects = || {
        let text = tracker.metrics().render();
        text.lines()
            .find_map(|l| l.strip_prefix("shoal_tracker_objects "))
            .and_then(|v| v.trim().parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    assert!(
        eventually(Duration::from_secs(10), || objects() >= 3.0).await,
        "agent 0 announced its blobs"
    );
    let before = r.blob_bytes();
    let second = pull(s.agent(1).proxy_addr(), Some(&users())).await;
    assert!(second.layers == layers, "layers differ");
    assert_eq!(
        r.blob_bytes(),
        before,
        "0 registry blob bytes for the second node"
    );
    let (peer, origin) = s.fetched(1);
    assert_eq!(
        origin, second.manifest_len,
        "only the manifest from the registry"
    );
    assert_eq!(peer, total(&layers));
    s.shutdown().await;
}

/// One blob named by two repositories is stored once: the second repository's pull
/// asks the registry only whether the client may read it there (a `HEAD`), then
/// serves the cached bytes.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_blob_in_two_repositories_is_stored_once() {
    shoal_tests::logs();
    let ip = "127.0.0.211";
    let (r, layers) = registry(ip, ip, Auth::None).await;
    let dir = tempfile::tempdir().unwrap();
    let a = start(agent_config(ip, dir.path(), &r)).await;
    let d = digest(&layers[0]);
    let one = get(a.proxy_addr(), &format!("/m/reg/v2/{REPO}/blobs/{d}"), &[])
        .await
        .unwrap();
    assert!(one.body == layers[0]);
    r.link("other/repo", &d);
    let before = r.blob_bytes();
    let two = get(
        a.proxy_addr(),
        &format!("/m/reg/v2/other/repo/blobs/{d}"),
        &[],
    )
    .await
    .unwrap();
    assert!(two.body == layers[0], "{} bytes", two.body.len());
    assert_eq!(two.header("x-shoal-source"), Some("cache"));
    assert_eq!(
        r.blob_bytes(),
        before,
        "no blob bytes for the second repository"
    );
    assert_eq!(
        r.served(&format!("/v2/other/repo/blobs/{d}")).0,
        1,
        "one HEAD: the registry was asked about the second repository"
    );
    let keys: Vec<String> = a.cache().all().iter().map(|m| m.url.clone()).collect();
    assert_eq!(
        keys,
        vec![format!("oci:{d}")],
        "one object, keyed by digest"
    );
    a.shutdown().await;
}

/// Grants are per object: a client allowed to pull one repository does not get a
/// layer of another repository from the cache by naming its digest; the registry's
/// `404 BLOB_UNKNOWN` is relayed and no cached byte.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_layer_of_one_repository_is_not_served_through_another() {
    shoal_tests::logs();
    let ip = "127.0.0.212";
    let (user, password) = users();
    let (r, _) = registry(ip, ip, Auth::Basic { user, password }).await;
    let private = r.blob(random_bytes(100_000, 97));
    r.image(
        "team/private",
        "v1",
        OCI_MANIFEST,
        std::slice::from_ref(&private),
    );
    let dir = tempfile::tempdir().unwrap();
    let a = start(agent_config(ip, dir.path(), &r)).await;
    let auth = basic(&users().0, &users().1);
    let h = [("authorization", auth.as_str())];
    // The client may pull both; it pulls team/app, and the private layer where it is.
    pull(a.proxy_addr(), Some(&users())).await;
    let p = get(
        a.proxy_addr(),
        &format!("/m/reg/v2/team/private/blobs/{private}"),
        &h,
    )
    .await
    .unwrap();
    assert_eq!(p.status, StatusCode::OK);
    assert!(a.cache().cached(&format!("oci:{private}")).is_some());
    // Named through team/app, which does not hold it: the registry's answer.
    let leak = get(
        a.proxy_addr(),
        &format!("/m/reg/v2/{REPO}/blobs/{private}"),
        &h,
    )
    .await
    .unwrap();
    assert_eq!(leak.status, StatusCode::NOT_FOUND);
    assert!(String::from_utf8_lossy(&leak.body).contains("BLOB_UNKNOWN"));
    assert!(leak.body.len() < 1000, "{} bytes", leak.body.len());
    a.shutdown().await;
}

/// A client that joins another client's fill in flight is checked like one asking
/// for cached bytes: without credentials it gets the registry's 401, while the
/// client that started the fill gets the blob.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_client_joining_a_fill_in_flight_is_checked_too() {
    shoal_tests::logs();
    let ip = "127.0.0.213";
    let (user, password) = users();
    let (r, layers) = registry(ip, ip, Auth::Basic { user, password }).await;
    let dir = tempfile::tempdir().unwrap();
    let a = start(agent_config(ip, dir.path(), &r)).await;
    let p = a.proxy_addr();
    let d = digest(&layers[0]);
    let path = format!("/m/reg/v2/{REPO}/blobs/{d}");
    r.hold_blobs();
    let good = {
        let path = path.clone();
        let auth = basic(&users().0, &users().1);
        tokio::spawn(async move { get(p, &path, &[("authorization", &auth)]).await })
    };
    assert!(eventually(Duration::from_secs(5), || r.blob_gets_arrived() == 1).await);
    let bad = {
        let path = path.clone();
        tokio::spawn(async move { get(p, &path, &[]).await })
    };
    r.release_blobs();
    let good = good.await.unwrap().unwrap();
    let bad = bad.await.unwrap().unwrap();
    assert_eq!(good.status, StatusCode::OK);
    assert!(good.body == layers[0]);
    assert_eq!(bad.status, StatusCode::UNAUTHORIZED);
    assert!(bad.header("www-authenticate").is_some());
    assert!(bad.body.len() < 1000, "{} bytes", bad.body.len());
    a.shutdown().await;
}

/// `auth_ttl = 0s`: every response from the cache is preceded by a `HEAD` with the
/// client's credentials; a client `HEAD` is relayed (with `Vary: Accept` on
/// manifests).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn zero_auth_ttl_asks_before_every_cached_response() {
    shoal_tests::logs();
    let ip = "127.0.0.214";
    let (r, layers) = registry(ip, ip, Auth::None).await;
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = agent::config(ip, dir.path());
    cfg.mirrors.push(Mirror {
        auth_ttl: Duration::ZERO,
        ..mirror("reg", &r)
    });
    let a = start(cfg).await;
    let d = digest(&layers[1]);
    let path = format!("/m/reg/v2/{REPO}/blobs/{d}");
    for _ in 0..3 {
        let b = get(a.proxy_addr(), &path, &[]).await.unwrap();
        assert!(b.body == layers[1]);
    }
    // One GET (the fill), then one HEAD per cached response.
    assert_eq!(r.served(&format!("/v2/{REPO}/blobs/{d}")).0, 3);
    let checks = &a.metrics().registry_auth_checks;
    assert_eq!(checks.with_label_values(&["granted"]).get(), 3);
    assert_eq!(checks.with_label_values(&["remembered"]).get(), 0);
    let head = reg::request(
        a.proxy_addr(),
        Method::HEAD,
        &format!("/m/reg/v2/{REPO}/manifests/v1"),
        &[("accept", OCI_MANIFEST)],
    )
    .await
    .unwrap();
    assert_eq!(head.status, StatusCode::OK);
    assert_eq!(head.header("content-type"), Some(OCI_MANIFEST));
    assert!(head.header("docker-content-digest").is_some());
    assert!(head.header("vary").is_some_and(|v| v.contains("Accept")));
    a.shutdown().await;
}

/// In a swarm, a blob whose bytes do not hash to its digest is cut and counted, and
/// no node records it.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn swarm_digest_mismatch_is_cut_and_not_recorded() {
    shoal_tests::logs();
    let (r, layers) = registry("127.0.202.100", "127.0.202.100", Auth::None).await;
    let m = mirror("reg", &r);
    let s = TestSwarm::builder()
        .net(202)
        .agents(1)
        .tweak(move |_, c| c.mirrors.push(m.clone()))
        .spawn()
        .await
        .unwrap();
    let d = digest(&layers[0]);
    r.corrupt(&d);
    let res = get(
        s.agent(0).proxy_addr(),
        &format!("/m/reg/v2/{REPO}/blobs/{d}"),
        &[],
    )
    .await;
    assert!(res.is_err(), "cut: {:?}", res.map(|r| r.status));
    let a = s.agent(0);
    assert!(
        eventually(Duration::from_secs(5), || a
            .metrics()
            .registry_digest_mismatch
            .get()
            == 1)
        .await
    );
    assert!(a.cache().cached(&format!("oci:{d}")).is_none());
    s.shutdown().await;
}

/// A registry whose blob redirects never end: the agent gives up after 5 hops (6
/// requests) with a 502, and caches nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn endless_redirects_stop_after_five_hops() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU64, Ordering};

    use http_body_util::Full;
    use hyper::server::conn::http1;
    use hyper::service::service_fn;
    use hyper_util::rt::TokioIo;

    shoal_tests::logs();
    let ip = "127.0.0.215";
    let l = tokio::net::TcpListener::bind((ip, 0)).await.unwrap();
    let addr = l.local_addr().unwrap();
    let gets = Arc::new(AtomicU64::new(0));
    let g = gets.clone();
    tokio::spawn(async move {
        while let Ok((s, _)) = l.accept().await {
            let g = g.clone();
            tokio::spawn(async move {
                let svc = service_fn(move |req: http::Request<hyper::body::Incoming>| {
                    let g = g.clone();
                    async move {
                        g.fetch_add(1, Ordering::SeqCst);
                        let n = g.load(Ordering::SeqCst);
                        let r = http::Response::builder()
                            .status(StatusCode::FOUND)
                            .header("location", format!("{}?hop={n}", req.uri().path()))
                            .body(Full::new(Bytes::new()))
                            .unwrap();
                        Ok::<_, std::convert::Infallible>(r)
                    }
                });
                let _ = http1::Builder::new()
                    .serve_connection(TokioIo::new(s), svc)
                    .await;
            });
        }
    });
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = agent::config(ip, dir.path());
    cfg.mirrors.push(Mirror {
        name: "reg".into(),
        upstream: format!("http://{addr}"),
        kind: MirrorKind::Registry,
        ..Default::default()
    });
    let a = start(cfg).await;
    let d = digest(b"never served");
    let resp = get(a.proxy_addr(), &format!("/m/reg/v2/{REPO}/blobs/{d}"), &[])
        .await
        .unwrap();
    assert_eq!(resp.status, StatusCode::BAD_GATEWAY, "{:?}", resp.body);
    assert!(String::from_utf8_lossy(&resp.body).contains("more than 5 redirects"));
    assert_eq!(
        gets.load(Ordering::SeqCst),
        6,
        "the first request and 5 hops"
    );
    assert!(a.cache().is_empty());
    a.shutdown().await;
}
