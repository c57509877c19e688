//! What a connection carries between commands, and what all connections of a node share.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tunekv_core::{Level, Position, Quorum, Receipt, Session};
use tunekv_node::{Node, ReadRequest, WriteRequest};

/// What all connections of a node share.
pub struct Shared {
    pub(crate) node: Arc<Node>,
    next_id: AtomicU64,
    pub(crate) connected: AtomicUsize,
}

impl Shared {
    pub fn new(node: Arc<Node>) -> Shared {
        Shared {
            node,
            next_id: AtomicU64::new(1),
            connected: AtomicUsize::new(0),
        }
    }

    pub fn connect(&self, peer: String) -> Conn {
        self.connected.fetch_add(1, Ordering::Relaxed);
        Conn {
            id: self.next_id.fetch_add(1, Ordering::Relaxed),
            peer,
            resp3: false,
            quit: false,
            name: None,
            keyspace: "db0".into(),
            keyspace_ready: false,
            level: None,
            r: None,
            w: None,
            wait: None,
            session: Session::new(),
            receipts: Vec::new(),
            written: Vec::new(),
            multi: None,
            watched: Vec::new(),
        }
    }

    pub fn disconnect(&self) {
        self.connected.fetch_sub(1, Ordering::Relaxed);
    }
}

/// One client connection's settings.
pub struct Conn {
    pub id: u64,
    pub(crate) peer: String,
    /// Replies in RESP3 (after `HELLO 3`).
    pub resp3: bool,
    /// Close after this reply (`QUIT`).
    pub quit: bool,
    pub(crate) name: Option<String>,
    pub(crate) keyspace: String,
    pub(crate) keyspace_ready: bool,
    pub(crate) level: Option<Level>,
    /// Read and write quorums on leaderless keyspaces (`QUORUM r w`); `None`: the defaults.
    pub(crate) r: Option<Quorum>,
    pub(crate) w: Option<Quorum>,
    pub(crate) wait: Option<Duration>,
    pub(crate) session: Session,
    pub(crate) receipts: Vec<Receipt>,
    /// Where the last write command committed, one position per entry (`POSITION`).
    pub(crate) written: Vec<Position>,
    /// MULTI: the commands queued for EXEC (`None`: not in a transaction).
    pub(crate) multi: Option<crate::cmd::transactions::Queue>,
    /// WATCH: each watched key and the version it had when watched (0: absent).
    pub(crate) watched: Vec<(Vec<u8>, u64)>,
}

impl Conn {
    /// A read in this connection's keyspace, at its level and wait budget, in its session.
    pub(crate) fn read_req(&mut self) -> ReadRequest<'_> {
        ReadRequest {
            keyspace: &self.keyspace,
            level: self.level,
            r: self.r,
            wait: self.wait,
            session: &mut self.session,
        }
    }

    /// A write in this connection's keyspace, with its wait budget, in its session.
    pub(crate) fn write_req(&mut self) -> WriteRequest<'_> {
        WriteRequest {
            keyspace: &self.keyspace,
            w: self.w,
            wait: self.wait,
            session: &mut self.session,
        }
    }
}
