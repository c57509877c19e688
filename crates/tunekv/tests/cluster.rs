//! Foundation behaviour on a real 3-node cluster: replication, strong and eventual reads,
//! crash recovery, quorum loss, and bad input. Each test runs its own node processes.

mod common;

use common::{create_keyspace, eventually, leader_of, start};
use std::time::{Duration, Instant};
use tunekv_client::Opts;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_on_node_1_is_read_at_strong_on_nodes_2_and_3() {
    let c = start(3, false).await;
    create_keyspace(&c.client(0), "ks", 4).await;
    for i in 0..20 {
        let key = format!("key-{i}");
        let value = format!("value-{i}");
        let w = c
            .client(0)
            .put("ks", key.as_bytes(), value.as_bytes(), &Opts::default())
            .await
            .expect("put");
        assert!(
            w.index > 0 && w.commit_ms > 0,
            "a write returns its committed position: {w:?}"
        );
        for node in [1, 2] {
            let r = c
                .client(node)
                .get("ks", key.as_bytes(), &Opts::level("strong"))
                .await
                .expect("strong get");
            assert_eq!(
                r.value.as_deref(),
                Some(value.as_bytes()),
                "node {} at strong",
                node + 1
            );
            assert_eq!(r.receipt.level, "strong");
            assert_eq!(r.receipt.served_by, (node + 1).to_string());
            assert_eq!(r.receipt.staleness, "entries=0;ms=0");
            assert!(
                r.receipt.index().unwrap_or(0) >= w.index,
                "served at or past the write's index"
            );
        }
    }
    // Eventual reads are served locally and say how stale they were.
    let r = c
        .client(2)
        .get("ks", b"key-0", &Opts::level("eventual"))
        .await
        .expect("eventual get");
    assert_eq!(r.receipt.level, "eventual");
    assert!(r.receipt.staleness_parts().is_some(), "{:?}", r.receipt);
    // The keyspace default level applies when none is named.
    let r = c
        .client(1)
        .get("ks", b"key-1", &Opts::default())
        .await
        .expect("default-level get");
    assert_eq!(r.receipt.level, "strong");
    // Deletes replicate too.
    let d = c
        .client(1)
        .delete("ks", b"key-2", &Opts::default())
        .await
        .expect("delete");
    assert!(d.existed);
    let r = c
        .client(2)
        .get("ks", b"key-2", &Opts::level("strong"))
        .await
        .expect("get deleted");
    assert_eq!(r.value, None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_the_leader_mid_stream_loses_no_acknowledged_write() {
    let mut c = start(3, false).await;
    create_keyspace(&c.client(0), "ks", 1).await;
    let leader = eventually(Duration::from_secs(10), "a leader for ks/shard0", || {
        leader_of_via(&c, 0)
    })
    .await;
    let leader_idx = (leader - 1) as usize;
    let via = (leader_idx + 1) % 3;
    let writer = c.client(via);
    let mut acked = Vec::new();
    let started = Instant::now();
    let mut i = 0u32;
    // Bounded stream: at most 400 writes or 20 s, with the leader killed after 40 acks.
    while i < 400 && started.elapsed() < Duration::from_secs(20) {
        let key = format!("k{i}");
        if writer
            .put(
                "ks",
                key.as_bytes(),
                key.as_bytes(),
                &Opts::default().wait_ms(3000),
            )
            .await
            .is_ok()
        {
            acked.push(key);
        }
        if acked.len() == 40 && c.pid(leader_idx).is_some() {
            c.kill(leader_idx);
        }
        if c.pid(leader_idx).is_none() && acked.len() >= 80 {
            break;
        }
        i += 1;
    }
    assert!(c.pid(leader_idx).is_none(), "the leader was killed");
    assert!(
        acked.len() >= 80,
        "writes continued after the new leader was elected: {} acked",
        acked.len()
    );
    let new_leader = eventually(Duration::from_secs(10), "a new leader", || {
        leader_of_via(&c, via)
    })
    .await;
    assert_ne!(new_leader, leader);
    for key in &acked {
        for node in (0..3).filter(|n| *n != leader_idx) {
            let r = c
                .client(node)
                .get("ks", key.as_bytes(), &Opts::level("strong"))
                .await
                .expect("strong get");
            assert_eq!(
                r.value.as_deref(),
                Some(key.as_bytes()),
                "acknowledged {key} on node {}",
                node + 1
            );
        }
    }
    c.start_node(leader_idx).expect("restart");
    // Regression: a read that reached a just-restarted node before its catalog reconciler had
    // reopened the shard group got `unavailable`. The first answer it gives must be the value.
    let restarted = c.client(leader_idx);
    let first = eventually(
        Duration::from_secs(30),
        "the restarted node answers",
        || {
            // A node that exited at start fails here at once (its log follows the panic).
            let exited = c.exited(leader_idx);
            let (restarted, first_key) = (&restarted, acked[0].clone());
            async move {
                assert!(exited.is_none(), "the restarted node exited: {exited:?}");
                match restarted
                    .get(
                        "ks",
                        first_key.as_bytes(),
                        &Opts::level("strong").wait_ms(5000),
                    )
                    .await
                {
                    Err(tunekv_client::ClientError::Transport(_)) => None,
                    other => Some(other),
                }
            }
        },
    )
    .await;
    let first = first.expect("first answer after restart");
    assert_eq!(first.value.as_deref(), Some(acked[0].as_bytes()));
    c.wait_ready(Duration::from_secs(30))
        .await
        .expect("restarted node ready");
    for key in &acked {
        let r = restarted
            .get("ks", key.as_bytes(), &Opts::level("strong").wait_ms(5000))
            .await
            .expect("strong get on the restarted node");
        assert_eq!(
            r.value.as_deref(),
            Some(key.as_bytes()),
            "{key} on the restarted node"
        );
        assert_eq!(r.receipt.served_by, leader.to_string());
    }
}

async fn leader_of_via(c: &common::TestCluster, via: usize) -> Option<u64> {
    leader_of(&c.client(via), "ks/shard0").await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_all_nodes_and_restarting_keeps_data_and_keyspaces() {
    let mut c = start(3, false).await;
    create_keyspace(&c.client(0), "alpha", 2).await;
    create_keyspace(&c.client(1), "beta", 3).await;
    for i in 0..30 {
        let ks = if i % 2 == 0 { "alpha" } else { "beta" };
        let k = format!("k{i}");
        c.client(i % 3)
            .put(
                ks,
                k.as_bytes(),
                format!("v{i}").as_bytes(),
                &Opts::default(),
            )
            .await
            .expect("put");
    }
    for n in 0..3 {
        c.kill(n);
    }
    for n in 0..3 {
        c.start_node(n).expect("restart");
    }
    c.wait_ready(Duration::from_secs(30))
        .await
        .expect("ready after restart");
    for i in 0..30 {
        let ks = if i % 2 == 0 { "alpha" } else { "beta" };
        let k = format!("k{i}");
        let r = c
            .client((i + 1) % 3)
            .get(ks, k.as_bytes(), &Opts::level("strong").wait_ms(5000))
            .await
            .expect("strong get after restart");
        assert_eq!(r.value, Some(format!("v{i}").into_bytes()), "{ks}/{k}");
    }
    let list = reqwest_json(&format!("{}/v1/keyspaces", c.http(2))).await;
    let names: Vec<&str> = list["keyspaces"]
        .as_array()
        .expect("list")
        .iter()
        .filter_map(|k| k["name"].as_str())
        .collect();
    assert_eq!(names, ["alpha", "beta"]);
}

async fn reqwest_json(url: &str) -> serde_json::Value {
    reqwest::get(url)
        .await
        .expect("GET")
        .json()
        .await
        .expect("JSON")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_cut_off_from_the_majority_refuses_writes_and_strong_reads_but_serves_eventual() {
    let mut c = start(3, false).await;
    create_keyspace(&c.client(0), "ks", 2).await;
    c.client(0)
        .put("ks", b"x", b"before", &Opts::default())
        .await
        .expect("put");
    // Make sure node 3 has applied it, then cut it off by killing the others.
    eventually(Duration::from_secs(5), "node 3 applied x", || async {
        let r = c
            .client(2)
            .get("ks", b"x", &Opts::level("eventual"))
            .await
            .ok()?;
        (r.value.as_deref() == Some(b"before".as_slice())).then_some(())
    })
    .await;
    c.kill(0);
    c.kill(1);
    let lone = c.client(2);
    let budget_ms = 1500;
    let t = Instant::now();
    let err = lone
        .put("ks", b"x", b"after", &Opts::default().wait_ms(budget_ms))
        .await
        .expect_err("write without quorum");
    assert!(
        matches!(err.code(), Some("no_quorum") | Some("timeout")),
        "{err}"
    );
    assert!(
        t.elapsed() < Duration::from_millis(budget_ms + 3000),
        "answered within the budget, took {:?}",
        t.elapsed()
    );
    let t = Instant::now();
    let err = lone
        .get("ks", b"x", &Opts::level("strong").wait_ms(budget_ms))
        .await
        .expect_err("strong read without quorum");
    assert!(
        matches!(err.code(), Some("no_quorum") | Some("timeout")),
        "{err}"
    );
    assert!(
        t.elapsed() < Duration::from_millis(budget_ms + 3000),
        "answered within the budget, took {:?}",
        t.elapsed()
    );
    let r = lone
        .get("ks", b"x", &Opts::level("eventual"))
        .await
        .expect("eventual read still served");
    assert_eq!(r.value.as_deref(), Some(b"before".as_slice()));
    assert_eq!(r.receipt.level, "eventual");
    assert_eq!(r.receipt.served_by, "3");
    let (_, ms) = r.receipt.staleness_parts().expect("staleness");
    assert!(ms >= 100, "a cut-off copy reports its silence, got {ms} ms");
}

fn code<T>(r: Result<T, tunekv_client::ClientError>) -> Option<String> {
    r.err().and_then(|e| e.code().map(str::to_string))
}

fn status<T>(r: Result<T, tunekv_client::ClientError>) -> u16 {
    match r {
        Err(tunekv_client::ClientError::Api { status, .. }) => status,
        _ => 0,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_is_rejected_with_its_code_and_changes_nothing() {
    let c = start(3, false).await;
    let a = c.client(0);
    let spec = serde_json::json!({"shards": 2, "replicas": 3, "default_level": "strong", "value_bytes_max": 1024});
    a.create_keyspace("ks", &spec).await.expect("create");
    a.put("ks", b"k", b"original", &Opts::default())
        .await
        .expect("put");

    // Key too large (over 1 KiB).
    let big_key = vec![b'k'; 1025];
    assert_eq!(
        code(a.put("ks", &big_key, b"v", &Opts::default()).await).as_deref(),
        Some("key_too_large")
    );
    // Value over the keyspace's limit.
    let r = a.put("ks", b"k", &vec![0u8; 1025], &Opts::default()).await;
    assert_eq!(
        status(a.put("ks", b"k", &vec![0u8; 1025], &Opts::default()).await),
        413
    );
    assert_eq!(code(r).as_deref(), Some("value_too_large"));
    // Unknown level, on reads and writes.
    assert_eq!(
        code(a.get("ks", b"k", &Opts::level("linearizable")).await).as_deref(),
        Some("level_invalid")
    );
    assert_eq!(
        code(a.put("ks", b"k", b"v2", &Opts::level("bogus")).await).as_deref(),
        Some("level_invalid")
    );
    // Unknown keyspace.
    assert_eq!(
        code(a.put("nope", b"k", b"v", &Opts::default()).await).as_deref(),
        Some("keyspace_not_found")
    );
    assert_eq!(status(a.get("nope", b"k", &Opts::default()).await), 404);
    // Bad keyspace specs and a conflicting re-create.
    for bad in [
        serde_json::json!({"shards": 0}),
        serde_json::json!({"replicas": 5}),
        serde_json::json!({"mode": "sideways"}),
        serde_json::json!({"default_level": "sometimes"}),
        serde_json::json!({"shardz": 2}),
    ] {
        assert_eq!(
            code(a.create_keyspace("other", &bad).await).as_deref(),
            Some("keyspace_invalid"),
            "{bad}"
        );
    }
    assert_eq!(
        code(a.create_keyspace("bad name", &spec).await).as_deref(),
        Some("keyspace_invalid")
    );
    assert_eq!(
        code(
            a.create_keyspace("ks", &serde_json::json!({"shards": 3}))
                .await
        )
        .as_deref(),
        Some("keyspace_exists")
    );
    // Creating it again with the same spec is fine (idempotent).
    a.create_keyspace("ks", &spec)
        .await
        .expect("idempotent create");
    // Malformed body and query.
    let http = reqwest::Client::new();
    let resp = http
        .put(format!("{}/v1/keyspaces/other", c.http(0)))
        .body("{not json")
        .send()
        .await
        .expect("send");
    assert_eq!(resp.status().as_u16(), 400);
    let body: serde_json::Value = resp.json().await.expect("json error body");
    assert_eq!(body["error"]["code"], "keyspace_invalid");
    assert!(body["error"]["message"]
        .as_str()
        .is_some_and(|m| !m.is_empty()));
    let resp = http
        .get(format!("{}/v1/kv/ks/k?wait_ms_max=soon", c.http(1)))
        .send()
        .await
        .expect("send");
    assert_eq!(resp.status().as_u16(), 400);
    // Nothing changed: the value is intact and no keyspace "other" exists.
    let r = c
        .client(2)
        .get("ks", b"k", &Opts::level("strong"))
        .await
        .expect("read back");
    assert_eq!(r.value.as_deref(), Some(b"original".as_slice()));
    assert_eq!(
        code(c.client(1).get("other", b"k", &Opts::default()).await).as_deref(),
        Some("keyspace_not_found")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tunekv_dev_starts_a_cluster_runs_the_demo_and_stops() {
    let dir = tempfile::tempdir().expect("temp dir");
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_tunekv"))
        .args(["dev", "--cache", "--exit-after-demo", "--dir"])
        .arg(dir.path())
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(Duration::from_secs(90), out)
        .await
        .expect("dev finished in time")
        .expect("ran");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "stdout:\n{stdout}\nstderr:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let line_of = |level: &str| {
        stdout
            .lines()
            .find(|l| l.starts_with("GET on") && l.contains(&format!(" at {level} ")))
            .unwrap_or_else(|| panic!("no demo line for {level}:\n{stdout}"))
    };
    for level in [
        "strong",
        "bounded(k=3)",
        "bounded(t=500ms)",
        "consistent_prefix",
        "eventual",
        "read_your_writes",
        "monotonic_reads",
        "session",
    ] {
        assert!(line_of(level).contains("\"hello, tunekv\""), "{stdout}");
    }
    assert!(line_of("weak").contains("refused"), "{stdout}");
    let json: serde_json::Value = serde_json::from_slice(
        &std::fs::read(dir.path().join("cluster.json")).expect("cluster.json"),
    )
    .expect("valid JSON");
    let nodes = json["nodes"].as_array().expect("nodes");
    assert_eq!(nodes.len(), 3);
    for n in nodes {
        assert!(
            n["pid"].as_u64().is_some()
                && n["http"].as_str().is_some()
                && n["config"].as_str().is_some(),
            "{n}"
        );
        assert!(n["resp"].as_str().is_some(), "{n}");
    }
    // `--cache`: one cache beside the cluster, listed in cluster.json, and its demo reads.
    let cache = &json["cache"];
    assert!(
        cache["http"].as_str().is_some()
            && cache["resp"].as_str().is_some()
            && cache["pid"].as_u64().is_some(),
        "{json}"
    );
    let via_cache = |level: &str| {
        stdout
            .lines()
            .find(|l| l.starts_with("GET via cache") && l.contains(&format!(" at {level} ")))
            .unwrap_or_else(|| panic!("no cache demo line for {level}:\n{stdout}"))
    };
    for level in ["session", "strong"] {
        let line = via_cache(level);
        assert!(
            line.contains("\"from the cache\"") && line.contains("cache=hit"),
            "{line}"
        );
    }
    assert!(
        via_cache("strong").contains("staleness=entries=0;ms=0"),
        "{stdout}"
    );
}

/// Replica rows of group `name` from node `via`'s cluster status.
async fn replicas(c: &common::TestCluster, via: usize, name: &str) -> Vec<serde_json::Value> {
    let s = c.client(via).cluster().await.expect("cluster status");
    s["groups"]
        .as_array()
        .and_then(|gs| gs.iter().find(|g| g["name"] == name))
        .and_then(|g| g["replicas"].as_array().cloned())
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logs_are_compacted_and_a_lagging_node_catches_up_from_a_snapshot() {
    let mut c = common::start_with(3, false, |cfg| {
        cfg.raft_timing.snapshot_logs_since_last = 40;
        cfg.raft_timing.snapshot_logs_kept = 5;
    })
    .await;
    create_keyspace(&c.client(0), "ks", 1).await;
    let leader = eventually(Duration::from_secs(10), "a leader", || leader_of_via(&c, 0)).await;
    let lagging = (leader as usize) % 3; // a follower
    c.kill(lagging);
    let writer = c.client((lagging + 1) % 3);
    for i in 0..150 {
        let k = format!("k{i}");
        writer
            .put(
                "ks",
                k.as_bytes(),
                format!("v{i}").as_bytes(),
                &Opts::default(),
            )
            .await
            .expect("put");
    }
    // The live replicas snapshot and purge their logs.
    eventually(
        Duration::from_secs(10),
        "logs purged on the live replicas",
        || async {
            let rows = replicas(&c, (lagging + 1) % 3, "ks/shard0").await;
            let live: Vec<_> = rows
                .iter()
                .filter(|r| r["node"].as_u64() != Some(lagging as u64 + 1))
                .collect();
            (live.len() == 2
                && live
                    .iter()
                    .all(|r| r["purged_index"].as_u64().unwrap_or(0) > 50))
            .then_some(())
        },
    )
    .await;
    // The node that missed everything comes back and must catch up past the purge point, which
    // only a snapshot can give it.
    c.start_node(lagging).expect("restart");
    c.wait_ready(Duration::from_secs(30)).await.expect("ready");
    let back = c.client(lagging);
    eventually(
        Duration::from_secs(15),
        "the restarted node caught up",
        || async {
            let r = back
                .get("ks", b"k149", &Opts::level("eventual"))
                .await
                .ok()?;
            (r.value.as_deref() == Some(b"v149".as_slice())).then_some(())
        },
    )
    .await;
    for i in 0..150 {
        let k = format!("k{i}");
        let r = back
            .get("ks", k.as_bytes(), &Opts::level("eventual"))
            .await
            .expect("local read");
        assert_eq!(
            r.value,
            Some(format!("v{i}").into_bytes()),
            "{k} on the node that caught up"
        );
    }
    let me = replicas(&c, lagging, "ks/shard0").await;
    let mine = me
        .iter()
        .find(|r| r["node"].as_u64() == Some(lagging as u64 + 1))
        .expect("own row");
    assert!(
        mine["snapshot_index"].as_u64().unwrap_or(0) > 0,
        "installed a snapshot: {mine}"
    );
    // Everything survives a full crash and restart from snapshots plus log tails.
    for n in 0..3 {
        c.kill(n);
    }
    for n in 0..3 {
        c.start_node(n).expect("restart");
    }
    c.wait_ready(Duration::from_secs(30)).await.expect("ready");
    for i in (0..150).step_by(7) {
        let k = format!("k{i}");
        let r = c
            .client(i % 3)
            .get("ks", k.as_bytes(), &Opts::level("strong").wait_ms(5000))
            .await
            .expect("strong get");
        assert_eq!(
            r.value,
            Some(format!("v{i}").into_bytes()),
            "{k} after full restart"
        );
    }
}

/// A value of 64 KiB that names its key, so a read proves it is this key's write.
fn big_value(i: usize) -> Vec<u8> {
    let mut v = format!("value {i}:").into_bytes();
    v.resize(64 * 1024, b'x');
    v
}

/// Crashes around snapshots (issue 21). A follower that crashes mid-install (it aborts, as
/// kill -9 would, after staging the first chunk of a snapshot of several 4 MiB chunks) comes
/// back, installs the snapshot and holds every write. Then every node is killed while writes
/// run and snapshots are built every 20 entries: after a restart every acknowledged write is
/// there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crashes_mid_snapshot_install_and_build_lose_no_acknowledged_write() {
    use std::os::unix::process::ExitStatusExt;
    let mut c = common::start_with(3, true, |cfg| {
        cfg.raft_timing.snapshot_logs_since_last = 20;
        cfg.raft_timing.snapshot_logs_kept = 2;
    })
    .await;
    create_keyspace(&c.client(0), "ks", 1).await;
    let leader = eventually(Duration::from_secs(10), "a leader", || leader_of_via(&c, 0)).await;
    let lagging = (leader as usize) % 3; // a follower
    let live = (lagging + 1) % 3;
    c.kill(lagging);
    // 160 values of 64 KiB: 10 MiB, a snapshot of three chunks.
    let writer = c.client(live);
    for i in 0..160 {
        writer
            .put(
                "ks",
                format!("k{i}").as_bytes(),
                &big_value(i),
                &Opts::default(),
            )
            .await
            .expect("put");
    }
    eventually(Duration::from_secs(10), "logs purged", || async {
        let rows = replicas(&c, live, "ks/shard0").await;
        rows.iter()
            .filter(|r| r["node"].as_u64() != Some(lagging as u64 + 1))
            .all(|r| r["purged_index"].as_u64().unwrap_or(0) > 100)
            .then_some(())
    })
    .await;
    c.server_args = vec!["--crash-at".into(), "snapshot-install".into()];
    c.start_node(lagging).expect("restart");
    let status = eventually(Duration::from_secs(30), "the crash mid-install", || {
        let status = c.cluster.exited(lagging);
        async move { status }
    })
    .await;
    assert_eq!(status.signal(), Some(6), "aborted mid-install: {status:?}");
    c.kill(lagging); // reaps it: the slot is free for the restart
    c.server_args.clear();
    c.start_node(lagging).expect("restart");
    c.wait_ready(Duration::from_secs(30)).await.expect("ready");
    let back = c.client(lagging);
    eventually(
        Duration::from_secs(20),
        "the snapshot installed",
        || async {
            let r = back
                .get("ks", b"k159", &Opts::level("eventual"))
                .await
                .ok()?;
            (r.value == Some(big_value(159))).then_some(())
        },
    )
    .await;
    for i in 0..160 {
        let r = back
            .get("ks", format!("k{i}").as_bytes(), &Opts::level("eventual"))
            .await
            .expect("local read");
        assert!(r.value == Some(big_value(i)), "k{i} after the install");
    }

    // Kill every node while writes run and snapshots come every 20 entries.
    let acked = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let writing = {
        let acked = acked.clone();
        let client = c.client(live);
        tokio::spawn(async move {
            for i in 0..100_000usize {
                let key = format!("w{i}");
                let opts = Opts::default().wait_ms(2000);
                match client
                    .put("ks", key.as_bytes(), key.as_bytes(), &opts)
                    .await
                {
                    Ok(_) => acked.lock().unwrap().push(i),
                    Err(_) => return,
                }
            }
        })
    };
    eventually(Duration::from_secs(20), "writes running", || {
        let n = acked.lock().unwrap().len();
        async move { (n >= 150).then_some(()) }
    })
    .await;
    for n in 0..3 {
        c.kill(n);
    }
    tokio::time::timeout(Duration::from_secs(10), writing)
        .await
        .expect("the writer stops once the nodes are gone")
        .expect("writer");
    for n in 0..3 {
        c.start_node(n).expect("restart");
    }
    c.wait_ready(Duration::from_secs(30)).await.expect("ready");
    let acked = acked.lock().unwrap().clone();
    for i in acked {
        let key = format!("w{i}");
        let r = c
            .client(i % 3)
            .get("ks", key.as_bytes(), &Opts::level("strong").wait_ms(5000))
            .await
            .expect("strong get");
        assert_eq!(
            r.value,
            Some(key.clone().into_bytes()),
            "acknowledged {key} lost"
        );
    }
}

/// One request: status, the `tunekv-version` header, and the body (JSON when it parses).
async fn versioned(method: &str, url: &str, body: &str) -> (u16, Option<u64>, serde_json::Value) {
    let (status, version, body) =
        common::call_with_header(method, url, body, "tunekv-version").await;
    (status, version.and_then(|v| v.parse().ok()), body)
}

/// Versions and conditional writes (issue 18): a read names the key's version, `if_version`
/// writes and deletes only at that version (0: only if absent), a stale one is `409
/// version_mismatch` naming the current version and changes nothing; then 32 buyers race for
/// 20 items by compare-and-set through every node: exactly 20 buy, the stock ends at 0 and is
/// never read below it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conditional_writes_compare_versions_and_a_cas_race_sells_each_item_once() {
    let c = start(3, false).await;
    create_keyspace(&c.client(0), "inv", 1).await;
    let url = |i: usize, path: &str| format!("{}{path}", c.http(i));
    let (s, v1, b) = versioned("PUT", &url(0, "/v1/kv/inv/k?if_version=0"), "1").await;
    assert_eq!(s, 200, "{b}");
    let v1 = v1.expect("a write names the version it gave the key");
    let (s, v, b) = versioned("PUT", &url(1, "/v1/kv/inv/k?if_version=0"), "x").await;
    assert_eq!((s, v), (409, Some(v1)), "{b}");
    assert_eq!(b["error"]["code"], "version_mismatch");
    assert_eq!(b["error"]["current_version"], v1);
    let (s, v, b) = versioned("GET", &url(2, "/v1/kv/inv/k?level=strong"), "").await;
    assert_eq!((s, v, b), (200, Some(v1), serde_json::json!(1)));
    let (s, v2, _) = versioned(
        "PUT",
        &url(2, &format!("/v1/kv/inv/k?if_version={v1}")),
        "2",
    )
    .await;
    let v2 = v2.expect("version");
    assert!(s == 200 && v2 > v1);
    let (s, v, _) = versioned(
        "PUT",
        &url(0, &format!("/v1/kv/inv/k?if_version={v1}")),
        "3",
    )
    .await;
    assert_eq!((s, v), (409, Some(v2)));
    let (s, _, b) = versioned("GET", &url(0, "/v1/kv/inv/k?level=strong&format=json"), "").await;
    assert_eq!(
        (s, b["value"].clone(), b["version"].clone()),
        (200, "2".into(), v2.into())
    );
    for (method, query, want, code) in [
        (
            "DELETE",
            format!("if_version={v1}"),
            409,
            "version_mismatch",
        ),
        ("DELETE", "if_version=0".to_string(), 400, "bad_request"),
        ("PUT", "if_version=abc".to_string(), 400, "bad_request"),
        ("GET", "if_version=1".to_string(), 400, "bad_request"),
    ] {
        let (s, _, b) = versioned(method, &url(1, &format!("/v1/kv/inv/k?{query}")), "v").await;
        assert_eq!(
            (s, b["error"]["code"].as_str()),
            (want, Some(code)),
            "{method} {query}: {b}"
        );
    }
    let (s, _, _) = versioned(
        "DELETE",
        &url(1, &format!("/v1/kv/inv/k?if_version={v2}")),
        "",
    )
    .await;
    assert_eq!(s, 200);
    let (s, _, _) = versioned("GET", &url(0, "/v1/kv/inv/k?level=strong"), "").await;
    assert_eq!(s, 404, "deleted at its version");
    let (s, _, b) = versioned(
        "PUT",
        &url(0, "/v1/keyspaces/ll"),
        r#"{"mode":"leaderless","replicas":3}"#,
    )
    .await;
    assert_eq!(s, 201, "{b}");
    let (s, _, b) = versioned("PUT", &url(0, "/v1/kv/ll/k?if_version=0"), "v").await;
    assert_eq!(
        (s, b["error"]["code"].as_str()),
        (400, Some("mode_unsupported")),
        "{b}"
    );

    // The race: 20 items, 32 buyers, each buys one (read, then CAS the stock down by one,
    // again on a mismatch) or gives up when it reads 0.
    let (s, _, _) = versioned("PUT", &url(0, "/v1/kv/inv/stock"), "20").await;
    assert_eq!(s, 200);
    let bases: Vec<String> = (0..3).map(|i| c.http(i)).collect();
    let buyers = (0..32).map(|b| {
        let base = bases[b % 3].clone();
        tokio::spawn(async move {
            let u = format!("{base}/v1/kv/inv/stock");
            for _ in 0..200 {
                let (s, v, body) = versioned("GET", &format!("{u}?level=strong"), "").await;
                assert_eq!(s, 200, "{body}");
                let left = body.as_i64().expect("a count");
                assert!(left >= 0, "stock read below zero: {left}");
                if left == 0 {
                    return false;
                }
                let v = v.expect("a version");
                let (s, _, body) = versioned(
                    "PUT",
                    &format!("{u}?if_version={v}"),
                    &(left - 1).to_string(),
                )
                .await;
                match s {
                    200 => return true,
                    409 => continue,
                    other => panic!("{other}: {body}"),
                }
            }
            panic!("a buyer neither bought nor saw the stock run out in 200 tries");
        })
    });
    let mut bought = 0;
    for b in buyers.collect::<Vec<_>>() {
        bought += usize::from(b.await.expect("buyer"));
    }
    assert_eq!(bought, 20, "each item sold once");
    let (_, _, b) = versioned("GET", &url(0, "/v1/kv/inv/stock?level=strong"), "").await;
    assert_eq!(b, serde_json::json!(0));

    // A transaction: restock only if still at the version read, record who did, read back.
    let (_, v, _) = versioned("GET", &url(1, "/v1/kv/inv/stock?level=strong"), "").await;
    let v = v.expect("a version");
    let restock = |v: u64| {
        serde_json::json!({
            "compare": [{"key": "stock", "version": v}, {"key": "lock", "version": 0}],
            "success": [
                {"op": "incr", "key": "stock", "by": 5},
                {"op": "put", "key": "restocked-by", "value": "ann"},
                {"op": "get", "key": "stock"},
            ],
            "failure": [{"op": "get", "key": "stock"}],
        })
        .to_string()
    };
    let (s, _, b) = versioned("POST", &url(2, "/v1/kv/inv:txn"), &restock(v)).await;
    assert_eq!((s, b["succeeded"].clone()), (200, true.into()), "{b}");
    assert_eq!(b["results"][0]["value"], 5, "{b}");
    assert_eq!(b["results"][2]["value"], "5", "{b}");
    let v5 = b["results"][2]["version"]
        .as_u64()
        .expect("the version read");
    let (s, _, b) = versioned("POST", &url(0, "/v1/kv/inv:txn"), &restock(v)).await;
    assert_eq!(
        (s, b["succeeded"].clone()),
        (200, false.into()),
        "stale: {b}"
    );
    assert_eq!(b["results"].as_array().map(Vec::len), Some(1), "{b}");
    assert_eq!(
        b["results"][0]["version"], v5,
        "the failure branch read the stock: {b}"
    );
    let (_, _, b) = versioned("GET", &url(0, "/v1/kv/inv/stock?level=strong"), "").await;
    assert_eq!(b, serde_json::json!(5), "restocked once");
    // Refusals change nothing.
    let (s, _, b) = versioned(
        "PUT",
        &url(0, "/v1/keyspaces/multi"),
        r#"{"mode":"ordered","shards":4}"#,
    )
    .await;
    assert_eq!(s, 201, "{b}");
    let spread: Vec<serde_json::Value> = (0..8)
        .map(|i| serde_json::json!({"op": "put", "key": format!("k{i}"), "value": "v"}))
        .collect();
    for (ks, body, want, code) in [
        (
            "multi",
            serde_json::json!({"success": spread}).to_string(),
            400,
            "txn_cross_shard",
        ),
        ("ll", restock(v), 400, "mode_unsupported"),
        (
            "inv",
            r#"{"compare":[{"key":"a"}]}"#.to_string(),
            400,
            "bad_request",
        ),
        (
            "inv",
            r#"{"success":[{"op":"scan"}]}"#.to_string(),
            400,
            "bad_request",
        ),
        ("inv", "{}".to_string(), 400, "bad_request"),
        ("inv", "not json".to_string(), 400, "bad_request"),
    ] {
        let (s, _, b) = versioned("POST", &url(1, &format!("/v1/kv/{ks}:txn")), &body).await;
        assert_eq!(
            (s, b["error"]["code"].as_str()),
            (want, Some(code)),
            "{body}: {b}"
        );
    }
    let (s, _, _) = versioned("GET", &url(0, "/v1/kv/multi/k0?level=strong"), "").await;
    assert_eq!(s, 404, "a refused transaction wrote nothing");
}

/// Watches prefix `a/` of keyspace `feed` (2 shards) on node 2 while node 1 writes 20 keys
/// there (and 20 outside the prefix) and deletes 2, until the watch's progress covers every
/// write: each shard's starting mark, what the watch received after it, and the acknowledged
/// writes of the prefix, for `tunekv_check::feed`.
async fn watch_run(
    c: &common::TestCluster,
) -> (
    std::collections::BTreeMap<u32, u64>,
    Vec<tunekv_check::feed::FeedEvent>,
    Vec<tunekv_check::feed::FeedWrite>,
) {
    use tunekv_check::feed::{FeedEvent, FeedWrite};
    create_keyspace(&c.client(0), "feed", 2).await;
    let resp = reqwest::Client::new()
        .get(format!("{}/v1/watch/feed?prefix=a/", c.http(1)))
        .send()
        .await
        .expect("watch");
    assert_eq!(resp.status(), 200);
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(String, serde_json::Value)>();
    let reader = tokio::spawn(async move {
        let mut resp = resp;
        let (mut buf, mut event) = (String::new(), String::from("message"));
        while let Ok(Some(chunk)) = resp.chunk().await {
            buf.push_str(&String::from_utf8_lossy(&chunk));
            while let Some(end) = buf.find('\n') {
                let line = buf[..end].trim_end_matches('\r').to_string();
                buf.drain(..=end);
                if let Some(e) = line.strip_prefix("event:") {
                    event = e.trim().to_string();
                } else if let Some(d) = line.strip_prefix("data:") {
                    let v = serde_json::from_str(d.trim()).expect("JSON data");
                    if tx.send((event.clone(), v)).is_err() {
                        return;
                    }
                } else if line.is_empty() {
                    event = "message".into();
                }
            }
        }
    });
    let to_event = |kind: &str, v: &serde_json::Value| -> FeedEvent {
        match kind {
            "progress" => FeedEvent::Progress {
                shard: v["shard"].as_u64().expect("shard") as u32,
                index: v["index"].as_u64().expect("index"),
            },
            "message" => {
                let pos = tunekv_core::Position::parse(v["position"].as_str().expect("position"))
                    .expect("a position");
                let key = v["key"].as_str().expect("key").to_string();
                assert!(key.starts_with("a/"), "outside the prefix: {v}");
                FeedEvent::Change {
                    shard: pos.shard.0,
                    index: pos.index.0,
                    key,
                    value: (!v["deleted"].as_bool().expect("deleted"))
                        .then(|| v["value"].as_str().expect("value").to_string()),
                }
            }
            other => panic!("unexpected event {other}: {v}"),
        }
    };
    // The first mark of each shard: where the watch starts.
    let mut start = std::collections::BTreeMap::new();
    while start.len() < 2 {
        let (kind, v) = tokio::time::timeout(Duration::from_secs(10), rx.recv())
            .await
            .expect("progress in time")
            .expect("an event");
        match to_event(&kind, &v) {
            FeedEvent::Progress { shard, index } => {
                start.entry(shard).or_insert(index);
            }
            other => panic!("a change before the first marks: {other:?}"),
        }
    }
    let client = c.client(0);
    let mut writes = Vec::new();
    let mut wrote = |w: tunekv_client::WriteReply, key: String, value: Option<String>| {
        writes.push(FeedWrite {
            shard: w.shard,
            index: w.index,
            key,
            value,
        })
    };
    for i in 0..20 {
        let key = format!("a/{i}");
        let value = format!("v{i}");
        let w = client
            .put("feed", key.as_bytes(), value.as_bytes(), &Opts::default())
            .await
            .expect("put");
        wrote(w, key, Some(value));
        client
            .put("feed", format!("b/{i}").as_bytes(), b"x", &Opts::default())
            .await
            .expect("put outside the prefix");
    }
    for i in [3, 7] {
        let key = format!("a/{i}");
        let w = client
            .delete("feed", key.as_bytes(), &Opts::default())
            .await
            .expect("delete");
        wrote(w, key, None);
    }
    let mut top: std::collections::BTreeMap<u32, u64> = std::collections::BTreeMap::new();
    for w in &writes {
        let t = top.entry(w.shard).or_insert(0);
        *t = (*t).max(w.index);
    }
    let mut events = Vec::new();
    let mut reached: std::collections::BTreeMap<u32, u64> = start.clone();
    while top
        .iter()
        .any(|(s, t)| reached.get(s).copied().unwrap_or(0) < *t)
    {
        let (kind, v) = tokio::time::timeout(Duration::from_secs(10), rx.recv())
            .await
            .expect("progress past every write in time")
            .expect("an event");
        let e = to_event(&kind, &v);
        if let FeedEvent::Progress { shard, index } = e {
            let r = reached.entry(shard).or_insert(0);
            *r = (*r).max(index);
        }
        events.push(e);
    }
    reader.abort();
    (start, events, writes)
}

/// The change feed (issue 18): a watch on one node sees every acknowledged write and delete of
/// its prefix made through another node exactly once, per shard in index order, each before
/// the progress mark that covers it, and nothing outside the prefix (`tunekv_check::feed`);
/// a malformed cursor is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watch_sees_every_change_once_in_order_behind_its_progress_marks() {
    let c = start(3, false).await;
    let (start, events, writes) = watch_run(&c).await;
    let r = tunekv_check::feed::check(&start, &events, &writes, &Default::default());
    assert!(!r.has_violations(), "{}", r.table());
    let missing = r
        .row(
            tunekv_check::feed::LEVEL,
            tunekv_check::feed::NOTHING_MISSING,
        )
        .expect("row");
    assert_eq!(missing.checked, 22, "every write judged: {}", r.table());
    for (path, code) in [
        ("/v1/watch/feed?from=abc", "cursor_invalid"),
        ("/v1/watch/nosuch", "keyspace_not_found"),
    ] {
        let r = reqwest::get(format!("{}{path}", c.http(0)))
            .await
            .expect("get");
        let b: serde_json::Value = r.json().await.expect("json");
        assert_eq!(b["error"]["code"], code, "{path}");
    }
}

/// The injected bug `progress-early` (each batch's progress mark sent before its changes) is
/// caught by the feed checker.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_progress_mark_sent_before_its_changes_is_caught() {
    let c = common::start_with_args(3, false, |_| {}, &["--bug", "progress-early"]).await;
    let (start, events, writes) = watch_run(&c).await;
    let r = tunekv_check::feed::check(&start, &events, &writes, &Default::default());
    let ahead = r
        .row(tunekv_check::feed::LEVEL, tunekv_check::feed::PROGRESS)
        .expect("row");
    assert!(ahead.violations_total > 0, "not caught:\n{}", r.table());
}

/// A watcher that stops reading is cut off once it falls `watch_batches_max` batches behind,
/// with a final error event, instead of the node buffering its changes without bound.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watcher_that_stops_reading_is_cut_off_with_an_error() {
    // A small feed, so a few hundred writes outrun a reader that socket buffers hide.
    let c = common::start_with(3, false, |cfg| cfg.watch_batches_max = 16).await;
    create_keyspace(&c.client(0), "busy", 1).await;
    let mut resp = reqwest::Client::new()
        .get(format!("{}/v1/watch/busy", c.http(1)))
        .send()
        .await
        .expect("watch");
    assert_eq!(resp.status(), 200);
    // More than socket buffers hold (16 MiB of events), in more batches than the feed keeps.
    let value = vec![b'v'; 16 * 1024];
    let client = c.client(0);
    for i in 0..1000 {
        client
            .put("busy", format!("k{i}").as_bytes(), &value, &Opts::default())
            .await
            .expect("put");
    }
    let mut text = String::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline {
        match tokio::time::timeout(Duration::from_secs(10), resp.chunk()).await {
            Ok(Ok(Some(chunk))) => {
                text.push_str(&String::from_utf8_lossy(&chunk));
                // Keep only the tail: the error comes last.
                if text.len() > 64 * 1024 {
                    text.drain(..text.len() - 32 * 1024);
                }
            }
            Ok(Ok(None)) => break,
            other => panic!("the stream neither ended nor errored: {other:?}"),
        }
    }
    assert!(
        text.contains("event: error") && text.contains("fell"),
        "no error event at the end: {}",
        &text[text.len().saturating_sub(600)..]
    );
}

/// A consumer of the feed across a leader kill (issue 18): it treats changes as final when a
/// progress event covers them and keeps that event's cursor; when its node dies it resumes
/// from the cursor on another node. Every acknowledged write arrives exactly once, in order,
/// behind its progress marks (`tunekv_check::feed`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watch_resumed_from_its_cursor_on_another_node_misses_and_repeats_nothing() {
    use tunekv_check::feed::FeedWrite;
    use tunekv_client::WatchEvent;
    let mut c = start(3, false).await;
    create_keyspace(&c.client(0), "feed", 1).await;
    let (leader, _) = common::leader_and_follower(&c, "feed/shard0").await;
    let others: Vec<usize> = (0..3).filter(|i| *i != leader).collect();
    // The watcher starts on the leader, which is killed mid-run.
    let mut watch = c.client(leader).watch("feed", "a/").await.expect("watch");
    let mut top = 0;
    let mut writes = Vec::new();
    // Writes through a surviving node; the leader dies after the 15th.
    for i in 0..40 {
        if i == 15 {
            c.kill(leader);
        }
        let key = format!("a/{i}");
        let value = format!("v{i}");
        let w = common::eventually(Duration::from_secs(20), "the write", || async {
            c.client(others[0])
                .put("feed", key.as_bytes(), value.as_bytes(), &Opts::default())
                .await
                .ok()
        })
        .await;
        top = top.max(w.index);
        writes.push(FeedWrite {
            shard: 0,
            index: w.index,
            key,
            value: Some(value),
        });
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut consumer = tunekv_check::feed::Consumer::new(1);
    while !consumer.reached_all(&[(0, top)].into()) {
        assert!(
            Instant::now() < deadline,
            "the feed did not reach index {top}"
        );
        match tokio::time::timeout(Duration::from_secs(10), watch.next()).await {
            Ok(Some(Ok(WatchEvent::Change {
                key,
                value,
                shard,
                index,
                ..
            }))) => consumer.change(shard, index, key, value),
            Ok(Some(Ok(WatchEvent::Progress {
                shard,
                index,
                cursor,
                ..
            }))) => consumer.progress(shard, index, cursor),
            Ok(Some(Ok(e @ WatchEvent::NodeProgress { .. }))) => {
                panic!("an ordered keyspace's watch sent {e:?}")
            }
            Ok(None) | Ok(Some(Err(_))) | Err(_) => {
                // The node is gone: what came after the last mark is sent again.
                assert_eq!(consumer.resumes, 0, "the resumed watch broke too");
                consumer.broke();
                watch = c
                    .client(others[1])
                    .watch_from("feed", "a/", consumer.cursor.as_deref())
                    .await
                    .expect("resume from the cursor on another node");
                consumer.opened();
            }
        }
    }
    assert_eq!(consumer.resumes, 1, "the watch never needed resuming");
    let r = consumer.check(&writes, &Default::default());
    assert!(!r.has_violations(), "{}", r.table());
    let missing = r
        .row(
            tunekv_check::feed::LEVEL,
            tunekv_check::feed::NOTHING_MISSING,
        )
        .expect("row");
    assert_eq!(missing.checked, 40, "every write judged: {}", r.table());
}

/// A cursor replays the changes made while no one watched; one older than the node's history
/// (`watch_history_bytes`) is refused `410 cursor_compacted` with the oldest usable position,
/// and a forged or foreign cursor `400 cursor_invalid`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cursor_replays_missed_changes_and_one_too_old_is_refused_as_compacted() {
    use tunekv_client::WatchEvent;
    let c = common::start_with(3, false, |cfg| cfg.watch_history_bytes = 8 * 1024).await;
    let client = c.client(0);
    create_keyspace(&client, "replay", 1).await;
    create_keyspace(&client, "other", 1).await;
    let first_cursor = |ks: &'static str| {
        let client = c.client(1);
        async move {
            let mut w = client.watch(ks, "").await.expect("watch");
            match w.next().await {
                Some(Ok(WatchEvent::Progress { cursor, .. })) => cursor,
                other => panic!("not a progress mark first: {other:?}"),
            }
        }
    };
    let cursor = first_cursor("replay").await;
    let mut acked = Vec::new();
    for i in 0..3 {
        let w = client
            .put("replay", format!("k{i}").as_bytes(), b"v", &Opts::default())
            .await
            .expect("put");
        acked.push((format!("k{i}"), w.index));
    }
    // Made while no one watched: the cursor replays them, then the mark after them.
    let mut w = c
        .client(2)
        .watch_from("replay", "", Some(&cursor))
        .await
        .expect("resume");
    let mut got = Vec::new();
    loop {
        match tokio::time::timeout(Duration::from_secs(10), w.next())
            .await
            .expect("in time")
        {
            Some(Ok(WatchEvent::Change { key, index, .. })) => got.push((key, index)),
            Some(Ok(WatchEvent::Progress { index, .. })) if index >= acked[2].1 => break,
            Some(Ok(WatchEvent::Progress { .. })) => {}
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(got, acked);
    // Twice the history's bytes later, the cursor is too old.
    for i in 0..100 {
        client
            .put(
                "replay",
                format!("k{i}").as_bytes(),
                &[b'v'; 100],
                &Opts::default(),
            )
            .await
            .expect("put");
    }
    let url = |ks: &str, cursor: &str| format!("{}/v1/watch/{ks}?from={cursor}", c.http(2));
    let (status, _, body) = common::call("GET", &url("replay", &cursor), "").await;
    assert_eq!(status, 410, "{body}");
    assert_eq!(body["error"]["code"], "cursor_compacted", "{body}");
    let oldest = tunekv_core::Position::parse(&format!(
        "{};commit_ms=0",
        body["error"]["oldest_position"].as_str().expect("oldest")
    ))
    .expect("a position");
    assert!(oldest.index.0 > acked[2].1, "{body}");
    let other = first_cursor("other").await;
    let mut forged = cursor.clone();
    forged.replace_range(..2, if &cursor[..2] == "00" { "01" } else { "00" });
    for bad in [other.as_str(), forged.as_str(), "zz"] {
        let (status, _, body) = common::call("GET", &url("replay", bad), "").await;
        assert_eq!(
            (status, body["error"]["code"].as_str()),
            (400, Some("cursor_invalid")),
            "{body}"
        );
    }
}

/// `GET /v1/kv/{ks}:read-index?shard=S` (groundwork for issue 19's strong cache hits): on any
/// node, the shard's read index confirmed by a quorum after the request began, so at or above
/// every write acknowledged before it; a bad shard, a missing one or a leaderless keyspace is
/// refused with a typed error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_read_index_of_a_shard_covers_every_write_acknowledged_before() {
    let c = start(3, false).await;
    create_keyspace(&c.client(0), "ri", 2).await;
    for i in 0..10 {
        let w = c
            .client(i % 3)
            .put("ri", format!("k{i}").as_bytes(), b"v", &Opts::default())
            .await
            .expect("put");
        for node in 0..3 {
            let url = format!("{}/v1/kv/ri:read-index?shard={}", c.http(node), w.shard);
            let (s, _, b) = common::call("GET", &url, "").await;
            assert_eq!(s, 200, "{b}");
            assert_eq!(b["shard"], w.shard, "{b}");
            let index = b["index"].as_u64().expect("an index");
            assert!(
                index >= w.index,
                "node {node}: read index {index} < write {}",
                w.index
            );
        }
    }
    common::put_keyspace(&c, "ll", r#"{"mode":"leaderless","replicas":3}"#).await;
    for (path, status, code) in [
        ("/v1/kv/ri:read-index?shard=2", 400, "bad_request"),
        ("/v1/kv/ri:read-index", 400, "bad_request"),
        ("/v1/kv/ll:read-index?shard=0", 400, "mode_unsupported"),
        (
            "/v1/kv/nosuch:read-index?shard=0",
            404,
            "keyspace_not_found",
        ),
    ] {
        let (s, _, b) = common::call("GET", &format!("{}{path}", c.http(1)), "").await;
        assert_eq!(
            (s, b["error"]["code"].as_str()),
            (status, Some(code)),
            "{path}: {b}"
        );
    }
}

/// The Rust client's `watch()` (issue 18): the feed as a `Stream` of typed events.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_rust_client_watches_changes_as_a_stream() {
    use futures::StreamExt;
    let c = start(3, false).await;
    create_keyspace(&c.client(0), "seen", 1).await;
    let stream = c
        .client(2)
        .watch("seen", "x/")
        .await
        .expect("watch")
        .into_stream();
    let mut stream = Box::pin(stream);
    // The starting mark, then the changes.
    let first = stream.next().await.expect("an event").expect("no error");
    assert!(
        matches!(first, tunekv_client::WatchEvent::Progress { shard: 0, .. }),
        "{first:?}"
    );
    let w = c
        .client(0)
        .put("seen", b"x/1", b"one", &Opts::default())
        .await
        .expect("put");
    c.client(0)
        .put("seen", b"y/1", b"other", &Opts::default())
        .await
        .expect("put");
    c.client(0)
        .delete("seen", b"x/1", &Opts::default())
        .await
        .expect("delete");
    let mut changes = Vec::new();
    while changes.len() < 2 {
        let e = tokio::time::timeout(Duration::from_secs(10), stream.next())
            .await
            .expect("in time")
            .expect("an event")
            .expect("no error");
        if let tunekv_client::WatchEvent::Change {
            key, value, index, ..
        } = e
        {
            changes.push((key, value, index));
        }
    }
    assert_eq!(
        changes[0],
        ("x/1".to_string(), Some("one".to_string()), w.index)
    );
    assert_eq!(
        (changes[1].0.as_str(), changes[1].1.as_deref()),
        ("x/1", None)
    );
    let e = c
        .client(0)
        .watch("nosuch", "")
        .await
        .err()
        .expect("refused");
    assert!(e.to_string().contains("keyspace_not_found"), "{e}");
}
