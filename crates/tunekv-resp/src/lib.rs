//! tunekv-resp: the Redis protocol front end (DESIGN §9).
//!
//! [`parse`] turns bytes into requests (bounded, iterative and incremental: a request is a flat
//! array of bulk strings or an inline line, never a nested structure, and a connection's parser
//! resumes where the last read stopped), [`reply`] encodes answers in RESP2 or RESP3, `cmd`
//! maps Redis commands onto [`tunekv_node::Node`] (one `CommandSpec` per command, in a file per
//! command group), [`conn`] holds a connection's settings, and [`server`] runs the listener
//! (a cap on connections, on one request's bytes and on the bytes unfinished requests of all
//! connections hold). Levels, sessions and receipts are the node's; this crate only translates.

mod cmd;
pub mod conn;
pub mod glob;
pub mod parse;
pub mod push;
pub mod reply;
pub mod server;

pub use cmd::{execute, execute_all, KEYS_MAX, NUMBERED_DBS};
pub use server::{serve, RespOptions};
