//! Backups: an ordered shard's state read at one point (a strong read's view, held while it
//! streams out), or one node's replica of a leaderless keyspace (every key with its version);
//! restores that write backed-up keys through the shards' leaders, or merge backed-up versions
//! into the replicas of each key. The stream's format is `tunekv_core::backup`'s (a leaderless
//! record's value is the postcard encoding of its `Versioned`); HTTP only carries it.

use super::leaderless::lock;
use super::write::TXN_ITEMS_MAX;
use super::*;
use crate::rpc::{DynamoRequest, DynamoResponse};
use tunekv_core::backup::{Record, ShardHeader, Writer};
use tunekv_dynamo::Versioned;
use tunekv_raft::{Cond, Ttl};

/// Bytes of records per piece of a backup stream.
const PIECE_BYTES: usize = 256 * 1024;

/// A shard's state at one applied index, or a node's leaderless replica, ready to stream.
pub struct ShardDump {
    pub header: ShardHeader,
    source: Source,
}

enum Source {
    /// An ordered shard: a frozen view, its live keys at `now_ms`.
    View {
        view: tunekv_raft::ShardView,
        now_ms: u64,
    },
    /// A leaderless replica's keys, each value its encoded `Versioned`.
    Versions(Vec<(Vec<u8>, Vec<u8>)>),
}

/// What a restore batch did.
#[derive(Clone, Debug, Default, Serialize)]
pub struct RestoreOutcome {
    /// Keys written (each as a plain SET with its expiry).
    pub written: u64,
    /// Keys left out because their expiry had already passed.
    pub expired: u64,
}

impl ShardDump {
    /// Streams the dump into `send` in pieces of about [`PIECE_BYTES`]: the header, the live
    /// keys in scan order, then the trailer. Blocking (reads storage): run it on a blocking
    /// thread. Stops early, without a trailer, when `send` returns `false` (the reader went
    /// away) or storage fails, so a cut stream can never pass for a whole one.
    pub fn stream(self, send: &mut dyn FnMut(Vec<u8>) -> bool) -> std::io::Result<u64> {
        let (mut w, mut out) = Writer::start(&self.header);
        let mut gone = false;
        let mut add = |key: &[u8], value: &[u8], expires_ms: Option<u64>| {
            w.record(&mut out, key, value, expires_ms);
            if out.len() >= PIECE_BYTES && !send(std::mem::take(&mut out)) {
                gone = true;
                return false;
            }
            true
        };
        match &self.source {
            Source::View { view, now_ms } => view.scan_live(0, *now_ms, &mut |_, key, value| {
                add(key, &value.value, value.expires_ms)
            })?,
            Source::Versions(entries) => {
                for (key, value) in entries {
                    if !add(key, value, None) {
                        break;
                    }
                }
            }
        }
        if gone {
            return Err(std::io::Error::other("the backup's reader went away"));
        }
        let count = w.count();
        out.extend(w.finish());
        if !send(out) {
            return Err(std::io::Error::other("the backup's reader went away"));
        }
        Ok(count)
    }
}

impl Node {
    /// Shard `shard` of ordered keyspace `name` as one consistent view: read at `strong` on
    /// this node's replica (so it holds every write acknowledged before the call), and held
    /// while it streams. `not_replica` when this node has no copy of the shard.
    pub async fn dump_shard(
        &self,
        name: &str,
        shard: u32,
        wait: Option<Duration>,
    ) -> Result<ShardDump, TunekvError> {
        let started = Instant::now();
        let deadline = started + self.wait_budget(wait, self.config.read_wait_ms_default);
        let ks = self.keyspace(name, deadline).await?;
        match ks.spec.mode {
            Mode::Ordered => {}
            Mode::Leaderless => return self.dump_replica(&ks, shard),
            Mode::Volatile => {
                return Err(err(
                    Code::ModeUnsupported,
                    format!(
                        "{:?} is volatile: it holds nothing durable to back up (its spec is \
                         all a backup keeps)",
                        ks.name
                    ),
                ))
            }
        }
        if shard >= ks.spec.shards {
            return Err(err(
                Code::BadRequest,
                format!(
                    "{:?} has {} shards; there is no shard {shard}",
                    ks.name, ks.spec.shards
                ),
            ));
        }
        let g = self.hosted_shard(&ks, ShardId(shard)).await?;
        let level = Level::Strong;
        if !self.config.bugs.backup_stale() {
            let req = Requirement::for_level(level, Session::default().mark(g.id))?;
            self.until_servable(&g, level, req, started, deadline)
                .await?;
        }
        let view = g.data.read().map_err(internal)?;
        let applied = view.applied();
        let wall = self.expiry_wall_ms();
        let now_ms = Hlc::millis(applied.commit_ts)
            .min(wall.saturating_add(self.config.max_clock_offset_ms))
            .max(wall);
        Ok(ShardDump {
            header: ShardHeader {
                keyspace: ks.name.clone(),
                shard,
                index: applied.index,
                commit_ms: Hlc::millis(applied.commit_ts),
                node: self.id.0,
            },
            source: Source::View { view, now_ms },
        })
    }

    /// This node's replica of leaderless keyspace `ks` (stream 0: a leaderless keyspace has
    /// one stream per node of its ring): every key with its version, as held now.
    fn dump_replica(&self, ks: &KeyspaceInfo, stream: u32) -> Result<ShardDump, TunekvError> {
        if stream != 0 {
            return Err(err(
                Code::BadRequest,
                format!(
                    "{:?} is leaderless: each node of its ring has one backup stream, 0",
                    ks.name
                ),
            ));
        }
        if !self.ring_nodes(ks).contains(&self.id) {
            return Err(err(
                Code::NotReplica,
                format!(
                    "node {} is not in the ring of leaderless keyspace {:?}: it holds none of it",
                    self.id, ks.name
                ),
            ));
        }
        let entries = lock(&*self.replica_of(ks)?).entries();
        let mut encoded = Vec::with_capacity(entries.len());
        for (key, v) in entries {
            encoded.push((key, postcard::to_stdvec(&v).map_err(internal)?));
        }
        Ok(ShardDump {
            header: ShardHeader {
                keyspace: ks.name.clone(),
                shard: 0,
                index: 0,
                commit_ms: 0,
                node: self.id.0,
            },
            source: Source::Versions(encoded),
        })
    }

    /// Writes backed-up `records` into ordered keyspace `name`: each key as a plain SET with
    /// its expiry (keys already expired are left out), in transactions of at most
    /// [`TXN_ITEMS_MAX`] keys of one shard, proposed through the shards' leaders whether this
    /// node holds them or not. Every record is checked before anything is written; a batch
    /// applied twice leaves the same state.
    pub async fn restore_records(
        &self,
        name: &str,
        records: Vec<Record>,
        wait: Option<Duration>,
    ) -> Result<RestoreOutcome, TunekvError> {
        let deadline = Instant::now() + self.wait_budget(wait, self.config.write_wait_ms_default);
        let ks = self.keyspace(name, deadline).await?;
        match ks.spec.mode {
            Mode::Ordered => {}
            Mode::Leaderless => return self.restore_versions(&ks, records, deadline).await,
            Mode::Volatile => {
                return Err(err(
                    Code::ModeUnsupported,
                    format!(
                        "{:?} is volatile: nothing is restored into it (a backup holds no \
                         volatile data)",
                        ks.name
                    ),
                ))
            }
        }
        for (i, r) in records.iter().enumerate() {
            check_key(&r.key)
                .and_then(|_| check_value(&r.value, ks.spec.value_bytes_max))
                .map_err(|e| {
                    err(
                        e.code,
                        format!("record {i}: {}; nothing was written", e.message),
                    )
                })?;
        }
        let wall = self.expiry_wall_ms();
        let mut outcome = RestoreOutcome::default();
        let mut by_shard: BTreeMap<ShardId, Vec<Op>> = BTreeMap::new();
        for r in records {
            if r.expires_ms.is_some_and(|e| e <= wall) {
                outcome.expired += 1;
                continue;
            }
            let ttl = r.expires_ms.map_or(Ttl::Clear, Ttl::AtMs);
            by_shard
                .entry(shard_for_key(&r.key, ks.spec.shards))
                .or_default()
                .push(Op::Set {
                    key: r.key,
                    value: r.value,
                    cond: Cond::Always,
                    ttl,
                    get: false,
                });
        }
        let mut proposals = Vec::new();
        for (shard, ops) in by_shard {
            let mut ops = ops.into_iter().peekable();
            while ops.peek().is_some() {
                let success: Vec<Op> = ops.by_ref().take(TXN_ITEMS_MAX).collect();
                let n = success.len() as u64;
                let op = Op::Txn {
                    compare: Vec::new(),
                    success,
                    failure: Vec::new(),
                };
                let ks = &ks;
                proposals.push(async move {
                    self.propose_on_shard(ks, shard, op, deadline)
                        .await
                        .map(|_| n)
                });
            }
        }
        let mut first_error = None;
        for r in futures::future::join_all(proposals).await {
            match r {
                Ok(n) => outcome.written += n,
                Err(e) => {
                    first_error.get_or_insert(e);
                }
            }
        }
        match first_error {
            // Some keys may have been written: the restore sends the batch again (SETs of
            // the same values, so a second time changes nothing more).
            Some(e) => Err(err(
                e.code,
                format!(
                    "{} of the batch's keys were written, then: {}",
                    outcome.written, e.message
                ),
            )),
            None => Ok(outcome),
        }
    }

    /// Merges backed-up versions (each record's value an encoded `Versioned`) into every
    /// replica of each key, as anti-entropy would: the keyspace's policy resolves them against
    /// what the replicas hold, so a restore never undoes a newer write, and one sent twice
    /// changes nothing. Every replica must store its part; a replica that cannot is named
    /// and the batch is sent again later.
    async fn restore_versions(
        &self,
        ks: &KeyspaceInfo,
        records: Vec<Record>,
        deadline: Instant,
    ) -> Result<RestoreOutcome, TunekvError> {
        let mut items = Vec::with_capacity(records.len());
        for (i, r) in records.into_iter().enumerate() {
            check_key(&r.key).map_err(|e| {
                err(
                    e.code,
                    format!("record {i}: {}; nothing was written", e.message),
                )
            })?;
            let v: Versioned = postcard::from_bytes(&r.value).map_err(|e| {
                err(
                    Code::BadRequest,
                    format!(
                        "record {i} of leaderless keyspace {:?} is not a backed-up version \
                         ({e}); nothing was written",
                        ks.name
                    ),
                )
            })?;
            items.push((r.key, v));
        }
        let ring = self.ring_of(ks)?;
        let n = ks.spec.replicas as usize;
        let mut by_node: BTreeMap<NodeId, Vec<(Vec<u8>, Versioned)>> = BTreeMap::new();
        for (key, v) in &items {
            for node in ring.preference_list(key, n) {
                by_node
                    .entry(node)
                    .or_default()
                    .push((key.clone(), v.clone()));
            }
        }
        let me = self.me()?;
        let wait = deadline.saturating_duration_since(Instant::now());
        let calls = by_node.into_iter().map(|(node, items)| {
            let req = DynamoRequest::Store {
                ks: ks.name.clone(),
                items,
                fresh: false,
                hint_for: None,
            };
            let me = me.clone();
            async move { (node, me.dynamo_call(node, req, wait).await) }
        });
        let mut failed = Vec::new();
        for (node, reply) in futures::future::join_all(calls).await {
            match reply {
                Ok(DynamoResponse::Stored { .. }) => {}
                Ok(_) => failed.push(format!("node {node}: unexpected answer")),
                Err((_, m)) => failed.push(format!("node {node}: {m}")),
            }
        }
        if !failed.is_empty() {
            return Err(err(
                Code::Unavailable,
                format!(
                    "not every replica stored the batch ({}); send it again once they answer \
                     (a batch merged twice changes nothing)",
                    failed.join("; ")
                ),
            ));
        }
        Ok(RestoreOutcome {
            written: items.len() as u64,
            expired: 0,
        })
    }
}
