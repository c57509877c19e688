//! One node's copy of one leaderless keyspace: the version it holds of every key it replicates,
//! grouped by ring partition, with each partition's Merkle tree kept current on every change.
//!
//! Pure and synchronous: the node persists each change (and syncs before acknowledging) and
//! moves versions between nodes; this type only decides what a replica holds after a version
//! arrives, by the keyspace's conflict policy.

use crate::merkle::{digest, Tree};
use crate::ring::Ring;
use crate::version::{Policy, Stored, Versioned};
use std::collections::{BTreeMap, HashMap};

#[derive(Debug)]
struct Part {
    keys: BTreeMap<Vec<u8>, Versioned>,
    tree: Tree,
}

#[derive(Debug)]
pub struct Replica {
    ring: Ring,
    depth: u32,
    policy: Policy,
    parts: HashMap<u32, Part>,
    keys: usize,
    /// The injected bug `set-remove-wins` (tunekv-node's bug injection).
    remove_wins: bool,
    /// The injected bug `siblings-union`: siblings merged ignoring their contexts.
    siblings_union: bool,
}

/// What changed when a version was applied: the members whose dots changed, when the key
/// holds a set or a map (`None`: the whole holding changed). The caller persists the new
/// holding ([`Replica::get`]): the key's record, and for a set or map only these members.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Applied {
    pub members: Option<Vec<Vec<u8>>>,
}

impl Replica {
    pub fn new(ring: Ring, depth: u32, policy: Policy) -> Result<Replica, String> {
        Tree::new(depth)?;
        Ok(Replica {
            ring,
            depth,
            policy,
            parts: HashMap::new(),
            keys: 0,
            remove_wins: false,
            siblings_union: false,
        })
    }

    /// Injects the bug `siblings-union`: a merge keeps every value, superseded or not.
    pub fn inject_siblings_union(&mut self) {
        self.siblings_union = true;
    }

    /// Injects the bug `set-remove-wins`: a remove drops concurrent adds it never saw.
    pub fn inject_remove_wins(&mut self) {
        self.remove_wins = true;
    }

    pub fn ring(&self) -> &Ring {
        &self.ring
    }

    /// Changes the ring (a ring change finished). Keys keep their partitions (a partition is a
    /// range of the hash, whatever node owns it), so nothing held moves; the caller drops the
    /// partitions this node no longer replicates with [`Replica::drop_partition`]. Refused when
    /// the partition count differs.
    pub fn set_ring(&mut self, ring: Ring) -> Result<(), String> {
        if ring.partitions() != self.ring.partitions() {
            return Err(format!(
                "a ring of {} partitions cannot replace one of {}",
                ring.partitions(),
                self.ring.partitions()
            ));
        }
        self.ring = ring;
        Ok(())
    }

    /// Forgets partition `p` (no longer replicated here); returns the keys it held.
    pub fn drop_partition(&mut self, p: u32) -> Vec<Vec<u8>> {
        let Some(part) = self.parts.remove(&p) else {
            return Vec::new();
        };
        self.keys -= part.keys.len();
        part.keys.into_keys().collect()
    }

    /// Keys held (tombstones included).
    pub fn len(&self) -> usize {
        self.keys
    }

    pub fn is_empty(&self) -> bool {
        self.keys == 0
    }

    pub fn get(&self, key: &[u8]) -> Option<&Versioned> {
        self.parts.get(&self.ring.partition_of(key))?.keys.get(key)
    }

    /// Merges `incoming` into what is held for `key`. Returns what changed (the caller
    /// persists the new holding), `None` when the replica already held it or something newer.
    /// A set or map is joined in place, in O(delta) for an update's delta: never copied whole.
    pub fn apply(&mut self, key: &[u8], incoming: &Versioned) -> Option<Applied> {
        let p = self.ring.partition_of(key);
        let depth = self.depth;
        let part = self.parts.entry(p).or_insert_with(|| Part {
            keys: BTreeMap::new(),
            // `new` checked the depth.
            tree: Tree::new(depth).unwrap_or_else(|e| unreachable!("{e}")),
        });
        if self.policy.membered() {
            if let Some(held) = part.keys.get_mut(key) {
                let before = digest(key, held);
                if let Some(members) = held.stored.join_members(&incoming.stored, self.remove_wins)
                {
                    held.version = held.version.max(incoming.version);
                    let after = digest(key, held);
                    if before == after {
                        return None;
                    }
                    part.tree.update_digests(key, before, after);
                    return Some(Applied {
                        members: Some(members),
                    });
                }
            } else if matches!(incoming.stored, Stored::Set(_) | Stored::Map(_)) {
                let state = Versioned {
                    version: incoming.version,
                    stored: incoming.stored.clone().into_state(),
                };
                let members = match &state.stored {
                    Stored::Set(s) => s.members().map(|(m, _)| m.clone()).collect(),
                    Stored::Map(m) => m.members().map(|(f, _)| f.clone()).collect(),
                    _ => Vec::new(),
                };
                part.tree.update(key, None, Some(&state));
                part.keys.insert(key.to_vec(), state);
                self.keys += 1;
                return Some(Applied {
                    members: Some(members),
                });
            }
        }
        let held = part.keys.get(key);
        let merged = match (held, self.siblings_union) {
            (Some(h), true) => match (&h.stored, &incoming.stored) {
                (Stored::Siblings(a), Stored::Siblings(b)) => {
                    let mut all = a.clone();
                    all.union(b);
                    Versioned {
                        version: h.version.max(incoming.version),
                        stored: Stored::Siblings(all),
                    }
                }
                _ => self.policy.merge(held, incoming),
            },
            _ => self.policy.merge(held, incoming),
        };
        if held == Some(&merged) {
            return None;
        }
        part.tree.update(key, held, Some(&merged));
        if part.keys.insert(key.to_vec(), merged).is_none() {
            self.keys += 1;
        }
        Some(Applied { members: None })
    }

    /// The root digest of partition `p` (0: nothing held there).
    pub fn root(&self, p: u32) -> u64 {
        self.parts.get(&p).map_or(0, |part| part.tree.root())
    }

    /// The leaf digests of partition `p` (all zero when nothing is held there).
    pub fn leaf_digests(&self, p: u32) -> Vec<u64> {
        match self.parts.get(&p) {
            Some(part) => part.tree.leaf_digests().to_vec(),
            None => vec![0; 1usize << self.depth],
        }
    }

    /// The leaves of partition `p` whose digests differ from another replica's.
    pub fn differing_leaves(&self, p: u32, theirs: &[u64]) -> Vec<u32> {
        match self.parts.get(&p) {
            Some(part) => part.tree.differing_from(theirs),
            None => {
                let empty = Tree::new(self.depth).unwrap_or_else(|e| unreachable!("{e}"));
                empty.differing_from(theirs)
            }
        }
    }

    /// Every key held, with its version, partition by partition (a backup's copy).
    pub fn entries(&self) -> Vec<(Vec<u8>, Versioned)> {
        let mut parts: Vec<&u32> = self.parts.keys().collect();
        parts.sort_unstable();
        parts
            .into_iter()
            .flat_map(|p| self.parts[p].keys.iter())
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    }

    /// Every key held in partition `p`, with its version.
    pub fn entries_of(&self, p: u32) -> Vec<(Vec<u8>, Versioned)> {
        self.parts.get(&p).map_or_else(Vec::new, |part| {
            part.keys
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect()
        })
    }

    /// Every key held in the given leaves of partition `p`, with its version.
    pub fn entries_in_leaves(&self, p: u32, leaves: &[u32]) -> Vec<(Vec<u8>, Versioned)> {
        let Some(part) = self.parts.get(&p) else {
            return Vec::new();
        };
        let mut wanted = leaves.to_vec();
        wanted.sort_unstable();
        part.keys
            .iter()
            .filter(|(k, _)| wanted.binary_search(&part.tree.leaf_of(k)).is_ok())
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    }

    /// Removes `key` if it holds exactly `version` (a tombstone being collected). Returns whether
    /// it did; a newer version is kept.
    pub fn remove_if(&mut self, key: &[u8], version: crate::version::Version) -> bool {
        let p = self.ring.partition_of(key);
        let Some(part) = self.parts.get_mut(&p) else {
            return false;
        };
        let Some(held) = part.keys.get(key) else {
            return false;
        };
        if held.version != version {
            return false;
        }
        let held = held.clone();
        part.tree.update(key, Some(&held), None);
        part.keys.remove(key);
        self.keys -= 1;
        true
    }

    /// Up to `max` keys whose values expired before `now_ms`, with their versions (a volatile
    /// keyspace drops them; O(keys held)).
    pub fn expired(&self, now_ms: u64, max: usize) -> Vec<(Vec<u8>, crate::version::Version)> {
        self.parts
            .values()
            .flat_map(|part| part.keys.iter())
            .filter(|(_, v)| v.stored.expires_ms().is_some_and(|e| e <= now_ms))
            .take(max)
            .map(|(k, v)| (k.clone(), v.version))
            .collect()
    }

    /// Keys holding more than one sibling, and the most siblings one key holds (O(keys held):
    /// for status pages).
    pub fn sibling_counts(&self) -> (u64, u64) {
        let counts = self
            .parts
            .values()
            .flat_map(|part| part.keys.values())
            .filter_map(|v| match &v.stored {
                Stored::Siblings(s) if s.len() > 1 => Some(s.len() as u64),
                _ => None,
            });
        counts.fold((0, 0), |(n, max), c| (n + 1, max.max(c)))
    }

    /// Partitions holding at least one key.
    pub fn partitions_held(&self) -> impl Iterator<Item = u32> + '_ {
        self.parts.keys().copied()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::version::Version;
    use tunekv_core::keyspace::RingPlacement;
    use tunekv_core::NodeId;

    fn ring() -> Ring {
        Ring::new(
            &[NodeId(1), NodeId(2), NodeId(3)],
            16,
            RingPlacement::Rendezvous,
        )
        .unwrap()
    }

    fn v(hlc: u64, value: &str) -> Versioned {
        Versioned {
            version: Version { hlc, node: 1 },
            stored: Stored::Value(value.as_bytes().to_vec()),
        }
    }

    #[test]
    fn a_new_ring_keeps_every_key_and_a_dropped_partition_forgets_its_own() {
        let mut r = Replica::new(ring(), 4, Policy::Lww).unwrap();
        for i in 0..50 {
            r.apply(format!("k{i}").as_bytes(), &v(1, "x"));
        }
        let bigger = Ring::new(
            &[NodeId(1), NodeId(2), NodeId(3), NodeId(4)],
            16,
            RingPlacement::Rendezvous,
        )
        .unwrap();
        r.set_ring(bigger.clone()).unwrap();
        assert_eq!(r.len(), 50);
        assert!(r.get(b"k7").is_some());
        let p = bigger.partition_of(b"k7");
        let gone = r.drop_partition(p);
        assert!(gone.contains(&b"k7".to_vec()));
        assert_eq!(r.len(), 50 - gone.len());
        assert!(r.get(b"k7").is_none());
        assert!(r.entries_of(p).is_empty());
        let q = bigger.partition_of(b"k8");
        assert!(r.entries_of(q).iter().any(|(k, _)| k == b"k8"));
        assert_eq!(
            r.root(p),
            Replica::new(ring(), 4, Policy::Lww).unwrap().root(p)
        );
        let other = Ring::new(&[NodeId(1)], 8, RingPlacement::Dealt).unwrap();
        assert!(r.set_ring(other).unwrap_err().contains("partitions"));
    }

    #[test]
    fn a_replica_keeps_the_newest_version_and_reports_changes() {
        let mut r = Replica::new(ring(), 4, Policy::Lww).unwrap();
        assert_eq!(r.apply(b"k", &v(2, "b")), Some(Applied { members: None }));
        assert_eq!(r.apply(b"k", &v(1, "a")), None, "older: kept b");
        assert_eq!(r.apply(b"k", &v(2, "b")), None, "again: nothing changes");
        assert_eq!(r.get(b"k"), Some(&v(2, "b")));
        assert_eq!(r.len(), 1);
        let dead = Versioned {
            version: Version { hlc: 3, node: 2 },
            stored: Stored::Tombstone,
        };
        assert!(r.apply(b"k", &dead).is_some());
        assert_eq!(r.get(b"k"), Some(&dead));
        assert_eq!(r.len(), 1, "a tombstone is held");
    }

    #[test]
    fn a_collected_tombstone_leaves_the_tree_as_if_never_written() {
        let mut r = Replica::new(ring(), 4, Policy::Lww).unwrap();
        let p = r.ring().partition_of(b"k");
        let empty = r.root(p);
        let dead = Versioned {
            version: Version { hlc: 3, node: 2 },
            stored: Stored::Tombstone,
        };
        r.apply(b"k", &dead);
        assert!(
            !r.remove_if(b"k", Version { hlc: 2, node: 2 }),
            "another version"
        );
        assert!(r.remove_if(b"k", dead.version));
        assert_eq!((r.root(p), r.len(), r.get(b"k")), (empty, 0, None));
        assert!(!r.remove_if(b"k", dead.version), "already gone");
    }

    #[test]
    fn anti_entropy_between_two_replicas_converges_them() {
        let mut a = Replica::new(ring(), 4, Policy::Lww).unwrap();
        let mut b = Replica::new(ring(), 4, Policy::Lww).unwrap();
        for i in 0..200u64 {
            let key = format!("key-{i}").into_bytes();
            a.apply(&key, &v(i, "a"));
            if i % 7 != 0 {
                b.apply(&key, &v(i, "a"));
            }
            if i % 11 == 0 {
                b.apply(&key, &v(i + 1000, "b"));
            }
        }
        let partitions: Vec<u32> = (0..16).collect();
        let differing: Vec<u32> = partitions
            .iter()
            .copied()
            .filter(|&p| a.root(p) != b.root(p))
            .collect();
        assert!(!differing.is_empty());
        for p in differing {
            let leaves = b.differing_leaves(p, &a.leaf_digests(p));
            for (k, val) in b.entries_in_leaves(p, &leaves) {
                a.apply(&k, &val);
            }
            for (k, val) in a.entries_in_leaves(p, &leaves) {
                b.apply(&k, &val);
            }
        }
        for p in partitions {
            assert_eq!(a.root(p), b.root(p), "partition {p}");
        }
        assert_eq!(a.get(b"key-11"), Some(&v(1011, "b")));
        assert_eq!(b.get(b"key-7"), Some(&v(7, "a")));
    }

    #[test]
    fn sets_join_in_place_and_their_trees_match_a_replica_given_the_whole_state() {
        use crate::ormap::OrSet;
        let mut a = Replica::new(ring(), 4, Policy::Set).unwrap();
        let mut state = OrSet::new();
        let mut deltas = Vec::new();
        for i in 0..40u8 {
            let d = if i % 5 == 4 {
                state.remove(&[vec![i - 2]])
            } else {
                state.put(1, &[(vec![i], ())])
            };
            state.join(&d);
            deltas.push(Versioned {
                version: Version {
                    hlc: u64::from(i) + 1,
                    node: 1,
                },
                stored: Stored::Set(d),
            });
        }
        for d in &deltas {
            let applied = a.apply(b"s", d).expect("each delta changes the set");
            assert_eq!(applied.members.map(|m| m.len()), Some(1), "one member each");
        }
        assert_eq!(
            a.apply(b"s", &deltas[3]),
            None,
            "a repeated delta changes nothing"
        );
        let mut b = Replica::new(ring(), 4, Policy::Set).unwrap();
        let whole = Versioned {
            version: Version { hlc: 40, node: 1 },
            stored: Stored::Set(state.clone()),
        };
        b.apply(b"s", &whole);
        let p = a.ring().partition_of(b"s");
        assert_eq!(a.root(p), b.root(p));
        assert_eq!(a.get(b"s"), b.get(b"s"));
        let Some(Stored::Set(held)) = a.get(b"s").map(|v| &v.stored) else {
            panic!("a set is held")
        };
        assert_eq!(held.len(), 32 - 8, "32 adds, 8 removes");
        assert!(!held.is_delta());
    }
}
