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

mod ahead;
pub mod error;
pub mod fill;
pub mod meta;
pub(crate) mod origin_fill;
pub mod read;
mod stale;
pub(crate) mod version;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, SystemTime};

use http::header::{self, HeaderMap, HeaderValue};
use http::{Method, Response, StatusCode, Uri};
use hyper::body::Incoming;
use shoal_proto::{Layout, ObjectKey, Validator};
use tokio::sync::watch;

use crate::config::Mode;
use crate::metrics::Metrics;
use crate::origin::reason::FetchReason;
use crate::origin::{OriginClient, OriginError};
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
    /// `sha256:<hex>`: the object key and the whole-object check.
    pub digest: String,
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

#[derive(Debug, Clone)]
enum Outcome {
    Object(Arc<ObjectMeta>),
    Fill(Arc<Fill>),
    Stale(Arc<ObjectMeta>),
    Uncacheable,
}

enum Step {
    Lead(Option<Arc<ObjectMeta>>, watch::Sender<Option<Outcome>>),
    Join(watch::Receiver<Option<Outcome>>),
}

#[derive(Debug)]
enum Flight {
    Pending(watch::Receiver<Option<Outcome>>),
    Filling(Arc<Fill>),
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
    flights: Mutex<HashMap<String, Flight>>,
    /// The swarm `p2p` URLs go through, when a tracker is configured.
    swarm: Option<Arc<crate::swarm::Swarm>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // Every critical section here is a few map operations that cannot panic halfway.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl ObjectCache {
    /// Loads the persisted object index from `meta`.
    pub async fn open(
        store: ChunkStore,
        meta: MetaStore,
        origin: OriginClient,
        metrics: Metrics,
        settings: CacheSettings,
        swarm: Option<Arc<crate::swarm::Swarm>>,
    ) -> Self {
        let mut objects = HashMap::new();
        for (name, data) in meta.load_all().await {
            match serde_json::from_slice::<ObjectMeta>(&data) {
                Ok(m) if ObjectMeta::name_for(&m.url) == name => {
                    objects.insert(m.url.clone(), Arc::new(m));
                }
                _ => {
                    tracing::warn!(%name, "dropping unreadable object metadata");
                    meta.remove(&name).await;
                }
            }
        }
        tracing::info!(objects = objects.len(), "object index loaded");
        let inner = Inner {
            store,
            meta,
            origin,
            metrics,
            settings,
            objects: RwLock::new(objects),
            flights: Mutex::new(HashMap::new()),
            swarm,
        };
        Self {
            inner: Arc::new(inner),
        }
    }

    pub fn store(&self) -> &ChunkStore {
        &self.inner.store
    }

    pub fn origin(&self) -> &OriginClient {
        &self.inner.origin
    }

    /// A fresh cached version or a fill in progress for `url`, without contacting
    /// the origin (HEAD requests).
    pub fn peek(&self, url: &str) -> Option<read::Serve> {
        if let Some(Flight::Filling(f)) = lock(&self.inner.flights).get(url) {
            return Some(read::Serve::Fill(f.clone()));
        }
        self.cached(url)
            .filter(|m| m.is_fresh(SystemTime::now(), self.inner.settings.freshness))
            .map(read::Serve::Object)
    }

    /// The cached version of `url`, fresh or not.
    pub fn cached(&self, url: &str) -> Option<Arc<ObjectMeta>> {
        self.inner
            .objects
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(url)
            .cloned()
    }

    /// Every cached object version.
    pub fn all(&self) -> Vec<Arc<ObjectMeta>> {
        self.inner
            .objects
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .cloned()
            .collect()
    }

    /// Number of cached URLs.
    pub fn len(&self) -> usize {
        self.inner
            .objects
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Forgets `url` (its chunks stay until evicted).
    pub async fn invalidate(&self, url: &str) {
        self.inner
            .objects
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .remove(url);
        self.inner.meta.remove(&ObjectMeta::name_for(url)).await;
    }

    /// Decides how to serve a GET; see [`Lookup`].
    pub async fn lookup(&self, want: &Want) -> Result<Lookup, OriginError> {
        let res = self.lookup_flight(want).await;
        if let Ok(Lookup::Stale(_)) = &res {
            self.inner.metrics.stale_served.inc();
        }
        res
    }

    async fn lookup_flight(&self, want: &Want) -> Result<Lookup, OriginError> {
        let url = want.key();
        loop {
            let step = {
                let mut flights = lock(&self.inner.flights);
                match flights.get(&url) {
                    Some(Flight::Filling(f)) => return Ok(Lookup::Fill(f.clone())),
                    Some(Flight::Pending(rx)) => Step::Join(rx.clone()),
                    None => {
                        let cached = self.cached(&url);
                        if let Some(m) = &cached {
                            // An immutable version is never revalidated, whatever the
                            // client asks (apt sends `max-age=0` for every file).
                            let serve = if m.is_immutable() || want.immutable {
                                true
                            } else {
                                !want.revalidate
                                    && m.is_fresh(SystemTime::now(), self.inner.settings.freshness)
                            };
                            if serve {
                                return Ok(Lookup::Object(m.clone()));
                            }
                        }
                        let (tx, rx) = watch::channel(None);
                        flights.insert(url.clone(), Flight::Pending(rx));
                        Step::Lead(cached, tx)
                    }
                }
            };
            match step {
                Step::Lead(cached, tx) => return self.lead(want.clone(), cached, tx).await,
                Step::Join(mut rx) => {
                    let outcome = rx
                        .wait_for(Option::is_some)
                        .await
                        .ok()
                        .and_then(|o| o.clone());
                    match outcome {
                        Some(Outcome::Fill(f)) => return Ok(Lookup::Fill(f)),
                        Some(Outcome::Object(m)) => return Ok(Lookup::Object(m)),
                        Some(Outcome::Stale(m)) => return Ok(Lookup::Stale(m)),
                        Some(Outcome::Uncacheable) => return Ok(Lookup::Retry),
                        // The leader task ended without an outcome: look again.
                        None => continue,
                    }
                }
            }
        }
    }

    /// Runs the origin request for `want` in its own task and publishes the outcome.
    async fn lead(
        &self,
        want: Want,
        cached: Option<Arc<ObjectMeta>>,
        tx: watch::Sender<Option<Outcome>>,
    ) -> Result<Lookup, OriginError> {
        let this = self.clone();
        let url = want.key();
        let url_on_panic = url.clone();
        let task = tokio::spawn(async move {
            let res = this.fetch(&want, cached).await;
            let outcome = match &res {
                Ok(Lookup::Fill(f)) => Outcome::Fill(f.clone()),
                Ok(Lookup::Object(m)) => Outcome::Object(m.clone()),
                Ok(Lookup::Stale(m)) => Outcome::Stale(m.clone()),
                _ => Outcome::Uncacheable,
            };
            if !matches!(outcome, Outcome::Fill(_)) {
                // A fill registered itself in `fetch` and removes itself when it ends.
                lock(&this.inner.flights).remove(&url);
            }
            tx.send_replace(Some(outcome));
            res
        });
        match task.await {
            Ok(r) => r,
            Err(e) => {
                // The task panicked: drop its entry so waiters elect a new leader.
                // Our bug, not the origin's: a 500, not a 502.
                if let Some(Flight::Filling(_)) = lock(&self.inner.flights).remove(&url_on_panic) {
                    self.inner.metrics.fills_in_flight.dec();
                }
                Err(OriginError::Internal(format!("origin task failed: {e}")))
            }
        }
    }

    /// The leader's origin request: the swarm for `p2p` URLs when a tracker is set,
    /// else a plain or conditional GET.
    async fn fetch(
        &self,
        want: &Want,
        cached: Option<Arc<ObjectMeta>>,
    ) -> Result<Lookup, OriginError> {
        if want.mode == Mode::P2p {
            if let Some(sw) = &self.inner.swarm {
                return self.fetch_swarm(want, cached, sw.clone()).await;
            }
        }
        self.fetch_get(want, cached, FetchReason::CacheMode).await
    }

    /// Asks the origin for the head only, then downloads through the swarm. Anything
    /// the swarm cannot share (no length, no validator, `no-store`, an error status)
    /// goes the plain GET way instead.
    async fn fetch_swarm(
        &self,
        want: &Want,
        cached: Option<Arc<ObjectMeta>>,
        swarm: Arc<crate::swarm::Swarm>,
    ) -> Result<Lookup, OriginError> {
        let h = origin_headers(want);
        let reason = FetchReason::of_get(cached.is_some(), FetchReason::SwarmHead);
        let resp = match self
            .send_or_stale(Method::HEAD, want, h, "head", reason, &cached)
            .await?
        {
            Ok(r) => r,
            Err(stale) => return Ok(stale),
        };
        // Peers and leases fetch chunk ranges: an origin that does not advertise
        // byte ranges is fetched whole instead.
        let ranges = resp
            .headers()
            .get(header::ACCEPT_RANGES)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.trim().eq_ignore_ascii_case("bytes"));
        if !ranges {
            tracing::debug!(url = %want.url, "origin does not advertise byte ranges; plain GET");
            return self
                .fetch_get(want, cached, FetchReason::NotSwarmable)
                .await;
        }
        let Some((layout, key, digest)) = self.cacheable(want, &resp) else {
            tracing::debug!(url = %want.url, status = %resp.status(), "not shareable through the swarm; plain GET");
            return self
                .fetch_get(want, cached, FetchReason::NotSwarmable)
                .await;
        };
        if let Some(m) = cached.as_ref().filter(|m| m.manifest.key == key) {
            // Same version as cached: the HEAD revalidated it.
            let mut m = ObjectMeta::clone(m);
            m.validated_at_ms = meta::unix_ms(SystemTime::now());
            let m = Arc::new(m);
            self.remember(m.clone()).await;
            return Ok(Lookup::Object(m));
        }
        if !self.inner.store.fits(layout.size).await {
            // The plain GET path streams it through uncached.
            return self.fetch_get(want, cached, FetchReason::TooLarge).await;
        }
        let fill = Arc::new(
            Fill::new(want.key(), layout, Repr::from_headers(resp.headers()))
                .with_upstream(want.url.clone(), want.upstream.clone()),
        );
        self.start_flight(&fill);
        crate::swarm::spawn(self.clone(), swarm, fill.clone(), key, digest);
        Ok(Lookup::Fill(fill))
    }

    /// A plain or conditional GET to the origin; `why` is the reason of a plain one
    /// (a conditional one is a revalidation, [`FetchReason::of_get`]).
    async fn fetch_get(
        &self,
        want: &Want,
        cached: Option<Arc<ObjectMeta>>,
        why: FetchReason,
    ) -> Result<Lookup, OriginError> {
        let reason = FetchReason::of_get(cached.is_some(), why);
        let mut h = origin_headers(want);
        let kind = if cached.is_some() {
            "revalidate"
        } else {
            "get"
        };
        if let Some(m) = &cached {
            if let Some(Ok(v)) = m.repr.etag.as_deref().map(HeaderValue::from_str) {
                h.insert(header::IF_NONE_MATCH, v);
            } else if let Some(Ok(v)) = m.repr.last_modified.as_deref().map(HeaderValue::from_str) {
                h.insert(header::IF_MODIFIED_SINCE, v);
            }
        }
        let resp = match self
            .send_or_stale(Method::GET, want, h, kind, reason, &cached)
            .await?
        {
            Ok(r) => r,
            Err(stale) => return Ok(stale),
        };
        if let Some(m) = self.stale(&cached, &stale::Failure::Status(resp.status())) {
            return Ok(Lookup::Stale(m));
        }
        if resp.status() == StatusCode::NOT_MODIFIED {
            if let Some(m) = cached {
                let mut m = (*m).clone();
                m.validated_at_ms = meta::unix_ms(SystemTime::now());
                let m = Arc::new(m);
                self.remember(m.clone()).await;
                return Ok(Lookup::Object(m));
            }
        }
        match self.cacheable(want, &resp) {
            Some((layout, _, _)) if !self.inner.store.fits(layout.size).await => {
                // Cached in part it would cost origin `Range` requests on every hit.
                tracing::info!(url = %want.url, size = layout.size, quota = self.inner.store.quota(),
                    "object larger than the cache quota; streaming it through uncached");
                self.inner.metrics.cache_too_large.inc();
                Ok(Lookup::Pass(resp, reason))
            }
            Some((layout, key, digest)) => {
                let fill = Arc::new(
                    Fill::new(want.key(), layout, Repr::from_headers(resp.headers()))
                        .with_origin(reason)
                        .with_upstream(want.url.clone(), want.upstream.clone()),
                );
                // Registered before the fill task starts, so the task's `end_flight`
                // always finds it, and only after the object is remembered.
                self.start_flight(&fill);
                origin_fill::spawn(self.clone(), fill.clone(), resp.into_body(), key, digest);
                Ok(Lookup::Fill(fill))
            }
            None => Ok(Lookup::Pass(resp, reason)),
        }
    }

    /// Sends `method` for `want`. If the origin cannot be reached (or times out) and
    /// `cached` may be served stale ([`ObjectCache::stale`]), that is `Ok(Err(stale))`.
    async fn send_or_stale(
        &self,
        method: Method,
        want: &Want,
        h: HeaderMap,
        kind: &'static str,
        reason: FetchReason,
        cached: &Option<Arc<ObjectMeta>>,
    ) -> Result<Result<Response<Incoming>, Lookup>, OriginError> {
        let origin = &self.inner.origin;
        let sent = if want.upstream.is_some() {
            origin
                .send_following(method, &want.url, h, kind, reason)
                .await
        } else {
            origin.send(method, &want.url, h, kind, reason).await
        };
        match sent {
            Ok(r) => Ok(Ok(r)),
            Err(e) => match self.stale(cached, &stale::Failure::Error(&e)) {
                Some(m) => Ok(Err(Lookup::Stale(m))),
                None => Err(e),
            },
        }
    }

    /// The stale `cached` version, if revalidating it failed with `failure` and
    /// stale-if-error allows serving it (`stale.rs`).
    fn stale(
        &self,
        cached: &Option<Arc<ObjectMeta>>,
        failure: &stale::Failure<'_>,
    ) -> Option<Arc<ObjectMeta>> {
        let m = cached.as_ref()?;
        let s = &self.inner.settings;
        if !m.serve_stale(failure, SystemTime::now(), s.freshness, s.stale_if_error) {
            return None;
        }
        tracing::warn!(url = %m.url, reason = %failure, age_s = m.age_secs(SystemTime::now()),
            "revalidation failed; serving the stale copy (stale-if-error)");
        Some(m.clone())
    }

    /// Layout, key and URL digest of a cacheable response; `None` to pass it through.
    fn cacheable(
        &self,
        want: &Want,
        resp: &Response<Incoming>,
    ) -> Option<(Layout, ObjectKey, Option<String>)> {
        if resp.status() != StatusCode::OK {
            return None;
        }
        let h = resp.headers();
        let cc = h
            .get_all(header::CACHE_CONTROL)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .collect::<Vec<_>>()
            .join(",");
        let cc = cc.to_ascii_lowercase();
        if cc
            .split(',')
            .any(|d| matches!(d.trim(), "no-store" | "private"))
        {
            return None;
        }
        // A representation that varies by request headers other than the encoding
        // (which we pin to identity) cannot be shared under its URL alone; a
        // registry object is keyed and checked by its digest, whatever it varies by.
        let varies = want.upstream.is_none()
            && h.get_all(header::VARY)
                .iter()
                .filter_map(|v| v.to_str().ok())
                .flat_map(|v| v.split(','))
                .any(|f| !f.trim().eq_ignore_ascii_case("accept-encoding") && !f.trim().is_empty());
        if varies || h.contains_key(header::SET_COOKIE) || h.contains_key(header::CONTENT_RANGE) {
            return None;
        }
        if h.get(header::CONTENT_ENCODING)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|e| e != "identity")
        {
            // We asked for identity; a server that compresses anyway is not cached.
            return None;
        }
        let size: u64 = h
            .get(header::CONTENT_LENGTH)?
            .to_str()
            .ok()?
            .trim()
            .parse()
            .ok()?;
        if size < want.min_size {
            return None;
        }
        let layout = Layout::new(size, self.inner.settings.chunk_size).ok()?;
        let (key, digest) = match &want.upstream {
            Some(u) => (
                ObjectKey::immutable(&u.digest, size).ok()?,
                Some(u.digest.clone()),
            ),
            None => version_key(&want.url, want.immutable, h, size)?,
        };
        Some((layout, key, digest))
    }

    /// Records a complete object version (memory and disk).
    pub(crate) async fn remember(&self, m: Arc<ObjectMeta>) {
        match serde_json::to_vec(&*m) {
            Ok(data) => {
                if let Err(e) = self
                    .inner
                    .meta
                    .save(&ObjectMeta::name_for(&m.url), &data)
                    .await
                {
                    tracing::warn!(url = %m.url, error = %e, "object metadata not persisted");
                }
            }
            Err(e) => tracing::error!(error = %e, "object metadata not serialisable"),
        }
        self.inner
            .objects
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(m.url.clone(), m);
    }

    /// Ends a failed fill: nothing of it is recorded, the flight ends (so the next
    /// request starts anew, and none joins this fill), and only then do its readers
    /// get `e` (a reset). When the origin changed, the URL's cached version is
    /// forgotten too: the origin no longer serves it.
    pub(crate) async fn abort_fill(&self, fill: &Arc<Fill>, e: FillError) {
        tracing::warn!(url = %fill.url, error = %e, blame = ?e.blame(), "fill failed");
        if is_registry_key(&fill.url) && matches!(e, FillError::DigestMismatch { .. }) {
            self.inner.metrics.registry_digest_mismatch.inc();
        }
        if e.is_origin_changed() {
            self.invalidate(&fill.url).await;
        }
        self.end_flight(&fill.url, fill);
        fill.fail(e);
    }

    /// Registers `fill` as the flight of its URL (`shoal_fills_in_flight` + 1).
    fn start_flight(&self, fill: &Arc<Fill>) {
        let old = lock(&self.inner.flights).insert(fill.url.clone(), Flight::Filling(fill.clone()));
        if !matches!(old, Some(Flight::Filling(_))) {
            self.inner.metrics.fills_in_flight.inc();
        }
    }

    /// Removes the flight of `url` if it is `fill` (called when a fill ends).
    pub(crate) fn end_flight(&self, url: &str, fill: &Arc<Fill>) {
        let mut flights = lock(&self.inner.flights);
        if let Some(Flight::Filling(f)) = flights.get(url) {
            if Arc::ptr_eq(f, fill) {
                flights.remove(url);
                self.inner.metrics.fills_in_flight.dec();
            }
        }
    }
}

/// The key of the version a `200` with headers `h` and length `size` is of `url`,
/// and the whole-object digest its bytes must have (`sha256:<hex>`), if known:
///
/// - a digest-named URL: keyed by that digest, which is checked;
/// - a URL under an `immutable` rule: keyed by URL and length whatever the
///   validators (see [`ObjectKey::immutable_url`]), checked against the origin's
///   `Repr-Digest: sha-256` if it sends one;
/// - else by URL, validator and length; no validator: `None`, not cached.
fn version_key(
    url: &Uri,
    immutable: bool,
    h: &HeaderMap,
    size: u64,
) -> Option<(ObjectKey, Option<String>)> {
    if let Some(d) = meta::digest_in_path(url.path()) {
        return Some((ObjectKey::immutable(&d, size).ok()?, Some(d)));
    }
    let url = url.to_string();
    if immutable {
        return Some((
            ObjectKey::immutable_url(&url, size).ok()?,
            meta::repr_digest(h),
        ));
    }
    let etag = h.get(header::ETAG).and_then(|v| v.to_str().ok());
    let lm = h.get(header::LAST_MODIFIED).and_then(|v| v.to_str().ok());
    let v = Validator::from_headers(etag, lm)?;
    Some((ObjectKey::versioned(&url, &v, size).ok()?, None))
}

/// The headers of the agent's own origin requests: no client headers but the
/// leader's `User-Agent`, identity encoding (see the module docs).
fn origin_headers(want: &Want) -> HeaderMap {
    let mut h = want
        .upstream
        .as_ref()
        .map(|u| u.headers.clone())
        .unwrap_or_default();
    if let Some(ua) = &want.user_agent {
        h.insert(header::USER_AGENT, ua.clone());
    }
    h.insert(
        header::ACCEPT_ENCODING,
        HeaderValue::from_static("identity"),
    );
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, v.parse().unwrap());
        }
        h
    }

    #[test]
    fn version_keys() {
        let hex = "ab".repeat(32);
        let by_hash: Uri = format!("http://h/debian/dists/x/by-hash/SHA256/{hex}")
            .parse()
            .unwrap();
        let pool: Uri = "http://h/debian/pool/main/f/foo.deb".parse().unwrap();
        let none = headers(&[]);
        let etag = headers(&[("etag", "\"e1\"")]);
        let digest = Some(format!("sha256:{hex}"));

        // A digest in the URL: keyed and checked by it, validators or not.
        let (k, d) = version_key(&by_hash, false, &none, 10).unwrap();
        assert_eq!(
            k,
            ObjectKey::immutable(&format!("sha256:{hex}"), 10).unwrap()
        );
        assert_eq!(d, digest);
        assert_eq!(version_key(&by_hash, true, &etag, 10).unwrap().0, k);

        // No validator, no rule: not cached.
        assert!(version_key(&pool, false, &none, 10).is_none());
        // An immutable rule: URL and length, whatever the validators.
        let (k, d) = version_key(&pool, true, &none, 10).unwrap();
        assert_eq!(k, ObjectKey::immutable_url(&pool.to_string(), 10).unwrap());
        assert_eq!(d, None);
        assert_eq!(version_key(&pool, true, &etag, 10).unwrap().0, k);
        assert!(k.is_immutable());
        // ...checked against the origin's Repr-Digest when it sends one.
        let rd = headers(&[(
            "repr-digest",
            "sha-256=:q6urq6urq6urq6urq6urq6urq6urq6urq6urq6urq6s=:",
        )]);
        assert_eq!(version_key(&pool, true, &rd, 10).unwrap().1, digest);
        // Without the rule: the validator's key, never immutable.
        let (k, d) = version_key(&pool, false, &etag, 10).unwrap();
        assert!(!k.is_immutable());
        assert_eq!(d, None);
    }
}
