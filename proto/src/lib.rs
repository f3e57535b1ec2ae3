//! Shoal's I/O-free core.
//!
//! Everything here is pure data and logic: identifiers, manifests, byte ranges,
//! chunking, the peer wire codec, tracker messages and the fetch scheduler. No
//! networking, files, clocks or async runtimes: callers pass `now` in and perform the
//! I/O that the state machines ask for. This keeps the protocol testable with simulated
//! time and lets the agent, the tracker and the benches share one definition.

pub mod bucket;
pub mod chunker;
pub mod digest;
pub mod groups;
pub mod id;
pub mod key;
pub mod manifest;
pub mod oci;
pub mod peer;
pub mod range;

pub use bucket::TokenBucket;
pub use chunker::{Chunk, Chunker};
pub use digest::Sha256Digest;
pub use id::{ChunkId, ManifestId};
pub use key::{ObjectKey, Validator};
pub use manifest::{Layout, Manifest};
pub use peer::{PeerAddr, PeerId, Proximity, Topology};
pub use range::{ByteRange, RangeDecision};
pub mod sched;
pub mod tracker;
pub mod wire;
