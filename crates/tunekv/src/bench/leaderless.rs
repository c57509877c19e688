//! `tunekv bench --keyspace-mode leaderless`: rows for leaderless keyspaces at each `w` and `r`,
//! a counter keyspace (INCR at w=one and w=quorum, GET), a map (HSET, HGET), siblings (HTTP: a
//! read of every value, and a read written back with its context) and a volatile keyspace
//! (weak), beside Redis (w=one, volatile) and etcd (quorum) when
//! `--compare` starts them; then the time the replicas take to agree after a healed partition,
//! with no client reads.

use super::peers::Peers;
use super::{Driver, PhaseSpec, Protocol, RowKind};
use crate::targets::Target;
use anyhow::{bail, Result};
use serde_json::json;
use std::time::{Duration, Instant};
use tunekv_client::{Client, Opts};

pub const LEADERLESS: &str = "bench_leaderless";
pub const VOLATILE: &str = "bench_volatile";
/// A leaderless counter keyspace (`conflict: "counter"`): writes are INCR.
pub const COUNTER: &str = "bench_counter";
/// A leaderless map keyspace (`conflict: "map"`): writes are HSET of one field, reads HGET.
pub const MAP: &str = "bench_map";
/// A leaderless siblings keyspace (`conflict: "siblings"`): reads return every value and
/// their context; writes read, then write back with that context (HTTP rows only).
pub const SIBLINGS: &str = "bench_siblings";
/// A leaderless set keyspace (`conflict: "set"`) for the SADD-cost measurement.
pub const SETS: &str = "bench_set";
/// Set sizes SADD's cost is measured at, and SADDs timed at each.
const SET_SIZES: [usize; 3] = [10, 10_000, 100_000];
const SADDS_TIMED: usize = 300;
/// Keys written on the cut-off node for the convergence measurement.
const CONVERGE_KEYS: usize = 200;

/// The name a counter row gives key `k` (its own, apart from the string rows' keys).
pub fn counter_key(k: &str) -> String {
    format!("ctr:{k}")
}

/// Creates the keyspaces and loads every key into each (counters start at 1).
pub async fn setup(
    admin: &Client,
    targets: &[Target],
    keys: &[String],
    value: &[u8],
) -> Result<()> {
    let replicas = targets.len().min(3);
    for (name, spec) in [
        (
            LEADERLESS,
            json!({"mode": "leaderless", "replicas": replicas, "conflict": "lww"}),
        ),
        (VOLATILE, json!({"mode": "volatile", "replicas": replicas})),
        (
            COUNTER,
            json!({"mode": "leaderless", "replicas": replicas, "conflict": "counter"}),
        ),
        (
            MAP,
            json!({"mode": "leaderless", "replicas": replicas, "conflict": "map"}),
        ),
        (
            SIBLINGS,
            json!({"mode": "leaderless", "replicas": replicas, "conflict": "siblings"}),
        ),
    ] {
        match admin.create_keyspace(name, &spec).await {
            Ok(_) => {}
            Err(e) if e.code() == Some("keyspace_exists") => {}
            Err(e) => bail!("cannot create keyspace {name}: {e}"),
        }
        let opts = Opts::default().wait_ms(5000);
        for k in keys {
            let loaded = if name == COUNTER {
                admin
                    .add(name, counter_key(k).as_bytes(), 1, None, &opts)
                    .await
            } else if name == MAP {
                let field = String::from_utf8_lossy(value).into_owned();
                let body = json!({ "set": { "f": field } });
                admin.update(name, k.as_bytes(), &body, &opts).await
            } else {
                admin.put(name, k.as_bytes(), value, &opts).await
            };
            loaded.map_err(|e| anyhow::anyhow!("cannot load {k} into {name}: {e}"))?;
        }
    }
    Ok(())
}

fn row(label: &str, keyspace: &str, read_ratio: f64, driver: Driver, q: (&str, &str)) -> PhaseSpec {
    let (level, r, w) = match (keyspace, q) {
        (VOLATILE, _) => ("weak", None, None),
        (_, (r, w)) => ("eventual", Some(r.to_string()), Some(w.to_string())),
    };
    PhaseSpec {
        label: label.to_string(),
        level: level.to_string(),
        read_ratio,
        driver,
        keyspace: keyspace.to_string(),
        r,
        w,
        kind: match keyspace {
            COUNTER => RowKind::Counter,
            MAP => RowKind::Hash,
            SIBLINGS => RowKind::Siblings,
            _ => RowKind::Plain,
        },
    }
}

/// The rows: writes at w=one, quorum, all; reads at r=one, quorum; volatile SET and GET; with
/// the peers' rows beside them.
pub fn specs(protocol: Protocol, peers: Option<&Peers>) -> Vec<PhaseSpec> {
    let tunekv = match protocol {
        Protocol::Http => Driver::TunekvHttp,
        Protocol::Resp => Driver::TunekvResp,
    };
    let mut rows = vec![
        row(
            "leaderless write w=one",
            LEADERLESS,
            0.0,
            tunekv.clone(),
            ("one", "one"),
        ),
        row(
            "leaderless write w=quorum",
            LEADERLESS,
            0.0,
            tunekv.clone(),
            ("one", "quorum"),
        ),
        row(
            "leaderless write w=all",
            LEADERLESS,
            0.0,
            tunekv.clone(),
            ("one", "all"),
        ),
        row(
            "leaderless read r=one",
            LEADERLESS,
            1.0,
            tunekv.clone(),
            ("one", "quorum"),
        ),
        row(
            "leaderless read r=quorum",
            LEADERLESS,
            1.0,
            tunekv.clone(),
            ("quorum", "quorum"),
        ),
        row(
            "counter INCR w=one",
            COUNTER,
            0.0,
            tunekv.clone(),
            ("one", "one"),
        ),
        row(
            "counter INCR w=quorum",
            COUNTER,
            0.0,
            tunekv.clone(),
            ("one", "quorum"),
        ),
        row(
            "counter GET r=one",
            COUNTER,
            1.0,
            tunekv.clone(),
            ("one", "quorum"),
        ),
        row(
            "map HSET w=quorum",
            MAP,
            0.0,
            tunekv.clone(),
            ("one", "quorum"),
        ),
        row(
            "map HGET r=one",
            MAP,
            1.0,
            tunekv.clone(),
            ("one", "quorum"),
        ),
        row(
            "volatile write (weak)",
            VOLATILE,
            0.0,
            tunekv.clone(),
            ("one", "one"),
        ),
        row(
            "volatile read (weak)",
            VOLATILE,
            1.0,
            tunekv.clone(),
            ("one", "one"),
        ),
    ];
    if protocol == Protocol::Http {
        rows.push(row(
            "siblings read+write w=quorum",
            SIBLINGS,
            0.0,
            tunekv.clone(),
            ("one", "quorum"),
        ));
        rows.push(row(
            "siblings read r=one",
            SIBLINGS,
            1.0,
            tunekv.clone(),
            ("one", "quorum"),
        ));
    }
    if let Some(p) = peers {
        if let Some(addr) = &p.redis {
            let redis = Driver::Redis { addr: addr.clone() };
            rows.push(row(
                "redis SET",
                VOLATILE,
                0.0,
                redis.clone(),
                ("one", "one"),
            ));
            rows.push(row(
                "redis GET",
                VOLATILE,
                1.0,
                redis.clone(),
                ("one", "one"),
            ));
            rows.push(row("redis INCR", COUNTER, 0.0, redis, ("one", "one")));
        }
        if !p.etcd.is_empty() {
            let etcd = |serializable| Driver::Etcd {
                endpoints: p.etcd.clone(),
                serializable,
            };
            rows.push(row(
                "etcd put",
                LEADERLESS,
                0.0,
                etcd(false),
                ("one", "one"),
            ));
            rows.push(row(
                "etcd linearizable read",
                LEADERLESS,
                1.0,
                etcd(false),
                ("one", "one"),
            ));
        }
    }
    rows
}

/// Cuts the last node off (fault hook), writes `CONVERGE_KEYS` keys through it at w=one, heals,
/// and measures how long until every node reports the same digest, with no client reads.
pub async fn time_to_converge(targets: &[Target], value: &[u8]) -> Result<String> {
    if targets.len() < 2 {
        bail!("needs at least two nodes");
    }
    let cut = targets.last().map(|t| t.http.clone()).unwrap_or_default();
    let c = Client::with_timeout(&cut, Duration::from_secs(10));
    c.faults(&json!({"isolate": true})).await.map_err(|e| {
        anyhow::anyhow!("the fault hook is needed (nodes started with --enable-faults): {e}")
    })?;
    let mut written = 0;
    for i in 0..CONVERGE_KEYS {
        let key = format!("converge{i:05}");
        if c.put(
            LEADERLESS,
            key.as_bytes(),
            value,
            &Opts::default().w("one").wait_ms(2000),
        )
        .await
        .is_ok()
        {
            written += 1;
        }
    }
    c.faults(&json!({"clear": true})).await?;
    let healed = Instant::now();
    let deadline = healed + Duration::from_secs(120);
    while Instant::now() < deadline {
        let d = crate::targets::digests(targets, LEADERLESS).await;
        if d.iter().all(|x| x.is_some() && *x == d[0]) {
            return Ok(format!(
                "time to converge after a healed partition: {:.2} s ({written} keys written at w=one \
                 on the cut-off node; every replica reported the same digest, no client reads)",
                healed.elapsed().as_secs_f64()
            ));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    bail!("the replicas did not converge within 120 s")
}

/// The cost of one SADD (a new member, `w=quorum`, one client, one at a time) into sets of
/// 10, 10k and 100k members: an update is a delta joined member by member and stored as one
/// record per member, so the cost should not grow with the set (riak#483: O(size) adds).
pub async fn set_add_cost(targets: &[Target]) -> Result<String> {
    let first = targets.first().ok_or_else(|| anyhow::anyhow!("no nodes"))?;
    let c = Client::with_timeout(&first.http, Duration::from_secs(60));
    let spec = json!({"mode": "leaderless", "replicas": targets.len().min(3), "conflict": "set"});
    match c.create_keyspace(SETS, &spec).await {
        Ok(_) => {}
        Err(e) if e.code() == Some("keyspace_exists") => {}
        Err(e) => bail!("cannot create keyspace {SETS}: {e}"),
    }
    let opts = Opts::default().w("quorum").wait_ms(30_000);
    let mut out = String::from("set SADD cost by set size (w=quorum, one client, sequential):\n");
    let run = format!("{:x}", rand::random::<u32>());
    for size in SET_SIZES {
        let key = format!("set{size}-{run}");
        let started = Instant::now();
        for chunk in (0..size).collect::<Vec<_>>().chunks(5_000) {
            let members: Vec<String> = chunk.iter().map(|i| format!("member{i:07}")).collect();
            c.update(SETS, key.as_bytes(), &json!({ "add": members }), &opts)
                .await
                .map_err(|e| anyhow::anyhow!("loading {size} members: {e}"))?;
        }
        let loaded = started.elapsed();
        let mut took = Vec::with_capacity(SADDS_TIMED);
        for i in 0..SADDS_TIMED {
            let t = Instant::now();
            c.update(
                SETS,
                key.as_bytes(),
                &json!({"add": [format!("new{i:05}")]}),
                &opts,
            )
            .await
            .map_err(|e| anyhow::anyhow!("SADD into {size}: {e}"))?;
            took.push(t.elapsed());
        }
        took.sort();
        let us = |d: Duration| d.as_micros();
        out += &format!(
            "  {size:>7} members: SADD p50 {} µs, p99 {} µs, mean {} µs ({SADDS_TIMED} adds; \
             loaded in {:.1} s)\n",
            us(took[took.len() / 2]),
            us(took[took.len() * 99 / 100]),
            us(took.iter().sum::<Duration>() / SADDS_TIMED as u32),
            loaded.as_secs_f64()
        );
    }
    Ok(out.trim_end().to_string())
}

/// Counters stay writable on every node through a partition: the last node is cut off, every
/// node takes INCRs at `w=one` for `secs` seconds (one client per node, one at a time), the
/// partition heals, and the sum must be on every node once the replicas agree. Reports each
/// node's INCRs per second and whether none was lost.
pub async fn incr_during_partition(targets: &[Target], secs: u64) -> Result<String> {
    if targets.len() < 2 {
        bail!("needs at least two nodes");
    }
    let cut = Client::with_timeout(&targets[targets.len() - 1].http, Duration::from_secs(10));
    cut.faults(&json!({"isolate": true})).await.map_err(|e| {
        anyhow::anyhow!("the fault hook is needed (nodes started with --enable-faults): {e}")
    })?;
    let key = format!("ctr:partition-{:x}", rand::random::<u32>());
    let until = Instant::now() + Duration::from_secs(secs);
    let tasks: Vec<_> = targets
        .iter()
        .map(|t| {
            let (c, key) = (
                Client::with_timeout(&t.http, Duration::from_secs(5)),
                key.clone(),
            );
            tokio::spawn(async move {
                let opts = Opts::default().w("one").wait_ms(2000);
                let (mut ok, mut failed) = (0u64, 0u64);
                while Instant::now() < until {
                    match c.add(COUNTER, key.as_bytes(), 1, None, &opts).await {
                        Ok(_) => ok += 1,
                        Err(_) => failed += 1,
                    }
                }
                (ok, failed)
            })
        })
        .collect();
    let mut counts = Vec::new();
    for t in tasks {
        counts.push(t.await.unwrap_or((0, 0)));
    }
    cut.faults(&json!({"clear": true})).await?;
    let acked: u64 = counts.iter().map(|c| c.0).sum();
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut agreed = false;
    while Instant::now() < deadline {
        let d = crate::targets::digests(targets, COUNTER).await;
        if d.iter().all(|x| x.is_some() && *x == d[0]) {
            agreed = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut reads = Vec::new();
    for t in targets {
        let c = Client::with_timeout(&t.http, Duration::from_secs(10));
        let r = c
            .get(COUNTER, key.as_bytes(), &Opts::default().r("one"))
            .await;
        reads.push(
            r.ok()
                .and_then(|r| r.value)
                .and_then(|v| String::from_utf8(v).ok())
                .and_then(|v| v.parse::<u64>().ok()),
        );
    }
    let per_node: Vec<String> = counts
        .iter()
        .enumerate()
        .map(|(i, (ok, failed))| {
            format!(
                "node {}{}: {:.0}/s ({failed} refused)",
                i + 1,
                if i + 1 == targets.len() {
                    " (cut off)"
                } else {
                    ""
                },
                *ok as f64 / secs as f64
            )
        })
        .collect();
    let verdict = if agreed && reads.iter().all(|r| *r == Some(acked)) {
        format!("after healing every node reads {acked}, the sum of the acknowledged INCRs")
    } else {
        format!("after healing the nodes read {reads:?}, the acknowledged INCRs sum to {acked}")
    };
    Ok(format!(
        "counter INCR at w=one on every node during a partition ({secs} s): {}; {verdict}",
        per_node.join(", ")
    ))
}
