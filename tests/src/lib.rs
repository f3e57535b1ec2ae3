//! Shoal's multi-node test harness: a real HTTP origin, agents and trackers in one
//! process on 127.0.0.x addresses with port 0, and clients that assert on bytes.
//! Scenario tests live in `tests/tests/`, one file per area.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    missing_debug_implementations
)]

pub mod agent;
pub mod client;
pub mod fault_origin;
pub mod real;
pub mod registry_origin;
pub mod swarm;
pub mod version_origin;

/// The origin lives in the demo crate, which uses it too.
pub use shoal_demo::origin::{self, Object, Origin, random_bytes};

/// Installs a test log subscriber once (`RUST_LOG` controls it).
pub fn logs() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
}
