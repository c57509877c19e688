//! The state machine of one group: an ordered map in memory, rebuilt at start from the last
//! snapshot plus the log. Readers take one consistent view of it at a time ([`ShardData::read`]),
//! which is what consistent-prefix multi-key reads need.

use crate::types::{
    Command, CommandResult, Cond, Expect, ExpireIf, Op, StoredValue, Ttl, VERSION_MISMATCH,
};
use crate::{invalid_data, TypeConfig};
use futures::{Stream, TryStreamExt};
use openraft::alias::{LogIdOf, SnapshotMetaOf, SnapshotOf, StoredMembershipOf};
use openraft::storage::{EntryResponder, RaftSnapshotBuilder, RaftStateMachine};
use openraft::EntryPayload;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::io;
use std::sync::{Arc, RwLock, RwLockReadGuard};
use tokio::sync::{broadcast, watch};
use tunekv_core::Hlc;
use tunekv_storage::Storage;

/// The applied position of a group, published after every applied batch.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Applied {
    pub index: u64,
    /// The commit time (HLC) of the last stamped entry applied. Commit times grow along the
    /// log while clocks agree within `max_clock_offset_ms`; after a skewed stamp, the next
    /// entries' bounded times follow it (issue 15).
    pub commit_ts: u64,
}

struct Inner {
    data: BTreeMap<Vec<u8>, StoredValue>,
    last_applied: Option<LogIdOf<TypeConfig>>,
    commit_ts: u64,
    membership: StoredMembershipOf<TypeConfig>,
    history: History,
}

/// The feed's recent past on this node (issue 18): the last changes applied, bounded in bytes,
/// so a watcher can resume from a cursor. Every change with an index above `from` is here.
struct History {
    changes: std::collections::VecDeque<Change>,
    bytes: usize,
    bytes_max: usize,
    from: u64,
}

/// What one change costs the history: its key, its value and a fixed overhead.
fn change_bytes(c: &Change) -> usize {
    c.key.len() + c.value.as_ref().map_or(0, Vec::len) + 64
}

impl History {
    fn push(&mut self, change: Change) {
        if self.bytes_max == 0 {
            return;
        }
        self.bytes += change_bytes(&change);
        self.changes.push_back(change);
        while self.bytes > self.bytes_max {
            let Some(old) = self.changes.pop_front() else {
                break;
            };
            self.bytes -= change_bytes(&old);
            self.from = self.from.max(old.index);
        }
    }

    /// Forgets every change: the state was replaced at `applied`.
    fn reset(&mut self, applied: u64) {
        self.changes.clear();
        self.bytes = 0;
        self.from = applied;
    }
}

impl Inner {
    fn applied(&self) -> Applied {
        Applied {
            index: self.last_applied.as_ref().map(|l| l.index()).unwrap_or(0),
            commit_ts: self.commit_ts,
        }
    }
}

/// The part of a group's state that readers share with the state machine.
pub struct ShardData {
    // Readers hold the read lock for one request's view; the applier holds the write lock for
    // one batch. Never held across an await.
    inner: RwLock<Inner>,
    // Wakes readers waiting for an index (strong reads on followers, later bounded reads).
    applied_tx: watch::Sender<Applied>,
    // The change feed: each applied batch's changed keys, to every watcher (issue 18). A
    // bounded channel: a watcher that falls behind by more than its capacity lags (and is cut
    // off by its reader), so a slow consumer never grows memory here.
    changes: broadcast::Sender<Arc<ChangeBatch>>,
    /// Snapshots built here, installed from a leader, and log purges (for metrics).
    pub counters: Arc<RaftCounters>,
}

/// What a group's storage did since the process started (`GET /metrics`).
#[derive(Debug, Default)]
pub struct RaftCounters {
    pub snapshots_built: std::sync::atomic::AtomicU64,
    pub snapshots_installed: std::sync::atomic::AtomicU64,
    pub purges: std::sync::atomic::AtomicU64,
}

/// Batches a watcher may fall behind by before it lags.
pub const CHANGE_BATCHES_MAX: usize = 1024;

/// One key's change in the feed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Change {
    /// The entry that changed it.
    pub index: u64,
    pub commit_ts: u64,
    pub key: Vec<u8>,
    /// The value after the change; `None`: deleted (or expired and swept).
    pub value: Option<Vec<u8>>,
    /// What happened, as Redis names the event of a keyspace notification.
    pub kind: ChangeKind,
    /// When the value expires (Unix ms), if it does.
    pub expires_ms: Option<u64>,
}

/// What a change did to its key (Redis's keyspace-notification event names).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ChangeKind {
    /// Written (SET, PUT, MSET, CAS, …).
    Set,
    /// Deleted by a command.
    Del,
    /// Removed by the sweep of expired keys.
    Expired,
    /// INCRBY and its relatives.
    IncrBy,
    Append,
    /// Its expiry set or changed.
    Expire,
    /// Its expiry removed.
    Persist,
}

impl ChangeKind {
    /// The event's name in keyspace notifications.
    pub fn event(self) -> &'static str {
        match self {
            ChangeKind::Set => "set",
            ChangeKind::Del => "del",
            ChangeKind::Expired => "expired",
            ChangeKind::IncrBy => "incrby",
            ChangeKind::Append => "append",
            ChangeKind::Expire => "expire",
            ChangeKind::Persist => "persist",
        }
    }
}

/// What `op` did to `key`, which it changed from `before` to `after` (`took`: the branch a
/// transaction ran, `true` for success).
fn change_kind(
    op: &Op,
    key: &[u8],
    took: bool,
    before: Option<(u64, Option<u64>)>,
    after: Option<(u64, Option<u64>)>,
) -> ChangeKind {
    if after.is_none() {
        return match op {
            Op::Sweep { .. } => ChangeKind::Expired,
            _ => ChangeKind::Del,
        };
    }
    match op {
        Op::IncrBy { .. } => ChangeKind::IncrBy,
        Op::Append { .. } => ChangeKind::Append,
        Op::Expire { .. } => match (before, after) {
            (Some((_, Some(_))), Some((_, None))) => ChangeKind::Persist,
            _ => ChangeKind::Expire,
        },
        Op::Txn {
            success, failure, ..
        } => {
            let branch = if took { success } else { failure };
            // The last op of the branch that wrote the key says what happened.
            branch
                .iter()
                .rev()
                .find(|o| keys_written(o).iter().any(|k| k.as_slice() == key))
                .map(|o| change_kind(o, key, took, before, after))
                .unwrap_or(ChangeKind::Set)
        }
        _ => ChangeKind::Set,
    }
}

/// What one applied batch changed, in log order, and the index applied after it: every
/// change up to `applied` is in this batch or an earlier one.
#[derive(Clone, Debug, Default)]
pub struct ChangeBatch {
    pub changes: Vec<Change>,
    pub applied: u64,
    /// The state was replaced by a snapshot: changes up to `applied` are not listed, and a
    /// watcher must resync.
    pub reset: bool,
}

/// One consistent view of a group's state.
pub struct ShardView<'a> {
    inner: RwLockReadGuard<'a, Inner>,
}

impl ShardView<'_> {
    /// The value of `key`, ignoring expiry (the catalog's keys never expire).
    pub fn get(&self, key: &[u8]) -> Option<&StoredValue> {
        self.inner.data.get(key)
    }

    /// The value of `key` if it has not expired at `now_ms`.
    pub fn get_live(&self, key: &[u8], now_ms: u64) -> Option<&StoredValue> {
        self.inner.data.get(key).filter(|v| v.live_at(now_ms))
    }

    /// Every live key at `now_ms`, in order.
    pub fn live(&self, now_ms: u64) -> impl Iterator<Item = (&Vec<u8>, &StoredValue)> + '_ {
        self.inner
            .data
            .iter()
            .filter(move |(_, v)| v.live_at(now_ms))
    }

    /// Up to `limit` keys that have expired at `now_ms` but are still stored, in key order.
    pub fn expired(&self, now_ms: u64, limit: usize) -> Vec<Vec<u8>> {
        self.inner
            .data
            .iter()
            .filter(|(_, v)| !v.live_at(now_ms))
            .map(|(k, _)| k.clone())
            .take(limit)
            .collect()
    }

    /// Keys stored, expired ones not yet swept included.
    pub fn stored_keys(&self) -> usize {
        self.inner.data.len()
    }

    pub fn applied(&self) -> Applied {
        self.inner.applied()
    }

    /// Keys with `prefix`, in order (the catalog lists keyspaces with it).
    pub fn scan_prefix<'b>(
        &'b self,
        prefix: &'b [u8],
    ) -> impl Iterator<Item = (&'b Vec<u8>, &'b StoredValue)> + 'b {
        self.inner
            .data
            .range(prefix.to_vec()..)
            .take_while(move |(k, _)| k.starts_with(prefix))
    }

    pub fn len(&self) -> usize {
        self.inner.data.len()
    }

    pub fn is_empty(&self) -> bool {
        self.inner.data.is_empty()
    }
}

impl ShardData {
    pub fn read(&self) -> ShardView<'_> {
        ShardView {
            inner: self.inner.read().unwrap_or_else(|p| p.into_inner()),
        }
    }

    pub fn applied(&self) -> Applied {
        *self.applied_tx.borrow()
    }

    pub fn subscribe(&self) -> watch::Receiver<Applied> {
        self.applied_tx.subscribe()
    }

    /// Every later applied batch's changes. Subscribe first, then read [`ShardData::applied`]:
    /// batches at or below that index were applied before; the rest arrive here.
    pub fn changes(&self) -> broadcast::Receiver<Arc<ChangeBatch>> {
        self.changes.subscribe()
    }

    /// The changes this node applied after index `after`, and the index applied with them
    /// (subscribe to [`ShardData::changes`] first: later batches arrive there).
    /// `Err(oldest)`: the history no longer reaches back to `after`; it begins after `oldest`.
    pub fn changes_since(&self, after: u64) -> Result<(Vec<Change>, u64), u64> {
        let inner = self.inner.read().unwrap_or_else(|p| p.into_inner());
        let applied = inner.applied().index;
        if after >= applied {
            return Ok((Vec::new(), applied));
        }
        let from = if inner.history.bytes_max == 0 {
            applied
        } else {
            inner.history.from
        };
        if after < from {
            return Err(from);
        }
        let h = &inner.history.changes;
        // Changes are in index order: skip to the first one after `after`.
        let start = h.partition_point(|c| c.index <= after);
        Ok((h.range(start..).cloned().collect(), applied))
    }
}

/// How much of the change feed a shard keeps (issue 18).
#[derive(Clone, Copy, Debug)]
pub struct FeedLimits {
    /// Batches a live watcher may fall behind by before it is cut off.
    pub batches: usize,
    /// Bytes of recent changes kept so a watcher can resume from a cursor (0: none).
    pub history_bytes: usize,
}

impl Default for FeedLimits {
    fn default() -> FeedLimits {
        FeedLimits {
            batches: CHANGE_BATCHES_MAX,
            history_bytes: CHANGE_HISTORY_BYTES,
        }
    }
}

/// Bytes of recent changes a shard keeps for resuming watchers, by default.
pub const CHANGE_HISTORY_BYTES: usize = 4 << 20;

/// The keys an op may change (every branch of a transaction).
fn keys_written(op: &Op) -> Vec<&Vec<u8>> {
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
        Op::MSet { pairs } => pairs.iter().map(|(k, _)| k).collect(),
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
    data: &'a BTreeMap<Vec<u8>, StoredValue>,
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
fn shape(data: &BTreeMap<Vec<u8>, StoredValue>, key: &[u8]) -> Option<(u64, Option<u64>)> {
    data.get(key).map(|v| (v.mod_index, v.expires_ms))
}

/// What a snapshot holds besides openraft's meta. Format: docs/formats.md.
#[derive(Serialize, Deserialize)]
struct SnapshotBody {
    commit_ts: u64,
    data: Vec<(Vec<u8>, StoredValue)>,
}

#[derive(Serialize, Deserialize)]
struct SnapshotFile {
    meta: SnapshotMetaOf<TypeConfig>,
    body: Vec<u8>,
}

#[derive(Clone)]
pub struct StateMachine {
    group: u64,
    shared: Arc<ShardData>,
    storage: Arc<dyn Storage>,
    // The node's clock: applied commit times are observed so a new leader never stamps an
    // entry earlier than one it has applied.
    hlc: Arc<Hlc>,
}

impl StateMachine {
    /// Opens a group's state machine from its stored snapshot (if any).
    pub fn open(group: u64, storage: Arc<dyn Storage>, hlc: Arc<Hlc>) -> io::Result<StateMachine> {
        Self::open_with(group, storage, hlc, FeedLimits::default())
    }

    /// [`StateMachine::open`] with the change feed's limits.
    pub fn open_with(
        group: u64,
        storage: Arc<dyn Storage>,
        hlc: Arc<Hlc>,
        feed: FeedLimits,
    ) -> io::Result<StateMachine> {
        let mut inner = Inner {
            data: BTreeMap::new(),
            last_applied: None,
            commit_ts: 0,
            membership: StoredMembershipOf::<TypeConfig>::default(),
            history: History {
                changes: Default::default(),
                bytes: 0,
                bytes_max: feed.history_bytes,
                from: 0,
            },
        };
        if let Some(bytes) = storage.get_snapshot(group)? {
            let file: SnapshotFile = postcard::from_bytes(&bytes).map_err(invalid_data)?;
            let body: SnapshotBody = postcard::from_bytes(&file.body).map_err(invalid_data)?;
            inner.data = body.data.into_iter().collect();
            inner.commit_ts = body.commit_ts;
            inner.last_applied = file.meta.last_log_id;
            inner.membership = file.meta.last_membership.clone();
            hlc.observe(body.commit_ts);
        }
        // The log entries after the snapshot are applied again after opening: the history
        // starts here.
        inner.history.from = inner.applied().index;
        let (applied_tx, _) = watch::channel(inner.applied());
        let (changes, _) = broadcast::channel(feed.batches.max(1));
        let shared = Arc::new(ShardData {
            inner: RwLock::new(inner),
            applied_tx,
            counters: Arc::default(),
            changes,
        });
        Ok(StateMachine {
            group,
            shared,
            storage,
            hlc,
        })
    }

    pub fn data(&self) -> Arc<ShardData> {
        self.shared.clone()
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Inner> {
        self.shared.inner.write().unwrap_or_else(|p| p.into_inner())
    }
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
    data: &mut BTreeMap<Vec<u8>, StoredValue>,
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
    data: &mut BTreeMap<Vec<u8>, StoredValue>,
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

fn apply_op(data: &mut BTreeMap<Vec<u8>, StoredValue>, index: u64, cmd: &Command) -> CommandResult {
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

impl RaftSnapshotBuilder<TypeConfig> for StateMachine {
    type SnapshotData = Vec<u8>;

    async fn build_snapshot(&mut self) -> Result<SnapshotOf<TypeConfig, Vec<u8>>, io::Error> {
        let (meta, body) = {
            let inner = self.shared.inner.read().unwrap_or_else(|p| p.into_inner());
            let body = SnapshotBody {
                commit_ts: inner.commit_ts,
                // Keys expired at the last applied commit time are invisible everywhere.
                data: inner
                    .data
                    .iter()
                    .filter(|(_, v)| v.live_at(Hlc::millis(inner.commit_ts)))
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect(),
            };
            let meta = SnapshotMetaOf::<TypeConfig> {
                last_log_id: inner.last_applied,
                last_membership: inner.membership.clone(),
            };
            (meta, postcard::to_stdvec(&body).map_err(invalid_data)?)
        };
        let file = SnapshotFile {
            meta: meta.clone(),
            body: body.clone(),
        };
        self.storage.put_snapshot(
            self.group,
            &postcard::to_stdvec(&file).map_err(invalid_data)?,
        )?;
        self.shared
            .counters
            .snapshots_built
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Ok(SnapshotOf::<TypeConfig, Vec<u8>> {
            meta,
            snapshot: body,
        })
    }
}

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotData = Vec<u8>;
    type SnapshotBuilder = Self;

    async fn applied_state(
        &mut self,
    ) -> Result<(Option<LogIdOf<TypeConfig>>, StoredMembershipOf<TypeConfig>), io::Error> {
        let inner = self.shared.inner.read().unwrap_or_else(|p| p.into_inner());
        Ok((inner.last_applied, inner.membership.clone()))
    }

    async fn apply<Strm>(&mut self, mut entries: Strm) -> Result<(), io::Error>
    where
        Strm: Stream<Item = Result<EntryResponder<TypeConfig>, io::Error>> + Unpin + Send,
    {
        // Collect the batch first: the write lock must not be held across an await.
        let mut batch = Vec::new();
        while let Some(item) = entries.try_next().await? {
            batch.push(item);
        }
        let mut replies = Vec::with_capacity(batch.len());
        // The feed's work is done only while someone watches or a history is kept.
        let watched = self.shared.changes.receiver_count() > 0;
        let mut changes = Vec::new();
        let applied = {
            let mut inner = self.write();
            let feed = watched || inner.history.bytes_max > 0;
            for (entry, responder) in batch {
                let index = entry.log_id.index();
                assert!(
                    inner.last_applied.as_ref().map(|l| l.index()) < Some(index),
                    "entries apply in log order"
                );
                let result = match &entry.payload {
                    EntryPayload::Blank => CommandResult::unchanged(false),
                    EntryPayload::Normal(cmd) => {
                        // The entry's own stamp: commit times grow along the log while clocks
                        // agree; after a skewed stamp the next entries' (bounded) times follow,
                        // so one bad stamp is not carried forward (issue 15).
                        inner.commit_ts = cmd.commit_ts;
                        self.hlc.observe(cmd.commit_ts);
                        if feed {
                            let keys = keys_written(&cmd.op);
                            let before: Vec<_> =
                                keys.iter().map(|k| shape(&inner.data, k)).collect();
                            let result = apply_op(&mut inner.data, index, cmd);
                            for (key, was) in keys.into_iter().zip(before) {
                                let now = shape(&inner.data, key);
                                if now != was {
                                    changes.push(Change {
                                        index,
                                        commit_ts: cmd.commit_ts,
                                        key: key.clone(),
                                        value: inner.data.get(key).map(|v| v.value.clone()),
                                        kind: change_kind(&cmd.op, key, result.int == 1, was, now),
                                        expires_ms: inner.data.get(key).and_then(|v| v.expires_ms),
                                    });
                                }
                            }
                            result
                        } else {
                            apply_op(&mut inner.data, index, cmd)
                        }
                    }
                    EntryPayload::Membership(m) => {
                        inner.membership =
                            StoredMembershipOf::<TypeConfig>::new(Some(entry.log_id), m.clone());
                        CommandResult::unchanged(false)
                    }
                };
                inner.last_applied = Some(entry.log_id);
                if let Some(r) = responder {
                    replies.push((r, result));
                }
            }
            if watched {
                for c in &changes {
                    inner.history.push(c.clone());
                }
            } else {
                for c in changes.drain(..) {
                    inner.history.push(c);
                }
            }
            inner.applied()
        };
        if watched {
            // Before the applied index moves: a watcher that reads it after subscribing
            // either counts this batch as before its start or receives it.
            let _ = self.shared.changes.send(Arc::new(ChangeBatch {
                changes,
                applied: applied.index,
                reset: false,
            }));
        }
        self.shared.applied_tx.send_replace(applied);
        for (r, result) in replies {
            r.send(result);
        }
        Ok(())
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMetaOf<TypeConfig>,
        snapshot: Vec<u8>,
    ) -> Result<(), io::Error> {
        let body: SnapshotBody = postcard::from_bytes(&snapshot).map_err(invalid_data)?;
        // Durable before it becomes the state: a restart must find it.
        let file = SnapshotFile {
            meta: meta.clone(),
            body: snapshot,
        };
        self.storage.put_snapshot(
            self.group,
            &postcard::to_stdvec(&file).map_err(invalid_data)?,
        )?;
        self.hlc.observe(body.commit_ts);
        let applied = {
            let mut inner = self.write();
            inner.data = body.data.into_iter().collect();
            inner.commit_ts = body.commit_ts;
            inner.last_applied = meta.last_log_id;
            inner.membership = meta.last_membership.clone();
            let applied = inner.applied();
            inner.history.reset(applied.index);
            applied
        };
        if self.shared.changes.receiver_count() > 0 {
            let _ = self.shared.changes.send(Arc::new(ChangeBatch {
                changes: Vec::new(),
                applied: applied.index,
                reset: true,
            }));
        }
        self.shared
            .counters
            .snapshots_installed
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.shared.applied_tx.send_replace(applied);
        Ok(())
    }

    async fn get_current_snapshot(
        &mut self,
    ) -> Result<Option<SnapshotOf<TypeConfig, Vec<u8>>>, io::Error> {
        match self.storage.get_snapshot(self.group)? {
            None => Ok(None),
            Some(bytes) => {
                let file: SnapshotFile = postcard::from_bytes(&bytes).map_err(invalid_data)?;
                Ok(Some(SnapshotOf::<TypeConfig, Vec<u8>> {
                    meta: file.meta,
                    snapshot: file.body,
                }))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The feed's history keeps the newest changes within its bytes and says from where it
    /// is complete: every change above `from` is kept, none above it is dropped.
    #[test]
    fn the_history_drops_its_oldest_changes_and_knows_where_it_is_complete() {
        let change = |index: u64| Change {
            index,
            commit_ts: 0,
            key: format!("k{index}").into_bytes(),
            value: Some(vec![b'v'; 34]),
            kind: ChangeKind::Set,
            expires_ms: None,
        };
        // Each costs 2 + 34 + 64 = 100 bytes (one digit keys).
        let mut h = History {
            changes: Default::default(),
            bytes: 0,
            bytes_max: 300,
            from: 5,
        };
        for i in 6..=9 {
            h.push(change(i));
        }
        assert_eq!((h.changes.len(), h.bytes, h.from), (3, 300, 6));
        assert_eq!(h.changes.front().map(|c| c.index), Some(7));
        h.reset(20);
        assert_eq!((h.changes.len(), h.bytes, h.from), (0, 0, 20));
        h.bytes_max = 0;
        h.push(change(21));
        assert!(h.changes.is_empty());
    }

    /// Applies `op` as entry `index` committed at `now_ms`.
    fn run(
        data: &mut BTreeMap<Vec<u8>, StoredValue>,
        index: u64,
        now_ms: u64,
        op: Op,
    ) -> CommandResult {
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
