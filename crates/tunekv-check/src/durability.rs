//! durability / no acknowledged write lost: after healing (every crashed node restarted, every
//! partition repaired), the last strong read of each key shows the newest acknowledged update
//! to it, or something newer still.
//!
//! Counted per key, over keys with at least one acknowledged update (a key nobody was promised
//! anything about cannot lose a promise). Unknown: no heal time, no final strong read, or a
//! final value from an update of unknown outcome (its index, and so whether it came after the
//! newest acknowledged one, is unknown).

use crate::facts::{Facts, KeyFacts};
use crate::history::{LevelKind, OpKind};
use crate::levels::DURABILITY;
use crate::properties::NO_ACKED_WRITE_LOST;
use crate::report::{Row, Verdict};
use crate::Limits;

pub(crate) fn check(facts: &Facts, heal_ns: Option<u64>, limits: &Limits) -> Row {
    let mut row = Row::new(DURABILITY, NO_ACKED_WRITE_LOST);
    for (name, key) in &facts.keys {
        let Some(&(newest_index, newest)) = key.acked.last() else {
            continue;
        };
        let Some(heal_ns) = heal_ns else {
            row.unknown += 1;
            continue;
        };
        let Some(read) = final_strong_read(facts, key, heal_ns) else {
            row.unknown += 1;
            continue;
        };
        let verdict = judge(facts, name, key, read, (newest_index, newest));
        row.record(verdict, facts.ops, limits);
    }
    row
}

/// The key's last acknowledged strong read begun at or after healing.
fn final_strong_read(facts: &Facts, key: &KeyFacts, heal_ns: u64) -> Option<usize> {
    key.ops
        .iter()
        .copied()
        .filter(|&id| {
            let op = facts.op(id);
            op.is_read()
                && op.is_acked()
                && op.invoke_ns >= heal_ns
                && *facts.level(id) == LevelKind::Strong
        })
        .max_by_key(|&id| (facts.op(id).invoke_ns, facts.op(id).complete_ns, id))
}

fn judge(
    facts: &Facts,
    name: &str,
    key: &KeyFacts,
    read: usize,
    (newest_index, newest): (u64, usize),
) -> Verdict {
    let op = facts.op(read);
    let lost = |why: String, mut ops: Vec<usize>| {
        ops.splice(0..0, [read, newest]);
        Verdict::Violation {
            message: format!(
                "key {name:?}: the final strong read returned {}, {why}; the newest acknowledged \
                 update was the {} at index {newest_index}",
                op.value
                    .as_deref()
                    .map_or_else(|| "not found".to_owned(), |v| format!("{v:?}")),
                facts.op(newest).op.as_str(),
            ),
            ops,
        }
    };
    let Some(value) = op.value.as_deref() else {
        if facts.op(newest).op == OpKind::Delete {
            return Verdict::Pass;
        }
        // Only a delete after the newest write explains "not found"; one of unknown outcome
        // that began before the read ended might be it.
        let maybe = key
            .unknown
            .iter()
            .any(|&u| facts.op(u).op == OpKind::Delete && facts.op(u).invoke_ns <= op.complete_ns);
        return if maybe {
            Verdict::Unknown
        } else {
            lost("but no delete followed that write".to_owned(), vec![])
        };
    };
    let Some(&writer) = key.writers.get(value) else {
        return lost("a value never written to this key".to_owned(), vec![]);
    };
    match facts.op(writer).ok {
        None => Verdict::Unknown,
        Some(false) => lost(
            "a value only a certainly failed write wrote".to_owned(),
            vec![writer],
        ),
        Some(true) => {
            let index = facts.position(writer).map_or(0, |p| p.index);
            if index >= newest_index {
                Verdict::Pass
            } else {
                lost(
                    format!("the value of an older write at index {index}"),
                    vec![writer],
                )
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::levels::{DURABILITY, STRONG};
    use crate::properties::{LINEARIZABLE, NO_ACKED_WRITE_LOST};
    use crate::testkit::*;
    use crate::{check, CheckInput, Limits, Report};

    fn run(ops: Vec<crate::Operation>, heal_ns: Option<u64>) -> Report {
        check(&CheckInput { ops, heal_ns }, &Limits::default()).unwrap()
    }

    fn history() -> Vec<crate::Operation> {
        vec![
            write("a", "v1", 0, 10).at(1).op(),
            write("a", "v2", 20, 30).at(2).op(),
            write("b", "w1", 0, 10).at(3).op(),
            delete("b", 20, 30).at(4).op(),
            write("c", "x1", 0, 10).at(5).op(),
            write("c", "x2", 20, 30).unknown().op(),
        ]
    }

    #[test]
    fn surviving_writes_pass() {
        let mut ops = history();
        ops.push(read("a", Some("v2"), 100, 110).op());
        ops.push(read("b", None, 100, 110).op());
        // An unknown write that won: its place is unknown, and so is the verdict.
        ops.push(read("c", Some("x2"), 100, 110).op());
        let report = run(ops, Some(100));
        assert_eq!(violated(&report), vec![]);
        let row = report.row(DURABILITY, NO_ACKED_WRITE_LOST).unwrap();
        assert_eq!((row.checked, row.unknown), (2, 1));
    }

    #[test]
    fn lost_write_is_a_violation() {
        let mut ops = history();
        // Before healing the key showed v2; after a crash and restart it shows v1.
        ops.push(read("a", Some("v2"), 40, 50).level("eventual").at(2).op());
        let final_read = read("a", Some("v1"), 100, 110).level("strong").op();
        ops.push(final_read.clone());
        let report = run(ops, Some(100));
        // A strong read of a lost write is also not linearizable.
        assert_eq!(
            violated(&report),
            vec![
                pair(STRONG, LINEARIZABLE),
                pair(DURABILITY, NO_ACKED_WRITE_LOST)
            ]
        );
        let row = report.row(DURABILITY, NO_ACKED_WRITE_LOST).unwrap();
        assert_eq!(row.violations[0].property, NO_ACKED_WRITE_LOST);
        assert!(row.violations[0].ops.contains(&final_read));
        assert!(row.violations[0].message.contains("index 1"));
    }

    #[test]
    fn lost_write_behind_a_not_found_is_a_violation() {
        let mut ops = history();
        ops.push(read("a", None, 100, 110).op());
        let report = run(ops, Some(100));
        assert_eq!(
            report
                .row(DURABILITY, NO_ACKED_WRITE_LOST)
                .unwrap()
                .violations_total,
            1
        );
    }

    #[test]
    fn no_final_read_or_heal_time_is_unknown() {
        let mut ops = history();
        ops.push(read("a", Some("v2"), 50, 60).op()); // before healing: not final
        let report = run(ops.clone(), Some(100));
        let row = report.row(DURABILITY, NO_ACKED_WRITE_LOST).unwrap();
        assert_eq!((row.checked, row.unknown), (0, 3));
        let report = run(ops, None);
        let row = report.row(DURABILITY, NO_ACKED_WRITE_LOST).unwrap();
        assert_eq!((row.checked, row.unknown), (0, 3));
    }
}
