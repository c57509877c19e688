//! `tunekv dev`: a local cluster plus a short demo of the levels.

use anyhow::{Context, Result};
use std::path::PathBuf;
use std::time::Duration;
use tunekv::local_cluster::LocalCluster;
use tunekv_client::Opts;

pub struct DevOptions {
    pub nodes: u32,
    pub dir: PathBuf,
    pub enable_faults: bool,
    pub fresh: bool,
    pub demo: bool,
    pub exit_after_demo: bool,
    /// Also start a `tunekv cache` in front of the cluster.
    pub cache: bool,
    /// Turn auth on (root's password in DIR/credentials.json).
    pub auth: bool,
    /// TLS on every listener (a throwaway CA in DIR/tls).
    pub tls: bool,
}

pub async fn run(o: DevOptions) -> Result<i32> {
    let exe = std::env::current_exe().context("cannot find the tunekv executable")?;
    let mut cluster = LocalCluster::prepare(&exe, &o.dir, o.nodes, o.enable_faults, o.fresh, true)?;
    let new_password = if o.auth { cluster.enable_auth()? } else { None };
    if o.tls {
        cluster.enable_tls()?;
    }
    let workers = cluster.share_cores()?;
    let workers = match std::env::var("TOKIO_WORKER_THREADS") {
        Ok(set) => format!("{set} (TOKIO_WORKER_THREADS)"),
        Err(_) => format!("{workers} (this machine's cores shared among the nodes)"),
    };
    println!(
        "starting {} nodes in {} (runtime workers per node: {workers}; storage engine threads \
         per node: {}) ...",
        cluster.len(),
        cluster.dir.display(),
        cluster.engine_threads()
    );
    cluster.start_all()?;
    cluster.wait_ready(Duration::from_secs(60)).await?;
    if o.cache {
        cluster.start_cache(&[]).await?;
    }
    let json = cluster.write_cluster_json()?;
    println!("cluster is up ({}):", json.display());
    for i in 0..cluster.len() {
        println!(
            "  node {}  {}  pid {}  config {}",
            i + 1,
            cluster.http(i),
            cluster.pid(i).unwrap_or(0),
            cluster.config_path(i).display()
        );
    }
    if let Some((http, pid)) = cluster.cache() {
        let resp = cluster.cache_resp().unwrap_or_default();
        let base = cluster.cache_client(http, None).base().to_string();
        println!("  cache   {base}  resp {resp}  pid {pid}  status {base}/v1/cache");
        if cluster.token.is_some() {
            println!(
                "          logs in as user {} (password in {}); callers show their own tokens",
                tunekv::local_cluster::CACHE_USER,
                cluster.dir.join("cache-password").display()
            );
        }
    }
    println!(
        "  status page: {}/   cluster JSON: {}/v1/cluster",
        cluster.http(0),
        cluster.http(0)
    );
    if cluster.token.is_some() {
        if let Some(p) = &new_password {
            println!(
                "auth is ON: user root, password {p} (printed this once; kept in {})",
                cluster.credentials_path().display()
            );
        } else {
            println!(
                "auth is ON: user root, password in {}",
                cluster.credentials_path().display()
            );
        }
        println!(
            "  for the CLI: export TUNEKV_TOKEN=$(tunekv login --credentials {})",
            cluster.credentials_path().display()
        );
    } else {
        println!(
            "auth is OFF: anyone on this machine can read, write and administer this cluster \
             (tunekv dev --auth turns it on)"
        );
    }
    if let Some(tls) = cluster.configs.first().and_then(|c| c.tls.clone()) {
        println!(
            "TLS is ON (HTTP and RESP TLS only, mutual TLS between nodes); the CA is {}:\n  export TUNEKV_CA={}\n  redis-cli --tls --cacert {} -p {}",
            tls.ca.display(),
            tls.ca.display(),
            tls.ca.display(),
            cluster.configs[0]
                .resp
                .as_deref()
                .and_then(|r| r.rsplit_once(':'))
                .map_or("7301", |(_, p)| p)
        );
    }
    if o.demo {
        if let Err(e) = demo(&cluster).await {
            eprintln!("demo failed: {e:#}");
        }
        if let Some((http, _)) = cluster.cache() {
            let cache = cluster.cache_client(http, cluster.token.clone());
            if let Err(e) = cache_demo(&cache).await {
                eprintln!("cache demo failed: {e:#}");
            }
        }
    }
    if o.exit_after_demo {
        cluster.stop_all();
        return Ok(0);
    }
    println!("\nPress Ctrl-C to stop the cluster. Try:  tunekv get demo greeting --level eventual --node {}", cluster.configs[2 % cluster.len()].http);
    loop {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => break,
            _ = tokio::time::sleep(Duration::from_secs(1)) => {
                for i in 0..cluster.len() {
                    if let Some(status) = cluster.exited(i) {
                        println!("node {} exited ({status}); restart it with: tunekv server --config {}", i + 1, cluster.config_path(i).display());
                    }
                }
            }
        }
    }
    println!("stopping ...");
    cluster.stop_all();
    Ok(0)
}

async fn demo(cluster: &LocalCluster) -> Result<()> {
    let n = cluster.len();
    let (a, b, c) = (
        cluster.client(0),
        cluster.client(1 % n),
        cluster.client(2 % n),
    );
    println!("\n== demo: one write, read back at different levels on different nodes ==");
    let spec = serde_json::json!({"mode": "ordered", "shards": 4, "replicas": n.min(3), "default_level": "strong"});
    a.create_keyspace("demo", &spec)
        .await
        .context("create keyspace demo")?;
    println!(
        "created keyspace demo: 4 shards x {} replicas, default level strong",
        n.min(3)
    );
    let w = a
        .put("demo", b"greeting", b"hello, tunekv", &Opts::default())
        .await?;
    println!(
        "PUT demo/greeting on node 1            -> committed at {}",
        w.position
    );
    let reads = [
        ("node 2", &b, "strong"),
        ("node 3", &c, "strong"),
        ("node 3", &c, "bounded(k=3)"),
        ("node 3", &c, "bounded(t=500ms)"),
        ("node 3", &c, "consistent_prefix"),
        ("node 3", &c, "eventual"),
        ("node 3", &c, "read_your_writes"),
        ("node 2", &b, "monotonic_reads"),
        ("node 3", &c, "session"),
        ("node 3", &c, "weak"),
    ];
    println!("(session levels carry the session token of the write on node 1, which grows with every read)");
    let mut token = w.session.clone();
    for (name, client, level) in reads {
        match client
            .get("demo", b"greeting", &Opts::level(level).session(&token))
            .await
        {
            Ok(r) => {
                println!(
                    "GET on {name} at {level:<17} -> {:?}  served_by={} position={} staleness={}",
                    String::from_utf8_lossy(r.value.as_deref().unwrap_or_default()),
                    r.receipt.served_by,
                    r.receipt.position,
                    r.receipt.staleness
                );
                token = r.session;
            }
            Err(e) => println!("GET on {name} at {level:<17} -> refused, never served weaker: {e}"),
        }
    }
    Ok(())
}

/// Reads through the cache: a miss, then hits at eventual, session and strong, each with its
/// receipt.
async fn cache_demo(cache: &tunekv_client::Client) -> Result<()> {
    println!("\n== the cache: hits obey the level ==");
    let w = cache
        .put("demo", b"cached", b"from the cache", &Opts::default())
        .await?;
    println!(
        "PUT demo/cached through the cache        -> committed at {}",
        w.position
    );
    let mut token = w.session.clone();
    for level in ["eventual", "eventual", "session", "strong", "bounded(k=0)"] {
        match cache
            .get("demo", b"cached", &Opts::level(level).session(&token))
            .await
        {
            Ok(r) => {
                // u64::MAX ms: no freshness proof yet (the cache never guesses one).
                let staleness = r
                    .receipt
                    .staleness
                    .replace(&format!("ms={}", u64::MAX), "ms=unknown");
                println!(
                    "GET via cache at {level:<13} -> {:?}  cache={} position={} staleness={staleness}",
                    String::from_utf8_lossy(r.value.as_deref().unwrap_or_default()),
                    r.cache.as_deref().unwrap_or("?"),
                    r.receipt.position,
                );
                token = r.session;
            }
            Err(e) => println!("GET via cache at {level:<13} -> refused, never served weaker: {e}"),
        }
    }
    Ok(())
}
