//! The fault schedule of `verify`: seeded, so `--seed` repeats it; one fault at a time, held
//! for a few seconds, then healed, with quiet gaps between. Every step is printed.

use super::Target;
use anyhow::{bail, Result};
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use serde_json::json;
use std::fmt;
use std::process::Command;
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tunekv::local_cluster::LocalCluster;
use tunekv_client::Client;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum FaultKind {
    /// kill -9 of a node process, restarted when healed.
    Kill,
    /// SIGSTOP, SIGCONT when healed.
    Pause,
    /// The nodes split in two sets (sometimes one way only).
    Partition,
    /// Delay (with jitter) on one node's outbound messages.
    Delay,
    /// A drop rate on one node's messages.
    Drop,
    /// One node's wall clock moved by seconds.
    Skew,
    /// A new node joins (`POST /v1/admin/nodes`: replicas move to it); healed by removing it
    /// again (they move back) and stopping its process.
    Membership,
}

impl FaultKind {
    pub const ALL: [FaultKind; 7] = [
        FaultKind::Kill,
        FaultKind::Pause,
        FaultKind::Partition,
        FaultKind::Delay,
        FaultKind::Drop,
        FaultKind::Skew,
        FaultKind::Membership,
    ];
}

impl fmt::Display for FaultKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            FaultKind::Kill => "kill",
            FaultKind::Pause => "pause",
            FaultKind::Partition => "partition",
            FaultKind::Delay => "delay",
            FaultKind::Drop => "drop",
            FaultKind::Skew => "skew",
            FaultKind::Membership => "membership",
        })
    }
}

impl FromStr for FaultKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        FaultKind::ALL
            .into_iter()
            .find(|k| k.to_string() == s)
            .ok_or_else(|| {
                format!("unknown fault {s:?}; faults: kill, pause, partition, delay, drop, skew, membership, all, none")
            })
    }
}

/// Parses `--faults`: a comma list, `all` or `none`.
pub fn parse_faults(s: &str) -> Result<Vec<FaultKind>, String> {
    match s.trim() {
        "all" => Ok(FaultKind::ALL.to_vec()),
        "none" | "" => Ok(Vec::new()),
        list => list.split(',').map(|k| k.trim().parse()).collect(),
    }
}

/// One injected fault, as it is undone.
enum Active {
    Killed(usize),
    Paused(usize),
    /// The cache was killed (restarted on heal) or cut off from the nodes.
    CacheKilled,
    CacheIsolated,
    /// Nodes whose fault hook was set.
    Hooked(Vec<usize>),
    /// A node added to the cluster (its index in the cluster, its id).
    Joined(usize, u64),
}

pub struct FaultRunner {
    pub targets: Arc<Vec<Target>>,
    /// The cluster this run started (kill needs it to restart nodes).
    pub cluster: Option<Arc<Mutex<LocalCluster>>>,
    pub kinds: Vec<FaultKind>,
    pub seed: u64,
    pub stop: Arc<AtomicBool>,
    pub injected: Arc<AtomicU64>,
    /// Prints one line (through the progress bar).
    pub say: Arc<dyn Fn(String) + Send + Sync>,
    pub started: std::time::Instant,
    /// `--through-cache`: the cache's address; a third of the faults kill it or cut it off.
    pub cache: Option<String>,
}

fn hook_client(t: &Target) -> Client {
    Client::with_timeout(&t.http, Duration::from_secs(2))
}

/// Sets the cache's fault hook (`tunekv cache --enable-faults`).
async fn cache_hook(http: &str, change: serde_json::Value) -> Result<()> {
    let url = format!("http://{http}/v1/admin/faults");
    let r = reqwest::Client::new()
        .post(url)
        .timeout(Duration::from_secs(2))
        .json(&change)
        .send()
        .await?;
    if !r.status().is_success() {
        bail!("the cache's fault hook answered {}", r.status());
    }
    Ok(())
}

/// Heals the cache: restarts it if it is down, reconnects it.
pub async fn heal_cache(http: &str, cluster: Option<&Arc<Mutex<LocalCluster>>>) -> Result<()> {
    if let Some(c) = cluster {
        let mut c = c.lock().unwrap_or_else(|p| p.into_inner());
        if c.cache().is_none() {
            c.restart_cache()?;
        }
    }
    tunekv::local_cluster::wait_cache(http, Duration::from_secs(30)).await?;
    cache_hook(http, json!({"clear": true})).await
}

fn signal(pid: u32, sig: &str) -> Result<()> {
    let status = Command::new("kill")
        .arg(sig)
        .arg(pid.to_string())
        .status()?;
    if !status.success() {
        bail!("kill {sig} {pid} failed");
    }
    Ok(())
}

impl FaultRunner {
    /// Checks up front that every requested fault can be injected on these nodes.
    pub fn check(&self) -> Result<()> {
        for k in &self.kinds {
            match k {
                FaultKind::Kill if self.cluster.is_none() => bail!(
                    "--faults kill needs a cluster started by verify (it restarts the nodes it kills); \
                     leave out --cluster or drop kill from --faults"
                ),
                FaultKind::Membership if self.cluster.is_none() => bail!(
                    "--faults membership needs a cluster started by verify (it starts the nodes it \
                     adds); leave out --cluster or drop membership from --faults"
                ),
                FaultKind::Pause if self.targets.iter().any(|t| t.pid.is_none()) => {
                    bail!("--faults pause needs every node's pid in cluster.json")
                }
                _ => {}
            }
        }
        Ok(())
    }

    fn pid(&self, i: usize) -> Option<u32> {
        match &self.cluster {
            Some(c) => c.lock().unwrap_or_else(|p| p.into_inner()).pid(i),
            None => self.targets[i].pid,
        }
    }

    /// Injects faults until `stop`; every fault it injected is healed before it returns.
    pub async fn run(self) {
        if self.kinds.is_empty() {
            return;
        }
        let mut rng = StdRng::seed_from_u64(self.seed);
        (self.say)(format!(
            "fault schedule: seed {}, kinds {}",
            self.seed,
            list(&self.kinds)
        ));
        let n = self.targets.len();
        // The first faults take each requested kind once, in a seeded order (a stream of its
        // own, so the schedule's other draws stay what they were): a run long enough for that
        // many faults injects every kind asked for.
        let mut deck = self.kinds.clone();
        deck.shuffle(&mut StdRng::seed_from_u64(self.seed ^ 0xdec4));
        while !self.stop.load(Ordering::Relaxed) {
            let quiet = Duration::from_millis(rng.gen_range(500..=1500));
            if self.sleep(quiet).await {
                break;
            }
            let drawn = self.kinds[rng.gen_range(0..self.kinds.len())];
            let kind = if deck.is_empty() {
                drawn
            } else {
                deck.remove(0)
            };
            let node = rng.gen_range(0..n);
            let hold = Duration::from_millis(rng.gen_range(1500..=4000));
            let on_cache = self.cache.is_some() && rng.gen_range(0..3) == 0;
            let injected = if on_cache {
                self.inject_cache(&mut rng).await
            } else {
                self.inject(kind, node, &mut rng).await
            };
            let (active, what) = match injected {
                Ok(x) => x,
                Err(e) => {
                    (self.say)(format!("{} could not inject {kind}: {e:#}", self.stamp()));
                    continue;
                }
            };
            self.injected.fetch_add(1, Ordering::Relaxed);
            (self.say)(format!(
                "{} {what} for {:.1}s",
                self.stamp(),
                hold.as_secs_f64()
            ));
            self.sleep(hold).await;
            if let Err(e) = self.heal(active).await {
                (self.say)(format!("{} heal after {kind} failed: {e:#}", self.stamp()));
            }
        }
    }

    fn stamp(&self) -> String {
        format!("[{:>6.1}s]", self.started.elapsed().as_secs_f64())
    }

    /// Sleeps up to `d`; true if the run stopped meanwhile.
    async fn sleep(&self, d: Duration) -> bool {
        let until = tokio::time::Instant::now() + d;
        while tokio::time::Instant::now() < until {
            if self.stop.load(Ordering::Relaxed) {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        self.stop.load(Ordering::Relaxed)
    }

    async fn hook(&self, i: usize, change: serde_json::Value) -> Result<()> {
        hook_client(&self.targets[i])
            .faults(&change)
            .await
            .map_err(|e| anyhow::anyhow!("fault hook of node {}: {e}", self.targets[i].id))?;
        Ok(())
    }

    /// Kills the cache (kill -9) or cuts it off from every node.
    async fn inject_cache(&self, rng: &mut StdRng) -> Result<(Active, String)> {
        let http = self.cache.as_deref().unwrap_or_default();
        if rng.gen_bool(0.5) {
            if let Some(c) = &self.cluster {
                c.lock().unwrap_or_else(|p| p.into_inner()).kill_cache();
                return Ok((Active::CacheKilled, "kill -9 the cache".into()));
            }
        }
        cache_hook(http, json!({"isolate": true})).await?;
        Ok((
            Active::CacheIsolated,
            "cut the cache off from every node".into(),
        ))
    }

    async fn inject(
        &self,
        kind: FaultKind,
        node: usize,
        rng: &mut StdRng,
    ) -> Result<(Active, String)> {
        let id = |i: usize| self.targets[i].id;
        match kind {
            FaultKind::Kill => {
                let c = self
                    .cluster
                    .as_ref()
                    .ok_or_else(|| anyhow::anyhow!("no cluster"))?;
                c.lock().unwrap_or_else(|p| p.into_inner()).kill(node);
                Ok((Active::Killed(node), format!("kill -9 node {}", id(node))))
            }
            FaultKind::Pause => {
                let pid = self
                    .pid(node)
                    .ok_or_else(|| anyhow::anyhow!("node {} is not running", id(node)))?;
                signal(pid, "-STOP")?;
                Ok((
                    Active::Paused(node),
                    format!("pause node {} (SIGSTOP)", id(node)),
                ))
            }
            FaultKind::Partition => {
                let mut order: Vec<usize> = (0..self.targets.len()).collect();
                order.shuffle(rng);
                let cut = rng.gen_range(1..order.len().max(2));
                let (a, b) = order.split_at(cut.min(order.len()));
                let ids = |s: &[usize]| s.iter().map(|&i| id(i)).collect::<Vec<_>>();
                let one_way = rng.gen_bool(0.3);
                let mut hooked = Vec::new();
                for &i in a {
                    let change = if one_way {
                        json!({"drop_to": ids(b)})
                    } else {
                        json!({"drop_to": ids(b), "drop_from": ids(b)})
                    };
                    self.hook(i, change).await?;
                    hooked.push(i);
                }
                if !one_way {
                    for &i in b {
                        self.hook(i, json!({"drop_to": ids(a), "drop_from": ids(a)}))
                            .await?;
                        hooked.push(i);
                    }
                }
                let what = if one_way {
                    format!("one-way partition {:?} -/-> {:?}", ids(a), ids(b))
                } else {
                    format!("partition {:?} | {:?}", ids(a), ids(b))
                };
                Ok((Active::Hooked(hooked), what))
            }
            FaultKind::Delay => {
                let (ms, jitter) = (rng.gen_range(20..=150u64), rng.gen_range(0..=50u64));
                self.hook(node, json!({"delay_ms": ms, "jitter_ms": jitter}))
                    .await?;
                Ok((
                    Active::Hooked(vec![node]),
                    format!("delay {ms}±{jitter} ms on node {}'s messages", id(node)),
                ))
            }
            FaultKind::Drop => {
                let rate = f64::from(rng.gen_range(5..=30u32)) / 100.0;
                self.hook(node, json!({"drop_rate": rate})).await?;
                Ok((
                    Active::Hooked(vec![node]),
                    format!("drop {:.0}% of node {}'s messages", rate * 100.0, id(node)),
                ))
            }
            FaultKind::Membership => {
                let c = self
                    .cluster
                    .as_ref()
                    .ok_or_else(|| anyhow::anyhow!("no cluster"))?;
                let (i, http) = {
                    let mut c = c.lock().unwrap_or_else(|p| p.into_inner());
                    let i = c.prepare_extra_node()?;
                    c.start_node(i)?;
                    (i, c.configs[i].http.clone())
                };
                let newcomer = Client::with_timeout(&http, Duration::from_secs(2));
                let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
                let identity = loop {
                    match newcomer.identity().await {
                        Ok(v) => break v,
                        Err(e) if tokio::time::Instant::now() > deadline => {
                            c.lock().unwrap_or_else(|p| p.into_inner()).stop(i);
                            bail!("the new node at {http} did not answer: {e}");
                        }
                        Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
                    }
                };
                let new_id = identity["id"].as_u64().unwrap_or_default();
                // Answers once the node is a voter (or after the node's wait); replicas move
                // to it meanwhile and after, while clients run.
                let via = Client::with_timeout(&self.targets[node].http, Duration::from_secs(30));
                if let Err(e) = via.add_node(&identity).await {
                    (self.say)(format!(
                        "{} adding node {new_id} answered {e}; removing it at heal",
                        self.stamp()
                    ));
                }
                Ok((
                    Active::Joined(i, new_id),
                    format!(
                        "add node {new_id} through node {} (replicas move to it)",
                        id(node)
                    ),
                ))
            }
            FaultKind::Skew => {
                let ms = rng.gen_range(500..=10_000i64) * if rng.gen_bool(0.5) { 1 } else { -1 };
                self.hook(node, json!({"clock_offset_ms": ms})).await?;
                Ok((
                    Active::Hooked(vec![node]),
                    format!("skew node {}'s clock by {ms:+} ms", id(node)),
                ))
            }
        }
    }

    async fn heal(&self, active: Active) -> Result<()> {
        match active {
            Active::CacheKilled => {
                let c = self
                    .cluster
                    .as_ref()
                    .ok_or_else(|| anyhow::anyhow!("no cluster"))?;
                let http = c
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .restart_cache()?;
                tunekv::local_cluster::wait_cache(&http, Duration::from_secs(30)).await?;
            }
            Active::CacheIsolated => {
                cache_hook(
                    self.cache.as_deref().unwrap_or_default(),
                    json!({"clear": true}),
                )
                .await?;
            }
            Active::Killed(i) => {
                let c = self
                    .cluster
                    .as_ref()
                    .ok_or_else(|| anyhow::anyhow!("no cluster"))?;
                c.lock().unwrap_or_else(|p| p.into_inner()).start_node(i)?;
            }
            Active::Paused(i) => {
                let pid = self
                    .pid(i)
                    .ok_or_else(|| anyhow::anyhow!("node not running"))?;
                signal(pid, "-CONT")?;
            }
            Active::Hooked(nodes) => {
                for i in nodes {
                    self.hook(i, json!({"clear": true})).await?;
                }
            }
            Active::Joined(i, id) => {
                let outcome = self.remove_node(id).await;
                if let Some(c) = &self.cluster {
                    c.lock().unwrap_or_else(|p| p.into_inner()).stop(i);
                }
                outcome?;
            }
        }
        Ok(())
    }

    /// Removes node `id` through the first founding node that answers, until it is removed
    /// (its replicas moved back to the others) or a minute passed.
    async fn remove_node(&self, id: u64) -> Result<()> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        let mut last = String::new();
        while tokio::time::Instant::now() < deadline {
            for t in self.targets.iter() {
                let c = Client::with_timeout(&t.http, Duration::from_secs(30));
                match c.remove_node(id).await {
                    Ok(v) if v["state"] == "removed" => {
                        (self.say)(format!("{} node {id} removed", self.stamp()));
                        return Ok(());
                    }
                    Ok(v) => last = format!("node {id} is {}", v["state"]),
                    // Never became a member (its add failed before it was recorded).
                    Err(e) if e.to_string().contains("is not a member") => return Ok(()),
                    Err(e) => last = e.to_string(),
                }
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        bail!("node {id} not removed within a minute: {last}")
    }
}

/// Heals every node whatever the schedule left: restarts stopped nodes, resumes paused ones,
/// clears every fault hook (retrying while nodes come back).
pub async fn heal_all(
    targets: &[Target],
    cluster: Option<&Arc<Mutex<LocalCluster>>>,
    with_hook: bool,
) -> Result<()> {
    if let Some(c) = cluster {
        let mut c = c.lock().unwrap_or_else(|p| p.into_inner());
        // The founding nodes only: a node a membership fault added was removed at its heal.
        for i in 0..targets.len().min(c.len()) {
            if c.pid(i).is_none() {
                c.start_node(i)?;
            }
        }
    }
    for (i, t) in targets.iter().enumerate() {
        let pid = match cluster {
            Some(c) => c.lock().unwrap_or_else(|p| p.into_inner()).pid(i),
            None => t.pid,
        };
        if let Some(pid) = pid {
            let _ = signal(pid, "-CONT");
        }
    }
    if !with_hook {
        return Ok(());
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    for t in targets {
        loop {
            match hook_client(t).faults(&json!({"clear": true})).await {
                Ok(_) => break,
                Err(e) if tokio::time::Instant::now() > deadline => {
                    bail!("cannot clear the faults of node {}: {e}", t.id)
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
            }
        }
    }
    Ok(())
}

pub fn list(kinds: &[FaultKind]) -> String {
    if kinds.is_empty() {
        return "none".into();
    }
    kinds
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(",")
}
