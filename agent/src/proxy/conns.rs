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
//! ([`Conns::reap`]). Idle connections are kept in order of the time they last became
//! idle (globally and per source): an admission or a shed costs a few ordered-set
//! operations and a reap walks only the connections past their deadline, never the
//! whole table, so a flood that reconnects as fast as it is shed costs the accept loop
//! the same per connection whatever `max_connections` is.
//!
//! Non-goals: no fairness between busy connections (a request in flight is never shed;
//! its own deadlines bound it); no preference between an idle keep-alive and a
//! connection part-way through its head (the one idle longest goes first: preferring
//! keep-alives would shed a client pausing between two downloads before a slowloris
//! head that has trickled for a second, and the header deadline already ends the
//! latter); no defence against a flood from many sources beyond
//! the global cap; sources outside `proxy.allow_clients` are answered `403` by the
//! server before they reach this table.

use std::collections::{BTreeSet, HashMap};
use std::net::IpAddr;
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

/// Idle connections ordered oldest first, keyed by [`IdleKey`]. Finding the
/// connection to shed and the ones past their deadline is a walk from the front, never
/// a scan of every connection (a scan per accept was the agent's largest cost under a
/// reconnecting flood: 18% of its CPU with 512 entries).
type IdleOrder = BTreeSet<IdleKey>;

/// (`idle_since` in milliseconds after [`Conns::epoch`], a sequence number that grows
/// with every transition to idle so that ties in the same millisecond keep their
/// order, connection id).
type IdleKey = (u64, u64, u64);

#[derive(Debug, Default)]
struct Table {
    next_id: u64,
    next_seq: u64,
    by_id: HashMap<u64, Entry>,
    per_source: HashMap<IpAddr, usize>,
    idle: IdleOrder,
    idle_by_source: HashMap<IpAddr, IdleOrder>,
}

#[derive(Debug)]
struct Entry {
    source: IpAddr,
    /// Requests in flight plus tunnels; idle at 0.
    busy: usize,
    /// Its place in the idle order (meaningful while `busy` is 0).
    idle: IdleKey,
    /// Notified when the connection is shed; its task closes it.
    shed: Arc<Notify>,
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
    shed: Arc<Notify>,
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
        self.admit_at(source, self.now_ms())
    }

    fn admit_at(&self, source: IpAddr, now: u64) -> Result<Arc<Slot>, Refused> {
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
        let shed = Arc::new(Notify::new());
        let idle = t.idle_key(now, id);
        t.by_id.insert(
            id,
            Entry {
                source,
                busy: 0,
                idle,
                shed: shed.clone(),
            },
        );
        *t.per_source.entry(source).or_insert(0) += 1;
        t.set_idle(source, idle);
        Ok(Arc::new(Slot {
            id,
            shed,
            conns: self.clone(),
        }))
    }

    /// Sheds the connection idle the longest (of `source` if given); false if none is.
    fn shed_oldest(&self, t: &mut Table, source: Option<IpAddr>) -> bool {
        let order = match source {
            Some(s) => t.idle_by_source.get(&s),
            None => Some(&t.idle),
        };
        match order.and_then(|o| o.first()).map(|&(_, _, id)| id) {
            Some(id) => {
                t.remove(id);
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
        self.reap_at(self.now_ms());
    }

    fn reap_at(&self, now: u64) {
        let mut t = self.lock();
        let pressure = t.by_id.len() > self.limits.max / 2;
        let limit = if pressure {
            self.limits.pressure_timeout
        } else {
            self.limits.idle_timeout
        };
        let limit = limit.as_millis() as u64;
        let late: Vec<u64> = t
            .idle
            .iter()
            .take_while(|(since, _, _)| now.saturating_sub(*since) >= limit)
            .map(|&(_, _, id)| id)
            .collect();
        for id in &late {
            t.remove(*id);
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

impl Table {
    fn idle_key(&mut self, now: u64, id: u64) -> IdleKey {
        self.next_seq += 1;
        (now, self.next_seq, id)
    }

    fn set_idle(&mut self, source: IpAddr, key: IdleKey) {
        self.idle.insert(key);
        self.idle_by_source.entry(source).or_default().insert(key);
    }

    fn unset_idle(&mut self, source: IpAddr, key: IdleKey) {
        self.idle.remove(&key);
        if let Some(o) = self.idle_by_source.get_mut(&source) {
            o.remove(&key);
            if o.is_empty() {
                self.idle_by_source.remove(&source);
            }
        }
    }

    /// Removes `id` and wakes its task to close the connection.
    fn remove(&mut self, id: u64) {
        let Some(e) = self.by_id.remove(&id) else {
            return;
        };
        if let Some(n) = self.per_source.get_mut(&e.source) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                self.per_source.remove(&e.source);
            }
        }
        if e.busy == 0 {
            self.unset_idle(e.source, e.idle);
        }
        e.shed.notify_one();
    }
}

impl Slot {
    /// Resolves when the connection was shed: close it.
    pub async fn shed(&self) {
        self.shed.notified().await;
    }

    /// Marks the connection busy until the guard is dropped.
    pub fn busy(self: &Arc<Self>) -> Busy {
        let mut t = self.conns.lock();
        let was_idle = t.by_id.get_mut(&self.id).and_then(|e| {
            e.busy += 1;
            (e.busy == 1).then_some((e.source, e.idle))
        });
        if let Some((source, key)) = was_idle {
            t.unset_idle(source, key);
        }
        Busy { slot: self.clone() }
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.conns.lock().remove(self.id);
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        let conns = &self.slot.conns;
        let id = self.slot.id;
        let mut t = conns.lock();
        let now_idle = t.by_id.get(&id).is_some_and(|e| e.busy == 1);
        let key = t.idle_key(conns.now_ms(), id);
        if let Some(e) = t.by_id.get_mut(&id) {
            e.busy = e.busy.saturating_sub(1);
            if now_idle {
                e.idle = key;
                let source = e.source;
                t.set_idle(source, key);
            }
        }
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

    /// The idle order holds every idle connection once, and nothing else.
    fn assert_consistent(c: &Conns) {
        let t = c.lock();
        let idle: Vec<_> = t.by_id.iter().filter(|(_, e)| e.busy == 0).collect();
        assert_eq!(t.idle.len(), idle.len());
        for (id, e) in idle {
            assert!(t.idle.contains(&e.idle), "{id} missing from the idle order");
            assert!(t.idle_by_source[&e.source].contains(&e.idle));
        }
        let per_source: usize = t.idle_by_source.values().map(BTreeSet::len).sum();
        assert_eq!(per_source, t.idle.len());
        assert!(t.idle_by_source.values().all(|o| !o.is_empty()));
    }

    #[tokio::test]
    async fn a_connection_that_just_served_a_request_is_shed_last() {
        // All within one millisecond: the order must not fall back to admission order
        // (the old table's tie-break, which shed `a` here).
        let c = conns(3, 10);
        let a = c.admit_at(ip("10.0.0.1"), 0).unwrap();
        let b = c.admit_at(ip("10.0.0.1"), 0).unwrap();
        let d = c.admit_at(ip("10.0.0.2"), 0).unwrap();
        drop(a.busy());
        assert_consistent(&c);
        let _e = c.admit_at(ip("10.0.0.3"), 0).unwrap();
        tokio::time::timeout(Duration::from_secs(1), b.shed())
            .await
            .expect("b, idle the longest, is shed");
        let _f = c.admit_at(ip("10.0.0.3"), 0).unwrap();
        tokio::time::timeout(Duration::from_secs(1), d.shed())
            .await
            .expect("then d");
        assert_eq!(c.len(), 3);
        assert_consistent(&c);
        let fut = a.shed();
        assert!(
            tokio::time::timeout(Duration::from_millis(20), fut)
                .await
                .is_err(),
            "a served a request after b and d were admitted: kept"
        );
    }

    #[tokio::test]
    async fn reap_sheds_exactly_the_idle_connections_past_the_deadline() {
        let cfg = ProxyConfig {
            max_connections: 100,
            header_read_timeout: Duration::from_millis(1000),
            header_read_timeout_under_pressure: Duration::from_millis(100),
            ..ProxyConfig::default()
        };
        let c = Conns::new(&cfg, Metrics::default());
        let busy = c.admit_at(ip("10.0.0.1"), 0).unwrap();
        let guard = busy.busy();
        let old = c.admit_at(ip("10.0.0.1"), 0).unwrap();
        let young = c.admit_at(ip("10.0.0.2"), 600).unwrap();
        c.reap_at(999);
        assert_eq!(c.len(), 3, "nothing is 1 s old yet");
        c.reap_at(1000);
        assert_eq!(c.len(), 2, "only `old` reached the deadline");
        tokio::time::timeout(Duration::from_secs(1), old.shed())
            .await
            .unwrap();
        c.reap_at(1599);
        assert_eq!(c.len(), 2);
        c.reap_at(1600);
        assert_eq!(c.len(), 1, "`young` 1 s later; the busy one never");
        tokio::time::timeout(Duration::from_secs(1), young.shed())
            .await
            .unwrap();
        assert_consistent(&c);
        drop(guard);
        assert_consistent(&c);
        c.reap_at(u64::MAX);
        assert!(c.is_empty(), "idle again, then reaped");
        assert_consistent(&c);
    }

    #[tokio::test]
    async fn per_source_order_is_kept_apart_and_cleaned_up() {
        let c = conns(100, 2);
        let slots: Vec<_> = ["10.0.0.1", "10.0.0.2", "10.0.0.1", "10.0.0.2"]
            .iter()
            .map(|s| c.admit_at(ip(s), 0).unwrap())
            .collect();
        // 10.0.0.1 at its cap: its own oldest (slots[0]) goes, not 10.0.0.2's.
        let _n = c.admit_at(ip("10.0.0.1"), 0).unwrap();
        tokio::time::timeout(Duration::from_secs(1), slots[0].shed())
            .await
            .unwrap();
        assert_consistent(&c);
        drop(slots);
        drop(_n);
        assert!(c.is_empty());
        assert!(c.lock().idle_by_source.is_empty());
        assert!(c.lock().idle.is_empty());
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
