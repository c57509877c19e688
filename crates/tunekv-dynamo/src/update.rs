//! Updates of conflict-free keyspaces as clients ask them (INCR, SADD, HSET, …), and the delta
//! each makes at the replica that makes it ([`make`]). Pure: the node holds the replica's lock,
//! stamps the update and persists and spreads the delta.

use crate::causal::{Context, Dot};
use crate::crdt::{Counter, CounterError, Siblings};
use crate::ormap::{Field, FieldError, OrMap, OrSet};
use crate::version::{Policy, Stored};
use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;

/// An update of a conflict-free keyspace, as a client asked it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Update {
    /// Add `by` to a counter. `id`: the request's id, so that a retry reaching a replica that
    /// has seen it is not applied twice.
    Add { by: i64, id: Option<u128> },
    /// Add and remove members of a set (SADD, SREM; a member may not be in both).
    Members {
        add: Vec<Vec<u8>>,
        remove: Vec<Vec<u8>>,
    },
    /// Write and remove fields of a map (HSET, HDEL; a field may not be in both).
    Fields {
        set: Vec<(Vec<u8>, Vec<u8>)>,
        remove: Vec<Vec<u8>>,
    },
    /// Add `by` to a field of a map (HINCRBY).
    FieldAdd { field: Vec<u8>, by: i64 },
    /// Remove every member of a set or field of a map the replica has seen (DEL).
    Clear,
    /// Write a value (`None`: delete) of a siblings keyspace, superseding exactly the values
    /// `ctx` covers (what the writer read; empty: a new sibling). Refused when the key would
    /// hold more than `max` values.
    Write {
        value: Option<Vec<u8>>,
        ctx: Context,
        max: u32,
    },
}

impl Update {
    /// Whether this update drops dots it finds at its replica (a remove of members or fields,
    /// a clear): what it drops depends on what that replica has seen.
    pub fn removes(&self) -> bool {
        match self {
            Update::Members { remove, .. } | Update::Fields { remove, .. } => !remove.is_empty(),
            Update::Clear => true,
            _ => false,
        }
    }

    /// Whether this update applies to keyspaces of `policy`.
    pub fn fits(&self, policy: Policy) -> bool {
        matches!(
            (self, policy),
            (Update::Add { .. }, Policy::Counter)
                | (Update::Members { .. }, Policy::Set)
                | (Update::Fields { .. } | Update::FieldAdd { .. }, Policy::Map)
                | (Update::Clear, Policy::Set | Policy::Map)
                | (Update::Write { .. }, Policy::Siblings)
        )
    }

    /// The policy name of the keyspaces this update applies to.
    pub fn applies_to(&self) -> &'static str {
        match self {
            Update::Add { .. } => "counter",
            Update::Members { .. } => "set",
            Update::Fields { .. } | Update::FieldAdd { .. } => "map",
            Update::Clear => "set or map",
            Update::Write { .. } => "siblings",
        }
    }
}

/// What an update made at a replica.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Made {
    /// The delta: joined into the replica's state and sent to the others.
    pub delta: Stored,
    /// The command's integer answer: a counter's or field's value after it; members or fields
    /// added (SADD, HSET: new ones only) or removed (SREM, HDEL, DEL: 1 when any was).
    pub int: i64,
    /// Members or fields that were not present and now are; present ones now removed.
    pub added: u64,
    pub removed: u64,
    /// The dots the update issued (one per member written) and every dot it dropped — those
    /// of members removed, and those a write of a member replaced: what the set checker
    /// needs to know which adds each update observed.
    pub dots: Vec<Dot>,
    pub removed_dots: Vec<Dot>,
    /// A siblings write: the context it superseded (every value whose dot it covers).
    pub covered: Option<Context>,
    /// A remove or delete that issued no dot of its own gets one in its delta's context, with
    /// no member or value: a session that made the update asks later reads for a state
    /// holding that dot, which only a state that joined this delta (or one after it) does.
    pub mark: Option<Dot>,
}

/// Why an update was refused (it changes nothing).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum UpdateError {
    /// The key holds another type (or the keyspace's policy is not this update's).
    WrongType,
    /// A counter or field would leave i64.
    Overflow,
    /// HINCRBY on a field whose value is not an integer.
    NotInteger,
    /// The update names a member both to add and to remove.
    Invalid(String),
    /// The key would hold more concurrent values than the keyspace allows.
    TooManySiblings { max: u32 },
}

impl From<CounterError> for UpdateError {
    fn from(e: CounterError) -> UpdateError {
        match e {
            CounterError::Overflow => UpdateError::Overflow,
        }
    }
}

impl From<FieldError> for UpdateError {
    fn from(e: FieldError) -> UpdateError {
        match e {
            FieldError::Overflow => UpdateError::Overflow,
            FieldError::NotInteger => UpdateError::NotInteger,
        }
    }
}

fn overlap<'a>(a: impl Iterator<Item = &'a Vec<u8>>, b: &[Vec<u8>]) -> Result<(), UpdateError> {
    let a: BTreeSet<&Vec<u8>> = a.collect();
    match b.iter().find(|m| a.contains(m)) {
        Some(m) => Err(UpdateError::Invalid(format!(
            "{:?} is both added and removed in one update; send them as two",
            String::from_utf8_lossy(m)
        ))),
        None => Ok(()),
    }
}

/// The delta that writes `items` (a member named twice: its first payload) and removes
/// `remove` in `m`, and what it did; `wrap` makes it a set's or a map's.
fn write_members<P: crate::ormap::Payload>(
    m: &OrMap<P>,
    node: u64,
    items: Vec<(Vec<u8>, P)>,
    remove: &[Vec<u8>],
    wrap: fn(OrMap<P>) -> Stored,
) -> Result<Made, UpdateError> {
    overlap(items.iter().map(|(k, _)| k), remove)?;
    let named: BTreeSet<&Vec<u8>> = items.iter().map(|(k, _)| k).collect();
    let added = named.into_iter().filter(|k| !m.contains(k)).count() as u64;
    let mut delta = m.put(node, &items);
    let (dots, replaced) = issued_and_replaced(&delta);
    let rm = m.remove(remove);
    let removed = rm.len_listed() as u64;
    let removed_dots = replaced.into_iter().chain(rm.context().dots()).collect();
    delta.join(&rm);
    let int = if remove.is_empty() { added } else { removed };
    Ok(Made {
        delta: wrap(delta),
        int: int as i64,
        added,
        removed,
        dots,
        removed_dots,
        covered: None,
        mark: None,
    })
}

/// The dots a write's delta issues (its members' live dots) and those it replaces (the rest
/// of its context).
fn issued_and_replaced<V: crate::ormap::Payload>(delta: &OrMap<V>) -> (Vec<Dot>, Vec<Dot>) {
    let issued: BTreeSet<Dot> = delta
        .members()
        .flat_map(|(_, d)| d.keys().copied())
        .collect();
    let replaced = delta
        .context()
        .dots()
        .filter(|d| !issued.contains(d))
        .collect();
    (issued.into_iter().collect(), replaced)
}

/// The delta of `update` at replica `node`, from what the replica holds (`held`); `stamp`:
/// the update's clock stamp (orders a counter's recent ids and a map's registers). `Ok(None)`:
/// a retried counter update this replica has applied, or a clear of nothing (nothing to do).
pub fn make(
    held: Option<&Stored>,
    node: u64,
    stamp: u64,
    update: &Update,
) -> Result<Option<Made>, UpdateError> {
    let Some(mut made) = make_delta(held, node, stamp, update)? else {
        return Ok(None);
    };
    let removes =
        !made.removed_dots.is_empty() || made.covered.as_ref().is_some_and(|c| !c.is_empty());
    if made.dots.is_empty() && removes {
        // One past this replica's own dots of the key (they are contiguous in its state).
        let mark = held
            .and_then(Stored::context)
            .map_or(Dot::new(node, 1), |c| c.next_dot(node));
        match &mut made.delta {
            Stored::Set(s) => s.mark(mark),
            Stored::Map(m) => m.mark(mark),
            Stored::Siblings(s) => s.mark(mark),
            _ => return Ok(Some(made)),
        }
        made.mark = Some(mark);
    }
    Ok(Some(made))
}

fn make_delta(
    held: Option<&Stored>,
    node: u64,
    stamp: u64,
    update: &Update,
) -> Result<Option<Made>, UpdateError> {
    let empty_set = OrSet::new();
    let empty_map = OrMap::new();
    let made = |delta: Stored, int: i64, added: u64, removed: u64| Made {
        dots: Vec::new(),
        removed_dots: Vec::new(),
        covered: None,
        mark: None,
        delta,
        int,
        added,
        removed,
    };
    match (update, held) {
        (Update::Add { by, id }, None | Some(Stored::Counter(_))) => {
            let fresh = Counter::new();
            let c = match held {
                Some(Stored::Counter(c)) => c,
                _ => &fresh,
            };
            let Some(delta) = c.add(node, *by, stamp, *id)? else {
                return Ok(None);
            };
            let mut after = c.clone();
            after.join(&delta);
            let dots = delta.context().dots().collect();
            Ok(Some(Made {
                dots,
                ..made(Stored::Counter(delta), after.value() as i64, 0, 0)
            }))
        }
        (Update::Members { add, remove }, None | Some(Stored::Set(_))) => {
            let s = match held {
                Some(Stored::Set(s)) => s,
                _ => &empty_set,
            };
            let items = add.iter().map(|m| (m.clone(), ())).collect();
            write_members(s, node, items, remove, Stored::Set).map(Some)
        }
        (Update::Fields { set, remove }, None | Some(Stored::Map(_))) => {
            let m = match held {
                Some(Stored::Map(m)) => m,
                _ => &empty_map,
            };
            // A field named twice keeps its last value, as HSET does.
            let mut seen = BTreeSet::new();
            let mut items: Vec<(Vec<u8>, Field)> = set
                .iter()
                .rev()
                .filter(|(f, _)| seen.insert(f))
                .map(|(f, v)| {
                    let value = v.clone();
                    (f.clone(), Field::Reg { stamp, value })
                })
                .collect();
            items.reverse();
            write_members(m, node, items, remove, Stored::Map).map(Some)
        }
        (Update::FieldAdd { field, by }, None | Some(Stored::Map(_))) => {
            let m = match held {
                Some(Stored::Map(m)) => m,
                _ => &empty_map,
            };
            let added = u64::from(!m.contains(field));
            let (delta, after) = m.incr(node, field, *by)?;
            let (dots, removed_dots) = issued_and_replaced(&delta);
            Ok(Some(Made {
                dots,
                removed_dots,
                ..made(Stored::Map(delta), after, added, 0)
            }))
        }
        (Update::Clear, Some(Stored::Set(s))) => {
            let delta = s.clear();
            let removed = u64::from(!s.is_empty());
            Ok(Some(Made {
                removed_dots: delta.context().dots().collect(),
                ..made(Stored::Set(delta), removed as i64, 0, removed)
            }))
        }
        (Update::Clear, Some(Stored::Map(m))) => {
            let delta = m.clear();
            let removed = u64::from(!m.is_empty());
            Ok(Some(Made {
                removed_dots: delta.context().dots().collect(),
                ..made(Stored::Map(delta), removed as i64, 0, removed)
            }))
        }
        // Nothing held: nothing to remove, nothing to write.
        (Update::Clear, None) => Ok(None),
        (Update::Write { value, ctx, max }, None | Some(Stored::Siblings(_))) => {
            let fresh = Siblings::new();
            let s = match held {
                Some(Stored::Siblings(s)) => s,
                _ => &fresh,
            };
            let existed = !s.is_empty();
            let delta = s.write(node, ctx, value.clone());
            let mut after = s.clone();
            after.join(&delta);
            if after.len() > *max as usize && after.len() > s.len() {
                return Err(UpdateError::TooManySiblings { max: *max });
            }
            let dots = delta.values().map(|(d, _)| *d).collect();
            Ok(Some(Made {
                dots,
                covered: Some(ctx.clone()),
                ..made(
                    Stored::Siblings(delta),
                    after.len() as i64,
                    u64::from(!existed && !after.is_empty()),
                    u64::from(existed && after.is_empty()),
                )
            }))
        }
        _ => Err(UpdateError::WrongType),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn members(s: &[&str]) -> Vec<Vec<u8>> {
        s.iter().map(|m| m.as_bytes().to_vec()).collect()
    }

    fn apply(held: &mut Option<Stored>, node: u64, u: &Update) -> Made {
        let made = make(held.as_ref(), node, 1, u).unwrap().unwrap();
        let mut state = held
            .take()
            .unwrap_or_else(|| made.delta.clone().into_state());
        if state.join_members(&made.delta, false).is_none() {
            if let (Stored::Counter(c), Stored::Counter(d)) = (&mut state, &made.delta) {
                c.join(d);
            }
        }
        *held = Some(state);
        made
    }

    #[test]
    fn set_updates_count_what_they_changed_and_report_their_dots() {
        let mut held = None;
        let a = apply(
            &mut held,
            1,
            &Update::Members {
                add: members(&["x", "y", "x"]),
                remove: vec![],
            },
        );
        assert_eq!((a.int, a.dots.len()), (2, 2));
        let again = apply(
            &mut held,
            1,
            &Update::Members {
                add: members(&["x", "z"]),
                remove: vec![],
            },
        );
        assert_eq!(again.int, 1, "only z is new");
        let rm = apply(
            &mut held,
            1,
            &Update::Members {
                add: vec![],
                remove: members(&["x", "nope"]),
            },
        );
        assert_eq!((rm.int, rm.removed_dots.len()), (1, 1), "the live dot of x");
        let both = make(
            held.as_ref(),
            1,
            1,
            &Update::Members {
                add: members(&["q"]),
                remove: members(&["q"]),
            },
        );
        assert!(matches!(both, Err(UpdateError::Invalid(_))));
        assert_eq!(
            make(held.as_ref(), 1, 1, &Update::Add { by: 1, id: None }),
            Err(UpdateError::WrongType)
        );
        let clear = apply(&mut held, 1, &Update::Clear);
        assert_eq!(clear.int, 1);
        let Some(Stored::Set(s)) = &held else {
            panic!()
        };
        assert!(s.is_empty());
    }

    #[test]
    fn removes_and_deletes_mark_their_delta_with_a_dot_of_their_own() {
        let add = Update::Members {
            add: members(&["x"]),
            remove: vec![],
        };
        let mut here = None;
        let a = apply(&mut here, 1, &add);
        assert_eq!(a.mark, None, "an add is known by the dot it issued");
        // Another replica holds the add but not the remove that follows.
        let behind = here.clone().unwrap();
        let rm = apply(
            &mut here,
            1,
            &Update::Members {
                add: vec![],
                remove: members(&["x"]),
            },
        );
        let mark = rm.mark.expect("a remove issues a mark");
        assert_eq!(mark, Dot::new(1, 2), "one past the replica's own dots");
        let clock: std::collections::BTreeMap<u64, u64> = [(1, 2)].into_iter().collect();
        assert!(here.as_ref().unwrap().context().unwrap().covers(&clock));
        assert!(
            !behind.context().unwrap().covers(&clock),
            "a state without the remove does not meet the session that made it"
        );
        // The mark is in no checker's dots, and the next dot issued comes after it.
        assert!(!rm.removed_dots.contains(&mark));
        let again = apply(&mut here, 1, &add);
        assert_eq!(again.dots, vec![Dot::new(1, 3)]);
        // A remove of nothing held changes nothing and marks nothing.
        let none = apply(
            &mut here,
            1,
            &Update::Members {
                add: vec![],
                remove: members(&["absent"]),
            },
        );
        assert_eq!(none.mark, None);
        // A siblings delete with a context marks its delta too; a write has its own dot.
        let mut sib = None;
        let w = apply(
            &mut sib,
            2,
            &Update::Write {
                value: Some(b"v".to_vec()),
                ctx: Context::new(),
                max: 8,
            },
        );
        assert_eq!(w.mark, None);
        let del = apply(
            &mut sib,
            2,
            &Update::Write {
                value: None,
                ctx: w.dots.iter().copied().collect(),
                max: 8,
            },
        );
        assert_eq!(del.mark, Some(Dot::new(2, 2)));
    }

    #[test]
    fn map_updates_answer_like_redis_hashes() {
        let mut held = None;
        let set = |pairs: &[(&str, &str)]| Update::Fields {
            set: pairs
                .iter()
                .map(|(f, v)| (f.as_bytes().to_vec(), v.as_bytes().to_vec()))
                .collect(),
            remove: vec![],
        };
        assert_eq!(apply(&mut held, 1, &set(&[("a", "1"), ("b", "2")])).int, 2);
        assert_eq!(apply(&mut held, 2, &set(&[("a", "5"), ("c", "x")])).int, 1);
        let incr = Update::FieldAdd {
            field: b"a".to_vec(),
            by: 10,
        };
        assert_eq!(apply(&mut held, 3, &incr).int, 15);
        let Some(Stored::Map(m)) = &held else {
            panic!()
        };
        assert_eq!(m.field(b"a"), Some(b"15".to_vec()));
        assert_eq!(
            make(
                held.as_ref(),
                1,
                1,
                &Update::FieldAdd {
                    field: b"c".to_vec(),
                    by: 1
                }
            ),
            Err(UpdateError::NotInteger)
        );
        let del = apply(
            &mut held,
            1,
            &Update::Fields {
                set: vec![],
                remove: members(&["a", "zz"]),
            },
        );
        assert_eq!(del.int, 1);
        let Some(Stored::Map(m)) = &held else {
            panic!()
        };
        assert_eq!(m.len(), 2);
    }
}
