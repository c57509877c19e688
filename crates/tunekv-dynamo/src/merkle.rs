//! Merkle trees for anti-entropy: one per partition and replica, kept up to date on every write.
//!
//! A tree has `2^depth` leaves. A key falls in the leaf given by its hash; a leaf's digest is the
//! XOR of the digests of `(key, version)` of every key in it, and an inner node's digest is the
//! XOR of its children's. XOR makes a write an O(depth) update (XOR the old digest out and the
//! new one in, along one path) and makes the digest independent of the order writes arrived in,
//! so two replicas holding the same versions have equal trees, whatever their histories. Two
//! replicas exchange roots, descend only where digests differ, and repair the keys of the
//! differing leaves (Dynamo §4.7; Cassandra's repair trees also combine row hashes by XOR).
//!
//! A key is in a map once, so its contribution never cancels itself; two different contents
//! agreeing on all 64-bit digests along a path is a hash collision (about 2^-64 per exchange).

use crate::version::{Stored, Version, Versioned};

/// A default depth for trees (256 leaves a partition); the node picks its own (see
/// `tunekv-node`'s `leaderless` module).
pub const DEPTH_DEFAULT: u32 = 8;
/// Deepest tree allowed (2^16 leaves: 1 MiB of digests a partition).
pub const DEPTH_MAX: u32 = 16;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Tree {
    depth: u32,
    /// Heap layout: node `i` has children `2i+1` and `2i+2`; the root is 0, leaves come last.
    nodes: Vec<u64>,
}

/// The digest one key contributes: its bytes, its version and what it stores.
pub fn digest(key: &[u8], v: &Versioned) -> u64 {
    let mut h = xxhash_rust::xxh3::Xxh3::new();
    h.update(&(key.len() as u64).to_le_bytes());
    h.update(key);
    let Version { hlc, node } = v.version;
    h.update(&hlc.to_le_bytes());
    h.update(&node.to_le_bytes());
    match &v.stored {
        Stored::Value(bytes) => {
            h.update(&[1]);
            h.update(bytes);
        }
        Stored::Tombstone => h.update(&[0]),
        Stored::Expiring { value, expires_ms } => {
            h.update(&[2]);
            h.update(&expires_ms.to_le_bytes());
            h.update(value);
        }
        Stored::Counter(c) => {
            h.update(&[3]);
            c.fingerprint(&mut |b| h.update(b));
        }
        // O(context): the members through their maintained digest.
        Stored::Set(s) => {
            h.update(&[4]);
            s.fingerprint(&mut |b| h.update(b));
        }
        Stored::Map(m) => {
            h.update(&[5]);
            m.fingerprint(&mut |b| h.update(b));
        }
        Stored::Siblings(s) => {
            h.update(&[6]);
            s.fingerprint(&mut |b| h.update(b));
        }
    }
    // Never 0, so a key always changes its leaf.
    h.digest() | 1
}

impl Tree {
    pub fn new(depth: u32) -> Result<Tree, String> {
        if depth > DEPTH_MAX {
            return Err(format!(
                "tree depth must be at most {DEPTH_MAX}, got {depth}"
            ));
        }
        Ok(Tree {
            depth,
            nodes: vec![0; (1usize << (depth + 1)) - 1],
        })
    }

    pub fn depth(&self) -> u32 {
        self.depth
    }

    pub fn leaves(&self) -> u32 {
        1 << self.depth
    }

    /// The leaf `key` falls in (the top bits of a hash independent of the ring's).
    pub fn leaf_of(&self, key: &[u8]) -> u32 {
        if self.depth == 0 {
            return 0;
        }
        (xxhash_rust::xxh3::xxh3_64_with_seed(key, 0x6d65_726b) >> (64 - self.depth)) as u32
    }

    fn leaf_node(&self, leaf: u32) -> usize {
        (1usize << self.depth) - 1 + leaf as usize
    }

    /// Records that `key` went from `old` (None: absent) to `new` (None: removed entirely, e.g. a
    /// tombstone collected). O(depth).
    pub fn update(&mut self, key: &[u8], old: Option<&Versioned>, new: Option<&Versioned>) {
        self.update_digests(
            key,
            old.map_or(0, |v| digest(key, v)),
            new.map_or(0, |v| digest(key, v)),
        );
    }

    /// [`Tree::update`] with the key's old and new [`digest`]s (0: absent) already computed.
    pub fn update_digests(&mut self, key: &[u8], old: u64, new: u64) {
        let delta = old ^ new;
        if delta == 0 {
            return;
        }
        let mut i = self.leaf_node(self.leaf_of(key));
        loop {
            self.nodes[i] ^= delta;
            if i == 0 {
                break;
            }
            i = (i - 1) / 2;
        }
    }

    pub fn root(&self) -> u64 {
        self.nodes[0]
    }

    /// The digest of node `i` (heap layout), or None past the tree.
    pub fn node(&self, i: usize) -> Option<u64> {
        self.nodes.get(i).copied()
    }

    /// Every leaf's digest, in leaf order (what a replica sends when roots differ).
    pub fn leaf_digests(&self) -> &[u64] {
        &self.nodes[(1usize << self.depth) - 1..]
    }

    /// The leaves whose digest differs from `theirs` (another replica's [`Tree::leaf_digests`];
    /// a list of the wrong length differs everywhere).
    pub fn differing_from(&self, theirs: &[u64]) -> Vec<u32> {
        let ours = self.leaf_digests();
        if theirs.len() != ours.len() {
            return (0..self.leaves()).collect();
        }
        (0..self.leaves())
            .filter(|&i| ours[i as usize] != theirs[i as usize])
            .collect()
    }

    /// The leaves whose digests differ between two trees of the same depth, found by descending
    /// only into differing nodes (what an exchange between two replicas does, one level per round
    /// trip). Also returns how many node digests were compared.
    pub fn differing_leaves(&self, other: &Tree) -> Result<(Vec<u32>, usize), String> {
        if self.depth != other.depth {
            return Err(format!(
                "trees of depth {} and {} cannot be compared",
                self.depth, other.depth
            ));
        }
        let first_leaf = (1usize << self.depth) - 1;
        let mut compared = 0;
        let mut out = Vec::new();
        let mut frontier = vec![0usize];
        while let Some(i) = frontier.pop() {
            compared += 1;
            if self.nodes[i] == other.nodes[i] {
                continue;
            }
            if i >= first_leaf {
                out.push((i - first_leaf) as u32);
            } else {
                frontier.push(2 * i + 2);
                frontier.push(2 * i + 1);
            }
        }
        out.sort_unstable();
        Ok((out, compared))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};
    use std::collections::BTreeMap;

    fn v(hlc: u64, byte: u8) -> Versioned {
        Versioned {
            version: Version { hlc, node: 1 },
            stored: Stored::Value(vec![byte]),
        }
    }

    fn rebuild(depth: u32, data: &BTreeMap<Vec<u8>, Versioned>) -> Tree {
        let mut t = Tree::new(depth).unwrap();
        for (k, val) in data {
            t.update(k, None, Some(val));
        }
        t
    }

    #[test]
    fn incremental_updates_equal_a_rebuild_whatever_the_order() {
        let mut rng = StdRng::seed_from_u64(5);
        let mut data: BTreeMap<Vec<u8>, Versioned> = BTreeMap::new();
        let mut tree = Tree::new(6).unwrap();
        for step in 0..2000u64 {
            let key = format!("k{}", rng.gen_range(0..300)).into_bytes();
            let old = data.get(&key).cloned();
            let new = if rng.gen_bool(0.1) {
                None
            } else if rng.gen_bool(0.2) {
                Some(Versioned {
                    version: Version { hlc: step, node: 2 },
                    stored: Stored::Tombstone,
                })
            } else {
                Some(v(step, rng.gen()))
            };
            tree.update(&key, old.as_ref(), new.as_ref());
            match new {
                Some(n) => data.insert(key, n),
                None => data.remove(&key),
            };
        }
        assert_eq!(tree, rebuild(6, &data));
        assert_eq!(Tree::new(6).unwrap().root(), 0, "an empty tree");
    }

    #[test]
    fn replicas_that_differ_in_one_key_descend_to_its_leaf_only() {
        let mut data: BTreeMap<Vec<u8>, Versioned> = (0..1000u32)
            .map(|i| (format!("key-{i}").into_bytes(), v(u64::from(i), 7)))
            .collect();
        let a = rebuild(8, &data);
        data.insert(b"key-500".to_vec(), v(9_999, 8));
        let b = rebuild(8, &data);
        assert_ne!(a.root(), b.root());
        let (leaves, compared) = a.differing_leaves(&b).unwrap();
        assert_eq!(leaves, vec![a.leaf_of(b"key-500")]);
        // One path down, both children compared at each level: 2·depth + 1 digests, not 511.
        assert_eq!(compared, 2 * 8 + 1);
        let (same, compared) = a.differing_leaves(&a.clone()).unwrap();
        assert!(same.is_empty());
        assert_eq!(compared, 1, "equal roots end the exchange");
        assert!(a.differing_leaves(&Tree::new(7).unwrap()).is_err());
    }

    #[test]
    fn a_tombstone_is_not_the_value_it_replaced_nor_an_absent_key() {
        let mut t = Tree::new(4).unwrap();
        let live = v(1, 1);
        let dead = Versioned {
            version: Version { hlc: 2, node: 1 },
            stored: Stored::Tombstone,
        };
        t.update(b"k", None, Some(&live));
        let with_live = t.root();
        t.update(b"k", Some(&live), Some(&dead));
        assert_ne!(t.root(), with_live);
        assert_ne!(t.root(), 0);
        t.update(b"k", Some(&dead), None);
        assert_eq!(t.root(), 0);
        assert!(Tree::new(DEPTH_MAX + 1).is_err());
    }
}
