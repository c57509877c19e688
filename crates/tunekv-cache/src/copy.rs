//! The cache as a copy with a position (DESIGN §5, docs/cache.md "Position rules").
//!
//! Per shard of an ordered keyspace the cache knows `F`, the index up to which the change feed
//! has delivered every change (its last progress mark). The feed updates each cached key it
//! changes, so an entry known current at `since` is the key's state at every position from
//! `since` to `max(since, F)`: a read may be served from it at `max(since, F)`, judged by
//! `tunekv_core::judge` exactly like a replica at that applied index.
//!
//! What can go wrong is a fill racing with the feed: a value read upstream at `P`, inserted
//! after the feed delivered a change of the key above `P`, would stay stale. Three rules
//! prevent it: a fill reads upstream at a state no older than `F` when it started (so every
//! change the feed had delivered is in it); while it is in flight, the feed records the newest
//! change of its key in the fill's slot; and at the end the fill is inserted only if no
//! recorded change is newer than `P`, the feed is live and the keyspace's epoch is unchanged —
//! all checked under the shard's lock, the same lock under which the feed updates entries.

use crate::store::{Entry, Store};
use crate::upstream::{Fetched, Upstream};
use bytes::Bytes;
use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use tokio::sync::watch;
use tokio::time::Instant;
use tunekv_core::{Code, GroupId, KeyspaceSpec, LogIndex, ShardId, TunekvError, Watermark};

/// Freshness proofs kept per shard.
const PROOFS_MAX: usize = 64;

/// Where the feed stands on one shard.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Fed {
    /// Every change up to this index has been applied (`F`).
    pub index: u64,
    /// The feed of the current epoch has started on this shard; until then nothing is
    /// inserted (changes before the watch began would be missed).
    pub live: bool,
}

/// The shared result of one upstream read, for every read coalesced on it.
pub type FillResult = Arc<Result<Fetched, TunekvError>>;

struct Slot {
    /// The newest change of the key the feed (or a write through the cache) delivered while
    /// the fill was in flight.
    newest_change: u64,
    epoch: u64,
    /// The keyspace's namespace version when the fill started.
    gen: u64,
    /// The fill reads at a state at least this new: every change the feed had delivered when
    /// it started, and what the read needs.
    reads_at_least: u64,
    done: watch::Sender<Option<FillResult>>,
}

/// The role a read takes in a fill of its key.
pub enum Fill {
    /// This read fetches; `need` is the index its upstream read must reach.
    Fetch { need: u64 },
    /// Another read is fetching this key: wait for its result.
    Wait(watch::Receiver<Option<FillResult>>),
}

#[derive(Default)]
struct Probes {
    in_flight: Option<watch::Receiver<bool>>,
    /// The last answer: (read index, when its probe was sent).
    last: Option<(u64, Instant)>,
    /// The last failure and when its probe was sent.
    last_error: Option<(TunekvError, Instant)>,
}

#[derive(Default)]
struct Inner {
    fills: HashMap<Vec<u8>, Slot>,
    /// Freshness proofs `(c, h)`: every write committed before `h` (this process's clock) is
    /// at or below index `c`. Both ascending; a proof another one dominates is dropped.
    proofs: VecDeque<(u64, Instant)>,
    /// The newest commit index the cache knows of (read indexes, fills, the feed).
    known_commit: u64,
    /// Commit time (ms) of the newest change the feed delivered.
    commit_ms: u64,
    /// The index of the newest change the feed delivered (changes come before the progress
    /// mark that covers them, so this may be above `F`).
    delivered: u64,
    /// Commit time (ms) of the newest change at or below `F` (taken at each progress mark).
    fed_commit_ms: u64,
    probes: Probes,
    /// A commit index the feed had not reached, and since when: the feed's node may be cut
    /// off when it stays below it (under load the feed is always a little behind the newest
    /// commit, so the target is fixed when first seen, not the moving newest one).
    behind: Option<(u64, Instant)>,
}

impl Inner {
    /// A change of `key` at `index` is known: a fill of it in flight must not cache anything
    /// older. True when one is in flight.
    fn note_change(&mut self, key: &[u8], index: u64) -> bool {
        self.known_commit = self.known_commit.max(index);
        match self.fills.get_mut(key) {
            Some(slot) => {
                slot.newest_change = slot.newest_change.max(index);
                true
            }
            None => false,
        }
    }
}

/// One shard of a cached keyspace.
pub struct ShardCopy {
    pub shard: ShardId,
    pub group: GroupId,
    fed: watch::Sender<Fed>,
    inner: Mutex<Inner>,
}

impl ShardCopy {
    fn new(keyspace_id: u64, shard: u32) -> ShardCopy {
        ShardCopy {
            shard: ShardId(shard),
            group: GroupId::for_shard(keyspace_id, ShardId(shard)),
            fed: watch::channel(Fed::default()).0,
            inner: Mutex::new(Inner::default()),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding the lock leaves fields that are each valid on their own.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn fed(&self) -> Fed {
        *self.fed.borrow()
    }

    /// Waits until the feed has applied `index`, at most until `until`. True when it has.
    pub async fn wait_fed(&self, index: u64, until: Instant) -> bool {
        let mut rx = self.fed.subscribe();
        let reached = rx.wait_for(|f| f.live && f.index >= index);
        let ok = matches!(tokio::time::timeout_at(until, reached).await, Ok(Ok(_)));
        ok
    }

    /// The feed reached `index` (a progress mark). The first mark of an epoch makes the shard
    /// live.
    pub fn progressed(&self, index: u64) {
        let known = {
            let mut inner = self.lock();
            inner.known_commit = inner.known_commit.max(index);
            // Every change the feed delivered so far is at or below this mark.
            inner.fed_commit_ms = inner.commit_ms;
            inner.known_commit
        };
        self.fed.send_modify(|f| {
            f.index = if f.live { f.index.max(index) } else { index };
            f.live = true;
        });
        debug_assert!(self.fed().index <= known);
    }

    /// A new epoch began (the feed restarted without a cursor): nothing is inserted until its
    /// first progress mark; fills in flight will be dropped.
    fn restart(&self) {
        self.fed.send_modify(|f| f.live = false);
    }

    /// Whether the feed has stayed behind what the cache knows was committed for `longer`.
    pub fn stuck(&self, longer: Duration) -> bool {
        let mut inner = self.lock();
        let fed = self.fed().index;
        if inner.behind.is_some_and(|(target, _)| fed >= target) {
            inner.behind = None;
        }
        if inner.behind.is_none() && fed < inner.known_commit {
            inner.behind = Some((inner.known_commit, Instant::now()));
        }
        inner
            .behind
            .is_some_and(|(_, since)| since.elapsed() >= longer)
    }

    /// A change the feed delivered (or a write through the cache acknowledged): the key's
    /// state from `index` on. Updates the entry when it is older; otherwise only records the
    /// change for a fill in flight.
    #[allow(clippy::too_many_arguments)]
    pub fn changed(
        &self,
        store: &Store,
        space: &Space,
        key: &[u8],
        index: u64,
        value: Option<Bytes>,
        commit_ms: u64,
        expires_ms: Option<u64>,
    ) {
        let mut inner = self.lock();
        inner.commit_ms = inner.commit_ms.max(commit_ms);
        inner.delivered = inner.delivered.max(index);
        if space.bugs.drop_invalidations {
            inner.known_commit = inner.known_commit.max(index);
            return;
        }
        let filling = inner.note_change(key, index);
        let epoch = space.epoch();
        match store.get(space.id, key) {
            Some(e) if e.epoch == epoch && e.since >= index => {}
            Some(e) if e.epoch == epoch => {
                // Updated in place: the entry keeps its TTL. It is the key's state from
                // `index` on, newer than any namespace bump before now, so it takes the
                // current namespace version.
                let mut updated = space.entry(value, index, commit_ms, expires_ms);
                updated.deadline = match updated.value {
                    Some(_) => e.deadline,
                    None => e.deadline.min(updated.deadline),
                };
                store.insert(space.id, key, updated);
            }
            // A read is fetching this key: the change is newer than what it will bring (which
            // will not be cached), so the change becomes the entry.
            None if filling && self.fed().live => {
                store.insert(
                    space.id,
                    key,
                    space.entry(value, index, commit_ms, expires_ms),
                );
            }
            Some(_) | None => {}
        }
    }

    /// A write through the cache was acknowledged at `index`: the entry becomes the written
    /// value (write-through) when the feed is live.
    pub fn wrote(
        &self,
        store: &Store,
        space: &Space,
        key: &[u8],
        index: u64,
        value: Option<Bytes>,
    ) {
        let mut inner = self.lock();
        inner.note_change(key, index);
        if let Some(e) = store.get(space.id, key) {
            if e.epoch == space.epoch() && e.since >= index {
                return;
            }
        }
        if !self.fed().live {
            store.remove(space.id, key);
            return;
        }
        store.insert(
            space.id,
            key,
            space.entry(value, index, inner.commit_ms, None),
        );
    }

    /// A write through the cache was acknowledged at `index` (read-through): the entry is
    /// dropped, and a fill in flight that read below `index` will not be cached.
    pub fn dropped(&self, store: &Store, space: &Space, key: &[u8], index: u64) {
        self.lock().note_change(key, index);
        store.remove(space.id, key);
    }

    /// Explicit invalidation of `key`: its entry is dropped and a fill in flight will not be
    /// cached. True when an entry was dropped.
    pub fn forget(&self, store: &Store, space: &Space, key: &[u8]) -> bool {
        let mut inner = self.lock();
        if let Some(slot) = inner.fills.get_mut(key) {
            slot.newest_change = u64::MAX;
        }
        let held = store.get(space.id, key).is_some();
        store.remove(space.id, key);
        held
    }

    /// Joins the fill of `key` in flight, or starts one that must read at least `need`.
    pub fn join_fill(&self, space: &Space, key: &[u8], need: u64) -> Fill {
        let mut inner = self.lock();
        if let Some(slot) = inner.fills.get(key) {
            return Fill::Wait(slot.done.subscribe());
        }
        // Every change the feed delivered so far — those its progress covers and those it
        // does not yet — must be in what the fill reads: the fill was not there to see them.
        let fed = self.fed();
        let seen = if fed.live {
            fed.index.max(inner.delivered)
        } else {
            0
        };
        let reads_at_least = need.max(seen);
        inner.fills.insert(
            key.to_vec(),
            Slot {
                newest_change: 0,
                epoch: space.epoch(),
                gen: space.generation(),
                reads_at_least,
                done: watch::channel(None).0,
            },
        );
        Fill::Fetch {
            need: reads_at_least,
        }
    }

    /// Ends the fill of `key`: caches what it read unless the feed delivered a newer change of
    /// the key meanwhile, the feed was not live, or the epoch changed (the stale-set race),
    /// then hands the result to every read waiting on it. True when it was cached.
    pub fn finish_fill(
        &self,
        store: &Store,
        space: &Space,
        key: &[u8],
        result: FillResult,
    ) -> bool {
        let mut inner = self.lock();
        let Some(slot) = inner.fills.remove(key) else {
            return false;
        };
        let mut cached = false;
        if let Ok(f) = result.as_ref() {
            let at = f.position.index.0;
            inner.known_commit = inner.known_commit.max(at);
            let fed = self.fed();
            let fresh = if space.bugs.keep_stale_fills {
                fed.live
            } else {
                slot.newest_change <= at
                    && at >= slot.reads_at_least
                    && fed.live
                    && slot.epoch == space.epoch()
                    && slot.gen >= space.floor(key)
            };
            if fresh {
                let ttl = if f.value.is_some() {
                    space.ttl()
                } else {
                    space.negative_ttl
                };
                store.insert(
                    space.id,
                    key,
                    Entry {
                        value: f.value.clone(),
                        version: f.version.unwrap_or(0),
                        since: at,
                        commit_ms: f.position.commit_ms,
                        expires_ms: f.expires_ms,
                        deadline: Instant::now() + ttl,
                        epoch: slot.epoch,
                        gen: slot.gen,
                    },
                );
                cached = true;
            }
        }
        drop(inner);
        let _ = slot.done.send(Some(result));
        cached
    }

    /// Records a freshness proof `(c, h)`.
    pub fn add_proof(&self, c: u64, h: Instant) {
        let mut inner = self.lock();
        inner.known_commit = inner.known_commit.max(c);
        let proofs = &mut inner.proofs;
        if proofs.iter().any(|&(c2, h2)| c2 <= c && h2 >= h) {
            return;
        }
        proofs.retain(|&(c2, h2)| !(c2 >= c && h2 <= h));
        let at = proofs.partition_point(|&(c2, _)| c2 < c);
        proofs.insert(at, (c, h));
        while proofs.len() > PROOFS_MAX {
            proofs.pop_front();
        }
    }

    /// The newest proof a state at `index` satisfies: when it was taken.
    pub fn proof_for(&self, index: u64) -> Option<Instant> {
        let inner = self.lock();
        let at = inner.proofs.partition_point(|&(c, _)| c <= index);
        at.checked_sub(1).map(|i| inner.proofs[i].1)
    }

    /// The watermark `judge` sees for a state at `index`, measured now.
    pub fn watermark(&self, index: u64) -> Option<Watermark> {
        let inner = self.lock();
        let at = inner.proofs.partition_point(|&(c, _)| c <= index);
        at.checked_sub(1).map(|i| {
            let (c, h) = inner.proofs[i];
            Watermark {
                index: LogIndex(c),
                age: h.elapsed(),
            }
        })
    }

    pub fn known_commit(&self) -> u64 {
        self.lock().known_commit
    }

    /// Commit time (ms) of the newest change at or below the feed's position.
    pub fn fed_commit_ms(&self) -> u64 {
        self.lock().fed_commit_ms
    }

    /// The shard's read index from a probe **sent after `started`**, so it is as good as the
    /// read's own (coalesced: one probe in flight per shard; reads that arrive during it share
    /// the next one). Probes run in their own task: a read that gives up does not strand the
    /// others.
    pub async fn probe(
        self: &Arc<Self>,
        upstream: &Arc<Upstream>,
        ks: &Arc<str>,
        started: Instant,
        deadline: Instant,
    ) -> Result<u64, TunekvError> {
        loop {
            let mut rx = {
                let mut inner = self.lock();
                if let Some((ri, sent)) = inner.probes.last {
                    if sent >= started {
                        return Ok(ri);
                    }
                }
                match &inner.probes.in_flight {
                    Some(rx) => rx.clone(),
                    None => {
                        let (tx, rx) = watch::channel(false);
                        inner.probes.in_flight = Some(rx.clone());
                        let (me, up, ks) = (self.clone(), upstream.clone(), ks.clone());
                        tokio::spawn(async move { me.run_probe(&up, &ks, deadline, tx).await });
                        rx
                    }
                }
            };
            let done = rx.wait_for(|d| *d);
            if tokio::time::timeout_at(deadline, done).await.is_err() {
                return Err(TunekvError::new(
                    Code::Timeout,
                    format!(
                        "no read index for shard {} within the wait budget",
                        self.shard
                    ),
                ));
            }
            // A probe sent after this read began failed: that is this read's answer.
            if let Some((e, sent)) = &self.lock().probes.last_error {
                if *sent >= started {
                    return Err(e.clone());
                }
            }
        }
    }

    async fn run_probe(&self, up: &Upstream, ks: &str, deadline: Instant, tx: watch::Sender<bool>) {
        let sent = Instant::now();
        let r = up.read_index(ks, self.shard.0, deadline).await;
        {
            let mut inner = self.lock();
            inner.probes.in_flight = None;
            match &r {
                Ok(ri) => {
                    inner.probes.last = Some((*ri, sent));
                    inner.probes.last_error = None;
                }
                Err(e) => inner.probes.last_error = Some((e.clone(), sent)),
            }
        }
        if let Ok(ri) = r {
            self.add_proof(ri, sent);
        }
        let _ = tx.send(true);
    }
}

/// Faults a test may inject into the cache (docs/cache.md, "Proving it").
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CacheBugs {
    /// Insert every fill, even one the feed overtook (the stale-set race).
    pub keep_stale_fills: bool,
    /// Serve session-level hits without checking the token's mark.
    pub ignore_session: bool,
    /// Ignore the feed's changes (entries keep their old values until their TTL).
    pub drop_invalidations: bool,
    /// Check callers' rights with the prefixes of their permissions ignored (a prefix user
    /// reads and writes its whole keyspace through the cache).
    pub ignore_caller_prefix: bool,
}

/// One cached keyspace.
pub struct Space {
    pub name: Arc<str>,
    pub id: u64,
    pub spec: KeyspaceSpec,
    pub shards: Vec<Arc<ShardCopy>>,
    epoch: AtomicU64,
    pub ttl: Duration,
    pub ttl_jitter_pct: u32,
    pub negative_ttl: Duration,
    pub strategy: crate::config::Strategy,
    pub bugs: CacheBugs,
    namespaces: std::sync::RwLock<Namespaces>,
}

/// Most prefixes with their own namespace version; past it, every entry's is bumped.
pub const NAMESPACES_MAX: usize = 1024;

/// Namespace versions (versioned keys): bumping a prefix makes every entry under it that was
/// filled before the bump unreachable, in O(1), without touching the entries.
#[derive(Default)]
struct Namespaces {
    /// The keyspace's namespace version: every bump takes the next one.
    gen: u64,
    /// (prefix, the version of its last bump); no prefix is a prefix of another.
    bumps: Vec<(Vec<u8>, u64)>,
}

impl Space {
    pub fn new(
        name: &str,
        id: u64,
        spec: KeyspaceSpec,
        config: &crate::config::CacheConfig,
        bugs: CacheBugs,
    ) -> Space {
        let ks = config.keyspace(name);
        let shards = if spec.mode == tunekv_core::Mode::Ordered {
            (0..spec.shards)
                .map(|s| Arc::new(ShardCopy::new(id, s)))
                .collect()
        } else {
            Vec::new()
        };
        Space {
            name: name.into(),
            id,
            spec,
            shards,
            epoch: AtomicU64::new(0),
            ttl: Duration::from_millis(ks.ttl_ms.unwrap_or(config.ttl_ms)),
            ttl_jitter_pct: config.ttl_jitter_pct,
            negative_ttl: Duration::from_millis(config.negative_ttl_ms),
            strategy: ks.strategy,
            bugs,
            namespaces: Default::default(),
        }
    }

    /// The current namespace version (an entry filled now carries it).
    pub fn generation(&self) -> u64 {
        self.namespaces
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .gen
    }

    /// The version an entry of `key` needs to be reachable: the last bump of a prefix of it.
    pub fn floor(&self, key: &[u8]) -> u64 {
        let ns = self.namespaces.read().unwrap_or_else(|p| p.into_inner());
        ns.bumps
            .iter()
            .filter(|(p, _)| key.starts_with(p))
            .map(|(_, g)| *g)
            .max()
            .unwrap_or(0)
    }

    /// Bumps the namespace version of `prefix` (empty: every key): every entry under it filled
    /// before becomes unreachable. Returns the new version.
    pub fn bump(&self, prefix: &[u8]) -> u64 {
        let mut ns = self.namespaces.write().unwrap_or_else(|p| p.into_inner());
        ns.gen += 1;
        let gen = ns.gen;
        // A bump of `prefix` covers every longer prefix under it.
        ns.bumps.retain(|(p, _)| !p.starts_with(prefix));
        if ns.bumps.len() >= NAMESPACES_MAX {
            // Over-invalidating is safe: every entry is bumped.
            ns.bumps.clear();
            ns.bumps.push((Vec::new(), gen));
        } else {
            ns.bumps.push((prefix.to_vec(), gen));
        }
        gen
    }

    pub fn namespaces(&self) -> usize {
        self.namespaces
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .bumps
            .len()
    }

    pub fn epoch(&self) -> u64 {
        self.epoch.load(Ordering::SeqCst)
    }

    /// The feed restarts without a cursor: every entry of the old epoch becomes unreachable
    /// (changes between the two watches are unknown) and fills in flight will not be cached.
    pub fn new_epoch(&self) {
        for s in &self.shards {
            let _inner = s.lock();
            s.restart();
        }
        self.epoch.fetch_add(1, Ordering::SeqCst);
    }

    /// A new entry of this epoch and namespace version: the key's state at `since` (`None`:
    /// absent), with a fresh TTL (the negative TTL for an absence).
    pub fn entry(
        &self,
        value: Option<Bytes>,
        since: u64,
        commit_ms: u64,
        expires_ms: Option<u64>,
    ) -> Entry {
        let ttl = if value.is_some() {
            self.ttl()
        } else {
            self.negative_ttl
        };
        Entry {
            version: if value.is_some() { since } else { 0 },
            value,
            since,
            commit_ms,
            expires_ms,
            deadline: Instant::now() + ttl,
            epoch: self.epoch(),
            gen: self.generation(),
        }
    }

    /// A TTL for a new entry: `ttl` spread by ± `ttl_jitter_pct`.
    pub fn ttl(&self) -> Duration {
        let spread = self.ttl.as_millis() as u64 * u64::from(self.ttl_jitter_pct) / 100;
        if spread == 0 {
            return self.ttl;
        }
        let ms = self.ttl.as_millis() as u64 - spread + rand::random::<u64>() % (2 * spread + 1);
        Duration::from_millis(ms.max(1))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::CacheConfig;
    use tunekv_core::{Position, Staleness};

    fn space(bugs: CacheBugs) -> Space {
        let spec: KeyspaceSpec = serde_json::from_value(serde_json::json!({"shards": 1})).unwrap();
        Space::new("ks", 7, spec.normalized(), &CacheConfig::default(), bugs)
    }

    fn fetched(value: &str, index: u64) -> FillResult {
        Arc::new(Ok(Fetched {
            value: Some(Bytes::copy_from_slice(value.as_bytes())),
            version: Some(index),
            expires_ms: None,
            position: Position {
                shard: ShardId(0),
                index: LogIndex(index),
                commit_ms: 0,
            },
            staleness: Staleness::ZERO,
            quorum: None,
            session: String::new(),
        }))
    }

    fn cached(store: &Store, key: &[u8]) -> Option<(String, u64)> {
        store.get(7, key).map(|e| {
            let v = e
                .value
                .as_deref()
                .map(|v| String::from_utf8_lossy(v).into_owned());
            (v.unwrap_or_default(), e.since)
        })
    }

    /// The memcache stale-set race: a fill reads v1 at 10, the feed delivers v2 at 11 before
    /// the fill ends. The fill must not overwrite v2 with v1.
    #[test]
    fn a_fill_the_feed_overtook_is_not_cached() {
        let (store, sp) = (Store::new(1 << 20), space(CacheBugs::default()));
        let copy = &sp.shards[0];
        copy.progressed(9);
        let Fill::Fetch { need } = copy.join_fill(&sp, b"k", 0) else {
            panic!("first read fetches")
        };
        assert_eq!(need, 9, "a fill reads no older than the feed");
        // A change delivered before its progress mark: a fill that starts after it must read
        // at least its index (a verify run under faults found this one).
        copy.changed(&store, &sp, b"other", 10, None, 0, None);
        let Fill::Fetch { need } = copy.join_fill(&sp, b"x", 0) else {
            panic!()
        };
        assert_eq!(need, 10, "a fill reads every change the feed delivered");
        assert!(
            matches!(copy.join_fill(&sp, b"k", 0), Fill::Wait(_)),
            "the second read waits"
        );
        copy.changed(
            &store,
            &sp,
            b"k",
            11,
            Some(Bytes::from_static(b"v2")),
            0,
            None,
        );
        assert!(!copy.finish_fill(&store, &sp, b"k", fetched("v1", 10)));
        assert_eq!(
            cached(&store, b"k"),
            Some(("v2".into(), 11)),
            "the change, not the fill"
        );
        // A change older than the entry does not roll it back (a resumed feed repeats some).
        copy.changed(
            &store,
            &sp,
            b"k",
            10,
            Some(Bytes::from_static(b"v1")),
            0,
            None,
        );
        assert_eq!(cached(&store, b"k"), Some(("v2".into(), 11)));
        // A fill that read at or after every change is cached.
        let Fill::Fetch { .. } = copy.join_fill(&sp, b"j", 0) else {
            panic!()
        };
        copy.changed(
            &store,
            &sp,
            b"j",
            12,
            Some(Bytes::from_static(b"old")),
            0,
            None,
        );
        assert!(copy.finish_fill(&store, &sp, b"j", fetched("new", 13)));
        assert_eq!(cached(&store, b"j"), Some(("new".into(), 13)));
    }

    #[test]
    fn the_injected_bug_keeps_the_stale_fill() {
        let bugs = CacheBugs {
            keep_stale_fills: true,
            ..CacheBugs::default()
        };
        let (store, sp) = (Store::new(1 << 20), space(bugs));
        let copy = &sp.shards[0];
        copy.progressed(9);
        let Fill::Fetch { .. } = copy.join_fill(&sp, b"k", 0) else {
            panic!()
        };
        copy.changed(
            &store,
            &sp,
            b"k",
            11,
            Some(Bytes::from_static(b"v2")),
            0,
            None,
        );
        assert!(copy.finish_fill(&store, &sp, b"k", fetched("v1", 10)));
        assert_eq!(
            cached(&store, b"k"),
            Some(("v1".into(), 10)),
            "stale: what the bug does"
        );
    }

    #[test]
    fn nothing_is_cached_before_the_feed_is_live_or_across_epochs() {
        let (store, sp) = (Store::new(1 << 20), space(CacheBugs::default()));
        let copy = &sp.shards[0];
        let Fill::Fetch { .. } = copy.join_fill(&sp, b"k", 0) else {
            panic!()
        };
        assert!(
            !copy.finish_fill(&store, &sp, b"k", fetched("v", 5)),
            "feed not live"
        );
        copy.progressed(5);
        let Fill::Fetch { .. } = copy.join_fill(&sp, b"k", 0) else {
            panic!()
        };
        sp.new_epoch();
        copy.progressed(6);
        assert!(
            !copy.finish_fill(&store, &sp, b"k", fetched("v", 6)),
            "epoch changed"
        );
        assert_eq!(cached(&store, b"k"), None);
    }

    #[test]
    fn a_namespace_bump_makes_older_entries_and_fills_under_it_unreachable() {
        let (store, sp) = (Store::new(1 << 20), space(CacheBugs::default()));
        let copy = &sp.shards[0];
        copy.progressed(5);
        assert_eq!(sp.floor(b"user:1"), 0);
        let Fill::Fetch { .. } = copy.join_fill(&sp, b"user:1", 0) else {
            panic!()
        };
        let g = sp.bump(b"user:");
        assert_eq!(sp.floor(b"user:1"), g);
        assert_eq!(sp.floor(b"order:1"), 0, "other prefixes keep theirs");
        assert!(
            !copy.finish_fill(&store, &sp, b"user:1", fetched("v", 6)),
            "a fill started before the bump is not cached"
        );
        let Fill::Fetch { .. } = copy.join_fill(&sp, b"user:1", 0) else {
            panic!()
        };
        assert!(copy.finish_fill(&store, &sp, b"user:1", fetched("v", 6)));
        assert_eq!(store.get(7, b"user:1").unwrap().gen, g);
        // A shorter prefix replaces the longer ones under it; the whole keyspace too.
        let all = sp.bump(b"");
        assert_eq!(sp.namespaces(), 1);
        assert_eq!(sp.floor(b"user:1"), all);
        assert_eq!(sp.floor(b"order:1"), all);
        // Bounded: past NAMESPACES_MAX prefixes, everything is bumped at once.
        for i in 0..NAMESPACES_MAX + 1 {
            sp.bump(format!("p{i}:").as_bytes());
        }
        assert!(sp.namespaces() <= NAMESPACES_MAX);
        assert!(sp.floor(b"anything") > all, "everything was bumped again");
    }

    #[test]
    fn an_invalidated_key_in_flight_is_not_cached() {
        let (store, sp) = (Store::new(1 << 20), space(CacheBugs::default()));
        let copy = &sp.shards[0];
        copy.progressed(5);
        let Fill::Fetch { .. } = copy.join_fill(&sp, b"k", 0) else {
            panic!()
        };
        assert!(!copy.forget(&store, &sp, b"k"));
        assert!(!copy.finish_fill(&store, &sp, b"k", fetched("v", 6)));
        let Fill::Fetch { .. } = copy.join_fill(&sp, b"k", 0) else {
            panic!()
        };
        assert!(copy.finish_fill(&store, &sp, b"k", fetched("v", 6)));
        assert!(copy.forget(&store, &sp, b"k"));
        assert_eq!(cached(&store, b"k"), None);
    }

    /// A feed that keeps reaching the commits it was behind is not stuck, however busy the
    /// shard; one that stops moving is, after the given time.
    #[tokio::test]
    async fn a_feed_is_stuck_only_when_it_stops_reaching_known_commits() {
        let sp = space(CacheBugs::default());
        let copy = &sp.shards[0];
        let patience = Duration::from_millis(200);
        copy.progressed(10);
        for step in 1..=20u64 {
            // A probe learned a newer commit; the feed catches up a moment later. The feed is
            // behind the newest commit for the whole 400 ms, never for 200 ms on one target.
            copy.add_proof(10 + 5 * step, Instant::now());
            assert!(!copy.stuck(patience), "step {step}");
            tokio::time::sleep(Duration::from_millis(20)).await;
            copy.progressed(10 + 5 * (step - 1) + 1);
        }
        copy.progressed(110);
        copy.add_proof(200, Instant::now());
        assert!(!copy.stuck(patience));
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(copy.stuck(patience), "the feed stayed below 200 for 300 ms");
        copy.progressed(200);
        assert!(!copy.stuck(patience));
    }

    #[test]
    fn proofs_keep_the_newest_for_each_index() {
        let sp = space(CacheBugs::default());
        let copy = &sp.shards[0];
        let t0 = Instant::now();
        copy.add_proof(10, t0);
        copy.add_proof(5, t0 - Duration::from_secs(1));
        copy.add_proof(12, t0 + Duration::from_millis(5));
        // Dominated: an older proof of a higher index.
        copy.add_proof(20, t0 - Duration::from_secs(2));
        assert_eq!(copy.proof_for(4), None);
        assert_eq!(copy.proof_for(5), Some(t0 - Duration::from_secs(1)));
        assert_eq!(copy.proof_for(11), Some(t0));
        assert_eq!(copy.proof_for(30), Some(t0 + Duration::from_millis(5)));
    }
}
