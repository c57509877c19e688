//! The change feed of a leaderless keyspace (issue 18). There is no log: each node lists the
//! versions its replica stores (a write it coordinated or received, a hint delivered, a repair)
//! in a bounded history, numbered by a per-node sequence. A watch polls every node for what its
//! replica stored after the last sequence it saw and merges the lists, keeping per key only
//! versions above the last one it delivered: the same version stored on three replicas is
//! delivered once, and an older version stored after a newer one is not delivered at all.
//!
//! The ordering is weaker than an ordered keyspace's: per key, delivered versions increase;
//! across keys there is no order. Progress is per node ("every version node N stored up to
//! sequence s was considered"), and the cursor holds each node's (incarnation, sequence). A node
//! that restarted lost its history: a cursor naming its old incarnation is `cursor_compacted`.
//! A node unreachable when the watch begins is followed from when it is first reached; versions
//! it alone stored before then are not listed.
//! Last-writer-wins keyspaces only: a counter, set, map or siblings state has no one value to
//! list.

use super::leaderless::lock;
use super::*;
use crate::rpc::{DynamoRequest, DynamoResponse};
use std::collections::VecDeque;

/// One version a node's replica stored.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct StoredChange {
    pub seq: u64,
    pub key: Vec<u8>,
    /// (HLC stamp, coordinating node).
    pub version: (u64, u64),
    /// `None`: a tombstone (deleted).
    pub value: Option<Vec<u8>>,
}

fn cost(c: &StoredChange) -> usize {
    c.key.len() + c.value.as_ref().map_or(0, Vec::len) + 64
}

/// Entries one poll answers at most.
const POLL_ENTRIES_MAX: usize = 1024;
/// How long a poll waits for something new before answering empty.
pub(super) const POLL_WAIT: Duration = Duration::from_millis(500);

#[derive(Default)]
struct Log {
    entries: VecDeque<StoredChange>,
    bytes: usize,
    /// Every entry above this sequence is kept.
    from: u64,
    last: u64,
}

/// One leaderless keyspace's history on this node.
pub(super) struct StoredFeed {
    log: Mutex<Log>,
    bytes_max: usize,
    last: tokio::sync::watch::Sender<u64>,
}

impl StoredFeed {
    fn new(bytes_max: usize) -> StoredFeed {
        StoredFeed {
            log: Mutex::new(Log::default()),
            bytes_max,
            last: tokio::sync::watch::channel(0).0,
        }
    }

    /// Lists a version the replica now holds of `key`.
    pub(super) fn stored(&self, key: &[u8], v: &tunekv_dynamo::Versioned) {
        let value = match &v.stored {
            tunekv_dynamo::Stored::Value(b) => Some(b.clone()),
            tunekv_dynamo::Stored::Expiring { value, .. } => Some(value.clone()),
            tunekv_dynamo::Stored::Tombstone => None,
            _ => return,
        };
        let last = {
            let mut log = lock(&self.log);
            log.last += 1;
            let change = StoredChange {
                seq: log.last,
                key: key.to_vec(),
                version: (v.version.hlc, v.version.node),
                value,
            };
            if self.bytes_max == 0 {
                log.from = log.last;
            } else {
                log.bytes += cost(&change);
                log.entries.push_back(change);
                while log.bytes > self.bytes_max {
                    let Some(old) = log.entries.pop_front() else {
                        break;
                    };
                    log.bytes -= cost(&old);
                    log.from = old.seq;
                }
            }
            log.last
        };
        self.last.send_replace(last);
    }

    /// Entries after `after` (up to [`POLL_ENTRIES_MAX`]), the sequence they reach, and the
    /// oldest sequence a poll may name. Waits up to `wait` for one when there is none.
    /// `after: None`: nothing, and where the history ends now (a watch starting now).
    async fn since(&self, after: Option<u64>, wait: Duration) -> (Vec<StoredChange>, u64, u64) {
        let Some(after) = after else {
            let log = lock(&self.log);
            return (Vec::new(), log.last, log.from);
        };
        let mut rx = self.last.subscribe();
        if *rx.borrow_and_update() <= after {
            let _ = tokio::time::timeout(wait, rx.changed()).await;
        }
        let log = lock(&self.log);
        if after < log.from {
            return (Vec::new(), after, log.from);
        }
        let start = log.entries.partition_point(|c| c.seq <= after);
        let entries: Vec<StoredChange> = log
            .entries
            .range(start..)
            .take(POLL_ENTRIES_MAX)
            .cloned()
            .collect();
        let upto = entries.last().map_or(log.last.max(after), |c| c.seq);
        (entries, upto, log.from)
    }
}

impl Node {
    /// The history of leaderless keyspace `ks` on this node (made on first use).
    pub(super) fn stored_feed(&self, ks: u64) -> Arc<StoredFeed> {
        lock(&self.dynamo.feeds)
            .entry(ks)
            .or_insert_with(|| Arc::new(StoredFeed::new(self.config.watch_history_bytes)))
            .clone()
    }

    /// A poll of this node's history of `ks` (the replica side of [`DynamoRequest::Changes`]).
    pub(super) async fn changes_here(
        &self,
        ks: &KeyspaceInfo,
        after: Option<u64>,
        wait: Duration,
    ) -> DynamoResponse {
        let (entries, upto, from) = self.stored_feed(ks.id).since(after, wait).await;
        DynamoResponse::Changes {
            incarnation: self.incarnation,
            entries,
            upto,
            from,
        }
    }

    /// One poll of `node`'s history of `ks`.
    pub(super) async fn poll_changes(
        self: &Arc<Self>,
        node: NodeId,
        ks: &KeyspaceInfo,
        after: Option<u64>,
    ) -> Result<(u64, Vec<StoredChange>, u64, u64), String> {
        let req = DynamoRequest::Changes {
            ks: ks.name.clone(),
            after,
            wait_ms: POLL_WAIT.as_millis() as u64,
        };
        match self
            .clone()
            .dynamo_call(node, req, POLL_WAIT + Duration::from_secs(2))
            .await
        {
            Ok(DynamoResponse::Changes {
                incarnation,
                entries,
                upto,
                from,
            }) => Ok((incarnation, entries, upto, from)),
            Ok(_) => Err("unexpected response kind".into()),
            Err((_, m)) => Err(m),
        }
    }
}
