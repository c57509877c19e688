//! One seed's run: the plan it derives, the simulated cluster, the fault schedule, the
//! clients, the invariants checked while it runs, the trace, and the checkers' verdict.

use crate::client::{self, KEYSPACE};
use crate::invariants::{Checked, Invariants};
use crate::net::{HttpListener, SimClock, SimTransport, HTTP_PORT, RAFT_PORT};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tunekv_check::feed::{Consumer, StoredConsumer};
use tunekv_check::history::{OpKind, Operation};
use tunekv_node::{LinkFaults, Node, NodeConfig, PeerConfig};
use tunekv_storage::MemStorage;

/// Levels the clients read at.
pub const LEVELS: [&str; 8] = [
    "strong",
    "bounded(k=5)",
    "bounded(t=500ms)",
    "consistent_prefix",
    "read_your_writes",
    "monotonic_reads",
    "session",
    "eventual",
];
/// Virtual seconds of faults per seed unless told otherwise (`--safety-secs`).
pub const SAFETY_DEFAULT_SECS: u64 = 30;
/// Virtual time the cluster gets to elect leaders and create the keyspace before clients start.
const SETUP: Duration = Duration::from_secs(5);
/// Virtual time after the faults are healed before the final reads.
const SETTLE: Duration = Duration::from_secs(8);
/// Steps between two checks of the internal invariants.
const INVARIANT_EVERY: u64 = 50;

/// What a seed decides.
#[derive(Clone, Debug)]
pub struct Plan {
    pub seed: u64,
    pub nodes: usize,
    pub clients: usize,
    pub keys: usize,
    /// Virtual time with faults.
    pub safety: Duration,
    pub clock_offsets_ms: Vec<i64>,
    /// (virtual ms since clients started, fault), in time order.
    pub faults: Vec<(u64, Fault)>,
    pub workload: Workload,
    /// A node beyond the founders (`n{nodes + 1}`) starts with them, joins the cluster a fifth
    /// into the faults (`POST /v1/admin/nodes`: shard replicas move to it, or a leaderless ring
    /// grows to it, while the faults run) and is removed again after three fifths (a quarter
    /// of the plans without a cache or expiring hints).
    pub joiner: bool,
}

/// The keyspace and what the clients do.
#[derive(Clone, Debug, PartialEq)]
pub struct Workload {
    pub shards: u32,
    pub replicas: usize,
    /// Out of 100 operations: writes, then deletes; the rest are reads.
    pub writes_pct: u32,
    pub deletes_pct: u32,
    /// A weight per entry of `LEVELS`: how often reads pick that level.
    pub level_weights: Vec<u32>,
    /// Upper bound of a client's pause between two operations.
    pub think_ms_max: u64,
    /// A leaderless keyspace instead of an ordered one: reads at `eventual` with a random `r`,
    /// updates with a random `w`, judged by the leaderless checkers.
    pub leaderless: bool,
    /// Leaderless plans whose every node is a replica of every key: a hint window and a
    /// tombstone grace (ms) short enough that hints expire and tombstones are collected within
    /// the run (the nodes' wait cap drops to [`SHORT_WAIT_CAP_MS`] to allow it). `None`: the
    /// defaults (hours).
    pub windows: Option<(u64, u64)>,
    /// A leaderless keyspace of counters (`conflict: "counter"`): adds instead of writes and
    /// deletes, reads at `eventual`, judged by the counter checkers.
    pub counter: bool,
    /// A leaderless keyspace of sets (`conflict: "set"`): writes add a member (or remove one,
    /// a third of them), deletes remove one, reads at `eventual`, judged by the set checkers.
    pub set: bool,
    /// A leaderless keyspace of siblings (`conflict: "siblings"`): writes and deletes without
    /// a context (each superseding the session's last write), reads of every value at
    /// `eventual`, judged by the siblings checkers.
    pub siblings: bool,
    /// Ordered plans: a `tunekv cache` on host `cache`, which half of the clients' operations
    /// go through (recorded with node `cache`), judged by the same checkers; `cache_bugs` are
    /// its injected bugs.
    pub cache: bool,
    pub cache_bugs: tunekv_cache::CacheBugs,
    /// Ordered plans: a backup client streams shard backups from random nodes through the
    /// faults, recorded as strong reads (`crate::backup`).
    pub backups: bool,
}

/// The members a set plan's updates draw from (few, so adds and removes meet).
pub const SET_MEMBERS: u32 = 4;

/// The wait cap of nodes in plans with short leaderless windows.
pub const SHORT_WAIT_CAP_MS: u64 = 1_500;

impl Workload {
    /// A read level, by weight.
    fn level(&self, rng: &mut StdRng) -> &'static str {
        let total: u32 = self.level_weights.iter().sum();
        let mut pick = rng.gen_range(0..total.max(1));
        for (level, w) in LEVELS.iter().zip(&self.level_weights) {
            if pick < *w {
                return level;
            }
            pick -= w;
        }
        LEVELS[0]
    }
}

#[derive(Clone, Debug, PartialEq)]
pub enum Fault {
    Partition(usize, usize),
    PartitionOneway(usize, usize),
    Hold(usize, usize),
    Crash {
        node: usize,
        keep_unsynced: f64,
    },
    ClockJump {
        node: usize,
        offset_ms: i64,
    },
    LatencySpike {
        a: usize,
        b: usize,
        ms: u64,
    },
    /// The cache's messages to and from every node held until the heal (it is cut off; what
    /// was held is delivered then, in order, as TCP would).
    HoldCache,
    Loss {
        rate: f64,
    },
    /// Ends every fault above: repairs links, restarts crashed nodes, resets clocks.
    Heal,
}

impl Plan {
    /// This plan with a `tunekv cache` in front of the nodes (ordered plans; a leaderless
    /// plan is returned unchanged): half of the clients' operations go through it, and every
    /// third fault episode cuts the cache off instead.
    pub fn with_cache(mut self) -> Plan {
        if self.workload.leaderless {
            return self;
        }
        self.workload.cache = true;
        // The cache follows the feeds of the founding nodes only.
        self.joiner = false;
        let mut nth = 0;
        for (_, fault) in self.faults.iter_mut() {
            if *fault == Fault::Heal {
                continue;
            }
            nth += 1;
            if nth % 3 == 0 {
                *fault = Fault::HoldCache;
            }
        }
        self
    }

    /// Fault episodes scheduled (each fault, before its heal).
    pub fn episodes(&self) -> usize {
        self.faults
            .iter()
            .filter(|(_, f)| *f != Fault::Heal)
            .count()
    }

    pub fn of(seed: u64, safety: Duration) -> Plan {
        let mut rng = StdRng::seed_from_u64(seed);
        let nodes = if rng.gen_bool(0.7) { 3 } else { 5 };
        let clients = rng.gen_range(2..=4);
        let keys = rng.gen_range(2..=6);
        let clock_offsets_ms = (0..nodes).map(|_| rng.gen_range(-200..=200)).collect();
        let mut faults = Vec::new();
        let total = safety.as_millis() as u64;
        let mut t = rng.gen_range(500..3000);
        // Episodes: a fault, some time under it, a heal, a quiet spell.
        while t + 2000 < total {
            let a = rng.gen_range(0..nodes);
            let b = (a + rng.gen_range(1..nodes)) % nodes;
            let fault = match rng.gen_range(0..7) {
                0 => Fault::Partition(a, b),
                1 => Fault::PartitionOneway(a, b),
                2 => Fault::Hold(a, b),
                3 => Fault::Crash {
                    node: a,
                    keep_unsynced: rng.gen_range(0.0..1.0),
                },
                4 => Fault::ClockJump {
                    node: a,
                    offset_ms: rng.gen_range(-3000..=3000),
                },
                5 => Fault::LatencySpike {
                    a,
                    b,
                    ms: rng.gen_range(50..800),
                },
                _ => Fault::Loss {
                    rate: rng.gen_range(0.01..0.2),
                },
            };
            faults.push((t, fault));
            t += rng.gen_range(1000..5000);
            faults.push((t.min(total), Fault::Heal));
            t += rng.gen_range(500..3000);
        }
        // The workload has its own stream, so the fields above stay what they were before it
        // was drawn from the seed.
        let mut rng = StdRng::seed_from_u64(seed ^ 0x3017_10ad);
        let mut workload = Workload {
            shards: rng.gen_range(1..=4),
            replicas: if nodes == 5 && rng.gen_bool(0.3) {
                5
            } else {
                3
            },
            writes_pct: rng.gen_range(15..=60),
            deletes_pct: rng.gen_range(0..=10),
            level_weights: LEVELS.iter().map(|_| rng.gen_range(0..=4)).collect(),
            think_ms_max: rng.gen_range(5..=80),
            leaderless: false,
            windows: None,
            counter: false,
            set: false,
            siblings: false,
            cache: false,
            cache_bugs: tunekv_cache::CacheBugs::default(),
            backups: false,
        };
        // Drawn last, from its own stream, so the fields above stay what they were.
        let mut rng = StdRng::seed_from_u64(seed ^ 0x1ead_1e55);
        workload.leaderless = rng.gen_bool(0.3);
        // With a replica on every node a hint is never a write's only copy, so hints may expire
        // (anti-entropy repairs instead) and tombstones be collected while the faults run.
        if workload.leaderless && workload.replicas == nodes {
            let hint = rng.gen_range(1_000..6_000);
            let grace = hint + SHORT_WAIT_CAP_MS + rng.gen_range(500..4_000);
            workload.windows = Some((hint, grace));
        }
        // A third of the leaderless seeds count instead (their own stream again).
        workload.counter =
            workload.leaderless && StdRng::seed_from_u64(seed ^ 0xc0_117e).gen_bool(0.33);
        // A quarter of the others keep sets.
        workload.set = workload.leaderless
            && !workload.counter
            && StdRng::seed_from_u64(seed ^ 0x5e7_5e75).gen_bool(0.25);
        // And a quarter of the rest keep siblings.
        workload.siblings = workload.leaderless
            && !workload.counter
            && !workload.set
            && StdRng::seed_from_u64(seed ^ 0x51b_1195).gen_bool(0.25);
        // Half of the ordered plans back shards up while the faults run (their own stream).
        workload.backups =
            !workload.leaderless && StdRng::seed_from_u64(seed ^ 0xbac_4a9).gen_bool(0.5);
        // Every level set to weight 0 would leave nothing to read at.
        if workload.level_weights.iter().all(|w| *w == 0) {
            workload.level_weights[0] = 1;
        }
        // Its own stream again.
        // Leaderless plans whose hints may expire keep their ring at the founders (with a
        // fourth node, a hint could be a write's only copy).
        let joiner = (!workload.leaderless || workload.windows.is_none())
            && StdRng::seed_from_u64(seed ^ 0x701_4e5).gen_bool(0.25);
        Plan {
            seed,
            nodes,
            clients,
            keys,
            safety,
            clock_offsets_ms,
            faults,
            workload,
            joiner,
        }
    }
}

/// What a run produced.
pub struct Outcome {
    pub plan: Plan,
    /// xxh3 of the trace: equal for two runs of one seed.
    pub trace_hash: u64,
    pub trace: String,
    pub ops: usize,
    pub virtual_secs: f64,
    /// Checker rows that failed, and internal invariants that broke, as printable lines.
    pub violations: Vec<String>,
    /// Client operations that never completed in the liveness phase.
    pub unfinished: usize,
    /// Shard backups that streamed whole and were judged as reads.
    pub backups: usize,
    /// What the internal invariants looked at.
    pub checked: Checked,
}

fn host(i: usize) -> String {
    format!("n{}", i + 1)
}

/// The simulated cluster's secret: nodes sign session tokens with it, the invariants check them.
const CLUSTER_SECRET: &str = "tunekv-sim-cluster-secret-0123456789";

/// Node `i`'s config: a founder's peers are the founders; the joiner's (`i == plan.nodes`) are
/// the founders and itself.
fn config(plan: &Plan, i: usize, seed: u64, bugs: &tunekv_node::Bugs) -> NodeConfig {
    let peers: Vec<PeerConfig> = (0..plan.nodes.max(i + 1))
        .map(|j| PeerConfig {
            id: j as u64 + 1,
            raft: format!("{}:{RAFT_PORT}", host(j)),
            http: format!("{}:{HTTP_PORT}", host(j)),
        })
        .collect();
    let mut c = NodeConfig::local_cluster(
        std::path::Path::new("/nonexistent"),
        &vec![(0, 0, 0); plan.nodes.max(i + 1)],
        true,
        CLUSTER_SECRET,
    )
    .remove(i);
    c.http = peers[i].http.clone();
    c.raft = peers[i].raft.clone();
    c.resp = None;
    c.peers = peers;
    c.rng_seed = Some(seed);
    c.bugs = *bugs;
    // Snapshots often enough that replicas build them, purge their logs, and ones that were
    // cut off or crashed catch up by installing a leader's (issue 21: streamed in chunks).
    let mut r = StdRng::seed_from_u64(seed ^ 0x5a95);
    c.raft_timing.snapshot_logs_since_last = r.gen_range(5..=40);
    c.raft_timing.snapshot_logs_kept = r.gen_range(0..=5);
    if let Some((hint, grace)) = plan.workload.windows {
        c.wait_ms_cap = SHORT_WAIT_CAP_MS;
        c.read_wait_ms_default = c.read_wait_ms_default.min(SHORT_WAIT_CAP_MS);
        c.write_wait_ms_default = c.write_wait_ms_default.min(SHORT_WAIT_CAP_MS);
        c.leaderless.hint_window_ms = hint;
        c.leaderless.tombstone_grace_ms = grace;
    }
    c
}

type Nodes = Arc<Mutex<BTreeMap<usize, Arc<Node>>>>;

/// Runs one seed to the end.
pub fn run(plan: Plan, bugs: &tunekv_node::Bugs) -> Outcome {
    let seed = plan.seed;
    tunekv_raft::runtime::seed_thread(Some(seed ^ 0x5eed));
    let mut sim = turmoil::Builder::new()
        .rng_seed(seed)
        .epoch(std::time::UNIX_EPOCH + Duration::from_secs(1_800_000_000))
        .simulation_duration(plan.safety + SETUP + SETTLE + Duration::from_secs(60))
        .tick_duration(Duration::from_millis(2))
        .min_message_latency(Duration::from_micros(200))
        .max_message_latency(Duration::from_millis(5))
        .tcp_capacity(1 << 16)
        .build();
    let nodes: Nodes = Arc::new(Mutex::new(BTreeMap::new()));
    // When each node's current process started (virtual ns): its metrics count from then.
    let starts: Arc<Mutex<BTreeMap<usize, u64>>> = Arc::new(Mutex::new(BTreeMap::new()));
    let mut disks = Vec::new();
    let mut clocks = Vec::new();
    let mut node_rng = StdRng::seed_from_u64(seed ^ 0xd15c);
    for i in 0..plan.nodes + usize::from(plan.joiner) {
        let disk = Arc::new(MemStorage::new());
        let clock = Arc::new(SimClock::new(
            plan.clock_offsets_ms.get(i).copied().unwrap_or(0),
        ));
        // The joiner is never crashed nor skewed: faults pick founders.
        if i < plan.nodes {
            disks.push(disk.clone());
            clocks.push(clock.clone());
        }
        let boots = Arc::new(AtomicU64::new(0));
        let base_seed: u64 = node_rng.gen();
        let (plan, bugs, nodes, starts) = (plan.clone(), *bugs, nodes.clone(), starts.clone());
        sim.host(host(i), move || {
            let cfg = config(
                &plan,
                i,
                base_seed + boots.fetch_add(1, Ordering::Relaxed),
                &bugs,
            );
            let (disk, clock, nodes, starts) =
                (disk.clone(), clock.clone(), nodes.clone(), starts.clone());
            async move {
                starts
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .insert(i, crate::client::now_ns());
                let node = Node::start(cfg, Arc::new(SimTransport), disk, clock)
                    .await
                    .map_err(|e| format!("node {} cannot start: {e}", i + 1))?;
                nodes
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .insert(i, node.clone());
                let listener = turmoil::net::TcpListener::bind(("0.0.0.0", HTTP_PORT)).await?;
                axum::serve(HttpListener(listener), tunekv_api::router(node)).await?;
                Ok(())
            }
        });
    }

    // The cache, in front of every node.
    if plan.workload.cache {
        let (nodes, bugs) = (plan.nodes, plan.workload.cache_bugs);
        sim.host(crate::cache::CACHE_HOST, move || async move {
            crate::cache::serve(nodes, CLUSTER_SECRET, bugs).await
        });
    }

    if plan.joiner {
        let plan = plan.clone();
        sim.client("m", async move {
            join_and_leave(&plan).await;
            Ok(())
        });
    }

    // Clients: each runs until the safety phase ends, then reads every key in the final phase.
    let history: Arc<Mutex<Vec<Operation>>> = Arc::new(Mutex::new(Vec::new()));
    let heal_ns = (SETUP + plan.safety + SETTLE).as_nanos() as u64;
    let unfinished = Arc::new(AtomicU64::new(plan.clients as u64));
    // Each client's latest session token, for the invariants.
    let tokens: Arc<Mutex<Vec<String>>> = Arc::new(Mutex::new(vec![String::new(); plan.clients]));
    // Ordered plans: a watcher follows the change feed, moving between nodes by its cursor.
    let watched: Arc<Mutex<Option<Followed>>> = Arc::new(Mutex::new(None));
    if !plan.workload.leaderless {
        let (watched, nodes, shards) = (watched.clone(), plan.nodes, plan.workload.shards);
        sim.client("w", async move {
            let out =
                follow_feed(nodes, shards, heal_ns + WATCH_AFTER_HEAL.as_nanos() as u64).await;
            *watched.lock().unwrap_or_else(|p| p.into_inner()) = Some(out);
            Ok(())
        });
    }
    // Last-writer-wins leaderless plans: a watcher of every node's stored versions.
    let stored: Arc<Mutex<Option<StoredConsumer>>> = Arc::new(Mutex::new(None));
    let w = &plan.workload;
    if w.leaderless && !w.counter && !w.set && !w.siblings {
        let (stored, nodes) = (stored.clone(), plan.nodes);
        sim.client("w", async move {
            let out = follow_stored(nodes, heal_ns + WATCH_AFTER_HEAL.as_nanos() as u64).await;
            *stored.lock().unwrap_or_else(|p| p.into_inner()) = Some(out);
            Ok(())
        });
    }
    // Ordered plans with backups: shard backups from random nodes until the faults end.
    let backups = Arc::new(AtomicU64::new(0));
    if plan.workload.backups && !plan.workload.leaderless {
        let (history, backups) = (history.clone(), backups.clone());
        let (nodes, shards, keys) = (plan.nodes, plan.workload.shards, plan.keys);
        let end = (SETUP + plan.safety).as_nanos() as u64;
        sim.client("b", async move {
            tokio::time::sleep(SETUP).await;
            let n = crate::backup::run(seed, nodes, shards, keys, end, history).await;
            backups.store(n as u64, Ordering::Relaxed);
            Ok(())
        });
    }
    let mut client_rng = StdRng::seed_from_u64(seed ^ 0xc1);
    for c in 0..plan.clients {
        let mut rng = StdRng::seed_from_u64(client_rng.gen());
        // Its own stream: plans without a cache draw exactly what they drew before.
        let mut via_cache_rng = StdRng::seed_from_u64(seed ^ 0xcac4e ^ c as u64);
        let (history, unfinished, tokens) = (history.clone(), unfinished.clone(), tokens.clone());
        let plan = plan.clone();
        sim.client(format!("c{}", c + 1), async move {
            if c == 0 {
                create_keyspace(&plan).await?;
            } else {
                tokio::time::sleep(SETUP).await;
            }
            let end = (SETUP + plan.safety).as_nanos() as u64;
            let mut token = String::new();
            let mut n = 0u64;
            while client::now_ns() < end {
                let key = format!("k{}", rng.gen_range(0..plan.keys));
                let node = rng.gen_range(0..plan.nodes);
                let w = &plan.workload;
                let roll = rng.gen_range(0..100);
                let (kind, value) = if roll < w.writes_pct {
                    n += 1;
                    (OpKind::Write, Some(format!("c{c}-{n}")))
                } else if roll < w.writes_pct + w.deletes_pct {
                    (OpKind::Delete, None)
                } else {
                    (OpKind::Read, None)
                };
                let (level, quorum) = if w.leaderless {
                    let quorum = match kind {
                        OpKind::Read => ["one", "quorum", "all"][rng.gen_range(0..3)],
                        _ => ["one", "quorum", "all", "any"][rng.gen_range(0..4)],
                    };
                    let level = ["eventual", "read_your_writes", "monotonic_reads", "session"]
                        [rng.gen_range(0..4)];
                    (level, Some(quorum))
                } else if kind == OpKind::Read {
                    (w.level(&mut rng), None)
                } else {
                    ("strong", None)
                };
                // On a counter keyspace, writes add 1 to 9 and deletes subtract 1 to 5.
                let (kind, value) = match (w.counter, kind) {
                    (true, OpKind::Write) => (OpKind::Add, Some(rng.gen_range(1..=9).to_string())),
                    (true, OpKind::Delete) => {
                        (OpKind::Add, Some((-rng.gen_range(1..=5)).to_string()))
                    }
                    _ => (kind, value),
                };
                // On a set keyspace, writes add a member (a third remove one), deletes remove.
                let (kind, value) = match (w.set, kind) {
                    (true, OpKind::Write | OpKind::Delete) => {
                        let member = format!("m{}", rng.gen_range(0..SET_MEMBERS));
                        let add = kind == OpKind::Write && rng.gen_range(0..3) > 0;
                        let kind = if add { OpKind::Sadd } else { OpKind::Srem };
                        (kind, Some(member))
                    }
                    _ => (kind, value),
                };
                let target = if w.cache && via_cache_rng.gen_bool(0.5) {
                    crate::cache::CACHE_HOST.to_string()
                } else {
                    host(node)
                };
                let op = client::operate_on(
                    c as u64, &target, kind, &key, value, level, quorum, &mut token, w.siblings,
                )
                .await;
                history.lock().unwrap_or_else(|p| p.into_inner()).push(op);
                // The invariants check ordered keyspaces' tokens (positions in Raft logs).
                if !w.leaderless {
                    tokens.lock().unwrap_or_else(|p| p.into_inner())[c] = token.clone();
                }
                tokio::time::sleep(Duration::from_millis(
                    rng.gen_range(1..plan.workload.think_ms_max.max(2)),
                ))
                .await;
            }
            // Liveness: after the heal, every read must complete, on every node.
            let heal = Duration::from_nanos(heal_ns);
            if let Some(wait) = heal.checked_sub(turmoil::sim_elapsed().unwrap_or_default()) {
                tokio::time::sleep(wait).await;
            }
            for k in 0..plan.keys {
                for node in 0..plan.nodes {
                    if plan.workload.leaderless {
                        let op = client::operate(
                            c as u64,
                            node,
                            OpKind::Read,
                            &format!("k{k}"),
                            None,
                            "eventual",
                            Some("one"),
                            &mut String::new(),
                            plan.workload.siblings,
                        )
                        .await;
                        history.lock().unwrap_or_else(|p| p.into_inner()).push(op);
                        continue;
                    }
                    for level in ["eventual", "strong"] {
                        let op = client::operate(
                            c as u64,
                            node,
                            OpKind::Read,
                            &format!("k{k}"),
                            None,
                            level,
                            None,
                            &mut token,
                            false,
                        )
                        .await;
                        history.lock().unwrap_or_else(|p| p.into_inner()).push(op);
                    }
                }
            }
            unfinished.fetch_sub(1, Ordering::Relaxed);
            Ok(())
        });
    }

    // The driver: faults at their times, invariants every few steps.
    let mut trace = String::new();
    let _ = writeln!(trace, "{{\"seed\":{seed},\"plan\":\"{:?}\"}}", plan);
    let key = tunekv_core::SessionKey::new(CLUSTER_SECRET.as_bytes()).expect("a valid secret");
    let mut invariants = Invariants::new(key);
    let mut pending_faults = plan.faults.clone();
    pending_faults.reverse();
    let mut crashed: Vec<usize> = Vec::new();
    let mut steps = 0u64;
    let result = loop {
        let now_ms = sim.elapsed().as_millis() as u64;
        while let Some((at, _)) = pending_faults.last() {
            if SETUP.as_millis() as u64 + at > now_ms {
                break;
            }
            let (_, fault) = pending_faults.pop().expect("a fault");
            let _ = writeln!(trace, "{{\"ms\":{now_ms},\"fault\":\"{fault:?}\"}}");
            apply(
                &mut sim,
                &plan,
                &fault,
                &disks,
                &clocks,
                &mut crashed,
                &nodes,
            );
        }
        match sim.step() {
            Ok(true) => break Ok(()),
            Ok(false) => {}
            Err(e) => break Err(e.to_string()),
        }
        steps += 1;
        if steps.is_multiple_of(INVARIANT_EVERY) {
            sample(&nodes, &crashed, &tokens, &mut invariants);
        }
    };
    sample(&nodes, &crashed, &tokens, &mut invariants);
    // What each running node's /metrics says of the reads it served (ordered plans).
    let node_metrics: Vec<tunekv_check::metrics::NodeMetrics> = if plan.workload.leaderless {
        Vec::new()
    } else {
        let starts = starts.lock().unwrap_or_else(|p| p.into_inner()).clone();
        nodes
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .filter(|(i, _)| !crashed.contains(i))
            .map(|(i, node)| tunekv_check::metrics::NodeMetrics {
                node: host(*i),
                since_ns: starts.get(i).copied(),
                levels: tunekv_check::metrics::parse_served(
                    &node.metrics_text(),
                    crate::client::KEYSPACE,
                ),
            })
            .collect()
    };
    let (mut violations, checked) = invariants.finish();
    if let Err(e) = result {
        violations.push(format!("simulation: {e}"));
    }
    let virtual_secs = sim.elapsed().as_secs_f64();
    drop(sim);
    tunekv_raft::runtime::seed_thread(None);

    let mut ops = std::mem::take(&mut *history.lock().unwrap_or_else(|p| p.into_inner()));
    ops.sort_by_key(|o| (o.invoke_ns, o.client));
    for op in &ops {
        let _ = writeln!(
            trace,
            "{}",
            serde_json::to_string(op).unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"))
        );
    }
    let count = ops.len();
    if !plan.workload.leaderless {
        let writes = tunekv_check::feed::acknowledged(&ops);
        match watched.lock().unwrap_or_else(|p| p.into_inner()).take() {
            None => violations.push("liveness: the feed watcher never finished".into()),
            Some((consumer, problem)) => {
                let top = tunekv_check::feed::top(&writes);
                // Judged when some node could take the watch (it holds every shard).
                let watched_at_all = !consumer.start.is_empty();
                if let Some(p) = problem {
                    violations.push(format!(
                        "[feed / watch reached every acknowledged write] {p}"
                    ));
                } else if watched_at_all && !consumer.reached_all(&top) {
                    violations.push(format!(
                        "[feed / watch reached every acknowledged write] after the heal the feed \
                         reached {:?}, the acknowledged writes {top:?}",
                        consumer.reached
                    ));
                }
                let report = consumer.check(&writes, &tunekv_check::Limits::default());
                for v in report.violations() {
                    violations.push(format!("[{} / {}] {}", v.level, v.property, v.message));
                }
            }
        }
    }
    if let Some(consumer) = stored.lock().unwrap_or_else(|p| p.into_inner()).take() {
        let writes = tunekv_check::feed::acknowledged_versions(&ops);
        if consumer.resumes > 0 || !consumer.events.is_empty() {
            if !consumer.covers(&writes) {
                violations.push(
                    "[leaderless feed / watch reached every acknowledged write] after the heal \
                     some acknowledged versions were never delivered"
                        .into(),
                );
            }
            let limits = tunekv_check::Limits::default();
            let report = tunekv_check::feed::check_leaderless(&consumer.events, &writes, &limits);
            for v in report.violations() {
                violations.push(format!("[{} / {}] {}", v.level, v.property, v.message));
            }
        }
    }
    let report = if plan.workload.counter {
        Ok(tunekv_check::counter::check(
            &ops,
            Some(heal_ns),
            &tunekv_check::Limits::default(),
        ))
    } else if plan.workload.set {
        Ok(tunekv_check::set::check(
            &ops,
            Some(heal_ns),
            &tunekv_check::Limits::default(),
        ))
    } else if plan.workload.siblings {
        Ok(tunekv_check::siblings::check(
            &ops,
            Some(heal_ns),
            &tunekv_check::Limits::default(),
        ))
    } else if plan.workload.leaderless {
        Ok(tunekv_check::leaderless::check(
            &ops,
            plan.workload.replicas as u32,
            Some(heal_ns),
            &tunekv_check::Limits::default(),
        ))
    } else {
        let metrics_row =
            tunekv_check::metrics::check(&ops, &node_metrics, &tunekv_check::Limits::default());
        tunekv_check::check(
            &tunekv_check::CheckInput {
                ops,
                heal_ns: Some(heal_ns),
            },
            &tunekv_check::Limits::default(),
        )
        .map(|mut r| {
            r.rows.push(metrics_row);
            r
        })
    };
    match report {
        Ok(report) => {
            for v in report.violations() {
                violations.push(format!("[{} / {}] {}", v.level, v.property, v.message));
            }
        }
        Err(e) => violations.push(format!("history rejected: {e}")),
    }
    let unfinished = unfinished.load(Ordering::Relaxed) as usize;
    if unfinished > 0 {
        violations.push(format!(
            "liveness: {unfinished} clients never finished their final reads"
        ));
    }
    Outcome {
        trace_hash: xxhash_rust::xxh3::xxh3_64(trace.as_bytes()),
        trace,
        plan,
        ops: count,
        virtual_secs,
        violations,
        unfinished,
        backups: backups.load(Ordering::Relaxed) as usize,
        checked,
    }
}

/// What the feed watcher received, and why it stopped short, if it did.
type Followed = (Consumer, Option<String>);

/// The watcher moves to another node this often (resuming from its cursor).
const WATCH_MOVE_EVERY: Duration = Duration::from_secs(3);
/// The watcher stops this long after the heal (every write was made before it).
const WATCH_AFTER_HEAL: Duration = Duration::from_secs(4);

/// Follows the keyspace's change feed until virtual time `end_ns`, as a careful consumer:
/// moving to the next node every few seconds and whenever its node breaks the stream, resuming
/// from its cursor. `Some` problem: its cursor's changes were gone from every node. A node
/// watches a keyspace only if it holds a replica of every shard; with none (more nodes than
/// replicas), there is nothing to judge: the problem is `None` and nothing was received.
async fn follow_feed(nodes: usize, shards: u32, end_ns: u64) -> Followed {
    tokio::time::sleep(SETUP).await;
    let mut c = Consumer::new(shards);
    let mut node = 0;
    // Nodes in a row that no longer hold the changes after the cursor (a restarted node's
    // history starts at its snapshot): all of them is a gap no consumer could close.
    let mut compacted = 0;
    while client::now_ns() < end_ns {
        match client::watch(&host(node), c.cursor.as_deref()).await {
            Ok(mut stream) => {
                compacted = 0;
                c.opened();
                let opened = client::now_ns();
                while client::now_ns() < end_ns
                    && client::now_ns() - opened < WATCH_MOVE_EVERY.as_nanos() as u64
                {
                    match tokio::time::timeout(Duration::from_millis(500), stream.next()).await {
                        Err(_) => {}
                        Ok(None) => break,
                        Ok(Some(client::FeedItem::Change {
                            shard,
                            index,
                            key,
                            value,
                        })) => c.change(shard, index, key, value),
                        Ok(Some(client::FeedItem::Progress {
                            shard,
                            index,
                            cursor,
                        })) => c.progress(shard, index, cursor),
                        // A leaderless keyspace's events: not this plan's.
                        Ok(Some(_)) => break,
                    }
                }
            }
            Err(code) if code == "not_replica" => {
                tokio::time::sleep(Duration::from_millis(200)).await
            }
            Err(code) if code == "cursor_compacted" => {
                compacted += 1;
                if compacted >= nodes {
                    let why = "no node holds the changes after the watcher's cursor any more";
                    return (c, Some(why.into()));
                }
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
        }
        c.broke();
        node = (node + 1) % nodes;
    }
    (c, None)
}

/// Follows a leaderless keyspace's feed until virtual time `end_ns`, as a careful consumer
/// (`StoredConsumer`), moving to the next node every few seconds by its cursor.
async fn follow_stored(nodes: usize, end_ns: u64) -> StoredConsumer {
    tokio::time::sleep(SETUP).await;
    let mut c = StoredConsumer::default();
    let mut node = 0;
    while client::now_ns() < end_ns {
        if let Ok(mut stream) = client::watch(&host(node), c.cursor.as_deref()).await {
            c.opened();
            let opened = client::now_ns();
            while client::now_ns() < end_ns
                && client::now_ns() - opened < WATCH_MOVE_EVERY.as_nanos() as u64
            {
                match tokio::time::timeout(Duration::from_millis(500), stream.next()).await {
                    Err(_) => {}
                    Ok(Some(client::FeedItem::Stored {
                        key,
                        version,
                        value,
                    })) => c.change(key, version, value),
                    Ok(Some(client::FeedItem::NodeProgress { cursor })) => c.progress(cursor),
                    Ok(_) => break,
                }
            }
        } else {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        c.broke();
        node = (node + 1) % nodes;
    }
    c
}

/// The joiner's life: added through the founders in turn (a fifth into the faults), removed
/// again (three fifths in), each retried until it answers its goal or the faults end.
async fn join_and_leave(plan: &Plan) {
    let start = SETUP + plan.safety / 5;
    tokio::time::sleep(start).await;
    let id = plan.nodes + 1;
    let joiner = host(plan.nodes);
    let body = serde_json::json!({
        "id": id,
        "raft": format!("{joiner}:{RAFT_PORT}"),
        "http": format!("{joiner}:{HTTP_PORT}"),
    })
    .to_string();
    let end = (SETUP + plan.safety).as_nanos() as u64;
    let settle = |goal: &'static str, method: &'static str, path: String, body: String| async move {
        let mut n = 0;
        while client::now_ns() < end {
            let via = host(n % plan.nodes);
            n += 1;
            if let Ok(a) = client::request(&via, method, &path, "", body.clone().into_bytes()).await
            {
                if a.status == 200 && String::from_utf8_lossy(&a.body).contains(goal) {
                    return true;
                }
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        false
    };
    if !settle("\"active\"", "POST", "/v1/admin/nodes".into(), body).await {
        return;
    }
    let leave = SETUP + plan.safety * 3 / 5;
    let now = Duration::from_nanos(client::now_ns());
    tokio::time::sleep(leave.saturating_sub(now)).await;
    settle(
        "\"removed\"",
        "DELETE",
        format!("/v1/admin/nodes/{id}"),
        String::new(),
    )
    .await;
}

async fn create_keyspace(plan: &Plan) -> turmoil::Result {
    tokio::time::sleep(Duration::from_secs(2)).await;
    let spec = if plan.workload.leaderless {
        let conflict = if plan.workload.counter {
            "counter"
        } else if plan.workload.set {
            "set"
        } else if plan.workload.siblings {
            "siblings"
        } else {
            "lww"
        };
        serde_json::json!({"mode": "leaderless", "replicas": plan.workload.replicas, "conflict": conflict})
    } else {
        serde_json::json!({"shards": plan.workload.shards, "replicas": plan.workload.replicas, "default_level": "strong"})
    };
    loop {
        let a = client::request(
            "n1",
            "PUT",
            &format!("/v1/keyspaces/{KEYSPACE}"),
            "",
            spec.to_string().into_bytes(),
        )
        .await;
        match a {
            Ok(a) if a.status == 200 || a.status == 201 || a.code() == "keyspace_exists" => break,
            _ => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
    // Give every node time to open its shards.
    if let Some(wait) = SETUP.checked_sub(turmoil::sim_elapsed().unwrap_or_default()) {
        tokio::time::sleep(wait).await;
    }
    Ok(())
}

fn apply(
    sim: &mut turmoil::Sim<'_>,
    plan: &Plan,
    fault: &Fault,
    disks: &[Arc<MemStorage>],
    clocks: &[Arc<SimClock>],
    crashed: &mut Vec<usize>,
    nodes: &Nodes,
) {
    use tunekv_node::clock::Clock;
    // Message faults go through each node's own fault hook (whole RPC messages lost or
    // delayed, as `verify` injects them). turmoil's partitions drop TCP segments, which its TCP
    // never retransmits: a connection would stall for good, which real TCP does not do.
    let live = |i: usize| {
        nodes
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&i)
            .cloned()
    };
    let set_links = |i: usize, edit: &dyn Fn(&mut LinkFaults)| {
        if let Some(node) = live(i) {
            let mut f = node.fault_state();
            edit(&mut f.links);
            let _ = node.set_fault_state(f);
        }
    };
    let id = |i: usize| i as u64 + 1;
    match fault {
        Fault::Partition(a, b) => {
            set_links(*a, &|l| {
                l.drop_to.insert(id(*b));
                l.drop_from.insert(id(*b));
            });
            set_links(*b, &|l| {
                l.drop_to.insert(id(*a));
                l.drop_from.insert(id(*a));
            });
        }
        Fault::PartitionOneway(a, b) => {
            set_links(*a, &|l| {
                l.drop_to.insert(id(*b));
            });
            set_links(*b, &|l| {
                l.drop_from.insert(id(*a));
            });
        }
        // Held segments are delivered, in order, at the heal: TCP-faithful.
        Fault::Hold(a, b) => sim.hold(host(*a), host(*b)),
        Fault::Crash {
            node,
            keep_unsynced,
        } => {
            if crashed.contains(node) {
                return;
            }
            // Cut the host off first, so that its dying connections send nothing. Without
            // this, the messages its dropped tasks send would go out in an order set by tokio's
            // process-wide task ids, which depend on what else the process runs: a seed would
            // replay differently inside a sweep than alone. A machine that loses power sends
            // nothing either; its packets in flight are lost.
            let others: Vec<String> = (0..plan.nodes)
                .filter(|j| j != node)
                .map(host)
                .chain((0..plan.clients).map(|c| format!("c{}", c + 1)))
                .chain(
                    plan.joiner
                        .then(|| [host(plan.nodes), "m".to_string()])
                        .into_iter()
                        .flatten(),
                )
                .chain(
                    plan.workload
                        .cache
                        .then(|| crate::cache::CACHE_HOST.to_string()),
                )
                .collect();
            for other in &others {
                sim.partition(host(*node), other.as_str());
            }
            sim.crash(host(*node));
            for other in &others {
                sim.repair(host(*node), other.as_str());
            }
            nodes.lock().unwrap_or_else(|p| p.into_inner()).remove(node);
            let d = &disks[*node];
            let keep = (d.unsynced() as f64 * keep_unsynced) as usize;
            d.crash(keep);
            crashed.push(*node);
        }
        Fault::ClockJump { node, offset_ms } => {
            clocks[*node].set_offset_ms(plan.clock_offsets_ms[*node] + offset_ms);
        }
        Fault::LatencySpike { a, b, ms } => {
            for n in [*a, *b] {
                set_links(n, &|l| {
                    l.delay_ms = *ms;
                    l.jitter_ms = *ms / 4;
                });
            }
        }
        Fault::Loss { rate } => {
            for n in 0..plan.nodes {
                set_links(n, &|l| l.drop_rate = *rate);
            }
        }
        Fault::HoldCache => {
            for n in 0..plan.nodes {
                sim.hold(crate::cache::CACHE_HOST, host(n));
            }
        }
        Fault::Heal => {
            for a in 0..plan.nodes {
                set_links(a, &|l| *l = LinkFaults::default());
                for b in 0..plan.nodes {
                    if a != b {
                        sim.release(host(a), host(b));
                    }
                }
            }
            if plan.workload.cache {
                for n in 0..plan.nodes {
                    sim.release(crate::cache::CACHE_HOST, host(n));
                }
            }
            for (i, c) in clocks.iter().enumerate() {
                c.set_offset_ms(plan.clock_offsets_ms[i]);
            }
            for node in crashed.drain(..) {
                sim.bounce(host(node));
            }
        }
    }
}

/// Feeds the invariants every live replica's status and every client's token.
fn sample(
    nodes: &Nodes,
    crashed: &[usize],
    tokens: &Mutex<Vec<String>>,
    invariants: &mut Invariants,
) {
    let nodes = nodes.lock().unwrap_or_else(|p| p.into_inner());
    for (i, node) in nodes.iter() {
        if crashed.contains(i) {
            continue;
        }
        for r in node.local_status() {
            invariants.replica(&r);
        }
        let keys = node
            .leaderless_report()
            .keyspaces
            .iter()
            .map(|k| k.keys)
            .sum();
        invariants.ring_keys(*i as u64 + 1, keys);
    }
    for (c, t) in tokens
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .iter()
        .enumerate()
    {
        invariants.token(c, t);
    }
}
