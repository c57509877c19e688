//! The promises of set keyspaces (issue 17), judged on a history of `sadd` and `srem`
//! operations (one member each, with the dots the server reported) and reads (the members, a
//! JSON array of strings):
//!
//! - **no phantom members** — every member an acknowledged read returns was added by an add
//!   begun before the read ended (one that did not certainly fail).
//! - **add wins** — after healing, on every node, a member is present iff some add of it was
//!   not observed by a remove. An acknowledged add issued a dot and reports the dots of the
//!   member it replaced; a remove reports the dots it dropped, so "observed" is exact: a
//!   member some acknowledged add's dot of which lives on (see [`fates`]) must be present, and
//!   a member present must have an add whose dot may live on (or whose outcome is unknown).
//! - **convergence** — after healing, every node's final read of a key is the same.
//! - **read your writes** — a read at `read_your_writes` or `session` reflects its session's
//!   latest update of each member acknowledged before the read began: an add's member is
//!   present unless a remove begun before the read ended dropped its dot or one that replaced
//!   it (or may have: a remove or add of unknown outcome); a remove's member is absent when
//!   every add of it in the history was acknowledged and dropped by that remove.

use crate::history::{LevelKind, OpKind, Operation};
use crate::report::{Report, Row, Verdict};
use crate::Limits;
use std::collections::{BTreeMap, BTreeSet};

pub const LEVEL: &str = "set";
pub const NO_PHANTOM: &str = "no phantom members";
pub const ADD_WINS: &str = "add wins";
pub const CONVERGENCE: &str = "convergence";
pub const READ_YOUR_WRITES: &str = "read your writes";

/// A set read's members (`None`: not a JSON array of strings, itself a violation).
fn members(op: &Operation) -> Option<BTreeSet<String>> {
    match op.value.as_deref() {
        None => Some(BTreeSet::new()),
        Some(v) => serde_json::from_str::<Vec<String>>(v)
            .ok()
            .map(|m| m.into_iter().collect()),
    }
}

fn dots(op: &Operation) -> impl Iterator<Item = &str> {
    op.dots.iter().flatten().map(String::as_str)
}

/// An acknowledged `sadd`'s issued dot and the dots it replaced.
fn issued(op: &Operation) -> Option<(&str, impl Iterator<Item = &str>)> {
    let mut d = dots(op);
    Some((d.next()?, d))
}

/// What the updates of one key decide about each member after healing: the members that must
/// be present (with an acknowledged add that proves it) and those that may be.
///
/// A dot ends in one of three ways: dropped by a remove (dead), replaced by a later add of its
/// member that saw it (its fate is that add's dot's), or neither (live). A member must be
/// present when an acknowledged add's dot lives on through acknowledged updates alone and no
/// update of the member of unknown outcome (whose dots the history cannot follow) ended after
/// that add began; it may be present when some add's dot may live on, or an add's outcome is
/// unknown.
fn fates<'a>(ops: &'a [Operation], ids: &[usize]) -> (BTreeMap<&'a str, usize>, BTreeSet<&'a str>) {
    let updates = || {
        ids.iter()
            .map(|&i| (i, &ops[i]))
            .filter(|(_, o)| matches!(o.op, OpKind::Sadd | OpKind::Srem) && o.ok != Some(false))
    };
    let member = |o: &'a Operation| o.value.as_deref().unwrap_or_default();
    let mut dead: BTreeSet<&str> = BTreeSet::new();
    let mut replacers: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for (_, o) in updates().filter(|(_, o)| o.is_acked()) {
        match (o.op, issued(o)) {
            (OpKind::Sadd, Some((new, replaced))) => {
                for d in replaced {
                    replacers.entry(d).or_default().push(new);
                }
            }
            _ => dead.extend(dots(o)),
        }
    }
    // A dot lives on iff a chain of replacements leads from it to a dot neither replaced nor
    // dropped: marked backwards from those, along the replacements (no assumption about the
    // order the adds ran in).
    let mut replaced_by_rev: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for (old, news) in &replacers {
        for n in news {
            replaced_by_rev.entry(n).or_default().push(old);
        }
    }
    let mut alive: BTreeSet<&str> = BTreeSet::new();
    let mut todo: Vec<&str> = updates()
        .filter(|(_, o)| o.is_acked() && o.op == OpKind::Sadd)
        .filter_map(|(_, o)| Some(issued(o)?.0))
        .filter(|d| !replacers.contains_key(d) && !dead.contains(d))
        .collect();
    while let Some(d) = todo.pop() {
        if alive.insert(d) {
            todo.extend(replaced_by_rev.get(d).into_iter().flatten().copied());
        }
    }
    let mut unknown_ends: BTreeMap<&str, u64> = BTreeMap::new();
    for (_, o) in updates().filter(|(_, o)| o.ok.is_none()) {
        let e = unknown_ends.entry(member(o)).or_insert(0);
        *e = (*e).max(o.complete_ns);
    }
    let mut must = BTreeMap::new();
    let mut may = BTreeSet::new();
    for (i, o) in updates().filter(|(_, o)| o.op == OpKind::Sadd) {
        let m = member(o);
        let alive = match issued(o) {
            Some((d, _)) => alive.contains(d),
            // Unknown outcome: it may have happened, its dot unseen.
            None => true,
        };
        if alive {
            may.insert(m);
        }
        let followed = unknown_ends.get(m).is_some_and(|&end| end > o.invoke_ns);
        if o.is_acked() && alive && !followed {
            must.entry(m).or_insert(i);
        }
    }
    (must, may)
}

/// What the read-your-writes judgement needs of one key's updates.
struct Updates<'a> {
    /// Acknowledged adds: dot → the dots of later adds of its member that replaced it.
    replacers: BTreeMap<&'a str, Vec<&'a str>>,
}

impl<'a> Updates<'a> {
    fn of(ops: &'a [Operation], ids: &[usize]) -> Updates<'a> {
        let mut replacers: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
        for &i in ids {
            let o = &ops[i];
            if let (OpKind::Sadd, true, Some((new, replaced))) = (o.op, o.is_acked(), issued(o)) {
                for d in replaced {
                    replacers.entry(d).or_default().push(new);
                }
            }
        }
        Updates { replacers }
    }

    /// `d` and every dot that replaced it, directly or through others: the dots that carry
    /// its add on.
    fn carried(&self, d: &'a str) -> BTreeSet<&'a str> {
        let mut out = BTreeSet::new();
        let mut todo = vec![d];
        while let Some(d) = todo.pop() {
            if out.insert(d) {
                todo.extend(self.replacers.get(d).into_iter().flatten().copied());
            }
        }
        out
    }
}

/// Judges session read `r` of a key (its ops `ids`) against its session's own latest update
/// of each member that completed before the read began (see the module's read your writes).
fn judge_own_updates<'a>(
    ops: &'a [Operation],
    ids: &[usize],
    updates: &Updates<'a>,
    r: usize,
) -> Verdict {
    let read = &ops[r];
    let (Some(session), Some(have)) = (read.session.as_deref(), members(read)) else {
        return Verdict::Unknown;
    };
    let mut latest: BTreeMap<&str, usize> = BTreeMap::new();
    for &i in ids {
        let o = &ops[i];
        if matches!(o.op, OpKind::Sadd | OpKind::Srem)
            && o.session.as_deref() == Some(session)
            && o.is_acked()
            && o.complete_ns < read.invoke_ns
        {
            let m = o.value.as_deref().unwrap_or_default();
            let e = latest.entry(m).or_insert(i);
            if ops[*e].complete_ns <= o.complete_ns {
                *e = i;
            }
        }
    }
    // Updates of member `m` that may have happened before the read ended.
    let before = |kind: OpKind, m: &'a str| {
        ids.iter().map(|&i| &ops[i]).filter(move |o| {
            o.op == kind
                && o.ok != Some(false)
                && o.invoke_ns < read.complete_ns
                && o.value.as_deref() == Some(m)
        })
    };
    for (m, i) in latest {
        let o = &ops[i];
        match (o.op, have.contains(m)) {
            (OpKind::Sadd, false) => {
                let Some((d, _)) = issued(o) else {
                    continue;
                };
                // Dropped only by a remove that dropped a dot carrying it on, or one whose
                // dots are unknown (an unknown outcome, or after an add of unknown outcome
                // that may have replaced them).
                let carried = updates.carried(d);
                let unknown_add = before(OpKind::Sadd, m).any(|a| a.ok.is_none());
                let removable = before(OpKind::Srem, m).any(|rm| {
                    rm.ok.is_none() || unknown_add || dots(rm).any(|x| carried.contains(x))
                });
                if !removable {
                    return Verdict::Violation {
                        message: format!(
                            "{} read of set {:?} on {} lacks {m:?}, which its session added \
                             before the read began (dot {d}; no remove that could have dropped \
                             it had begun)",
                            read.level, read.key, read.node
                        ),
                        ops: vec![i, r],
                    };
                }
            }
            (OpKind::Srem, true) => {
                let dropped: BTreeSet<&str> = dots(o).collect();
                let every_add_dropped = ids
                    .iter()
                    .map(|&a| &ops[a])
                    .filter(|a| a.op == OpKind::Sadd && a.ok != Some(false))
                    .filter(|a| a.value.as_deref() == Some(m))
                    .all(|a| a.is_acked() && issued(a).is_some_and(|(d, _)| dropped.contains(d)));
                if every_add_dropped {
                    return Verdict::Violation {
                        message: format!(
                            "{} read of set {:?} on {} holds {m:?}, which its session removed \
                             before the read began, dropping every add of it",
                            read.level, read.key, read.node
                        ),
                        ops: vec![i, r],
                    };
                }
            }
            _ => {}
        }
    }
    Verdict::Pass
}

/// The `dots` of a set update's history record, from what its answer reported (`dots`,
/// `removed_dots`): an add's issued dot first, then those it replaced; a remove's dropped dots.
pub fn history_dots(kind: OpKind, issued: &[String], removed: &[String]) -> Option<Vec<String>> {
    match kind {
        OpKind::Sadd => Some(issued.iter().chain(removed).cloned().collect()),
        OpKind::Srem => Some(removed.to_vec()),
        _ => None,
    }
}

/// The `value` of a read's history record when its answer is a set's (`{"members": […]}`):
/// the members as a JSON array; `None` for any other answer.
pub fn history_members(body: &[u8]) -> Option<String> {
    let v: serde_json::Value = serde_json::from_slice(body).ok()?;
    v["members"].is_array().then(|| v["members"].to_string())
}

/// Judges a set history; `heal_ns` starts the final phase.
pub fn check(ops: &[Operation], heal_ns: Option<u64>, limits: &Limits) -> Report {
    let mut by_key: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
    for (i, op) in ops.iter().enumerate() {
        by_key.entry(op.key.as_str()).or_default().push(i);
    }
    let mut phantom = Row::new(LEVEL, NO_PHANTOM);
    let mut wins = Row::new(LEVEL, ADD_WINS);
    let mut converged = Row::new(LEVEL, CONVERGENCE);
    let mut ryw = Row::new(LEVEL, READ_YOUR_WRITES);
    for ids in by_key.values() {
        let of = |kind: OpKind| {
            ids.iter()
                .map(|&i| (i, &ops[i]))
                .filter(move |(_, o)| o.op == kind && o.ok != Some(false))
        };
        // Per member: the start of its first add (for phantoms), its adds and its removes.
        let mut first_add: BTreeMap<&str, u64> = BTreeMap::new();
        for (_, o) in of(OpKind::Sadd) {
            let m = o.value.as_deref().unwrap_or_default();
            let t = first_add.entry(m).or_insert(o.invoke_ns);
            *t = (*t).min(o.invoke_ns);
        }
        let updates = Updates::of(ops, ids);
        for &r in ids {
            let op = &ops[r];
            if !op.is_read() || !op.is_acked() {
                continue;
            }
            let verdict = match members(op) {
                None => Verdict::Violation {
                    message: format!(
                        "read of set {:?} on {} returned {:?}, not a list of members",
                        op.key, op.node, op.value
                    ),
                    ops: vec![r],
                },
                Some(ms) => match ms.iter().find(|m| {
                    first_add
                        .get(m.as_str())
                        .is_none_or(|t| *t > op.complete_ns)
                }) {
                    Some(m) => Verdict::Violation {
                        message: format!(
                            "read of set {:?} on {} returned member {m:?}, which no add begun \
                             before the read ended added",
                            op.key, op.node
                        ),
                        ops: vec![r],
                    },
                    None => Verdict::Pass,
                },
            };
            phantom.record(verdict, ops, limits);
            if matches!(
                LevelKind::parse(&op.level),
                LevelKind::ReadYourWrites | LevelKind::Session
            ) && op.session.is_some()
            {
                ryw.record(judge_own_updates(ops, ids, &updates, r), ops, limits);
            }
        }
        let Some(heal) = heal_ns else {
            wins.record(Verdict::Unknown, ops, limits);
            converged.record(Verdict::Unknown, ops, limits);
            continue;
        };
        let finals = crate::leaderless::final_reads(ops, ids, heal);
        if finals.is_empty() {
            wins.record(Verdict::Unknown, ops, limits);
            converged.record(Verdict::Unknown, ops, limits);
            continue;
        }
        let (must, may) = fates(ops, ids);
        for &f in &finals {
            let op = &ops[f];
            let Some(have) = members(op) else {
                wins.record(
                    Verdict::Violation {
                        message: format!(
                            "after healing, set {:?} on {} reads {:?}, not a list of members",
                            op.key, op.node, op.value
                        ),
                        ops: vec![f],
                    },
                    ops,
                    limits,
                );
                continue;
            };
            let lost = must.iter().find(|(m, _)| !have.contains(**m));
            let revived = have.iter().find(|m| !may.contains(m.as_str()));
            let verdict = match (lost, revived) {
                (Some((m, &add)), _) => Verdict::Violation {
                    message: format!(
                        "after healing, set {:?} on {} lacks {m:?}, though an acknowledged add \
                         of it issued a dot no remove dropped (add wins)",
                        op.key, op.node
                    ),
                    ops: vec![add, f],
                },
                (None, Some(m)) => Verdict::Violation {
                    message: format!(
                        "after healing, set {:?} on {} holds {m:?}, though every add of it was \
                         removed by a remove that saw it",
                        op.key, op.node
                    ),
                    ops: vec![f],
                },
                (None, None) => Verdict::Pass,
            };
            wins.record(verdict, ops, limits);
        }
        converged.record(
            crate::leaderless::agreement(ops, &finals, "set", members),
            ops,
            limits,
        );
    }
    Report {
        rows: vec![phantom, wins, converged, ryw],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn op(kind: OpKind, value: Option<&str>, t: (u64, u64), ok: Option<bool>) -> Operation {
        crate::testkit::leaderless(kind, value, t, ok)
    }

    fn update(kind: OpKind, m: &str, dots: &[&str], t: (u64, u64), ok: Option<bool>) -> Operation {
        Operation {
            dots: ok
                .is_some_and(|o| o)
                .then(|| dots.iter().map(|d| d.to_string()).collect()),
            ..op(kind, Some(m), t, ok)
        }
    }

    fn read(members: &str, t: (u64, u64), node: &str) -> Operation {
        Operation {
            node: node.into(),
            ..op(OpKind::Read, Some(members), t, Some(true))
        }
    }

    fn row<'a>(r: &'a Report, p: &str) -> &'a Row {
        r.row(LEVEL, p).expect("row")
    }

    /// x added twice, its first add removed; y added and removed; z added with an unknown
    /// outcome.
    fn history() -> Vec<Operation> {
        vec![
            update(OpKind::Sadd, "x", &["1.1"], (0, 10), Some(true)),
            update(OpKind::Sadd, "y", &["1.2"], (0, 10), Some(true)),
            update(OpKind::Srem, "x", &["1.1"], (20, 30), Some(true)),
            // Concurrent with the remove, on another replica: the remove did not see it.
            update(OpKind::Sadd, "x", &["3.1"], (20, 30), Some(true)),
            update(OpKind::Srem, "y", &["1.2"], (20, 30), Some(true)),
            update(OpKind::Sadd, "z", &[], (40, 50), None),
            read(r#"["x","y"]"#, (12, 15), "n1"),
        ]
    }

    #[test]
    fn a_concurrent_add_that_survives_a_remove_passes() {
        let mut ops = history();
        ops.push(read(r#"["x"]"#, (100, 110), "n1"));
        ops.push(read(r#"["x"]"#, (100, 110), "n2"));
        let r = check(&ops, Some(90), &Limits::default());
        assert!(!r.has_violations(), "{}", r.table());
        assert_eq!(row(&r, ADD_WINS).checked, 2);
        // The unknown add of z may have happened.
        let mut with_z = history();
        with_z.push(read(r#"["x","z"]"#, (100, 110), "n1"));
        assert!(!check(&with_z, Some(90), &Limits::default()).has_violations());
    }

    #[test]
    fn remove_wins_a_revived_member_phantoms_and_divergence_are_caught() {
        let with = |reads: Vec<Operation>| {
            let mut ops = history();
            ops.extend(reads);
            check(&ops, Some(90), &Limits::default())
        };
        // Remove wins: x's second add (dot 3.1, never dropped) is gone.
        let r = with(vec![read("[]", (100, 110), "n1")]);
        assert_eq!(row(&r, ADD_WINS).violations_total, 1, "{}", r.table());
        // y's only add was dropped by a remove that saw it: it cannot come back.
        let r = with(vec![read(r#"["x","y"]"#, (100, 110), "n1")]);
        assert_eq!(row(&r, ADD_WINS).violations_total, 1, "{}", r.table());
        // A member never added, or read before its add began.
        let r = with(vec![read(r#"["q"]"#, (12, 15), "n1")]);
        assert_eq!(row(&r, NO_PHANTOM).violations_total, 1, "{}", r.table());
        let r = with(vec![read(r#"["z"]"#, (12, 15), "n1")]);
        assert_eq!(row(&r, NO_PHANTOM).violations_total, 1, "{}", r.table());
        let r = with(vec![read("garbage", (12, 15), "n1")]);
        assert_eq!(row(&r, NO_PHANTOM).violations_total, 1, "{}", r.table());
        // Two nodes that disagree.
        let r = with(vec![
            read(r#"["x"]"#, (100, 110), "n1"),
            read(r#"["x","z"]"#, (100, 110), "n2"),
        ]);
        assert_eq!(row(&r, CONVERGENCE).violations_total, 1, "{}", r.table());
    }

    #[test]
    fn a_session_read_missing_its_own_add_or_showing_its_own_remove_is_caught() {
        let own = |o: Operation| Operation {
            session: Some("s1".into()),
            ..o
        };
        let session_read = |members: &str, t: (u64, u64), level: &str| Operation {
            level: level.into(),
            ..own(read(members, t, "n2"))
        };
        let base = vec![
            own(update(OpKind::Sadd, "x", &["1.1"], (0, 10), Some(true))),
            own(update(OpKind::Sadd, "y", &["1.2"], (0, 10), Some(true))),
            own(update(OpKind::Srem, "y", &["1.2"], (20, 30), Some(true))),
        ];
        let with = |r: Operation| {
            let mut ops = base.clone();
            ops.push(r);
            check(&ops, None, &Limits::default())
        };
        let r = with(session_read(r#"["x"]"#, (40, 50), "session"));
        assert!(!r.has_violations(), "{}", r.table());
        assert_eq!(row(&r, READ_YOUR_WRITES).checked, 1);
        // Its own add missing; its own remove (of y's only add) undone.
        for (members, level) in [("[]", "read_your_writes"), (r#"["x","y"]"#, "session")] {
            let r = with(session_read(members, (40, 50), level));
            assert_eq!(
                row(&r, READ_YOUR_WRITES).violations_total,
                1,
                "{}",
                r.table()
            );
        }
        // Not judged: eventual reads, reads of other sessions, reads begun before the remove
        // ended.
        let r = with(session_read("[]", (40, 50), "eventual"));
        assert_eq!(row(&r, READ_YOUR_WRITES).checked, 0);
        let r = with(Operation {
            session: Some("s2".into()),
            ..session_read("[]", (40, 50), "session")
        });
        assert!(!r.has_violations(), "{}", r.table());
        let r = with(session_read(r#"["x","y"]"#, (25, 50), "session"));
        assert!(!r.has_violations(), "{}", r.table());
        // A remove by anyone that may have run explains a missing add; an add the remove
        // never saw explains a member back.
        let mut ops = base.clone();
        ops.push(update(OpKind::Srem, "x", &[], (30, 60), None));
        ops.push(update(OpKind::Sadd, "y", &["2.1"], (30, 35), Some(true)));
        ops.push(session_read(r#"["y"]"#, (40, 50), "session"));
        let r = check(&ops, None, &Limits::default());
        assert!(!r.has_violations(), "{}", r.table());
    }

    #[test]
    fn a_remove_of_unknown_outcome_may_have_dropped_an_add_it_followed() {
        let mut ops = vec![
            update(OpKind::Sadd, "x", &["1.1"], (0, 10), Some(true)),
            update(OpKind::Srem, "x", &[], (20, 30), None),
        ];
        ops.push(read("[]", (100, 110), "n1"));
        let r = check(&ops, Some(90), &Limits::default());
        assert!(!r.has_violations(), "{}", r.table());
    }

    #[test]
    fn a_dot_replaced_by_a_later_add_lives_or_dies_with_that_add() {
        // x added (1.1), added again where 1.1 was seen (2.1 replaces it), then removed where
        // 2.1 was seen: gone, though no remove named 1.1.
        let base = vec![
            update(OpKind::Sadd, "x", &["1.1"], (0, 10), Some(true)),
            update(OpKind::Sadd, "x", &["2.1", "1.1"], (20, 30), Some(true)),
            update(OpKind::Srem, "x", &["2.1"], (40, 50), Some(true)),
        ];
        let with = |members: &str| {
            let mut ops = base.clone();
            ops.push(read(members, (100, 110), "n1"));
            check(&ops, Some(90), &Limits::default())
        };
        assert!(!with("[]").has_violations(), "{}", with("[]").table());
        assert_eq!(row(&with(r#"["x"]"#), ADD_WINS).violations_total, 1);
        // Without the remove, x must be there.
        let mut kept = base[..2].to_vec();
        kept.push(read("[]", (100, 110), "n1"));
        let r = check(&kept, Some(90), &Limits::default());
        assert_eq!(row(&r, ADD_WINS).violations_total, 1, "{}", r.table());
    }
}
