//! strong / linearizable: per key, is there an order of the operations that respects real time
//! and a register's semantics? A Wing–Gong search in Porcupine's form, with shortcuts.
//!
//! Who takes part: writes and deletes that happened or may have happened (`ok` true or null) and
//! acknowledged `strong` reads. An update of unknown outcome never returns: its return is placed
//! at +infinity, so it may take effect anywhere after its start, including after everything
//! else, which is the same as never having happened.
//!
//! First [`proofs`] looks for the common bugs (stale reads, reads of values from the future or
//! from nowhere), which have short proofs. Then [`search`] walks a time-ordered list of call and
//! return events: at a call it may place that operation (the model must accept it); at the return
//! of an operation not yet placed it backtracks, since that operation had to take effect before
//! returning. Placed operations are unlinked from the list (dancing links) so the walk stays
//! short; configurations (placed set, state) already explored are remembered and skipped; the
//! stack is explicit, so its depth is bounded by the heap, not by the thread's stack. A key whose
//! search exceeds [`Limits::linearizable_states_max`] is undecided and counts as unknown.

use crate::facts::{Facts, KeyFacts};
use crate::history::{LevelKind, OpKind};
use crate::levels::STRONG;
use crate::properties::LINEARIZABLE;
use crate::report::Row;
use crate::Limits;
use std::collections::{HashMap, HashSet};

mod proofs;
mod search;

/// The most operations one key's search takes on; a key with more is left undecided. Keeps
/// operation numbers within the memo's 32-bit encoding.
const OPS_PER_KEY_MAX: usize = 1 << 30;

/// Updates that completed just before a blocked operation began, shown with its violation: the
/// states it should have seen.
const WINDOW_PRECEDING_UPDATES: usize = 3;

pub(crate) fn check(facts: &Facts, limits: &Limits) -> Row {
    let mut row = Row::new(STRONG, LINEARIZABLE);
    for (name, key) in &facts.keys {
        let reads = key
            .ops
            .iter()
            .filter(|&&id| is_strong_read(facts, id))
            .count() as u64;
        // Writes alone are always linearizable: each can take effect anywhere in its interval.
        if reads == 0 {
            continue;
        }
        let problem = Problem::new(facts, key);
        if problem.ops.len() > OPS_PER_KEY_MAX {
            row.unknown += reads;
            continue;
        }
        if let Some(proof) = proofs::find(&problem) {
            row.checked += reads;
            let (message, ops) = explain_proof(facts, name, &problem, proof);
            let ops = window(facts, key, &ops, limits.violation_ops_max);
            row.add_violation(message, &ops, facts.ops, limits);
            continue;
        }
        match problem.search(limits.linearizable_states_max) {
            Outcome::Linearizable => row.checked += reads,
            Outcome::Undecided => row.unknown += reads,
            Outcome::NotLinearizable(stuck) => {
                row.checked += reads;
                let (message, ops) = explain(facts, key, name, &problem, stuck);
                let ops = window(facts, key, &ops, limits.violation_ops_max);
                row.add_violation(message, &ops, facts.ops, limits);
            }
        }
    }
    row
}

fn is_strong_read(facts: &Facts, id: usize) -> bool {
    let op = facts.op(id);
    op.is_read() && op.is_acked() && *facts.level(id) == LevelKind::Strong
}

/// Which operations take part: see the module doc. Two kinds of unknown update are dropped
/// because no linearization needs them: a write whose value no strong read returned, and a
/// delete after whose start no strong read returned "not found". Taking such an update out of a
/// valid order leaves it valid (no read sat between it and the next update), and it was
/// optional anyway. This keeps a run with many timeouts from multiplying the search.
fn takes_part(facts: &Facts, observed: &Observed, id: usize) -> bool {
    let op = facts.op(id);
    match (op.op, op.ok) {
        // Never here: `check` refuses histories with adds.
        (OpKind::Add | OpKind::Sadd | OpKind::Srem, _) => false,
        (OpKind::Read, _) => is_strong_read(facts, id),
        (_, Some(true)) => true,
        (_, Some(false)) => false,
        (OpKind::Write, None) => op
            .value
            .as_deref()
            .is_some_and(|v| observed.values.contains(v)),
        (OpKind::Delete, None) => observed
            .last_absent_ns
            .is_some_and(|end_ns| end_ns >= op.invoke_ns),
    }
}

/// What a key's strong reads returned, for [`takes_part`].
struct Observed<'a> {
    values: HashSet<&'a str>,
    /// When the last strong read that returned "not found" ended.
    last_absent_ns: Option<u64>,
}

impl<'a> Observed<'a> {
    fn new(facts: &Facts<'a>, key: &KeyFacts) -> Observed<'a> {
        let mut observed = Observed {
            values: HashSet::new(),
            last_absent_ns: None,
        };
        for &id in key.ops.iter().filter(|&&id| is_strong_read(facts, id)) {
            let op = facts.op(id);
            match op.value.as_deref() {
                Some(value) => {
                    observed.values.insert(value);
                }
                None => {
                    observed.last_absent_ns = observed.last_absent_ns.max(Some(op.complete_ns));
                }
            }
        }
        observed
    }
}

/// The register's state: the write (by its number in the problem) whose value is current, or
/// `None` when the key is absent. Values are unique per key, so a write stands for its value.
type State = Option<u32>;

#[derive(Debug, Clone, Copy)]
enum Act {
    Write,
    Delete,
    /// A read and the state it requires.
    Read(State),
    /// A read of a value no participating write wrote: it can never be placed.
    ReadNever,
}

struct Lop {
    /// The operation's index in the history.
    id: usize,
    act: Act,
    invoke_ns: u64,
    /// `None` for an update of unknown outcome: it never returned.
    complete_ns: Option<u64>,
}

/// One key's operations, numbered by start time, and their call/return events.
struct Problem {
    ops: Vec<Lop>,
    /// Events in time order: (operation number, is the call).
    events: Vec<(u32, bool)>,
    /// For the call event at n, the index of its return event.
    partner: Vec<usize>,
}

/// Where the attempt that got furthest stopped: it had placed `placed` operations, leaving
/// `state`, when the return of operation `blocker` (not placed) came.
#[derive(Debug, Clone, Copy)]
struct Stuck {
    blocker: usize,
    placed: usize,
    state: State,
}

enum Outcome {
    Linearizable,
    NotLinearizable(Stuck),
    Undecided,
}

/// End of the event list.
const NIL: usize = usize::MAX;

impl Problem {
    fn new(facts: &Facts, key: &KeyFacts) -> Problem {
        let observed = Observed::new(facts, key);
        let mut ids: Vec<usize> = key
            .ops
            .iter()
            .copied()
            .filter(|&id| takes_part(facts, &observed, id))
            .collect();
        // Numbering by start time keeps the placed set a dense prefix, which keeps memo keys short.
        ids.sort_by_key(|&id| (facts.op(id).invoke_ns, id));
        let mut number_of: HashMap<&str, u32> = HashMap::new();
        for (n, &id) in ids.iter().enumerate() {
            let op = facts.op(id);
            if let (OpKind::Write, Some(value), Ok(n)) =
                (op.op, op.value.as_deref(), u32::try_from(n))
            {
                number_of.insert(value, n);
            }
        }
        let ops: Vec<Lop> = ids
            .iter()
            .map(|&id| {
                let op = facts.op(id);
                let act = match (op.op, op.value.as_deref()) {
                    // Never here (`takes_part` leaves adds out); a write is the nearest kind.
                    (OpKind::Write | OpKind::Add | OpKind::Sadd | OpKind::Srem, _) => Act::Write,
                    (OpKind::Delete, _) => Act::Delete,
                    (OpKind::Read, None) => Act::Read(None),
                    (OpKind::Read, Some(v)) => match number_of.get(v) {
                        Some(&n) => Act::Read(Some(n)),
                        None => Act::ReadNever,
                    },
                };
                Lop {
                    id,
                    act,
                    invoke_ns: op.invoke_ns,
                    complete_ns: op.ok.map(|_| op.complete_ns),
                }
            })
            .collect();
        // (time, return after call at equal times, operation): equal times overlap, which only
        // ever allows more orders.
        let mut timed: Vec<(u64, bool, u32)> = Vec::with_capacity(ops.len() * 2);
        for (n, lop) in ops.iter().enumerate() {
            let n = u32::try_from(n).unwrap_or(u32::MAX);
            timed.push((lop.invoke_ns, false, n));
            timed.push((lop.complete_ns.unwrap_or(u64::MAX), true, n));
        }
        timed.sort_unstable();
        let events: Vec<(u32, bool)> = timed.iter().map(|&(_, ret, n)| (n, !ret)).collect();
        let mut return_of = vec![NIL; ops.len()];
        for (e, &(n, is_call)) in events.iter().enumerate() {
            if !is_call {
                return_of[n as usize] = e;
            }
        }
        let partner = events
            .iter()
            .map(|&(n, is_call)| if is_call { return_of[n as usize] } else { NIL })
            .collect();
        Problem {
            ops,
            events,
            partner,
        }
    }

    fn search(&self, states_max: u64) -> Outcome {
        search::search(self, states_max)
    }
}

/// Reads that held the state the furthest attempt was stuck in, shown with its violation.
const WINDOW_HOLDING_READS: usize = 3;

/// The message and the most telling operations of a key's violation: the operation that could
/// not be placed in time and, when the state then held a value later reads still returned, the
/// first of those reads (the usual culprit: a stale read keeps an old value needed after a newer
/// write had to take effect).
fn explain(
    facts: &Facts,
    key: &KeyFacts,
    name: &str,
    problem: &Problem,
    stuck: Stuck,
) -> (String, Vec<usize>) {
    let Stuck {
        blocker,
        placed,
        state,
    } = stuck;
    let blocker_id = problem.ops[blocker].id;
    let b = facts.op(blocker_id);
    let held_by = |act: Act| matches!(act, Act::Read(wanted) if wanted == state);
    let mut holders: Vec<usize> = problem
        .ops
        .iter()
        .filter(|lop| held_by(lop.act) && facts.op(lop.id).invoke_ns > b.complete_ns)
        .map(|lop| lop.id)
        .collect();
    holders.sort_by_key(|&id| (facts.op(id).invoke_ns, id));
    holders.truncate(WINDOW_HOLDING_READS);
    let state_writer = state.map(|w| problem.ops[w as usize].id);
    let held = state_writer
        .and_then(|w| facts.op(w).value.as_deref())
        .map_or_else(|| "not found".to_owned(), |v| format!("{v:?}"));
    let mut message = format!(
        "key {name:?}: no order of its operations explains what the strong reads returned. The \
         order that got furthest placed {placed} of {} operations, leaving the key {held}, when \
         the {} by client {} {} [{}..{}] ended without having taken effect",
        problem.ops.len(),
        b.op.as_str(),
        b.client,
        describe_value(b),
        b.invoke_ns,
        b.complete_ns,
    );
    if let Some(&first) = holders.first() {
        let r = facts.op(first);
        message.push_str(&format!(
            "; yet a read by client {} [{}..{}] that began after it ended still returned {held}",
            r.client, r.invoke_ns, r.complete_ns
        ));
    }
    let mut ops = vec![blocker_id];
    ops.extend(holders);
    ops.extend(state_writer);
    if let Some(value) = b.value.as_deref().filter(|_| b.is_read()) {
        ops.extend(key.writers.get(value).copied());
    }
    (message, ops)
}

/// The message and operations of a violation found without searching.
fn explain_proof(
    facts: &Facts,
    name: &str,
    problem: &Problem,
    proof: proofs::Proof,
) -> (String, Vec<usize>) {
    let ops: Vec<usize> = proof.ops().iter().map(|&n| problem.ops[n].id).collect();
    let describe = |id: usize| {
        let op = facts.op(id);
        format!(
            "the {} by client {} {} [{}..{}]",
            op.op.as_str(),
            op.client,
            describe_value(op),
            op.invoke_ns,
            op.complete_ns
        )
    };
    let read = ops.first().map_or_else(String::new, |&r| describe(r));
    let why = match (proof, ops.as_slice()) {
        (proofs::Proof::NeverWritten { .. }, _) => {
            "no write that may have happened wrote that value".to_owned()
        }
        (proofs::Proof::BeforeWrite { .. }, [_, w, ..]) => {
            format!("{} began only after the read ended", describe(*w))
        }
        (proofs::Proof::Superseded { .. }, [_, w, x, ..]) => format!(
            "the value was superseded before the read began ({} began after {} ended, and ended \
             before the read began)",
            describe(*x),
            describe(*w)
        ),
        (proofs::Proof::NotDeleted { .. }, [_, x, ..]) => format!(
            "{} ended with the key present before the read began, and no delete could take \
             effect in between",
            describe(*x)
        ),
        _ => String::new(),
    };
    (format!("key {name:?}: {read} is impossible: {why}"), ops)
}

/// "writing "v"", "deleting", "returning "v"", "returning not found".
fn describe_value(op: &crate::Operation) -> String {
    let value = op
        .value
        .as_deref()
        .map_or_else(|| "not found".to_owned(), |v| format!("{v:?}"));
    match op.op {
        OpKind::Write => format!("writing {value}"),
        OpKind::Delete => "deleting".to_owned(),
        OpKind::Read => format!("returning {value}"),
        OpKind::Add => format!("adding {value}"),
        OpKind::Sadd => format!("adding member {value}"),
        OpKind::Srem => format!("removing member {value}"),
    }
}

/// The operations shown with a violation: `first` (most telling first), then the updates that
/// completed just before the first of them began and those overlapping it, nearest first.
fn window(facts: &Facts, key: &KeyFacts, first: &[usize], limit: usize) -> Vec<usize> {
    let mut picked = first.to_vec();
    let Some(&blocker) = first.first() else {
        return picked;
    };
    let b = facts.op(blocker);
    let updates: Vec<usize> = key
        .ops
        .iter()
        .copied()
        .filter(|&id| facts.op(id).is_update() && facts.op(id).ok != Some(false))
        .collect();
    let mut preceding: Vec<usize> = updates
        .iter()
        .copied()
        .filter(|&id| facts.op(id).ok == Some(true) && facts.op(id).complete_ns < b.invoke_ns)
        .collect();
    preceding.sort_by_key(|&id| std::cmp::Reverse(facts.op(id).complete_ns));
    picked.extend(preceding.into_iter().take(WINDOW_PRECEDING_UPDATES));
    let mut overlapping: Vec<usize> = updates
        .into_iter()
        .filter(|&id| {
            let op = facts.op(id);
            op.invoke_ns <= b.complete_ns && (op.ok.is_none() || op.complete_ns >= b.invoke_ns)
        })
        .collect();
    overlapping.sort_by_key(|&id| facts.op(id).invoke_ns.abs_diff(b.invoke_ns));
    picked.extend(overlapping);
    picked.truncate(limit.max(1));
    picked
}

#[cfg(test)]
mod tests {
    use super::{proofs, Outcome, Problem};
    use crate::facts::Facts;
    use crate::levels::STRONG;
    use crate::properties::LINEARIZABLE;
    use crate::testkit::*;
    use crate::{check, CheckInput, Limits};

    fn lin(ops: Vec<crate::Operation>) -> crate::Row {
        lin_with(ops, &Limits::default())
    }

    fn lin_with(ops: Vec<crate::Operation>, limits: &Limits) -> crate::Row {
        let report = check(&CheckInput { ops, heal_ns: None }, limits).unwrap();
        report.row(STRONG, LINEARIZABLE).unwrap().clone()
    }

    #[test]
    fn sequential_history_passes() {
        let row = lin(vec![
            read("k", None, 0, 5).at(0).op(),
            write("k", "a", 10, 20).at(1).op(),
            read("k", Some("a"), 30, 40).at(1).op(),
            delete("k", 50, 60).at(2).op(),
            read("k", None, 70, 80).at(2).op(),
        ]);
        assert_eq!((row.checked, row.violations_total, row.unknown), (3, 0, 0));
    }

    #[test]
    fn stale_read_after_completed_write_is_a_violation() {
        let ops = vec![
            write("k", "a", 0, 10).at(1).op(),
            write("k", "b", 20, 30).at(2).op(),
            // Served from a copy that had not applied index 2: position and value agree, so only
            // linearizability can catch it.
            read("k", Some("a"), 40, 50).at(1).op(),
        ];
        let stale = ops[2].clone();
        let row = lin(ops);
        assert_eq!(row.violations_total, 1);
        assert_eq!(row.violations[0].property, LINEARIZABLE);
        assert!(row.violations[0].ops.contains(&stale));
        assert!(row.violations[0].message.contains("\"k\""));
    }

    #[test]
    fn overlapping_write_and_read_may_go_either_way() {
        for seen in [None, Some("a")] {
            let row = lin(vec![
                write("k", "a", 10, 30).at(1).op(),
                read("k", seen, 15, 25).at(u64::from(seen.is_some())).op(),
            ]);
            assert_eq!((row.checked, row.violations_total), (1, 0), "{seen:?}");
        }
    }

    #[test]
    fn unknown_write_that_was_read_passes() {
        let row = lin(vec![
            write("k", "a", 0, 10).at(1).op(),
            write("k", "b", 20, 30).unknown().op(),
            read("k", Some("b"), 100, 110).op(),
            read("k", Some("b"), 120, 130).op(),
        ]);
        assert_eq!((row.checked, row.violations_total, row.unknown), (2, 0, 0));
    }

    #[test]
    fn unknown_write_never_read_passes() {
        let row = lin(vec![
            write("k", "a", 0, 10).at(1).op(),
            write("k", "b", 20, 30).unknown().op(),
            delete("k", 25, 35).unknown().op(),
            read("k", Some("a"), 100, 110).op(),
        ]);
        assert_eq!((row.checked, row.violations_total, row.unknown), (1, 0, 0));
    }

    #[test]
    fn unknown_write_cannot_take_effect_twice() {
        // "b" was seen, then "a" again, then "b" again: one write of "b" cannot explain both.
        let ops = vec![
            write("k", "a", 0, 10).at(1).op(),
            write("k", "b", 20, 30).unknown().op(),
            read("k", Some("b"), 40, 50).op(),
            read("k", Some("a"), 60, 70).op(),
            read("k", Some("b"), 80, 90).op(),
        ];
        let row = lin(ops);
        assert_eq!(row.violations_total, 1);
    }

    #[test]
    fn read_of_a_value_written_after_it_completed_is_a_violation() {
        let ops = vec![
            read("k", Some("a"), 0, 10).op(),
            write("k", "a", 20, 30).at(1).op(),
        ];
        let early = ops[0].clone();
        let row = lin(ops);
        assert_eq!(row.violations_total, 1);
        assert!(row.violations[0].ops.contains(&early));
        assert!(row.violations[0].message.contains("\"a\""));
    }

    #[test]
    fn read_of_a_failed_write_is_a_violation() {
        let row = lin(vec![
            write("k", "a", 0, 10).failed().op(),
            read("k", Some("a"), 20, 30).op(),
        ]);
        assert_eq!(row.violations_total, 1);
    }

    #[test]
    fn budget_exceeded_is_unknown_not_pass() {
        let ops = vec![
            write("k", "a", 0, 100).at(1).op(),
            write("k", "b", 0, 100).at(2).op(),
            write("k", "c", 0, 100).at(3).op(),
            read("k", Some("a"), 0, 100).op(),
            read("k", Some("c"), 200, 300).op(),
        ];
        let tiny = Limits {
            linearizable_states_max: 3,
            ..Limits::default()
        };
        let row = lin_with(ops.clone(), &tiny);
        assert_eq!((row.checked, row.violations_total, row.unknown), (0, 0, 2));
        // With room to search, the same history is decided.
        let row = lin(ops);
        assert_eq!((row.checked, row.violations_total, row.unknown), (2, 0, 0));
    }

    #[test]
    fn other_levels_do_not_take_part() {
        let row = lin(vec![
            write("k", "a", 0, 10).at(1).op(),
            write("k", "b", 20, 30).at(2).op(),
            read("k", Some("a"), 40, 50).level("eventual").at(1).op(),
        ]);
        assert_eq!((row.checked, row.violations_total, row.unknown), (0, 0, 0));
    }

    #[test]
    fn keys_are_judged_separately() {
        let ops = vec![
            write("x", "a", 0, 10).at(1).op(),
            write("y", "b", 20, 30).at(2).op(),
            read("x", Some("a"), 40, 50).op(),
            read("y", Some("b"), 40, 50).op(),
        ];
        let row = lin(ops);
        assert_eq!((row.checked, row.violations_total), (2, 0));
    }

    /// A register history from a random simulation: operations take effect at a random instant
    /// inside their interval, so it is linearizable by construction, with the positions a
    /// correct store would report. Some writes time out (unknown), half of those without taking
    /// effect. Returns the history and the last index used.
    fn simulated(ops_max: usize, clients: u64, seed: u64) -> (Vec<crate::Operation>, u64) {
        let mut rng = Rng(seed);
        let mut client_free_ns = vec![0u64; clients as usize];
        // (effect time, history index)
        let mut planned: Vec<(u64, usize)> = Vec::new();
        let mut ops = Vec::new();
        for n in 0..ops_max {
            let client = (rng.next() % clients) as usize;
            let invoke = client_free_ns[client] + rng.next() % 1_000;
            let complete = invoke + 1 + rng.next() % 5_000;
            let effect = invoke + rng.next() % (complete - invoke);
            client_free_ns[client] = complete;
            let roll = rng.next() % 10;
            let b = if roll < 4 {
                let b = write("k", &format!("v{n}"), invoke, complete);
                if rng.next().is_multiple_of(10) {
                    if rng.next().is_multiple_of(2) {
                        ops.push(b.unknown().op());
                        continue; // timed out and never took effect
                    }
                    b.unknown()
                } else {
                    b
                }
            } else if roll < 5 {
                delete("k", invoke, complete)
            } else {
                read("k", None, invoke, complete)
            };
            planned.push((effect, ops.len()));
            ops.push(b.client(client as u64).op());
        }
        planned.sort_unstable();
        let mut value: Option<String> = None;
        let mut index = 0;
        for (_, id) in planned {
            let op = &mut ops[id];
            match op.op {
                crate::OpKind::Write => {
                    value = op.value.clone();
                    index += 1;
                }
                crate::OpKind::Delete => {
                    value = None;
                    index += 1;
                }
                crate::OpKind::Read => op.value = value.clone(),
                crate::OpKind::Add | crate::OpKind::Sadd | crate::OpKind::Srem => {
                    unreachable!("the generator makes no adds")
                }
            }
            if op.is_acked() {
                op.position = Some(pos(0, index));
            }
        }
        (ops, index)
    }

    #[test]
    fn large_concurrent_history_is_decided() {
        for seed in 1..=3 {
            let (ops, _) = simulated(2_000, 50, seed);
            let reads = ops.iter().filter(|op| op.is_read()).count() as u64;
            let report = check(&CheckInput { ops, heal_ns: None }, &Limits::default()).unwrap();
            let row = report.row(STRONG, LINEARIZABLE).unwrap();
            assert_eq!(
                (row.checked, row.violations_total, row.unknown),
                (reads, 0, 0),
                "seed {seed}"
            );
            // The simulated store is correct at every other level too.
            assert!(!report.has_violations(), "seed {seed}:\n{report}");
        }
    }

    #[test]
    fn large_concurrent_history_with_one_stale_read_is_caught() {
        let (mut ops, last_index) = simulated(600, 20, 7);
        // Long after everything: a write, then a read returning the first value ever written.
        let first = ops
            .iter()
            .find(|op| op.op == crate::OpKind::Write && op.is_acked())
            .and_then(|op| op.value.clone());
        let last_ns = ops.iter().map(|op| op.complete_ns).max().unwrap_or(0);
        ops.push(
            write("k", "final", last_ns + 10, last_ns + 20)
                .at(last_index + 1)
                .op(),
        );
        let stale = read("k", first.as_deref(), last_ns + 30, last_ns + 40).op();
        ops.push(stale.clone());
        let row = lin(ops);
        assert_eq!(row.violations_total, 1);
        assert!(row.violations[0].ops.contains(&stale));
        assert!(row.violations[0].ops.len() <= Limits::default().violation_ops_max);
    }

    #[test]
    fn direct_proofs_name_the_bad_read_and_its_evidence() {
        let w_a = write("k", "a", 0, 10).at(1).op();
        let w_b = write("k", "b", 20, 30).at(2).op();
        let cases = [
            // superseded, by an update
            (
                vec![w_a.clone(), w_b.clone(), read("k", Some("a"), 40, 50).op()],
                "superseded",
            ),
            // superseded, by a read of another value
            (
                vec![
                    write("k", "a", 0, 10).at(1).op(),
                    write("k", "b", 0, 50).at(2).op(),
                    read("k", Some("b"), 20, 30).op(),
                    read("k", Some("a"), 40, 50).op(),
                ],
                "superseded",
            ),
            // not found after a write, with no delete
            (vec![w_a.clone(), read("k", None, 20, 30).op()], "no delete"),
            // from the future
            (
                vec![
                    read("k", Some("a"), 0, 5).op(),
                    write("k", "a", 10, 20).at(1).op(),
                ],
                "only after",
            ),
            // from nowhere
            (
                vec![w_a.clone(), read("k", Some("zz"), 20, 30).op()],
                "no write",
            ),
        ];
        for (ops, phrase) in cases {
            let bad = ops.iter().rfind(|op| op.is_read()).cloned().unwrap();
            let bad = if phrase == "only after" {
                ops[0].clone()
            } else {
                bad
            };
            let row = lin(ops);
            assert_eq!(row.violations_total, 1, "{phrase}");
            let violation = &row.violations[0];
            assert!(violation.message.contains(phrase), "{}", violation.message);
            assert!(violation.ops.contains(&bad), "{phrase}");
        }
        // A delete that may fall between the write and the read explains "not found".
        for delete_op in [
            delete("k", 5, 25).at(2).op(),
            delete("k", 5, 25).unknown().op(),
        ] {
            let row = lin(vec![w_a.clone(), delete_op, read("k", None, 20, 30).op()]);
            assert_eq!((row.checked, row.violations_total), (1, 0));
        }
    }

    #[test]
    fn search_alone_catches_a_stale_read() {
        // The direct proofs would find this first; the search must not depend on them.
        let ops = vec![
            write("k", "a", 0, 10).at(1).op(),
            write("k", "b", 20, 30).at(2).op(),
            read("k", Some("a"), 40, 50).op(),
        ];
        let facts = Facts::build(&ops).unwrap();
        let problem = Problem::new(&facts, facts.key("k").unwrap());
        match problem.search(u64::MAX) {
            Outcome::NotLinearizable(stuck) => {
                let (message, shown) =
                    super::explain(&facts, facts.key("k").unwrap(), "k", &problem, stuck);
                assert!(shown.contains(&2), "{shown:?}");
                assert!(message.contains("still returned \"a\""), "{message}");
                assert!(!message.contains("  "), "{message}");
            }
            _ => panic!("the search accepted a stale read"),
        }
    }

    /// The obvious definition, by brute force over every order: the reference the search is
    /// compared with. Operations as (invoke, complete or None if unknown, kind, value).
    fn brute_force(ops: &[crate::Operation]) -> bool {
        let lops: Vec<&crate::Operation> = ops
            .iter()
            .filter(|op| {
                if op.is_read() {
                    op.is_acked()
                } else {
                    op.ok != Some(false)
                }
            })
            .collect();
        fn go(lops: &[&crate::Operation], placed: &mut Vec<bool>, state: Option<String>) -> bool {
            let definite_left = lops
                .iter()
                .zip(placed.iter())
                .any(|(op, &p)| !p && op.ok.is_some());
            if !definite_left {
                return true; // leftover unknown updates never happened
            }
            for c in 0..lops.len() {
                if placed[c] {
                    continue;
                }
                // Everything that completed before c began must already be placed.
                let blocked = lops.iter().enumerate().any(|(o, op)| {
                    o != c && !placed[o] && op.ok.is_some() && op.complete_ns < lops[c].invoke_ns
                });
                if blocked {
                    continue;
                }
                let next = match lops[c].op {
                    crate::OpKind::Write => lops[c].value.clone(),
                    crate::OpKind::Delete => None,
                    crate::OpKind::Read if lops[c].value == state => state.clone(),
                    crate::OpKind::Read
                    | crate::OpKind::Add
                    | crate::OpKind::Sadd
                    | crate::OpKind::Srem => continue,
                };
                placed[c] = true;
                if go(lops, placed, next) {
                    return true;
                }
                placed[c] = false;
            }
            false
        }
        go(&lops, &mut vec![false; lops.len()], None)
    }

    fn random_small_history(rng: &mut Rng) -> Vec<crate::Operation> {
        let count = 2 + (rng.next() % 6) as usize;
        let mut ops = Vec::new();
        let mut index = 0;
        for n in 0..count {
            let invoke = rng.next() % 20;
            let complete = invoke + rng.next() % 8;
            let ok = match rng.next() % 6 {
                0 => None,
                1 => Some(false),
                _ => Some(true),
            };
            let b = match rng.next() % 5 {
                0 | 1 => write("k", &format!("v{n}"), invoke, complete),
                2 => delete("k", invoke, complete),
                _ => {
                    // a value written by someone, or never written, or not found
                    let value = match rng.next() % 4 {
                        0 => None,
                        1 => Some("never".to_owned()),
                        _ => Some(format!("v{}", rng.next() % count as u64)),
                    };
                    ops.push(read("k", value.as_deref(), invoke, complete).op());
                    continue;
                }
            };
            ops.push(match ok {
                None => b.unknown().op(),
                Some(false) => b.failed().op(),
                Some(true) => {
                    index += 1;
                    b.at(index).op()
                }
            });
        }
        ops
    }

    #[test]
    fn agrees_with_brute_force_on_small_histories() {
        let mut rng = Rng(2026);
        let (mut yes, mut no) = (0, 0);
        for case in 0..5_000 {
            let ops = random_small_history(&mut rng);
            if !ops.iter().any(|op| op.is_read()) {
                continue;
            }
            let want = brute_force(&ops);
            let row = lin(ops.clone());
            let got = row.violations_total == 0;
            assert_eq!(row.unknown, 0);
            assert_eq!(got, want, "case {case}: {ops:#?}");
            // The search alone must agree too, and the direct proof must never fire wrongly.
            let facts = Facts::build(&ops).unwrap();
            let key = facts.key("k").unwrap();
            let problem = Problem::new(&facts, key);
            let searched = matches!(problem.search(u64::MAX), Outcome::Linearizable);
            assert_eq!(searched, want, "search, case {case}: {ops:#?}");
            if proofs::find(&problem).is_some() {
                assert!(!want, "direct proof, case {case}: {ops:#?}");
            }
            if want {
                yes += 1;
            } else {
                no += 1;
            }
        }
        // Both verdicts were exercised often enough to mean something.
        assert!(yes > 500 && no > 500, "{yes} linearizable, {no} not");
    }
}
