//! The state machine of one group, on disk (issue 21): its keys live in the group's records of
//! [`Storage`] (a fjall keyspace on a real node), written once per applied batch together with
//! the applied position, so a restart opens in constant time and replays only the log after it.
//! Readers take one frozen view at a time ([`ShardData::read`]), which is what consistent-prefix
//! multi-key reads need; a Raft snapshot is such a view too, streamed to a follower in chunks,
//! so building one never blocks `apply`. Record layout: docs/formats.md.

use crate::feed::{change_bytes, change_kind};
use crate::hot::{Hot, HotLimits, HotStats};
use crate::ops::{apply_op, keys_written, shape, Touched};
use crate::types::{CommandResult, Op, StoredValue};
use crate::{invalid_data, Change, ChangeBatch, FeedLimits, TypeConfig};
use futures::{Stream, TryStreamExt};
use openraft::alias::{LogIdOf, SnapshotMetaOf, SnapshotOf, StoredMembershipOf};
use openraft::storage::{EntryResponder, RaftSnapshotBuilder, RaftStateMachine};
use openraft::EntryPayload;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::io;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use tokio::sync::{broadcast, watch};
use tunekv_core::keyspace::scan_hash;
use tunekv_core::Hlc;
use tunekv_storage::{StateStage, StateView, StateWrite, Storage};

/// The applied position of a group, published after every applied batch.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Applied {
    pub index: u64,
    /// The commit time (HLC) of the last stamped entry applied. Commit times grow along the
    /// log while clocks agree within `max_clock_offset_ms`; after a skewed stamp, the next
    /// entries' bounded times follow it (issue 15).
    pub commit_ts: u64,
}

/// Records of a group's state: the position, the membership, the keys by scan order, an index
/// of the keys that expire (by expiry time), and the change feed's history (by index).
const POSITION_KEY: &[u8] = b"\x00position";
const MEMBERSHIP_KEY: &[u8] = b"\x00membership";
const DATA_TAG: u8 = 1;
const EXPIRY_TAG: u8 = 2;
const HISTORY_TAG: u8 = 3;

/// Where the state stands, written with every applied batch.
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize)]
struct Position {
    last_applied: Option<LogIdOf<TypeConfig>>,
    commit_ts: u64,
    /// Keys stored, expired ones not yet swept included.
    keys: u64,
    /// The change feed's history (issue 18) holds every change with an index above this one,
    /// in about `history_bytes` (its [`change_bytes`]). Kept with the state, so it survives
    /// restarts and travels in snapshots: a watcher resumes from its cursor on a replica that
    /// restarted or caught up from a snapshot.
    history_from: u64,
    history_bytes: u64,
}

impl Position {
    fn applied(&self) -> Applied {
        Applied {
            index: self.last_applied.as_ref().map(|l| l.index()).unwrap_or(0),
            commit_ts: self.commit_ts,
        }
    }
}

/// A key's record: its scan hash first, so a SCAN reads a range in its cursor's order.
fn data_key(key: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(9 + key.len());
    k.push(DATA_TAG);
    k.extend_from_slice(&scan_hash(key).to_be_bytes());
    k.extend_from_slice(key);
    k
}

fn data_from(hash: u64) -> Vec<u8> {
    let mut k = vec![DATA_TAG];
    k.extend_from_slice(&hash.to_be_bytes());
    k
}

/// `(scan hash, key)` of a data record's key.
fn split_data_key(k: &[u8]) -> Option<(u64, &[u8])> {
    let hash = u64::from_be_bytes(k.get(1..9)?.try_into().ok()?);
    Some((hash, &k[9..]))
}

fn history_key(index: u64, n: u32) -> Vec<u8> {
    let mut k = Vec::with_capacity(13);
    k.push(HISTORY_TAG);
    k.extend_from_slice(&index.to_be_bytes());
    k.extend_from_slice(&n.to_be_bytes());
    k
}

fn expiry_key(expires_ms: u64, key: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(9 + key.len());
    k.push(EXPIRY_TAG);
    k.extend_from_slice(&expires_ms.to_be_bytes());
    k.extend_from_slice(key);
    k
}

fn encode<T: Serialize>(v: &T) -> io::Result<Vec<u8>> {
    postcard::to_stdvec(v).map_err(invalid_data)
}

fn decode<'a, T: Deserialize<'a>>(bytes: &'a [u8]) -> io::Result<T> {
    postcard::from_bytes(bytes).map_err(invalid_data)
}

/// What the applier keeps in memory: the position and membership it last wrote.
struct Inner {
    position: Position,
    membership: StoredMembershipOf<TypeConfig>,
}

/// The part of a group's state that readers share with the state machine.
pub struct ShardData {
    group: u64,
    storage: Arc<dyn Storage>,
    feed: FeedLimits,
    // The applier's own bookkeeping; held for one batch, never across an await.
    inner: Mutex<Inner>,
    // Wakes readers waiting for an index (strong reads on followers, later bounded reads).
    applied_tx: watch::Sender<Applied>,
    // The change feed: each applied batch's changed keys, to every watcher (issue 18). A
    // bounded channel: a watcher that falls behind by more than its capacity lags (and is cut
    // off by its reader), so a slow consumer never grows memory here.
    changes: broadcast::Sender<Arc<ChangeBatch>>,
    /// Snapshots built here, installed from a leader, and log purges (for metrics).
    pub counters: Arc<RaftCounters>,
    // Set when this replica moved away: reads fail from then on (the state is about to be
    // dropped, and an empty state must never be served as the shard's).
    closed: std::sync::atomic::AtomicBool,
    /// Values recently read, kept decoded in memory (hot.rs has the rule that keeps them exact).
    hot: Hot,
}

/// What a group's storage did since the process started (`GET /metrics`).
#[derive(Debug, Default)]
pub struct RaftCounters {
    pub snapshots_built: std::sync::atomic::AtomicU64,
    pub snapshots_installed: std::sync::atomic::AtomicU64,
    pub purges: std::sync::atomic::AtomicU64,
}

/// One consistent view of a group's state: what every batch up to [`ShardView::applied`]
/// wrote, and nothing later.
pub struct ShardView {
    view: Arc<dyn StateView>,
    position: Position,
}

impl ShardView {
    fn open(view: Arc<dyn StateView>) -> io::Result<ShardView> {
        let position = stored_position(&*view)?;
        Ok(ShardView { view, position })
    }

    /// The value of `key`, ignoring expiry (the catalog's keys never expire).
    pub fn get(&self, key: &[u8]) -> io::Result<Option<StoredValue>> {
        match self.view.get(&data_key(key))? {
            Some(bytes) => decode(&bytes).map(Some),
            None => Ok(None),
        }
    }

    /// At least the bytes of `key`'s value (its stored record's size), without reading it:
    /// a quick bound before copying many values out.
    pub fn stored_size(&self, key: &[u8]) -> io::Result<u64> {
        Ok(self.view.size_of(&data_key(key))?.unwrap_or(0))
    }

    /// A lower bound of the bytes of the values of `keys` live at `now_ms`, without reading
    /// them: each record's size less the most its other fields take, for the keys not expired
    /// (the expiry index lists those). `None` when too many keys have expired unswept to tell.
    pub fn live_bytes_at_least(&self, keys: &[Vec<u8>], now_ms: u64) -> io::Result<Option<u64>> {
        /// The most a `StoredValue`'s encoding adds to its value: the length (5 bytes), three
        /// `u64`s (10 each) and an `Option<u64>` (11).
        const OVERHEAD: u64 = 5 + 30 + 11;
        const EXPIRED_MAX: usize = 10_000;
        let expired = self.expired(now_ms, EXPIRED_MAX + 1)?;
        if expired.len() > EXPIRED_MAX {
            return Ok(None);
        }
        let expired: std::collections::HashSet<Vec<u8>> = expired.into_iter().collect();
        let mut bytes = 0;
        for k in keys.iter().filter(|k| !expired.contains(*k)) {
            bytes += self.stored_size(k)?.saturating_sub(OVERHEAD);
        }
        Ok(Some(bytes))
    }

    /// The value of `key` if it has not expired at `now_ms`.
    pub fn get_live(&self, key: &[u8], now_ms: u64) -> io::Result<Option<StoredValue>> {
        Ok(self.get(key)?.filter(|v| v.live_at(now_ms)))
    }

    /// Visits the keys live at `now_ms` in scan order (by [`scan_hash`], then key) from
    /// scan hash `from`, until `visit` returns `false`.
    pub fn scan_live(
        &self,
        from: u64,
        now_ms: u64,
        visit: &mut dyn FnMut(u64, &[u8], &StoredValue) -> bool,
    ) -> io::Result<()> {
        let mut failed = None;
        self.view
            .scan(&data_from(from), Some(&[DATA_TAG + 1]), &mut |k, v| {
                let (Some((hash, key)), Ok(value)) = (split_data_key(k), decode::<StoredValue>(v))
                else {
                    failed = Some(invalid_data(format!("corrupt record {k:?}")));
                    return false;
                };
                !value.live_at(now_ms) || visit(hash, key, &value)
            })?;
        failed.map_or(Ok(()), Err)
    }

    /// Keys with `prefix` (the catalog lists keyspaces with it). Reads every key: for small
    /// groups only.
    pub fn scan_prefix(&self, prefix: &[u8]) -> io::Result<Vec<(Vec<u8>, StoredValue)>> {
        let mut out = Vec::new();
        self.scan_live(0, 0, &mut |_, key, value| {
            if key.starts_with(prefix) {
                out.push((key.to_vec(), value.clone()));
            }
            true
        })?;
        out.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(out)
    }

    /// Up to `limit` keys that have expired at `now_ms` but are still stored, earliest first.
    pub fn expired(&self, now_ms: u64, limit: usize) -> io::Result<Vec<Vec<u8>>> {
        let mut out = Vec::new();
        if limit == 0 {
            return Ok(out);
        }
        let to = expiry_key(now_ms.saturating_add(1), b"");
        self.view.scan(&[EXPIRY_TAG], Some(&to), &mut |k, _| {
            out.push(k[9..].to_vec());
            out.len() < limit
        })?;
        Ok(out)
    }

    /// Keys live at `now_ms`: those stored less those expired and not yet swept.
    pub fn count_live(&self, now_ms: u64) -> io::Result<u64> {
        let mut expired = 0u64;
        let to = expiry_key(now_ms.saturating_add(1), b"");
        self.view.scan(&[EXPIRY_TAG], Some(&to), &mut |_, _| {
            expired += 1;
            true
        })?;
        Ok(self.position.keys.saturating_sub(expired))
    }

    /// Keys stored, expired ones not yet swept included.
    pub fn stored_keys(&self) -> u64 {
        self.position.keys
    }

    pub fn applied(&self) -> Applied {
        self.position.applied()
    }
}

impl ShardData {
    /// A consistent view of the state as applied now.
    pub fn read(&self) -> io::Result<ShardView> {
        if self.closed.load(std::sync::atomic::Ordering::Acquire) {
            return Err(io::Error::other(format!(
                "group {:x}: this replica moved to other nodes",
                self.group
            )));
        }
        ShardView::open(self.storage.state_view(self.group)?)
    }

    /// This replica moved away: every later [`ShardData::read`] fails.
    pub fn close(&self) {
        self.closed
            .store(true, std::sync::atomic::Ordering::Release);
        self.hot.reset(self.applied().index);
    }

    /// The values of `keys` (live or not: the caller filters by expiry) at the applied state
    /// announced now, from the hot values, if every key is there; `None` sends the caller to
    /// a view ([`ShardData::read`], then [`ShardData::keep_hot`]).
    pub fn read_hot<K: AsRef<[u8]>>(
        &self,
        keys: &[K],
    ) -> Option<(Applied, Vec<Option<Arc<StoredValue>>>)> {
        if self.closed.load(std::sync::atomic::Ordering::Acquire) {
            return None;
        }
        let applied = self.applied();
        self.hot.get_all(keys, applied.index).map(|v| (applied, v))
    }

    /// Keeps what `view` holds for `key` (`value`, as read from it) among the hot values, if
    /// the view is of the newest state.
    pub fn keep_hot(&self, view: &ShardView, key: &[u8], value: Option<&Arc<StoredValue>>) {
        self.hot.fill(view.applied().index, key, value);
    }

    /// Hits, misses and bytes of the hot values.
    pub fn hot_stats(&self) -> HotStats {
        self.hot.stats()
    }

    pub fn applied(&self) -> Applied {
        *self.applied_tx.borrow()
    }

    pub fn subscribe(&self) -> watch::Receiver<Applied> {
        self.applied_tx.subscribe()
    }

    /// Every later applied batch's changes. Subscribe first, then read [`ShardData::applied`]:
    /// batches at or below that index were applied before; the rest arrive here.
    pub fn changes(&self) -> broadcast::Receiver<Arc<ChangeBatch>> {
        self.changes.subscribe()
    }

    /// Keys stored as of the last applied batch, expired ones not yet swept included.
    pub fn stored_keys(&self) -> u64 {
        self.lock().position.keys
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The changes this node applied after index `after`, and the index applied with them
    /// (subscribe to [`ShardData::changes`] first: later batches arrive there).
    /// `Ok(Err(oldest))`: the history no longer reaches back to `after`; it begins after
    /// `oldest`.
    pub fn changes_since(&self, after: u64) -> io::Result<Result<(Vec<Change>, u64), u64>> {
        let view = self.read()?;
        let applied = view.applied().index;
        if after >= applied {
            return Ok(Ok((Vec::new(), applied)));
        }
        let from = if self.feed.history_bytes == 0 {
            applied
        } else {
            view.position.history_from
        };
        if after < from {
            return Ok(Err(from));
        }
        let mut changes = Vec::new();
        let mut failed = None;
        view.view.scan(
            &history_key(after + 1, 0),
            Some(&[HISTORY_TAG + 1]),
            &mut |_, v| match decode::<Change>(v) {
                // Records above the applied index are never in a view; only a corrupt one.
                Ok(c) if c.index <= applied => {
                    changes.push(c);
                    true
                }
                Ok(c) => {
                    failed = Some(invalid_data(format!("history record at {}", c.index)));
                    false
                }
                Err(e) => {
                    failed = Some(e);
                    false
                }
            },
        )?;
        failed.map_or(Ok(Ok((changes, applied))), Err)
    }
}

/// The history records to write for a batch's `changes`, and the oldest ones to delete (from
/// `view`, the state before the batch) so the history stays within `bytes_max`; `position`
/// says what the history holds after.
fn history_writes(
    view: &dyn StateView,
    position: &mut Position,
    changes: &[Change],
    bytes_max: u64,
    writes: &mut Vec<StateWrite>,
) -> io::Result<()> {
    position.history_bytes += changes.iter().map(change_bytes).sum::<u64>();
    if position.history_bytes > bytes_max {
        let mut failed = None;
        // Every record below `history_from` is gone: start there, not at a run of deletions.
        view.scan(
            &history_key(position.history_from, 0),
            Some(&[HISTORY_TAG + 1]),
            &mut |k, v| {
                if position.history_bytes <= bytes_max {
                    return false;
                }
                match decode::<Change>(v) {
                    Ok(old) => {
                        position.history_bytes -= change_bytes(&old).min(position.history_bytes);
                        position.history_from = position.history_from.max(old.index);
                        writes.push((k.to_vec(), None));
                        true
                    }
                    Err(e) => {
                        failed = Some(e);
                        false
                    }
                }
            },
        )?;
        if let Some(e) = failed {
            return Err(e);
        }
    }
    let mut n = 0u32;
    let mut last_index = None;
    for c in changes {
        n = if last_index == Some(c.index) {
            n + 1
        } else {
            0
        };
        last_index = Some(c.index);
        if position.history_bytes > bytes_max {
            // This batch alone is over the budget: its oldest changes are not kept.
            position.history_bytes -= change_bytes(c).min(position.history_bytes);
            position.history_from = position.history_from.max(c.index);
            continue;
        }
        writes.push((history_key(c.index, n), Some(encode(c)?)));
    }
    Ok(())
}

/// A Raft snapshot of a group: a frozen view of its records (to send), or records received
/// from a leader and staged on disk (to install). Never one buffer of the whole state.
pub enum SnapshotData {
    View(Arc<dyn StateView>),
    Staged(Box<dyn StateStage>),
}

impl std::fmt::Debug for SnapshotData {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            SnapshotData::View(_) => "SnapshotData::View",
            SnapshotData::Staged(_) => "SnapshotData::Staged",
        })
    }
}

/// One record of a state: its key and value.
pub type Record = (Vec<u8>, Vec<u8>);

/// One chunk of a snapshot being sent: the records after `after` (all of them from the start
/// when `None`), about `bytes_max` bytes of them, and whether they are the last.
pub fn snapshot_chunk(
    view: &dyn StateView,
    after: Option<&[u8]>,
    bytes_max: usize,
) -> io::Result<(Vec<Record>, bool)> {
    let from = match after {
        Some(k) => {
            let mut from = k.to_vec();
            from.push(0);
            from
        }
        None => Vec::new(),
    };
    let mut out = Vec::new();
    let mut bytes = 0usize;
    let mut more = false;
    view.scan(&from, None, &mut |k, v| {
        if !out.is_empty() && bytes >= bytes_max {
            more = true;
            return false;
        }
        bytes += k.len() + v.len();
        out.push((k.to_vec(), v.to_vec()));
        true
    })?;
    Ok((out, !more))
}

#[derive(Clone)]
pub struct StateMachine {
    group: u64,
    shared: Arc<ShardData>,
    storage: Arc<dyn Storage>,
    // The node's clock: applied commit times are observed so a new leader never stamps an
    // entry earlier than one it has applied.
    hlc: Arc<Hlc>,
}

/// The position stored in a view (the default before anything was applied).
fn stored_position(view: &dyn StateView) -> io::Result<Position> {
    match view.get(POSITION_KEY)? {
        Some(bytes) => decode(&bytes),
        None => Ok(Position::default()),
    }
}

/// The position and membership stored in a view.
fn stored_state(view: &dyn StateView) -> io::Result<(Position, StoredMembershipOf<TypeConfig>)> {
    let position = stored_position(view)?;
    let membership = match view.get(MEMBERSHIP_KEY)? {
        Some(bytes) => decode(&bytes)?,
        None => StoredMembershipOf::<TypeConfig>::default(),
    };
    Ok((position, membership))
}

impl StateMachine {
    /// Opens a group's state machine where its records left it.
    pub fn open(group: u64, storage: Arc<dyn Storage>, hlc: Arc<Hlc>) -> io::Result<StateMachine> {
        Self::open_with(
            group,
            storage,
            hlc,
            FeedLimits::default(),
            HotLimits::default(),
        )
    }

    /// [`StateMachine::open`] with the change feed's limits. Reads two records, whatever the
    /// state's size: the log entries after the stored position are applied again after.
    pub fn open_with(
        group: u64,
        storage: Arc<dyn Storage>,
        hlc: Arc<Hlc>,
        feed: FeedLimits,
        hot: HotLimits,
    ) -> io::Result<StateMachine> {
        let (position, membership) = stored_state(&*storage.state_view(group)?)?;
        hlc.observe(position.commit_ts);
        let inner = Inner {
            position,
            membership,
        };
        let (applied_tx, _) = watch::channel(position.applied());
        let (changes, _) = broadcast::channel(feed.batches.max(1));
        let shared = Arc::new(ShardData {
            group,
            storage: storage.clone(),
            feed,
            inner: Mutex::new(inner),
            applied_tx,
            counters: Arc::default(),
            closed: Default::default(),
            changes,
            hot: Hot::new(hot, position.applied().index),
        });
        Ok(StateMachine {
            group,
            shared,
            storage,
            hlc,
        })
    }

    pub fn data(&self) -> Arc<ShardData> {
        self.shared.clone()
    }

    /// A snapshot of the state as applied now: a frozen view and the position it holds.
    fn snapshot_now(&self) -> io::Result<Option<SnapshotOf<TypeConfig, SnapshotData>>> {
        let view = self.storage.state_view(self.group)?;
        let (position, membership) = stored_state(&*view)?;
        if position.last_applied.is_none() {
            return Ok(None);
        }
        Ok(Some(SnapshotOf::<TypeConfig, SnapshotData> {
            meta: SnapshotMetaOf::<TypeConfig> {
                last_log_id: position.last_applied,
                last_membership: membership,
            },
            snapshot: SnapshotData::View(view),
        }))
    }
}

/// Every key `op` may read or change: what is loaded before it runs.
fn keys_touched(op: &Op) -> Vec<&Vec<u8>> {
    match op {
        Op::Get { key } => vec![key],
        Op::Txn {
            compare,
            success,
            failure,
        } => {
            let mut keys: Vec<&Vec<u8>> = compare.iter().map(|(k, _)| k).collect();
            keys.extend(success.iter().chain(failure).flat_map(keys_touched));
            keys
        }
        other => keys_written(other),
    }
}

/// One batch being applied: the touched keys' values as the batch left them, over a view
/// of the state before it, and what they were in that view.
struct Batch {
    view: Arc<dyn StateView>,
    work: Touched,
    before: BTreeMap<Vec<u8>, Option<StoredValue>>,
}

impl Batch {
    fn load(&mut self, keys: &[&Vec<u8>]) -> io::Result<()> {
        for &key in keys {
            if self.before.contains_key(key) {
                continue;
            }
            let value: Option<StoredValue> = match self.view.get(&data_key(key))? {
                Some(bytes) => Some(decode(&bytes)?),
                None => None,
            };
            if let Some(v) = &value {
                self.work.insert(key.clone(), v.clone());
            }
            self.before.insert(key.clone(), value);
        }
        Ok(())
    }

    /// The records to write for what changed, and the change in the number of keys.
    fn writes(self) -> io::Result<(Vec<StateWrite>, i64)> {
        let mut writes = Vec::new();
        let mut delta = 0i64;
        for (key, was) in self.before {
            let now = self.work.get(&key);
            if now == was.as_ref() {
                continue;
            }
            let (old_expiry, new_expiry) = (
                was.as_ref().and_then(|v| v.expires_ms),
                now.and_then(|v| v.expires_ms),
            );
            if old_expiry != new_expiry {
                if let Some(e) = old_expiry {
                    writes.push((expiry_key(e, &key), None));
                }
                if let Some(e) = new_expiry {
                    writes.push((expiry_key(e, &key), Some(Vec::new())));
                }
            }
            delta += i64::from(now.is_some()) - i64::from(was.is_some());
            writes.push((data_key(&key), now.map(encode).transpose()?));
        }
        Ok((writes, delta))
    }
}

impl RaftSnapshotBuilder<TypeConfig> for StateMachine {
    type SnapshotData = SnapshotData;

    /// A frozen view of the records as applied now: no copy and no lock, so `apply` goes on.
    async fn build_snapshot(&mut self) -> Result<SnapshotOf<TypeConfig, SnapshotData>, io::Error> {
        let snapshot = self
            .snapshot_now()?
            .ok_or_else(|| io::Error::other("nothing applied yet: no snapshot to build"))?;
        self.shared
            .counters
            .snapshots_built
            .fetch_add(1, Ordering::Relaxed);
        Ok(snapshot)
    }
}

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotData = SnapshotData;
    type SnapshotBuilder = Self;

    async fn applied_state(
        &mut self,
    ) -> Result<(Option<LogIdOf<TypeConfig>>, StoredMembershipOf<TypeConfig>), io::Error> {
        let inner = self.shared.lock();
        Ok((inner.position.last_applied, inner.membership.clone()))
    }

    async fn apply<Strm>(&mut self, mut entries: Strm) -> Result<(), io::Error>
    where
        Strm: Stream<Item = Result<EntryResponder<TypeConfig>, io::Error>> + Unpin + Send,
    {
        // Collect the batch first: the lock must not be held across an await.
        let mut entries_in = Vec::new();
        while let Some(item) = entries.try_next().await? {
            entries_in.push(item);
        }
        let mut replies = Vec::with_capacity(entries_in.len());
        // The feed's changes are computed only while someone watches or a history is kept.
        let watched = self.shared.changes.receiver_count() > 0;
        let mut feed = watched;
        let mut changes = Vec::new();
        let mut batch = Batch {
            view: self.storage.state_view(self.group)?,
            work: Touched::new(),
            before: BTreeMap::new(),
        };
        let applied = {
            let mut inner = self.shared.lock();
            let history_max = self.shared.feed.history_bytes as u64;
            feed |= history_max > 0;
            let mut position = inner.position;
            let mut membership = None;
            for (entry, responder) in entries_in {
                let index = entry.log_id.index();
                assert!(
                    position.last_applied.as_ref().map(|l| l.index()) < Some(index),
                    "entries apply in log order"
                );
                let result = match &entry.payload {
                    EntryPayload::Blank => CommandResult::unchanged(false),
                    EntryPayload::Normal(cmd) => {
                        // The entry's own stamp: commit times grow along the log while clocks
                        // agree; after a skewed stamp the next entries' (bounded) times follow,
                        // so one bad stamp is not carried forward (issue 15).
                        position.commit_ts = cmd.commit_ts;
                        self.hlc.observe(cmd.commit_ts);
                        batch.load(&keys_touched(&cmd.op))?;
                        if feed {
                            let keys = keys_written(&cmd.op);
                            let before: Vec<_> =
                                keys.iter().map(|k| shape(&batch.work, k)).collect();
                            let result = apply_op(&mut batch.work, index, cmd);
                            for (key, was) in keys.into_iter().zip(before) {
                                let now = shape(&batch.work, key);
                                if now != was {
                                    let value = batch.work.get(key);
                                    changes.push(Change {
                                        index,
                                        commit_ts: cmd.commit_ts,
                                        key: key.clone(),
                                        value: value.map(|v| v.value.clone()),
                                        kind: change_kind(&cmd.op, key, result.int == 1, was, now),
                                        expires_ms: value.and_then(|v| v.expires_ms),
                                    });
                                }
                            }
                            result
                        } else {
                            apply_op(&mut batch.work, index, cmd)
                        }
                    }
                    EntryPayload::Membership(m) => {
                        membership = Some(StoredMembershipOf::<TypeConfig>::new(
                            Some(entry.log_id),
                            m.clone(),
                        ));
                        CommandResult::unchanged(false)
                    }
                };
                position.last_applied = Some(entry.log_id);
                if let Some(r) = responder {
                    replies.push((r, result));
                }
            }
            // One atomic write: the changed keys, the expiry index, the feed's history, the
            // position they bring the state to (and the membership, when it changed).
            let view = batch.view.clone();
            let (mut writes, delta) = batch.writes()?;
            position.keys = position.keys.saturating_add_signed(delta);
            if history_max > 0 {
                history_writes(&*view, &mut position, &changes, history_max, &mut writes)?;
            } else {
                position.history_from = position.applied().index;
            }
            writes.push((POSITION_KEY.to_vec(), Some(encode(&position)?)));
            if let Some(m) = &membership {
                writes.push((MEMBERSHIP_KEY.to_vec(), Some(encode(m)?)));
            }
            self.storage.state_write(self.group, &writes)?;
            // Before the batch is announced: no read at its index may find a value it changed.
            self.shared.hot.applied(
                position.applied().index,
                writes
                    .iter()
                    .filter(|(k, _)| k.first() == Some(&DATA_TAG))
                    .filter_map(|(k, _)| split_data_key(k).map(|(_, key)| key)),
            );
            inner.position = position;
            if let Some(m) = membership {
                inner.membership = m;
            }
            position.applied()
        };
        // Whether anyone watches is asked again after the write: a watcher that subscribed
        // before this point receives the batch, and one that subscribes after it reads a view
        // (its starting position) that holds the batch. Asked only before the write, a watcher
        // subscribing while the batch was applied got neither (found by `verify`'s watcher
        // once the apply read keys from disk and the window grew).
        if self.shared.changes.receiver_count() > 0 {
            let _ = self.shared.changes.send(Arc::new(ChangeBatch {
                // Not computed (no history, nobody watched at the start): the watcher must
                // start again from a new view.
                reset: !feed,
                changes,
                applied: applied.index,
            }));
        }
        self.shared.applied_tx.send_replace(applied);
        for (r, result) in replies {
            r.send(result);
        }
        Ok(())
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMetaOf<TypeConfig>,
        snapshot: SnapshotData,
    ) -> Result<(), io::Error> {
        let stage = match snapshot {
            SnapshotData::Staged(stage) => stage,
            // A view of this node's own state (openraft restoring one): copy it.
            SnapshotData::View(view) => {
                let mut stage = self.storage.state_stage(self.group)?;
                let mut after: Option<Vec<u8>> = None;
                loop {
                    let (records, last) = snapshot_chunk(&*view, after.as_deref(), 4 << 20)?;
                    stage.write(&records)?;
                    after = records.last().map(|(k, _)| k.clone()).or(after);
                    if last {
                        break;
                    }
                }
                stage
            }
        };
        // Durable before it becomes the state: a restart must find it.
        stage.finish()?;
        let (position, membership) = stored_state(&*self.storage.state_view(self.group)?)?;
        if position.last_applied != meta.last_log_id {
            return Err(invalid_data(format!(
                "group {}: the snapshot's records are at {:?}, its meta says {:?}",
                self.group, position.last_applied, meta.last_log_id
            )));
        }
        self.hlc.observe(position.commit_ts);
        let applied = {
            let mut inner = self.shared.lock();
            inner.position = position;
            inner.membership = membership;
            position.applied()
        };
        self.shared.hot.reset(applied.index);
        if self.shared.changes.receiver_count() > 0 {
            let _ = self.shared.changes.send(Arc::new(ChangeBatch {
                changes: Vec::new(),
                applied: applied.index,
                reset: true,
            }));
        }
        self.shared
            .counters
            .snapshots_installed
            .fetch_add(1, Ordering::Relaxed);
        self.shared.applied_tx.send_replace(applied);
        Ok(())
    }

    /// The state as applied now, as a frozen view: always at least as new as the last
    /// snapshot built (the state only moves forward), and exactly what its meta says.
    async fn get_current_snapshot(
        &mut self,
    ) -> Result<Option<SnapshotOf<TypeConfig, SnapshotData>>, io::Error> {
        self.snapshot_now()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::{Command, Cond, Ttl};
    use openraft::entry::RaftEntry;
    use tunekv_storage::MemStorage;

    fn set(key: &str, value: &str, ttl: Ttl) -> Op {
        Op::Set {
            key: key.into(),
            value: value.into(),
            cond: Cond::Always,
            ttl,
            get: false,
        }
    }

    /// Applies `ops` as entries `first`, `first + 1`, … committed at `now_ms`, in one batch.
    async fn apply(sm: &mut StateMachine, first: u64, now_ms: u64, ops: Vec<Op>) {
        let entries: Vec<io::Result<EntryResponder<TypeConfig>>> = ops
            .into_iter()
            .enumerate()
            .map(|(i, op)| {
                let log_id = openraft::testing::log_id::<TypeConfig>(1, 1, first + i as u64);
                let cmd = Command {
                    commit_ts: now_ms << 16,
                    op,
                };
                Ok((
                    openraft::alias::EntryOf::<TypeConfig>::new(log_id, EntryPayload::Normal(cmd)),
                    None,
                ))
            })
            .collect();
        sm.apply(futures::stream::iter(entries)).await.unwrap();
    }

    fn open(storage: &Arc<MemStorage>, history_bytes: usize) -> StateMachine {
        StateMachine::open_with(
            7,
            storage.clone(),
            Arc::new(Hlc::new(500)),
            FeedLimits {
                batches: 16,
                history_bytes,
            },
            HotLimits::default(),
        )
        .unwrap()
    }

    /// `key` from the hot values (`Some`), or `None` after reading it from a view and keeping
    /// it there.
    fn hot(sm: &StateMachine, key: &str) -> Option<Option<Vec<u8>>> {
        let data = sm.data();
        if let Some((_, mut v)) = data.read_hot(&[key.as_bytes()]) {
            return Some(v.pop().flatten().map(|v| v.value.clone()));
        }
        let view = data.read().unwrap();
        let v = view.get(key.as_bytes()).unwrap().map(Arc::new);
        data.keep_hot(&view, key.as_bytes(), v.as_ref());
        None
    }

    #[tokio::test]
    async fn hot_values_follow_every_write_and_never_outlive_their_state() {
        let storage = Arc::new(MemStorage::new());
        let mut sm = open(&storage, 0);
        apply(&mut sm, 1, 1_000, vec![set("a", "1", Ttl::Clear)]).await;
        assert_eq!(hot(&sm, "a"), None, "first read: from a view");
        assert_eq!(hot(&sm, "a"), Some(Some(b"1".to_vec())));
        apply(&mut sm, 2, 1_000, vec![set("a", "2", Ttl::Clear)]).await;
        assert_eq!(hot(&sm, "a"), None, "a write removes the key");
        assert_eq!(hot(&sm, "a"), Some(Some(b"2".to_vec())));
        apply(&mut sm, 3, 1_000, vec![set("b", "x", Ttl::Clear)]).await;
        assert_eq!(
            hot(&sm, "a"),
            Some(Some(b"2".to_vec())),
            "others' writes keep it"
        );
        apply(&mut sm, 4, 1_000, vec![Op::Delete { key: b"a".to_vec() }]).await;
        assert_eq!(hot(&sm, "a"), None);
        assert_eq!(hot(&sm, "a"), Some(None), "absence is kept too");
        // A view read before a write is not kept after it.
        let data = sm.data();
        let old = data.read().unwrap();
        apply(&mut sm, 5, 1_000, vec![set("a", "3", Ttl::Clear)]).await;
        data.keep_hot(&old, b"a", None);
        assert_eq!(hot(&sm, "a"), None);
        assert_eq!(hot(&sm, "a"), Some(Some(b"3".to_vec())));
        // A closed copy serves none.
        data.close();
        assert!(data.read_hot(&[b"a"]).is_none());
    }

    fn value(view: &ShardView, key: &str) -> Option<Vec<u8>> {
        view.get(key.as_bytes()).unwrap().map(|v| v.value)
    }

    /// The keys, their expiry index, the key count and the position are written together,
    /// and a restart finds them where the last synced batch left them.
    #[tokio::test]
    async fn batches_persist_with_their_position_and_reopen_in_place() {
        let storage = Arc::new(MemStorage::new());
        let mut sm = open(&storage, 0);
        apply(
            &mut sm,
            1,
            1_000,
            vec![
                set("a", "1", Ttl::Clear),
                set("b", "2", Ttl::AfterMs(500)),
                Op::MSet {
                    pairs: vec![("c".into(), "3".into()), ("d".into(), "4".into())],
                },
                Op::Delete { key: "d".into() },
                Op::IncrBy {
                    key: "a".into(),
                    delta: 5,
                },
            ],
        )
        .await;
        let view = sm.data().read().unwrap();
        assert_eq!(view.applied().index, 5);
        assert_eq!(
            value(&view, "a"),
            Some(b"6".to_vec()),
            "the batch saw its own writes"
        );
        assert_eq!(value(&view, "d"), None);
        assert_eq!(view.stored_keys(), 3);
        assert_eq!(view.count_live(1_499).unwrap(), 3);
        assert_eq!(view.count_live(1_500).unwrap(), 2, "b expired at 1500");
        assert_eq!(view.expired(1_499, 10).unwrap(), Vec::<Vec<u8>>::new());
        assert_eq!(view.expired(1_500, 10).unwrap(), vec![b"b".to_vec()]);
        // SCAN order: by scan hash, every live key once.
        let mut seen = Vec::new();
        view.scan_live(0, 1_500, &mut |hash, key, _| {
            assert_eq!(hash, scan_hash(key));
            seen.push((hash, key.to_vec()));
            true
        })
        .unwrap();
        let mut sorted = seen.clone();
        sorted.sort();
        assert_eq!((seen.len(), &seen), (2, &sorted));
        storage.sync().unwrap();
        // A later batch, not synced, is lost with a crash; the state reopens at 5.
        apply(&mut sm, 6, 1_100, vec![set("b", "again", Ttl::Clear)]).await;
        assert_eq!(
            sm.data().read().unwrap().expired(2_000, 10).unwrap().len(),
            0
        );
        storage.crash(0);
        let sm = open(&storage, 0);
        let view = sm.data().read().unwrap();
        assert_eq!((view.applied().index, view.stored_keys()), (5, 3));
        assert_eq!(value(&view, "b"), Some(b"2".to_vec()));
        assert_eq!(view.expired(1_500, 10).unwrap(), vec![b"b".to_vec()]);
    }

    /// The feed's history keeps the newest changes within its bytes, says from where it is
    /// complete, and survives a restart.
    #[tokio::test]
    async fn the_history_keeps_its_newest_changes_and_survives_a_restart() {
        let storage = Arc::new(MemStorage::new());
        // Each change of a 2-byte key and a 34-byte value costs 100 bytes.
        let mut sm = open(&storage, 300);
        let v = "v".repeat(34);
        for i in 1..=4 {
            apply(
                &mut sm,
                i,
                1_000,
                vec![set(&format!("k{i}"), &v, Ttl::Clear)],
            )
            .await;
        }
        let since = |sm: &StateMachine, after| sm.data().changes_since(after).unwrap();
        assert_eq!(since(&sm, 0), Err(1), "change 1 was dropped");
        let (changes, applied) = since(&sm, 1).unwrap();
        assert_eq!(applied, 4);
        assert_eq!(
            changes.iter().map(|c| c.index).collect::<Vec<_>>(),
            vec![2, 3, 4]
        );
        assert_eq!(since(&sm, 3).unwrap().0.len(), 1);
        assert_eq!(since(&sm, 4).unwrap().0.len(), 0);
        // One batch larger than the whole budget keeps only its newest changes.
        apply(
            &mut sm,
            5,
            1_000,
            vec![Op::MSet {
                pairs: (0..5)
                    .map(|i| (format!("m{i}").into(), v.clone().into()))
                    .collect(),
            }],
        )
        .await;
        assert_eq!(since(&sm, 4), Err(5));
        storage.sync().unwrap();
        storage.crash(0);
        let sm = open(&storage, 300);
        let (changes, applied) = since(&sm, 5).unwrap();
        assert_eq!((changes.len(), applied), (0, 5));
        assert_eq!(since(&sm, 4), Err(5), "the same history after a restart");
    }

    /// A snapshot is a frozen view streamed in chunks: another replica stages the chunks and
    /// installs them as its whole state, history included, while the sender went on applying.
    #[tokio::test]
    async fn a_snapshot_streams_in_chunks_and_installs_elsewhere() {
        let leader_disk = Arc::new(MemStorage::new());
        let mut leader = open(&leader_disk, 1 << 20);
        let ops = (0..50)
            .map(|i| set(&format!("key{i}"), &format!("value{i}"), Ttl::Clear))
            .collect();
        apply(&mut leader, 1, 1_000, ops).await;
        let snapshot = leader.build_snapshot().await.unwrap();
        assert_eq!(snapshot.meta.last_log_id.map(|l| l.index()), Some(50));
        // Applying goes on; the snapshot keeps its view.
        apply(
            &mut leader,
            51,
            1_000,
            vec![set("key0", "later", Ttl::Clear)],
        )
        .await;
        let SnapshotData::View(view) = snapshot.snapshot else {
            panic!("a built snapshot is a view")
        };
        let follower_disk = Arc::new(MemStorage::new());
        let mut follower = open(&follower_disk, 1 << 20);
        apply(&mut follower, 1, 1_000, vec![set("stale", "x", Ttl::Clear)]).await;
        assert_eq!(hot(&follower, "stale"), None);
        assert_eq!(hot(&follower, "stale"), Some(Some(b"x".to_vec())));
        let mut stage = follower_disk.state_stage(7).unwrap();
        let mut after: Option<Vec<u8>> = None;
        let mut chunks = 0;
        loop {
            let (records, last) = snapshot_chunk(&*view, after.as_deref(), 200).unwrap();
            stage.write(&records).unwrap();
            chunks += 1;
            after = records.last().map(|(k, _)| k.clone()).or(after);
            if last {
                break;
            }
        }
        assert!(chunks > 5, "{chunks} chunks");
        follower
            .install_snapshot(&snapshot.meta, SnapshotData::Staged(stage))
            .await
            .unwrap();
        let state = follower.data().read().unwrap();
        assert_eq!((state.applied().index, state.stored_keys()), (50, 50));
        assert_eq!(value(&state, "key0"), Some(b"value0".to_vec()));
        assert_eq!(value(&state, "stale"), None);
        assert_eq!(
            hot(&follower, "stale"),
            None,
            "an installed snapshot empties them"
        );
        assert_eq!(hot(&follower, "stale"), Some(None));
        assert_eq!(
            follower.data().changes_since(10).unwrap().unwrap().0.len(),
            40
        );
        // A restart finds the installed state.
        follower_disk.crash(0);
        let reopened = open(&follower_disk, 1 << 20);
        assert_eq!(reopened.data().read().unwrap().applied().index, 50);
        // Records that do not match the meta are refused.
        let mut wrong = reopened.clone();
        let mut meta = snapshot.meta.clone();
        meta.last_log_id = Some(openraft::testing::log_id::<TypeConfig>(1, 1, 60));
        let stage = follower_disk.state_stage(7).unwrap();
        assert!(wrong
            .install_snapshot(&meta, SnapshotData::Staged(stage))
            .await
            .is_err());
    }
}
