//! Shoal tracker: a soft-state directory of which agents hold which chunks of which
//! object versions, and the issuer of origin leases.
//!
//! The fleet PKI (mutual TLS with agents) is the sibling crate `shoal-pki`.

pub mod api;
pub mod app;
pub mod config;
pub mod metrics;
pub mod registry;
