//! [`Cache`]: the read path (requirement → `judge` → probe / wait for the feed / serve from
//! memory / fill from the store) and writes through the cache. Front ends (`http.rs`) call
//! it with parsed requests; it knows nothing about HTTP.

use crate::auth::Auth;
use crate::config::{CacheConfig, Strategy};
use crate::copy::{CacheBugs, Fill, FillResult, ShardCopy, Space};
use crate::queue::{Pending, Queue};
use crate::store::{Entry, Store};
use crate::upstream::{Fetched, Upstream};
use bytes::Bytes;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::OnceCell;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tunekv_client::{Opts, WriteReply};
use tunekv_core::keyspace::shard_for_key;
use tunekv_core::limits::KEY_BYTES_MAX;
use tunekv_core::{
    judge, Code, CopyState, KeyspaceSpec, Level, LogIndex, Mode, Position, Requirement, Session,
    SessionKey, Staleness, TunekvError, Verdict,
};

/// The longest wait budget a request may ask for.
pub const WAIT_MS_CAP: u64 = 60_000;

/// How a read was answered (`tunekv-cache`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Served {
    /// From memory.
    Hit,
    /// This read fetched from the store.
    Miss,
    /// This read waited for another read's fetch of the same key and used its answer.
    Coalesced,
}

impl Served {
    pub fn as_str(self) -> &'static str {
        match self {
            Served::Hit => "hit",
            Served::Miss => "miss",
            Served::Coalesced => "coalesced",
        }
    }
}

/// A read's answer and its receipt.
#[derive(Clone, Debug)]
pub struct Answer {
    pub value: Option<Bytes>,
    pub version: Option<u64>,
    pub expires_ms: Option<u64>,
    pub level: Level,
    pub position: Position,
    pub staleness: Staleness,
    pub served: Served,
    /// Leaderless keyspaces (read through): the node's quorum receipt.
    pub quorum: Option<String>,
    /// The session token to return (`None`: the session as updated by the read).
    pub token: Option<String>,
    /// A write-behind write of the key is still waiting for the store: the answer is what the
    /// store holds, and a newer value is pending.
    pub pending: bool,
}

/// What a write through the cache did.
#[derive(Clone, Debug)]
pub enum Written {
    /// The store acknowledged it (read-through, write-through).
    Stored(Box<WriteReply>),
    /// Write-behind: queued at `seq` (synced to the queue's log when it has one); the store
    /// does not have it yet.
    Queued { seq: u64, durable: bool },
}

/// A failed read, and how far it got.
#[derive(Clone, Debug)]
pub struct Refused {
    pub error: TunekvError,
    pub served: Served,
}

impl From<TunekvError> for Refused {
    fn from(error: TunekvError) -> Self {
        Refused {
            error,
            served: Served::Miss,
        }
    }
}

#[derive(Default)]
pub struct Stats {
    pub hits: AtomicU64,
    pub misses: AtomicU64,
    pub coalesced: AtomicU64,
    /// Fills not cached because the feed delivered a newer change meanwhile.
    pub stale_fills_dropped: AtomicU64,
    /// Write-behind writes the store acknowledged.
    pub flushed: AtomicU64,
}

pub struct Cache {
    pub config: CacheConfig,
    pub store: Arc<Store>,
    pub upstream: Arc<Upstream>,
    /// The cache's own login, and what callers may do.
    pub auth: Arc<Auth>,
    pub key: SessionKey,
    pub stats: Stats,
    pub bugs: CacheBugs,
    /// Whether `POST /v1/admin/faults` may cut the cache off (tests only).
    pub faults_enabled: bool,
    /// The write-behind queue (when a keyspace is `write_behind`).
    pub queue: Option<Arc<Queue>>,
    /// Where warming stands.
    pub warming: crate::warm::Warming,
    /// Requests, served staleness and connections (`GET /metrics`; `crate::metrics` adds
    /// the cache's own counters at each scrape).
    pub metrics: tunekv_node::metrics::Metrics,
    spaces: Mutex<HashMap<String, Arc<OnceCell<Arc<Space>>>>>,
    stop: CancellationToken,
    started: Instant,
}

fn err(code: Code, message: impl Into<String>) -> TunekvError {
    TunekvError::new(code, message)
}

impl Cache {
    pub fn new(
        config: CacheConfig,
        bugs: CacheBugs,
        faults_enabled: bool,
    ) -> Result<Arc<Cache>, String> {
        Cache::with_nodes(config, bugs, faults_enabled, None)
    }

    /// A cache in front of `nodes` (the simulator's), or of `config.upstream` over HTTP.
    pub fn with_nodes(
        config: CacheConfig,
        bugs: CacheBugs,
        faults_enabled: bool,
        nodes: Option<Vec<Arc<dyn crate::node_api::NodeApi>>>,
    ) -> Result<Arc<Cache>, String> {
        config.validate()?;
        let key = SessionKey::new(config.cluster_secret.as_bytes())?;
        let ca = match config.tls.as_ref().map(|t| &t.ca) {
            Some(path) => {
                Some(std::fs::read(path).map_err(|e| format!("tls.ca {}: {e}", path.display()))?)
            }
            None => None,
        };
        let (upstream, auth) = match nodes {
            Some(nodes) => {
                if config.auth.is_some() {
                    return Err("the simulated cluster has no auth: remove [auth]".into());
                }
                (
                    Upstream::with_nodes(nodes, key.clone()),
                    Auth::new(None, Vec::new())?,
                )
            }
            None => {
                let auth = Auth::new(
                    config.auth.as_ref(),
                    crate::upstream::node_clients(&config.upstream, ca.as_deref()),
                )?
                .with_ignored_prefixes(bugs.ignore_caller_prefix);
                let upstream =
                    Upstream::new(&config.upstream, key.clone(), ca.as_deref(), auth.slot());
                (upstream, auth)
            }
        };
        let behind = config
            .keyspaces
            .values()
            .any(|k| k.strategy == Strategy::WriteBehind);
        let queue = match (&config.write_behind_dir, behind) {
            (_, false) => None,
            (Some(dir), true) => Some(
                Queue::durable(std::path::Path::new(dir), config.write_behind_bytes_max)
                    .map_err(|e| format!("cannot open the write-behind log in {dir}: {e}"))?,
            ),
            (None, true) => Some(Queue::in_memory(config.write_behind_bytes_max)),
        };
        Ok(Arc::new(Cache {
            store: Arc::new(Store::new(config.memory_bytes)),
            upstream: Arc::new(upstream),
            auth: Arc::new(auth),
            key,
            stats: Stats::default(),
            metrics: tunekv_node::metrics::Metrics::for_role(tunekv_node::metrics::Role::FrontEnd),
            bugs,
            faults_enabled,
            queue,
            warming: Default::default(),
            spaces: Mutex::new(HashMap::new()),
            stop: CancellationToken::new(),
            started: Instant::now(),
            config,
        }))
    }

    pub fn shutdown(&self) {
        self.stop.cancel();
    }

    pub fn uptime(&self) -> Duration {
        self.started.elapsed()
    }

    /// The keyspaces loaded so far.
    pub fn spaces(&self) -> Vec<Arc<Space>> {
        let cells: Vec<_> = self
            .spaces
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .cloned()
            .collect();
        cells.iter().filter_map(|c| c.get().cloned()).collect()
    }

    /// The keyspace, loaded from the store on first use (once, however many reads ask at
    /// once), with its feed started.
    pub async fn space(
        self: &Arc<Self>,
        ks: &str,
        deadline: Instant,
    ) -> Result<Arc<Space>, TunekvError> {
        let cell = self
            .spaces
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(ks.to_string())
            .or_default()
            .clone();
        let space = cell
            .get_or_try_init(|| async {
                let info = self.upstream.keyspace(ks, deadline).await?;
                let id = info["id"].as_u64().ok_or_else(|| {
                    err(
                        Code::Internal,
                        format!("keyspace {ks:?} came without an id: {info}"),
                    )
                })?;
                let mut fields = info.clone();
                if let Some(o) = fields.as_object_mut() {
                    o.remove("id");
                    o.remove("name");
                }
                let spec: KeyspaceSpec = serde_json::from_value(fields).map_err(|e| {
                    err(
                        Code::Internal,
                        format!("keyspace {ks:?}: unreadable spec {info}: {e}"),
                    )
                })?;
                let space = Arc::new(Space::new(ks, id, spec, &self.config, self.bugs));
                if space.spec.mode == Mode::Ordered {
                    tokio::spawn(crate::feed::follow(
                        space.clone(),
                        self.store.clone(),
                        self.upstream.clone(),
                        Duration::from_millis(self.config.feed_lag_switch_ms),
                        self.stop.clone(),
                    ));
                }
                Ok::<_, TunekvError>(space)
            })
            .await?;
        Ok(space.clone())
    }

    /// Creates numbered database `name` (`dbN`) when the cluster does not have it yet, as a
    /// node does for a RESP client: 4 shards, up to 3 replicas, default level strong.
    pub async fn numbered_db(&self, name: &str, deadline: Instant) -> Result<(), TunekvError> {
        match self.upstream.keyspace(name, deadline).await {
            Ok(_) => Ok(()),
            Err(e) if e.code == Code::KeyspaceNotFound => {
                let replicas = self.upstream.node_count().min(3);
                let spec = serde_json::json!({ "replicas": replicas });
                self.upstream.create_keyspace(name, &spec, deadline).await
            }
            Err(e) => Err(e),
        }
    }

    /// Explicit invalidation: drops `keys`' entries (fills in flight are not cached). Returns
    /// how many entries were dropped.
    pub async fn invalidate_keys(
        self: &Arc<Self>,
        ks: &str,
        keys: &[Vec<u8>],
    ) -> Result<u64, TunekvError> {
        let deadline = Instant::now() + Duration::from_millis(self.config.wait_ms_default);
        let space = self.space(ks, deadline).await?;
        if space.spec.mode != Mode::Ordered {
            return Ok(0);
        }
        let mut dropped = 0;
        for key in keys {
            let copy = &space.shards[shard_for_key(key, space.spec.shards).0 as usize];
            dropped += u64::from(copy.forget(&self.store, &space, key));
        }
        Ok(dropped)
    }

    /// Versioned keys: bumps the namespace version of `prefix` (empty: the whole keyspace), so
    /// every entry under it filled before is unreachable. Returns the new version.
    pub async fn invalidate_prefix(
        self: &Arc<Self>,
        ks: &str,
        prefix: &[u8],
    ) -> Result<u64, TunekvError> {
        let deadline = Instant::now() + Duration::from_millis(self.config.wait_ms_default);
        Ok(self.space(ks, deadline).await?.bump(prefix))
    }

    /// Cancelled when the cache shuts down.
    pub fn stop_token(&self) -> CancellationToken {
        self.stop.clone()
    }

    fn deadline(&self, started: Instant, wait: Option<Duration>) -> Instant {
        let budget = wait
            .unwrap_or(Duration::from_millis(self.config.wait_ms_default))
            .min(Duration::from_millis(WAIT_MS_CAP));
        started + budget
    }

    /// Reads `key` at `level` (default: the keyspace's) for `session`, from memory when the
    /// cache's position satisfies the level, else from the store.
    pub async fn get(
        self: &Arc<Self>,
        ks: &str,
        key: &[u8],
        level: Option<Level>,
        wait: Option<Duration>,
        session: &mut Session,
    ) -> Result<Answer, Refused> {
        let read = self.read(ks, key, level, wait, session).await;
        match &read {
            Ok(a) => self.metrics.served(ks, a.level, a.staleness),
            Err(r) => {
                if let Some(l) = level.or_else(|| self.default_level_of(ks)) {
                    self.metrics.refused(ks, l, r.error.code);
                }
            }
        }
        let mut answer = read?;
        answer.pending = self.queue.as_ref().is_some_and(|q| q.holds(ks, key));
        Ok(answer)
    }

    /// The default read level of keyspace `ks` if it is loaded (for metrics labels).
    pub fn default_level_of(&self, ks: &str) -> Option<Level> {
        let cell = self
            .spaces
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(ks)
            .cloned()?;
        cell.get().map(|s| s.spec.default_level())
    }

    async fn read(
        self: &Arc<Self>,
        ks: &str,
        key: &[u8],
        level: Option<Level>,
        wait: Option<Duration>,
        session: &mut Session,
    ) -> Result<Answer, Refused> {
        let started = Instant::now();
        let deadline = self.deadline(started, wait);
        if key.is_empty() || key.len() > KEY_BYTES_MAX {
            return Err(err(Code::KeyInvalid, "a key is 1 to 1024 bytes").into());
        }
        let space = self.space(ks, deadline).await?;
        let level = level.unwrap_or_else(|| space.spec.default_level());
        space.spec.mode.admits(level)?;
        if space.spec.mode != Mode::Ordered {
            return self
                .read_through(&space, key, level, session, deadline)
                .await;
        }
        let copy = space.shards[shard_for_key(key, space.spec.shards).0 as usize].clone();
        session.admit(copy.group)?;
        let mark = if self.bugs.ignore_session {
            tunekv_core::Mark::default()
        } else {
            session.mark(copy.group)
        };
        let mut req = Requirement::for_level(level, mark)?;
        let mut waited = false;
        let mut probed = None;
        loop {
            // F first, then the entry: a change the feed applied before F moved is in it.
            let fed = copy.fed();
            let entry = if fed.live {
                self.live_entry(&space, key)
            } else {
                None
            };
            let applied = entry.as_ref().map_or(fed.index, |e| e.since.max(fed.index));
            let state = CopyState {
                applied: Position {
                    shard: copy.shard,
                    index: LogIndex(applied),
                    commit_ms: 0,
                },
                known_commit: LogIndex(copy.known_commit().max(applied)),
                is_leader: false,
                contact_age: None,
                watermark: copy.watermark(applied),
            };
            match judge(&state, &req, started.elapsed()) {
                Verdict::Serve => {
                    if let Some(e) = entry {
                        return Ok(self.hit(&copy, &e, applied, probed, level, started, session));
                    }
                    // The state `judge` accepted was at `applied`: any state at or above it
                    // serves this read, none below does (a bounded(t) read was accepted by a
                    // proof at or below it) — also for a read that uses another's fill.
                    let need = applied;
                    let at = Reading {
                        level,
                        probed,
                        started,
                        deadline,
                    };
                    return self.fill(&space, &copy, key, need, at, session).await;
                }
                Verdict::Probe => {
                    let ri = copy
                        .probe(&self.upstream, &space.name, started, deadline)
                        .await
                        .map_err(|e| retyped(e, req, level))?;
                    probed = Some(ri);
                    req = req.after_probe(LogIndex(ri));
                }
                Verdict::Wait(i) => {
                    let feed_wait =
                        Instant::now() + Duration::from_millis(self.config.feed_wait_ms);
                    if !waited && copy.wait_fed(i.0, feed_wait.min(deadline)).await {
                        waited = true;
                        continue;
                    }
                    // The feed is behind what this read needs: ask the store. If the store
                    // cannot be reached either, the level is unmet (never served older).
                    let at = Reading {
                        level,
                        probed,
                        started,
                        deadline,
                    };
                    return self
                        .fill(&space, &copy, key, i.0, at, session)
                        .await
                        .map_err(|r| match r.error.code {
                            Code::Unavailable | Code::NoQuorum => Refused {
                                error: TunekvError::new(req.unmet_code(level), r.error.message),
                                served: r.served,
                            },
                            _ => r,
                        });
                }
                Verdict::Refuse(e) => return Err(e.into()),
            }
        }
    }

    /// The key's entry if it may be served now: this epoch, within its TTL, and its value not
    /// about to expire.
    fn live_entry(&self, space: &Space, key: &[u8]) -> Option<Arc<Entry>> {
        let e = self.store.get(space.id, key)?;
        if e.epoch != space.epoch() || Instant::now() >= e.deadline || e.gen < space.floor(key) {
            return None;
        }
        if let Some(at) = e.expires_ms {
            let now = unix_ms();
            if at <= now.saturating_add(self.config.expiry_margin_ms) {
                return None;
            }
        }
        Some(e)
    }

    #[allow(clippy::too_many_arguments)]
    fn hit(
        &self,
        copy: &ShardCopy,
        e: &Entry,
        applied: u64,
        probed: Option<u64>,
        level: Level,
        started: Instant,
        session: &mut Session,
    ) -> Answer {
        self.stats.hits.fetch_add(1, Ordering::Relaxed);
        session.read(copy.group, LogIndex(applied));
        Answer {
            value: e.value.clone(),
            version: e.value.as_ref().map(|_| e.version),
            expires_ms: e.expires_ms,
            level,
            position: Position {
                shard: copy.shard,
                index: LogIndex(applied),
                commit_ms: e.commit_ms.max(copy.fed_commit_ms()),
            },
            staleness: self.staleness(copy, applied, probed, started, None),
            served: Served::Hit,
            quorum: None,
            token: None,
            pending: false,
        }
    }

    /// How far a state at `index` is behind: committed entries beyond it (the read's own read
    /// index if it probed, else the newest commit the cache knows), and the age at the read's
    /// start of the newest freshness proof it satisfies (`u64::MAX`: none), or the store's own
    /// receipt when that is better.
    fn staleness(
        &self,
        copy: &ShardCopy,
        index: u64,
        probed: Option<u64>,
        started: Instant,
        upstream: Option<Staleness>,
    ) -> Staleness {
        let age = copy
            .proof_for(index)
            .map(|h| started.saturating_duration_since(h));
        let newest = probed.unwrap_or_else(|| copy.known_commit());
        let mine = Staleness::proven(newest.saturating_sub(index), age);
        match upstream {
            Some(s) => Staleness {
                entries: mine.entries.min(s.entries),
                ms: mine.ms.min(s.ms),
            },
            None => mine,
        }
    }

    /// Fetches `key` from the store at a state no older than `need` (and than the feed),
    /// coalesced with every other read of the key: one upstream read, whose answer each
    /// waiting read uses when it is new enough for it.
    async fn fill(
        self: &Arc<Self>,
        space: &Arc<Space>,
        copy: &Arc<ShardCopy>,
        key: &[u8],
        need: u64,
        at: Reading,
        session: &mut Session,
    ) -> Result<Answer, Refused> {
        let Reading { deadline, .. } = at;
        loop {
            let mut rx = match copy.join_fill(space, key, need) {
                Fill::Fetch { need } => {
                    let (me, sp, cp, k) = (self.clone(), space.clone(), copy.clone(), key.to_vec());
                    let (tx, rx) = tokio::sync::oneshot::channel();
                    // Its own task: a read that gives up does not strand those waiting on it.
                    tokio::spawn(async move {
                        let sent = Instant::now();
                        let r: FillResult = Arc::new(
                            me.upstream
                                .fill(&sp.name, &k, cp.group, need, deadline)
                                .await,
                        );
                        if let Ok(f) = r.as_ref() {
                            // The node's receipt is a freshness proof on this clock too: its
                            // read began after `sent` (allowing 0.1 % clock-rate drift).
                            if let Some(h) = proof_time(sent, f.staleness.ms) {
                                cp.add_proof(f.position.index.0, h);
                            }
                        }
                        if cp.finish_fill(&me.store, &sp, &k, r.clone()) {
                            tracing::trace!("filled");
                        } else if r.is_ok() {
                            me.stats.stale_fills_dropped.fetch_add(1, Ordering::Relaxed);
                        }
                        let _ = tx.send(r);
                    });
                    let r = rx
                        .await
                        .map_err(|_| err(Code::Internal, "a fill task ended"))?;
                    self.stats.misses.fetch_add(1, Ordering::Relaxed);
                    return self.answer_fill(copy, &r, &at, Served::Miss, session);
                }
                Fill::Wait(rx) => rx,
            };
            let served = Served::Coalesced;
            let got = tokio::time::timeout_at(deadline, rx.wait_for(|r| r.is_some())).await;
            let r = match got {
                Ok(Ok(r)) => r.clone(),
                _ => {
                    return Err(Refused {
                        error: err(
                            Code::Timeout,
                            "the store's answer did not come within the wait budget",
                        ),
                        served,
                    })
                }
            };
            let Some(r) = r else { continue };
            match r.as_ref() {
                Ok(f) if f.position.index.0 >= need => {
                    self.stats.coalesced.fetch_add(1, Ordering::Relaxed);
                    return self.answer_fill(copy, &r, &at, Served::Coalesced, session);
                }
                // Read before this read's requirement: fetch again (rare: the requirement rose
                // while that fetch was in flight).
                Ok(_) => continue,
                Err(e) => {
                    return Err(Refused {
                        error: e.clone(),
                        served,
                    })
                }
            }
        }
    }

    fn answer_fill(
        &self,
        copy: &ShardCopy,
        r: &FillResult,
        at: &Reading,
        served: Served,
        session: &mut Session,
    ) -> Result<Answer, Refused> {
        let f = r.as_ref().as_ref().map_err(|e| Refused {
            error: e.clone(),
            served,
        })?;
        let index = f.position.index.0;
        session.read(copy.group, LogIndex(index));
        Ok(Answer {
            value: f.value.clone(),
            version: f.version,
            expires_ms: f.expires_ms,
            level: at.level,
            position: f.position,
            staleness: self.staleness(copy, index, at.probed, at.started, Some(f.staleness)),
            served,
            quorum: None,
            token: None,
            pending: false,
        })
    }

    /// Keyspaces whose copies have no log position (leaderless, volatile): every read goes to
    /// the store as asked, and the store's receipt is returned.
    async fn read_through(
        &self,
        space: &Space,
        key: &[u8],
        level: Level,
        session: &Session,
        deadline: Instant,
    ) -> Result<Answer, Refused> {
        let mut opts = Opts::level(&level.to_string());
        if !session.is_empty() {
            opts = opts.session(&self.key.encode(session));
        }
        let f: Fetched = self
            .upstream
            .read_as_asked(&space.name, key, &opts, deadline)
            .await?;
        self.stats.misses.fetch_add(1, Ordering::Relaxed);
        Ok(Answer {
            value: f.value,
            version: f.version,
            expires_ms: f.expires_ms,
            level,
            position: f.position,
            staleness: f.staleness,
            served: Served::Miss,
            quorum: f.quorum,
            token: Some(f.session),
            pending: false,
        })
    }

    /// A PUT (`Some` value) or DELETE through the cache: sent to the store; once acknowledged
    /// the entry becomes the written value (write-through) or is dropped (read-through).
    /// Write-behind keyspaces queue it instead.
    /// `strategy`: this request's, overriding the keyspace's.
    pub async fn write(
        self: &Arc<Self>,
        ks: &str,
        key: &[u8],
        value: Option<Bytes>,
        (wait, strategy): (Option<Duration>, Option<Strategy>),
        session: &Session,
        bearer: Option<&str>,
    ) -> Result<Written, TunekvError> {
        let started = Instant::now();
        let deadline = self.deadline(started, wait);
        let space = self.space(ks, deadline).await?;
        if key.is_empty() || key.len() > KEY_BYTES_MAX {
            return Err(err(Code::KeyInvalid, "a key is 1 to 1024 bytes"));
        }
        let strategy = strategy.unwrap_or(space.strategy);
        if strategy == Strategy::WriteBehind && self.queue.is_none() {
            return Err(err(
                Code::BadRequest,
                "this cache has no write-behind queue: give a keyspace strategy write_behind in \
                 its config (with write_behind_dir or write_behind_in_memory)",
            ));
        }
        if let (Strategy::WriteBehind, Some(q)) = (strategy, &self.queue) {
            if let Some(v) = &value {
                if v.len() as u64 > space.spec.value_bytes_max {
                    return Err(err(
                        Code::ValueTooLarge,
                        format!(
                            "the value is {} bytes; keyspace {ks:?} takes at most {}",
                            v.len(),
                            space.spec.value_bytes_max
                        ),
                    ));
                }
            }
            let seq = q.push(ks, key, value.as_deref()).await?;
            return Ok(Written::Queued {
                seq,
                durable: q.durable_path().is_some(),
            });
        }
        self.store_write(&space, key, value, strategy, (session, bearer), deadline)
            .await
            .map(|w| Written::Stored(Box::new(w)))
    }

    /// Sends a write to the store and updates the entry by the keyspace's strategy.
    async fn store_write(
        self: &Arc<Self>,
        space: &Arc<Space>,
        key: &[u8],
        value: Option<Bytes>,
        strategy: Strategy,
        (session, bearer): (&Session, Option<&str>),
        deadline: Instant,
    ) -> Result<WriteReply, TunekvError> {
        let mut opts = Opts::default();
        if !session.is_empty() {
            opts = opts.session(&self.key.encode(session));
        }
        // The caller's own token: the node checks (and logs) the write as theirs. Without one
        // (write-behind flushes) the cache's own token goes.
        if let Some(t) = bearer {
            opts = opts.token(t);
        }
        let reply = self
            .upstream
            .write(&space.name, key, value.as_deref(), &opts, deadline)
            .await?;
        if space.spec.mode == Mode::Ordered {
            let copy = &space.shards[shard_for_key(key, space.spec.shards).0 as usize];
            match strategy {
                Strategy::WriteThrough | Strategy::WriteBehind => {
                    copy.wrote(&self.store, space, key, reply.index, value)
                }
                Strategy::ReadThrough => copy.dropped(&self.store, space, key, reply.index),
            }
        }
        Ok(reply)
    }

    /// Flushes the write-behind queue to the store until the cache stops: batches from the
    /// front, the last write of each key in a batch sent (writes of different keys at once,
    /// each key's in order), failures retried until they succeed, then the batch popped.
    pub async fn flush_loop(self: Arc<Self>) {
        let Some(q) = self.queue.clone() else { return };
        loop {
            let batch = q.front(self.config.write_behind_batch_max);
            if batch.is_empty() {
                tokio::select! {
                    _ = self.stop.cancelled() => return,
                    _ = q.queued.notified() => continue,
                }
            }
            if !self.flush_batch(&batch).await {
                return;
            }
            if let Some(last) = batch.last() {
                q.done_through(last.seq).await;
            }
        }
    }

    /// Flushes everything queued now (a restarted cache, before it serves). Prints progress.
    pub async fn flush_all(self: &Arc<Self>) {
        let Some(q) = self.queue.clone() else { return };
        let (left, bytes, _) = q.usage();
        if left == 0 {
            return;
        }
        println!(
            "flushing {left} write-behind writes ({bytes} bytes) left from before the restart ..."
        );
        let started = Instant::now();
        loop {
            let batch = q.front(self.config.write_behind_batch_max);
            let Some(last) = batch.last() else { break };
            if !self.flush_batch(&batch).await {
                return;
            }
            q.done_through(last.seq).await;
        }
        println!(
            "flushed the write-behind queue in {:.1}s",
            started.elapsed().as_secs_f64()
        );
    }

    /// Sends a batch's writes until each is in the store; false if the cache stopped first.
    async fn flush_batch(self: &Arc<Self>, batch: &[Pending]) -> bool {
        // The last write of each key: the store sees each key's final value of the batch.
        let mut last: HashMap<(&str, &[u8]), &Pending> = HashMap::new();
        for p in batch {
            last.insert((p.keyspace.as_str(), p.key.as_slice()), p);
        }
        let mut todo: Vec<&Pending> = last.into_values().collect();
        let mut pause = Duration::from_millis(50);
        while !todo.is_empty() {
            if self.stop.is_cancelled() {
                return false;
            }
            let sends = todo.iter().map(|p| {
                let me = self.clone();
                async move {
                    let deadline = Instant::now() + Duration::from_secs(5);
                    let space = me.space(&p.keyspace, deadline).await?;
                    let value = p.value.clone().map(Bytes::from);
                    me.store_write(
                        &space,
                        &p.key,
                        value,
                        Strategy::WriteBehind,
                        (&Session::new(), None),
                        deadline,
                    )
                    .await
                }
            });
            let results = futures::future::join_all(sends).await;
            let mut failed = Vec::new();
            for (p, r) in todo.iter().zip(results) {
                match r {
                    Ok(_) => {
                        self.stats.flushed.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(e) if matches!(e.code, Code::PermissionDenied | Code::Unauthenticated) => {
                        tracing::warn!(
                            error = %e,
                            "the store refuses the cache's write-behind write: give the cache's \
                             user write on this keyspace; retrying"
                        );
                        failed.push(*p);
                    }
                    Err(e) => {
                        tracing::debug!(error = %e, "a write-behind write failed; retrying");
                        failed.push(*p);
                    }
                }
            }
            todo = failed;
            if !todo.is_empty() {
                tokio::select! {
                    _ = self.stop.cancelled() => return false,
                    _ = tokio::time::sleep(pause) => {}
                }
                pause = (pause * 2).min(Duration::from_secs(2));
            }
        }
        true
    }
}

/// What a read carries into a fill.
#[derive(Clone, Copy)]
struct Reading {
    level: Level,
    /// The read index its probe returned, if it probed.
    probed: Option<u64>,
    started: Instant,
    deadline: Instant,
}

/// A probe's failure in the read level's terms (`bounded` → `staleness_bound_unmet`).
fn retyped(e: TunekvError, req: Requirement, level: Level) -> Refused {
    let code = match e.code {
        Code::NoQuorum | Code::Unavailable => req.no_probe_code(level),
        Code::Timeout => req.unmet_code(level),
        other => other,
    };
    TunekvError::new(code, e.message).into()
}

/// `sent − ms` (plus the drift allowance), when the receipt has an age at all.
fn proof_time(sent: Instant, ms: u64) -> Option<Instant> {
    if ms == u64::MAX {
        return None;
    }
    let back = Duration::from_millis(ms.saturating_add(ms / 1000).saturating_add(1));
    sent.checked_sub(back)
}

pub fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}
