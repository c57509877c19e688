//! tunekv-raft: one Raft group = one shard (or the metadata catalog), on openraft.
//!
//! | openraft's contract        | our implementation |
//! |----------------------------|--------------------|
//! | `RaftTypeConfig`           | [`TypeConfig`]: app data is [`Command`], response [`CommandResult`] |
//! | `RaftLogStorage`           | [`LogStore`]: tunekv-storage records, `IOFlushed` after group commit |
//! | `RaftStateMachine`         | [`StateMachine`]: each group's keys on disk, snapshots streamed from frozen views |
//! | `RaftNetworkFactory`       | in tunekv-node (the transport lives there) |
//!
//! Every group of a node shares one [`tunekv_storage::Storage`] and one
//! [`tunekv_storage::GroupCommit`], so a burst of writes to many shards costs one fsync.

mod feed;
mod hot;
mod log_store;
mod ops;
pub mod runtime;
mod state_machine;
mod types;

pub use feed::{
    Change, ChangeBatch, ChangeKind, FeedLimits, CHANGE_BATCHES_MAX, CHANGE_HISTORY_BYTES,
};
pub use hot::{HotLimits, HotStats, HOT_VALUES_BYTES_DEFAULT};
pub use log_store::{LogStore, LOG_META_NAMES, REPLICATION_BATCH_BYTES_MAX};
pub use state_machine::{
    snapshot_chunk, Applied, RaftCounters, ShardData, ShardView, SnapshotData, StateMachine,
};
pub use types::{
    Command, CommandResult, Cond, Expect, ExpireIf, Op, StoredValue, Ttl, TypeConfig,
    VERSION_MISMATCH,
};

use std::sync::Arc;

/// A group's Raft handle.
pub type Raft = openraft::Raft<TypeConfig, StateMachine>;

/// A snapshot as openraft hands it around.
pub type Snapshot = openraft::alias::SnapshotOf<TypeConfig, SnapshotData>;

/// Raft timing and compaction settings shared by every group of a node.
#[derive(Clone, Debug)]
pub struct RaftTuning {
    pub heartbeat_ms: u64,
    pub election_timeout_ms_min: u64,
    pub election_timeout_ms_max: u64,
    /// Build a snapshot (and purge the log) after this many entries.
    pub snapshot_logs_since_last: u64,
    /// Entries kept in the log behind the snapshot, so lagging followers catch up by log.
    pub snapshot_logs_kept: u64,
}

impl Default for RaftTuning {
    fn default() -> Self {
        RaftTuning {
            heartbeat_ms: 100,
            election_timeout_ms_min: 600,
            election_timeout_ms_max: 1200,
            snapshot_logs_since_last: 5000,
            snapshot_logs_kept: 1000,
        }
    }
}

const _: () = assert!(RAFT_HEARTBEAT_MS_DEFAULT * 3 <= RAFT_ELECTION_MS_MIN_DEFAULT);
const RAFT_HEARTBEAT_MS_DEFAULT: u64 = 100;
const RAFT_ELECTION_MS_MIN_DEFAULT: u64 = 600;

impl RaftTuning {
    pub fn openraft_config(&self) -> Result<Arc<openraft::Config>, String> {
        let config = openraft::Config {
            cluster_name: "tunekv".into(),
            heartbeat_interval: self.heartbeat_ms,
            election_timeout_min: self.election_timeout_ms_min,
            election_timeout_max: self.election_timeout_ms_max,
            snapshot_policy: openraft::SnapshotPolicy::LogsSinceLast(self.snapshot_logs_since_last),
            max_in_snapshot_log_to_keep: self.snapshot_logs_kept,
            // A leader that restarts must not resume leading in its old term: our state machine
            // is rebuilt from the snapshot and the log, and the committed index is a hint saved
            // without a sync, so a restored leader would take a read index below entries its
            // previous life committed and acknowledged, and serve strong reads stale (found by
            // tunekv-sim; test `restarted_leaders_serve_no_stale_strong_reads`). It rejoins as
            // a follower and learns the commit index from the next leader's first entry.
            enable_leader_restore: Some(false),
            ..Default::default()
        };
        config.validate().map(Arc::new).map_err(|e| e.to_string())
    }
}

fn invalid_data(e: impl std::fmt::Display) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, e.to_string())
}
