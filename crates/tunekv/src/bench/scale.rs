//! `tunekv bench --scale`: how the ordered store holds up as its data grows (issue 21). For
//! each size (100k, 1M, 10M keys, up to `--keys`) it loads the keys with batched writes (RESP
//! `MSET`s of `LOAD_BATCH` keys), then measures pipelined SET and GET at `eventual` over RESP
//! on random keys for `--duration` each, reporting throughput, p99.9, the worst single
//! request and the longest stall: the longest time in which no request of the kind completed
//! on any connection (snapshots are built meanwhile: a stall shows there). Then it kills every node
//! (`kill -9`) and times the restart until every node serves a read of a loaded key, and
//! reports each node's resident memory and data directory size. One report, every size.

use super::BenchOptions;
use crate::targets::Target;
use crate::verify::resp_client::{RespConn, Value};
use anyhow::{bail, Context, Result};
use hdrhistogram::Histogram;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::json;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tunekv::local_cluster::LocalCluster;
use tunekv_client::Client;

const KEYSPACE: &str = "scale";
/// Keys per `MSET` while loading.
const LOAD_BATCH: u64 = 500;
/// Connections that load.
const LOADERS: usize = 4;
/// The sizes measured, up to `--keys`.
const SIZES: &[u64] = &[100_000, 1_000_000, 10_000_000];

fn key(i: u64) -> String {
    format!("key:{i:010}")
}

/// The sizes measured for `--keys n`: each of [`SIZES`] up to `n`, and `n` itself.
pub fn sizes(n: u64) -> Vec<u64> {
    let mut out: Vec<u64> = SIZES.iter().copied().filter(|&s| s < n).collect();
    out.push(n);
    out
}

/// What one measured operation did at one size.
struct Measured {
    ops: u64,
    seconds: f64,
    latency_us: Histogram<u64>,
    errors: u64,
    first_error: Option<String>,
    /// The longest time between two consecutive completions of a pipeline on any connection.
    stall: Duration,
}

impl Measured {
    fn per_sec(&self) -> f64 {
        self.ops as f64 / self.seconds.max(1e-9)
    }
    fn ms(&self, q: f64) -> f64 {
        self.latency_us.value_at_quantile(q) as f64 / 1000.0
    }
    fn max_ms(&self) -> f64 {
        self.latency_us.max() as f64 / 1000.0
    }
    fn stall_ms(&self) -> f64 {
        self.stall.as_secs_f64() * 1000.0
    }
}

/// The longest time between consecutive `completions` (in any order), from the first: a
/// stall, when no request finished anywhere. Under a closed loop every connection has a
/// request in flight throughout, so a stall is never longer than the slowest request; it is
/// shorter when requests are slow from queueing while others still complete.
fn longest_gap(completions: &mut [Instant]) -> Duration {
    completions.sort_unstable();
    completions
        .windows(2)
        .map(|w| w[1] - w[0])
        .max()
        .unwrap_or_default()
}

struct Row {
    keys: u64,
    load_per_sec: f64,
    set: Measured,
    get: Measured,
    restart_ms: u64,
    rss_mib: Vec<f64>,
    /// Each node's resident memory just after the restart: what the data costs at rest.
    rss_restarted_mib: Vec<f64>,
    disk_mib: Vec<f64>,
}

async fn connect(addr: &str, level: &str) -> Result<RespConn> {
    let mut conn = RespConn::connect_node(addr).await?;
    let setup = conn
        .pipeline(&[
            vec![b"SELECT".as_slice(), KEYSPACE.as_bytes()],
            vec![b"CONSISTENCY".as_slice(), level.as_bytes()],
        ])
        .await?;
    if let Some(Value::Error(e)) = setup.iter().find(|v| matches!(v, Value::Error(_))) {
        bail!("{addr}: {e}");
    }
    Ok(conn)
}

/// Writes keys `from..to` in `MSET`s of [`LOAD_BATCH`] over [`LOADERS`] connections.
async fn load(addrs: &[String], from: u64, to: u64, value: &[u8]) -> Result<f64> {
    let next = Arc::new(AtomicU64::new(from));
    let began = Instant::now();
    let mut tasks = Vec::new();
    for i in 0..LOADERS {
        let addr = addrs[i % addrs.len()].clone();
        let next = next.clone();
        let value = value.to_vec();
        tasks.push(tokio::spawn(async move {
            let mut conn = connect(&addr, "strong").await?;
            loop {
                let start = next.fetch_add(LOAD_BATCH, Ordering::Relaxed);
                if start >= to {
                    return Ok::<(), anyhow::Error>(());
                }
                let end = (start + LOAD_BATCH).min(to);
                let keys: Vec<String> = (start..end).map(key).collect();
                let mut cmd: Vec<&[u8]> = vec![b"MSET"];
                for k in &keys {
                    cmd.push(k.as_bytes());
                    cmd.push(&value);
                }
                let reply = conn.pipeline(&[cmd]).await?;
                if let Some(Value::Error(e)) = reply.first() {
                    bail!("MSET at key {start}: {e}");
                }
            }
        }));
    }
    let progress = tokio::spawn({
        let next = next.clone();
        async move {
            loop {
                tokio::time::sleep(Duration::from_secs(5)).await;
                let done = next.load(Ordering::Relaxed).min(to);
                println!("  loading: {done} of {to} keys");
            }
        }
    });
    let mut result = Ok(());
    for t in tasks {
        if let Err(e) = t.await.context("a loader panicked")? {
            result = Err(e);
        }
    }
    progress.abort();
    result?;
    Ok((to - from) as f64 / began.elapsed().as_secs_f64())
}

/// `connections` connections, each `pipeline` commands deep, SET (or GET at eventual) random
/// keys of `0..keys` for `duration`. A request's latency is its pipeline's round trip.
async fn drive(
    addrs: &[String],
    o: &BenchOptions,
    keys: u64,
    set: bool,
    value: &[u8],
    seed: u64,
) -> Result<Measured> {
    let deadline = Instant::now() + o.duration;
    let mut tasks = Vec::new();
    for c in 0..o.connections {
        let addr = addrs[c % addrs.len()].clone();
        let value = value.to_vec();
        let pipeline = o.inflight;
        tasks.push(tokio::spawn(async move {
            let mut rng = StdRng::seed_from_u64(seed ^ (c as u64) << 32);
            let mut conn = connect(&addr, "eventual").await?;
            let mut h = Histogram::<u64>::new_with_bounds(1, 3_600_000_000, 3)?;
            let (mut ops, mut errors, mut first_error) = (0u64, 0u64, None);
            let mut completions = Vec::new();
            while Instant::now() < deadline {
                let batch: Vec<String> =
                    (0..pipeline).map(|_| key(rng.gen_range(0..keys))).collect();
                let cmds: Vec<Vec<&[u8]>> = batch
                    .iter()
                    .map(|k| {
                        if set {
                            vec![b"SET".as_slice(), k.as_bytes(), &value]
                        } else {
                            vec![b"GET".as_slice(), k.as_bytes()]
                        }
                    })
                    .collect();
                let t = Instant::now();
                let replies = conn.pipeline(&cmds).await?;
                completions.push(Instant::now());
                let us = u64::try_from(t.elapsed().as_micros())
                    .unwrap_or(u64::MAX)
                    .max(1);
                for r in &replies {
                    h.saturating_record(us);
                    match r {
                        Value::Error(e) => {
                            errors += 1;
                            first_error.get_or_insert_with(|| e.clone());
                        }
                        Value::Bulk(None) if !set => {
                            errors += 1;
                            first_error.get_or_insert_with(|| "GET of a loaded key: nil".into());
                        }
                        _ => ops += 1,
                    }
                }
            }
            Ok::<_, anyhow::Error>((ops, errors, first_error, h, completions))
        }));
    }
    let began = Instant::now();
    let mut out = Measured {
        ops: 0,
        seconds: 0.0,
        latency_us: Histogram::new_with_bounds(1, 3_600_000_000, 3)?,
        errors: 0,
        first_error: None,
        stall: Duration::ZERO,
    };
    let mut completions = Vec::new();
    for t in tasks {
        let (ops, errors, first_error, h, done) = t.await.context("a worker panicked")??;
        completions.extend(done);
        out.ops += ops;
        out.errors += errors;
        out.first_error = out.first_error.or(first_error);
        out.latency_us.add(&h)?;
    }
    out.seconds = began.elapsed().as_secs_f64();
    out.stall = longest_gap(&mut completions);
    Ok(out)
}

/// Resident memory of a process, from /proc (MiB).
fn process_rss_mib(pid: u32) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.split_whitespace().next()?.parse::<f64>().ok())
        })
        .map_or(0.0, |kb| kb / 1024.0)
}

/// Bytes of the files under `path`, recursively (0 when it cannot be read).
pub(super) fn dir_bytes(path: &std::path::Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(path) else {
        return 0;
    };
    entries
        .flatten()
        .map(|e| match e.metadata() {
            Ok(m) if m.is_dir() => dir_bytes(&e.path()),
            Ok(m) => m.len(),
            Err(_) => 0,
        })
        .sum()
}

/// Kills every node, starts them again, and waits until each serves key 0 at `eventual` and
/// node 0 at `strong`: the time from the start to then.
async fn restart(cluster: &Arc<Mutex<LocalCluster>>, addrs: &[String]) -> Result<u64> {
    {
        let mut c = cluster.lock().unwrap_or_else(|p| p.into_inner());
        for i in 0..c.len() {
            c.kill(i);
        }
    }
    let began = Instant::now();
    cluster
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .start_all()?;
    let give_up = began + Duration::from_secs(300);
    let want = key(0);
    for (i, addr) in addrs.iter().enumerate() {
        let level = if i == 0 { "strong" } else { "eventual" };
        loop {
            let served = async {
                let mut conn = connect(addr, level).await?;
                let reply = conn
                    .pipeline(&[vec![b"GET".as_slice(), want.as_bytes()]])
                    .await?;
                Ok::<_, anyhow::Error>(matches!(reply.first(), Some(Value::Bulk(Some(_)))))
            }
            .await
            .unwrap_or(false);
            if served {
                break;
            }
            if Instant::now() > give_up {
                bail!(
                    "node {} did not serve a loaded key within 300 s of a restart",
                    i + 1
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    Ok(u64::try_from(began.elapsed().as_millis()).unwrap_or(u64::MAX))
}

pub async fn run(
    o: &BenchOptions,
    targets: &[Target],
    cluster: &Arc<Mutex<LocalCluster>>,
) -> Result<i32> {
    if o.connections == 0 || o.inflight == 0 {
        bail!("--connections and --inflight must be at least 1");
    }
    let addrs: Vec<String> = targets
        .iter()
        .map(|t| {
            t.resp
                .clone()
                .context("--scale measures over RESP: every node needs a RESP address")
        })
        .collect::<Result<_>>()?;
    let client = Client::with_timeout(&targets[0].http, Duration::from_secs(30));
    client
        .create_keyspace(
            KEYSPACE,
            &json!({"shards": 4, "replicas": targets.len().min(3)}),
        )
        .await
        .context("creating the scale keyspace")?;
    let value = vec![b'v'; o.value_bytes];
    let (cache_mib, dirs) = {
        let c = cluster.lock().unwrap_or_else(|p| p.into_inner());
        let storage = &c.configs[0].storage;
        (
            storage.cache_bytes as f64 / (1 << 20) as f64,
            c.configs
                .iter()
                .map(|n| n.data_dir.clone())
                .collect::<Vec<_>>(),
        )
    };
    println!(
        "scale: {} nodes, {}-byte values, {} connections × {} pipelined, {:?} per operation; \
         storage cache {cache_mib:.0} MiB per node",
        targets.len(),
        o.value_bytes,
        o.connections,
        o.inflight,
        o.duration
    );
    let mut rows = Vec::new();
    let mut loaded = 0;
    for size in sizes(o.keys as u64) {
        println!("{size} keys: loading {} more ...", size - loaded);
        let load_per_sec = load(&addrs, loaded, size, &value).await?;
        loaded = size;
        println!("{size} keys: SET for {:?} ...", o.duration);
        let set = drive(&addrs, o, size, true, &value, o.seed).await?;
        println!("{size} keys: GET at eventual for {:?} ...", o.duration);
        let get = drive(&addrs, o, size, false, &value, o.seed + 1).await?;
        let (rss_mib, disk_mib) = {
            let c = cluster.lock().unwrap_or_else(|p| p.into_inner());
            (
                (0..c.len())
                    .map(|i| c.pid(i).map_or(0.0, process_rss_mib))
                    .collect(),
                dirs.iter()
                    .map(|d| dir_bytes(d) as f64 / (1 << 20) as f64)
                    .collect(),
            )
        };
        println!("{size} keys: restarting every node (kill -9) ...");
        let restart_ms = restart(cluster, &addrs).await?;
        let rss_restarted_mib = {
            let c = cluster.lock().unwrap_or_else(|p| p.into_inner());
            (0..c.len())
                .map(|i| c.pid(i).map_or(0.0, process_rss_mib))
                .collect()
        };
        for m in [&set, &get] {
            if let Some(e) = &m.first_error {
                println!("  {} requests failed; the first: {e}", m.errors);
            }
        }
        rows.push(Row {
            keys: size,
            load_per_sec,
            set,
            get,
            restart_ms,
            rss_mib,
            rss_restarted_mib,
            disk_mib,
        });
    }
    print(&rows, cache_mib);
    if let Some(out) = &o.out {
        std::fs::create_dir_all(out)?;
        let json = json!({
            "cache_mib": cache_mib,
            "value_bytes": o.value_bytes,
            "connections": o.connections,
            "pipeline": o.inflight,
            "rows": rows.iter().map(|r| json!({
                "keys": r.keys,
                "load_per_sec": r.load_per_sec,
                "set_per_sec": r.set.per_sec(),
                "set_p999_ms": r.set.ms(0.999),
                "set_max_ms": r.set.max_ms(),
                "set_stall_ms": r.set.stall_ms(),
                "set_errors": r.set.errors,
                "get_per_sec": r.get.per_sec(),
                "get_p999_ms": r.get.ms(0.999),
                "get_max_ms": r.get.max_ms(),
                "get_stall_ms": r.get.stall_ms(),
                "get_errors": r.get.errors,
                "restart_ms": r.restart_ms,
                "rss_mib": r.rss_mib,
                "rss_restarted_mib": r.rss_restarted_mib,
                "disk_mib": r.disk_mib,
            })).collect::<Vec<_>>(),
        });
        std::fs::write(out.join("scale.json"), serde_json::to_string_pretty(&json)?)?;
        println!("wrote {}", out.join("scale.json").display());
    }
    let failed = rows.iter().any(|r| r.set.errors + r.get.errors > 0);
    Ok(i32::from(failed))
}

fn print(rows: &[Row], cache_mib: f64) {
    println!();
    println!(
        "{:>10} {:>10} {:>10} {:>9} {:>9} {:>9} {:>10} {:>9} {:>9} {:>10} {:>12} {:>12} {:>12}",
        "keys",
        "load/s",
        "SET/s",
        "p99.9 ms",
        "max ms",
        "stall ms",
        "GET/s",
        "p99.9 ms",
        "max ms",
        "restart s",
        "RSS MiB max",
        "restarted",
        "disk MiB max"
    );
    let max = |v: &[f64]| v.iter().copied().fold(0.0, f64::max);
    for r in rows {
        println!(
            "{:>10} {:>10.0} {:>10.0} {:>9.1} {:>9.1} {:>9.1} {:>10.0} {:>9.1} {:>9.1} {:>10.2} {:>12.0} {:>12.0} {:>12.0}",
            r.keys,
            r.load_per_sec,
            r.set.per_sec(),
            r.set.ms(0.999),
            r.set.max_ms(),
            r.set.stall_ms(),
            r.get.per_sec(),
            r.get.ms(0.999),
            r.get.max_ms(),
            r.restart_ms as f64 / 1000.0,
            max(&r.rss_mib),
            max(&r.rss_restarted_mib),
            max(&r.disk_mib),
        );
    }
    if let (Some(first), Some(last)) = (rows.first(), rows.last()) {
        if rows.len() > 1 {
            println!(
                "at {} keys, SET throughput is {:.0}% and GET {:.0}% of that at {} keys",
                last.keys,
                100.0 * last.set.per_sec() / first.set.per_sec().max(1e-9),
                100.0 * last.get.per_sec() / first.get.per_sec().max(1e-9),
                first.keys
            );
        }
    }
    if let Some(worst) = rows.iter().max_by(|a, b| a.set.stall.cmp(&b.set.stall)) {
        println!(
            "longest SET stall (no SET completed on any connection): {:.1} ms at {} keys; the \
             slowest single SET took {:.1} ms (a request's time includes its wait behind the \
             others in flight)",
            worst.set.stall_ms(),
            worst.keys,
            rows.iter().map(|r| r.set.max_ms()).fold(0.0, f64::max)
        );
    }
    println!(
        "memory per node is bounded by configuration ([storage] cache_bytes = {cache_mib:.0} MiB, \
         memtables, the change-feed and Raft buffers), not by the keys stored"
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_longest_gap_is_between_neighbours_in_time_order() {
        let t = Instant::now();
        let ms = |n: u64| t + Duration::from_millis(n);
        // Out of order, as connections report them; the gap 40 → 100 is the longest.
        let mut done = vec![ms(100), ms(10), ms(40), ms(120), ms(30)];
        assert_eq!(longest_gap(&mut done), Duration::from_millis(60));
        assert_eq!(longest_gap(&mut [ms(5)]), Duration::ZERO);
        assert_eq!(longest_gap(&mut []), Duration::ZERO);
    }
}
