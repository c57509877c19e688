//! The systems `tunekv bench --compare` measures beside tunekv: a 3-member etcd cluster, a
//! Redis server and a memcached, started on 127.0.0.1 from the installed binaries (Debian's
//! `etcd-server`, `redis-server` and `memcached`), loaded with the bench's keys, and stopped by
//! PID at the end.

use crate::verify::resp_client::{RespConn, Value};
use anyhow::{bail, Context, Result};
use base64::Engine;
use bytes::Bytes;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use tunekv::local_cluster::{free_ports, stop_child};

/// How long a peer may take to come up.
const START_TIMEOUT: Duration = Duration::from_secs(30);
const ETCD_MEMBERS: usize = 3;

#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Peer {
    Etcd,
    Redis,
    Memcached,
}

impl Peer {
    pub fn parse(s: &str) -> Result<Peer> {
        match s.trim().to_ascii_lowercase().as_str() {
            "etcd" => Ok(Peer::Etcd),
            "redis" => Ok(Peer::Redis),
            "memcached" => Ok(Peer::Memcached),
            other => bail!("--compare: unknown system {other:?} (known: etcd, redis, memcached)"),
        }
    }

    fn binary(self) -> &'static str {
        match self {
            Peer::Etcd => "etcd",
            Peer::Redis => "redis-server",
            Peer::Memcached => "memcached",
        }
    }

    fn package(self) -> &'static str {
        match self {
            Peer::Etcd => "etcd-server",
            Peer::Redis => "redis-server",
            Peer::Memcached => "memcached",
        }
    }
}

/// The binary's path if it is on PATH.
fn on_path(binary: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join(binary))
            .find(|p| p.is_file())
    })
}

/// One HTTP client per etcd connection, like tunekv's `Client`: pooled HTTP/1.1, 10 s timeout.
pub fn etcd_client() -> Result<reqwest::Client> {
    Ok(reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()?)
}

/// The JSON bodies of etcd's gateway requests, one per key, built once per phase so the
/// workers only clone a reference-counted buffer.
pub struct EtcdBodies {
    pub put: Vec<Bytes>,
    pub range: Vec<Bytes>,
}

impl EtcdBodies {
    pub fn new(keys: &[String], value: &[u8], serializable: bool) -> EtcdBodies {
        let b64 = |b: &[u8]| base64::engine::general_purpose::STANDARD.encode(b);
        let value = b64(value);
        let mut put = Vec::with_capacity(keys.len());
        let mut range = Vec::with_capacity(keys.len());
        for k in keys {
            let key = b64(k.as_bytes());
            put.push(Bytes::from(
                serde_json::json!({"key": key, "value": value}).to_string(),
            ));
            range.push(Bytes::from(
                serde_json::json!({"key": key, "serializable": serializable}).to_string(),
            ));
        }
        EtcdBodies { put, range }
    }
}

/// The peer processes of one bench run. Dropping it stops them.
pub struct Peers {
    dir: PathBuf,
    children: Vec<(String, Child)>,
    /// etcd's client URLs, one per member.
    pub etcd: Vec<String>,
    /// Redis's address.
    pub redis: Option<String>,
    /// The durable Redis primary's address (`appendfsync always`, one replica, also
    /// `appendfsync always`), started with Redis.
    pub redis_durable: Option<String>,
    /// memcached's address.
    pub memcached: Option<String>,
}

impl Peers {
    /// Starts each of `which` under `dir` and waits until it answers.
    pub async fn start(which: &[Peer], dir: &Path) -> Result<Peers> {
        let missing: Vec<Peer> = which
            .iter()
            .copied()
            .filter(|p| on_path(p.binary()).is_none())
            .collect();
        if !missing.is_empty() {
            let names: Vec<&str> = missing.iter().map(|p| p.binary()).collect();
            let packages: Vec<&str> = missing.iter().map(|p| p.package()).collect();
            bail!(
                "--compare needs {} on PATH; install with `apt-get install -y {}` (bench/compare.sh does this for you)",
                names.join(" and "),
                packages.join(" ")
            );
        }
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
        let mut peers = Peers {
            dir: dir.to_path_buf(),
            children: Vec::new(),
            etcd: Vec::new(),
            redis: None,
            redis_durable: None,
            memcached: None,
        };
        // On any error below, dropping `peers` stops what was started.
        if which.contains(&Peer::Etcd) {
            peers.start_etcd().await?;
        }
        if which.contains(&Peer::Redis) {
            peers.start_redis().await?;
            peers.start_redis_durable().await?;
        }
        if which.contains(&Peer::Memcached) {
            peers.start_memcached().await?;
        }
        Ok(peers)
    }

    fn spawn(&mut self, name: &str, cmd: &mut Command) -> Result<()> {
        let log = std::fs::File::create(self.dir.join(format!("{name}.log")))?;
        let child = cmd
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("cannot start {name}"))?;
        println!("started {name} (pid {})", child.id());
        self.children.push((name.to_string(), child));
        Ok(())
    }

    fn log_tail(&self, name: &str) -> String {
        let text =
            std::fs::read_to_string(self.dir.join(format!("{name}.log"))).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(10)..].join("\n")
    }

    async fn start_etcd(&mut self) -> Result<()> {
        let ports = free_ports(2 * ETCD_MEMBERS, &[])?;
        let peer_url = |i: usize| format!("http://127.0.0.1:{}", ports[2 * i + 1]);
        let initial: Vec<String> = (0..ETCD_MEMBERS)
            .map(|i| format!("etcd{i}={}", peer_url(i)))
            .collect();
        for i in 0..ETCD_MEMBERS {
            let client = format!("http://127.0.0.1:{}", ports[2 * i]);
            let name = format!("etcd{i}");
            let data = self.dir.join(format!("{name}.data"));
            self.spawn(
                &name,
                Command::new("etcd")
                    .arg("--name")
                    .arg(&name)
                    .arg("--data-dir")
                    .arg(&data)
                    .args(["--listen-client-urls", &client])
                    .args(["--advertise-client-urls", &client])
                    .args(["--listen-peer-urls", &peer_url(i)])
                    .args(["--initial-advertise-peer-urls", &peer_url(i)])
                    .args(["--initial-cluster", &initial.join(",")])
                    .args(["--initial-cluster-state", "new"])
                    .args(["--initial-cluster-token", "tunekv-bench"])
                    .args(["--logger", "zap", "--log-level", "warn"]),
            )?;
            self.etcd.push(client);
        }
        let http = etcd_client()?;
        let deadline = Instant::now() + START_TIMEOUT;
        for (i, url) in self.etcd.clone().iter().enumerate() {
            loop {
                let healthy = match http.get(format!("{url}/health")).send().await {
                    Ok(r) => r.text().await.unwrap_or_default().contains("\"true\""),
                    Err(_) => false,
                };
                if healthy {
                    break;
                }
                if Instant::now() > deadline {
                    bail!(
                        "etcd member {i} ({url}) not healthy after {START_TIMEOUT:?}; its log ends:\n{}",
                        self.log_tail(&format!("etcd{i}"))
                    );
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
        println!("etcd: {} members healthy", self.etcd.len());
        Ok(())
    }

    async fn start_redis(&mut self) -> Result<()> {
        let port = free_ports(1, &[])?[0];
        let dir = self.dir.clone();
        // Like a default Redis, minus snapshots to disk: one process, no replication.
        self.spawn(
            "redis",
            Command::new("redis-server")
                .args(["--bind", "127.0.0.1", "--port", &port.to_string()])
                .args(["--save", "", "--appendonly", "no", "--daemonize", "no"])
                .arg("--dir")
                .arg(&dir),
        )?;
        let addr = format!("127.0.0.1:{port}");
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Ok(mut c) = RespConn::connect(&addr).await {
                if let Ok(r) = c.pipeline(&[vec![b"PING".as_slice()]]).await {
                    if matches!(r.first(), Some(Value::Simple(s)) if s == "PONG") {
                        break;
                    }
                }
            }
            if Instant::now() > deadline {
                bail!(
                    "redis at {addr} not answering after {START_TIMEOUT:?}; its log ends:\n{}",
                    self.log_tail("redis")
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        println!("redis: answering at {addr}");
        self.redis = Some(addr);
        Ok(())
    }

    async fn start_memcached(&mut self) -> Result<()> {
        let port = free_ports(1, &[])?[0];
        let mut cmd = Command::new("memcached");
        // 1 GiB of memory: every key fits, as in Redis; two threads, like the cores here.
        cmd.args([
            "-l",
            "127.0.0.1",
            "-p",
            &port.to_string(),
            "-U",
            "0",
            "-m",
            "1024",
            "-t",
            "2",
        ]);
        // memcached refuses to run as root unless told which user to be.
        if running_as_root() {
            cmd.args(["-u", "root"]);
        }
        self.spawn("memcached", &mut cmd)?;
        let addr = format!("127.0.0.1:{port}");
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Ok(mut c) = Memcache::connect(&addr).await {
                if c.version().await.is_ok() {
                    break;
                }
            }
            if Instant::now() > deadline {
                bail!(
                    "memcached at {addr} not answering after {START_TIMEOUT:?}; its log ends:\n{}",
                    self.log_tail("memcached")
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        println!("memcached: answering at {addr}");
        self.memcached = Some(addr);
        Ok(())
    }

    /// Writes every key once, so reads find values everywhere.
    /// The like-for-like durable Redis: a primary and a replica, each appending every write to
    /// its AOF and fsyncing it before answering (`appendfsync always`); clients follow each SET
    /// with `WAIT 1 0`. Ready once a WAIT on the primary counts the replica.
    async fn start_redis_durable(&mut self) -> Result<()> {
        let ports = free_ports(2, &[])?;
        let (primary, replica) = (ports[0].to_string(), ports[1].to_string());
        for (name, port, replica_of) in [
            ("redis-durable", &primary, None),
            ("redis-durable-replica", &replica, Some(&primary)),
        ] {
            let dir = self.dir.join(name);
            std::fs::create_dir_all(&dir)
                .with_context(|| format!("cannot create {}", dir.display()))?;
            let mut cmd = Command::new("redis-server");
            cmd.args(["--bind", "127.0.0.1", "--port", port])
                .args([
                    "--save",
                    "",
                    "--appendonly",
                    "yes",
                    "--appendfsync",
                    "always",
                ])
                .args(["--daemonize", "no", "--dir"])
                .arg(&dir);
            if let Some(p) = replica_of {
                cmd.args(["--replicaof", "127.0.0.1", p]);
            }
            self.spawn(name, &mut cmd)?;
        }
        let addr = format!("127.0.0.1:{primary}");
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Ok(mut c) = RespConn::connect(&addr).await {
                let probe = [
                    vec![b"SET".as_slice(), b"ready", b"1"],
                    vec![b"WAIT".as_slice(), b"1", b"200"],
                ];
                if let Ok(r) = c.pipeline(&probe).await {
                    if matches!(r.get(1), Some(Value::Int(n)) if *n >= 1) {
                        break;
                    }
                }
            }
            if Instant::now() > deadline {
                bail!(
                    "durable redis at {addr} has no replica after {START_TIMEOUT:?}; the logs end:\n{}\n{}",
                    self.log_tail("redis-durable"),
                    self.log_tail("redis-durable-replica")
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        println!("redis (durable, 1 replica): answering at {addr}");
        self.redis_durable = Some(addr);
        Ok(())
    }

    pub async fn load(&self, keys: &[String], value: &[u8]) -> Result<()> {
        if let Some(url) = self.etcd.first() {
            let http = etcd_client()?;
            let bodies = EtcdBodies::new(keys, value, false);
            for (k, body) in keys.iter().zip(bodies.put) {
                let r = http
                    .post(format!("{url}/v3/kv/put"))
                    .body(body)
                    .send()
                    .await
                    .with_context(|| format!("etcd: cannot load {k}"))?;
                if !r.status().is_success() {
                    bail!("etcd: cannot load {k}: HTTP {}", r.status());
                }
            }
        }
        if let Some(addr) = &self.memcached {
            let mut c = Memcache::connect(addr).await?;
            for chunk in keys.chunks(500) {
                let ops: Vec<McOp<'_>> = chunk
                    .iter()
                    .map(|k| McOp::Set(k.as_bytes(), value))
                    .collect();
                if c.pipeline(&ops).await?.contains(&McReply::Error) {
                    bail!("memcached: cannot load keys");
                }
            }
        }
        if let Some(addr) = &self.redis {
            let mut c = RespConn::connect(addr).await?;
            for chunk in keys.chunks(500) {
                let batch: Vec<Vec<&[u8]>> = chunk
                    .iter()
                    .map(|k| vec![b"SET".as_slice(), k.as_bytes(), value])
                    .collect();
                if let Some(Value::Error(e)) = c
                    .pipeline(&batch)
                    .await?
                    .into_iter()
                    .find(|v| matches!(v, Value::Error(_)))
                {
                    bail!("redis: cannot load keys: {e}");
                }
            }
        }
        Ok(())
    }

    /// SIGTERM to each peer's PID, SIGKILL after a grace period; then removes their files.
    pub fn stop(&mut self) {
        for (name, mut c) in self.children.drain(..) {
            let pid = c.id();
            if !stop_child(&mut c) {
                eprintln!("{name} (pid {pid}) ignored SIGTERM; it was killed");
            }
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl Drop for Peers {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Whether this process runs as root (memcached then needs `-u root`), from /proc.
fn running_as_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Uid:"))
                .and_then(|u| u.split_whitespace().next().map(|u| u == "0"))
        })
        .unwrap_or(false)
}

/// One memcached operation (text protocol).
pub enum McOp<'a> {
    Get(&'a [u8]),
    Set(&'a [u8], &'a [u8]),
}

/// memcached's answer to one operation.
#[derive(Debug, PartialEq, Eq)]
pub enum McReply {
    Value(Vec<u8>),
    Miss,
    Stored,
    Error,
}

/// A memcached text-protocol connection: pipelined gets and sets.
pub struct Memcache {
    stream: tokio::io::BufReader<tokio::net::TcpStream>,
}

impl Memcache {
    pub async fn connect(addr: &str) -> Result<Memcache> {
        let s = tokio::net::TcpStream::connect(addr)
            .await
            .with_context(|| format!("cannot connect to memcached at {addr}"))?;
        s.set_nodelay(true)?;
        Ok(Memcache {
            stream: tokio::io::BufReader::new(s),
        })
    }

    async fn line(&mut self) -> Result<String> {
        use tokio::io::AsyncBufReadExt;
        let mut l = String::new();
        if self.stream.read_line(&mut l).await? == 0 {
            bail!("memcached closed the connection");
        }
        Ok(l.trim_end().to_string())
    }

    async fn version(&mut self) -> Result<String> {
        use tokio::io::AsyncWriteExt;
        self.stream.get_mut().write_all(b"version\r\n").await?;
        self.line().await
    }

    /// Sends every operation, then reads every answer, in order.
    pub async fn pipeline(&mut self, ops: &[McOp<'_>]) -> Result<Vec<McReply>> {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut out = Vec::new();
        for op in ops {
            match op {
                McOp::Get(k) => {
                    out.extend_from_slice(b"get ");
                    out.extend_from_slice(k);
                    out.extend_from_slice(b"\r\n");
                }
                McOp::Set(k, v) => {
                    out.extend_from_slice(b"set ");
                    out.extend_from_slice(k);
                    out.extend_from_slice(format!(" 0 0 {}\r\n", v.len()).as_bytes());
                    out.extend_from_slice(v);
                    out.extend_from_slice(b"\r\n");
                }
            }
        }
        self.stream.get_mut().write_all(&out).await?;
        let mut replies = Vec::with_capacity(ops.len());
        for op in ops {
            let l = self.line().await?;
            replies.push(match op {
                McOp::Set(..) if l == "STORED" => McReply::Stored,
                McOp::Get(_) if l == "END" => McReply::Miss,
                McOp::Get(_) if l.starts_with("VALUE ") => {
                    let len: usize = l
                        .rsplit(' ')
                        .next()
                        .and_then(|n| n.parse().ok())
                        .context("memcached: a VALUE line without a length")?;
                    let mut data = vec![0u8; len + 2];
                    self.stream.read_exact(&mut data).await?;
                    data.truncate(len);
                    if self.line().await? != "END" {
                        bail!("memcached: a value not followed by END");
                    }
                    McReply::Value(data)
                }
                _ => McReply::Error,
            });
        }
        Ok(replies)
    }
}
