//! tunekv-cache: the caching tier (DESIGN §5, docs/cache.md). A cache is one more copy with a
//! position: per shard it knows up to which index the store's change feed has been applied,
//! and a hit is served only when that position satisfies the read's level, judged by
//! `tunekv_core::judge` exactly like a replica. So `session` and `strong` reads can be
//! served from memory, and every answer says how stale it was.
//!
//! `config` (the cache's settings), `store` (entries bounded by bytes), `copy` (the position
//! rules: the feed's position per shard, fills racing the feed, freshness proofs, coalesced
//! read-index probes), `feed` (following the change feed), `upstream` (the cluster's nodes), `metrics` (`GET /metrics`),
//! `cache` (the read and write paths), `http` (the node's key API), `resp` (the Redis
//! protocol: GET, MGET, SET, DEL, RECEIPT, …), `server` (the process).

pub mod auth;
pub mod cache;
pub mod config;
pub mod copy;
pub mod feed;
pub mod http;
pub mod metrics;
pub mod node_api;
pub mod queue;
pub mod resp;
pub mod server;
pub mod store;
pub mod upstream;
pub mod warm;

pub use cache::{Answer, Cache, Served};
pub use config::{CacheConfig, KeyspaceCache, Strategy};
pub use copy::CacheBugs;
pub use server::run;
