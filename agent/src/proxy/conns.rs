//! Admission of client connections: who may connect, how many at once, and which
//! connection gives way when the proxy is full.
//!
//! Every open client connection has an entry in one [`Conns`] table. A connection is
//! *idle* while it waits for a request head (new, slow or kept alive between requests)
//! and *busy* while a request is in flight or it carries a `CONNECT` tunnel. The table
//! never makes a new connection wait for a slot (a waiting accept loop let 1,100
//! slow clients delay a legitimate one by seconds): at `proxy.max_connections` or at a
//! source's `proxy.max_connections_per_source`, the oldest idle connection (of that
//! source, for the per-source cap) is shed to make room; only when none is idle is the
//! new one closed. Above half of `max_connections`, idle connections get
//! `proxy.header_read_timeout_under_pressure` instead of `proxy.header_read_timeout`
//! ([`Conns::reap`]).
//!
//! Non-goals: no fairness between busy connections (a request in flight is never shed;
//! its own deadlines bound it) and no defence against a flood from many sources beyond
//! the global cap; sources outside `proxy.allow_clients` are answered `403` by the
//! server before they reach this table.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use tokio::sync::Notify;

use crate::config::ProxyConfig;
use crate::metrics::Metrics;

/// The table of open client connections. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Conns {
    table: Arc<Mutex<Table>>,
    limits: Limits,
    metrics: Metrics,
    /// Time zero for the entries' `idle_since` (milliseconds).
    epoch: Instant,
}

#[derive(Debug, Clone, Copy)]
struct Limits {
    max: usize,
    per_source: usize,
    idle_timeout: Duration,
    pressure_timeout: Duration,
}

#[derive(Debug, Default)]
struct Table {
    next_id: u64,
    by_id: HashMap<u64, Entry>,
    per_source: HashMap<IpAddr, usize>,
}

#[derive(Debug)]
struct Entry {
    source: IpAddr,
    state: Arc<State>,
}

/// One connection's shared state.
#[derive(Debug)]
struct State {
    /// Requests in flight plus tunnels.
    busy: AtomicUsize,
    /// Milliseconds after [`Conns::epoch`] when it last became idle.
    idle_since: AtomicU64,
    /// Notified when the connection is shed; its task closes it.
    shed: Notify,
}

/// Why a new connection was not admitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    /// Every connection (of the source, or in all) is busy.
    #[error("every client connection is busy")]
    Full,
}

/// An admitted connection's place in the table; dropping the last clone frees it.
#[derive(Debug)]
pub struct Slot {
    id: u64,
    state: Arc<State>,
    conns: Conns,
}

/// Marks a connection busy while alive (a request or a tunnel).
#[derive(Debug)]
pub struct Busy {
    slot: Arc<Slot>,
}

impl Conns {
    pub fn new(cfg: &ProxyConfig, metrics: Metrics) -> Self {
        Self {
            table: Arc::default(),
            limits: Limits {
                max: cfg.max_connections,
                per_source: cfg.max_connections_per_source,
                idle_timeout: cfg.header_read_timeout,
                pressure_timeout: cfg.header_read_timeout_under_pressure,
            },
            metrics,
            epoch: Instant::now(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Table> {
        // Every critical section is a few map operations that cannot panic halfway.
        self.table.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    /// Open connections.
    pub fn len(&self) -> usize {
        self.lock().by_id.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Admits a connection from `source`, shedding the oldest idle connection if a cap
    /// is reached (see the module docs).
    pub fn admit(&self, source: IpAddr) -> Result<Arc<Slot>, Refused> {
        let source = source.to_canonical();
        let mut t = self.lock();
        if t.per_source.get(&source).copied().unwrap_or(0) >= self.limits.per_source
            && !self.shed_oldest(&mut t, Some(source))
        {
            self.metrics.clients_shed.with_label_values(&["full"]).inc();
            return Err(Refused::Full);
        }
        if t.by_id.len() >= self.limits.max && !self.shed_oldest(&mut t, None) {
            self.metrics.clients_shed.with_label_values(&["full"]).inc();
            return Err(Refused::Full);
        }
        let id = t.next_id;
        t.next_id += 1;
        let state = Arc::new(State {
            busy: AtomicUsize::new(0),
            idle_since: AtomicU64::new(self.now_ms()),
            shed: Notify::new(),
        });
        t.by_id.insert(
            id,
            Entry {
                source,
                state: state.clone(),
            },
        );
        *t.per_source.entry(source).or_insert(0) += 1;
        Ok(Arc::new(Slot {
            id,
            state,
            conns: self.clone(),
        }))
    }

    /// Sheds the connection idle the longest (of `source` if given); false if none is.
    fn shed_oldest(&self, t: &mut Table, source: Option<IpAddr>) -> bool {
        let oldest = t
            .by_id
            .iter()
            .filter(|(_, e)| source.is_none_or(|s| e.source == s))
            .filter(|(_, e)| e.state.busy.load(Ordering::Acquire) == 0)
            .min_by_key(|(id, e)| (e.state.idle_since.load(Ordering::Acquire), **id))
            .map(|(id, _)| *id);
        match oldest {
            Some(id) => {
                remove(t, id);
                self.metrics.clients_shed.with_label_values(&["idle"]).inc();
                true
            }
            None => false,
        }
    }

    /// Sheds connections idle past their deadline: `header_read_timeout`, or the
    /// pressure deadline above half of `max_connections`. Call it a few times a
    /// second ([`Conns::reap_interval`]).
    pub fn reap(&self) {
        let now = self.now_ms();
        let mut t = self.lock();
        let pressure = t.by_id.len() > self.limits.max / 2;
        let limit = if pressure {
            self.limits.pressure_timeout
        } else {
            self.limits.idle_timeout
        };
        let limit = limit.as_millis() as u64;
        let late: Vec<u64> = t
            .by_id
            .iter()
            .filter(|(_, e)| {
                e.state.busy.load(Ordering::Acquire) == 0
                    && now.saturating_sub(e.state.idle_since.load(Ordering::Acquire)) >= limit
            })
            .map(|(id, _)| *id)
            .collect();
        for id in &late {
            remove(&mut t, *id);
        }
        if pressure && !late.is_empty() {
            self.metrics
                .clients_shed
                .with_label_values(&["pressure"])
                .inc_by(late.len() as u64);
        }
    }

    /// How often [`Conns::reap`] should run: a quarter of the shorter deadline.
    pub fn reap_interval(&self) -> Duration {
        (self.limits.pressure_timeout.min(self.limits.idle_timeout) / 4)
            .max(Duration::from_millis(10))
    }
}

/// Removes `id` and wakes its task to close the connection.
fn remove(t: &mut Table, id: u64) {
    if let Some(e) = t.by_id.remove(&id) {
        if let Some(n) = t.per_source.get_mut(&e.source) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                t.per_source.remove(&e.source);
            }
        }
        e.state.shed.notify_one();
    }
}

impl Slot {
    /// Resolves when the connection was shed: close it.
    pub async fn shed(&self) {
        self.state.shed.notified().await;
    }

    /// Marks the connection busy until the guard is dropped.
    pub fn busy(self: &Arc<Self>) -> Busy {
        self.state.busy.fetch_add(1, Ordering::AcqRel);
        Busy { slot: self.clone() }
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut t = self.conns.lock();
        remove(&mut t, self.id);
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        let s = &self.slot.state;
        s.idle_since
            .store(self.slot.conns.now_ms(), Ordering::Release);
        s.busy.fetch_sub(1, Ordering::AcqRel);
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    fn conns(max: usize, per_source: usize) -> Conns {
        let cfg = ProxyConfig {
            max_connections: max,
            max_connections_per_source: per_source,
            header_read_timeout: Duration::from_secs(3600),
            header_read_timeout_under_pressure: Duration::from_millis(0),
            ..ProxyConfig::default()
        };
        Conns::new(&cfg, Metrics::default())
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[tokio::test]
    async fn full_table_sheds_the_oldest_idle_never_a_busy_one() {
        let c = conns(3, 10);
        let a = c.admit(ip("10.0.0.1")).unwrap();
        let b = c.admit(ip("10.0.0.1")).unwrap();
        let busy = c.admit(ip("10.0.0.2")).unwrap();
        let _g = busy.busy();
        let d = c.admit(ip("10.0.0.3")).unwrap();
        assert_eq!(c.len(), 3);
        // `a` was idle the longest (admitted first).
        tokio::time::timeout(Duration::from_secs(1), a.shed())
            .await
            .unwrap();
        let e = c.admit(ip("10.0.0.3")).unwrap();
        tokio::time::timeout(Duration::from_secs(1), b.shed())
            .await
            .unwrap();
        let _gd = d.busy();
        let _ge = e.busy();
        assert_eq!(c.admit(ip("10.0.0.4")).unwrap_err(), Refused::Full);
        assert_eq!(c.len(), 3);
        drop(_ge);
        assert!(c.admit(ip("10.0.0.4")).is_ok(), "e is idle again");
    }

    #[tokio::test]
    async fn per_source_cap_sheds_only_that_sources_connections() {
        let c = conns(100, 2);
        let other = c.admit(ip("10.0.0.9")).unwrap();
        let a = c.admit(ip("10.0.0.1")).unwrap();
        let _b = c.admit(ip("10.0.0.1")).unwrap();
        let _c = c.admit(ip("::ffff:10.0.0.1")).unwrap();
        tokio::time::timeout(Duration::from_secs(1), a.shed())
            .await
            .unwrap();
        assert_eq!(c.len(), 3);
        // The other source's older connection was left alone.
        let fut = other.shed();
        assert!(
            tokio::time::timeout(Duration::from_millis(50), fut)
                .await
                .is_err()
        );
    }

    #[tokio::test]
    async fn pressure_reaps_idle_connections() {
        let c = conns(4, 10);
        let slots: Vec<_> = (0..3).map(|_| c.admit(ip("10.0.0.1")).unwrap()).collect();
        let _g = slots[0].busy();
        c.reap();
        assert_eq!(c.len(), 1, "3 > 4/2 open: idle ones reaped at once");
        for s in &slots[1..] {
            tokio::time::timeout(Duration::from_secs(1), s.shed())
                .await
                .unwrap();
        }
        drop(_g);
        drop(slots);
        assert!(c.is_empty());
    }
}
