//! Where a keyspace's data lives, as the catalog records it (issue 21, membership): the
//! replicas of each shard of an ordered keyspace, the nodes of a leaderless ring, the nodes of
//! the cluster, and the planner that decides the next replica move. Pure: the node stores these
//! in its metadata group and carries the moves out.

use crate::keyspace::replicas_for;
use crate::{KeyspaceSpec, Mode, NodeId, ShardId};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// A keyspace's placement (catalog key `placement/<name>`), written with the keyspace and
/// changed only by replica moves.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Placement {
    /// Leaderless and volatile keyspaces: the nodes of the ring (its partitions are dealt to
    /// them in turn), changed only by a ring change.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ring: Vec<u64>,
    /// A ring change in flight: the nodes the ring is changing to. While it is set, writes go
    /// to both rings' preference lists and every node of the old ring hands its data to the new
    /// one; then `ring` becomes this and nodes drop what they no longer hold.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ring_target: Option<Vec<u64>>,
    /// Ordered keyspaces: each shard's replicas, by shard number.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub shards: Vec<ShardPlacement>,
}

/// The replicas of one shard.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ShardPlacement {
    /// The voters of the shard's group, preferred leader first.
    pub replicas: Vec<u64>,
    /// A move in flight: the voters the group is being changed to (the new one joins as a
    /// learner, catches up, then the voters are replaced in one joint change).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<Vec<u64>>,
    /// Moves finished. A shard that never moved is created by its first replica; a moved one
    /// never is (its new replicas join the existing group as learners).
    #[serde(default)]
    pub moves: u64,
    /// The replica that should lead, when not the first (leader balancing); ignored when it is
    /// no longer a replica.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub leader: Option<u64>,
}

impl ShardPlacement {
    /// Whether `node` keeps a copy of the shard (a voter, or the learner of a move in flight).
    pub fn hosts(&self, node: NodeId) -> bool {
        self.replicas.contains(&node.0) || self.target.as_ref().is_some_and(|t| t.contains(&node.0))
    }

    /// Whether `node` may create the shard's group (propose its first membership).
    pub fn creates(&self, node: NodeId) -> bool {
        self.moves == 0 && self.target.is_none() && self.replicas.first() == Some(&node.0)
    }

    /// The replica that should lead the shard's group: `leader` while it is a replica, else
    /// the first.
    pub fn preferred_leader(&self) -> Option<u64> {
        self.leader
            .filter(|l| self.replicas.contains(l))
            .or_else(|| self.replicas.first().copied())
    }

    /// The replicas as node ids.
    pub fn nodes(&self) -> Vec<NodeId> {
        self.replicas.iter().map(|n| NodeId(*n)).collect()
    }
}

impl Placement {
    /// A new keyspace's placement over `nodes` (the cluster's active nodes): shard leaders
    /// spread by rotating the start with `seed` (a hash of the name) and the shard number.
    pub fn initial(spec: &KeyspaceSpec, seed: u64, nodes: &[NodeId]) -> Placement {
        let mut sorted = nodes.to_vec();
        sorted.sort();
        match spec.mode {
            Mode::Ordered => Placement {
                ring: Vec::new(),
                ring_target: None,
                shards: (0..spec.shards)
                    .map(|s| ShardPlacement {
                        replicas: replicas_for(seed, ShardId(s), &sorted, spec.replicas)
                            .into_iter()
                            .map(|n| n.0)
                            .collect(),
                        target: None,
                        moves: 0,
                        leader: None,
                    })
                    .collect(),
            },
            _ => Placement {
                ring: sorted.iter().map(|n| n.0).collect(),
                ring_target: None,
                shards: Vec::new(),
            },
        }
    }

    /// The placement every keyspace created before placements were stored has: the shards
    /// where `replicas_for` put them over the cluster's first nodes, the ring over all of them.
    pub fn legacy(ks_id: u64, spec: &KeyspaceSpec, founders: &[NodeId]) -> Placement {
        Placement::initial(spec, ks_id, founders)
    }

    /// Shard `shard`'s replicas (empty if the placement has no such shard).
    pub fn shard(&self, shard: ShardId) -> Option<&ShardPlacement> {
        self.shards.get(shard.0 as usize)
    }

    /// Every node this placement names.
    pub fn named(&self) -> impl Iterator<Item = u64> + '_ {
        self.ring
            .iter()
            .chain(self.ring_target.iter().flatten())
            .copied()
            .chain(
                self.shards
                    .iter()
                    .flat_map(|s| s.replicas.iter().chain(s.target.iter().flatten()).copied()),
            )
    }
}

/// A node's record in the catalog (`node/<id>`): its addresses and where it is in its life.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeRecord {
    pub raft: String,
    pub http: String,
    #[serde(default)]
    pub resp: Option<String>,
    pub state: NodeState,
}

/// Joining → active → draining → removed. Only active nodes receive new replicas.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NodeState {
    /// Added by an operator; becomes a voter of the metadata group, then active.
    Joining,
    Active,
    /// Being removed: its replicas move away, then it leaves the metadata group.
    Draining,
    /// Gone: never rejoins under this id.
    Removed,
}

impl NodeState {
    pub fn as_str(self) -> &'static str {
        match self {
            NodeState::Joining => "joining",
            NodeState::Active => "active",
            NodeState::Draining => "draining",
            NodeState::Removed => "removed",
        }
    }
}

/// One replica move: shard `shard` of `keyspace` gets a copy on `to`, then loses `from`'s.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Move {
    pub keyspace: String,
    pub shard: u32,
    pub from: u64,
    pub to: u64,
}

impl Move {
    /// The shard's voters after the move: `from` replaced by `to` in its place, so the
    /// preferred leader order stays.
    pub fn target(&self, replicas: &[u64]) -> Vec<u64> {
        replicas
            .iter()
            .map(|&n| if n == self.from { self.to } else { n })
            .collect()
    }
}

/// The nodes a leaderless or volatile keyspace's ring of `partitions` should have over the
/// `active` nodes, when it differs from `ring`: every active node, or — when there are more
/// active nodes than partitions — the ring's active nodes topped up with the lowest other ids.
/// `None` when the ring is right, or when no node is active (nothing to move to).
pub fn next_ring(active: &[NodeId], ring: &[u64], partitions: u32) -> Option<Vec<u64>> {
    let mut want: Vec<u64> = active.iter().map(|n| n.0).collect();
    want.sort_unstable();
    want.dedup();
    if want.len() > partitions as usize {
        let mut kept: Vec<u64> = want
            .iter()
            .copied()
            .filter(|n| ring.contains(n))
            .take(partitions as usize)
            .collect();
        for n in &want {
            if kept.len() >= partitions as usize {
                break;
            }
            if !kept.contains(n) {
                kept.push(*n);
            }
        }
        kept.sort_unstable();
        want = kept;
    }
    let mut have = ring.to_vec();
    have.sort_unstable();
    (!want.is_empty() && want != have).then_some(want)
}

/// The next change of a shard's preferred leader, if any, so that each `active` node is
/// preferred to lead about as many shards as the others: the node preferred for the most
/// shards gives one of them to the least-preferred of that shard's other active replicas,
/// when that one is preferred for at least two fewer. Shards with a move in flight are left
/// alone. Before that, a shard whose preference is not written down gets its first replica
/// written down. Deterministic: the lowest keyspace name, shard and node id win ties. Returns
/// the keyspace, the shard and the new preferred leader.
pub fn next_leader(
    active: &[NodeId],
    placements: &BTreeMap<String, Placement>,
) -> Option<(String, u32, u64)> {
    // First every shard's preference is written down (nodes hand leadership only to a
    // preference written down, so a cluster that never changed keeps its leaders where
    // elections put them).
    for (name, p) in placements {
        for (shard, s) in p.shards.iter().enumerate() {
            if let (None, None, Some(l)) = (&s.target, s.leader, s.preferred_leader()) {
                return Some((name.clone(), shard as u32, l));
            }
        }
    }
    let mut load: BTreeMap<u64, usize> = active.iter().map(|n| (n.0, 0)).collect();
    for p in placements.values() {
        for s in &p.shards {
            if let Some(l) = s.preferred_leader().and_then(|l| load.get_mut(&l)) {
                *l += 1;
            }
        }
    }
    let (&most, &high) = load
        .iter()
        .max_by_key(|(n, l)| (**l, std::cmp::Reverse(**n)))?;
    let mut best: Option<(usize, u64, String, u32)> = None;
    for (name, p) in placements {
        for (shard, s) in p.shards.iter().enumerate() {
            if s.target.is_some() || s.preferred_leader() != Some(most) {
                continue;
            }
            for &r in &s.replicas {
                let Some(&l) = load.get(&r) else { continue };
                if r != most && l + 2 <= high && best.as_ref().is_none_or(|b| (l, r) < (b.0, b.1)) {
                    best = Some((l, r, name.clone(), shard as u32));
                }
            }
        }
    }
    best.map(|(_, to, name, shard)| (name, shard, to))
}

/// The next move, if any, for ordered keyspaces' shards over the `active` nodes (moves in
/// flight are not counted: call it only when none is). First every replica on a node that is not
/// active (draining, removed) moves to the least-loaded active node the shard lacks; then, while
/// the most-loaded active node holds at least two replicas more than the least-loaded, one of its
/// replicas moves there. Deterministic: the lowest keyspace name, shard and node id win ties.
/// `Err` names a shard that cannot leave a draining node (every active node has a copy already).
pub fn next_move(
    active: &[NodeId],
    placements: &BTreeMap<String, Placement>,
) -> Result<Option<Move>, String> {
    let mut load: BTreeMap<u64, usize> = active.iter().map(|n| (n.0, 0)).collect();
    for p in placements.values() {
        for s in &p.shards {
            for r in &s.replicas {
                if let Some(l) = load.get_mut(r) {
                    *l += 1;
                }
            }
        }
    }
    let least_loaded_without = |replicas: &[u64]| {
        load.iter()
            .filter(|(n, _)| !replicas.contains(n))
            .min_by_key(|(n, l)| (**l, **n))
            .map(|(n, _)| *n)
    };
    for (name, p) in placements {
        for (shard, s) in p.shards.iter().enumerate() {
            for &r in &s.replicas {
                if load.contains_key(&r) {
                    continue;
                }
                return match least_loaded_without(&s.replicas) {
                    Some(to) => Ok(Some(Move {
                        keyspace: name.clone(),
                        shard: shard as u32,
                        from: r,
                        to,
                    })),
                    None => Err(format!(
                        "shard {shard} of {name:?} cannot leave node {r}: every active node holds a replica of it already (add a node)"
                    )),
                };
            }
        }
    }
    let Some((&most, &high)) = load
        .iter()
        .max_by_key(|(n, l)| (**l, std::cmp::Reverse(**n)))
    else {
        return Ok(None);
    };
    let Some((&least, &low)) = load.iter().min_by_key(|(n, l)| (**l, **n)) else {
        return Ok(None);
    };
    if high < low + 2 {
        return Ok(None);
    }
    for (name, p) in placements {
        for (shard, s) in p.shards.iter().enumerate() {
            if s.replicas.contains(&most) && !s.replicas.contains(&least) {
                return Ok(Some(Move {
                    keyspace: name.clone(),
                    shard: shard as u32,
                    from: most,
                    to: least,
                }));
            }
        }
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(v: &[u64]) -> Vec<NodeId> {
        v.iter().map(|n| NodeId(*n)).collect()
    }

    fn spec(shards: u32, replicas: u32) -> KeyspaceSpec {
        let mut s: KeyspaceSpec = serde_json::from_str("{}").unwrap();
        s.shards = shards;
        s.replicas = replicas;
        s
    }

    /// Applies moves until the planner has none; returns the moves made.
    fn settle(active: &[u64], placements: &mut BTreeMap<String, Placement>) -> Vec<Move> {
        let mut made = Vec::new();
        while let Some(m) = next_move(&ids(active), placements).unwrap() {
            let s = &mut placements.get_mut(&m.keyspace).unwrap().shards[m.shard as usize];
            let t = m.target(&s.replicas);
            assert_ne!(t, s.replicas, "a move changes something");
            let mut set = t.clone();
            set.sort();
            set.dedup();
            assert_eq!(set.len(), t.len(), "never two copies on one node: {m:?}");
            s.replicas = t;
            s.moves += 1;
            made.push(m);
            assert!(made.len() < 1000, "the planner settles");
        }
        made
    }

    fn loads(placements: &BTreeMap<String, Placement>) -> BTreeMap<u64, usize> {
        let mut load = BTreeMap::new();
        for p in placements.values() {
            for s in &p.shards {
                for r in &s.replicas {
                    *load.entry(*r).or_insert(0) += 1;
                }
            }
        }
        load
    }

    #[test]
    fn initial_placement_matches_the_static_rule_and_legacy_keeps_it() {
        let nodes = ids(&[3, 1, 2]);
        let p = Placement::initial(&spec(4, 3), 7, &nodes);
        for s in 0..4 {
            let want: Vec<u64> = replicas_for(7, ShardId(s), &ids(&[1, 2, 3]), 3)
                .into_iter()
                .map(|n| n.0)
                .collect();
            assert_eq!(p.shard(ShardId(s)).unwrap().replicas, want);
            assert!(p.shards[s as usize].creates(NodeId(want[0])));
        }
        assert_eq!(Placement::legacy(7, &spec(4, 3), &nodes), p);
        let mut leaderless = spec(4, 3);
        leaderless.mode = Mode::Leaderless;
        let ring = Placement::initial(&leaderless, 7, &nodes);
        assert_eq!(ring.ring, vec![1, 2, 3]);
        assert!(ring.shards.is_empty());
        let json = serde_json::to_string(&p).unwrap();
        assert_eq!(serde_json::from_str::<Placement>(&json).unwrap(), p);
    }

    #[test]
    fn adding_a_node_balances_replicas_without_two_copies_on_a_node() {
        let mut placements = BTreeMap::new();
        for (i, name) in ["a", "b", "c"].iter().enumerate() {
            placements.insert(
                name.to_string(),
                Placement::initial(&spec(4, 3), i as u64, &ids(&[1, 2, 3])),
            );
        }
        assert!(
            settle(&[1, 2, 3], &mut placements).is_empty(),
            "balanced already"
        );
        let moves = settle(&[1, 2, 3, 4], &mut placements);
        assert!(moves.iter().all(|m| m.to == 4), "{moves:?}");
        let load = loads(&placements);
        assert_eq!(load.values().sum::<usize>(), 36, "no copy lost or added");
        assert!(
            load.values().max().unwrap() - load.values().min().unwrap() <= 1,
            "{load:?}"
        );
    }

    #[test]
    fn a_draining_node_loses_every_replica_and_a_full_cluster_says_why() {
        let mut placements = BTreeMap::new();
        placements.insert(
            "a".to_string(),
            Placement::initial(&spec(4, 3), 0, &ids(&[1, 2, 3, 4])),
        );
        settle(&[1, 2, 3, 4], &mut placements);
        let moves = settle(&[2, 3, 4], &mut placements);
        assert!(moves.iter().all(|m| m.from == 1), "{moves:?}");
        assert!(!placements["a"].named().any(|n| n == 1));
        assert!(placements["a"].shards.iter().all(|s| s.replicas.len() == 3));
        // Three replicas cannot live on two nodes: the planner says so instead of moving.
        let e = next_move(&ids(&[2, 3]), &placements).unwrap_err();
        assert!(e.contains("cannot leave node 4"), "{e}");
    }

    #[test]
    fn a_ring_follows_the_active_nodes_within_its_partitions() {
        assert_eq!(next_ring(&ids(&[1, 2, 3]), &[1, 2, 3], 64), None);
        assert_eq!(
            next_ring(&ids(&[3, 1, 2, 4]), &[1, 2, 3], 64),
            Some(vec![1, 2, 3, 4])
        );
        assert_eq!(
            next_ring(&ids(&[2, 3, 4]), &[1, 2, 3, 4], 64),
            Some(vec![2, 3, 4])
        );
        assert_eq!(next_ring(&[], &[1, 2], 64), None, "nowhere to go");
        // More nodes than partitions: the ring's own nodes stay, the lowest others fill up.
        assert_eq!(
            next_ring(&ids(&[1, 2, 3, 4, 5]), &[4, 5], 3),
            Some(vec![1, 4, 5])
        );
        assert_eq!(next_ring(&ids(&[1, 2, 3, 4, 5]), &[1, 4, 5], 3), None);
        let mut leaderless = spec(4, 3);
        leaderless.mode = Mode::Leaderless;
        let mut p = Placement::initial(&leaderless, 0, &ids(&[1, 2]));
        assert_eq!(p.ring, vec![1, 2]);
        p.ring_target = Some(vec![2, 3]);
        assert_eq!(
            p.named().filter(|n| *n == 3).count(),
            1,
            "a target is named"
        );
        let json = serde_json::to_string(&p).unwrap();
        assert_eq!(serde_json::from_str::<Placement>(&json).unwrap(), p);
    }

    #[test]
    fn preferred_leaders_spread_over_the_nodes() {
        let mut placements = BTreeMap::new();
        for name in ["a", "b"] {
            let mut p = Placement::initial(&spec(4, 3), 0, &ids(&[1, 2, 3]));
            // Every shard prefers node 1.
            for s in &mut p.shards {
                s.replicas = vec![1, 2, 3];
            }
            placements.insert(name.to_string(), p);
        }
        let mut changes = 0;
        while let Some((name, shard, to)) = next_leader(&ids(&[1, 2, 3, 4]), &placements) {
            let s = &mut placements.get_mut(&name).unwrap().shards[shard as usize];
            assert!(s.replicas.contains(&to), "a leader is a replica");
            if s.leader.is_some() {
                assert_ne!(s.preferred_leader(), Some(to), "a change changes something");
            } else {
                assert_eq!(s.preferred_leader(), Some(to), "written down as it was");
            }
            s.leader = Some(to);
            changes += 1;
            assert!(changes < 100, "settles");
        }
        let mut load = BTreeMap::new();
        for p in placements.values() {
            for s in &p.shards {
                *load.entry(s.preferred_leader().unwrap()).or_insert(0) += 1;
            }
        }
        // Node 4 holds no replica: nothing to give it; the others split the 8 shards.
        assert_eq!(load.get(&4), None, "{load:?}");
        assert!(load.values().all(|l| (2..=3).contains(l)), "{load:?}");
        // A leader that left the replicas falls back to the first.
        let s = ShardPlacement {
            replicas: vec![2, 3, 4],
            target: None,
            moves: 1,
            leader: Some(1),
        };
        assert_eq!(s.preferred_leader(), Some(2));
    }

    #[test]
    fn a_moved_shard_is_never_created_again_and_its_learner_hosts_it() {
        let s = ShardPlacement {
            replicas: vec![1, 2, 3],
            target: Some(vec![4, 2, 3]),
            moves: 0,
            leader: None,
        };
        assert!(s.hosts(NodeId(4)) && s.hosts(NodeId(1)));
        assert!(
            !s.creates(NodeId(1)),
            "no creation while a move is in flight"
        );
        let done = ShardPlacement {
            replicas: vec![4, 2, 3],
            target: None,
            moves: 1,
            leader: None,
        };
        assert!(
            !done.creates(NodeId(4)),
            "node 4 joins the group; it never creates one"
        );
        assert!(!done.hosts(NodeId(1)));
    }
}
