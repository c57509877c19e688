//! `tunekv verify` (DESIGN §7): concurrent clients at every level against real node
//! processes, a seeded fault schedule, a heal phase, then every level's checker over the
//! recorded history. Exit code 1 on any violation.

mod backup;
mod faults;
pub mod resp_client;
mod watcher;
mod workload;

use anyhow::{bail, Context, Result};
pub use faults::FaultKind;
use faults::{heal_all, heal_cache, FaultRunner};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tunekv::local_cluster::LocalCluster;
use tunekv_check::{check, CheckInput, Limits, OpKind, Operation};
use tunekv_client::{Client, Opts};
use workload::{
    Budget, ClientPlan, Protocol, KEYSPACE, KEYSPACE_COUNTER, KEYSPACE_LEADERLESS, KEYSPACE_SET,
    KEYSPACE_SIBLINGS,
};

use crate::targets;
pub use crate::targets::Target;
pub use faults::parse_faults;

/// The levels a run reads at unless `--levels` says otherwise.
pub const LEVELS_DEFAULT: &str =
    "strong,bounded(k=5),bounded(t=500ms),consistent_prefix,read_your_writes,monotonic_reads,session,eventual";

pub struct VerifyOptions {
    pub nodes: u32,
    pub duration: Duration,
    pub ops: Option<u64>,
    pub clients: u32,
    pub keys: u32,
    pub levels: Vec<String>,
    pub faults: Vec<FaultKind>,
    pub seed: Option<u64>,
    pub history: Option<PathBuf>,
    pub cluster: Option<PathBuf>,
    pub dir: Option<PathBuf>,
    /// Server flags for the nodes this run starts (`--bug …` in bug-injection builds).
    pub server_args: Vec<String>,
    /// `--keyspace-mode`: which keyspaces the clients work in.
    pub mode: KeyspaceMode,
    /// `--through-cache`: a `tunekv cache` in front of the cluster; half of the HTTP clients'
    /// operations go through it, and faults kill it and cut it off.
    pub through_cache: bool,
    /// Flags of that cache (`--bug …`).
    pub cache_args: Vec<String>,
    /// How long to wait after healing for the replicas to converge before the final reads.
    pub converge_within: Duration,
}

/// The keyspaces a run works in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeyspaceMode {
    /// An ordered keyspace (Raft shards): clients at every level in `--levels`, over HTTP and
    /// RESP, judged by the ordered checkers.
    Ordered,
    /// A leaderless keyspace: HTTP clients writing at every `w` and reading at every `r`,
    /// judged by the leaderless checkers.
    Leaderless,
    /// Both on the same nodes at once, half the clients in each, each keyspace's operations
    /// judged by its own checkers (a history's leaderless operations are those with a
    /// `quorum`).
    Mixed,
    /// A leaderless keyspace of counters (`conflict: "counter"`): HTTP clients adding and
    /// subtracting at every `w` and reading at every `r`, judged by the counter checkers.
    Counter,
    /// A leaderless keyspace of sets (`conflict: "set"`): HTTP clients adding and removing a
    /// few members at every `w` and reading at every `r`, judged by the set checkers.
    Set,
    /// A leaderless keyspace of siblings (`conflict: "siblings"`): HTTP clients writing with
    /// and without contexts at every `w` and reading every value at every `r`, judged by the
    /// siblings checkers.
    Siblings,
}

impl KeyspaceMode {
    pub fn parse(text: &str) -> Result<KeyspaceMode> {
        match text {
            "ordered" => Ok(KeyspaceMode::Ordered),
            "leaderless" => Ok(KeyspaceMode::Leaderless),
            "mixed" => Ok(KeyspaceMode::Mixed),
            "counter" => Ok(KeyspaceMode::Counter),
            "set" => Ok(KeyspaceMode::Set),
            "siblings" => Ok(KeyspaceMode::Siblings),
            other => bail!(
                "--keyspace-mode {other:?}: verify runs ordered, leaderless, mixed (both at once), \
                 counter, set or siblings"
            ),
        }
    }

    fn ordered(self) -> bool {
        matches!(self, KeyspaceMode::Ordered | KeyspaceMode::Mixed)
    }

    /// A leaderless keyspace of last-writer-wins values.
    fn leaderless(self) -> bool {
        matches!(self, KeyspaceMode::Leaderless | KeyspaceMode::Mixed)
    }

    fn counter(self) -> bool {
        self == KeyspaceMode::Counter
    }

    fn set(self) -> bool {
        self == KeyspaceMode::Set
    }

    fn siblings(self) -> bool {
        self == KeyspaceMode::Siblings
    }

    /// Whether client `i` works in the leaderless keyspace.
    fn leaderless_client(self, i: u32) -> bool {
        match self {
            KeyspaceMode::Ordered => false,
            KeyspaceMode::Leaderless
            | KeyspaceMode::Counter
            | KeyspaceMode::Set
            | KeyspaceMode::Siblings => true,
            KeyspaceMode::Mixed => i % 2 == 1,
        }
    }
}

/// The history, with every time from one monotonic clock: each operation and, for a failed
/// one, its error (written to the history file as `error`; the checkers do not need it).
pub struct Recorder {
    t0: Instant,
    ops: Mutex<Vec<(Operation, Option<String>)>>,
}

impl Recorder {
    fn new() -> Recorder {
        Recorder {
            t0: Instant::now(),
            ops: Mutex::new(Vec::new()),
        }
    }

    pub fn now_ns(&self) -> u64 {
        u64::try_from(self.t0.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }

    pub fn push(&self, op: Operation, error: Option<String>) {
        self.ops
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push((op, error));
    }

    fn take(&self) -> Vec<(Operation, Option<String>)> {
        let mut ops = std::mem::take(&mut *self.ops.lock().unwrap_or_else(|p| p.into_inner()));
        ops.sort_by_key(|(o, _)| (o.invoke_ns, o.client));
        ops
    }
}

/// A progress line: a bar on a terminal, a plain line every 10 s elsewhere (CI logs).
struct Progress {
    bar: ProgressBar,
    plain: bool,
}

impl Progress {
    fn new(total: Duration) -> Progress {
        let plain = !std::io::stderr().is_terminal();
        let bar = if plain {
            ProgressBar::with_draw_target(Some(total.as_secs()), ProgressDrawTarget::hidden())
        } else {
            let b = ProgressBar::new(total.as_secs());
            b.set_style(
                ProgressStyle::with_template("{elapsed:>4} [{bar:30}] {pos}/{len}s {msg}")
                    .unwrap_or_else(|_| ProgressStyle::default_bar())
                    .progress_chars("=> "),
            );
            b
        };
        Progress { bar, plain }
    }

    fn say(&self, line: String) {
        if self.plain {
            eprintln!("{line}");
        } else {
            self.bar.println(line);
        }
    }
}

/// Entries between snapshots on the cluster `verify` starts (the default is 5000, more than a
/// run writes to one shard), and entries kept behind each.
const VERIFY_SNAPSHOT_EVERY: u64 = 200;
const VERIFY_SNAPSHOT_KEPT: u64 = 20;

pub async fn run(o: VerifyOptions) -> Result<i32> {
    if o.clients == 0 || o.keys == 0 {
        bail!("--clients and --keys must be at least 1");
    }
    if o.levels.is_empty() {
        bail!("--levels names no level");
    }
    for l in &o.levels {
        tunekv_core::Level::parse(l).map_err(|e| anyhow::anyhow!("--levels: {}", e.message))?;
    }
    let seed = o.seed.unwrap_or_else(rand::random::<u64>);
    println!(
        "tunekv verify: seed {seed} (repeat the fault schedule with --seed {seed}), {} clients, faults {}",
        o.clients,
        faults::list(&o.faults)
    );
    if o.cluster.is_none() {
        println!(
            "its own cluster snapshots every {VERIFY_SNAPSHOT_EVERY} entries (keeping \
             {VERIFY_SNAPSHOT_KEPT}), so lagging replicas catch up from snapshots"
        );
    }

    // The cluster: our own in a temp dir unless --cluster names one. Its nodes snapshot often,
    // so replicas that a fault cut off or killed catch up by installing a leader's snapshot
    // (streamed in chunks) within the run, not only from the log.
    let (targets, cluster, own_dir) = targets::open(
        o.cluster.as_deref(),
        o.nodes,
        o.dir.clone(),
        ("verify", false),
        &o.server_args,
        |cfg| {
            cfg.raft_timing.snapshot_logs_since_last = VERIFY_SNAPSHOT_EVERY;
            cfg.raft_timing.snapshot_logs_kept = VERIFY_SNAPSHOT_KEPT;
        },
    )
    .await?;
    let cache = match (&cluster, o.through_cache) {
        (_, false) => None,
        (None, true) => bail!(
            "--through-cache starts a cache in front of the cluster verify starts; leave out --cluster"
        ),
        (Some(c), true) => {
            let mut args = vec!["--enable-faults".to_string()];
            args.extend(o.cache_args.iter().cloned());
            let http = c
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .spawn_cache(&args)?;
            tunekv::local_cluster::wait_cache(&http, Duration::from_secs(30)).await?;
            println!("cache: http://{http} (half of the HTTP clients' operations go through it)");
            Some(http)
        }
    };
    let result = run_on(&o, seed, Arc::new(targets), cluster.clone(), cache).await;
    if let Some(c) = &cluster {
        c.lock().unwrap_or_else(|p| p.into_inner()).stop_all();
    }
    match (&result, own_dir) {
        (Ok(0), Some(dir)) if o.dir.is_none() => {
            let _ = std::fs::remove_dir_all(dir);
        }
        (_, Some(dir)) => eprintln!("node logs kept in {}", dir.display()),
        _ => {}
    }
    result
}

async fn run_on(
    o: &VerifyOptions,
    seed: u64,
    targets: Arc<Vec<Target>>,
    cluster: Option<Arc<Mutex<LocalCluster>>>,
    cache: Option<String>,
) -> Result<i32> {
    let admin = Client::with_timeout(&targets[0].http, Duration::from_secs(30));
    let replicas = targets.len().min(3) as u32;
    let mut keyspaces = Vec::new();
    if o.mode.ordered() {
        keyspaces.push((
            KEYSPACE,
            serde_json::json!({"shards": 2, "replicas": replicas, "default_level": "strong"}),
        ));
    }
    if o.mode.leaderless() {
        keyspaces.push((
            KEYSPACE_LEADERLESS,
            serde_json::json!({"mode": "leaderless", "replicas": replicas, "conflict": "lww"}),
        ));
    }
    if o.mode.counter() {
        keyspaces.push((
            KEYSPACE_COUNTER,
            serde_json::json!({"mode": "leaderless", "replicas": replicas, "conflict": "counter"}),
        ));
    }
    if o.mode.set() {
        keyspaces.push((
            KEYSPACE_SET,
            serde_json::json!({"mode": "leaderless", "replicas": replicas, "conflict": "set"}),
        ));
    }
    if o.mode.siblings() {
        keyspaces.push((
            KEYSPACE_SIBLINGS,
            serde_json::json!({"mode": "leaderless", "replicas": replicas, "conflict": "siblings"}),
        ));
    }
    for (keyspace, spec) in &keyspaces {
        match admin.create_keyspace(keyspace, spec).await {
            Ok(_) => {}
            Err(e) if e.code() == Some("keyspace_exists") => {}
            Err(e) => bail!("cannot create keyspace {keyspace}: {e}"),
        }
    }
    // Keys of the two keyspaces are named apart, so a mixed history reads unambiguously.
    let keys: Vec<String> = (0..o.keys).map(|i| format!("k{i}")).collect();
    let leaderless_keys: Vec<String> = (0..o.keys).map(|i| format!("l{i}")).collect();
    if o.mode.ordered() {
        wait_writable(&admin, &keys[0]).await?;
    }

    let progress = Arc::new(Progress::new(o.duration));
    let say: Arc<dyn Fn(String) + Send + Sync> = {
        let p = progress.clone();
        Arc::new(move |line| p.say(line))
    };
    let rec = Arc::new(Recorder::new());
    let budget = Arc::new(Budget {
        stop: AtomicBool::new(false),
        ops_left: AtomicU64::new(o.ops.unwrap_or(u64::MAX)),
        done: AtomicU64::new(0),
        refused: AtomicU64::new(0),
    });
    let stop_faults = Arc::new(AtomicBool::new(false));
    let injected = Arc::new(AtomicU64::new(0));
    let runner = FaultRunner {
        targets: targets.clone(),
        cluster: cluster.clone(),
        kinds: o.faults.clone(),
        seed,
        stop: stop_faults.clone(),
        injected: injected.clone(),
        say: say.clone(),
        started: Instant::now(),
        cache: cache.clone(),
    };
    runner.check()?;
    let fault_task = tokio::spawn(runner.run());
    // The ordered keyspace's change feed, followed through the run (judged at the end).
    let (finish_watch, finish_rx) = tokio::sync::watch::channel(None);
    let watcher = o
        .mode
        .ordered()
        .then(|| tokio::spawn(watcher::run(targets.clone(), KEYSPACE, 2, finish_rx)));
    // And the last-writer-wins leaderless keyspace's (each node's stored versions, merged).
    let (finish_stored, finish_stored_rx) = tokio::sync::watch::channel(None);
    let stored_watcher = o.mode.leaderless().then(|| {
        tokio::spawn(watcher::run_leaderless(
            targets.clone(),
            KEYSPACE_LEADERLESS,
            finish_stored_rx,
        ))
    });
    // Backups of the ordered keyspace's shards through the run, judged as strong reads.
    let backups_done = Arc::new(AtomicU64::new(0));
    let stop_backups = Arc::new(AtomicBool::new(false));
    let backups = o.mode.ordered().then(|| {
        tokio::spawn(backup::run(
            targets.clone(),
            2,
            keys.clone(),
            rec.clone(),
            seed,
            stop_backups.clone(),
            backups_done.clone(),
        ))
    });
    let clients: Vec<_> = (0..o.clients)
        .map(|i| {
            let leaderless = o.mode.leaderless_client(i);
            // Ordered clients alternate between HTTP and RESP.
            let nth_ordered = if o.mode == KeyspaceMode::Mixed {
                i / 2
            } else {
                i
            };
            let plan = ClientPlan {
                id: u64::from(i) + 1,
                protocol: if leaderless || nth_ordered % 2 == 0 {
                    Protocol::Http
                } else {
                    Protocol::Resp
                },
                seed: seed.wrapping_mul(31).wrapping_add(u64::from(i)),
                keys: if leaderless {
                    leaderless_keys.clone()
                } else {
                    keys.clone()
                },
                levels: o.levels.clone(),
                leaderless,
                counter: o.mode.counter(),
                set: o.mode.set(),
                siblings: o.mode.siblings(),
                cache: cache.clone().filter(|_| !leaderless),
            };
            tokio::spawn(workload::run_client(
                plan,
                targets.clone(),
                rec.clone(),
                budget.clone(),
            ))
        })
        .collect();

    // The workload phase: until --duration or --ops, with progress.
    let started = Instant::now();
    let mut last_plain = Instant::now();
    while started.elapsed() < o.duration && !clients.iter().all(|c| c.is_finished()) {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let done = budget.done.load(Ordering::Relaxed);
        let rate = done as f64 / started.elapsed().as_secs_f64().max(0.001);
        let msg = format!(
            "{done} ops, {rate:.0} ops/s, {} faults, {} refused",
            injected.load(Ordering::Relaxed),
            budget.refused.load(Ordering::Relaxed)
        );
        progress.bar.set_position(started.elapsed().as_secs());
        progress.bar.set_message(msg.clone());
        if progress.plain && last_plain.elapsed() >= Duration::from_secs(10) {
            eprintln!("[{:>6.1}s] {msg}", started.elapsed().as_secs_f64());
            last_plain = Instant::now();
        }
    }
    budget.stop.store(true, Ordering::Relaxed);
    stop_faults.store(true, Ordering::Relaxed);
    stop_backups.store(true, Ordering::Relaxed);
    for c in clients {
        let _ = c.await;
    }
    if let Some(b) = backups {
        let _ = b.await;
    }
    let _ = fault_task.await;
    progress.bar.finish_and_clear();
    let workload_ops = budget.done.load(Ordering::Relaxed);
    println!(
        "workload: {workload_ops} operations in {:.1}s ({:.0} ops/s), {} faults injected, {} shard \
         backups",
        started.elapsed().as_secs_f64(),
        workload_ops as f64 / started.elapsed().as_secs_f64().max(0.001),
        injected.load(Ordering::Relaxed),
        backups_done.load(Ordering::Relaxed)
    );

    // Heal: every fault cleared, then wait until every node holds the same value of every key.
    println!("healing: clearing every fault and waiting for the nodes to converge ...");
    heal_all(
        &targets,
        cluster.as_ref(),
        !o.faults.is_empty() || o.cluster.is_none(),
    )
    .await?;
    if let Some(http) = &cache {
        heal_cache(http, cluster.as_ref()).await?;
        if let Ok(s) = Client::new(&format!("http://{http}")).cache_status().await {
            println!(
                "cache: {} hits, {} misses, {} coalesced; {} upstream reads, {} read-index probes",
                s["hits"],
                s["misses"],
                s["coalesced"],
                s["upstream"]["reads"],
                s["upstream"]["probes"]
            );
        }
    }
    let converge_started = Instant::now();
    let digested = match o.mode {
        KeyspaceMode::Counter => Some(KEYSPACE_COUNTER),
        KeyspaceMode::Set => Some(KEYSPACE_SET),
        KeyspaceMode::Siblings => Some(KEYSPACE_SIBLINGS),
        KeyspaceMode::Leaderless | KeyspaceMode::Mixed => Some(KEYSPACE_LEADERLESS),
        KeyspaceMode::Ordered => None,
    };
    if let Some(ks) = digested {
        // First, before any read could repair a replica.
        if converge_leaderless(&targets, ks, o.converge_within).await {
            println!(
                "converged: every replica reports the same digest {:.1}s after healing, with no reads",
                converge_started.elapsed().as_secs_f64()
            );
        } else {
            println!(
                "warning: the leaderless replicas did not converge within {:?} \
                 (--converge-within); the final reads will show it",
                o.converge_within
            );
        }
    }
    if o.mode.ordered() && !converge(&targets, &keys, o.converge_within).await {
        println!(
            "warning: the nodes did not converge within {:?} (--converge-within); the final \
             reads will show it",
            o.converge_within
        );
    }
    let heal_ns = rec.now_ns();
    if let Some(ks) = digested {
        final_leaderless_reads(&targets, ks, &leaderless_keys, &rec).await;
    }
    if o.mode.ordered() {
        final_reads(&targets, &keys, &rec).await;
    }

    let recorded = rec.take();
    if let Some(path) = &o.history {
        write_history(path, &recorded)?;
        println!(
            "history: {} operations in {}",
            recorded.len(),
            path.display()
        );
    }
    let ops: Vec<Operation> = recorded.into_iter().map(|(op, _)| op).collect();
    let (leaderless_ops, ordered_ops): (Vec<Operation>, Vec<Operation>) =
        ops.into_iter().partition(|op| match o.mode {
            KeyspaceMode::Ordered => false,
            KeyspaceMode::Leaderless
            | KeyspaceMode::Counter
            | KeyspaceMode::Set
            | KeyspaceMode::Siblings => true,
            KeyspaceMode::Mixed => op.quorum.is_some(),
        });
    // The watcher catches up with the last acknowledged write, then is judged.
    let feed_rows = match watcher {
        None => Vec::new(),
        Some(task) => {
            let writes = tunekv_check::feed::acknowledged(&ordered_ops);
            let _ = finish_watch.send(Some(tunekv_check::feed::top(&writes)));
            let (watched, problem) = task.await?;
            println!(
                "feed: a watcher followed the change feed through the run, resuming from its \
                 cursor {} times on other nodes; {} final events",
                watched.resumes,
                watched.events.len()
            );
            let mut rows = watched.check(&writes, &Limits::default()).rows;
            let reached =
                tunekv_check::feed::reached(tunekv_check::feed::LEVEL, problem, &Limits::default());
            rows.push(reached);
            rows
        }
    };
    let mut feed_rows = feed_rows;
    if let Some(task) = stored_watcher {
        let writes = tunekv_check::feed::acknowledged_versions(&leaderless_ops);
        let _ = finish_stored.send(Some(writes.clone()));
        let (watched, problem) = task.await?;
        println!(
            "leaderless feed: a watcher followed every node's stored versions, resuming from its \
             cursor {} times on other nodes; {} versions delivered",
            watched.resumes,
            watched.events.len()
        );
        let limits = Limits::default();
        feed_rows
            .extend(tunekv_check::feed::check_leaderless(&watched.events, &writes, &limits).rows);
        feed_rows.push(tunekv_check::feed::reached(
            tunekv_check::feed::LEVEL_LEADERLESS,
            problem,
            &limits,
        ));
    }
    // What each node's /metrics says of the reads it served, judged against their receipts.
    let metrics_row = if o.mode.ordered() {
        let nodes = node_metrics(&targets, &rec).await;
        Some(tunekv_check::metrics::check(
            &ordered_ops,
            &nodes,
            &Limits::default(),
        ))
    } else {
        None
    };
    let checked_at = Instant::now();
    let ordered_report = if o.mode.ordered() {
        check(
            &CheckInput {
                ops: ordered_ops,
                heal_ns: Some(heal_ns),
            },
            &Limits::default(),
        )
    } else {
        Ok(tunekv_check::Report { rows: Vec::new() })
    };
    let report = ordered_report.map(|mut report| {
        report.rows.extend(feed_rows);
        report.rows.extend(metrics_row);
        if o.mode.counter() {
            report.rows.extend(
                tunekv_check::counter::check(&leaderless_ops, Some(heal_ns), &Limits::default())
                    .rows,
            );
        }
        if o.mode.set() {
            report.rows.extend(
                tunekv_check::set::check(&leaderless_ops, Some(heal_ns), &Limits::default()).rows,
            );
        }
        if o.mode.siblings() {
            report.rows.extend(
                tunekv_check::siblings::check(&leaderless_ops, Some(heal_ns), &Limits::default())
                    .rows,
            );
        }
        if o.mode.leaderless() {
            report.rows.extend(
                tunekv_check::leaderless::check(
                    &leaderless_ops,
                    replicas,
                    Some(heal_ns),
                    &Limits::default(),
                )
                .rows,
            );
        }
        report
    });
    let report = match report {
        Ok(r) => r,
        Err(e) => {
            // Either the cluster broke a promise the checkers take as given (two acknowledged
            // writes claiming one index) or the recorder is wrong: both fail the run.
            println!("VIOLATIONS FOUND (seed {seed}): the history cannot be judged: {e}");
            return Ok(1);
        }
    };
    println!("checked in {:.1}s\n", checked_at.elapsed().as_secs_f64());
    println!("{}", report.table());
    if report.has_violations() {
        println!("VIOLATIONS FOUND (seed {seed})");
        Ok(1)
    } else {
        println!("no violations (seed {seed})");
        Ok(0)
    }
}

/// Each node's served-staleness histograms of the ordered keyspace, and since when (on the
/// history's clock) the process that counted them has been running: its start is `now − its
/// monotonic clock`, less a margin for the round trip. A node that cannot be asked is unknown.
async fn node_metrics(
    targets: &[targets::Target],
    rec: &Recorder,
) -> Vec<tunekv_check::metrics::NodeMetrics> {
    const MARGIN_NS: u64 = 200_000_000;
    let mut out = Vec::new();
    for (i, t) in targets.iter().enumerate() {
        let c = tunekv_client::Client::with_timeout(&t.http, Duration::from_secs(5));
        let before = rec.now_ns();
        let (clock, text) = (c.clock().await, c.metrics_text().await);
        let since_ns = match (&clock, &text) {
            (Ok((_, mono_us)), Ok(_)) => Some(
                before
                    .saturating_sub(u64::try_from(*mono_us).unwrap_or(0).saturating_mul(1000))
                    .saturating_add(MARGIN_NS),
            ),
            _ => None,
        };
        out.push(tunekv_check::metrics::NodeMetrics {
            node: format!("n{}", i + 1),
            since_ns,
            levels: text
                .map(|t| tunekv_check::metrics::parse_served(&t, KEYSPACE))
                .unwrap_or_default(),
        });
    }
    out
}

fn write_history(path: &PathBuf, ops: &[(Operation, Option<String>)]) -> Result<()> {
    let file =
        std::fs::File::create(path).with_context(|| format!("cannot create {}", path.display()))?;
    let mut w = std::io::BufWriter::new(file);
    for (op, error) in ops {
        let mut line = serde_json::to_value(op)?;
        line["error"] = serde_json::json!(error);
        serde_json::to_writer(&mut w, &line)?;
        w.write_all(b"\n")?;
    }
    w.flush()?;
    Ok(())
}

/// Waits until the keyspace's shards take writes (leaders elected).
async fn wait_writable(c: &Client, key: &str) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match c
            .get(
                KEYSPACE,
                key.as_bytes(),
                &Opts::level("strong").wait_ms(2000),
            )
            .await
        {
            Ok(_) => return Ok(()),
            Err(e) if Instant::now() > deadline => {
                bail!("keyspace {KEYSPACE} is not readable: {e}")
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
}

/// True once every node returns the same value of every key at `eventual` (and has the
/// newest commit: a strong read through it agrees).
async fn converge(targets: &[Target], keys: &[String], timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    let clients: Vec<Client> = targets
        .iter()
        .map(|t| Client::with_timeout(&t.http, Duration::from_secs(3)))
        .collect();
    while Instant::now() < deadline {
        let mut same = true;
        'keys: for k in keys {
            let Ok(strong) = clients[0]
                .get(KEYSPACE, k.as_bytes(), &Opts::level("strong").wait_ms(2000))
                .await
            else {
                same = false;
                break;
            };
            for c in &clients {
                match c
                    .get(KEYSPACE, k.as_bytes(), &Opts::level("eventual"))
                    .await
                {
                    Ok(r) if r.value == strong.value => {}
                    _ => {
                        same = false;
                        break 'keys;
                    }
                }
            }
        }
        if same {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    false
}

/// True once every node reports the same digest of the leaderless keyspace (hints delivered,
/// anti-entropy done), with no client reads.
async fn converge_leaderless(targets: &[Target], ks: &str, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        let digests = crate::targets::digests(targets, ks).await;
        if digests.iter().all(|d| d.is_some() && *d == digests[0]) {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    false
}

/// After healing on a leaderless keyspace: every key read at r=one on every node.
async fn final_leaderless_reads(targets: &[Target], ks: &str, keys: &[String], rec: &Recorder) {
    for (i, t) in targets.iter().enumerate() {
        let c = Client::with_timeout(&t.http, Duration::from_secs(10));
        for k in keys {
            let invoke_ns = rec.now_ns();
            let opts = Opts::default().r("one").wait_ms(5000);
            // (ok, value, version, error); a siblings read records every value as JSON.
            let (ok, value, version, error) = if ks == KEYSPACE_SIBLINGS {
                match c.siblings(ks, k.as_bytes(), &opts).await {
                    Ok(r) => {
                        let values: Vec<String> = r
                            .siblings
                            .iter()
                            .map(|v| v.as_str().map_or_else(|| v.to_string(), str::to_string))
                            .collect();
                        let values = serde_json::json!(values).to_string();
                        (Some(true), Some(values), None, None)
                    }
                    Err(e) => (Some(false), None, None, Some(e.to_string())),
                }
            } else {
                match c.get(ks, k.as_bytes(), &opts).await {
                    Ok(r) => (
                        Some(true),
                        r.value.map(|v| {
                            tunekv_check::set::history_members(&v)
                                .unwrap_or_else(|| String::from_utf8_lossy(&v).into_owned())
                        }),
                        r.receipt.quorum_field("version").map(str::to_string),
                        None,
                    ),
                    Err(e) => (Some(false), None, None, Some(e.to_string())),
                }
            };
            let complete_ns = rec.now_ns();
            rec.push(
                Operation {
                    client: 0,
                    session: None,
                    op: OpKind::Read,
                    key: k.clone(),
                    value,
                    invoke_ns,
                    complete_ns,
                    ok,
                    level: "eventual".into(),
                    node: format!("n{}", i + 1),
                    position: None,
                    staleness_entries: None,
                    staleness_ms: None,
                    quorum: Some("one".into()),
                    version,
                    strict: None,
                    dots: None,
                },
                error,
            );
        }
    }
}

/// After healing: every key read at `eventual` on every node, then at `strong`, recorded as
/// client 0 with no session.
async fn final_reads(targets: &[Target], keys: &[String], rec: &Recorder) {
    for level in ["eventual", "strong"] {
        for (i, t) in targets.iter().enumerate() {
            let c = Client::with_timeout(&t.http, Duration::from_secs(10));
            for k in keys {
                let invoke_ns = rec.now_ns();
                let r = c
                    .get(KEYSPACE, k.as_bytes(), &Opts::level(level).wait_ms(5000))
                    .await;
                let complete_ns = rec.now_ns();
                let (ok, value, position, staleness, error) = match r {
                    Ok(r) => (
                        Some(true),
                        r.value.map(|v| String::from_utf8_lossy(&v).into_owned()),
                        Some(r.receipt.position.clone()),
                        r.receipt.staleness_parts(),
                        None,
                    ),
                    Err(e) => (Some(false), None, None, None, Some(e.to_string())),
                };
                rec.push(
                    Operation {
                        client: 0,
                        session: None,
                        op: OpKind::Read,
                        key: k.clone(),
                        value,
                        invoke_ns,
                        complete_ns,
                        ok,
                        level: level.to_string(),
                        node: format!("n{}", i + 1),
                        position,
                        staleness_entries: staleness.map(|s| s.0),
                        staleness_ms: staleness.map(|s| s.1),
                        quorum: None,
                        version: None,
                        strict: None,
                        dots: None,
                    },
                    error,
                );
            }
        }
    }
}
