//! The change feed's types (issue 18): what one applied batch changed. The history a watcher
//! resumes from is kept with the state (`state_machine.rs`).

use crate::ops::keys_written;
use crate::types::Op;
use serde::{Deserialize, Serialize};

/// What one change costs the history: its key, its value and a fixed overhead.
pub(crate) fn change_bytes(c: &Change) -> u64 {
    (c.key.len() + c.value.as_ref().map_or(0, Vec::len) + 64) as u64
}

/// Batches a watcher may fall behind by before it lags.
pub const CHANGE_BATCHES_MAX: usize = 1024;

/// One key's change in the feed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
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
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
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
pub(crate) fn change_kind(
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
    /// The state was replaced by a snapshot, or changes were applied without being recorded
    /// (no history kept and nobody watching when the batch began): changes up to `applied`
    /// are not listed, and a
    /// watcher must resync.
    pub reset: bool,
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
