//! Command-line parsing and the client commands.

use anyhow::Result;
use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::time::Duration;
use tunekv_client::{Client, ClientError, Opts};

#[derive(Parser)]
#[command(
    name = "tunekv",
    version,
    about = "A replicated key-value store where every read picks its consistency level"
)]
pub struct Args {
    #[command(subcommand)]
    pub command: Cmd,
}

#[derive(Subcommand)]
pub enum Cmd {
    /// Run one node.
    Server {
        #[arg(long)]
        config: PathBuf,
        /// Allow the fault hook (POST /v1/admin/faults). Never in production.
        #[arg(long)]
        enable_faults: bool,
        /// Break one promise on purpose, to show `verify` catches it: strong-local,
        /// ignore-session, skip-bounded, ack-early. Only in builds with the bug-injection
        /// feature (never release builds).
        #[arg(long = "bug", value_name = "BUG")]
        bugs: Vec<String>,
        /// Listen beyond loopback with auth off (anyone who reaches the ports may do
        /// anything). Without it, such a node refuses to start.
        #[arg(long)]
        insecure: bool,
        /// Crash on purpose (abort, as kill -9) at a point crash tests cannot hit by timing:
        /// snapshot-install (after staging a snapshot's first chunk, before installing it),
        /// move-committed (on the metadata leader, after a replica move's membership change
        /// committed, before the catalog records it). Needs --enable-faults.
        #[arg(long, value_name = "POINT")]
        crash_at: Option<String>,
        /// Log lines as text, or as JSON objects (one per line, for log shippers). TUNEKV_LOG
        /// filters them (e.g. `info,tunekv_api=debug`).
        #[arg(long, value_enum, env = "TUNEKV_LOG_FORMAT", default_value = "text")]
        log_format: LogFormat,
    },
    /// Run a cache in front of a cluster: the node's key API over HTTP, hits served only
    /// when the cache's position satisfies the read's level (docs/cache.md).
    Cache {
        /// A cache config file (TOML; docs/cache.md). Flags override it.
        #[arg(long)]
        config: Option<PathBuf>,
        /// A cluster.json (as `tunekv dev` writes it): the nodes, and the cluster secret from
        /// the first node's config file.
        #[arg(long)]
        upstream: Option<PathBuf>,
        /// A node's HTTP address (repeatable), in addition to --upstream.
        #[arg(long = "node")]
        nodes: Vec<String>,
        /// HTTP listen address.
        #[arg(long)]
        http: Option<String>,
        /// RESP listen address (none: no RESP).
        #[arg(long)]
        resp: Option<String>,
        /// Memory for entries, in bytes.
        #[arg(long)]
        memory_bytes: Option<u64>,
        /// Default TTL of entries, ms (mandatory; never infinite).
        #[arg(long)]
        ttl_ms: Option<u64>,
        /// KEYSPACE=read_through|write_through|write_behind (repeatable).
        #[arg(long = "strategy")]
        strategies: Vec<String>,
        /// Directory of the write-behind log (writes acknowledged once synced to it; a restart
        /// flushes it before serving).
        #[arg(long)]
        write_behind_dir: Option<PathBuf>,
        /// Keep the write-behind queue in memory only: a crash loses what is not flushed yet.
        #[arg(long)]
        write_behind_in_memory: bool,
        /// Warm from a key file (one `KEYSPACE KEY` per line) at start.
        #[arg(long)]
        warm_keys: Option<PathBuf>,
        /// Warm every key under KEYSPACE/PREFIX at start (repeatable).
        #[arg(long = "warm-prefix")]
        warm_prefixes: Vec<String>,
        /// Save the hot set here at shutdown, and warm from it at start.
        #[arg(long)]
        hot_set_file: Option<PathBuf>,
        /// Warming reads per second (default 500).
        #[arg(long)]
        warm_rate: Option<u32>,
        /// Report ready (GET /v1/cache/ready) only once warm.
        #[arg(long)]
        ready_when_warm: bool,
        /// Break one of the cache's promises on purpose (keep-stale-fills, ignore-session,
        /// drop-invalidations, ignore-caller-prefix); bug-injection builds only.
        #[arg(long = "bug", value_name = "BUG")]
        bugs: Vec<String>,
        /// Allow the fault hook (POST /v1/admin/faults: cut the cache off from the cluster).
        /// Never in production.
        #[arg(long)]
        enable_faults: bool,
        /// Log lines as text, or as JSON objects (one per line).
        #[arg(long, value_enum, env = "TUNEKV_LOG_FORMAT", default_value = "text")]
        log_format: LogFormat,
    },
    /// Start a local cluster of separate node processes, print where to look, run a demo.
    Dev {
        #[arg(long, default_value_t = 3)]
        nodes: u32,
        #[arg(long, default_value = ".tunekv-dev")]
        dir: PathBuf,
        #[arg(long)]
        enable_faults: bool,
        /// Wipe DIR first (otherwise an existing cluster in DIR is restarted with its data).
        #[arg(long)]
        fresh: bool,
        #[arg(long)]
        no_demo: bool,
        /// Stop the cluster after the demo instead of waiting for Ctrl-C.
        #[arg(long)]
        exit_after_demo: bool,
        /// Also start a cache (`tunekv cache`) in front of the cluster, listed in cluster.json.
        #[arg(long)]
        cache: bool,
        /// Turn auth on: a root user with a random password, written to DIR/credentials.json
        /// (docs/security.md). Without it the cluster is open to anyone on this machine.
        #[arg(long)]
        auth: bool,
        /// Serve HTTP and RESP over TLS only, nodes talking mutual TLS: a throwaway CA at
        /// DIR/tls/ca.pem and a certificate per node (docs/security.md).
        #[arg(long)]
        tls: bool,
    },
    /// Write a value.
    Put {
        keyspace: String,
        key: String,
        value: String,
        #[command(flatten)]
        common: Common,
    },
    /// Read a value (printed to stdout; the receipt to stderr).
    Get {
        keyspace: String,
        key: String,
        #[command(flatten)]
        common: Common,
    },
    /// Delete a key.
    Del {
        keyspace: String,
        key: String,
        #[command(flatten)]
        common: Common,
    },
    /// Create a keyspace.
    CreateKeyspace {
        keyspace: String,
        /// ordered (Raft shards), leaderless (any node takes writes, last writer wins) or
        /// volatile (memory only, weak).
        #[arg(long, default_value = "ordered")]
        mode: String,
        /// Raft groups of an ordered keyspace.
        #[arg(long, default_value_t = 4)]
        shards: u32,
        #[arg(long, default_value_t = 3)]
        replicas: u32,
        /// Default read level (default: the mode's: strong, eventual, weak).
        #[arg(long)]
        default_level: Option<String>,
        #[arg(long, env = "TUNEKV_NODE", default_value = "127.0.0.1:7101")]
        node: String,
    },
    /// Prove the levels: concurrent clients at every level against a real cluster under a
    /// seeded fault schedule, then every level's checker over the recorded history.
    /// Exits 1 on any violation.
    Verify {
        /// Nodes of the cluster verify starts (ignored with --cluster).
        #[arg(long, default_value_t = 3)]
        nodes: u32,
        /// How long the workload and fault phase runs, e.g. 60s, 2m.
        #[arg(long, default_value = "60s", value_parser = parse_duration)]
        duration: std::time::Duration,
        /// Stop after this many operations (if sooner than --duration).
        #[arg(long)]
        ops: Option<u64>,
        /// Concurrent clients, alternately HTTP and RESP, each with its own session.
        #[arg(long, default_value_t = 8)]
        clients: u32,
        /// Keys per run (few, so operations collide).
        #[arg(long, default_value_t = 6)]
        keys: u32,
        /// Comma-separated read levels (DESIGN §3 syntax).
        #[arg(long, default_value = crate::verify::LEVELS_DEFAULT)]
        levels: String,
        /// Comma-separated faults: kill, pause, partition, delay, drop, skew, membership (a
        /// node joins, then leaves); or all, none.
        #[arg(long, default_value = "all", value_parser = crate::verify::parse_faults)]
        faults: std::vec::Vec<crate::verify::FaultKind>,
        /// Seed of the fault schedule (printed; random if not given).
        #[arg(long)]
        seed: Option<u64>,
        /// Write the history as JSON lines (DESIGN §7) to FILE.
        #[arg(long, value_name = "FILE")]
        history: Option<PathBuf>,
        /// Run against this cluster (cluster.json as `tunekv dev` writes it) instead of
        /// starting one. Its nodes need --enable-faults for network and clock faults.
        #[arg(long, value_name = "cluster.json")]
        cluster: Option<PathBuf>,
        /// Directory of the cluster verify starts, kept afterwards (default: a fresh temp dir,
        /// removed after a clean run).
        #[arg(long)]
        dir: Option<PathBuf>,
        /// Start the nodes with this injected bug (bug-injection builds only; repeatable).
        #[arg(long = "bug", value_name = "BUG")]
        bugs: Vec<String>,
        /// `ordered` (Raft shards, every level in --levels), `leaderless` (a leaderless
        /// keyspace: HTTP clients writing at every w and reading at every r, judged by the
        /// leaderless checkers; --levels is not used) or `mixed` (both keyspaces on the same
        /// nodes at once, half the clients in each, each judged by its own checkers) or
        /// `counter` (a leaderless counter keyspace: adds at every w, reads at every r, judged
        /// by the counter checkers).
        #[arg(long, default_value = "ordered")]
        keyspace_mode: String,
        /// Start a cache (`tunekv cache`) in front of the cluster: half of the ordered HTTP
        /// clients' operations go through it, judged by the same checkers, and a third of the
        /// faults kill it or cut it off from the nodes.
        #[arg(long)]
        through_cache: bool,
        /// Start that cache with this injected bug (keep-stale-fills, ignore-session,
        /// drop-invalidations; bug-injection builds only; repeatable).
        #[arg(long = "cache-bug", value_name = "BUG")]
        cache_bugs: Vec<String>,
        /// After healing, how long to wait for every replica to agree before the final reads
        /// (a run whose replicas never agree fails its convergence checks after this).
        #[arg(long, default_value = "60s", value_parser = parse_duration)]
        converge_within: std::time::Duration,
    },
    /// Measure each level's cost: throughput, latency (HDR, corrected for coordinated
    /// omission) and served staleness, per level, as a table (and CSV, SVG, JSON with --out).
    Bench {
        /// Nodes of the cluster bench starts (ignored with --cluster).
        #[arg(long, default_value_t = 3)]
        nodes: u32,
        /// Run against this cluster (cluster.json) instead of starting one.
        #[arg(long, value_name = "cluster.json")]
        cluster: Option<PathBuf>,
        /// Directory of the cluster bench starts, kept afterwards with its node logs (default: a
        /// temp dir, removed afterwards).
        #[arg(long)]
        dir: Option<PathBuf>,
        #[arg(long, value_enum, default_value = "http")]
        protocol: crate::bench::Protocol,
        /// Comma-separated levels to measure (DESIGN §3 syntax).
        #[arg(long, default_value = crate::verify::LEVELS_DEFAULT)]
        levels: String,
        /// Fraction of operations that are reads (the rest are writes).
        #[arg(long, default_value_t = 0.9)]
        read_ratio: f64,
        #[arg(long, default_value_t = 1000)]
        keys: usize,
        /// uniform, zipf (θ = 0.99) or zipf:θ.
        #[arg(long, default_value = "uniform")]
        distribution: crate::bench::Distribution,
        #[arg(long, default_value_t = 100)]
        value_bytes: usize,
        /// Connections (spread over the nodes).
        #[arg(long, default_value_t = 16)]
        connections: usize,
        /// Requests in flight per connection (HTTP: concurrent requests; RESP: pipeline depth).
        #[arg(long, default_value_t = 1)]
        inflight: usize,
        /// Measured time per level, e.g. 10s.
        #[arg(long, default_value = "10s", value_parser = parse_duration)]
        duration: std::time::Duration,
        /// Unmeasured time before each level's measurement.
        #[arg(long, default_value = "2s", value_parser = parse_duration)]
        warmup: std::time::Duration,
        /// Stop each level after this many measured operations (if sooner).
        #[arg(long)]
        ops: Option<u64>,
        /// Write results.csv, latency.svg, staleness.svg and summary.json here.
        #[arg(long)]
        out: Option<PathBuf>,
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// Also measure these systems, started on 127.0.0.1 from their installed binaries
        /// (etcd: a 3-member cluster; redis: one server), with the same workload, and print
        /// throughput ratios. Replaces --levels, --read-ratio and --protocol with a fixed set of
        /// reads-only and writes-only rows.
        #[arg(long, value_name = "etcd,redis")]
        compare: Option<String>,
        /// `leaderless`: rows for a leaderless keyspace at each w and r and a volatile one
        /// (weak) instead of --levels, then the time replicas take to converge after a healed
        /// partition (with --compare: Redis and etcd rows beside them).
        #[arg(long, default_value = "ordered")]
        keyspace_mode: String,
        /// The change feed instead of the levels: events delivered per second to 1 and to 100
        /// consumers of /v1/watch and of RESP keyspace notifications, and the delay from a
        /// write to its event (p50/p99); with --compare redis, a Redis keyspace-notification
        /// subscriber on the same write load.
        #[arg(long)]
        feed: bool,
        /// A cache (`tunekv cache`) in front of the cluster, with memory for 10% of the keys:
        /// GET at eventual, session and strong through it (hit ratio, staleness) beside the
        /// nodes' GET, SET write-through and write-behind beside a node's SET (with --compare
        /// redis,memcached: their GET beside), and the eviction policy's hit ratio.
        #[arg(long)]
        cache: bool,
        /// Check the live PBS estimate: write keys and read each at eventual t ms after its
        /// acknowledgement from a random node; print the measured probability that a read
        /// returns the write beside the cluster's estimate (/v1/cluster's "pbs") and whether
        /// they agree within 0.1 (with --out: pbs.json). With --keyspace-mode leaderless: a
        /// leaderless keyspace at w=quorum, r=one (the WARS estimate).
        #[arg(long)]
        pbs: bool,
        /// --pbs: writes to measure.
        #[arg(long, default_value_t = 300)]
        pbs_trials: usize,
        /// --pbs: delay every node's messages this long (fault hook) while measuring, so
        /// followers lag visibly.
        #[arg(long, default_value_t = 0)]
        pbs_delay_ms: u64,
        /// How the store holds up as data grows: load 100k, 1M and 10M keys (up to --keys)
        /// with batched writes and, at each size, measure pipelined SET and GET at eventual
        /// over RESP (--connections × --inflight, --duration each: throughput, p99.9, worst
        /// request), restart every node (kill -9) and time it until each serves, and report
        /// each node's memory and disk (with --out: scale.json). Use e.g. --keys 10000000
        /// --inflight 16.
        #[arg(long)]
        scale: bool,
        /// What backups cost: load --keys keys of --value-bytes into an ordered keyspace
        /// through restore batches, back it up (`tunekv backup`), restore that backup
        /// (`tunekv restore`); keys/s and MB/s of each (with --out: backup.json).
        #[arg(long)]
        backup: bool,
        /// What auth and TLS cost: HTTP GET/PUT and RESP GET/SET on plain, auth, TLS and
        /// auth + TLS clusters it starts, and the login (with --out: security.json).
        #[arg(long)]
        security: bool,
        /// The block cache of each node bench starts (`[storage] cache_bytes`), in MiB
        /// (default: the node's default, 64 MiB); not with --cluster. With --scale, e.g. a
        /// cache near the data's size shows what the LSM tree's point reads cost beside it.
        #[arg(long, value_name = "MIB")]
        cache_mib: Option<u64>,
    },
    /// Add or remove a node: replicas move as learners first, so no shard ever has fewer
    /// copies than its keyspace asked for; follows the moves until the cluster settles.
    Node {
        #[command(subcommand)]
        action: NodeCmd,
    },
    /// Print a bearer token (POST /v1/auth/token): `export TUNEKV_TOKEN=$(tunekv login …)`;
    /// every command then sends it.
    Login {
        /// A credentials file (`tunekv dev --auth` writes DIR/credentials.json).
        #[arg(long)]
        credentials: Option<PathBuf>,
        /// The user (its password in TUNEKV_PASSWORD).
        #[arg(long)]
        user: Option<String>,
        #[arg(long, env = "TUNEKV_NODE", default_value = "127.0.0.1:7101")]
        node: String,
    },
    /// Manage users (cluster admins only; docs/security.md).
    User {
        #[command(subcommand)]
        action: crate::auth_cmd::UserCmd,
        #[arg(
            long,
            env = "TUNEKV_NODE",
            default_value = "127.0.0.1:7101",
            global = true
        )]
        node: String,
    },
    /// Manage roles (cluster admins only; docs/security.md).
    Role {
        #[command(subcommand)]
        action: crate::auth_cmd::RoleCmd,
        #[arg(
            long,
            env = "TUNEKV_NODE",
            default_value = "127.0.0.1:7101",
            global = true
        )]
        node: String,
    },
    /// Back up every keyspace into a new directory, while the cluster serves.
    ///
    /// Each ordered shard is read at one applied index (holding every write acknowledged
    /// before its turn), each leaderless replica with its versions; both are streamed into
    /// checksummed files, then manifest.json with the keyspaces' specs is written. Volatile
    /// keyspaces keep only their spec. docs/deploy.md, "Backups".
    Backup {
        /// The backup directory (created; refused when it exists and is not empty).
        dir: PathBuf,
        #[arg(long, env = "TUNEKV_NODE", default_value = "127.0.0.1:7101")]
        node: String,
        /// Only this keyspace (repeat for more).
        #[arg(long = "keyspace")]
        keyspaces: Vec<String>,
    },
    /// Restore a backup made by `tunekv backup` into the cluster NODE belongs to.
    ///
    /// Checks every file first, creates missing keyspaces with their backed-up spec, then
    /// writes every ordered key with its expiry (keys already expired are left out; keys not
    /// in the backup stay) and merges leaderless versions into their keys' replicas (newer
    /// writes win).
    Restore {
        /// The backup directory (with its manifest.json).
        dir: PathBuf,
        #[arg(long, env = "TUNEKV_NODE", default_value = "127.0.0.1:7101")]
        node: String,
        /// Only this keyspace (repeat for more).
        #[arg(long = "keyspace")]
        keyspaces: Vec<String>,
    },
    /// Show nodes, groups, leaders and every replica's applied/committed index.
    Cluster {
        #[arg(long, env = "TUNEKV_NODE", default_value = "127.0.0.1:7101")]
        node: String,
    },
    /// Show every staleness SLO (of KEYSPACE, or of all keyspaces) cluster-wide: good and
    /// valid reads over its window on each node and in all, compliance, error-budget burn
    /// rate, and whether it is violated. Exits 3 when one is violated (for scripts).
    Slo {
        keyspace: Option<String>,
        #[arg(long, env = "TUNEKV_NODE", default_value = "127.0.0.1:7101")]
        node: String,
        /// Print the nodes' reports as JSON instead.
        #[arg(long)]
        json: bool,
    },
}

#[derive(clap::Args)]
pub struct Common {
    /// Consistency level, e.g. strong, eventual (DESIGN §3 syntax).
    #[arg(long)]
    level: Option<String>,
    /// Wait budget in milliseconds.
    #[arg(long)]
    wait_ms_max: Option<u64>,
    /// Read quorum on leaderless keyspaces: one, quorum, all.
    #[arg(long)]
    r: Option<String>,
    /// Write quorum on leaderless keyspaces: one, quorum, all, any.
    #[arg(long)]
    w: Option<String>,
    /// Node to talk to.
    #[arg(long, env = "TUNEKV_NODE", default_value = "127.0.0.1:7101")]
    node: String,
    /// Session token file: its tokens are sent, the returned token is stored, so reads at
    /// read_your_writes / monotonic_reads / session hold across commands and nodes.
    /// Default: $XDG_STATE_HOME/tunekv/session (~/.local/state/tunekv/session).
    #[arg(long, env = "TUNEKV_SESSION", value_name = "FILE")]
    session: Option<PathBuf>,
    /// Start a new session: send no token, then overwrite the session file.
    #[arg(long)]
    new_session: bool,
    /// Neither read nor write a session file.
    #[arg(long, conflicts_with_all = ["session", "new_session"])]
    no_session: bool,
}

/// The non-empty, trimmed items of a comma-separated flag.
fn comma_list(s: &str) -> Vec<String> {
    s.split(',')
        .map(|l| l.trim().to_string())
        .filter(|l| !l.is_empty())
        .collect()
}

fn parse_duration(s: &str) -> Result<std::time::Duration, String> {
    tunekv_core::level::parse_duration(s)
        .ok_or_else(|| format!("{s:?} is not a duration (e.g. 500ms, 60s, 2m)"))
}

/// The session file of a command, and the tokens it sent.
struct SessionUse {
    path: Option<PathBuf>,
    sent: Vec<String>,
}

impl SessionUse {
    fn finish(&self, got: &str) {
        if let Some(path) = &self.path {
            if let Err(e) = crate::session_file::store(path, &self.sent, got) {
                eprintln!("warning: session token not saved: {e:#}");
            }
        }
    }

    /// A committed write: stores its token and prints its position (then `extra`).
    fn wrote(&self, w: &tunekv_client::WriteReply, extra: &str) -> i32 {
        self.finish(&w.session);
        println!("OK {}{extra}", w.position);
        0
    }

    /// A `session_invalid` answer to a token from the file gets a hint.
    fn report(&self, e: ClientError) -> i32 {
        let invalid = e.code() == Some("session_invalid");
        let code = report(e);
        if invalid {
            if let Some(path) = &self.path {
                eprintln!(
                    "hint: the token in {} was not issued by this cluster (a new dev cluster has a new \
                     secret); run with --new-session to start a new session",
                    path.display()
                );
            }
        }
        code
    }
}

impl Common {
    fn session(&self) -> Result<SessionUse> {
        let path = if self.no_session {
            None
        } else {
            self.session
                .clone()
                .or_else(crate::session_file::default_path)
        };
        let sent = match &path {
            Some(p) if !self.new_session => crate::session_file::load(p)?,
            _ => Vec::new(),
        };
        Ok(SessionUse { path, sent })
    }

    fn opts(&self, session: &SessionUse) -> Opts {
        Opts {
            level: self.level.clone(),
            wait_ms_max: self.wait_ms_max,
            r: self.r.clone(),
            w: self.w.clone(),
            session: (!session.sent.is_empty()).then(|| session.sent.join(",")),
            token: None,
        }
    }
}

/// How a server process writes its log.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    /// One JSON object per line: timestamp, level, target, message, fields, and the spans it
    /// happened in (each request's `request` span: node, protocol, op, level).
    Json,
}

fn init_tracing(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("TUNEKV_LOG").unwrap_or_else(|_| {
        tracing_subscriber::EnvFilter::new("info,openraft=warn,fjall=warn,lsm_tree=warn")
    });
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder
            .json()
            .with_current_span(true)
            .with_span_list(true)
            .try_init(),
    };
}

fn report(e: ClientError) -> i32 {
    eprintln!("error: {e}");
    2
}

#[derive(Subcommand)]
pub enum NodeCmd {
    /// Add the node whose HTTP API listens at ADDR (start it first: `tunekv server --config`,
    /// its peers naming the cluster's nodes and itself). It joins the metadata group as a
    /// learner, then as a voter; then shard replicas move to it.
    Add {
        addr: String,
        /// A node of the cluster.
        #[arg(long, env = "TUNEKV_NODE", default_value = "127.0.0.1:7101")]
        node: String,
        /// Give up following the moves after this many seconds (they go on).
        #[arg(long, default_value_t = 600)]
        wait_s: u64,
    },
    /// Remove node ID: its replicas move to the other nodes first, then it leaves the
    /// metadata group (stop its process afterwards).
    Remove {
        id: u64,
        /// A node of the cluster (not the one being removed, ideally).
        #[arg(long, env = "TUNEKV_NODE", default_value = "127.0.0.1:7101")]
        node: String,
        /// Give up following the moves after this many seconds (they go on).
        #[arg(long, default_value_t = 600)]
        wait_s: u64,
    },
}

pub async fn run(args: Args) -> Result<i32> {
    match args.command {
        Cmd::Server {
            config,
            enable_faults,
            bugs,
            insecure,
            crash_at,
            log_format,
        } => {
            init_tracing(log_format);
            let bugs = tunekv_node::Bugs::parse(&bugs).map_err(anyhow::Error::msg)?;
            let crash_at = crash_at
                .as_deref()
                .map(tunekv_node::CrashAt::parse)
                .transpose()
                .map_err(anyhow::Error::msg)?;
            if crash_at.is_some() && !enable_faults {
                anyhow::bail!("--crash-at needs --enable-faults");
            }
            crate::server::run(&config, enable_faults, insecure, bugs, crash_at).await?;
            Ok(0)
        }
        Cmd::Bench {
            nodes,
            cluster,
            dir,
            protocol,
            levels,
            read_ratio,
            keys,
            distribution,
            value_bytes,
            connections,
            inflight,
            duration,
            warmup,
            ops,
            out,
            seed,
            compare,
            keyspace_mode,
            feed,
            cache,
            pbs,
            pbs_trials,
            pbs_delay_ms,
            scale,
            backup,
            security,
            cache_mib,
        } => {
            let compare = comma_list(compare.as_deref().unwrap_or(""))
                .iter()
                .map(|s| crate::bench::Peer::parse(s))
                .collect::<anyhow::Result<Vec<_>>>()?;
            let leaderless = match keyspace_mode.as_str() {
                "ordered" => false,
                "leaderless" => true,
                other => anyhow::bail!(
                    "--keyspace-mode {other:?}: bench runs ordered or leaderless keyspaces"
                ),
            };
            crate::bench::run(crate::bench::BenchOptions {
                security,
                cache_mib,
                backup,
                scale,
                feed,
                cache,
                pbs,
                pbs_trials,
                pbs_delay_ms,
                leaderless,
                compare,
                nodes,
                cluster,
                dir,
                protocol,
                levels: comma_list(&levels),
                read_ratio,
                keys,
                distribution,
                value_bytes,
                connections,
                inflight,
                duration,
                warmup,
                ops,
                out,
                seed,
            })
            .await
        }
        Cmd::Verify {
            nodes,
            duration,
            ops,
            clients,
            keys,
            levels,
            faults,
            seed,
            history,
            cluster,
            dir,
            bugs,
            keyspace_mode,
            through_cache,
            cache_bugs,
            converge_within,
        } => {
            tunekv_node::Bugs::parse(&bugs).map_err(anyhow::Error::msg)?;
            let mode = crate::verify::KeyspaceMode::parse(&keyspace_mode)?;
            crate::verify::run(crate::verify::VerifyOptions {
                mode,
                nodes,
                duration,
                ops,
                clients,
                keys,
                levels: comma_list(&levels),
                faults,
                seed,
                history,
                cluster,
                dir,
                server_args: bugs
                    .iter()
                    .flat_map(|b| ["--bug".to_string(), b.clone()])
                    .collect(),
                through_cache: through_cache || !cache_bugs.is_empty(),
                cache_args: cache_bugs
                    .iter()
                    .flat_map(|b| ["--bug".to_string(), b.clone()])
                    .collect(),
                converge_within,
            })
            .await
        }
        Cmd::Cache {
            config,
            upstream,
            nodes,
            http,
            resp,
            memory_bytes,
            ttl_ms,
            strategies,
            bugs,
            enable_faults,
            write_behind_dir,
            write_behind_in_memory,
            warm_keys,
            warm_prefixes,
            hot_set_file,
            warm_rate,
            ready_when_warm,
            log_format,
        } => {
            init_tracing(log_format);
            crate::cache_cmd::run(crate::cache_cmd::CacheOptions {
                enable_faults,
                write_behind_dir,
                write_behind_in_memory,
                warm_keys,
                warm_prefixes,
                hot_set_file,
                warm_rate,
                ready_when_warm,
                config,
                upstream,
                nodes,
                http,
                resp,
                memory_bytes,
                ttl_ms,
                strategies,
                bugs,
            })
            .await
        }
        Cmd::Dev {
            nodes,
            dir,
            enable_faults,
            fresh,
            no_demo,
            exit_after_demo,
            cache,
            auth,
            tls,
        } => {
            crate::dev::run(crate::dev::DevOptions {
                cache,
                auth,
                tls,
                nodes,
                dir,
                enable_faults,
                fresh,
                demo: !no_demo,
                exit_after_demo,
            })
            .await
        }
        Cmd::Put {
            keyspace,
            key,
            value,
            common,
        } => {
            let c = Client::new(&common.node);
            let session = common.session()?;
            match c
                .put(
                    &keyspace,
                    key.as_bytes(),
                    value.as_bytes(),
                    &common.opts(&session),
                )
                .await
            {
                Ok(w) => Ok(session.wrote(&w, "")),
                Err(e) => Ok(session.report(e)),
            }
        }
        Cmd::Get {
            keyspace,
            key,
            common,
        } => {
            let c = Client::new(&common.node);
            let session = common.session()?;
            match c
                .get(&keyspace, key.as_bytes(), &common.opts(&session))
                .await
            {
                Ok(r) => {
                    session.finish(&r.session);
                    eprintln!(
                        "level={} served_by={} position={} staleness={}",
                        r.receipt.level,
                        r.receipt.served_by,
                        r.receipt.position,
                        r.receipt.staleness
                    );
                    match r.value {
                        Some(v) => {
                            println!("{}", String::from_utf8_lossy(&v));
                            Ok(0)
                        }
                        None => {
                            eprintln!("(not found)");
                            Ok(1)
                        }
                    }
                }
                Err(e) => Ok(session.report(e)),
            }
        }
        Cmd::Del {
            keyspace,
            key,
            common,
        } => {
            let c = Client::new(&common.node);
            let session = common.session()?;
            match c
                .delete(&keyspace, key.as_bytes(), &common.opts(&session))
                .await
            {
                Ok(w) => Ok(session.wrote(&w, &format!(" existed={}", w.existed))),
                Err(e) => Ok(session.report(e)),
            }
        }
        Cmd::CreateKeyspace {
            keyspace,
            mode,
            shards,
            replicas,
            default_level,
            node,
        } => {
            let mut spec = serde_json::json!({"mode": mode, "replicas": replicas});
            if mode == "ordered" {
                spec["shards"] = shards.into();
            }
            if let Some(level) = default_level {
                spec["default_level"] = level.into();
            }
            match Client::new(&node).create_keyspace(&keyspace, &spec).await {
                Ok(info) => {
                    println!("{info}");
                    Ok(0)
                }
                Err(e) => Ok(report(e)),
            }
        }
        Cmd::Slo {
            keyspace,
            node,
            json,
        } => crate::slo_cmd::run(&node, keyspace.as_deref(), json).await,
        Cmd::Login {
            credentials,
            user,
            node,
        } => crate::auth_cmd::login(&node, credentials, user).await,
        Cmd::User { action, node } => crate::auth_cmd::user(&node, action).await,
        Cmd::Role { action, node } => crate::auth_cmd::role(&node, action).await,
        Cmd::Node { action } => match action {
            NodeCmd::Add { addr, node, wait_s } => {
                crate::node_cmd::add(&addr, &node, Duration::from_secs(wait_s)).await
            }
            NodeCmd::Remove { id, node, wait_s } => {
                crate::node_cmd::remove(id, &node, Duration::from_secs(wait_s)).await
            }
        },
        Cmd::Backup {
            dir,
            node,
            keyspaces,
        } => crate::backup_cmd::backup(&node, &dir, &keyspaces).await,
        Cmd::Restore {
            dir,
            node,
            keyspaces,
        } => crate::backup_cmd::restore(&node, &dir, &keyspaces).await,
        Cmd::Cluster { node } => match Client::new(&node).cluster().await {
            Ok(status) => {
                println!("{}", serde_json::to_string_pretty(&status)?);
                Ok(0)
            }
            Err(e) => Ok(report(e)),
        },
    }
}
