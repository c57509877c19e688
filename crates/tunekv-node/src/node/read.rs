//! The read path: requirement → judge → probe / wait / serve, one view per shard, receipts.

use super::*;

/// A read under way (see `begin_read`).
struct Begun<'a> {
    started: Instant,
    deadline: Instant,
    ks: Arc<KeyspaceInfo>,
    level: Level,
    session: &'a mut Session,
    r: Option<Quorum>,
}

/// A one-key read's outcome from the value found (if any) and its receipt.
fn outcome(found: Option<StoredValue>, receipt: Receipt) -> ReadOutcome {
    ReadOutcome {
        version: found.as_ref().map(|v| v.mod_index),
        expires_ms: found.as_ref().and_then(|v| v.expires_ms),
        value: found.map(|v| v.value),
        receipt,
    }
}

/// A SCAN step's keys, where the next one starts (none: the shard is done), and a key count.
type ScanStep = (Vec<Vec<u8>>, Option<u64>, u64);

/// A node's error as an rpc answer.
fn remote(e: TunekvError) -> RemoteError {
    RemoteError::new(e.code, e.message)
}

impl Node {
    /// The read index of `group`: the leader's commit index, confirmed with a quorum after the
    /// read began (Raft read-index). A round that ends in no_quorum (the leader's heartbeats
    /// to the quorum failed: a follower busy for a moment, whose answers have about 100 ms) is
    /// asked again until the read's deadline: one failed round does not fail a read that may
    /// wait seconds.
    pub(super) async fn read_index(
        &self,
        group: GroupId,
        deadline: Instant,
    ) -> Result<u64, TunekvError> {
        let g = self.hosted(group)?;
        let res = loop {
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
                Err(LeaderGone::Answered(e))
                    if e.code == Code::NoQuorum && Instant::now() + RETRY_PAUSE < deadline =>
                {
                    tokio::time::sleep(RETRY_PAUSE).await;
                }
                res => break res,
            }
        };
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

    /// The read index of `shard` of ordered keyspace `keyspace` (this node must hold a replica
    /// of it), confirmed by a quorum-holding leader after this call began: every write
    /// acknowledged before the call is at or below it. Probes are shared with the reads of this
    /// node (one in flight per shard).
    pub async fn shard_read_index(
        &self,
        keyspace: &str,
        shard: u32,
        wait: Option<Duration>,
    ) -> Result<Position, TunekvError> {
        let started = Instant::now();
        let deadline = started + self.wait_budget(wait, self.config.read_wait_ms_default);
        let ks = self.keyspace(keyspace, deadline).await?;
        if ks.spec.mode != Mode::Ordered {
            return Err(err(
                Code::ModeUnsupported,
                format!(
                    "keyspace {:?} is {}: read indexes are positions in an ordered keyspace's \
                     shard logs",
                    ks.name,
                    ks.spec.mode.as_str()
                ),
            ));
        }
        if shard >= ks.spec.shards {
            return Err(err(
                Code::BadRequest,
                format!(
                    "keyspace {:?} has shards 0 to {}, not {shard}",
                    ks.name,
                    ks.spec.shards - 1
                ),
            ));
        }
        let g = self.hosted_shard(&ks, ShardId(shard)).await?;
        let index = self.probe(&g, started, deadline).await?;
        Ok(Position {
            shard: ShardId(shard),
            index: LogIndex(index),
            commit_ms: 0,
        })
    }

    pub(super) async fn leader_read_index(&self, g: &Group) -> Result<u64, RemoteError> {
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
            // This replica's Raft stopped (the node is shutting down, or the replica moved
            // away): not the leader any more. A read index asks for nothing to be written, so
            // the caller asks the next leader.
            Err(RaftError::Fatal(e)) => Err(RemoteError {
                code: Code::Unavailable,
                message: format!("node {} no longer leads {}: {e}", self.id, g.id),
                leader_hint: None,
                not_leader: true,
            }),
        }
    }

    pub(super) async fn wait_applied(
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
    pub(super) fn copy_state(&self, g: &Group) -> CopyState {
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
            watermark: g.watermark().map(|(index, at)| Watermark {
                index: LogIndex(index),
                age: at.elapsed(),
            }),
        }
    }

    /// Reads `key` at `level` (the keyspace's default when `None`), waiting at most `wait`.
    /// Starts a read: its start time and deadline, its keyspace, its level (the keyspace's
    /// default unless named) and its session.
    async fn begin_read<'a>(&self, req: ReadRequest<'a>) -> Result<Begun<'a>, TunekvError> {
        let started = Instant::now();
        let deadline = started + self.wait_budget(req.wait, self.config.read_wait_ms_default);
        let ks = self.keyspace(req.keyspace, deadline).await?;
        let level = req.level.unwrap_or_else(|| ks.spec.default_level());
        ks.spec.mode.admits(level)?;
        if let (Mode::Ordered, Some(r)) = (ks.spec.mode, req.r) {
            return Err(err(
                Code::QuorumInvalid,
                format!(
                    "r={r}: read quorums apply to leaderless keyspaces; {:?} is ordered, where \
                     the level says which copy may serve",
                    ks.name
                ),
            ));
        }
        Ok(Begun {
            started,
            deadline,
            ks,
            level,
            session: req.session,
            r: req.r,
        })
    }

    /// Refuses whole-keyspace reads (SCAN, DBSIZE) on leaderless and volatile keyspaces.
    fn ordered_only(ks: &KeyspaceInfo, what: &str) -> Result<(), TunekvError> {
        if ks.spec.mode == Mode::Ordered {
            return Ok(());
        }
        Err(err(
            Code::ModeUnsupported,
            format!(
                "{what} is not supported on {} keyspace {:?} yet: its keys are spread over a \
                 ring of replicas with no one view to read",
                ks.spec.mode.as_str(),
                ks.name
            ),
        ))
    }

    pub async fn get(&self, req: ReadRequest<'_>, key: &[u8]) -> Result<ReadOutcome, TunekvError> {
        self.get_or_forward(req, key, true).await
    }

    /// A read another node sent here because it holds no replica of the key's shard
    /// ([`Request::Get`]): served as this node's own client's would be, never sent on.
    pub(super) async fn serve_forwarded_get(
        &self,
        ks: &str,
        key: &[u8],
        level: &str,
        wait_ms: u64,
        token: &str,
    ) -> Result<crate::rpc::ForwardedRead, RemoteError> {
        let mut session = self.forwarded_session(token)?;
        let req = ReadRequest {
            keyspace: ks,
            level: Some(Level::parse(level).map_err(remote)?),
            r: None,
            wait: Some(Duration::from_millis(wait_ms)),
            session: &mut session,
        };
        let out = self.get_or_forward(req, key, false).await.map_err(remote)?;
        Ok(crate::rpc::ForwardedRead {
            value: out.value,
            version: out.version,
            expires_ms: out.expires_ms,
            receipt: self.forwarded_receipt(&out.receipt, &session),
        })
    }

    /// The session a forwarded read carries (none: a fresh one).
    fn forwarded_session(&self, token: &str) -> Result<Session, RemoteError> {
        if token.is_empty() {
            return Ok(Session::default());
        }
        self.session_key.decode(token).map_err(remote)
    }

    /// [`Node::begin_read`] of a read another node forwarded here (ordered keyspaces only):
    /// its keyspace, level and wait budget as sent, on `session` (the token's).
    async fn begin_forwarded<'s>(
        &self,
        ks: &'s str,
        level: &str,
        wait_ms: u64,
        session: &'s mut Session,
        what: &str,
    ) -> Result<Begun<'s>, RemoteError> {
        let req = ReadRequest {
            keyspace: ks,
            level: Some(Level::parse(level).map_err(remote)?),
            r: None,
            wait: Some(Duration::from_millis(wait_ms)),
            session,
        };
        let begun = self.begin_read(req).await.map_err(remote)?;
        Self::ordered_only(&begun.ks, what).map_err(remote)?;
        Ok(begun)
    }

    /// A receipt and the session after the read, for the node that forwarded it.
    fn forwarded_receipt(&self, r: &Receipt, session: &Session) -> crate::rpc::ForwardedReceipt {
        crate::rpc::ForwardedReceipt {
            level: r.level.to_string(),
            served_by: r.served_by.0,
            position: r.position.to_string(),
            entries: r.staleness.entries,
            ms: r.staleness.ms,
            session: self.session_key.encode(session),
        }
    }

    /// Asks the replicas of `shard` in turn (this node holds none) for a read `ask(wait_ms,
    /// session token)` builds, and takes the first answer `take` accepts with its receipt: the
    /// replica judged the level and made the receipt, and its session becomes `session`. A
    /// replica's refusal (a level it could not meet, a bad key, a batch too large) is the
    /// read's answer; a node that is not (or no longer) a replica, or does not answer, is
    /// skipped.
    async fn ask_replicas<T>(
        &self,
        (ks, shard): (&KeyspaceInfo, ShardId),
        session: &mut Session,
        deadline: Instant,
        ask: impl Fn(u64, String) -> Request,
        take: impl Fn(Response) -> Option<(T, crate::rpc::ForwardedReceipt)>,
    ) -> Result<(T, Receipt), TunekvError> {
        let gid = GroupId::for_shard(ks.id, shard);
        let hosts = self.shard_placement(ks, shard).replicas;
        let token = self.session_key.encode(session);
        let mut last = err(
            Code::Unavailable,
            format!("no replica of {gid} answered node {}", self.id),
        );
        for host in hosts {
            let remaining = deadline.saturating_duration_since(Instant::now());
            if remaining.is_zero() {
                break;
            }
            let wait_ms = u64::try_from(remaining.as_millis()).unwrap_or(u64::MAX);
            // A little longer than the replica's own budget, so its answer (or its refusal)
            // arrives rather than a timeout here.
            let timeout = remaining + Duration::from_millis(200);
            match self
                .pool
                .call(NodeId(host), gid.0, ask(wait_ms, token.clone()), timeout)
                .await
            {
                Ok(answer) => {
                    let Some((value, f)) = take(answer) else {
                        last = internal(format!("node {host} answered another kind"));
                        continue;
                    };
                    *session = self.session_key.decode(&f.session)?;
                    let position = Position::parse(&f.position).ok_or_else(|| {
                        internal(format!("node {host} answered position {:?}", f.position))
                    })?;
                    let receipt = Receipt {
                        level: Level::parse(&f.level)?,
                        served_by: NodeId(f.served_by),
                        position,
                        staleness: Staleness {
                            entries: f.entries,
                            ms: f.ms,
                        },
                        quorum: None,
                    };
                    return Ok((value, receipt));
                }
                Err(CallError::Remote(e)) if e.code != Code::NotReplica && !e.not_leader => {
                    return Err(err(e.code, e.message))
                }
                Err(CallError::Remote(e)) => last = err(e.code, e.message),
                Err(CallError::Unreachable(m)) => last = err(Code::Unavailable, m),
                Err(CallError::Timeout) => {
                    last = err(
                        Code::Timeout,
                        format!("node {host} did not answer the read in time"),
                    )
                }
            }
        }
        Err(last)
    }

    /// The group of `shard` for serving a read: this node's replica, unless it is a learner
    /// still being caught up by a replica move (its copy may be far behind, and it knows no
    /// commit index to measure that by): then `not_replica`, so the read goes to a voter.
    async fn reading_shard(
        &self,
        ks: &KeyspaceInfo,
        shard: ShardId,
    ) -> Result<Arc<Group>, TunekvError> {
        let g = self.hosted_shard(ks, shard).await?;
        if g.has_learner(self.id.0) {
            return Err(err(
                Code::NotReplica,
                format!(
                    "node {}'s copy of shard {shard} of {:?} is a learner still catching up; \
                     its voters serve reads",
                    self.id, ks.name
                ),
            ));
        }
        Ok(g)
    }

    /// Sends a one-key read to the replicas of its shard (this node holds none).
    async fn forward_get(
        &self,
        ks: &KeyspaceInfo,
        level: Level,
        key: &[u8],
        deadline: Instant,
        session: &mut Session,
    ) -> Result<ReadOutcome, TunekvError> {
        let shard = shard_for_key(key, ks.spec.shards);
        let ask = |wait_ms, session| Request::Get {
            ks: ks.name.clone(),
            key: key.to_vec(),
            level: level.to_string(),
            wait_ms,
            session,
        };
        let take = |r| match r {
            Response::Read(f) => Some(((f.value, f.version, f.expires_ms), f.receipt)),
            _ => None,
        };
        let ((value, version, expires_ms), receipt) = self
            .ask_replicas((ks, shard), session, deadline, ask, take)
            .await?;
        Ok(ReadOutcome {
            value,
            version,
            expires_ms,
            receipt,
        })
    }

    async fn get_or_forward(
        &self,
        req: ReadRequest<'_>,
        key: &[u8],
        may_forward: bool,
    ) -> Result<ReadOutcome, TunekvError> {
        let Begun {
            started,
            deadline,
            ks,
            level,
            session,
            r,
        } = self.begin_read(req).await?;
        let out = if ks.spec.mode != Mode::Ordered {
            self.dynamo_batch_get(&ks, level, r, &[key.to_vec()], deadline, session)
                .await
                .and_then(|mut shards| {
                    let shard = shards
                        .pop()
                        .ok_or_else(|| internal("a one-key batch read no shard"))?;
                    let found = shard.values.into_iter().next().and_then(|(_, v)| v);
                    let found = found.map(Arc::unwrap_or_clone);
                    Ok(outcome(found, shard.receipt))
                })
        } else {
            // One key: no batch to group by shard or to size (a value is never larger than
            // the batch limit's floor).
            match check_key(key) {
                Err(e) => Err(e),
                Ok(()) => match self
                    .reading_shard(&ks, shard_for_key(key, ks.spec.shards))
                    .await
                {
                    Err(e) if e.code == Code::NotReplica && may_forward => {
                        self.forward_get(&ks, level, key, deadline, session).await
                    }
                    Err(e) => Err(e),
                    Ok(g) => self
                        .read_values(&g, level, session, (started, deadline), &[key])
                        .await
                        .map(|(mut found, receipt)| {
                            outcome(found.pop().flatten().map(Arc::unwrap_or_clone), receipt)
                        }),
                },
            }
        };
        // A read another node forwarded here is counted there, where its client asked.
        if may_forward {
            self.record_read(&ks, level, &out, |o: &ReadOutcome| vec![&o.receipt]);
        }
        out
    }

    /// Reads what `key` of a conflict-free keyspace holds — a whole set, map or counter state
    /// — at `level` and read quorum `r`, as `get` reads a value (the front ends answer SMEMBERS,
    /// HGETALL, SISMEMBER, … from it).
    pub async fn read_state(
        &self,
        req: ReadRequest<'_>,
        key: &[u8],
    ) -> Result<StateRead, TunekvError> {
        let Begun {
            deadline,
            ks,
            level,
            session,
            r,
            ..
        } = self.begin_read(req).await?;
        if ks.spec.mode != Mode::Leaderless || !self.policy_of(&ks)?.dotted() {
            return Err(err(
                Code::WrongType,
                format!(
                    "Operation against a key holding the wrong kind of value: {:?} holds plain \
                     values; read them with GET",
                    ks.name
                ),
            ));
        }
        let out = self
            .dynamo_read_held(&ks, level, r, key, deadline, session)
            .await
            .map(|(held, receipt)| StateRead {
                stored: held.map(|v| v.stored),
                receipt,
            });
        self.record_read(&ks, level, &out, |s: &StateRead| vec![&s.receipt]);
        out
    }

    /// Reads several keys at `level`: one consistent view per shard, one receipt per shard.
    /// Expired keys read as absent. Values totalling more than the config's
    /// `batch_get_response_bytes_max` are refused with `response_too_large` before any is
    /// copied, so a batch costs at most that much memory (a key named twice counts twice).
    pub async fn batch_get(
        &self,
        req: ReadRequest<'_>,
        keys: &[Vec<u8>],
    ) -> Result<Vec<ShardRead>, TunekvError> {
        let Begun {
            started,
            deadline,
            ks,
            level,
            session,
            r,
        } = self.begin_read(req).await?;
        let out = if ks.spec.mode != Mode::Ordered {
            self.dynamo_batch_get(&ks, level, r, keys, deadline, session)
                .await
        } else {
            self.ordered_batch_get(&ks, level, session, started, deadline, keys)
                .await
        };
        self.record_read(&ks, level, &out, |shards: &Vec<ShardRead>| {
            shards.iter().map(|s| &s.receipt).collect()
        });
        out
    }

    /// `batch_get` of an ordered keyspace: each shard's keys from one state of a replica,
    /// this node's or (when it holds none) one of the shard's replicas.
    async fn ordered_batch_get(
        &self,
        ks: &KeyspaceInfo,
        level: Level,
        session: &mut Session,
        started: Instant,
        deadline: Instant,
        keys: &[Vec<u8>],
    ) -> Result<Vec<ShardRead>, TunekvError> {
        let by_shard = by_shard(ks, keys.to_vec(), |k| k)?;
        let bytes_max = self.config.batch_get_response_bytes_max;
        let mut bytes_total = 0u64;
        let mut out = Vec::with_capacity(by_shard.len());
        for (shard, keys) in by_shard {
            let budget = (bytes_max, bytes_total);
            let (read, bytes) = match self.reading_shard(ks, shard).await {
                Ok(g) => {
                    self.read_keys(ks, &g, keys, budget, session, (level, started, deadline))
                        .await?
                }
                Err(e) if e.code == Code::NotReplica => {
                    self.forward_shard(ks, shard, keys, budget, session, (level, deadline))
                        .await?
                }
                Err(e) => return Err(e),
            };
            bytes_total += bytes;
            out.push(read);
        }
        Ok(out)
    }

    /// `keys` of one shard of `ks` from this node's replica `g`, at `level`, within the batch's
    /// byte limit (`budget`: the limit, and what earlier shards took); the read and its bytes.
    async fn read_keys(
        &self,
        ks: &KeyspaceInfo,
        g: &Group,
        keys: Vec<Vec<u8>>,
        (bytes_max, bytes_total): (u64, u64),
        session: &mut Session,
        (level, started, deadline): (Level, Instant, Instant),
    ) -> Result<(ShardRead, u64), TunekvError> {
        let room = bytes_max.saturating_sub(bytes_total);
        // A batch whose largest possible values fit the room (a pipeline of GETs) needs no
        // sizing: its values may come from the hot values.
        if (keys.len() as u64).saturating_mul(ks.spec.value_bytes_max) <= room {
            let (found, receipt) = self
                .read_values(g, level, session, (started, deadline), &keys)
                .await?;
            let bytes: u64 = found.iter().flatten().map(|v| v.value.len() as u64).sum();
            // Values stored before the keyspace's value limit was lowered can still be over.
            if bytes > room {
                return Err(too_large(bytes_max, bytes_total + bytes));
            }
            let values = keys.into_iter().zip(found).collect();
            return Ok((ShardRead { values, receipt }, bytes));
        }
        let (values, receipt) = self
            .read_shard(g, level, session, started, deadline, |view, now_ms| {
                // Only a batch whose largest possible values exceed the room is sized
                // first (a single GET never is: the room starts at least at the largest
                // value). It is refused from the records' sizes when its live values
                // surely exceed the room, without reading them; records are at least as
                // large as their values, so when they fit, so do the values; in between,
                // the values are measured one at a time without being kept.
                if (keys.len() as u64).saturating_mul(ks.spec.value_bytes_max) > room {
                    if let Some(least) = view.live_bytes_at_least(&keys, now_ms)? {
                        if least > room {
                            return Ok(Err(least));
                        }
                    }
                    let mut stored = 0u64;
                    for k in &keys {
                        stored += view.stored_size(k)?;
                    }
                    if stored > room {
                        let mut bytes = 0u64;
                        for k in &keys {
                            bytes += view
                                .get_live(k, now_ms)?
                                .map_or(0, |v| v.value.len() as u64);
                            if bytes > room {
                                return Ok(Err(bytes));
                            }
                        }
                    }
                }
                let mut values = Vec::with_capacity(keys.len());
                let mut bytes = 0u64;
                for k in &keys {
                    let v = view.get_live(k, now_ms)?;
                    bytes += v.as_ref().map_or(0, |v| v.value.len() as u64);
                    if bytes > room {
                        return Ok(Err(bytes));
                    }
                    values.push((k.clone(), v.map(Arc::new)));
                }
                Ok(Ok((values, bytes)))
            })
            .await?;
        let (values, bytes) = values.map_err(|bytes| too_large(bytes_max, bytes_total + bytes))?;
        Ok((ShardRead { values, receipt }, bytes))
    }

    /// [`Node::read_keys`] on a replica of the shard, for a node that holds none: the first
    /// replica that answers serves it as its own read (level, wait budget, session) and makes
    /// the receipt.
    async fn forward_shard(
        &self,
        ks: &KeyspaceInfo,
        shard: ShardId,
        keys: Vec<Vec<u8>>,
        (bytes_max, bytes_before): (u64, u64),
        session: &mut Session,
        (level, deadline): (Level, Instant),
    ) -> Result<(ShardRead, u64), TunekvError> {
        let ask = |wait_ms, session| Request::ReadShard {
            ks: ks.name.clone(),
            shard: shard.0,
            keys: keys.clone(),
            level: level.to_string(),
            wait_ms,
            bytes_max,
            bytes_before,
            session,
        };
        let take = |r| match r {
            Response::Shard(f) => {
                let values = f.values.into_iter().map(|(k, v)| (k, v.map(Arc::new)));
                Some(((values.collect(), f.bytes), f.receipt))
            }
            _ => None,
        };
        let ((values, bytes), receipt) = self
            .ask_replicas((ks, shard), session, deadline, ask, take)
            .await?;
        Ok((ShardRead { values, receipt }, bytes))
    }

    /// Runs on a replica: a batch read's keys of one shard sent by a node without one
    /// ([`Request::ReadShard`]), served as this node's own read (never sent on).
    pub(super) async fn serve_forwarded_shard(
        &self,
        (ks, shard, keys): (&str, u32, Vec<Vec<u8>>),
        level: &str,
        wait_ms: u64,
        budget: (u64, u64),
        token: &str,
    ) -> Result<crate::rpc::ForwardedShard, RemoteError> {
        let mut session = self.forwarded_session(token)?;
        let Begun {
            started,
            deadline,
            ks: info,
            level,
            session,
            ..
        } = self
            .begin_forwarded(ks, level, wait_ms, &mut session, "a forwarded batch read")
            .await?;
        let g = self
            .reading_shard(&info, ShardId(shard))
            .await
            .map_err(remote)?;
        for k in &keys {
            check_key(k).map_err(remote)?;
            if shard_for_key(k, info.spec.shards) != ShardId(shard) {
                return Err(RemoteError::new(
                    Code::BadRequest,
                    format!("a key of a forwarded read is not on shard {shard}"),
                ));
            }
        }
        let out = self
            .read_keys(&info, &g, keys, budget, session, (level, started, deadline))
            .await;
        // Counted on the node that forwarded it, where its client asked.
        let (read, bytes) = out.map_err(remote)?;
        Ok(crate::rpc::ForwardedShard {
            values: (read.values.into_iter())
                .map(|(k, v)| (k, v.map(Arc::unwrap_or_clone)))
                .collect(),
            bytes,
            receipt: self.forwarded_receipt(&read.receipt, session),
        })
    }

    /// One page of a SCAN over `ks` at `level`. The cursor holds a shard (top 8 bits) and a
    /// position in that shard's `scan_hash` order, so every key present for the whole scan is
    /// returned at least once, whatever is written meanwhile. About `count` keys are examined
    /// (all keys sharing the last hash are taken together); those `matches` accepts are
    /// returned. The next cursor is 0 when the scan is complete.
    #[allow(clippy::too_many_arguments)]
    pub async fn scan(
        &self,
        req: ReadRequest<'_>,
        cursor: u64,
        count: usize,
        matches: &(dyn Fn(&[u8]) -> bool + Sync),
    ) -> Result<ScanPage, TunekvError> {
        let Begun {
            started,
            deadline,
            ks,
            level,
            session,
            ..
        } = self.begin_read(req).await?;
        Self::ordered_only(&ks, "SCAN")?;
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
            let want = count - examined;
            let ((taken, next, _), receipt) = self
                .scan_shard(
                    (&ks, ShardId(shard)),
                    (from, want as u64),
                    session,
                    (level, started, deadline, true),
                )
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

    /// One SCAN step of a shard (`want` keys from scan hash `from`, and the rest of the last
    /// one's hash; the hash the next step starts at, none when the shard is done), or — `want`
    /// 0 — its count of live keys: read here when this node holds a replica, else (when
    /// `may_forward`) by a replica.
    async fn scan_shard(
        &self,
        (ks, shard): (&KeyspaceInfo, ShardId),
        (from, want): (u64, u64),
        session: &mut Session,
        (level, started, deadline, may_forward): (Level, Instant, Instant, bool),
    ) -> Result<(ScanStep, Receipt), TunekvError> {
        let g = match self.reading_shard(ks, shard).await {
            Ok(g) => g,
            Err(e) if e.code == Code::NotReplica && may_forward => {
                let ask = |wait_ms, session| Request::ScanShard {
                    ks: ks.name.clone(),
                    shard: shard.0,
                    from,
                    want,
                    level: level.to_string(),
                    wait_ms,
                    session,
                };
                let take = |r| match r {
                    Response::Scanned(f) => Some(((f.keys, f.next, f.count), f.receipt)),
                    _ => None,
                };
                return self
                    .ask_replicas((ks, shard), session, deadline, ask, take)
                    .await;
            }
            Err(e) => return Err(e),
        };
        self.read_shard(&g, level, session, started, deadline, |view, now_ms| {
            if want == 0 {
                return Ok((Vec::new(), None, view.count_live(now_ms)?));
            }
            // Keys are stored in scan order: read `want` of them from `from`, and the rest of
            // the last one's hash, and see where the next step starts.
            let mut taken: Vec<Vec<u8>> = Vec::new();
            let mut last_hash = None;
            let mut next = None;
            view.scan_live(from, now_ms, &mut |hash, key, _| {
                if taken.len() as u64 >= want && last_hash != Some(hash) {
                    next = Some(hash);
                    return false;
                }
                last_hash = Some(hash);
                taken.push(key.to_vec());
                true
            })?;
            Ok((taken, next, 0))
        })
        .await
    }

    /// Runs on a replica: a SCAN step or key count of one shard sent by a node without one
    /// ([`Request::ScanShard`]), served as this node's own read (never sent on).
    pub(super) async fn serve_forwarded_scan(
        &self,
        (ks, shard): (&str, u32),
        (from, want): (u64, u64),
        level: &str,
        wait_ms: u64,
        token: &str,
    ) -> Result<crate::rpc::ForwardedScan, RemoteError> {
        let mut session = self.forwarded_session(token)?;
        let Begun {
            started,
            deadline,
            ks: info,
            level,
            session,
            ..
        } = self
            .begin_forwarded(ks, level, wait_ms, &mut session, "a forwarded SCAN")
            .await?;
        if shard >= info.spec.shards || want > (BATCH_KEYS_MAX * 10) as u64 {
            return Err(RemoteError::new(
                Code::BadRequest,
                format!("a forwarded SCAN asked for shard {shard} or {want} keys"),
            ));
        }
        let ((keys, next, count), receipt) = self
            .scan_shard(
                (&info, ShardId(shard)),
                (from, want),
                session,
                (level, started, deadline, false),
            )
            .await
            .map_err(remote)?;
        Ok(crate::rpc::ForwardedScan {
            keys,
            next,
            count,
            receipt: self.forwarded_receipt(&receipt, session),
        })
    }

    /// The number of live keys in `ks` at `level`, with one receipt per shard.
    pub async fn count_keys(
        &self,
        req: ReadRequest<'_>,
    ) -> Result<(u64, Vec<Receipt>), TunekvError> {
        let Begun {
            started,
            deadline,
            ks,
            level,
            session,
            ..
        } = self.begin_read(req).await?;
        Self::ordered_only(&ks, "counting keys")?;
        let mut total = 0;
        let mut receipts = Vec::new();
        for shard in 0..ks.spec.shards {
            let ((_, _, n), receipt) = self
                .scan_shard(
                    (&ks, ShardId(shard)),
                    (0, 0),
                    session,
                    (level, started, deadline, true),
                )
                .await?;
            total += n;
            receipts.push(receipt);
        }
        Ok((total, receipts))
    }

    /// A batch read of a leaderless or volatile keyspace: one quorum read per key (each its
    /// own receipt), within the batch's byte cap.
    async fn dynamo_batch_get(
        &self,
        ks: &KeyspaceInfo,
        level: Level,
        r: Option<Quorum>,
        keys: &[Vec<u8>],
        deadline: Instant,
        session: &mut Session,
    ) -> Result<Vec<ShardRead>, TunekvError> {
        if keys.is_empty() || keys.len() > BATCH_KEYS_MAX {
            return Err(err(
                Code::BadRequest,
                format!(
                    "a batch holds 1 to {BATCH_KEYS_MAX} keys, got {}",
                    keys.len()
                ),
            ));
        }
        let bytes_max = self.config.batch_get_response_bytes_max;
        let mut bytes = 0u64;
        let mut out = Vec::with_capacity(keys.len());
        for key in keys {
            let read = self
                .dynamo_read(ks, level, r, key, deadline, session)
                .await?;
            bytes += read.value.as_ref().map_or(0, |v| v.len() as u64);
            if bytes > bytes_max {
                return Err(err(
                    Code::ResponseTooLarge,
                    format!(
                        "the values asked for total more than {bytes_max} bytes, the node's \
                         batch_get_response_bytes_max; ask for fewer keys at a time"
                    ),
                ));
            }
            let commit_ts = read
                .receipt
                .quorum
                .as_ref()
                .and_then(|q| q.version)
                .map_or(0, |v| v.0);
            let value = read.value.map(|value| StoredValue {
                value,
                create_index: 0,
                mod_index: 0,
                commit_ts,
                expires_ms: read.expires_ms,
            });
            out.push(ShardRead {
                values: vec![(key.clone(), value.map(Arc::new))],
                receipt: read.receipt,
            });
        }
        Ok(out)
    }

    /// Reads one view of `g` at `level` once the copy may serve it: `f` gets the view and the
    /// time expiry is judged at (this node's wall clock, never before the applied commit time).
    /// Records the read in the session.
    pub(super) async fn read_shard<T>(
        &self,
        g: &Group,
        level: Level,
        session: &mut Session,
        started: Instant,
        deadline: Instant,
        f: impl FnOnce(&tunekv_raft::ShardView, u64) -> std::io::Result<T>,
    ) -> Result<(T, Receipt), TunekvError> {
        let served = self
            .admit_read(g, level, session, started, deadline)
            .await?;
        let view = g.data.read().map_err(internal)?;
        let applied = view.applied();
        let out = f(&view, self.expiry_now(applied)).map_err(internal)?;
        drop(view);
        let receipt = self.read_done(g, level, session, (applied, &served), started);
        Ok((out, receipt))
    }

    /// The frame of every read of one copy, before it: the session admits the copy, and the
    /// level's requirement (with the session's mark) holds on it, waiting or probing if need be.
    async fn admit_read(
        &self,
        g: &Group,
        level: Level,
        session: &mut Session,
        started: Instant,
        deadline: Instant,
    ) -> Result<Served, TunekvError> {
        session.admit(g.id)?;
        let req = self.bugged(level, Requirement::for_level(level, session.mark(g.id))?);
        self.until_servable(g, level, req, started, deadline).await
    }

    /// ... and after it: the receipt of a read of the state applied up to `applied`, recorded
    /// in the session.
    fn read_done(
        &self,
        g: &Group,
        level: Level,
        session: &mut Session,
        (applied, served): (tunekv_raft::Applied, &Served),
        started: Instant,
    ) -> Receipt {
        let receipt = self.receipt(g, level, applied, served, started);
        session.read(g.id, receipt.position.index);
        receipt
    }

    /// The live values of `keys` in one state of `g` at `level`: from the copy's hot values
    /// when every key is there (no view, no LSM search), else from one view, keeping what it
    /// read for the next reads.
    pub(super) async fn read_values<K: AsRef<[u8]>>(
        &self,
        g: &Group,
        level: Level,
        session: &mut Session,
        (started, deadline): (Instant, Instant),
        keys: &[K],
    ) -> Result<(Vec<Option<Arc<tunekv_raft::StoredValue>>>, Receipt), TunekvError> {
        let served = self
            .admit_read(g, level, session, started, deadline)
            .await?;
        let (applied, values) = match g.data.read_hot(keys) {
            Some(hit) => hit,
            None => {
                let view = g.data.read().map_err(internal)?;
                let mut values = Vec::with_capacity(keys.len());
                for k in keys {
                    let v = view.get(k.as_ref()).map_err(internal)?.map(Arc::new);
                    g.data.keep_hot(&view, k.as_ref(), v.as_ref());
                    values.push(v);
                }
                (view.applied(), values)
            }
        };
        let now_ms = self.expiry_now(applied);
        let values = values
            .into_iter()
            .map(|v| v.filter(|v| v.live_at(now_ms)))
            .collect();
        let receipt = self.read_done(g, level, session, (applied, &served), started);
        Ok((values, receipt))
    }

    /// The time keys expire by in a state applied up to `applied`: never before its commit
    /// time, unless that ran ahead of this node's trusted clock by more than the offset bound
    /// (a skewed stamp must not expire keys early).
    fn expiry_now(&self, applied: tunekv_raft::Applied) -> u64 {
        let wall = self.expiry_wall_ms();
        Hlc::millis(applied.commit_ts)
            .min(wall.saturating_add(self.config.max_clock_offset_ms))
            .max(wall)
    }

    /// The requirement with this node's injected bugs applied (bug-injection builds only;
    /// otherwise `req` unchanged).
    pub(super) fn bugged(&self, level: Level, req: Requirement) -> Requirement {
        let b = &self.config.bugs;
        let broken = match level.promise() {
            Promise::Linearizable => b.strong_local(),
            Promise::Session => b.ignore_session(),
            Promise::Bounded => b.skip_bounded(),
            Promise::AnyState => false,
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
    pub(super) async fn until_servable(
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
    pub(super) async fn probe(
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
                g.probes_shared.fetch_add(1, Ordering::Relaxed);
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

    pub(super) fn receipt(
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
            match served.probed {
                // The probe itself, sent after the read began, is a proof the state meets.
                Some(read_index) if applied.index >= read_index => Staleness::ZERO,
                Some(read_index) => Staleness::proven(
                    read_index - applied.index,
                    g.proof_age_at(applied.index, started),
                ),
                None => Staleness::proven(
                    served.copy.known_commit.0.saturating_sub(applied.index),
                    g.proof_age_at(applied.index, started),
                ),
            }
        };
        Receipt {
            level,
            served_by: self.id,
            position,
            staleness,
            quorum: None,
        }
    }

    /// The receipt rule before issue 15 (bug injection `old-receipts` only): it understated
    /// staleness for a copy that knew it was behind (contact age) or whose commit times ran
    /// ahead of real time (now − commit time, clamped at 0).
    pub(super) fn old_staleness(
        &self,
        level: Level,
        position: Position,
        served: &Served,
    ) -> Staleness {
        match (served.probed, served.copy.watermark) {
            // The newest commit at the read's start is at or below the probed index.
            (Some(read_index), _) => {
                Staleness::behind(LogIndex(read_index), position, self.clock.wall_ms())
            }
            // Served on a watermark: fresh as of when its probe was sent.
            (None, Some(w)) if level.promise() == Promise::Bounded => Staleness {
                entries: served.copy.lag_entries(),
                ms: u64::try_from(w.age.as_millis()).unwrap_or(u64::MAX),
            },
            _ => Staleness::of_copy(&served.copy),
        }
    }
}

/// A batch read refused for its size: its values total `at_least` bytes, over `bytes_max`.
fn too_large(bytes_max: u64, at_least: u64) -> TunekvError {
    err(
        Code::ResponseTooLarge,
        format!(
            "the values asked for total more than {bytes_max} bytes (at least {at_least}), the \
             node's batch_get_response_bytes_max; ask for fewer keys at a time"
        ),
    )
}
