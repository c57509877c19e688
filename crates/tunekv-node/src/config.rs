//! A node's configuration file (TOML). `tunekv dev` writes one per node.

use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeConfig {
    /// This node's id; must appear in `peers`.
    pub id: u64,
    /// Client API (HTTP) listen address.
    pub http: String,
    /// Node-to-node listen address.
    pub raft: String,
    /// Redis protocol (RESP2/RESP3) listen address; none: no RESP listener.
    #[serde(default)]
    pub resp: Option<String>,
    /// Most simultaneous RESP connections.
    #[serde(default = "resp_connections_max")]
    pub resp_connections_max: usize,
    /// Where the log, snapshots and metadata live.
    pub data_dir: PathBuf,
    /// Every node of the cluster, this one included.
    pub peers: Vec<PeerConfig>,
    /// Signs session tokens; every node of the cluster must have the same one (at least 16
    /// bytes; `tunekv dev` generates 32 random bytes as hex). Changing it invalidates every
    /// token issued before.
    #[serde(default)]
    pub cluster_secret: String,
    /// Allows the fault hook (`POST /v1/admin/faults`). Never on in production.
    #[serde(default)]
    pub enable_faults: bool,
    /// Wait budget of a read that names none.
    #[serde(default = "read_wait_ms_default")]
    pub read_wait_ms_default: u64,
    /// Wait budget of a write that names none: a write may have to wait out a leader election.
    #[serde(default = "write_wait_ms_default")]
    pub write_wait_ms_default: u64,
    /// The largest `wait_ms_max` a request may ask for.
    #[serde(default = "wait_ms_cap")]
    pub wait_ms_cap: u64,
    #[serde(default)]
    pub raft_timing: RaftTimingConfig,
    /// Deliberate bugs (`tunekv server --bug`, bug-injection builds only); never in a file.
    #[serde(skip)]
    pub bugs: crate::Bugs,
    /// Seed of every random draw the node makes (fault drops and jitter, its incarnation id);
    /// set by the simulator, never in a file. None: from the OS.
    #[serde(skip)]
    pub rng_seed: Option<u64>,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct PeerConfig {
    pub id: u64,
    pub raft: String,
    pub http: String,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RaftTimingConfig {
    pub heartbeat_ms: u64,
    pub election_timeout_ms_min: u64,
    pub election_timeout_ms_max: u64,
    pub snapshot_logs_since_last: u64,
    pub snapshot_logs_kept: u64,
}

impl Default for RaftTimingConfig {
    fn default() -> Self {
        let t = tunekv_raft::RaftTuning::default();
        RaftTimingConfig {
            heartbeat_ms: t.heartbeat_ms,
            election_timeout_ms_min: t.election_timeout_ms_min,
            election_timeout_ms_max: t.election_timeout_ms_max,
            snapshot_logs_since_last: t.snapshot_logs_since_last,
            snapshot_logs_kept: t.snapshot_logs_kept,
        }
    }
}

impl RaftTimingConfig {
    pub fn tuning(&self) -> tunekv_raft::RaftTuning {
        tunekv_raft::RaftTuning {
            heartbeat_ms: self.heartbeat_ms,
            election_timeout_ms_min: self.election_timeout_ms_min,
            election_timeout_ms_max: self.election_timeout_ms_max,
            snapshot_logs_since_last: self.snapshot_logs_since_last,
            snapshot_logs_kept: self.snapshot_logs_kept,
        }
    }
}

fn resp_connections_max() -> usize {
    10_000
}
fn read_wait_ms_default() -> u64 {
    1000
}
fn write_wait_ms_default() -> u64 {
    5000
}
fn wait_ms_cap() -> u64 {
    60_000
}

impl NodeConfig {
    /// Reads and checks a config file.
    pub fn load(path: &Path) -> Result<NodeConfig, String> {
        let config = Self::read(path)?;
        config
            .validate()
            .map_err(|e| format!("{}: {e}", path.display()))?;
        Ok(config)
    }

    /// Reads a config file without checking it (for tools that upgrade old files).
    pub fn read(path: &Path) -> Result<NodeConfig, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        toml::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))
    }

    pub fn validate(&self) -> Result<(), String> {
        if !self.peers.iter().any(|p| p.id == self.id) {
            return Err(format!("node id {} is not listed in peers", self.id));
        }
        let mut ids: Vec<_> = self.peers.iter().map(|p| p.id).collect();
        ids.sort();
        ids.dedup();
        if ids.len() != self.peers.len() || ids.contains(&0) {
            return Err("peer ids must be unique and non-zero".into());
        }
        if self.cluster_secret.is_empty() {
            return Err(
                "cluster_secret is missing: set the same random string of at least 16 \
                        characters on every node (tunekv dev generates one)"
                    .into(),
            );
        }
        tunekv_core::SessionKey::new(self.cluster_secret.as_bytes())?;
        if self.read_wait_ms_default > self.wait_ms_cap
            || self.write_wait_ms_default > self.wait_ms_cap
        {
            return Err("wait defaults must not exceed wait_ms_cap".into());
        }
        self.raft_timing.tuning().openraft_config().map(|_| ())
    }

    /// The configs of a local cluster of `n` nodes under `dir`, on the given (HTTP, Raft, RESP)
    /// ports, sharing `cluster_secret`.
    pub fn local_cluster(
        dir: &Path,
        ports: &[(u16, u16, u16)],
        enable_faults: bool,
        cluster_secret: &str,
    ) -> Vec<NodeConfig> {
        let peers: Vec<PeerConfig> = ports
            .iter()
            .enumerate()
            .map(|(i, (http, raft, _))| PeerConfig {
                id: i as u64 + 1,
                http: format!("127.0.0.1:{http}"),
                raft: format!("127.0.0.1:{raft}"),
            })
            .collect();
        peers
            .iter()
            .zip(ports)
            .map(|(p, (_, _, resp))| NodeConfig {
                id: p.id,
                http: p.http.clone(),
                raft: p.raft.clone(),
                resp: Some(format!("127.0.0.1:{resp}")),
                resp_connections_max: resp_connections_max(),
                data_dir: dir.join(format!("node-{}", p.id)),
                peers: peers.clone(),
                cluster_secret: cluster_secret.to_string(),
                enable_faults,
                read_wait_ms_default: read_wait_ms_default(),
                write_wait_ms_default: write_wait_ms_default(),
                wait_ms_cap: wait_ms_cap(),
                raft_timing: RaftTimingConfig::default(),
                bugs: crate::Bugs::default(),
                rng_seed: None,
            })
            .collect()
    }
}
