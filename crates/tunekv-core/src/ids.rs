//! Newtypes for identifiers and indexes, so that a node id is never confused with a log index.

use serde::{Deserialize, Serialize};
use std::fmt;

/// A node of the cluster, as numbered in its config (1-based).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct NodeId(pub u64);

/// A shard of a keyspace, `0..shards`.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
pub struct ShardId(pub u32);

/// An index in a Raft log (1-based; 0 means "nothing yet").
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
pub struct LogIndex(pub u64);

/// One Raft group. Group 0 is the metadata group (the keyspace catalog); a shard's group is
/// `keyspace_id << SHARD_BITS | shard`, where `keyspace_id` is the catalog log index at which the
/// keyspace was created (unique, never 0).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct GroupId(pub u64);

/// Bits of a [`GroupId`] that hold the shard number.
pub const SHARD_BITS: u32 = 16;
/// Most shards a keyspace can have (the group id encoding allows 65536; we stay far below).
pub const SHARDS_MAX: u32 = 256;
const _: () = assert!(SHARDS_MAX <= 1 << SHARD_BITS);

impl GroupId {
    pub const METADATA: GroupId = GroupId(0);

    pub fn for_shard(keyspace_id: u64, shard: ShardId) -> GroupId {
        debug_assert!(keyspace_id > 0, "keyspace ids start at 1");
        debug_assert!(shard.0 < SHARDS_MAX);
        GroupId((keyspace_id << SHARD_BITS) | u64::from(shard.0))
    }

    pub fn is_metadata(self) -> bool {
        self == GroupId::METADATA
    }

    /// The shard number of a data group (0 for the metadata group).
    pub fn shard(self) -> ShardId {
        ShardId((self.0 & ((1 << SHARD_BITS) - 1)) as u32)
    }

    pub fn keyspace_id(self) -> u64 {
        self.0 >> SHARD_BITS
    }
}

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

impl fmt::Display for ShardId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

impl fmt::Display for LogIndex {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

impl fmt::Display for GroupId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_metadata() {
            write!(f, "meta")
        } else {
            write!(f, "ks{}/shard{}", self.keyspace_id(), self.shard())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn group_id_round_trips_keyspace_and_shard() {
        let g = GroupId::for_shard(42, ShardId(7));
        assert_eq!(g.keyspace_id(), 42);
        assert_eq!(g.shard(), ShardId(7));
        assert!(!g.is_metadata());
        assert!(GroupId::METADATA.is_metadata());
    }
}
