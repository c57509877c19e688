//! tunekv-dynamo: the leaderless (Dynamo-style) keyspace mode of DESIGN §2.
//!
//! This crate sits at the level of `tunekv-raft`: it owns how a leaderless keyspace places and
//! versions its keys, and knows nothing about sockets, HTTP or Raft:
//!
//! - [`ring`]: a consistent-hash ring of Q equal partitions spread over the nodes (Dynamo's
//!   strategy 3), the preference list of a key (its first N distinct nodes), and the sloppy-quorum
//!   substitutes for preference nodes that are down (each with the node its hint is for).
//! - [`version`]: the version of a leaderless write (the coordinator's HLC stamp, node id as
//!   tie-break), tombstones, and the conflict-resolution seam ([`version::Resolve`]) with
//!   last-writer-wins as its first policy; `Policy` names every policy a keyspace may have.
//! - [`merkle`]: per-partition hash trees over the key versions, updated in O(depth) on every
//!   write, and the descent that finds the leaves two replicas disagree on.
//! - [`causal`], [`crdt`], [`ormap`] and [`update`] (issue 17): dots counted per key and
//!   replica, causal contexts (a version vector plus the dots beyond its gaps), and the policies
//!   that lose nothing as delta-state CRDTs — siblings (a multi-value register over dots), a
//!   PN-counter with recent request ids, add-wins sets and maps of registers and counters whose
//!   deltas join in O(delta) — and the delta each client update makes at a replica.
//! - [`replica`]: one node's copy of a leaderless keyspace: versions by partition, merged by the
//!   keyspace's policy (sets and maps joined in place), with the trees kept current.

pub mod causal;
pub mod crdt;
pub mod merkle;
pub mod ormap;
pub mod replica;
pub mod ring;
pub mod update;
pub mod version;

pub use replica::Replica;
pub use ring::{Placement, Ring};
pub use version::{Lww, Policy, Resolve, Stored, Version, Versioned};
