//! The cluster behind the cache: HTTP clients to its nodes, failing over from one to the next,
//! and counters of what the cache asked of it (the herd test counts `reads`).

use crate::node_api::NodeApi;
use bytes::Bytes;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;
use tunekv_client::{Client, ClientError, Opts, ReadReply, WriteReply};
use tunekv_core::{Code, GroupId, LogIndex, Position, Session, SessionKey, Staleness, TunekvError};

/// What one upstream read returned.
#[derive(Clone, Debug)]
pub struct Fetched {
    pub value: Option<Bytes>,
    pub version: Option<u64>,
    pub expires_ms: Option<u64>,
    /// Where the node read it.
    pub position: Position,
    /// The node's receipt for it.
    pub staleness: Staleness,
    /// Leaderless keyspaces: the node's `tunekv-quorum` receipt.
    pub quorum: Option<String>,
    /// The node's session token after the read (pass-through reads).
    pub session: String,
}

#[derive(Default)]
pub struct Counters {
    /// Key reads sent (fills and pass-through reads).
    pub reads: AtomicU64,
    /// Read-index probes sent.
    pub probes: AtomicU64,
    /// Writes sent.
    pub writes: AtomicU64,
    /// Calls that failed over to another node.
    pub failovers: AtomicU64,
}

pub struct Upstream {
    nodes: Vec<Arc<dyn NodeApi>>,
    /// Each node's monotonic clock against ours (`calibrate_loop`), for the freshness proofs
    /// its feed's progress marks carry.
    clocks: std::sync::Mutex<Vec<Option<tunekv_core::PeerClock>>>,
    /// Our clock's zero: the cache's monotonic µs are measured from it.
    epoch: Instant,
    /// Fault injection: the cache is cut off from every node (`POST /v1/admin/faults`).
    isolated: tokio::sync::watch::Sender<bool>,
    /// The node tried first.
    preferred: AtomicUsize,
    key: SessionKey,
    pub counters: Counters,
}

/// How long a call may take beyond its wait budget (the node answers within the budget; this
/// covers the network).
const CALL_SLACK: Duration = Duration::from_millis(500);

fn transport(e: ClientError) -> TunekvError {
    match e {
        ClientError::Api { code, message, .. } | ClientError::Invalid { code, message } => {
            TunekvError::new(Code::parse(&code).unwrap_or(Code::Internal), message)
        }
        ClientError::Transport(m) => TunekvError::new(
            Code::Unavailable,
            format!("the cache cannot reach the store: {m}"),
        ),
    }
}

/// Whether another node may answer a read this one could not.
fn read_elsewhere(e: &TunekvError) -> bool {
    matches!(e.code, Code::Unavailable | Code::NoQuorum)
}

/// Whether a write certainly did not happen here, so another node may take it: only
/// `no_quorum` says so. A broken connection may have delivered it; sending it again could
/// apply it twice, so the client gets `unavailable` and decides.
fn write_elsewhere(e: &TunekvError) -> bool {
    e.code == Code::NoQuorum
}

/// A client of each node at these HTTP addresses (`https://` trusting `ca` when given).
pub fn node_clients(nodes: &[String], ca: Option<&[u8]>) -> Vec<Client> {
    nodes
        .iter()
        .map(|n| {
            let scheme = if ca.is_some() { "https" } else { "http" };
            let base = if n.starts_with("http://") || n.starts_with("https://") {
                n.clone()
            } else {
                format!("{scheme}://{n}")
            };
            let c = Client::with_timeout(&base, Duration::from_secs(30));
            match ca {
                Some(pem) => c.with_ca(pem.to_vec()),
                None => c,
            }
        })
        .collect()
}

fn remaining_ms(deadline: Instant) -> u64 {
    u64::try_from(
        deadline
            .saturating_duration_since(Instant::now())
            .as_millis(),
    )
    .unwrap_or(u64::MAX)
}

fn parse_read(r: ReadReply) -> Result<Fetched, TunekvError> {
    let bad = |what: &str| {
        TunekvError::new(
            Code::Internal,
            format!("the store answered a read without a valid {what}"),
        )
    };
    Ok(Fetched {
        position: Position::parse(&r.receipt.position).ok_or_else(|| bad("position"))?,
        staleness: tunekv_core::Staleness::parse_header(&r.receipt.staleness)
            .ok_or_else(|| bad("staleness"))?,
        value: r.value.map(Bytes::from),
        version: r.version,
        expires_ms: r.expires_ms,
        quorum: r.receipt.quorum,
        session: r.session,
    })
}

impl Upstream {
    /// The nodes at these HTTP addresses, through `tunekv_client::Client`: over `https://`
    /// trusting `ca` (PEM) when given, sending the token in `slot` when given.
    pub fn new(
        nodes: &[String],
        key: SessionKey,
        ca: Option<&[u8]>,
        slot: Option<tunekv_client::TokenSlot>,
    ) -> Upstream {
        let nodes: Vec<Arc<dyn NodeApi>> = node_clients(nodes, ca)
            .into_iter()
            .map(|c| {
                let c = match &slot {
                    Some(s) => c.with_token_slot(s.clone()),
                    None => c,
                };
                Arc::new(c) as Arc<dyn NodeApi>
            })
            .collect();
        Upstream::with_nodes(nodes, key)
    }

    /// These nodes, however they are reached (the simulator passes its own).
    pub fn with_nodes(nodes: Vec<Arc<dyn NodeApi>>, key: SessionKey) -> Upstream {
        Upstream {
            clocks: std::sync::Mutex::new(vec![None; nodes.len()]),
            epoch: Instant::now(),
            nodes,
            isolated: tokio::sync::watch::channel(false).0,
            preferred: AtomicUsize::new(0),
            key,
            counters: Counters::default(),
        }
    }

    /// Cuts the cache off from every node, or reconnects it (fault injection).
    pub fn set_isolated(&self, isolated: bool) {
        self.isolated.send_replace(isolated);
    }

    pub fn isolated(&self) -> bool {
        *self.isolated.borrow()
    }

    /// Changes of [`Upstream::isolated`] (a feed drops its watch at once).
    pub fn isolation(&self) -> tokio::sync::watch::Receiver<bool> {
        self.isolated.subscribe()
    }

    /// µs on the cache's monotonic clock at `at`.
    pub fn mono_us(&self, at: Instant) -> i64 {
        i64::try_from(at.saturating_duration_since(self.epoch).as_micros()).unwrap_or(i64::MAX)
    }

    /// Measures every node's monotonic clock against ours, every second, until `stop`.
    pub async fn calibrate_loop(&self, stop: tokio_util::sync::CancellationToken) {
        loop {
            for (i, node) in self.nodes.iter().enumerate() {
                if self.isolated() {
                    break;
                }
                let sent = self.mono_us(Instant::now());
                let reading =
                    tokio::time::timeout(std::time::Duration::from_millis(500), node.clock()).await;
                let received = self.mono_us(Instant::now());
                if let Ok(Ok((incarnation, peer_us))) = reading {
                    let mut clocks = self.clocks.lock().unwrap_or_else(|p| p.into_inner());
                    clocks[i] = Some(tunekv_core::PeerClock::calibrate(
                        clocks[i],
                        incarnation,
                        sent,
                        peer_us,
                        received,
                    ));
                }
            }
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(std::time::Duration::from_secs(1)) => {}
            }
        }
    }

    /// The earliest instant on our clock at which node `i`'s monotonic clock (of process
    /// `incarnation`) read `node_us`; `None` until that process's clock was measured.
    pub fn earliest_local(&self, i: usize, incarnation: u64, node_us: i64) -> Option<Instant> {
        let clock = (*self
            .clocks
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(i)?)?;
        if clock.incarnation != incarnation {
            return None;
        }
        let now = self.mono_us(Instant::now());
        let local = clock.earliest_local(node_us, now);
        let back = u64::try_from(now.saturating_sub(local)).unwrap_or(0);
        Instant::now().checked_sub(std::time::Duration::from_micros(back))
    }

    pub fn node_count(&self) -> usize {
        self.nodes.len()
    }

    pub fn node(&self, i: usize) -> &Arc<dyn NodeApi> {
        &self.nodes[i % self.nodes.len()]
    }

    /// Runs `call` on the preferred node, then on each other node in turn while the error says
    /// another node may do better and the deadline allows. A node that failed stops being
    /// preferred.
    async fn each_node<T, F, Fut>(
        &self,
        deadline: Instant,
        retry: fn(&TunekvError) -> bool,
        call: F,
    ) -> Result<T, TunekvError>
    where
        F: Fn(Arc<dyn NodeApi>, u64) -> Fut,
        Fut: std::future::Future<Output = Result<T, ClientError>>,
    {
        if self.isolated() {
            return Err(TunekvError::new(
                Code::Unavailable,
                "the cache is cut off from the store (fault injection)",
            ));
        }
        let first = self.preferred.load(Ordering::Relaxed);
        let mut last = TunekvError::new(Code::Timeout, "the wait budget ran out");
        for i in 0..self.nodes.len() {
            let wait = remaining_ms(deadline);
            if wait == 0 {
                break;
            }
            let at = (first + i) % self.nodes.len();
            let client = self.nodes[at].clone();
            let limit = Duration::from_millis(wait) + CALL_SLACK;
            let result = match tokio::time::timeout(limit, call(client, wait)).await {
                Ok(r) => r.map_err(transport),
                Err(_) => Err(TunekvError::new(
                    Code::Timeout,
                    format!(
                        "node {} did not answer within the wait budget",
                        self.nodes[at].base()
                    ),
                )),
            };
            match result {
                Ok(v) => {
                    if i > 0 {
                        self.preferred.store(at, Ordering::Relaxed);
                    }
                    return Ok(v);
                }
                Err(e) if retry(&e) => {
                    self.counters.failovers.fetch_add(1, Ordering::Relaxed);
                    last = e;
                }
                Err(e) => return Err(e),
            }
        }
        Err(last)
    }

    /// Reads `key` at a state no older than `need` on `group` (a `monotonic_reads` read with a
    /// token the cache makes), so the answer is never older than the cache's own position.
    pub async fn fill(
        &self,
        ks: &str,
        key: &[u8],
        group: GroupId,
        need: u64,
        deadline: Instant,
    ) -> Result<Fetched, TunekvError> {
        let mut s = Session::new();
        s.read(group, LogIndex(need));
        let token = self.key.encode(&s);
        self.counters.reads.fetch_add(1, Ordering::Relaxed);
        let r = self
            .each_node(deadline, read_elsewhere, |c, wait| {
                let opts = Opts::level("monotonic_reads").wait_ms(wait).session(&token);
                async move { c.get(ks, key, &opts).await }
            })
            .await?;
        parse_read(r)
    }

    /// Reads `key` as the client asked (keyspaces the cache does not hold: leaderless ones).
    pub async fn read_as_asked(
        &self,
        ks: &str,
        key: &[u8],
        opts: &Opts,
        deadline: Instant,
    ) -> Result<Fetched, TunekvError> {
        self.counters.reads.fetch_add(1, Ordering::Relaxed);
        let r = self
            .each_node(deadline, read_elsewhere, |c, wait| {
                let opts = opts.clone().wait_ms(wait);
                async move { c.get(ks, key, &opts).await }
            })
            .await?;
        parse_read(r)
    }

    /// The shard's read index, confirmed by a leader holding a quorum.
    pub async fn read_index(
        &self,
        ks: &str,
        shard: u32,
        deadline: Instant,
    ) -> Result<u64, TunekvError> {
        self.counters.probes.fetch_add(1, Ordering::Relaxed);
        self.each_node(deadline, read_elsewhere, |c, wait| async move {
            c.read_index(ks, shard, wait).await
        })
        .await
    }

    /// Creates a keyspace (`PUT /v1/keyspaces/{ks}`); one that exists already is fine.
    pub async fn create_keyspace(
        &self,
        ks: &str,
        spec: &serde_json::Value,
        deadline: Instant,
    ) -> Result<(), TunekvError> {
        let made = self
            .each_node(deadline, write_elsewhere, |c, _| async move {
                c.create_keyspace(ks, spec).await
            })
            .await;
        match made {
            Err(e) if e.code != Code::KeyspaceExists => Err(e),
            _ => Ok(()),
        }
    }

    /// A page of the keys of `ks` under `prefix` (`GET /v1/kv/{ks}:scan`, eventual).
    pub async fn scan(
        &self,
        ks: &str,
        prefix: &[u8],
        cursor: u64,
        deadline: Instant,
    ) -> Result<(Vec<Vec<u8>>, u64), TunekvError> {
        self.each_node(deadline, read_elsewhere, |c, wait| async move {
            let opts = Opts::level("eventual").wait_ms(wait);
            c.scan(ks, prefix, cursor, &opts).await
        })
        .await
    }

    /// The keyspace's id and spec, as the node's `GET /v1/keyspaces/{ks}` gives them.
    pub async fn keyspace(
        &self,
        ks: &str,
        deadline: Instant,
    ) -> Result<serde_json::Value, TunekvError> {
        self.each_node(deadline, read_elsewhere, |c, _| async move {
            c.keyspace(ks).await
        })
        .await
    }

    /// A PUT (`Some` value) or DELETE sent on: on the first node that takes it. A write is not
    /// sent twice: only a node that certainly did not take it (unreachable, `no_quorum`) makes
    /// the cache try the next one.
    pub async fn write(
        &self,
        ks: &str,
        key: &[u8],
        value: Option<&[u8]>,
        opts: &Opts,
        deadline: Instant,
    ) -> Result<WriteReply, TunekvError> {
        self.counters.writes.fetch_add(1, Ordering::Relaxed);
        if self.isolated() {
            return Err(TunekvError::new(
                Code::Unavailable,
                "the cache is cut off from the store (fault injection); nothing was sent",
            ));
        }
        let sent = self
            .each_node(deadline, write_elsewhere, |c, wait| {
                let opts = opts.clone().wait_ms(wait);
                async move {
                    match value {
                        Some(v) => c.write(ks, key, Some(v), &opts).await,
                        None => c.write(ks, key, None, &opts).await,
                    }
                }
            })
            .await;
        // A connection that broke may have delivered the write: its outcome is unknown.
        sent.map_err(|e| match e.code {
            Code::Unavailable => TunekvError::new(
                Code::Timeout,
                format!("{}; the write may or may not have happened", e.message),
            ),
            _ => e,
        })
    }
}
