//! Shoal benchmarks: criterion micro-benchmarks (under `benches/`) and the fleet
//! benchmark ([`fleet`], run with `cargo run --release -p shoal-benches --bin fleet`).

pub mod fleet;
pub mod hit;
pub mod probe;
pub mod sim;
pub mod trackload;
