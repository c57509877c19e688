//! The write path: route to the shard, forward to its leader, stamp and propose there, retry
//! through elections; the leader's sweep of expired keys.

use super::*;
use crate::rpc::Update;
use tunekv_dynamo::{Policy, Stored};
use tunekv_raft::{Expect, Ttl, VERSION_MISMATCH};

/// Most comparisons, and most ops per branch, in one transaction.
pub const TXN_ITEMS_MAX: usize = 128;

/// The refusal of a conditional write: the version it named and the key's.
pub fn version_mismatch(expected: u64, current: u64) -> TunekvError {
    let now = match current {
        0 => "absent (version 0)".to_string(),
        v => format!("at version {v}"),
    };
    err(
        Code::VersionMismatch,
        format!(
            "the write was conditional on version {expected}{}, and the key is {now}; nothing \
             changed (read it again for its current value and version)",
            if expected == 0 { " (absent)" } else { "" }
        ),
    )
}

impl Node {
    pub(super) fn wait_budget(&self, wait: Option<Duration>, default_ms: u64) -> Duration {
        let cap = Duration::from_millis(self.config.wait_ms_cap);
        wait.unwrap_or(Duration::from_millis(default_ms)).min(cap)
    }

    /// The group of `shard`. A group this node replicates is opened on demand, so a request
    /// that arrives right after a restart does not race the catalog reconciler.
    pub(super) async fn hosted_shard(
        &self,
        ks: &KeyspaceInfo,
        shard: ShardId,
    ) -> Result<Arc<Group>, TunekvError> {
        let gid = GroupId::for_shard(ks.id, shard);
        if let Some(g) = self.group(gid) {
            return Ok(g);
        }
        let s = self.shard_placement(ks, shard);
        if s.hosts(self.id) {
            return self.open_group(gid, &s.nodes(), s.creates(self.id)).await;
        }
        let addresses = self.node_addresses();
        let addrs: Vec<String> = s
            .replicas
            .iter()
            .filter_map(|r| addresses.get(r).map(|a| format!("node {r} at {}", a.http)))
            .collect();
        Err(err(
            Code::NotReplica,
            format!(
                "node {} holds no replica of shard {shard} of {:?} ({} of {} nodes do); send this key to {}",
                self.id,
                ks.name,
                s.replicas.len(),
                self.nodes().len(),
                addrs.join(", ")
            ),
        ))
    }

    pub async fn put(
        &self,
        req: WriteRequest<'_>,
        key: &[u8],
        value: Vec<u8>,
    ) -> Result<WriteOutcome, TunekvError> {
        self.write(req, key, |_| {
            Ok(Op::Put {
                key: key.to_vec(),
                value,
            })
        })
        .await
    }

    pub async fn delete(
        &self,
        req: WriteRequest<'_>,
        key: &[u8],
    ) -> Result<WriteOutcome, TunekvError> {
        self.write(req, key, |_| Ok(Op::Delete { key: key.to_vec() }))
            .await
    }

    /// Writes `value` (`None`: deletes) only if `key` is at `version` (0: absent): HTTP's
    /// `if_version`, RESP's `CAS`. `Ok(Err(current))` when the key is at another version
    /// (0: absent): nothing changed ([`version_mismatch`] is its error). Ordered keyspaces only
    /// (`mode_unsupported` elsewhere: the condition needs one order of writes).
    pub async fn write_if(
        &self,
        req: WriteRequest<'_>,
        key: &[u8],
        value: Option<Vec<u8>>,
        version: u64,
    ) -> Result<Result<WriteOutcome, u64>, TunekvError> {
        if value.is_none() && version == 0 {
            return Err(err(
                Code::BadRequest,
                "if_version=0 means \"only if absent\", and a delete of an absent key deletes \
                 nothing; name the version to delete",
            ));
        }
        let w = self
            .write(req, key, |_| {
                Ok(Op::SetIf {
                    key: key.to_vec(),
                    value,
                    expect: Expect::Version(version),
                    ttl: Ttl::Clear,
                    get: false,
                })
            })
            .await?;
        if w.result.error.as_deref() == Some(VERSION_MISMATCH) {
            return Ok(Err(w.result.current.as_ref().map_or(0, |c| c.mod_index)));
        }
        Ok(Ok(w))
    }

    /// Starts a write: its deadline, its keyspace, its session and its write quorum (refused
    /// on an ordered keyspace).
    async fn begin_write<'a>(
        &self,
        req: WriteRequest<'a>,
    ) -> Result<(Instant, Arc<KeyspaceInfo>, &'a mut Session, Option<Quorum>), TunekvError> {
        let deadline =
            Instant::now() + self.wait_budget(req.wait, self.config.write_wait_ms_default);
        let ks = self.keyspace(req.keyspace, deadline).await?;
        if let (Mode::Ordered, Some(w)) = (ks.spec.mode, req.w) {
            return Err(err(
                Code::QuorumInvalid,
                format!(
                    "w={w}: write quorums apply to leaderless keyspaces; {:?} is ordered, where \
                     every write commits on a majority of its shard's replicas",
                    ks.name
                ),
            ));
        }
        Ok((deadline, ks, req.session, req.w))
    }

    /// What a write of a leaderless or volatile keyspace stores: a plain value, a value that
    /// expires (SET … EX/PX/EXAT/PXAT, SETEX, PSETEX: its expiry fixed by this node's clock
    /// now) or a delete. Read-modify-write commands need one order of writes, which those modes
    /// do not have.
    fn leaderless_stored(&self, ks: &KeyspaceInfo, op: Op) -> Result<Stored, TunekvError> {
        let (value, expires_ms) = match op {
            Op::Put { value, .. } => (value, None),
            Op::Set {
                value,
                cond: tunekv_raft::Cond::Always,
                ttl,
                get: false,
                ..
            } if ttl != tunekv_raft::Ttl::Keep => {
                let at = match ttl {
                    tunekv_raft::Ttl::AfterMs(ms) => Some(self.clock.wall_ms().saturating_add(ms)),
                    tunekv_raft::Ttl::AtMs(at) => Some(at),
                    _ => None,
                };
                (value, at)
            }
            Op::Delete { .. } => return Ok(Stored::Tombstone),
            other => {
                return Err(err(
                    Code::ModeUnsupported,
                    format!(
                        "{} is not supported on {} keyspace {:?}: it reads and writes atomically, \
                         which needs one order of writes (an ordered keyspace); here only plain \
                         writes (with an expiry or not) and deletes are (conditions and counters \
                         come with conflict-free types)",
                        other.name(),
                        ks.spec.mode.as_str(),
                        ks.name
                    ),
                ))
            }
        };
        check_value(&value, ks.spec.value_bytes_max)?;
        Ok(match expires_ms {
            Some(expires_ms) => Stored::Expiring { value, expires_ms },
            None => Stored::Value(value),
        })
    }

    /// The update a command makes on a conflict-free keyspace: INCR and its kin on a counter,
    /// DEL on a set or map; any other command is of the wrong type for it.
    fn update_of(ks: &KeyspaceInfo, policy: Policy, op: Op) -> Result<Update, TunekvError> {
        match (op, policy) {
            (Op::IncrBy { delta, .. }, Policy::Counter) => Ok(Update::Add {
                by: delta,
                id: None,
            }),
            (Op::Delete { .. }, Policy::Set | Policy::Map) => Ok(Update::Clear),
            // A plain write or delete of a siblings keyspace: without a context, it
            // supersedes the session's own last write of the key (Node::dynamo_update).
            (Op::Put { value, .. }, Policy::Siblings)
            | (
                Op::Set {
                    value,
                    cond: tunekv_raft::Cond::Always,
                    ttl: tunekv_raft::Ttl::Clear,
                    get: false,
                    ..
                },
                Policy::Siblings,
            ) => Ok(Update::Write {
                value: Some(value),
                ctx: Default::default(),
                max: ks.spec.siblings_max(),
            }),
            (Op::Delete { .. }, Policy::Siblings) => Ok(Update::Write {
                value: None,
                ctx: Default::default(),
                max: ks.spec.siblings_max(),
            }),
            (Op::Delete { .. }, _) => Err(err(
                Code::ModeUnsupported,
                format!(
                    "deleting a key of {} keyspace {:?} is not supported yet: a delete of a \
                     counter must say which updates it removes, so that concurrent ones survive \
                     it",
                    ks.spec.conflict.as_deref().unwrap_or("?"),
                    ks.name
                ),
            )),
            (other, _) => Err(err(
                Code::WrongType,
                format!(
                    "Operation against a key holding the wrong kind of value: {} on {:?}, a \
                     keyspace of {} values ({} apply)",
                    other.name(),
                    ks.name,
                    ks.spec.conflict.as_deref().unwrap_or("?"),
                    match policy {
                        Policy::Set => "SADD, SREM, SMEMBERS, SISMEMBER, SCARD and DEL",
                        Policy::Map => "HSET, HGET, HDEL, HGETALL, HINCRBY, HLEN, HEXISTS and DEL",
                        Policy::Siblings => "SET (with CONTEXT), GET, SIBLINGS and DEL",
                        _ => "INCR, INCRBY, DECR, DECRBY and GET",
                    }
                ),
            )),
        }
    }

    /// Adds `by` to the counter at `key` of a counter keyspace (HTTP `POST …:add`). `id`: the
    /// request's id, so a retry that reaches a replica which has applied it is not applied
    /// twice.
    pub async fn add(
        &self,
        req: WriteRequest<'_>,
        key: &[u8],
        by: i64,
        id: Option<u128>,
    ) -> Result<WriteOutcome, TunekvError> {
        self.update(req, key, Update::Add { by, id }).await
    }

    /// Makes `update` on `key` of a conflict-free keyspace whose values it applies to (a
    /// counter's add, a set's members, a map's fields); members and field values are checked
    /// against the keyspace's value limit first.
    pub async fn update(
        &self,
        req: WriteRequest<'_>,
        key: &[u8],
        update: Update,
    ) -> Result<WriteOutcome, TunekvError> {
        let (deadline, ks, session, w) = self.begin_write(req).await?;
        let policy = match ks.spec.mode {
            Mode::Leaderless => self.policy_of(&ks)?,
            _ => Policy::Lww,
        };
        // Removes alone name members or fields alike (HTTP cannot tell them apart).
        let update = match (update, policy) {
            (Update::Members { add, remove }, Policy::Map) if add.is_empty() => Update::Fields {
                set: Vec::new(),
                remove,
            },
            (u, _) => u,
        };
        if !update.fits(policy) {
            return Err(err(
                Code::WrongType,
                format!(
                    "Operation against a key holding the wrong kind of value: {:?} is not a {} \
                     keyspace (create one with {{\"mode\":\"leaderless\",\"conflict\":\"{}\"}})",
                    ks.name,
                    update.applies_to(),
                    update.applies_to().split(' ').next().unwrap_or("set")
                ),
            ));
        }
        let limit = ks.spec.value_bytes_max;
        match &update {
            Update::Members { add, remove } => {
                for m in add.iter().chain(remove) {
                    check_value(m, limit)?;
                }
            }
            Update::Fields { set, remove } => {
                for (f, v) in set {
                    check_value(f, limit)?;
                    check_value(v, limit)?;
                }
                for f in remove {
                    check_value(f, limit)?;
                }
            }
            Update::FieldAdd { field, .. } => check_value(field, limit)?,
            Update::Write { value, .. } => {
                if let Some(v) = value {
                    check_value(v, limit)?;
                }
            }
            Update::Add { .. } | Update::Clear => {}
        }
        self.dynamo_update(&ks, w, key, update, deadline, session)
            .await
    }

    /// Commits one command on the shard of `key`: `op` builds it from the keyspace (value
    /// limits differ per keyspace) and may refuse. Values in it are checked against the limits
    /// before anything is proposed.
    pub async fn write(
        &self,
        req: WriteRequest<'_>,
        key: &[u8],
        op: impl FnOnce(&KeyspaceInfo) -> Result<Op, TunekvError>,
    ) -> Result<WriteOutcome, TunekvError> {
        let (deadline, ks, session, w) = self.begin_write(req).await?;
        check_key(key)?;
        let op = op(&ks)?;
        let policy = match ks.spec.mode {
            Mode::Leaderless => self.policy_of(&ks)?,
            _ => Policy::Lww,
        };
        if policy.dotted() {
            let update = Self::update_of(&ks, policy, op)?;
            return self
                .dynamo_update(&ks, w, key, update, deadline, session)
                .await;
        }
        if ks.spec.mode != Mode::Ordered {
            let stored = self.leaderless_stored(&ks, op)?;
            return self
                .dynamo_write(&ks, w, key, stored, deadline, session)
                .await;
        }
        match &op {
            Op::Put { value, .. } | Op::PutIfAbsent { value, .. } | Op::Set { value, .. } => {
                check_value(value, ks.spec.value_bytes_max)?
            }
            Op::Append { suffix, .. } => check_value(suffix, ks.spec.value_bytes_max)?,
            Op::SetIf {
                value: Some(value),
                expect,
                ..
            } => {
                check_value(value, ks.spec.value_bytes_max)?;
                if let Expect::Value(v) = expect {
                    check_value(v, ks.spec.value_bytes_max)?;
                }
            }
            Op::MSet { .. } => {
                return Err(err(Code::Internal, "MSET goes through Node::mset"));
            }
            Op::Sweep { .. } => {
                return Err(err(Code::Internal, "only a shard's leader sweeps"));
            }
            _ => {}
        }
        let shard = shard_for_key(key, ks.spec.shards);
        match self.hosted_shard(&ks, shard).await {
            Ok(g) => {
                session.admit(g.id)?;
                let w = self.propose(g.id, op, deadline).await?;
                Ok(self.write_outcome(g.id, w, session))
            }
            // This node holds no replica of the shard (more nodes than replicas, or a replica
            // moved away): the write goes to the shard's leader through its replicas.
            Err(e) if e.code == Code::NotReplica => {
                let gid = GroupId::for_shard(ks.id, shard);
                session.admit(gid)?;
                let hosts = self.shard_placement(&ks, shard).replicas;
                let w = self.propose_through(gid, &hosts, op, deadline).await?;
                Ok(self.write_outcome(gid, w, session))
            }
            Err(e) => Err(e),
        }
    }

    /// Writes every pair: atomically per shard, shard after shard (there is no transaction
    /// across shards). Returns one outcome per shard written.
    /// Runs a single-shard transaction on an ordered keyspace (HTTP `:txn`, RESP EXEC): if
    /// every comparison holds, `success` runs, else `failure`, as one log entry. Its ops are
    /// reads (`Op::Get`) and single-key writes; every key named must be on one shard
    /// (`txn_cross_shard` otherwise). The outcome's `result.int` is 1 when the comparisons
    /// held, and `result.results` has one result per op run.
    pub async fn txn(
        &self,
        req: WriteRequest<'_>,
        compare: Vec<(Vec<u8>, Expect)>,
        success: Vec<Op>,
        failure: Vec<Op>,
    ) -> Result<WriteOutcome, TunekvError> {
        let (deadline, ks, session, _) = self.begin_write(req).await?;
        if ks.spec.mode != Mode::Ordered {
            return Err(err(
                Code::ModeUnsupported,
                format!(
                    "a transaction needs one order of writes; {:?} is {} (use an ordered \
                     keyspace)",
                    ks.name,
                    ks.spec.mode.as_str()
                ),
            ));
        }
        if compare.len() > TXN_ITEMS_MAX
            || success.len() > TXN_ITEMS_MAX
            || failure.len() > TXN_ITEMS_MAX
        {
            return Err(err(
                Code::BadRequest,
                format!("a transaction has at most {TXN_ITEMS_MAX} comparisons and {TXN_ITEMS_MAX} ops per branch"),
            ));
        }
        let limit = ks.spec.value_bytes_max;
        let mut keys: Vec<&[u8]> = Vec::new();
        for (key, expect) in &compare {
            keys.push(key);
            if let Expect::Value(v) = expect {
                check_value(v, limit)?;
            }
        }
        for op in success.iter().chain(&failure) {
            match op {
                Op::Put { key, value } | Op::Set { key, value, .. } => {
                    check_value(value, limit)?;
                    keys.push(key);
                }
                Op::Append { key, suffix, .. } => {
                    check_value(suffix, limit)?;
                    keys.push(key);
                }
                Op::Delete { key }
                | Op::IncrBy { key, .. }
                | Op::GetDel { key }
                | Op::Expire { key, .. }
                | Op::Get { key } => keys.push(key),
                other => {
                    return Err(err(
                        Code::BadRequest,
                        format!(
                            "{} is not allowed in a transaction (reads and single-key writes are)",
                            other.name()
                        ),
                    ))
                }
            }
        }
        let Some(first) = keys.first() else {
            return Err(err(
                Code::BadRequest,
                "a transaction names no key: give it comparisons or ops",
            ));
        };
        let shard = shard_for_key(first, ks.spec.shards);
        for key in &keys {
            check_key(key)?;
            if shard_for_key(key, ks.spec.shards) != shard {
                return Err(err(
                    Code::TxnCrossShard,
                    format!(
                        "a transaction runs on one shard, and keys {} and {} of {:?} are on \
                         shards {} and {}; nothing ran (keep a transaction's keys together, or \
                         use a keyspace with one shard)",
                        tunekv_core::code::echo_bytes(first),
                        tunekv_core::code::echo_bytes(key),
                        ks.name,
                        shard.0,
                        shard_for_key(key, ks.spec.shards).0
                    ),
                ));
            }
        }
        let gid = GroupId::for_shard(ks.id, shard);
        session.admit(gid)?;
        let op = Op::Txn {
            compare,
            success,
            failure,
        };
        let w = self.propose_on_shard(&ks, shard, op, deadline).await?;
        Ok(self.write_outcome(gid, w, session))
    }

    pub async fn mset(
        &self,
        req: WriteRequest<'_>,
        pairs: Vec<(Vec<u8>, Vec<u8>)>,
    ) -> Result<Vec<WriteOutcome>, TunekvError> {
        let (deadline, ks, session, _) = self.begin_write(req).await?;
        if ks.spec.mode != Mode::Ordered {
            return Err(err(
                Code::ModeUnsupported,
                format!(
                    "MSET is atomic, which needs one order of writes; {:?} is {}: set its keys \
                     one by one",
                    ks.name,
                    ks.spec.mode.as_str()
                ),
            ));
        }
        for (_, v) in &pairs {
            check_value(v, ks.spec.value_bytes_max)?;
        }
        let by_shard = by_shard(&ks, pairs, |(k, _)| k)?;
        let mut out = Vec::with_capacity(by_shard.len());
        for (shard, pairs) in by_shard {
            let gid = GroupId::for_shard(ks.id, shard);
            session.admit(gid)?;
            let w = self
                .propose_on_shard(&ks, shard, Op::MSet { pairs }, deadline)
                .await?;
            out.push(self.write_outcome(gid, w, session));
        }
        Ok(out)
    }

    /// Plain `SET`s of many keys, as one client pipelined them: each pair is its own write with
    /// its own outcome (in `pairs`' order), but on an ordered keyspace the pairs of one shard
    /// commit as one log entry and the shards' entries are proposed together, so a pipeline
    /// costs a round of consensus per shard instead of one per command. Writes to different keys
    /// commute and a key's pairs keep their order in its entry, so every value read afterwards is
    /// what the writes one after another would have left; the client sent each before hearing
    /// of the one before, so they may take effect at once. A pair with a bad key or value fails
    /// alone. Other modes write the pairs one after another, as the commands would.
    pub async fn set_many(
        &self,
        req: WriteRequest<'_>,
        pairs: Vec<(Vec<u8>, Vec<u8>)>,
    ) -> Vec<Result<WriteOutcome, TunekvError>> {
        let n = pairs.len();
        let WriteRequest {
            keyspace,
            w,
            wait,
            session,
        } = req;
        let deadline = Instant::now() + self.wait_budget(wait, self.config.write_wait_ms_default);
        let ks = match self.keyspace(keyspace, deadline).await {
            Ok(ks) => ks,
            Err(e) => return vec![Err(e); n],
        };
        if ks.spec.mode != Mode::Ordered || w.is_some() {
            let mut out = Vec::with_capacity(n);
            for (key, value) in pairs {
                let req = WriteRequest {
                    keyspace,
                    w,
                    wait,
                    session: &mut *session,
                };
                let op = |_: &KeyspaceInfo| {
                    Ok(Op::Set {
                        key: key.clone(),
                        value,
                        cond: tunekv_raft::Cond::Always,
                        ttl: Ttl::Clear,
                        get: false,
                    })
                };
                out.push(self.write(req, &key, op).await);
            }
            return out;
        }
        let mut out: Vec<Option<Result<WriteOutcome, TunekvError>>> = vec![None; n];
        // Per shard: where each pair was sent, and the pairs.
        type Pairs = Vec<(Vec<u8>, Vec<u8>)>;
        let mut by_shard: BTreeMap<ShardId, (Vec<usize>, Pairs)> = BTreeMap::new();
        for (i, (key, value)) in pairs.into_iter().enumerate() {
            if let Err(e) =
                check_key(&key).and_then(|_| check_value(&value, ks.spec.value_bytes_max))
            {
                out[i] = Some(Err(e));
                continue;
            }
            let entry = by_shard
                .entry(shard_for_key(&key, ks.spec.shards))
                .or_default();
            entry.0.push(i);
            entry.1.push((key, value));
        }
        let mut proposals = Vec::with_capacity(by_shard.len());
        for (shard, (at, pairs)) in by_shard {
            let gid = GroupId::for_shard(ks.id, shard);
            if let Err(e) = session.admit(gid) {
                for i in at {
                    out[i] = Some(Err(e.clone()));
                }
                continue;
            }
            let ks = &ks;
            proposals.push(async move {
                let w = self
                    .propose_on_shard(ks, shard, Op::MSet { pairs }, deadline)
                    .await;
                (gid, at, w)
            });
        }
        for (gid, at, w) in futures::future::join_all(proposals).await {
            let w = w.map(|w| self.write_outcome(gid, w, session));
            for i in at {
                out[i] = Some(w.clone());
            }
        }
        out.into_iter()
            .map(|o| o.unwrap_or_else(|| Err(err(Code::Internal, "a SET was left unanswered"))))
            .collect()
    }

    /// The outcome of a committed write, recorded in the session. Monotonic writes and
    /// writes-follow-reads hold by the log: a new entry's index is above every committed index,
    /// so above everything this session wrote or read on the shard. Checked, never assumed.
    pub(super) fn write_outcome(
        &self,
        group: GroupId,
        w: WriteResult,
        session: &mut Session,
    ) -> WriteOutcome {
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
            quorum: None,
            update: None,
        }
    }

    /// Proposes `op` on `group`'s leader (here or forwarded), retrying through elections until
    /// `deadline`. `no_quorum`: certainly not applied; `timeout`: outcome unknown.
    pub(super) async fn propose(
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
        res.map_err(|gone| self.propose_failed(group, gone))
    }

    /// Proposes `op` on shard `shard` of `ks`: through this node's replica when it holds one,
    /// else through the shard's replicas (any node takes writes of any shard).
    pub(super) async fn propose_on_shard(
        &self,
        ks: &KeyspaceInfo,
        shard: ShardId,
        op: Op,
        deadline: Instant,
    ) -> Result<WriteResult, TunekvError> {
        let gid = GroupId::for_shard(ks.id, shard);
        match self.hosted_shard(ks, shard).await {
            Ok(_) => self.propose(gid, op, deadline).await,
            Err(e) if e.code == Code::NotReplica => {
                let hosts = self.shard_placement(ks, shard).replicas;
                self.propose_through(gid, &hosts, op, deadline).await
            }
            Err(e) => Err(e),
        }
    }

    /// [`Node::propose`] for a group this node does not host: through its replicas `hosts`.
    async fn propose_through(
        &self,
        gid: GroupId,
        hosts: &[u64],
        op: Op,
        deadline: Instant,
    ) -> Result<WriteResult, TunekvError> {
        self.remote_leader(gid, hosts, deadline, || Request::Write(op.clone()), written)
            .await
            .map_err(|gone| self.propose_failed(gid, gone))
    }

    /// What a write that found no leader to commit it hears.
    fn propose_failed(&self, group: GroupId, gone: LeaderGone) -> TunekvError {
        match gone {
            LeaderGone::Answered(e) => err(e.code, e.message),
            LeaderGone::NoBudget => no_budget("write"),
            LeaderGone::Exhausted { maybe_sent: true, last_problem } => err(
                Code::Timeout,
                format!("write to {group} not acknowledged within the wait budget; it may still commit ({last_problem})"),
            ),
            LeaderGone::Exhausted { maybe_sent: false, last_problem } => err(
                Code::NoQuorum,
                format!(
                    "no leader with a quorum for {group} was reachable from node {} within the wait budget; \
                     the write did not happen ({last_problem})",
                    self.id
                ),
            ),
        }
    }

    /// Runs `req` on the leader of group `gid`, which this node does not host: sent to the
    /// replicas `hosts` in turn, following each "not the leader" answer's hint, retried
    /// through elections every `RETRY_PAUSE` until `deadline` (as `on_leader` does for a
    /// hosted group).
    pub(super) async fn remote_leader<T>(
        &self,
        gid: GroupId,
        hosts: &[u64],
        deadline: Instant,
        req: impl Fn() -> Request,
        extract: fn(Response) -> Option<T>,
    ) -> Result<T, LeaderGone> {
        if Instant::now() >= deadline {
            return Err(LeaderGone::NoBudget);
        }
        let mut maybe_sent = false;
        let mut last_problem = format!("no replica of {gid} answered");
        let mut hint: Option<u64> = None;
        let mut turn = 0usize;
        while Instant::now() < deadline && !hosts.is_empty() {
            let to = hint.take().unwrap_or_else(|| {
                turn += 1;
                hosts[(turn - 1) % hosts.len()]
            });
            let remaining = deadline.saturating_duration_since(Instant::now());
            match self.pool.call(NodeId(to), gid.0, req(), remaining).await {
                Ok(resp) => {
                    return extract(resp).ok_or_else(|| {
                        LeaderGone::Answered(RemoteError::new(
                            Code::Internal,
                            "unexpected response kind",
                        ))
                    })
                }
                Err(CallError::Remote(e)) if e.not_leader => {
                    last_problem = e.message;
                    hint = e.leader_hint.filter(|h| *h != to);
                    if hint.is_some() {
                        continue;
                    }
                }
                Err(CallError::Remote(e)) => return Err(LeaderGone::Answered(e)),
                Err(CallError::Unreachable(m)) => last_problem = m,
                Err(CallError::Timeout) => {
                    maybe_sent = true;
                    last_problem = format!("node {to} did not answer in time");
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

    pub(super) fn hosted(&self, group: GroupId) -> Result<Arc<Group>, TunekvError> {
        self.group(group)
            .ok_or_else(|| err(Code::Unavailable, format!("group {group} is not open here")))
    }

    /// Runs a request on `g`'s leader: locally with `local` when this node leads, else sent to
    /// the leader as `req()`. Retries through elections, leader changes and unreachable peers
    /// every `RETRY_PAUSE` until `deadline`.
    pub(super) async fn on_leader<T, Fut>(
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
    pub(super) async fn leader_propose(
        &self,
        g: &Group,
        op: Op,
    ) -> Result<WriteResult, RemoteError> {
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
            Ok(resp) => {
                g.record_ack(resp.log_id.index(), self.clock.wall_ms());
                Ok(WriteResult {
                    index: resp.log_id.index(),
                    commit_ts,
                    result: resp.data,
                })
            }
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

    /// Every `SWEEP_EVERY`, each shard this node leads commits a sweep of keys expired at its
    /// wall clock (reads already hide them; this frees their memory and disk before the next
    /// snapshot). The entry removes only keys expired at its own commit time.
    pub(super) async fn sweep_loop(self: Arc<Self>) {
        loop {
            tokio::time::sleep(SWEEP_EVERY).await;
            for g in self.all_groups() {
                if g.id.is_metadata() || !g.raft.metrics().borrow_watched().state.is_leader() {
                    continue;
                }
                let keys = match g
                    .data
                    .read()
                    .and_then(|v| v.expired(self.expiry_wall_ms(), SWEEP_KEYS_MAX))
                {
                    Ok(keys) => keys,
                    Err(e) => {
                        tracing::error!(group = %g.id, error = %e, "cannot read expired keys");
                        continue;
                    }
                };
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
}

/// A leader's answer to [`Request::Write`].
fn written(r: Response) -> Option<WriteResult> {
    match r {
        Response::Write(w) => Some(w),
        _ => None,
    }
}
