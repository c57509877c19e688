//! What a node shows of itself to monitoring: `GET /metrics` (the families read from the
//! node's state at each scrape; those counted as things happen are in `crate::metrics`), the
//! leader-change watcher of each group, and the record of every read served or refused.

use super::*;
use crate::metrics::{scrape, GroupLabels, SloReport};
use crate::status::{ApplyRecords, LagSample};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::registry::{Registry, Unit};
use std::collections::VecDeque;
use tunekv_core::pbs::{self, PbsCurve};
use tunekv_core::SloSpec;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReplicaLabels {
    group: String,
    replica: u64,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KeyspaceLabels {
    keyspace: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PbsLabels {
    keyspace: String,
    level: String,
    after_ms: u64,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PbsQuantileLabels {
    keyspace: String,
    level: String,
    probability: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct HotLabels {
    group: String,
    result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SnapshotLabels {
    group: String,
    how: &'static str,
}

/// A group's name as status and metrics show it: `meta` or `KEYSPACE/shardN` (`ksID/shardN`
/// while the catalog entry is unknown here).
pub(super) fn group_name(gid: GroupId, names: &BTreeMap<u64, String>) -> String {
    if gid.is_metadata() {
        return "meta".into();
    }
    match names.get(&gid.keyspace_id()) {
        Some(k) => format!("{k}/shard{}", gid.shard()),
        None => gid.to_string(),
    }
}

/// Apply and acknowledgement records kept per replica for PBS.
const APPLY_RECORDS: usize = 512;

/// Appends to a bounded record ring.
fn push_bounded(ring: &Mutex<VecDeque<(u64, u64)>>, record: (u64, u64)) {
    let mut r = ring.lock().unwrap_or_else(|p| p.into_inner());
    if r.len() >= APPLY_RECORDS {
        r.pop_front();
    }
    r.push_back(record);
}

impl Group {
    /// Notes a write this replica acknowledged as leader, for the PBS estimate.
    pub(super) fn record_ack(&self, index: u64, wall_ms: u64) {
        push_bounded(&self.acks, (index, wall_ms));
    }
}
/// Seconds between the PBS estimates `/metrics` shows.
const PBS_EVERY: u64 = 5;

/// Lag samples kept: five minutes at one a second.
const LAG_HISTORY_SAMPLES: usize = 300;

fn secs(d: Duration) -> f64 {
    d.as_secs_f64()
}

impl Node {
    /// Keyspace names by id, from the catalog as this node has applied it.
    pub(super) fn keyspace_names(&self) -> BTreeMap<u64, String> {
        self.list_keyspaces()
            .into_iter()
            .map(|k| (k.id, k.name))
            .collect()
    }

    /// Counts each change of `g`'s leader this replica sees (a new leader becoming known).
    pub(super) async fn watch_leader(self: Arc<Self>, g: Arc<Group>) {
        let mut rx = g.raft.server_metrics();
        let mut last: Option<u64> = None;
        loop {
            let leader = rx.borrow_watched().current_leader;
            if leader.is_some() && leader != last {
                self.metrics
                    .leader_changed(&group_name(g.id, &self.keyspace_names()));
                last = leader;
            }
            if rx.changed().await.is_err() {
                return;
            }
        }
    }

    /// Records a read served on `ks` at `level` with these receipts (staleness histograms).
    pub(super) fn record_served<'r>(
        &self,
        ks: &KeyspaceInfo,
        level: Level,
        receipts: impl IntoIterator<Item = &'r Receipt>,
    ) {
        for r in receipts {
            let staleness = if self.config.bugs.metrics_fresh() {
                Staleness::ZERO
            } else {
                r.staleness
            };
            self.metrics.served(&ks.name, level, staleness);
        }
    }

    /// Records the outcome of a read on `ks` at `level`: its receipts' staleness, or its
    /// refusal.
    pub(super) fn record_read<T>(
        &self,
        ks: &KeyspaceInfo,
        level: Level,
        result: &Result<T, TunekvError>,
        receipts: impl Fn(&T) -> Vec<&Receipt>,
    ) {
        match result {
            Ok(t) => {
                let receipts = receipts(t);
                for r in &receipts {
                    self.metrics
                        .slo_read(&ks.name, &ks.spec.slo, level, Some(r.staleness.ms));
                }
                self.record_served(ks, level, receipts)
            }
            Err(e) => {
                if crate::metrics::is_refusal(e.code) {
                    self.metrics.slo_read(&ks.name, &ks.spec.slo, level, None);
                }
                self.metrics.refused(&ks.name, level, e.code)
            }
        }
    }

    /// Every SLO of every keyspace as it stands on this node now (`GET /v1/slo`); logs SLOs
    /// that start or stop being violated.
    pub fn slo_reports(&self) -> Vec<SloReport> {
        let keyspaces: Vec<(String, Vec<SloSpec>)> = self
            .list_keyspaces()
            .into_iter()
            .filter(|k| !k.spec.slo.is_empty())
            .map(|k| (k.name, k.spec.slo))
            .collect();
        self.metrics.slo_reports(&keyspaces)
    }

    /// Every second: evaluates the SLOs (so a violation is logged when it starts even if
    /// nothing scrapes the node) and samples replication lag for the status page; every
    /// [`PBS_EVERY`] seconds, refreshes the PBS estimate `/metrics` shows.
    pub(super) async fn observe_loop(self: Arc<Self>) {
        let mut tick: u64 = 0;
        loop {
            tokio::time::sleep(Duration::from_secs(1)).await;
            self.slo_reports();
            self.sample_lag();
            tick += 1;
            if tick.is_multiple_of(PBS_EVERY) {
                self.cluster_status().await;
            }
        }
    }

    /// Records this second's replication lag per group (see [`LagSample`]).
    fn sample_lag(&self) {
        let names = self.keyspace_names();
        let mut lag_entries = BTreeMap::new();
        for g in self.all_groups() {
            let copy = self.copy_state(&g);
            let m = g.raft.metrics();
            let m = m.borrow_watched();
            let mut worst = copy.lag_entries();
            if m.state == ServerState::Leader {
                let last = m.last_log_index.unwrap_or(0);
                for (replica, matched) in m.replication.iter().flatten() {
                    if *replica != self.id.0 {
                        let at = matched.as_ref().map(|x| x.index()).unwrap_or(0);
                        worst = worst.max(last.saturating_sub(at));
                    }
                }
            }
            lag_entries.insert(group_name(g.id, &names), worst);
        }
        let mut h = self.lag_history.lock().unwrap_or_else(|p| p.into_inner());
        if h.len() >= LAG_HISTORY_SAMPLES {
            h.pop_front();
        }
        h.push_back(LagSample {
            at_ms: self.clock.wall_ms(),
            lag_entries,
        });
    }

    /// Notes each batch `g` applies while this replica follows (last index, wall ms), for
    /// the PBS estimate.
    pub(super) async fn watch_applies(self: Arc<Self>, g: Arc<Group>) {
        let mut rx = g.data.subscribe();
        loop {
            if rx.changed().await.is_err() {
                return;
            }
            let index = rx.borrow_and_update().index;
            if g.raft.metrics().borrow_watched().state == ServerState::Leader {
                continue;
            }
            push_bounded(&g.applies, (index, self.clock.wall_ms()));
        }
    }

    /// Every shard replica's records for PBS (`NodeReport::applies`).
    pub(super) fn apply_records(&self) -> BTreeMap<u64, ApplyRecords> {
        self.all_groups()
            .iter()
            .filter(|g| !g.id.is_metadata())
            .map(|g| {
                let copy = |m: &Mutex<VecDeque<(u64, u64)>>| {
                    m.lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .iter()
                        .copied()
                        .collect()
                };
                (
                    g.id.0,
                    ApplyRecords {
                        applies: copy(&g.applies),
                        acks: copy(&g.acks),
                    },
                )
            })
            .collect()
    }

    /// The PBS estimate of each ordered keyspace from every node's records (one map per node):
    /// each follower's visibility delay after the leader acknowledged a write, pooled per
    /// keyspace (`tunekv_core::pbs`). Kept for `/metrics`.
    pub(super) fn estimate_pbs(
        &self,
        nodes: &[BTreeMap<u64, ApplyRecords>],
        rtts: &[BTreeMap<String, crate::status::RoundTrips>],
    ) -> Vec<PbsCurve> {
        let mut out = Vec::new();
        for ks in self.list_keyspaces() {
            if ks.spec.mode == Mode::Leaderless {
                // WARS at the default quorums (w = quorum, r = one), from every coordinator's
                // round trips to other replicas.
                let (mut writes, mut reads) = (Vec::new(), Vec::new());
                for n in rtts {
                    if let Some((w, r)) = n.get(&ks.name) {
                        writes.extend_from_slice(w);
                        reads.extend_from_slice(r);
                    }
                }
                let n = ks.spec.replicas;
                let eventual = pbs::wars_curve(
                    &ks.name,
                    "eventual",
                    (n, Quorum::Quorum.count(n), Quorum::One.count(n)),
                    &writes,
                    &reads,
                    ks.id,
                );
                self.per_level(&ks.name, eventual, &mut out);
                continue;
            }
            if ks.spec.mode != Mode::Ordered {
                continue;
            }
            let mut delays = Vec::new();
            for shard in 0..ks.spec.shards {
                let gid = GroupId::for_shard(ks.id, ShardId(shard)).0;
                let mut acks: Vec<(u64, u64)> = nodes
                    .iter()
                    .filter_map(|n| n.get(&gid))
                    .flat_map(|r| r.acks.iter().copied())
                    .collect();
                acks.sort_unstable();
                for n in nodes {
                    if let Some(r) = n.get(&gid) {
                        delays.extend(pbs::visibility_delays(&acks, &r.applies));
                    }
                }
            }
            let eventual = pbs::curve(&ks.name, "eventual", ks.spec.replicas, delays);
            self.per_level(&ks.name, eventual, &mut out);
        }
        *self.pbs.lock().unwrap_or_else(|p| p.into_inner()) = out.clone();
        out
    }

    /// A keyspace's `eventual` curve, then one for each other level kind it was read at on
    /// this node that the estimate covers (`pbs::for_level`).
    fn per_level(&self, keyspace: &str, eventual: PbsCurve, out: &mut Vec<PbsCurve>) {
        let others: Vec<PbsCurve> = self
            .metrics
            .levels_read(keyspace)
            .into_iter()
            .filter(|l| *l != "eventual")
            .filter_map(|l| pbs::for_level(&eventual, l))
            .collect();
        out.push(eventual);
        out.extend(others);
    }

    /// The replication-lag samples kept, oldest first.
    pub(super) fn lag_history(&self) -> Vec<LagSample> {
        self.lag_history
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .cloned()
            .collect()
    }

    /// The Prometheus text of this node now: the counted families and those read from its
    /// state (Raft, replication lag, probes, clocks, leaderless keyspaces).
    pub fn metrics_text(&self) -> String {
        self.slo_reports();
        let names = self.keyspace_names();
        let mut reg = Registry::default();
        self.scrape_groups(&mut reg, &names);
        self.scrape_leaderless(&mut reg);
        scrape::gauge(
            &mut reg,
            "tunekv_clock_skewed",
            "1 while this node's wall clock disagrees with its peers' by more than \
             max_clock_offset_ms (it then stamps no commits and leads nothing)",
            i64::from(matches!(self.clock_health(), ClockHealth::Skewed(_))),
        );
        scrape::counter(
            &mut reg,
            "tunekv_hlc_capped",
            "Commit stamps that refused to follow a timestamp more than max_clock_offset_ms \
             ahead of this node's clock",
            self.hlc.capped_total(),
        );
        self.scrape_pbs(&mut reg);
        self.metrics.encode(Some(&reg))
    }

    fn scrape_pbs(&self, reg: &mut Registry) {
        let curves = self.pbs.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let mut probability = Vec::new();
        let mut quantiles = Vec::new();
        for c in &curves {
            for (t, p) in &c.points {
                probability.push((
                    PbsLabels {
                        keyspace: c.keyspace.clone(),
                        level: c.level.clone(),
                        after_ms: *t,
                    },
                    *p,
                ));
            }
            for (q, t) in [("0.99", c.t99_ms), ("0.999", c.t999_ms)] {
                quantiles.push((
                    PbsQuantileLabels {
                        keyspace: c.keyspace.clone(),
                        level: c.level.clone(),
                        probability: q,
                    },
                    t as f64 / 1000.0,
                ));
            }
        }
        scrape::gauges_f64(
            reg,
            "tunekv_pbs_consistent_read",
            "PBS estimate: probability that a read at the level, after_ms after a write was \
             acknowledged, returns it (from measured follower visibility delays)",
            Unit::Other("ratio".into()),
            probability,
        );
        scrape::gauges_f64(
            reg,
            "tunekv_pbs_visibility",
            "PBS estimate: time after a write's acknowledgement by which a read at the level \
             returns it with the given probability",
            Unit::Seconds,
            quantiles,
        );
    }

    fn scrape_groups(&self, reg: &mut Registry, names: &BTreeMap<u64, String>) {
        let now = Instant::now();
        let mut term = Vec::new();
        let mut leader = Vec::new();
        let mut committed = Vec::new();
        let mut applied = Vec::new();
        let mut last_log = Vec::new();
        let mut snapshot = Vec::new();
        let mut purged = Vec::new();
        let mut lag_entries = Vec::new();
        let mut lag_seconds = Vec::new();
        let mut probes = Vec::new();
        let mut probes_shared = Vec::new();
        let mut snapshots = Vec::new();
        let mut purges = Vec::new();
        let mut repl_entries = Vec::new();
        let mut repl_ack = Vec::new();
        let mut hot_reads = Vec::new();
        let mut hot_bytes = Vec::new();
        for g in self.all_groups() {
            let name = group_name(g.id, names);
            let l = || GroupLabels {
                group: name.clone(),
            };
            let copy = self.copy_state(&g);
            let m = g.raft.metrics();
            let m = m.borrow_watched();
            let is_leader = m.state == ServerState::Leader;
            term.push((l(), m.current_term as i64));
            leader.push((l(), i64::from(is_leader)));
            let index = |x: Option<u64>| i64::try_from(x.unwrap_or(0)).unwrap_or(i64::MAX);
            committed.push((l(), index(Some(copy.known_commit.0))));
            applied.push((l(), index(Some(copy.applied.index.0))));
            last_log.push((l(), index(m.last_log_index)));
            snapshot.push((l(), index(m.snapshot.as_ref().map(|s| s.index()))));
            purged.push((l(), index(m.purged.as_ref().map(|s| s.index()))));
            lag_entries.push((l(), index(Some(copy.lag_entries()))));
            if let Some(age) = g.proof_age_at(copy.applied.index.0, now) {
                lag_seconds.push((l(), secs(age)));
            }
            probes.push((l(), g.probes.load(Ordering::Relaxed)));
            probes_shared.push((l(), g.probes_shared.load(Ordering::Relaxed)));
            let c = &g.data.counters;
            snapshots.push((
                SnapshotLabels {
                    group: name.clone(),
                    how: "built",
                },
                c.snapshots_built.load(Ordering::Relaxed),
            ));
            snapshots.push((
                SnapshotLabels {
                    group: name.clone(),
                    how: "installed",
                },
                c.snapshots_installed.load(Ordering::Relaxed),
            ));
            purges.push((l(), c.purges.load(Ordering::Relaxed)));
            let hot = g.data.hot_stats();
            for (result, n) in [("hit", hot.hits), ("miss", hot.misses)] {
                let group = name.clone();
                hot_reads.push((HotLabels { group, result }, n));
            }
            hot_bytes.push((l(), i64::try_from(hot.bytes).unwrap_or(i64::MAX)));
            if is_leader {
                let last = m.last_log_index.unwrap_or(0);
                for (replica, matched) in m.replication.iter().flatten() {
                    if *replica == self.id.0 {
                        continue;
                    }
                    let at = matched.as_ref().map(|x| x.index()).unwrap_or(0);
                    let labels = ReplicaLabels {
                        group: name.clone(),
                        replica: *replica,
                    };
                    repl_entries.push((labels, index(Some(last.saturating_sub(at)))));
                }
                for (replica, acked) in m.heartbeat.iter().flatten() {
                    if *replica == self.id.0 {
                        continue;
                    }
                    if let Some(t) = acked {
                        repl_ack.push((
                            ReplicaLabels {
                                group: name.clone(),
                                replica: *replica,
                            },
                            secs(openraft::Instant::elapsed(&**t)),
                        ));
                    }
                }
            }
        }
        scrape::gauges(
            reg,
            "tunekv_raft_term",
            "Current Raft term of this replica",
            term,
        );
        scrape::gauges(
            reg,
            "tunekv_raft_is_leader",
            "1 if this replica leads its group",
            leader,
        );
        scrape::gauges(
            reg,
            "tunekv_raft_commit_index",
            "Newest log index this replica knows to be committed",
            committed,
        );
        scrape::gauges(
            reg,
            "tunekv_raft_applied_index",
            "Newest log index applied to this replica's state",
            applied,
        );
        scrape::gauges(
            reg,
            "tunekv_raft_last_log_index",
            "Newest log index in this replica's log",
            last_log,
        );
        scrape::gauges(
            reg,
            "tunekv_raft_snapshot_index",
            "Last log index covered by this replica's snapshot (0: none)",
            snapshot,
        );
        scrape::gauges(
            reg,
            "tunekv_raft_purged_index",
            "Log entries up to here were purged after a snapshot (0: none)",
            purged,
        );
        scrape::counters(
            reg,
            "tunekv_raft_snapshots",
            "Snapshots this replica built (how=built) or installed from its leader \
             (how=installed)",
            snapshots,
        );
        scrape::counters(
            reg,
            "tunekv_hot_value_reads",
            "Reads of this replica answered from its hot values (result=hit) or from a view of \
             its state (result=miss), while [storage] hot_values_bytes is above 0",
            hot_reads,
        );
        scrape::gauges(
            reg,
            "tunekv_hot_value_bytes",
            "Bytes of keys and values this replica keeps decoded in memory (at most [storage] \
             hot_values_bytes)",
            hot_bytes,
        );
        scrape::counters(
            reg,
            "tunekv_raft_log_purges",
            "Times this replica purged log entries a snapshot covers",
            purges,
        );
        scrape::gauges(
            reg,
            "tunekv_replica_lag_entries",
            "Committed entries this replica knows of but has not applied",
            lag_entries,
        );
        scrape::gauges_f64(
            reg,
            "tunekv_replica_lag",
            "Staleness of this replica's state now: how long ago the newest freshness proof \
             its applied state satisfies was taken (absent: no proof yet)",
            Unit::Seconds,
            lag_seconds,
        );
        scrape::gauges(
            reg,
            "tunekv_replication_lag_entries",
            "On a leader: entries of its log each follower has not yet stored",
            repl_entries,
        );
        scrape::gauges_f64(
            reg,
            "tunekv_replication_ack_age",
            "On a leader: time since each follower last acknowledged a replication or heartbeat",
            Unit::Seconds,
            repl_ack,
        );
        scrape::counters(
            reg,
            "tunekv_read_index_probes",
            "Read-index probes this replica sent to its leader (reads waiting on one share it)",
            probes,
        );
        scrape::counters(
            reg,
            "tunekv_read_index_probes_shared",
            "Reads that waited for a probe another read had sent instead of sending their own \
             (coalescing)",
            probes_shared,
        );
    }

    fn scrape_leaderless(&self, reg: &mut Registry) {
        let r = self.leaderless_report();
        let count = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
        scrape::gauge(
            reg,
            "tunekv_hints",
            "Hinted writes held for replicas that could not be reached",
            count(r.hints),
        );
        scrape::gauge(
            reg,
            "tunekv_hint_value_bytes",
            "Value bytes of the hinted writes held",
            count(r.hint_bytes),
        );
        let totals: [(&str, &str, u64); 7] = [
            (
                "tunekv_hints_stored",
                "Hinted writes stored for unreachable replicas",
                r.hints_stored_total,
            ),
            (
                "tunekv_hints_replayed",
                "Hinted writes delivered to their replica",
                r.hints_replayed_total,
            ),
            (
                "tunekv_hints_expired",
                "Hinted writes dropped after hint_ttl_ms undelivered (anti-entropy repairs them)",
                r.hints_expired_total,
            ),
            (
                "tunekv_read_repairs",
                "Replicas a leaderless read found behind and repaired",
                r.read_repairs_total,
            ),
            (
                "tunekv_anti_entropy_exchanges",
                "Merkle-tree exchanges with a peer replica",
                r.anti_entropy_exchanges_total,
            ),
            (
                "tunekv_anti_entropy_keys_repaired",
                "Keys anti-entropy found different and repaired",
                r.anti_entropy_keys_repaired_total,
            ),
            (
                "tunekv_tombstones_collected",
                "Tombstones removed once every replica held them past the grace",
                r.tombstones_collected_total,
            ),
        ];
        for (name, help, v) in totals {
            scrape::counter(reg, name, help, v);
        }
        scrape::counter(
            reg,
            "tunekv_anti_entropy_sent_bytes",
            "Bytes anti-entropy sent to repair peers",
            r.anti_entropy_bytes_total,
        );
        scrape::gauge(
            reg,
            "tunekv_tombstones",
            "Tombstones this node holds",
            count(r.tombstones),
        );
        let ks = |f: fn(&ReplicaDigest) -> u64| {
            r.keyspaces
                .iter()
                .map(|d| {
                    (
                        KeyspaceLabels {
                            keyspace: d.keyspace.clone(),
                        },
                        count(f(d)),
                    )
                })
                .collect::<Vec<_>>()
        };
        scrape::gauges(
            reg,
            "tunekv_leaderless_keys",
            "Keys this node holds of each leaderless or volatile keyspace, tombstones included",
            ks(|d| d.keys),
        );
        scrape::gauges(
            reg,
            "tunekv_keys_with_siblings",
            "Keys of a siblings keyspace holding more than one concurrent value",
            ks(|d| d.keys_with_siblings),
        );
        scrape::gauges(
            reg,
            "tunekv_siblings_max",
            "Most concurrent values one key of a siblings keyspace holds",
            ks(|d| d.siblings_max),
        );
    }
}
