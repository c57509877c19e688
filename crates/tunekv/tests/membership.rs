//! Membership changes with real processes (issue 21): `tunekv node add` brings a fourth node
//! in and replicas move to it; `tunekv node remove` drains a founding node and it leaves. Data
//! written before, between and after stays readable at `strong`, every shard keeps its three
//! voters, and clients keep writing while replicas move. A leaderless keyspace's ring follows:
//! it grows to the new node and shrinks off the leaving one (hand off, then drop), every key
//! keeping exactly three copies.

mod common;

use common::tunekv;

use common::eventually;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tunekv_client::{Client, Opts};

const KS: &str = "m";
/// The leaderless keyspace whose ring changes.
const LKS: &str = "l";

/// Writes leaderless keys `{prefix}{i}` at w=quorum through the nodes in turn until `stop`;
/// returns the writes acknowledged and those that failed.
fn leaderless_writer(
    nodes: Vec<Client>,
    prefix: &'static str,
    stop: Arc<AtomicBool>,
) -> tokio::task::JoinHandle<(Vec<u64>, Vec<String>)> {
    tokio::spawn(async move {
        let (mut acked, mut failed) = (Vec::new(), Vec::new());
        let mut i = 0u64;
        while !stop.load(Ordering::Relaxed) && i < 5000 {
            let node = &nodes[i as usize % nodes.len()];
            let key = format!("{prefix}{i}");
            match node
                .put(LKS, key.as_bytes(), b"y", &Opts::default().w("quorum"))
                .await
            {
                Ok(_) => acked.push(i),
                Err(e) => failed.push(format!("{key}: {e}")),
            }
            i += 1;
        }
        (acked, failed)
    })
}

/// The keys node `i` (index) holds of the leaderless keyspace.
async fn ring_keys(c: &common::TestCluster, i: usize) -> Option<u64> {
    common::leaderless_figures(c, i).await?["keyspaces"]
        .as_array()?
        .iter()
        .find(|k| k["keyspace"] == LKS)
        .and_then(|k| k["keys"].as_u64())
}

/// Reads `key` at `strong` from the first node (of `nodes`) that holds its shard.
async fn read_strong(nodes: &[Client], key: &str) -> Option<Vec<u8>> {
    let mut last = String::new();
    for c in nodes {
        match c.get(KS, key.as_bytes(), &Opts::level("strong")).await {
            Ok(r) => return r.value,
            Err(e) if e.code() == Some("not_replica") => {}
            Err(e) => last = e.to_string(),
        }
    }
    panic!("no node served a strong read of {key}: {last}");
}

/// Writes `key` through the first node (of `nodes`) that holds its shard.
async fn write(nodes: &[Client], key: &str, value: &str) -> Result<(), String> {
    let mut last = String::new();
    for c in nodes {
        match c
            .put(KS, key.as_bytes(), value.as_bytes(), &Opts::default())
            .await
        {
            Ok(_) => return Ok(()),
            Err(e) if e.code() == Some("not_replica") => {}
            Err(e) => last = e.to_string(),
        }
    }
    Err(last)
}

/// Every shard group of `KS`: its voters as the serving node's `/v1/cluster` reports them.
async fn shard_voters(c: &Client) -> Vec<(String, Vec<u64>)> {
    let s = c.cluster().await.expect("cluster");
    let mut out = Vec::new();
    for g in s["groups"].as_array().expect("groups") {
        let name = g["name"].as_str().unwrap_or_default();
        if !name.starts_with(&format!("{KS}/")) {
            continue;
        }
        let mut voters: Vec<u64> = g["replicas"]
            .as_array()
            .expect("replicas")
            .iter()
            .filter(|r| r["state"] != "Learner")
            .filter_map(|r| r["node"].as_u64())
            .collect();
        voters.sort();
        voters.dedup();
        out.push((name.to_string(), voters));
    }
    out
}

/// Waits (bounded) until every shard of `KS` reports three voters, none of them `gone`: a new
/// voter may call itself a learner for a moment after the change that promoted it committed.
async fn settled_voters(c: &Client, gone: Option<u64>) {
    let mut last = Vec::new();
    for _ in 0..100 {
        last = shard_voters(c).await;
        if last.len() == 4
            && last
                .iter()
                .all(|(_, v)| v.len() == 3 && gone.is_none_or(|g| !v.contains(&g)))
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("shards did not settle on three voters each: {last:?}");
}

/// Creates `KS` (4 shards, 3 replicas) and writes `k{i}` = `v{i}` for `i < keys` through the
/// founders.
async fn seed_data(c: &common::TestCluster, keys: usize) {
    common::put_keyspace(
        c,
        KS,
        r#"{"mode":"ordered","shards":4,"replicas":3,"default_level":"strong"}"#,
    )
    .await;
    common::put_keyspace(c, LKS, r#"{"mode":"leaderless","replicas":3}"#).await;
    let founders: Vec<Client> = (0..3).map(|i| c.client(i)).collect();
    for i in 0..keys {
        write(&founders, &format!("k{i}"), &format!("v{i}"))
            .await
            .expect("write before");
        founders[i % 3]
            .put(
                LKS,
                format!("l{i}").as_bytes(),
                b"z",
                &Opts::default().w("quorum"),
            )
            .await
            .expect("leaderless write before");
    }
}

/// Starts a fourth node (not yet a member) and waits until it answers; returns its index and
/// its identity (`GET /v1/node`).
async fn start_fourth(c: &mut common::TestCluster) -> (usize, serde_json::Value) {
    let four = c.prepare_extra_node().expect("config");
    c.start_node(four).expect("start node 4");
    let c4 = c.client(four);
    let identity = eventually(Duration::from_secs(20), "node 4 answers", || async {
        c4.identity().await.ok()
    })
    .await;
    (four, identity)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_joins_takes_replicas_and_a_founder_drains_and_leaves_without_losing_data() {
    let mut c = common::start(3, false).await;
    seed_data(&c, 100).await;

    // A fourth node: started, not yet a member; `node add` through node 1.
    let (four, _) = start_fourth(&mut c).await;
    let http4 = c.configs[four].http.clone();
    let http1 = c.configs[0].http.clone();

    // Clients keep writing while replicas move.
    let stop = Arc::new(AtomicBool::new(false));
    let acked = Arc::new(std::sync::Mutex::new(Vec::new()));
    let writer = {
        let nodes: Vec<Client> = (0..3).map(|i| c.client(i)).collect();
        let (stop, acked) = (stop.clone(), acked.clone());
        tokio::spawn(async move {
            let mut i = 0u64;
            while !stop.load(Ordering::Relaxed) && i < 5000 {
                if write(&nodes, &format!("w{i}"), &format!("x{i}"))
                    .await
                    .is_ok()
                {
                    acked.lock().unwrap().push(i);
                }
                i += 1;
            }
        })
    };

    let stop_l = Arc::new(AtomicBool::new(false));
    let founders: Vec<Client> = (0..3).map(|i| c.client(i)).collect();
    let lwriter = leaderless_writer(founders.clone(), "a", stop_l.clone());
    let (code, out) = tokio::task::spawn_blocking({
        let (http4, http1) = (http4.clone(), http1.clone());
        move || tunekv(&["node", "add", &http4, "--node", &http1, "--wait-s", "120"])
    })
    .await
    .unwrap();
    assert_eq!(code, 0, "node add: {out}");
    eprintln!("{out}");
    assert!(out.contains("node 4: active"), "{out}");
    stop_l.store(true, Ordering::Relaxed);
    let (acked_a, failed) = lwriter.await.unwrap();
    assert!(
        failed.is_empty(),
        "leaderless writes failed while the ring grew: {failed:?}"
    );
    assert!(
        acked_a.len() > 10,
        "leaderless writes went on: {}",
        acked_a.len()
    );
    // Every leaderless key (before and during the change) reads back through the new node,
    // which reads the new ring only, at r=all with nothing to repair: the ring's new replicas
    // got every version before the ring changed (handed off, or forwarded while it changed).
    // And once the nodes dropped what the ring took away, every key has exactly three copies
    // over the four nodes.
    let c4 = c.client(four);
    let repairs = |f: Option<serde_json::Value>| f.map(|f| f["read_repairs_total"].clone());
    let repairs_before = repairs(common::leaderless_figures(&c, four).await);
    let all_l: Vec<String> = (0..100)
        .map(|i| format!("l{i}"))
        .chain(acked_a.iter().map(|i| format!("a{i}")))
        .collect();
    for key in &all_l {
        let r = c4
            .get(LKS, key.as_bytes(), &Opts::default().r("all"))
            .await
            .unwrap_or_else(|e| panic!("{key} through node 4: {e}"));
        assert!(r.value.is_some(), "{key} lost in the ring change");
    }
    assert_eq!(
        repairs(common::leaderless_figures(&c, four).await),
        repairs_before,
        "a new replica lacked versions it should have been handed"
    );
    let want = 3 * all_l.len() as u64;
    let mut copies = Vec::new();
    for _ in 0..150 {
        copies = Vec::new();
        for i in 0..4 {
            copies.push(ring_keys(&c, i).await.unwrap_or(0));
        }
        if copies.iter().sum::<u64>() == want {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(
        copies.iter().sum::<u64>(),
        want,
        "three copies of each key: {copies:?}"
    );
    assert!(
        copies.iter().all(|k| *k < all_l.len() as u64 && *k > 0),
        "the ring's partitions are spread over four nodes: {copies:?}"
    );
    let report = c.client(0).nodes().await.expect("nodes");
    let n4 = report["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["id"] == 4)
        .cloned()
        .expect("node 4 listed");
    assert_eq!(n4["state"], "active", "{report}");
    assert_eq!(n4["voter"], true, "{report}");
    // 12 replicas over 4 nodes: balanced to 3 each; and every node is in the ring.
    for n in report["nodes"].as_array().unwrap() {
        assert_eq!(n["replicas"], 3 + 1, "balanced: {report}");
    }
    // Every node answers strong reads of the data written before node 4 joined, for every key:
    // its own replicas serve their shards (node 4's too), and a key of a shard the node does
    // not hold is read from a replica (the receipt names it).
    let all: Vec<Client> = (0..4).map(|i| c.client(i)).collect();
    let mut served_by_4 = 0;
    let mut forwarded = 0;
    for (n, node) in all.iter().enumerate() {
        for i in 0..100 {
            let key = format!("k{i}");
            let r = node
                .get(KS, key.as_bytes(), &Opts::level("strong"))
                .await
                .unwrap_or_else(|e| panic!("{key} through node {}: {e}", n + 1));
            assert_eq!(
                r.value.as_deref(),
                Some(format!("v{i}").as_bytes()),
                "{key}"
            );
            assert_eq!(r.receipt.staleness_parts(), Some((0, 0)), "{key}: strong");
            let by = r.receipt.served_by.trim_start_matches('n');
            if n == 3 && by == "4" {
                served_by_4 += 1;
            }
            if by != (n + 1).to_string() {
                forwarded += 1;
            }
        }
        // And every node takes writes of every key.
        node.put(KS, format!("via{n}").as_bytes(), b"x", &Opts::default())
            .await
            .unwrap_or_else(|e| panic!("write through node {}: {e}", n + 1));
    }
    assert!(served_by_4 > 0, "node 4 holds some shards");
    // A SCAN through any node covers every shard, those it lacks included (each step of a
    // shard it does not hold is read by a replica).
    for (n, node) in all.iter().enumerate() {
        let mut seen = std::collections::HashSet::new();
        let mut cursor = 0;
        loop {
            let (page, next) = node
                .scan(KS, b"k", cursor, 50, &Opts::level("strong"))
                .await
                .unwrap_or_else(|e| panic!("scan through node {}: {e}", n + 1));
            seen.extend(page);
            if next == 0 {
                break;
            }
            cursor = next;
        }
        assert_eq!(seen.len(), 100, "every k key through node {}", n + 1);
    }
    assert!(
        forwarded > 0,
        "some reads were served by another node's replica"
    );
    settled_voters(&c.client(0), None).await;
    // Leaders spread too: the placements prefer each node for one of the four shards, and
    // each shard's leader hands its group to the preferred replica.
    let mut leads = std::collections::BTreeMap::new();
    for _ in 0..150 {
        leads.clear();
        if let Ok(s) = c.client(0).cluster().await {
            for g in s["groups"].as_array().into_iter().flatten() {
                if g["name"]
                    .as_str()
                    .is_some_and(|n| n.starts_with(&format!("{KS}/")))
                {
                    *leads.entry(g["leader"].as_u64().unwrap_or(0)).or_insert(0) += 1;
                }
            }
        }
        if leads.len() == 4 && leads.keys().all(|l| (1..=4).contains(l)) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(leads.len(), 4, "one shard led by each node: {leads:?}");
    let report = c.client(0).nodes().await.expect("nodes");
    for n in report["nodes"].as_array().unwrap() {
        assert_eq!(n["leaders"], 1, "preferred leaders spread: {report}");
    }

    // Node 1 drains and leaves (through node 2).
    let http2 = c.configs[1].http.clone();
    stop_l.store(false, Ordering::Relaxed);
    let lwriter = leaderless_writer(all[1..].to_vec(), "b", stop_l.clone());
    let (code, out) = tokio::task::spawn_blocking(move || {
        tunekv(&["node", "remove", "1", "--node", &http2, "--wait-s", "120"])
    })
    .await
    .unwrap();
    assert_eq!(code, 0, "node remove: {out}");
    eprintln!("{out}");
    stop_l.store(true, Ordering::Relaxed);
    let (acked_b, failed) = lwriter.await.unwrap();
    assert!(
        failed.is_empty(),
        "leaderless writes failed while the ring shrank: {failed:?}"
    );
    // Three nodes, three copies: each remaining node holds every key.
    let total = (all_l.len() + acked_b.len()) as u64;
    for i in 1..4 {
        let mut held = 0;
        for _ in 0..150 {
            held = ring_keys(&c, i).await.unwrap_or(0);
            if held == total {
                break;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        assert_eq!(held, total, "node {} holds every leaderless key", i + 1);
    }
    for key in all_l
        .iter()
        .cloned()
        .chain(acked_b.iter().map(|i| format!("b{i}")))
    {
        let r = all[1 + key.len() % 3]
            .get(LKS, key.as_bytes(), &Opts::default().r("quorum"))
            .await
            .unwrap_or_else(|e| panic!("{key}: {e}"));
        assert!(r.value.is_some(), "{key} lost when the ring shrank");
    }
    stop.store(true, Ordering::Relaxed);
    writer.await.unwrap();
    let report = c.client(1).nodes().await.expect("nodes");
    let n1 = report["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["id"] == 1)
        .cloned()
        .expect("node 1 listed");
    assert_eq!(n1["state"], "removed", "{report}");
    assert_eq!(n1["voter"], false, "{report}");
    assert_eq!(n1["replicas"], 0, "{report}");
    settled_voters(&c.client(1), Some(1)).await;
    // Every write acknowledged before, during and after the moves reads back at strong from
    // the nodes that remain.
    let remaining = &all[1..];
    for i in 0..100 {
        let key = format!("k{i}");
        assert_eq!(
            read_strong(remaining, &key).await.as_deref(),
            Some(format!("v{i}").as_bytes()),
            "{key}"
        );
    }
    let acked = acked.lock().unwrap().clone();
    assert!(
        acked.len() > 10,
        "writes went on while replicas moved: {}",
        acked.len()
    );
    for i in acked {
        let key = format!("w{i}");
        assert_eq!(
            read_strong(remaining, &key).await.as_deref(),
            Some(format!("x{i}").as_bytes()),
            "acknowledged {key}"
        );
    }
    write(remaining, "after", "yes").await.expect("write after");
    assert_eq!(
        read_strong(remaining, "after").await.as_deref(),
        Some(&b"yes"[..])
    );
    c.stop_all();
}

/// kill -9 (abort) of the metadata leader in the middle of a replica move — after the shard's
/// voters changed, before the catalog recorded it — and of each next leader that gets there:
/// the move is finished by whoever leads next, no shard is left with fewer than three voters,
/// and no acknowledged write is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_in_the_middle_of_a_move_is_finished_by_the_next_leader() {
    let mut c = common::start_with_args(3, true, |_| {}, &["--crash-at", "move-committed"]).await;
    seed_data(&c, 50).await;
    let (_, identity) = start_fourth(&mut c).await;
    // Through whichever node answers: the one asked may be the first to crash.
    let add = {
        let nodes: Vec<Client> = (0..3).map(|i| c.client(i)).collect();
        tokio::spawn(async move {
            for n in nodes.iter().cycle().take(30) {
                if n.add_node(&identity).await.is_ok() {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
        })
    };
    // Each node that aborts comes back without the crash point; the cluster must settle.
    let mut crashed = Vec::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    loop {
        for i in 0..c.len() {
            if let Some(status) = c.cluster.exited(i) {
                use std::os::unix::process::ExitStatusExt;
                assert_eq!(
                    status.signal(),
                    Some(6),
                    "node {} aborted on purpose",
                    i + 1
                );
                crashed.push(i + 1);
                c.kill(i);
                let args = std::mem::take(&mut c.server_args);
                c.start_node(i).expect("restart");
                c.server_args = args;
            }
        }
        let report = c.client(1).nodes().await;
        if std::time::Instant::now() >= deadline {
            let logs: String = (1..=4)
                .map(|n| {
                    let log = std::fs::read_to_string(c.dir.join(format!("node-{n}.log")))
                        .unwrap_or_default();
                    let tail: Vec<&str> = log
                        .lines()
                        .filter(|l| !l.contains("heartbeat") && !l.contains("replication"))
                        .rev()
                        .take(40)
                        .collect();
                    format!(
                        "--- node {n}\n{}\n",
                        tail.into_iter().rev().collect::<Vec<_>>().join("\n")
                    )
                })
                .collect();
            panic!("did not settle; crashed so far: {crashed:?}; nodes: {report:?}\n{logs}");
        }
        let settled = match report {
            Ok(r) => {
                r["moves"].as_array().is_some_and(|m| m.is_empty())
                    && r["nodes"].as_array().is_some_and(|ns| {
                        ns.len() == 4
                            && ns
                                .iter()
                                .all(|n| n["state"] == "active" && n["replicas"] == 3 + 1)
                    })
            }
            Err(_) => false,
        };
        if settled && !crashed.is_empty() {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "did not settle; crashed so far: {crashed:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    add.await.unwrap();
    c.server_args.clear();
    settled_voters(&c.client(1), None).await;
    let all: Vec<Client> = (0..4).map(|i| c.client(i)).collect();
    for i in 0..50 {
        let key = format!("k{i}");
        assert_eq!(
            read_strong(&all, &key).await.as_deref(),
            Some(format!("v{i}").as_bytes()),
            "{key} after crashes {crashed:?}"
        );
    }
    c.stop_all();
}
