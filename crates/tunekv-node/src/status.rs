//! What `GET /v1/cluster` shows.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// One replica of one group, as its node sees it.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct ReplicaStatus {
    pub group: u64,
    pub node: u64,
    pub state: String,
    pub leader: Option<u64>,
    pub term: u64,
    pub applied_index: u64,
    /// The last index this replica knows to be committed (safe to apply); 0 until it knows.
    pub committed_index: u64,
    /// The last entry openraft applied here: its index and the leader that proposed it
    /// (`T<term>-N<node>`). Two replicas never apply different entries at one index.
    pub applied_log_id: Option<(u64, String)>,
    pub last_log_index: u64,
    /// Last log index covered by this replica's snapshot (0: none).
    pub snapshot_index: u64,
    /// Log entries up to here were purged after a snapshot (0: none).
    pub purged_index: u64,
    pub commit_ms: u64,
    /// Age of this replica's freshness watermark (pushed by the leader or left by a probe);
    /// `None`: it has none.
    pub watermark_age_ms: Option<u64>,
    /// Read-index probes this replica has sent to its leader since the node started.
    pub probes: u64,
    /// Keys this replica stores, expired ones the leader has not swept yet included.
    pub stored_keys: u64,
    /// Snapshots this replica installed from a leader since its process started.
    #[serde(default)]
    pub snapshots_installed: u64,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct NodeEntry {
    pub id: u64,
    pub http: String,
    pub raft: String,
    /// joining, active, draining or removed (`tunekv node add|remove`).
    #[serde(default)]
    pub state: String,
    pub reachable: bool,
    /// Why this node's wall clock is not trusted (it stamps no commits and leads nothing until
    /// it agrees with its peers again); `None`: trusted, or the node was not reachable.
    #[serde(default)]
    pub clock_skew: Option<String>,
    /// Commit stamps on this node that refused to follow a timestamp more than
    /// `max_clock_offset_ms` ahead of its clock, since it started.
    #[serde(default)]
    pub hlc_capped_total: u64,
    /// Leaderless and volatile keyspaces on this node: replica digests, hints, repairs.
    #[serde(default)]
    pub leaderless: Option<crate::node::LeaderlessReport>,
    /// This node's staleness SLOs over their windows (empty when unreachable).
    #[serde(default)]
    pub slos: Vec<crate::metrics::SloReport>,
    /// Reads this node refused since it started, by cause.
    #[serde(default)]
    pub refusals: BTreeMap<String, u64>,
}

/// One node's answer to a status request.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct NodeReport {
    pub replicas: Vec<ReplicaStatus>,
    pub clock_skew: Option<String>,
    pub hlc_capped_total: u64,
    pub leaderless: crate::node::LeaderlessReport,
    pub slos: Vec<crate::metrics::SloReport>,
    pub refusals: BTreeMap<String, u64>,
    /// Each shard replica's records for PBS, by group id.
    pub applies: BTreeMap<u64, ApplyRecords>,
    /// Leaderless keyspaces: the round trips this node measured as a coordinator, by keyspace
    /// (stores, fetches; µs), for the WARS estimate.
    pub rtts: BTreeMap<String, RoundTrips>,
}

/// A coordinator's measured round trips to other replicas (µs): client writes' stores and
/// reads' fetches.
pub type RoundTrips = (Vec<u32>, Vec<u32>);

/// What one replica noted for the PBS estimate (`tunekv_core::pbs`).
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct ApplyRecords {
    /// Batches it applied while following: (last index, wall ms).
    pub applies: Vec<(u64, u64)>,
    /// Writes it acknowledged while leading: (index, wall ms).
    pub acks: Vec<(u64, u64)>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct GroupStatus {
    /// `meta` or `KEYSPACE/shardN`.
    pub name: String,
    pub group: u64,
    pub keyspace: Option<String>,
    pub shard: Option<u32>,
    pub leader: Option<u64>,
    pub replicas: Vec<ReplicaStatus>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ClusterStatus {
    pub served_by: u64,
    pub nodes: Vec<NodeEntry>,
    pub groups: Vec<GroupStatus>,
    /// Replication lag of each group over the last minutes, as the serving node saw it (one
    /// sample a second, oldest first): what the status page charts.
    #[serde(default)]
    pub lag_history: Vec<LagSample>,
    /// The PBS estimate of each ordered keyspace (docs/observability.md).
    #[serde(default)]
    pub pbs: Vec<tunekv_core::pbs::PbsCurve>,
    /// Replica moves in flight (`tunekv node add|remove`; one at a time).
    #[serde(default)]
    pub moves: Vec<crate::node::MoveView>,
    /// Whether the serving node checks credentials (docs/security.md).
    #[serde(default)]
    pub auth: bool,
}

/// One second's replication lag, per group: the most entries a replica this node knows of is
/// behind (its own replica; on a leader, each follower by what it has stored).
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct LagSample {
    /// Unix ms, this node's wall clock.
    pub at_ms: u64,
    pub lag_entries: BTreeMap<String, u64>,
}
