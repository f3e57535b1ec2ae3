//! Flow-level bandwidth model: every transfer is one flow from a sender's uplink to a
//! receiver's downlink.
//!
//! Rates: a sender splits its uplink equally among its flows (a per-flow fair queue at
//! the sender's shaper), each flow's share capped by its loss bound; a receiver then
//! shares its downlink max-min among its flows, each capped by that sender share
//! (water-filling). Recomputed, for the flows touching the changed links only, every
//! time a flow starts or ends.
//!
//! What it cannot model: packets, queues and their delay, slow start, congestion
//! control dynamics, and global max-min fairness (a sender's share left unused because
//! its receiver is the bottleneck is not given to the sender's other flows, so the
//! model errs on the slow side when both ends are loaded).

use std::collections::HashMap;

/// Index of a node (agents `0..n`, then the origin).
pub type NodeIx = usize;

/// Names one flow; never reused within a run.
pub type FlowId = u64;

/// One transfer in progress.
#[derive(Debug, Clone)]
pub struct Flow {
    pub src: NodeIx,
    pub dst: NodeIx,
    /// Bytes still to send.
    remaining: f64,
    /// Bytes per second, as last computed.
    rate: f64,
    /// The sender's share (uplink ÷ flows, capped by `cap`).
    share: f64,
    /// The loss bound of this flow's path (bytes per second; infinite without loss).
    cap: f64,
    /// When `remaining` was last brought up to date (ns).
    since: u64,
    /// Bumped on every rate change: completion events of older versions are stale.
    pub version: u64,
}

impl Flow {
    /// Bytes not yet sent, as of the last rate change (or the stop).
    pub fn remaining(&self) -> f64 {
        self.remaining
    }
}

/// A flow whose completion time changed: the caller schedules `(at, id, version)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Due {
    pub at: u64,
    pub id: FlowId,
    pub version: u64,
}

/// Every link and flow of the simulated network.
#[derive(Debug)]
pub struct Net {
    up: Vec<f64>,
    down: Vec<f64>,
    up_flows: Vec<Vec<FlowId>>,
    down_flows: Vec<Vec<FlowId>>,
    flows: HashMap<FlowId, Flow>,
    next: FlowId,
    /// Completion times that changed since the last [`Net::take_due`].
    due: Vec<Due>,
    /// Exact max-min fairness over the whole network on every change
    /// ([`Net::exact`]) instead of the local approximation.
    exact: bool,
}

impl Net {
    /// Links in bytes per second (payload), one entry per node.
    pub fn new(up: Vec<f64>, down: Vec<f64>) -> Self {
        let n = up.len();
        Self {
            up,
            down,
            up_flows: vec![Vec::new(); n],
            down_flows: vec![Vec::new(); n],
            flows: HashMap::new(),
            next: 0,
            due: Vec::new(),
            exact: false,
        }
    }

    /// Global max-min fairness (progressive filling over every link) on every flow
    /// start and end: work-conserving, as TCP and QUIC tend to be, but O(links × flows)
    /// per change, so only for small fleets (the cross-check with the emulation).
    pub fn exact(mut self) -> Self {
        self.exact = true;
        self
    }

    /// Starts a flow of `bytes` at `now` (ns), its rate capped at `cap` bytes/s.
    pub fn start(&mut self, now: u64, src: NodeIx, dst: NodeIx, bytes: u64, cap: f64) -> FlowId {
        let id = self.next;
        self.next += 1;
        self.flows.insert(
            id,
            Flow {
                src,
                dst,
                remaining: bytes as f64,
                rate: 0.0,
                share: 0.0,
                cap,
                since: now,
                version: 0,
            },
        );
        self.up_flows[src].push(id);
        self.down_flows[dst].push(id);
        self.relink(now, src, dst);
        id
    }

    /// Ends a flow (finished or cancelled); `None` if it was not running.
    pub fn stop(&mut self, now: u64, id: FlowId) -> Option<Flow> {
        let mut f = self.flows.remove(&id)?;
        let dt = now.saturating_sub(f.since) as f64 / 1e9;
        f.remaining = (f.remaining - f.rate * dt).max(0.0);
        f.since = now;
        self.up_flows[f.src].retain(|&g| g != id);
        self.down_flows[f.dst].retain(|&g| g != id);
        self.relink(now, f.src, f.dst);
        Some(f)
    }

    /// The flow, if running.
    pub fn flow(&self, id: FlowId) -> Option<&Flow> {
        self.flows.get(&id)
    }

    /// Flows currently sent by `node`.
    pub fn sending(&self, node: NodeIx) -> usize {
        self.up_flows[node].len()
    }

    /// Completion times changed since the last call.
    pub fn take_due(&mut self) -> Vec<Due> {
        std::mem::take(&mut self.due)
    }

    /// Recomputes the sender shares at `src`, then the downlink split at every
    /// receiver of those flows and at `dst`.
    fn relink(&mut self, now: u64, src: NodeIx, dst: NodeIx) {
        if self.exact {
            self.fill_all(now);
            return;
        }
        let n = self.up_flows[src].len().max(1) as f64;
        let base = self.up[src] / n;
        let mut receivers = vec![dst];
        for id in &self.up_flows[src] {
            if let Some(f) = self.flows.get_mut(id) {
                f.share = base.min(f.cap);
                receivers.push(f.dst);
            }
        }
        receivers.sort_unstable();
        receivers.dedup();
        for r in receivers {
            self.fill(now, r);
        }
    }

    /// Max-min split of `node`'s downlink among its flows, each capped by its share.
    fn fill(&mut self, now: u64, node: NodeIx) {
        let mut caps: Vec<(f64, FlowId)> = self.down_flows[node]
            .iter()
            .filter_map(|id| self.flows.get(id).map(|f| (f.share, *id)))
            .collect();
        caps.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
        let mut left = self.down[node];
        let mut k = caps.len();
        for (share, id) in caps {
            let fair = left / k as f64;
            let rate = share.min(fair);
            left -= rate;
            k -= 1;
            self.set_rate(now, id, rate);
        }
    }

    /// Progressive filling: raise every unfrozen flow's rate together; freeze the flows
    /// of the link (or the loss cap) that saturates first; repeat.
    fn fill_all(&mut self, now: u64) {
        let mut ids: Vec<FlowId> = self.flows.keys().copied().collect();
        ids.sort_unstable();
        let mut rate: HashMap<FlowId, f64> = HashMap::new();
        let mut up_left = self.up.clone();
        let mut down_left = self.down.clone();
        let mut open: Vec<FlowId> = ids.clone();
        while !open.is_empty() {
            let mut up_n = vec![0usize; self.up.len()];
            let mut down_n = vec![0usize; self.down.len()];
            for id in &open {
                let f = &self.flows[id];
                up_n[f.src] += 1;
                down_n[f.dst] += 1;
            }
            // The smallest increment that saturates a link or reaches a cap.
            let mut step = f64::INFINITY;
            for id in &open {
                let f = &self.flows[id];
                let got = rate.get(id).copied().unwrap_or(0.0);
                step = step
                    .min(up_left[f.src] / up_n[f.src] as f64)
                    .min(down_left[f.dst] / down_n[f.dst] as f64)
                    .min(f.cap - got);
            }
            if !step.is_finite() {
                step = 0.0;
            }
            let mut still = Vec::with_capacity(open.len());
            for id in &open {
                let f = &self.flows[id];
                *rate.entry(*id).or_insert(0.0) += step;
                up_left[f.src] -= step;
                down_left[f.dst] -= step;
            }
            for id in open {
                let f = &self.flows[&id];
                let full = |left: f64, cap: f64| left <= cap * 1e-12 + 1e-9;
                let frozen = full(up_left[f.src], self.up[f.src])
                    || full(down_left[f.dst], self.down[f.dst])
                    || rate[&id] >= f.cap * (1.0 - 1e-12);
                if !frozen {
                    still.push(id);
                }
            }
            open = still;
        }
        for id in ids {
            let r = rate.get(&id).copied().unwrap_or(0.0);
            self.set_rate(now, id, r);
        }
    }

    fn set_rate(&mut self, now: u64, id: FlowId, rate: f64) {
        let Some(f) = self.flows.get_mut(&id) else {
            return;
        };
        let dt = now.saturating_sub(f.since) as f64 / 1e9;
        f.remaining = (f.remaining - f.rate * dt).max(0.0);
        f.since = now;
        if f.rate == rate && f.version > 0 {
            return;
        }
        f.rate = rate;
        f.version += 1;
        if rate > 0.0 {
            let ns = (f.remaining / rate * 1e9).ceil();
            let at = now.saturating_add(if ns.is_finite() {
                ns as u64
            } else {
                u64::MAX / 4
            });
            self.due.push(Due {
                at,
                id,
                version: f.version,
            });
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    const INF: f64 = f64::INFINITY;

    #[test]
    fn one_flow_runs_at_the_narrower_link() {
        let mut net = Net::new(vec![100.0, 1e9], vec![1e9, 50.0]);
        let id = net.start(0, 0, 1, 100, INF);
        let due = net.take_due();
        assert_eq!(due.len(), 1);
        assert_eq!(due[0].id, id);
        // 100 bytes at min(100, 50) = 50 B/s: 2 s.
        assert_eq!(due[0].at, 2_000_000_000);
    }

    #[test]
    fn sender_splits_and_receiver_refills() {
        // Node 0 sends to 1 and 2; node 3 also sends to 1. Uplinks 100, downlinks 100.
        let mut net = Net::new(vec![100.0; 4], vec![100.0; 4]);
        let a = net.start(0, 0, 1, 1000, INF);
        let _b = net.start(0, 0, 2, 1000, INF);
        let c = net.start(0, 3, 1, 1000, INF);
        // Node 0 shares 50/50; node 1's downlink: a capped at 50, c gets the other 50.
        assert_eq!(net.flow(a).unwrap().rate, 50.0);
        assert_eq!(net.flow(c).unwrap().rate, 50.0);
        net.stop(0, a);
        assert_eq!(net.flow(c).unwrap().rate, 100.0);
    }

    #[test]
    fn exact_mode_gives_unused_sender_share_to_other_flows() {
        // Node 0 sends to 1 and 2; node 1's downlink is 10, so the flow to 2 gets 90.
        let mut net = Net::new(vec![100.0; 3], vec![100.0, 10.0, 100.0]).exact();
        let a = net.start(0, 0, 1, 1000, INF);
        let b = net.start(0, 0, 2, 1000, INF);
        assert!((net.flow(a).unwrap().rate - 10.0).abs() < 1e-6);
        assert!((net.flow(b).unwrap().rate - 90.0).abs() < 1e-6);
    }

    #[test]
    fn loss_cap_limits_one_flow() {
        let mut net = Net::new(vec![100.0, 100.0], vec![100.0, 100.0]);
        let a = net.start(0, 0, 1, 1000, 10.0);
        assert_eq!(net.flow(a).unwrap().rate, 10.0);
    }
}
