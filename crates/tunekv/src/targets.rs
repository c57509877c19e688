//! The nodes `verify` and `bench` talk to: a cluster they start in a temp dir (the default), or
//! the one a `cluster.json` describes.

use anyhow::{Context, Result};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tunekv::local_cluster::LocalCluster;

/// One node as clients see it.
#[derive(Clone, Debug)]
pub struct Target {
    pub id: u64,
    pub http: String,
    pub resp: Option<String>,
    pub pid: Option<u32>,
}

fn from_json(path: &Path) -> Result<Vec<Target>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    let v: serde_json::Value =
        serde_json::from_str(&text).with_context(|| format!("{} is not JSON", path.display()))?;
    let nodes = v["nodes"]
        .as_array()
        .with_context(|| format!("{}: no \"nodes\" array", path.display()))?;
    nodes
        .iter()
        .map(|n| {
            Ok(Target {
                id: n["id"].as_u64().context("node without \"id\"")?,
                http: n["http"]
                    .as_str()
                    .context("node without \"http\"")?
                    .to_string(),
                resp: n["resp"].as_str().map(str::to_string),
                pid: n["pid"].as_u64().and_then(|p| u32::try_from(p).ok()),
            })
        })
        .collect()
}

/// The nodes of `cluster_json`, or of a fresh cluster of `nodes` started (with faults enabled
/// and `server_args`, its configs adjusted by `tweak`) in `dir` or a temp dir named after
/// `purpose`; with `share_cores`, the nodes divide this machine's cores as `tunekv dev`'s do
/// ([`LocalCluster::share_cores`]). Returns the cluster and its directory when it was started
/// here.
pub async fn open(
    cluster_json: Option<&Path>,
    nodes: u32,
    dir: Option<PathBuf>,
    (purpose, share_cores): (&str, bool),
    server_args: &[String],
    tweak: impl Fn(&mut tunekv_node::NodeConfig),
) -> Result<(
    Vec<Target>,
    Option<Arc<Mutex<LocalCluster>>>,
    Option<PathBuf>,
)> {
    if let Some(path) = cluster_json {
        return Ok((from_json(path)?, None, None));
    }
    let exe = std::env::current_exe().context("cannot find the tunekv executable")?;
    let dir = dir.unwrap_or_else(|| {
        std::env::temp_dir().join(format!("tunekv-{purpose}-{}", std::process::id()))
    });
    let mut c = LocalCluster::prepare_with(&exe, &dir, nodes, true, true, false, tweak)?;
    c.server_args = server_args.to_vec();
    if share_cores {
        let workers = c.share_cores()?;
        println!(
            "starting {} nodes in {} (runtime workers and storage engine threads per node: \
             {workers}, unless TOKIO_WORKER_THREADS / [storage] engine_threads are set) ...",
            c.len(),
            c.dir.display()
        );
    } else {
        println!("starting {} nodes in {} ...", c.len(), c.dir.display());
    }
    c.start_all()?;
    c.wait_ready(Duration::from_secs(60)).await?;
    let targets = (0..c.len())
        .map(|i| Target {
            id: c.configs[i].id,
            http: c.configs[i].http.clone(),
            resp: c.configs[i].resp.clone(),
            pid: c.pid(i),
        })
        .collect();
    let dir = c.dir.clone();
    Ok((targets, Some(Arc::new(Mutex::new(c))), Some(dir)))
}

/// Each target's replica digest of leaderless keyspace `ks` (None: unreachable or not loaded);
/// see [`tunekv_client::Client::replica_digest`].
pub async fn digests(targets: &[Target], ks: &str) -> Vec<Option<(u64, u64)>> {
    let mut out = Vec::new();
    for t in targets {
        let c = tunekv_client::Client::with_timeout(&t.http, Duration::from_secs(3));
        out.push(c.replica_digest(ks).await.ok().flatten());
    }
    out
}
