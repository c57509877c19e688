//! Leaderless and volatile keyspaces on this node (DESIGN §2): the coordinator of reads and
//! writes at any `r`/`w`, the replica side of node-to-node requests, hinted handoff, read
//! repair and Merkle-tree anti-entropy. Placement, versions, merge and trees are
//! `tunekv_dynamo`'s; this module moves versions between nodes and makes them durable.
//!
//! - A write is stamped by this node's HLC (node id breaks ties) and sent to the key's
//!   placements: its N preference nodes, a node that looks down replaced by the next one up on
//!   the ring (sloppy quorum; that node keeps a hint). It is acknowledged once `w` of them hold it
//!   durably; copies that fail become hints on this node. `any` counts a hint.
//! - A read asks every preference node that looks up, answers once `r` replied (the newest by
//!   the keyspace's policy), and repairs the replicas that replied with something older:
//!   before answering at `r=quorum|all` (so quorum reads are monotonic), after it otherwise.
//! - Failure detector: timeout based. A peer is down from a failed call until a call to it
//!   succeeds, and tried again `DOWN_HOLD` after the failure; the clock round (every 500 ms)
//!   calls every peer, so a healed peer is seen up within about a second.
//! - Volatile keyspaces use the same ring and replicas without the disk: acknowledged once one
//!   preference node holds the value in memory, copied to the others best effort, no hints, no
//!   anti-entropy, lost on restart.

use super::*;
use crate::rpc::{DynamoRequest, DynamoResponse};
use futures::stream::{FuturesUnordered, StreamExt};
use std::collections::VecDeque;
use tunekv_core::{Mode, Quorum, QuorumReceipt};
use tunekv_dynamo::ormap::{OrMap, Payload};
use tunekv_dynamo::replica::Applied;
use tunekv_dynamo::{Policy, Replica, Ring, Stored, Version, Versioned};

/// Storage space of hints (replica data uses the keyspace id, always below it).
const HINT_SPACE: u64 = 1 << 63;
/// Merkle tree depth per partition: 64 leaves.
const TREE_DEPTH: u32 = 6;
/// How long a peer whose last call failed is taken as down before it is tried again.
const DOWN_HOLD: Duration = Duration::from_secs(2);
/// Longest one replica call of a hint replay or an anti-entropy round may take.
const BACKGROUND_CALL_WAIT: Duration = Duration::from_secs(1);
/// Most hints sent to one node in one message, and most value bytes (at least one hint).
const HINT_BATCH_MAX: usize = 256;
/// Most key and value bytes in one message of hints or of anti-entropy entries (at least one
/// key): far below the node-to-node frame limit; a round moves the rest later.
const BATCH_BYTES_MAX: u64 = 8 * 1024 * 1024;
/// Tombstones per purge message (keys are at most `KEY_BYTES_MAX`, 1 KiB: a message stays
/// near 1 MiB).
const PURGE_BATCH_MAX: usize = 1_024;
/// Most expired values a volatile keyspace drops per round (`hint_replay_every_ms`).
const VOLATILE_SWEEP_MAX: usize = 10_000;
/// Most differing partitions one anti-entropy round descends into with one peer.
const AE_PARTITIONS_PER_ROUND: usize = 32;

/// A write kept for a node that could not take it: replayed when that node is back.
#[derive(Clone, Debug, Serialize, serde::Deserialize)]
struct Hint {
    ks: String,
    versioned: Versioned,
    created_ms: u64,
}

/// Where a hint is kept: (the node it is for, keyspace id, key).
type HintSlot = (u64, u64, Vec<u8>);
/// Partitions a ring no longer gives this node, and the versions they hold.
pub(super) type ForeignEntries = (Vec<u32>, Vec<(Vec<u8>, Versioned)>);
/// A tombstone held: (keyspace id, key).
type TombstoneSlot = (u64, Vec<u8>);

#[derive(Default)]
struct Life {
    ok: Option<Instant>,
    failed: Option<Instant>,
}

/// Counters shown in `/v1/cluster`.
#[derive(Default)]
struct Counters {
    hints_stored: AtomicU64,
    hints_replayed: AtomicU64,
    hints_expired: AtomicU64,
    read_repairs: AtomicU64,
    ae_exchanges: AtomicU64,
    ae_keys_repaired: AtomicU64,
    ae_bytes: AtomicU64,
    tombstones_collected: AtomicU64,
}

/// How a write's copies went ([`Node::spread`]).
pub(super) struct Spread {
    /// Copies on preference nodes (the ones held before included), on stand-ins, and hints.
    pub strict: usize,
    pub sloppy: usize,
    pub hinted: u32,
    /// Whether any replica held a live value before.
    pub existed: bool,
    /// Whether `w` was met.
    pub met: bool,
    pub problems: Vec<String>,
}

/// This node's leaderless state: replicas by keyspace id, hints by (target, keyspace id, key),
/// what it knows of its peers' liveness, counters.
#[derive(Default)]
pub(super) struct Dynamo {
    replicas: Mutex<HashMap<u64, Arc<Mutex<Replica>>>>,
    hints: Mutex<BTreeMap<HintSlot, Hint>>,
    life: Mutex<HashMap<NodeId, Life>>,
    counters: Counters,
    // Leaderless versions' clock: unique stamps per node (`Hlc::stamp_above`), apart from the
    // node's commit clock, whose `now` may step back to its cap.
    pub(super) stamps: Hlc,
    // Tombstones held, with when this replica stored them: (keyspace id, key) → version.
    tombstones: Mutex<BTreeMap<TombstoneSlot, (Version, Instant)>>,
    // When an anti-entropy exchange last found a partition equal on a peer (the roots sent
    // were taken at that instant): (keyspace id, partition, peer).
    synced: Mutex<HashMap<(u64, u32, NodeId), Instant>>,
    // The change feed's history of each last-writer-wins keyspace: keyspace id → versions
    // stored here.
    pub(super) feeds: Mutex<HashMap<u64, Arc<super::stored_feed::StoredFeed>>>,
    // Round trips of this coordinator's calls to other replicas, by keyspace, for the WARS
    // estimate (`tunekv_core::pbs::wars_curve`): (stores, fetches), µs, the last few hundred.
    pub(super) rtts: Mutex<HashMap<String, RttRings>>,
}

/// One keyspace's round trips for PBS: (stores, fetches), µs.
type RttRings = (VecDeque<u32>, VecDeque<u32>);

/// Round trips kept per keyspace and kind for PBS.
const RTT_SAMPLES: usize = 512;

/// One keyspace's leaderless figures on one node (in `/v1/cluster`).
#[derive(Clone, Debug, Serialize, serde::Deserialize)]
pub struct ReplicaDigest {
    pub keyspace: String,
    pub mode: Mode,
    /// Keys held, tombstones included.
    pub keys: u64,
    /// A digest of every (key, version) held: two nodes holding the same partitions with the
    /// same versions show the same digest.
    pub digest: u64,
    /// Siblings keyspaces: keys holding more than one value, and the most values one key
    /// holds (0 elsewhere).
    #[serde(default)]
    pub keys_with_siblings: u64,
    #[serde(default)]
    pub siblings_max: u64,
}

/// This node's leaderless figures (in `/v1/cluster`).
#[derive(Clone, Debug, Default, Serialize, serde::Deserialize)]
pub struct LeaderlessReport {
    pub keyspaces: Vec<ReplicaDigest>,
    /// Hints held for other nodes: how many, their value bytes, the oldest one's age.
    pub hints: u64,
    pub hint_bytes: u64,
    pub oldest_hint_age_ms: Option<u64>,
    pub hints_stored_total: u64,
    pub hints_replayed_total: u64,
    pub hints_expired_total: u64,
    pub read_repairs_total: u64,
    pub anti_entropy_exchanges_total: u64,
    pub anti_entropy_keys_repaired_total: u64,
    pub anti_entropy_bytes_total: u64,
    /// Tombstones this node holds, and those it collected (every replica held them, past the
    /// grace).
    pub tombstones: u64,
    pub tombstones_collected_total: u64,
}

/// What a session read needs of the state it serves.
#[derive(Clone, Debug)]
enum Need {
    Nothing,
    /// A version at least this one (HLC stamp, node): last-writer-wins keyspaces.
    Version((u64, u64)),
    /// A causal context holding every dot of each replica up to this counter: conflict-free
    /// keyspaces (the session's dot clock of the key).
    Dots(std::collections::BTreeMap<u64, u64>),
}

impl std::fmt::Display for Need {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Need::Nothing => f.write_str("nothing"),
            Need::Version((h, n)) => write!(f, "version {h}.{n}"),
            Need::Dots(clock) => {
                let entries: Vec<String> = clock.iter().map(|(n, c)| format!("{n}:{c}")).collect();
                write!(f, "dots {}", entries.join(","))
            }
        }
    }
}

pub(super) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn stored_bytes(items: &[(Vec<u8>, Versioned)]) -> u64 {
    items
        .iter()
        .map(|(k, v)| k.len() as u64 + v.stored.len() as u64)
        .sum()
}

/// The first entries up to `BATCH_BYTES_MAX` bytes (at least one).
fn cap_bytes(mut entries: Vec<(Vec<u8>, Versioned)>) -> Vec<(Vec<u8>, Versioned)> {
    let mut bytes = 0u64;
    let keep = entries
        .iter()
        .take_while(|(k, v)| {
            let first = bytes == 0;
            bytes += (k.len() + v.stored.len()) as u64;
            first || bytes <= BATCH_BYTES_MAX
        })
        .count();
    entries.truncate(keep);
    entries
}

fn is_live(v: Option<&Versioned>, now_ms: u64) -> bool {
    v.is_some_and(|v| v.stored.live_at(now_ms))
}

/// The record space of the members of a set or map keyspace's values (keyspace ids are
/// catalog indexes, far below this bit).
const MEMBER_SPACE: u64 = 1 << 62;

/// A member's name and its record's bytes, as loaded.
type MemberRecord = (Vec<u8>, Vec<u8>);

/// A member's record key: the key's length (4 bytes, big-endian), the key, the member.
fn member_record_key(key: &[u8], member: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(4 + key.len() + member.len());
    k.extend_from_slice(&(key.len() as u32).to_be_bytes());
    k.extend_from_slice(key);
    k.extend_from_slice(member);
    k
}

/// Splits a member record key into key and member.
fn split_member_record_key(k: &[u8]) -> Option<(&[u8], &[u8])> {
    let len = u32::from_be_bytes(k.get(..4)?.try_into().ok()?) as usize;
    let rest = &k[4..];
    (rest.len() >= len).then(|| rest.split_at(len))
}

pub(super) fn encode<T: Serialize>(v: &T) -> Result<Vec<u8>, TunekvError> {
    postcard::to_allocvec(v).map_err(internal)
}

/// How one replica answered a coordinator's call; an error carries the replica's code when it
/// answered with one.
type Reply = Result<DynamoResponse, (Option<Code>, String)>;

impl Node {
    /// The ring of a leaderless or volatile keyspace (the same on every node: from the
    /// catalog's node list and the spec's partitions).
    pub(super) fn ring_of(&self, ks: &KeyspaceInfo) -> Result<Ring, TunekvError> {
        Ring::of_spec(&self.ring_nodes(ks), &ks.spec).map_err(internal)
    }

    /// This node's replica of `ks`, loaded from disk the first time (leaderless keyspaces).
    pub(super) fn replica_of(&self, ks: &KeyspaceInfo) -> Result<Arc<Mutex<Replica>>, TunekvError> {
        if let Some(r) = lock(&self.dynamo.replicas).get(&ks.id) {
            return Ok(r.clone());
        }
        let mut policy = Policy::named(ks.spec.conflict.as_deref()).map_err(internal)?;
        if policy == Policy::Counter && self.config.bugs.counter_lww() {
            // The injected bug: counters resolved by last writer wins.
            policy = Policy::Lww;
        }
        let mut replica = Replica::new(self.ring_of(ks)?, TREE_DEPTH, policy).map_err(internal)?;
        if self.config.bugs.set_remove_wins() {
            replica.inject_remove_wins();
        }
        if self.config.bugs.siblings_union() {
            replica.inject_siblings_union();
        }
        let corrupt = |e: postcard::Error| {
            internal(format!("replica record of {:?} is corrupt: {e}", ks.name))
        };
        let mut loaded = Vec::new();
        if ks.spec.mode == Mode::Leaderless {
            // Members of sets and maps, by key (stored apart from their key's record).
            let mut members: HashMap<Vec<u8>, Vec<MemberRecord>> = HashMap::new();
            if policy.membered() {
                for (k, bytes) in self
                    .storage
                    .records(ks.id | MEMBER_SPACE)
                    .map_err(internal)?
                {
                    let (key, member) = split_member_record_key(&k)
                        .ok_or_else(|| internal("a member record key is corrupt"))?;
                    members
                        .entry(key.to_vec())
                        .or_default()
                        .push((member.to_vec(), bytes));
                }
            }
            for (key, bytes) in self.storage.records(ks.id).map_err(internal)? {
                let mut v: Versioned = postcard::from_bytes(&bytes).map_err(corrupt)?;
                let mine = members.remove(&key).unwrap_or_default();
                v.stored = match v.stored {
                    Stored::Set(header) => Stored::Set(OrMap::assemble(
                        header,
                        mine.iter()
                            .map(|(m, b)| Ok((m.clone(), postcard::from_bytes(b)?)))
                            .collect::<Result<Vec<_>, postcard::Error>>()
                            .map_err(corrupt)?,
                    )),
                    Stored::Map(header) => Stored::Map(OrMap::assemble(
                        header,
                        mine.iter()
                            .map(|(m, b)| Ok((m.clone(), postcard::from_bytes(b)?)))
                            .collect::<Result<Vec<_>, postcard::Error>>()
                            .map_err(corrupt)?,
                    )),
                    other => other,
                };
                replica.apply(&key, &v);
                loaded.push((key, v));
            }
        }
        let mut all = lock(&self.dynamo.replicas);
        // Another task may have loaded it meanwhile: keep the first, and only the first's
        // tombstones are tracked (a stale copy could name an older one).
        if let Some(r) = all.get(&ks.id) {
            return Ok(r.clone());
        }
        for (key, v) in &loaded {
            // A tombstone's grace starts again at load: conservative, never early.
            self.track_tombstone(ks.id, key, v);
        }
        let replica = Arc::new(Mutex::new(replica));
        all.insert(ks.id, replica.clone());
        Ok(replica)
    }

    /// Persists what [`Replica::apply`] changed (buffered: the caller syncs): the key's
    /// record — a set's or map's without its members — and each changed member's record, so
    /// an update of a large set writes O(delta), not the whole set.
    pub(super) fn persist(
        &self,
        ks: &KeyspaceInfo,
        key: &[u8],
        held: &Versioned,
        applied: &Applied,
    ) -> Result<(), TunekvError> {
        fn members<V: Payload>(
            node: &Node,
            space: u64,
            key: &[u8],
            map: &OrMap<V>,
            changed: &[Vec<u8>],
        ) -> Result<(), TunekvError> {
            for m in changed {
                let record = member_record_key(key, m);
                let value = map.get(m).map(encode).transpose()?;
                node.storage
                    .put_record(space, &record, value.as_deref())
                    .map_err(internal)?;
            }
            Ok(())
        }
        let header = |stored| Versioned {
            version: held.version,
            stored,
        };
        let space = ks.id | MEMBER_SPACE;
        let record = match (&held.stored, &applied.members) {
            (Stored::Set(s), Some(changed)) => {
                members(self, space, key, s, changed)?;
                encode(&header(Stored::Set(s.header())))?
            }
            (Stored::Map(m), Some(changed)) => {
                members(self, space, key, m, changed)?;
                encode(&header(Stored::Map(m.header())))?
            }
            _ => encode(held)?,
        };
        self.storage
            .put_record(ks.id, key, Some(&record))
            .map_err(internal)
    }

    /// Whether this node has loaded a replica of `ks` (it holds something of it, or served it).
    pub(super) fn holds_replica(&self, ks: &KeyspaceInfo) -> bool {
        lock(&self.dynamo.replicas).contains_key(&ks.id)
    }

    /// The partitions of `ks` this node holds that `ring` does not give it, and their versions.
    pub(super) fn foreign_entries(
        &self,
        ks: &KeyspaceInfo,
        ring: &Ring,
    ) -> Result<ForeignEntries, TunekvError> {
        let replica = self.replica_of(ks)?;
        let r = lock(&replica);
        let n = ks.spec.replicas as usize;
        let partitions: Vec<u32> = r
            .partitions_held()
            .filter(|p| !ring.partition_preference(*p, n).contains(&self.id))
            .collect();
        let entries = partitions.iter().flat_map(|p| r.entries_of(*p)).collect();
        Ok((partitions, entries))
    }

    /// Forgets each of `entries` this node still holds at the same version (a newer one that
    /// arrived meanwhile stays), on disk too, then those of `partitions` left empty.
    pub(super) fn forget_versions(
        &self,
        ks: &KeyspaceInfo,
        partitions: &[u32],
        entries: &[(Vec<u8>, Versioned)],
    ) -> Result<usize, TunekvError> {
        let replica = self.replica_of(ks)?;
        let durable = ks.spec.mode == Mode::Leaderless;
        let membered = self.policy_of(ks)?.membered();
        let mut r = lock(&replica);
        let mut gone: std::collections::HashSet<Vec<u8>> = std::collections::HashSet::new();
        for (key, v) in entries {
            if r.remove_if(key, v.version) {
                gone.insert(key.clone());
            }
        }
        for p in partitions {
            if r.entries_of(*p).is_empty() {
                r.drop_partition(*p);
            }
        }
        if durable {
            for key in &gone {
                self.storage
                    .put_record(ks.id, key, None)
                    .map_err(internal)?;
                lock(&self.dynamo.tombstones).remove(&(ks.id, key.clone()));
            }
            if membered {
                let space = ks.id | MEMBER_SPACE;
                for (k, _) in self.storage.records(space).map_err(internal)? {
                    if split_member_record_key(&k).is_some_and(|(key, _)| gone.contains(key)) {
                        self.storage.put_record(space, &k, None).map_err(internal)?;
                    }
                }
            }
        }
        Ok(gone.len())
    }

    /// Re-homes hints for a node that no longer replicates their key (it left the ring, or the
    /// ring changed under the key): each becomes a hint for every preference node of the key
    /// now (this node's own copy is stored here), so replay takes it where the key lives.
    /// Keyspaces whose ring is changing keep theirs until the change is done.
    pub(super) async fn rehome_hints(&self) -> Result<usize, TunekvError> {
        let mut rings: HashMap<u64, (KeyspaceInfo, Ring)> = HashMap::new();
        for ks in self.list_keyspaces() {
            if ks.spec.mode == Mode::Leaderless && self.ring_state(&ks).target.is_none() {
                let ring = self.ring_of(&ks)?;
                rings.insert(ks.id, (ks, ring));
            }
        }
        let moved: Vec<(HintSlot, Hint, Vec<NodeId>)> = {
            let hints = lock(&self.dynamo.hints);
            hints
                .iter()
                .filter_map(|(slot, h)| {
                    let (ks, ring) = rings.get(&slot.1)?;
                    let pref = ring.preference_list(&slot.2, ks.spec.replicas as usize);
                    (!pref.contains(&NodeId(slot.0))).then(|| (slot.clone(), h.clone(), pref))
                })
                .collect()
        };
        for (slot, hint, pref) in &moved {
            let (ks, _) = &rings[&slot.1];
            let item = (slot.2.clone(), hint.versioned.clone());
            for p in pref {
                if *p == self.id {
                    self.store_local(ks, std::slice::from_ref(&item), false)
                        .await?;
                } else {
                    self.store_hint(*p, ks, &item.0, &item.1)?;
                }
            }
            self.commit.sync().await.map_err(internal)?;
            let mut hints = lock(&self.dynamo.hints);
            // Unless it changed meanwhile (a newer version joined in).
            if hints.get(slot).map(|h| &h.versioned) == Some(&hint.versioned) {
                let (t, id, key) = slot;
                self.storage
                    .put_record(HINT_SPACE, &Self::hint_record_key(*t, *id, key), None)
                    .map_err(internal)?;
                hints.remove(slot);
            }
        }
        if !moved.is_empty() {
            tracing::info!(
                hints = moved.len(),
                "hints re-homed: their node no longer replicates their keys"
            );
        }
        Ok(moved.len())
    }

    /// Loads the hints kept on disk (at start).
    pub(super) fn load_hints(&self) -> Result<(), TunekvError> {
        let mut hints = lock(&self.dynamo.hints);
        for (key, bytes) in self.storage.records(HINT_SPACE).map_err(internal)? {
            if key.len() < 16 {
                continue;
            }
            let target = u64::from_be_bytes(key[..8].try_into().map_err(internal)?);
            let ks = u64::from_be_bytes(key[8..16].try_into().map_err(internal)?);
            let hint: Hint = postcard::from_bytes(&bytes)
                .map_err(|e| internal(format!("hint record is corrupt: {e}")))?;
            hints.insert((target, ks, key[16..].to_vec()), hint);
        }
        Ok(())
    }

    fn hint_record_key(target: u64, ks: u64, key: &[u8]) -> Vec<u8> {
        let mut k = Vec::with_capacity(16 + key.len());
        k.extend_from_slice(&target.to_be_bytes());
        k.extend_from_slice(&ks.to_be_bytes());
        k.extend_from_slice(key);
        k
    }

    /// Keeps `versioned` for `target` (buffered: the caller syncs before relying on it).
    pub(super) fn store_hint(
        &self,
        target: NodeId,
        ks: &KeyspaceInfo,
        key: &[u8],
        versioned: &Versioned,
    ) -> Result<(), TunekvError> {
        let policy = self.policy_of(ks)?;
        let mut hints = lock(&self.dynamo.hints);
        let slot = (target.0, ks.id, key.to_vec());
        // Joined into the hint already kept by the keyspace's policy: under LWW the newer
        // version; a conflict-free type's deltas add up.
        let versioned = policy.merge(hints.get(&slot).map(|h| &h.versioned), versioned);
        if hints.get(&slot).is_some_and(|h| h.versioned == versioned) {
            return Ok(());
        }
        let merged = Hint {
            ks: ks.name.clone(),
            versioned,
            created_ms: self.clock.wall_ms(),
        };
        self.storage
            .put_record(
                HINT_SPACE,
                &Self::hint_record_key(target.0, ks.id, key),
                Some(&encode(&merged)?),
            )
            .map_err(internal)?;
        hints.insert(slot, merged);
        self.dynamo
            .counters
            .hints_stored
            .fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    /// Whether `peer` looks up to the failure detector (this node always does).
    pub(super) fn peer_up(&self, peer: NodeId) -> bool {
        if peer == self.id {
            return true;
        }
        let life = lock(&self.dynamo.life);
        match life.get(&peer) {
            Some(Life {
                failed: Some(f),
                ok,
            }) => ok.is_some_and(|o| o > *f) || f.elapsed() >= DOWN_HOLD,
            _ => true,
        }
    }

    /// Records the outcome of a call to `peer`, for the failure detector.
    pub(super) fn saw_peer(&self, peer: NodeId, ok: bool) {
        let mut life = lock(&self.dynamo.life);
        let l = life.entry(peer).or_default();
        if ok {
            l.ok = Some(Instant::now());
        } else {
            l.failed = Some(Instant::now());
        }
    }

    /// Keeps the tombstone index in step with what the replica now holds of `key`.
    fn track_tombstone(&self, ks: u64, key: &[u8], now: &Versioned) {
        let mut t = lock(&self.dynamo.tombstones);
        match now.stored {
            Stored::Tombstone => {
                t.insert((ks, key.to_vec()), (now.version, Instant::now()));
            }
            Stored::Value(_)
            | Stored::Expiring { .. }
            | Stored::Counter(_)
            | Stored::Set(_)
            | Stored::Map(_)
            | Stored::Siblings(_) => {
                t.remove(&(ks, key.to_vec()));
            }
        }
    }

    /// Collects the tombstones of `ks` that are past their grace and that every other replica
    /// of their key was seen holding (an anti-entropy exchange found their partition equal
    /// after the tombstone was stored here): each replica is told to remove the key if it
    /// still holds exactly that version. No older version can come back: every replica holds
    /// the tombstone (or something newer), and hints and writes older than the grace are gone.
    async fn collect_tombstones(self: Arc<Self>, ks: &KeyspaceInfo) -> Result<(), String> {
        let grace = Duration::from_millis(self.config.leaderless.tombstone_grace_ms);
        let ring = self.ring_of(ks).map_err(|e| e.message)?;
        let n = ks.spec.replicas as usize;
        let ripe: Vec<(Vec<u8>, Version, Instant)> = lock(&self.dynamo.tombstones)
            .range((ks.id, Vec::new())..)
            .take_while(|((id, _), _)| *id == ks.id)
            .filter(|(_, (_, at))| at.elapsed() >= grace)
            .map(|((_, key), (v, at))| (key.clone(), *v, *at))
            .collect();
        if ripe.is_empty() {
            return Ok(());
        }
        // Per preference list (all keys of a partition share one), the tombstones it may drop.
        let mut by_nodes: BTreeMap<Vec<NodeId>, Vec<(Vec<u8>, Version)>> = BTreeMap::new();
        {
            let synced = lock(&self.dynamo.synced);
            for (key, version, stored) in ripe {
                let p = ring.partition_of(&key);
                let pref = ring.partition_preference(p, n);
                let everywhere = pref
                    .iter()
                    .filter(|o| **o != self.id)
                    .all(|o| synced.get(&(ks.id, p, *o)).is_some_and(|at| *at > stored));
                if everywhere || self.config.bugs.gc_early() {
                    by_nodes.entry(pref).or_default().push((key, version));
                }
            }
        }
        for (nodes, items) in by_nodes {
            // Messages stay bounded however many tombstones ripen at once.
            for chunk in items.chunks(PURGE_BATCH_MAX) {
                for &node in &nodes {
                    let req = DynamoRequest::Purge {
                        ks: ks.name.clone(),
                        items: chunk.to_vec(),
                    };
                    // A replica that misses it keeps its tombstone: anti-entropy hands it back
                    // to the others and a later round collects it again.
                    let _ = self
                        .clone()
                        .dynamo_call(node, req, BACKGROUND_CALL_WAIT)
                        .await;
                }
            }
        }
        Ok(())
    }

    /// Merges `items` into this node's replica of `ks`; a leaderless keyspace makes them
    /// durable before this returns. `fresh`: a coordinator's new write, refused when stamped
    /// more than `max_clock_skew_ms` ahead of this node's clock.
    pub(super) async fn store_local(
        &self,
        ks: &KeyspaceInfo,
        items: &[(Vec<u8>, Versioned)],
        fresh: bool,
    ) -> Result<(u32, bool), TunekvError> {
        if fresh {
            self.check_skew(items)?;
        }
        let replica = self.replica_of(ks)?;
        let durable = ks.spec.mode == Mode::Leaderless;
        let wall = self.clock.wall_ms();
        let mut changed = 0;
        let mut existed = false;
        // The versions that changed the replica (by position), which may have to go on.
        let mut applied_at = Vec::new();
        // The change feed lists last-writer-wins keyspaces' stored versions.
        let feed = (ks.spec.mode == Mode::Leaderless
            && Policy::named(ks.spec.conflict.as_deref()) == Ok(Policy::Lww))
        .then(|| self.stored_feed(ks.id));
        {
            let mut r = lock(&replica);
            for (at, (key, v)) in items.iter().enumerate() {
                self.dynamo.stamps.observe(v.version.hlc);
                existed |= is_live(r.get(key), wall);
                if let Some(applied) = r.apply(key, v) {
                    changed += 1;
                    applied_at.push(at);
                    if let (Some(feed), Some(now)) = (&feed, r.get(key)) {
                        feed.stored(key, now);
                    }
                    if durable {
                        let now = r
                            .get(key)
                            .ok_or_else(|| internal("an applied version left nothing held"))?;
                        self.track_tombstone(ks.id, key, now);
                        // Under the replica's lock, so the disk sees merges in their order.
                        self.persist(ks, key, now, &applied)?;
                    }
                }
            }
        }
        if durable {
            // Even when nothing changed: what is held may not be durable yet.
            self.commit.sync().await.map_err(internal)?;
        }
        self.forward_stored(ks, items, &applied_at).await?;
        Ok((changed, existed))
    }

    /// Sends `req` to `node` (or runs it here), bounded by `wait`; feeds the failure detector.
    pub(super) async fn dynamo_call(
        self: Arc<Self>,
        node: NodeId,
        req: DynamoRequest,
        wait: Duration,
    ) -> Reply {
        if node == self.id {
            return self
                .handle_dynamo(req)
                .await
                .map_err(|e| (Some(e.code), e.message));
        }
        // A client write's copy or a read's fetch: its round trip feeds the PBS estimate.
        let timed = match &req {
            // One key's copy (a restore's batches are not what a write waits for).
            DynamoRequest::Store {
                ks,
                hint_for: None,
                items,
                ..
            } if items.len() == 1 => Some((ks.clone(), true)),
            DynamoRequest::Fetch { ks, .. } => Some((ks.clone(), false)),
            _ => None,
        };
        let sent = Instant::now();
        match self.pool.call(node, 0, Request::Dynamo(req), wait).await {
            Ok(Response::Dynamo(r)) => {
                self.saw_peer(node, true);
                if let Some((ks, write)) = timed {
                    self.record_rtt(ks, write, sent.elapsed());
                }
                Ok(r)
            }
            Ok(_) => Err((None, "unexpected response kind".into())),
            Err(CallError::Remote(e)) => {
                self.saw_peer(node, true);
                Err((Some(e.code), e.message))
            }
            Err(CallError::Timeout) => {
                self.saw_peer(node, false);
                Err((None, format!("node {node} did not answer in time")))
            }
            Err(CallError::Unreachable(m)) => {
                self.saw_peer(node, false);
                Err((None, m))
            }
        }
    }

    fn record_rtt(&self, ks: String, write: bool, rtt: Duration) {
        let us = u32::try_from(rtt.as_micros()).unwrap_or(u32::MAX);
        let mut all = lock(&self.dynamo.rtts);
        let (stores, fetches) = all.entry(ks).or_default();
        let ring = if write { stores } else { fetches };
        if ring.len() >= RTT_SAMPLES {
            ring.pop_front();
        }
        ring.push_back(us);
    }

    /// The round trips this coordinator measured, by keyspace: (stores, fetches) in µs.
    pub(super) fn rtt_samples(&self) -> BTreeMap<String, crate::status::RoundTrips> {
        lock(&self.dynamo.rtts)
            .iter()
            .map(|(k, (w, r))| {
                (
                    k.clone(),
                    (w.iter().copied().collect(), r.iter().copied().collect()),
                )
            })
            .collect()
    }

    pub(super) fn me(&self) -> Result<Arc<Node>, TunekvError> {
        self.me
            .get()
            .and_then(std::sync::Weak::upgrade)
            .ok_or_else(|| err(Code::Unavailable, "the node is shutting down"))
    }

    /// Writes `stored` (a value or a delete's tombstone) to `key` of a leaderless or volatile
    /// keyspace at write quorum `w`.
    pub(super) async fn dynamo_write(
        &self,
        ks: &KeyspaceInfo,
        w: Option<Quorum>,
        key: &[u8],
        stored: Stored,
        deadline: Instant,
        session: &mut Session,
    ) -> Result<WriteOutcome, TunekvError> {
        let volatile = ks.spec.mode == Mode::Volatile;
        if !volatile {
            session.admit_leaderless(ks.id)?;
        }
        let w = match (volatile, w) {
            (true, None | Some(Quorum::One)) => Quorum::One,
            (true, Some(other)) => {
                return Err(err(
                    Code::QuorumInvalid,
                    format!(
                        "w={other} on volatile keyspace {:?}: a volatile write is acknowledged \
                         once one replica holds it in memory (w=one); use a leaderless keyspace \
                         for quorums",
                        ks.name
                    ),
                ))
            }
            (false, w) => w.unwrap_or(Quorum::Quorum),
        };
        if let ClockHealth::Skewed(why) = self.clock_health() {
            return Err(err(
                Code::ClockSkew,
                format!(
                    "node {} stamps no leaderless writes while its clock is not trusted: {why}; \
                     send the write to another node",
                    self.id
                ),
            ));
        }
        let n = ks.spec.replicas;
        let ring = self.ring_of(ks)?;
        let need = if self.config.bugs.quorum_ack_one() {
            // The injected bug: one copy is enough, whatever w said.
            1
        } else {
            w.count(n) as usize
        };
        let preference = ring.preference_list(key, n as usize);
        let placements = if volatile {
            preference
                .iter()
                .filter(|p| self.peer_up(**p))
                .map(|&node| tunekv_dynamo::Placement {
                    node,
                    hint_for: None,
                })
                .collect()
        } else {
            ring.placements(key, n as usize, |p| self.peer_up(p))
        };
        let possible = match w {
            Quorum::Any => usize::MAX,
            Quorum::All => placements.iter().filter(|p| p.hint_for.is_none()).count(),
            _ => placements.len(),
        };
        if possible < need {
            return Err(err(
                Code::NoQuorum,
                format!(
                    "w={w} needs {need} of the key's {n} replicas but node {} reaches only \
                     {possible} of them (or substitutes) now; the write did not happen",
                    self.id
                ),
            ));
        }
        // Above what this node holds of the key (a version may have been stamped up to
        // max_clock_skew_ms ahead of this clock) and above everything this session has seen on
        // the keyspace: a later write of the session never loses to an earlier one it wrote or
        // read, whatever the coordinators' clocks (monotonic writes, writes follow reads).
        let mut floor = 0;
        if let Some(held) = lock(&*self.replica_of(ks)?).get(key) {
            floor = held.version.hlc.saturating_add(1);
        }
        if !volatile {
            floor = floor.max(session.leaderless(ks.id).hlc_seen.saturating_add(1));
        }
        let hlc = self.dynamo.stamps.stamp_above(self.clock.wall_ms(), floor);
        let version = Version {
            hlc,
            node: self.id.0,
        };
        let item = (
            key.to_vec(),
            Versioned {
                version,
                stored: stored.clone(),
            },
        );
        let partition = ring.partition_of(key);
        let Spread {
            strict,
            sloppy,
            hinted,
            existed,
            met: ok,
            problems,
        } = self
            .spread(
                ks,
                (key, &item.1),
                (&preference, &placements),
                (0, w, need),
                deadline,
                true,
            )
            .await?;
        if !ok {
            let stored_on = strict + sloppy;
            return Err(err(
                Code::NoQuorum,
                format!(
                    "w={w} needs {need} of the key's {n} replicas; {stored_on} stored it within \
                     the wait budget{}. Leaderless writes are not rolled back: it may still \
                     spread ({})",
                    if hinted > 0 {
                        format!(" and {hinted} hint(s) were kept for the others")
                    } else {
                        String::new()
                    },
                    problems.join("; ")
                ),
            ));
        }
        let strict_ack = sloppy == 0 && (strict > 0 || hinted == 0);
        if !volatile {
            session.saw_leaderless(
                ks.id,
                tunekv_core::session::key_hash(key),
                (version.hlc, version.node),
                !strict_ack,
            );
        }
        Ok(WriteOutcome {
            position: Position {
                shard: ShardId(partition),
                index: LogIndex(0),
                commit_ms: Hlc::millis(version.hlc),
            },
            existed,
            result: CommandResult::changed(existed),
            quorum: Some(QuorumReceipt {
                quorum: w,
                asked: placements.len() as u32,
                answered: (strict + sloppy) as u32,
                strict: strict_ack,
                hinted,
                version: Some((version.hlc, version.node)),
                durable: !volatile,
            }),
            update: None,
        })
    }

    /// Sends `item` of `key` to `placements`, counts their answers from `strict` copies
    /// already held until write quorum `w` (`need` copies) is met or `deadline` passes, and
    /// lets the rest finish in the background. Preference nodes with no placement get a hint
    /// here first; a copy that fails becomes a hint (leaderless keyspaces; volatile ones keep
    /// none). `fresh`: a new version, which replicas refuse when stamped too far ahead of their
    /// clocks (a replica's `clock_skew` ends the write at once).
    pub(super) async fn spread(
        &self,
        ks: &KeyspaceInfo,
        (key, item): (&[u8], &Versioned),
        (preference, placements): (&[NodeId], &[tunekv_dynamo::Placement]),
        (held, w, need): (usize, Quorum, usize),
        deadline: Instant,
        fresh: bool,
    ) -> Result<Spread, TunekvError> {
        let me = self.me()?;
        let volatile = ks.spec.mode == Mode::Volatile;
        let mut hinted = 0u32;
        if !volatile {
            // Preference nodes with no placement at all (down, no substitute up): hints here.
            for p in preference {
                let covered = placements
                    .iter()
                    .any(|pl| pl.node == *p || pl.hint_for == Some(*p))
                    // The copy the caller already holds (an update's replica).
                    || (held > 0 && *p == self.id);
                if !covered {
                    self.store_hint(*p, ks, key, item)?;
                    hinted += 1;
                }
            }
            if hinted > 0 {
                self.commit.sync().await.map_err(internal)?;
            }
        }
        let wait = deadline.saturating_duration_since(Instant::now());
        let mut calls: FuturesUnordered<_> = placements
            .iter()
            .map(|&pl| {
                let req = DynamoRequest::Store {
                    ks: ks.name.clone(),
                    items: vec![(key.to_vec(), item.clone())],
                    fresh,
                    hint_for: pl.hint_for.map(|h| h.0),
                };
                let call = me.clone().dynamo_call(pl.node, req, wait);
                async move { (pl, call.await) }
            })
            .collect();
        let (mut strict, mut sloppy, mut existed) = (held, 0usize, false);
        let mut problems = Vec::new();
        let met = |strict: usize, sloppy: usize, hinted: u32| match w {
            Quorum::All => strict >= need,
            Quorum::Any => strict + sloppy + hinted as usize >= 1,
            _ => strict + sloppy >= need,
        };
        while !met(strict, sloppy, hinted) {
            let next = tokio::time::timeout_at(deadline, calls.next()).await;
            let Ok(Some((pl, reply))) = next else { break };
            match reply {
                Ok(DynamoResponse::Stored { existed: e, .. }) => {
                    existed |= e;
                    if pl.hint_for.is_none() {
                        strict += 1;
                    } else {
                        sloppy += 1;
                    }
                }
                Ok(_) => problems.push(format!("node {}: unexpected answer", pl.node)),
                Err((code, m)) => {
                    if code == Some(Code::ClockSkew) {
                        return Err(err(
                            Code::ClockSkew,
                            format!(
                                "{m}. The write is not acknowledged; copies already stored are \
                                 not rolled back and may spread"
                            ),
                        ));
                    }
                    problems.push(format!("node {}: {m}", pl.node));
                    if !volatile {
                        self.store_hint(pl.hint_for.unwrap_or(pl.node), ks, key, item)?;
                        self.commit.sync().await.map_err(internal)?;
                        hinted += 1;
                    }
                }
            }
        }
        let ok = met(strict, sloppy, hinted);
        // The copies still in flight finish in the background; those that fail become hints.
        if !calls.is_empty() {
            let (ks2, key2, item2) = (ks.clone(), key.to_vec(), item.clone());
            let bg = me.clone();
            tokio::spawn(async move {
                while let Some((pl, reply)) = calls.next().await {
                    if reply.is_err() && !volatile {
                        let target = pl.hint_for.unwrap_or(pl.node);
                        if let Err(e) = bg.store_hint(target, &ks2, &key2, &item2) {
                            tracing::error!(error = %e, "cannot keep a hint");
                        }
                    }
                }
                let _ = bg.commit.sync().await;
            });
        }
        Ok(Spread {
            strict,
            sloppy,
            hinted,
            existed,
            met: ok,
            problems,
        })
    }

    /// Reads the value of `key` of a leaderless or volatile keyspace at read quorum `r`
    /// (a set or map has none: [`Node::read_state`] reads those).
    pub(super) async fn dynamo_read(
        &self,
        ks: &KeyspaceInfo,
        level: Level,
        r: Option<Quorum>,
        key: &[u8],
        deadline: Instant,
        session: &mut Session,
    ) -> Result<ReadOutcome, TunekvError> {
        if ks.spec.mode == Mode::Leaderless && self.policy_of(ks)?.membered() {
            return Err(err(
                Code::WrongType,
                format!(
                    "Operation against a key holding the wrong kind of value: {:?} is a keyspace \
                     of {}s, which have no single value to GET (read them with {})",
                    ks.name,
                    ks.spec.conflict.as_deref().unwrap_or("?"),
                    if self.policy_of(ks)? == Policy::Set {
                        "SMEMBERS, SISMEMBER, SCARD"
                    } else {
                        "HGET, HGETALL, HLEN, HEXISTS"
                    }
                ),
            ));
        }
        let (newest, receipt) = self
            .dynamo_read_held(ks, level, r, key, deadline, session)
            .await?;
        if let Some(Stored::Siblings(s)) = newest.as_ref().map(|v| &v.stored) {
            if s.len() > 1 {
                return Err(err(
                    Code::Siblings,
                    format!(
                        "key {:?} of {:?} holds {} concurrent values (siblings); read them all \
                         with SIBLINGS key (HTTP: GET …?format=json) and write one back with \
                         the context they come with",
                        String::from_utf8_lossy(key),
                        ks.name,
                        s.len()
                    ),
                ));
            }
        }
        let wall = self.clock.wall_ms();
        let value = newest
            .as_ref()
            .and_then(|v| v.stored.value_at(wall))
            .map(std::borrow::Cow::into_owned);
        let expires_ms = newest
            .as_ref()
            .filter(|_| value.is_some())
            .and_then(|v| v.stored.expires_ms());
        Ok(ReadOutcome {
            value,
            version: None,
            expires_ms,
            receipt,
        })
    }

    /// Reads what `key` holds (the replies merged by the keyspace's policy) at read quorum
    /// `r`, and the receipt.
    pub(super) async fn dynamo_read_held(
        &self,
        ks: &KeyspaceInfo,
        level: Level,
        r: Option<Quorum>,
        key: &[u8],
        deadline: Instant,
        session: &mut Session,
    ) -> Result<(Option<Versioned>, Receipt), TunekvError> {
        ks.spec.mode.admits(level)?;
        check_key(key)?;
        let volatile = ks.spec.mode == Mode::Volatile;
        let dotted = !volatile && self.policy_of(ks)?.dotted();
        if !volatile {
            session.admit_leaderless(ks.id)?;
        }
        let r = match (volatile, r) {
            (true, None | Some(Quorum::One)) => Quorum::One,
            (true, Some(other)) => {
                return Err(err(
                    Code::QuorumInvalid,
                    format!(
                        "r={other} on volatile keyspace {:?}: its copies are best effort, a \
                         quorum of them proves nothing; read at r=one",
                        ks.name
                    ),
                ))
            }
            (false, r) => r.unwrap_or(Quorum::One),
        };
        // Session levels: the version of the key this session wrote or read last, at least
        // (on conflict-free keyspaces: a state holding every dot it made or read); for a key
        // whose mark the token dropped, every replica's answer.
        let hash = tunekv_core::session::key_hash(key);
        let mark = session.leaderless(ks.id);
        let promise = if self.config.bugs.ignore_session() {
            // The injected bug: session levels served like eventual.
            Promise::AnyState
        } else {
            level.promise()
        };
        let tracked = if dotted {
            mark.clock(hash).cloned().map(Need::Dots)
        } else {
            mark.required(hash).map(Need::Version)
        };
        let (need, r) = match (promise, tracked) {
            (Promise::Session, Some(need)) => (need, r),
            (Promise::Session, None) if mark.forgot => (Need::Nothing, Quorum::All),
            _ => (Need::Nothing, r),
        };
        loop {
            match self
                .dynamo_read_once(ks, level, r, key, deadline, &need)
                .await?
            {
                Ok((held, receipt)) => {
                    if dotted {
                        // Every dot of the state served: later session reads hold them too.
                        if let Some(ctx) = held.as_ref().and_then(|v| v.stored.context()) {
                            let stamp = held.as_ref().map_or(0, |v| v.version.hlc);
                            session.saw_dots(ks.id, hash, stamp, ctx.maxima());
                        }
                    } else if let (false, Some(v)) =
                        (volatile, receipt.quorum.as_ref().and_then(|q| q.version))
                    {
                        session.saw_leaderless(ks.id, hash, v, false);
                    }
                    return Ok((held, receipt));
                }
                Err(seen) if Instant::now() + RETRY_PAUSE < deadline => {
                    tracing::trace!(
                        %seen,
                        %need,
                        "session read waits for a replica to catch up"
                    );
                    tokio::time::sleep(RETRY_PAUSE).await;
                }
                Err(seen) => {
                    return Err(err(
                        Code::SessionUnmet,
                        format!(
                            "{level} read of a leaderless key on node {}: this session wrote or \
                             read {need} of it, the reachable replicas hold {seen}; not served \
                             within the wait budget (a write acknowledged through a hint arrives \
                             when its replica is reachable again)",
                            self.id,
                        ),
                    ))
                }
            }
        }
    }

    /// One attempt of a leaderless read: `Ok(Err(seen))` when the replies do not meet `want`
    /// (with what they hold, for the error).
    async fn dynamo_read_once(
        &self,
        ks: &KeyspaceInfo,
        level: Level,
        r: Quorum,
        key: &[u8],
        deadline: Instant,
        want: &Need,
    ) -> Result<Result<(Option<Versioned>, Receipt), String>, TunekvError> {
        let me = self.me()?;
        let volatile = ks.spec.mode == Mode::Volatile;
        let n = ks.spec.replicas;
        let need = r.count(n) as usize;
        let ring = self.ring_of(ks)?;
        let mut asked: Vec<NodeId> = ring
            .preference_list(key, n as usize)
            .into_iter()
            .filter(|p| self.peer_up(*p))
            .collect();
        // This node first when it is a replica: its answer is the quickest.
        asked.sort_by_key(|p| *p != self.id);
        if asked.len() < need {
            return Err(err(
                Code::NoQuorum,
                format!(
                    "r={r} needs {need} of the key's {n} replicas but node {} reaches only {} of \
                     them now",
                    self.id,
                    asked.len()
                ),
            ));
        }
        let wait = deadline.saturating_duration_since(Instant::now());
        let mut calls: FuturesUnordered<_> = asked
            .iter()
            .map(|&node| {
                let req = DynamoRequest::Fetch {
                    ks: ks.name.clone(),
                    key: key.to_vec(),
                };
                let call = me.clone().dynamo_call(node, req, wait);
                async move { (node, call.await) }
            })
            .collect();
        let policy = Policy::named(ks.spec.conflict.as_deref()).map_err(internal)?;
        let mut replies: Vec<(NodeId, Option<Versioned>)> = Vec::new();
        let mut problems = Vec::new();
        while replies.len() < need {
            let next = tokio::time::timeout_at(deadline, calls.next()).await;
            match next {
                Ok(Some((node, Ok(DynamoResponse::Held(v))))) => replies.push((node, v)),
                Ok(Some((node, Ok(_)))) => problems.push(format!("node {node}: unexpected answer")),
                Ok(Some((node, Err((_, m))))) => problems.push(format!("node {node}: {m}")),
                Ok(None) | Err(_) => break,
            }
        }
        if replies.len() < need {
            return Err(err(
                Code::NoQuorum,
                format!(
                    "r={r} needs {need} of the key's {n} replicas; {} answered node {} within the \
                     wait budget ({})",
                    replies.len(),
                    self.id,
                    problems.join("; ")
                ),
            ));
        }
        let merged = |replies: &[(NodeId, Option<Versioned>)]| {
            replies
                .iter()
                .filter_map(|(_, v)| v.as_ref())
                .fold(None::<Versioned>, |acc, v| {
                    Some(policy.merge(acc.as_ref(), v))
                })
        };
        let grace_ms = self.config.leaderless.tombstone_grace_ms;
        let wall = self.clock.wall_ms();
        let meets = |v: &Option<Versioned>| match (want, v) {
            (Need::Nothing, _) => true,
            (Need::Version(req), Some(v)) => (v.version.hlc, v.version.node) >= *req,
            // Nothing held: the session's mark may be a tombstone collected since (only past
            // its grace, counted here from the mark's own stamp).
            (Need::Version(req), None) => Hlc::millis(req.0).saturating_add(grace_ms) < wall,
            (Need::Dots(clock), Some(v)) => v.stored.context().is_some_and(|c| c.covers(clock)),
            (Need::Dots(clock), None) => clock.values().all(|c| *c == 0),
        };
        let mut newest = merged(&replies);
        // A session read whose first replies are older than its mark hears the others too.
        while !meets(&newest) {
            match tokio::time::timeout_at(deadline, calls.next()).await {
                Ok(Some((node, Ok(DynamoResponse::Held(v))))) => {
                    replies.push((node, v));
                    newest = merged(&replies);
                }
                Ok(Some(_)) => {}
                Ok(None) | Err(_) => break,
            }
        }
        if !meets(&newest) {
            let seen = match (&newest, want) {
                (None, _) => "nothing".to_string(),
                (Some(v), Need::Dots(_)) => format!(
                    "dots {}",
                    v.stored
                        .context()
                        .map(|c| c.entries().join(","))
                        .unwrap_or_default()
                ),
                (Some(v), _) => format!("version {}.{}", v.version.hlc, v.version.node),
            };
            return Ok(Err(seen));
        }
        let repair = !volatile && !self.config.bugs.skip_read_repair();
        if let (Some(newest), true) = (&newest, repair) {
            let stale: Vec<NodeId> = replies
                .iter()
                .filter(|(_, v)| v.as_ref() != Some(newest))
                .map(|(node, _)| *node)
                .collect();
            let item = (key.to_vec(), newest.clone());
            let blocking = matches!(r, Quorum::Quorum | Quorum::All);
            let repairs = stale.iter().map(|&node| {
                let req = DynamoRequest::Store {
                    ks: ks.name.clone(),
                    items: vec![item.clone()],
                    fresh: false,
                    hint_for: None,
                };
                me.clone().dynamo_call(node, req, wait)
            });
            let repairs = futures::future::join_all(repairs);
            self.dynamo
                .counters
                .read_repairs
                .fetch_add(stale.len() as u64, Ordering::Relaxed);
            if blocking {
                // Quorum reads are monotonic: what one returns, r replicas hold before it is
                // served (the answering replicas that had it, and those repaired now).
                let repaired = tokio::time::timeout_at(deadline, repairs)
                    .await
                    .map(|done| done.iter().filter(|r| r.is_ok()).count())
                    .unwrap_or(0);
                let holding = replies.len() - stale.len() + repaired;
                if holding < need {
                    return Err(err(
                        Code::Timeout,
                        format!(
                            "r={r}: node {} read a newer version than {} of the answering \
                             replicas held and could repair only {repaired} of them within the \
                             wait budget; not served, so that quorum reads stay monotonic",
                            self.id,
                            stale.len()
                        ),
                    ));
                }
            } else if !stale.is_empty() {
                tokio::spawn(repairs);
            }
        }
        // Replies still to come repair their replicas in the background.
        if !calls.is_empty() && repair {
            let (bg, ks2, key2, newest2) =
                (me.clone(), ks.name.clone(), key.to_vec(), newest.clone());
            tokio::spawn(async move {
                while let Some((node, reply)) = calls.next().await {
                    let (Ok(DynamoResponse::Held(held)), Some(newest)) = (reply, &newest2) else {
                        continue;
                    };
                    if held.as_ref() != Some(newest) {
                        bg.dynamo
                            .counters
                            .read_repairs
                            .fetch_add(1, Ordering::Relaxed);
                        let req = DynamoRequest::Store {
                            ks: ks2.clone(),
                            items: vec![(key2.clone(), newest.clone())],
                            fresh: false,
                            hint_for: None,
                        };
                        let _ = bg
                            .clone()
                            .dynamo_call(node, req, BACKGROUND_CALL_WAIT)
                            .await;
                    }
                }
            });
        }
        let version = newest.as_ref().map(|v| v.version);
        Ok(Ok((
            newest,
            Receipt {
                level,
                served_by: self.id,
                position: Position {
                    shard: ShardId(ring.partition_of(key)),
                    index: LogIndex(0),
                    commit_ms: version.map_or(0, |v| Hlc::millis(v.hlc)),
                },
                // The answer is the newest version among the replies (see docs/formats.md).
                staleness: Staleness::ZERO,
                quorum: Some(QuorumReceipt {
                    quorum: r,
                    asked: asked.len() as u32,
                    answered: replies.len() as u32,
                    strict: true,
                    hinted: 0,
                    version: version.map(|v| (v.hlc, v.node)),
                    durable: !volatile,
                }),
            },
        )))
    }

    /// The replica side of node-to-node leaderless requests (and the coordinator's own copy).
    pub(super) async fn handle_dynamo(
        &self,
        req: DynamoRequest,
    ) -> Result<DynamoResponse, RemoteError> {
        let remote = |e: TunekvError| RemoteError::new(e.code, e.message);
        let ks_name = match &req {
            DynamoRequest::Store { ks, .. }
            | DynamoRequest::Fetch { ks, .. }
            | DynamoRequest::Roots { ks, .. }
            | DynamoRequest::Leaves { ks, .. }
            | DynamoRequest::Purge { ks, .. }
            | DynamoRequest::Update { ks, .. }
            | DynamoRequest::Changes { ks, .. } => ks.clone(),
        };
        let deadline = Instant::now() + FORWARDED_WORK_MAX;
        let ks = self.keyspace(&ks_name, deadline).await.map_err(remote)?;
        if ks.spec.mode == Mode::Ordered {
            return Err(RemoteError::new(
                Code::Internal,
                format!("keyspace {ks_name:?} is ordered on node {}", self.id),
            ));
        }
        match req {
            DynamoRequest::Store {
                items,
                fresh,
                hint_for: Some(target),
                ..
            } => {
                // A stand-in keeps the versions as hints, not as its own replica.
                if fresh {
                    self.check_skew(&items).map_err(remote)?;
                }
                for (key, v) in &items {
                    self.store_hint(NodeId(target), &ks, key, v)
                        .map_err(remote)?;
                }
                self.commit.sync().await.map_err(|e| remote(internal(e)))?;
                Ok(DynamoResponse::Stored {
                    changed: items.len() as u32,
                    existed: false,
                })
            }
            DynamoRequest::Store { items, fresh, .. } => {
                let (changed, existed) =
                    self.store_local(&ks, &items, fresh).await.map_err(remote)?;
                Ok(DynamoResponse::Stored { changed, existed })
            }
            DynamoRequest::Fetch { key, .. } => {
                let replica = self.replica_of(&ks).map_err(remote)?;
                let held = lock(&replica).get(&key).cloned();
                Ok(DynamoResponse::Held(held))
            }
            DynamoRequest::Changes { after, wait_ms, .. } => {
                // Well within a forwarded request's budget.
                let wait = Duration::from_millis(wait_ms).min(Duration::from_secs(2));
                Ok(self.changes_here(&ks, after, wait).await)
            }
            DynamoRequest::Update {
                key,
                update,
                w,
                wait_ms,
                clock,
                ..
            } => {
                let wait = Duration::from_millis(wait_ms).min(FORWARDED_WORK_MAX);
                self.forwarded_update(&ks, w, &key, update, clock, Instant::now() + wait)
                    .await
                    .map(DynamoResponse::Updated)
                    .map_err(remote)
            }
            DynamoRequest::Purge { items, .. } => {
                let replica = self.replica_of(&ks).map_err(remote)?;
                let mut removed = 0;
                {
                    let mut r = lock(&replica);
                    for (key, version) in &items {
                        if r.remove_if(key, *version) {
                            removed += 1;
                            // Unsynced: a crash that brings the record back brings back a
                            // tombstone, which the next round collects again.
                            self.storage
                                .put_record(ks.id, key, None)
                                .map_err(|e| remote(internal(e)))?;
                            lock(&self.dynamo.tombstones).remove(&(ks.id, key.clone()));
                        }
                    }
                }
                self.dynamo
                    .counters
                    .tombstones_collected
                    .fetch_add(removed, Ordering::Relaxed);
                Ok(DynamoResponse::Stored {
                    changed: removed as u32,
                    existed: false,
                })
            }
            DynamoRequest::Roots { roots, .. } => {
                let replica = self.replica_of(&ks).map_err(remote)?;
                let differ: Vec<u32> = {
                    let r = lock(&replica);
                    roots
                        .into_iter()
                        .filter(|(p, root)| r.root(*p) != *root)
                        .map(|(p, _)| p)
                        .collect()
                };
                // What was compared must be durable before the answer: an exchange that finds
                // a partition equal lets the other node collect tombstones on the strength of
                // it. Synced after the comparison, so it covers every version compared.
                if ks.spec.mode == Mode::Leaderless {
                    self.commit.sync().await.map_err(|e| remote(internal(e)))?;
                }
                Ok(DynamoResponse::Differ(differ))
            }
            DynamoRequest::Leaves {
                partition, leaves, ..
            } => {
                let replica = self.replica_of(&ks).map_err(remote)?;
                let r = lock(&replica);
                let differ = r.differing_leaves(partition, &leaves);
                let entries = cap_bytes(r.entries_in_leaves(partition, &differ));
                Ok(DynamoResponse::Entries {
                    leaves: differ,
                    entries,
                })
            }
        }
    }

    /// Refuses versions stamped more than `max_clock_skew_ms` ahead of this node's clock.
    fn check_skew(&self, items: &[(Vec<u8>, Versioned)]) -> Result<(), TunekvError> {
        let skew = self.config.leaderless.max_clock_skew_ms;
        let wall = self.clock.wall_ms();
        match items
            .iter()
            .find(|(_, v)| Hlc::millis(v.version.hlc) > wall.saturating_add(skew))
        {
            Some((_, v)) => Err(err(
                Code::ClockSkew,
                format!(
                    "node {} refuses a write stamped {} ms ahead of its clock by node {} \
                     (max_clock_skew_ms {skew}): that node's clock runs ahead",
                    self.id,
                    Hlc::millis(v.version.hlc) - wall,
                    v.version.node
                ),
            )),
            None => Ok(()),
        }
    }

    /// Offers stored hints to the nodes they are for, every `hint_replay_every_ms`; drops
    /// those older than `hint_window_ms`.
    pub(super) async fn hint_loop(self: Arc<Self>) {
        let every = Duration::from_millis(self.config.leaderless.hint_replay_every_ms);
        loop {
            tokio::time::sleep(every).await;
            self.expire_hints();
            self.drop_expired_volatile();
            let targets: Vec<u64> = {
                let hints = lock(&self.dynamo.hints);
                let mut t: Vec<u64> = hints.keys().map(|(t, _, _)| *t).collect();
                t.dedup();
                t
            };
            let rounds = targets
                .into_iter()
                .filter(|t| self.peer_up(NodeId(*t)))
                .map(|t| self.clone().replay_hints(NodeId(t)));
            futures::future::join_all(rounds).await;
        }
    }

    /// Volatile keyspaces forget values past their expiry (leaderless ones keep them: an
    /// expired value is still the newest version of its key until something newer arrives).
    fn drop_expired_volatile(&self) {
        let now = self.clock.wall_ms();
        let volatile: Vec<u64> = self
            .list_keyspaces()
            .into_iter()
            .filter(|k| k.spec.mode == Mode::Volatile)
            .map(|k| k.id)
            .collect();
        for id in volatile {
            let Some(replica) = lock(&self.dynamo.replicas).get(&id).cloned() else {
                continue;
            };
            let mut r = lock(&replica);
            for (key, version) in r.expired(now, VOLATILE_SWEEP_MAX) {
                r.remove_if(&key, version);
            }
        }
    }

    fn expire_hints(&self) {
        let window = self.config.leaderless.hint_window_ms;
        let now = self.clock.wall_ms();
        let mut hints = lock(&self.dynamo.hints);
        let old: Vec<_> = hints
            .iter()
            .filter(|(_, h)| now.saturating_sub(h.created_ms) > window)
            .map(|(slot, _)| slot.clone())
            .collect();
        for slot in old {
            let (target, ks, key) = &slot;
            if let Err(e) =
                self.storage
                    .put_record(HINT_SPACE, &Self::hint_record_key(*target, *ks, key), None)
            {
                tracing::error!(error = %e, "cannot remove an expired hint");
                continue;
            }
            hints.remove(&slot);
            self.dynamo
                .counters
                .hints_expired
                .fetch_add(1, Ordering::Relaxed);
            tracing::warn!(
                target_node = target,
                "a hint expired (hint_window_ms {window}); anti-entropy repairs that replica"
            );
        }
    }

    /// Sends `target` its hints, a batch per keyspace, and forgets those it stored.
    async fn replay_hints(self: Arc<Self>, target: NodeId) {
        loop {
            let batch: Vec<(HintSlot, Hint)> = {
                let hints = lock(&self.dynamo.hints);
                let mut batch: Vec<(HintSlot, Hint)> = Vec::new();
                let mut bytes = 0u64;
                for (slot, h) in hints.range((target.0, 0, Vec::new())..) {
                    if slot.0 != target.0
                        || batch.len() >= HINT_BATCH_MAX
                        || (!batch.is_empty() && bytes >= BATCH_BYTES_MAX)
                        || batch.first().is_some_and(|(s, _)| s.1 != slot.1)
                    {
                        break;
                    }
                    bytes += (slot.2.len() + h.versioned.stored.len()) as u64;
                    batch.push((slot.clone(), h.clone()));
                }
                batch
            };
            let Some(((_, _, _), first)) = batch.first() else {
                return;
            };
            let req = DynamoRequest::Store {
                ks: first.ks.clone(),
                items: batch
                    .iter()
                    .map(|((_, _, key), h)| (key.clone(), h.versioned.clone()))
                    .collect(),
                fresh: false,
                hint_for: None,
            };
            let sent = if self.config.bugs.drop_hints() {
                Ok(DynamoResponse::Stored {
                    changed: 0,
                    existed: false,
                })
            } else {
                self.clone()
                    .dynamo_call(target, req, BACKGROUND_CALL_WAIT)
                    .await
            };
            match sent {
                Ok(DynamoResponse::Stored { .. }) => {
                    let mut removed = 0;
                    let mut hints = lock(&self.dynamo.hints);
                    for (slot, sent) in &batch {
                        // Unless the hint changed meanwhile (a newer version, or more joined in).
                        if hints.get(slot).map(|h| &h.versioned) == Some(&sent.versioned) {
                            let (t, ks, key) = slot;
                            if self
                                .storage
                                .put_record(HINT_SPACE, &Self::hint_record_key(*t, *ks, key), None)
                                .is_ok()
                            {
                                hints.remove(slot);
                                removed += 1;
                                self.dynamo
                                    .counters
                                    .hints_replayed
                                    .fetch_add(1, Ordering::Relaxed);
                            }
                        }
                    }
                    if removed == 0 {
                        // Nothing could be forgotten (newer hints, or the disk refused):
                        // try again next round rather than resend at once.
                        return;
                    }
                }
                Ok(_) | Err(_) => return,
            }
        }
    }

    /// Compares Merkle trees with one peer per round (peers in turn) for every leaderless
    /// keyspace, every `anti_entropy_every_ms`, and repairs the keys of differing leaves both
    /// ways. Replicas converge without client reads.
    pub(super) async fn anti_entropy_loop(self: Arc<Self>) {
        let every = Duration::from_millis(self.config.leaderless.anti_entropy_every_ms);
        let mut turn = 0usize;
        loop {
            tokio::time::sleep(every).await;
            let peers: Vec<NodeId> = self.nodes().into_iter().filter(|p| *p != self.id).collect();
            if peers.is_empty() {
                continue;
            }
            let peer = peers[turn % peers.len()];
            turn += 1;
            let up = self.peer_up(peer);
            for ks in self.list_keyspaces() {
                if ks.spec.mode != Mode::Leaderless {
                    continue;
                }
                if up {
                    if let Err(e) = self.clone().exchange(&ks, peer).await {
                        tracing::debug!(keyspace = %ks.name, peer = %peer, error = %e, "anti-entropy round stopped");
                    }
                }
                if let Err(e) = self.clone().collect_tombstones(&ks).await {
                    tracing::debug!(keyspace = %ks.name, error = %e, "tombstone collection stopped");
                }
            }
        }
    }

    /// One anti-entropy exchange of `ks` with `peer`.
    async fn exchange(self: Arc<Self>, ks: &KeyspaceInfo, peer: NodeId) -> Result<(), String> {
        let ring = self.ring_of(ks).map_err(|e| e.message)?;
        let n = ks.spec.replicas as usize;
        let replica = self.replica_of(ks).map_err(|e| e.message)?;
        let taken = Instant::now();
        let roots: Vec<(u32, u64)> = {
            let r = lock(&replica);
            (0..ring.partitions())
                .filter(|p| {
                    let pref = ring.partition_preference(*p, n);
                    pref.contains(&self.id) && pref.contains(&peer)
                })
                .map(|p| (p, r.root(p)))
                .collect()
        };
        if roots.is_empty() {
            return Ok(());
        }
        self.dynamo
            .counters
            .ae_exchanges
            .fetch_add(1, Ordering::Relaxed);
        let sent: Vec<u32> = roots.iter().map(|(p, _)| *p).collect();
        let req = DynamoRequest::Roots {
            ks: ks.name.clone(),
            roots,
        };
        let differ = match self
            .clone()
            .dynamo_call(peer, req, BACKGROUND_CALL_WAIT)
            .await
            .map_err(|(_, m)| m)?
        {
            DynamoResponse::Differ(d) => d,
            _ => return Err("unexpected answer".into()),
        };
        {
            let mut synced = lock(&self.dynamo.synced);
            for p in &sent {
                if differ.contains(p) {
                    synced.remove(&(ks.id, *p, peer));
                } else {
                    synced.insert((ks.id, *p, peer), taken);
                }
            }
        }
        for p in differ.into_iter().take(AE_PARTITIONS_PER_ROUND) {
            let leaves = lock(&replica).leaf_digests(p);
            let req = DynamoRequest::Leaves {
                ks: ks.name.clone(),
                partition: p,
                leaves,
            };
            let (leaves, theirs) = match self
                .clone()
                .dynamo_call(peer, req, BACKGROUND_CALL_WAIT)
                .await
                .map_err(|(_, m)| m)?
            {
                DynamoResponse::Entries { leaves, entries } => (leaves, entries),
                _ => return Err("unexpected answer".into()),
            };
            let ours = cap_bytes(lock(&replica).entries_in_leaves(p, &leaves));
            let moved = stored_bytes(&theirs) + stored_bytes(&ours);
            self.dynamo
                .counters
                .ae_bytes
                .fetch_add(moved, Ordering::Relaxed);
            let (changed_here, _) = self
                .store_local(ks, &theirs, false)
                .await
                .map_err(|e| e.message)?;
            let mut changed_there = 0;
            if !ours.is_empty() {
                let req = DynamoRequest::Store {
                    ks: ks.name.clone(),
                    items: ours,
                    fresh: false,
                    hint_for: None,
                };
                if let DynamoResponse::Stored { changed, .. } = self
                    .clone()
                    .dynamo_call(peer, req, BACKGROUND_CALL_WAIT)
                    .await
                    .map_err(|(_, m)| m)?
                {
                    changed_there = changed;
                }
            }
            self.dynamo
                .counters
                .ae_keys_repaired
                .fetch_add(u64::from(changed_here + changed_there), Ordering::Relaxed);
        }
        Ok(())
    }

    /// This node's leaderless figures.
    pub fn leaderless_report(&self) -> LeaderlessReport {
        let c = &self.dynamo.counters;
        let now = self.clock.wall_ms();
        let (hints, hint_bytes, oldest) = {
            let hints = lock(&self.dynamo.hints);
            let bytes = hints
                .iter()
                .map(|((_, _, k), h)| stored_bytes(&[(k.clone(), h.versioned.clone())]))
                .sum();
            let oldest = hints.values().map(|h| h.created_ms).min();
            (
                hints.len() as u64,
                bytes,
                oldest.map(|t| now.saturating_sub(t)),
            )
        };
        let names: HashMap<u64, KeyspaceInfo> = self
            .list_keyspaces()
            .into_iter()
            .map(|k| (k.id, k))
            .collect();
        let replicas: Vec<(u64, Arc<Mutex<Replica>>)> = lock(&self.dynamo.replicas)
            .iter()
            .map(|(id, r)| (*id, r.clone()))
            .collect();
        let mut keyspaces: Vec<ReplicaDigest> = replicas
            .into_iter()
            .filter_map(|(id, r)| {
                let ks = names.get(&id)?;
                let r = lock(&r);
                // Empty partitions (every key collected) count as never written.
                let digest =
                    r.partitions_held()
                        .filter(|p| r.root(*p) != 0)
                        .fold(0u64, |acc, p| {
                            let mut h = xxhash_rust::xxh3::Xxh3::new();
                            h.update(&p.to_le_bytes());
                            h.update(&r.root(p).to_le_bytes());
                            acc ^ h.digest()
                        });
                let (keys_with_siblings, siblings_max) = r.sibling_counts();
                Some(ReplicaDigest {
                    keyspace: ks.name.clone(),
                    mode: ks.spec.mode,
                    keys: r.len() as u64,
                    digest,
                    keys_with_siblings,
                    siblings_max,
                })
            })
            .collect();
        keyspaces.sort_by(|a, b| a.keyspace.cmp(&b.keyspace));
        LeaderlessReport {
            keyspaces,
            hints,
            hint_bytes,
            oldest_hint_age_ms: oldest,
            hints_stored_total: c.hints_stored.load(Ordering::Relaxed),
            hints_replayed_total: c.hints_replayed.load(Ordering::Relaxed),
            hints_expired_total: c.hints_expired.load(Ordering::Relaxed),
            read_repairs_total: c.read_repairs.load(Ordering::Relaxed),
            anti_entropy_exchanges_total: c.ae_exchanges.load(Ordering::Relaxed),
            anti_entropy_keys_repaired_total: c.ae_keys_repaired.load(Ordering::Relaxed),
            anti_entropy_bytes_total: c.ae_bytes.load(Ordering::Relaxed),
            tombstones: lock(&self.dynamo.tombstones).len() as u64,
            tombstones_collected_total: c.tombstones_collected.load(Ordering::Relaxed),
        }
    }
}
