//! Tracker client against real in-process trackers on 127.0.0.1 (mutual TLS).

use std::net::{IpAddr, Ipv4Addr};

use shoal_pki::{DevPki, dev_pki};
use shoal_proto::Layout;
use shoal_proto::tracker::ChunkBitmap;
use shoal_tracker::app::{RunningTracker, Tracker};

use super::*;

const LOCAL: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

fn pki() -> DevPki {
    dev_pki(&["tracker".to_owned(), "a".to_owned()], &[vec![LOCAL]]).unwrap()
}

async fn tracker(pki: &DevPki) -> RunningTracker {
    let mut cfg = shoal_tracker::config::Config::default();
    cfg.server.listen = "127.0.0.1:0".parse().unwrap();
    cfg.admin.listen = "127.0.0.1:0".parse().unwrap();
    Tracker::start(cfg, pki.identity(0).unwrap(), prometheus::Registry::new())
        .await
        .unwrap()
}

/// A URL nobody listens on (bound, then released).
async fn dead_url() -> String {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    format!("https://{}", l.local_addr().unwrap())
}

fn client(pki: &DevPki, urls: Vec<String>, metrics: &Metrics) -> TrackerClient {
    let cfg = TrackerConfig {
        urls,
        timeout: Duration::from_secs(5),
        backoff: Duration::from_secs(60),
        ..TrackerConfig::default()
    };
    let tls = pki
        .identity(1)
        .unwrap()
        .client_config(&[b"shoal/1"])
        .unwrap();
    TrackerClient::new(
        &cfg,
        tls,
        "0.0.0.0:7482".parse().unwrap(),
        Topology::default(),
        metrics.clone(),
    )
    .unwrap()
}

fn sync_req(c: &TrackerClient, key: &ObjectKey) -> SyncRequest {
    let mut r = c.request(key.clone());
    r.layout = Some(Layout::new(4 << 20, 1 << 20).unwrap());
    r.want_leases = 2;
    r
}

fn key(i: usize) -> ObjectKey {
    ObjectKey::immutable(&format!("sha256:{i:064x}"), 4 << 20).unwrap()
}

/// A key whose first-choice replica is `urls[first]`.
fn key_preferring(urls: &[String], first: usize) -> ObjectKey {
    let u: Vec<&str> = urls.iter().map(String::as_str).collect();
    (0..)
        .map(key)
        .find(|k| rendezvous(&u, k)[0] == first)
        .unwrap()
}

#[test]
fn rendezvous_choice_is_stable_and_spread() {
    let urls = ["https://t1:7490", "https://t2:7490", "https://t3:7490"];
    let mut per = [0usize; 3];
    for i in 0..300 {
        let k = key(i);
        let order = rendezvous(&urls, &k);
        assert_eq!(order, rendezvous(&urls, &k), "deterministic");
        let mut sorted = order.clone();
        sorted.sort();
        assert_eq!(sorted, vec![0, 1, 2], "a permutation");
        per[order[0]] += 1;
        // Dropping a replica moves only its keys; the others keep their choice.
        let without_t2 = rendezvous(&[urls[0], urls[2]], &k);
        let first = [0, 2][without_t2[0]];
        if order[0] != 1 {
            assert_eq!(first, order[0]);
        } else {
            assert_eq!(first, order[1], "falls to the key's next choice");
        }
    }
    assert!(per.iter().all(|&n| n > 50), "spread: {per:?}");
}

#[tokio::test]
async fn sync_and_announce_round_trip() {
    let pki = pki();
    let t = tracker(&pki).await;
    let m = Metrics::default();
    let c = client(&pki, vec![format!("https://{}", t.local_addr())], &m);
    let k = key(1);
    let r = c.sync(sync_req(&c, &k)).await.unwrap();
    assert_eq!(r.layout, Some(Layout::new(4 << 20, 1 << 20).unwrap()));
    assert_eq!(r.leases, vec![0, 1]);
    c.set_load(3);
    let a = c
        .announce(vec![HeldObject {
            key: k.clone(),
            layout: Layout::new(4 << 20, 1 << 20).unwrap(),
            have: ChunkBitmap::full(1),
            complete: false,
            publish: Vec::new(),
        }])
        .await
        .unwrap();
    assert_eq!(a.accepted, 1);
    assert_eq!(a.want_ids, vec![k]);
    assert_eq!(m.tracker_errors.get(), 0);
    assert_eq!(m.tracker_announce_duration.get_sample_count(), 2);
    t.shutdown().await;
}

#[tokio::test]
async fn falls_back_to_the_next_replica_and_skips_the_dead_one() {
    let pki = pki();
    let t = tracker(&pki).await;
    let urls = vec![dead_url().await, format!("https://{}", t.local_addr())];
    let m = Metrics::default();
    let c = client(&pki, urls.clone(), &m);
    let k = key_preferring(&urls, 0);
    assert_eq!(c.replicas_for(&k), vec![urls[0].as_str(), urls[1].as_str()]);
    let r = c.sync(sync_req(&c, &k)).await.unwrap();
    assert!(r.layout.is_some());
    assert_eq!(
        m.tracker_errors.get(),
        1,
        "the dead replica was tried first"
    );
    // During its back-off the dead replica is not tried again.
    c.sync(sync_req(&c, &k)).await.unwrap();
    assert_eq!(m.tracker_errors.get(), 1);
    assert!(!c.is_down());
    t.shutdown().await;
}

#[tokio::test]
async fn unavailable_during_backoff_after_every_replica_failed() {
    let pki = pki();
    let m = Metrics::default();
    let c = client(&pki, vec![dead_url().await, dead_url().await], &m);
    let k = key(2);
    let e = c.sync(sync_req(&c, &k)).await.unwrap_err();
    assert!(matches!(e, TrackerError::Down { .. }), "{e}");
    assert_eq!(m.tracker_errors.get(), 2);
    assert!(c.is_down());
    let e = c.sync(sync_req(&c, &k)).await.unwrap_err();
    assert_eq!(e, TrackerError::Unavailable);
    let e = c.announce(vec![]).await;
    assert!(e.is_ok(), "nothing to send, nothing fails");
    assert_eq!(m.tracker_errors.get(), 2, "no attempt while in back-off");
}

#[tokio::test]
async fn refusals_are_not_retried_elsewhere() {
    let pki = pki();
    let t1 = tracker(&pki).await;
    let t2 = tracker(&pki).await;
    let urls = vec![
        format!("https://{}", t1.local_addr()),
        format!("https://{}", t2.local_addr()),
    ];
    let m = Metrics::default();
    let cfg = TrackerConfig {
        urls: urls.clone(),
        ..TrackerConfig::default()
    };
    let tls = pki.identity(1).unwrap().client_config(&[]).unwrap();
    // Announces an address that is neither our source IP nor in our certificate.
    let c = TrackerClient::new(
        &cfg,
        tls,
        "10.9.9.9:7482".parse().unwrap(),
        Topology::default(),
        m.clone(),
    )
    .unwrap();
    let k = key_preferring(&urls, 0);
    let e = c.sync(sync_req(&c, &k)).await.unwrap_err();
    assert!(
        matches!(&e, TrackerError::Refused { status: 403, reason, .. } if reason.contains("10.9.9.9")),
        "{e}"
    );
    assert!(!e.retry_elsewhere());
    assert_eq!(
        m.tracker_errors.get(),
        1,
        "the second replica was not asked"
    );
    assert!(!c.is_down());
    t1.shutdown().await;
    t2.shutdown().await;
}

#[test]
fn bad_configuration_is_refused() {
    let pki = pki();
    let tls = pki.identity(1).unwrap().client_config(&[]).unwrap();
    let mk = |urls: Vec<String>| {
        TrackerClient::new(
            &TrackerConfig {
                urls,
                ..TrackerConfig::default()
            },
            tls.clone(),
            "0.0.0.0:1".parse().unwrap(),
            Topology::default(),
            Metrics::default(),
        )
    };
    assert_eq!(mk(vec![]).unwrap_err(), TrackerError::NotConfigured);
    assert!(matches!(
        mk(vec!["http://t:1".into()]).unwrap_err(),
        TrackerError::BadUrl { .. }
    ));
}
