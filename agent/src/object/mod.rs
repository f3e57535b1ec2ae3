//! Object versions: which URLs are cached, single flight, and filling from the origin.
//!
//! [`ObjectCache::lookup`] answers "how do I serve this GET?": from a complete cached
//! version ([`Lookup::Object`]), by joining a fill in progress ([`Lookup::Fill`]), or
//! by passing the origin's response through ([`Lookup::Pass`]). However many clients
//! ask for one URL at once, one origin request is made: the first becomes the leader
//! (in a task of its own, so its client hanging up cancels nothing) and the others
//! wait for its outcome.
//!
//! Only `200` responses with a length, a validator (strong ETag or Last-Modified, a
//! digest-named URL, or a URL under an `immutable` rule) and no
//! `no-store`/`private`/`Set-Cookie`/`Vary` (other than `Accept-Encoding`) are
//! cached; everything else passes through. Immutable versions (digest-named URLs,
//! `immutable` rules) are served from the cache whatever the client's
//! `Cache-Control`: their bytes cannot change, and a digest, where known, was
//! checked when they were filled. Requests are sent to the origin without the
//! client's headers (`Accept-Encoding: identity`; only the leader's `User-Agent` is
//! kept), so cached bytes are the origin's default representation in the identity
//! encoding, and fit every client; an origin that varies it by request header says
//! so with `Vary`.
//!
//! Where things are: `flight` (single flight, the leader's origin or swarm request,
//! failed fills), `index` (the cached versions, in memory and on disk), `policy`
//! (pure: what may be cached under which key), [`fill`] (a version being filled,
//! which readers follow chunk by chunk, and how every fill ends, whoever fetched its
//! chunks), `origin_fill` (a fill from one streaming origin GET), [`read`] (serving a
//! cached version, with range repair), [`version`] (checks on ranged origin answers).
//! The swarm is a second source of fills (`crate::swarm`), handed in at
//! [`ObjectCache::open`].

mod ahead;
mod behind;
pub(crate) mod budget;
mod cache_control;
mod cut;
pub mod error;
pub mod fill;
mod flight;
mod index;
pub mod meta;
pub(crate) mod origin_fill;
mod policy;
pub mod read;
mod stale;
pub(crate) mod version;
mod whole;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use http::header::{HeaderMap, HeaderValue};
use http::{Response, Uri};
use hyper::body::Incoming;

use shoal_proto::Sha256Digest;

use crate::config::Mode;
use crate::metrics::Metrics;
use crate::origin::OriginClient;
use crate::origin::reason::FetchReason;
use crate::store::{ChunkStore, MetaStore};
pub use error::{Blame, FillError};
pub use fill::Fill;
pub use meta::{ObjectMeta, Repr};

/// Settings of the object layer, from `[cache]`.
#[derive(Debug, Clone)]
pub struct CacheSettings {
    /// Chunk size for new object versions, bytes.
    pub chunk_size: u32,
    /// Serve without revalidating for this long.
    pub freshness: Duration,
    /// Serve a stale copy this long past its freshness when revalidation fails on
    /// the origin's side (`stale.rs`); zero turns it off.
    pub stale_if_error: Duration,
    /// Chunk bytes all origin fills may queue for the disk (`cache.fill_buffer`).
    pub fill_buffer: u64,
    /// Chunk bytes all responses may hold read ahead of their clients
    /// (`cache.read_buffer`, [`budget::ReadBudget`]).
    pub read_buffer: u64,
    /// Origin fills of objects over two chunks at once (`cache.max_fills`); past it
    /// a cold miss is passed through uncached.
    pub max_fills: usize,
}

/// What one client GET wants.
#[derive(Debug, Clone)]
pub struct Want {
    /// Absolute origin URL.
    pub url: Uri,
    /// The rule's mode (`Cache` or `P2p`; `Pass` never reaches the cache).
    pub mode: Mode,
    /// Smaller responses are passed through.
    pub min_size: u64,
    /// The client asked for revalidation (`Cache-Control: no-cache` / `max-age=0`).
    /// Ignored for immutable versions.
    pub revalidate: bool,
    /// The client's `User-Agent`, sent on the leader's origin requests (with
    /// `shoal/VERSION` appended by the origin client).
    pub user_agent: Option<HeaderValue>,
    /// The URL's rule says its bytes never change (`Rule::immutable`).
    pub immutable: bool,
    /// Registry mirrors: the object is keyed by digest, not by `url`, and fetched
    /// with the client's credentials and redirects followed ([`Upstream`]).
    pub upstream: Option<Arc<Upstream>>,
}

/// How a registry mirror's object is keyed and fetched (`proxy/registry`): the
/// index and flight key is its digest (`oci:sha256:…`, the same whatever repository
/// or registry named it), its bytes must hash to that digest, and its origin
/// requests carry the client's `Authorization`/`Accept` and follow redirects.
/// Held in memory only, for the fill's life: never persisted, never sent to peers
/// or the tracker (which see the digest's [`ObjectKey`] and chunk ids).
#[derive(Clone)]
pub struct Upstream {
    /// The index key, also `ObjectMeta::url` of the cached version.
    pub key: String,
    /// The object key and the whole-object check.
    pub digest: Sha256Digest,
    /// Request headers for the origin besides the agent's own (`Authorization`,
    /// `Accept`).
    pub headers: HeaderMap,
}

impl std::fmt::Debug for Upstream {
    /// Header values are left out: they hold credentials.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Upstream")
            .field("key", &self.key)
            .field("digest", &self.digest)
            .field("headers", &self.headers.keys().collect::<Vec<_>>())
            .finish()
    }
}

impl Want {
    /// The index and flight key: the upstream's key, else the URL.
    pub fn key(&self) -> String {
        match &self.upstream {
            Some(u) => u.key.clone(),
            None => self.url.to_string(),
        }
    }
}

/// Whether `key` is a registry object's digest key (see [`Upstream`]), which has no
/// URL of its own to repair chunks from.
pub fn is_registry_key(key: &str) -> bool {
    key.starts_with("oci:") || key.starts_with("oci-manifest:")
}

/// How to serve a GET. See the module docs.
#[derive(Debug)]
pub enum Lookup {
    Object(Arc<ObjectMeta>),
    Fill(Arc<Fill>),
    /// The origin's own response, not cacheable: relay it as is. The reason is the
    /// one its request was sent for.
    Pass(Response<Incoming>, FetchReason),
    /// Another client's origin response was not cacheable: make your own request.
    Retry,
    /// A stale version, served because revalidating it failed on the origin's side
    /// (stale-if-error): answer with an `Age` header.
    Stale(Arc<ObjectMeta>),
}

/// The object layer. Cheap to clone.
#[derive(Debug, Clone)]
pub struct ObjectCache {
    inner: Arc<Inner>,
}

#[derive(Debug)]
pub(crate) struct Inner {
    pub(crate) store: ChunkStore,
    pub(crate) meta: MetaStore,
    pub(crate) origin: OriginClient,
    pub(crate) metrics: Metrics,
    pub(crate) settings: CacheSettings,
    objects: RwLock<HashMap<String, Arc<ObjectMeta>>>,
    flights: Mutex<HashMap<String, flight::Flight>>,
    /// The swarm `p2p` URLs go through, when a tracker is configured.
    swarm: Option<Arc<crate::swarm::Swarm>>,
    /// Bytes origin fills may queue for the disk (`behind`).
    pub(crate) fill_budget: behind::Budget,
    /// Bytes responses may hold read ahead (`read`).
    pub(crate) read_budget: budget::ReadBudget,
    /// Chunks origin fills may have being hashed at once, all fills together
    /// (`origin_fill::hash_slots`).
    pub(crate) hash_slots: Arc<tokio::sync::Semaphore>,
    /// Origin fills running (`behind`: how many loose chunks each keeps).
    pub(crate) origin_fills: Arc<std::sync::atomic::AtomicUsize>,
    /// Write-behind writer tasks still running (`behind`), for a shutdown to drain.
    pub(crate) writers: tokio::sync::watch::Sender<usize>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // Every critical section here is a few map operations that cannot panic halfway.
    m.lock().unwrap_or_else(|p| p.into_inner())
}
