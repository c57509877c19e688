//! Versions of leaderless writes and how replicas resolve them.
//!
//! Every leaderless write is stamped by its coordinator's hybrid logical clock, with the
//! coordinator's node id breaking ties: a total order every replica computes alike. A delete is
//! a write of a tombstone, so it has a version too and loses or wins like any write. Replicas
//! keep what the keyspace's conflict policy ([`Resolve`]) makes of what they hold and what
//! arrives; for convergence the policy's merge must be commutative, associative and idempotent
//! (tested below for LWW), so replicas that saw the same writes in any order, any number of
//! times, hold the same thing.

use crate::crdt::{Counter, Siblings};
use crate::ormap::{Field, OrMap, OrSet};
use serde::{Deserialize, Serialize};
use std::borrow::Cow;

/// A write's version: HLC stamp first, then the coordinator's node id.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
pub struct Version {
    pub hlc: u64,
    pub node: u64,
}

/// What a write stored: a value, the tombstone of a delete, or a value that expires (SET … EX):
/// absent to every read from `expires_ms` (Unix ms, by the reading coordinator's clock) on,
/// still a version for conflict resolution.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Stored {
    Value(Vec<u8>),
    Tombstone,
    Expiring {
        value: Vec<u8>,
        expires_ms: u64,
    },
    /// A counter keyspace's state of the key, or an update's delta.
    Counter(Counter),
    /// A set keyspace's state of the key, or an update's delta.
    Set(OrSet),
    /// A map keyspace's state of the key, or an update's delta.
    Map(OrMap<Field>),
    /// A siblings keyspace's concurrent values of the key, or a write's delta.
    Siblings(Siblings),
}

impl Stored {
    /// The value a read at `now_ms` sees: `None` for a tombstone or an expired value; a
    /// counter's value in decimal; `None` for a set or a map (they have no single value: see
    /// [`Stored::live_at`]).
    pub fn value_at(&self, now_ms: u64) -> Option<Cow<'_, [u8]>> {
        match self {
            Stored::Value(v) => Some(Cow::Borrowed(v)),
            Stored::Expiring { value, expires_ms } if *expires_ms > now_ms => {
                Some(Cow::Borrowed(value))
            }
            Stored::Counter(c) => Some(Cow::Owned(c.value().to_string().into_bytes())),
            // One value: that value; concurrent ones have no single value (see
            // [`Stored::live_at`]).
            Stored::Siblings(s) if s.len() == 1 => {
                s.values().next().map(|(_, v)| Cow::Borrowed(v.as_slice()))
            }
            _ => None,
        }
    }

    /// Whether a read at `now_ms` finds the key: a value not expired, a counter, a set or map
    /// with at least one member.
    pub fn live_at(&self, now_ms: u64) -> bool {
        match self {
            Stored::Set(s) => !s.is_empty(),
            Stored::Map(m) => !m.is_empty(),
            Stored::Siblings(s) => !s.is_empty(),
            other => other.value_at(now_ms).is_some(),
        }
    }

    /// Joins `other` into this state in place when both are sets or both are maps. Returns
    /// the members whose dots changed (`None`: not two states of one member type; the caller
    /// merges another way). `remove_wins`: the injected bug `set-remove-wins`.
    pub fn join_members(&mut self, other: &Stored, remove_wins: bool) -> Option<Vec<Vec<u8>>> {
        match (self, other) {
            (Stored::Set(a), Stored::Set(b)) => Some(a.join_with(b, remove_wins)),
            (Stored::Map(a), Stored::Map(b)) => Some(a.join_with(b, remove_wins)),
            _ => None,
        }
    }

    /// This stored thing as a state: an update's delta of a set or a map joined into an empty
    /// one (a replica never holds a delta); anything else as it is.
    pub fn into_state(self) -> Stored {
        match self {
            Stored::Set(d) if d.is_delta() => {
                let mut s = OrSet::new();
                s.join(&d);
                Stored::Set(s)
            }
            Stored::Map(d) if d.is_delta() => {
                let mut s = OrMap::new();
                s.join(&d);
                Stored::Map(s)
            }
            other => other,
        }
    }

    pub fn expires_ms(&self) -> Option<u64> {
        match self {
            Stored::Expiring { expires_ms, .. } => Some(*expires_ms),
            _ => None,
        }
    }

    /// The causal context of a conflict-free state (every dot it has seen); `None` for a
    /// plain value or tombstone.
    pub fn context(&self) -> Option<&crate::causal::Context> {
        match self {
            Stored::Counter(c) => Some(c.context()),
            Stored::Set(s) => Some(s.context()),
            Stored::Map(m) => Some(m.context()),
            Stored::Siblings(s) => Some(s.context()),
            Stored::Value(_) | Stored::Tombstone | Stored::Expiring { .. } => None,
        }
    }

    /// Bytes of the value (0 for a tombstone).
    pub fn len(&self) -> usize {
        match self {
            Stored::Value(v) | Stored::Expiring { value: v, .. } => v.len(),
            Stored::Tombstone => 0,
            Stored::Counter(c) => 24 * c.entries(),
            // Estimates (byte counts of members would cost O(members)).
            Stored::Set(s) => 32 * s.len() + 16 * s.context().size(),
            Stored::Map(m) => 64 * m.len() + 16 * m.context().size(),
            Stored::Siblings(s) => {
                s.values().map(|(_, v)| v.len() + 16).sum::<usize>() + 16 * s.context().size()
            }
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// One version of a key as a replica holds it.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Versioned {
    pub version: Version,
    pub stored: Stored,
}

/// A conflict policy: what a replica holds after `incoming` meets what it held.
pub trait Resolve {
    /// The policy's name in keyspace specs (`"conflict": "lww"`).
    const NAME: &'static str;
    fn merge(held: Option<&Versioned>, incoming: &Versioned) -> Versioned;
}

/// A keyspace's conflict policy, by its name in the spec.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Policy {
    Lww,
    /// A PN-counter ([`Counter`]): updates are deltas, states join.
    Counter,
    /// An add-wins observed-remove set ([`OrSet`]).
    Set,
    /// An observed-remove map of registers and counters ([`OrMap<Field>`]).
    Map,
    /// Concurrent values kept as siblings, each named by a dot ([`Siblings`]).
    Siblings,
}

impl Policy {
    /// The policy named in a keyspace spec (`None`: the default, LWW).
    pub fn named(name: Option<&str>) -> Result<Policy, String> {
        match name {
            None | Some(Lww::NAME) => Ok(Policy::Lww),
            Some("counter") => Ok(Policy::Counter),
            Some("set") => Ok(Policy::Set),
            Some("map") => Ok(Policy::Map),
            Some("siblings") => Ok(Policy::Siblings),
            Some(other) => Err(format!("unknown conflict policy {other:?}")),
        }
    }

    /// Whether updates are made at a replica of the key, as deltas counted by its dots (every
    /// policy but LWW).
    pub fn dotted(self) -> bool {
        self != Policy::Lww
    }

    /// Whether the keyspace's values are collections of members (sets, maps), stored one
    /// record per member.
    pub fn membered(self) -> bool {
        matches!(self, Policy::Set | Policy::Map)
    }

    /// What `held` becomes with `incoming`, as a new value (a replica merges sets and maps in
    /// place, see [`crate::Replica::apply`]; this copies them: for hints, whose deltas stay
    /// deltas, and the replies of a read).
    pub fn merge(self, held: Option<&Versioned>, incoming: &Versioned) -> Versioned {
        if let (true, Some(h)) = (self.membered(), held) {
            let mut joined = h.clone();
            if joined
                .stored
                .join_members(&incoming.stored, false)
                .is_some()
            {
                joined.version = h.version.max(incoming.version);
                return joined;
            }
        }
        match (self, held) {
            (Policy::Siblings, Some(h)) => match (&h.stored, &incoming.stored) {
                (Stored::Siblings(a), Stored::Siblings(b)) => {
                    let mut joined = a.clone();
                    joined.join(b);
                    Versioned {
                        version: h.version.max(incoming.version),
                        stored: Stored::Siblings(joined),
                    }
                }
                _ => Lww::merge(held, incoming),
            },
            (Policy::Counter, Some(h)) => match (&h.stored, &incoming.stored) {
                (Stored::Counter(a), Stored::Counter(b)) => {
                    let mut joined = a.clone();
                    joined.join(b);
                    Versioned {
                        version: h.version.max(incoming.version),
                        stored: Stored::Counter(joined),
                    }
                }
                // Only counters are written to a counter keyspace; anything else is resolved
                // as LWW would, so replicas still agree.
                _ => Lww::merge(held, incoming),
            },
            _ => Lww::merge(held, incoming),
        }
    }
}

/// Last writer wins: the higher version, whole. Two writes with the same version are the same
/// write (a version names one coordinator's one stamp), so ties keep what is held.
#[derive(Clone, Copy, Debug)]
pub struct Lww;

impl Resolve for Lww {
    const NAME: &'static str = "lww";

    fn merge(held: Option<&Versioned>, incoming: &Versioned) -> Versioned {
        match held {
            Some(h) if h.version >= incoming.version => h.clone(),
            _ => incoming.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    fn write(rng: &mut StdRng) -> Versioned {
        Versioned {
            version: Version {
                hlc: rng.gen_range(0..6),
                node: rng.gen_range(1..4),
            },
            stored: if rng.gen_bool(0.2) {
                Stored::Tombstone
            } else {
                Stored::Value(vec![rng.gen()])
            },
        }
    }

    fn fold(writes: &[Versioned]) -> Option<Versioned> {
        writes
            .iter()
            .fold(None, |held, w| Some(Lww::merge(held.as_ref(), w)))
    }

    #[test]
    fn the_higher_version_wins_and_node_ids_break_ties() {
        let v = |hlc, node, b: u8| Versioned {
            version: Version { hlc, node },
            stored: Stored::Value(vec![b]),
        };
        assert_eq!(Lww::merge(Some(&v(5, 1, 1)), &v(4, 9, 2)), v(5, 1, 1));
        assert_eq!(Lww::merge(Some(&v(5, 1, 1)), &v(5, 2, 2)), v(5, 2, 2));
        assert_eq!(Lww::merge(None, &v(1, 1, 3)), v(1, 1, 3));
        let dead = Versioned {
            version: Version { hlc: 6, node: 1 },
            stored: Stored::Tombstone,
        };
        assert_eq!(
            Lww::merge(Some(&v(5, 3, 1)), &dead),
            dead,
            "a newer delete wins"
        );
        assert_eq!(
            Lww::merge(Some(&dead), &v(5, 3, 1)),
            dead,
            "an older write stays dead"
        );
    }

    #[test]
    fn replicas_converge_whatever_order_and_repetition_they_see() {
        // The merge laws convergence needs, over many random histories (versions unique per
        // write, as coordinators guarantee): any order, with repeats, folds to the same result.
        let mut rng = StdRng::seed_from_u64(16);
        for _ in 0..500 {
            let mut writes: Vec<Versioned> =
                (0..rng.gen_range(1..8)).map(|_| write(&mut rng)).collect();
            writes.sort_by_key(|w| w.version);
            writes.dedup_by_key(|w| w.version);
            let expected = fold(&writes);
            let mut shuffled = writes.clone();
            for _ in 0..shuffled.len() {
                let (a, b) = (
                    rng.gen_range(0..shuffled.len()),
                    rng.gen_range(0..shuffled.len()),
                );
                shuffled.swap(a, b);
            }
            let repeat = rng.gen_range(0..shuffled.len());
            shuffled.push(shuffled[repeat].clone());
            assert_eq!(fold(&shuffled), expected, "{writes:?}");
            // Merging two replicas' states (associativity across a split history).
            let (left, right) = shuffled.split_at(rng.gen_range(0..=shuffled.len()));
            let merged = match (fold(left), fold(right)) {
                (Some(l), Some(r)) => Some(Lww::merge(Some(&l), &r)),
                (l, r) => l.or(r),
            };
            assert_eq!(merged, expected);
        }
    }
}
