//! Prefetch: putting objects into the cache without a client (`POST /v1/prefetch` on
//! the admin listener calls this). A prefetched URL takes the path a client GET takes
//! ([`ObjectCache::lookup`](crate::object::ObjectCache::lookup): single flight, the
//! swarm for `p2p` URLs, the origin lease), and the fill runs to its end with nobody
//! reading it.
//!
//! What it cannot do: URLs whose rule says `pass` are refused (nothing would be kept);
//! a response the origin makes uncacheable (no length or validator, `no-store`, ...)
//! is dropped unread, so it costs one origin request head and is not cached; no
//! request headers are sent beyond the agent's own (no credentials: a private object
//! cannot be prefetched).

use http::{HeaderMap, Uri};
use shoal_proto::oci::{OciPathError, RegistryPath};

use super::Proxy;
use crate::config::Mode;
use crate::object::{Lookup, Want};

/// Why a prefetch URL was not accepted: the caller's fault.
#[derive(Debug, thiserror::Error)]
pub enum Refused {
    #[error("not an absolute http(s) URL or /m/NAME/path: {0}")]
    Url(String),
    #[error("a pass rule covers it: nothing would be cached")]
    Pass,
}

/// What a prefetch of one URL ended as.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Filled now, or already cached (fresh or stale).
    Cached,
    /// The origin's answer is not cacheable; nothing was kept.
    Uncacheable,
    /// The origin or the swarm failed (logged).
    Failed,
}

impl Outcome {
    pub fn label(self) -> &'static str {
        match self {
            Outcome::Cached => "cached",
            Outcome::Uncacheable => "uncacheable",
            Outcome::Failed => "failed",
        }
    }
}

impl Proxy {
    /// The lookup a prefetch of `url` (absolute, or `/m/NAME/path`) makes, or why it
    /// makes none.
    pub fn prefetch_want(&self, url: &str) -> Result<Want, Refused> {
        let uri: Uri = url.parse().map_err(|_| Refused::Url(url.to_owned()))?;
        let url = self
            .target(&uri)
            .map_err(|e| Refused::Url(format!("{url}: {e}")))?;
        if !matches!(url.scheme_str(), Some("http" | "https")) {
            return Err(Refused::Url(url.to_string()));
        }
        let (mode, min_size) = self.rules.decide(&url.to_string());
        if mode == Mode::Pass {
            return Err(Refused::Pass);
        }
        if let Some((_, path)) = self.registry_path(&uri, &url) {
            return self.registry_prefetch_want(&url, path, mode);
        }
        Ok(Want {
            immutable: self.rules.immutable(&url.to_string()),
            url,
            mode,
            min_size,
            revalidate: false,
            user_agent: None,
            upstream: None,
        })
    }

    /// Runs the lookup of `want` and waits for its fill to end. Counted in
    /// `shoal_prefetch_total{result}`.
    pub async fn prefetch(&self, want: &Want) -> Outcome {
        let outcome = match self.cache.lookup(want).await {
            Ok(Lookup::Object(_) | Lookup::Stale(_)) => Outcome::Cached,
            Ok(Lookup::Fill(f)) => match f.finished().await {
                Ok(()) => Outcome::Cached,
                Err(e) => {
                    tracing::warn!(url = %want.url, error = %e, "prefetch fill failed");
                    Outcome::Failed
                }
            },
            // Dropped unread: the connection closes, nothing is downloaded.
            Ok(Lookup::Pass(..)) => Outcome::Uncacheable,
            // Another request's origin answer was uncacheable: so would ours be.
            Ok(Lookup::Retry) => Outcome::Uncacheable,
            Err(e) => {
                tracing::warn!(url = %want.url, error = %e, "prefetch failed");
                Outcome::Failed
            }
        };
        self.metrics
            .prefetch
            .with_label_values(&[outcome.label()])
            .inc();
        outcome
    }
}

impl Proxy {
    /// A registry mirror's blob (`/m/NAME/v2/<name>/blobs/sha256:<hex>`) is prefetched
    /// the way a pull fetches it: keyed by its digest (so the next pull, from any
    /// repository, finds it), checked against it, fetched anonymously. A registry
    /// that wants credentials refuses the fill (`failed`); a later client is still
    /// checked with the registry before cached bytes reach it. Other registry paths
    /// (manifests, tags) are answered per client and not prefetched.
    fn registry_prefetch_want(
        &self,
        url: &Uri,
        path: Result<RegistryPath, OciPathError>,
        mode: Mode,
    ) -> Result<Want, Refused> {
        let Ok(RegistryPath::Blob { digest, .. }) = path else {
            return Err(Refused::Url(format!(
                "{url}: of a registry mirror only blobs (/v2/<name>/blobs/sha256:<hex>) are prefetched"
            )));
        };
        Ok(self.blob_want(&HeaderMap::new(), HeaderMap::new(), url, digest, mode))
    }
}
