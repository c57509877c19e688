//! What a connection carries between commands, and what all connections of a node share.

use crate::push::{Hub, Inbox, Tracking};
use std::collections::{HashSet, VecDeque};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tunekv_core::auth::Grants;
use tunekv_core::{Level, Position, Quorum, Receipt, Session, TunekvError};
use tunekv_node::{Node, ReadRequest, WriteRequest};

/// What all connections of a node share.
pub struct Shared {
    pub(crate) node: Arc<Node>,
    /// Pub/sub, keyspace notifications and client tracking.
    pub(crate) hub: Arc<Hub>,
    next_id: AtomicU64,
    pub(crate) connected: AtomicUsize,
    /// Refused commands and logins (`ACL LOG`).
    pub(crate) acl_log: crate::cmd::acl::AclLog,
}

impl Shared {
    pub fn new(node: Arc<Node>) -> Shared {
        Shared {
            hub: Hub::new(&node),
            node,
            next_id: AtomicU64::new(1),
            connected: AtomicUsize::new(0),
            acl_log: Default::default(),
        }
    }

    pub fn connect(&self, peer: String) -> Conn {
        self.connected.fetch_add(1, Ordering::Relaxed);
        self.node.metrics().resp.opened();
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
            read_version: None,
            written: Vec::new(),
            multi: None,
            watched: Vec::new(),
            inbox: None,
            channels: HashSet::new(),
            patterns: HashSet::new(),
            tracking: None,
            caching: None,
            own_writes: VecDeque::new(),
            login: None,
            limiter: tunekv_node::quota(self.node.config().connection_requests_per_s)
                .map(governor::RateLimiter::direct),
            watch_slot: None,
        }
    }

    /// Connection `id` closed: its subscriptions and tracking go.
    pub fn disconnect(&self, id: u64) {
        self.hub.forget(id);
        self.connected.fetch_sub(1, Ordering::Relaxed);
        self.node.metrics().resp.closed();
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
    /// The version of the key the last one-key read of an ordered keyspace read (0: absent).
    pub(crate) read_version: Option<u64>,
    /// Where the last write command committed, one position per entry (`POSITION`).
    pub(crate) written: Vec<Position>,
    /// MULTI: the commands queued for EXEC (`None`: not in a transaction).
    pub(crate) multi: Option<crate::cmd::transactions::Queue>,
    /// WATCH: each watched key and the version it had when watched (0: absent).
    pub(crate) watched: Vec<(Vec<u8>, u64)>,
    /// Messages pushed to this connection (made on the first SUBSCRIBE or CLIENT TRACKING).
    pub(crate) inbox: Option<Inbox>,
    /// SUBSCRIBE and PSUBSCRIBE.
    pub(crate) channels: HashSet<Vec<u8>>,
    pub(crate) patterns: HashSet<Vec<u8>>,
    /// CLIENT TRACKING on.
    pub(crate) tracking: Option<Tracking>,
    /// CLIENT CACHING yes/no, for the next command.
    pub(crate) caching: Option<bool>,
    /// Where this connection's recent writes committed (keyspace, shard, index), for NOLOOP.
    pub(crate) own_writes: VecDeque<(Arc<str>, u32, u64)>,
    /// Who this connection authenticated as (`AUTH`).
    pub(crate) login: Option<Login>,
    /// This connection's request rate (`connection_requests_per_s`); None: no limit.
    pub(crate) limiter: Option<governor::DefaultDirectRateLimiter>,
    /// The place the inbox holds under `watches_per_user_max`.
    pub(crate) watch_slot: Option<tunekv_node::WatchSlot>,
}

/// Who a connection logged in as: the user, the user's epoch then, and when the token it
/// logged in with expires (None: a password, valid until revoked).
#[derive(Clone, Debug)]
pub(crate) struct Login {
    pub user: String,
    pub epoch: u64,
    pub expires_ms: Option<u64>,
}

impl Login {
    /// The user's permissions now; `unauthenticated` once the token expired, the user was
    /// deleted or its epoch moved (revocation). Commands and pushed key names both ask this.
    pub(crate) fn grants(&self, node: &Node) -> Result<Arc<Grants>, TunekvError> {
        if self.expires_ms.is_some_and(|e| e <= node.wall_ms()) {
            return Err(TunekvError::new(
                tunekv_core::Code::Unauthenticated,
                "the token this connection logged in with expired",
            ));
        }
        node.session_grants(&self.user, self.epoch)
    }
}

impl Conn {
    /// The inbox, made on first use. It is a change feed like `/v1/watch`: with auth on it
    /// takes one of the user's `watches_per_user_max` places until the connection closes.
    pub(crate) fn inbox(&mut self, shared: &Shared) -> Result<(), crate::reply::Reply> {
        if self.inbox.is_none() {
            if shared.node.auth_enabled() {
                let grants = crate::cmd::access::grants(shared, self)?;
                self.watch_slot = shared.node.watch_slot(&grants).map_err(crate::cmd::typed)?;
            }
            let reader = self.login.clone().filter(|_| shared.node.auth_enabled());
            self.inbox = Some(shared.hub.register(self.id, self.resp3, reader));
        }
        Ok(())
    }

    /// Subscriptions (channels and patterns): in RESP2 a connection with any takes only
    /// subscription commands.
    pub(crate) fn subscriptions(&self) -> usize {
        self.channels.len() + self.patterns.len()
    }

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
