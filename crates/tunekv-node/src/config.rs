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
    /// Largest RESP request in bytes as sent (headers, arguments, CRLFs); a larger one is
    /// refused with a protocol error and its connection closed. Pipelines are not limited.
    #[serde(default = "resp_request_bytes_max")]
    pub resp_request_bytes_max: usize,
    /// Most heap bytes that unfinished RESP requests may hold, summed over all connections.
    #[serde(default = "resp_pending_bytes_max")]
    pub resp_pending_bytes_max: usize,
    /// A RESP request must arrive whole within this long of its first byte, and a reply must
    /// be taken by the client within this long; otherwise the connection is closed (slowloris,
    /// clients that stop reading).
    #[serde(default = "resp_request_timeout_ms")]
    pub resp_request_timeout_ms: u64,
    /// A RESP connection with no request for this long is closed, as Redis's `timeout`
    /// (subscribed connections excepted). 0: never (Redis's default).
    #[serde(default)]
    pub resp_idle_timeout_ms: u64,
    /// Most simultaneous HTTP connections; one more is answered `503 unavailable` and closed.
    #[serde(default = "http_connections_max")]
    pub http_connections_max: usize,
    /// Requests one authenticated user may make per second on this node, HTTP and RESP
    /// together (bursts of up to one second's worth); more are `rate_limited`. 0: no limit.
    #[serde(default)]
    pub user_requests_per_s: u32,
    /// Requests one connection may make per second (HTTP or RESP); more are `rate_limited`.
    /// 0: no limit.
    #[serde(default)]
    pub connection_requests_per_s: u32,
    /// Change feeds (`/v1/watch`) one user may hold open on this node at once.
    #[serde(default = "watches_per_user_max")]
    pub watches_per_user_max: usize,
    /// Most bytes of HTTP request bodies being read at once, summed over all connections; a
    /// body finding no room within a second is answered `503 unavailable`.
    #[serde(default = "http_bodies_bytes_max")]
    pub http_bodies_bytes_max: usize,
    /// Time an HTTP client has to finish a request's head once its first byte arrived.
    #[serde(default = "http_header_read_timeout_ms")]
    pub http_header_read_timeout_ms: u64,
    /// An HTTP connection with no request running and no byte moving either way for this long
    /// is closed (idle keep-alive, a client that sends nothing, a stalled body either way).
    #[serde(default = "http_idle_timeout_ms")]
    pub http_idle_timeout_ms: u64,
    /// The most bytes one batch read may answer (HTTP batch-get, RESP MGET); more is refused
    /// with `response_too_large`.
    #[serde(default = "batch_get_response_bytes_max")]
    pub batch_get_response_bytes_max: u64,
    /// Applied batches a change-feed watcher may fall behind a shard by before it is cut off
    /// (`/v1/watch`); each shard keeps at most this many batches for its watchers.
    #[serde(default = "watch_batches_max")]
    pub watch_batches_max: usize,
    /// Bytes of recent changes each shard keeps in memory so a watcher can resume from a
    /// cursor (`/v1/watch?from=`); an older cursor is answered `cursor_compacted`. 0: none.
    #[serde(default = "watch_history_bytes")]
    pub watch_history_bytes: usize,
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
    /// Users, roles and tokens (docs/security.md). Off: anyone who reaches a port may do
    /// anything, so a node refuses to listen beyond loopback unless `insecure`.
    #[serde(default)]
    pub auth: AuthConfig,
    /// Listen on non-loopback addresses with auth off (`tunekv server --insecure`).
    #[serde(default)]
    pub insecure: bool,
    /// TLS on every listener and mutual TLS between nodes (docs/security.md). None: plain TCP.
    #[serde(default)]
    pub tls: Option<crate::tls::TlsConfig>,
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
    /// How far two nodes' wall clocks may disagree (the same on every node). The HLC never runs
    /// further ahead of this node's clock than this, and a node whose clock disagrees with a
    /// majority of its peers by more, or jumps by more, stops stamping commits and leading
    /// until it agrees again (docs/configuration.md).
    #[serde(default = "max_clock_offset_ms")]
    pub max_clock_offset_ms: u64,
    /// Leaderless and volatile keyspaces: clock skew refusal, hints, anti-entropy.
    #[serde(default)]
    pub leaderless: LeaderlessConfig,
    /// The storage engine's memory (issue 21): a node's memory is bounded by these, not by
    /// its data.
    #[serde(default)]
    pub storage: StorageConfig,
    /// Deliberate bugs (`tunekv server --bug`, bug-injection builds only); never in a file.
    #[serde(skip)]
    pub bugs: crate::Bugs,
    /// A crash on purpose at a chosen point (`tunekv server --crash-at`, with
    /// `--enable-faults`; crash tests); never in a file.
    #[serde(skip)]
    pub crash_at: Option<CrashAt>,
    /// Seed of every random draw the node makes (fault drops and jitter, its incarnation id);
    /// set by the simulator, never in a file. None: from the OS.
    #[serde(skip)]
    pub rng_seed: Option<u64>,
}

/// Where `tunekv server --crash-at` aborts the process (as `kill -9` would, without cleanup):
/// the crash tests' way to crash exactly mid-operation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CrashAt {
    /// After staging the first chunk of a snapshot received from a leader, before the rest
    /// arrives and the snapshot is installed.
    SnapshotInstall,
    /// On the metadata leader, after a replica move's membership change committed and before
    /// the catalog records the shard's new replicas (the next leader must finish the move).
    MoveCommitted,
}

impl CrashAt {
    pub fn parse(s: &str) -> Result<CrashAt, String> {
        match s {
            "snapshot-install" => Ok(CrashAt::SnapshotInstall),
            "move-committed" => Ok(CrashAt::MoveCommitted),
            other => Err(format!(
                "unknown crash point {other:?} (known: snapshot-install, move-committed)"
            )),
        }
    }
}

/// `[auth]` in a node's config file (docs/security.md).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    /// Every request must carry a token (HTTP) or `AUTH` first (RESP).
    pub enabled: bool,
    /// The argon2id hash (PHC string) of the root user's first password: the cluster creates
    /// user `root` with it once, if it has no root user yet. `tunekv dev --auth` sets it.
    pub root_password_hash: Option<String>,
    /// The longest a token this node issues lives, ms (a login may ask for less).
    pub token_ttl_ms: u64,
}

impl Default for AuthConfig {
    fn default() -> AuthConfig {
        AuthConfig {
            enabled: false,
            root_password_hash: None,
            token_ttl_ms: tunekv_core::auth::TOKEN_TTL_MS_DEFAULT,
        }
    }
}

/// `[storage]` in a node's config file (docs/configuration.md).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct StorageConfig {
    /// The block cache every state machine and log shares, in bytes.
    pub cache_bytes: u64,
    /// Writes each shard buffers in memory before flushing them to a table, in bytes.
    pub memtable_bytes: u64,
    /// Values recently read, kept decoded in memory by each copy of a shard, in bytes per
    /// copy (0: none): a read of a key found there skips the LSM tree.
    pub hot_values_bytes: u64,
    /// The storage engine's background threads (flushes, compactions); 0: one per core, at
    /// most 4. Nodes sharing a machine should split its cores (`tunekv dev` does).
    pub engine_threads: usize,
}

impl Default for StorageConfig {
    fn default() -> StorageConfig {
        let d = tunekv_storage::FjallOptions::default();
        StorageConfig {
            cache_bytes: d.cache_bytes,
            memtable_bytes: d.memtable_bytes,
            hot_values_bytes: tunekv_raft::HOT_VALUES_BYTES_DEFAULT,
            engine_threads: d.engine_threads,
        }
    }
}

/// Smallest `[storage]` sizes a node accepts.
pub const STORAGE_CACHE_BYTES_MIN: u64 = 1 << 20;
pub const STORAGE_MEMTABLE_BYTES_MIN: u64 = 1 << 20;
/// Most `[storage] engine_threads` a node accepts.
pub const STORAGE_ENGINE_THREADS_MAX: usize = 64;

impl StorageConfig {
    pub fn options(&self) -> tunekv_storage::FjallOptions {
        tunekv_storage::FjallOptions {
            cache_bytes: self.cache_bytes,
            memtable_bytes: self.memtable_bytes,
            engine_threads: self.engine_threads,
        }
    }
}

/// `[leaderless]` in a node's config file (docs/configuration.md).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct LeaderlessConfig {
    /// A replica refuses a new write stamped more than this ahead of its own clock
    /// (`clock_skew`), so one runaway clock cannot win every last-writer-wins conflict.
    pub max_clock_skew_ms: u64,
    /// Hints older than this are dropped (counted and logged): the replica they were for is
    /// then repaired by anti-entropy instead.
    pub hint_window_ms: u64,
    /// How often a node compares Merkle trees with one peer per leaderless keyspace.
    pub anti_entropy_every_ms: u64,
    /// How often stored hints are offered to the nodes they are for.
    pub hint_replay_every_ms: u64,
    /// A tombstone is collected only this long after it was stored, and only once every replica
    /// of its key was seen holding it: longer than a hint lives plus the longest wait, so no
    /// older version of the key can still arrive from a hint or an in-flight write.
    pub tombstone_grace_ms: u64,
}

impl Default for LeaderlessConfig {
    fn default() -> Self {
        LeaderlessConfig {
            max_clock_skew_ms: 5_000,
            hint_window_ms: 3 * 3_600_000,
            anti_entropy_every_ms: 1_000,
            hint_replay_every_ms: 1_000,
            tombstone_grace_ms: 4 * 3_600_000,
        }
    }
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
/// Twice the value ceiling; the same as `tunekv_resp::parse::REQUEST_BYTES_MAX_DEFAULT`.
fn resp_request_bytes_max() -> usize {
    2 * tunekv_core::limits::VALUE_BYTES_MAX_CEILING as usize
}
/// 1 GiB; the same as `tunekv_resp::server::PENDING_BYTES_MAX_DEFAULT`.
fn resp_pending_bytes_max() -> usize {
    1024 * 1024 * 1024
}
/// The same as `tunekv_resp::server::REQUEST_TIMEOUT_MS_DEFAULT`.
fn resp_request_timeout_ms() -> u64 {
    30_000
}
/// 1 GiB: 63 bodies of the largest size at once.
fn http_bodies_bytes_max() -> usize {
    1024 * 1024 * 1024
}
fn watches_per_user_max() -> usize {
    64
}
fn http_connections_max() -> usize {
    10_000
}
fn http_header_read_timeout_ms() -> u64 {
    10_000
}
fn http_idle_timeout_ms() -> u64 {
    60_000
}
fn batch_get_response_bytes_max() -> u64 {
    64 * 1024 * 1024
}
fn watch_batches_max() -> usize {
    tunekv_raft::CHANGE_BATCHES_MAX
}
fn watch_history_bytes() -> usize {
    tunekv_raft::CHANGE_HISTORY_BYTES
}
/// The smallest `batch_get_response_bytes_max` a config may set: the largest value, so a
/// single-key read through the batch path (RESP GET) is never refused.
pub const BATCH_GET_RESPONSE_BYTES_MAX_FLOOR: u64 = tunekv_core::limits::VALUE_BYTES_MAX_CEILING;
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
        if self.resp_request_bytes_max == 0
            || self.resp_request_bytes_max > self.resp_pending_bytes_max
        {
            return Err(
                "resp_request_bytes_max must be at least 1 and at most resp_pending_bytes_max"
                    .into(),
            );
        }
        let offsets = tunekv_core::clock_guard::MAX_CLOCK_OFFSET_MS_MIN
            ..=tunekv_core::clock_guard::MAX_CLOCK_OFFSET_MS_MAX;
        if !offsets.contains(&self.max_clock_offset_ms) {
            return Err(format!(
                "max_clock_offset_ms {} is outside {}..={}",
                self.max_clock_offset_ms,
                offsets.start(),
                offsets.end()
            ));
        }
        let l = &self.leaderless;
        if l.max_clock_skew_ms < self.max_clock_offset_ms {
            return Err(format!(
                "leaderless.max_clock_skew_ms ({}) must be at least max_clock_offset_ms ({}): \
                 replicas would refuse writes from clocks the cluster trusts",
                l.max_clock_skew_ms, self.max_clock_offset_ms
            ));
        }
        if l.tombstone_grace_ms <= l.hint_window_ms.saturating_add(self.wait_ms_cap) {
            return Err(format!(
                "leaderless.tombstone_grace_ms ({}) must exceed hint_window_ms ({}) plus \
                 wait_ms_cap ({}): a deleted key could come back from a late hint or write",
                l.tombstone_grace_ms, l.hint_window_ms, self.wait_ms_cap
            ));
        }
        if l.hint_window_ms == 0 || l.anti_entropy_every_ms == 0 || l.hint_replay_every_ms == 0 {
            return Err(
                "leaderless.hint_window_ms, anti_entropy_every_ms and hint_replay_every_ms must \
                 be at least 1"
                    .into(),
            );
        }
        if self.auth.token_ttl_ms == 0
            || self.auth.token_ttl_ms > tunekv_core::auth::TOKEN_TTL_MS_MAX
        {
            return Err(format!(
                "auth.token_ttl_ms must be 1 to {} (24 h)",
                tunekv_core::auth::TOKEN_TTL_MS_MAX
            ));
        }
        if let Some(h) = &self.auth.root_password_hash {
            if !h.starts_with("$argon2id$") {
                return Err(
                    "auth.root_password_hash must be an argon2id hash ($argon2id$…; \
                     `tunekv user hash-password` makes one)"
                        .into(),
                );
            }
        }
        if self.resp_request_timeout_ms == 0 {
            return Err("resp_request_timeout_ms must be at least 1".into());
        }
        let body_max = tunekv_core::limits::VALUE_BYTES_MAX_CEILING as usize + 64 * 1024;
        if self.http_bodies_bytes_max < body_max {
            return Err(format!(
                "http_bodies_bytes_max must be at least {body_max} (the largest request body)"
            ));
        }
        if self.http_connections_max == 0 {
            return Err("http_connections_max must be at least 1".into());
        }
        if self.http_header_read_timeout_ms == 0 || self.http_idle_timeout_ms == 0 {
            return Err(
                "http_header_read_timeout_ms and http_idle_timeout_ms must be at least 1".into(),
            );
        }
        if self.watch_batches_max == 0 || self.watch_batches_max > 1 << 20 {
            return Err("watch_batches_max must be 1 to 1048576".into());
        }
        if self.watch_history_bytes > 1 << 30 {
            return Err("watch_history_bytes must be at most 1073741824 (1 GiB per shard)".into());
        }
        if self.batch_get_response_bytes_max < BATCH_GET_RESPONSE_BYTES_MAX_FLOOR {
            return Err(format!(
                "batch_get_response_bytes_max must be at least {BATCH_GET_RESPONSE_BYTES_MAX_FLOOR}"
            ));
        }
        if self.storage.cache_bytes < STORAGE_CACHE_BYTES_MIN
            || self.storage.memtable_bytes < STORAGE_MEMTABLE_BYTES_MIN
        {
            return Err(format!(
                "[storage] cache_bytes and memtable_bytes must each be at least {} bytes",
                STORAGE_CACHE_BYTES_MIN
            ));
        }
        if self.storage.engine_threads > STORAGE_ENGINE_THREADS_MAX {
            return Err(format!(
                "[storage] engine_threads must be 0 (one per core, at most 4) to \
                 {STORAGE_ENGINE_THREADS_MAX}"
            ));
        }
        self.raft_timing.tuning().openraft_config().map(|_| ())
    }

    /// A node with auth off listens only on loopback, unless `insecure` says otherwise
    /// (`tunekv server` checks this; the simulator's hosts are not real addresses).
    pub fn check_exposure(&self) -> Result<(), String> {
        if !self.auth.enabled && !self.insecure {
            for (what, addr) in [
                ("http", Some(&self.http)),
                ("raft", Some(&self.raft)),
                ("resp", self.resp.as_ref()),
            ] {
                let Some(addr) = addr else { continue };
                if !is_loopback(addr) {
                    return Err(format!(
                        "{what} listens on {addr}, beyond loopback, with auth off: anyone who \
                         reaches it could read, write and administer the cluster. Turn auth on \
                         ([auth] enabled = true) or start with --insecure"
                    ));
                }
            }
        }
        Ok(())
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
                resp_request_bytes_max: resp_request_bytes_max(),
                resp_pending_bytes_max: resp_pending_bytes_max(),
                resp_request_timeout_ms: resp_request_timeout_ms(),
                resp_idle_timeout_ms: 0,
                http_connections_max: http_connections_max(),
                http_bodies_bytes_max: http_bodies_bytes_max(),
                user_requests_per_s: 0,
                connection_requests_per_s: 0,
                watches_per_user_max: watches_per_user_max(),
                http_header_read_timeout_ms: http_header_read_timeout_ms(),
                http_idle_timeout_ms: http_idle_timeout_ms(),
                batch_get_response_bytes_max: batch_get_response_bytes_max(),
                watch_batches_max: watch_batches_max(),
                watch_history_bytes: watch_history_bytes(),
                data_dir: dir.join(format!("node-{}", p.id)),
                peers: peers.clone(),
                cluster_secret: cluster_secret.to_string(),
                enable_faults,
                auth: AuthConfig::default(),
                insecure: false,
                tls: None,
                read_wait_ms_default: read_wait_ms_default(),
                write_wait_ms_default: write_wait_ms_default(),
                wait_ms_cap: wait_ms_cap(),
                raft_timing: RaftTimingConfig::default(),
                max_clock_offset_ms: max_clock_offset_ms(),
                leaderless: LeaderlessConfig::default(),
                storage: StorageConfig::default(),
                bugs: crate::Bugs::default(),
                crash_at: None,
                rng_seed: None,
            })
            .collect()
    }
}

/// Whether a listen address stays on this machine (`127.0.0.0/8`, `::1`, `localhost`).
fn is_loopback(addr: &str) -> bool {
    let host = addr.rsplit_once(':').map_or(addr, |(h, _)| h);
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host == "localhost"
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

fn max_clock_offset_ms() -> u64 {
    tunekv_core::clock_guard::MAX_CLOCK_OFFSET_MS_DEFAULT
}
