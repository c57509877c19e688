//! `tunekv bench --cache`: a `tunekv cache` in front of the cluster bench started, with memory
//! for 10% of the key set. Rows, all over RESP with the same load generator: cache GET at
//! eventual, session and strong (with the cache's hit ratio and the receipts' staleness), the
//! nodes' GET at the same levels, Redis GET and memcached get (`--compare redis,memcached`;
//! both hold every key), and SET write-through and write-behind through the cache beside a
//! node's SET. Then the eviction policy's hit ratio on a zipf trace, beside an exact LRU.

use super::keys::{Distribution, KeyChooser};
use super::peers::Peers;
use super::{phase, BenchOptions, Driver, LevelResult, PhaseSpec, RowKind, KEYSPACE};
use crate::targets::Target;
use anyhow::{Context, Result};
use rand::rngs::StdRng;
use rand::SeedableRng;
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tunekv::local_cluster::{wait_cache, LocalCluster};
use tunekv_client::Client;

const WRITE_THROUGH: &str = "bench_wt";
const WRITE_BEHIND: &str = "bench_wb";
/// Bytes the cache counts per entry beyond key and value (`tunekv_cache::store`).
const ENTRY_OVERHEAD: usize = tunekv_cache::store::ENTRY_OVERHEAD_BYTES as usize;

fn row(label: &str, keyspace: &str, level: &str, read_ratio: f64, driver: Driver) -> PhaseSpec {
    PhaseSpec {
        label: label.to_string(),
        level: level.to_string(),
        read_ratio,
        driver,
        keyspace: keyspace.to_string(),
        r: None,
        w: None,
        kind: RowKind::Plain,
    }
}

pub async fn run(
    o: &BenchOptions,
    targets: &[Target],
    cluster: &Arc<Mutex<LocalCluster>>,
    peers: Option<&Peers>,
) -> Result<i32> {
    let (_, keys, value) =
        super::setup(o, targets, &[KEYSPACE, WRITE_THROUGH, WRITE_BEHIND]).await?;
    if let Some(p) = peers {
        p.load(&keys, &value).await?;
    }
    let per_entry = keys.first().map_or(8, String::len) + o.value_bytes + ENTRY_OVERHEAD;
    let memory = (keys.len() * per_entry / 10).max(1 << 20);
    let (http, resp) = {
        let mut c = cluster.lock().unwrap_or_else(|p| p.into_inner());
        let wb = c.dir.join("bench-write-behind");
        let args: Vec<String> = [
            "--memory-bytes",
            &memory.to_string(),
            "--strategy",
            &format!("{WRITE_THROUGH}=write_through"),
            "--strategy",
            &format!("{WRITE_BEHIND}=write_behind"),
            "--write-behind-dir",
            wb.to_str().context("a UTF-8 directory")?,
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let http = c.spawn_cache(&args)?;
        let resp = c
            .cache_resp()
            .context("the cache's RESP address")?
            .to_string();
        (http, resp)
    };
    wait_cache(&http, Duration::from_secs(30)).await?;
    println!(
        "cache: http://{http}, RESP {resp}, {} MiB for entries (10% of the key set: {} keys × {per_entry} B)",
        memory >> 20,
        keys.len()
    );
    let cache_client = Client::new(&format!("http://{http}"));
    let cache = || Driver::CacheResp { addr: resp.clone() };
    let mut specs = vec![
        (
            row("cache GET eventual", KEYSPACE, "eventual", 1.0, cache()),
            true,
        ),
        (
            row("cache GET session", KEYSPACE, "session", 1.0, cache()),
            true,
        ),
        (
            row("cache GET strong", KEYSPACE, "strong", 1.0, cache()),
            true,
        ),
        (
            row(
                "node GET eventual",
                KEYSPACE,
                "eventual",
                1.0,
                Driver::TunekvResp,
            ),
            false,
        ),
        (
            row(
                "node GET strong",
                KEYSPACE,
                "strong",
                1.0,
                Driver::TunekvResp,
            ),
            false,
        ),
    ];
    if let Some(addr) = peers.and_then(|p| p.redis.clone()) {
        specs.push((
            row(
                "redis GET",
                KEYSPACE,
                "eventual",
                1.0,
                Driver::Redis { addr },
            ),
            false,
        ));
    }
    if let Some(addr) = peers.and_then(|p| p.memcached.clone()) {
        let d = Driver::Memcached { addr };
        specs.push((row("memcached get", KEYSPACE, "eventual", 1.0, d), false));
    }
    specs.extend([
        (
            row(
                "cache SET write-through",
                WRITE_THROUGH,
                "eventual",
                0.0,
                cache(),
            ),
            false,
        ),
        (
            row(
                "cache SET write-behind",
                WRITE_BEHIND,
                "eventual",
                0.0,
                cache(),
            ),
            false,
        ),
        (
            row("node SET", KEYSPACE, "eventual", 0.0, Driver::TunekvResp),
            false,
        ),
    ]);
    println!(
        "workload (every row): {} keys ({}), {} B values, {} connections × {} pipelined, {:?} per row after {:?} warm-up; GET rows read only, SET rows write only",
        o.keys, o.distribution, o.value_bytes, o.connections, o.inflight, o.duration, o.warmup
    );
    let mut results: Vec<LevelResult> = Vec::new();
    let mut hit_ratios: BTreeMap<String, (f64, u64)> = BTreeMap::new();
    for (spec, cache_read) in &specs {
        let before = cache_client.cache_status().await.ok();
        results.push(phase(o, o.duration, targets, spec, keys.clone(), value.clone()).await?);
        if *cache_read {
            let after = cache_client.cache_status().await?;
            let delta = |name: &str| {
                let b = before.as_ref().and_then(|b| b[name].as_u64()).unwrap_or(0);
                after[name].as_u64().unwrap_or(0).saturating_sub(b)
            };
            let (hits, misses, coalesced) = (delta("hits"), delta("misses"), delta("coalesced"));
            let reads = hits + misses + coalesced;
            let probes = after["upstream"]["probes"].as_u64().unwrap_or(0)
                - before
                    .as_ref()
                    .and_then(|b| b["upstream"]["probes"].as_u64())
                    .unwrap_or(0);
            hit_ratios.insert(
                spec.label.clone(),
                (hits as f64 / reads.max(1) as f64, probes),
            );
        }
    }
    println!();
    print!("{}", super::table(&results));
    println!();
    for (label, (ratio, probes)) in &hit_ratios {
        println!(
            "{label}: hit ratio {:.1}% (warm-up included), {probes} read-index probes",
            ratio * 100.0
        );
    }
    let status = cache_client.cache_status().await?;
    println!(
        "write-behind: {} writes flushed to the store so far, {} waiting",
        status["write_behind"]["flushed"], status["write_behind"]["waiting"]
    );
    println!();
    println!("{}", policy_hit_ratios(o.keys, o.distribution, o.seed));
    Ok(0)
}

/// The eviction policy on its own: a trace of key draws replayed against `quick_cache` (the
/// cache's policy) and an exact LRU, each holding 10% of the keys.
pub fn policy_hit_ratios(keys: usize, d: Distribution, seed: u64) -> String {
    let capacity = (keys / 10).max(1);
    let draws = (keys * 20).clamp(100_000, 2_000_000);
    let chooser = KeyChooser::new(keys, d);
    let mut rng = StdRng::seed_from_u64(seed);
    let trace: Vec<usize> = (0..draws).map(|_| chooser.pick(&mut rng)).collect();
    let qc = quick_cache::unsync::Cache::<usize, ()>::new(capacity);
    let mut qc = qc;
    let mut qc_hits = 0u64;
    for &k in &trace {
        if qc.get(&k).is_some() {
            qc_hits += 1;
        } else {
            qc.insert(k, ());
        }
    }
    let mut lru = Lru::new(capacity);
    let lru_hits = trace.iter().filter(|&&k| lru.touch(k)).count() as u64;
    format!(
        "eviction policy, {draws} draws over {keys} keys ({d}), room for 10% ({capacity} keys): \
         quick_cache {:.1}% hits, exact LRU {:.1}%",
        qc_hits as f64 * 100.0 / draws as f64,
        lru_hits as f64 * 100.0 / draws as f64
    )
}

/// An exact LRU for the comparison: key → last use, and last use → key.
struct Lru {
    capacity: usize,
    tick: u64,
    by_key: HashMap<usize, u64>,
    by_tick: BTreeMap<u64, usize>,
}

impl Lru {
    fn new(capacity: usize) -> Lru {
        Lru {
            capacity,
            tick: 0,
            by_key: HashMap::new(),
            by_tick: BTreeMap::new(),
        }
    }

    /// Uses `k`: true on a hit; a miss inserts it, evicting the least recently used.
    fn touch(&mut self, k: usize) -> bool {
        self.tick += 1;
        let hit = match self.by_key.insert(k, self.tick) {
            Some(old) => {
                self.by_tick.remove(&old);
                true
            }
            None => false,
        };
        self.by_tick.insert(self.tick, k);
        if self.by_key.len() > self.capacity {
            if let Some((_, victim)) = self.by_tick.pop_first() {
                self.by_key.remove(&victim);
            }
        }
        hit
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_lru_evicts_the_least_recently_used() {
        let mut l = Lru::new(2);
        assert!(!l.touch(1));
        assert!(!l.touch(2));
        assert!(l.touch(1));
        assert!(!l.touch(3)); // evicts 2
        assert!(!l.touch(2)); // evicts 1
        assert!(!l.touch(1));
        assert_eq!(l.by_key.len(), 2);
    }

    #[test]
    fn skewed_traces_hit_more_than_uniform_ones() {
        let zipf = policy_hit_ratios(10_000, Distribution::Zipf(0.99), 1);
        let uniform = policy_hit_ratios(10_000, Distribution::Uniform, 1);
        let first = |s: &str| -> f64 {
            s.split("quick_cache ")
                .nth(1)
                .and_then(|r| r.split('%').next())
                .and_then(|n| n.parse().ok())
                .unwrap_or(0.0)
        };
        assert!(first(&zipf) > 40.0, "{zipf}");
        assert!(first(&uniform) < 15.0, "{uniform}");
    }
}
