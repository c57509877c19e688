//! Observed-remove maps of dotted values (issue 17): the add-wins set (`conflict: "set"`,
//! [`OrSet`]) and the map of fields (`conflict: "map"`, [`OrMap<Field>`]), as delta-state CRDTs.
//!
//! A member (a set's element, a map's field) is present while it holds at least one live dot.
//! Writing a member gives it a new dot and drops the dots of it the writing replica had seen; a
//! remove drops exactly those, so an add (or field write) concurrent with a remove survives it
//! — add-wins. The state's [`Context`] holds every dot ever seen, so a dot dropped once never
//! comes back from a stale copy.
//!
//! An update's delta lists only the members it touched, and its context holds only their
//! dots; joining it visits those members alone — O(delta), whatever the set holds (riak#483's
//! O(size) adds are what this avoids). A whole state (anti-entropy, read repair) joins member by
//! member over both sides. The state also keeps, updated per touched member, the XOR of its
//! members' digests and its count of live members, so the Merkle digest of a key and `SCARD`
//! cost O(1) after an update rather than O(members); both are recomputed, not trusted, when a
//! state is decoded.
//!
//! Map fields hold [`Field`]s: `HSET` writes a register (among concurrent writes the highest
//! stamp wins) and `HINCRBY` adds to its replica's counter contribution; a field reads as its
//! register plus every contribution, so a later `HSET` or `HDEL` drops exactly the
//! contributions its replica had seen (a reset that concurrent increments survive) — see
//! [`OrMap::incr`].

use crate::causal::{Context, Dot};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Debug;
use std::hash::Hash;

/// What a dot of a member carries: nothing in a set, a [`Field`] in a map.
pub trait Payload: Clone + Debug + PartialEq + Eq + Hash + Serialize + DeserializeOwned {
    /// Feeds the payload to `out` in a fixed byte order (digests must agree across machines).
    fn fingerprint(&self, out: &mut dyn FnMut(&[u8]));
}

impl Payload for () {
    fn fingerprint(&self, _: &mut dyn FnMut(&[u8])) {}
}

/// One write of a map field.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Field {
    /// A value set by `HSET`; among concurrent ones the highest `(stamp, dot)` is read.
    Reg { stamp: u64, value: Vec<u8> },
    /// One replica's contribution to a counter field (`HINCRBY`): the field reads as the sum
    /// of the live contributions.
    Ctr(i64),
}

impl Payload for Field {
    fn fingerprint(&self, out: &mut dyn FnMut(&[u8])) {
        match self {
            Field::Reg { stamp, value } => {
                out(&[0]);
                out(&stamp.to_le_bytes());
                out(&(value.len() as u64).to_le_bytes());
                out(value);
            }
            Field::Ctr(n) => {
                out(&[1]);
                out(&n.to_le_bytes());
            }
        }
    }
}

/// The live dots of one member, with what each carries.
pub type Dots<V> = BTreeMap<Dot, V>;

/// An observed-remove map from byte-string members to dotted payloads.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(
    from = "Parts<V>",
    bound(serialize = "V: Payload", deserialize = "V: Payload")
)]
pub struct OrMap<V: Payload> {
    /// member → its live dots (a delta may list a member with none: the member its context's
    /// dots belong to).
    entries: BTreeMap<Vec<u8>, Dots<V>>,
    ctx: Context,
    /// A delta: every dot of `ctx` belongs to a member listed in `entries`, so a join with it
    /// touches only those members.
    delta: bool,
    /// XOR of the digests of the members with live dots.
    #[serde(skip_serializing)]
    digest: u64,
    /// Members with live dots.
    #[serde(skip_serializing)]
    live: usize,
}

/// An add-wins observed-remove set.
pub type OrSet = OrMap<()>;

/// The serialized fields of an [`OrMap`]; the digest and count are recomputed from them.
#[derive(Deserialize)]
#[serde(bound(deserialize = "V: Payload"))]
struct Parts<V: Payload> {
    entries: BTreeMap<Vec<u8>, Dots<V>>,
    ctx: Context,
    delta: bool,
}

impl<V: Payload> From<Parts<V>> for OrMap<V> {
    fn from(p: Parts<V>) -> OrMap<V> {
        let mut m = OrMap {
            entries: p.entries,
            ctx: p.ctx,
            delta: p.delta,
            digest: 0,
            live: 0,
        };
        m.recount();
        m
    }
}

impl<V: Payload> Default for OrMap<V> {
    fn default() -> OrMap<V> {
        OrMap {
            entries: BTreeMap::new(),
            ctx: Context::new(),
            delta: false,
            digest: 0,
            live: 0,
        }
    }
}

/// The digest one member contributes (0 when it has no live dot, so it contributes nothing).
fn member_digest<V: Payload>(member: &[u8], dots: &Dots<V>) -> u64 {
    if dots.is_empty() {
        return 0;
    }
    let mut h = xxhash_rust::xxh3::Xxh3::new();
    h.update(&(member.len() as u64).to_le_bytes());
    h.update(member);
    for (d, v) in dots {
        h.update(&d.node.to_le_bytes());
        h.update(&d.counter.to_le_bytes());
        v.fingerprint(&mut |b| h.update(b));
    }
    h.digest() | 1
}

impl<V: Payload> OrMap<V> {
    pub fn new() -> OrMap<V> {
        OrMap::default()
    }

    fn delta_map() -> OrMap<V> {
        OrMap {
            delta: true,
            ..OrMap::default()
        }
    }

    fn recount(&mut self) {
        self.digest = self
            .entries
            .iter()
            .fold(0, |acc, (m, d)| acc ^ member_digest(m, d));
        self.live = self.entries.values().filter(|d| !d.is_empty()).count();
    }

    /// Replaces the dots of `member`, keeping the digest and count current.
    fn set_member(&mut self, member: &[u8], dots: Dots<V>) {
        let old = self.entries.get(member);
        let was_live = old.is_some_and(|d| !d.is_empty());
        self.digest ^= old.map_or(0, |d| member_digest(member, d));
        self.digest ^= member_digest(member, &dots);
        match (was_live, dots.is_empty()) {
            (false, false) => self.live += 1,
            (true, true) => self.live -= 1,
            _ => {}
        }
        if dots.is_empty() && !self.delta {
            self.entries.remove(member);
        } else {
            self.entries.insert(member.to_vec(), dots);
        }
    }

    pub fn contains(&self, member: &[u8]) -> bool {
        self.entries.get(member).is_some_and(|d| !d.is_empty())
    }

    /// The live dots of `member`.
    pub fn get(&self, member: &[u8]) -> Option<&Dots<V>> {
        self.entries.get(member).filter(|d| !d.is_empty())
    }

    /// Members with live dots, in byte order.
    pub fn members(&self) -> impl Iterator<Item = (&Vec<u8>, &Dots<V>)> {
        self.entries.iter().filter(|(_, d)| !d.is_empty())
    }

    /// Members with live dots (O(1)).
    pub fn len(&self) -> usize {
        self.live
    }

    pub fn is_empty(&self) -> bool {
        self.live == 0
    }

    /// Members listed, with live dots or not (a remove's delta lists what it removed).
    pub fn len_listed(&self) -> usize {
        self.entries.len()
    }

    /// Every dot seen.
    pub fn context(&self) -> &Context {
        &self.ctx
    }

    /// Whether this is a delta (an update's, or deltas joined).
    /// Adds dot `d` to the context without a member: the mark of an update that issued no
    /// dot of its own (a remove), which a session that made it can then ask a state for.
    pub fn mark(&mut self, d: Dot) {
        self.ctx.insert(d);
    }

    pub fn is_delta(&self) -> bool {
        self.delta
    }

    /// XOR of the live members' digests (O(1)).
    pub fn digest(&self) -> u64 {
        self.digest
    }

    /// Feeds the state to `out` in a fixed byte order, in O(context): the members through
    /// their maintained digest.
    pub fn fingerprint(&self, out: &mut dyn FnMut(&[u8])) {
        out(&self.digest.to_le_bytes());
        out(&(self.live as u64).to_le_bytes());
        self.ctx.fingerprint(out);
    }

    /// The delta of writing `items` at replica `node`: each member gets one new dot carrying
    /// its payload, and the dots of it seen here are dropped. A member named twice is written
    /// once (its first payload).
    pub fn put(&self, node: u64, items: &[(Vec<u8>, V)]) -> OrMap<V> {
        let mut delta = OrMap::delta_map();
        let mut next = self.ctx.next_dot(node);
        for (m, v) in items {
            if delta.entries.contains_key(m) {
                continue;
            }
            for d in self.entries.get(m).into_iter().flat_map(|d| d.keys()) {
                delta.ctx.insert(*d);
            }
            delta.ctx.insert(next);
            delta.set_member(m, BTreeMap::from([(next, v.clone())]));
            next.counter += 1;
        }
        delta
    }

    /// The delta of removing `members`: the dots of each seen here. Members absent here are
    /// not in it.
    pub fn remove(&self, members: &[Vec<u8>]) -> OrMap<V> {
        let mut delta = OrMap::delta_map();
        for m in members {
            if let Some(dots) = self.get(m) {
                for d in dots.keys() {
                    delta.ctx.insert(*d);
                }
                delta.entries.insert(m.clone(), BTreeMap::new());
            }
        }
        delta
    }

    /// The delta of removing every member seen here (`DEL`; O(members)).
    pub fn clear(&self) -> OrMap<V> {
        let all: Vec<Vec<u8>> = self.members().map(|(m, _)| m.clone()).collect();
        self.remove(&all)
    }

    /// The causal join: a dot of a member stays if both sides hold it, or if the other side
    /// never saw it. With a delta it visits only the delta's members. Returns the members whose
    /// live dots changed here (what the caller persists).
    pub fn join(&mut self, other: &OrMap<V>) -> Vec<Vec<u8>> {
        self.join_with(other, false)
    }

    /// [`OrMap::join`]; `remove_wins`: the injected bug of `tunekv-node`'s `set-remove-wins`,
    /// where a delta's remove drops every dot of its members, seen by the remover or not.
    pub fn join_with(&mut self, other: &OrMap<V>, remove_wins: bool) -> Vec<Vec<u8>> {
        let touched: Vec<Vec<u8>> = if other.delta {
            other.entries.keys().cloned().collect()
        } else {
            self.entries
                .keys()
                .chain(other.entries.keys())
                .cloned()
                .collect::<BTreeSet<_>>()
                .into_iter()
                .collect()
        };
        let none = BTreeMap::new();
        let mut changed = Vec::new();
        for m in touched {
            let mine = self.entries.get(&m).unwrap_or(&none);
            let theirs = other.entries.get(&m).unwrap_or(&none);
            let kept: Dots<V> = if remove_wins && other.delta && theirs.is_empty() {
                BTreeMap::new()
            } else {
                mine.iter()
                    .filter(|(d, _)| theirs.contains_key(d) || !other.ctx.contains(d))
                    .chain(theirs.iter().filter(|(d, _)| !self.ctx.contains(d)))
                    .map(|(d, v)| (*d, v.clone()))
                    .collect()
            };
            if &kept != mine || (self.delta && !self.entries.contains_key(&m)) {
                if &kept != mine {
                    changed.push(m.clone());
                }
                self.set_member(&m, kept);
            }
        }
        self.ctx.join(&other.ctx);
        self.delta = self.delta && other.delta;
        changed
    }

    /// The state without its members: what a replica stores under the key itself, its members
    /// stored one record each.
    pub fn header(&self) -> OrMap<V> {
        OrMap {
            ctx: self.ctx.clone(),
            ..OrMap::default()
        }
    }

    /// A state from its [`OrMap::header`] and its members' stored dots.
    pub fn assemble(
        header: OrMap<V>,
        members: impl IntoIterator<Item = (Vec<u8>, Dots<V>)>,
    ) -> OrMap<V> {
        let mut m = header;
        m.delta = false;
        m.entries = members.into_iter().filter(|(_, d)| !d.is_empty()).collect();
        m.recount();
        m
    }
}

/// Why a map update was refused (it changes nothing).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FieldError {
    /// `HINCRBY` on a field whose value is not an integer.
    NotInteger,
    /// The field's value would leave i64.
    Overflow,
}

impl OrMap<Field> {
    /// The value a read sees of field `f` (see [`OrMap::incr`] for how writes and increments
    /// combine).
    pub fn field(&self, f: &[u8]) -> Option<Vec<u8>> {
        Self::value_of(self.get(f)?)
    }

    /// The newest register (by stamp, then dot) among `dots`.
    fn newest_reg(dots: &Dots<Field>) -> Option<&Vec<u8>> {
        dots.iter()
            .filter_map(|(d, v)| match v {
                Field::Reg { stamp, value } => Some(((*stamp, *d), value)),
                Field::Ctr(_) => None,
            })
            .max_by_key(|(k, _)| *k)
            .map(|(_, v)| v)
    }

    fn int_of(value: &[u8]) -> Option<i64> {
        std::str::from_utf8(value).ok()?.parse().ok()
    }

    /// The counter contributions of `dots`, summed (of `node` alone when given).
    fn counted(dots: &Dots<Field>, node: Option<u64>) -> i128 {
        dots.iter()
            .filter(|(d, _)| node.is_none_or(|n| d.node == n))
            .map(|(_, v)| match v {
                Field::Ctr(n) => i128::from(*n),
                Field::Reg { .. } => 0,
            })
            .sum()
    }

    fn value_of(dots: &Dots<Field>) -> Option<Vec<u8>> {
        if dots.is_empty() {
            return None;
        }
        let counters = dots.values().any(|v| matches!(v, Field::Ctr(_)));
        match Self::newest_reg(dots) {
            // A written value as written; also when a write that is not an integer met
            // concurrent increments (the write wins).
            Some(reg) if !counters || Self::int_of(reg).is_none() => Some(reg.clone()),
            reg => {
                let base = reg.and_then(|r| Self::int_of(r)).map_or(0, i128::from);
                Some((base + Self::counted(dots, None)).to_string().into_bytes())
            }
        }
    }

    /// Every live field with the value a read sees, in byte order.
    pub fn fields(&self) -> impl Iterator<Item = (&Vec<u8>, Vec<u8>)> {
        self.members()
            .filter_map(|(f, d)| Some((f, Self::value_of(d)?)))
    }

    /// The delta of adding `by` to field `f` at replica `node`, and the field's value after it.
    ///
    /// A field reads as its newest written value (`HSET`; 0 when none) plus every replica's
    /// live contribution, where a replica's contribution is the sum of its increments since the
    /// field was last written or removed as that replica saw it: an increment replaces only the
    /// replica's own previous contribution, so concurrent increments at several replicas add
    /// up, each counted once, and a write (or `HDEL`) drops exactly the contributions its
    /// replica had seen. An increment concurrent with a write survives it, with the count its
    /// replica had (the reset is observed-remove).
    pub fn incr(&self, node: u64, f: &[u8], by: i64) -> Result<(OrMap<Field>, i64), FieldError> {
        let none = BTreeMap::new();
        let dots = self.get(f).unwrap_or(&none);
        let base = match Self::newest_reg(dots) {
            Some(reg) => Self::int_of(reg).ok_or(FieldError::NotInteger)?,
            None => 0,
        };
        let fits = |n: i128| i64::try_from(n).map_err(|_| FieldError::Overflow);
        let after = fits(i128::from(base) + Self::counted(dots, None) + i128::from(by))?;
        let mine = fits(Self::counted(dots, Some(node)) + i128::from(by))?;
        let mut delta = OrMap::delta_map();
        for (d, v) in dots {
            if matches!(v, Field::Ctr(_)) && d.node == node {
                delta.ctx.insert(*d);
            }
        }
        let next = self.ctx.next_dot(node);
        delta.ctx.insert(next);
        // The register and the other replicas' contributions are not in the delta: its context
        // does not cover them, so a join keeps them wherever they are held.
        delta.set_member(f, BTreeMap::from([(next, Field::Ctr(mine))]));
        Ok((delta, after))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(members: &[&str]) -> Vec<Vec<u8>> {
        members.iter().map(|m| m.as_bytes().to_vec()).collect()
    }

    #[test]
    fn an_add_concurrent_with_a_remove_survives_it() {
        let mut a = OrSet::new();
        let add = a.put(1, &[(b"x".to_vec(), ())]);
        a.join(&add);
        let mut b = a.clone();
        // b removes x (it saw the first add); a adds x again concurrently.
        let rm = b.remove(&set(&["x"]));
        b.join(&rm);
        assert!(!b.contains(b"x"));
        let again = a.put(1, &[(b"x".to_vec(), ())]);
        a.join(&again);
        a.join(&b);
        b.join(&a);
        assert!(a.contains(b"x") && b.contains(b"x"), "add wins");
        assert_eq!(a, b);
        // A remove of what both saw removes it everywhere.
        let rm = a.remove(&set(&["x"]));
        a.join(&rm);
        b.join(&rm);
        assert!(!a.contains(b"x") && !b.contains(b"x"));
        assert_eq!((a.len(), a.digest()), (0, 0));
    }

    #[test]
    fn the_injected_remove_wins_bug_drops_a_concurrent_add() {
        let mut a = OrSet::new();
        let add = a.put(1, &[(b"x".to_vec(), ())]);
        a.join(&add);
        let b = a.clone();
        let rm = b.remove(&set(&["x"]));
        let again = a.put(1, &[(b"x".to_vec(), ())]);
        a.join(&again);
        let mut buggy = a.clone();
        buggy.join_with(&rm, true);
        a.join(&rm);
        assert!(a.contains(b"x") && !buggy.contains(b"x"));
    }

    #[test]
    fn a_delta_is_as_small_as_its_update_whatever_the_set_holds() {
        let mut s = OrSet::new();
        let members: Vec<(Vec<u8>, ())> = (0..10_000u32)
            .map(|i| (i.to_be_bytes().to_vec(), ()))
            .collect();
        let d = s.put(1, &members);
        s.join(&d);
        assert_eq!(s.len(), 10_000);
        let one = s.put(1, &[(b"new".to_vec(), ())]);
        assert_eq!(one.entries.len(), 1);
        assert_eq!(one.ctx.size(), 1, "{:?}", one.ctx);
        let rm = s.remove(&[members[5].0.clone()]);
        assert_eq!((rm.entries.len(), rm.ctx.size()), (1, 1));
        // The join reports only the touched member.
        assert_eq!(s.join(&one), vec![b"new".to_vec()]);
        assert_eq!(s.join(&rm), vec![members[5].0.clone()]);
        assert_eq!(s.len(), 10_000);
    }

    #[test]
    fn digest_and_count_are_kept_as_a_recount_would_make_them() {
        let mut s = OrSet::new();
        for i in 0..50u8 {
            let d = if i % 3 == 0 {
                s.remove(&[vec![i / 2]])
            } else {
                s.put(u64::from(i % 3), &[(vec![i / 2], ())])
            };
            s.join(&d);
            let mut fresh = s.clone();
            fresh.recount();
            assert_eq!((s.digest, s.live), (fresh.digest, fresh.live), "step {i}");
        }
        // A decoded state recomputes both.
        let mut bytes = Vec::new();
        for (m, _) in s.members() {
            bytes.push(m.clone());
        }
        let header = s.header();
        let rebuilt = OrSet::assemble(header, s.members().map(|(m, d)| (m.clone(), d.clone())));
        assert_eq!(rebuilt, s);
        assert_eq!(rebuilt.len(), bytes.len());
    }

    #[test]
    fn map_fields_set_count_and_reset_like_redis_hashes() {
        let mut a: OrMap<Field> = OrMap::new();
        let reg = |stamp, v: &str| Field::Reg {
            stamp,
            value: v.as_bytes().to_vec(),
        };
        let d = a.put(1, &[(b"f".to_vec(), reg(1, "5"))]);
        a.join(&d);
        let (d, v) = a.incr(1, b"f", 2).unwrap();
        a.join(&d);
        assert_eq!((v, a.field(b"f")), (7, Some(b"7".to_vec())));
        // Another replica counts too; the sums add up.
        let mut b = a.clone();
        let (d, v) = b.incr(2, b"f", 10).unwrap();
        b.join(&d);
        assert_eq!(v, 17);
        a.join(&b);
        assert_eq!(a.field(b"f"), Some(b"17".to_vec()));
        let (d, v) = a.incr(1, b"f", -1).unwrap();
        a.join(&d);
        b.join(&a);
        assert_eq!((v, b.field(b"f")), (16, Some(b"16".to_vec())));
        // HSET resets the field: the contributions it saw are gone.
        let d = a.put(1, &[(b"f".to_vec(), reg(9, "0"))]);
        a.join(&d);
        let (d, v) = a.incr(2, b"f", 3).unwrap();
        a.join(&d);
        assert_eq!(v, 3);
        b.join(&a);
        assert_eq!(b.field(b"f"), Some(b"3".to_vec()));
        // A non-integer field refuses to count; overflow is refused.
        let d = a.put(1, &[(b"s".to_vec(), reg(10, "abc"))]);
        a.join(&d);
        assert_eq!(a.incr(1, b"s", 1).unwrap_err(), FieldError::NotInteger);
        let (d, _) = a.incr(1, b"n", i64::MAX).unwrap();
        a.join(&d);
        assert_eq!(a.incr(2, b"n", 1).unwrap_err(), FieldError::Overflow);
        let fields: Vec<(Vec<u8>, Vec<u8>)> = a.fields().map(|(f, v)| (f.clone(), v)).collect();
        assert_eq!(fields.len(), 3);
        // Concurrent HSETs: the higher stamp is read on both sides.
        let mut c = a.clone();
        let d1 = a.put(1, &[(b"g".to_vec(), reg(20, "one"))]);
        let d2 = c.put(3, &[(b"g".to_vec(), reg(21, "three"))]);
        a.join(&d1);
        c.join(&d2);
        a.join(&c);
        c.join(&a);
        assert_eq!(a.field(b"g"), Some(b"three".to_vec()));
        assert_eq!(a, c);
    }

    #[test]
    fn concurrent_increments_of_a_written_integer_count_its_value_once() {
        let mut a: OrMap<Field> = OrMap::new();
        let d = a.put(
            2,
            &[(
                b"visits".to_vec(),
                Field::Reg {
                    stamp: 1,
                    value: b"1".to_vec(),
                },
            )],
        );
        a.join(&d);
        let mut b = a.clone();
        let (da, va) = a.incr(1, b"visits", 10).unwrap();
        a.join(&da);
        let (db, vb) = b.incr(3, b"visits", 5).unwrap();
        b.join(&db);
        assert_eq!((va, vb), (11, 6));
        a.join(&db);
        b.join(&da);
        assert_eq!(a.field(b"visits"), Some(b"16".to_vec()));
        assert_eq!(a, b);
    }
}
