//! eventual: what even the weakest ordered level promises — values are never invented, and
//! copies converge once faults stop.

use crate::facts::Facts;
use crate::history::LevelKind;
use crate::levels::EVENTUAL;
use crate::properties::{CONVERGENCE, NEVER_INVENTED};
use crate::report::{Row, Verdict};
use crate::Limits;
use std::collections::BTreeMap;

/// Every value a read returned, at any level (every level promises at least this), was written
/// to that key by a write that did not certainly fail and that began before the read ended.
/// Checked = reads that returned a value (a "not found" is never invented).
pub(crate) fn never_invented(facts: &Facts, limits: &Limits) -> Row {
    let mut row = Row::new(EVENTUAL, NEVER_INVENTED);
    for id in facts.acked_reads() {
        if facts.op(id).value.is_some() {
            row.record(judge_invented(facts, id), facts.ops, limits);
        }
    }
    row
}

fn judge_invented(facts: &Facts, read: usize) -> Verdict {
    let op = facts.op(read);
    let value = op.value.as_deref().unwrap_or_default();
    let writer = facts
        .key(&op.key)
        .and_then(|key| key.writers.get(value).copied());
    let violation = |why: &str, ops: Vec<usize>| Verdict::Violation {
        message: format!(
            "read of key {:?} at {} on {} returned {value:?}, {why}",
            op.key, op.level, op.node
        ),
        ops,
    };
    let Some(writer) = writer else {
        return violation("which no write ever wrote to this key", vec![read]);
    };
    let write = facts.op(writer);
    if write.ok == Some(false) {
        violation(
            "which only a write that certainly failed wrote",
            vec![read, writer],
        )
    } else if write.invoke_ns > op.complete_ns {
        violation(
            "before the write of that value had even begun",
            vec![read, writer],
        )
    } else {
        Verdict::Pass
    }
}

/// After healing, each node's last `eventual` read of a key returns the same value on every
/// node. Counted per key: every key in the history is checked (read on two or more nodes after
/// healing) or unknown (fewer, or no heal time given).
pub(crate) fn convergence(facts: &Facts, heal_ns: Option<u64>, limits: &Limits) -> Row {
    let mut row = Row::new(EVENTUAL, CONVERGENCE);
    for (name, key) in &facts.keys {
        let Some(heal_ns) = heal_ns else {
            row.unknown += 1;
            continue;
        };
        // node → its last final eventual read of the key
        let mut last: BTreeMap<&str, usize> = BTreeMap::new();
        for &id in &key.ops {
            let op = facts.op(id);
            let is_final = op.is_read()
                && op.is_acked()
                && op.invoke_ns >= heal_ns
                && *facts.level(id) == LevelKind::Eventual;
            if !is_final {
                continue;
            }
            let newer = |other: usize| {
                let o = facts.op(other);
                (op.invoke_ns, op.complete_ns, id) > (o.invoke_ns, o.complete_ns, other)
            };
            let slot = last.entry(op.node.as_str()).or_insert(id);
            if newer(*slot) {
                *slot = id;
            }
        }
        row.record(judge_converged(facts, name, &last), facts.ops, limits);
    }
    row
}

fn judge_converged(facts: &Facts, key: &str, last: &BTreeMap<&str, usize>) -> Verdict {
    if last.len() < 2 {
        return Verdict::Unknown;
    }
    let values: Vec<Option<&str>> = last
        .values()
        .map(|&id| facts.op(id).value.as_deref())
        .collect();
    if values.windows(2).all(|pair| pair[0] == pair[1]) {
        return Verdict::Pass;
    }
    let seen: Vec<String> = last
        .iter()
        .map(|(node, &id)| {
            let value = facts.op(id).value.as_deref();
            format!(
                "{node}: {}",
                value.map_or_else(|| "not found".to_owned(), |v| format!("{v:?}"))
            )
        })
        .collect();
    Verdict::Violation {
        message: format!(
            "key {key:?}: after healing, nodes' last eventual reads disagree ({})",
            seen.join(", ")
        ),
        ops: last.values().copied().collect(),
    }
}

#[cfg(test)]
mod tests {
    use crate::levels::{EVENTUAL, EVERY_LEVEL};
    use crate::properties::{CONVERGENCE, NEVER_INVENTED, VALUE_MATCHES_POSITION};
    use crate::testkit::*;
    use crate::{check, CheckInput, Limits, Report};

    fn run(ops: Vec<crate::Operation>, heal_ns: Option<u64>) -> Report {
        check(&CheckInput { ops, heal_ns }, &Limits::default()).unwrap()
    }

    #[test]
    fn values_that_were_written_pass() {
        let ops = vec![
            write("a", "v1", 0, 10).at(1).op(),
            write("a", "v2", 20, 30).unknown().op(),
            // Concurrent with its write: fine for an eventual read without a position.
            read("a", Some("v1"), 5, 8).level("eventual").op(),
            read("a", Some("v2"), 40, 50).level("eventual").op(),
            read("a", None, 40, 50).level("eventual").op(),
        ];
        let report = run(ops, None);
        assert_eq!(violated(&report), vec![]);
        assert_eq!(report.row(EVENTUAL, NEVER_INVENTED).unwrap().checked, 2);
    }

    #[test]
    fn invented_values_are_violations() {
        let cases = [
            // never written
            vec![read("a", Some("zz"), 40, 50).level("eventual").op()],
            // written only by a write that certainly failed
            vec![
                write("a", "v1", 0, 10).failed().op(),
                read("a", Some("v1"), 40, 50).level("eventual").op(),
            ],
            // written to another key
            vec![
                write("b", "v1", 0, 10).at(1).op(),
                read("a", Some("v1"), 40, 50).level("eventual").op(),
            ],
            // returned before its write began
            vec![
                read("a", Some("v1"), 0, 5).level("eventual").op(),
                write("a", "v1", 10, 20).at(1).op(),
            ],
        ];
        for (n, ops) in cases.into_iter().enumerate() {
            let bad = ops.iter().find(|op| op.is_read()).cloned().unwrap();
            let report = run(ops, None);
            assert_eq!(
                violated(&report),
                vec![pair(EVENTUAL, NEVER_INVENTED)],
                "case {n}"
            );
            let row = report.row(EVENTUAL, NEVER_INVENTED).unwrap();
            assert_eq!(row.violations[0].property, NEVER_INVENTED);
            assert!(row.violations[0].ops.contains(&bad), "case {n}");
        }
    }

    fn converging() -> Vec<crate::Operation> {
        vec![
            write("a", "v1", 0, 10).at(1).op(),
            write("a", "v2", 20, 30).at(2).op(),
            // before healing n3 may lag
            read("a", Some("v1"), 40, 50)
                .level("eventual")
                .node("n3")
                .at(1)
                .op(),
            // final phase: heal at 100
            read("a", Some("v1"), 100, 110)
                .level("eventual")
                .node("n1")
                .at(1)
                .op(),
            read("a", Some("v2"), 120, 130)
                .level("eventual")
                .node("n1")
                .at(2)
                .op(),
            read("a", Some("v2"), 100, 110)
                .level("eventual")
                .node("n2")
                .at(2)
                .op(),
        ]
    }

    #[test]
    fn converged_nodes_pass() {
        let mut ops = converging();
        ops.push(
            read("a", Some("v2"), 100, 110)
                .level("eventual")
                .node("n3")
                .at(2)
                .op(),
        );
        // a key read on one node only cannot show convergence
        ops.push(
            read("b", None, 100, 110)
                .level("eventual")
                .node("n1")
                .at(2)
                .op(),
        );
        let report = run(ops, Some(100));
        assert_eq!(violated(&report), vec![]);
        let row = report.row(EVENTUAL, CONVERGENCE).unwrap();
        assert_eq!((row.checked, row.unknown), (1, 1));
    }

    #[test]
    fn diverged_nodes_are_a_violation() {
        let mut ops = converging();
        // n3 still serves the old value after healing, at a position that matches it.
        let behind = read("a", Some("v1"), 200, 210)
            .level("eventual")
            .node("n3")
            .at(1)
            .op();
        ops.push(behind.clone());
        let report = run(ops, Some(100));
        assert_eq!(violated(&report), vec![pair(EVENTUAL, CONVERGENCE)]);
        let violation = &report.row(EVENTUAL, CONVERGENCE).unwrap().violations[0];
        assert_eq!(violation.property, CONVERGENCE);
        assert!(violation.ops.contains(&behind));
        assert!(violation.message.contains("n3: \"v1\""));
    }

    #[test]
    fn convergence_without_heal_time_is_unknown() {
        let report = run(converging(), None);
        let row = report.row(EVENTUAL, CONVERGENCE).unwrap();
        assert_eq!((row.checked, row.unknown), (0, 1));
        assert!(!report.has_violations());
        // The other rows are still there, judging nothing.
        assert!(report.row(EVERY_LEVEL, VALUE_MATCHES_POSITION).is_some());
    }
}
