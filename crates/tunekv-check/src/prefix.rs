//! value matches position: a read served at index `i` returns the key's state after exactly
//! the shard's first `i` entries — which is what a consistent prefix means for one key.
//!
//! The state at `i` is that of the acknowledged update to the key with the largest index ≤ `i`
//! (absent if none, or if it was a delete). Updates of unknown outcome have no known index: a
//! verdict that needs one of them to sit at or below `i` is unknown, unless the unknown update
//! provably came too late (its index is above every index committed before it began, and those
//! already reach `i`). Checked = reads with a position; a read without one is unknown.

use crate::facts::Facts;
use crate::history::{LevelKind, OpKind};
use crate::levels::{CONSISTENT_PREFIX, EVERY_LEVEL};
use crate::properties::VALUE_MATCHES_POSITION;
use crate::report::{Row, Verdict};
use crate::Limits;

/// `[consistent_prefix reads, reads at every level]`.
pub(crate) fn check(facts: &Facts, limits: &Limits) -> [Row; 2] {
    let mut prefix_row = Row::new(CONSISTENT_PREFIX, VALUE_MATCHES_POSITION);
    let mut every_row = Row::new(EVERY_LEVEL, VALUE_MATCHES_POSITION);
    for id in facts.acked_reads() {
        let verdict = judge(facts, id);
        if *facts.level(id) == LevelKind::ConsistentPrefix {
            prefix_row.record(verdict.clone(), facts.ops, limits);
        }
        every_row.record(verdict, facts.ops, limits);
    }
    [prefix_row, every_row]
}

fn judge(facts: &Facts, read: usize) -> Verdict {
    let op = facts.op(read);
    let (Some(p), Some(key)) = (facts.position(read), facts.key(&op.key)) else {
        return Verdict::Unknown;
    };
    let i = p.index;
    let current = key.acked_at(i);
    let violation = |why: String, mut ops: Vec<usize>| {
        ops.insert(0, read);
        Verdict::Violation {
            message: format!(
                "read of key {:?} at {} served at index {i} on shard {} returned {}: {why}",
                op.key,
                op.level,
                p.shard,
                op.value
                    .as_deref()
                    .map_or_else(|| "not found".to_owned(), |v| format!("{v:?}")),
            ),
            ops,
        }
    };
    let Some(value) = op.value.as_deref() else {
        // Not found: right if nothing, or a delete, set the state at i.
        return match current {
            None => Verdict::Pass,
            Some((_, update)) if facts.op(update).op == OpKind::Delete => Verdict::Pass,
            Some((index, update)) => {
                let unknown_delete = key.unknown.iter().any(|&u| {
                    facts.op(u).op == OpKind::Delete && facts.unknown_could_precede(u, i, read)
                });
                if unknown_delete {
                    Verdict::Unknown
                } else {
                    violation(
                        format!("the key held the value written at index {index}"),
                        vec![update],
                    )
                }
            }
        };
    };
    let Some(&writer) = key.writers.get(value) else {
        return violation(
            "no write ever wrote this value to this key".to_owned(),
            vec![],
        );
    };
    match facts.op(writer).ok {
        Some(false) => violation(
            "the only write of this value certainly failed".to_owned(),
            vec![writer],
        ),
        None if facts.unknown_could_precede(writer, i, read) => Verdict::Unknown,
        None => violation(
            format!(
                "its write (outcome unknown) began after index {} had committed, so it cannot \
                 be at or below index {i}",
                facts.unknown_index_floor(writer)
            ),
            vec![writer],
        ),
        Some(true) => {
            let written = facts.position(writer).map_or(0, |w| w.index);
            match current {
                _ if written > i => violation(
                    format!("it was committed later, at index {written}: a read of the future"),
                    vec![writer],
                ),
                Some((index, update)) if update != writer => violation(
                    format!(
                        "it was written at index {written}, but index {index} (≤ {i}) updated the \
                         key after it"
                    ),
                    vec![writer, update],
                ),
                _ => Verdict::Pass,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::levels::{CONSISTENT_PREFIX, EVENTUAL, EVERY_LEVEL};
    use crate::properties::{NEVER_INVENTED, VALUE_MATCHES_POSITION};
    use crate::testkit::*;

    /// Shard 0: 1 "a" writes v1, 2 "b" writes w1, 3 "a" writes v2, 4 "a" is deleted.
    fn writes() -> Vec<crate::Operation> {
        vec![
            write("a", "v1", 0, 10).at(1).op(),
            write("b", "w1", 20, 30).at(2).op(),
            write("a", "v2", 40, 50).at(3).op(),
            delete("a", 60, 70).at(4).op(),
        ]
    }

    fn prefix_read(value: Option<&str>, index: u64) -> crate::Operation {
        read("a", value, 100, 110)
            .level("consistent_prefix")
            .at(index)
            .op()
    }

    #[test]
    fn reads_matching_their_positions_pass() {
        let mut ops = writes();
        for (value, index) in [
            (None, 0),
            (Some("v1"), 1),
            (Some("v1"), 2),
            (Some("v2"), 3),
            (None, 4),
            (None, 9),
        ] {
            ops.push(prefix_read(value, index));
        }
        let report = run(ops);
        assert_eq!(violated(&report), vec![]);
        let row = report
            .row(CONSISTENT_PREFIX, VALUE_MATCHES_POSITION)
            .unwrap();
        assert_eq!((row.checked, row.unknown), (6, 0));
        let row = report.row(EVERY_LEVEL, VALUE_MATCHES_POSITION).unwrap();
        assert_eq!((row.checked, row.unknown), (6, 0));
    }

    #[test]
    fn a_gap_is_a_violation() {
        // Served at index 3 but returned v1: index 3's write is missing from the state.
        let mut ops = writes();
        let gap = prefix_read(Some("v1"), 3);
        ops.push(gap.clone());
        let report = run(ops);
        assert_eq!(
            violated(&report),
            vec![
                pair(CONSISTENT_PREFIX, VALUE_MATCHES_POSITION),
                pair(EVERY_LEVEL, VALUE_MATCHES_POSITION)
            ]
        );
        let violation = &report
            .row(CONSISTENT_PREFIX, VALUE_MATCHES_POSITION)
            .unwrap()
            .violations[0];
        assert_eq!(violation.property, VALUE_MATCHES_POSITION);
        assert!(violation.ops.contains(&gap));
        assert!(violation.message.contains("index 3"));
    }

    #[test]
    fn reading_the_future_is_a_violation() {
        let mut ops = writes();
        ops.push(prefix_read(Some("v2"), 2));
        assert_eq!(violated(&run(ops)).len(), 2);
    }

    #[test]
    fn not_found_while_a_value_was_there_is_a_violation() {
        let mut ops = writes();
        ops.push(prefix_read(None, 3));
        assert_eq!(violated(&run(ops)).len(), 2);
    }

    #[test]
    fn other_levels_count_only_in_the_every_level_row() {
        let mut ops = writes();
        ops.push(read("a", Some("v1"), 100, 110).level("eventual").at(3).op());
        let report = run(ops);
        assert_eq!(
            violated(&report),
            vec![pair(EVERY_LEVEL, VALUE_MATCHES_POSITION)]
        );
        assert_eq!(
            report
                .row(CONSISTENT_PREFIX, VALUE_MATCHES_POSITION)
                .unwrap()
                .checked,
            0
        );
    }

    #[test]
    fn unknown_writes_make_unknown_verdicts() {
        let mut ops = writes();
        // "v3" timed out after index 4 was committed; it may sit at 5.
        ops.push(write("a", "v3", 80, 90).unknown().op());
        ops.push(prefix_read(Some("v3"), 5));
        // A timed-out delete of "b" may sit between index 2 and 6.
        ops.push(delete("b", 80, 90).unknown().op());
        ops.push(
            read("b", None, 100, 110)
                .level("consistent_prefix")
                .at(6)
                .op(),
        );
        let report = run(ops);
        assert_eq!(violated(&report), vec![]);
        let row = report
            .row(CONSISTENT_PREFIX, VALUE_MATCHES_POSITION)
            .unwrap();
        assert_eq!((row.checked, row.unknown), (0, 2));
    }

    #[test]
    fn unknown_write_read_before_it_could_commit_is_a_violation() {
        let mut ops = writes();
        // Began after index 4 committed, so its index is at least 5; a state at 4 cannot hold it.
        ops.push(write("a", "v3", 80, 90).unknown().op());
        ops.push(prefix_read(Some("v3"), 4));
        assert_eq!(violated(&run(ops)).len(), 2);
    }

    #[test]
    fn invented_value_is_a_violation_here_too() {
        let mut ops = writes();
        ops.push(prefix_read(Some("nobody"), 3));
        let report = run(ops);
        assert_eq!(
            violated(&report),
            vec![
                pair(CONSISTENT_PREFIX, VALUE_MATCHES_POSITION),
                pair(EVENTUAL, NEVER_INVENTED),
                pair(EVERY_LEVEL, VALUE_MATCHES_POSITION)
            ]
        );
    }
}
