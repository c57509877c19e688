//! The node: groups, catalog, and the request flow of reads and writes.

use crate::clock::Clock;
use crate::config::NodeConfig;
use crate::network::GroupNetwork;
use crate::rpc::{
    self, CallError, Handler, PeerPool, RemoteError, Request, Response, WatermarkPush, WriteResult,
};
use crate::status::{ClusterStatus, GroupStatus, NodeEntry, NodeReport, ReplicaStatus};
use crate::transport::{BoxFuture, FaultState, Faults, Transport};
use openraft::async_runtime::WatchReceiver;
use openraft::error::{ClientWriteError, LinearizableReadError, RaftError};
use openraft::raft::AppendEntriesResponse;
use openraft::{BasicNode, ReadPolicy, ServerState};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::Serialize;
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;
use tokio::time::Instant;
use tunekv_core::keyspace::{replicas_for, scan_hash, shard_for_key, SCAN_HASH_BITS};
use tunekv_core::limits::{check_key, check_keyspace_name, check_value};
use tunekv_core::{
    judge, ClockGuard, ClockHealth, Code, CopyState, GroupId, Hlc, KeyspaceSpec, Level, LogIndex,
    NodeId, PeerClock, Position, Receipt, Requirement, Session, SessionKey, ShardId, Staleness,
    TunekvError, Verdict, Watermark,
};
use tunekv_raft::{
    Applied, Command, CommandResult, LogStore, Op, Raft, ShardData, StateMachine, StoredValue,
};
use tunekv_storage::{GroupCommit, Storage};

/// Catalog keys in the metadata group: `ks/<name>` → the keyspace spec as JSON.
const CATALOG_PREFIX: &[u8] = b"ks/";
/// A parsed catalog entry and the (create_index, mod_index) it was parsed at.
type CachedKeyspace = ((u64, u64), KeyspaceInfo);
/// Parsed keyspaces kept per node; past this many the cache starts over.
const KEYSPACE_CACHE_MAX: usize = 10_000;
/// Pause between retries while a shard has no reachable leader (elections take ~1 s).
const RETRY_PAUSE: Duration = Duration::from_millis(50);
/// Longest a leader works on a forwarded request; the caller has usually given up sooner.
const FORWARDED_WORK_MAX: Duration = Duration::from_secs(30);
/// How long `PUT /v1/keyspaces` waits for the new shards to elect leaders.
const KEYSPACE_READY_WAIT: Duration = Duration::from_secs(10);
/// How long `GET /v1/cluster` waits for each peer's status.
const STATUS_WAIT: Duration = Duration::from_millis(500);
/// Largest injected message delay (plus jitter) the fault hook accepts.
const FAULT_DELAY_MS_MAX: u64 = 60_000;
/// Largest injected clock offset the fault hook accepts (ten years).
const FAULT_CLOCK_OFFSET_MS_MAX: u64 = 10 * 366 * 86_400_000;
/// Most keys in one batch-get.
pub const BATCH_KEYS_MAX: usize = 1000;
/// How often each node measures its peers' clocks (see `tunekv_core::clock_bound`).
const CALIBRATE_EVERY: Duration = Duration::from_millis(500);
/// Longest a clock round trip may take to be used.
const CALIBRATE_WAIT: Duration = Duration::from_millis(250);
/// How often a leader looks for expired keys that nothing has touched, and most it removes in
/// one entry.
const SWEEP_EVERY: Duration = Duration::from_secs(1);
const SWEEP_KEYS_MAX: usize = 1000;

/// One Raft group hosted on this node.
pub struct Group {
    id: GroupId,
    raft: Raft,
    data: Arc<ShardData>,
    // When this replica last accepted a message from its leader; staleness receipts grow with
    // the silence since.
    last_contact: Mutex<Option<Instant>>,
    // The newest read index a quorum-holding leader confirmed to this node, and when the probe
    // for it was sent: bounded(t) reads are served locally while it is fresh enough.
    watermark: Mutex<Option<(u64, Instant)>>,
    // Read-index probes this replica sent (shown in status; pushed watermarks keep it low).
    probes: AtomicU64,
    // The newest read index this node's own probe got, and when that probe was sent. Held
    // across a probe, so concurrent reads share one probe instead of sending one each; only
    // own probes are kept here, so strong reads depend on no clock but this node's own.
    own_probe: tokio::sync::Mutex<Option<(u64, Instant)>>,
    // Freshness proofs this copy has not applied yet, and the newest one it has: receipts say
    // how stale a served state is by the newest proof that state satisfies (issue 15: the
    // time since the leader's last contact understated it for a copy that knew it was behind).
    proofs: Mutex<Proofs>,
}

/// Freshness proofs `(index, at)` (every write committed before `at` is at or below `index`),
/// oldest first, and when the newest proof already applied was taken.
#[derive(Default)]
struct Proofs {
    pending: std::collections::VecDeque<(u64, Instant)>,
    covered_at: Option<Instant>,
}

/// Proofs a copy remembers while it is behind them (one per heartbeat or probe: at 100 ms
/// heartbeats, about 100 s of lag). Dropping the oldest only makes receipts more cautious.
const PROOFS_PENDING_MAX: usize = 1024;

impl Proofs {
    /// Keeps the proofs ordered by when they were taken.
    fn offer(&mut self, index: u64, at: Instant) {
        if self.covered_at.is_some_and(|c| c >= at) {
            return;
        }
        if self.pending.len() == PROOFS_PENDING_MAX {
            self.pending.pop_front();
        }
        let slot = self.pending.partition_point(|&(_, t)| t <= at);
        self.pending.insert(slot, (index, at));
    }

    /// When the newest proof that a state at `applied` satisfies was taken (`None`: no proof).
    fn covered(&mut self, applied: u64) -> Option<Instant> {
        let newest = self
            .pending
            .iter()
            .filter(|&&(index, _)| index <= applied)
            .map(|&(_, at)| at)
            .max();
        if let Some(at) = newest {
            self.covered_at = self.covered_at.max(Some(at));
            self.pending.retain(|&(_, t)| t > at);
        }
        self.covered_at
    }
}

impl Group {
    /// Keeps the newer of the current watermark and `(index, at)`: every write committed before
    /// `at` is at or below `index`.
    fn offer_watermark(&self, index: u64, at: Instant) {
        {
            let mut wm = self.watermark.lock().unwrap_or_else(|p| p.into_inner());
            if wm.is_none_or(|(i, t)| t <= at && i <= index) {
                *wm = Some((index, at));
            }
        }
        self.proofs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .offer(index, at);
    }

    /// How long before `started` the newest freshness proof that the state at `applied`
    /// satisfies was taken (zero if taken after `started`; `None`: no proof yet).
    fn proof_age_at(&self, applied: u64, started: Instant) -> Option<Duration> {
        self.proofs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .covered(applied)
            .map(|at| started.saturating_duration_since(at))
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct KeyspaceInfo {
    pub name: String,
    /// The catalog index at which the keyspace was created; part of its shards' group ids.
    pub id: u64,
    #[serde(flatten)]
    pub spec: KeyspaceSpec,
}

#[derive(Clone, Debug)]
pub struct ReadOutcome {
    pub value: Option<Vec<u8>>,
    pub receipt: Receipt,
}

/// The values of one shard read from one view, and its receipt.
#[derive(Clone, Debug)]
pub struct ShardRead {
    pub values: Vec<(Vec<u8>, Option<StoredValue>)>,
    pub receipt: Receipt,
}

/// One page of a SCAN.
#[derive(Clone, Debug)]
pub struct ScanPage {
    /// Where the next page starts; 0 when the scan is complete.
    pub cursor: u64,
    pub keys: Vec<Vec<u8>>,
    /// One per shard read for this page.
    pub receipts: Vec<Receipt>,
}

/// How a copy came to be allowed to serve a read.
struct Served {
    copy: CopyState,
    /// The read index a probe returned, if one was needed.
    probed: Option<u64>,
}

#[derive(Clone, Debug, Serialize)]
pub struct WriteOutcome {
    pub position: Position,
    /// Whether the key existed before the write.
    pub existed: bool,
    /// Everything the state machine said about the command.
    pub result: CommandResult,
}

/// Why [`Node::on_leader`] gave up.
enum LeaderGone {
    /// The leader answered with a definite error.
    Answered(RemoteError),
    /// The deadline passed; `maybe_sent`: a request may have reached a leader.
    Exhausted {
        maybe_sent: bool,
        last_problem: String,
    },
    /// The wait budget was already spent (e.g. `wait_ms_max=0`): nothing was tried.
    NoBudget,
}

/// What a request with no wait budget left hears (never "no leader known" while one exists).
fn no_budget(what: &str) -> TunekvError {
    err(
        Code::Timeout,
        format!("wait budget exhausted before the {what} was sent to a leader (wait_ms_max too small); it did not happen"),
    )
}

pub struct Node {
    id: NodeId,
    config: NodeConfig,
    all_nodes: Vec<NodeId>,
    storage: Arc<dyn Storage>,
    commit: GroupCommit,
    clock: Arc<dyn Clock>,
    hlc: Arc<Hlc>,
    pool: Arc<PeerPool>,
    faults: Arc<Faults>,
    raft_config: Arc<openraft::Config>,
    session_key: SessionKey,
    // This process's clock origin and identity, for peers' `PeerClock`s.
    epoch: Instant,
    incarnation: u64,
    peer_clocks: Mutex<BTreeMap<NodeId, PeerClock>>,
    // Whether this node's wall clock may stamp commits (measured against peers' wall clocks
    // and its own monotonic clock), and the last state logged, so changes are logged once.
    clock_guard: Mutex<ClockGuard>,
    clock_logged: Mutex<ClockHealth>,
    // `Hlc::capped_total` when last logged.
    hlc_capped_logged: AtomicU64,
    // Hosted groups. A std lock: never held across an await.
    groups: RwLock<BTreeMap<GroupId, Arc<Group>>>,
    // Serializes group creation so two tasks never open the same group twice.
    opening: tokio::sync::Mutex<()>,
    // Parsed catalog entries by keyspace name, each valid while the catalog entry's
    // (create_index, mod_index) is unchanged: every request names its keyspace, and parsing the
    // spec's JSON each time was the RESP GET path's largest cost after allocation.
    keyspace_cache: RwLock<HashMap<String, CachedKeyspace>>,
}

/// The items of a batch (1 to `BATCH_KEYS_MAX`, every key checked) grouped by shard, in shard
/// order, each shard's items in request order.
fn by_shard<T>(
    ks: &KeyspaceInfo,
    items: Vec<T>,
    key_of: impl Fn(&T) -> &Vec<u8>,
) -> Result<BTreeMap<ShardId, Vec<T>>, TunekvError> {
    if items.is_empty() || items.len() > BATCH_KEYS_MAX {
        return Err(err(
            Code::BadRequest,
            format!(
                "a batch holds 1 to {BATCH_KEYS_MAX} keys, got {}",
                items.len()
            ),
        ));
    }
    let mut out: BTreeMap<ShardId, Vec<T>> = BTreeMap::new();
    for item in items {
        let key = key_of(&item);
        check_key(key)?;
        out.entry(shard_for_key(key, ks.spec.shards))
            .or_default()
            .push(item);
    }
    Ok(out)
}

fn err(code: Code, message: impl Into<String>) -> TunekvError {
    TunekvError::new(code, message)
}

fn internal(e: impl std::fmt::Display) -> TunekvError {
    err(Code::Internal, e.to_string())
}

impl Node {
    /// Starts a node on the caller's runtime: binds the node-to-node listener, opens the
    /// metadata group (initializing it on the lowest-numbered node of a new cluster), and starts
    /// reconciling hosted shard groups with the catalog.
    pub async fn start(
        config: NodeConfig,
        transport: Arc<dyn Transport>,
        storage: Arc<dyn Storage>,
        clock: Arc<dyn Clock>,
    ) -> Result<Arc<Node>, TunekvError> {
        config.validate().map_err(|e| err(Code::BadRequest, e))?;
        let raft_config = config
            .raft_timing
            .tuning()
            .openraft_config()
            .map_err(internal)?;
        let session_key = SessionKey::new(config.cluster_secret.as_bytes())
            .map_err(|e| err(Code::BadRequest, e))?;
        // Every draw this node makes comes from one seed: the simulator's, or the OS's.
        let mut rng = StdRng::seed_from_u64(config.rng_seed.unwrap_or_else(rand::random));
        let faults = Arc::new(Faults::new(config.enable_faults, rng.gen()));
        let peers: Vec<(NodeId, String)> = config
            .peers
            .iter()
            .map(|p| (NodeId(p.id), p.raft.clone()))
            .collect();
        let pool = Arc::new(PeerPool::new(
            NodeId(config.id),
            &peers,
            transport.clone(),
            faults.clone(),
        ));
        let mut all_nodes: Vec<NodeId> = peers.iter().map(|(id, _)| *id).collect();
        all_nodes.sort();
        let listener = transport
            .bind(&config.raft)
            .await
            .map_err(|e| internal(format!("cannot listen on {}: {e}", config.raft)))?;
        let clock_guard =
            ClockGuard::new(config.max_clock_offset_ms, peers.len().saturating_sub(1));
        let hlc = Arc::new(Hlc::new(config.max_clock_offset_ms));
        let node = Arc::new(Node {
            id: NodeId(config.id),
            commit: GroupCommit::start(storage.clone()),
            config,
            all_nodes,
            storage,
            clock,
            hlc,
            pool,
            faults: faults.clone(),
            raft_config,
            session_key,
            epoch: Instant::now(),
            // A random id for this process, so peers notice a restart (its clock starts over).
            incarnation: rng.gen(),
            peer_clocks: Mutex::new(BTreeMap::new()),
            clock_guard: Mutex::new(clock_guard),
            clock_logged: Mutex::new(ClockHealth::Trusted),
            hlc_capped_logged: AtomicU64::new(0),
            groups: RwLock::new(BTreeMap::new()),
            opening: tokio::sync::Mutex::new(()),
            keyspace_cache: RwLock::new(HashMap::new()),
        });
        tokio::spawn(rpc::serve(
            node.id,
            listener,
            node.clone() as Arc<dyn Handler>,
            faults,
        ));
        let members = node.all_nodes.clone();
        let first = members[0];
        node.open_group(GroupId::METADATA, &members, first == node.id)
            .await?;
        tokio::spawn(node.clone().reconcile_loop());
        tokio::spawn(node.clone().calibrate_loop());
        tokio::spawn(node.clone().watermark_loop());
        tokio::spawn(node.clone().sweep_loop());
        Ok(node)
    }

    /// Microseconds on this process's monotonic clock.
    fn mono_us(&self, at: Instant) -> i64 {
        i64::try_from(at.saturating_duration_since(self.epoch).as_micros()).unwrap_or(i64::MAX)
    }

    /// Measures every peer's monotonic clock against ours, every `CALIBRATE_EVERY`.
    async fn calibrate_loop(self: Arc<Self>) {
        let peers: Vec<NodeId> = self
            .all_nodes
            .iter()
            .copied()
            .filter(|p| *p != self.id)
            .collect();
        let me: &Node = &self;
        loop {
            let rounds = peers.iter().map(|&peer| async move {
                let sent = Instant::now();
                let sent_wall_ms = me.clock.wall_ms();
                let resp = me.pool.call(peer, 0, Request::Clock, CALIBRATE_WAIT).await;
                let received_wall_ms = me.clock.wall_ms();
                let received = Instant::now();
                if let Ok(Response::Clock {
                    incarnation,
                    now_us,
                    wall_ms,
                }) = resp
                {
                    me.clock_guard
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .measure(
                            peer.0,
                            sent_wall_ms,
                            wall_ms,
                            received_wall_ms,
                            me.mono_ms(received),
                        );
                    let mut clocks = me.peer_clocks.lock().unwrap_or_else(|p| p.into_inner());
                    let prev = clocks.get(&peer).copied();
                    clocks.insert(
                        peer,
                        PeerClock::calibrate(
                            prev,
                            incarnation,
                            me.mono_us(sent),
                            now_us,
                            me.mono_us(received),
                        ),
                    );
                }
            });
            futures::future::join_all(rounds).await;
            let (wall, mono) = (self.clock.wall_ms(), self.mono_ms(Instant::now()));
            self.clock_guard
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .end_round(wall, mono);
            if let ClockHealth::Skewed(_) = self.clock_health() {
                for g in self.all_groups() {
                    self.give_up_leadership(&g);
                }
            }
            tokio::time::sleep(CALIBRATE_EVERY).await;
        }
    }

    fn mono_ms(&self, at: Instant) -> u64 {
        u64::try_from(at.saturating_duration_since(self.epoch).as_millis()).unwrap_or(u64::MAX)
    }

    /// Whether this node's wall clock may stamp commits now; a change is logged once, and so
    /// is every HLC stamp that refused to follow a timestamp too far ahead.
    fn clock_health(&self) -> ClockHealth {
        let health = self
            .clock_guard
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .health(self.clock.wall_ms(), self.mono_ms(Instant::now()));
        {
            let mut logged = self.clock_logged.lock().unwrap_or_else(|p| p.into_inner());
            if *logged != health {
                match &health {
                    ClockHealth::Skewed(why) => tracing::warn!(
                        node = self.id.0,
                        "clock skew: {why}; this node stamps no commits and gives up leadership until it agrees again"
                    ),
                    ClockHealth::Trusted => tracing::info!(
                        node = self.id.0,
                        "clock agrees with the peers again; stamping commits"
                    ),
                }
                *logged = health.clone();
            }
        }
        let capped = self.hlc.capped_total();
        if self.hlc_capped_logged.swap(capped, Ordering::Relaxed) != capped {
            tracing::warn!(
                node = self.id.0,
                capped,
                "the HLC refused to follow a commit time more than max_clock_offset_ms={} ahead of this node's clock",
                self.config.max_clock_offset_ms
            );
        }
        health
    }

    /// The wall time to judge expiry by: this node's clock while trusted, else the last trusted
    /// time carried forward by the monotonic clock.
    fn expiry_wall_ms(&self) -> u64 {
        self.clock_guard
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .trusted_wall_ms(self.clock.wall_ms(), self.mono_ms(Instant::now()))
    }

    /// A skewed node hands the groups it leads to another voter, in the background.
    fn give_up_leadership(&self, g: &Group) {
        let m = g.raft.metrics().borrow_watched().clone();
        if m.current_leader != Some(self.id.0) {
            return;
        }
        let Some(to) = m
            .membership_config
            .membership()
            .voter_ids()
            .find(|&v| v != self.id.0)
        else {
            return;
        };
        let raft = g.raft.clone();
        tokio::spawn(async move {
            let _ = raft.trigger().transfer_leader(to).await;
        });
    }

    /// Every heartbeat, each group this node leads with a quorum gets a watermark, kept here and
    /// pushed to the group's other replicas: so idle followers (and the leader) serve
    /// `bounded(t)` without a round trip.
    async fn watermark_loop(self: Arc<Self>) {
        let every = Duration::from_millis(self.config.raft_timing.heartbeat_ms.max(10));
        loop {
            tokio::time::sleep(every).await;
            let mut to: BTreeMap<NodeId, Vec<(u64, u64, i64)>> = BTreeMap::new();
            for g in self.all_groups() {
                let Some((index, acked_at, voters)) = self.leader_watermark(&g).await else {
                    continue;
                };
                g.offer_watermark(index, acked_at);
                for v in voters.into_iter().filter(|v| *v != self.id) {
                    to.entry(v)
                        .or_default()
                        .push((g.id.0, index, self.mono_us(acked_at)));
                }
            }
            let sends = to.into_iter().map(|(peer, marks)| {
                let push = WatermarkPush {
                    from: self.id.0,
                    incarnation: self.incarnation,
                    marks,
                };
                self.pool.call(peer, 0, Request::Watermarks(push), every)
            });
            futures::future::join_all(sends).await;
        }
    }

    /// Every `SWEEP_EVERY`, each shard this node leads commits a sweep of keys expired at its
    /// wall clock (reads already hide them; this frees their memory and disk before the next
    /// snapshot). The entry removes only keys expired at its own commit time.
    async fn sweep_loop(self: Arc<Self>) {
        loop {
            tokio::time::sleep(SWEEP_EVERY).await;
            for g in self.all_groups() {
                if g.id.is_metadata() || !g.raft.metrics().borrow_watched().state.is_leader() {
                    continue;
                }
                let keys = g.data.read().expired(self.expiry_wall_ms(), SWEEP_KEYS_MAX);
                if keys.is_empty() {
                    continue;
                }
                let n = keys.len();
                let deadline = Instant::now() + SWEEP_EVERY;
                match self.propose(g.id, Op::Sweep { keys }, deadline).await {
                    Ok(w) => {
                        tracing::debug!(group = %g.id, found = n, removed = w.result.int, "swept expired keys")
                    }
                    Err(e) => {
                        tracing::debug!(group = %g.id, error = %e.message, "sweep not committed")
                    }
                }
            }
        }
    }

    /// On a leader: `(index, at, voters)` such that every write committed before `at` is at or
    /// below `index`. `at` is the send time of the last heartbeat a quorum acknowledged: no
    /// newer leader can have committed anything before it (its quorum would overlap ours, and
    /// that node would have refused our heartbeat). `index` is the read index taken after it.
    async fn leader_watermark(&self, g: &Group) -> Option<(u64, Instant, Vec<NodeId>)> {
        let (acked_at, voters) = {
            let m = g.raft.metrics();
            let m = m.borrow_watched();
            if m.state != ServerState::Leader {
                return None;
            }
            let acked_age = openraft::Instant::elapsed(&**m.last_quorum_acked.as_ref()?);
            let voters: Vec<NodeId> = m
                .membership_config
                .membership()
                .voter_ids()
                .map(NodeId)
                .collect();
            (Instant::now().checked_sub(acked_age)?, voters)
        };
        let (read_log_id, _) = g.raft.get_read_log_id(ReadPolicy::LeaseRead).await.ok()?;
        Some((read_log_id.index(), acked_at, voters))
    }

    /// A leader's pushed watermarks, mapped onto our clock no later than they can have been
    /// taken. Ignored until the leader's clock has been measured.
    fn accept_watermarks(&self, push: WatermarkPush) {
        let Some(clock) = self
            .peer_clocks
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&NodeId(push.from))
            .copied()
            .filter(|c| c.incarnation == push.incarnation)
        else {
            return;
        };
        let now = Instant::now();
        let now_us = self.mono_us(now);
        for (group, index, acked_us) in push.marks {
            let Some(g) = self.group(GroupId(group)) else {
                continue;
            };
            let local_us = clock.earliest_local(acked_us, now_us);
            let back = Duration::from_micros(u64::try_from(now_us - local_us).unwrap_or(0));
            if let Some(at) = now.checked_sub(back) {
                g.offer_watermark(index, at);
            }
        }
    }

    pub fn id(&self) -> NodeId {
        self.id
    }

    pub fn config(&self) -> &NodeConfig {
        &self.config
    }

    /// Signs and checks session tokens with the cluster secret.
    pub fn session_key(&self) -> &SessionKey {
        &self.session_key
    }

    pub fn faults_enabled(&self) -> bool {
        self.faults.enabled()
    }

    fn group(&self, id: GroupId) -> Option<Arc<Group>> {
        self.groups
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(&id)
            .cloned()
    }

    fn all_groups(&self) -> Vec<Arc<Group>> {
        self.groups
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .cloned()
            .collect()
    }

    fn members_map(&self, members: &[NodeId]) -> BTreeMap<u64, BasicNode> {
        members
            .iter()
            .filter_map(|m| self.config.peers.iter().find(|p| p.id == m.0))
            .map(|p| (p.id, BasicNode::new(&p.raft)))
            .collect()
    }

    /// Opens (creates or recovers) a group; `initialize` makes this node propose the group's
    /// first membership if the group has never been initialized anywhere on this node.
    async fn open_group(
        &self,
        id: GroupId,
        members: &[NodeId],
        initialize: bool,
    ) -> Result<Arc<Group>, TunekvError> {
        let _guard = self.opening.lock().await;
        if let Some(g) = self.group(id) {
            return Ok(g);
        }
        let sm =
            StateMachine::open(id.0, self.storage.clone(), self.hlc.clone()).map_err(internal)?;
        let data = sm.data();
        let log = LogStore::new(id.0, self.storage.clone(), self.commit.clone());
        let net = GroupNetwork {
            group: id,
            pool: self.pool.clone(),
        };
        let raft = Raft::new(self.id.0, self.raft_config.clone(), net, log, sm)
            .await
            .map_err(internal)?;
        if initialize && !raft.is_initialized().await.map_err(internal)? {
            tracing::info!(group = %id, ?members, "initializing group");
            if let Err(e) = raft.initialize(self.members_map(members)).await {
                tracing::warn!(group = %id, error = %e, "initialize failed");
            }
        }
        let group = Arc::new(Group {
            id,
            raft,
            data,
            last_contact: Mutex::new(None),
            watermark: Mutex::new(None),
            proofs: Mutex::new(Proofs::default()),
            probes: AtomicU64::new(0),
            own_probe: tokio::sync::Mutex::new(None),
        });
        self.groups
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id, group.clone());
        Ok(group)
    }

    fn metadata(&self) -> Arc<Group> {
        // Opened in `start` before the node is handed out; never removed.
        self.group(GroupId::METADATA)
            .unwrap_or_else(|| unreachable!("the metadata group is opened at start"))
    }

    /// Keeps hosted shard groups in line with the catalog: runs after every catalog change.
    async fn reconcile_loop(self: Arc<Self>) {
        let mut applied = self.metadata().data.subscribe();
        loop {
            for ks in self.list_keyspaces() {
                for shard in 0..ks.spec.shards {
                    let replicas =
                        replicas_for(ks.id, ShardId(shard), &self.all_nodes, ks.spec.replicas);
                    let gid = GroupId::for_shard(ks.id, ShardId(shard));
                    if replicas.contains(&self.id) && self.group(gid).is_none() {
                        if let Err(e) = self
                            .open_group(gid, &replicas, replicas[0] == self.id)
                            .await
                        {
                            tracing::error!(group = %gid, error = %e, "cannot open group");
                        }
                    }
                }
            }
            tokio::select! {
                biased;
                changed = applied.changed() => if changed.is_err() { return },
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            }
        }
    }

    // ---- catalog ----

    fn catalog_key(name: &str) -> Vec<u8> {
        let mut k = CATALOG_PREFIX.to_vec();
        k.extend_from_slice(name.as_bytes());
        k
    }

    /// Keyspaces as this node's copy of the catalog knows them.
    pub fn list_keyspaces(&self) -> Vec<KeyspaceInfo> {
        let meta = self.metadata();
        let view = meta.data.read();
        view.scan_prefix(CATALOG_PREFIX)
            .filter_map(|(k, v)| {
                let name = std::str::from_utf8(k.get(CATALOG_PREFIX.len()..)?)
                    .ok()?
                    .to_string();
                let spec: KeyspaceSpec = serde_json::from_slice(&v.value).ok()?;
                Some(KeyspaceInfo {
                    name,
                    id: v.create_index,
                    spec,
                })
            })
            .collect()
    }

    fn local_keyspace(&self, name: &str) -> Option<KeyspaceInfo> {
        let meta = self.metadata();
        let view = meta.data.read();
        let v = view.get(&Self::catalog_key(name))?;
        let version = (v.create_index, v.mod_index);
        {
            let cache = self
                .keyspace_cache
                .read()
                .unwrap_or_else(|p| p.into_inner());
            if let Some((cached, info)) = cache.get(name) {
                if *cached == version {
                    return Some(info.clone());
                }
            }
        }
        let spec: KeyspaceSpec = serde_json::from_slice(&v.value).ok()?;
        let info = KeyspaceInfo {
            name: name.to_string(),
            id: v.create_index,
            spec,
        };
        let mut cache = self
            .keyspace_cache
            .write()
            .unwrap_or_else(|p| p.into_inner());
        if cache.len() >= KEYSPACE_CACHE_MAX {
            cache.clear();
        }
        cache.insert(name.to_string(), (version, info.clone()));
        Some(info)
    }

    /// The keyspace, confirmed with the catalog's leader if this node has not heard of it yet
    /// (it may have been created a moment ago through another node).
    pub async fn keyspace(
        &self,
        name: &str,
        deadline: Instant,
    ) -> Result<KeyspaceInfo, TunekvError> {
        check_keyspace_name(name)?;
        if let Some(ks) = self.local_keyspace(name) {
            return Ok(ks);
        }
        let index = self.read_index(GroupId::METADATA, deadline).await?;
        self.wait_applied(&self.metadata(), index, deadline).await?;
        self.local_keyspace(name).ok_or_else(|| {
            err(
                Code::KeyspaceNotFound,
                format!("keyspace {name:?} does not exist"),
            )
        })
    }

    /// Creates a keyspace (idempotent for an identical spec). Returns whether it was created.
    pub async fn create_keyspace(
        &self,
        name: &str,
        spec: KeyspaceSpec,
    ) -> Result<(KeyspaceInfo, bool), TunekvError> {
        check_keyspace_name(name)?;
        spec.validate(self.all_nodes.len())?;
        let deadline = Instant::now() + Duration::from_millis(self.config.write_wait_ms_default);
        let value = serde_json::to_vec(&spec).map_err(internal)?;
        let op = Op::PutIfAbsent {
            key: Self::catalog_key(name),
            value,
        };
        let written = self.propose(GroupId::METADATA, op, deadline).await?;
        let created = written.result.changed;
        if !created {
            let existing = written
                .result
                .current
                .as_ref()
                .and_then(|c| serde_json::from_slice::<KeyspaceSpec>(&c.value).ok());
            if existing.as_ref() != Some(&spec) {
                return Err(err(
                    Code::KeyspaceExists,
                    format!(
                        "keyspace {name:?} exists with a different spec: {}",
                        existing
                            .map(|s| serde_json::to_string(&s).unwrap_or_default())
                            .unwrap_or_default()
                    ),
                ));
            }
        }
        let meta = self.metadata();
        self.wait_applied(&meta, written.index, deadline).await?;
        let info = self
            .local_keyspace(name)
            .ok_or_else(|| internal("keyspace missing from the catalog after it was applied"))?;
        self.wait_keyspace_ready(&info).await;
        Ok((info, created))
    }

    /// Waits (bounded) until every hosted shard group of the keyspace knows its leader.
    async fn wait_keyspace_ready(&self, ks: &KeyspaceInfo) {
        let deadline = Instant::now() + KEYSPACE_READY_WAIT;
        for shard in 0..ks.spec.shards {
            let gid = GroupId::for_shard(ks.id, ShardId(shard));
            let replicas = replicas_for(ks.id, ShardId(shard), &self.all_nodes, ks.spec.replicas);
            if !replicas.contains(&self.id) {
                continue;
            }
            while Instant::now() < deadline {
                if let Some(g) = self.group(gid) {
                    if g.raft.metrics().borrow_watched().current_leader.is_some() {
                        break;
                    }
                }
                tokio::time::sleep(RETRY_PAUSE).await;
            }
        }
    }

    // ---- writes ----

    fn wait_budget(&self, wait: Option<Duration>, default_ms: u64) -> Duration {
        let cap = Duration::from_millis(self.config.wait_ms_cap);
        wait.unwrap_or(Duration::from_millis(default_ms)).min(cap)
    }

    /// The group holding `key`.
    async fn shard_group(&self, ks: &KeyspaceInfo, key: &[u8]) -> Result<Arc<Group>, TunekvError> {
        self.hosted_shard(ks, shard_for_key(key, ks.spec.shards))
            .await
    }

    /// The group of `shard`. A group this node replicates is opened on demand, so a request
    /// that arrives right after a restart does not race the catalog reconciler.
    async fn hosted_shard(
        &self,
        ks: &KeyspaceInfo,
        shard: ShardId,
    ) -> Result<Arc<Group>, TunekvError> {
        let gid = GroupId::for_shard(ks.id, shard);
        if let Some(g) = self.group(gid) {
            return Ok(g);
        }
        let replicas = replicas_for(ks.id, shard, &self.all_nodes, ks.spec.replicas);
        if replicas.contains(&self.id) {
            return self
                .open_group(gid, &replicas, replicas[0] == self.id)
                .await;
        }
        let addrs: Vec<String> = replicas
            .iter()
            .filter_map(|r| self.config.peers.iter().find(|p| p.id == r.0))
            .map(|p| format!("node {} at {}", p.id, p.http))
            .collect();
        Err(err(
            Code::NotReplica,
            format!(
                "node {} holds no replica of shard {shard} of {:?} ({} of {} nodes do); send this key to {}",
                self.id,
                ks.name,
                replicas.len(),
                self.all_nodes.len(),
                addrs.join(", ")
            ),
        ))
    }

    pub async fn put(
        &self,
        ks: &str,
        key: &[u8],
        value: Vec<u8>,
        wait: Option<Duration>,
        session: &mut Session,
    ) -> Result<WriteOutcome, TunekvError> {
        self.write(
            ks,
            key,
            |_| {
                Ok(Op::Put {
                    key: key.to_vec(),
                    value,
                })
            },
            wait,
            session,
        )
        .await
    }

    pub async fn delete(
        &self,
        ks: &str,
        key: &[u8],
        wait: Option<Duration>,
        session: &mut Session,
    ) -> Result<WriteOutcome, TunekvError> {
        self.write(
            ks,
            key,
            |_| Ok(Op::Delete { key: key.to_vec() }),
            wait,
            session,
        )
        .await
    }

    /// Commits one command on the shard of `key`: `op` builds it from the keyspace (value
    /// limits differ per keyspace) and may refuse. Values in it are checked against the limits
    /// before anything is proposed.
    pub async fn write(
        &self,
        ks: &str,
        key: &[u8],
        op: impl FnOnce(&KeyspaceInfo) -> Result<Op, TunekvError>,
        wait: Option<Duration>,
        session: &mut Session,
    ) -> Result<WriteOutcome, TunekvError> {
        let deadline = Instant::now() + self.wait_budget(wait, self.config.write_wait_ms_default);
        let ks = self.keyspace(ks, deadline).await?;
        check_key(key)?;
        let op = op(&ks)?;
        match &op {
            Op::Put { value, .. } | Op::PutIfAbsent { value, .. } | Op::Set { value, .. } => {
                check_value(value, ks.spec.value_bytes_max)?
            }
            Op::Append { suffix, .. } => check_value(suffix, ks.spec.value_bytes_max)?,
            Op::MSet { .. } => {
                return Err(err(Code::Internal, "MSET goes through Node::mset"));
            }
            Op::Sweep { .. } => {
                return Err(err(Code::Internal, "only a shard's leader sweeps"));
            }
            _ => {}
        }
        let g = self.shard_group(&ks, key).await?;
        session.admit(g.id)?;
        let w = self.propose(g.id, op, deadline).await?;
        Ok(self.write_outcome(&g, w, session))
    }

    /// Writes every pair: atomically per shard, shard after shard (there is no transaction
    /// across shards). Returns one outcome per shard written.
    pub async fn mset(
        &self,
        ks: &str,
        pairs: Vec<(Vec<u8>, Vec<u8>)>,
        wait: Option<Duration>,
        session: &mut Session,
    ) -> Result<Vec<WriteOutcome>, TunekvError> {
        let deadline = Instant::now() + self.wait_budget(wait, self.config.write_wait_ms_default);
        let ks = self.keyspace(ks, deadline).await?;
        for (_, v) in &pairs {
            check_value(v, ks.spec.value_bytes_max)?;
        }
        let by_shard = by_shard(&ks, pairs, |(k, _)| k)?;
        let mut out = Vec::with_capacity(by_shard.len());
        for (shard, pairs) in by_shard {
            let g = self.hosted_shard(&ks, shard).await?;
            session.admit(g.id)?;
            let w = self.propose(g.id, Op::MSet { pairs }, deadline).await?;
            out.push(self.write_outcome(&g, w, session));
        }
        Ok(out)
    }

    /// The outcome of a committed write, recorded in the session. Monotonic writes and
    /// writes-follow-reads hold by the log: a new entry's index is above every committed index,
    /// so above everything this session wrote or read on the shard. Checked, never assumed.
    fn write_outcome(&self, g: &Group, w: WriteResult, session: &mut Session) -> WriteOutcome {
        let group = g.id;
        let before = session.mark(group);
        if w.index <= before.written.0.max(before.read.0) {
            tracing::error!(
                "write on {group} committed at {} but the session already wrote {} and read {}: \
                 the token names positions this cluster's log does not hold",
                w.index,
                before.written,
                before.read
            );
        }
        session.wrote(group, LogIndex(w.index));
        WriteOutcome {
            position: Position {
                shard: group.shard(),
                index: LogIndex(w.index),
                commit_ms: Hlc::millis(w.commit_ts),
            },
            existed: w.result.existed,
            result: w.result,
        }
    }

    /// Proposes `op` on `group`'s leader (here or forwarded), retrying through elections until
    /// `deadline`. `no_quorum`: certainly not applied; `timeout`: outcome unknown.
    async fn propose(
        &self,
        group: GroupId,
        op: Op,
        deadline: Instant,
    ) -> Result<WriteResult, TunekvError> {
        let g = self.hosted(group)?;
        let res = self
            .on_leader(
                &g,
                deadline,
                || Request::Write(op.clone()),
                |r| match r {
                    Response::Write(w) => Some(w),
                    _ => None,
                },
                || self.leader_propose(&g, op.clone()),
            )
            .await;
        match res {
            Ok(w) => Ok(w),
            Err(LeaderGone::Answered(e)) => Err(err(e.code, e.message)),
            Err(LeaderGone::NoBudget) => Err(no_budget("write")),
            Err(LeaderGone::Exhausted { maybe_sent: true, last_problem }) => Err(err(
                Code::Timeout,
                format!("write to {group} not acknowledged within the wait budget; it may still commit ({last_problem})"),
            )),
            Err(LeaderGone::Exhausted { maybe_sent: false, last_problem }) => Err(err(
                Code::NoQuorum,
                format!(
                    "no leader with a quorum for {group} was reachable from node {} within the wait budget; \
                     the write did not happen ({last_problem})",
                    self.id
                ),
            )),
        }
    }

    fn hosted(&self, group: GroupId) -> Result<Arc<Group>, TunekvError> {
        self.group(group)
            .ok_or_else(|| err(Code::Unavailable, format!("group {group} is not open here")))
    }

    /// Runs a request on `g`'s leader: locally with `local` when this node leads, else sent to
    /// the leader as `req()`. Retries through elections, leader changes and unreachable peers
    /// every `RETRY_PAUSE` until `deadline`.
    async fn on_leader<T, Fut>(
        &self,
        g: &Group,
        deadline: Instant,
        req: impl Fn() -> Request,
        extract: fn(Response) -> Option<T>,
        local: impl Fn() -> Fut,
    ) -> Result<T, LeaderGone>
    where
        Fut: std::future::Future<Output = Result<T, RemoteError>>,
    {
        if Instant::now() >= deadline {
            return Err(LeaderGone::NoBudget);
        }
        let mut maybe_sent = false;
        let mut last_problem = String::from("no leader known");
        while Instant::now() < deadline {
            let leader = g.raft.metrics().borrow_watched().current_leader;
            let remaining = deadline.saturating_duration_since(Instant::now());
            let attempt = match leader {
                None => {
                    tokio::time::sleep(RETRY_PAUSE.min(remaining)).await;
                    continue;
                }
                Some(l) if l == self.id.0 => match tokio::time::timeout(remaining, local()).await {
                    Ok(r) => r.map_err(CallError::Remote),
                    Err(_) => Err(CallError::Timeout),
                },
                Some(l) => match self.pool.call(NodeId(l), g.id.0, req(), remaining).await {
                    Ok(resp) => extract(resp).ok_or_else(|| {
                        CallError::Remote(RemoteError::new(
                            Code::Internal,
                            "unexpected response kind",
                        ))
                    }),
                    Err(e) => Err(e),
                },
            };
            match attempt {
                Ok(v) => return Ok(v),
                Err(CallError::Remote(e)) if e.not_leader => last_problem = e.message,
                Err(CallError::Remote(e)) => return Err(LeaderGone::Answered(e)),
                Err(CallError::Unreachable(m)) => last_problem = m,
                Err(CallError::Timeout) => {
                    maybe_sent = true;
                    last_problem = "the leader did not answer in time".into();
                }
            }
            tokio::time::sleep(RETRY_PAUSE.min(deadline.saturating_duration_since(Instant::now())))
                .await;
        }
        Err(LeaderGone::Exhausted {
            maybe_sent,
            last_problem,
        })
    }

    /// Runs on the leader: stamps the commit time and proposes.
    async fn leader_propose(&self, g: &Group, op: Op) -> Result<WriteResult, RemoteError> {
        if let ClockHealth::Skewed(why) = self.clock_health() {
            // Not stamped, not proposed: the caller retries, on the next leader.
            self.give_up_leadership(g);
            return Err(RemoteError {
                code: Code::Unavailable,
                message: format!("node {} stamps no commits: {why}", self.id),
                leader_hint: None,
                not_leader: true,
            });
        }
        let commit_ts = self.hlc.now(self.clock.wall_ms());
        if self.config.bugs.ack_early() && !matches!(op, Op::Sweep { .. }) {
            // The injected bug: acknowledged now, proposed a little later, with a guessed
            // position; a leader change or a kill in between loses an acknowledged write.
            let index = g
                .raft
                .metrics()
                .borrow_watched()
                .last_log_index
                .unwrap_or(0)
                + 1;
            let raft = g.raft.clone();
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(100)).await;
                let _ = raft.client_write(Command { commit_ts, op }).await;
            });
            return Ok(WriteResult {
                index,
                commit_ts,
                result: CommandResult::changed(false),
            });
        }
        match g.raft.client_write(Command { commit_ts, op }).await {
            Ok(resp) => Ok(WriteResult {
                index: resp.log_id.index(),
                commit_ts,
                result: resp.data,
            }),
            Err(RaftError::APIError(ClientWriteError::ForwardToLeader(f))) => Err(RemoteError {
                code: Code::Unavailable,
                message: format!("node {} is not the leader of {}", self.id, g.id),
                leader_hint: f.leader_id,
                not_leader: true,
            }),
            // Appended, then truncated by a new leader: it may still commit through it, so the
            // outcome is unknown and the write must not be retried blindly.
            Err(RaftError::APIError(ClientWriteError::LogEntryDiscarded(f))) => Err(RemoteError {
                code: Code::Timeout,
                message: format!(
                    "leadership of {} moved to {:?} while the write was in flight; it may or may not commit",
                    g.id, f.leader_id
                ),
                leader_hint: f.leader_id,
                not_leader: false,
            }),
            Err(e) => Err(RemoteError::new(Code::Internal, e.to_string())),
        }
    }

    // ---- reads ----

    /// The read index of `group`: the leader's commit index, confirmed with a quorum after the
    /// read began (Raft read-index).
    async fn read_index(&self, group: GroupId, deadline: Instant) -> Result<u64, TunekvError> {
        let g = self.hosted(group)?;
        let res = self
            .on_leader(
                &g,
                deadline,
                || Request::ReadIndex,
                |r| match r {
                    Response::ReadIndex(i) => Some(i),
                    _ => None,
                },
                || self.leader_read_index(&g),
            )
            .await;
        match res {
            Ok(i) => Ok(i),
            Err(LeaderGone::Answered(e)) => Err(err(e.code, e.message)),
            Err(LeaderGone::NoBudget) => Err(no_budget("read-index probe")),
            Err(LeaderGone::Exhausted { last_problem, .. }) => Err(err(
                Code::NoQuorum,
                format!(
                    "node {} could not get a read index confirmed by a quorum for {group} within the wait budget \
                     ({last_problem})",
                    self.id
                ),
            )),
        }
    }

    async fn leader_read_index(&self, g: &Group) -> Result<u64, RemoteError> {
        match g.raft.ensure_linearizable(ReadPolicy::ReadIndex).await {
            Ok(read_log_id) => Ok(read_log_id.index()),
            Err(RaftError::APIError(LinearizableReadError::ForwardToLeader(f))) => {
                Err(RemoteError {
                    code: Code::Unavailable,
                    message: format!("node {} is not the leader of {}", self.id, g.id),
                    leader_hint: f.leader_id,
                    not_leader: true,
                })
            }
            Err(RaftError::APIError(e)) => Err(RemoteError::new(Code::NoQuorum, e.to_string())),
            Err(e) => Err(RemoteError::new(Code::Internal, e.to_string())),
        }
    }

    async fn wait_applied(
        &self,
        g: &Group,
        index: u64,
        deadline: Instant,
    ) -> Result<(), TunekvError> {
        let mut rx = g.data.subscribe();
        loop {
            let applied = rx.borrow_and_update().index;
            if applied >= index {
                return Ok(());
            }
            match tokio::time::timeout_at(deadline, rx.changed()).await {
                Ok(Ok(())) => continue,
                Ok(Err(_)) => return Err(err(Code::Unavailable, "the group is shutting down")),
                Err(_) => {
                    return Err(err(
                        Code::Timeout,
                        format!("copy of {} on node {} has applied index {applied}, needs {index}; it did not catch up within the wait budget", g.id, self.id),
                    ))
                }
            }
        }
    }

    /// What this copy of `g` knows about itself now.
    fn copy_state(&self, g: &Group) -> CopyState {
        let applied = g.data.applied();
        let m = g.raft.metrics();
        let m = m.borrow_watched();
        let is_leader = m.current_leader == Some(self.id.0) && m.state == ServerState::Leader;
        let contact_age = if is_leader {
            m.last_quorum_acked
                .as_ref()
                .map(|t| openraft::Instant::elapsed(&**t))
        } else {
            g.last_contact
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .map(|t| t.elapsed())
        };
        CopyState {
            applied: Position {
                shard: g.id.shard(),
                index: LogIndex(applied.index),
                commit_ms: Hlc::millis(applied.commit_ts),
            },
            known_commit: LogIndex(
                m.cluster_committed
                    .as_ref()
                    .map(|c| c.index())
                    .unwrap_or(0)
                    .max(applied.index),
            ),
            is_leader,
            contact_age,
            watermark: g
                .watermark
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .map(|(index, at)| Watermark {
                    index: LogIndex(index),
                    age: at.elapsed(),
                }),
        }
    }

    /// Reads `key` at `level` (the keyspace's default when `None`), waiting at most `wait`.
    pub async fn get(
        &self,
        ks: &str,
        key: &[u8],
        level: Option<Level>,
        wait: Option<Duration>,
        session: &mut Session,
    ) -> Result<ReadOutcome, TunekvError> {
        let mut shards = self
            .batch_get(ks, &[key.to_vec()], level, wait, session)
            .await?;
        let shard = shards
            .pop()
            .ok_or_else(|| internal("a one-key batch read no shard"))?;
        let value = shard
            .values
            .into_iter()
            .next()
            .and_then(|(_, v)| v)
            .map(|v| v.value);
        Ok(ReadOutcome {
            value,
            receipt: shard.receipt,
        })
    }

    /// Reads several keys at `level`: one consistent view per shard, one receipt per shard.
    /// Expired keys read as absent. Values totalling more than the config's
    /// `batch_get_response_bytes_max` are refused with `response_too_large` before any is
    /// copied, so a batch costs at most that much memory (a key named twice counts twice).
    pub async fn batch_get(
        &self,
        ks: &str,
        keys: &[Vec<u8>],
        level: Option<Level>,
        wait: Option<Duration>,
        session: &mut Session,
    ) -> Result<Vec<ShardRead>, TunekvError> {
        let started = Instant::now();
        let deadline = started + self.wait_budget(wait, self.config.read_wait_ms_default);
        let ks = self.keyspace(ks, deadline).await?;
        let level = level.unwrap_or_else(|| ks.spec.default_level());
        let by_shard = by_shard(&ks, keys.to_vec(), |k| k)?;
        let bytes_max = self.config.batch_get_response_bytes_max;
        let mut bytes_total = 0u64;
        let mut out = Vec::with_capacity(by_shard.len());
        for (shard, keys) in by_shard {
            let g = self.hosted_shard(&ks, shard).await?;
            let room = bytes_max.saturating_sub(bytes_total);
            let (values, receipt) = self
                .read_shard(&g, level, session, started, deadline, |view, now_ms| {
                    let found: Vec<_> = keys.iter().map(|k| view.get_live(k, now_ms)).collect();
                    let bytes: u64 = found.iter().flatten().map(|v| v.value.len() as u64).sum();
                    if bytes > room {
                        return Err(bytes);
                    }
                    let values: Vec<_> = keys
                        .iter()
                        .zip(found)
                        .map(|(k, v)| (k.clone(), v.cloned()))
                        .collect();
                    Ok((values, bytes))
                })
                .await?;
            let (values, bytes) = values.map_err(|bytes| {
                err(
                    Code::ResponseTooLarge,
                    format!(
                        "the values asked for total more than {bytes_max} bytes (at least {}), \
                         the node's batch_get_response_bytes_max; ask for fewer keys at a time",
                        bytes_total + bytes
                    ),
                )
            })?;
            bytes_total += bytes;
            out.push(ShardRead { values, receipt });
        }
        Ok(out)
    }

    /// One page of a SCAN over `ks` at `level`. The cursor holds a shard (top 8 bits) and a
    /// position in that shard's `scan_hash` order, so every key present for the whole scan is
    /// returned at least once, whatever is written meanwhile. About `count` keys are examined
    /// (all keys sharing the last hash are taken together); those `matches` accepts are
    /// returned. The next cursor is 0 when the scan is complete.
    #[allow(clippy::too_many_arguments)]
    pub async fn scan(
        &self,
        ks: &str,
        cursor: u64,
        count: usize,
        matches: &(dyn Fn(&[u8]) -> bool + Sync),
        level: Option<Level>,
        wait: Option<Duration>,
        session: &mut Session,
    ) -> Result<ScanPage, TunekvError> {
        let started = Instant::now();
        let deadline = started + self.wait_budget(wait, self.config.read_wait_ms_default);
        let ks = self.keyspace(ks, deadline).await?;
        let level = level.unwrap_or_else(|| ks.spec.default_level());
        let mask = (1u64 << SCAN_HASH_BITS) - 1;
        let mut shard = u32::try_from(cursor >> SCAN_HASH_BITS).unwrap_or(u32::MAX);
        let mut from = cursor & mask;
        if shard >= ks.spec.shards {
            return Err(err(Code::BadRequest, format!("invalid cursor {cursor}")));
        }
        let count = count.clamp(1, BATCH_KEYS_MAX * 10);
        let mut page = ScanPage {
            cursor: 0,
            keys: Vec::new(),
            receipts: Vec::new(),
        };
        let mut examined = 0;
        while examined < count {
            let g = self.hosted_shard(&ks, ShardId(shard)).await?;
            let want = count - examined;
            let ((taken, next), receipt) = self
                .read_shard(&g, level, session, started, deadline, |view, now_ms| {
                    let mut keys: Vec<(u64, &Vec<u8>)> = view
                        .live(now_ms)
                        .map(|(k, _)| (scan_hash(k), k))
                        .filter(|(h, _)| *h >= from)
                        .collect();
                    keys.sort_unstable();
                    let mut end = want.min(keys.len());
                    while end > 0 && end < keys.len() && keys[end].0 == keys[end - 1].0 {
                        end += 1;
                    }
                    let next = (end < keys.len()).then(|| keys[end].0);
                    let taken: Vec<Vec<u8>> =
                        keys[..end].iter().map(|(_, k)| (*k).clone()).collect();
                    (taken, next)
                })
                .await?;
            page.receipts.push(receipt);
            examined += taken.len().max(1);
            page.keys.extend(taken.into_iter().filter(|k| matches(k)));
            match next {
                Some(h) => {
                    page.cursor = (u64::from(shard) << SCAN_HASH_BITS) | h;
                    return Ok(page);
                }
                None if shard + 1 < ks.spec.shards => {
                    shard += 1;
                    from = 0;
                    page.cursor = u64::from(shard) << SCAN_HASH_BITS;
                }
                None => {
                    page.cursor = 0;
                    return Ok(page);
                }
            }
        }
        Ok(page)
    }

    /// The number of live keys in `ks` at `level`, with one receipt per shard.
    pub async fn count_keys(
        &self,
        ks: &str,
        level: Option<Level>,
        wait: Option<Duration>,
        session: &mut Session,
    ) -> Result<(u64, Vec<Receipt>), TunekvError> {
        let started = Instant::now();
        let deadline = started + self.wait_budget(wait, self.config.read_wait_ms_default);
        let ks = self.keyspace(ks, deadline).await?;
        let level = level.unwrap_or_else(|| ks.spec.default_level());
        let mut total = 0;
        let mut receipts = Vec::new();
        for shard in 0..ks.spec.shards {
            let g = self.hosted_shard(&ks, ShardId(shard)).await?;
            let (n, receipt) = self
                .read_shard(&g, level, session, started, deadline, |view, now_ms| {
                    view.live(now_ms).count() as u64
                })
                .await?;
            total += n;
            receipts.push(receipt);
        }
        Ok((total, receipts))
    }

    /// Reads one view of `g` at `level` once the copy may serve it: `f` gets the view and the
    /// time expiry is judged at (this node's wall clock, never before the applied commit time).
    /// Records the read in the session.
    async fn read_shard<T>(
        &self,
        g: &Group,
        level: Level,
        session: &mut Session,
        started: Instant,
        deadline: Instant,
        f: impl FnOnce(&tunekv_raft::ShardView<'_>, u64) -> T,
    ) -> Result<(T, Receipt), TunekvError> {
        session.admit(g.id)?;
        let req = self.bugged(level, Requirement::for_level(level, session.mark(g.id))?);
        let served = self
            .until_servable(g, level, req, started, deadline)
            .await?;
        let view = g.data.read();
        let applied = view.applied();
        // Never before the applied commit time, unless that ran ahead of this node's trusted
        // clock by more than the offset bound (a skewed stamp must not expire keys early).
        let wall = self.expiry_wall_ms();
        let now_ms = Hlc::millis(applied.commit_ts)
            .min(wall.saturating_add(self.config.max_clock_offset_ms))
            .max(wall);
        let out = f(&view, now_ms);
        drop(view);
        let receipt = self.receipt(g, level, applied, &served, started);
        session.read(g.id, receipt.position.index);
        Ok((out, receipt))
    }

    /// The requirement with this node's injected bugs applied (bug-injection builds only;
    /// otherwise `req` unchanged).
    fn bugged(&self, level: Level, req: Requirement) -> Requirement {
        let b = &self.config.bugs;
        let broken = match level {
            Level::Strong => b.strong_local(),
            Level::ReadYourWrites | Level::MonotonicReads | Level::Session => b.ignore_session(),
            Level::Bounded { .. } => b.skip_bounded(),
            _ => false,
        };
        if broken {
            Requirement::Anything
        } else {
            req
        }
    }

    /// Runs `req` (the requirement of `level`) through `judge` until this copy of `g` may
    /// serve: probing the leader, waiting for the copy to apply, or refusing with the level's
    /// code.
    async fn until_servable(
        &self,
        g: &Group,
        level: Level,
        mut req: Requirement,
        started: Instant,
        deadline: Instant,
    ) -> Result<Served, TunekvError> {
        let mut probed = None;
        loop {
            let copy = self.copy_state(g);
            match judge(&copy, &req, started.elapsed()) {
                Verdict::Serve => return Ok(Served { copy, probed }),
                Verdict::Probe => {
                    let index = self.probe(g, started, deadline).await.map_err(|e| {
                        err(
                            req.no_probe_code(level),
                            format!("{level} read on node {}: {}", self.id, e.message),
                        )
                    })?;
                    probed = Some(index);
                    req = req.after_probe(LogIndex(index));
                }
                Verdict::Wait(index) => {
                    self.wait_applied(g, index.0, deadline).await.map_err(|e| {
                        if e.code == Code::Timeout {
                            err(
                                req.unmet_code(level),
                                format!("{level} read: {}", e.message),
                            )
                        } else {
                            e
                        }
                    })?
                }
                Verdict::Refuse(e) => return Err(e),
            }
        }
    }

    /// A read index confirmed by a quorum-holding leader through a probe sent no earlier than
    /// `started`: every write committed before `started` is at or below it. Reads that start
    /// while a probe is in flight wait for it and send the next one together, so a group has
    /// at most one probe in flight from this node however many reads arrive.
    async fn probe(
        &self,
        g: &Group,
        started: Instant,
        deadline: Instant,
    ) -> Result<u64, TunekvError> {
        let mut last = tokio::time::timeout_at(deadline, g.own_probe.lock())
            .await
            .map_err(|_| {
                err(
                    Code::Timeout,
                    format!("no read index for {} within the wait budget", g.id),
                )
            })?;
        if let Some((index, sent)) = *last {
            if sent >= started {
                return Ok(index);
            }
        }
        g.probes.fetch_add(1, Ordering::Relaxed);
        let sent = Instant::now();
        let index = self.read_index(g.id, deadline).await?;
        *last = Some((index, sent));
        drop(last);
        g.offer_watermark(index, sent);
        Ok(index)
    }

    fn receipt(
        &self,
        g: &Group,
        level: Level,
        applied: Applied,
        served: &Served,
        started: Instant,
    ) -> Receipt {
        let position = Position {
            shard: g.id.shard(),
            index: LogIndex(applied.index),
            commit_ms: Hlc::millis(applied.commit_ts),
        };
        let staleness = if self.config.bugs.old_receipts() {
            self.old_staleness(level, position, served)
        } else {
            // Entries: how far behind the newest commit this copy knew of (a probe's read
            // index when it took one). Time: how long before the read began the newest
            // freshness proof the served state satisfies was taken, so the state holds every
            // write acknowledged more than that before the read (the receipt-honesty property).
            let proof_age = match served.probed {
                // The probe itself, sent after the read began, is a proof the state meets.
                Some(read_index) if applied.index >= read_index => Some(Duration::ZERO),
                _ => g.proof_age_at(applied.index, started),
            };
            let entries = match served.probed {
                Some(read_index) => read_index.saturating_sub(applied.index),
                None => served.copy.known_commit.0.saturating_sub(applied.index),
            };
            Staleness::proven(entries, proof_age)
        };
        Receipt {
            level,
            served_by: self.id,
            position,
            staleness,
        }
    }

    /// The receipt rule before issue 15 (bug injection `old-receipts` only): it understated
    /// staleness for a copy that knew it was behind (contact age) or whose commit times ran
    /// ahead of real time (now − commit time, clamped at 0).
    fn old_staleness(&self, level: Level, position: Position, served: &Served) -> Staleness {
        match (served.probed, served.copy.watermark) {
            // The newest commit at the read's start is at or below the probed index.
            (Some(read_index), _) => {
                Staleness::behind(LogIndex(read_index), position, self.clock.wall_ms())
            }
            // Served on a watermark: fresh as of when its probe was sent.
            (None, Some(w)) if matches!(level, Level::Bounded { .. }) => Staleness {
                entries: served.copy.lag_entries(),
                ms: u64::try_from(w.age.as_millis()).unwrap_or(u64::MAX),
            },
            _ => Staleness::of_copy(&served.copy),
        }
    }

    // ---- status and faults ----

    /// This node's replicas, one line per hosted group.
    pub fn local_status(&self) -> Vec<ReplicaStatus> {
        self.all_groups()
            .iter()
            .map(|g| {
                let applied = g.data.applied();
                let m = g.raft.metrics();
                let m = m.borrow_watched();
                ReplicaStatus {
                    group: g.id.0,
                    node: self.id.0,
                    state: format!("{:?}", m.state),
                    leader: m.current_leader,
                    term: m.current_term,
                    applied_index: applied.index,
                    committed_index: m.local_committed.as_ref().map(|c| c.index()).unwrap_or(0),
                    applied_log_id: m
                        .last_applied
                        .as_ref()
                        .map(|l| (l.index(), l.committed_leader_id().to_string())),
                    last_log_index: m.last_log_index.unwrap_or(0),
                    snapshot_index: m.snapshot.as_ref().map(|s| s.index()).unwrap_or(0),
                    purged_index: m.purged.as_ref().map(|p| p.index()).unwrap_or(0),
                    commit_ms: Hlc::millis(applied.commit_ts),
                    watermark_age_ms: g
                        .watermark
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .map(|(_, at)| u64::try_from(at.elapsed().as_millis()).unwrap_or(u64::MAX)),
                    probes: g.probes.load(Ordering::Relaxed),
                    stored_keys: g.data.read().stored_keys() as u64,
                }
            })
            .collect()
    }

    /// This node's status: its replicas and its clock.
    fn node_report(&self) -> NodeReport {
        NodeReport {
            replicas: self.local_status(),
            clock_skew: match self.clock_health() {
                ClockHealth::Skewed(why) => Some(why),
                ClockHealth::Trusted => None,
            },
            hlc_capped_total: self.hlc.capped_total(),
        }
    }

    /// Every node's view of every group, gathered now (unreachable nodes are marked so).
    pub async fn cluster_status(&self) -> ClusterStatus {
        let me = self.node_report();
        let mut replicas = me.replicas;
        let mut nodes = Vec::new();
        let calls = self
            .config
            .peers
            .iter()
            .filter(|p| p.id != self.id.0)
            .map(|p| async move {
                (
                    p,
                    self.pool
                        .call(NodeId(p.id), 0, Request::Status, STATUS_WAIT)
                        .await,
                )
            });
        for (p, res) in futures::future::join_all(calls).await {
            let reachable = match res {
                Ok(Response::Status(mut r)) => {
                    replicas.append(&mut r.replicas);
                    Some(r)
                }
                _ => None,
            };
            nodes.push(NodeEntry {
                id: p.id,
                http: p.http.clone(),
                raft: p.raft.clone(),
                reachable: reachable.is_some(),
                clock_skew: reachable.as_ref().and_then(|r| r.clock_skew.clone()),
                hlc_capped_total: reachable.map_or(0, |r| r.hlc_capped_total),
            });
        }
        nodes.push(NodeEntry {
            id: self.id.0,
            http: self.config.http.clone(),
            raft: self.config.raft.clone(),
            reachable: true,
            clock_skew: me.clock_skew,
            hlc_capped_total: me.hlc_capped_total,
        });
        nodes.sort_by_key(|n| n.id);
        let names: BTreeMap<u64, String> = self
            .list_keyspaces()
            .into_iter()
            .map(|k| (k.id, k.name))
            .collect();
        let mut groups: BTreeMap<u64, GroupStatus> = BTreeMap::new();
        for r in replicas {
            let gid = GroupId(r.group);
            let entry = groups.entry(r.group).or_insert_with(|| {
                let keyspace = if gid.is_metadata() {
                    None
                } else {
                    names.get(&gid.keyspace_id()).cloned()
                };
                GroupStatus {
                    name: match &keyspace {
                        Some(k) => format!("{k}/shard{}", gid.shard()),
                        None if gid.is_metadata() => "meta".into(),
                        None => gid.to_string(),
                    },
                    group: r.group,
                    shard: (!gid.is_metadata()).then_some(gid.shard().0),
                    keyspace,
                    leader: None,
                    replicas: Vec::new(),
                }
            });
            if r.state == "Leader" {
                entry.leader = Some(r.node);
            }
            entry.replicas.push(r);
        }
        for g in groups.values_mut() {
            g.replicas.sort_by_key(|r| r.node);
            if g.leader.is_none() {
                g.leader = g.replicas.iter().find_map(|r| r.leader);
            }
        }
        ClusterStatus {
            served_by: self.id.0,
            nodes,
            groups: groups.into_values().collect(),
        }
    }

    /// The fault hook: isolate this node from every other node, or heal.
    pub fn set_isolated(&self, on: bool) -> Result<(), TunekvError> {
        let mut f = self.fault_state();
        f.isolated = on;
        self.set_fault_state(f)
    }

    /// The faults injected on this node now.
    pub fn fault_state(&self) -> FaultState {
        FaultState {
            isolated: self.faults.isolated(),
            links: self.faults.links(),
            clock_offset_ms: self.clock.offset_ms(),
        }
    }

    /// Replaces the faults injected on this node (`FaultState::default()` heals it).
    pub fn set_fault_state(&self, f: FaultState) -> Result<(), TunekvError> {
        if !(0.0..=1.0).contains(&f.links.drop_rate) {
            return Err(err(Code::BadRequest, "drop_rate must be within 0..=1"));
        }
        // Checked without overflow: u64::MAX + 1 used to wrap below the cap.
        if f.links.delay_ms.saturating_add(f.links.jitter_ms) > FAULT_DELAY_MS_MAX {
            return Err(err(
                Code::BadRequest,
                format!("delay_ms + jitter_ms must be at most {FAULT_DELAY_MS_MAX}"),
            ));
        }
        if f.clock_offset_ms.unsigned_abs() > FAULT_CLOCK_OFFSET_MS_MAX {
            return Err(err(
                Code::BadRequest,
                format!("clock_offset_ms must be within ±{FAULT_CLOCK_OFFSET_MS_MAX}"),
            ));
        }
        if !self.faults.enabled() {
            return Err(err(
                Code::FaultsDisabled,
                "this node was not started with --enable-faults",
            ));
        }
        if !self.clock.set_offset_ms(f.clock_offset_ms) && f.clock_offset_ms != 0 {
            return Err(err(Code::BadRequest, "this node's clock cannot be skewed"));
        }
        self.faults.set_isolated(f.isolated);
        self.faults.set_links(f.links.clone());
        tracing::warn!(faults = ?f, "fault injection");
        Ok(())
    }

    /// Stops every group and makes the storage durable.
    pub async fn shutdown(&self) {
        for g in self.all_groups() {
            let _ = g.raft.shutdown().await;
        }
        let _ = self.commit.sync().await;
    }

    async fn handle_request(&self, group: u64, req: Request) -> Result<Response, RemoteError> {
        let gid = GroupId(group);
        match req {
            Request::Status => return Ok(Response::Status(self.node_report())),
            Request::Clock => {
                return Ok(Response::Clock {
                    incarnation: self.incarnation,
                    now_us: self.mono_us(Instant::now()),
                    wall_ms: self.clock.wall_ms(),
                })
            }
            Request::Watermarks(push) => {
                self.accept_watermarks(push);
                return Ok(Response::Done);
            }
            _ => {}
        }
        let g = self.group(gid).ok_or_else(|| {
            RemoteError::new(
                Code::Unavailable,
                format!("group {gid} is not open on node {}", self.id),
            )
        })?;
        let fatal = |e: openraft::error::Fatal<tunekv_raft::TypeConfig>| {
            RemoteError::new(Code::Internal, e.to_string())
        };
        match req {
            Request::Append(rpc) => {
                let resp = g
                    .raft
                    .append_entries(rpc)
                    .await
                    .map_err(|e| RemoteError::new(Code::Internal, e.to_string()))?;
                if !matches!(resp, AppendEntriesResponse::HigherVote(_)) {
                    *g.last_contact.lock().unwrap_or_else(|p| p.into_inner()) =
                        Some(Instant::now());
                }
                Ok(Response::Append(resp))
            }
            Request::Vote(rpc) => g
                .raft
                .vote(rpc)
                .await
                .map(Response::Vote)
                .map_err(|e| RemoteError::new(Code::Internal, e.to_string())),
            Request::Snapshot { vote, meta, data } => {
                let snapshot = openraft::alias::SnapshotOf::<tunekv_raft::TypeConfig, Vec<u8>> {
                    meta,
                    snapshot: data,
                };
                g.raft
                    .install_full_snapshot(vote, snapshot)
                    .await
                    .map(Response::Snapshot)
                    .map_err(fatal)
            }
            Request::Write(op) => {
                match tokio::time::timeout(FORWARDED_WORK_MAX, self.leader_propose(&g, op)).await {
                    Ok(r) => r.map(Response::Write),
                    Err(_) => Err(RemoteError::new(
                        Code::Timeout,
                        "the leader could not commit in time",
                    )),
                }
            }
            Request::ReadIndex => {
                match tokio::time::timeout(FORWARDED_WORK_MAX, self.leader_read_index(&g)).await {
                    Ok(r) => r.map(Response::ReadIndex),
                    Err(_) => Err(RemoteError::new(
                        Code::NoQuorum,
                        "the leader could not confirm with a quorum in time",
                    )),
                }
            }
            Request::TransferLeader(req) => g
                .raft
                .handle_transfer_leader(req)
                .await
                .map(Response::TransferLeader)
                .map_err(fatal),
            Request::Status | Request::Clock | Request::Watermarks(_) => {
                Err(RemoteError::new(Code::Internal, "handled above"))
            }
        }
    }
}

impl Handler for Node {
    fn handle(&self, group: u64, req: Request) -> BoxFuture<'_, Result<Response, RemoteError>> {
        Box::pin(self.handle_request(group, req))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn receipts_use_the_newest_proof_the_served_state_satisfies() {
        // Regression (issue 15): a copy 84 entries behind that still heard heartbeats reported
        // `ms=12` (its contact age). Its age is that of the newest proof it has applied.
        let t0 = Instant::now();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        let mut p = Proofs::default();
        assert_eq!(p.covered(100), None, "no proof yet: unknown");
        p.offer(10, at(100));
        p.offer(20, at(200));
        p.offer(30, at(300));
        // Applied 15: only the proof of index 10 holds.
        assert_eq!(p.covered(15), Some(at(100)));
        // Applied 25 later: the proof of index 20.
        assert_eq!(p.covered(25), Some(at(200)));
        // A proof taken out of order (a probe answered late) still counts.
        p.offer(26, at(250));
        assert_eq!(p.covered(26), Some(at(250)));
        assert_eq!(p.covered(30), Some(at(300)));
        // Never goes back, and older proofs are not kept once covered.
        p.offer(5, at(50));
        assert_eq!(p.covered(30), Some(at(300)));
        assert!(p.pending.is_empty());
    }

    #[test]
    fn the_proof_list_is_bounded() {
        let t0 = Instant::now();
        let mut p = Proofs::default();
        for i in 0..(PROOFS_PENDING_MAX as u64 + 10) {
            p.offer(1_000 + i, t0 + Duration::from_millis(i));
        }
        assert_eq!(p.pending.len(), PROOFS_PENDING_MAX);
        // The oldest were dropped: a receipt is only ever more cautious.
        assert_eq!(p.covered(1_005), None);
    }
}
