//! bounded(k) and bounded(t): how far behind the newest commit a bounded read's state may be.
//!
//! Both compare the read's position index `i` on shard `s` with acknowledged updates on `s` (of
//! any key: staleness is a property of the shard's log) that completed before a cut-off time.
//! Updates of unknown outcome are left out: they could only raise the newest index, so leaving
//! them out can hide a violation but never invent one. Checked = bounded reads judged; a read
//! without a position is unknown.

use crate::facts::Facts;
use crate::history::LevelKind;
use crate::levels::{BOUNDED_K, BOUNDED_T};
use crate::properties::{FRESH_WITHIN_T, LAG_WITHIN_K};
use crate::report::{Row, Verdict};
use crate::Limits;

const NS_PER_MS: u64 = 1_000_000;

pub(crate) fn check(facts: &Facts, limits: &Limits) -> [Row; 2] {
    let mut k_row = Row::new(BOUNDED_K, LAG_WITHIN_K);
    let mut t_row = Row::new(BOUNDED_T, FRESH_WITHIN_T);
    for id in facts.acked_reads() {
        let LevelKind::Bounded { k, t_ms } = *facts.level(id) else {
            continue;
        };
        if let Some(k) = k {
            k_row.record(judge_k(facts, id, k), facts.ops, limits);
        }
        if let Some(t_ms) = t_ms {
            t_row.record(judge_t(facts, id, t_ms), facts.ops, limits);
        }
    }
    [k_row, t_row]
}

/// `i + k ≥ m`, where `m` is the newest index on the shard committed before the read began.
fn judge_k(facts: &Facts, read: usize, k: u64) -> Verdict {
    let op = facts.op(read);
    let Some(p) = facts.position(read) else {
        return Verdict::Unknown;
    };
    let newest = facts.newest_acked_before(p.shard, op.invoke_ns);
    match newest {
        Some((m, write)) if p.index.saturating_add(k) < m => Verdict::Violation {
            message: format!(
                "read of key {:?} at {} was served at index {} on shard {}, but index {m} had \
                 committed before it began: {} entries behind, more than k={k}",
                op.key,
                op.level,
                p.index,
                p.shard,
                m - p.index,
            ),
            ops: vec![read, write],
        },
        _ => Verdict::Pass,
    }
}

/// Every update on the shard that completed more than `t` before the read began is in its state.
fn judge_t(facts: &Facts, read: usize, t_ms: u64) -> Verdict {
    let op = facts.op(read);
    let Some(p) = facts.position(read) else {
        return Verdict::Unknown;
    };
    // A read that began less than t after time zero has no update old enough to require.
    let Some(cutoff_ns) = op.invoke_ns.checked_sub(t_ms.saturating_mul(NS_PER_MS)) else {
        return Verdict::Pass;
    };
    let newest = facts.newest_acked_before(p.shard, cutoff_ns);
    match newest {
        Some((m, write)) if m > p.index => {
            let write_op = facts.op(write);
            Verdict::Violation {
                message: format!(
                    "read of key {:?} at {} was served at index {} on shard {}, missing index {m} \
                     (key {:?}) which completed {} ms before the read began, more than t={t_ms}ms",
                    op.key,
                    op.level,
                    p.index,
                    p.shard,
                    write_op.key,
                    (op.invoke_ns - write_op.complete_ns) / NS_PER_MS,
                ),
                ops: vec![read, write],
            }
        }
        _ => Verdict::Pass,
    }
}

#[cfg(test)]
mod tests {
    use crate::levels::{BOUNDED_K, BOUNDED_T, EVERY_LEVEL};
    use crate::properties::{FRESH_WITHIN_T, LAG_WITHIN_K, VALUE_MATCHES_POSITION};
    use crate::testkit::*;

    const MS: u64 = 1_000_000;

    /// Five writes to two keys on shard 0 (indexes 1..=5, each completing at n*10 ms), then
    /// reads of key "a" whose value matches the index they were served at.
    fn writes() -> Vec<crate::Operation> {
        (1..=5u64)
            .map(|n| {
                let key = if n % 2 == 1 { "a" } else { "b" };
                write(key, &format!("v{n}"), n * 10 * MS - MS, n * 10 * MS)
                    .at(n)
                    .op()
            })
            .collect()
    }

    #[test]
    fn lag_within_k_passes() {
        let mut ops = writes();
        // Newest commit before the read began: 5. Served at 3: 2 behind, k=2 allows it.
        ops.push(
            read("a", Some("v3"), 60 * MS, 61 * MS)
                .level("bounded(k=2)")
                .at(3)
                .op(),
        );
        // Concurrent with write 5 (completes at 50): newest before it is 4; 4 - 2 = 2 ≤ 2.
        ops.push(
            read("a", Some("v1"), 49 * MS, 70 * MS)
                .level("bounded(k=2)")
                .at(2)
                .op(),
        );
        let report = run(ops);
        assert_eq!(violated(&report), vec![]);
        assert_eq!(report.row(BOUNDED_K, LAG_WITHIN_K).unwrap().checked, 2);
    }

    #[test]
    fn lag_beyond_k_is_a_violation() {
        let mut ops = writes();
        let late = read("a", Some("v1"), 60 * MS, 61 * MS)
            .level("bounded(k=2)")
            .at(2)
            .op();
        ops.push(late.clone());
        let report = run(ops);
        assert_eq!(violated(&report), vec![pair(BOUNDED_K, LAG_WITHIN_K)]);
        let row = report.row(BOUNDED_K, LAG_WITHIN_K).unwrap();
        assert_eq!(row.violations[0].property, LAG_WITHIN_K);
        assert!(row.violations[0].ops.contains(&late));
        assert!(row.violations[0].message.contains("3 entries behind"));
    }

    #[test]
    fn fresh_within_t_passes() {
        let mut ops = writes();
        // Began at 60 ms with t=25ms: must include what completed before 35 ms (index 3).
        ops.push(
            read("a", Some("v3"), 60 * MS, 61 * MS)
                .level("bounded(t=25ms)")
                .at(3)
                .op(),
        );
        // t=1s: nothing is that old.
        ops.push(
            read("a", None, 60 * MS, 61 * MS)
                .level("bounded(t=1s)")
                .at(0)
                .op(),
        );
        let report = run(ops);
        assert_eq!(violated(&report), vec![]);
        assert_eq!(report.row(BOUNDED_T, FRESH_WITHIN_T).unwrap().checked, 2);
    }

    #[test]
    fn missing_an_old_write_is_a_violation() {
        let mut ops = writes();
        let late = read("a", Some("v1"), 60 * MS, 61 * MS)
            .level("bounded(t=25ms)")
            .at(2)
            .op();
        ops.push(late.clone());
        let report = run(ops);
        assert_eq!(violated(&report), vec![pair(BOUNDED_T, FRESH_WITHIN_T)]);
        let violation = &report.row(BOUNDED_T, FRESH_WITHIN_T).unwrap().violations[0];
        assert!(violation.ops.contains(&late));
    }

    #[test]
    fn both_bounds_are_judged() {
        let mut ops = writes();
        ops.push(
            read("a", Some("v1"), 60 * MS, 61 * MS)
                .level("bounded(k=10,t=25ms)")
                .at(2)
                .op(),
        );
        let report = run(ops);
        assert_eq!(violated(&report), vec![pair(BOUNDED_T, FRESH_WITHIN_T)]);
        assert_eq!(report.row(BOUNDED_K, LAG_WITHIN_K).unwrap().checked, 1);
    }

    #[test]
    fn bounded_read_with_wrong_value_for_its_position_is_caught_elsewhere() {
        let mut ops = writes();
        ops.push(
            read("a", Some("v1"), 60 * MS, 61 * MS)
                .level("bounded(k=2)")
                .at(3)
                .op(),
        );
        let report = run(ops);
        assert_eq!(
            violated(&report),
            vec![pair(EVERY_LEVEL, VALUE_MATCHES_POSITION)]
        );
    }
}
