//! The conflict policies that lose nothing (issue 17): siblings, a PN-counter and an add-wins
//! observed-remove set, as **delta-state CRDTs**.
//!
//! Each is a join-semilattice: [`Siblings::join`], [`Counter::join`] and
//! [`crate::ormap::OrMap::join`] (sets and maps) are
//! commutative, associative and idempotent (property-tested below), so replicas that receive
//! the same states in any order, any number of times, hold the same thing. An update is made at
//! one replica of the key and produces a *delta*: a small state that holds only what changed,
//! joined into the replica's own state and shipped to the others (writes, hints, read repair)
//! instead of the whole value — an update costs O(delta), not O(state). Anti-entropy ships whole
//! states; the same join takes both.
//!
//! Updates are issued only by replicas of the key (the node forwards to one): dots are counted
//! per key and per replica ([`crate::causal`]), and a replica's state is its own durable memory
//! of its count.

use crate::causal::{Context, Dot};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};

/// Concurrent values of one key, each named by the dot of its write, and the context of every
/// write seen (a multi-value register over dotted versions). A write carries its writer's
/// context and drops exactly the values that context covers; values it did not see stay, as
/// siblings. An empty value list is an absent key (everything seen was deleted).
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Siblings {
    /// dot → the value its write stored (a delete stores nothing: it only drops dots).
    values: BTreeMap<Dot, Vec<u8>>,
    ctx: Context,
}

impl Siblings {
    pub fn new() -> Siblings {
        Siblings::default()
    }

    /// The live values, oldest dot first (by node, then counter).
    pub fn values(&self) -> impl Iterator<Item = (&Dot, &Vec<u8>)> {
        self.values.iter()
    }

    pub fn len(&self) -> usize {
        self.values.len()
    }

    pub fn is_empty(&self) -> bool {
        self.values.is_empty()
    }

    /// Every write this state has seen (what a read hands back as its causal context).
    pub fn context(&self) -> &Context {
        &self.ctx
    }

    /// The delta of a write of `value` (or of a delete, `None`) at replica `node`, whose writer
    /// had seen `seen`: it drops the values `seen` covers and, for a write, adds one new dot.
    /// Adds dot `d` to the context without a value: the mark of a delete (see
    /// [`crate::ormap::OrMap::mark`]).
    pub fn mark(&mut self, d: Dot) {
        self.ctx.insert(d);
    }

    pub fn write(&self, node: u64, seen: &Context, value: Option<Vec<u8>>) -> Siblings {
        let mut ctx = seen.clone();
        let mut values = BTreeMap::new();
        if let Some(v) = value {
            let dot = self.ctx.next_dot(node);
            ctx.insert(dot);
            values.insert(dot, v);
        }
        Siblings { values, ctx }
    }

    /// Feeds the state to `out` in a fixed byte order (Merkle digests must agree across
    /// machines).
    pub fn fingerprint(&self, out: &mut dyn FnMut(&[u8])) {
        out(&(self.values.len() as u64).to_le_bytes());
        for (d, v) in &self.values {
            out(&d.node.to_le_bytes());
            out(&d.counter.to_le_bytes());
            out(&(v.len() as u64).to_le_bytes());
            out(v);
        }
        self.ctx.fingerprint(out);
    }

    /// The join of the injected bug `siblings-union`: every value of both sides is kept,
    /// whatever the contexts say (a value a later write superseded comes back).
    pub fn union(&mut self, other: &Siblings) {
        for (d, v) in &other.values {
            self.values.entry(*d).or_insert_with(|| v.clone());
        }
        self.ctx.join(&other.ctx);
    }

    /// The causal join: a value stays if both sides hold it, or if the other side never saw
    /// its dot.
    pub fn join(&mut self, other: &Siblings) {
        let ctx = &self.ctx;
        let mut kept: BTreeMap<Dot, Vec<u8>> = self
            .values
            .iter()
            .filter(|(d, _)| other.values.contains_key(d) || !other.ctx.contains(d))
            .map(|(d, v)| (*d, v.clone()))
            .collect();
        for (d, v) in &other.values {
            if !ctx.contains(d) {
                kept.insert(*d, v.clone());
            }
        }
        self.values = kept;
        self.ctx.join(&other.ctx);
    }
}

/// Increments and decrements per replica (a PN-counter): each replica's own totals only grow,
/// and the join takes each entry's maximum. The value is Σ increments − Σ decrements. Recent
/// request ids ride along (the newest [`Counter::RECENT_MAX`] by stamp), so a retried increment
/// that reaches a replica which has already seen it is not applied twice.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Counter {
    inc: BTreeMap<u64, u64>,
    dec: BTreeMap<u64, u64>,
    /// (stamp, request id) of recent updates.
    recent: BTreeSet<(u64, u128)>,
    /// The dot of every update seen (one per update): whether a state includes a given update,
    /// which a session that made it asks.
    ctx: Context,
}

/// Why a counter update was refused (it changes nothing).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CounterError {
    /// The value would leave i64.
    Overflow,
}

impl Counter {
    /// Request ids a counter remembers.
    pub const RECENT_MAX: usize = 64;

    pub fn new() -> Counter {
        Counter::default()
    }

    /// The counter's value (i128: the sums of u64 totals; updates keep it within i64).
    pub fn value(&self) -> i128 {
        let sum = |m: &BTreeMap<u64, u64>| m.values().map(|v| i128::from(*v)).sum::<i128>();
        sum(&self.inc) - sum(&self.dec)
    }

    /// Every update seen, by dot.
    pub fn context(&self) -> &Context {
        &self.ctx
    }

    /// Whether request `id` was applied here.
    pub fn seen(&self, id: u128) -> bool {
        self.recent.iter().any(|(_, r)| *r == id)
    }

    /// The delta of adding `by` at replica `node` (stamp: the update's clock stamp, orders the
    /// recent ids). `None` when `id` was already applied here (a retry: nothing to do).
    pub fn add(
        &self,
        node: u64,
        by: i64,
        stamp: u64,
        id: Option<u128>,
    ) -> Result<Option<Counter>, CounterError> {
        if id.is_some_and(|id| self.seen(id)) {
            return Ok(None);
        }
        let after = self.value() + i128::from(by);
        if after > i128::from(i64::MAX) || after < i128::from(i64::MIN) {
            return Err(CounterError::Overflow);
        }
        let mut delta = Counter::new();
        let (side, amount) = if by >= 0 {
            (&self.inc, by.unsigned_abs())
        } else {
            (&self.dec, by.unsigned_abs())
        };
        let total = side
            .get(&node)
            .copied()
            .unwrap_or(0)
            .checked_add(amount)
            .ok_or(CounterError::Overflow)?;
        if by >= 0 {
            delta.inc.insert(node, total);
        } else {
            delta.dec.insert(node, total);
        }
        if let Some(id) = id {
            delta.recent.insert((stamp, id));
        }
        delta.ctx.insert(self.ctx.next_dot(node));
        Ok(Some(delta))
    }

    pub fn join(&mut self, other: &Counter) {
        for (mine, theirs) in [(&mut self.inc, &other.inc), (&mut self.dec, &other.dec)] {
            for (n, v) in theirs {
                let e = mine.entry(*n).or_insert(0);
                *e = (*e).max(*v);
            }
        }
        self.recent.extend(other.recent.iter().copied());
        while self.recent.len() > Counter::RECENT_MAX {
            self.recent.pop_first();
        }
        self.ctx.join(&other.ctx);
    }

    /// Feeds the state to `out` in a fixed byte order (Merkle digests must agree across
    /// machines).
    pub fn fingerprint(&self, out: &mut dyn FnMut(&[u8])) {
        for side in [&self.inc, &self.dec] {
            out(&(side.len() as u64).to_le_bytes());
            for (n, v) in side {
                out(&n.to_le_bytes());
                out(&v.to_le_bytes());
            }
        }
        out(&(self.recent.len() as u64).to_le_bytes());
        for (stamp, id) in &self.recent {
            out(&stamp.to_le_bytes());
            out(&id.to_le_bytes());
        }
        self.ctx.fingerprint(out);
    }

    /// Entries held (for byte estimates).
    pub fn entries(&self) -> usize {
        self.inc.len() + self.dec.len() + self.recent.len() + self.ctx.size()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ormap::{Dots, Field, OrMap, OrSet, Payload};
    use proptest::prelude::*;

    /// A replica of one key under a policy, taking local updates and states from others.
    trait Lattice: Clone + PartialEq + std::fmt::Debug {
        fn join_with(&mut self, other: &Self);
    }
    impl Lattice for Siblings {
        fn join_with(&mut self, other: &Self) {
            self.join(other);
        }
    }
    impl Lattice for Counter {
        fn join_with(&mut self, other: &Self) {
            self.join(other);
        }
    }
    impl<V: Payload> Lattice for OrMap<V> {
        fn join_with(&mut self, other: &Self) {
            self.join(other);
        }
    }

    fn joined<L: Lattice>(a: &L, b: &L) -> L {
        let mut j = a.clone();
        j.join_with(b);
        j
    }

    /// Runs a random schedule on 3 replicas: each step an update at one replica (its delta
    /// kept) or a delta or whole state copied from one replica to another. Returns every state
    /// and delta that existed.
    fn states<L: Lattice + Default>(
        steps: &[(u8, u8, u8, u8)],
        update: impl Fn(&L, u64, u8) -> L,
    ) -> Vec<L> {
        let mut replicas: Vec<L> = vec![L::default(); 3];
        let mut seen: Vec<L> = Vec::new();
        for &(kind, a, b, arg) in steps {
            let (a, b) = (usize::from(a % 3), usize::from(b % 3));
            match kind % 3 {
                0 => {
                    let delta = update(&replicas[a], a as u64 + 1, arg);
                    replicas[a].join_with(&delta);
                    seen.push(delta);
                }
                1 if !seen.is_empty() => {
                    let d = seen[usize::from(arg) % seen.len()].clone();
                    replicas[b].join_with(&d);
                }
                _ => {
                    let s = replicas[a].clone();
                    replicas[b].join_with(&s);
                }
            }
            seen.push(replicas[a].clone());
        }
        seen.extend(replicas);
        seen
    }

    fn laws<L: Lattice>(all: &[L], picks: (usize, usize, usize)) {
        let n = all.len();
        let (a, b, c) = (&all[picks.0 % n], &all[picks.1 % n], &all[picks.2 % n]);
        assert_eq!(joined(a, b), joined(b, a), "commutative");
        assert_eq!(
            joined(&joined(a, b), c),
            joined(a, &joined(b, c)),
            "associative"
        );
        assert_eq!(joined(a, a), *a, "idempotent");
    }

    fn sib_update(s: &Siblings, node: u64, arg: u8) -> Siblings {
        // Writers that saw everything, nothing, or deleted what they saw.
        match arg % 3 {
            0 => s.write(node, s.context(), Some(vec![arg])),
            1 => s.write(node, &Context::new(), Some(vec![arg])),
            _ => s.write(node, s.context(), None),
        }
    }

    fn counter_update(c: &Counter, node: u64, arg: u8) -> Counter {
        let by = i64::from(arg) - 100;
        c.add(node, by, u64::from(arg), Some(u128::from(arg)))
            .expect("small")
            .unwrap_or_default()
    }

    fn set_update(s: &OrSet, node: u64, arg: u8) -> OrSet {
        let m = vec![arg % 4];
        if arg.is_multiple_of(3) {
            s.remove(&[m])
        } else {
            s.put(node, &[(m, ())])
        }
    }

    fn map_update(s: &OrMap<Field>, node: u64, arg: u8) -> OrMap<Field> {
        let f = vec![arg % 3];
        match arg % 4 {
            0 => s.remove(&[f]),
            1 => s.put(
                node,
                &[(
                    f,
                    Field::Reg {
                        stamp: u64::from(arg),
                        value: vec![b'0' + arg % 10],
                    },
                )],
            ),
            _ => s
                .incr(node, &f, i64::from(arg) - 100)
                .map(|(d, _)| d)
                .unwrap_or_default(),
        }
    }

    /// A state's members with their dots, its context and its maintained digest and count
    /// (members without dots left out: a delta keeps them).
    type MapState<V> = (Vec<(Vec<u8>, Dots<V>)>, Context, u64, usize);

    /// The canonical form of a state for comparison.
    fn map_state<V: Payload>(s: &OrMap<V>) -> MapState<V> {
        (
            s.members().map(|(m, d)| (m.clone(), d.clone())).collect(),
            s.context().clone(),
            s.digest(),
            s.len(),
        )
    }

    fn map_laws<V: Payload>(all: &[OrMap<V>], picks: (usize, usize, usize)) {
        // Whole states (deltas joined into an empty state first).
        let all: Vec<OrMap<V>> = all.iter().map(|s| joined(&OrMap::new(), s)).collect();
        let n = all.len();
        let (a, b, c) = (&all[picks.0 % n], &all[picks.1 % n], &all[picks.2 % n]);
        assert_eq!(map_state(&joined(a, b)), map_state(&joined(b, a)));
        assert_eq!(
            map_state(&joined(&joined(a, b), c)),
            map_state(&joined(a, &joined(b, c)))
        );
        assert_eq!(map_state(&joined(a, a)), map_state(a));
    }

    /// Joining a delta visits only its members, yet gives what a join over every member gives.
    fn delta_join_is_whole<V: Payload>(
        all: &[OrMap<V>],
        update: impl Fn(&OrMap<V>, u64, u8) -> OrMap<V>,
        arg: u8,
    ) {
        let state = joined(&OrMap::new(), &all[all.len() - 1]);
        let delta = update(&state, 2, arg);
        let whole = joined(&OrMap::new(), &delta);
        assert!(delta.is_delta() && !whole.is_delta());
        assert_eq!(
            map_state(&joined(&state, &delta)),
            map_state(&joined(&state, &whole))
        );
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(200))]

        #[test]
        fn siblings_join_is_a_semilattice(
            steps in prop::collection::vec(any::<(u8, u8, u8, u8)>(), 1..40),
            picks in any::<(usize, usize, usize)>(),
        ) {
            laws(&states(&steps, sib_update), picks);
        }

        #[test]
        fn counter_join_is_a_semilattice(
            steps in prop::collection::vec(any::<(u8, u8, u8, u8)>(), 1..40),
            picks in any::<(usize, usize, usize)>(),
        ) {
            laws(&states(&steps, counter_update), picks);
        }

        #[test]
        fn set_join_is_a_semilattice_on_states(
            steps in prop::collection::vec(any::<(u8, u8, u8, u8)>(), 1..40),
            picks in any::<(usize, usize, usize)>(),
        ) {
            map_laws(&states(&steps, set_update), picks);
        }

        #[test]
        fn map_join_is_a_semilattice_on_states(
            steps in prop::collection::vec(any::<(u8, u8, u8, u8)>(), 1..40),
            picks in any::<(usize, usize, usize)>(),
        ) {
            map_laws(&states(&steps, map_update), picks);
        }

        #[test]
        fn a_delta_join_equals_the_whole_join(
            steps in prop::collection::vec(any::<(u8, u8, u8, u8)>(), 1..40),
            arg in any::<u8>(),
        ) {
            delta_join_is_whole(&states(&steps, set_update), set_update, arg);
            delta_join_is_whole(&states(&steps, map_update), map_update, arg);
        }

        #[test]
        fn replicas_that_exchange_everything_agree(
            steps in prop::collection::vec(any::<(u8, u8, u8, u8)>(), 1..40),
        ) {
            // Convergence: any two states joined both ways over all states end equal.
            let all = states(&steps, sib_update);
            let a = all.iter().fold(Siblings::new(), |acc, s| joined(&acc, s));
            let b = all.iter().rev().fold(Siblings::new(), |acc, s| joined(&acc, s));
            prop_assert_eq!(a, b);
        }
    }

    #[test]
    fn a_write_with_the_context_it_read_replaces_and_one_without_adds_a_sibling() {
        let mut r = Siblings::new();
        let w1 = r.write(1, &Context::new(), Some(b"a".to_vec()));
        r.join(&w1);
        let read = r.context().clone();
        // Concurrent: another writer saw nothing.
        let w2 = r.write(2, &Context::new(), Some(b"b".to_vec()));
        r.join(&w2);
        assert_eq!(r.len(), 2, "siblings");
        // A writer that read only "a" replaces "a", not "b".
        let w3 = r.write(1, &read, Some(b"c".to_vec()));
        r.join(&w3);
        let values: Vec<&[u8]> = r.values().map(|(_, v)| v.as_slice()).collect();
        assert_eq!(values, vec![b"c".as_slice(), b"b".as_slice()]);
        // A write with the full context resolves to one value; a delete with it empties.
        let w4 = r.write(3, &r.context().clone(), Some(b"d".to_vec()));
        r.join(&w4);
        assert_eq!(r.len(), 1);
        let gone = r.write(3, &r.context().clone(), None);
        r.join(&gone);
        assert!(r.is_empty());
        // A stale copy holding "a" cannot bring it back: its dot is in the context.
        let mut stale = Siblings::new();
        stale.join(&w1);
        r.join(&stale);
        assert!(r.is_empty(), "{r:?}");
    }

    #[test]
    fn counters_sum_every_replica_and_skip_a_seen_request() {
        let (mut a, mut b) = (Counter::new(), Counter::new());
        let d1 = a.add(1, 5, 10, Some(7)).unwrap().unwrap();
        a.join(&d1);
        let d2 = b.add(2, -2, 11, Some(8)).unwrap().unwrap();
        b.join(&d2);
        a.join(&b);
        b.join(&a);
        assert_eq!((a.value(), b.value()), (3, 3));
        assert_eq!(
            a.add(1, 5, 12, Some(7)).unwrap(),
            None,
            "a retry is not applied"
        );
        // Deltas re-delivered change nothing.
        a.join(&d1);
        a.join(&d2);
        assert_eq!(a.value(), 3);
        let big = a.add(1, i64::MAX, 13, None);
        assert_eq!(big, Err(CounterError::Overflow));
    }
}
