use std::time::Duration;

use super::*;
use crate::fleet::scenario::Rate;

/// Twelve agents, a 16 MiB object in 1 MiB chunks, 20 Mbit/s nodes behind a 50 Mbit/s
/// origin (S4's rates, smaller), with latency and loss so that the random draws and
/// the loss bound are exercised.
fn small() -> SimConfig {
    SimConfig {
        scenario: Scenario {
            name: "test".into(),
            nodes: 12,
            object_bytes: 16 * 1024 * 1024,
            origin_up: Rate::mbit(50),
            node_up: Rate::mbit(20),
            node_down: Rate::mbit(20),
            mtu: crate::fleet::scenario::DEFAULT_MTU,
            gro: true,
        },
        seed: 7,
        latency: (Duration::from_millis(1), Duration::from_millis(10)),
        server_latency: Duration::from_millis(5),
        loss: 0.001,
        time_limit: Duration::from_secs(600),
        ..SimConfig::default()
    }
}

#[test]
fn flash_crowd_completes_with_one_origin_copy() {
    let r = run(&small());
    assert!(
        r.all_done(),
        "{} of {} finished",
        r.completions.len(),
        r.agents
    );
    assert!(
        r.origin_bytes as f64 <= 1.05 * r.object_bytes as f64,
        "origin sent {} of {} bytes",
        r.origin_bytes,
        r.object_bytes
    );
    assert!(
        r.peer_transfers >= 11 * 16,
        "{} peer transfers",
        r.peer_transfers
    );
    assert!(r.tracker_requests > 0);
    assert_eq!(r.sched_errors, 0);
    // Nobody can beat the bound.
    assert!(r.quantile(0.5).unwrap() >= r.t_min * 0.99);
}

#[test]
fn same_seed_same_run_other_seed_other_run() {
    let a = run(&small());
    let b = run(&small());
    assert_eq!(a.completions, b.completions);
    assert_eq!(
        (a.origin_bytes, a.tracker_requests, a.busy, a.events),
        (b.origin_bytes, b.tracker_requests, b.busy, b.events)
    );
    let c = run(&SimConfig { seed: 8, ..small() });
    assert_ne!(
        a.completions, c.completions,
        "the seed draws latencies and starts"
    );
}

#[test]
fn upload_queue_serves_waiters_instead_of_busy() {
    let off = run(&small());
    let on = run(&SimConfig {
        upload_queue: 8,
        ..small()
    });
    assert!(
        on.all_done(),
        "{} of {} finished",
        on.completions.len(),
        on.agents
    );
    assert!(on.origin_bytes as f64 <= 1.05 * on.object_bytes as f64);
    assert_eq!(off.queued, 0, "no queue, nobody waits");
    assert!(on.queued > 0, "requests waited for a slot");
    assert!(
        on.busy < off.busy,
        "busy with a queue {} vs without {}",
        on.busy,
        off.busy
    );
    assert_eq!(on.sched_errors, 0);
    let again = run(&SimConfig {
        upload_queue: 8,
        ..small()
    });
    assert_eq!(on.completions, again.completions, "same seed, same run");
}
