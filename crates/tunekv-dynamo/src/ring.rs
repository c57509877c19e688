//! The ring: where a leaderless key lives.
//!
//! Dynamo's strategy 3: the 64-bit hash space is cut into `Q` equal partitions; a key's
//! partition is the range its hash falls in, and every key of a partition has the same
//! **preference list** (the `N` nodes holding it, in order). How partitions get their lists is
//! the keyspace's [`RingPlacement`]:
//! - `rendezvous` (new keyspaces): partition `p` ranks every node by a hash of `(p, node)`,
//!   highest first; the first `N` are its preference list, the rest the order stand-ins are
//!   taken in. A node added enters a partition's list only where it outranks the N-th node (about
//!   N/(S+1) of them), displacing one node each; a node removed leaves only its own places, each
//!   taken by the next in that partition's ranking. So a membership change moves about the least
//!   data possible (docs/deploy.md).
//! - `dealt` (keyspaces created before rendezvous existed): partitions are dealt to the nodes in
//!   turn (partition `p` belongs to the `p mod S`-th node in id order), and the preference list
//!   is the owners met walking clockwise from `p`, the first `N` distinct ones. Perfectly even,
//!   but adding or removing a node reshuffles most lists.
//!
//! Everything is computed from the catalog (node ids, `Q`, the placement), so every node agrees
//! without talking.

use std::collections::BTreeSet;
use tunekv_core::NodeId;

pub use tunekv_core::keyspace::{RingPlacement, PARTITIONS_DEFAULT, PARTITIONS_MAX};

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ring {
    /// Node ids, ascending, no repeats.
    nodes: Vec<NodeId>,
    partitions: u32,
    placement: RingPlacement,
}

/// Where one write goes under a sloppy quorum: the node that stores it, and, when that node
/// stands in for a preference node that is down, the node the hint is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Placement {
    pub node: NodeId,
    pub hint_for: Option<NodeId>,
}

impl Ring {
    /// A ring of `partitions` over `nodes`, placed by `placement`. Errors name what is wrong.
    pub fn new(
        nodes: &[NodeId],
        partitions: u32,
        placement: RingPlacement,
    ) -> Result<Ring, String> {
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
            placement,
        })
    }

    /// The ring of a keyspace's spec over `nodes`.
    pub fn of_spec(nodes: &[NodeId], spec: &tunekv_core::KeyspaceSpec) -> Result<Ring, String> {
        Ring::new(nodes, spec.partitions(), spec.ring_placement())
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

    /// The node first in partition `p`'s preference list.
    pub fn owner(&self, p: u32) -> NodeId {
        self.walk(p % self.partitions)[0]
    }

    /// Every node once, in partition `p`'s order: its preference list first, then the order
    /// stand-ins are taken in.
    fn walk(&self, p: u32) -> Vec<NodeId> {
        match self.placement {
            RingPlacement::Dealt => {
                let dealt = |q: u32| self.nodes[q as usize % self.nodes.len()];
                let mut seen = BTreeSet::new();
                // The walk stops once it has met every node (within S partitions of p).
                (0..self.partitions)
                    .map(|i| {
                        dealt(((u64::from(p) + u64::from(i)) % u64::from(self.partitions)) as u32)
                    })
                    .filter(|n| seen.insert(*n))
                    .take(self.nodes.len())
                    .collect()
            }
            RingPlacement::Rendezvous => {
                let mut ranked: Vec<(u64, NodeId)> = self
                    .nodes
                    .iter()
                    .map(|&n| (rendezvous_score(p, n), n))
                    .collect();
                // Highest score first; equal scores (practically never) by node id.
                ranked.sort_unstable_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
                ranked.into_iter().map(|(_, n)| n).collect()
            }
        }
    }

    /// The first `n` distinct nodes of partition `p`: the preference list of its every key.
    pub fn partition_preference(&self, p: u32, n: usize) -> Vec<NodeId> {
        let mut walk = self.walk(p % self.partitions);
        walk.truncate(n);
        walk
    }

    /// The first `n` distinct nodes for `key` (fewer if the ring has fewer nodes).
    pub fn preference_list(&self, key: &[u8], n: usize) -> Vec<NodeId> {
        self.partition_preference(self.partition_of(key), n)
    }

    /// The nodes `key`'s preference list gains going from `old` to this ring: where a ring
    /// change must copy it (the nodes on both lists hold it already).
    pub fn gained(&self, old: &Ring, key: &[u8], n: usize) -> Vec<NodeId> {
        self.gained_from(&old.preference_list(key, n), key, n)
    }

    /// [`Ring::gained`] given the old ring's preference list of `key` (`before`), for a caller
    /// that has it already.
    pub fn gained_from(&self, before: &[NodeId], key: &[u8], n: usize) -> Vec<NodeId> {
        self.preference_list(key, n)
            .into_iter()
            .filter(|x| !before.contains(x))
            .collect()
    }

    /// Where the `n` copies of a write of `key` go when `up` says which nodes are reachable
    /// (sloppy quorum): each preference node that is up stores its own copy; each one that is
    /// down is replaced by the next node up beyond the preference list, in ring order, which
    /// stores the copy with a hint for it. When too few nodes are up, fewer placements come back.
    pub fn placements(&self, key: &[u8], n: usize, up: impl Fn(NodeId) -> bool) -> Vec<Placement> {
        let walk = self.walk(self.partition_of(key));
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

/// Partition `p`'s score for `node` under rendezvous placement. Stable forever: changing it
/// would move every key of every rendezvous keyspace.
fn rendezvous_score(p: u32, node: NodeId) -> u64 {
    let mut bytes = [0u8; 12];
    bytes[..4].copy_from_slice(&p.to_le_bytes());
    bytes[4..].copy_from_slice(&node.0.to_le_bytes());
    xxhash_rust::xxh3::xxh3_64(&bytes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    const DEALT: RingPlacement = RingPlacement::Dealt;
    const RENDEZVOUS: RingPlacement = RingPlacement::Rendezvous;

    fn ids(n: u64) -> Vec<NodeId> {
        (1..=n).map(NodeId).collect()
    }

    /// Replica places a change from `old` to `new` nodes adds (summed over partitions).
    fn moved(old: &[NodeId], new: &[NodeId], placement: RingPlacement, n: usize) -> usize {
        let (a, b) = (
            Ring::new(old, 256, placement).unwrap(),
            Ring::new(new, 256, placement).unwrap(),
        );
        (0..256)
            .map(|p| {
                let before = a.partition_preference(p, n);
                b.partition_preference(p, n)
                    .iter()
                    .filter(|x| !before.contains(x))
                    .count()
            })
            .sum()
    }

    #[test]
    fn rendezvous_moves_about_the_least_data_a_membership_change_can() {
        let n = 3;
        for s in 4..=9u64 {
            // Adding node s+1: it must take N·Q/(S+1) places; rendezvous stays within 25 % of
            // that, dealing moves far more once the ring has a few nodes beyond N.
            let least = 3 * 256 / (s as usize + 1);
            let grown = moved(&ids(s), &ids(s + 1), RENDEZVOUS, n);
            assert!(grown <= least * 5 / 4, "S={s}: {grown} > 1.25 × {least}");
            if s >= 5 {
                let dealt = moved(&ids(s), &ids(s + 1), DEALT, n);
                assert!(
                    dealt > 2 * grown,
                    "S={s}: dealt {dealt}, rendezvous {grown}"
                );
            }
            // Removing node 1: only the partitions it was in change, each by one place, taken
            // by the next node of that partition's ranking.
            let a = Ring::new(&ids(s), 256, RENDEZVOUS).unwrap();
            let b = Ring::new(&ids(s)[1..], 256, RENDEZVOUS).unwrap();
            for p in 0..256 {
                let (before, after) = (a.partition_preference(p, n), b.partition_preference(p, n));
                if before.contains(&NodeId(1)) {
                    let kept: Vec<_> = before.iter().filter(|x| **x != NodeId(1)).collect();
                    assert!(
                        kept.iter().all(|x| after.contains(x)),
                        "p{p}: {before:?} → {after:?}"
                    );
                    assert_eq!(after.last(), Some(&a.walk(p)[n]), "p{p}");
                } else {
                    assert_eq!(before, after, "p{p} did not hold node 1");
                }
            }
        }
    }

    #[test]
    fn rendezvous_spreads_replicas_evenly_enough_and_is_stable() {
        for s in [3u64, 4, 6, 10] {
            let ring = Ring::new(&ids(s), 256, RENDEZVOUS).unwrap();
            let mut held: BTreeMap<NodeId, usize> = BTreeMap::new();
            for p in 0..256 {
                for x in ring.partition_preference(p, 3) {
                    *held.entry(x).or_default() += 1;
                }
            }
            let fair = 3 * 256 / s as usize;
            assert_eq!(held.len(), s as usize);
            assert!(
                held.values()
                    .all(|&c| c * 4 >= fair * 3 && c * 4 <= fair * 5),
                "S={s}: {held:?}, fair {fair}"
            );
        }
        // Pinned: the score function must never change (it would move every key).
        let ring = Ring::new(&ids(5), 256, RENDEZVOUS).unwrap();
        assert_eq!(
            ring.preference_list(b"cart:42", 3),
            [NodeId(1), NodeId(2), NodeId(5)]
        );
    }

    #[test]
    fn gained_nodes_are_the_new_members_of_a_keys_list() {
        for placement in [DEALT, RENDEZVOUS] {
            let old = Ring::new(&ids(4), 64, placement).unwrap();
            let new = Ring::new(&ids(5), 64, placement).unwrap();
            for i in 0..300u32 {
                let key = i.to_be_bytes();
                let gained = new.gained(&old, &key, 3);
                let (before, after) = (old.preference_list(&key, 3), new.preference_list(&key, 3));
                assert!(gained
                    .iter()
                    .all(|g| after.contains(g) && !before.contains(g)));
                assert_eq!(
                    gained.len(),
                    after.iter().filter(|x| !before.contains(x)).count()
                );
            }
        }
    }

    #[test]
    fn bad_rings_are_refused_with_a_reason() {
        assert!(Ring::new(&[], 8, DEALT).is_err());
        assert!(Ring::new(&[NodeId(1), NodeId(1)], 8, DEALT).is_err());
        assert!(Ring::new(&ids(3), 0, DEALT).is_err());
        assert!(Ring::new(&ids(3), 2, DEALT).is_err());
        assert!(Ring::new(&ids(3), PARTITIONS_MAX + 1, DEALT).is_err());
    }

    #[test]
    fn every_node_owns_an_equal_share_of_partitions_and_keys_spread() {
        let ring = Ring::new(&ids(4), 256, DEALT).unwrap();
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
        for placement in [DEALT, RENDEZVOUS] {
            lists_are_distinct_deterministic_and_order_independent(placement);
        }
    }

    fn lists_are_distinct_deterministic_and_order_independent(placement: RingPlacement) {
        let a = Ring::new(&[NodeId(3), NodeId(1), NodeId(2), NodeId(5)], 64, placement).unwrap();
        let b = Ring::new(&[NodeId(5), NodeId(2), NodeId(1), NodeId(3)], 64, placement).unwrap();
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
        for placement in [DEALT, RENDEZVOUS] {
            down_node_replaced(placement);
        }
    }

    fn down_node_replaced(placement: RingPlacement) {
        let ring = Ring::new(&ids(5), 64, placement).unwrap();
        let key = b"cart:42";
        let walk = ring.walk(ring.partition_of(key));
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
