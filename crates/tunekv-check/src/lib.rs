//! tunekv-check: the history format and the checkers that judge a history, without I/O.
//!
//! `verify` and the simulator record what clients saw as a history ([`history`], DESIGN §7: one
//! JSON object per operation) and hand it to [`check`], which returns a [`Report`]: one row per
//! (level, property) with how much was judged, the violations (each with the operations that
//! show it) and how much could not be decided. Nothing undecidable is ever counted as a pass:
//! it is `unknown`. Rows exist even when nothing was judged, so a reader sees what a run did not
//! exercise.
//!
//! # What the checkers assume
//!
//! - Written values are unique per key (the workload guarantees it); a history that writes one
//!   value twice to a key is refused with [`CheckError::DuplicateValue`], because every
//!   checker identifies a write by the value a read returned.
//! - Every key lives on one shard; every acknowledged write or delete carries its committed
//!   position `shard=S;index=I;commit_ms=C`; a read's position is the state it was served from.
//! - A history holds one keyspace (as `verify`'s and the simulator's do): a shard number names
//!   one log, whose indexes the bounded and receipt checkers compare across keys.
//! - `ok: false` means the operation certainly did not happen; `ok: null` means it may or may
//!   not have (its index is unknown, so it can only make a verdict `unknown`, never a pass).
//! - "A completed before B began" means `A.complete_ns < B.invoke_ns`; equal times count as
//!   concurrent, which can only hide a violation, never invent one.
//!
//! # The properties (row = level / property; `i` = the read's position index on shard `s`)
//!
//! - **strong / linearizable** — per key, some total order of the acknowledged and unknown
//!   writes and deletes and the acknowledged `strong` reads respects real time and a register's
//!   semantics (unknown updates may also be left out). Checked = strong reads on keys decided;
//!   a key whose search exceeds [`Limits::linearizable_states_max`] counts its reads as unknown.
//! - **bounded(k) / at most k entries behind** — `i + K ≥` the largest index of any acknowledged
//!   update on `s` that completed before the read began.
//! - **bounded(t) / includes writes older than t** — every acknowledged update on `s` that
//!   completed before `invoke − T` has index `≤ i`.
//! - **consistent_prefix / value matches position** and **every level / value matches
//!   position** — the value read is the key's state at index `i`: that of the acknowledged update
//!   with the largest index `≤ i` (absent if none, or if it was a delete). The first row counts
//!   `consistent_prefix` reads, the second every read with a position.
//! - **read_your_writes / read your writes** and **session / read your writes** — `i ≥` every
//!   index of the same session's acknowledged updates on `s` that completed before the read began.
//! - **monotonic_reads / monotonic reads** and **session / monotonic reads** — `i ≥` every
//!   position index of the same session's acknowledged reads on `s` that completed before it.
//! - **session / monotonic writes** — a session's acknowledged update begun after another of its
//!   acknowledged updates on the same shard completed has a larger index.
//! - **session / writes follow reads** — a session's acknowledged update begun after one of its
//!   acknowledged reads on the same shard completed has an index above that read's.
//! - **eventual / never invented** — every value a read returned (at any level) was written to
//!   that key by a write that did not certainly fail and that began before the read ended.
//! - **eventual / convergence** — after healing, each node's last `eventual` read of a key
//!   returns the same value on every node. Counted per key; keys read on fewer than two nodes
//!   after healing are unknown.
//! - **durability / no acknowledged write lost** — after healing, the last `strong` read of each
//!   key that had acknowledged updates returns the state of the acknowledged update with the
//!   largest index, or of an update with a larger one. Counted per key.
//! - **every level / honest receipt** — a read whose receipt says `staleness_ms = M` reflects
//!   every acknowledged update on `s` that completed before `invoke − M`: each has index `≤ i`
//!   (DESIGN §4). Checked = acknowledged reads with a position and a `staleness_ms`; reads
//!   without either make no claim and are left out.

pub mod counter;
pub mod feed;
pub mod history;
pub mod leaderless;
pub mod metrics;
pub mod report;
pub mod set;
pub mod siblings;

mod bounded;
mod durability;
mod eventual;
mod facts;
mod linearizable;
mod prefix;
mod receipts;
mod session;
#[cfg(test)]
mod testkit;

pub use history::{
    backup_reads, parse_history, parse_line, to_line, validate_op, Backup, HistoryError, LevelKind,
    OpKind, OpProblem, Operation, Position,
};
pub use report::{Report, Row, Violation};

use facts::Facts;

/// The `level` column of the report's rows.
pub mod levels {
    pub const STRONG: &str = "strong";
    pub const BOUNDED_K: &str = "bounded(k)";
    pub const BOUNDED_T: &str = "bounded(t)";
    pub const CONSISTENT_PREFIX: &str = "consistent_prefix";
    pub const READ_YOUR_WRITES: &str = "read_your_writes";
    pub const MONOTONIC_READS: &str = "monotonic_reads";
    pub const SESSION: &str = "session";
    pub const EVENTUAL: &str = "eventual";
    pub const DURABILITY: &str = "durability";
    pub const EVERY_LEVEL: &str = "every level";
}

/// The `property` column of the report's rows.
pub mod properties {
    pub const LINEARIZABLE: &str = "linearizable";
    pub const LAG_WITHIN_K: &str = "at most k entries behind";
    pub const FRESH_WITHIN_T: &str = "includes writes older than t";
    pub const VALUE_MATCHES_POSITION: &str = "value matches position";
    pub const READ_YOUR_WRITES: &str = "read your writes";
    pub const MONOTONIC_READS: &str = "monotonic reads";
    pub const MONOTONIC_WRITES: &str = "monotonic writes";
    pub const WRITES_FOLLOW_READS: &str = "writes follow reads";
    pub const NEVER_INVENTED: &str = "never invented";
    pub const CONVERGENCE: &str = "convergence";
    pub const NO_ACKED_WRITE_LOST: &str = "no acknowledged write lost";
    pub const HONEST_RECEIPT: &str = "honest receipt";
}

/// A history and what the checkers need to know about how it was made.
#[derive(Debug, Clone, Default)]
pub struct CheckInput {
    pub ops: Vec<Operation>,
    /// When every fault had been cleared and the cluster had converged. Operations invoked at or
    /// after it are the final phase (final `eventual` reads on every node, final `strong`
    /// reads); without it, convergence and durability cannot be judged and count as unknown.
    pub heal_ns: Option<u64>,
}

/// Bounds on the checkers' work and output.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// Configurations (placed set, state) the linearizability search may explore per key.
    /// Past it the key is undecided (unknown), never passed. Each costs a memo entry of a few
    /// dozen bytes, so this also bounds the search's memory (a peak of about 200 MB at the
    /// default, reached only by a key the search cannot decide).
    pub linearizable_states_max: u64,
    /// Operations attached to one violation: enough to show it, few enough to read.
    pub violation_ops_max: usize,
    /// Violations kept per row; the rest are only counted.
    pub violations_kept_max: usize,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            linearizable_states_max: 2_000_000,
            violation_ops_max: 20,
            violations_kept_max: 100,
        }
    }
}

/// A history the checkers cannot judge. Operations are numbered from 0 in history order (line
/// `index + 1` of a file without blank lines).
#[derive(Debug, thiserror::Error)]
pub enum CheckError {
    #[error("operation {index}: {source}")]
    InvalidOperation {
        index: usize,
        source: history::OpProblem,
    },
    #[error(
        "key {key:?}: value {value:?} is written by operations {first} and {second}; the checkers \
         need written values to be unique per key"
    )]
    DuplicateValue {
        key: String,
        value: String,
        first: usize,
        second: usize,
    },
    #[error("key {key:?} has positions on shards {} and {} (operation {index})", shards.0, shards.1)]
    KeyOnTwoShards {
        key: String,
        shards: (u32, u32),
        index: usize,
    },
    #[error(
        "operation {index}: an acknowledged write or delete has no position; the checkers need \
         the committed index of every acknowledged update"
    )]
    MissingPosition { index: usize },
    #[error(
        "key {key:?}: acknowledged operations {first} and {second} both claim index {index} (if \
         the recorder is right, one of them was lost)"
    )]
    SameIndex {
        key: String,
        index: u64,
        first: usize,
        second: usize,
    },
    #[error(
        "operation {index} is an add, sadd or srem: those belong to counter and set keyspaces, \
         which their own checkers judge (tunekv_check::counter, tunekv_check::set), not the \
         ordered ones"
    )]
    AddInOrderedHistory { index: usize },
}

/// Runs every checker over a history. Fails only on a history the checkers cannot judge
/// (see [`CheckError`]); broken properties are rows of the report, not errors.
pub fn check(input: &CheckInput, limits: &Limits) -> Result<Report, CheckError> {
    if let Some(index) = input
        .ops
        .iter()
        .position(|o| matches!(o.op, OpKind::Add | OpKind::Sadd | OpKind::Srem))
    {
        return Err(CheckError::AddInOrderedHistory { index });
    }
    let facts = Facts::build(&input.ops)?;
    let mut rows = vec![linearizable::check(&facts, limits)];
    rows.extend(bounded::check(&facts, limits));
    let [prefix_row, every_level_row] = prefix::check(&facts, limits);
    rows.push(prefix_row);
    rows.extend(session::check(&facts, limits));
    rows.push(eventual::never_invented(&facts, limits));
    rows.push(eventual::convergence(&facts, input.heal_ns, limits));
    rows.push(durability::check(&facts, input.heal_ns, limits));
    rows.push(every_level_row);
    rows.push(receipts::check(&facts, limits));
    Ok(Report { rows })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testkit::*;

    fn run(ops: Vec<Operation>) -> Result<Report, CheckError> {
        check(&CheckInput { ops, heal_ns: None }, &Limits::default())
    }

    #[test]
    fn duplicate_written_value_is_refused() {
        let result = run(vec![
            write("a", "v1", 0, 10).at(1).op(),
            write("b", "v1", 0, 10).at(2).op(), // another key: fine
            write("a", "v1", 20, 30).failed().op(),
        ]);
        match result {
            Err(CheckError::DuplicateValue {
                key,
                value,
                first,
                second,
            }) => assert_eq!(
                (key.as_str(), value.as_str(), first, second),
                ("a", "v1", 0, 2)
            ),
            other => panic!("expected a duplicate value error, got {other:?}"),
        }
    }

    #[test]
    fn histories_the_checkers_cannot_judge_are_refused() {
        let two_shards = run(vec![
            write("a", "v1", 0, 10).on(0, 1).op(),
            read("a", Some("v1"), 20, 30).on(1, 1).op(),
        ]);
        assert!(matches!(
            two_shards,
            Err(CheckError::KeyOnTwoShards { index: 1, .. })
        ));
        let no_position = run(vec![write("a", "v1", 0, 10).op()]);
        assert!(matches!(
            no_position,
            Err(CheckError::MissingPosition { index: 0 })
        ));
        let same_index = run(vec![
            write("a", "v1", 0, 10).at(1).op(),
            delete("a", 20, 30).at(1).op(),
        ]);
        assert!(matches!(
            same_index,
            Err(CheckError::SameIndex { index: 1, .. })
        ));
        let mut backwards = read("a", None, 10, 20).op();
        backwards.complete_ns = 5;
        assert!(matches!(
            run(vec![backwards]),
            Err(CheckError::InvalidOperation { index: 0, .. })
        ));
    }

    #[test]
    fn every_row_is_present_even_when_nothing_was_judged() {
        let report = run(vec![]).unwrap();
        let expected = [
            (levels::STRONG, properties::LINEARIZABLE),
            (levels::BOUNDED_K, properties::LAG_WITHIN_K),
            (levels::BOUNDED_T, properties::FRESH_WITHIN_T),
            (
                levels::CONSISTENT_PREFIX,
                properties::VALUE_MATCHES_POSITION,
            ),
            (levels::READ_YOUR_WRITES, properties::READ_YOUR_WRITES),
            (levels::MONOTONIC_READS, properties::MONOTONIC_READS),
            (levels::SESSION, properties::READ_YOUR_WRITES),
            (levels::SESSION, properties::MONOTONIC_READS),
            (levels::SESSION, properties::MONOTONIC_WRITES),
            (levels::SESSION, properties::WRITES_FOLLOW_READS),
            (levels::EVENTUAL, properties::NEVER_INVENTED),
            (levels::EVENTUAL, properties::CONVERGENCE),
            (levels::DURABILITY, properties::NO_ACKED_WRITE_LOST),
            (levels::EVERY_LEVEL, properties::VALUE_MATCHES_POSITION),
            (levels::EVERY_LEVEL, properties::HONEST_RECEIPT),
        ];
        let got: Vec<(&str, &str)> = report
            .rows
            .iter()
            .map(|row| (row.level.as_str(), row.property.as_str()))
            .collect();
        assert_eq!(got, expected);
        assert!(!report.has_violations());
        assert!(report.table().contains("every level"));
    }

    #[test]
    fn table_shows_counts_then_violations_as_history_lines() {
        let ops = vec![
            write("k", "a", 0, 10).at(1).op(),
            write("k", "b", 20, 30).at(2).op(),
            read("k", Some("a"), 40, 50).at(1).op(),
        ];
        let stale = ops[2].clone();
        let report = run(ops).unwrap();
        assert!(report.has_violations());
        let table = report.table();
        let mut lines = table.lines();
        let header = lines.next().unwrap();
        assert!(header.starts_with("level"));
        assert!(header.ends_with("| checked | violations | unknown"));
        // every row line is as wide as the header: fixed width
        let width = header.len();
        for line in table.lines().skip(2).take(report.rows.len()) {
            assert_eq!(line.len(), width, "{line}");
        }
        let strong = table.lines().find(|l| l.starts_with("strong ")).unwrap();
        let cells: Vec<&str> = strong.split('|').map(str::trim).collect();
        assert_eq!(cells, ["strong", "linearizable", "1", "1", "0"]);
        assert!(table.contains("violations (showing 1 of 1):"));
        assert!(table.contains(&format!("    {}", to_line(&stale))));
        // The JSON form reads back.
        let json = report.to_json().unwrap();
        let back: Report = serde_json::from_str(&json).unwrap();
        assert_eq!(back, report);
    }

    #[test]
    fn kept_violations_are_bounded_but_all_are_counted() {
        let mut ops = vec![write("k", "a", 0, 10).at(5).op()];
        for n in 0..5u64 {
            ops.push(
                read("k", None, 100 + n, 100 + n)
                    .level("eventual")
                    .at(6)
                    .op(),
            );
        }
        let limits = Limits {
            violations_kept_max: 2,
            ..Limits::default()
        };
        let report = check(&CheckInput { ops, heal_ns: None }, &limits).unwrap();
        let row = report
            .row(levels::EVERY_LEVEL, properties::VALUE_MATCHES_POSITION)
            .unwrap();
        assert_eq!(
            (row.checked, row.violations_total, row.violations.len()),
            (5, 5, 2)
        );
    }
}
