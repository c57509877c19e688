//! Dots and causal contexts: the causality tracking under siblings and the CRDT policies
//! (issue 17).
//!
//! A **dot** names one update of one key: `(node, counter)`, issued by a replica of the key
//! that counts its own updates of that key `1, 2, 3, …`. The issuing replica merges its new dot
//! into its own state, durably, before anyone else sees it, so a replica's own dots for a key
//! are always contiguous in its state and the next one is one past the highest.
//!
//! A **causal context** is a set of dots, kept compact as a version vector (every dot of a node
//! up to a counter) plus a *cloud* of dots received out of order (beyond a gap). Dots fill the
//! gaps as anti-entropy, hints and read repair deliver the rest, and the cloud folds back into
//! the vector. Unlike a vector of hybrid-clock stamps, "covered by the vector" here is exact:
//! counters are per key and contiguous, so `vv[n] = c` means every one of `n`'s dots up to `c`
//! was seen — which is what lets a write's context drop exactly what its writer saw.

use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};

/// One update of one key: the issuing replica and its count of updates of that key.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
pub struct Dot {
    pub node: u64,
    pub counter: u64,
}

impl Dot {
    pub fn new(node: u64, counter: u64) -> Dot {
        Dot { node, counter }
    }
}

/// A set of dots: a version vector plus the dots beyond its gaps.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Context {
    /// node → every dot of it with a counter up to this one.
    vv: BTreeMap<u64, u64>,
    /// Dots not contiguous with `vv` (received before an earlier dot of their node).
    cloud: BTreeSet<Dot>,
}

impl Context {
    pub fn new() -> Context {
        Context::default()
    }

    pub fn is_empty(&self) -> bool {
        self.vv.is_empty() && self.cloud.is_empty()
    }

    pub fn contains(&self, d: &Dot) -> bool {
        self.vv.get(&d.node).is_some_and(|c| *c >= d.counter) || self.cloud.contains(d)
    }

    /// Per node, the highest counter of its dots here, cloud included: what a session that
    /// read this context requires of later reads (see [`Context::covers`]).
    pub fn maxima(&self) -> BTreeMap<u64, u64> {
        let mut out = self.vv.clone();
        for d in &self.cloud {
            let c = out.entry(d.node).or_insert(0);
            *c = (*c).max(d.counter);
        }
        out
    }

    /// Whether this context holds every dot of each node up to the clock's counter for it
    /// (the contiguous part only: a gap before a counter means a dot still missing).
    pub fn covers(&self, clock: &BTreeMap<u64, u64>) -> bool {
        clock.iter().all(|(n, c)| self.max_of(*n) >= *c)
    }

    /// The highest counter of `node` in the contiguous part (0: none).
    pub fn max_of(&self, node: u64) -> u64 {
        self.vv.get(&node).copied().unwrap_or(0)
    }

    /// The next dot `node` issues, for the replica `node` itself: its own dots are contiguous,
    /// so the next is one past the highest, cloud included.
    pub fn next_dot(&self, node: u64) -> Dot {
        let in_cloud = self
            .cloud
            .range(Dot::new(node, 0)..=Dot::new(node, u64::MAX))
            .next_back()
            .map_or(0, |d| d.counter);
        Dot::new(node, self.max_of(node).max(in_cloud) + 1)
    }

    pub fn insert(&mut self, d: Dot) {
        if d.counter == 0 || self.contains(&d) {
            return;
        }
        self.cloud.insert(d);
        self.compact_node(d.node);
    }

    /// The union, compacted.
    pub fn join(&mut self, other: &Context) {
        for (n, c) in &other.vv {
            let mine = self.vv.entry(*n).or_insert(0);
            *mine = (*mine).max(*c);
        }
        let nodes: BTreeSet<u64> = other
            .cloud
            .iter()
            .map(|d| d.node)
            .chain(other.vv.keys().copied())
            .collect();
        for d in &other.cloud {
            if !self.contains(d) {
                self.cloud.insert(*d);
            }
        }
        for n in nodes {
            self.compact_node(n);
        }
    }

    /// Folds `node`'s cloud dots that have become contiguous (or covered) into the vector.
    fn compact_node(&mut self, node: u64) {
        let mut max = self.max_of(node);
        let dots: Vec<Dot> = self
            .cloud
            .range(Dot::new(node, 0)..=Dot::new(node, u64::MAX))
            .copied()
            .collect();
        for d in dots {
            if d.counter <= max + 1 {
                max = max.max(d.counter);
                self.cloud.remove(&d);
            } else {
                break;
            }
        }
        if max > 0 {
            self.vv.insert(node, max);
        }
    }

    /// Every dot, for tests and small contexts.
    pub fn dots(&self) -> impl Iterator<Item = Dot> + '_ {
        self.vv
            .iter()
            .flat_map(|(n, c)| (1..=*c).map(move |i| Dot::new(*n, i)))
            .chain(self.cloud.iter().copied())
    }

    /// The vector part (node → highest contiguous counter) and the cloud.
    pub fn parts(&self) -> (&BTreeMap<u64, u64>, &BTreeSet<Dot>) {
        (&self.vv, &self.cloud)
    }

    /// Feeds the context to `out` in a fixed byte order.
    pub fn fingerprint(&self, out: &mut dyn FnMut(&[u8])) {
        out(&(self.vv.len() as u64).to_le_bytes());
        for (n, c) in &self.vv {
            out(&n.to_le_bytes());
            out(&c.to_le_bytes());
        }
        out(&(self.cloud.len() as u64).to_le_bytes());
        for d in &self.cloud {
            out(&d.node.to_le_bytes());
            out(&d.counter.to_le_bytes());
        }
    }

    /// The context as text entries: `NODE:COUNTER` for every dot of a node up to a counter,
    /// `NODE.COUNTER` for one dot (the history format's and the write answers' form).
    pub fn entries(&self) -> Vec<String> {
        self.vv
            .iter()
            .map(|(n, c)| format!("{n}:{c}"))
            .chain(
                self.cloud
                    .iter()
                    .map(|d| format!("{}.{}", d.node, d.counter)),
            )
            .collect()
    }

    /// Entries: vector entries plus cloud dots (what a context costs to carry).
    pub fn size(&self) -> usize {
        self.vv.len() + self.cloud.len()
    }
}

impl FromIterator<Dot> for Context {
    fn from_iter<I: IntoIterator<Item = Dot>>(iter: I) -> Context {
        let mut c = Context::new();
        for d in iter {
            c.insert(d);
        }
        c
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn contiguous_dots_fold_into_the_vector_and_gaps_stay_in_the_cloud() {
        let mut c = Context::new();
        c.insert(Dot::new(1, 1));
        c.insert(Dot::new(1, 3));
        assert_eq!(c.parts().0.get(&1), Some(&1));
        assert!(c.contains(&Dot::new(1, 3)) && !c.contains(&Dot::new(1, 2)));
        assert_eq!(c.next_dot(1), Dot::new(1, 4));
        c.insert(Dot::new(1, 2));
        assert_eq!(c.parts().0.get(&1), Some(&3));
        assert!(c.parts().1.is_empty());
        assert_eq!(c.size(), 1);
        assert_eq!(c.next_dot(2), Dot::new(2, 1));
    }

    #[test]
    fn join_is_the_union() {
        let a: Context = [Dot::new(1, 1), Dot::new(1, 2), Dot::new(2, 3)]
            .into_iter()
            .collect();
        let b: Context = [Dot::new(2, 1), Dot::new(2, 2), Dot::new(3, 1)]
            .into_iter()
            .collect();
        let mut j = a.clone();
        j.join(&b);
        let mut all: Vec<Dot> = j.dots().collect();
        all.sort();
        let mut want: Vec<Dot> = a.dots().chain(b.dots()).collect();
        want.sort();
        assert_eq!(all, want);
        assert!(j.parts().1.is_empty(), "2:1..3 is contiguous now: {j:?}");
    }
}
