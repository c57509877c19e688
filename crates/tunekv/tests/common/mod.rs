//! Shared helpers for tests that run real `tunekv` processes on 127.0.0.1.

#![allow(dead_code)]

pub mod raw;

use std::future::Future;
use std::time::{Duration, Instant};
use tunekv::local_cluster::LocalCluster;
use tunekv_client::Client;

pub struct TestCluster {
    pub cluster: LocalCluster,
    // Held so the directory lives as long as the cluster.
    _dir: tempfile::TempDir,
}

impl Drop for TestCluster {
    /// A failing test shows the end of each node's log (the temp dir goes with the test).
    fn drop(&mut self) {
        if !std::thread::panicking() {
            return;
        }
        for i in 0..self.cluster.len() {
            let path = self.cluster.dir.join(format!("node-{}.log", i + 1));
            let Ok(text) = std::fs::read_to_string(&path) else {
                continue;
            };
            let lines: Vec<&str> = text.lines().collect();
            let tail = &lines[lines.len().saturating_sub(40)..];
            eprintln!("---- last {} lines of {}", tail.len(), path.display());
            for line in tail {
                eprintln!("{line}");
            }
        }
    }
}

impl std::ops::Deref for TestCluster {
    type Target = LocalCluster;
    fn deref(&self) -> &LocalCluster {
        &self.cluster
    }
}

impl std::ops::DerefMut for TestCluster {
    fn deref_mut(&mut self) -> &mut LocalCluster {
        &mut self.cluster
    }
}

/// Starts `n` node processes in a fresh temp dir and waits until they are ready.
pub async fn start(n: u32, enable_faults: bool) -> TestCluster {
    start_with(n, enable_faults, |_| {}).await
}

/// Like [`start`], adjusting each node's config first.
pub async fn start_with(
    n: u32,
    enable_faults: bool,
    tweak: impl Fn(&mut tunekv_node::NodeConfig),
) -> TestCluster {
    start_with_args(n, enable_faults, tweak, &[]).await
}

/// Like [`start_with`], with extra `tunekv server` arguments (e.g. `--bug NAME`).
pub async fn start_with_args(
    n: u32,
    enable_faults: bool,
    tweak: impl Fn(&mut tunekv_node::NodeConfig),
    server_args: &[&str],
) -> TestCluster {
    start_prepared(n, enable_faults, tweak, server_args, |_| {}).await
}

/// Prepares `n` node configs (adjusted by `tweak`), lets `setup` change the cluster (auth,
/// TLS), starts every node with `server_args` and waits until the cluster is ready.
async fn start_prepared(
    n: u32,
    enable_faults: bool,
    tweak: impl Fn(&mut tunekv_node::NodeConfig),
    server_args: &[&str],
    setup: impl FnOnce(&mut LocalCluster),
) -> TestCluster {
    let dir = tempfile::tempdir().expect("temp dir");
    let exe = std::path::Path::new(env!("CARGO_BIN_EXE_tunekv"));
    let mut cluster =
        LocalCluster::prepare_with(exe, dir.path(), n, enable_faults, false, false, tweak)
            .expect("prepare");
    cluster.server_args = server_args.iter().map(|a| a.to_string()).collect();
    setup(&mut cluster);
    cluster.start_all().expect("start");
    cluster
        .wait_ready(Duration::from_secs(60))
        .await
        .expect("cluster ready");
    TestCluster { cluster, _dir: dir }
}

pub async fn create_keyspace(c: &Client, name: &str, shards: u32) {
    let spec = serde_json::json!({"mode": "ordered", "shards": shards, "replicas": 3, "default_level": "strong"});
    c.create_keyspace(name, &spec)
        .await
        .expect("create keyspace");
}

/// Starts `n` nodes with auth on (root's password in DIR/credentials.json), logged in as root:
/// `c.client(i)` sends root's token.
pub async fn start_secure(n: u32) -> TestCluster {
    start_secure_with(n, &[], |_| {}).await
}

/// Like [`start_secure`], with extra `tunekv server` arguments (e.g. `--bug NAME`) and each
/// node's config adjusted first.
pub async fn start_secure_with(
    n: u32,
    server_args: &[&str],
    tweak: impl Fn(&mut tunekv_node::NodeConfig),
) -> TestCluster {
    start_prepared(n, false, tweak, server_args, |c| {
        c.enable_auth().expect("auth on");
    })
    .await
}

/// Starts `n` nodes with TLS on every listener (certificates from `ca`) and, with `auth`,
/// auth on too; `c.client(i)` speaks https with the CA (and root's token).
pub async fn start_tls(n: u32, auth: bool, ca: &tunekv::local_cluster::DevCa) -> TestCluster {
    start_prepared(
        n,
        false,
        |_| {},
        &[],
        |c| {
            if auth {
                c.enable_auth().expect("auth on");
            }
            c.enable_tls_with(ca).expect("tls on");
        },
    )
    .await
}

/// One HTTP call with `Authorization: Bearer TOKEN` (none when `token` is None): status and
/// body (JSON when it parses).
pub async fn call_as(
    token: Option<&str>,
    method: &str,
    url: &str,
    body: &str,
) -> (u16, serde_json::Value) {
    let client = reqwest::Client::new();
    let m = reqwest::Method::from_bytes(method.as_bytes()).expect("method");
    let mut req = client
        .request(m, url)
        .body(body.to_string())
        .timeout(Duration::from_secs(30));
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    let resp = req.send().await.expect("send");
    let status = resp.status().as_u16();
    let text = resp.text().await.expect("body");
    let body = serde_json::from_str(&text).unwrap_or(serde_json::Value::String(text));
    (status, body)
}

/// Creates keyspace `name` with this JSON spec through node 1's HTTP API (201 expected).
pub async fn put_keyspace(c: &TestCluster, name: &str, spec: &str) {
    let (s, _, b) = call("PUT", &format!("{}/v1/keyspaces/{name}", c.http(0)), spec).await;
    assert_eq!(s, 201, "create keyspace {name}: {b}");
}

/// Polls `f` until it returns `Some`, failing the test after `timeout`.
pub async fn eventually<T, F, Fut>(timeout: Duration, what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The node id (1-based) leading group `name` (e.g. `"ks/shard0"`), as node `via` reports it.
pub async fn leader_of(c: &Client, name: &str) -> Option<u64> {
    let s = c.cluster().await.ok()?;
    s["groups"].as_array()?.iter().find(|g| g["name"] == name)?["leader"].as_u64()
}

/// Sends `signal` (`STOP`, `CONT`, `HUP`, …) to the process `pid` of a test node (by PID).
pub fn signal(pid: u32, signal: &str) {
    let status = std::process::Command::new("kill")
        .args([&format!("-{signal}"), &pid.to_string()])
        .status()
        .expect("run kill");
    assert!(status.success(), "kill -{signal} {pid}");
}

/// Zero-based indexes of the leader of group `name` and of one follower, once it has a leader.
pub async fn leader_and_follower(c: &TestCluster, name: &str) -> (usize, usize) {
    let c0 = c.client(0);
    let leader = eventually(Duration::from_secs(10), "a leader", || leader_of(&c0, name)).await;
    let leader = leader as usize - 1;
    let follower = (0..c.len()).find(|i| *i != leader).expect("a follower");
    (leader, follower)
}

/// Node `i`'s (index) own `leaderless` figures in `/v1/cluster`.
pub async fn leaderless_figures(c: &TestCluster, i: usize) -> Option<serde_json::Value> {
    let s = c.client(i).cluster().await.ok()?;
    let me = s["nodes"]
        .as_array()?
        .iter()
        .find(|n| n["id"].as_u64() == Some(i as u64 + 1))?
        .clone();
    Some(me["leaderless"].clone())
}

/// Node `idx`'s own replica row of group `name`, as that node reports it.
pub async fn own_replica(c: &TestCluster, idx: usize, name: &str) -> Option<serde_json::Value> {
    let s = c.client(idx).cluster().await.ok()?;
    let g = s["groups"].as_array()?.iter().find(|g| g["name"] == name)?;
    g["replicas"]
        .as_array()?
        .iter()
        .find(|r| r["node"].as_u64() == Some(idx as u64 + 1))
        .cloned()
}

/// One HTTP call: status, the `tunekv-quorum` header, and the body (JSON when it parses).
pub async fn call(method: &str, url: &str, body: &str) -> (u16, Option<String>, serde_json::Value) {
    let (status, quorum, body) = call_with_header(method, url, body, "tunekv-quorum").await;
    (status, quorum, body)
}

/// One HTTP call: status, the answer's header `name`, and the body (JSON when it parses).
pub async fn call_with_header(
    method: &str,
    url: &str,
    body: &str,
    name: &str,
) -> (u16, Option<String>, serde_json::Value) {
    let client = reqwest::Client::new();
    let m = reqwest::Method::from_bytes(method.as_bytes()).expect("method");
    let resp = client
        .request(m, url)
        .body(body.to_string())
        .timeout(Duration::from_secs(30))
        .send()
        .await
        .expect("send");
    let status = resp.status().as_u16();
    let header = resp
        .headers()
        .get(name)
        .map(|v| v.to_str().unwrap_or_default().to_string());
    let text = resp.text().await.expect("body");
    let body = serde_json::from_str(&text).unwrap_or(serde_json::Value::String(text));
    (status, header, body)
}

/// The Python of the venv scripts/test makes (redis-py, prometheus_client), or `TUNEKV_PYTHON`.
pub fn python() -> std::path::PathBuf {
    let python = std::env::var("TUNEKV_PYTHON")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|_| {
            std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"))
                .join("../../target/ci-venv/bin/python")
        });
    assert!(
        python.exists(),
        "{} missing: run scripts/test once (it makes a venv with redis-py and \
         prometheus_client) or set TUNEKV_PYTHON",
        python.display()
    );
    python
}

/// Runs the `tunekv` CLI; its exit code and stdout followed by stderr.
pub fn tunekv(args: &[&str]) -> (i32, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_tunekv"))
        .args(args)
        .output()
        .expect("run tunekv");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code().unwrap_or(-1), text)
}

/// [`tunekv`] on a blocking thread, for async tests whose runtime must keep serving.
pub async fn tunekv_async(args: Vec<String>) -> (i32, String) {
    tokio::task::spawn_blocking(move || {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        tunekv(&args)
    })
    .await
    .expect("tunekv task")
}
