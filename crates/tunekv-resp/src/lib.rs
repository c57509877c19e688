//! tunekv-resp: the Redis protocol front end (DESIGN §9).
//!
//! [`parse`] turns bytes into requests (bounded, iterative and incremental: a request is a flat
//! array of bulk strings or an inline line, never a nested structure, and a connection's parser
//! resumes where the last read stopped), [`reply`] encodes answers in RESP2 or RESP3,
//! [`commands`] maps Redis commands onto [`tunekv_node::Node`], and [`server`] runs the listener
//! (a cap on connections, on one request's bytes and on the bytes unfinished requests of all
//! connections hold). Levels, sessions and receipts are the node's; this crate only translates.

pub mod commands;
pub mod glob;
pub mod parse;
pub mod reply;
pub mod server;

pub use server::{serve, RespOptions};
