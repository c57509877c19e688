//! The session guarantees, judged per session and per shard from positions.
//!
//! "Earlier" means completed before the judged operation began: a session's concurrent
//! operations (two threads sharing a token) promise nothing about each other. Operations without
//! a session are not judged. Read rows count reads (a read without a position is unknown);
//! write rows count acknowledged session writes and deletes.

use crate::facts::{Completed, CompletedMax, Facts};
use crate::history::LevelKind;
use crate::levels::{MONOTONIC_READS, READ_YOUR_WRITES, SESSION};
use crate::properties;
use crate::report::{Row, Verdict};
use crate::Limits;
use std::collections::BTreeMap;

/// A session's acknowledged operations on one shard, by completion time.
type PerSession<'a> = BTreeMap<(&'a str, u32), CompletedMax>;

/// Rows, in order: read_your_writes, monotonic_reads, and session's read your writes,
/// monotonic reads, monotonic writes and writes follow reads.
pub(crate) fn check(facts: &Facts, limits: &Limits) -> [Row; 6] {
    let writes = by_session(facts, |id| facts.op(id).is_update());
    let reads = by_session(facts, |id| facts.op(id).is_read());
    let mut ryw = Row::new(READ_YOUR_WRITES, properties::READ_YOUR_WRITES);
    let mut mr = Row::new(MONOTONIC_READS, properties::MONOTONIC_READS);
    let mut s_ryw = Row::new(SESSION, properties::READ_YOUR_WRITES);
    let mut s_mr = Row::new(SESSION, properties::MONOTONIC_READS);
    let mut s_mw = Row::new(SESSION, properties::MONOTONIC_WRITES);
    let mut s_wfr = Row::new(SESSION, properties::WRITES_FOLLOW_READS);
    for id in 0..facts.ops.len() {
        let op = facts.op(id);
        let Some(session) = op.session.as_deref() else {
            continue;
        };
        if !op.is_acked() {
            continue;
        }
        if op.is_update() {
            let mw = judge_write(facts, id, session, &writes, "write");
            s_mw.record(mw, facts.ops, limits);
            let wfr = judge_write(facts, id, session, &reads, "read");
            s_wfr.record(wfr, facts.ops, limits);
            continue;
        }
        let (ryw_row, mr_row) = match facts.level(id) {
            LevelKind::ReadYourWrites => (Some(&mut ryw), None),
            LevelKind::MonotonicReads => (None, Some(&mut mr)),
            LevelKind::Session => (Some(&mut s_ryw), Some(&mut s_mr)),
            _ => (None, None),
        };
        if let Some(row) = ryw_row {
            let verdict = judge_read(facts, id, session, &writes, "written");
            row.record(verdict, facts.ops, limits);
        }
        if let Some(row) = mr_row {
            let verdict = judge_read(facts, id, session, &reads, "read");
            row.record(verdict, facts.ops, limits);
        }
    }
    [ryw, mr, s_ryw, s_mr, s_mw, s_wfr]
}

/// Indexes the acknowledged operations with a session and a position that `keep` selects.
fn by_session<'a>(facts: &Facts<'a>, keep: impl Fn(usize) -> bool) -> PerSession<'a> {
    let mut events: BTreeMap<(&'a str, u32), Vec<Completed>> = BTreeMap::new();
    for id in 0..facts.ops.len() {
        let op = facts.op(id);
        let (Some(session), Some(p)) = (op.session.as_deref(), facts.position(id)) else {
            continue;
        };
        if op.is_acked() && keep(id) {
            events
                .entry((session, p.shard))
                .or_default()
                .push((op.complete_ns, p.index, id));
        }
    }
    events
        .into_iter()
        .map(|(at, events)| (at, CompletedMax::new(events)))
        .collect()
}

/// A read's state is at least as new as anything the session had `what` (written or read) on
/// the shard before the read began: `i ≥ m`.
fn judge_read(
    facts: &Facts,
    read: usize,
    session: &str,
    earlier: &PerSession,
    what: &str,
) -> Verdict {
    let op = facts.op(read);
    let Some(p) = facts.position(read) else {
        return Verdict::Unknown;
    };
    let newest = earlier
        .get(&(session, p.shard))
        .and_then(|completed| completed.before(op.invoke_ns));
    match newest {
        Some((m, before)) if m > p.index => Verdict::Violation {
            message: format!(
                "session {session:?}: read of key {:?} at {} was served at index {} on shard {}, \
                 older than index {m} the session had already {what}",
                op.key, op.level, p.index, p.shard,
            ),
            ops: vec![read, before],
        },
        _ => Verdict::Pass,
    }
}

/// A session's update is ordered after everything the session had `what` (written or read) on
/// the shard before it began: its index is above `m`.
fn judge_write(
    facts: &Facts,
    write: usize,
    session: &str,
    earlier: &PerSession,
    what: &str,
) -> Verdict {
    let op = facts.op(write);
    let Some(p) = facts.position(write) else {
        return Verdict::Unknown;
    };
    let newest = earlier
        .get(&(session, p.shard))
        .and_then(|completed| completed.before(op.invoke_ns));
    match newest {
        Some((m, before)) if m >= p.index => Verdict::Violation {
            message: format!(
                "session {session:?}: {} of key {:?} was committed at index {} on shard {}, not \
                 after index {m} of a {what} the session had completed before it began",
                op.op.as_str(),
                op.key,
                p.index,
                p.shard,
            ),
            ops: vec![write, before],
        },
        _ => Verdict::Pass,
    }
}

#[cfg(test)]
mod tests {
    use crate::levels::{MONOTONIC_READS, READ_YOUR_WRITES, SESSION};
    use crate::properties;
    use crate::testkit::*;

    /// Shard 0 holds "a" (v1 at 1, v2 at 3); shard 1 holds "b" (w1 at 2). Session "s" wrote v2.
    fn writes() -> Vec<crate::Operation> {
        vec![
            write("a", "v1", 0, 10).at(1).op(),
            write("b", "w1", 0, 10).on(1, 2).op(),
            write("a", "v2", 20, 30).at(3).session("s").op(),
        ]
    }

    #[test]
    fn read_your_writes_passes() {
        let mut ops = writes();
        ops.push(
            read("a", Some("v2"), 40, 50)
                .level("read_your_writes")
                .session("s")
                .at(3)
                .op(),
        );
        // Another session may see the older state.
        ops.push(
            read("a", Some("v1"), 40, 50)
                .level("read_your_writes")
                .session("t")
                .at(1)
                .op(),
        );
        // A read concurrent with the session's write may miss it.
        ops.push(
            read("a", Some("v1"), 25, 50)
                .level("session")
                .session("s")
                .at(1)
                .op(),
        );
        // Shard 1 knows nothing of the session's write on shard 0.
        ops.push(
            read("b", None, 40, 50)
                .level("session")
                .session("s")
                .on(1, 0)
                .op(),
        );
        let report = run(ops);
        assert_eq!(violated(&report), vec![]);
        let row = report
            .row(READ_YOUR_WRITES, properties::READ_YOUR_WRITES)
            .unwrap();
        assert_eq!(row.checked, 2);
        assert_eq!(
            report
                .row(SESSION, properties::READ_YOUR_WRITES)
                .unwrap()
                .checked,
            2
        );
    }

    #[test]
    fn missing_own_write_is_a_violation() {
        for (level, row_level) in [("read_your_writes", READ_YOUR_WRITES), ("session", SESSION)] {
            let mut ops = writes();
            let stale = read("a", Some("v1"), 40, 50)
                .level(level)
                .session("s")
                .at(1)
                .op();
            ops.push(stale.clone());
            let report = run(ops);
            assert_eq!(
                violated(&report),
                vec![pair(row_level, properties::READ_YOUR_WRITES)],
                "{level}"
            );
            let row = report.row(row_level, properties::READ_YOUR_WRITES).unwrap();
            assert_eq!(row.violations[0].property, properties::READ_YOUR_WRITES);
            assert!(row.violations[0].ops.contains(&stale));
        }
    }

    #[test]
    fn monotonic_reads_passes() {
        let mut ops = writes();
        ops.push(
            read("a", Some("v1"), 40, 50)
                .level("eventual")
                .session("m")
                .at(2)
                .op(),
        );
        ops.push(
            read("a", Some("v1"), 60, 70)
                .level("monotonic_reads")
                .session("m")
                .at(2)
                .op(),
        );
        ops.push(
            read("a", Some("v2"), 80, 90)
                .level("monotonic_reads")
                .session("m")
                .at(3)
                .op(),
        );
        let report = run(ops);
        assert_eq!(violated(&report), vec![]);
        let row = report
            .row(MONOTONIC_READS, properties::MONOTONIC_READS)
            .unwrap();
        assert_eq!(row.checked, 2);
    }

    #[test]
    fn going_back_in_time_is_a_violation() {
        for (level, row_level) in [("monotonic_reads", MONOTONIC_READS), ("session", SESSION)] {
            let mut ops = writes();
            ops.push(
                read("a", Some("v2"), 40, 50)
                    .level("eventual")
                    .session("m")
                    .at(3)
                    .op(),
            );
            let back = read("a", Some("v1"), 60, 70)
                .level(level)
                .session("m")
                .at(2)
                .op();
            ops.push(back.clone());
            let report = run(ops);
            assert_eq!(
                violated(&report),
                vec![pair(row_level, properties::MONOTONIC_READS)],
                "{level}"
            );
            let row = report.row(row_level, properties::MONOTONIC_READS).unwrap();
            assert!(row.violations[0].ops.contains(&back));
        }
    }

    #[test]
    fn monotonic_writes_passes() {
        let ops = vec![
            write("a", "v1", 0, 10).at(5).session("w").op(),
            // These two are concurrent: either order is fine.
            write("c", "x1", 20, 30).at(7).session("w").op(),
            write("a", "v2", 25, 40).at(6).session("w").op(),
            // Another shard has its own indexes.
            write("b", "y1", 50, 60).on(1, 1).session("w").op(),
        ];
        let report = run(ops);
        assert_eq!(violated(&report), vec![]);
        let row = report.row(SESSION, properties::MONOTONIC_WRITES).unwrap();
        assert_eq!(row.checked, 4);
    }

    #[test]
    fn reordered_writes_are_a_violation() {
        let first = write("a", "v1", 0, 10).at(5).session("w").op();
        let second = write("c", "x1", 20, 30).at(4).session("w").op();
        let report = run(vec![first.clone(), second.clone()]);
        assert_eq!(
            violated(&report),
            vec![pair(SESSION, properties::MONOTONIC_WRITES)]
        );
        let violation = &report
            .row(SESSION, properties::MONOTONIC_WRITES)
            .unwrap()
            .violations[0];
        assert_eq!(violation.property, properties::MONOTONIC_WRITES);
        assert!(violation.ops.contains(&second) && violation.ops.contains(&first));
    }

    #[test]
    fn writes_follow_reads_passes() {
        let mut ops = writes();
        ops.push(
            read("a", Some("v2"), 40, 50)
                .level("eventual")
                .session("f")
                .at(3)
                .op(),
        );
        ops.push(write("c", "x1", 60, 70).at(4).session("f").op());
        let report = run(ops);
        assert_eq!(violated(&report), vec![]);
        assert_eq!(
            report
                .row(SESSION, properties::WRITES_FOLLOW_READS)
                .unwrap()
                .checked,
            2
        );
    }

    #[test]
    fn write_ordered_before_what_was_read_is_a_violation() {
        let mut ops = writes();
        ops.push(
            read("a", Some("v2"), 40, 50)
                .level("eventual")
                .session("f")
                .at(3)
                .op(),
        );
        // Began after the session had read the state at index 3, yet claims index 3.
        let early = write("c", "x1", 60, 70).at(3).session("f").op();
        ops.push(early.clone());
        let report = run(ops);
        assert_eq!(
            violated(&report),
            vec![pair(SESSION, properties::WRITES_FOLLOW_READS)]
        );
        let violation = &report
            .row(SESSION, properties::WRITES_FOLLOW_READS)
            .unwrap()
            .violations[0];
        assert!(violation.ops.contains(&early));
    }

    #[test]
    fn reads_without_a_session_are_not_judged() {
        let mut ops = writes();
        ops.push(read("a", Some("v1"), 40, 50).level("session").at(1).op());
        let report = run(ops);
        assert_eq!(violated(&report), vec![]);
        assert_eq!(
            report
                .row(SESSION, properties::READ_YOUR_WRITES)
                .unwrap()
                .checked,
            0
        );
    }
}
