//! tunekv-core: the product's own logic, free of I/O and async.
//!
//! Everything a consistency level means lives here: the [`Position`] of a copy, the
//! [`Requirement`] a read carries, and [`judge`], the one function that decides whether a copy
//! may serve a read. Front ends (HTTP, RESP) and copies (leader, follower, later caches) all go
//! through it. This crate knows nothing about HTTP, Raft, disks or sockets.

pub mod auth;
pub mod backup;
pub mod clock_bound;
pub mod clock_guard;
pub mod code;
#[doc(hidden)]
pub mod fuzzing;
pub mod hlc;
pub mod ids;
pub mod keyspace;
pub mod level;
pub mod limits;
pub mod pbs;
pub mod placement;
pub mod position;
pub mod quorum;
pub mod receipt;
pub mod requirement;
pub mod session;
pub mod slo;

pub use clock_bound::PeerClock;
pub use clock_guard::{ClockGuard, ClockHealth};
pub use code::{Code, TunekvError};
pub use hlc::Hlc;
pub use ids::{GroupId, LogIndex, NodeId, ShardId};
pub use keyspace::{KeyspaceSpec, Mode};
pub use level::{Level, Promise};
pub use position::{CopyState, Position, Watermark};
pub use quorum::{Quorum, QuorumKind};
pub use receipt::{QuorumReceipt, Receipt, Staleness};
pub use requirement::{judge, Requirement, Verdict};
pub use session::{Mark, Session, SessionKey};
pub use slo::{SloSpec, SloState, SloWindow};
