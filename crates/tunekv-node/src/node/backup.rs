//! Backups of ordered keyspaces: one shard's state read at one point (a strong read's view,
//! held while it streams out), and restores that write backed-up keys through the shards'
//! leaders. The stream's format is `tunekv_core::backup`'s; HTTP only carries it.

use super::write::TXN_ITEMS_MAX;
use super::*;
use tunekv_core::backup::{Record, ShardHeader, Writer};
use tunekv_raft::{Cond, Ttl};

/// Bytes of records per piece of a backup stream.
const PIECE_BYTES: usize = 256 * 1024;

/// A shard's state at one applied index, ready to stream.
pub struct ShardDump {
    pub header: ShardHeader,
    view: tunekv_raft::ShardView,
    now_ms: u64,
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
        self.view.scan_live(0, self.now_ms, &mut |_, key, value| {
            w.record(&mut out, key, &value.value, value.expires_ms);
            if out.len() >= PIECE_BYTES && !send(std::mem::take(&mut out)) {
                gone = true;
                return false;
            }
            true
        })?;
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
        if ks.spec.mode != Mode::Ordered {
            return Err(err(
                Code::ModeUnsupported,
                format!(
                    "{:?} is {}: only ordered keyspaces are backed up by shard (a volatile \
                     keyspace holds nothing durable; leaderless backups are not built yet)",
                    ks.name,
                    ks.spec.mode.as_str()
                ),
            ));
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
        let req = Requirement::for_level(level, Session::default().mark(g.id))?;
        self.until_servable(&g, level, req, started, deadline)
            .await?;
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
            view,
            now_ms,
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
        if ks.spec.mode != Mode::Ordered {
            return Err(err(
                Code::ModeUnsupported,
                format!(
                    "{:?} is {}: restores write ordered keyspaces only",
                    ks.name,
                    ks.spec.mode.as_str()
                ),
            ));
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
}
