//! `tunekv bench --keyspace-mode leaderless`: rows for leaderless keyspaces at each `w` and `r`,
//! a counter keyspace (INCR at w=one and w=quorum, GET) and a volatile keyspace (weak), beside Redis (w=one, volatile) and etcd (quorum) when
//! `--compare` starts them; then the time the replicas take to agree after a healed partition,
//! with no client reads.

use super::peers::Peers;
use super::{Driver, PhaseSpec, Protocol};
use crate::targets::Target;
use anyhow::{bail, Result};
use serde_json::json;
use std::time::{Duration, Instant};
use tunekv_client::{Client, Opts};

pub const LEADERLESS: &str = "bench_leaderless";
pub const VOLATILE: &str = "bench_volatile";
/// A leaderless counter keyspace (`conflict: "counter"`): writes are INCR.
pub const COUNTER: &str = "bench_counter";
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
        counter: keyspace == COUNTER,
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
            tunekv,
            ("one", "one"),
        ),
    ];
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
