//! `tunekv bench --pbs`: checks the cluster's live PBS estimate against measured
//! t-visibility. Each trial writes a fresh key through one node and, at each offset `t` after
//! the write is acknowledged, reads it at `eventual` from a node picked at random; the share of
//! reads that returned it is the measured P(t). The estimate the cluster made from its own
//! apply records (`/v1/cluster`'s `pbs`, docs/observability.md) is printed beside it, with
//! whether the two agree within [`TOLERANCE`] at every offset.

use crate::targets::Target;
use anyhow::{bail, Context, Result};
use rand::{Rng, SeedableRng};
use serde_json::json;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tunekv_client::{Client, Opts};

/// Offsets (ms after the acknowledgement) at which reads probe; each is a point of the
/// estimate's curve (`tunekv_core::pbs::POINTS_MS`).
pub const OFFSETS_MS: &[u64] = &[0, 1, 2, 5, 10, 20, 50, 100];
/// The largest difference between measured and estimated probability called agreement: the
/// measured share of a few hundred reads is within about ±0.05 of its probability (2σ at
/// p = 0.5, 300 reads), and the estimate pairs apply batches, not single reads.
pub const TOLERANCE: f64 = 0.1;
/// The keyspace measured: ordered, or leaderless with `--keyspace-mode leaderless`.
const KEYSPACE: &str = "pbs";
const KEYSPACE_LEADERLESS: &str = "pbs_leaderless";

/// One offset's result. The estimate is evaluated for each probe where it actually went and
/// when it was actually served, then averaged: a probe that reached the leader sees the write
/// (P = 1); one that reached a follower sees it with the estimate's delay distribution at
/// the probe's real age of the write — its timer fires a little after t, it is served half a
/// round trip after it is sent, and the write's acknowledgement took about as long to come
/// back from the leader. The random node choice is thereby not compared, only the delays.
pub struct Row {
    pub t_ms: u64,
    pub measured: f64,
    pub estimated: f64,
    /// The cluster's curve at t as it states it (reads spread evenly over the replicas).
    pub curve: f64,
    pub reads: u64,
}

pub async fn run(
    targets: &[Target],
    trials: usize,
    delay_ms: u64,
    seed: u64,
    out: Option<&Path>,
    leaderless: bool,
) -> Result<i32> {
    let ks = if leaderless {
        KEYSPACE_LEADERLESS
    } else {
        KEYSPACE
    };
    if trials == 0 {
        bail!("--pbs-trials must be at least 1");
    }
    let nodes: Vec<Client> = targets
        .iter()
        .map(|t| Client::with_timeout(&t.http, Duration::from_secs(10)))
        .collect();
    let replicas = nodes.len().min(3) as u32;
    let spec = if leaderless {
        json!({"mode": "leaderless", "replicas": replicas})
    } else {
        json!({"shards": 1, "replicas": replicas})
    };
    nodes[0]
        .create_keyspace(ks, &spec)
        .await
        .context("creating the pbs keyspace")?;
    if delay_ms > 0 {
        for n in &nodes {
            n.faults(&json!({"delay_ms": delay_ms}))
                .await
                .context("--pbs-delay-ms needs nodes started with --enable-faults")?;
        }
        println!("every node's messages delayed {delay_ms} ms (fault hook)");
    }
    let result = measure(&nodes, ks, leaderless, trials, seed).await;
    if delay_ms > 0 {
        for n in &nodes {
            let _ = n.faults(&json!({"clear": true})).await;
        }
    }
    let (counts, estimate, curve) = result?;
    let rows: Vec<Row> = OFFSETS_MS
        .iter()
        .zip(&counts)
        .map(|(t, (seen, reads))| Row {
            t_ms: *t,
            measured: *seen as f64 / (*reads).max(1) as f64,
            estimated: estimate
                .iter()
                .find(|(x, _)| x == t)
                .map_or(f64::NAN, |(_, p)| *p),
            curve: curve
                .points
                .iter()
                .find(|(x, _)| x == t)
                .map_or(f64::NAN, |(_, p)| *p),
            reads: *reads,
        })
        .collect();
    let agree = rows
        .iter()
        .all(|r| (r.measured - r.estimated).abs() <= TOLERANCE);
    println!(
        "\nPBS, keyspace {ks:?} ({replicas} replicas, {trials} writes): probability an \
         eventual read t ms after a write returns it"
    );
    println!(
        "{:>8}  {:>9}  {:>9}  {:>6}  {:>13}",
        "t (ms)", "measured", "estimated", "reads", "cluster curve"
    );
    for r in &rows {
        println!(
            "{:>8}  {:>9.3}  {:>9.3}  {:>6}  {:>13.3}",
            r.t_ms, r.measured, r.estimated, r.reads, r.curve
        );
    }
    println!(
        "(estimated: the cluster's delay distribution evaluated for each read where it went and \
         when it was served; cluster curve: as /v1/cluster states it, reads spread evenly)"
    );
    println!(
        "estimate and measurement {} within {TOLERANCE} at every t",
        if agree { "agree" } else { "DO NOT agree" }
    );
    if let Some(dir) = out {
        std::fs::create_dir_all(dir)?;
        let summary = json!({
            "keyspace": ks,
            "replicas": replicas,
            "trials": trials,
            "delay_ms": delay_ms,
            "tolerance": TOLERANCE,
            "agree": agree,
            "rows": rows.iter().map(|r| json!({
                "t_ms": r.t_ms, "measured": r.measured, "estimated": r.estimated,
                "curve": r.curve, "reads": r.reads,
            })).collect::<Vec<_>>(),
        });
        std::fs::write(dir.join("pbs.json"), serde_json::to_vec_pretty(&summary)?)?;
    }
    Ok(0)
}

/// A probe: when it was served (ms after the acknowledgement) and whether it reached the
/// leader.
type Probe = (f64, bool);

/// The node leading the keyspace's shard.
async fn leader(nodes: &[Client], ks: &str) -> Result<usize> {
    let group = format!("{ks}/shard0");
    for _ in 0..100 {
        let status = nodes[0].cluster().await?;
        let leader = status["groups"]
            .as_array()
            .and_then(|gs| gs.iter().find(|g| g["name"] == group.as_str()))
            .and_then(|g| g["leader"].as_u64());
        let found = leader.and_then(|id| {
            status["nodes"]
                .as_array()?
                .iter()
                .position(|n| n["id"].as_u64() == Some(id))
        });
        if let Some(i) = found.filter(|i| *i < nodes.len()) {
            return Ok(i);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    bail!("no leader for {group}")
}

/// Runs the trials; returns (reads that saw the write, reads) per offset and the cluster's
/// estimate afterwards.
async fn measure(
    nodes: &[Client],
    ks: &str,
    leaderless: bool,
    trials: usize,
    seed: u64,
) -> Result<(Vec<(u64, u64)>, Vec<(u64, f64)>, tunekv_core::pbs::PbsCurve)> {
    let counts: Arc<Vec<[std::sync::atomic::AtomicU64; 2]>> =
        Arc::new(OFFSETS_MS.iter().map(|_| Default::default()).collect());
    // When each probe was served, in ms after the acknowledgement (timers fire late, and a
    // read reaches its node half a round trip after it is sent): the estimate is evaluated
    // there.
    let sent_at: Arc<std::sync::Mutex<Vec<Vec<Probe>>>> =
        Arc::new(std::sync::Mutex::new(vec![Vec::new(); OFFSETS_MS.len()]));
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    // Writes go to the shard's leader: the estimate is of reads after the leader acknowledged
    // (a write forwarded by another node is acknowledged a network hop later).
    // Leaderless: every write is coordinated by the first node (a replica of every key), whose
    // own copy is stored before it acknowledges.
    let leader = if leaderless {
        0
    } else {
        leader(nodes, ks).await?
    };
    let writer = &nodes[leader];
    let mut probes = tokio::task::JoinSet::new();
    let started = Instant::now();
    let mut last_report = Instant::now();
    for i in 0..trials {
        let key = format!("w{i}-{}", rng.gen::<u32>());
        writer
            .put(ks, key.as_bytes(), b"v", &Opts::default())
            .await
            .with_context(|| format!("write {i}"))?;
        let acked = tokio::time::Instant::now();
        for (slot, t) in OFFSETS_MS.iter().enumerate() {
            let pick = rng.gen_range(0..nodes.len());
            let (reader, to_leader) = (nodes[pick].clone(), pick == leader);
            let (key, counts, t, sent_at, ks) = (
                key.clone(),
                counts.clone(),
                *t,
                sent_at.clone(),
                ks.to_string(),
            );
            probes.spawn(async move {
                tokio::time::sleep_until(acked + Duration::from_millis(t)).await;
                let sent = acked.elapsed();
                if let Ok(r) = reader
                    .get(&ks, key.as_bytes(), &Opts::level("eventual"))
                    .await
                {
                    // Served about half a round trip after it was sent; and the write's
                    // acknowledgement took about as long to come back from the leader.
                    let at = (sent + (acked.elapsed() - sent)).as_secs_f64() * 1000.0;
                    sent_at.lock().unwrap_or_else(|p| p.into_inner())[slot].push((at, to_leader));
                    let c = &counts[slot];
                    c[1].fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    if r.value.is_some() {
                        c[0].fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    }
                }
            });
        }
        if last_report.elapsed() >= Duration::from_secs(2) {
            println!(
                "  {}/{trials} writes, {:.0}s",
                i + 1,
                started.elapsed().as_secs_f64()
            );
            last_report = Instant::now();
        }
        // Spread the trials out so one write's probes are not queued behind the next's.
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    while probes.join_next().await.is_some() {}
    let counts = counts
        .iter()
        .map(|c| {
            (
                c[0].load(std::sync::atomic::Ordering::Relaxed),
                c[1].load(std::sync::atomic::Ordering::Relaxed),
            )
        })
        .collect();
    let status = nodes[0].cluster().await.context("reading the estimate")?;
    let curve = status["pbs"]
        .as_array()
        .and_then(|cs| cs.iter().find(|c| c["keyspace"] == ks))
        .context("the cluster reports no PBS estimate for the keyspace")?;
    let curve_parsed: tunekv_core::pbs::PbsCurve =
        serde_json::from_value(curve.clone()).context("the estimate's curve")?;
    let sent_at = sent_at.lock().unwrap_or_else(|p| p.into_inner());
    let estimate = OFFSETS_MS
        .iter()
        .zip(sent_at.iter())
        .map(|(t, times)| {
            // The leader holds an acknowledged write at once; a follower with the
            // estimate's delay distribution F: P = 1/R + (R-1)/R F, so F = (P - 1/R) R/(R-1).
            let r = f64::from(curve_parsed.replicas.max(2));
            let p = times
                .iter()
                .map(|(at, to_leader)| {
                    if *to_leader {
                        1.0
                    } else {
                        let p = tunekv_core::pbs::probability_at(&curve_parsed, *at);
                        ((p - 1.0 / r) * r / (r - 1.0)).clamp(0.0, 1.0)
                    }
                })
                .sum::<f64>()
                / times.len().max(1) as f64;
            (*t, p)
        })
        .collect();
    println!(
        "estimate from {} {} (99% by {} ms, 99.9% by {} ms)",
        curve["samples"],
        if leaderless {
            "round trips of coordinators to replicas (WARS)"
        } else {
            "follower visibility delays"
        },
        curve["t99_ms"],
        curve["t999_ms"]
    );
    Ok((counts, estimate, curve_parsed))
}
