//! `tunekv cache`: a cache process in front of a cluster (crate `tunekv-cache`).

use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};
use tunekv_cache::{CacheBugs, CacheConfig, KeyspaceCache, Strategy};

pub struct CacheOptions {
    pub config: Option<PathBuf>,
    pub upstream: Option<PathBuf>,
    pub nodes: Vec<String>,
    pub http: Option<String>,
    pub resp: Option<String>,
    pub memory_bytes: Option<u64>,
    pub ttl_ms: Option<u64>,
    pub strategies: Vec<String>,
    pub bugs: Vec<String>,
    pub enable_faults: bool,
    pub write_behind_dir: Option<PathBuf>,
    pub write_behind_in_memory: bool,
    pub warm_keys: Option<PathBuf>,
    pub warm_prefixes: Vec<String>,
    pub hot_set_file: Option<PathBuf>,
    pub warm_rate: Option<u32>,
    pub ready_when_warm: bool,
}

/// The nodes of a `cluster.json` (as `tunekv dev` writes it) and the cluster secret from the
/// first node's config file it names.
fn from_cluster_json(path: &Path) -> Result<(Vec<String>, Option<String>)> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    let v: serde_json::Value =
        serde_json::from_str(&text).with_context(|| format!("{} is not JSON", path.display()))?;
    let nodes = v["nodes"]
        .as_array()
        .with_context(|| format!("{}: no \"nodes\" array", path.display()))?;
    let http = nodes
        .iter()
        .filter_map(|n| n["http"].as_str().map(str::to_string))
        .collect();
    let secret = nodes
        .iter()
        .filter_map(|n| n["config"].as_str())
        .find_map(|c| tunekv_node::NodeConfig::load(Path::new(c)).ok())
        .map(|c| c.cluster_secret);
    Ok((http, secret))
}

fn bugs(names: &[String]) -> Result<CacheBugs> {
    let mut b = CacheBugs::default();
    if names.is_empty() {
        return Ok(b);
    }
    if !cfg!(feature = "bug-injection") {
        bail!("this build has no bug injection (--bug needs the bug-injection feature)");
    }
    for n in names {
        match n.as_str() {
            "keep-stale-fills" => b.keep_stale_fills = true,
            "ignore-session" => b.ignore_session = true,
            "drop-invalidations" => b.drop_invalidations = true,
            "ignore-caller-prefix" => b.ignore_caller_prefix = true,
            other => bail!(
                "unknown cache bug {other:?}; known: keep-stale-fills, ignore-session, \
                 drop-invalidations, ignore-caller-prefix"
            ),
        }
    }
    Ok(b)
}

pub fn config(o: &CacheOptions) -> Result<CacheConfig> {
    let mut c = match &o.config {
        Some(p) => {
            let text = std::fs::read_to_string(p)
                .with_context(|| format!("cannot read {}", p.display()))?;
            toml::from_str::<CacheConfig>(&text)
                .with_context(|| format!("{} is not a cache config", p.display()))?
        }
        None => CacheConfig::default(),
    };
    if let Some(path) = &o.upstream {
        let (nodes, secret) = from_cluster_json(path)?;
        c.upstream = nodes;
        if c.cluster_secret.is_empty() {
            c.cluster_secret = secret.unwrap_or_default();
        }
    }
    c.upstream.extend(o.nodes.iter().cloned());
    if let Some(h) = &o.http {
        c.http = h.clone();
    }
    if let Some(r) = &o.resp {
        c.resp = Some(r.clone());
    }
    if let Some(m) = o.memory_bytes {
        c.memory_bytes = m;
    }
    if let Some(t) = o.ttl_ms {
        c.ttl_ms = t;
    }
    if let Some(d) = &o.write_behind_dir {
        c.write_behind_dir = Some(d.display().to_string());
    }
    if o.write_behind_in_memory {
        c.write_behind_in_memory = true;
    }
    if let Some(p) = &o.warm_keys {
        c.warm_keys_file = Some(p.display().to_string());
    }
    c.warm_prefixes.extend(o.warm_prefixes.iter().cloned());
    if let Some(p) = &o.hot_set_file {
        c.hot_set_file = Some(p.display().to_string());
    }
    if let Some(r) = o.warm_rate {
        c.warm_rate_per_s = r;
    }
    if o.ready_when_warm {
        c.ready_when_warm = true;
    }
    if c.cluster_secret.is_empty() {
        if let Ok(s) = std::env::var("TUNEKV_CLUSTER_SECRET") {
            c.cluster_secret = s;
        }
    }
    for s in &o.strategies {
        let Some((ks, name)) = s.split_once('=') else {
            bail!("--strategy takes KEYSPACE=STRATEGY, e.g. demo=write_through");
        };
        let strategy = match name {
            "read_through" => Strategy::ReadThrough,
            "write_through" => Strategy::WriteThrough,
            "write_behind" => Strategy::WriteBehind,
            other => bail!(
                "unknown strategy {other:?}; known: read_through, write_through, write_behind"
            ),
        };
        c.keyspaces
            .entry(ks.to_string())
            .or_insert_with(KeyspaceCache::default)
            .strategy = strategy;
    }
    c.validate().map_err(anyhow::Error::msg)?;
    Ok(c)
}

pub async fn run(o: CacheOptions) -> Result<i32> {
    let c = config(&o)?;
    let bugs = bugs(&o.bugs)?;
    tunekv_cache::run(c, bugs, o.enable_faults, crate::server::shutdown_signal())
        .await
        .map_err(anyhow::Error::msg)?;
    Ok(0)
}
