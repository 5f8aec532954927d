//! Consistent-hash placement of workspaces on relays: pure logic, no I/O.
//!
//! Inside a region the relays sit on a hash ring (the `hashring` crate) with
//! [`VNODES_PER_RELAY`] virtual nodes each, keyed by the workspace label. The first
//! distinct relay clockwise from a label is its **owner**, the next distinct one its
//! **standby**. Agents, relays and the CLI all compute placement from the same region
//! map, so they agree without talking to each other.
//!
//! The ring must hash identically in every process: hashring's default hasher is
//! SipHash with fixed zero keys, and a virtual node hashes as its relay name and
//! index, so two processes with the same relay set build the same ring. (Integers
//! hash in native byte order: every relay of one network must share an endianness,
//! which holds for every platform we build for.)

use std::collections::BTreeMap;
use std::sync::Arc;

use ferry_proto::api::{Region, RelayInfo};
use hashring::HashRing;

/// Virtual nodes per relay: enough that keys spread within a few percent of even
/// over a handful of relays, few enough that a ring of dozens of relays stays small.
pub const VNODES_PER_RELAY: u32 = 128;

/// One point of a relay on the ring.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct VNode {
    relay: Arc<str>,
    index: u32,
}

/// The relays of one region, on a ring.
#[derive(Debug, Clone, Default)]
pub struct Ring {
    ring: HashRing<VNode>,
    relays: Vec<Arc<str>>,
}

impl Ring {
    /// A ring holding `relays` (duplicates count once).
    pub fn new<'a>(relays: impl IntoIterator<Item = &'a str>) -> Ring {
        let mut ring = Ring::default();
        for r in relays {
            ring.add(r);
        }
        ring
    }

    /// Adds a relay (no-op if present).
    pub fn add(&mut self, relay: &str) {
        if self.relays.iter().any(|r| &**r == relay) {
            return;
        }
        let relay: Arc<str> = Arc::from(relay);
        self.ring.batch_add(
            (0..VNODES_PER_RELAY)
                .map(|index| VNode {
                    relay: relay.clone(),
                    index,
                })
                .collect(),
        );
        self.relays.push(relay);
    }

    /// Removes a relay (no-op if absent).
    pub fn remove(&mut self, relay: &str) {
        let Some(pos) = self.relays.iter().position(|r| &**r == relay) else {
            return;
        };
        let relay = self.relays.swap_remove(pos);
        for index in 0..VNODES_PER_RELAY {
            self.ring.remove(&VNode {
                relay: relay.clone(),
                index,
            });
        }
    }

    pub fn len(&self) -> usize {
        self.relays.len()
    }

    pub fn is_empty(&self) -> bool {
        self.relays.is_empty()
    }

    /// Every relay of the ring, in ring order starting at `key`'s owner: the owner
    /// first, the standby second, then the fallbacks.
    pub fn successors(&self, key: &str) -> Vec<Arc<str>> {
        let mut out: Vec<Arc<str>> = Vec::with_capacity(self.relays.len());
        if self.relays.is_empty() {
            return out;
        }
        // hashring has no cursor API: ask for the whole ring in order from the key
        // and keep the first appearance of each relay.
        let all = self
            .ring
            .get_with_replicas(&key, self.ring.len())
            .unwrap_or_default();
        for vnode in all {
            if !out.contains(&vnode.relay) {
                out.push(vnode.relay);
                if out.len() == self.relays.len() {
                    break;
                }
            }
        }
        out
    }

    /// The relay that owns `key`.
    pub fn owner(&self, key: &str) -> Option<Arc<str>> {
        self.ring.get(&key).map(|v| v.relay.clone())
    }

    /// Owner and standby (the next distinct relay, if the ring has two).
    pub fn placement(&self, key: &str) -> Option<(Arc<str>, Option<Arc<str>>)> {
        let mut s = self.successors(key).into_iter();
        let owner = s.next()?;
        Some((owner, s.next()))
    }
}

/// Where a workspace's agent belongs in one region.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Placement {
    pub owner: RelayInfo,
    pub standby: Option<RelayInfo>,
}

/// The region map with a ring per region.
#[derive(Debug, Clone, Default)]
pub struct RegionMap {
    regions: BTreeMap<String, (Ring, BTreeMap<String, RelayInfo>)>,
    /// Region names in the order the control plane listed them.
    order: Vec<String>,
}

impl RegionMap {
    /// Builds rings from the control plane's region map.
    pub fn new(regions: &[Region]) -> RegionMap {
        let mut map = RegionMap::default();
        for region in regions {
            let (ring, relays) = map.regions.entry(region.name.clone()).or_default();
            for relay in &region.relays {
                // Draining, late or silent relays own nothing: every relay and agent
                // reads the same map, so they agree on who owns what.
                if !in_service(relay) {
                    continue;
                }
                ring.add(&relay.name);
                relays.insert(relay.name.clone(), relay.clone());
            }
            if !map.order.contains(&region.name) {
                map.order.push(region.name.clone());
            }
        }
        map
    }

    /// Region names, in the control plane's order.
    pub fn region_names(&self) -> impl Iterator<Item = &str> {
        self.order.iter().map(String::as_str)
    }

    /// The first region that has relays.
    pub fn first_region(&self) -> Option<&str> {
        self.order
            .iter()
            .find(|r| {
                self.regions
                    .get(*r)
                    .is_some_and(|(ring, _)| !ring.is_empty())
            })
            .map(String::as_str)
    }

    /// The relays of a region, by name.
    pub fn relays(&self, region: &str) -> impl Iterator<Item = &RelayInfo> {
        self.regions
            .get(region)
            .into_iter()
            .flat_map(|(_, relays)| relays.values())
    }

    /// A relay by name, in any region.
    pub fn relay(&self, name: &str) -> Option<&RelayInfo> {
        self.regions
            .values()
            .find_map(|(_, relays)| relays.get(name))
    }

    /// Relays of `region` in ring order from `label`'s owner.
    pub fn successors(&self, region: &str, label: &str) -> Vec<RelayInfo> {
        let Some((ring, relays)) = self.regions.get(region) else {
            return Vec::new();
        };
        ring.successors(label)
            .iter()
            .filter_map(|name| relays.get(&**name).cloned())
            .collect()
    }

    /// Owner and standby of `label` in `region`.
    pub fn placement(&self, region: &str, label: &str) -> Option<Placement> {
        let mut s = self.successors(region, label).into_iter();
        Some(Placement {
            owner: s.next()?,
            standby: s.next(),
        })
    }

    /// The same map without the named relays (e.g. ones that said they are draining).
    pub fn without(&self, excluded: &[String]) -> RegionMap {
        let regions: Vec<Region> = self
            .order
            .iter()
            .map(|name| Region {
                name: name.clone(),
                relays: self
                    .relays(name)
                    .filter(|r| !excluded.contains(&r.name))
                    .cloned()
                    .collect(),
            })
            .collect();
        RegionMap::new(&regions)
    }
}

#[cfg(test)]
mod tests;

/// Whether a relay takes new agents and streams: healthy, or from a control plane
/// that reports no health.
pub fn in_service(relay: &ferry_proto::api::RelayInfo) -> bool {
    matches!(relay.health, None | Some(ferry_proto::api::RelayHealth::Ok))
}
