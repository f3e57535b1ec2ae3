//! Single flight: [`ObjectCache::lookup`] makes one origin (or swarm) request per URL
//! however many clients ask at once. The first becomes the leader, in a task of its
//! own so its client hanging up cancels nothing; the others wait for its outcome
//! (a cached version, a fill to join, or "pass it through"). Failed fills end here
//! ([`ObjectCache::abort_fill`]), and so do revalidations that fail while a stale
//! copy may still be served (RFC 5861 `stale-if-error`).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::SystemTime;

use http::header::{self, HeaderMap, HeaderValue};
use http::{Method, Response, StatusCode};
use hyper::body::Incoming;
use tokio::sync::watch;

use super::{
    Fill, FillError, Lookup, ObjectCache, ObjectMeta, Repr, Want, is_registry_key, lock, meta,
    origin_fill, policy, stale,
};
use crate::config::Mode;
use crate::origin::OriginError;
use crate::origin::reason::FetchReason;

#[derive(Debug, Clone)]
pub(super) enum Outcome {
    Object(Arc<ObjectMeta>),
    Fill(Arc<Fill>),
    Stale(Arc<ObjectMeta>),
    Uncacheable,
}

pub(super) enum Step {
    Lead(Option<Arc<ObjectMeta>>, watch::Sender<Option<Outcome>>),
    Join(watch::Receiver<Option<Outcome>>),
}

#[derive(Debug)]
pub(super) enum Flight {
    Pending(watch::Receiver<Option<Outcome>>),
    Filling(Arc<Fill>),
}

impl ObjectCache {
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
                    Some(Flight::Filling(f)) => {
                        return Ok(self
                            .completed(&url, f)
                            .map_or_else(|| Lookup::Fill(f.clone()), Lookup::Object));
                    }
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

    /// For a request that finds `fill` in progress for `url`: its recorded object once
    /// the fill has completed (its flight not yet gone), so the request is served as a
    /// hit. Otherwise the request joins the fill, and stays a miss even if the fill
    /// completes before its head is sent (`proxy::source`): it waited for the origin.
    pub(super) fn completed(&self, url: &str, fill: &Fill) -> Option<Arc<ObjectMeta>> {
        fill.is_complete().then(|| self.cached(url)).flatten()
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
        if want.mode == Mode::P2p
            && let Some(sw) = &self.inner.swarm
        {
            return self.fetch_swarm(want, cached, sw.clone()).await;
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
        let h = policy::origin_headers(want);
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
        let Some((layout, key, digest)) = policy::cacheable(
            want,
            resp.status(),
            resp.headers(),
            self.inner.settings.chunk_size,
        ) else {
            tracing::debug!(url = %want.url, status = %resp.status(), "not shareable through the swarm; plain GET");
            return self
                .fetch_get(want, cached, FetchReason::NotSwarmable)
                .await;
        };
        if let Some(m) = cached.as_ref().filter(|m| m.manifest.key == key) {
            // Same version as cached: the HEAD revalidated it.
            let mut m = ObjectMeta::clone(m);
            m.validated_at_ms = meta::unix_ms(SystemTime::now());
            m.repr.refresh(resp.headers());
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
        let mut h = policy::origin_headers(want);
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
        if resp.status() == StatusCode::NOT_MODIFIED
            && let Some(m) = cached
        {
            let mut m = (*m).clone();
            m.validated_at_ms = meta::unix_ms(SystemTime::now());
            m.repr.refresh(resp.headers());
            let m = Arc::new(m);
            self.remember(m.clone()).await;
            return Ok(Lookup::Object(m));
        }
        match policy::cacheable(
            want,
            resp.status(),
            resp.headers(),
            self.inner.settings.chunk_size,
        ) {
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
                if !self.start_origin_flight(&fill) {
                    tracing::debug!(url = %want.url, max_fills = self.inner.settings.max_fills,
                        "cache.max_fills origin fills running; streaming this one through uncached");
                    self.inner.metrics.cache_fill_limit.inc();
                    return Ok(Lookup::Pass(resp, reason));
                }
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
        let mut flights = lock(&self.inner.flights);
        self.insert_flight(&mut flights, fill);
    }

    /// [`Self::start_flight`] for a plain origin fill, unless it is larger than two
    /// chunks and `cache.max_fills` such fills already run (`false`: the caller passes
    /// the response through). Counted and registered under one lock, so concurrent
    /// misses cannot overshoot the limit. Memory per fill is the origin connection's
    /// buffers plus the chunk being assembled; small objects cost little and do not
    /// count.
    fn start_origin_flight(&self, fill: &Arc<Fill>) -> bool {
        let mut flights = lock(&self.inner.flights);
        if is_large(fill) {
            let running = flights
                .values()
                .filter(|f| matches!(f, Flight::Filling(f) if f.origin.is_some() && is_large(f)))
                .count();
            if running >= self.inner.settings.max_fills {
                return false;
            }
        }
        self.insert_flight(&mut flights, fill);
        true
    }

    fn insert_flight(&self, flights: &mut HashMap<String, Flight>, fill: &Arc<Fill>) {
        let old = flights.insert(fill.url.clone(), Flight::Filling(fill.clone()));
        if !matches!(old, Some(Flight::Filling(_))) {
            self.inner.metrics.fills_in_flight.inc();
        }
    }

    /// Whether the URL of `m` has a lookup or fill in progress, or another version
    /// validated since `m` was: recording `m` is then another request's to decide.
    pub(crate) fn superseded(&self, m: &ObjectMeta) -> bool {
        lock(&self.inner.flights).contains_key(&m.url)
            || self.cached(&m.url).is_some_and(|c| {
                c.manifest.key != m.manifest.key && c.validated_at_ms >= m.validated_at_ms
            })
    }

    /// Removes the flight of `url` if it is `fill` (called when a fill ends).
    pub(crate) fn end_flight(&self, url: &str, fill: &Arc<Fill>) {
        let mut flights = lock(&self.inner.flights);
        if let Some(Flight::Filling(f)) = flights.get(url)
            && Arc::ptr_eq(f, fill)
        {
            flights.remove(url);
            self.inner.metrics.fills_in_flight.dec();
        }
    }
}

/// Whether `fill` counts against `cache.max_fills`: more than two chunks.
fn is_large(fill: &Fill) -> bool {
    fill.layout.chunk_count() > 2
}
