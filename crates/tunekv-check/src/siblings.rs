//! The promises of siblings keyspaces (issue 17), judged on a history of writes (the value
//! written; `dots`: the dot the write issued, then the context it superseded), deletes
//! (`dots`: the context they superseded) and reads (the concurrent values, a JSON array of
//! strings). Context entries are `NODE:COUNTER` (every dot of that node up to the counter) or
//! `NODE.COUNTER` (one dot).
//!
//! - **no phantom values** — every value a read returns was written by a write begun before
//!   the read ended.
//! - **no acknowledged write lost** — after healing, on every node, each acknowledged write is
//!   among the values unless a later acknowledged write or delete superseded it (its context
//!   covers the write's dot), or an update of unknown outcome that ended after it began may
//!   have; and every value there is one no acknowledged update superseded.
//! - **siblings bounded by writers** — after healing, a key holds at most one value per
//!   writing client, plus one for each of that client's writes of unknown outcome (a session's
//!   write supersedes its own last one). During a partition a replica may hold more: a
//!   session's write carries only its last write's dot, so a replica that missed the write
//!   before it keeps what that one superseded until it arrives.
//! - **convergence** — after healing, every node's final read of a key is the same.
//! - **read your writes** — a read at `read_your_writes` or `session` reflects its session's
//!   latest update of the key acknowledged before the read began: a write's value is there
//!   unless an update begun before the read ended superseded its dot (or may have: an unknown
//!   outcome); no value is there whose dot the session's latest delete superseded.

use crate::history::{LevelKind, OpKind, Operation};
use crate::report::{Report, Row, Verdict};
use crate::Limits;
use std::collections::{BTreeMap, BTreeSet};

pub const LEVEL: &str = "siblings";
pub const NO_PHANTOM: &str = "no phantom values";
pub const NOTHING_LOST: &str = "no acknowledged write lost";
pub const BOUNDED: &str = "siblings bounded by writers";
pub const CONVERGENCE: &str = "convergence";
pub const READ_YOUR_WRITES: &str = "read your writes";

/// One context entry.
enum Cover {
    UpTo(u64, u64),
    Dot(u64, u64),
}

fn parse_cover(e: &str) -> Option<Cover> {
    if let Some((n, c)) = e.split_once(':') {
        return Some(Cover::UpTo(n.parse().ok()?, c.parse().ok()?));
    }
    let (n, c) = e.split_once('.')?;
    Some(Cover::Dot(n.parse().ok()?, c.parse().ok()?))
}

fn parse_dot(e: &str) -> Option<(u64, u64)> {
    let (n, c) = e.split_once('.')?;
    Some((n.parse().ok()?, c.parse().ok()?))
}

/// The values of a read (`None`: not a JSON array of strings).
fn values(op: &Operation) -> Option<BTreeSet<String>> {
    match op.value.as_deref() {
        None => Some(BTreeSet::new()),
        Some(v) => serde_json::from_str::<Vec<String>>(v)
            .ok()
            .map(|m| m.into_iter().collect()),
    }
}

/// The `value` of a read's history record when its answer is a siblings read
/// (`{"siblings": […]}`): the values as a JSON array; `None` for any other answer.
pub fn history_values(body: &[u8]) -> Option<String> {
    let v: serde_json::Value = serde_json::from_slice(body).ok()?;
    v["siblings"].is_array().then(|| v["siblings"].to_string())
}

/// The `dots` of a siblings write's or delete's record, from its answer's `dots` and `covered`.
pub fn history_dots(issued: &[String], covered: &[String]) -> Vec<String> {
    issued.iter().chain(covered).cloned().collect()
}

/// Whether read `op` holds more than one value per writing client (plus one per write of
/// that client of unknown outcome begun before the read ended): the client and its count.
fn over_bound(
    op: &Operation,
    vals: &BTreeSet<String>,
    writer: &BTreeMap<&str, (u64, u64)>,
    unknown: &[&Operation],
) -> Option<(u64, usize)> {
    let mut per_client: BTreeMap<u64, usize> = BTreeMap::new();
    for v in vals {
        if let Some(w) = writer.get(v.as_str()) {
            *per_client.entry(w.0).or_insert(0) += 1;
        }
    }
    per_client.into_iter().find(|(client, n)| {
        let allowed = 1 + unknown
            .iter()
            .filter(|u| {
                u.client == *client && u.op == OpKind::Write && u.invoke_ns < op.complete_ns
            })
            .count();
        *n > allowed
    })
}

/// The context entries an update superseded (a write's, after the dot it issued).
fn covers_of(o: &Operation) -> Vec<Cover> {
    o.dots
        .iter()
        .flatten()
        .skip(usize::from(o.op == OpKind::Write))
        .filter_map(|e| parse_cover(e))
        .collect()
}

fn covered_by(covers: &[Cover], d: (u64, u64)) -> bool {
    covers.iter().any(|c| match *c {
        Cover::UpTo(n, c) => n == d.0 && c >= d.1,
        Cover::Dot(n, c) => (n, c) == d,
    })
}

/// Judges session read `r` (values `vals`) of a key with updates `updates` (those not
/// certainly failed) against its session's latest acknowledged update before it began.
fn judge_own_update(
    ops: &[Operation],
    updates: &[(usize, &Operation)],
    r: usize,
    vals: &BTreeSet<String>,
) -> Verdict {
    let read = &ops[r];
    let Some(session) = read.session.as_deref() else {
        return Verdict::Unknown;
    };
    let Some(&(own, o)) = updates
        .iter()
        .filter(|(_, o)| {
            o.session.as_deref() == Some(session) && o.is_acked() && o.complete_ns < read.invoke_ns
        })
        .max_by_key(|(_, o)| o.complete_ns)
    else {
        return Verdict::Pass;
    };
    let issued = |o: &Operation| o.dots.as_ref()?.first().and_then(|d| parse_dot(d));
    match (o.op, issued(o)) {
        (OpKind::Write, Some(d)) => {
            let v = o.value.as_deref().unwrap_or_default();
            if vals.contains(v) {
                return Verdict::Pass;
            }
            let superseded = updates.iter().any(|&(i, u)| {
                i != own
                    && u.invoke_ns < read.complete_ns
                    && (u.ok.is_none() || covered_by(&covers_of(u), d))
            });
            if superseded {
                return Verdict::Pass;
            }
            Verdict::Violation {
                message: format!(
                    "{} read of {:?} on {} lacks {v:?}, its session's write (dot {}.{}) \
                     acknowledged before the read began, which no update had superseded",
                    read.level, read.key, read.node, d.0, d.1
                ),
                ops: vec![own, r],
            }
        }
        (OpKind::Delete, _) => {
            let covers = covers_of(o);
            let back = updates.iter().find(|(_, w)| {
                w.op == OpKind::Write
                    && w.is_acked()
                    && w.value.as_deref().is_some_and(|v| vals.contains(v))
                    && issued(w).is_some_and(|d| covered_by(&covers, d))
            });
            match back {
                Some(&(w, wo)) => Verdict::Violation {
                    message: format!(
                        "{} read of {:?} on {} holds {:?}, which its session's delete \
                         acknowledged before the read began superseded",
                        read.level,
                        read.key,
                        read.node,
                        wo.value.as_deref().unwrap_or_default()
                    ),
                    ops: vec![own, w, r],
                },
                None => Verdict::Pass,
            }
        }
        _ => Verdict::Pass,
    }
}

/// Judges a siblings history; `heal_ns` starts the final phase.
pub fn check(ops: &[Operation], heal_ns: Option<u64>, limits: &Limits) -> Report {
    let mut by_key: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
    for (i, op) in ops.iter().enumerate() {
        by_key.entry(op.key.as_str()).or_default().push(i);
    }
    let mut phantom = Row::new(LEVEL, NO_PHANTOM);
    let mut lost = Row::new(LEVEL, NOTHING_LOST);
    let mut bounded = Row::new(LEVEL, BOUNDED);
    let mut converged = Row::new(LEVEL, CONVERGENCE);
    let mut ryw = Row::new(LEVEL, READ_YOUR_WRITES);
    for ids in by_key.values() {
        let updates: Vec<(usize, &Operation)> = ids
            .iter()
            .map(|&i| (i, &ops[i]))
            .filter(|(_, o)| o.is_update() && o.ok != Some(false))
            .collect();
        let writes = || updates.iter().filter(|(_, o)| o.op == OpKind::Write);
        // Every context an acknowledged update superseded.
        let mut upto: BTreeMap<u64, u64> = BTreeMap::new();
        let mut single: BTreeSet<(u64, u64)> = BTreeSet::new();
        for (_, o) in updates.iter().filter(|(_, o)| o.is_acked()) {
            // A write's first entry is the dot it issued; the rest, and a delete's, its context.
            let covers = o
                .dots
                .iter()
                .flatten()
                .skip(usize::from(o.op == OpKind::Write));
            for e in covers {
                match parse_cover(e) {
                    Some(Cover::UpTo(n, c)) => {
                        let u = upto.entry(n).or_insert(0);
                        *u = (*u).max(c);
                    }
                    Some(Cover::Dot(n, c)) => {
                        single.insert((n, c));
                    }
                    None => {}
                }
            }
        }
        let superseded =
            |d: (u64, u64)| upto.get(&d.0).is_some_and(|&c| c >= d.1) || single.contains(&d);
        let issued = |o: &Operation| o.dots.as_ref()?.first().and_then(|d| parse_dot(d));
        // Who wrote each value, and when writes of it began.
        let mut writer: BTreeMap<&str, (u64, u64)> = BTreeMap::new();
        for (_, o) in writes() {
            let v = o.value.as_deref().unwrap_or_default();
            let e = writer.entry(v).or_insert((o.client, o.invoke_ns));
            e.1 = e.1.min(o.invoke_ns);
        }
        let unknown: Vec<&Operation> = updates
            .iter()
            .filter(|(_, o)| o.ok.is_none())
            .map(|(_, o)| *o)
            .collect();
        for &r in ids {
            let op = &ops[r];
            if !op.is_read() || !op.is_acked() {
                continue;
            }
            let Some(vals) = values(op) else {
                phantom.record(
                    Verdict::Violation {
                        message: format!(
                            "read of {:?} on {} returned {:?}, not a list of values",
                            op.key, op.node, op.value
                        ),
                        ops: vec![r],
                    },
                    ops,
                    limits,
                );
                continue;
            };
            let ghost = vals
                .iter()
                .find(|v| writer.get(v.as_str()).is_none_or(|w| w.1 > op.complete_ns));
            phantom.record(
                match ghost {
                    Some(v) => Verdict::Violation {
                        message: format!(
                            "read of {:?} on {} returned {v:?}, which no write begun before the \
                             read ended wrote",
                            op.key, op.node
                        ),
                        ops: vec![r],
                    },
                    None => Verdict::Pass,
                },
                ops,
                limits,
            );
            if matches!(
                LevelKind::parse(&op.level),
                LevelKind::ReadYourWrites | LevelKind::Session
            ) && op.session.is_some()
            {
                ryw.record(judge_own_update(ops, &updates, r, &vals), ops, limits);
            }
        }
        let Some(heal) = heal_ns else {
            lost.record(Verdict::Unknown, ops, limits);
            bounded.record(Verdict::Unknown, ops, limits);
            converged.record(Verdict::Unknown, ops, limits);
            continue;
        };
        let finals = crate::leaderless::final_reads(ops, ids, heal);
        if finals.is_empty() {
            lost.record(Verdict::Unknown, ops, limits);
            bounded.record(Verdict::Unknown, ops, limits);
            converged.record(Verdict::Unknown, ops, limits);
            continue;
        }
        let mut must: Vec<(usize, &str)> = Vec::new();
        let mut may: BTreeSet<&str> = BTreeSet::new();
        for &(i, o) in writes() {
            let v = o.value.as_deref().unwrap_or_default();
            match (o.ok, issued(o)) {
                (Some(true), Some(d)) if !superseded(d) => {
                    may.insert(v);
                    if !unknown.iter().any(|u| u.complete_ns > o.invoke_ns) {
                        must.push((i, v));
                    }
                }
                (None, _) => {
                    may.insert(v);
                }
                _ => {}
            }
        }
        for &f in &finals {
            let op = &ops[f];
            let have = values(op).unwrap_or_default();
            bounded.record(
                match over_bound(op, &have, &writer, &unknown) {
                    Some((client, n)) => Verdict::Violation {
                        message: format!(
                            "after healing, {:?} on {} holds {n} values written by client \
                             {client}, whose writes each supersede its last one",
                            op.key, op.node
                        ),
                        ops: vec![f],
                    },
                    None => Verdict::Pass,
                },
                ops,
                limits,
            );
            let missing = must.iter().find(|(_, v)| !have.contains(*v));
            let extra = have.iter().find(|v| !may.contains(v.as_str()));
            lost.record(
                match (missing, extra) {
                    (Some((w, v)), _) => Verdict::Violation {
                        message: format!(
                            "after healing, {:?} on {} lacks {v:?}, an acknowledged write no \
                             later update superseded",
                            op.key, op.node
                        ),
                        ops: vec![*w, f],
                    },
                    (None, Some(v)) => Verdict::Violation {
                        message: format!(
                            "after healing, {:?} on {} holds {v:?}, which an acknowledged update \
                             superseded",
                            op.key, op.node
                        ),
                        ops: vec![f],
                    },
                    (None, None) => Verdict::Pass,
                },
                ops,
                limits,
            );
        }
        converged.record(
            crate::leaderless::agreement(ops, &finals, "siblings of", values),
            ops,
            limits,
        );
    }
    Report {
        rows: vec![phantom, lost, bounded, converged, ryw],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn op(
        client: u64,
        kind: OpKind,
        value: Option<&str>,
        t: (u64, u64),
        dots: &[&str],
    ) -> Operation {
        Operation {
            client,
            dots: Some(dots.iter().map(|d| d.to_string()).collect()),
            ..crate::testkit::leaderless(kind, value, t, Some(true))
        }
    }

    fn read(vals: &str, t: (u64, u64), node: &str) -> Operation {
        Operation {
            node: node.into(),
            dots: None,
            ..op(9, OpKind::Read, Some(vals), t, &[])
        }
    }

    fn row<'a>(r: &'a Report, p: &str) -> &'a Row {
        r.row(LEVEL, p).expect("row")
    }

    /// Client 1 writes a (1.1) then b (1.2, superseding its own 1.1); client 2 writes c (2.1)
    /// concurrently; client 3 reads both and writes d with that context (covers 1:2, 2:1).
    fn history() -> Vec<Operation> {
        vec![
            op(1, OpKind::Write, Some("a"), (0, 10), &["1.1"]),
            op(1, OpKind::Write, Some("b"), (20, 30), &["1.2", "1.1"]),
            op(2, OpKind::Write, Some("c"), (20, 30), &["2.1"]),
            read(r#"["b","c"]"#, (40, 45), "n1"),
        ]
    }

    #[test]
    fn a_session_read_missing_its_own_write_or_showing_what_it_deleted_is_caught() {
        let own = |o: Operation| Operation {
            session: Some("s1".into()),
            ..o
        };
        let session_read = |vals: &str, t: (u64, u64), level: &str| Operation {
            level: level.into(),
            ..own(read(vals, t, "n2"))
        };
        let with = |extra: Vec<Operation>| {
            let mut ops = history();
            ops[1] = own(ops[1].clone());
            ops.extend(extra);
            check(&ops, None, &Limits::default())
        };
        // Its b (1.2) is there, with c concurrent.
        let r = with(vec![session_read(r#"["b","c"]"#, (40, 50), "session")]);
        assert!(!r.has_violations(), "{}", r.table());
        assert_eq!(row(&r, READ_YOUR_WRITES).checked, 1);
        // Without b: caught, unless an update begun before the read ended superseded it.
        let r = with(vec![session_read(r#"["c"]"#, (40, 50), "read_your_writes")]);
        assert_eq!(
            row(&r, READ_YOUR_WRITES).violations_total,
            1,
            "{}",
            r.table()
        );
        let d = op(3, OpKind::Write, Some("d"), (35, 60), &["3.1", "1:2"]);
        let r = with(vec![d, session_read(r#"["c"]"#, (40, 50), "session")]);
        assert_eq!(
            row(&r, READ_YOUR_WRITES).violations_total,
            0,
            "{}",
            r.table()
        );
        // Not judged at eventual.
        let r = with(vec![session_read(r#"["c"]"#, (40, 50), "eventual")]);
        assert_eq!(row(&r, READ_YOUR_WRITES).checked, 0);
        // Its own delete of what it saw (1:2, 2:1): neither b nor c may come back.
        let del = own(op(1, OpKind::Delete, None, (50, 55), &["1:2", "2:1"]));
        let r = with(vec![del.clone(), session_read("[]", (60, 70), "session")]);
        assert!(!r.has_violations(), "{}", r.table());
        let r = with(vec![del, session_read(r#"["c"]"#, (60, 70), "session")]);
        assert_eq!(
            row(&r, READ_YOUR_WRITES).violations_total,
            1,
            "{}",
            r.table()
        );
    }

    #[test]
    fn concurrent_writes_stay_and_a_context_resolves_them() {
        let mut ops = history();
        ops.push(read(r#"["b","c"]"#, (100, 110), "n1"));
        ops.push(read(r#"["b","c"]"#, (100, 110), "n2"));
        let r = check(&ops, Some(90), &Limits::default());
        assert!(!r.has_violations(), "{}", r.table());
        let mut resolved = history();
        resolved.push(op(
            3,
            OpKind::Write,
            Some("d"),
            (50, 60),
            &["3.1", "1:2", "2:1"],
        ));
        resolved.push(read(r#"["d"]"#, (100, 110), "n1"));
        let r = check(&resolved, Some(90), &Limits::default());
        assert!(!r.has_violations(), "{}", r.table());
    }

    #[test]
    fn a_lost_write_a_resurrected_one_phantoms_and_too_many_siblings_are_caught() {
        let with = |extra: Vec<Operation>| {
            let mut ops = history();
            ops.extend(extra);
            check(&ops, Some(90), &Limits::default())
        };
        // c lost.
        let r = with(vec![read(r#"["b"]"#, (100, 110), "n1")]);
        assert_eq!(row(&r, NOTHING_LOST).violations_total, 1, "{}", r.table());
        // a came back after b superseded it (a merge that ignored the context).
        let r = with(vec![read(r#"["a","b","c"]"#, (100, 110), "n1")]);
        assert_eq!(row(&r, NOTHING_LOST).violations_total, 1, "{}", r.table());
        // ... and two values of client 1 after healing.
        let r = with(vec![read(r#"["a","b"]"#, (100, 110), "n1")]);
        assert_eq!(row(&r, BOUNDED).violations_total, 1, "{}", r.table());
        // A value never written.
        let r = with(vec![read(r#"["zz"]"#, (50, 55), "n1")]);
        assert_eq!(row(&r, NO_PHANTOM).violations_total, 1, "{}", r.table());
        // Divergence.
        let r = with(vec![
            read(r#"["b","c"]"#, (100, 110), "n1"),
            read(r#"["b"]"#, (100, 110), "n2"),
        ]);
        assert_eq!(row(&r, CONVERGENCE).violations_total, 1, "{}", r.table());
    }
}
