//! What `GET /v1/cluster` shows, and the fault hook.

use super::*;

impl Node {
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
                        .watermark()
                        .map(|(_, at)| u64::try_from(at.elapsed().as_millis()).unwrap_or(u64::MAX)),
                    probes: g.probes.load(Ordering::Relaxed),
                    stored_keys: g.data.stored_keys(),
                    snapshots_installed: g
                        .data
                        .counters
                        .snapshots_installed
                        .load(Ordering::Relaxed),
                }
            })
            .collect()
    }

    /// This node's status: its replicas and its clock.
    pub(super) fn node_report(&self) -> NodeReport {
        NodeReport {
            replicas: self.local_status(),
            clock_skew: match self.clock_health() {
                ClockHealth::Skewed(why) => Some(why),
                ClockHealth::Trusted => None,
            },
            hlc_capped_total: self.hlc.capped_total(),
            leaderless: self.leaderless_report(),
            slos: self.slo_reports(),
            refusals: self.metrics.refusal_totals(),
            applies: self.apply_records(),
            rtts: self.rtt_samples(),
        }
    }

    /// Every node's view of every group, gathered now (unreachable nodes are marked so).
    pub async fn cluster_status(&self) -> ClusterStatus {
        let me = self.node_report();
        let mut replicas = me.replicas;
        let mut applies = vec![me.applies];
        let mut rtts = vec![me.rtts];
        let mut nodes = Vec::new();
        // Every member, and nodes joining or draining.
        let voters = self.nodes();
        let listed: Vec<(u64, tunekv_core::placement::NodeRecord)> = self
            .node_addresses()
            .into_iter()
            .filter(|(id, r)| {
                *id != self.id.0
                    && (voters.contains(&NodeId(*id))
                        || r.state != tunekv_core::placement::NodeState::Removed)
            })
            .collect();
        let calls = listed.iter().map(|(id, p)| async move {
            (
                (*id, p),
                self.pool
                    .call(NodeId(*id), 0, Request::Status, STATUS_WAIT)
                    .await,
            )
        });
        for ((id, p), res) in futures::future::join_all(calls).await {
            let reachable = match res {
                Ok(Response::Status(mut r)) => {
                    replicas.append(&mut r.replicas);
                    applies.push(std::mem::take(&mut r.applies));
                    rtts.push(std::mem::take(&mut r.rtts));
                    Some(r)
                }
                _ => None,
            };
            nodes.push(NodeEntry {
                id,
                http: p.http.clone(),
                raft: p.raft.clone(),
                state: p.state.as_str().to_string(),
                reachable: reachable.is_some(),
                clock_skew: reachable.as_ref().and_then(|r| r.clock_skew.clone()),
                hlc_capped_total: reachable.as_ref().map_or(0, |r| r.hlc_capped_total),
                slos: reachable
                    .as_ref()
                    .map(|r| r.slos.clone())
                    .unwrap_or_default(),
                refusals: reachable
                    .as_ref()
                    .map(|r| r.refusals.clone())
                    .unwrap_or_default(),
                leaderless: reachable.map(|r| r.leaderless),
            });
        }
        nodes.push(NodeEntry {
            id: self.id.0,
            http: self.config.http.clone(),
            raft: self.config.raft.clone(),
            state: self
                .node_records()
                .get(&self.id.0)
                .map_or("active", |r| r.state.as_str())
                .to_string(),
            reachable: true,
            clock_skew: me.clock_skew,
            hlc_capped_total: me.hlc_capped_total,
            leaderless: Some(me.leaderless),
            slos: me.slos,
            refusals: me.refusals,
        });
        nodes.sort_by_key(|n| n.id);
        let names = self.keyspace_names();
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
                    name: super::observe::group_name(gid, &names),
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
            lag_history: self.lag_history(),
            moves: self.membership_report().moves,
            pbs: self.estimate_pbs(&applies, &rtts),
            auth: self.auth_enabled(),
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
}
