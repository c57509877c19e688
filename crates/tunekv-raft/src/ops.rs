//! What each command does to the keys it touches: the ordered mode's command semantics
//! (Redis's and etcd's), as a pure function over the touched keys' values. The state machine
//! loads those keys, runs [`apply_op`] and writes back what changed.

use crate::types::{
    Command, CommandResult, Cond, Expect, ExpireIf, Op, StoredValue, Ttl, VERSION_MISMATCH,
};
use std::collections::BTreeMap;
use tunekv_core::Hlc;

/// The values of the keys a batch touched (absent keys are not in it).
pub(crate) type Touched = BTreeMap<Vec<u8>, StoredValue>;

/// The keys an op may change (every branch of a transaction), each once: the feed reports
/// one change per key per entry, its value after the entry.
pub(crate) fn keys_written(op: &Op) -> Vec<&Vec<u8>> {
    match op {
        Op::Put { key, .. }
        | Op::PutIfAbsent { key, .. }
        | Op::Delete { key }
        | Op::Set { key, .. }
        | Op::IncrBy { key, .. }
        | Op::Append { key, .. }
        | Op::GetDel { key }
        | Op::Expire { key, .. }
        | Op::SetIf { key, .. } => vec![key],
        Op::MSet { pairs } => {
            // `MSET a 1 a 2`, or a pipeline's SETs of one key written together.
            let mut seen = std::collections::HashSet::with_capacity(pairs.len());
            pairs
                .iter()
                .map(|(k, _)| k)
                .filter(|k| seen.insert(*k))
                .collect()
        }
        Op::Sweep { keys } => keys.iter().collect(),
        Op::Txn {
            success, failure, ..
        } => {
            let mut keys: Vec<&Vec<u8>> = Vec::new();
            for k in success.iter().chain(failure).flat_map(keys_written) {
                if !keys.contains(&k) {
                    keys.push(k);
                }
            }
            keys
        }
        Op::Get { .. } => Vec::new(),
    }
}

/// What a SET-like write starts from: the key's live entry (expired keys are already gone), whether
/// it existed, and its old value when the command returns it (`GET`).
fn before_write<'a>(
    data: &'a Touched,
    key: &[u8],
    get: bool,
) -> (Option<&'a StoredValue>, bool, Option<Vec<u8>>) {
    let prev = data.get(key);
    let old = if get {
        prev.map(|p| p.value.clone())
    } else {
        None
    };
    (prev, prev.is_some(), old)
}

/// What a key looks like to the feed: (version, expiry), `None` when absent.
pub(crate) fn shape(data: &Touched, key: &[u8]) -> Option<(u64, Option<u64>)> {
    data.get(key).map(|v| (v.mod_index, v.expires_ms))
}

/// A Redis-style canonical base-10 `i64` ("12", "-3"; not "+1", "01" or " 1").
fn parse_i64(bytes: &[u8]) -> Option<i64> {
    let s = std::str::from_utf8(bytes).ok()?;
    let n: i64 = s.parse().ok()?;
    (n.to_string() == s).then_some(n)
}

fn failed(existed: bool, why: &str) -> CommandResult {
    CommandResult {
        error: Some(why.to_string()),
        ..CommandResult::unchanged(existed)
    }
}

/// Writes `value` at `key` in entry `index`, keeping the key's create index.
fn store(
    data: &mut Touched,
    key: &[u8],
    value: Vec<u8>,
    index: u64,
    commit_ts: u64,
    expires_ms: Option<u64>,
) {
    let create_index = data.get(key).map(|p| p.create_index).unwrap_or(index);
    data.insert(
        key.to_vec(),
        StoredValue {
            value,
            create_index,
            mod_index: index,
            commit_ts,
            expires_ms,
        },
    );
}

/// Writes `value` at `key` in entry `index` (commit stamp `ts`, `now_ms` its millisecond) with
/// the expiry `ttl` asks for given the key's current one; an expiry already past removes the
/// key at once (it is written and gone).
fn store_with_ttl(
    data: &mut Touched,
    key: &[u8],
    value: &[u8],
    (index, ts, now_ms): (u64, u64, u64),
    ttl: Ttl,
    current_expiry: Option<u64>,
) {
    let expires_ms = expiry(ttl, current_expiry, now_ms);
    if expires_ms.is_some_and(|e| e <= now_ms) {
        data.remove(key);
    } else {
        store(data, key, value.to_vec(), index, ts, expires_ms);
    }
}

/// The absolute expiry a write asks for, given the key's current one. `now_ms` is the entry's
/// commit time, the same on every replica.
fn expiry(ttl: Ttl, current: Option<u64>, now_ms: u64) -> Option<u64> {
    match ttl {
        Ttl::Clear => None,
        Ttl::Keep => current,
        Ttl::AfterMs(ms) => Some(now_ms.saturating_add(ms)),
        Ttl::AtMs(at) => Some(at),
    }
}

/// Whether a key holding `held` is as `expect` says (a version of 0: absent).
fn expect_holds(expect: &Expect, held: Option<&StoredValue>) -> bool {
    match (expect, held) {
        (Expect::Version(0), None) => true,
        (Expect::Version(v), Some(p)) => p.mod_index == *v,
        (Expect::Value(want), Some(p)) => p.value == *want,
        _ => false,
    }
}

pub(crate) fn apply_op(data: &mut Touched, index: u64, cmd: &Command) -> CommandResult {
    let now_ms = Hlc::millis(cmd.commit_ts);
    let ts = cmd.commit_ts;
    // A key whose expiry has passed at this entry's commit time is absent to the command.
    let touched: Vec<&Vec<u8>> = match &cmd.op {
        Op::Get { key } => vec![key],
        // Each op of a transaction expires its own key when it runs.
        Op::Txn { compare, .. } => compare.iter().map(|(k, _)| k).collect(),
        other => keys_written(other),
    };
    let mut expired = 0;
    for key in touched {
        if data.get(key).is_some_and(|v| !v.live_at(now_ms)) {
            data.remove(key);
            expired += 1;
        }
    }
    match &cmd.op {
        Op::Put { key, value } => {
            let existed = data.contains_key(key);
            store(data, key, value.clone(), index, ts, None);
            CommandResult::changed(existed)
        }
        Op::PutIfAbsent { key, value } => {
            if let Some(current) = data.get(key) {
                return CommandResult {
                    current: Some(current.clone()),
                    ..CommandResult::unchanged(true)
                };
            }
            store(data, key, value.clone(), index, ts, None);
            CommandResult::changed(false)
        }
        Op::Delete { key } => {
            let existed = data.remove(key).is_some();
            CommandResult {
                changed: existed,
                ..CommandResult::unchanged(existed)
            }
        }
        Op::Set {
            key,
            value,
            cond,
            ttl,
            get,
        } => {
            let (prev, existed, old) = before_write(data, key, *get);
            let allowed = match cond {
                Cond::Always => true,
                Cond::IfAbsent => !existed,
                Cond::IfPresent => existed,
            };
            if !allowed {
                return CommandResult {
                    old,
                    ..CommandResult::unchanged(existed)
                };
            }
            let current_expiry = prev.and_then(|p| p.expires_ms);
            store_with_ttl(data, key, value, (index, ts, now_ms), *ttl, current_expiry);
            CommandResult {
                old,
                ..CommandResult::changed(existed)
            }
        }
        Op::SetIf {
            key,
            value,
            expect,
            ttl,
            get,
        } => {
            let (prev, existed, old) = before_write(data, key, *get);
            if !expect_holds(expect, prev) {
                return CommandResult {
                    old,
                    current: prev.cloned(),
                    error: Some(VERSION_MISMATCH.to_string()),
                    ..CommandResult::unchanged(existed)
                };
            }
            let current_expiry = prev.and_then(|p| p.expires_ms);
            match value {
                Some(value) => {
                    store_with_ttl(data, key, value, (index, ts, now_ms), *ttl, current_expiry)
                }
                None => {
                    data.remove(key);
                }
            }
            CommandResult {
                old,
                ..CommandResult::changed(existed)
            }
        }
        Op::IncrBy { key, delta } => {
            let prev = data.get(key);
            let existed = prev.is_some();
            let current = match prev {
                None => 0,
                Some(p) => match parse_i64(&p.value) {
                    Some(n) => n,
                    None => return failed(existed, "value is not an integer or out of range"),
                },
            };
            let Some(new) = current.checked_add(*delta) else {
                return failed(existed, "increment or decrement would overflow");
            };
            let expires_ms = prev.and_then(|p| p.expires_ms);
            store(
                data,
                key,
                new.to_string().into_bytes(),
                index,
                ts,
                expires_ms,
            );
            CommandResult {
                int: new,
                ..CommandResult::changed(existed)
            }
        }
        Op::Append {
            key,
            suffix,
            len_max,
        } => {
            let prev = data.get(key);
            let existed = prev.is_some();
            let mut value = prev.map(|p| p.value.clone()).unwrap_or_default();
            if (value.len() + suffix.len()) as u64 > *len_max {
                return failed(existed, "string exceeds the keyspace's value_bytes_max");
            }
            value.extend_from_slice(suffix);
            let len = value.len() as i64;
            let expires_ms = prev.and_then(|p| p.expires_ms);
            store(data, key, value, index, ts, expires_ms);
            CommandResult {
                int: len,
                ..CommandResult::changed(existed)
            }
        }
        Op::GetDel { key } => {
            let old = data.remove(key).map(|p| p.value);
            let existed = old.is_some();
            CommandResult {
                old,
                changed: existed,
                ..CommandResult::unchanged(existed)
            }
        }
        Op::Expire { key, ttl, when } => {
            let Some(prev) = data.get_mut(key) else {
                return CommandResult::unchanged(false);
            };
            let expires_ms = expiry(*ttl, prev.expires_ms, now_ms);
            // `None` expires never: later than every time.
            let never = u64::MAX;
            let (new, old) = (
                expires_ms.unwrap_or(never),
                prev.expires_ms.unwrap_or(never),
            );
            let allowed = match when {
                ExpireIf::Always => true,
                ExpireIf::NoExpiry => prev.expires_ms.is_none(),
                ExpireIf::HasExpiry => prev.expires_ms.is_some(),
                ExpireIf::Later => prev.expires_ms.is_some() && new > old,
                ExpireIf::Earlier => new < old,
                ExpireIf::HasExpiryEarlier => prev.expires_ms.is_some() && new < old,
            };
            if !allowed {
                return CommandResult::unchanged(true);
            }
            if expires_ms == prev.expires_ms {
                return CommandResult {
                    int: 1,
                    ..CommandResult::unchanged(true)
                };
            }
            if expires_ms.is_some_and(|e| e <= now_ms) {
                data.remove(key);
            } else {
                prev.expires_ms = expires_ms;
                prev.mod_index = index;
                prev.commit_ts = ts;
            }
            CommandResult {
                int: 1,
                ..CommandResult::changed(true)
            }
        }
        Op::MSet { pairs } => {
            for (key, value) in pairs {
                store(data, key, value.clone(), index, ts, None);
            }
            CommandResult::changed(true)
        }
        Op::Sweep { .. } => CommandResult {
            int: expired,
            changed: expired > 0,
            ..CommandResult::unchanged(false)
        },
        Op::Get { key } => {
            let current = data.get(key).cloned();
            CommandResult {
                current,
                ..CommandResult::unchanged(data.contains_key(key))
            }
        }
        Op::Txn {
            compare,
            success,
            failure,
        } => {
            let holds = compare
                .iter()
                .all(|(key, expect)| expect_holds(expect, data.get(key)));
            let branch = if holds { success } else { failure };
            let mut results = Vec::with_capacity(branch.len());
            for op in branch {
                // Nested transactions are refused before proposal; one here changes nothing.
                if matches!(op, Op::Txn { .. } | Op::MSet { .. } | Op::Sweep { .. }) {
                    results.push(failed(false, "not allowed in a transaction"));
                    continue;
                }
                let sub = Command {
                    commit_ts: cmd.commit_ts,
                    op: op.clone(),
                };
                results.push(apply_op(data, index, &sub));
            }
            CommandResult {
                int: i64::from(holds),
                changed: results.iter().any(|r| r.changed),
                results,
                ..CommandResult::unchanged(false)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_written_twice_in_one_entry_is_one_change() {
        let pairs = |keys: &[&str]| Op::MSet {
            pairs: keys
                .iter()
                .map(|k| (k.as_bytes().to_vec(), vec![1]))
                .collect(),
        };
        let written = |op: &Op| -> Vec<Vec<u8>> { keys_written(op).into_iter().cloned().collect() };
        assert_eq!(
            written(&pairs(&["a", "b", "a", "c", "b"])),
            [b"a".to_vec(), b"b".to_vec(), b"c".to_vec()]
        );
        let mut data = Touched::new();
        run(&mut data, 3, 1, pairs(&["a", "a"]));
        assert_eq!(data.len(), 1);
    }

    /// Applies `op` as entry `index` committed at `now_ms`.
    fn run(data: &mut Touched, index: u64, now_ms: u64, op: Op) -> CommandResult {
        let cmd = Command {
            commit_ts: now_ms << 16,
            op,
        };
        apply_op(data, index, &cmd)
    }

    #[test]
    fn a_transaction_runs_one_branch_atomically_and_reports_each_op() {
        let mut d = BTreeMap::new();
        run(
            &mut d,
            3,
            1,
            set("stock", "1", Cond::Always, Ttl::Clear, false),
        );
        let buy = |version: u64| Op::Txn {
            compare: vec![(b"stock".to_vec(), Expect::Version(version))],
            success: vec![
                Op::IncrBy {
                    key: "stock".into(),
                    delta: -1,
                },
                Op::Put {
                    key: "order".into(),
                    value: "ann".into(),
                },
                Op::Get {
                    key: "order".into(),
                },
            ],
            failure: vec![Op::Get {
                key: "stock".into(),
            }],
        };
        let r = run(&mut d, 4, 1, buy(3));
        assert_eq!((r.int, r.results.len()), (1, 3), "{r:?}");
        assert_eq!(r.results[0].int, 0, "the stock after");
        let read = r.results[2]
            .current
            .as_ref()
            .expect("the order, read in the transaction");
        assert_eq!(
            (read.value.as_slice(), read.mod_index),
            (b"ann".as_slice(), 4)
        );
        // A stale version runs the failure branch, which only reads.
        let r = run(&mut d, 5, 1, buy(3));
        assert_eq!((r.int, r.results.len(), r.changed), (0, 1, false));
        assert_eq!(r.results[0].current.as_ref().map(|c| c.mod_index), Some(4));
        // An op that fails (INCR of a non-integer) fails alone; a nested transaction is refused.
        let r = run(
            &mut d,
            6,
            1,
            Op::Txn {
                compare: vec![(b"nobody".to_vec(), Expect::Version(0))],
                success: vec![
                    Op::IncrBy {
                        key: "order".into(),
                        delta: 1,
                    },
                    buy(4),
                ],
                failure: vec![],
            },
        );
        assert_eq!(r.int, 1);
        assert!(r.results.iter().all(|x| x.error.is_some()), "{r:?}");
        assert_eq!(d[b"stock".as_slice()].value, b"0".to_vec());
    }

    #[test]
    fn conditional_writes_hold_only_when_the_key_is_as_expected() {
        let mut d = BTreeMap::new();
        let set_if = |value: Option<&str>, expect: Expect| Op::SetIf {
            key: "k".into(),
            value: value.map(Into::into),
            expect,
            ttl: Ttl::Clear,
            get: false,
        };
        // Version 0: only if absent.
        let r = run(&mut d, 5, 1, set_if(Some("a"), Expect::Version(0)));
        assert!(r.changed && r.error.is_none());
        assert_eq!(d[b"k".as_slice()].mod_index, 5);
        let r = run(&mut d, 6, 1, set_if(Some("b"), Expect::Version(0)));
        assert_eq!(r.error.as_deref(), Some(VERSION_MISMATCH));
        assert_eq!(r.current.map(|c| c.mod_index), Some(5), "the version there");
        // The version it was written at; a stale one changes nothing.
        let r = run(&mut d, 7, 1, set_if(Some("b"), Expect::Version(5)));
        assert!(r.changed);
        let r = run(&mut d, 8, 1, set_if(Some("c"), Expect::Version(5)));
        assert!(!r.changed && r.error.is_some());
        assert_eq!(d[b"k".as_slice()].value, b"b".to_vec());
        // By value (IFEQ): equal writes, anything else (absent too) does not.
        let r = run(
            &mut d,
            9,
            1,
            set_if(Some("c"), Expect::Value(b"b".to_vec())),
        );
        assert!(r.changed);
        let r = run(
            &mut d,
            10,
            1,
            set_if(Some("d"), Expect::Value(b"b".to_vec())),
        );
        assert!(!r.changed && r.error.is_some());
        // A conditional delete.
        let r = run(&mut d, 11, 1, set_if(None, Expect::Version(8)));
        assert!(!r.changed, "version 8 was a refused write, never the key's");
        let r = run(&mut d, 12, 1, set_if(None, Expect::Version(9)));
        assert!(r.changed && r.existed);
        assert!(d.is_empty());
        let r = run(
            &mut d,
            13,
            1,
            set_if(Some("x"), Expect::Value(b"c".to_vec())),
        );
        assert!(
            !r.changed && r.current.is_none(),
            "absent never equals a value"
        );
    }

    fn set(key: &str, value: &str, cond: Cond, ttl: Ttl, get: bool) -> Op {
        Op::Set {
            key: key.into(),
            value: value.into(),
            cond,
            ttl,
            get,
        }
    }

    #[test]
    fn set_conditions_and_get() {
        let mut d = BTreeMap::new();
        let r = run(
            &mut d,
            1,
            1000,
            set("k", "a", Cond::IfPresent, Ttl::Clear, true),
        );
        assert!(
            !r.changed && r.old.is_none() && d.is_empty(),
            "XX on a missing key"
        );
        let r = run(
            &mut d,
            2,
            1000,
            set("k", "a", Cond::IfAbsent, Ttl::Clear, false),
        );
        assert!(r.changed && !r.existed);
        let r = run(
            &mut d,
            3,
            1000,
            set("k", "b", Cond::IfAbsent, Ttl::Clear, true),
        );
        assert!(!r.changed && r.existed);
        assert_eq!(
            r.old.as_deref(),
            Some(b"a".as_slice()),
            "NX GET returns the old value"
        );
        let r = run(
            &mut d,
            4,
            1000,
            set("k", "c", Cond::IfPresent, Ttl::Clear, true),
        );
        assert!(r.changed);
        assert_eq!(r.old.as_deref(), Some(b"a".as_slice()));
        let v = &d[b"k".as_slice()];
        assert_eq!(
            (v.value.as_slice(), v.create_index, v.mod_index),
            (b"c".as_slice(), 2, 4)
        );
    }

    #[test]
    fn expiry_is_decided_by_the_entry_commit_time() {
        let mut d = BTreeMap::new();
        run(
            &mut d,
            1,
            1000,
            set("k", "v", Cond::Always, Ttl::AfterMs(500), false),
        );
        assert_eq!(d[b"k".as_slice()].expires_ms, Some(1500));
        assert!(d[b"k".as_slice()].live_at(1499) && !d[b"k".as_slice()].live_at(1500));
        // KEEPTTL keeps it; INCR and APPEND keep it; a plain SET clears it.
        run(
            &mut d,
            2,
            1100,
            set("k", "7", Cond::Always, Ttl::Keep, false),
        );
        assert_eq!(d[b"k".as_slice()].expires_ms, Some(1500));
        run(
            &mut d,
            3,
            1200,
            Op::IncrBy {
                key: "k".into(),
                delta: 1,
            },
        );
        assert_eq!(d[b"k".as_slice()].expires_ms, Some(1500));
        // At 1500 the key is gone for every command: INCR starts from 0 without the expiry.
        let r = run(
            &mut d,
            4,
            1500,
            Op::IncrBy {
                key: "k".into(),
                delta: 5,
            },
        );
        assert_eq!((r.existed, r.int), (false, 5));
        assert_eq!(d[b"k".as_slice()].expires_ms, None);
        // EXPIRE on a live key, PERSIST, and an expiry in the past deletes.
        let r = run(
            &mut d,
            5,
            1600,
            Op::Expire {
                key: "k".into(),
                ttl: Ttl::AfterMs(100),
                when: ExpireIf::Always,
            },
        );
        assert!(r.changed);
        assert_eq!(d[b"k".as_slice()].expires_ms, Some(1700));
        let r = run(
            &mut d,
            6,
            1600,
            Op::Expire {
                key: "k".into(),
                ttl: Ttl::Clear,
                when: ExpireIf::Always,
            },
        );
        assert!(r.changed);
        let r = run(
            &mut d,
            7,
            1600,
            Op::Expire {
                key: "k".into(),
                ttl: Ttl::Clear,
                when: ExpireIf::Always,
            },
        );
        assert!(
            !r.changed && r.existed,
            "PERSIST without an expiry changes nothing"
        );
        let r = run(
            &mut d,
            8,
            1600,
            Op::Expire {
                key: "k".into(),
                ttl: Ttl::AtMs(10),
                when: ExpireIf::Always,
            },
        );
        assert!(r.changed && d.is_empty());
        let r = run(
            &mut d,
            9,
            1600,
            Op::Expire {
                key: "k".into(),
                ttl: Ttl::AfterMs(10),
                when: ExpireIf::Always,
            },
        );
        assert!(!r.existed && !r.changed);
        // SET with an EXAT in the past leaves no key.
        run(
            &mut d,
            10,
            1600,
            set("k", "v", Cond::Always, Ttl::AtMs(1600), false),
        );
        assert!(d.is_empty());
    }

    #[test]
    fn expire_conditions_follow_redis() {
        let mut d = BTreeMap::new();
        let expire = |ttl, when| Op::Expire {
            key: "k".into(),
            ttl,
            when,
        };
        run(
            &mut d,
            1,
            1000,
            set("k", "v", Cond::Always, Ttl::Clear, false),
        );
        // No expiry yet: XX and GT refuse, LT (never > any time) and NX set.
        for when in [
            ExpireIf::HasExpiry,
            ExpireIf::Later,
            ExpireIf::HasExpiryEarlier,
        ] {
            let r = run(&mut d, 2, 1000, expire(Ttl::AfterMs(500), when));
            assert_eq!((r.existed, r.changed, r.int), (true, false, 0), "{when:?}");
        }
        let r = run(
            &mut d,
            3,
            1000,
            expire(Ttl::AfterMs(500), ExpireIf::Earlier),
        );
        assert_eq!((r.changed, r.int), (true, 1));
        assert_eq!(d[b"k".as_slice()].expires_ms, Some(1500));
        // Has one now: NX refuses; GT only later; LT only earlier.
        let r = run(
            &mut d,
            4,
            1000,
            expire(Ttl::AfterMs(900), ExpireIf::NoExpiry),
        );
        assert_eq!(r.int, 0);
        let r = run(&mut d, 5, 1000, expire(Ttl::AtMs(1400), ExpireIf::Later));
        assert_eq!(r.int, 0);
        let r = run(&mut d, 6, 1000, expire(Ttl::AtMs(1600), ExpireIf::Later));
        assert_eq!(r.int, 1);
        let r = run(
            &mut d,
            7,
            1000,
            expire(Ttl::AtMs(1700), ExpireIf::HasExpiryEarlier),
        );
        assert_eq!(r.int, 0);
        let r = run(
            &mut d,
            8,
            1000,
            expire(Ttl::AtMs(1550), ExpireIf::HasExpiryEarlier),
        );
        assert_eq!(r.int, 1);
        assert_eq!(d[b"k".as_slice()].expires_ms, Some(1550));
        // Setting the same expiry counts as set (Redis answers 1) but changes nothing.
        let r = run(&mut d, 9, 1000, expire(Ttl::AtMs(1550), ExpireIf::Always));
        assert_eq!((r.changed, r.int), (false, 1));
        // A missing key: 0 whatever the condition.
        let r = run(&mut d, 10, 2000, expire(Ttl::AfterMs(5), ExpireIf::Always));
        assert_eq!((r.existed, r.int), (false, 0));
    }

    #[test]
    fn sweep_removes_only_keys_expired_at_its_commit_time() {
        let mut d = BTreeMap::new();
        run(
            &mut d,
            1,
            1000,
            set("a", "1", Cond::Always, Ttl::AfterMs(100), false),
        );
        run(
            &mut d,
            2,
            1000,
            set("b", "2", Cond::Always, Ttl::AfterMs(500), false),
        );
        run(
            &mut d,
            3,
            1000,
            set("c", "3", Cond::Always, Ttl::Clear, false),
        );
        let sweep = Op::Sweep {
            keys: vec!["a".into(), "b".into(), "c".into(), "missing".into()],
        };
        let r = run(&mut d, 4, 1200, sweep.clone());
        assert_eq!((r.changed, r.int), (true, 1));
        assert_eq!(
            d.keys().cloned().collect::<Vec<_>>(),
            vec![b"b".to_vec(), b"c".to_vec()]
        );
        let r = run(&mut d, 5, 1499, sweep.clone());
        assert_eq!((r.changed, r.int), (false, 0));
        let r = run(&mut d, 6, 1500, sweep);
        assert_eq!(r.int, 1);
        assert_eq!(d.keys().cloned().collect::<Vec<_>>(), vec![b"c".to_vec()]);
    }

    #[test]
    fn incr_append_and_getdel() {
        let mut d = BTreeMap::new();
        run(
            &mut d,
            1,
            1,
            set("n", "01", Cond::Always, Ttl::Clear, false),
        );
        let r = run(
            &mut d,
            2,
            1,
            Op::IncrBy {
                key: "n".into(),
                delta: 1,
            },
        );
        assert!(r.error.is_some() && !r.changed, "01 is not canonical");
        run(
            &mut d,
            3,
            1,
            set("n", &i64::MAX.to_string(), Cond::Always, Ttl::Clear, false),
        );
        let r = run(
            &mut d,
            4,
            1,
            Op::IncrBy {
                key: "n".into(),
                delta: 1,
            },
        );
        assert!(r.error.as_deref().is_some_and(|e| e.contains("overflow")));
        let r = run(
            &mut d,
            5,
            1,
            Op::IncrBy {
                key: "m".into(),
                delta: -3,
            },
        );
        assert_eq!(r.int, -3);
        let r = run(
            &mut d,
            6,
            1,
            Op::Append {
                key: "s".into(),
                suffix: "ab".into(),
                len_max: 3,
            },
        );
        assert_eq!(r.int, 2);
        let r = run(
            &mut d,
            7,
            1,
            Op::Append {
                key: "s".into(),
                suffix: "cd".into(),
                len_max: 3,
            },
        );
        assert!(r.error.is_some());
        assert_eq!(d[b"s".as_slice()].value, b"ab");
        let r = run(&mut d, 8, 1, Op::GetDel { key: "s".into() });
        assert_eq!(r.old.as_deref(), Some(b"ab".as_slice()));
        assert!(!d.contains_key(b"s".as_slice()));
        let r = run(
            &mut d,
            9,
            1,
            Op::MSet {
                pairs: vec![("a".into(), "1".into()), ("b".into(), "2".into())],
            },
        );
        assert!(r.changed && d.contains_key(b"a".as_slice()) && d.contains_key(b"b".as_slice()));
    }
}
