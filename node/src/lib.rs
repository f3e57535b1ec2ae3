//! Node plumbing shared by `shoal-agent` and `shoal-tracker`: the admin listener
//! ([`admin`]), the layered configuration loader ([`config`]) and metric registration
//! ([`metrics`]). What each process serves, configures and counts stays in its own
//! crate; only the mechanics are here.

pub mod admin;
pub mod config;
pub mod metrics;
