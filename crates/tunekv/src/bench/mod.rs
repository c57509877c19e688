//! `tunekv bench` (DESIGN §8): per level, throughput, latency (HDR histograms, corrected for
//! coordinated omission) and the staleness the receipts report, against a cluster it starts
//! or one `cluster.json` names. Printed as a table; `--out DIR` adds CSV, SVG plots and
//! `summary.json`.

mod backup;
mod cache;
mod compare;
mod feed;
mod keys;
mod leaderless;
mod pbs;
mod peers;
mod scale;
mod security;
mod svg;

use crate::targets::{self, Target};
use crate::verify::resp_client::{RespConn, Value};
use anyhow::{bail, Context, Result};
use hdrhistogram::Histogram;
use indicatif::{ProgressBar, ProgressStyle};
pub use keys::Distribution;
use keys::KeyChooser;
pub use peers::Peer;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tunekv_client::{Client, ClientError, Opts};

const KEYSPACE: &str = "bench";
/// Histograms cover 1 µs .. 60 s with 3 significant digits.
const LATENCY_MAX_US: u64 = 60_000_000;

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Protocol {
    Http,
    Resp,
}

pub struct BenchOptions {
    pub nodes: u32,
    pub cluster: Option<PathBuf>,
    pub dir: Option<PathBuf>,
    pub protocol: Protocol,
    pub levels: Vec<String>,
    pub read_ratio: f64,
    pub keys: usize,
    pub distribution: Distribution,
    pub value_bytes: usize,
    pub connections: usize,
    pub inflight: usize,
    pub duration: Duration,
    pub warmup: Duration,
    pub ops: Option<u64>,
    pub out: Option<PathBuf>,
    pub seed: u64,
    /// Systems to measure beside tunekv (`--compare etcd,redis`).
    pub compare: Vec<Peer>,
    /// `--keyspace-mode leaderless`: leaderless and volatile rows instead of the levels, then
    /// the time replicas take to converge after a healed partition.
    pub leaderless: bool,
    /// `--feed`: the change feed's rows (events to 1 and 100 consumers, write → event delay)
    /// instead of the levels.
    pub feed: bool,
    /// `--cache`: a `tunekv cache` in front of the cluster: GET hits at eventual, session and
    /// strong with hit ratios, write-through and write-behind SET, beside the nodes (and Redis
    /// and memcached with --compare), and the eviction policy's zipf hit ratio.
    pub cache: bool,
    /// `--pbs`: measured t-visibility beside the cluster's live PBS estimate.
    pub pbs: bool,
    /// `--backup`: what `tunekv backup` and `tunekv restore` cost.
    pub backup: bool,
    pub pbs_trials: usize,
    pub pbs_delay_ms: u64,
    /// `--scale`: SET and GET throughput, p99.9, worst request, restart time, memory and disk
    /// at 100k, 1M and 10M keys (up to `--keys`).
    pub scale: bool,
    /// `--security`: the same rows on plain, auth, TLS and auth + TLS clusters (it starts
    /// them), and the login's cost.
    pub security: bool,
    /// `--cache-mib`: each started node's `[storage] cache_bytes`, in MiB.
    pub cache_mib: Option<u64>,
}

/// What one phase (a row: a level, or a peer system's operation) measured.
pub struct LevelResult {
    pub label: String,
    pub ops: u64,
    pub seconds: f64,
    pub latency_us: Histogram<u64>,
    pub stale_entries: Histogram<u64>,
    pub stale_ms: Histogram<u64>,
    pub refused: BTreeMap<String, u64>,
}

impl LevelResult {
    /// Adds a second measurement of the same row.
    fn merge(&mut self, other: &LevelResult) -> Result<()> {
        self.latency_us.add(&other.latency_us)?;
        self.stale_entries.add(&other.stale_entries)?;
        self.stale_ms.add(&other.stale_ms)?;
        for (k, v) in &other.refused {
            *self.refused.entry(k.clone()).or_default() += v;
        }
        self.ops += other.ops;
        self.seconds += other.seconds;
        Ok(())
    }

    pub fn throughput(&self) -> f64 {
        self.ops as f64 / self.seconds.max(1e-9)
    }
}

struct Stats {
    latency_us: Histogram<u64>,
    stale_entries: Histogram<u64>,
    stale_ms: Histogram<u64>,
    refused: BTreeMap<String, u64>,
    ops: u64,
}

impl Stats {
    fn new() -> Result<Stats> {
        Ok(Stats {
            latency_us: Histogram::new_with_bounds(1, LATENCY_MAX_US, 3)?,
            stale_entries: Histogram::new_with_bounds(1, 100_000_000, 3)?,
            stale_ms: Histogram::new_with_bounds(1, 3_600_000, 3)?,
            refused: BTreeMap::new(),
            ops: 0,
        })
    }

    fn merge(&mut self, other: &Stats) -> Result<()> {
        self.latency_us.add(&other.latency_us)?;
        self.stale_entries.add(&other.stale_entries)?;
        self.stale_ms.add(&other.stale_ms)?;
        for (k, v) in &other.refused {
            *self.refused.entry(k.clone()).or_default() += v;
        }
        self.ops += other.ops;
        Ok(())
    }

    fn done(&mut self, started: Instant, ok: bool) {
        let us = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX);
        self.latency_us.saturating_record(us.max(1));
        if ok {
            self.ops += 1;
        }
    }

    fn refuse(&mut self, code: &str) {
        *self.refused.entry(code.to_string()).or_default() += 1;
    }
}

/// Everything the workers of one phase share.
struct Phase {
    level: String,
    keyspace: String,
    /// Leaderless rows: the read and write quorums.
    r: Option<String>,
    w: Option<String>,
    /// What reads and writes are (plain values, counters, hash fields, siblings).
    kind: RowKind,
    keys: Vec<String>,
    chooser: KeyChooser,
    value: Vec<u8>,
    read_ratio: f64,
    /// Measuring (after warm-up); workers count only then.
    measuring: AtomicBool,
    stop: AtomicBool,
    ops_left: AtomicU64,
    done: AtomicU64,
}

impl Phase {
    fn next(&self) -> bool {
        !self.stop.load(Ordering::Relaxed)
            && (!self.measuring.load(Ordering::Relaxed)
                || self
                    .ops_left
                    .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1))
                    .is_ok())
    }
}

/// CPU seconds this process has used (user + system), from /proc; `None` elsewhere.
fn cpu_seconds() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    let after = stat.rsplit_once(')')?.1;
    let f: Vec<&str> = after.split_whitespace().collect();
    // Fields 14 and 15 of the file (utime, stime) are 12 and 13 after the command name.
    let ticks: f64 = f.get(11)?.parse::<f64>().ok()? + f.get(12)?.parse::<f64>().ok()?;
    Some(ticks / 100.0)
}

pub async fn run(o: BenchOptions) -> Result<i32> {
    if o.connections == 0 || o.inflight == 0 || o.keys == 0 {
        bail!("--connections, --inflight and --keys must be at least 1");
    }
    if !(0.0..=1.0).contains(&o.read_ratio) {
        bail!("--read-ratio must be within 0..=1");
    }
    for l in &o.levels {
        tunekv_core::Level::parse(l).map_err(|e| anyhow::anyhow!("--levels: {}", e.message))?;
    }
    let cache_bytes = match o.cache_mib {
        Some(_) if o.cluster.is_some() => {
            bail!("--cache-mib sets the nodes bench starts: leave out --cluster")
        }
        Some(mib) => {
            let bytes = mib
                .checked_mul(1 << 20)
                .with_context(|| format!("--cache-mib {mib} is too large"))?;
            // The node's own floor, checked before any node starts.
            if bytes < tunekv_node::STORAGE_CACHE_BYTES_MIN {
                bail!(
                    "--cache-mib must be at least {} (a node's smallest block cache)",
                    tunekv_node::STORAGE_CACHE_BYTES_MIN >> 20
                );
            }
            Some(bytes)
        }
        None => None,
    };
    let tweak = move |c: &mut tunekv_node::NodeConfig| {
        if let Some(bytes) = cache_bytes {
            c.storage.cache_bytes = bytes;
        }
    };
    if o.security {
        return security::run(&o, tweak).await;
    }
    // Peers first: a missing etcd or Redis is reported before a cluster is started.
    let mut peers = if o.compare.is_empty() {
        None
    } else {
        let dir = match &o.dir {
            // Beside the cluster's directory, never inside it: the cluster is prepared fresh
            // (its directory removed) while etcd and Redis are already writing theirs.
            Some(d) => {
                let mut name = d.file_name().unwrap_or_default().to_os_string();
                name.push("-peers");
                d.with_file_name(name)
            }
            None => std::env::temp_dir().join(format!("tunekv-bench-peers-{}", std::process::id())),
        };
        Some(peers::Peers::start(&o.compare, &dir).await?)
    };
    let opened = targets::open(
        o.cluster.as_deref(),
        o.nodes,
        o.dir.clone(),
        ("bench", true),
        &[],
        tweak,
    )
    .await;
    let result = match opened {
        Ok((targets, cluster, own_dir)) => {
            let result = if o.backup {
                backup::run(&targets, o.keys, o.value_bytes, o.out.as_deref()).await
            } else if o.pbs {
                pbs::run(
                    &targets,
                    o.pbs_trials,
                    o.pbs_delay_ms,
                    o.seed,
                    o.out.as_deref(),
                    o.leaderless,
                )
                .await
            } else if o.scale {
                match &cluster {
                    Some(c) => scale::run(&o, &targets, c).await,
                    None => Err(anyhow::anyhow!(
                        "--scale restarts the cluster it measures: leave out --cluster"
                    )),
                }
            } else if o.cache {
                match &cluster {
                    Some(c) => cache::run(&o, &targets, c, peers.as_ref()).await,
                    None => Err(anyhow::anyhow!(
                        "--cache starts a cache in front of the cluster bench starts; leave out --cluster"
                    )),
                }
            } else {
                bench(&o, &targets, peers.as_ref()).await
            };
            if let Some(c) = &cluster {
                c.lock().unwrap_or_else(|p| p.into_inner()).stop_all();
            }
            // A directory the user named is kept (its node logs explain a run); a temp one goes.
            match own_dir {
                Some(dir) if o.dir.is_none() => {
                    let _ = std::fs::remove_dir_all(dir);
                }
                Some(dir) => println!("cluster directory (node logs) kept in {}", dir.display()),
                None => {}
            }
            result
        }
        Err(e) => Err(e),
    };
    if let Some(p) = peers.as_mut() {
        p.stop();
    }
    result
}

/// What a phase's workers talk to.
#[derive(Clone, Debug)]
enum Driver {
    /// tunekv's HTTP API; reads at the phase's level.
    TunekvHttp,
    /// tunekv's RESP listener, pipelined `--inflight` deep; reads at the phase's level.
    TunekvResp,
    /// etcd's v3 JSON gateway: puts, and ranges (linearizable, or serializable).
    Etcd {
        endpoints: Vec<String>,
        serializable: bool,
    },
    /// A Redis server: GET and SET, pipelined like tunekv's RESP.
    Redis { addr: String },
    /// A Redis primary with a replica, both `appendfsync always`: each SET followed by
    /// `WAIT 1 0` (acknowledged once on the replica), pipelined like tunekv's RESP.
    RedisDurable { addr: String },
    /// A `tunekv cache`'s RESP listener, pipelined like a node's; reads at the phase's level.
    CacheResp { addr: String },
    /// memcached's text protocol: get and set, pipelined like RESP.
    Memcached { addr: String },
}

/// One row of the table: what to run, against what.
struct PhaseSpec {
    label: String,
    /// The level tunekv reads at (tunekv drivers only).
    level: String,
    read_ratio: f64,
    driver: Driver,
    /// The tunekv keyspace, and on leaderless keyspaces the read and write quorums.
    keyspace: String,
    r: Option<String>,
    w: Option<String>,
    /// What reads and writes are: plain values (SET/GET), counter increments (INCR, `POST
    /// …:add`), hash fields (HSET/HGET, `:update`) or siblings (HTTP: a read of every value and
    /// a write back with its context).
    kind: RowKind,
}

/// What a row's operations are.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RowKind {
    Plain,
    Counter,
    Hash,
    Siblings,
}

async fn bench(o: &BenchOptions, targets: &[Target], peers: Option<&peers::Peers>) -> Result<i32> {
    if o.feed {
        println!(
            "change feed: {} writers × {} pipelined SETs for {:?} per row",
            8, 16, o.duration
        );
        print!("{}", feed::run(targets, peers, o.duration).await?);
        return Ok(0);
    }
    let (admin, keys, value) = setup(o, targets, &[KEYSPACE]).await?;
    if o.leaderless {
        leaderless::setup(&admin, targets, &keys, &value).await?;
    }
    let specs = match peers {
        Some(p) if o.leaderless => {
            p.load(&keys, &value).await?;
            leaderless::specs(o.protocol, Some(p))
        }
        None if o.leaderless => leaderless::specs(o.protocol, None),
        Some(p) => {
            p.load(&keys, &value).await?;
            compare::specs(p)
        }
        None => o
            .levels
            .iter()
            .map(|l| PhaseSpec {
                label: l.clone(),
                level: l.clone(),
                read_ratio: o.read_ratio,
                driver: match o.protocol {
                    Protocol::Http => Driver::TunekvHttp,
                    Protocol::Resp => Driver::TunekvResp,
                },
                keyspace: KEYSPACE.to_string(),
                r: None,
                w: None,
                kind: RowKind::Plain,
            })
            .collect(),
    };
    if peers.is_some() || o.leaderless {
        println!(
            "workload (every row): {} keys ({}), {} B values, {} connections × {} in flight, {:?} per row after {:?} warm-up; reads-only and writes-only rows",
            o.keys, o.distribution, o.value_bytes, o.connections, o.inflight, o.duration, o.warmup
        );
    } else {
        println!(
            "workload: {} over {}, {:.0}% reads, {} keys ({}), {} B values, {} connections × {} in flight, {:?} per level after {:?} warm-up",
            o.levels.join(", "),
            match o.protocol {
                Protocol::Http => "HTTP",
                Protocol::Resp => "RESP",
            },
            o.read_ratio * 100.0,
            o.keys,
            o.distribution,
            o.value_bytes,
            o.connections,
            o.inflight,
            o.duration,
            o.warmup
        );
    }
    let cpu_before = cpu_seconds();
    let wall = Instant::now();
    let mut results: Vec<LevelResult> = Vec::new();
    // A comparison measures its HTTP read rows in two halves, in order then in reverse (A B C D
    // D C B A): on a small machine throughput drifts from row to row by as much as the levels
    // differ, and this way each level sees the same share of the drift.
    let schedule = match peers {
        Some(_) if !o.leaderless => compare::interleaved(&specs),
        _ => (0..specs.len()).map(|i| (i, false)).collect(),
    };
    for (i, half) in schedule {
        let duration = if half { o.duration / 2 } else { o.duration };
        let r = phase(o, duration, targets, &specs[i], keys.clone(), value.clone()).await?;
        match results.iter_mut().find(|m| m.label == r.label) {
            Some(m) => m.merge(&r)?,
            None => results.push(r),
        }
    }
    let cpu = cpu_before
        .zip(cpu_seconds())
        .map(|(a, b)| (b - a) / wall.elapsed().as_secs_f64());
    println!();
    print!("{}", table(&results));
    let ratios = peers
        .filter(|_| !o.leaderless)
        .map(|_| compare::ratios(&results));
    if let Some(r) = &ratios {
        println!();
        print!("{}", compare::ratios_text(r));
    }
    if o.leaderless {
        println!();
        match leaderless::time_to_converge(targets, &value).await {
            Ok(line) => println!("{line}"),
            Err(e) => println!("time to converge after a healed partition: not measured ({e:#})"),
        }
        match leaderless::incr_during_partition(targets, 2).await {
            Ok(line) => println!("{line}"),
            Err(e) => println!("counter INCR during a partition: not measured ({e:#})"),
        }
        match leaderless::set_add_cost(targets).await {
            Ok(lines) => println!("{lines}"),
            Err(e) => println!("set SADD cost by set size: not measured ({e:#})"),
        }
    }
    if let Some(cpu) = cpu {
        println!(
            "load generator: {:.0}% of one core on average ({} cores here); if it nears 100% per core, the generator is the bottleneck",
            cpu * 100.0,
            std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1)
        );
    }
    if let Some(dir) = &o.out {
        write_out(dir, o, &results, cpu, ratios.as_ref())?;
        println!(
            "wrote {}/results.csv, latency.svg, staleness.svg, summary.json",
            dir.display()
        );
    }
    Ok(0)
}

/// Creates `keyspaces` (3 shards, strong by default), makes the bench's keys and value (from
/// the seed) and loads every key into the first keyspace, so reads find values.
async fn setup(
    o: &BenchOptions,
    targets: &[Target],
    keyspaces: &[&str],
) -> Result<(Client, Vec<String>, Vec<u8>)> {
    let admin = Client::with_timeout(&targets[0].http, Duration::from_secs(30));
    let spec = serde_json::json!({"shards": 3, "replicas": targets.len().min(3), "default_level": "strong"});
    for ks in keyspaces {
        match admin.create_keyspace(ks, &spec).await {
            Ok(_) => {}
            Err(e) if e.code() == Some("keyspace_exists") => {}
            Err(e) => bail!("cannot create keyspace {ks}: {e}"),
        }
    }
    let keys: Vec<String> = (0..o.keys).map(|i| format!("key{i:08}")).collect();
    let mut rng = StdRng::seed_from_u64(o.seed);
    let value: Vec<u8> = (0..o.value_bytes)
        .map(|_| rng.gen_range(b'a'..=b'z'))
        .collect();
    println!("loading {} keys of {} bytes ...", keys.len(), o.value_bytes);
    load(&admin, &keys, &value).await?;
    Ok((admin, keys, value))
}

async fn load(c: &Client, keys: &[String], value: &[u8]) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(60);
    for k in keys.iter() {
        loop {
            match c
                .put(
                    KEYSPACE,
                    k.as_bytes(),
                    value,
                    &Opts::default().wait_ms(5000),
                )
                .await
            {
                Ok(_) => break,
                Err(e) if Instant::now() > deadline => bail!("cannot load {k}: {e}"),
                Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
            }
        }
    }
    Ok(())
}

async fn phase(
    o: &BenchOptions,
    duration: Duration,
    targets: &[Target],
    spec: &PhaseSpec,
    keys: Vec<String>,
    value: Vec<u8>,
) -> Result<LevelResult> {
    // Counter rows use keys of their own: a peer (Redis) holds the other rows' strings under
    // the plain names, which INCR refuses.
    let keys = if spec.kind == RowKind::Counter {
        keys.iter().map(|k| leaderless::counter_key(k)).collect()
    } else {
        keys
    };
    let p = Arc::new(Phase {
        level: spec.level.clone(),
        keyspace: spec.keyspace.clone(),
        r: spec.r.clone(),
        w: spec.w.clone(),
        kind: spec.kind,
        chooser: KeyChooser::new(keys.len(), o.distribution),
        keys,
        value,
        read_ratio: spec.read_ratio,
        measuring: AtomicBool::new(false),
        stop: AtomicBool::new(false),
        ops_left: AtomicU64::new(o.ops.unwrap_or(u64::MAX)),
        done: AtomicU64::new(0),
    });
    let etcd_bodies = match &spec.driver {
        Driver::Etcd { serializable, .. } => Some(Arc::new(peers::EtcdBodies::new(
            &p.keys,
            &p.value,
            *serializable,
        ))),
        _ => None,
    };
    let mut workers = Vec::new();
    for c in 0..o.connections {
        let t = targets[c % targets.len()].clone();
        let seed = o.seed ^ ((c as u64) << 20);
        match &spec.driver {
            Driver::TunekvHttp => {
                let client = Client::with_timeout(&t.http, Duration::from_secs(10));
                for i in 0..o.inflight {
                    workers.push(tokio::spawn(http_worker(
                        p.clone(),
                        client.clone(),
                        seed ^ i as u64,
                    )));
                }
            }
            Driver::Etcd { endpoints, .. } => {
                let client = peers::etcd_client()?;
                let base = endpoints[c % endpoints.len()].clone();
                let bodies = etcd_bodies.clone().context("etcd bodies")?;
                for i in 0..o.inflight {
                    workers.push(tokio::spawn(etcd_worker(
                        p.clone(),
                        client.clone(),
                        base.clone(),
                        bodies.clone(),
                        seed ^ i as u64,
                    )));
                }
            }
            Driver::TunekvResp => {
                let addr = t
                    .resp
                    .clone()
                    .with_context(|| format!("node {} has no RESP listener", t.id))?;
                workers.push(tokio::spawn(resp_worker(
                    p.clone(),
                    addr,
                    (true, false),
                    o.inflight,
                    seed,
                )));
            }
            Driver::Redis { addr } | Driver::RedisDurable { addr } => {
                let wait = matches!(spec.driver, Driver::RedisDurable { .. });
                workers.push(tokio::spawn(resp_worker(
                    p.clone(),
                    addr.clone(),
                    (false, wait),
                    o.inflight,
                    seed,
                )));
            }
            Driver::CacheResp { addr } => {
                workers.push(tokio::spawn(resp_worker(
                    p.clone(),
                    addr.clone(),
                    (true, false),
                    o.inflight,
                    seed,
                )));
            }
            Driver::Memcached { addr } => {
                workers.push(tokio::spawn(memcached_worker(
                    p.clone(),
                    addr.clone(),
                    o.inflight,
                    seed,
                )));
            }
        }
    }
    let bar = ProgressBar::new((o.warmup + duration).as_secs().max(1));
    bar.set_style(
        ProgressStyle::with_template("{prefix:>28} [{bar:30}] {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    bar.set_prefix(spec.label.clone());
    let plain = !std::io::IsTerminal::is_terminal(&std::io::stderr());
    let mut last_plain = Instant::now();
    let started = Instant::now();
    let mut measure_started = None;
    loop {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let elapsed = started.elapsed();
        if measure_started.is_none() && elapsed >= o.warmup {
            p.measuring.store(true, Ordering::Relaxed);
            measure_started = Some(Instant::now());
        }
        bar.set_position(elapsed.as_secs());
        let done = p.done.load(Ordering::Relaxed);
        let msg = match measure_started {
            None => "warming up".to_string(),
            Some(m) => format!(
                "{done} ops, {:.0} ops/s",
                done as f64 / m.elapsed().as_secs_f64().max(1e-3)
            ),
        };
        // No terminal (a CI log): a plain line every 10 s instead of the bar.
        if plain && last_plain.elapsed() >= Duration::from_secs(10) {
            eprintln!("  {} [{:>5.1}s] {msg}", spec.label, elapsed.as_secs_f64());
            last_plain = Instant::now();
        }
        bar.set_message(msg);
        let over = measure_started.is_some_and(|m| m.elapsed() >= duration)
            || workers.iter().all(|w| w.is_finished());
        if over {
            break;
        }
    }
    p.stop.store(true, Ordering::Relaxed);
    let seconds = measure_started
        .map(|m| m.elapsed().as_secs_f64())
        .unwrap_or(0.0);
    bar.finish_and_clear();
    let mut total = Stats::new()?;
    for w in workers {
        match w.await {
            Ok(Ok(stats)) => total.merge(&stats)?,
            Ok(Err(e)) => bail!("{}: a worker failed: {e:#}", spec.label),
            Err(e) => bail!("{}: a worker panicked: {e}", spec.label),
        }
    }
    // Closed-loop workers wait for each answer, so slow answers delay the requests behind
    // them (coordinated omission): the missing samples are filled in at the mean interval.
    let mean = total.latency_us.mean().max(1.0) as u64;
    let latency_us = total.latency_us.clone_correct(mean);
    Ok(LevelResult {
        label: spec.label.clone(),
        ops: total.ops,
        seconds,
        latency_us,
        stale_entries: total.stale_entries,
        stale_ms: total.stale_ms,
        refused: total.refused,
    })
}

async fn http_worker(p: Arc<Phase>, c: Client, seed: u64) -> Result<Stats> {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut stats = Stats::new()?;
    let mut read_opts = Opts::level(&p.level);
    let mut write_opts = Opts::default();
    read_opts.r = p.r.clone();
    write_opts.w = p.w.clone();
    while p.next() {
        let key = p.keys[p.chooser.pick(&mut rng)].as_bytes();
        let measuring = p.measuring.load(Ordering::Relaxed);
        let t = Instant::now();
        let read = rng.gen_bool(p.read_ratio);
        let outcome = if p.kind == RowKind::Siblings {
            // A read of every value; a write is a read and a write back with its context.
            match c.siblings(&p.keyspace, key, &read_opts).await {
                Ok(r) if !read => c
                    .put_in_context(&p.keyspace, key, Some(&p.value), &r.context, &write_opts)
                    .await
                    .map(|_| None),
                Ok(_) => Ok(None),
                Err(e) => Err(e),
            }
        } else if read {
            c.get(&p.keyspace, key, &read_opts)
                .await
                .map(|r| r.receipt.staleness_parts())
        } else if p.kind == RowKind::Counter {
            c.add(&p.keyspace, key, 1, None, &write_opts)
                .await
                .map(|_| None)
        } else if p.kind == RowKind::Hash {
            let field = std::str::from_utf8(&p.value).unwrap_or("v");
            let body = serde_json::json!({ "set": { "f": field } });
            c.update(&p.keyspace, key, &body, &write_opts)
                .await
                .map(|_| None)
        } else {
            c.put(&p.keyspace, key, &p.value, &write_opts)
                .await
                .map(|_| None)
        };
        if !measuring {
            continue;
        }
        match outcome {
            Ok(stale) => {
                stats.done(t, true);
                if let Some((entries, ms)) = stale {
                    stats.stale_entries.saturating_record(entries);
                    stats.stale_ms.saturating_record(ms);
                }
            }
            Err(e) => {
                stats.done(t, false);
                match &e {
                    ClientError::Api { code, .. } | ClientError::Invalid { code, .. } => {
                        stats.refuse(code)
                    }
                    ClientError::Transport(_) => stats.refuse("transport"),
                }
            }
        }
        p.done.fetch_add(1, Ordering::Relaxed);
    }
    Ok(stats)
}

/// etcd through its v3 JSON gateway, the same request shape as tunekv's HTTP API: one JSON
/// body per operation over a pooled HTTP/1.1 connection.
async fn etcd_worker(
    p: Arc<Phase>,
    c: reqwest::Client,
    base: String,
    bodies: Arc<peers::EtcdBodies>,
    seed: u64,
) -> Result<Stats> {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut stats = Stats::new()?;
    let (put_url, range_url) = (format!("{base}/v3/kv/put"), format!("{base}/v3/kv/range"));
    while p.next() {
        let i = p.chooser.pick(&mut rng);
        let measuring = p.measuring.load(Ordering::Relaxed);
        let t = Instant::now();
        let (url, body) = if rng.gen_bool(p.read_ratio) {
            (&range_url, bodies.range[i].clone())
        } else {
            (&put_url, bodies.put[i].clone())
        };
        let outcome = match c.post(url).body(body).send().await {
            Ok(r) if r.status().is_success() => r
                .bytes()
                .await
                .map(|_| ())
                .map_err(|_| "transport".to_string()),
            Ok(r) => Err(format!("etcd_http_{}", r.status().as_u16())),
            Err(_) => Err("transport".to_string()),
        };
        if !measuring {
            continue;
        }
        stats.done(t, outcome.is_ok());
        if let Err(code) = outcome {
            stats.refuse(&code);
        }
        p.done.fetch_add(1, Ordering::Relaxed);
    }
    Ok(stats)
}

/// Pipelined GET/SET over RESP, `pipeline` deep. Against tunekv (`tunekv`), the connection
/// selects the bench keyspace and the phase's level, and a `RECEIPT` after each batch that
/// ends with a GET samples the served staleness. With `wait`, each SET is followed by
/// `WAIT 1 0` and counts as done once a replica has it (a WAIT answering 0 is a failure).
async fn resp_worker(
    p: Arc<Phase>,
    addr: String,
    (tunekv, wait): (bool, bool),
    pipeline: usize,
    seed: u64,
) -> Result<Stats> {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut stats = Stats::new()?;
    let mut conn = if tunekv {
        RespConn::connect_node(&addr).await?
    } else {
        RespConn::connect(&addr).await?
    };
    if tunekv {
        let mut setup = vec![
            vec![b"SELECT".as_slice(), p.keyspace.as_bytes()],
            vec![b"CONSISTENCY".as_slice(), p.level.as_bytes()],
        ];
        let (r, w) = (
            p.r.as_deref().unwrap_or("default"),
            p.w.as_deref().unwrap_or("default"),
        );
        if p.r.is_some() || p.w.is_some() {
            setup.push(vec![b"QUORUM".as_slice(), r.as_bytes(), w.as_bytes()]);
        }
        let setup = conn.pipeline(&setup).await?;
        if let Some(Value::Error(e)) = setup.iter().find(|v| matches!(v, Value::Error(_))) {
            bail!("{addr}: {e}");
        }
    }
    let mut batch: Vec<Vec<&[u8]>> = Vec::with_capacity(pipeline + 1);
    // The requests followed by a WAIT.
    let mut waited: Vec<usize> = Vec::with_capacity(pipeline);
    while p.next() {
        batch.clear();
        waited.clear();
        let mut last_get = false;
        for _ in 0..pipeline {
            let key = p.keys[p.chooser.pick(&mut rng)].as_bytes();
            last_get = rng.gen_bool(p.read_ratio);
            if last_get && p.kind == RowKind::Hash {
                batch.push(vec![b"HGET".as_slice(), key, b"f"]);
            } else if last_get {
                batch.push(vec![b"GET".as_slice(), key]);
            } else if p.kind == RowKind::Counter {
                batch.push(vec![b"INCR".as_slice(), key]);
            } else if p.kind == RowKind::Hash {
                batch.push(vec![b"HSET".as_slice(), key, b"f", &p.value]);
            } else {
                batch.push(vec![b"SET".as_slice(), key, &p.value]);
                if wait {
                    batch.push(vec![b"WAIT".as_slice(), b"1", b"0"]);
                    waited.push(batch.len() - 2);
                }
            }
        }
        let sample = tunekv && last_get;
        if sample {
            batch.push(vec![b"RECEIPT".as_slice()]);
        }
        let measuring = p.measuring.load(Ordering::Relaxed);
        let t = Instant::now();
        let mut replies = conn.pipeline(&batch).await?;
        if !measuring {
            continue;
        }
        if sample {
            if let Some(receipt) = replies.pop() {
                let int = |name| match receipt.field(name) {
                    Some(Value::Int(n)) => u64::try_from(*n).ok(),
                    _ => None,
                };
                if let (Some(entries), Some(ms)) = (int("staleness_entries"), int("staleness_ms")) {
                    stats.stale_entries.saturating_record(entries);
                    stats.stale_ms.saturating_record(ms);
                }
            }
        }
        let mut ops = 0;
        let mut replies = replies.iter().enumerate();
        while let Some((i, r)) = replies.next() {
            ops += 1;
            // The WAIT after a SET: how many replicas have it.
            let replicated = !waited.contains(&i)
                || matches!(replies.next(), Some((_, Value::Int(n))) if *n >= 1);
            match r {
                Value::Error(e) => {
                    stats.done(t, false);
                    let code = e
                        .split_whitespace()
                        .next()
                        .unwrap_or("err")
                        .to_ascii_lowercase();
                    stats.refuse(&code);
                }
                _ if !replicated => {
                    stats.done(t, false);
                    stats.refuse("not_replicated");
                }
                _ => stats.done(t, true),
            }
        }
        p.done.fetch_add(ops, Ordering::Relaxed);
    }
    Ok(stats)
}

/// Pipelined get/set over memcached's text protocol, `pipeline` deep (no staleness: memcached
/// has no receipts).
async fn memcached_worker(
    p: Arc<Phase>,
    addr: String,
    pipeline: usize,
    seed: u64,
) -> Result<Stats> {
    use peers::{McOp, McReply, Memcache};
    let mut rng = StdRng::seed_from_u64(seed);
    let mut stats = Stats::new()?;
    let mut conn = Memcache::connect(&addr).await?;
    while p.next() {
        let ops: Vec<McOp<'_>> = (0..pipeline)
            .map(|_| {
                let key = p.keys[p.chooser.pick(&mut rng)].as_bytes();
                if rng.gen_bool(p.read_ratio) {
                    McOp::Get(key)
                } else {
                    McOp::Set(key, &p.value)
                }
            })
            .collect();
        let measuring = p.measuring.load(Ordering::Relaxed);
        let t = Instant::now();
        let replies = conn.pipeline(&ops).await?;
        if !measuring {
            continue;
        }
        for r in &replies {
            let ok = *r != McReply::Error;
            stats.done(t, ok);
            if !ok {
                stats.refuse("memcached_error");
            }
        }
        p.done.fetch_add(replies.len() as u64, Ordering::Relaxed);
    }
    Ok(stats)
}

fn ms(us: u64) -> f64 {
    us as f64 / 1000.0
}

/// One level's numbers, read off its histograms once for the table, the CSV and the JSON.
#[derive(serde::Serialize)]
struct Summary {
    level: String,
    ops_per_s: f64,
    p50_ms: f64,
    p99_ms: f64,
    p999_ms: f64,
    max_ms: f64,
    /// p50 and p99 of the receipts' staleness; `None` when no read reported one (RESP).
    stale_entries: Option<(u64, u64)>,
    stale_ms: Option<(u64, u64)>,
    refused: BTreeMap<String, u64>,
}

impl Summary {
    fn of(r: &LevelResult) -> Summary {
        let h = &r.latency_us;
        let p50_p99 = |h: &Histogram<u64>| {
            (!h.is_empty()).then(|| (h.value_at_quantile(0.5), h.value_at_quantile(0.99)))
        };
        Summary {
            level: r.label.clone(),
            ops_per_s: r.throughput(),
            p50_ms: ms(h.value_at_quantile(0.5)),
            p99_ms: ms(h.value_at_quantile(0.99)),
            p999_ms: ms(h.value_at_quantile(0.999)),
            max_ms: ms(h.max()),
            stale_entries: p50_p99(&r.stale_entries),
            stale_ms: p50_p99(&r.stale_ms),
            refused: r.refused.clone(),
        }
    }

    fn refused_text(&self) -> String {
        if self.refused.is_empty() {
            return "-".into();
        }
        self.refused
            .iter()
            .map(|(k, v)| format!("{k}:{v}"))
            .collect::<Vec<_>>()
            .join(" ")
    }
}

/// `p50/p99`, or `-` when there is nothing.
fn pair_text(p: Option<(u64, u64)>) -> String {
    p.map_or_else(|| "-".into(), |(a, b)| format!("{a}/{b}"))
}

/// `p50,p99` CSV cells, empty when there is nothing.
fn pair_cells(p: Option<(u64, u64)>) -> String {
    p.map_or_else(|| ",".into(), |(a, b)| format!("{a},{b}"))
}

pub fn table(results: &[LevelResult]) -> String {
    let mut out = format!(
        "{:<28} {:>9} {:>8} {:>8} {:>8} {:>8} {:>13} {:>13}  {}\n",
        "level",
        "ops/s",
        "p50 ms",
        "p99 ms",
        "p99.9 ms",
        "max ms",
        "stale entr.",
        "stale ms",
        "refused"
    );
    out += &format!(
        "{:<28} {:>9} {:>8} {:>8} {:>8} {:>8} {:>13} {:>13}\n",
        "", "", "", "", "", "", "p50/p99", "p50/p99"
    );
    for s in results.iter().map(Summary::of) {
        out += &format!(
            "{:<28} {:>9.0} {:>8.2} {:>8.2} {:>8.2} {:>8.1} {:>13} {:>13}  {}\n",
            s.level,
            s.ops_per_s,
            s.p50_ms,
            s.p99_ms,
            s.p999_ms,
            s.max_ms,
            pair_text(s.stale_entries),
            pair_text(s.stale_ms),
            s.refused_text()
        );
    }
    out
}

fn write_out(
    dir: &PathBuf,
    o: &BenchOptions,
    results: &[LevelResult],
    cpu: Option<f64>,
    ratios: Option<&BTreeMap<String, Option<f64>>>,
) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let summaries: Vec<Summary> = results.iter().map(Summary::of).collect();
    let mut csv = String::from(
        "level,ops_per_s,p50_ms,p99_ms,p999_ms,max_ms,stale_entries_p50,stale_entries_p99,stale_ms_p50,stale_ms_p99,refused\n",
    );
    for s in &summaries {
        csv += &format!(
            "\"{}\",{:.1},{:.3},{:.3},{:.3},{:.3},{},{},\"{}\"\n",
            s.level,
            s.ops_per_s,
            s.p50_ms,
            s.p99_ms,
            s.p999_ms,
            s.max_ms,
            pair_cells(s.stale_entries),
            pair_cells(s.stale_ms),
            s.refused_text()
        );
    }
    std::fs::write(dir.join("results.csv"), csv)?;
    std::fs::write(dir.join("latency.svg"), svg::latency(results))?;
    std::fs::write(dir.join("staleness.svg"), svg::staleness(results))?;
    let mut summary = serde_json::json!({
        "protocol": format!("{:?}", o.protocol).to_lowercase(),
        "read_ratio": o.read_ratio,
        "keys": o.keys,
        "distribution": o.distribution.to_string(),
        "value_bytes": o.value_bytes,
        "connections": o.connections,
        "inflight": o.inflight,
        "duration_s": o.duration.as_secs_f64(),
        "load_generator_cpu_cores": cpu,
        "levels": summaries,
    });
    if let Some(r) = ratios {
        summary["compared_with"] = serde_json::json!(o.compare);
        summary["ratios"] = serde_json::json!(r);
    }
    std::fs::write(
        dir.join("summary.json"),
        serde_json::to_string_pretty(&summary)?,
    )?;
    Ok(())
}
