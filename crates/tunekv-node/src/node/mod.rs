//! The node: groups, catalog, and the request flow of reads and writes, by concern:
//! `lifecycle` (start, groups, background loops, shutdown), `catalog` (keyspaces), `write`,
//! `read`, `freshness` (clocks, watermarks, receipt proofs), `status` (cluster status, fault
//! hook), `rpc_handler` (requests from other nodes). The types every part shares live here.

mod auth;
mod backup;
mod catalog;
mod dotted;
mod freshness;
#[doc(hidden)]
pub mod fuzzing;
mod leaderless;
mod lifecycle;
mod membership;
mod observe;
mod pubsub;
mod read;
mod ring_change;
mod rpc_handler;
mod status;
mod stored_feed;
mod watch;
mod write;
pub use auth::{op_needs, quota, Login, RoleView, UserChange, UserView, WatchSlot, AUTH_STALE_MAX};
pub use backup::{RestoreOutcome, ShardDump};
pub use membership::{MembershipReport, MoveView, NodeView};
pub use pubsub::PublishSink;
pub use stored_feed::StoredChange;
pub use watch::{Watch, WatchEvent, WatchFrom, WatchRefused};
pub use write::version_mismatch;

use freshness::Proofs;
pub use leaderless::{LeaderlessReport, ReplicaDigest};

use crate::clock::Clock;
use crate::config::NodeConfig;
use crate::metrics::Metrics;
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
use tunekv_core::keyspace::{shard_for_key, SCAN_HASH_BITS};
use tunekv_core::limits::{check_key, check_keyspace_name, check_value};
use tunekv_core::{
    judge, ClockGuard, ClockHealth, Code, CopyState, GroupId, Hlc, KeyspaceSpec, Level, LogIndex,
    Mode, NodeId, PeerClock, Position, Promise, Quorum, QuorumReceipt, Receipt, Requirement,
    Session, SessionKey, ShardId, Staleness, TunekvError, Verdict, Watermark,
};
use tunekv_raft::{
    Applied, Command, CommandResult, LogStore, Op, Raft, ShardData, StateMachine, StoredValue,
};
use tunekv_storage::{GroupCommit, Storage};

/// Catalog keys in the metadata group: `ks/<name>` → the keyspace spec as JSON.
const CATALOG_PREFIX: &[u8] = b"ks/";
/// A parsed catalog entry, the (create_index, mod_index) it was parsed at, and the metadata
/// copy's applied index when it was last found current.
struct CachedKeyspace {
    version: (u64, u64),
    seen_at: AtomicU64,
    info: Arc<KeyspaceInfo>,
}
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
/// How often a node measures peers it has never measured (at start, and while one is down).
const CALIBRATE_FIRST_EVERY: Duration = Duration::from_millis(50);
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
    // Read-index probes this replica sent (shown in status; pushed watermarks keep it low).
    probes: AtomicU64,
    // Reads that used a probe another read sent (coalesced: no probe of their own).
    probes_shared: AtomicU64,
    // The newest read index this node's own probe got, and when that probe was sent. Held
    // across a probe, so concurrent reads share one probe instead of sending one each; only
    // own probes are kept here, so strong reads depend on no clock but this node's own.
    own_probe: tokio::sync::Mutex<Option<(u64, Instant)>>,
    // Freshness proofs (read indexes a quorum-holding leader confirmed, with when they were
    // taken): the newest is the watermark bounded(t) reads are served on while fresh enough;
    // receipts say how stale a served state is by the newest proof that state satisfies
    // (issue 15: the time since the leader's last contact understated it).
    proofs: Mutex<Proofs>,
    // For the PBS estimate (`tunekv_core::pbs`): the last batches this replica applied while
    // following (last index, wall ms), and the last writes it acknowledged while leading
    // (index, wall ms).
    applies: Mutex<std::collections::VecDeque<(u64, u64)>>,
    acks: Mutex<std::collections::VecDeque<(u64, u64)>>,
    // A snapshot arriving from the leader in chunks, staged on disk until its last chunk.
    receiving: Mutex<Option<Receiving>>,
}

/// A snapshot transfer in progress to this replica.
struct Receiving {
    transfer: u64,
    /// The chunk expected next.
    next: u64,
    stage: Box<dyn tunekv_storage::StateStage>,
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
    /// The key's version on an ordered keyspace: the log index of the write that made the
    /// value (what `if_version` and `CAS` compare); `None` when absent or leaderless.
    pub version: Option<u64>,
    /// When the value expires (Unix ms), if it does.
    pub expires_ms: Option<u64>,
    pub receipt: Receipt,
}

/// The values of one shard read from one view, and its receipt.
#[derive(Clone, Debug)]
pub struct ShardRead {
    /// One entry per key asked of this shard (a key asked twice: two), in the order asked.
    /// Values are shared with the copy's hot values: a read copies none.
    pub values: Vec<(Vec<u8>, Option<Arc<StoredValue>>)>,
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
    /// How a leaderless write met its quorum; `None` on ordered keyspaces.
    pub quorum: Option<QuorumReceipt>,
    /// What an update of a conflict-free keyspace did; `None` for other writes.
    pub update: Option<UpdateReport>,
}

/// What an update of a conflict-free keyspace did (from the replica that made it).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct UpdateReport {
    /// Members or fields added (not present before) and removed.
    pub added: u64,
    pub removed: u64,
    /// The dots (node, counter) the update issued and those it removed: which adds a remove
    /// observed, for the set checker.
    pub dots: Vec<(u64, u64)>,
    pub removed_dots: Vec<(u64, u64)>,
    /// A siblings write: the context it superseded, as [`tunekv_dynamo::causal::Context::entries`].
    pub covered: Option<Vec<String>>,
}

/// A read of a whole conflict-free value (a set, a map, a counter's state) and its receipt.
#[derive(Clone, Debug)]
pub struct StateRead {
    /// `None`: the key holds nothing.
    pub stored: Option<tunekv_dynamo::Stored>,
    pub receipt: Receipt,
}

/// What every read names besides its keys, from any front end (HTTP, RESP): the keyspace, the
/// level (`None`: the keyspace's default), the wait budget (`None`: the node's default) and the
/// session it runs in (its marks are required, and the read is recorded in it).
pub struct ReadRequest<'a> {
    pub keyspace: &'a str,
    pub level: Option<Level>,
    /// Read quorum on leaderless keyspaces (`None`: `one`); refused on ordered ones.
    pub r: Option<Quorum>,
    pub wait: Option<Duration>,
    pub session: &'a mut Session,
}

/// What every write names besides its keys and values: the keyspace, the wait budget (`None`:
/// the node's default) and the session it runs in (the write is recorded in it).
pub struct WriteRequest<'a> {
    pub keyspace: &'a str,
    /// Write quorum on leaderless keyspaces (`None`: `quorum`); refused on ordered ones.
    pub w: Option<Quorum>,
    pub wait: Option<Duration>,
    pub session: &'a mut Session,
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
    // The background loops (peer listener, catalog reconciler, clock calibration, watermark
    // pushes, expiry sweep), and the token that stops them all at `shutdown`.
    tasks: Mutex<tokio::task::JoinSet<()>>,
    stop: tokio_util::sync::CancellationToken,
    // Leaderless and volatile keyspaces: replicas, hints, peer liveness, counters.
    dynamo: leaderless::Dynamo,
    // This node, for work that outlives a request (a leaderless write's remaining copies).
    me: std::sync::OnceLock<std::sync::Weak<Node>>,
    // Where PUBLISH messages go on this node (the RESP listener's subscribers).
    publish_sink: std::sync::OnceLock<pubsub::PublishSink>,
    // What `GET /metrics` shows, counted as things happen (the group commit's observer holds
    // it too).
    metrics: Arc<Metrics>,
    // The last minutes of replication lag, one sample a second (the status page's chart).
    lag_history: Mutex<std::collections::VecDeque<crate::status::LagSample>>,
    // The last PBS estimate (`cluster_status` makes it; `/metrics` shows it).
    pbs: Mutex<Vec<tunekv_core::pbs::PbsCurve>>,
    // Each leaderless keyspace's ring, by keyspace id, with the metadata group's applied index
    // it was read at (valid until that moves).
    ring_cache: Mutex<HashMap<u64, (u64, membership::RingNodes)>>,
    // When this node first saw it holds partitions its keyspace's ring no longer gives it (after
    // a ring change), by keyspace id: they are handed off and dropped `DROP_GRACE` later.
    ring_drops: Mutex<HashMap<u64, Instant>>,
    // The leaderless rings (keyspace id → nodes, a change's target appended) when hints were
    // last re-homed; `None` before the first time.
    rings_rehomed: Mutex<Option<HashMap<u64, Vec<NodeId>>>>,
    // Why the metadata leader cannot make a replica move it must (`GET /v1/admin/nodes`).
    membership_stuck: Mutex<Option<String>>,
    // What a caller may do when auth is off (everything).
    open_grants: Arc<tunekv_core::auth::Grants>,
    // Each user's permissions, with the metadata applied index and user epoch they were read
    // at (valid until either moves).
    grants_cache: Mutex<HashMap<String, auth::CachedGrants>>,
    // Logins hashing passwords now (argon2id is slow on purpose).
    login_gate: tokio::sync::Semaphore,
    dummy_hash: std::sync::OnceLock<String>,
    // Each user's request rate (`user_requests_per_s`); None: no limit.
    user_limiter: Option<auth::UserLimiter>,
    // Open watches per user (`watches_per_user_max`).
    watch_counts: Mutex<HashMap<String, usize>>,
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
