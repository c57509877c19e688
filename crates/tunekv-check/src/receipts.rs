//! every level / honest receipt: a read whose receipt says `staleness_ms = M` reflects every
//! write acknowledged more than `M` ms before the read began (DESIGN §4).
//!
//! For a read served at index `i` on shard `s` with `staleness_ms = M`, every acknowledged
//! update on `s` (of any key: staleness is a property of the shard's log) that completed before
//! `invoke − M` must have index `≤ i`. That is bounded(t)'s check with the receipt's own `M` as
//! `t`, at every level; strong reads claim 0 ms, so they are judged too. A read acknowledged
//! more than `M` after the write is fine: the node's "read began" is no earlier than the
//! client's `invoke_ns`, so the cut-off can only be generous to the node.
//!
//! Only acknowledged reads carrying both a position and a receipt's `staleness_ms` are judged
//! (checked); reads without one make no claim and are left out of the row. Updates of unknown
//! outcome are left out: they could only raise the newest index, so leaving them out can hide
//! a violation but never invent one. The write a violation names is the oldest acknowledged one
//! the read missed, so its age is how far the receipt understated at least.

use crate::facts::Facts;
use crate::history::Position;
use crate::levels::EVERY_LEVEL;
use crate::properties::HONEST_RECEIPT;
use crate::report::{Row, Verdict};
use crate::Limits;
use std::collections::BTreeMap;

const NS_PER_MS: u64 = 1_000_000;

pub(crate) fn check(facts: &Facts, limits: &Limits) -> Row {
    let oldest = OldestAbove::build(facts);
    let mut row = Row::new(EVERY_LEVEL, HONEST_RECEIPT);
    for id in facts.acked_reads() {
        let (Some(p), Some(ms)) = (facts.position(id), facts.op(id).staleness_ms) else {
            continue;
        };
        row.record(judge(facts, &oldest, id, p, ms), facts.ops, limits);
    }
    row
}

fn judge(facts: &Facts, oldest: &OldestAbove, read: usize, p: Position, ms: u64) -> Verdict {
    let op = facts.op(read);
    // A claim older than the history (or "never heard from a leader": u64::MAX) requires
    // nothing.
    let Some(cutoff_ns) = op.invoke_ns.checked_sub(ms.saturating_mul(NS_PER_MS)) else {
        return Verdict::Pass;
    };
    let Some((newest, newest_write)) = facts.newest_acked_before(p.shard, cutoff_ns) else {
        return Verdict::Pass;
    };
    if newest <= p.index {
        return Verdict::Pass;
    }
    // `newest_write` is above `i` and completed before the cut-off, so the oldest update above
    // `i` completed no later: it exists and is at least as telling.
    let (index, write) = oldest
        .above(p.shard, p.index)
        .unwrap_or((newest, newest_write));
    let write_op = facts.op(write);
    let age = format_ms(op.invoke_ns.saturating_sub(write_op.complete_ns));
    Verdict::Violation {
        message: format!(
            "receipt claimed {ms} ms but missed a write acknowledged {age} ms before the read \
             began: read of key {:?} at {} on {} was served at index {} on shard {} \
             (staleness_entries={}), below index {index} (key {:?})",
            op.key,
            op.level,
            op.node,
            p.index,
            p.shard,
            op.staleness_entries
                .map_or_else(|| "null".to_owned(), |e| e.to_string()),
            write_op.key,
        ),
        ops: vec![read, write],
    }
}

/// `ns` in milliseconds, with the fraction only when there is one: `45`, `12.5`, `12.000001`.
fn format_ms(ns: u64) -> String {
    let (whole, frac) = (ns / NS_PER_MS, ns % NS_PER_MS);
    if frac == 0 {
        return whole.to_string();
    }
    let digits = format!("{frac:06}");
    format!("{whole}.{}", digits.trim_end_matches('0'))
}

/// Per shard, the acknowledged update that completed first among those above a given index.
#[derive(Debug, Default)]
struct OldestAbove {
    shards: BTreeMap<u32, Suffix>,
}

#[derive(Debug, Default)]
struct Suffix {
    /// Committed indexes of the shard's acknowledged updates, ascending.
    indexes: Vec<u64>,
    /// `first[n]`: the (complete_ns, index, operation) that completed first among entries
    /// `n..` of `indexes`.
    first: Vec<(u64, u64, usize)>,
}

impl OldestAbove {
    fn build(facts: &Facts) -> OldestAbove {
        let mut events: BTreeMap<u32, Vec<(u64, u64, usize)>> = BTreeMap::new();
        for key in facts.keys.values() {
            let Some(shard) = key.shard else { continue };
            let list = events.entry(shard).or_default();
            for &(index, op) in &key.acked {
                list.push((index, facts.op(op).complete_ns, op));
            }
        }
        let shards = events
            .into_iter()
            .map(|(shard, mut list)| {
                list.sort_unstable();
                let mut first: Vec<(u64, u64, usize)> = Vec::with_capacity(list.len());
                for &(index, complete_ns, op) in list.iter().rev() {
                    let next = match first.last() {
                        Some(&best) if best.0 <= complete_ns => best,
                        _ => (complete_ns, index, op),
                    };
                    first.push(next);
                }
                first.reverse();
                let indexes = list.iter().map(|e| e.0).collect();
                (shard, Suffix { indexes, first })
            })
            .collect();
        OldestAbove { shards }
    }

    /// The (index, operation) of the acknowledged update on `shard` with index `> index` that
    /// completed first.
    fn above(&self, shard: u32, index: u64) -> Option<(u64, usize)> {
        let suffix = self.shards.get(&shard)?;
        let n = suffix.indexes.partition_point(|&i| i <= index);
        suffix.first.get(n).map(|&(_, index, op)| (index, op))
    }
}

#[cfg(test)]
mod tests {
    use super::format_ms;
    use crate::levels::{BOUNDED_T, EVERY_LEVEL};
    use crate::properties::{FRESH_WITHIN_T, HONEST_RECEIPT};
    use crate::testkit::*;
    use crate::Operation;

    const MS: u64 = 1_000_000;

    /// Five acknowledged writes on shard 0 (indexes 1..=5, write n completing at n*10 ms), and
    /// two on shard 1 (indexes 1..=2, completing at 5 and 15 ms).
    fn writes() -> Vec<Operation> {
        let mut ops: Vec<Operation> = (1..=5u64)
            .map(|n| {
                let key = if n % 2 == 1 { "a" } else { "b" };
                write(key, &format!("v{n}"), n * 10 * MS - MS, n * 10 * MS)
                    .at(n)
                    .op()
            })
            .collect();
        ops.push(write("z", "z1", 4 * MS, 5 * MS).on(1, 1).op());
        ops.push(write("z", "z2", 14 * MS, 15 * MS).on(1, 2).op());
        ops
    }

    /// A read of key "a" at index 3 of shard 0 (its state: v3), begun at `invoke_ms`.
    fn read_at_3(invoke_ms: u64, level: &str, ms: u64) -> Operation {
        let mut op = read("a", Some("v3"), invoke_ms * MS, (invoke_ms + 1) * MS)
            .level(level)
            .at(3)
            .op();
        op.staleness_entries = Some(2);
        op.staleness_ms = Some(ms);
        op
    }

    fn honest_row(report: &crate::Report) -> &crate::Row {
        report.row(EVERY_LEVEL, HONEST_RECEIPT).expect("the row")
    }

    #[test]
    fn honest_receipts_pass() {
        let mut ops = writes();
        // Began at 60 ms, claims 25 ms: must reflect what completed before 35 ms (index 3).
        ops.push(read_at_3(60, "eventual", 25));
        // Claims 1 s: nothing is that old.
        ops.push(read_at_3(60, "session", 1000));
        // Concurrent with write 4 (completes at 40): a strong read at 3 claiming 0 ms is fine.
        ops.push(read_at_3(40, "strong", 0));
        // "Never heard from a leader": the largest claim requires nothing.
        ops.push(read_at_3(60, "eventual", u64::MAX));
        let report = run(ops);
        assert_eq!(violated(&report), vec![]);
        let row = honest_row(&report);
        assert_eq!((row.checked, row.unknown), (4, 0));
    }

    #[test]
    fn a_receipt_that_understates_is_caught() {
        let mut ops = writes();
        // Began at 95 ms claiming 12 ms: writes 4 (done at 40 ms, 55 ms before) and 5 (done at
        // 50 ms, 45 ms before) are older than 12 ms and above index 3.
        let liar = read_at_3(95, "bounded(k=5)", 12);
        ops.push(liar.clone());
        let report = run(ops.clone());
        assert_eq!(violated(&report), vec![pair(EVERY_LEVEL, HONEST_RECEIPT)]);
        let row = honest_row(&report);
        assert_eq!((row.checked, row.violations_total), (1, 1));
        let v = &row.violations[0];
        // The oldest missed write (index 4) shows by how much the receipt understated.
        assert!(
            v.message
                .starts_with("receipt claimed 12 ms but missed a write acknowledged 55 ms before"),
            "{}",
            v.message
        );
        assert!(v.message.contains("below index 4"), "{}", v.message);
        assert_eq!(v.ops, vec![ops[3].clone(), liar]);
    }

    #[test]
    fn a_strong_read_that_misses_an_acknowledged_write_breaks_its_0_ms_claim() {
        let mut ops = writes();
        ops.push(read_at_3(60, "strong", 0));
        let report = run(ops);
        assert!(violated(&report).contains(&pair(EVERY_LEVEL, HONEST_RECEIPT)));
        assert!(honest_row(&report).violations[0]
            .message
            .starts_with("receipt claimed 0 ms but missed a write acknowledged 20 ms before"));
    }

    #[test]
    fn the_boundary_is_strict() {
        // Write 4 completed at 40 ms. A read claiming 12 ms that began exactly 12 ms later need
        // not reflect it; one that began 1 ns later must.
        let mut at_boundary = writes();
        at_boundary.push(read_at_3(52, "eventual", 12));
        let report = run(at_boundary);
        assert_eq!(violated(&report), vec![]);
        assert_eq!(honest_row(&report).checked, 1);

        let mut past = writes();
        let mut late = read_at_3(52, "eventual", 12);
        late.invoke_ns += 1;
        past.push(late);
        let report = run(past);
        assert_eq!(violated(&report), vec![pair(EVERY_LEVEL, HONEST_RECEIPT)]);
        assert!(honest_row(&report).violations[0]
            .message
            .contains("acknowledged 12.000001 ms before"));
    }

    #[test]
    fn other_shards_do_not_count() {
        let mut ops = writes();
        // Shard 1 at index 1, began at 60 ms claiming 0 ms: shard 0's indexes 4 and 5 are
        // larger, but they are another log. Shard 1's index 2 (done at 15 ms) is missed.
        let mut z = read("z", Some("z1"), 60 * MS, 61 * MS)
            .level("eventual")
            .on(1, 1)
            .op();
        z.staleness_ms = Some(50);
        ops.push(z.clone());
        let report = run(ops.clone());
        assert_eq!(violated(&report), vec![]);
        // Claiming 40 ms, it must reflect shard 1's index 2 (done 45 ms before).
        z.staleness_ms = Some(40);
        ops.pop();
        ops.push(z);
        let report = run(ops);
        assert_eq!(violated(&report), vec![pair(EVERY_LEVEL, HONEST_RECEIPT)]);
        let v = &honest_row(&report).violations[0];
        assert!(
            v.message.contains("acknowledged 45 ms before"),
            "{}",
            v.message
        );
        assert!(v.message.contains("on shard 1"), "{}", v.message);
    }

    #[test]
    fn reads_without_a_receipt_or_position_and_unacknowledged_ones_are_not_judged() {
        let mut ops = writes();
        let mut no_ms = read_at_3(95, "eventual", 12);
        no_ms.staleness_ms = None;
        let mut no_position = read("a", Some("v3"), 95 * MS, 96 * MS).op();
        no_position.staleness_ms = Some(0);
        let mut refused = read("a", None, 95 * MS, 96 * MS).failed().op();
        refused.staleness_ms = Some(0);
        ops.extend([no_ms, no_position, refused]);
        // Unknown writes never make a violation: this one may sit at index 6.
        ops.push(write("a", "v6", 1, 2 * MS).unknown().op());
        let report = run(ops);
        let row = honest_row(&report);
        assert_eq!((row.checked, row.violations_total, row.unknown), (0, 0, 0));
    }

    #[test]
    fn a_bounded_t_read_is_judged_by_both_its_level_and_its_receipt() {
        let mut ops = writes();
        // t=25ms holds (index 3 completed at 30 < 35), but the receipt claims 5 ms.
        ops.push(read_at_3(60, "bounded(t=25ms)", 5));
        let report = run(ops);
        assert_eq!(violated(&report), vec![pair(EVERY_LEVEL, HONEST_RECEIPT)]);
        assert_eq!(report.row(BOUNDED_T, FRESH_WITHIN_T).unwrap().checked, 1);
    }

    #[test]
    fn a_simulated_history_with_honest_receipts_passes_and_lies_are_all_caught() {
        // One shard, writes one after another; a reader at a random index claims the exact age
        // of the oldest write it lacks (honest, just at the boundary), or that minus 1 ms.
        let mut rng = Rng(7);
        let mut ops = Vec::new();
        let mut now = 0;
        for n in 1..=200u64 {
            let start = now + rng.next() % (3 * MS);
            now = start + 1 + rng.next() % (5 * MS);
            ops.push(write("w", &format!("v{n}"), start, now).at(n).op());
        }
        let writes = ops.clone();
        let mut lies = 0;
        for r in 0..300u64 {
            let invoke = now + r * MS;
            let index = rng.next() % 200;
            let oldest_missed = writes[index as usize].complete_ns;
            let age_ms = (invoke - oldest_missed) / MS;
            let exact = (invoke - oldest_missed).is_multiple_of(MS);
            // Honest: the smallest whole ms the write is not older than (the boundary itself
            // when the age is whole); one less is a lie.
            let honest_ms = if exact { age_ms } else { age_ms + 1 };
            let lie = rng.next().is_multiple_of(4) && honest_ms > 0;
            let mut op = read("w", None, invoke, invoke + MS)
                .level("eventual")
                .at(index)
                .op();
            op.value = (index > 0).then(|| format!("v{index}"));
            op.staleness_ms = Some(if lie { honest_ms - 1 } else { honest_ms });
            lies += u64::from(lie);
            ops.push(op);
        }
        let report = run(ops);
        let row = honest_row(&report);
        assert_eq!(row.checked, 300);
        assert!(lies > 30, "only {lies} lies");
        assert_eq!(row.violations_total, lies);
        assert_eq!(violated(&report), vec![pair(EVERY_LEVEL, HONEST_RECEIPT)]);
    }

    #[test]
    fn milliseconds_print_with_their_fraction() {
        assert_eq!(format_ms(45 * MS), "45");
        assert_eq!(format_ms(12 * MS + MS / 2), "12.5");
        assert_eq!(format_ms(12 * MS + 1), "12.000001");
        assert_eq!(format_ms(0), "0");
    }
}
