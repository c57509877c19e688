//! Node-to-node RPC: length-delimited frames over one connection per peer, shared by every Raft
//! group (the group id rides in each frame), multiplexed by request id. Every call has a
//! deadline. Wire format: docs/formats.md.

use crate::transport::{BoxFuture, Fate, Faults, Transport};
use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use openraft::alias::{SnapshotMetaOf, VoteOf};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, SnapshotResponse, TransferLeaderRequest,
    TransferLeaderResponse, VoteRequest, VoteResponse,
};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{mpsc, oneshot, OwnedSemaphorePermit, Semaphore};
use tokio_util::codec::{Framed, LengthDelimitedCodec};
use tunekv_core::{Code, NodeId};
use tunekv_raft::{CommandResult, Op, TypeConfig};

/// First byte of every frame; bumped on any incompatible change.
pub const WIRE_VERSION: u8 = 14;
/// Largest frame (a replication batch of large values; snapshots travel in chunks of
/// [`SNAPSHOT_CHUNK_BYTES`]).
pub const FRAME_BYTES_MAX: usize = 256 * 1024 * 1024;
/// Records per snapshot chunk, in bytes (about: a chunk ends with the record that reaches it).
pub const SNAPSHOT_CHUNK_BYTES: usize = 4 << 20;
/// How long one snapshot chunk may take to be sent and stored: openraft's timeout for one
/// RPC, plus its bytes at 10 MB/s, plus (the last chunk) the install's disk syncs. Short, so a
/// chunk lost in a partition is retried soon.
pub fn snapshot_chunk_timeout(rpc: Duration, bytes: usize, last: bool) -> Duration {
    let transfer = Duration::from_micros(bytes as u64 / 10);
    let install = if last {
        Duration::from_secs(2)
    } else {
        Duration::ZERO
    };
    rpc + transfer + install
}
/// Frames queued for one connection's writer.
pub const SEND_QUEUE_MAX: usize = 1024;
/// Bytes of frames queued for one connection's writer (a frame larger than this waits for an
/// empty queue and then takes all of it), so memory per peer link is bounded by bytes, not only
/// by frame count: 1024 queued 16 MiB entries were 16 GiB.
pub const SEND_QUEUE_BYTES_MAX: usize = 64 * 1024 * 1024;
/// Requests one inbound connection may have in flight.
pub const INFLIGHT_PER_CONNECTION_MAX: usize = 1024;
/// Bytes of requests one inbound connection may have in flight (decoded and being handled).
pub const INFLIGHT_BYTES_PER_CONNECTION_MAX: usize = 64 * 1024 * 1024;
/// Frames at least this large travel on a peer's bulk connection (entries with values,
/// snapshots, forwarded writes with large values); everything else — heartbeats, votes, read
/// indexes, clock rounds, watermarks — on its control connection, so one group's large entries
/// never delay another group's heartbeats behind them (issue 15).
pub const BULK_FRAME_BYTES_MIN: usize = 64 * 1024;

const _: () = assert!(SEND_QUEUE_BYTES_MAX <= FRAME_BYTES_MAX);
const _: () = assert!(
    FRAME_BYTES_MAX
        >= 2 * tunekv_core::limits::VALUE_BYTES_MAX_CEILING as usize
            + tunekv_raft::REPLICATION_BATCH_BYTES_MAX
);
/// How long a connection attempt may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_millis(500);

#[derive(Debug, Serialize, Deserialize)]
pub enum Request {
    Append(AppendEntriesRequest<TypeConfig>),
    Vote(VoteRequest<TypeConfig>),
    /// One chunk of a snapshot: a snapshot streams as chunks of records in key order (issue
    /// 21: never one frame holding the whole state). A transfer's chunks are sent one at a
    /// time, in order; the last installs it.
    SnapshotChunk {
        vote: VoteOf<TypeConfig>,
        meta: SnapshotMetaOf<TypeConfig>,
        /// Names the transfer, so a chunk of an abandoned one is never mixed into the next.
        transfer: u64,
        /// 0, 1, 2, … within the transfer.
        seq: u64,
        records: Vec<(Vec<u8>, Vec<u8>)>,
        last: bool,
    },
    /// Propose a command; answered only by the group's leader.
    Write(Op),
    /// The leader's confirmed read index (Raft read-index, checked with a quorum).
    ReadIndex,
    /// This node's view of its groups (for `GET /v1/cluster`).
    Status,
    /// The node's process incarnation and monotonic clock reading (for `PeerClock`).
    Clock,
    /// Freshness watermarks from a leader, one per group it leads (sent with group 0).
    Watermarks(WatermarkPush),
    /// A leader hands the group to this node (a leader whose clock is skewed steps aside).
    TransferLeader(TransferLeaderRequest<TypeConfig>),
    /// Leaderless and volatile keyspaces: replica writes and reads, hints, anti-entropy.
    Dynamo(DynamoRequest),
    /// A PUBLISH made on another node, for this node's subscribers.
    Publish {
        channel: Vec<u8>,
        message: Vec<u8>,
    },
    /// Change the group's voters to `voters`, adding `learners` (id, node-to-node address)
    /// first and waiting for them to catch up (a replica move, a node joining or leaving the
    /// metadata group). Any host of the group takes it and hands it to the leader.
    ChangeMembers {
        learners: Vec<(u64, String)>,
        voters: Vec<u64>,
    },
    /// A one-key read of an ordered keyspace sent by a node that holds no replica of the key's
    /// shard: the receiver, a replica, serves it as it would serve its own client (level,
    /// wait budget, session token) and answers the outcome; it never sends it on.
    Get {
        ks: String,
        key: Vec<u8>,
        level: String,
        wait_ms: u64,
        session: String,
    },
    /// A batch read's keys of one shard of an ordered keyspace, from a node that holds no
    /// replica of it: the receiver, a replica, reads them from one state (one receipt) within
    /// the batch's byte limit (`bytes_max`, of which `bytes_before` went to earlier shards)
    /// and answers [`Response::Shard`]; it never sends it on.
    ReadShard {
        ks: String,
        shard: u32,
        keys: Vec<Vec<u8>>,
        level: String,
        wait_ms: u64,
        bytes_max: u64,
        bytes_before: u64,
        session: String,
    },
    /// One step of a SCAN (`want` keys from scan hash `from`, and the rest of the last one's
    /// hash), or a count of live keys (`want` 0), of one shard of an ordered keyspace, from a
    /// node that holds no replica of it: served by the receiver, a replica, as its own read;
    /// answered [`Response::Scanned`]; never sent on.
    ScanShard {
        ks: String,
        shard: u32,
        from: u64,
        want: u64,
        level: String,
        wait_ms: u64,
        session: String,
    },
    /// The change feed of one shard of an ordered keyspace after index `after`, for a watch on
    /// a node that holds no replica of it: the receiver, a replica, answers from its history
    /// (whole entries, a bounded number of changes), waiting up to `wait_ms` for something
    /// past `after`; answered [`Response::ShardChanges`].
    ShardChanges {
        ks: String,
        shard: u32,
        after: u64,
        wait_ms: u64,
    },
}

/// A shard's part of a batch read served for another node ([`Request::ReadShard`]): each key's
/// value as stored, the bytes of the values, and the receipt.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ForwardedShard {
    pub values: Vec<(Vec<u8>, Option<tunekv_raft::StoredValue>)>,
    pub bytes: u64,
    pub receipt: ForwardedReceipt,
}

/// A SCAN step or key count served for another node ([`Request::ScanShard`]): the keys taken
/// and the scan hash the next step starts at (none: the shard is done), or the count.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ForwardedScan {
    pub keys: Vec<Vec<u8>>,
    pub next: Option<u64>,
    pub count: u64,
    pub receipt: ForwardedReceipt,
}

/// A shard's changes after an index, for a watch on another node ([`Request::ShardChanges`]):
/// every change up to `applied` (in order), or — `compacted` — the oldest index the replica's
/// history starts after, when that is above the index asked for.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ForwardedChanges {
    pub changes: Vec<tunekv_raft::Change>,
    pub applied: u64,
    pub compacted: Option<u64>,
}

/// A read served for another node ([`Request::Get`]): the outcome and its receipt.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ForwardedRead {
    pub value: Option<Vec<u8>>,
    pub version: Option<u64>,
    pub expires_ms: Option<u64>,
    pub receipt: ForwardedReceipt,
}

/// The receipt of a read a replica served for another node, and the session token after it.
/// (Encoded in place, as its fields were before it was a struct: the wire is unchanged.)
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ForwardedReceipt {
    pub level: String,
    pub served_by: u64,
    pub position: String,
    pub entries: u64,
    pub ms: u64,
    pub session: String,
}

/// What one node asks another about a leaderless or volatile keyspace (named, so the receiver
/// checks it against its own catalog).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum DynamoRequest {
    /// Store these versions: merged by the keyspace's policy, durable (leaderless) before the
    /// answer. `fresh`: a coordinator's new write, refused if stamped too far ahead of the
    /// receiver's clock (repairs, hints and anti-entropy carry versions already accepted).
    /// `hint_for`: the receiver stands in for that node and keeps the versions as hints for it.
    Store {
        ks: String,
        items: Vec<(Vec<u8>, tunekv_dynamo::Versioned)>,
        fresh: bool,
        hint_for: Option<u64>,
    },
    /// The version the receiver holds of `key`.
    Fetch { ks: String, key: Vec<u8> },
    /// Anti-entropy: the sender's Merkle roots of the partitions both replicate; the answer
    /// names those that differ.
    Roots { ks: String, roots: Vec<(u32, u64)> },
    /// Anti-entropy: the sender's leaf digests of one partition; the answer has the differing
    /// leaves and the receiver's keys in them.
    Leaves {
        ks: String,
        partition: u32,
        leaves: Vec<u64>,
    },
    /// Tombstone collection: remove each key that holds exactly this version (a tombstone
    /// every replica was seen holding, past its grace).
    Purge {
        ks: String,
        items: Vec<(Vec<u8>, tunekv_dynamo::Version)>,
    },
    /// An update of a conflict-free keyspace (counter, …), forwarded to a replica of the key:
    /// updates are made at a replica, which counts them by its dots. The receiver coordinates
    /// it at write quorum `w` within `wait_ms` and answers [`DynamoResponse::Updated`].
    Update {
        ks: String,
        key: Vec<u8>,
        update: Update,
        w: Option<tunekv_core::Quorum>,
        wait_ms: u64,
        /// The session's dot clock of the key (replica → counter): a remove is made only
        /// from a state that covers it (see `Node::catch_up`).
        clock: Option<std::collections::BTreeMap<u64, u64>>,
    },
    /// The change feed: the versions the receiver's replica stored after sequence `after`
    /// (`None`: none, only where its history ends), waiting up to `wait_ms` for one.
    Changes {
        ks: String,
        after: Option<u64>,
        wait_ms: u64,
    },
}

pub use tunekv_dynamo::update::Update;

/// How an update went, from the replica that made it.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Updated {
    /// The update's version (HLC stamp, node).
    pub version: (u64, u64),
    /// The dots (node, counter) it issued, and those it removed (sets and maps).
    pub dots: Vec<(u64, u64)>,
    pub removed_dots: Vec<(u64, u64)>,
    /// Members or fields it added (not present before) and removed.
    pub added: u64,
    pub removed: u64,
    /// A siblings write: the context it superseded.
    pub covered: Option<tunekv_dynamo::causal::Context>,
    /// A remove or delete: the dot it marked its delta with (see `tunekv_dynamo::update::Made`).
    pub mark: Option<(u64, u64)>,
    /// The partition of the key (the receipt's shard).
    pub partition: u32,
    /// The command's integer answer, as the replica's state has it: a counter's or field's
    /// value after the update; members or fields added or removed.
    pub int: i64,
    pub existed: bool,
    /// Whether a retry found its request already applied (nothing was written).
    pub duplicate: bool,
    pub asked: u32,
    pub answered: u32,
    pub strict: bool,
    pub hinted: u32,
    pub quorum: tunekv_core::Quorum,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum DynamoResponse {
    /// Stored: how many keys changed, and whether any held a live value before.
    Stored {
        changed: u32,
        existed: bool,
    },
    Held(Option<tunekv_dynamo::Versioned>),
    Differ(Vec<u32>),
    Entries {
        leaves: Vec<u32>,
        entries: Vec<(Vec<u8>, tunekv_dynamo::Versioned)>,
    },
    Updated(Updated),
    /// The receiver's stored versions after the sequence asked for, the sequence they reach,
    /// the oldest sequence its history still starts after, and its process incarnation.
    Changes {
        incarnation: u64,
        entries: Vec<crate::node::StoredChange>,
        upto: u64,
        from: u64,
    },
}

/// A leader's watermarks: for each group, every write committed before the leader's monotonic
/// time `acked_us` is at or below `index`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct WatermarkPush {
    /// The sending leader's node id and process incarnation.
    pub from: u64,
    pub incarnation: u64,
    /// (group, index, acked_us): `acked_us` is the send time, on the leader's clock, of the
    /// heartbeat a quorum last acknowledged.
    pub marks: Vec<(u64, u64, i64)>,
}

#[derive(Debug, Serialize, Deserialize)]
pub enum Response {
    Append(AppendEntriesResponse<TypeConfig>),
    Vote(VoteResponse<TypeConfig>),
    /// A snapshot chunk that was not the last was stored.
    SnapshotChunk,
    /// The last chunk: the snapshot was installed (or refused by vote).
    Snapshot(SnapshotResponse<TypeConfig>),
    Write(WriteResult),
    ReadIndex(u64),
    Status(crate::status::NodeReport),
    /// The peer's incarnation, monotonic clock (µs since its start) and wall clock (ms).
    Clock {
        incarnation: u64,
        now_us: i64,
        wall_ms: u64,
    },
    Done,
    TransferLeader(TransferLeaderResponse<TypeConfig>),
    Dynamo(DynamoResponse),
    Read(ForwardedRead),
    Shard(ForwardedShard),
    Scanned(ForwardedScan),
    ShardChanges(ForwardedChanges),
}

/// A committed write as its leader saw it.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct WriteResult {
    pub index: u64,
    pub commit_ts: u64,
    pub result: CommandResult,
}

/// An error answered by the remote node.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RemoteError {
    pub code: Code,
    pub message: String,
    /// Set when the remote is not the group's leader but knows who is.
    pub leader_hint: Option<u64>,
    /// True when the remote is not the leader (the request did nothing).
    pub not_leader: bool,
}

impl RemoteError {
    pub fn new(code: Code, message: impl Into<String>) -> Self {
        RemoteError {
            code,
            message: message.into(),
            leader_hint: None,
            not_leader: false,
        }
    }
}

#[derive(Debug, Serialize, Deserialize)]
enum Body {
    Req(Request),
    Resp(Result<Response, RemoteError>),
}

#[derive(Debug, Serialize, Deserialize)]
struct Frame {
    id: u64,
    group: u64,
    /// The sending node (the fault layer drops by link).
    from: u64,
    body: Body,
}

fn encode(frame: &Frame) -> Result<Bytes, postcard::Error> {
    let mut buf = vec![WIRE_VERSION];
    buf.extend_from_slice(&postcard::to_stdvec(frame)?);
    Ok(Bytes::from(buf))
}

fn decode(bytes: &[u8]) -> Result<Frame, String> {
    match bytes.split_first() {
        Some((&WIRE_VERSION, rest)) => postcard::from_bytes(rest).map_err(|e| e.to_string()),
        Some((v, _)) => Err(format!("wire version {v}, expected {WIRE_VERSION}")),
        None => Err("empty frame".into()),
    }
}

fn codec() -> LengthDelimitedCodec {
    LengthDelimitedCodec::builder()
        .max_frame_length(FRAME_BYTES_MAX)
        .new_codec()
}

/// Why a call failed.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    /// The request was certainly not delivered (no connection, or isolated by a fault).
    #[error("unreachable: {0}")]
    Unreachable(String),
    /// The request may have been delivered; no answer came before the deadline or the
    /// connection broke.
    #[error("no answer within the deadline")]
    Timeout,
    #[error("remote: {}: {}", .0.code, .0.message)]
    Remote(RemoteError),
}

type Pending = Arc<Mutex<BTreeMap<u64, oneshot::Sender<Result<Response, RemoteError>>>>>;

/// A frame on its way to a connection's writer, holding its share of the byte budget.
type Queued = (Bytes, OwnedSemaphorePermit);

/// Permits (bytes) a frame of `len` bytes takes from a budget of `max` bytes.
fn permits(len: usize, max: usize) -> u32 {
    u32::try_from(len.clamp(1, max)).unwrap_or(u32::MAX)
}

struct Conn {
    // Frames to the writer task; bounded so a stuck peer pushes back.
    tx: mpsc::Sender<Queued>,
    // Bytes queued for the writer, at most `SEND_QUEUE_BYTES_MAX`.
    queued_bytes: Arc<Semaphore>,
    // Callers waiting for a response, by request id. Drained with errors when the reader ends.
    pending: Pending,
    alive: Arc<AtomicBool>,
}

/// Which of a peer's two connections a frame uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Lane {
    Control = 0,
    Bulk = 1,
}

struct Peer {
    addr: String,
    // The connections to this peer, by lane; a tokio mutex because connecting awaits.
    conns: [tokio::sync::Mutex<Option<Arc<Conn>>>; 2],
}

/// Outbound calls to every peer.
pub struct PeerPool {
    me: NodeId,
    // Peers by id: the configured ones, and those learned since (nodes that joined).
    peers: std::sync::RwLock<BTreeMap<NodeId, Arc<Peer>>>,
    transport: Arc<dyn Transport>,
    faults: Arc<Faults>,
    next_id: AtomicU64,
}

impl PeerPool {
    pub fn new(
        me: NodeId,
        peers: &[(NodeId, String)],
        transport: Arc<dyn Transport>,
        faults: Arc<Faults>,
    ) -> PeerPool {
        let peers = peers
            .iter()
            .map(|(id, addr)| {
                (
                    *id,
                    Arc::new(Peer {
                        addr: addr.clone(),
                        conns: Default::default(),
                    }),
                )
            })
            .collect();
        PeerPool {
            me,
            peers: std::sync::RwLock::new(peers),
            transport,
            faults,
            next_id: AtomicU64::new(1),
        }
    }

    /// Where node `id` listens for peers, learned from the cluster's membership: a new node,
    /// or a known one at a new address (its old connections are dropped).
    pub fn learn(&self, id: NodeId, addr: &str) {
        if id == self.me || addr.is_empty() {
            return;
        }
        let mut peers = self.peers.write().unwrap_or_else(|p| p.into_inner());
        if peers.get(&id).is_some_and(|p| p.addr == addr) {
            return;
        }
        peers.insert(
            id,
            Arc::new(Peer {
                addr: addr.to_string(),
                conns: Default::default(),
            }),
        );
    }

    /// Whether the pool knows where node `id` listens.
    pub fn knows(&self, id: NodeId) -> bool {
        self.peers
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .contains_key(&id)
    }

    async fn connection(&self, to: NodeId, lane: Lane) -> Result<Arc<Conn>, CallError> {
        let peer = self
            .peers
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(&to)
            .cloned()
            .ok_or_else(|| CallError::Unreachable(format!("unknown node {to}")))?;
        let mut slot = peer.conns[lane as usize].lock().await;
        if let Some(c) = slot.as_ref() {
            if c.alive.load(Ordering::Relaxed) {
                return Ok(c.clone());
            }
        }
        let stream = tokio::time::timeout(CONNECT_TIMEOUT, self.transport.connect(&peer.addr))
            .await
            .map_err(|_| {
                CallError::Unreachable(format!("connect to node {to} at {} timed out", peer.addr))
            })?
            .map_err(|e| {
                CallError::Unreachable(format!("connect to node {to} at {}: {e}", peer.addr))
            })?;
        let (mut sink, mut stream) = Framed::new(stream, codec()).split();
        let (tx, mut rx) = mpsc::channel::<Queued>(SEND_QUEUE_MAX);
        let pending: Pending = Arc::default();
        let alive = Arc::new(AtomicBool::new(true));
        let conn = Arc::new(Conn {
            tx,
            queued_bytes: Arc::new(Semaphore::new(SEND_QUEUE_BYTES_MAX)),
            pending: pending.clone(),
            alive: alive.clone(),
        });
        let writer_alive = alive.clone();
        tokio::spawn(async move {
            while let Some((frame, permit)) = rx.recv().await {
                let sent = sink.send(frame).await;
                drop(permit);
                if sent.is_err() {
                    break;
                }
            }
            writer_alive.store(false, Ordering::Relaxed);
        });
        let faults = self.faults.clone();
        tokio::spawn(async move {
            while let Some(Ok(bytes)) = stream.next().await {
                let Ok(frame) = decode(&bytes) else { break };
                if !faults.inbound_response(to.0) {
                    continue;
                }
                if let Body::Resp(resp) = frame.body {
                    let waiter = pending
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .remove(&frame.id);
                    if let Some(w) = waiter {
                        let _ = w.send(resp);
                    }
                }
            }
            alive.store(false, Ordering::Relaxed);
            // Dropping the senders wakes every waiter with an error.
            pending.lock().unwrap_or_else(|p| p.into_inner()).clear();
        });
        *slot = Some(conn.clone());
        Ok(conn)
    }

    /// Sends `req` for `group` to node `to` and waits at most `timeout` for the answer.
    pub async fn call(
        &self,
        to: NodeId,
        group: u64,
        req: Request,
        timeout: Duration,
    ) -> Result<Response, CallError> {
        if self.faults.isolated() {
            return Err(CallError::Unreachable(
                "this node is isolated by an injected fault".into(),
            ));
        }
        let deadline = tokio::time::Instant::now() + timeout;
        match self.faults.outbound(to.0) {
            Fate::Deliver => {}
            // Lost on the wire: the caller learns nothing until its deadline.
            Fate::Lose => {
                tokio::time::sleep_until(deadline).await;
                return Err(CallError::Timeout);
            }
            Fate::Delay(d) => tokio::time::sleep(d.min(timeout)).await,
        }
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let bytes = encode(&Frame {
            id,
            group,
            from: self.me.0,
            body: Body::Req(req),
        })
        .map_err(|e| CallError::Unreachable(format!("encode: {e}")))?;
        if bytes.len() > FRAME_BYTES_MAX {
            // The codec would refuse it after we queued it; refuse it here, certainly unsent.
            return Err(CallError::Unreachable(format!(
                "request of {} bytes exceeds the {FRAME_BYTES_MAX}-byte frame limit",
                bytes.len()
            )));
        }
        let lane = if bytes.len() >= BULK_FRAME_BYTES_MIN {
            Lane::Bulk
        } else {
            Lane::Control
        };
        let conn = tokio::time::timeout_at(deadline, self.connection(to, lane))
            .await
            .map_err(|_| CallError::Unreachable(format!("connect to node {to} timed out")))??;
        let budget = conn.queued_bytes.clone();
        let permit = match tokio::time::timeout_at(
            deadline,
            budget.acquire_many_owned(permits(bytes.len(), SEND_QUEUE_BYTES_MAX)),
        )
        .await
        {
            Ok(Ok(p)) => p,
            _ => {
                return Err(CallError::Unreachable(format!(
                    "the {lane:?} link to node {to} has {SEND_QUEUE_BYTES_MAX} bytes queued"
                )))
            }
        };
        let (tx, rx) = oneshot::channel();
        conn.pending
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id, tx);
        let sent = tokio::time::timeout_at(deadline, conn.tx.send((bytes, permit))).await;
        if !matches!(sent, Ok(Ok(()))) {
            conn.pending
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&id);
            return Err(CallError::Unreachable(format!(
                "connection to node {to} is closed or full"
            )));
        }
        let answer = tokio::time::timeout_at(deadline, rx).await;
        conn.pending
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&id);
        match answer {
            Ok(Ok(Ok(resp))) => Ok(resp),
            Ok(Ok(Err(remote))) => Err(CallError::Remote(remote)),
            Ok(Err(_)) | Err(_) => Err(CallError::Timeout),
        }
    }
}

/// What serves inbound requests (the node).
pub trait Handler: Send + Sync + 'static {
    fn handle(&self, group: u64, req: Request) -> BoxFuture<'_, Result<Response, RemoteError>>;
}

/// Accepts node-to-node connections until the listener fails.
pub async fn serve(
    me: NodeId,
    mut listener: Box<dyn crate::transport::Listener>,
    handler: Arc<dyn Handler>,
    faults: Arc<Faults>,
) {
    loop {
        let (stream, from) = match listener.accept().await {
            Ok(x) => x,
            Err(e) => {
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let handler = handler.clone();
        let faults = faults.clone();
        tokio::spawn(async move {
            let (mut sink, mut stream) = Framed::new(stream, codec()).split();
            let (tx, mut rx) = mpsc::channel::<Queued>(SEND_QUEUE_MAX);
            let queued_bytes = Arc::new(Semaphore::new(SEND_QUEUE_BYTES_MAX));
            tokio::spawn(async move {
                while let Some((frame, permit)) = rx.recv().await {
                    let sent = sink.send(frame).await;
                    drop(permit);
                    if sent.is_err() {
                        break;
                    }
                }
            });
            // Bounds the handler tasks one connection can start, by count and by bytes.
            let inflight = Arc::new(Semaphore::new(INFLIGHT_PER_CONNECTION_MAX));
            let inflight_bytes = Arc::new(Semaphore::new(INFLIGHT_BYTES_PER_CONNECTION_MAX));
            while let Some(Ok(bytes)) = stream.next().await {
                let Ok(bytes_permit) = inflight_bytes
                    .clone()
                    .acquire_many_owned(permits(bytes.len(), INFLIGHT_BYTES_PER_CONNECTION_MAX))
                    .await
                else {
                    break;
                };
                let frame = match decode(&bytes) {
                    Ok(f) => f,
                    Err(e) => {
                        tracing::warn!(%from, error = %e, "bad frame; closing the connection");
                        break;
                    }
                };
                let Body::Req(req) = frame.body else { continue };
                if faults.isolated() || !faults.inbound_request(frame.from) {
                    continue;
                }
                let Ok(permit) = inflight.clone().acquire_owned().await else {
                    break;
                };
                let handler = handler.clone();
                let tx = tx.clone();
                let faults = faults.clone();
                let queued_bytes = queued_bytes.clone();
                tokio::spawn(async move {
                    let resp = handler.handle(frame.group, req).await;
                    drop(bytes_permit);
                    let _permit = permit;
                    if !faults.outbound_response(frame.from) {
                        return;
                    }
                    match encode(&Frame {
                        id: frame.id,
                        group: frame.group,
                        from: me.0,
                        body: Body::Resp(resp),
                    }) {
                        Ok(b) => {
                            let len = permits(b.len(), SEND_QUEUE_BYTES_MAX);
                            if let Ok(p) = queued_bytes.acquire_many_owned(len).await {
                                let _ = tx.send((b, p)).await;
                            }
                        }
                        Err(e) => tracing::error!(error = %e, "cannot encode a response"),
                    }
                });
            }
        });
    }
}
