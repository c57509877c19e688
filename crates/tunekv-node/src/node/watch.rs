//! The change feed of an ordered keyspace (issue 18): every change this node applies to the
//! keyspace's shards, per shard in commit order, from now on, with progress marks.
//!
//! [`Node::watch`] subscribes to each shard's applied batches first, then reads how far each
//! shard has applied: batches at or below that index count as before the watch began, the rest
//! are delivered. A progress event "every change of shard s up to index i has been delivered"
//! follows each batch, so it is never ahead of the changes. A watcher that falls more than
//! `CHANGE_BATCHES_MAX` batches behind on a shard is cut off with an error (its memory stays
//! bounded), as is one whose node replaced a shard's state with a snapshot (the changes in
//! between are not listed).

use super::*;
use tokio::sync::broadcast;
use tunekv_raft::ChangeBatch;

/// One event of a watch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum WatchEvent {
    /// A key of the watched prefix changed: its new value, or `None` when deleted.
    Change {
        position: Position,
        key: Vec<u8>,
        value: Option<Vec<u8>>,
    },
    /// Every change of `shard` up to `index` has been delivered.
    Progress { shard: ShardId, index: u64 },
    /// The watch ends: it fell behind, or the node lost the shard's history.
    End(TunekvError),
}

/// A running watch: see [`Node::watch`].
pub struct Watch {
    prefix: Vec<u8>,
    shards: Vec<ShardFeed>,
    /// Events of the last batch not handed out yet.
    pending: std::collections::VecDeque<WatchEvent>,
    ended: bool,
    /// The injected bug `progress-early`.
    progress_early: bool,
}

struct ShardFeed {
    shard: ShardId,
    rx: broadcast::Receiver<Arc<ChangeBatch>>,
    /// Changes at or below this were applied before the watch began, or delivered.
    progress: u64,
}

impl Watch {
    /// Each shard's progress now (what a periodic progress event repeats while idle).
    pub fn progress(&self) -> Vec<(ShardId, u64)> {
        self.shards.iter().map(|s| (s.shard, s.progress)).collect()
    }

    /// The next event; `None` once the watch has ended.
    pub async fn next(&mut self) -> Option<WatchEvent> {
        loop {
            if let Some(e) = self.pending.pop_front() {
                if matches!(e, WatchEvent::End(_)) {
                    self.ended = true;
                }
                return Some(e);
            }
            if self.ended || self.shards.is_empty() {
                return None;
            }
            let (result, i) = {
                let recvs = self.shards.iter_mut().map(|s| Box::pin(s.rx.recv()));
                let (result, i, _) = futures::future::select_all(recvs).await;
                (result, i)
            };
            let feed = &mut self.shards[i];
            match result {
                Ok(batch) if batch.reset => {
                    self.pending.push_back(WatchEvent::End(err(
                        Code::Unavailable,
                        format!(
                            "shard {} on this node was replaced by a snapshot at index {}; the \
                             changes before it are not in the feed: read the keys again, then \
                             watch anew",
                            feed.shard.0, batch.applied
                        ),
                    )));
                }
                Ok(batch) => {
                    if batch.applied <= feed.progress {
                        continue;
                    }
                    let mark = WatchEvent::Progress {
                        shard: feed.shard,
                        index: batch.applied,
                    };
                    if self.progress_early {
                        self.pending.push_back(mark.clone());
                    }
                    for c in batch.changes.iter().filter(|c| c.index > feed.progress) {
                        if c.key.starts_with(&self.prefix) {
                            self.pending.push_back(WatchEvent::Change {
                                position: Position {
                                    shard: feed.shard,
                                    index: LogIndex(c.index),
                                    commit_ms: Hlc::millis(c.commit_ts),
                                },
                                key: c.key.clone(),
                                value: c.value.clone(),
                            });
                        }
                    }
                    feed.progress = batch.applied;
                    if !self.progress_early {
                        self.pending.push_back(mark);
                    }
                }
                Err(broadcast::error::RecvError::Lagged(n)) => {
                    self.pending.push_back(WatchEvent::End(err(
                        Code::Unavailable,
                        format!(
                            "this watcher fell {n} batches behind shard {} (it reads slower than \
                             the shard commits); every change up to index {} was delivered: \
                             read the keys again, then watch anew",
                            feed.shard.0, feed.progress
                        ),
                    )));
                }
                Err(broadcast::error::RecvError::Closed) => {
                    self.pending.push_back(WatchEvent::End(err(
                        Code::Unavailable,
                        format!("shard {} stopped on this node", feed.shard.0),
                    )));
                }
            }
        }
    }
}

impl Node {
    /// Watches the keys of ordered keyspace `keyspace` that start with `prefix`, from now on,
    /// on every shard (each must have a replica on this node).
    pub async fn watch(&self, keyspace: &str, prefix: Vec<u8>) -> Result<Watch, TunekvError> {
        let deadline = Instant::now() + Duration::from_millis(self.config.read_wait_ms_default);
        let ks = self.keyspace(keyspace, deadline).await?;
        if ks.spec.mode != Mode::Ordered {
            return Err(err(
                Code::ModeUnsupported,
                format!(
                    "watching {} keyspace {:?} is not built yet: the feed follows the shards' \
                     logs (ordered keyspaces)",
                    ks.spec.mode.as_str(),
                    ks.name
                ),
            ));
        }
        let mut shards = Vec::with_capacity(ks.spec.shards as usize);
        for s in 0..ks.spec.shards {
            let g = self.hosted_shard(&ks, ShardId(s)).await?;
            // Subscribe first, then read the applied index: nothing falls in between.
            let rx = g.data.changes();
            let progress = g.data.applied().index;
            shards.push(ShardFeed {
                shard: ShardId(s),
                rx,
                progress,
            });
        }
        let pending = shards
            .iter()
            .map(|s| WatchEvent::Progress {
                shard: s.shard,
                index: s.progress,
            })
            .collect();
        Ok(Watch {
            prefix,
            shards,
            pending,
            ended: false,
            progress_early: self.config.bugs.progress_early(),
        })
    }
}
