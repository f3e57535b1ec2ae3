//! Shoal tracker: a soft-state directory of which agents hold which chunks of which
//! object versions, and the issuer of origin leases.
//!
//! Also home of [`tls`], the fleet PKI helpers shared by the tracker and the agents
//! (the agent crate depends on this one for its in-process demo).

pub mod api;
pub mod app;
pub mod config;
pub mod metrics;
pub mod registry;
pub mod tls;
