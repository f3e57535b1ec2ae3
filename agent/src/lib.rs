//! Shoal edge agent: an HTTP proxy and verified BLAKE3 chunk cache that fetches
//! missing chunks from nearby peers over QUIC before going to the origin.
//!
//! Module map: [`config`] (typed settings), [`proxy`] (client-facing HTTP),
//! [`object`] (object versions, single flight, fills), [`store`] (chunks on disk and
//! in memory), [`origin`] + [`egress`] (fetching from origins safely),
//! [`transport`] (QUIC peer protocol), [`discovery`] (tracker client), [`swarm`]
//! (fetching an object from the swarm), [`metrics`], [`admin`], [`app`] (wiring), [`get`] (the `get` and `status`
//! commands).

pub mod admin;
pub mod app;
pub mod config;
pub mod containerd;
pub mod discovery;
pub mod egress;
pub mod get;
pub mod metrics;
pub mod object;
pub mod origin;
pub mod proxy;
pub mod registries;
pub mod store;
pub mod swarm;
pub mod transport;
