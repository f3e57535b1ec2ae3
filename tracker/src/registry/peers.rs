//! The agents the registry knows, interned: each live agent has a [`Slot`] (a small
//! integer) and its topology labels are interned too, so ranking the holders of a
//! large swarm compares and hashes integers, not peer-id and label strings.
//!
//! A slot is valid from an agent's first request until a sweep forgets the agent. A
//! freed slot goes back to a free list and may name a new agent after that sweep, so
//! whoever keeps slots (the holder tables) must drop the slots of forgotten agents in
//! the same sweep ([`Peers::is_live`]). Cannot: look an agent up by address, or keep
//! anything about an agent after it is forgotten.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Instant;

use shoal_proto::tracker::AgentInfo;
use shoal_proto::{PeerId, Proximity, Topology};

/// A live agent's number inside the registry (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(super) struct Slot(u32);

/// Interned topology labels of one agent; 0 is the empty label, which never matches.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(super) struct Place {
    node: u32,
    zone: u32,
    region: u32,
}

/// What the registry keeps of one agent.
#[derive(Debug)]
pub(super) struct Peer {
    pub id: PeerId,
    pub addr: SocketAddr,
    /// `addr` as text, formatted when it changes rather than in every reply hinting
    /// this agent.
    addr_text: String,
    /// As last reported; `place` is its interned form.
    topology: Topology,
    pub place: Place,
    pub load: u32,
    pub last_seen: Instant,
}

/// Every known agent by slot and by id.
#[derive(Debug, Default)]
pub(super) struct Peers {
    by_id: HashMap<PeerId, Slot>,
    /// Indexed by slot; `None` for a free slot (listed in `free`).
    slots: Vec<Option<Peer>>,
    free: Vec<Slot>,
    labels: Labels,
}

/// Interned label strings with reference counts (a label no live agent uses is
/// forgotten, so the table is bounded by the live agents' labels).
#[derive(Debug, Default)]
struct Labels {
    ids: HashMap<Box<str>, (u32, u32)>,
    /// Ids of forgotten labels, reused first; then `next`.
    free: Vec<u32>,
    next: u32,
}

impl Slot {
    /// Slot `i`, for tests that build holder tables without a registry.
    #[cfg(test)]
    pub fn for_test(i: u32) -> Slot {
        Slot(i)
    }

    pub fn index(self) -> usize {
        self.0 as usize
    }

    /// A well-mixed 64-bit value of the slot and `salt`: cheap, and good enough to
    /// spread requesters (slots are handed out by the registry, not chosen by agents,
    /// so nobody can aim for collisions).
    pub fn mix(self, salt: u64) -> u64 {
        splitmix(salt ^ u64::from(self.0).wrapping_mul(0x9e37_79b9_7f4a_7c15))
    }
}

impl Place {
    /// As [`Topology::proximity`], on interned labels.
    pub fn proximity(&self, other: &Place) -> Proximity {
        let eq = |a: u32, b: u32| a != 0 && a == b;
        if eq(self.node, other.node) {
            Proximity::SameNode
        } else if eq(self.zone, other.zone) {
            Proximity::SameZone
        } else if eq(self.region, other.region) {
            Proximity::SameRegion
        } else {
            Proximity::Other
        }
    }
}

impl Peer {
    /// `addr` as text (as `SocketAddr`'s `Display` and serde's JSON form).
    pub fn addr_text(&self) -> &str {
        &self.addr_text
    }
}

impl Peers {
    /// Records a request from `id` at `now` and returns its slot (a new one for an
    /// agent not known yet).
    pub fn touch(&mut self, now: Instant, id: &PeerId, info: &AgentInfo) -> Slot {
        if let Some(&slot) = self.by_id.get(id)
            && let Some(Some(p)) = self.slots.get_mut(slot.index())
        {
            if p.addr != info.peer_addr {
                p.addr = info.peer_addr;
                p.addr_text = info.peer_addr.to_string();
            }
            p.load = info.load;
            p.last_seen = now;
            if p.topology != info.topology {
                self.labels.release(&p.topology);
                p.place = self.labels.intern(&info.topology);
                p.topology = info.topology.clone();
            }
            return slot;
        }
        let peer = Peer {
            id: id.clone(),
            addr: info.peer_addr,
            addr_text: info.peer_addr.to_string(),
            topology: info.topology.clone(),
            place: self.labels.intern(&info.topology),
            load: info.load,
            last_seen: now,
        };
        let slot = match self.free.pop() {
            Some(s) => {
                self.slots[s.index()] = Some(peer);
                s
            }
            None => {
                // More than 2^32 live agents cannot fit in memory anyway.
                let s = Slot(self.slots.len() as u32);
                self.slots.push(Some(peer));
                s
            }
        };
        self.by_id.insert(id.clone(), slot);
        slot
    }

    pub fn get(&self, slot: Slot) -> Option<&Peer> {
        self.slots.get(slot.index()).and_then(Option::as_ref)
    }

    /// Whether `slot` names a live agent.
    pub fn is_live(&self, slot: Slot) -> bool {
        self.get(slot).is_some()
    }

    /// Forgets the agents `keep` refuses; their slots are free from now on.
    pub fn retain(&mut self, mut keep: impl FnMut(&Peer) -> bool) {
        for (i, s) in self.slots.iter_mut().enumerate() {
            if let Some(p) = s
                && !keep(p)
            {
                self.by_id.remove(&p.id);
                self.labels.release(&p.topology);
                *s = None;
                self.free.push(Slot(i as u32));
            }
        }
    }

    pub fn len(&self) -> usize {
        self.by_id.len()
    }

    /// Checks the tables against each other (tests).
    #[cfg(test)]
    pub fn check(&self) {
        let live = self.slots.iter().filter(|s| s.is_some()).count();
        assert_eq!(live, self.by_id.len(), "live slots vs ids");
        assert_eq!(live + self.free.len(), self.slots.len(), "free list");
        for (id, slot) in &self.by_id {
            let Some(p) = self.get(*slot) else {
                panic!("{id} names the free slot {slot:?}");
            };
            assert_eq!(&p.id, id);
            assert_eq!(p.place, self.labels.lookup(&p.topology), "interned labels");
        }
        let mut refs: HashMap<&str, u32> = HashMap::new();
        for p in self.slots.iter().flatten() {
            for l in [&p.topology.node, &p.topology.zone, &p.topology.region] {
                if !l.is_empty() {
                    *refs.entry(l.as_str()).or_default() += 1;
                }
            }
        }
        assert_eq!(
            refs.len(),
            self.labels.ids.len(),
            "labels of live agents only"
        );
        for (l, n) in refs {
            assert_eq!(self.labels.ids.get(l).map(|e| e.1), Some(n), "refs of {l}");
        }
    }
}

impl Labels {
    fn intern(&mut self, t: &Topology) -> Place {
        Place {
            node: self.one(&t.node),
            zone: self.one(&t.zone),
            region: self.one(&t.region),
        }
    }

    fn one(&mut self, label: &str) -> u32 {
        if label.is_empty() {
            return 0;
        }
        if let Some(e) = self.ids.get_mut(label) {
            e.1 += 1;
            return e.0;
        }
        let id = self.free.pop().unwrap_or_else(|| {
            // 0 is the empty label; ids stay below the number of live labels + 1.
            self.next += 1;
            self.next
        });
        self.ids.insert(label.into(), (id, 1));
        id
    }

    fn release(&mut self, t: &Topology) {
        for label in [&t.node, &t.zone, &t.region] {
            if let Some(e) = self.ids.get_mut(label.as_str()) {
                e.1 -= 1;
                if e.1 == 0 {
                    self.free.push(e.0);
                    self.ids.remove(label.as_str());
                }
            }
        }
    }

    #[cfg(test)]
    fn lookup(&self, t: &Topology) -> Place {
        let one = |l: &str| self.ids.get(l).map_or(0, |e| e.0);
        Place {
            node: one(&t.node),
            zone: one(&t.zone),
            region: one(&t.region),
        }
    }
}

/// SplitMix64's finaliser.
fn splitmix(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}
