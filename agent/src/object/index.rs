//! The object index: which URLs have a complete cached version, in memory and in
//! the on-disk metadata store ([`MetaStore`]), loaded at open and written on every
//! change. Unreadable or mismatched metadata is dropped (and refetched when asked for).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};
use std::time::SystemTime;

use super::flight::Flight;
use super::{CacheSettings, Inner, ObjectCache, ObjectMeta, lock, read};
use crate::metrics::Metrics;
use crate::origin::OriginClient;
use crate::store::{ChunkStore, MetaStore};

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
        let fill_budget = super::behind::Budget::new(settings.fill_buffer, settings.chunk_size);
        let read_budget = super::budget::ReadBudget::new(
            super::behind::Budget::new(settings.read_buffer, settings.chunk_size),
            &metrics,
        );
        let inner = Inner {
            store,
            meta,
            origin,
            metrics,
            settings,
            objects: RwLock::new(objects),
            flights: Mutex::new(HashMap::new()),
            swarm,
            fill_budget,
            read_budget,
            origin_fills: Arc::default(),
            hash_slots: Arc::new(tokio::sync::Semaphore::new(super::origin_fill::hash_slots())),
            writers: tokio::sync::watch::Sender::new(0),
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
            return Some(
                self.completed(url, f)
                    .map_or_else(|| read::Serve::Fill(f.clone()), read::Serve::Object),
            );
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
}
