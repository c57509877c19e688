//! The ring: where a leaderless key lives.
//!
//! Dynamo's strategy 3: the 64-bit hash space is cut into `Q` equal partitions, and the
//! partitions are dealt to the nodes in turn (partition `p` belongs to the `p mod S`-th node in id
//! order), so every node owns `Q/S` partitions spread around the ring and a node's load moves
//! evenly to the others when it is down. A key's partition is the range its hash falls in; its
//! **preference list** is the owners met walking clockwise from that partition, the first `N`
//! distinct ones. Everything is computed from the catalog (node ids, `Q`), so every node agrees
//! without talking.

use std::collections::BTreeSet;
use tunekv_core::NodeId;

pub use tunekv_core::keyspace::{PARTITIONS_DEFAULT, PARTITIONS_MAX};

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ring {
    /// Node ids, ascending, no repeats.
    nodes: Vec<NodeId>,
    partitions: u32,
}

/// Where one write goes under a sloppy quorum: the node that stores it, and, when that node
/// stands in for a preference node that is down, the node the hint is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Placement {
    pub node: NodeId,
    pub hint_for: Option<NodeId>,
}

impl Ring {
    /// A ring of `partitions` over `nodes`. Errors name what is wrong.
    pub fn new(nodes: &[NodeId], partitions: u32) -> Result<Ring, String> {
        let set: BTreeSet<NodeId> = nodes.iter().copied().collect();
        if set.is_empty() {
            return Err("a ring needs at least one node".into());
        }
        if set.len() != nodes.len() {
            return Err("node ids on a ring must be distinct".into());
        }
        if partitions == 0 || partitions > PARTITIONS_MAX {
            return Err(format!(
                "partitions must be within 1..={PARTITIONS_MAX}, got {partitions}"
            ));
        }
        if (partitions as usize) < set.len() {
            return Err(format!(
                "partitions ({partitions}) must be at least the number of nodes ({})",
                set.len()
            ));
        }
        Ok(Ring {
            nodes: set.into_iter().collect(),
            partitions,
        })
    }

    pub fn partitions(&self) -> u32 {
        self.partitions
    }

    pub fn nodes(&self) -> &[NodeId] {
        &self.nodes
    }

    /// The partition a key falls in: its hash's range among `Q` equal ranges.
    pub fn partition_of(&self, key: &[u8]) -> u32 {
        let hash = xxhash_rust::xxh3::xxh3_64(key);
        // (hash × Q) / 2^64: the range, without the bias of `hash % Q`. Below Q by construction.
        ((u128::from(hash) * u128::from(self.partitions)) >> 64) as u32
    }

    /// The node that owns partition `p`.
    pub fn owner(&self, p: u32) -> NodeId {
        self.nodes[p as usize % self.nodes.len()]
    }

    /// Owners met walking clockwise from partition `p`, each once, all of them eventually.
    fn walk(&self, p: u32) -> impl Iterator<Item = NodeId> + '_ {
        let mut seen = BTreeSet::new();
        (0..self.partitions)
            .map(move |i| self.owner((p + i) % self.partitions))
            .filter(move |n| seen.insert(*n))
    }

    /// The first `n` distinct nodes of partition `p`: the preference list of its every key.
    pub fn partition_preference(&self, p: u32, n: usize) -> Vec<NodeId> {
        self.walk(p % self.partitions).take(n).collect()
    }

    /// The first `n` distinct nodes for `key` (fewer if the ring has fewer nodes).
    pub fn preference_list(&self, key: &[u8], n: usize) -> Vec<NodeId> {
        self.walk(self.partition_of(key)).take(n).collect()
    }

    /// Where the `n` copies of a write of `key` go when `up` says which nodes are reachable
    /// (sloppy quorum): each preference node that is up stores its own copy; each one that is
    /// down is replaced by the next node up beyond the preference list, in ring order, which
    /// stores the copy with a hint for it. When too few nodes are up, fewer placements come back.
    pub fn placements(&self, key: &[u8], n: usize, up: impl Fn(NodeId) -> bool) -> Vec<Placement> {
        let walk: Vec<NodeId> = self.walk(self.partition_of(key)).collect();
        let (preferred, beyond) = walk.split_at(n.min(walk.len()));
        let mut substitutes = beyond.iter().copied().filter(|s| up(*s));
        preferred
            .iter()
            .filter_map(|&p| {
                if up(p) {
                    Some(Placement {
                        node: p,
                        hint_for: None,
                    })
                } else {
                    substitutes.next().map(|s| Placement {
                        node: s,
                        hint_for: Some(p),
                    })
                }
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn ids(n: u64) -> Vec<NodeId> {
        (1..=n).map(NodeId).collect()
    }

    #[test]
    fn bad_rings_are_refused_with_a_reason() {
        assert!(Ring::new(&[], 8).is_err());
        assert!(Ring::new(&[NodeId(1), NodeId(1)], 8).is_err());
        assert!(Ring::new(&ids(3), 0).is_err());
        assert!(Ring::new(&ids(3), 2).is_err());
        assert!(Ring::new(&ids(3), PARTITIONS_MAX + 1).is_err());
    }

    #[test]
    fn every_node_owns_an_equal_share_of_partitions_and_keys_spread() {
        let ring = Ring::new(&ids(4), 256).unwrap();
        let mut owned: BTreeMap<NodeId, u32> = BTreeMap::new();
        for p in 0..256 {
            *owned.entry(ring.owner(p)).or_default() += 1;
        }
        assert!(owned.values().all(|&c| c == 64), "{owned:?}");
        let mut first: BTreeMap<NodeId, u32> = BTreeMap::new();
        for i in 0..4000u32 {
            *first
                .entry(ring.preference_list(&i.to_be_bytes(), 1)[0])
                .or_default() += 1;
        }
        // Each node is first for about a quarter of the keys.
        assert!(
            first.values().all(|&c| (800..=1200).contains(&c)),
            "{first:?}"
        );
    }

    #[test]
    fn preference_lists_are_distinct_deterministic_and_order_independent() {
        let a = Ring::new(&[NodeId(3), NodeId(1), NodeId(2), NodeId(5)], 64).unwrap();
        let b = Ring::new(&[NodeId(5), NodeId(2), NodeId(1), NodeId(3)], 64).unwrap();
        for i in 0..500u32 {
            let key = i.to_le_bytes();
            let list = a.preference_list(&key, 3);
            assert_eq!(list.len(), 3);
            assert_eq!(list.iter().collect::<BTreeSet<_>>().len(), 3, "{list:?}");
            assert_eq!(
                list,
                b.preference_list(&key, 3),
                "same catalog, same answer"
            );
            assert_eq!(list[0], a.owner(a.partition_of(&key)));
        }
        // Asking for more copies than nodes gives every node once.
        assert_eq!(a.preference_list(b"k", 9).len(), 4);
    }

    #[test]
    fn a_down_preference_node_is_replaced_by_the_next_node_up_with_a_hint() {
        let ring = Ring::new(&ids(5), 64).unwrap();
        let key = b"cart:42";
        let walk: Vec<NodeId> = ring.walk(ring.partition_of(key)).collect();
        let down = walk[1];
        let placed = ring.placements(key, 3, |n| n != down);
        assert_eq!(placed.len(), 3);
        assert_eq!(
            placed[0],
            Placement {
                node: walk[0],
                hint_for: None
            }
        );
        assert_eq!(
            placed[1],
            Placement {
                node: walk[3],
                hint_for: Some(down)
            }
        );
        assert_eq!(
            placed[2],
            Placement {
                node: walk[2],
                hint_for: None
            }
        );
        // All up: the preference list itself, no hints.
        let all = ring.placements(key, 3, |_| true);
        assert!(all.iter().all(|p| p.hint_for.is_none()));
        assert_eq!(
            all.iter().map(|p| p.node).collect::<Vec<_>>(),
            ring.preference_list(key, 3)
        );
        // Only one node up: one placement.
        let lone = walk[4];
        assert_eq!(ring.placements(key, 3, |n| n == lone).len(), 1);
    }
}
