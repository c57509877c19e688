//! A local cluster of `tunekv server` processes on 127.0.0.1: configs, spawn, readiness, kill -9,
//! restart, graceful stop. Every process is tracked and stopped by its PID.

use anyhow::{bail, Context, Result};
use serde_json::json;
use std::fs;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use tunekv_client::Client;
use tunekv_node::NodeConfig;

/// How long a node may take to stop after SIGTERM before it gets SIGKILL.
const STOP_GRACE: Duration = Duration::from_secs(5);

pub struct LocalCluster {
    pub dir: PathBuf,
    pub configs: Vec<NodeConfig>,
    exe: PathBuf,
    enable_faults: bool,
    // One slot per node; `None` while the node is stopped.
    children: Vec<Option<Child>>,
    /// Extra `tunekv server` flags for every node started from now on.
    pub server_args: Vec<String>,
    /// A `tunekv cache` in front of the nodes, while one runs.
    cache: Option<CacheProcess>,
    /// The last cache's addresses (HTTP, RESP) and flags (a restart reuses them).
    last_cache: Option<(String, String, Vec<String>)>,
    /// With auth on: root's bearer token, sent by every [`LocalCluster::client`].
    pub token: Option<String>,
    /// Runtime workers of each node started from now on (`TOKIO_WORKER_THREADS`), unless the
    /// environment sets them; `None`: a worker per core ([`LocalCluster::share_cores`]).
    pub worker_threads: Option<usize>,
}

/// Runtime workers per node when `nodes` nodes share a machine of `cores` cores: the cores
/// divided among them, at least one each.
pub fn workers_per_node(cores: usize, nodes: usize) -> usize {
    (cores / nodes.max(1)).max(1)
}

/// `DIR/credentials.json`: the root user's name and password of a cluster with auth on.
#[derive(Clone, serde::Serialize, serde::Deserialize)]
pub struct Credentials {
    pub user: String,
    pub password: String,
}

/// A `tunekv cache` process started by [`LocalCluster::start_cache`].
/// The cache's user on a cluster with auth on (`tunekv dev --auth --cache`).
pub const CACHE_USER: &str = "cache";

pub struct CacheProcess {
    child: Child,
    /// Its HTTP and RESP addresses (`127.0.0.1:P`).
    pub http: String,
    pub resp: String,
}

/// Waits until the cache at `http` answers `GET /v1/cache`.
pub async fn wait_cache(http: &str, timeout: Duration) -> Result<()> {
    wait_cache_with(&Client::new(&format!("http://{http}")), timeout).await
}

/// Waits until the cache `client` speaks to answers at all (a refusal for want of credentials
/// is an answer).
pub async fn wait_cache_with(client: &Client, timeout: Duration) -> Result<()> {
    let http = client.base().to_string();
    let deadline = Instant::now() + timeout;
    while matches!(
        client.cache_status().await,
        Err(tunekv_client::ClientError::Transport(_))
    ) {
        if Instant::now() > deadline {
            bail!("the cache at {http} did not answer within {timeout:?}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(())
}

/// `count` free ports on 127.0.0.1: `preferred` if all of them are free, else any the OS hands out.
///
/// Every port handed out stays reserved for the life of this process (see [`reserve_port`]):
/// another process picking ports the same way (a parallel test, a second `tunekv dev`) skips
/// it, even in the window between our check and the node's own bind, and even while a node
/// that uses it is stopped for a restart.
pub fn free_ports(count: usize, preferred: &[u16]) -> Result<Vec<u16>> {
    // Preferred ports if every one of them is free, else whatever the OS hands out.
    if preferred.len() == count {
        let reserved: Option<Vec<fs::File>> = preferred.iter().map(|p| reserve_free(*p)).collect();
        if let Some(reserved) = reserved {
            keep_reserved(reserved);
            return Ok(preferred.to_vec());
        }
    }
    let mut picked: Vec<u16> = Vec::with_capacity(count);
    let mut reserved = Vec::with_capacity(count);
    let mut rng = rand::thread_rng();
    for _ in 0..PORT_TRIES_MAX {
        if picked.len() == count {
            break;
        }
        let p = rand::Rng::gen_range(&mut rng, PORT_RANGE);
        if picked.contains(&p) {
            continue;
        }
        if let Some(lock) = reserve_free(p) {
            picked.push(p);
            reserved.push(lock);
        }
    }
    if picked.len() < count {
        bail!(
            "found only {} of {count} free ports on 127.0.0.1 in {PORT_RANGE:?}",
            picked.len()
        );
    }
    keep_reserved(reserved);
    Ok(picked)
}

/// Reserves `p` ([`reserve_port`]), then checks that nothing listens on it, in that order:
/// a port another process reserved is never probed. `None` if either fails (a reservation
/// taken is dropped, which releases it).
fn reserve_free(p: u16) -> Option<fs::File> {
    let lock = reserve_port(p)?;
    port_is_free(p).then_some(lock)
}

fn port_is_free(p: u16) -> bool {
    TcpListener::bind(("127.0.0.1", p)).is_ok()
}

/// Locks `TMP/tunekv-ports/P.lock` (an advisory `flock`, released by the kernel when this
/// process exits, however it exits). `None` if another process holds it — or this one: locks
/// taken through two opens conflict even within one process.
fn reserve_port(p: u16) -> Option<fs::File> {
    let dir = std::env::temp_dir().join("tunekv-ports");
    let _ = fs::create_dir_all(&dir);
    let opened = fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(dir.join(format!("{p}.lock")));
    match opened {
        Ok(file) => file.try_lock().is_ok().then_some(file),
        // A temp dir we cannot write: no reservation, the bind check alone decides.
        Err(_) => fs::File::open("/dev/null").ok(),
    }
}

/// Keeps the locks of handed-out ports until the process exits.
fn keep_reserved(locks: Vec<fs::File>) {
    RESERVED
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .extend(locks);
}

/// The locks that keep this process's ports reserved.
static RESERVED: std::sync::Mutex<Vec<fs::File>> = std::sync::Mutex::new(Vec::new());

/// How many of a node's last log lines an error about its exit quotes.
const LOG_TAIL_LINES: usize = 12;

/// The last `n` lines of the file at `path` (a note if it cannot be read).
fn log_tail(path: &Path, n: usize) -> String {
    match fs::read_to_string(path) {
        Ok(text) => {
            let lines: Vec<&str> = text.lines().collect();
            lines[lines.len().saturating_sub(n)..].join("\n")
        }
        Err(e) => format!("(cannot read it: {e})"),
    }
}

/// Ports for local clusters come from below Linux's ephemeral range (32768–60999 by default).
/// A port the OS hands out (`:0`) comes from that range, and so does the source port of every
/// outgoing connection: between our check and the node's own bind, some other process's
/// connection could take it, and the node would exit with "address in use".
const PORT_RANGE: std::ops::Range<u16> = 20_000..32_000;
const PORT_TRIES_MAX: usize = 10_000;

/// Stops a child process by its PID: SIGTERM, then SIGKILL if it is still running after
/// `STOP_GRACE`. Returns false when it had to be killed.
pub fn stop_child(c: &mut Child) -> bool {
    let _ = Command::new("kill")
        .arg("-TERM")
        .arg(c.id().to_string())
        .status();
    let deadline = Instant::now() + STOP_GRACE;
    while Instant::now() < deadline {
        if let Ok(Some(_)) = c.try_wait() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = c.kill();
    let _ = c.wait();
    false
}

/// 32 random bytes as hex: a fresh cluster secret, so tokens of one dev cluster are foreign to
/// the next.
fn new_cluster_secret() -> String {
    let bytes: [u8; 32] = rand::random();
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

impl LocalCluster {
    /// Writes node configs under `dir` (or reuses the ones there, so a restarted dev cluster
    /// keeps its data and ports).
    pub fn prepare(
        exe: &Path,
        dir: &Path,
        nodes: u32,
        enable_faults: bool,
        fresh: bool,
        preferred_ports: bool,
    ) -> Result<Self> {
        Self::prepare_with(
            exe,
            dir,
            nodes,
            enable_faults,
            fresh,
            preferred_ports,
            |_| {},
        )
    }

    /// Like [`LocalCluster::prepare`], letting the caller adjust newly written configs (tests
    /// use it for small snapshot thresholds).
    pub fn prepare_with(
        exe: &Path,
        dir: &Path,
        nodes: u32,
        enable_faults: bool,
        fresh: bool,
        preferred_ports: bool,
        tweak: impl Fn(&mut NodeConfig),
    ) -> Result<Self> {
        if nodes == 0 || nodes > 9 {
            bail!("--nodes must be 1 to 9");
        }
        if fresh && dir.exists() {
            fs::remove_dir_all(dir).with_context(|| format!("cannot remove {}", dir.display()))?;
        }
        fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
        let dir = dir.canonicalize()?;
        let existing: Vec<PathBuf> = (1..=nodes)
            .map(|i| dir.join(format!("node-{i}.toml")))
            .collect();
        let configs = if existing.iter().all(|p| p.exists()) {
            let configs: Vec<NodeConfig> = existing
                .iter()
                .map(|p| NodeConfig::read(p).map_err(anyhow::Error::msg))
                .collect::<Result<_>>()?;
            if configs[0].peers.len() != nodes as usize {
                bail!(
                    "{} holds a {}-node cluster; use --nodes {} or --fresh",
                    dir.display(),
                    configs[0].peers.len(),
                    configs[0].peers.len()
                );
            }
            let mut configs = configs;
            // Configs written before session tokens existed get a secret now.
            if configs.iter().any(|c| c.cluster_secret.is_empty()) {
                let secret = new_cluster_secret();
                for (c, path) in configs.iter_mut().zip(&existing) {
                    c.cluster_secret = secret.clone();
                    fs::write(path, toml::to_string(c)?)
                        .with_context(|| format!("cannot write {}", path.display()))?;
                }
            }
            for (c, path) in configs.iter().zip(&existing) {
                c.validate()
                    .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
            }
            configs
        } else {
            let n = nodes as usize;
            let preferred: Vec<u16> = if preferred_ports {
                (0..n as u16)
                    .map(|i| 7101 + i)
                    .chain((0..n as u16).map(|i| 7201 + i))
                    .chain((0..n as u16).map(|i| 7301 + i))
                    .collect()
            } else {
                Vec::new()
            };
            let ports = free_ports(3 * n, &preferred)?;
            let triples: Vec<(u16, u16, u16)> = (0..n)
                .map(|i| (ports[i], ports[n + i], ports[2 * n + i]))
                .collect();
            let mut configs =
                NodeConfig::local_cluster(&dir, &triples, enable_faults, &new_cluster_secret());
            configs.iter_mut().for_each(&tweak);
            for (c, path) in configs.iter().zip(&existing) {
                fs::write(path, toml::to_string(c)?)
                    .with_context(|| format!("cannot write {}", path.display()))?;
            }
            configs
        };
        Ok(LocalCluster {
            dir,
            configs,
            exe: exe.to_path_buf(),
            enable_faults,
            children: (0..nodes).map(|_| None).collect(),
            cache: None,
            last_cache: None,
            server_args: Vec::new(),
            token: None,
            worker_threads: None,
        })
    }

    /// Divides this machine's cores among the nodes: each node's runtime gets
    /// [`workers_per_node`] workers instead of one per core. Three nodes on 2 cores with a
    /// worker per core spent ≈12% of their CPU switching threads (docs/performance.md).
    /// `TOKIO_WORKER_THREADS` in the environment wins. The storage engine's background threads
    /// are shared the same way (`[storage] engine_threads`, when a config leaves it at 0 and no
    /// node runs yet): three nodes each flushing and compacting with one thread per core starved
    /// their runtimes and stalled writes at 1M keys (docs/performance.md, "Stalls"). Returns
    /// the number of runtime workers chosen.
    pub fn share_cores(&mut self) -> Result<usize> {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        let n = workers_per_node(cores, self.len());
        self.worker_threads = Some(n);
        if self.children.iter().all(Option::is_none) {
            for i in 0..self.configs.len() {
                if self.configs[i].storage.engine_threads == 0 {
                    self.configs[i].storage.engine_threads = n;
                    self.save_config(i)?;
                }
            }
        }
        Ok(n)
    }

    /// Writes node `i`'s config (`configs[i]`) to its file.
    fn save_config(&self, i: usize) -> Result<()> {
        fs::write(self.config_path(i), toml::to_string(&self.configs[i])?)?;
        Ok(())
    }

    /// The storage engine threads of node 1 as its config sets them ("0 (one per core, at most
    /// 4)" when unset).
    pub fn engine_threads(&self) -> String {
        match self.configs.first().map(|c| c.storage.engine_threads) {
            Some(0) | None => "0 (one per core, at most 4)".into(),
            Some(n) => n.to_string(),
        }
    }

    /// Where a cluster with auth on keeps its root credentials.
    pub fn credentials_path(&self) -> PathBuf {
        self.dir.join("credentials.json")
    }

    /// The root credentials, when this cluster has auth on.
    pub fn credentials(&self) -> Result<Option<Credentials>> {
        let path = self.credentials_path();
        if !self.configs.first().is_some_and(|c| c.auth.enabled) {
            return Ok(None);
        }
        let text = fs::read_to_string(&path)
            .with_context(|| format!("auth is on but {} cannot be read", path.display()))?;
        Ok(Some(serde_json::from_str(&text).with_context(|| {
            format!("{} is not {{\"user\",\"password\"}}", path.display())
        })?))
    }

    /// Turns auth on in freshly written configs: a random root password, its argon2id hash in
    /// every node's config, the password in `DIR/credentials.json` (mode 0600). Configs that
    /// already have auth keep their credentials. Returns the new password, if it made one.
    pub fn enable_auth(&mut self) -> Result<Option<String>> {
        if self.configs.iter().all(|c| c.auth.enabled) && self.credentials_path().exists() {
            return Ok(None);
        }
        if self.children.iter().any(Option::is_some) {
            bail!("turn auth on before the nodes start");
        }
        let password = new_cluster_secret();
        let hash = tunekv_core::auth::hash_password(&password).map_err(anyhow::Error::msg)?;
        for i in 0..self.configs.len() {
            self.configs[i].auth.enabled = true;
            self.configs[i].auth.root_password_hash = Some(hash.clone());
            self.save_config(i)?;
        }
        let creds = Credentials {
            user: tunekv_core::auth::ROOT_USER.into(),
            password: password.clone(),
        };
        let path = self.credentials_path();
        fs::write(&path, serde_json::to_string_pretty(&creds)?)?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            fs::set_permissions(&path, fs::Permissions::from_mode(0o600))?;
        }
        Ok(Some(password))
    }

    /// Where `enable_tls` puts the CA and the nodes' certificates.
    pub fn tls_dir(&self) -> PathBuf {
        self.dir.join("tls")
    }

    /// The CA certificate (PEM) of a cluster with TLS.
    pub fn ca_pem(&self) -> Option<Vec<u8>> {
        let tls = self.configs.first()?.tls.as_ref()?;
        fs::read(&tls.ca).ok()
    }

    /// Turns TLS on in every config: a throwaway CA (`DIR/tls/ca.pem`) and a certificate per
    /// node for 127.0.0.1 and localhost, signed by it (HTTP and RESP serve TLS only; nodes
    /// talk mutual TLS). Configs that already have TLS keep theirs.
    pub fn enable_tls(&mut self) -> Result<()> {
        if self.configs.iter().all(|c| c.tls.is_some()) {
            return Ok(());
        }
        self.enable_tls_with(&DevCa::new()?)
    }

    /// Like [`LocalCluster::enable_tls`], with a CA the caller keeps (tests sign more
    /// certificates with it).
    pub fn enable_tls_with(&mut self, ca: &DevCa) -> Result<()> {
        if self.children.iter().any(Option::is_some) {
            bail!("turn TLS on before the nodes start");
        }
        let dir = self.tls_dir();
        ca.write(&dir)?;
        for i in 0..self.configs.len() {
            let id = self.configs[i].id;
            let files = ca.node_files(&dir, &format!("node-{id}"))?;
            self.configs[i].tls = Some(files);
            self.save_config(i)?;
        }
        // The cache's certificate (`tunekv dev --tls --cache`).
        ca.node_files(&dir, "cache")?;
        Ok(())
    }

    /// With auth on: logs in as root (retrying until the cluster has made its root user) and
    /// keeps the token for [`LocalCluster::client`].
    pub async fn log_in(&mut self, timeout: Duration) -> Result<()> {
        let Some(creds) = self.credentials()? else {
            return Ok(());
        };
        let deadline = Instant::now() + timeout;
        if self.children.iter().all(Option::is_none) {
            bail!("no node is running to log in to");
        }
        let mut i = 0;
        loop {
            let node = i % self.len();
            i += 1;
            if self.children[node].is_none() {
                continue;
            }
            match self
                .client_without_token(node)
                .login(&creds.user, &creds.password)
                .await
            {
                Ok((token, _)) => {
                    self.token = Some(token);
                    return Ok(());
                }
                Err(e) if Instant::now() > deadline => {
                    bail!("cannot log in as {} within {timeout:?}: {e}", creds.user)
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
            }
        }
    }

    pub fn len(&self) -> usize {
        self.configs.len()
    }

    /// Writes the config of one more node (the next id, fresh ports, the cluster's nodes and
    /// itself as peers), to be started with [`LocalCluster::start_node`] and added with
    /// `tunekv node add`. Returns its index.
    pub fn prepare_extra_node(&mut self) -> Result<usize> {
        let ports = free_ports(3, &[])?;
        let id = self.configs.iter().map(|c| c.id).max().unwrap_or(0) + 1;
        let mut c = self
            .configs
            .first()
            .cloned()
            .context("a cluster has a node")?;
        c.id = id;
        c.http = format!("127.0.0.1:{}", ports[0]);
        c.raft = format!("127.0.0.1:{}", ports[1]);
        c.resp = Some(format!("127.0.0.1:{}", ports[2]));
        c.data_dir = self.dir.join(format!("node-{id}"));
        c.peers.push(tunekv_node::config::PeerConfig {
            id,
            http: c.http.clone(),
            raft: c.raft.clone(),
        });
        let i = self.configs.len();
        fs::write(self.config_path(i), toml::to_string(&c)?)?;
        self.configs.push(c);
        self.children.push(None);
        Ok(i)
    }

    pub fn is_empty(&self) -> bool {
        self.configs.is_empty()
    }

    pub fn config_path(&self, i: usize) -> PathBuf {
        self.dir.join(format!("node-{}.toml", i + 1))
    }

    /// Node `i`'s HTTP base URL (`https://` when TLS is on).
    pub fn http(&self, i: usize) -> String {
        let scheme = if self.configs[i].tls.is_some() {
            "https"
        } else {
            "http"
        };
        format!("{scheme}://{}", self.configs[i].http)
    }

    /// A client of node `i`, with root's token when auth is on (after [`LocalCluster::log_in`])
    /// and the cluster's CA when TLS is on.
    pub fn client(&self, i: usize) -> Client {
        self.client_without_token(i).with_token(self.token.clone())
    }

    pub fn client_without_token(&self, i: usize) -> Client {
        let c = Client::new(&self.http(i));
        match self.ca_pem() {
            Some(pem) => c.with_ca(pem),
            None => c,
        }
    }

    pub fn pid(&self, i: usize) -> Option<u32> {
        self.children[i].as_ref().map(|c| c.id())
    }

    /// Starts node `i` (0-based) as its own process, logging to `DIR/node-N.log`.
    pub fn start_node(&mut self, i: usize) -> Result<()> {
        if self.children[i].is_some() {
            bail!("node {} is already running", i + 1);
        }
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join(format!("node-{}.log", i + 1)))?;
        let mut cmd = Command::new(&self.exe);
        cmd.arg("server").arg("--config").arg(self.config_path(i));
        if self.enable_faults {
            cmd.arg("--enable-faults");
        }
        cmd.args(&self.server_args);
        if let Some(n) = self.worker_threads {
            if std::env::var_os("TOKIO_WORKER_THREADS").is_none() {
                cmd.env("TOKIO_WORKER_THREADS", n.to_string());
            }
        }
        let child = cmd
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("cannot start {}", self.exe.display()))?;
        self.children[i] = Some(child);
        Ok(())
    }

    pub fn start_all(&mut self) -> Result<()> {
        for i in 0..self.len() {
            self.start_node(i)?;
        }
        Ok(())
    }

    /// kill -9 of node `i`, by its PID.
    pub fn kill(&mut self, i: usize) {
        if let Some(mut c) = self.children[i].take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM, then SIGKILL after a grace period.
    pub fn stop(&mut self, i: usize) {
        if let Some(mut c) = self.children[i].take() {
            stop_child(&mut c);
        }
    }

    pub fn stop_all(&mut self) {
        self.stop_cache();
        for i in 0..self.len() {
            self.stop(i);
        }
    }

    /// Whether a running node process has exited on its own.
    pub fn exited(&mut self, i: usize) -> Option<std::process::ExitStatus> {
        self.children[i]
            .as_mut()
            .and_then(|c| c.try_wait().ok().flatten())
    }

    /// Waits until every running node answers and sees a metadata leader.
    pub async fn wait_ready(&mut self, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        if self.token.is_none() {
            self.log_in(timeout).await?;
        }
        for i in 0..self.len() {
            if self.children[i].is_none() {
                continue;
            }
            let client = self.client(i);
            loop {
                if let Some(status) = self.exited(i) {
                    let log = self.dir.join(format!("node-{}.log", i + 1));
                    bail!(
                        "node {} exited ({status}); see {}; its last lines:\n{}",
                        i + 1,
                        log.display(),
                        log_tail(&log, LOG_TAIL_LINES)
                    );
                }
                if let Ok(s) = client.cluster().await {
                    let has_leader = s["groups"].as_array().is_some_and(|gs| {
                        gs.iter()
                            .any(|g| g["name"] == "meta" && !g["leader"].is_null())
                    });
                    if has_leader {
                        break;
                    }
                }
                if Instant::now() > deadline {
                    bail!(
                        "node {} not ready within {timeout:?}; see {}",
                        i + 1,
                        self.dir.join(format!("node-{}.log", i + 1)).display()
                    );
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
        Ok(())
    }

    /// Starts a `tunekv cache` in front of every node (extra flags in `args`, e.g.
    /// `--strategy ks=write_through`), logging to `DIR/cache.log`, and waits until it answers.
    /// Returns its HTTP address.
    pub async fn start_cache(&mut self, args: &[String]) -> Result<String> {
        if self.credentials()?.is_some() && !self.cache_config_path().exists() {
            self.make_cache_user().await?;
        }
        let http = self.spawn_cache(args)?;
        let client = self.cache_client(&http, None);
        wait_cache_with(&client, Duration::from_secs(30)).await?;
        Ok(http)
    }

    /// `DIR/cache.toml`: the cache's `[auth]` and `[tls]` on a cluster with auth or TLS on.
    pub fn cache_config_path(&self) -> PathBuf {
        self.dir.join("cache.toml")
    }

    /// A client of the cache at `http` (`https://` and the cluster's CA when TLS is on),
    /// sending `token`.
    pub fn cache_client(&self, http: &str, token: Option<String>) -> Client {
        match self.ca_pem() {
            Some(pem) => Client::new(&format!("https://{http}")).with_ca(pem),
            None => Client::new(&format!("http://{http}")),
        }
        .with_token(token)
    }

    /// With auth on (after [`LocalCluster::log_in`]): the cache's role and user — read and
    /// write on every keyspace, admin on the numbered databases it creates on first use as a
    /// node does — with a fresh password in `DIR/cache-password` (0600), named by
    /// `DIR/cache.toml`.
    pub async fn make_cache_user(&mut self) -> Result<()> {
        if self.token.is_none() {
            self.log_in(Duration::from_secs(30)).await?;
        }
        let any = tunekv_core::auth::ANY_KEYSPACE;
        let mut permissions = vec![
            json!({"keyspace": any, "prefix": "", "access": "read"}),
            json!({"keyspace": any, "prefix": "", "access": "write"}),
        ];
        permissions
            .extend((0..16).map(|n| json!({"keyspace": format!("db{n}"), "access": "admin"})));
        let root = self.client(0);
        root.admin(
            reqwest::Method::PUT,
            &format!("/v1/admin/roles/{CACHE_USER}"),
            Some(json!({ "permissions": permissions })),
        )
        .await
        .context("cannot make the cache's role")?;
        let password = new_cluster_secret();
        root.admin(
            reqwest::Method::PUT,
            &format!("/v1/admin/users/{CACHE_USER}"),
            Some(json!({"password": password, "roles": [CACHE_USER]})),
        )
        .await
        .context("cannot make the cache's user")?;
        let password_file = self.dir.join("cache-password");
        let _ = fs::remove_file(&password_file);
        let mut open = fs::OpenOptions::new();
        open.write(true).create_new(true);
        #[cfg(unix)]
        {
            // Readable by its owner only from the start.
            use std::os::unix::fs::OpenOptionsExt;
            open.mode(0o600);
        }
        std::io::Write::write_all(&mut open.open(&password_file)?, password.as_bytes())?;
        self.write_cache_config(Some(&password_file))
    }

    /// Writes `DIR/cache.toml` with `[auth]` (when `password_file` is given) and `[tls]` (when
    /// the cluster has TLS).
    fn write_cache_config(&self, password_file: Option<&Path>) -> Result<()> {
        let mut c = toml::Table::new();
        if let Some(f) = password_file {
            let mut auth = toml::Table::new();
            auth.insert("user".into(), CACHE_USER.into());
            auth.insert("password_file".into(), f.display().to_string().into());
            c.insert("auth".into(), auth.into());
        }
        if self.ca_pem().is_some() {
            let dir = self.tls_dir();
            let mut tls = toml::Table::new();
            for (k, f) in [
                ("cert", "cache.pem"),
                ("key", "cache-key.pem"),
                ("ca", "ca.pem"),
            ] {
                tls.insert(k.into(), dir.join(f).display().to_string().into());
            }
            c.insert("tls".into(), tls.into());
        }
        fs::write(self.cache_config_path(), toml::to_string(&c)?)?;
        Ok(())
    }

    /// Starts the cache process without waiting for it (see [`wait_cache`]).
    pub fn spawn_cache(&mut self, args: &[String]) -> Result<String> {
        let ports = free_ports(2, &[])?;
        let (http, resp) = (
            format!("127.0.0.1:{}", ports[0]),
            format!("127.0.0.1:{}", ports[1]),
        );
        self.spawn_cache_at(&http, &resp, args)?;
        Ok(http)
    }

    /// Starts the cache again after [`LocalCluster::kill_cache`], on the same address with
    /// the same flags, without waiting for it.
    pub fn restart_cache(&mut self) -> Result<String> {
        let Some((http, resp, args)) = self.last_cache.clone() else {
            bail!("no cache was started");
        };
        self.spawn_cache_at(&http, &resp, &args)?;
        Ok(http)
    }

    fn spawn_cache_at(&mut self, http: &str, resp: &str, args: &[String]) -> Result<()> {
        if self.cache.is_some() {
            bail!("a cache is already running");
        }
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("cache.log"))?;
        let mut cmd = Command::new(&self.exe);
        cmd.arg("cache")
            .arg("--http")
            .arg(http)
            .arg("--resp")
            .arg(resp);
        for c in &self.configs {
            cmd.arg("--node").arg(&c.http);
        }
        if self.ca_pem().is_some() && !self.cache_config_path().exists() {
            self.write_cache_config(None)?;
        }
        if self.cache_config_path().exists() {
            cmd.arg("--config").arg(self.cache_config_path());
        }
        cmd.args(args);
        let secret = self.configs.first().map(|c| c.cluster_secret.clone());
        let child = cmd
            .env("TUNEKV_CLUSTER_SECRET", secret.unwrap_or_default())
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("cannot start {}", self.exe.display()))?;
        self.cache = Some(CacheProcess {
            child,
            http: http.to_string(),
            resp: resp.to_string(),
        });
        self.last_cache = Some((http.to_string(), resp.to_string(), args.to_vec()));
        Ok(())
    }

    /// The running cache's HTTP address and PID.
    pub fn cache(&self) -> Option<(&str, u32)> {
        self.cache.as_ref().map(|c| (c.http.as_str(), c.child.id()))
    }

    /// The running cache's RESP address.
    pub fn cache_resp(&self) -> Option<&str> {
        self.cache.as_ref().map(|c| c.resp.as_str())
    }

    /// kill -9 of the cache, by its PID.
    pub fn kill_cache(&mut self) {
        if let Some(mut c) = self.cache.take() {
            let _ = c.child.kill();
            let _ = c.child.wait();
        }
    }

    /// SIGTERM to the cache, then SIGKILL after a grace period.
    pub fn stop_cache(&mut self) {
        if let Some(mut c) = self.cache.take() {
            stop_child(&mut c.child);
        }
    }

    /// Writes `DIR/cluster.json`: every node's id, HTTP address, RESP address, PID and config.
    pub fn write_cluster_json(&self) -> Result<PathBuf> {
        let nodes: Vec<_> = self
            .configs
            .iter()
            .enumerate()
            .map(|(i, c)| {
                json!({"id": c.id, "http": c.http, "resp": c.resp, "pid": self.pid(i), "config": self.config_path(i)})
            })
            .collect();
        let path = self.dir.join("cluster.json");
        let mut doc = json!({"nodes": nodes});
        if let Some(c) = &self.cache {
            doc["cache"] = json!({"http": c.http, "resp": c.resp, "pid": c.child.id()});
        }
        fs::write(&path, serde_json::to_string_pretty(&doc)?)?;
        Ok(path)
    }
}

/// A throwaway certificate authority for a local cluster (`tunekv dev --tls`, tests).
pub struct DevCa {
    cert: rcgen::Certificate,
    key: rcgen::KeyPair,
}

impl DevCa {
    pub fn new() -> Result<DevCa> {
        let key = rcgen::KeyPair::generate().context("cannot make a CA key")?;
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new())?;
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "tunekv dev CA");
        params.key_usages = vec![
            rcgen::KeyUsagePurpose::KeyCertSign,
            rcgen::KeyUsagePurpose::CrlSign,
        ];
        let cert = params.self_signed(&key)?;
        Ok(DevCa { cert, key })
    }

    /// Writes `dir/ca.pem` (the CA's certificate; its key stays in memory only).
    pub fn write(&self, dir: &Path) -> Result<PathBuf> {
        fs::create_dir_all(dir)?;
        let path = dir.join("ca.pem");
        fs::write(&path, self.cert.pem())?;
        Ok(path)
    }

    /// A certificate for 127.0.0.1 and localhost signed by this CA (server and client auth),
    /// written as `dir/NAME.pem` and `dir/NAME-key.pem` (0600), as a node's `[tls]`.
    pub fn node_files(&self, dir: &Path, name: &str) -> Result<tunekv_node::tls::TlsConfig> {
        let key = rcgen::KeyPair::generate()?;
        let mut params =
            rcgen::CertificateParams::new(vec!["127.0.0.1".to_string(), "localhost".to_string()])?;
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, format!("tunekv {name}"));
        params.extended_key_usages = vec![
            rcgen::ExtendedKeyUsagePurpose::ServerAuth,
            rcgen::ExtendedKeyUsagePurpose::ClientAuth,
        ];
        let cert = params.signed_by(&key, &self.cert, &self.key)?;
        fs::create_dir_all(dir)?;
        let cert_path = dir.join(format!("{name}.pem"));
        let key_path = dir.join(format!("{name}-key.pem"));
        fs::write(&cert_path, cert.pem())?;
        fs::write(&key_path, key.serialize_pem())?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            fs::set_permissions(&key_path, fs::Permissions::from_mode(0o600))?;
        }
        Ok(tunekv_node::tls::TlsConfig {
            cert: cert_path,
            key: key_path,
            ca: dir.join("ca.pem"),
        })
    }
}

impl Drop for LocalCluster {
    fn drop(&mut self) {
        // Never leave node processes behind (tests that fail mid-way included).
        if let Some(c) = self.cache.as_mut() {
            let _ = c.child.kill();
            let _ = c.child.wait();
        }
        for c in self.children.iter_mut().flatten() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{free_ports, reserve_port, workers_per_node};

    #[test]
    fn nodes_on_one_machine_share_its_cores() {
        assert_eq!(workers_per_node(2, 3), 1, "never none");
        assert_eq!(workers_per_node(16, 3), 5);
        assert_eq!(workers_per_node(8, 1), 8);
        assert_eq!(workers_per_node(4, 0), 4);
    }

    #[test]
    fn shared_cores_set_the_engine_threads_a_config_leaves_unset() {
        let dir = std::env::temp_dir().join(format!("tunekv-share-cores-{}", std::process::id()));
        let exe = std::path::Path::new("/nonexistent/tunekv");
        let mut c =
            super::LocalCluster::prepare(exe, &dir, 3, false, true, false).expect("prepare");
        c.configs[2].storage.engine_threads = 3;
        std::fs::write(c.config_path(2), toml::to_string(&c.configs[2]).unwrap()).unwrap();
        let n = c.share_cores().expect("share");
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        assert_eq!(n, workers_per_node(cores, 3));
        let on_disk = |i| {
            tunekv_node::NodeConfig::load(&c.config_path(i))
                .expect("load")
                .storage
                .engine_threads
        };
        assert_eq!((on_disk(0), on_disk(1)), (n, n), "written to the configs");
        assert_eq!(on_disk(2), 3, "a config's own setting is kept");
        assert_eq!(c.engine_threads(), n.to_string());
        let mut config = c.configs[0].clone();
        config.validate().expect("valid");
        config.storage.engine_threads = tunekv_node::STORAGE_ENGINE_THREADS_MAX + 1;
        let e = config.validate().expect_err("too many engine threads");
        assert!(e.contains("engine_threads"), "{e}");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn handed_out_ports_stay_reserved_for_the_process() {
        let first = free_ports(6, &[]).expect("ports");
        // A second open of a handed-out port's lock conflicts, as another process's would.
        for p in &first {
            assert!(
                reserve_port(*p).is_none(),
                "port {p} handed out but not held"
            );
        }
        // Asking again for the same preferred ports falls back to other ones.
        let second = free_ports(6, &first).expect("ports");
        assert!(
            second.iter().all(|p| !first.contains(p)),
            "{first:?} vs {second:?}"
        );
        // A port nobody holds can be reserved, and released by dropping its lock.
        let mut candidates = super::PORT_RANGE;
        let free = candidates
            .find(|p| !first.contains(p) && !second.contains(p) && reserve_port(*p).is_some())
            .expect("an unreserved port");
        let held = reserve_port(free).expect("reserve");
        assert!(reserve_port(free).is_none());
        drop(held);
        assert!(reserve_port(free).is_some());
    }
}
