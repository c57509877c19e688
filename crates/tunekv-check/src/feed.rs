//! The promises of the change feed (`/v1/watch`, issue 18), judged on what one watcher
//! received and what the writers were acknowledged:
//!
//! - **no acknowledged write missing** — every acknowledged write or delete of the watched
//!   prefix on shard `s` with an index above where the watch started on `s` and at or below the
//!   last progress mark of `s` the watcher received was delivered, with its key and value.
//! - **no duplicates** — no change (shard, index, key) was delivered twice.
//! - **per-shard order** — on each shard, changes arrive in index order.
//! - **progress never ahead** — no change of shard `s` arrives after a progress mark of `s`
//!   at or above its index (the mark said everything up to it had been sent).
//!
//! Changes a watch delivers beyond what the writers know of (an unknown outcome) are not
//! judged here. A delete changes nothing when its key is already absent, so a delete the feed
//! did not deliver passes when the feed's last change of that key before it was a deletion,
//! fails when it was a value, and is unknown when the feed showed no earlier change of it.

use crate::report::{Report, Row, Verdict};
use crate::Limits;
use std::collections::{BTreeMap, BTreeSet};

pub const LEVEL: &str = "feed";
pub const NOTHING_MISSING: &str = "no acknowledged write missing";
pub const NO_DUPLICATES: &str = "no duplicates";
pub const ORDER: &str = "per-shard order";
pub const PROGRESS: &str = "progress never ahead";
pub const REACHED: &str = "watch reached every acknowledged write";

/// The row that says a watch followed the feed to the end of a run (`verify`'s watcher) at
/// `level` ([`LEVEL`] or [`LEVEL_LEADERLESS`]): `problem` says why it did not (its cursor's
/// changes were gone, or it never caught up).
pub fn reached(level: &str, problem: Option<String>, limits: &Limits) -> Row {
    let mut row = Row::new(level, REACHED);
    let verdict = match problem {
        None => Verdict::Pass,
        Some(message) => Verdict::Violation {
            message,
            ops: vec![],
        },
    };
    row.record(verdict, &[], limits);
    row
}

/// What a watcher received, in order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FeedEvent {
    Change {
        shard: u32,
        index: u64,
        key: String,
        /// `None`: a deletion.
        value: Option<String>,
    },
    Progress {
        shard: u32,
        index: u64,
    },
}

/// An acknowledged write (`value`) or delete (`None`) and the position it committed at.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FeedWrite {
    pub shard: u32,
    pub index: u64,
    pub key: String,
    pub value: Option<String>,
}

/// A careful consumer of the feed, as the checker assumes one: a change is final once a
/// progress event of its shard covers it, and the consumer keeps that event's cursor. When the
/// stream breaks (or the consumer moves to another node), what came after the last mark is
/// dropped: the watch resumed from the cursor sends it again. `verify`'s watcher and the
/// simulator's use it.
#[derive(Clone, Debug, Default)]
pub struct Consumer {
    shards: u32,
    /// Each shard's first progress mark: where the watch began.
    pub start: BTreeMap<u32, u64>,
    /// The final events, in the order received.
    pub events: Vec<FeedEvent>,
    pending: Vec<FeedEvent>,
    /// The cursor of the last progress event (`None` before the first).
    pub cursor: Option<String>,
    /// Each shard's highest progress mark.
    pub reached: BTreeMap<u32, u64>,
    /// Watches resumed from a cursor.
    pub resumes: u64,
}

impl Consumer {
    pub fn new(shards: u32) -> Consumer {
        Consumer {
            shards,
            ..Consumer::default()
        }
    }

    /// A change received (not final until a progress event covers it).
    pub fn change(&mut self, shard: u32, index: u64, key: String, value: Option<String>) {
        self.pending.push(FeedEvent::Change {
            shard,
            index,
            key,
            value,
        });
    }

    /// A progress event: what came before it is final.
    pub fn progress(&mut self, shard: u32, index: u64, cursor: String) {
        if self.start.len() < self.shards as usize {
            self.start.entry(shard).or_insert(index);
        }
        self.events.append(&mut self.pending);
        self.events.push(FeedEvent::Progress { shard, index });
        let r = self.reached.entry(shard).or_insert(0);
        *r = (*r).max(index);
        self.cursor = Some(cursor);
    }

    /// The stream ended (or the consumer leaves it): the next watch resumes from the cursor,
    /// or starts over when there is none yet.
    pub fn broke(&mut self) {
        self.pending.clear();
        if self.cursor.is_none() {
            self.events.clear();
            self.start.clear();
        }
    }

    /// A watch opened; `resumed` when it started from the cursor.
    pub fn opened(&mut self) {
        if self.cursor.is_some() {
            self.resumes += 1;
        }
    }

    /// Whether every shard's progress reached `top`.
    pub fn reached_all(&self, top: &BTreeMap<u32, u64>) -> bool {
        top.iter()
            .all(|(s, i)| self.reached.get(s).is_some_and(|r| r >= i))
    }

    /// Judges what was received against the acknowledged `writes` ([`check`]).
    pub fn check(&self, writes: &[FeedWrite], limits: &Limits) -> Report {
        check(&self.start, &self.events, writes, limits)
    }
}

/// Each shard's highest acknowledged index: what a watch must reach.
pub fn top(writes: &[FeedWrite]) -> BTreeMap<u32, u64> {
    let mut top = BTreeMap::new();
    for w in writes {
        let t = top.entry(w.shard).or_insert(0);
        *t = (*t).max(w.index);
    }
    top
}

/// The acknowledged writes and deletes of an ordered history, with their positions.
pub fn acknowledged(ops: &[crate::Operation]) -> Vec<FeedWrite> {
    use crate::OpKind;
    ops.iter()
        .filter(|o| o.ok == Some(true) && matches!(o.op, OpKind::Write | OpKind::Delete))
        .filter_map(|o| {
            let p = crate::history::Position::parse(o.position.as_deref()?)?;
            Some(FeedWrite {
                shard: p.shard,
                index: p.index,
                key: o.key.clone(),
                value: if o.op == OpKind::Write {
                    o.value.clone()
                } else {
                    None
                },
            })
        })
        .collect()
}

/// Judges one watch: `start` is each shard's first progress mark (where the watch began),
/// `events` everything received after it, `writes` the acknowledged writes of the prefix.
pub fn check(
    start: &BTreeMap<u32, u64>,
    events: &[FeedEvent],
    writes: &[FeedWrite],
    limits: &Limits,
) -> Report {
    let mut missing = Row::new(LEVEL, NOTHING_MISSING);
    let mut dups = Row::new(LEVEL, NO_DUPLICATES);
    let mut order = Row::new(LEVEL, ORDER);
    let mut ahead = Row::new(LEVEL, PROGRESS);
    let mut progress: BTreeMap<u32, u64> = start.clone();
    let mut last: BTreeMap<u32, u64> = BTreeMap::new();
    let mut seen: BTreeMap<(u32, u64, &str), Option<&str>> = BTreeMap::new();
    // Per (shard, key): each delivered change's index and whether it was a deletion.
    let mut of_key: BTreeMap<(u32, &str), BTreeMap<u64, bool>> = BTreeMap::new();
    let mut twice: BTreeSet<(u32, u64, &str)> = BTreeSet::new();
    for e in events {
        match e {
            FeedEvent::Progress { shard, index } => {
                let p = progress.entry(*shard).or_insert(0);
                *p = (*p).max(*index);
            }
            FeedEvent::Change {
                shard,
                index,
                key,
                value,
            } => {
                let p = progress.get(shard).copied().unwrap_or(0);
                ahead.record(
                    if *index <= p {
                        Verdict::Violation {
                            message: format!(
                                "change of {key:?} at shard {shard} index {index} arrived after a \
                                 progress mark of index {p} had said every change up to it was \
                                 sent"
                            ),
                            ops: vec![],
                        }
                    } else {
                        Verdict::Pass
                    },
                    &[],
                    limits,
                );
                let l = last.get(shard).copied().unwrap_or(0);
                order.record(
                    if *index < l {
                        Verdict::Violation {
                            message: format!(
                                "change of {key:?} at shard {shard} index {index} arrived after \
                                 one at index {l}"
                            ),
                            ops: vec![],
                        }
                    } else {
                        Verdict::Pass
                    },
                    &[],
                    limits,
                );
                last.insert(*shard, l.max(*index));
                of_key
                    .entry((*shard, key.as_str()))
                    .or_default()
                    .insert(*index, value.is_none());
                let id = (*shard, *index, key.as_str());
                let again = seen.insert(id, value.as_deref()).is_some();
                dups.record(
                    if again && twice.insert(id) {
                        Verdict::Violation {
                            message: format!(
                                "change of {key:?} at shard {shard} index {index} was delivered \
                                 twice"
                            ),
                            ops: vec![],
                        }
                    } else {
                        Verdict::Pass
                    },
                    &[],
                    limits,
                );
            }
        }
    }
    for w in writes {
        let from = start.get(&w.shard).copied().unwrap_or(u64::MAX);
        let to = progress.get(&w.shard).copied().unwrap_or(0);
        if w.index <= from || w.index > to {
            // Before the watch, or past what it claims to have sent: nothing promised.
            missing.record(Verdict::Unknown, &[], limits);
            continue;
        }
        let before = || {
            of_key
                .get(&(w.shard, w.key.as_str()))
                .and_then(|c| c.range(..w.index).next_back())
                .map(|(_, deleted)| *deleted)
        };
        let verdict = match seen.get(&(w.shard, w.index, w.key.as_str())) {
            Some(v) if *v == w.value.as_deref() => Verdict::Pass,
            // A delete of a key already absent changes nothing.
            None if w.value.is_none() && before() == Some(true) => Verdict::Pass,
            None if w.value.is_none() && before().is_none() => Verdict::Unknown,
            Some(v) => Verdict::Violation {
                message: format!(
                    "{:?} at shard {} index {} was delivered as {v:?}, written as {:?}",
                    w.key, w.shard, w.index, w.value
                ),
                ops: vec![],
            },
            None => Verdict::Violation {
                message: format!(
                    "acknowledged {} of {:?} at shard {} index {} is missing, though progress \
                     reached index {to}",
                    if w.value.is_some() { "write" } else { "delete" },
                    w.key,
                    w.shard,
                    w.index
                ),
                ops: vec![],
            },
        };
        missing.record(verdict, &[], limits);
    }
    Report {
        rows: vec![missing, dups, order, ahead],
    }
}

/// The level of the leaderless feed's rows.
pub const LEVEL_LEADERLESS: &str = "leaderless feed";
/// A version (HLC stamp, node).
pub type Version = (u64, u64);

/// A version a leaderless watch delivered: `value` `None` is a deletion.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredEvent {
    pub key: String,
    pub version: Version,
    pub value: Option<String>,
}

/// Judges a leaderless keyspace's watch (issue 18), which ran from before `writes` (each an
/// acknowledged write or delete: key, version, value) until it had considered every node's
/// versions stored after them:
///
/// - **no acknowledged write missing** — for each write, the watch delivered that version of
///   its key (with its value) or a later one: last writer wins may replace a version on every
///   replica before any lists it.
/// - **no duplicates** — no (key, version) delivered twice.
/// - **per-key versions increase** — each key's delivered versions increase.
pub fn check_leaderless(
    events: &[StoredEvent],
    writes: &[(String, Version, Option<String>)],
    limits: &Limits,
) -> Report {
    let mut missing = Row::new(LEVEL_LEADERLESS, NOTHING_MISSING);
    let mut dups = Row::new(LEVEL_LEADERLESS, NO_DUPLICATES);
    let mut order = Row::new(LEVEL_LEADERLESS, KEY_ORDER);
    let mut seen: BTreeMap<(&str, Version), Option<&str>> = BTreeMap::new();
    let mut last: BTreeMap<&str, Version> = BTreeMap::new();
    for e in events {
        let again = seen
            .insert((e.key.as_str(), e.version), e.value.as_deref())
            .is_some();
        dups.record(
            if again {
                Verdict::Violation {
                    message: format!("{:?} version {:?} was delivered twice", e.key, e.version),
                    ops: vec![],
                }
            } else {
                Verdict::Pass
            },
            &[],
            limits,
        );
        let before = last.insert(e.key.as_str(), e.version);
        order.record(
            match before {
                Some(b) if b >= e.version && !again => Verdict::Violation {
                    message: format!(
                        "{:?} version {:?} was delivered after version {b:?}",
                        e.key, e.version
                    ),
                    ops: vec![],
                },
                _ => Verdict::Pass,
            },
            &[],
            limits,
        );
    }
    for (key, version, value) in writes {
        let verdict = match seen.get(&(key.as_str(), *version)) {
            Some(v) if *v == value.as_deref() => Verdict::Pass,
            Some(v) => Verdict::Violation {
                message: format!(
                    "{key:?} version {version:?} was delivered as {v:?}, written as {value:?}"
                ),
                ops: vec![],
            },
            None if last.get(key.as_str()).is_some_and(|l| l > version) => Verdict::Pass,
            None => Verdict::Violation {
                message: format!(
                    "acknowledged {} of {key:?} version {version:?} is missing, and no later \
                     version of the key was delivered",
                    if value.is_some() { "write" } else { "delete" }
                ),
                ops: vec![],
            },
        };
        missing.record(verdict, &[], limits);
    }
    Report {
        rows: vec![missing, dups, order],
    }
}

/// A careful consumer of a leaderless keyspace's feed: a version is final once the node
/// progress event after it arrives (the consumer keeps that event's cursor); when the stream
/// breaks or the consumer moves, what came after it is dropped (the resumed watch sends it
/// again). A resumed watch does not know what the earlier one delivered, so the consumer leaves
/// out versions at or below the highest it already has of a key: within one watch, duplicates
/// and order are the server's to get right, and are judged.
#[derive(Clone, Debug, Default)]
pub struct StoredConsumer {
    pub events: Vec<StoredEvent>,
    pending: Vec<StoredEvent>,
    /// The highest version of each key delivered by earlier watches.
    before: BTreeMap<String, Version>,
    /// The highest version of each key delivered (by any watch).
    pub top: BTreeMap<String, Version>,
    pub cursor: Option<String>,
    pub resumes: u64,
}

impl StoredConsumer {
    pub fn change(&mut self, key: String, version: Version, value: Option<String>) {
        self.pending.push(StoredEvent {
            key,
            version,
            value,
        });
    }

    /// A node progress event: what came before it is final.
    pub fn progress(&mut self, cursor: String) {
        for e in self.pending.drain(..) {
            if self.before.get(&e.key).is_some_and(|b| *b >= e.version) {
                continue;
            }
            let t = self.top.entry(e.key.clone()).or_insert(e.version);
            *t = (*t).max(e.version);
            self.events.push(e);
        }
        self.cursor = Some(cursor);
    }

    /// The stream ended (or the consumer leaves it).
    pub fn broke(&mut self) {
        self.pending.clear();
        self.before = self.top.clone();
    }

    pub fn opened(&mut self) {
        if self.cursor.is_some() {
            self.resumes += 1;
        }
    }

    /// Whether each write's version (or a later one of its key) was delivered.
    pub fn covers(&self, writes: &[(String, Version, Option<String>)]) -> bool {
        writes
            .iter()
            .all(|(k, v, _)| self.top.get(k).is_some_and(|t| t >= v))
    }
}

/// An acknowledged leaderless write or delete: key, version, value (`None`: deleted).
pub type StoredWrite = (String, Version, Option<String>);

/// The acknowledged writes and deletes of a leaderless last-writer-wins history, with their
/// versions (`HLC.NODE`).
pub fn acknowledged_versions(ops: &[crate::Operation]) -> Vec<StoredWrite> {
    use crate::OpKind;
    ops.iter()
        .filter(|o| o.ok == Some(true) && matches!(o.op, OpKind::Write | OpKind::Delete))
        .filter_map(|o| {
            let (hlc, node) = o.version.as_deref()?.split_once('.')?;
            let version = (hlc.parse().ok()?, node.parse().ok()?);
            let value = if o.op == OpKind::Write {
                o.value.clone()
            } else {
                None
            };
            Some((o.key.clone(), version, value))
        })
        .collect()
}

/// The leaderless feed's per-key order row.
pub const KEY_ORDER: &str = "per-key versions increase";

#[cfg(test)]
mod tests {
    use super::*;

    fn change(shard: u32, index: u64, key: &str, value: Option<&str>) -> FeedEvent {
        FeedEvent::Change {
            shard,
            index,
            key: key.into(),
            value: value.map(Into::into),
        }
    }

    fn progress(shard: u32, index: u64) -> FeedEvent {
        FeedEvent::Progress { shard, index }
    }

    fn write(shard: u32, index: u64, key: &str, value: Option<&str>) -> FeedWrite {
        FeedWrite {
            shard,
            index,
            key: key.into(),
            value: value.map(Into::into),
        }
    }

    fn judge(events: &[FeedEvent]) -> Report {
        let start = [(0, 10), (1, 4)].into_iter().collect();
        let writes = [
            write(0, 9, "old", Some("x")),
            write(0, 11, "a", Some("1")),
            write(0, 12, "b", None),
            write(1, 5, "c", Some("2")),
            write(1, 30, "late", Some("3")),
        ];
        check(&start, events, &writes, &Limits::default())
    }

    fn violations(r: &Report, property: &str) -> u64 {
        r.row(LEVEL, property).expect("row").violations_total
    }

    #[test]
    fn a_leaderless_feed_is_judged_by_version() {
        let ev = |key: &str, v: u64, value: Option<&str>| StoredEvent {
            key: key.into(),
            version: (v, 1),
            value: value.map(Into::into),
        };
        let writes = vec![
            ("a".to_string(), (1, 1), Some("x".to_string())),
            ("a".to_string(), (2, 1), Some("y".to_string())),
            ("b".to_string(), (3, 1), None),
        ];
        let bad = |events: &[StoredEvent], property: &str| {
            check_leaderless(events, &writes, &Limits::default())
                .row(LEVEL_LEADERLESS, property)
                .unwrap()
                .violations_total
        };
        // a@1 superseded by a@2 before anyone listed it: fine.
        let clean = [ev("a", 2, Some("y")), ev("b", 3, None)];
        let r = check_leaderless(&clean, &writes, &Limits::default());
        assert!(!r.has_violations(), "{}", r.table());
        assert_eq!(
            bad(&[ev("a", 2, Some("y"))], NOTHING_MISSING),
            1,
            "b@3 missing"
        );
        let twice = [
            ev("a", 2, Some("y")),
            ev("a", 2, Some("y")),
            ev("b", 3, None),
        ];
        assert_eq!(bad(&twice, NO_DUPLICATES), 1);
        let back = [
            ev("a", 2, Some("y")),
            ev("a", 1, Some("x")),
            ev("b", 3, None),
        ];
        assert_eq!(bad(&back, KEY_ORDER), 1);
    }

    #[test]
    fn a_clean_feed_passes_and_judges_what_progress_covers() {
        let events = [
            change(0, 11, "a", Some("1")),
            change(1, 5, "c", Some("2")),
            progress(1, 5),
            change(0, 12, "b", None),
            progress(0, 12),
        ];
        let r = judge(&events);
        assert!(!r.has_violations(), "{}", r.table());
        let row = r.row(LEVEL, NOTHING_MISSING).unwrap();
        // Before the watch (index 9) and past the last mark (index 30) are not judged.
        assert_eq!((row.checked, row.unknown), (3, 2));
    }

    #[test]
    fn a_missing_write_a_duplicate_disorder_and_an_early_progress_mark_are_caught() {
        let missing = [change(0, 12, "b", None), progress(0, 12)];
        assert_eq!(violations(&judge(&missing), NOTHING_MISSING), 1);
        let wrong_value = [
            change(0, 11, "a", Some("9")),
            change(0, 12, "b", None),
            progress(0, 12),
        ];
        assert_eq!(violations(&judge(&wrong_value), NOTHING_MISSING), 1);
        let twice = [change(0, 11, "a", Some("1")), change(0, 11, "a", Some("1"))];
        assert_eq!(violations(&judge(&twice), NO_DUPLICATES), 1);
        let disorder = [change(0, 12, "b", None), change(0, 11, "a", Some("1"))];
        assert_eq!(violations(&judge(&disorder), ORDER), 1);
        // The injected bug's shape: the mark first, then the change it covers.
        let early = [progress(0, 11), change(0, 11, "a", Some("1"))];
        assert_eq!(violations(&judge(&early), PROGRESS), 1);
        // A delete the feed did not deliver: fine after a delivered deletion of the key, a
        // violation after a delivered value, unknown with nothing delivered before it.
        let writes = [write(0, 11, "a", None), write(0, 13, "a", None)];
        let start = [(0, 10)].into_iter().collect();
        let judged = |events: &[FeedEvent]| {
            let r = check(&start, events, &writes, &Limits::default());
            let row = r.row(LEVEL, NOTHING_MISSING).unwrap().clone();
            (row.violations_total, row.unknown)
        };
        let absent = [change(0, 11, "a", None), progress(0, 13)];
        assert_eq!(judged(&absent), (0, 0));
        let present = [change(0, 12, "a", Some("v")), progress(0, 13)];
        // a@11: nothing delivered before it (unknown); a@13: after a delivered value (missing).
        assert_eq!(judged(&present), (1, 1));
        let nothing = [progress(0, 13)];
        assert_eq!(judged(&nothing), (0, 2));
        // A change at or below where the watch started is one it should not have sent.
        let before = [change(0, 10, "old", Some("x"))];
        assert_eq!(violations(&judge(&before), PROGRESS), 1);
    }
}
