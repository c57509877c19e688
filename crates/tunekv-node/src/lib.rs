//! tunekv-node: one node of a tunekv cluster.
//!
//! A node hosts the metadata group (the keyspace catalog, on every node) and one Raft group per
//! shard it replicates. It routes each client request to the right group, forwards writes to
//! the group's leader, and serves reads by asking tunekv-core's `judge` whether its copy may
//! serve them. It knows nothing about HTTP: front ends call [`Node`]'s methods.

#[cfg(all(feature = "bug-injection", not(debug_assertions)))]
compile_error!(
    "the bug-injection feature breaks consistency on purpose; never build it in release"
);

mod bugs;
pub mod clock;
pub mod config;
pub mod metrics;
mod network;
mod node;
pub mod rpc;
pub mod status;
pub mod tls;
pub mod transport;

pub use bugs::{Bugs, BUG_NAMES};
pub use config::{
    AuthConfig, CrashAt, LeaderlessConfig, NodeConfig, PeerConfig, StorageConfig,
    STORAGE_CACHE_BYTES_MIN, STORAGE_ENGINE_THREADS_MAX,
};
pub use node::fuzzing;
pub use node::{op_needs, quota, Login, RoleView, UserChange, UserView, WatchSlot, AUTH_STALE_MAX};
pub use node::{version_mismatch, PublishSink, Watch, WatchEvent, WatchFrom, WatchRefused};
pub use node::{
    KeyspaceInfo, LeaderlessReport, MembershipReport, MoveView, Node, NodeView, ReadOutcome,
    ReadRequest, ReplicaDigest, RestoreOutcome, ScanPage, ShardDump, ShardRead, StateRead,
    UpdateReport, WriteOutcome, WriteRequest, BATCH_KEYS_MAX,
};
pub use transport::{FaultState, LinkFaults};
pub use tunekv_raft::{
    ChangeKind, CommandResult, Cond, Expect, ExpireIf, Op, StoredValue, Ttl, VERSION_MISMATCH,
};
