//! `tunekv node add ADDR` and `tunekv node remove ID`: membership changes, followed until the
//! cluster has settled (the node active or removed, no replica move in flight).

use anyhow::Result;
use std::time::{Duration, Instant};
use tunekv_client::Client;

/// How often the progress is polled.
const POLL_EVERY: Duration = Duration::from_millis(500);

/// Adds the node listening for HTTP at `addr` through the cluster node `node`.
pub async fn add(addr: &str, node: &str, wait: Duration) -> Result<i32> {
    let identity = match Client::new(addr).identity().await {
        Ok(i) => i,
        Err(e) => {
            eprintln!(
                "error: cannot reach the new node at {addr}: {e}\n\
                 hint: start it first (`tunekv server --config NODE.toml`, its peers naming the \
                 cluster's nodes and itself); docs/deploy.md shows the steps"
            );
            return Ok(2);
        }
    };
    let Some(id) = identity["id"].as_u64() else {
        eprintln!("error: {addr} did not say its node id: {identity}");
        return Ok(2);
    };
    println!(
        "adding node {id} (raft {}, http {})",
        identity["raft"], identity["http"]
    );
    let cluster = Client::new(node);
    if let Err(e) = cluster.add_node(&identity).await {
        eprintln!("error: {e}");
        return Ok(2);
    }
    follow(&cluster, id, "active", wait).await
}

/// Drains and removes node `id` through the cluster node `node`.
pub async fn remove(id: u64, node: &str, wait: Duration) -> Result<i32> {
    let cluster = Client::new(node);
    println!("removing node {id}: its replicas move to other nodes first");
    if let Err(e) = cluster.remove_node(id).await {
        eprintln!("error: {e}");
        return Ok(2);
    }
    follow(&cluster, id, "removed", wait).await
}

/// Prints each change of the node's state and of the moves in flight until the node is in
/// `want` and nothing moves; exits 1 if that takes longer than `wait`.
async fn follow(cluster: &Client, id: u64, want: &str, wait: Duration) -> Result<i32> {
    let started = Instant::now();
    let mut last = String::new();
    loop {
        match cluster.nodes().await {
            Ok(report) => {
                let me = report["nodes"]
                    .as_array()
                    .and_then(|n| n.iter().find(|n| n["id"].as_u64() == Some(id)))
                    .cloned()
                    .unwrap_or_default();
                let state = me["state"].as_str().unwrap_or("unknown").to_string();
                let moves: Vec<String> = report["moves"]
                    .as_array()
                    .map(|m| {
                        m.iter()
                            .map(|m| {
                                let what = if m["ring"].as_bool() == Some(true) {
                                    "ring".to_string()
                                } else {
                                    format!("shard {}", m["shard"])
                                };
                                format!(
                                    "{} {what}: {} -> {}",
                                    m["keyspace"].as_str().unwrap_or("?"),
                                    m["from"],
                                    m["to"]
                                )
                            })
                            .collect()
                    })
                    .unwrap_or_default();
                let mut line = format!(
                    "[{:>5.1}s] node {id}: {state}, {} replicas",
                    started.elapsed().as_secs_f64(),
                    me["replicas"]
                );
                if !moves.is_empty() {
                    line.push_str(&format!("; moving {}", moves.join(", ")));
                }
                if let Some(why) = report["stuck"].as_str() {
                    line.push_str(&format!("; stuck: {why}"));
                }
                let key = line
                    .split_once("] ")
                    .map(|(_, l)| l.to_string())
                    .unwrap_or_default();
                if key != last {
                    println!("{line}");
                    last = key;
                }
                if state == want && moves.is_empty() {
                    println!("done: node {id} is {want} and no replica is moving");
                    return Ok(0);
                }
            }
            Err(e) => eprintln!("(cannot read the cluster's nodes: {e}; retrying)"),
        }
        if started.elapsed() > wait {
            eprintln!(
                "error: not settled after {:.0}s; the cluster goes on (`tunekv cluster` shows progress)",
                wait.as_secs_f64()
            );
            return Ok(1);
        }
        tokio::time::sleep(POLL_EVERY).await;
    }
}
