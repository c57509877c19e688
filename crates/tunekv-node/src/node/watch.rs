//! The change feed of an ordered keyspace (issue 18): every change this node applies to the
//! keyspace's shards, per shard in commit order, from now on, with progress marks.
//!
//! A watch can resume from a cursor (the sealed per-shard progress of an earlier watch): the
//! changes after it come from the shard's history on this node (the last
//! `watch_history_bytes` of changes), then the live stream takes over; a cursor older than the
//! history is refused with `cursor_compacted`, never answered with a gap.
//!
//! [`Node::watch`] subscribes to each shard's applied batches first, then reads how far each
//! shard has applied: batches at or below that index count as before the watch began, the rest
//! are delivered. A progress event "every change of shard s up to index i has been delivered"
//! follows each batch, so it is never ahead of the changes. A watcher that falls more than
//! `CHANGE_BATCHES_MAX` batches behind on a shard is cut off with an error (its memory stays
//! bounded), as is one whose node replaced a shard's state with a snapshot (the changes in
//! between are not listed).
//!
//! A shard this node holds no replica of (after replicas moved) is followed through a replica:
//! a poller asks one for the shard's changes after the watch's progress
//! ([`Request::ShardChanges`], answered from its history, waiting up to a second for more) and
//! hands them on as batches; a history that no longer reaches back ends the watch, as here.

use super::*;
use tokio::sync::broadcast;
use tunekv_raft::ChangeBatch;

/// One event of a watch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum WatchEvent {
    /// A key of the watched prefix changed: its new value, or `None` when deleted.
    Change {
        position: Position,
        key: Vec<u8>,
        value: Option<Vec<u8>>,
        /// What happened (Redis's event name: `set`, `del`, `expired`, …).
        kind: tunekv_raft::ChangeKind,
        /// Leaderless keyspaces: the version stored (HLC stamp, node); the position is then
        /// the key's ring partition, index 0, the version's time.
        version: Option<(u64, u64)>,
        /// When the new value expires (Unix ms), if it does (ordered keyspaces).
        expires_ms: Option<u64>,
    },
    /// Leaderless keyspaces: every version `node` stored up to its sequence `seq` has been
    /// considered (delivered, or left out as a duplicate or an older version).
    NodeProgress { node: NodeId, seq: u64 },
    /// Every change of `shard` up to `index` has been delivered.
    Progress { shard: ShardId, index: u64 },
    /// The watch ends: it fell behind, or the node lost the shard's history.
    End(TunekvError),
}

/// A running watch: see [`Node::watch`].
pub struct Watch {
    prefix: Vec<u8>,
    keyspace_id: u64,
    key: tunekv_core::session::SessionKey,
    shards: Vec<ShardFeed>,
    /// Events of the last batch not handed out yet.
    pending: std::collections::VecDeque<WatchEvent>,
    ended: bool,
    /// The injected bug `progress-early`.
    progress_early: bool,
    /// A leaderless keyspace's feed (then `shards` is empty).
    leaderless: Option<Leaderless>,
}

/// The merged histories of a leaderless keyspace's nodes (see `stored_feed`).
struct Leaderless {
    rx: tokio::sync::mpsc::Receiver<Polled>,
    /// Per node: (incarnation, the sequence handed out as considered); `None` until reached.
    nodes: BTreeMap<NodeId, Option<(u64, u64)>>,
    /// The last version delivered of each key (bounded: forgotten whole when full, after which
    /// a version may be delivered twice).
    reported: HashMap<Vec<u8>, (u64, u64)>,
    ring: tunekv_dynamo::ring::Ring,
    pollers: Vec<tokio::task::AbortHandle>,
    /// The injected bug `feed-dupes`.
    dupes: bool,
}

impl Drop for Leaderless {
    fn drop(&mut self) {
        for p in &self.pollers {
            p.abort();
        }
    }
}

/// What a poller found on one node.
struct Polled {
    node: NodeId,
    incarnation: u64,
    entries: Vec<super::StoredChange>,
    upto: u64,
    /// The node no longer keeps the history after the watch's place in it (only after this
    /// sequence): the watch ends with `cursor_compacted`.
    compacted: Option<u64>,
}

/// Keys whose last delivered version a leaderless watch remembers.
const REPORTED_KEYS_MAX: usize = 100_000;

/// Where a watched shard's batches come from.
enum Source {
    /// This node's replica.
    Local(broadcast::Receiver<Arc<ChangeBatch>>),
    /// A poller asking the shard's replicas (this node holds none); an error ends the watch.
    Remote {
        rx: tokio::sync::mpsc::Receiver<Result<Arc<ChangeBatch>, TunekvError>>,
        poller: tokio::task::AbortHandle,
    },
}

impl Drop for Source {
    fn drop(&mut self) {
        if let Source::Remote { poller, .. } = self {
            poller.abort();
        }
    }
}

/// Why a shard's source gave no batch.
enum Missed {
    Lagged(u64),
    Closed,
    Ended(TunekvError),
}

impl Source {
    async fn recv(&mut self) -> Result<Arc<ChangeBatch>, Missed> {
        match self {
            Source::Local(rx) => rx.recv().await.map_err(|e| match e {
                broadcast::error::RecvError::Lagged(n) => Missed::Lagged(n),
                broadcast::error::RecvError::Closed => Missed::Closed,
            }),
            Source::Remote { rx, .. } => match rx.recv().await {
                Some(Ok(batch)) => Ok(batch),
                Some(Err(e)) => Err(Missed::Ended(e)),
                None => Err(Missed::Closed),
            },
        }
    }
}

/// Changes one forwarded answer carries at most (whole entries: an entry's changes are never
/// split).
const FORWARDED_CHANGES_MAX: usize = 4096;
/// How long a replica holds a poll for a shard's changes open.
const CHANGES_POLL_WAIT: Duration = Duration::from_secs(1);

struct ShardFeed {
    shard: ShardId,
    rx: Source,
    /// Changes at or below this were applied before the watch began, or are queued.
    progress: u64,
    /// The last progress mark handed out: what [`Watch::progress`] and the cursor report (the
    /// queue may still hold changes below `progress`).
    delivered: u64,
}

fn change_event(shard: ShardId, c: tunekv_raft::Change) -> WatchEvent {
    WatchEvent::Change {
        position: Position {
            shard,
            index: LogIndex(c.index),
            commit_ms: Hlc::millis(c.commit_ts),
        },
        key: c.key,
        value: c.value,
        kind: c.kind,
        version: None,
        expires_ms: c.expires_ms,
    }
}

impl Watch {
    /// Each shard's progress as handed out so far (what a periodic progress event repeats
    /// while idle): every change up to it has been handed out.
    pub fn progress(&self) -> Vec<(ShardId, u64)> {
        self.shards.iter().map(|s| (s.shard, s.delivered)).collect()
    }

    /// The cursor to resume from: every change up to each shard's progress was delivered.
    /// (Changes delivered after the last progress event are delivered again by a resumed
    /// watch; a consumer treats a change as final once a progress event covers it.)
    /// The watched keyspace's id.
    pub fn keyspace_id(&self) -> u64 {
        self.keyspace_id
    }

    pub fn cursor(&self) -> String {
        match &self.leaderless {
            None => {
                let shards: Vec<(u32, u64)> =
                    self.progress().iter().map(|(s, i)| (s.0, *i)).collect();
                seal_cursor(&self.key, CURSOR_DOMAIN, self.keyspace_id, &shards)
            }
            Some(l) => {
                let nodes: Vec<(u64, u64, u64)> = l
                    .nodes
                    .iter()
                    .filter_map(|(n, at)| at.map(|(inc, seq)| (n.0, inc, seq)))
                    .collect();
                seal_cursor(
                    &self.key,
                    CURSOR_LEADERLESS_DOMAIN,
                    self.keyspace_id,
                    &nodes,
                )
            }
        }
    }

    /// Leaderless keyspaces: each node's sequence handed out so far (what a periodic progress
    /// event repeats while idle).
    pub fn node_progress(&self) -> Vec<(NodeId, u64)> {
        self.leaderless.as_ref().map_or_else(Vec::new, |l| {
            l.nodes
                .iter()
                .filter_map(|(n, at)| at.map(|(_, seq)| (*n, seq)))
                .collect()
        })
    }

    /// The next event of a leaderless keyspace's watch.
    async fn next_leaderless(&mut self) -> Option<WatchEvent> {
        loop {
            if let Some(e) = self.pending.pop_front() {
                if let (WatchEvent::NodeProgress { node, seq }, Some(l)) =
                    (&e, &mut self.leaderless)
                {
                    if let Some(Some(at)) = l.nodes.get_mut(node) {
                        at.1 = *seq;
                    }
                }
                return Some(e);
            }
            if self.ended {
                return None;
            }
            let l = self.leaderless.as_mut()?;
            let polled = l.rx.recv().await?;
            if let Some(oldest) = polled.compacted {
                let e = WatchRefused::CompactedNode {
                    node: polled.node,
                    oldest,
                }
                .error();
                self.ended = true;
                return Some(WatchEvent::End(e));
            }
            let slot = l.nodes.entry(polled.node).or_insert(None);
            match slot {
                // A restarted node's history starts over (see `stored_feed`).
                Some((inc, _)) if *inc != polled.incarnation => {
                    *slot = Some((polled.incarnation, 0));
                }
                None => *slot = Some((polled.incarnation, 0)),
                _ => {}
            }
            for c in polled.entries {
                if !c.key.starts_with(&self.prefix) {
                    continue;
                }
                if !l.dupes && l.reported.get(&c.key).is_some_and(|v| *v >= c.version) {
                    continue;
                }
                if l.reported.len() >= REPORTED_KEYS_MAX {
                    l.reported.clear();
                }
                l.reported.insert(c.key.clone(), c.version);
                let position = Position {
                    shard: ShardId(l.ring.partition_of(&c.key)),
                    index: LogIndex(0),
                    commit_ms: Hlc::millis(c.version.0),
                };
                self.pending.push_back(WatchEvent::Change {
                    position,
                    kind: if c.value.is_some() {
                        tunekv_raft::ChangeKind::Set
                    } else {
                        tunekv_raft::ChangeKind::Del
                    },
                    key: c.key,
                    value: c.value,
                    version: Some(c.version),
                    expires_ms: None,
                });
            }
            self.pending.push_back(WatchEvent::NodeProgress {
                node: polled.node,
                seq: polled.upto,
            });
        }
    }

    /// The next event; `None` once the watch has ended.
    pub async fn next(&mut self) -> Option<WatchEvent> {
        if self.leaderless.is_some() {
            return self.next_leaderless().await;
        }
        loop {
            if let Some(e) = self.pending.pop_front() {
                match &e {
                    WatchEvent::End(_) => self.ended = true,
                    WatchEvent::Progress { shard, index } => {
                        if let Some(f) = self.shards.iter_mut().find(|f| f.shard == *shard) {
                            f.delivered = f.delivered.max(*index);
                        }
                    }
                    WatchEvent::Change { .. } | WatchEvent::NodeProgress { .. } => {}
                }
                return Some(e);
            }
            if self.ended || self.shards.is_empty() {
                return None;
            }
            let (result, i) = {
                let recvs = self.shards.iter_mut().map(|s| Box::pin(s.rx.recv()));
                let (result, i, _) = futures::future::select_all(recvs).await;
                (result, i)
            };
            let feed = &mut self.shards[i];
            match result {
                Ok(batch) if batch.reset => {
                    self.pending.push_back(WatchEvent::End(err(
                        Code::Unavailable,
                        format!(
                            "shard {} on this node was replaced by a snapshot at index {} (or \
                             applied changes it kept no record of, with watch_history_bytes = \
                             0): resume from the last cursor, or read the keys again and watch \
                             anew",
                            feed.shard.0, batch.applied
                        ),
                    )));
                }
                Ok(batch) => {
                    if batch.applied <= feed.progress {
                        continue;
                    }
                    let mark = WatchEvent::Progress {
                        shard: feed.shard,
                        index: batch.applied,
                    };
                    if self.progress_early {
                        self.pending.push_back(mark.clone());
                    }
                    for c in batch.changes.iter().filter(|c| c.index > feed.progress) {
                        if c.key.starts_with(&self.prefix) {
                            self.pending.push_back(change_event(feed.shard, c.clone()));
                        }
                    }
                    feed.progress = batch.applied;
                    if !self.progress_early {
                        self.pending.push_back(mark);
                    }
                }
                Err(Missed::Ended(e)) => self.pending.push_back(WatchEvent::End(e)),
                Err(Missed::Lagged(n)) => {
                    self.pending.push_back(WatchEvent::End(err(
                        Code::Unavailable,
                        format!(
                            "this watcher fell {n} batches behind shard {} (it reads slower than \
                             the shard commits); every change up to index {} was delivered: \
                             read the keys again, then watch anew",
                            feed.shard.0, feed.progress
                        ),
                    )));
                }
                Err(Missed::Closed) => {
                    self.pending.push_back(WatchEvent::End(err(
                        Code::Unavailable,
                        format!("shard {} stopped on this node", feed.shard.0),
                    )));
                }
            }
        }
    }
}

/// Keeps a cursor from passing for a session token or a causal context.
pub(crate) const CURSOR_DOMAIN: &[u8] = b"tunekv-cursor-v1";
/// A leaderless keyspace's cursor: (keyspace id, [(node, incarnation, sequence)]).
pub(crate) const CURSOR_LEADERLESS_DOMAIN: &[u8] = b"tunekv-cursor-leaderless-v1";
/// The longest cursor text accepted (a keyspace has at most 1024 shards).
pub const CURSOR_CHARS_MAX: usize = 64 * 1024;

/// A cursor: `(keyspace_id, body)` sealed for `domain` (the inverse of `Node::open_sealed`).
pub(crate) fn seal_cursor<T: Serialize>(
    key: &tunekv_core::session::SessionKey,
    domain: &[u8],
    keyspace_id: u64,
    body: &T,
) -> String {
    // Serializing integers into a Vec cannot fail.
    let bytes = postcard::to_stdvec(&(keyspace_id, body)).unwrap_or_default();
    key.seal(domain, &bytes)
}

/// Where a watch starts.
#[derive(Clone, Copy, Debug)]
pub enum WatchFrom<'a> {
    /// With the next change.
    Now,
    /// After the changes an earlier watch's cursor covers.
    Cursor(&'a str),
    /// With every change this node still holds from the keyspace's beginning (a keyspace
    /// created after the watcher began looking for it); from now when the node's history no
    /// longer reaches back that far.
    Start,
}

/// A cursor that does not open.
fn cursor_invalid(why: String) -> TunekvError {
    err(
        Code::CursorInvalid,
        format!("invalid watch cursor: {why}; send one a watch's progress event gave"),
    )
}

/// The body of `cursor`, a cursor sealed with `key` for `domain` of a watch of keyspace
/// `ks_id` (named `ks_name`); `cursor_invalid` when it is not one.
pub(crate) fn open_cursor_body<T: serde::de::DeserializeOwned>(
    key: &tunekv_core::session::SessionKey,
    ks_id: u64,
    ks_name: &str,
    domain: &[u8],
    cursor: &str,
) -> Result<T, TunekvError> {
    let bytes = key
        .open(domain, cursor, CURSOR_CHARS_MAX)
        .map_err(cursor_invalid)?;
    let (id, body): (u64, T) =
        postcard::from_bytes(&bytes).map_err(|_| cursor_invalid("undecodable".into()))?;
    if id != ks_id {
        return Err(cursor_invalid(format!(
            "it was issued for another keyspace than {ks_name:?}"
        )));
    }
    Ok(body)
}

/// Why a watch did not start.
#[derive(Debug)]
pub enum WatchRefused {
    Error(TunekvError),
    /// The cursor is older than this node's history of `shard`: only changes after `oldest`
    /// are kept. Read the keys again, then watch from now.
    Compacted {
        shard: ShardId,
        oldest: u64,
    },
    /// Leaderless keyspaces: the cursor is older than node `node`'s history of the versions
    /// it stored (only those after sequence `oldest` are kept).
    CompactedNode {
        node: NodeId,
        oldest: u64,
    },
}

impl WatchRefused {
    pub fn error(&self) -> TunekvError {
        match self {
            WatchRefused::Error(e) => e.clone(),
            WatchRefused::Compacted { shard, oldest } => err(
                Code::CursorCompacted,
                format!(
                    "the cursor is older than the changes this node keeps for shard {} (only                      those after index {oldest}); read the keys again, then watch from now",
                    shard.0
                ),
            ),
            WatchRefused::CompactedNode { node, oldest } => err(
                Code::CursorCompacted,
                format!(
                    "the cursor is older than the versions node {node} keeps of this keyspace \
                     (only those after its sequence {oldest}); read the keys again, then watch \
                     from now"
                ),
            ),
        }
    }
}

impl From<TunekvError> for WatchRefused {
    fn from(e: TunekvError) -> WatchRefused {
        WatchRefused::Error(e)
    }
}

impl Node {
    /// The body of `cursor`, a cursor sealed for `domain` of a watch of keyspace `ks`.
    fn open_sealed<T: serde::de::DeserializeOwned>(
        &self,
        ks: &KeyspaceInfo,
        domain: &[u8],
        cursor: &str,
    ) -> Result<T, TunekvError> {
        open_cursor_body(self.session_key(), ks.id, &ks.name, domain, cursor)
    }

    /// The per-shard positions in `cursor`, a cursor of a watch of keyspace `ks`.
    fn open_cursor(&self, ks: &KeyspaceInfo, cursor: &str) -> Result<Vec<u64>, TunekvError> {
        let shards: Vec<(u32, u64)> = self.open_sealed(ks, CURSOR_DOMAIN, cursor)?;
        let mut at = vec![None; ks.spec.shards as usize];
        for (s, i) in shards {
            match at.get_mut(s as usize) {
                Some(slot) if slot.is_none() => *slot = Some(i),
                _ => {
                    return Err(cursor_invalid(format!(
                        "shard {s} is out of range or repeated"
                    )))
                }
            }
        }
        at.into_iter()
            .enumerate()
            .map(|(s, i)| {
                i.ok_or_else(|| cursor_invalid(format!("it has no position for shard {s}")))
            })
            .collect()
    }

    /// Watches the keys of `keyspace` that start with `prefix`: from now on, or after `from`,
    /// the cursor of an earlier watch. An ordered keyspace is watched on every shard (each must
    /// have a replica on this node); a last-writer-wins leaderless one through every node's
    /// stored versions (`watch_leaderless`).
    pub async fn watch(
        &self,
        keyspace: &str,
        prefix: Vec<u8>,
        from: WatchFrom<'_>,
    ) -> Result<Watch, WatchRefused> {
        let deadline = Instant::now() + Duration::from_millis(self.config.read_wait_ms_default);
        let ks = self.keyspace(keyspace, deadline).await?;
        if ks.spec.mode != Mode::Ordered {
            return self.watch_leaderless(&ks, prefix, from).await;
        }
        let after = match from {
            WatchFrom::Now => None,
            WatchFrom::Cursor(c) => Some(self.open_cursor(&ks, c)?),
            WatchFrom::Start => Some(vec![0; ks.spec.shards as usize]),
        };
        let mut shards = Vec::with_capacity(ks.spec.shards as usize);
        let mut pending = std::collections::VecDeque::new();
        for s in 0..ks.spec.shards {
            let shard = ShardId(s);
            let g = match self.hosted_shard(&ks, shard).await {
                Ok(g) => g,
                Err(e) if e.code == Code::NotReplica => {
                    let after = after.as_ref().map(|a| a[s as usize]);
                    let (feed, first) = self
                        .watch_remote(&ks, shard, after, matches!(from, WatchFrom::Start))
                        .await?;
                    pending.extend(
                        first
                            .into_iter()
                            .filter(|c| c.key.starts_with(&prefix))
                            .map(|c| change_event(shard, c)),
                    );
                    pending.push_back(WatchEvent::Progress {
                        shard,
                        index: feed.progress,
                    });
                    shards.push(feed);
                    continue;
                }
                Err(e) => return Err(e.into()),
            };
            // Subscribe first, then read the applied index from a view of the state (and the
            // history up to it): a batch written before the view is in it, one written after
            // arrives on `rx` (the applier asks for receivers after its write).
            let rx = g.data.changes();
            // `delivered`: what the watch may report as sent before its first mark.
            let (progress, delivered) = match after.as_ref().map(|a| a[s as usize]) {
                None => {
                    let applied = g
                        .data
                        .read()
                        .map_err(|e| WatchRefused::Error(internal(e)))?
                        .applied()
                        .index;
                    (applied, applied)
                }
                Some(after) => {
                    let since = |after| {
                        g.data
                            .changes_since(after)
                            .map_err(|e| WatchRefused::Error(internal(e)))
                    };
                    let (since, delivered) = match (since(after)?, from) {
                        (Err(_), WatchFrom::Start) => (since(u64::MAX)?, None),
                        (since, _) => (since, Some(after)),
                    };
                    let (changes, applied) =
                        since.map_err(|oldest| WatchRefused::Compacted { shard, oldest })?;
                    pending.extend(
                        changes
                            .into_iter()
                            .filter(|c| c.key.starts_with(&prefix))
                            .map(|c| change_event(shard, c)),
                    );
                    // A cursor from a node further ahead: its changes were delivered.
                    let progress = applied.max(after);
                    (progress, delivered.unwrap_or(progress))
                }
            };
            pending.push_back(WatchEvent::Progress {
                shard,
                index: progress,
            });
            shards.push(ShardFeed {
                shard,
                rx: Source::Local(rx),
                progress,
                delivered,
            });
        }
        Ok(Watch {
            prefix,
            keyspace_id: ks.id,
            key: self.session_key().clone(),
            shards,
            pending,
            ended: false,
            progress_early: self.config.bugs.progress_early(),
            leaderless: None,
        })
    }

    /// A watched shard this node holds no replica of: the changes after `after` (none: from
    /// now; `start`: from the oldest the history keeps when it no longer reaches back), read
    /// from a replica, and a feed whose poller asks the replicas for the rest.
    async fn watch_remote(
        &self,
        ks: &KeyspaceInfo,
        shard: ShardId,
        after: Option<u64>,
        start: bool,
    ) -> Result<(ShardFeed, Vec<tunekv_raft::Change>), WatchRefused> {
        let first = self
            .shard_changes(ks, shard, after.unwrap_or(u64::MAX), Duration::ZERO)
            .await?;
        let (first, delivered) = match (first.compacted, after) {
            (None, _) => (first, after),
            (Some(_), Some(_)) if start => (
                self.shard_changes(ks, shard, u64::MAX, Duration::ZERO)
                    .await?,
                None,
            ),
            (Some(oldest), _) => return Err(WatchRefused::Compacted { shard, oldest }),
        };
        let progress = first.applied.max(after.unwrap_or(0));
        let me = self.me()?;
        let (tx, rx) = tokio::sync::mpsc::channel(tunekv_raft::CHANGE_BATCHES_MAX);
        let ks2 = ks.clone();
        let poller = tokio::spawn(async move {
            let mut at = progress;
            loop {
                let batch = match me.shard_changes(&ks2, shard, at, CHANGES_POLL_WAIT).await {
                    Ok(f) if f.compacted.is_some() => Err(err(
                        Code::Unavailable,
                        format!(
                            "the replicas of shard {} no longer keep its changes after index                              {at} (a snapshot replaced them): resume from the last cursor, or                              read the keys again and watch anew",
                            shard.0
                        ),
                    )),
                    Ok(f) if f.applied > at => {
                        at = f.applied;
                        Ok(Arc::new(ChangeBatch {
                            changes: f.changes,
                            applied: f.applied,
                            reset: false,
                        }))
                    }
                    Ok(_) => continue,
                    Err(e) => Err(e),
                };
                let ended = batch.is_err();
                if tx.send(batch).await.is_err() || ended {
                    return;
                }
            }
        })
        .abort_handle();
        let feed = ShardFeed {
            shard,
            rx: Source::Remote { rx, poller },
            progress,
            delivered: delivered.unwrap_or(progress),
        };
        Ok((feed, first.changes))
    }

    /// Asks the replicas of `shard` in turn for its changes after `after`, each holding the
    /// poll open up to `wait`.
    async fn shard_changes(
        &self,
        ks: &KeyspaceInfo,
        shard: ShardId,
        after: u64,
        wait: Duration,
    ) -> Result<crate::rpc::ForwardedChanges, TunekvError> {
        let gid = GroupId::for_shard(ks.id, shard);
        let mut last = format!("no replica of {gid} is known");
        for host in self.shard_placement(ks, shard).replicas {
            let req = Request::ShardChanges {
                ks: ks.name.clone(),
                shard: shard.0,
                after,
                wait_ms: u64::try_from(wait.as_millis()).unwrap_or(u64::MAX),
            };
            let timeout = wait + Duration::from_secs(2);
            match self.pool.call(NodeId(host), gid.0, req, timeout).await {
                Ok(Response::ShardChanges(f)) => return Ok(f),
                Ok(_) => last = format!("node {host} answered another kind"),
                Err(e) => last = format!("node {host}: {e}"),
            }
        }
        Err(err(
            Code::Unavailable,
            format!(
                "no replica of shard {} answers for the watch: {last}; resume from the last                  cursor",
                shard.0
            ),
        ))
    }

    /// Runs on a replica: shard `shard`'s changes after `after` for a watch on a node without
    /// one ([`Request::ShardChanges`]), waiting up to `wait_ms` (at most 2 s) for some.
    pub(super) async fn serve_shard_changes(
        &self,
        ks: &str,
        shard: u32,
        after: u64,
        wait_ms: u64,
    ) -> Result<crate::rpc::ForwardedChanges, RemoteError> {
        let remote = |e: TunekvError| RemoteError::new(e.code, e.message);
        let deadline = Instant::now() + Duration::from_millis(wait_ms.min(2_000));
        let info = self.keyspace(ks, deadline).await.map_err(remote)?;
        if info.spec.mode != Mode::Ordered || shard >= info.spec.shards {
            return Err(RemoteError::new(
                Code::BadRequest,
                format!("{ks:?} has no ordered shard {shard}"),
            ));
        }
        let g = self
            .hosted_shard(&info, ShardId(shard))
            .await
            .map_err(remote)?;
        let mut applied = g.data.subscribe();
        loop {
            let since = g
                .data
                .changes_since(after)
                .map_err(|e| remote(internal(e)))?;
            match since {
                Err(oldest) => {
                    return Ok(crate::rpc::ForwardedChanges {
                        changes: Vec::new(),
                        applied: 0,
                        compacted: Some(oldest),
                    })
                }
                Ok((mut changes, mut upto)) if upto > after || Instant::now() >= deadline => {
                    if changes.len() > FORWARDED_CHANGES_MAX {
                        // Whole entries only: up to the entry of the last change that fits.
                        upto = changes[FORWARDED_CHANGES_MAX - 1].index;
                        changes.retain(|c| c.index <= upto);
                    }
                    return Ok(crate::rpc::ForwardedChanges {
                        changes,
                        applied: upto,
                        compacted: None,
                    });
                }
                Ok(_) => {
                    if tokio::time::timeout_at(deadline, applied.changed())
                        .await
                        .is_ok_and(|r| r.is_err())
                    {
                        return Err(RemoteError::new(
                            Code::Unavailable,
                            format!("shard {shard} stopped on node {}", self.id),
                        ));
                    }
                }
            }
        }
    }

    /// [`Node::watch`] of a last-writer-wins leaderless keyspace: a poller per node, merged.
    async fn watch_leaderless(
        &self,
        ks: &KeyspaceInfo,
        prefix: Vec<u8>,
        from: WatchFrom<'_>,
    ) -> Result<Watch, WatchRefused> {
        let policy = tunekv_dynamo::version::Policy::named(ks.spec.conflict.as_deref());
        if ks.spec.mode != Mode::Leaderless || policy != Ok(tunekv_dynamo::version::Policy::Lww) {
            return Err(err(
                Code::ModeUnsupported,
                format!(
                    "watching keyspace {:?} is not built: the feed lists ordered keyspaces' \
                     changes and leaderless last-writer-wins keyspaces' stored versions; a {} \
                     keyspace's state has no one value to list",
                    ks.name,
                    ks.spec.conflict.as_deref().unwrap_or(ks.spec.mode.as_str())
                ),
            )
            .into());
        }
        let me = self.me()?;
        // Where each node starts: a cursor's (incarnation, sequence), or where its history
        // ends now.
        let mut start: BTreeMap<NodeId, Option<(u64, u64)>> =
            self.ring_nodes(ks).into_iter().map(|n| (n, None)).collect();
        if let WatchFrom::Cursor(text) = from {
            let nodes: Vec<(u64, u64, u64)> =
                self.open_sealed(ks, CURSOR_LEADERLESS_DOMAIN, text)?;
            for (n, inc, seq) in nodes {
                start.insert(NodeId(n), Some((inc, seq)));
            }
        }
        // The first poll of every node, together: a node's history must still hold the
        // cursor's place.
        let firsts = start.iter().map(|(n, at)| {
            let me = me.clone();
            let ks = ks.clone();
            let (n, at) = (*n, *at);
            async move {
                let r = tokio::time::timeout(
                    Duration::from_secs(1),
                    me.poll_changes(n, &ks, at.map(|a| a.1)),
                )
                .await;
                (n, at, r)
            }
        });
        let mut nodes = BTreeMap::new();
        let mut first_polls = Vec::new();
        for (n, at, r) in futures::future::join_all(firsts).await {
            match r {
                Ok(Ok((inc, entries, upto, from))) => {
                    let after = at.map(|a| a.1);
                    let same = at.is_none_or(|a| a.0 == inc);
                    // A restarted node's history starts over at 0.
                    let after = if same { after } else { Some(0) };
                    if after.is_some_and(|a| a < from) {
                        return Err(WatchRefused::CompactedNode {
                            node: n,
                            oldest: from,
                        });
                    }
                    let entries = if same { entries } else { Vec::new() };
                    let upto = if same { upto } else { 0 };
                    nodes.insert(n, Some((inc, after.unwrap_or(upto))));
                    first_polls.push(Polled {
                        node: n,
                        incarnation: inc,
                        entries,
                        upto,
                        compacted: None,
                    });
                }
                // Unreachable now: followed from when it is reached — from the cursor's place
                // in its history when there is one (forgetting it would skip every version the
                // node stored since, and drop the node from the cursors this watch hands out).
                _ => {
                    nodes.insert(n, at);
                }
            }
        }
        // Room for every node's first poll, which goes first (a resumed watch's replay).
        let (tx, rx) = tokio::sync::mpsc::channel(64 + nodes.len());
        for p in first_polls {
            let _ = tx.try_send(p);
        }
        let mut pollers = Vec::new();
        for (n, at) in &nodes {
            let (me, ks, tx) = (me.clone(), ks.clone(), tx.clone());
            let mut at = *at;
            let n = *n;
            let task = tokio::spawn(async move {
                loop {
                    match me.poll_changes(n, &ks, at.map(|a| a.1)).await {
                        // Restarted: its history starts over, take it from the beginning.
                        Ok((inc, ..)) if at.is_some_and(|a| a.0 != inc) => at = Some((inc, 0)),
                        Ok((inc, _, _, from)) if at.is_some_and(|a| a.1 < from) => {
                            let polled = Polled {
                                node: n,
                                incarnation: inc,
                                entries: Vec::new(),
                                upto: 0,
                                compacted: Some(from),
                            };
                            let _ = tx.send(polled).await;
                            return;
                        }
                        Ok((inc, entries, upto, _)) => {
                            at = Some((inc, upto));
                            let polled = Polled {
                                node: n,
                                incarnation: inc,
                                entries,
                                upto,
                                compacted: None,
                            };
                            // Waits while the watcher is behind: the nodes keep the history.
                            if tx.send(polled).await.is_err() {
                                return;
                            }
                        }
                        Err(_) => tokio::time::sleep(Duration::from_millis(500)).await,
                    }
                }
            });
            pollers.push(task.abort_handle());
        }
        Ok(Watch {
            prefix,
            keyspace_id: ks.id,
            key: self.session_key().clone(),
            shards: Vec::new(),
            pending: std::collections::VecDeque::new(),
            ended: false,
            progress_early: false,
            leaderless: Some(Leaderless {
                rx,
                nodes,
                reported: HashMap::new(),
                ring: self.ring_of(ks)?,
                pollers,
                dupes: self.config.bugs.feed_dupes(),
            }),
        })
    }
}
