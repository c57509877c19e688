//! The state machine of one group: an ordered map in memory, rebuilt at start from the last
//! snapshot plus the log. Readers take one consistent view of it at a time ([`ShardData::read`]),
//! which is what consistent-prefix multi-key reads need.

use crate::types::{Command, CommandResult, Op, StoredValue};
use crate::{invalid_data, TypeConfig};
use futures::{Stream, TryStreamExt};
use openraft::alias::{LogIdOf, SnapshotMetaOf, SnapshotOf, StoredMembershipOf};
use openraft::storage::{EntryResponder, RaftSnapshotBuilder, RaftStateMachine};
use openraft::EntryPayload;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::io;
use std::sync::{Arc, RwLock, RwLockReadGuard};
use tokio::sync::watch;
use tunekv_core::Hlc;
use tunekv_storage::Storage;

/// The applied position of a group, published after every applied batch.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Applied {
    pub index: u64,
    /// The highest commit time (HLC) among applied entries; commit times grow along the log,
    /// so this is the last stamped entry's.
    pub commit_ts: u64,
}

struct Inner {
    data: BTreeMap<Vec<u8>, StoredValue>,
    last_applied: Option<LogIdOf<TypeConfig>>,
    commit_ts: u64,
    membership: StoredMembershipOf<TypeConfig>,
}

impl Inner {
    fn applied(&self) -> Applied {
        Applied {
            index: self.last_applied.as_ref().map(|l| l.index()).unwrap_or(0),
            commit_ts: self.commit_ts,
        }
    }
}

/// The part of a group's state that readers share with the state machine.
pub struct ShardData {
    // Readers hold the read lock for one request's view; the applier holds the write lock for
    // one batch. Never held across an await.
    inner: RwLock<Inner>,
    // Wakes readers waiting for an index (strong reads on followers, later bounded reads).
    applied_tx: watch::Sender<Applied>,
}

/// One consistent view of a group's state.
pub struct ShardView<'a> {
    inner: RwLockReadGuard<'a, Inner>,
}

impl ShardView<'_> {
    pub fn get(&self, key: &[u8]) -> Option<&StoredValue> {
        self.inner.data.get(key)
    }

    pub fn applied(&self) -> Applied {
        self.inner.applied()
    }

    /// Keys with `prefix`, in order (the catalog lists keyspaces with it).
    pub fn scan_prefix<'b>(
        &'b self,
        prefix: &'b [u8],
    ) -> impl Iterator<Item = (&'b Vec<u8>, &'b StoredValue)> + 'b {
        self.inner
            .data
            .range(prefix.to_vec()..)
            .take_while(move |(k, _)| k.starts_with(prefix))
    }

    pub fn len(&self) -> usize {
        self.inner.data.len()
    }

    pub fn is_empty(&self) -> bool {
        self.inner.data.is_empty()
    }
}

impl ShardData {
    pub fn read(&self) -> ShardView<'_> {
        ShardView {
            inner: self.inner.read().unwrap_or_else(|p| p.into_inner()),
        }
    }

    pub fn applied(&self) -> Applied {
        *self.applied_tx.borrow()
    }

    pub fn subscribe(&self) -> watch::Receiver<Applied> {
        self.applied_tx.subscribe()
    }
}

/// What a snapshot holds besides openraft's meta. Format: docs/formats.md.
#[derive(Serialize, Deserialize)]
struct SnapshotBody {
    commit_ts: u64,
    data: Vec<(Vec<u8>, StoredValue)>,
}

#[derive(Serialize, Deserialize)]
struct SnapshotFile {
    meta: SnapshotMetaOf<TypeConfig>,
    body: Vec<u8>,
}

#[derive(Clone)]
pub struct StateMachine {
    group: u64,
    shared: Arc<ShardData>,
    storage: Arc<dyn Storage>,
    // The node's clock: applied commit times are observed so a new leader never stamps an
    // entry earlier than one it has applied.
    hlc: Arc<Hlc>,
}

impl StateMachine {
    /// Opens a group's state machine from its stored snapshot (if any).
    pub fn open(group: u64, storage: Arc<dyn Storage>, hlc: Arc<Hlc>) -> io::Result<StateMachine> {
        let mut inner = Inner {
            data: BTreeMap::new(),
            last_applied: None,
            commit_ts: 0,
            membership: StoredMembershipOf::<TypeConfig>::default(),
        };
        if let Some(bytes) = storage.get_snapshot(group)? {
            let file: SnapshotFile = postcard::from_bytes(&bytes).map_err(invalid_data)?;
            let body: SnapshotBody = postcard::from_bytes(&file.body).map_err(invalid_data)?;
            inner.data = body.data.into_iter().collect();
            inner.commit_ts = body.commit_ts;
            inner.last_applied = file.meta.last_log_id;
            inner.membership = file.meta.last_membership.clone();
            hlc.observe(body.commit_ts);
        }
        let (applied_tx, _) = watch::channel(inner.applied());
        let shared = Arc::new(ShardData {
            inner: RwLock::new(inner),
            applied_tx,
        });
        Ok(StateMachine {
            group,
            shared,
            storage,
            hlc,
        })
    }

    pub fn data(&self) -> Arc<ShardData> {
        self.shared.clone()
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Inner> {
        self.shared.inner.write().unwrap_or_else(|p| p.into_inner())
    }
}

fn apply_op(data: &mut BTreeMap<Vec<u8>, StoredValue>, index: u64, cmd: &Command) -> CommandResult {
    match &cmd.op {
        Op::Put { key, value } => {
            let prev = data.get(key);
            let existed = prev.is_some();
            let create_index = prev.map(|p| p.create_index).unwrap_or(index);
            data.insert(
                key.clone(),
                StoredValue {
                    value: value.clone(),
                    create_index,
                    mod_index: index,
                    commit_ts: cmd.commit_ts,
                },
            );
            CommandResult {
                existed,
                changed: true,
                current: None,
            }
        }
        Op::PutIfAbsent { key, value } => {
            if let Some(current) = data.get(key) {
                return CommandResult {
                    existed: true,
                    changed: false,
                    current: Some(current.clone()),
                };
            }
            data.insert(
                key.clone(),
                StoredValue {
                    value: value.clone(),
                    create_index: index,
                    mod_index: index,
                    commit_ts: cmd.commit_ts,
                },
            );
            CommandResult {
                existed: false,
                changed: true,
                current: None,
            }
        }
        Op::Delete { key } => {
            let existed = data.remove(key).is_some();
            CommandResult {
                existed,
                changed: existed,
                current: None,
            }
        }
    }
}

impl RaftSnapshotBuilder<TypeConfig> for StateMachine {
    type SnapshotData = Vec<u8>;

    async fn build_snapshot(&mut self) -> Result<SnapshotOf<TypeConfig, Vec<u8>>, io::Error> {
        let (meta, body) = {
            let inner = self.shared.inner.read().unwrap_or_else(|p| p.into_inner());
            let body = SnapshotBody {
                commit_ts: inner.commit_ts,
                data: inner
                    .data
                    .iter()
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect(),
            };
            let meta = SnapshotMetaOf::<TypeConfig> {
                last_log_id: inner.last_applied,
                last_membership: inner.membership.clone(),
            };
            (meta, postcard::to_stdvec(&body).map_err(invalid_data)?)
        };
        let file = SnapshotFile {
            meta: meta.clone(),
            body: body.clone(),
        };
        self.storage.put_snapshot(
            self.group,
            &postcard::to_stdvec(&file).map_err(invalid_data)?,
        )?;
        Ok(SnapshotOf::<TypeConfig, Vec<u8>> {
            meta,
            snapshot: body,
        })
    }
}

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotData = Vec<u8>;
    type SnapshotBuilder = Self;

    async fn applied_state(
        &mut self,
    ) -> Result<(Option<LogIdOf<TypeConfig>>, StoredMembershipOf<TypeConfig>), io::Error> {
        let inner = self.shared.inner.read().unwrap_or_else(|p| p.into_inner());
        Ok((inner.last_applied, inner.membership.clone()))
    }

    async fn apply<Strm>(&mut self, mut entries: Strm) -> Result<(), io::Error>
    where
        Strm: Stream<Item = Result<EntryResponder<TypeConfig>, io::Error>> + Unpin + Send,
    {
        // Collect the batch first: the write lock must not be held across an await.
        let mut batch = Vec::new();
        while let Some(item) = entries.try_next().await? {
            batch.push(item);
        }
        let mut replies = Vec::with_capacity(batch.len());
        let applied = {
            let mut inner = self.write();
            for (entry, responder) in batch {
                let index = entry.log_id.index();
                assert!(
                    inner.last_applied.as_ref().map(|l| l.index()) < Some(index),
                    "entries apply in log order"
                );
                let result = match &entry.payload {
                    EntryPayload::Blank => CommandResult {
                        existed: false,
                        changed: false,
                        current: None,
                    },
                    EntryPayload::Normal(cmd) => {
                        inner.commit_ts = inner.commit_ts.max(cmd.commit_ts);
                        self.hlc.observe(cmd.commit_ts);
                        apply_op(&mut inner.data, index, cmd)
                    }
                    EntryPayload::Membership(m) => {
                        inner.membership =
                            StoredMembershipOf::<TypeConfig>::new(Some(entry.log_id), m.clone());
                        CommandResult {
                            existed: false,
                            changed: false,
                            current: None,
                        }
                    }
                };
                inner.last_applied = Some(entry.log_id);
                if let Some(r) = responder {
                    replies.push((r, result));
                }
            }
            inner.applied()
        };
        self.shared.applied_tx.send_replace(applied);
        for (r, result) in replies {
            r.send(result);
        }
        Ok(())
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMetaOf<TypeConfig>,
        snapshot: Vec<u8>,
    ) -> Result<(), io::Error> {
        let body: SnapshotBody = postcard::from_bytes(&snapshot).map_err(invalid_data)?;
        // Durable before it becomes the state: a restart must find it.
        let file = SnapshotFile {
            meta: meta.clone(),
            body: snapshot,
        };
        self.storage.put_snapshot(
            self.group,
            &postcard::to_stdvec(&file).map_err(invalid_data)?,
        )?;
        self.hlc.observe(body.commit_ts);
        let applied = {
            let mut inner = self.write();
            inner.data = body.data.into_iter().collect();
            inner.commit_ts = body.commit_ts;
            inner.last_applied = meta.last_log_id;
            inner.membership = meta.last_membership.clone();
            inner.applied()
        };
        self.shared.applied_tx.send_replace(applied);
        Ok(())
    }

    async fn get_current_snapshot(
        &mut self,
    ) -> Result<Option<SnapshotOf<TypeConfig, Vec<u8>>>, io::Error> {
        match self.storage.get_snapshot(self.group)? {
            None => Ok(None),
            Some(bytes) => {
                let file: SnapshotFile = postcard::from_bytes(&bytes).map_err(invalid_data)?;
                Ok(Some(SnapshotOf::<TypeConfig, Vec<u8>> {
                    meta: file.meta,
                    snapshot: file.body,
                }))
            }
        }
    }
}
