//! The promises of counter keyspaces (issue 17), judged on a history of `add` operations (the
//! amount added, in decimal) and reads (the counter's value, or absent for a key no update
//! reached):
//!
//! - **within the possible range** — every acknowledged read returns a sum of some of the adds
//!   that may have happened before it ended: at least the sum of their negative amounts, at
//!   most the sum of their positive ones (an absent key reads as 0). A value outside was never
//!   a count of these updates (a doubled or invented increment).
//! - **no update lost or doubled** — after healing, each node's final read equals the sum of
//!   the acknowledged adds plus the amounts of some of those whose outcome is unknown (a
//!   timeout, a lost connection), each counted at most once. Exact (every subset sum of the
//!   unknown amounts) while there are at most [`SUMS_MAX`] distinct sums; past that, the range
//!   they span.
//! - **convergence** — after healing, every node's final read of a key is the same.
//! - **read your writes** — a read at `read_your_writes` or `session` counts every add its
//!   session had acknowledged before the read began: the range above, with those adds' amounts
//!   mandatory (at least the sum of the others' negative amounts plus the session's own sum, at
//!   most the sum of the others' positive amounts plus it).
//!
//! Adds that certainly failed (`ok: false`) count nowhere.

use crate::history::{LevelKind, OpKind, Operation};
use crate::report::{Report, Row, Verdict};
use crate::Limits;
use std::collections::{BTreeMap, BTreeSet};

pub const LEVEL: &str = "counter";
pub const WITHIN_RANGE: &str = "within the possible range";
pub const EXACT: &str = "no update lost or doubled";
pub const CONVERGENCE: &str = "convergence";
pub const READ_YOUR_WRITES: &str = "read your writes";

/// Distinct subset sums of unknown amounts kept before the check falls back to their range
/// (small amounts keep the set small: it never outgrows the range's width).
pub const SUMS_MAX: usize = 1_000_000;

fn amount(op: &Operation) -> Option<i64> {
    op.value.as_deref()?.parse().ok()
}

/// A read's value: the counter, or 0 for an absent key; `None` for a value that is not an
/// integer (itself a violation).
fn read_value(op: &Operation) -> Option<i128> {
    match op.value.as_deref() {
        None => Some(0),
        Some(v) => v.parse::<i64>().ok().map(i128::from),
    }
}

/// Judges a counter history; `heal_ns` starts the final phase.
pub fn check(ops: &[Operation], heal_ns: Option<u64>, limits: &Limits) -> Report {
    let mut by_key: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
    for (i, op) in ops.iter().enumerate() {
        by_key.entry(op.key.as_str()).or_default().push(i);
    }
    let mut range = Row::new(LEVEL, WITHIN_RANGE);
    let mut exact = Row::new(LEVEL, EXACT);
    let mut converged = Row::new(LEVEL, CONVERGENCE);
    let mut ryw = Row::new(LEVEL, READ_YOUR_WRITES);
    for ids in by_key.values() {
        // The adds that may have happened, by start time, with running sums of their negative
        // and positive amounts: a read's range is a binary search.
        let mut may: Vec<(u64, i64)> = ids
            .iter()
            .map(|&i| &ops[i])
            .filter(|o| o.op == OpKind::Add && o.ok != Some(false))
            .filter_map(|o| Some((o.invoke_ns, amount(o)?)))
            .collect();
        may.sort_unstable();
        let mut low = vec![0i128];
        let mut high = vec![0i128];
        for &(_, a) in &may {
            let a = i128::from(a);
            low.push(low[low.len() - 1] + a.min(0));
            high.push(high[high.len() - 1] + a.max(0));
        }
        // Per session, its acknowledged adds by completion time, with running sums of their
        // positive and negative amounts.
        let mut own: BTreeMap<&str, Vec<(u64, i128, i128)>> = BTreeMap::new();
        let mut acked_adds: Vec<&Operation> = ids
            .iter()
            .map(|&i| &ops[i])
            .filter(|o| o.op == OpKind::Add && o.is_acked() && o.session.is_some())
            .collect();
        acked_adds.sort_by_key(|o| o.complete_ns);
        for o in acked_adds {
            let (Some(session), Some(a)) = (o.session.as_deref(), amount(o)) else {
                continue;
            };
            let list = own.entry(session).or_insert_with(|| vec![(0, 0, 0)]);
            let &(_, pos, neg) = list.last().unwrap_or(&(0, 0, 0));
            let a = i128::from(a);
            list.push((o.complete_ns, pos + a.max(0), neg + a.min(0)));
        }
        for &r in ids {
            let op = &ops[r];
            if !op.is_read() || !op.is_acked() {
                continue;
            }
            let n = may.partition_point(|(t, _)| *t <= op.complete_ns);
            let verdict = match read_value(op) {
                Some(v) if (low[n]..=high[n]).contains(&v) => Verdict::Pass,
                got => Verdict::Violation {
                    message: format!(
                        "read of counter {:?} on {} returned {:?}, which no subset of the {n} \
                         adds begun before it ended can sum to (possible: {} to {})",
                        op.key, op.node, got, low[n], high[n]
                    ),
                    ops: vec![r],
                },
            };
            range.record(verdict, ops, limits);
            let session_read = matches!(
                LevelKind::parse(&op.level),
                LevelKind::ReadYourWrites | LevelKind::Session
            );
            if let (true, Some(session)) = (session_read, op.session.as_deref()) {
                // The session's adds completed before the read began are among those begun
                // before it ended: counted for sure, their amounts move both ends.
                let (pos, neg) = own.get(session).map_or((0, 0), |list| {
                    let k = list[1..].partition_point(|(t, _, _)| *t < op.invoke_ns);
                    (list[k].1, list[k].2)
                });
                let (lo, hi) = (low[n] + pos, high[n] + neg);
                let verdict = match read_value(op) {
                    Some(v) if (lo..=hi).contains(&v) => Verdict::Pass,
                    got => Verdict::Violation {
                        message: format!(
                            "{} read of counter {:?} on {} returned {:?}, which leaves out an \
                             add its session made before the read began (possible with them: \
                             {lo} to {hi})",
                            op.level, op.key, op.node, got
                        ),
                        ops: vec![r],
                    },
                };
                ryw.record(verdict, ops, limits);
            }
        }
        let Some(heal) = heal_ns else {
            exact.record(Verdict::Unknown, ops, limits);
            converged.record(Verdict::Unknown, ops, limits);
            continue;
        };
        let finals = crate::leaderless::final_reads(ops, ids, heal);
        if finals.is_empty() {
            exact.record(Verdict::Unknown, ops, limits);
            converged.record(Verdict::Unknown, ops, limits);
            continue;
        }
        let adds = || ids.iter().map(|&i| &ops[i]).filter(|o| o.op == OpKind::Add);
        let acked: i128 = adds()
            .filter(|o| o.is_acked())
            .filter_map(amount)
            .map(i128::from)
            .sum();
        let unknown: Vec<i64> = adds()
            .filter(|o| o.ok.is_none())
            .filter_map(amount)
            .collect();
        let possible = Possible::of(acked, &unknown);
        for &f in &finals {
            let op = &ops[f];
            let verdict = match read_value(op) {
                Some(v) if possible.allows(v) => Verdict::Pass,
                got => Verdict::Violation {
                    message: format!(
                        "after healing, counter {:?} on {} reads {:?}; the acknowledged adds sum \
                         to {acked}, and {} adds of unknown outcome could add {}: an update was \
                         lost or counted twice",
                        op.key,
                        op.node,
                        got,
                        unknown.len(),
                        possible.describe()
                    ),
                    ops: vec![f],
                },
            };
            exact.record(verdict, ops, limits);
        }
        converged.record(
            crate::leaderless::agreement(ops, &finals, "counter", |o| o.value.clone()),
            ops,
            limits,
        );
    }
    Report {
        rows: vec![range, exact, converged, ryw],
    }
}

/// The final values the adds allow.
enum Possible {
    /// Every subset sum of the unknown amounts, plus the acknowledged sum.
    Exact(BTreeSet<i128>),
    /// Too many unknowns to list: the range they span.
    Range(i128, i128),
}

impl Possible {
    fn of(acked: i128, unknown: &[i64]) -> Possible {
        let mut sums = BTreeSet::from([acked]);
        for &u in unknown {
            let more: Vec<i128> = sums.iter().map(|s| s + i128::from(u)).collect();
            sums.extend(more);
            if sums.len() > SUMS_MAX {
                let neg: i128 = unknown.iter().map(|&u| i128::from(u.min(0))).sum();
                let pos: i128 = unknown.iter().map(|&u| i128::from(u.max(0))).sum();
                return Possible::Range(acked + neg, acked + pos);
            }
        }
        Possible::Exact(sums)
    }

    fn allows(&self, v: i128) -> bool {
        match self {
            Possible::Exact(sums) => sums.contains(&v),
            Possible::Range(lo, hi) => (*lo..=*hi).contains(&v),
        }
    }

    fn describe(&self) -> String {
        match self {
            Possible::Exact(sums) if sums.len() <= 8 => format!("{sums:?}"),
            Possible::Exact(sums) => format!("{} possible totals", sums.len()),
            Possible::Range(lo, hi) => format!("a total from {lo} to {hi}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn op(kind: OpKind, value: Option<&str>, t: (u64, u64), ok: Option<bool>) -> Operation {
        crate::testkit::leaderless(kind, value, t, ok)
    }

    fn add(v: &str, t: (u64, u64), ok: Option<bool>) -> Operation {
        op(OpKind::Add, Some(v), t, ok)
    }

    fn read(v: Option<&str>, t: (u64, u64), node: &str) -> Operation {
        Operation {
            node: node.into(),
            ..op(OpKind::Read, v, t, Some(true))
        }
    }

    fn row<'a>(r: &'a Report, p: &str) -> &'a Row {
        r.row(LEVEL, p).expect("row")
    }

    #[test]
    fn a_session_read_leaving_out_its_own_add_is_caught() {
        let own = |o: Operation| Operation {
            session: Some("s1".into()),
            ..o
        };
        let session_read = |v: &str, t: (u64, u64), level: &str| Operation {
            level: level.into(),
            ..own(read(Some(v), t, "n2"))
        };
        let base = vec![
            own(add("5", (0, 10), Some(true))),
            add("-2", (0, 10), Some(true)),
            own(add("-1", (20, 30), Some(true))),
        ];
        let with = |r: Operation| {
            let mut ops = base.clone();
            ops.push(r);
            check(&ops, None, &Limits::default())
        };
        // Its own +5 and -1 counted; the other session's -2 may or may not be.
        for v in ["4", "2"] {
            let r = with(session_read(v, (40, 50), "session"));
            assert!(!r.has_violations(), "{v}: {}", r.table());
            assert_eq!(row(&r, READ_YOUR_WRITES).checked, 1);
        }
        // 0 is a possible count (eventual), not with the session's own adds.
        for level in ["read_your_writes", "session"] {
            let r = with(session_read("0", (40, 50), level));
            assert_eq!(
                row(&r, READ_YOUR_WRITES).violations_total,
                1,
                "{}",
                r.table()
            );
            assert_eq!(row(&r, WITHIN_RANGE).violations_total, 0);
        }
        let r = with(session_read("0", (40, 50), "eventual"));
        assert_eq!(row(&r, READ_YOUR_WRITES).checked, 0);
        // A read begun before its -1 completed may leave it out.
        let r = with(session_read("5", (25, 50), "session"));
        assert!(!r.has_violations(), "{}", r.table());
    }

    #[test]
    fn a_clean_history_with_an_unknown_add_passes() {
        let ops = vec![
            add("5", (0, 10), Some(true)),
            add("-2", (5, 15), Some(true)),
            read(Some("5"), (12, 14), "n1"),
            add("7", (20, 30), None),
            add("100", (20, 30), Some(false)),
            read(Some("3"), (100, 110), "n1"),
            read(Some("3"), (100, 110), "n2"),
        ];
        let r = check(&ops, Some(90), &Limits::default());
        assert!(!r.has_violations(), "{}", r.table());
        assert_eq!(row(&r, EXACT).checked, 2);
        // The unknown add may have happened, on every node.
        let mut applied = ops.clone();
        applied[5].value = Some("10".into());
        applied[6].value = Some("10".into());
        assert!(!check(&applied, Some(90), &Limits::default()).has_violations());
    }

    #[test]
    fn a_lost_a_doubled_and_an_invented_update_and_divergence_are_caught() {
        let base = vec![
            add("5", (0, 10), Some(true)),
            add("3", (20, 30), Some(true)),
        ];
        let with = |reads: Vec<Operation>| {
            let mut ops = base.clone();
            ops.extend(reads);
            check(&ops, Some(90), &Limits::default())
        };
        // Lost (max instead of sum) and doubled.
        for v in ["5", "13"] {
            let r = with(vec![read(Some(v), (100, 110), "n1")]);
            assert_eq!(row(&r, EXACT).violations_total, 1, "{v}: {}", r.table());
        }
        // A value no subset of the adds begun before it can make.
        let r = with(vec![read(Some("9"), (15, 18), "n1")]);
        assert_eq!(row(&r, WITHIN_RANGE).violations_total, 1, "{}", r.table());
        let r = with(vec![read(Some("x"), (15, 18), "n1")]);
        assert_eq!(row(&r, WITHIN_RANGE).violations_total, 1, "{}", r.table());
        // Two nodes that disagree.
        let r = with(vec![
            read(Some("8"), (100, 110), "n1"),
            read(Some("5"), (100, 110), "n2"),
        ]);
        assert_eq!(row(&r, CONVERGENCE).violations_total, 1, "{}", r.table());
        assert_eq!(row(&r, EXACT).violations_total, 1, "{}", r.table());
    }

    #[test]
    fn many_unknown_outcomes_are_still_judged_exactly() {
        // 30 unknown adds of 4 and one acknowledged 1: totals 1, 5, 9, …, 121 only.
        let mut ops: Vec<Operation> = (0..30).map(|_| add("4", (0, 10), None)).collect();
        ops.push(add("1", (0, 10), Some(true)));
        ops.push(read(Some("17"), (100, 110), "n1"));
        assert!(!check(&ops, Some(90), &Limits::default()).has_violations());
        for bad in ["18", "125"] {
            let mut more = ops.clone();
            more.push(read(Some(bad), (100, 120), "n2"));
            let r = check(&more, Some(90), &Limits::default());
            assert_eq!(row(&r, EXACT).violations_total, 1, "{bad}: {}", r.table());
        }
    }
}
