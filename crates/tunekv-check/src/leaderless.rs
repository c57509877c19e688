//! The promises of leaderless keyspaces (issue 16), judged on a history whose operations carry
//! their version (`version`: the HLC stamp and coordinating node, `HLC.NODE`, or `none` for a
//! read that found no replica holding the key), their quorum (`quorum`: the `r` of a read or the
//! `w` of a write) and, for writes, whether the acknowledgement was `strict` (every counted copy
//! on the key's preference list). Under last-writer-wins the state of a key is the value of its
//! highest version, so every property is a comparison of versions:
//!
//! - **never invented** — a value read was written to that key by a write that did not
//!   certainly fail and began before the read ended, and the version read is that write's.
//! - **strict-quorum reads** — a read at `r` with R + W > N returns a version at least as high as
//!   every write or delete acknowledged strictly at `w` before the read began.
//! - **no acknowledged write lost** — after healing, every node's final read of a key returns a
//!   version at least as high as every acknowledged update of the key (a higher one belongs to
//!   a write that was acknowledged or whose outcome is unknown).
//! - **deleted keys stay deleted** — after healing, a key whose highest acknowledged update was
//!   a delete reads as absent, unless a later write (higher version) that did not certainly fail
//!   brought it back.
//! - **monotonic quorum reads** — a read at `r` returns a version at least as high as every
//!   read at an `r'` with r + r' > N that completed before it began (blocking read repair: what
//!   a read returns, r replicas hold before it answers).
//! - **convergence** — after healing, every node's final read of a key returns the same version.
//! - **read your writes** (reads at `read_your_writes` or `session`) — a read returns a version at
//!   least as high as every acknowledged update of the key by the same session that completed
//!   before the read began.
//! - **monotonic reads** (reads at `monotonic_reads` or `session`) — a read returns a version at
//!   least as high as every earlier acknowledged read of the key by the same session.
//!
//! A tombstone is collected once every replica holds it and its grace has passed; a read then
//! finds no version at all (`none`). Wherever a version `v` is required, such a read meets it
//! when a delete at a version of at least `v` (or of unknown version) that did not certainly fail
//! began before the read ended: the key is absent, as it would be under that tombstone.

use crate::history::{OpKind, Operation};
use crate::report::{Report, Row, Verdict};
use crate::Limits;
use std::collections::{BTreeMap, BTreeSet, HashMap};

pub const LEVEL: &str = "leaderless";
pub const NEVER_INVENTED: &str = "never invented";
pub const STRICT_QUORUM_READS: &str = "strict-quorum reads";
pub const NO_ACKED_WRITE_LOST: &str = "no acknowledged write lost";
pub const DELETES_STAY: &str = "deleted keys stay deleted";
pub const CONVERGENCE: &str = "convergence";
pub const MONOTONIC_QUORUM_READS: &str = "monotonic quorum reads";
pub const READ_YOUR_WRITES: &str = "read your writes";
pub const MONOTONIC_READS: &str = "monotonic reads";

/// A version as `(hlc, node)`; `(0, 0)` is "no version" (a key no replica held).
type Ver = (u64, u64);

/// Parses `HLC.NODE` or `none`.
pub fn parse_version(text: &str) -> Option<Ver> {
    if text == "none" {
        return Some((0, 0));
    }
    let (hlc, node) = text.split_once('.')?;
    Some((hlc.parse().ok()?, node.parse().ok()?))
}

/// How many of `n` replicas a quorum name takes.
fn count(quorum: &str, n: u32) -> Option<u32> {
    match quorum {
        "one" | "any" => Some(1),
        "quorum" => Some(n / 2 + 1),
        "all" => Some(n),
        _ => None,
    }
}

fn version_of(op: &Operation) -> Option<Ver> {
    op.version.as_deref().and_then(parse_version)
}

/// "No version" as [`parse_version`] reads `none`.
const NONE: Ver = (0, 0);

/// The deletes of one key that may have happened, by start time with the running maximum of
/// their versions (unknown: the highest), to answer whether a read that found no version at all
/// can be a collected tombstone at least as new as a required version.
struct Collected {
    began: Vec<u64>,
    highest: Vec<Ver>,
}

impl Collected {
    fn new(ops: &[Operation], ids: &[usize]) -> Collected {
        let mut d: Vec<(u64, Ver)> = ids
            .iter()
            .map(|&i| &ops[i])
            .filter(|o| o.op == OpKind::Delete && o.ok != Some(false))
            .map(|o| (o.invoke_ns, version_of(o).unwrap_or((u64::MAX, u64::MAX))))
            .collect();
        d.sort_unstable();
        let mut highest: Vec<Ver> = Vec::with_capacity(d.len());
        for &(_, v) in &d {
            highest.push(highest.last().map_or(v, |&h: &Ver| h.max(v)));
        }
        Collected {
            began: d.iter().map(|x| x.0).collect(),
            highest,
        }
    }

    /// Whether read `r`, which returned version `got`, is at least as new as `need`.
    fn meets(&self, r: &Operation, got: Ver, need: Ver) -> bool {
        if got >= need {
            return true;
        }
        if got != NONE || r.value.is_some() {
            return false;
        }
        let n = self.began.partition_point(|&t| t <= r.complete_ns);
        n.checked_sub(1).is_some_and(|i| self.highest[i] >= need)
    }
}

/// Judges a leaderless history. `replicas` is N; `heal_ns` starts the final phase (final reads
/// on every node after faults were cleared and the replicas reported the same digests).
pub fn check(ops: &[Operation], replicas: u32, heal_ns: Option<u64>, limits: &Limits) -> Report {
    let mut by_key: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
    for (i, op) in ops.iter().enumerate() {
        by_key.entry(op.key.as_str()).or_default().push(i);
    }
    let mut invented = Row::new(LEVEL, NEVER_INVENTED);
    let mut strict = Row::new(LEVEL, STRICT_QUORUM_READS);
    let mut quorum_reads = Row::new(LEVEL, MONOTONIC_QUORUM_READS);
    let mut lost = Row::new(LEVEL, NO_ACKED_WRITE_LOST);
    let mut deletes = Row::new(LEVEL, DELETES_STAY);
    let mut converged = Row::new(LEVEL, CONVERGENCE);
    let mut ryw = Row::new(LEVEL, READ_YOUR_WRITES);
    let mut monotonic = Row::new(LEVEL, MONOTONIC_READS);
    for ids in by_key.values() {
        let collected = Collected::new(ops, ids);
        judge_sessions(ops, ids, &collected, (&mut ryw, &mut monotonic), limits);
        let writers: HashMap<&str, usize> = ids
            .iter()
            .filter(|&&i| ops[i].op == OpKind::Write)
            .filter_map(|&i| Some((ops[i].value.as_deref()?, i)))
            .collect();
        let by_version: HashMap<Ver, usize> = ids
            .iter()
            .filter(|&&i| ops[i].is_update())
            .filter_map(|&i| Some((version_of(&ops[i])?, i)))
            .collect();
        let acked_updates: Vec<usize> = ids
            .iter()
            .copied()
            .filter(|&i| ops[i].is_update() && ops[i].is_acked())
            .collect();
        let strict_index = strict_indexes(ops, &acked_updates, replicas);
        let read_index = read_indexes(ops, ids, replicas);
        for &r in ids
            .iter()
            .filter(|&&i| ops[i].is_read() && ops[i].is_acked())
        {
            if ops[r].value.is_some() {
                invented.record(judge_invented(ops, r, &writers), ops, limits);
            }
            if let Some(v) = judge_strict(ops, r, &strict_index, &collected, replicas) {
                strict.record(v, ops, limits);
            }
            if let Some(v) = judge_quorum_reads(ops, r, &read_index, &collected, replicas) {
                quorum_reads.record(v, ops, limits);
            }
        }
        let Some(heal) = heal_ns else {
            lost.record(Verdict::Unknown, ops, limits);
            deletes.record(Verdict::Unknown, ops, limits);
            converged.record(Verdict::Unknown, ops, limits);
            continue;
        };
        let finals = final_reads(ops, ids, heal);
        if finals.is_empty() {
            lost.record(Verdict::Unknown, ops, limits);
            deletes.record(Verdict::Unknown, ops, limits);
            converged.record(Verdict::Unknown, ops, limits);
            continue;
        }
        let delete_ops: Vec<usize> = ids
            .iter()
            .copied()
            .filter(|&i| ops[i].op == OpKind::Delete)
            .collect();
        lost.record(
            judge_lost(
                ops,
                &finals,
                &acked_updates,
                &writers,
                &by_version,
                (&delete_ops, &collected),
            ),
            ops,
            limits,
        );
        deletes.record(judge_deletes(ops, &finals, &acked_updates), ops, limits);
        converged.record(judge_converged(ops, &finals), ops, limits);
    }
    Report {
        rows: vec![
            invented,
            strict,
            quorum_reads,
            lost,
            deletes,
            converged,
            ryw,
            monotonic,
        ],
    }
}

/// Whether the nodes' final reads (`finals`, of one key) agree, each read's state given by
/// `state`: unknown with fewer than two; `what` names the key's type in the message.
pub(crate) fn agreement<T: Ord>(
    ops: &[Operation],
    finals: &[usize],
    what: &str,
    state: impl Fn(&Operation) -> T,
) -> Verdict {
    let states: BTreeSet<T> = finals.iter().map(|&f| state(&ops[f])).collect();
    if finals.len() < 2 {
        Verdict::Unknown
    } else if states.len() == 1 {
        Verdict::Pass
    } else {
        Verdict::Violation {
            message: format!(
                "after healing, {what} {:?} reads differently on different nodes: {:?}",
                ops[finals[0]].key,
                finals
                    .iter()
                    .map(|&f| format!("{}={:?}", ops[f].node, ops[f].value))
                    .collect::<Vec<_>>()
            ),
            ops: finals.to_vec(),
        }
    }
}

/// Each node's last acknowledged read of a key (`ids`) begun after `heal`, by node name.
pub(crate) fn final_reads(ops: &[Operation], ids: &[usize], heal: u64) -> Vec<usize> {
    let mut finals: BTreeMap<&str, usize> = BTreeMap::new();
    for &i in ids {
        let op = &ops[i];
        if op.is_read() && op.is_acked() && op.invoke_ns >= heal {
            finals.insert(op.node.as_str(), i);
        }
    }
    finals.into_values().collect()
}

/// The newest version among some operations that completed before a time: the operations
/// sorted by completion with the running maximum, so each question is a binary search (the
/// checkers stay O(n log n) per key on long histories).
struct NewestBefore {
    done: Vec<u64>,
    best: Vec<(Ver, usize)>,
}

impl NewestBefore {
    fn new(ops: &[Operation], ids: impl Iterator<Item = usize>) -> NewestBefore {
        let mut v: Vec<(u64, Ver, usize)> = ids
            .filter_map(|i| Some((ops[i].complete_ns, version_of(&ops[i])?, i)))
            .collect();
        v.sort_unstable();
        let mut best: Vec<(Ver, usize)> = Vec::with_capacity(v.len());
        for &(_, ver, i) in &v {
            let next = match best.last() {
                Some(&b) if b >= (ver, i) => b,
                _ => (ver, i),
            };
            best.push(next);
        }
        NewestBefore {
            done: v.iter().map(|x| x.0).collect(),
            best,
        }
    }

    /// The newest (version, operation) among those that completed strictly before `t`.
    fn before(&self, t: u64) -> Option<(Ver, usize)> {
        let n = self.done.partition_point(|&d| d < t);
        n.checked_sub(1).map(|i| self.best[i])
    }
}

/// Session guarantees, per key: each session-level read against the same session's acknowledged
/// updates (read your writes) and earlier acknowledged reads (monotonic reads) of the key that
/// completed before it began.
fn judge_sessions(
    ops: &[Operation],
    ids: &[usize],
    collected: &Collected,
    (ryw, monotonic): (&mut Row, &mut Row),
    limits: &Limits,
) {
    // Per session: its acknowledged updates and its acknowledged reads of the key.
    let mut by_session: BTreeMap<&str, (Vec<usize>, Vec<usize>)> = BTreeMap::new();
    for &i in ids {
        let o = &ops[i];
        if let (Some(s), true) = (o.session.as_deref(), o.is_acked()) {
            let e = by_session.entry(s).or_default();
            if o.is_update() {
                e.0.push(i);
            } else {
                e.1.push(i);
            }
        }
    }
    let indexed: BTreeMap<&str, (NewestBefore, NewestBefore)> = by_session
        .into_iter()
        .map(|(s, (updates, reads))| {
            (
                s,
                (
                    NewestBefore::new(ops, updates.into_iter()),
                    NewestBefore::new(ops, reads.into_iter()),
                ),
            )
        })
        .collect();
    for &r in ids {
        let op = &ops[r];
        let wants_ryw = matches!(op.level.as_str(), "read_your_writes" | "session");
        let wants_mr = matches!(op.level.as_str(), "monotonic_reads" | "session");
        if !op.is_read() || !op.is_acked() || !(wants_ryw || wants_mr) {
            continue;
        }
        let Some((updates, reads)) = op.session.as_deref().and_then(|s| indexed.get(s)) else {
            continue;
        };
        let Some(got) = version_of(op) else { continue };
        for (wanted, row, index, what) in [
            (wants_ryw, &mut *ryw, updates, "wrote"),
            (wants_mr, &mut *monotonic, reads, "had read"),
        ] {
            if !wanted {
                continue;
            }
            let verdict = match index.before(op.invoke_ns) {
                Some((v, i)) if !collected.meets(op, got, v) => Verdict::Violation {
                    message: format!(
                        "{} read of key {:?} on {} returned version {got:?}, older than {v:?} \
                         which its session {what} before the read began",
                        op.level, op.key, op.node
                    ),
                    ops: vec![i, r],
                },
                _ => Verdict::Pass,
            };
            row.record(verdict, ops, limits);
        }
    }
}

fn judge_invented(ops: &[Operation], read: usize, writers: &HashMap<&str, usize>) -> Verdict {
    let op = &ops[read];
    let value = op.value.as_deref().unwrap_or_default();
    let violation = |why: String, ids: Vec<usize>| Verdict::Violation {
        message: format!(
            "read of key {:?} on {} returned {value:?}, {why}",
            op.key, op.node
        ),
        ops: ids,
    };
    let Some(&w) = writers.get(value) else {
        return violation("which no write ever wrote to this key".into(), vec![read]);
    };
    let write = &ops[w];
    if write.ok == Some(false) && version_of(write).is_none() {
        return violation(
            "which only a write that certainly failed wrote".into(),
            vec![read, w],
        );
    }
    if write.invoke_ns > op.complete_ns {
        return violation(
            "before the write of that value had even begun".into(),
            vec![read, w],
        );
    }
    match (version_of(op), version_of(write)) {
        (Some(r), Some(wv)) if r != wv => violation(
            format!("at version {r:?}, but that value's write has version {wv:?}"),
            vec![read, w],
        ),
        _ => Verdict::Pass,
    }
}

/// Per read quorum size R: the strictly acknowledged updates at a W with R + W > N.
fn strict_indexes(
    ops: &[Operation],
    acked: &[usize],
    replicas: u32,
) -> BTreeMap<u32, NewestBefore> {
    ["one", "quorum", "all"]
        .iter()
        .filter_map(|q| count(q, replicas))
        .map(|r| {
            let meets = acked.iter().copied().filter(|&u| {
                let w = &ops[u];
                w.strict == Some(true)
                    && w.quorum
                        .as_deref()
                        .and_then(|q| count(q, replicas))
                        .is_some_and(|w| r + w > replicas)
            });
            (r, NewestBefore::new(ops, meets))
        })
        .collect()
}

/// `None` when the read is not a strict-quorum read (R + W > N for no W, or no version).
fn judge_strict(
    ops: &[Operation],
    read: usize,
    index: &BTreeMap<u32, NewestBefore>,
    collected: &Collected,
    replicas: u32,
) -> Option<Verdict> {
    let op = &ops[read];
    let r = count(op.quorum.as_deref()?, replicas)?;
    let read_version = version_of(op)?;
    // The newest strictly acknowledged update that completed before the read began, at a W
    // that meets R; nothing it had to see: nothing to judge.
    let (newest, u) = index.get(&r)?.before(op.invoke_ns)?;
    Some(if collected.meets(op, read_version, newest) {
        Verdict::Pass
    } else {
        Verdict::Violation {
            message: format!(
                "read of key {:?} at r={} on {} returned version {read_version:?}, older than \
                 {newest:?}, which a write acknowledged strictly at w={} before the read began \
                 had written (R + W > N = {replicas})",
                op.key,
                op.quorum.as_deref().unwrap_or("?"),
                op.node,
                ops[u].quorum.as_deref().unwrap_or("?")
            ),
            ops: vec![u, read],
        }
    })
}

/// Per read quorum size: the key's acknowledged reads at it, newest version by completion.
fn read_indexes(ops: &[Operation], ids: &[usize], replicas: u32) -> BTreeMap<u32, NewestBefore> {
    let mut by_r: BTreeMap<u32, Vec<usize>> = BTreeMap::new();
    for &i in ids {
        let o = &ops[i];
        if let (true, Some(r)) = (
            o.is_read() && o.is_acked(),
            o.quorum.as_deref().and_then(|q| count(q, replicas)),
        ) {
            by_r.entry(r).or_default().push(i);
        }
    }
    by_r.into_iter()
        .map(|(r, reads)| (r, NewestBefore::new(ops, reads.into_iter())))
        .collect()
}

/// `None` when no earlier read's quorum overlaps this one's in every case.
fn judge_quorum_reads(
    ops: &[Operation],
    read: usize,
    index: &BTreeMap<u32, NewestBefore>,
    collected: &Collected,
    replicas: u32,
) -> Option<Verdict> {
    let op = &ops[read];
    let r = count(op.quorum.as_deref()?, replicas)?;
    let got = version_of(op)?;
    let (need, earlier) = index
        .iter()
        .filter(|(r2, _)| r + **r2 > replicas)
        .filter_map(|(_, idx)| idx.before(op.invoke_ns))
        .max()?;
    Some(if collected.meets(op, got, need) {
        Verdict::Pass
    } else {
        Verdict::Violation {
            message: format!(
                "read of key {:?} at r={} on {} returned version {got:?}, older than {need:?}, \
                 which a read at r={} on {} returned before it began (their quorums overlap: \
                 R + R' > N = {replicas})",
                op.key,
                op.quorum.as_deref().unwrap_or("?"),
                op.node,
                ops[earlier].quorum.as_deref().unwrap_or("?"),
                ops[earlier].node,
            ),
            ops: vec![earlier, read],
        }
    })
}

fn newest_acked(ops: &[Operation], acked: &[usize]) -> Option<(Ver, usize)> {
    acked
        .iter()
        .filter_map(|&u| Some((version_of(&ops[u])?, u)))
        .max()
}

/// Whether the state a final read `f` saw at version `got` can come from an update that did
/// not certainly fail: the write of its value, or (absent) a delete at that version or one
/// whose version is unknown.
fn may_have_written(
    ops: &[Operation],
    f: usize,
    got: Ver,
    writers: &HashMap<&str, usize>,
    by_version: &HashMap<Ver, usize>,
    deletes: &[usize],
) -> bool {
    let possible = |w: usize| ops[w].ok != Some(false) || ops[w].version.is_some();
    match ops[f].value.as_deref() {
        Some(v) => writers
            .get(v)
            .is_some_and(|&w| possible(w) && version_of(&ops[w]).is_none_or(|wv| wv == got)),
        None => {
            by_version.get(&got).is_some_and(|&d| possible(d))
                || deletes
                    .iter()
                    .any(|&d| ops[d].ok != Some(false) && ops[d].version.is_none())
        }
    }
}

fn judge_lost(
    ops: &[Operation],
    finals: &[usize],
    acked: &[usize],
    writers: &HashMap<&str, usize>,
    by_version: &HashMap<Ver, usize>,
    (deletes, collected): (&[usize], &Collected),
) -> Verdict {
    let Some((newest, u)) = newest_acked(ops, acked) else {
        return Verdict::Pass;
    };
    for &f in finals {
        let Some(got) = version_of(&ops[f]) else {
            return Verdict::Unknown;
        };
        if !collected.meets(&ops[f], got, newest) {
            return Verdict::Violation {
                message: format!(
                    "after healing, key {:?} on {} is at version {got:?}, older than the \
                     acknowledged update at {newest:?}: an acknowledged write was lost",
                    ops[f].key, ops[f].node
                ),
                ops: vec![u, f],
            };
        }
        if got > newest && !may_have_written(ops, f, got, writers, by_version, deletes) {
            return Verdict::Violation {
                message: format!(
                    "after healing, key {:?} on {} is at version {got:?}, which no update that \
                     may have happened wrote, above the acknowledged {newest:?}",
                    ops[f].key, ops[f].node
                ),
                ops: vec![u, f],
            };
        }
    }
    Verdict::Pass
}

fn judge_deletes(ops: &[Operation], finals: &[usize], acked: &[usize]) -> Verdict {
    let Some((newest, u)) = newest_acked(ops, acked) else {
        return Verdict::Pass;
    };
    if ops[u].op != OpKind::Delete {
        return Verdict::Pass;
    }
    for &f in finals {
        let fop = &ops[f];
        let Some(got) = version_of(fop) else {
            return Verdict::Unknown;
        };
        if fop.value.is_some() && got <= newest {
            return Verdict::Violation {
                message: format!(
                    "after healing, key {:?} on {} holds {:?} at version {got:?} although it was \
                     deleted at {newest:?} (acknowledged): a deleted key came back",
                    fop.key, fop.node, fop.value
                ),
                ops: vec![u, f],
            };
        }
    }
    Verdict::Pass
}

fn judge_converged(ops: &[Operation], finals: &[usize]) -> Verdict {
    if finals.len() < 2 {
        return Verdict::Unknown;
    }
    let first = &ops[finals[0]];
    // A tombstone and no version at all (the tombstone collected) are the same state.
    let absent = |o: &Operation| o.value.is_none() && version_of(o).is_some();
    for &f in &finals[1..] {
        let same = if absent(first) && absent(&ops[f]) {
            true
        } else {
            version_of(&ops[f]) == version_of(first) && ops[f].value == first.value
        };
        if !same {
            return Verdict::Violation {
                message: format!(
                    "after healing, key {:?} reads {:?} ({:?}) on {} but {:?} ({:?}) on {}",
                    first.key,
                    first.value,
                    first.version,
                    first.node,
                    ops[f].value,
                    ops[f].version,
                    ops[f].node
                ),
                ops: vec![finals[0], f],
            };
        }
    }
    Verdict::Pass
}

#[cfg(test)]
mod tests {
    use super::*;

    fn op(kind: OpKind, key: &str, value: Option<&str>, t: (u64, u64)) -> Operation {
        Operation {
            client: 1,
            session: None,
            op: kind,
            key: key.into(),
            value: value.map(Into::into),
            invoke_ns: t.0,
            complete_ns: t.1,
            ok: Some(true),
            level: "eventual".into(),
            node: "n1".into(),
            position: None,
            staleness_entries: None,
            staleness_ms: None,
            quorum: None,
            version: None,
            strict: None,
            dots: None,
        }
    }

    fn write(key: &str, value: &str, t: (u64, u64), w: &str, version: &str) -> Operation {
        Operation {
            quorum: Some(w.into()),
            version: Some(version.into()),
            strict: Some(true),
            ..op(OpKind::Write, key, Some(value), t)
        }
    }

    fn delete(key: &str, t: (u64, u64), w: &str, version: &str) -> Operation {
        Operation {
            quorum: Some(w.into()),
            version: Some(version.into()),
            strict: Some(true),
            ..op(OpKind::Delete, key, None, t)
        }
    }

    fn read(key: &str, value: Option<&str>, t: (u64, u64), r: &str, version: &str) -> Operation {
        Operation {
            quorum: Some(r.into()),
            version: Some(version.into()),
            ..op(OpKind::Read, key, value, t)
        }
    }

    fn on(node: &str, o: Operation) -> Operation {
        Operation {
            node: node.into(),
            ..o
        }
    }

    fn row<'a>(report: &'a Report, property: &str) -> &'a Row {
        report.row(LEVEL, property).expect("row")
    }

    #[test]
    fn a_clean_history_passes_every_row() {
        let ops = vec![
            write("k", "a", (0, 10), "quorum", "100.1"),
            read("k", Some("a"), (20, 30), "quorum", "100.1"),
            delete("k", (40, 50), "quorum", "200.2"),
            read("k", None, (60, 70), "quorum", "200.2"),
            on("n1", read("k", None, (100, 110), "one", "200.2")),
            on("n2", read("k", None, (100, 110), "one", "200.2")),
        ];
        let report = check(&ops, 3, Some(90), &Limits::default());
        assert!(!report.has_violations(), "{}", report.table());
        assert_eq!(row(&report, STRICT_QUORUM_READS).checked, 2);
        assert_eq!(row(&report, CONVERGENCE).checked, 1);
    }

    #[test]
    fn a_quorum_read_that_misses_a_strict_quorum_write_is_caught() {
        let ops = vec![
            write("k", "a", (0, 10), "quorum", "100.1"),
            write("k", "b", (20, 30), "quorum", "300.1"),
            read("k", Some("a"), (40, 50), "quorum", "100.1"),
            // r=one after w=quorum with N=3 promises nothing.
            read("k", Some("a"), (40, 50), "one", "100.1"),
        ];
        let report = check(&ops, 3, None, &Limits::default());
        let r = row(&report, STRICT_QUORUM_READS);
        assert_eq!(
            (r.checked, r.violations_total),
            (1, 1),
            "{}",
            report.table()
        );
        // A sloppy acknowledgement promises nothing either.
        let mut sloppy = ops.clone();
        sloppy[1].strict = Some(false);
        let report = check(&sloppy, 3, None, &Limits::default());
        assert_eq!(row(&report, STRICT_QUORUM_READS).violations_total, 0);
    }

    #[test]
    fn a_lost_write_a_resurrected_key_and_divergence_are_caught_after_healing() {
        let lost = vec![
            write("k", "a", (0, 10), "one", "100.1"),
            write("k", "b", (20, 30), "one", "300.2"),
            on("n1", read("k", Some("a"), (100, 110), "one", "100.1")),
            on("n2", read("k", Some("a"), (100, 110), "one", "100.1")),
        ];
        let report = check(&lost, 3, Some(90), &Limits::default());
        assert_eq!(row(&report, NO_ACKED_WRITE_LOST).violations_total, 1);
        assert_eq!(row(&report, CONVERGENCE).violations_total, 0);

        let resurrected = vec![
            write("k", "a", (0, 10), "one", "100.1"),
            delete("k", (20, 30), "one", "300.2"),
            on("n1", read("k", Some("a"), (100, 110), "one", "100.1")),
        ];
        let report = check(&resurrected, 3, Some(90), &Limits::default());
        assert_eq!(row(&report, DELETES_STAY).violations_total, 1);

        let diverged = vec![
            write("k", "a", (0, 10), "one", "100.1"),
            write("k", "b", (0, 10), "one", "100.2"),
            on("n1", read("k", Some("a"), (100, 110), "one", "100.1")),
            on("n2", read("k", Some("b"), (100, 110), "one", "100.2")),
        ];
        let report = check(&diverged, 3, Some(90), &Limits::default());
        assert_eq!(row(&report, CONVERGENCE).violations_total, 1);
    }

    #[test]
    fn session_reads_older_than_the_sessions_own_writes_or_reads_are_caught() {
        let in_session = |o: Operation, level: &str| Operation {
            session: Some("c1".into()),
            level: level.into(),
            ..o
        };
        let ops = vec![
            in_session(write("k", "a", (0, 10), "one", "100.1"), "eventual"),
            in_session(read("k", None, (20, 30), "one", "none"), "read_your_writes"),
            in_session(read("k", Some("a"), (40, 50), "one", "100.1"), "session"),
            in_session(read("k", None, (60, 70), "one", "none"), "monotonic_reads"),
            // Eventual reads promise neither.
            in_session(read("k", None, (80, 90), "one", "none"), "eventual"),
        ];
        let report = check(&ops, 3, None, &Limits::default());
        let r = row(&report, READ_YOUR_WRITES);
        assert_eq!(
            (r.checked, r.violations_total),
            (2, 1),
            "{}",
            report.table()
        );
        let m = row(&report, MONOTONIC_READS);
        assert_eq!(
            (m.checked, m.violations_total),
            (2, 1),
            "{}",
            report.table()
        );
    }

    #[test]
    fn a_collected_tombstone_reads_as_no_version_and_meets_the_delete_but_not_a_later_write() {
        let in_session = |o: Operation| Operation {
            session: Some("c1".into()),
            level: "session".into(),
            ..o
        };
        let collected = vec![
            in_session(write("k", "a", (0, 10), "quorum", "100.1")),
            in_session(read("k", Some("a"), (12, 14), "one", "100.1")),
            delete("k", (20, 30), "quorum", "200.2"),
            in_session(read("k", None, (40, 50), "quorum", "none")),
            on("n1", read("k", None, (100, 110), "one", "none")),
            on("n2", read("k", None, (100, 110), "one", "200.2")),
        ];
        let report = check(&collected, 3, Some(90), &Limits::default());
        assert!(!report.has_violations(), "{}", report.table());
        assert_eq!(row(&report, STRICT_QUORUM_READS).checked, 1);

        // Absent, but a write after the delete was acknowledged: lost, not collected.
        let mut rewritten = collected.clone();
        rewritten.insert(3, write("k", "b", (32, 36), "quorum", "300.1"));
        let report = check(&rewritten, 3, Some(90), &Limits::default());
        assert_eq!(row(&report, STRICT_QUORUM_READS).violations_total, 1);
        assert_eq!(row(&report, NO_ACKED_WRITE_LOST).violations_total, 1);
        assert_eq!(row(&report, READ_YOUR_WRITES).violations_total, 0);
        // No delete began before the read ended: nothing was there to collect.
        let mut early = collected.clone();
        early[2].invoke_ns = 60;
        early[2].complete_ns = 70;
        let report = check(&early, 3, None, &Limits::default());
        assert_eq!(row(&report, STRICT_QUORUM_READS).violations_total, 1);
        assert_eq!(row(&report, MONOTONIC_READS).violations_total, 1);
    }

    #[test]
    fn a_quorum_read_older_than_an_overlapping_earlier_read_is_caught() {
        let ops = vec![
            write("k", "a", (0, 10), "one", "100.1"),
            write("k", "b", (20, 30), "one", "300.2"),
            on("n2", read("k", Some("b"), (40, 50), "quorum", "300.2")),
            on("n3", read("k", Some("a"), (60, 70), "quorum", "100.1")),
            // r=one after r=quorum: the quorums need not overlap (N = 3).
            on("n3", read("k", Some("a"), (60, 70), "one", "100.1")),
            // Overlapping but concurrent with the read that saw b: nothing to judge.
            on("n1", read("k", Some("a"), (45, 80), "quorum", "100.1")),
            on("n1", read("k", Some("b"), (90, 95), "all", "300.2")),
        ];
        let report = check(&ops, 3, None, &Limits::default());
        let r = row(&report, MONOTONIC_QUORUM_READS);
        assert_eq!(
            (r.checked, r.violations_total),
            (2, 1),
            "{}",
            report.table()
        );
        // After an r=all read, even an r=one read must see as much.
        let after_all = vec![
            write("k", "a", (0, 10), "one", "100.1"),
            read("k", Some("a"), (20, 30), "all", "100.1"),
            read("k", None, (40, 50), "one", "none"),
        ];
        let report = check(&after_all, 3, None, &Limits::default());
        assert_eq!(row(&report, MONOTONIC_QUORUM_READS).violations_total, 1);
    }

    #[test]
    fn invented_values_and_versions_are_caught() {
        let ops = vec![
            write("k", "a", (0, 10), "one", "100.1"),
            read("k", Some("zzz"), (20, 30), "one", "100.1"),
            read("k", Some("a"), (20, 30), "one", "999.1"),
        ];
        let report = check(&ops, 3, None, &Limits::default());
        assert_eq!(row(&report, NEVER_INVENTED).violations_total, 2);
        assert_eq!(parse_version("none"), Some((0, 0)));
        assert_eq!(parse_version("12.3"), Some((12, 3)));
        assert_eq!(parse_version("12"), None);
    }
}
