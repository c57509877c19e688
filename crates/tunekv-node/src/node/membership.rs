//! Cluster membership (issue 21): the nodes are the metadata group's voters, their addresses
//! and states live in the catalog (`node/<id>`), and every keyspace's placement too
//! (`placement/<name>`). The metadata leader turns an operator's add or remove into membership
//! changes and replica moves, one at a time: a new replica joins its shard's group as a
//! learner, catches up (log or snapshot), then the voters are replaced in one joint change, and
//! only then does the catalog name the new replicas and the old node drop its copy. A shard
//! never has fewer voters than its keyspace asked for.

use super::leaderless::lock;
use super::*;
use openraft::ChangeMembers;
use std::collections::BTreeSet;
use tunekv_core::placement::{
    next_leader, next_move, Move, NodeRecord, NodeState, Placement, ShardPlacement,
};

/// Catalog keys: `node/<id>` → [`NodeRecord`], `placement/<name>` → [`Placement`], and the
/// nodes of the cluster before its first membership change (what placements were computed from
/// before they were stored).
const NODE_PREFIX: &[u8] = b"node/";
const PLACEMENT_PREFIX: &[u8] = b"placement/";
const FOUNDERS_KEY: &[u8] = b"cluster/founders";
/// How long one step of membership work (a learner catching up, a joint change) may take.
const MEMBERSHIP_STEP_WAIT: Duration = Duration::from_secs(300);
/// How long one host may take to carry a membership change out before the step moves on (the
/// host's leader gives up at the same time; the step tries again).
pub(super) const MEMBERSHIP_HOP_WAIT: Duration = Duration::from_secs(10);
/// How often the membership loop looks at the catalog when nothing changes.
const MEMBERSHIP_EVERY: Duration = Duration::from_millis(500);
/// How often a shard leader checks that it is its shard's preferred leader.
const LEADER_EVERY: Duration = Duration::from_secs(2);
/// How long a leader waits before handing a group to its preferred leader again (the wait
/// doubles with each try, so a preferred node that cannot keep the lead is not asked forever).
const LEADER_BACKOFF_MIN: Duration = Duration::from_secs(10);
const LEADER_BACKOFF_MAX: Duration = Duration::from_secs(300);

/// `GET /v1/admin/nodes`: the nodes, the moves in flight, and why none can be made.
#[derive(Clone, Debug, Serialize, serde::Deserialize)]
pub struct MembershipReport {
    /// The node that answered.
    pub served_by: u64,
    pub nodes: Vec<NodeView>,
    /// Replica moves in flight (one at a time).
    pub moves: Vec<MoveView>,
    /// Replicas that must move but cannot (e.g. a draining node whose shards every other node
    /// holds already); known on the metadata leader.
    pub stuck: Option<String>,
}

#[derive(Clone, Debug, Serialize, serde::Deserialize)]
pub struct NodeView {
    pub id: u64,
    pub raft: String,
    pub http: String,
    pub resp: Option<String>,
    /// joining, active, draining, removed.
    pub state: String,
    /// A voter of the metadata group (a member of the cluster).
    pub voter: bool,
    /// Shard replicas the catalog places on it (moves in flight included).
    pub replicas: usize,
    /// Shards whose placement prefers it as leader (leaders follow within seconds).
    #[serde(default)]
    pub leaders: usize,
}

#[derive(Clone, Debug, Serialize, serde::Deserialize)]
pub struct MoveView {
    pub keyspace: String,
    /// The shard moving (0 for a ring change).
    pub shard: u32,
    /// A leaderless or volatile keyspace's ring changing from the nodes `from` to `to`
    /// (hand off, then drop), rather than one shard's replicas.
    #[serde(default)]
    pub ring: bool,
    pub from: Vec<u64>,
    pub to: Vec<u64>,
}

/// A leaderless or volatile keyspace's ring nodes and, while it changes, the nodes it changes
/// to with the version of the placement record that set them (which names the change).
#[derive(Clone, Debug, Default)]
pub(super) struct RingNodes {
    pub current: Vec<NodeId>,
    pub target: Option<(Vec<NodeId>, u64)>,
}

fn node_key(id: u64) -> Vec<u8> {
    let mut k = NODE_PREFIX.to_vec();
    k.extend_from_slice(id.to_string().as_bytes());
    k
}

fn placement_key(name: &str) -> Vec<u8> {
    let mut k = PLACEMENT_PREFIX.to_vec();
    k.extend_from_slice(name.as_bytes());
    k
}

fn not_leader_or(
    e: RaftError<tunekv_raft::TypeConfig, ClientWriteError<tunekv_raft::TypeConfig>>,
) -> RemoteError {
    match e {
        RaftError::APIError(ClientWriteError::ForwardToLeader(f)) => RemoteError {
            code: Code::Unavailable,
            message: "not the leader".into(),
            leader_hint: f.leader_id,
            not_leader: true,
        },
        other => RemoteError::new(Code::Unavailable, other.to_string()),
    }
}

impl Group {
    /// Whether node `id` is a learner of this group (a replica being caught up by a move).
    pub(super) fn has_learner(&self, id: u64) -> bool {
        self.raft
            .metrics()
            .borrow_watched()
            .membership_config
            .membership()
            .learner_ids()
            .any(|l| l == id)
    }
}

impl Node {
    /// The cluster's nodes: the metadata group's voters (the configured peers until this node
    /// has heard of any).
    pub(super) fn nodes(&self) -> Vec<NodeId> {
        if let Some(meta) = self.group(GroupId::METADATA) {
            let m = meta
                .raft
                .metrics()
                .borrow_watched()
                .membership_config
                .clone();
            let mut v: Vec<NodeId> = m.membership().voter_ids().map(NodeId).collect();
            if !v.is_empty() {
                v.sort();
                v.dedup();
                return v;
            }
        }
        let mut v: Vec<NodeId> = self.config.peers.iter().map(|p| NodeId(p.id)).collect();
        v.sort();
        v
    }

    /// Every `LEADER_EVERY`: each shard group this node leads but whose placement prefers
    /// another replica (leader balancing, `next_leader`; only once the preference is written
    /// down, which the first membership change does) is handed to that replica, when it is
    /// a voter, acknowledged a heartbeat within an election timeout and holds the whole log.
    pub(super) async fn leader_loop(self: Arc<Self>) {
        let mut tried: HashMap<GroupId, (Instant, Duration)> = HashMap::new();
        loop {
            tokio::time::sleep(LEADER_EVERY).await;
            let keyspaces: HashMap<u64, KeyspaceInfo> = self
                .list_keyspaces()
                .into_iter()
                .filter(|k| k.spec.mode == Mode::Ordered)
                .map(|k| (k.id, k))
                .collect();
            let recent = Duration::from_millis(self.config.raft_timing.election_timeout_ms_min);
            for g in self.all_groups() {
                if g.id.is_metadata() {
                    continue;
                }
                let Some(ks) = keyspaces.get(&g.id.keyspace_id()) else {
                    continue;
                };
                let m = g.raft.metrics().borrow_watched().clone();
                if m.current_leader != Some(self.id.0) {
                    continue;
                }
                let s = self.shard_placement(ks, g.id.shard());
                // Only a preference written down (after a membership change).
                let Some(to) = s.leader.and(s.preferred_leader()) else {
                    continue;
                };
                if to == self.id.0 || s.target.is_some() {
                    continue;
                }
                let voter = m
                    .membership_config
                    .membership()
                    .voter_ids()
                    .any(|v| v == to);
                let alive = m
                    .heartbeat
                    .as_ref()
                    .and_then(|h| h.get(&to).cloned().flatten())
                    .is_some_and(|t| openraft::Instant::elapsed(&*t) < recent);
                let matched = m
                    .replication
                    .as_ref()
                    .and_then(|r| r.get(&to).cloned().flatten())
                    .map_or(0, |l| l.index());
                // Level with the leader's log: a target that is behind when the transfer
                // arrives ignores it, and this leader has given up its lease meanwhile (a busy
                // shard waits for a quiet moment; the check runs every LEADER_EVERY).
                let caught_up = matched >= m.last_log_index.unwrap_or(0);
                let waiting = tried
                    .get(&g.id)
                    .is_some_and(|(next, _)| Instant::now() < *next);
                if !voter || !alive || !caught_up || waiting {
                    continue;
                }
                let backoff = tried.get(&g.id).map_or(LEADER_BACKOFF_MIN, |(_, b)| {
                    (*b * 2).min(LEADER_BACKOFF_MAX)
                });
                tried.insert(g.id, (Instant::now() + backoff, backoff));
                if g.raft.trigger().transfer_leader(to).await.is_ok() {
                    tracing::info!(group = %g.id, to, "leadership handed to the preferred leader");
                }
            }
        }
    }

    /// Voters that take new replicas: not joining, draining or removed.
    pub(super) fn active_nodes(&self) -> Vec<NodeId> {
        let records = self.node_records();
        self.nodes()
            .into_iter()
            .filter(|n| {
                records
                    .get(&n.0)
                    .is_none_or(|r| r.state == NodeState::Active)
            })
            .collect()
    }

    pub(super) fn meta_get(&self, key: &[u8]) -> Option<StoredValue> {
        // Before the metadata group is open (while it opens at start), the catalog is empty.
        let meta = self.group(GroupId::METADATA)?;
        match meta.data.read().and_then(|v| v.get(key)) {
            Ok(v) => v,
            Err(e) => {
                tracing::error!(error = %e, "cannot read the catalog");
                None
            }
        }
    }

    fn meta_scan(&self, prefix: &[u8]) -> Vec<(Vec<u8>, StoredValue)> {
        let Some(meta) = self.group(GroupId::METADATA) else {
            return Vec::new();
        };
        match meta.data.read().and_then(|v| v.scan_prefix(prefix)) {
            Ok(v) => v,
            Err(e) => {
                tracing::error!(error = %e, "cannot read the catalog");
                Vec::new()
            }
        }
    }

    /// The catalog's node records (nodes added or removed since the cluster started).
    pub(super) fn node_records(&self) -> BTreeMap<u64, NodeRecord> {
        self.meta_scan(NODE_PREFIX)
            .into_iter()
            .filter_map(|(k, v)| {
                let id = std::str::from_utf8(k.get(NODE_PREFIX.len()..)?)
                    .ok()?
                    .parse()
                    .ok()?;
                Some((id, serde_json::from_slice(&v.value).ok()?))
            })
            .collect()
    }

    /// Every node this node knows of: the configured peers (active), overridden by the
    /// catalog's records.
    pub fn node_addresses(&self) -> BTreeMap<u64, NodeRecord> {
        let mut out: BTreeMap<u64, NodeRecord> = self
            .config
            .peers
            .iter()
            .map(|p| {
                (
                    p.id,
                    NodeRecord {
                        raft: p.raft.clone(),
                        http: p.http.clone(),
                        resp: None,
                        state: NodeState::Active,
                    },
                )
            })
            .collect();
        out.extend(self.node_records());
        out
    }

    /// The nodes placements were computed from before they were stored.
    fn founders(&self) -> Vec<NodeId> {
        if let Some(v) = self.meta_get(FOUNDERS_KEY) {
            if let Ok(ids) = serde_json::from_slice::<Vec<u64>>(&v.value) {
                return ids.into_iter().map(NodeId).collect();
            }
        }
        let mut v: Vec<NodeId> = self.config.peers.iter().map(|p| NodeId(p.id)).collect();
        v.sort();
        v
    }

    /// Where `ks` lives, and the catalog version of its record (0: not stored, computed as
    /// before placements were stored).
    pub(super) fn placement_versioned(&self, ks: &KeyspaceInfo) -> (Placement, u64) {
        if let Some(v) = self.meta_get(&placement_key(&ks.name)) {
            match serde_json::from_slice::<Placement>(&v.value) {
                Ok(p) => return (p, v.mod_index),
                Err(e) => {
                    tracing::error!(keyspace = %ks.name, error = %e, "corrupt placement record")
                }
            }
        }
        (Placement::legacy(ks.id, &ks.spec, &self.founders()), 0)
    }

    pub(super) fn placement(&self, ks: &KeyspaceInfo) -> Placement {
        self.placement_versioned(ks).0
    }

    /// Shard `shard`'s replicas.
    pub(super) fn shard_placement(&self, ks: &KeyspaceInfo, shard: ShardId) -> ShardPlacement {
        self.placement(ks).shard(shard).cloned().unwrap_or_default()
    }

    /// A leaderless or volatile keyspace's ring as this node's catalog has it, cached until the
    /// catalog applies anything more.
    pub(super) fn ring_state(&self, ks: &KeyspaceInfo) -> RingNodes {
        let at = self
            .group(GroupId::METADATA)
            .map_or(0, |m| m.data.applied().index);
        if let Some((seen, n)) = lock(&self.ring_cache).get(&ks.id) {
            if *seen == at && at != 0 {
                return n.clone();
            }
        }
        let (p, version) = self.placement_versioned(ks);
        let ids = |v: &[u64]| v.iter().map(|n| NodeId(*n)).collect::<Vec<_>>();
        let nodes = RingNodes {
            current: ids(&p.ring),
            target: p.ring_target.as_deref().map(|t| (ids(t), version)),
        };
        lock(&self.ring_cache).insert(ks.id, (at, nodes.clone()));
        nodes
    }

    /// The nodes of a leaderless keyspace's ring.
    pub(super) fn ring_nodes(&self, ks: &KeyspaceInfo) -> Vec<NodeId> {
        self.ring_state(ks).current
    }

    /// The placement of a keyspace being created now.
    pub(super) fn new_placement(&self, name: &str, spec: &KeyspaceSpec) -> Placement {
        let seed = xxhash_rust::xxh3::xxh3_64(name.as_bytes());
        Placement::initial(spec, seed, &self.active_nodes())
    }

    pub(super) fn placement_key(name: &str) -> Vec<u8> {
        placement_key(name)
    }

    /// Learns every node's address from the catalog and the metadata group's membership.
    fn learn_addresses(&self) {
        for (id, r) in self.node_records() {
            if r.state != NodeState::Removed {
                self.pool.learn(NodeId(id), &r.raft);
            }
        }
        let m = self
            .metadata()
            .raft
            .metrics()
            .borrow_watched()
            .membership_config
            .clone();
        for (id, n) in m.membership().nodes() {
            self.pool.learn(NodeId(*id), &n.addr);
        }
    }

    /// Before the first membership change: every keyspace's placement is written down (as it
    /// was computed), so no node's view of where data lives changes with the node list.
    async fn store_placements(&self, deadline: Instant) -> Result<(), TunekvError> {
        if self.meta_get(FOUNDERS_KEY).is_none() {
            let founders: Vec<u64> = self.founders().into_iter().map(|n| n.0).collect();
            let value = serde_json::to_vec(&founders).map_err(internal)?;
            self.meta_write(
                Op::PutIfAbsent {
                    key: FOUNDERS_KEY.to_vec(),
                    value,
                },
                deadline,
            )
            .await?;
        }
        for ks in self.list_keyspaces() {
            let (p, version) = self.placement_versioned(&ks);
            if version == 0 {
                let value = serde_json::to_vec(&p).map_err(internal)?;
                self.meta_write(
                    Op::PutIfAbsent {
                        key: placement_key(&ks.name),
                        value,
                    },
                    deadline,
                )
                .await?;
            }
        }
        Ok(())
    }

    /// Proposes `op` to the metadata group and waits until this node applied it (so what it
    /// reads next of the catalog includes it).
    pub(super) async fn meta_write(
        &self,
        op: Op,
        deadline: Instant,
    ) -> Result<WriteResult, TunekvError> {
        let w = self.propose(GroupId::METADATA, op, deadline).await?;
        self.wait_applied(&self.metadata(), w.index, deadline)
            .await?;
        Ok(w)
    }

    async fn put_node_record(
        &self,
        id: u64,
        record: &NodeRecord,
        deadline: Instant,
    ) -> Result<(), TunekvError> {
        let value = serde_json::to_vec(record).map_err(internal)?;
        self.meta_write(
            Op::Put {
                key: node_key(id),
                value,
            },
            deadline,
        )
        .await?;
        Ok(())
    }

    /// Adds a node (`POST /v1/admin/nodes`): it joins the metadata group as a learner, then as
    /// a voter, and becomes active; replicas then move to it. Waits until it is active or
    /// `deadline` (then it is still joining: the metadata leader carries on).
    pub async fn add_node(
        &self,
        id: u64,
        record: NodeRecord,
        deadline: Instant,
    ) -> Result<NodeView, TunekvError> {
        if id == 0 || record.raft.is_empty() || record.http.is_empty() {
            return Err(err(
                Code::BadRequest,
                "a node needs an id above 0, a raft and an http address",
            ));
        }
        let known = self.node_addresses();
        match known.get(&id) {
            Some(r) if r.state == NodeState::Removed => {
                return Err(err(
                    Code::BadRequest,
                    format!("node {id} was removed from this cluster; add it under a new id"),
                ))
            }
            Some(r) if r.raft != record.raft => {
                return Err(err(
                    Code::BadRequest,
                    format!("node {id} is already a member at {}", r.raft),
                ))
            }
            Some(_) => {}
            None => {
                if let Some((other, _)) = known.iter().find(|(_, r)| {
                    r.state != NodeState::Removed
                        && (r.raft == record.raft || r.http == record.http)
                }) {
                    return Err(err(
                        Code::BadRequest,
                        format!("node {other} already uses address {}", record.raft),
                    ));
                }
                self.store_placements(deadline).await?;
                let value = serde_json::to_vec(&NodeRecord {
                    state: NodeState::Joining,
                    ..record
                })
                .map_err(internal)?;
                self.meta_write(
                    Op::PutIfAbsent {
                        key: node_key(id),
                        value,
                    },
                    deadline,
                )
                .await?;
                tracing::info!(node = id, "node added; joining the metadata group");
            }
        }
        self.wait_node_state(id, &[NodeState::Active], deadline)
            .await
    }

    /// Removes a node (`DELETE /v1/admin/nodes/{id}`): it drains (its replicas move away),
    /// then leaves the metadata group. Waits until it is removed or `deadline`.
    pub async fn remove_node(&self, id: u64, deadline: Instant) -> Result<NodeView, TunekvError> {
        let known = self.node_addresses();
        let Some(record) = known.get(&id).cloned() else {
            return Err(err(
                Code::BadRequest,
                format!("node {id} is not a member of this cluster"),
            ));
        };
        if record.state == NodeState::Active || record.state == NodeState::Joining {
            let voters = self.nodes();
            let staying = self
                .active_nodes()
                .into_iter()
                .filter(|n| n.0 != id)
                .count();
            if !voters.contains(&NodeId(id)) && record.state == NodeState::Active {
                return Err(err(
                    Code::BadRequest,
                    format!("node {id} is not a member of this cluster"),
                ));
            }
            if staying == 0 {
                return Err(err(Code::BadRequest, "the last node cannot be removed"));
            }
            for ks in self.list_keyspaces() {
                let p = self.placement(&ks);
                if ks.spec.mode == Mode::Ordered && (ks.spec.replicas as usize) > staying {
                    return Err(err(
                        Code::BadRequest,
                        format!(
                            "keyspace {:?} keeps {} replicas; {} nodes would be left",
                            ks.name, ks.spec.replicas, staying
                        ),
                    ));
                }
                if ks.spec.mode != Mode::Ordered
                    && p.ring.contains(&id)
                    && (ks.spec.replicas as usize) > staying
                {
                    return Err(err(
                        Code::BadRequest,
                        format!(
                            "the {} keyspace {:?} keeps {} copies of each key; {} nodes would \
                             be left in its ring",
                            ks.spec.mode.as_str(),
                            ks.name,
                            ks.spec.replicas,
                            staying
                        ),
                    ));
                }
            }
            self.store_placements(deadline).await?;
            self.put_node_record(
                id,
                &NodeRecord {
                    state: NodeState::Draining,
                    ..record
                },
                deadline,
            )
            .await?;
            tracing::info!(
                node = id,
                "node draining: its replicas move away, then it leaves"
            );
        }
        self.wait_node_state(id, &[NodeState::Removed], deadline)
            .await
    }

    async fn wait_node_state(
        &self,
        id: u64,
        states: &[NodeState],
        deadline: Instant,
    ) -> Result<NodeView, TunekvError> {
        loop {
            let view = self
                .membership_report()
                .nodes
                .into_iter()
                .find(|n| n.id == id)
                .ok_or_else(|| internal(format!("node {id} vanished from the catalog")))?;
            if states.iter().any(|s| s.as_str() == view.state) || Instant::now() >= deadline {
                return Ok(view);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The nodes and the moves in flight as this node's copy of the catalog has them.
    pub fn membership_report(&self) -> MembershipReport {
        let voters: BTreeSet<NodeId> = self.nodes().into_iter().collect();
        let mut counts: BTreeMap<u64, usize> = BTreeMap::new();
        let mut leaders: BTreeMap<u64, usize> = BTreeMap::new();
        let mut moves = Vec::new();
        for ks in self.list_keyspaces() {
            let p = self.placement(&ks);
            for n in p.named() {
                *counts.entry(n).or_default() += 1;
            }
            if let Some(t) = &p.ring_target {
                moves.push(MoveView {
                    keyspace: ks.name.clone(),
                    shard: 0,
                    ring: true,
                    from: p.ring.clone(),
                    to: t.clone(),
                });
            }
            for s in &p.shards {
                if let Some(l) = s.preferred_leader() {
                    *leaders.entry(l).or_default() += 1;
                }
            }
            for (shard, s) in p.shards.iter().enumerate() {
                if let Some(t) = &s.target {
                    moves.push(MoveView {
                        keyspace: ks.name.clone(),
                        shard: shard as u32,
                        ring: false,
                        from: s.replicas.clone(),
                        to: t.clone(),
                    });
                }
            }
        }
        let nodes = self
            .node_addresses()
            .into_iter()
            .map(|(id, r)| NodeView {
                id,
                voter: voters.contains(&NodeId(id)),
                replicas: counts.get(&id).copied().unwrap_or(0),
                leaders: leaders.get(&id).copied().unwrap_or(0),
                raft: r.raft,
                http: r.http,
                resp: r.resp,
                state: r.state.as_str().to_string(),
            })
            .collect();
        MembershipReport {
            served_by: self.id.0,
            nodes,
            moves,
            stuck: lock(&self.membership_stuck).clone(),
        }
    }

    /// Learns addresses; on the metadata leader, takes the next step of membership work.
    pub(super) async fn membership_loop(self: Arc<Self>) {
        let mut applied = self.metadata().data.subscribe();
        loop {
            self.learn_addresses();
            let leads = self
                .metadata()
                .raft
                .metrics()
                .borrow_watched()
                .state
                .is_leader();
            if leads {
                match self.membership_step().await {
                    Ok(true) => continue,
                    Ok(false) => {}
                    Err(e) => {
                        tracing::warn!(error = %e.message, "membership step failed; retrying");
                        tokio::time::sleep(Duration::from_secs(1)).await;
                    }
                }
            }
            tokio::select! {
                biased;
                changed = applied.changed() => if changed.is_err() { return },
                _ = tokio::time::sleep(MEMBERSHIP_EVERY) => {}
            }
        }
    }

    /// One step: a joining node becomes a voter, or a move in flight finishes, or the next move
    /// starts, or a drained node leaves. Returns whether it did something.
    async fn membership_step(&self) -> Result<bool, TunekvError> {
        let deadline = Instant::now() + MEMBERSHIP_STEP_WAIT;
        let records = self.node_records();
        let voters: BTreeSet<u64> = self.nodes().into_iter().map(|n| n.0).collect();
        for (&id, r) in &records {
            if r.state != NodeState::Joining {
                continue;
            }
            if !voters.contains(&id) {
                tracing::info!(
                    node = id,
                    "node joining: catching up as a learner of the metadata group"
                );
                let mut want = voters.clone();
                want.insert(id);
                self.change_members(
                    GroupId::METADATA,
                    &[],
                    vec![(id, r.raft.clone())],
                    want.into_iter().collect(),
                    deadline,
                )
                .await?;
            }
            self.put_node_record(
                id,
                &NodeRecord {
                    state: NodeState::Active,
                    ..r.clone()
                },
                deadline,
            )
            .await?;
            tracing::info!(node = id, "node joined: a voter of the metadata group");
            return Ok(true);
        }
        let active: Vec<NodeId> = voters
            .iter()
            .filter(|n| records.get(n).is_none_or(|r| r.state == NodeState::Active))
            .map(|n| NodeId(*n))
            .collect();
        if self.ring_step(&active, deadline).await? == Some(true) {
            return Ok(true);
        }
        let keyspaces: Vec<KeyspaceInfo> = self
            .list_keyspaces()
            .into_iter()
            .filter(|k| k.spec.mode == Mode::Ordered)
            .collect();
        let mut placements = BTreeMap::new();
        let mut versions = BTreeMap::new();
        for ks in &keyspaces {
            let (p, v) = self.placement_versioned(ks);
            versions.insert(ks.name.clone(), (ks.clone(), v));
            placements.insert(ks.name.clone(), p);
        }
        for (name, p) in &placements {
            for (shard, s) in p.shards.iter().enumerate() {
                let Some(target) = &s.target else { continue };
                let (ks, version) = &versions[name];
                self.finish_move(ks, *version, p, shard, target, deadline)
                    .await?;
                return Ok(true);
            }
        }
        match next_move(&active, &placements) {
            Ok(Some(m)) => {
                *lock(&self.membership_stuck) = None;
                let (ks, version) = &versions[&m.keyspace];
                self.start_move(ks, *version, &placements[&m.keyspace], &m, deadline)
                    .await?;
                return Ok(true);
            }
            Ok(None) => {
                *lock(&self.membership_stuck) = None;
                // Replicas are where they belong: spread the preferred leaders (placements
                // written down only: a cluster that never changed keeps its initial spread).
                if let Some((name, shard, to)) = next_leader(&active, &placements) {
                    let (ks, version) = &versions[&name];
                    if *version != 0 {
                        let mut next = placements[&name].clone();
                        next.shards[shard as usize].leader = Some(to);
                        self.put_placement(&ks.name, &next, *version, deadline)
                            .await?;
                        tracing::info!(keyspace = %ks.name, shard, leader = to, "preferred leader moved");
                        return Ok(true);
                    }
                }
            }
            Err(why) => {
                if lock(&self.membership_stuck).as_deref() != Some(why.as_str()) {
                    tracing::warn!(why = %why, "a replica cannot move");
                }
                *lock(&self.membership_stuck) = Some(why);
            }
        }
        for (&id, r) in &records {
            let placed = placements.values().any(|p| p.named().any(|n| n == id))
                || self.list_keyspaces().iter().any(|ks| {
                    ks.spec.mode != Mode::Ordered && self.placement(ks).ring.contains(&id)
                });
            if r.state != NodeState::Draining || placed {
                continue;
            }
            if voters.contains(&id) {
                let want: Vec<u64> = voters.iter().copied().filter(|v| *v != id).collect();
                self.change_members(GroupId::METADATA, &[], Vec::new(), want, deadline)
                    .await?;
            }
            self.put_node_record(
                id,
                &NodeRecord {
                    state: NodeState::Removed,
                    ..r.clone()
                },
                deadline,
            )
            .await?;
            tracing::info!(
                node = id,
                "node removed: it holds no replica and left the metadata group"
            );
            return Ok(true);
        }
        Ok(false)
    }

    /// Records a move's target: its new replica opens the group (as a learner to be).
    async fn start_move(
        &self,
        ks: &KeyspaceInfo,
        version: u64,
        p: &Placement,
        m: &Move,
        deadline: Instant,
    ) -> Result<(), TunekvError> {
        let mut next = p.clone();
        let s = &mut next.shards[m.shard as usize];
        s.target = Some(m.target(&s.replicas));
        tracing::info!(keyspace = %ks.name, shard = m.shard, from = m.from, to = m.to, "moving a replica");
        self.put_placement(&ks.name, &next, version, deadline).await
    }

    /// Carries a move out on the shard's leader (learner, catch-up, joint change), then
    /// records the new replicas; the old one drops its copy when it sees that.
    async fn finish_move(
        &self,
        ks: &KeyspaceInfo,
        version: u64,
        p: &Placement,
        shard: usize,
        target: &[u64],
        deadline: Instant,
    ) -> Result<(), TunekvError> {
        let s = &p.shards[shard];
        let addresses = self.node_addresses();
        let learners: Vec<(u64, String)> = target
            .iter()
            .filter(|n| !s.replicas.contains(n))
            .map(|n| {
                (
                    *n,
                    addresses.get(n).map(|r| r.raft.clone()).unwrap_or_default(),
                )
            })
            .collect();
        let gid = GroupId::for_shard(ks.id, ShardId(shard as u32));
        // Asked through the replicas that stay first: they are members before and after, so
        // they know the leader (one the change removed may never hear of it again).
        let hosts: Vec<u64> = s
            .replicas
            .iter()
            .filter(|n| target.contains(n))
            .chain(s.replicas.iter().filter(|n| !target.contains(n)))
            .copied()
            .collect();
        self.change_members(gid, &hosts, learners, target.to_vec(), deadline)
            .await?;
        if self.config.crash_at == Some(crate::CrashAt::MoveCommitted) {
            tracing::error!(group = %gid, "--crash-at move-committed: aborting");
            std::process::abort();
        }
        let mut next = p.clone();
        next.shards[shard] = ShardPlacement {
            replicas: target.to_vec(),
            target: None,
            moves: s.moves + 1,
            leader: s.leader,
        };
        self.put_placement(&ks.name, &next, version, deadline)
            .await?;
        tracing::info!(keyspace = %ks.name, shard, replicas = ?target, "replica moved");
        Ok(())
    }

    pub(super) async fn put_placement(
        &self,
        name: &str,
        p: &Placement,
        version: u64,
        deadline: Instant,
    ) -> Result<(), TunekvError> {
        let value = serde_json::to_vec(p).map_err(internal)?;
        let w = self
            .meta_write(
                Op::SetIf {
                    key: placement_key(name),
                    value: Some(value),
                    expect: tunekv_raft::Expect::Version(version),
                    ttl: tunekv_raft::Ttl::Clear,
                    get: false,
                },
                deadline,
            )
            .await?;
        if let Some(e) = &w.result.error {
            return Err(err(
                Code::Unavailable,
                format!("the placement of {name:?} changed meanwhile ({e}); planning again"),
            ));
        }
        Ok(())
    }

    /// Changes group `gid`'s voters on its leader, through this node if it hosts the group or
    /// through one of `hosts` otherwise.
    async fn change_members(
        &self,
        gid: GroupId,
        hosts: &[u64],
        learners: Vec<(u64, String)>,
        voters: Vec<u64>,
        deadline: Instant,
    ) -> Result<(), TunekvError> {
        if gid.is_metadata() {
            // Only the metadata leader changes the metadata group, and it hosts it.
            let hop = deadline.min(Instant::now() + MEMBERSHIP_HOP_WAIT);
            return self
                .change_members_here(&self.metadata(), learners, voters, hop)
                .await;
        }
        // Every host at once, the first to get it done wins: a host cut off from us, or one
        // the change removed (it may never hear of the leader again), must not hold the step.
        // Each try is bounded by MEMBERSHIP_HOP_WAIT; the step is retried, and every part of
        // the change is idempotent (a learner keeps catching up between tries).
        let hop = deadline.min(Instant::now() + MEMBERSHIP_HOP_WAIT);
        let tries = hosts.iter().map(|&host| {
            let (learners, voters) = (learners.clone(), voters.clone());
            Box::pin(async move {
                if host == self.id.0 {
                    let Some(g) = self.group(gid) else {
                        return Err(format!("{gid} is not open here"));
                    };
                    return self
                        .change_members_here(&g, learners, voters, hop)
                        .await
                        .map_err(|e| format!("here: {}", e.message));
                }
                let req = Request::ChangeMembers { learners, voters };
                let remaining = hop.saturating_duration_since(Instant::now());
                self.pool
                    .call(NodeId(host), gid.0, req, remaining)
                    .await
                    .map(|_| ())
                    .map_err(|e| format!("through node {host}: {e}"))
            })
        });
        match futures::future::select_ok(tries).await {
            Ok(((), _)) => Ok(()),
            Err(last) => Err(err(
                Code::Unavailable,
                format!("cannot change the members of {gid} now: {last}"),
            )),
        }
    }

    /// On a host of `g`: hands the change to its leader (itself, or forwarded).
    pub(super) async fn change_members_here(
        &self,
        g: &Group,
        learners: Vec<(u64, String)>,
        voters: Vec<u64>,
        deadline: Instant,
    ) -> Result<(), TunekvError> {
        let req = || Request::ChangeMembers {
            learners: learners.clone(),
            voters: voters.clone(),
        };
        let local = || self.leader_change_members(g, learners.clone(), voters.clone());
        match self
            .on_leader(
                g,
                deadline,
                req,
                |r| matches!(r, Response::Done).then_some(()),
                local,
            )
            .await
        {
            Ok(()) => Ok(()),
            Err(LeaderGone::Answered(e)) => Err(err(e.code, e.message)),
            Err(LeaderGone::Exhausted { last_problem, .. }) => Err(err(
                Code::Unavailable,
                format!(
                    "no leader of {} took the membership change: {last_problem}",
                    g.id
                ),
            )),
            Err(LeaderGone::NoBudget) => Err(no_budget("membership change")),
        }
    }

    /// On `g`'s leader: adds each learner and waits until it caught up, then replaces the
    /// voters (a joint change). Idempotent: a move resumed after a crash finds it half done.
    async fn leader_change_members(
        &self,
        g: &Group,
        learners: Vec<(u64, String)>,
        voters: Vec<u64>,
    ) -> Result<(), RemoteError> {
        let current = || -> BTreeSet<u64> {
            g.raft
                .metrics()
                .borrow_watched()
                .membership_config
                .membership()
                .voter_ids()
                .collect()
        };
        for (id, addr) in learners {
            if current().contains(&id) {
                continue;
            }
            self.pool.learn(NodeId(id), &addr);
            let learning = g.has_learner(id);
            // Added by an earlier try: re-adding would restart its catch-up.
            if !learning {
                g.raft
                    .add_learner(id, BasicNode::new(&addr), false)
                    .await
                    .map_err(not_leader_or)?;
            }
            // openraft's blocking add calls a learner caught up once it is within
            // `replication_lag_threshold` entries; a replica that will count toward the quorum
            // must hold everything the leader has now (by log or by snapshot) first.
            let goal = g
                .raft
                .metrics()
                .borrow_watched()
                .last_log_index
                .unwrap_or(0);
            loop {
                let m = g.raft.metrics().borrow_watched().clone();
                if !m.state.is_leader() {
                    return Err(RemoteError {
                        code: Code::Unavailable,
                        message: format!("node {} stopped leading {}", self.id, g.id),
                        leader_hint: m.current_leader,
                        not_leader: true,
                    });
                }
                let matched = m
                    .replication
                    .as_ref()
                    .and_then(|r| r.get(&id).cloned().flatten())
                    .map_or(0, |l| l.index());
                if matched >= goal {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            tracing::info!(group = %g.id, node = id, index = goal, "learner caught up");
        }
        let want: BTreeSet<u64> = voters.into_iter().collect();
        if !want.contains(&self.id.0) {
            // A leader never removes itself: it hands the group to a voter that stays, which
            // makes the change (the caller retries there), so no election waits on a timeout.
            let to = current()
                .into_iter()
                .find(|v| want.contains(v) && *v != self.id.0);
            if let Some(to) = to {
                let _ = g.raft.trigger().transfer_leader(to).await;
            }
            return Err(RemoteError {
                code: Code::Unavailable,
                message: format!(
                    "node {} leaves {}; leadership goes to a voter that stays",
                    self.id, g.id
                ),
                leader_hint: to,
                not_leader: true,
            });
        }
        if current() != want {
            g.raft
                .change_membership(ChangeMembers::ReplaceAllVoters(want), false)
                .await
                .map_err(not_leader_or)?;
        }
        Ok(())
    }

    /// Closes a group whose replica moved away and forgets its data.
    pub(super) async fn close_group(&self, gid: GroupId) {
        let Some(g) = self
            .groups
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&gid)
        else {
            return;
        };
        g.data.close();
        let _ = g.raft.shutdown().await;
        let storage = self.storage.clone();
        let drop = move || storage.drop_group(gid.0, tunekv_raft::LOG_META_NAMES);
        let dropped = if self.storage.sync_blocks() {
            tokio::task::spawn_blocking(drop)
                .await
                .unwrap_or_else(|e| Err(std::io::Error::other(e.to_string()).into()))
        } else {
            drop()
        };
        match dropped {
            Ok(()) => tracing::info!(group = %gid, "replica moved away; its copy is dropped"),
            Err(e) => tracing::error!(group = %gid, error = %e, "cannot drop a moved replica"),
        }
    }
}
