//! What goes into the log: commands stamped with the leader's commit time.

use serde::{Deserialize, Serialize};
use std::fmt;

openraft::declare_raft_types!(
    /// tunekv's Raft types: node ids are `u64` (tunekv-core's `NodeId.0`), nodes are addressed
    /// by their node-to-node address (`BasicNode.addr`).
    pub TypeConfig:
        D = Command,
        R = CommandResult,
);

/// A state-machine command. `commit_ts` is the leader's hybrid-logical-clock time when it
/// proposed the entry; receipts and bounded staleness read it back.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Command {
    pub commit_ts: u64,
    pub op: Op,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Op {
    Put {
        key: Vec<u8>,
        value: Vec<u8>,
    },
    /// Writes only if the key is absent (the catalog uses it to create keyspaces once).
    PutIfAbsent {
        key: Vec<u8>,
        value: Vec<u8>,
    },
    Delete {
        key: Vec<u8>,
    },
}

impl fmt::Display for Command {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (name, key) = match &self.op {
            Op::Put { key, .. } => ("put", key),
            Op::PutIfAbsent { key, .. } => ("put_if_absent", key),
            Op::Delete { key } => ("delete", key),
        };
        write!(f, "{name}({} key bytes, ts {})", key.len(), self.commit_ts)
    }
}

/// What applying a command did, returned to the proposer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CommandResult {
    /// Whether the key existed before the command.
    pub existed: bool,
    /// Whether the command changed the state (false for a refused put-if-absent or a delete of
    /// a missing key).
    pub changed: bool,
    /// For a refused put-if-absent: the value that is there.
    pub current: Option<StoredValue>,
}

/// A value in a state machine, with where it was written.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredValue {
    pub value: Vec<u8>,
    /// Log index of the write that created the key (etcd's create_revision).
    pub create_index: u64,
    /// Log index of the last write to the key.
    pub mod_index: u64,
    pub commit_ts: u64,
}
