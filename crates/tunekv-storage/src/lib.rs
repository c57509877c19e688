//! tunekv-storage: where Raft logs, votes and snapshots live.
//!
//! [`Storage`] is the small backend trait (redb's pattern): [`FjallStorage`] for real nodes,
//! [`MemStorage`] for unit tests and the simulator. [`GroupCommit`] turns many "make this
//! durable" requests into one `fsync`: every shard's appends share one fjall journal, so one
//! sync covers all of them.
//!
//! Blocking disk work happens only inside this crate (the fjall calls and the group-commit
//! thread). Node code calls [`GroupCommit::sync`] and awaits.

mod fjall_store;
mod group_commit;
mod mem_store;

pub use fjall_store::{FjallOptions, FjallStorage};
pub use group_commit::{GroupCommit, SyncObserver};
pub use mem_store::MemStorage;

/// A Raft group id as stored (tunekv-core's `GroupId.0`).
pub type Group = u64;
/// A set of records (one leaderless keyspace's replica data, one target's hints).
pub type Space = u64;
/// One log entry: its index and its encoded bytes.
pub type LogRecord = (u64, Vec<u8>);

#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("storage engine: {0}")]
    Engine(String),
    #[error("storage I/O: {0}")]
    Io(#[from] std::io::Error),
    #[error("storage closed")]
    Closed,
}

impl From<StorageError> for std::io::Error {
    fn from(e: StorageError) -> Self {
        match e {
            StorageError::Io(io) => io,
            other => std::io::Error::other(other.to_string()),
        }
    }
}

pub type Result<T> = std::result::Result<T, StorageError>;

/// The durable engine. Writes other than [`Storage::put_snapshot`] are buffered: they become
/// durable at the next [`Storage::sync`], which covers every write made before it, in any group.
pub trait Storage: Send + Sync + 'static {
    /// Stores log records of `group` (overwriting any with the same index).
    fn append(&self, group: Group, records: &[LogRecord]) -> Result<()>;
    /// Records with `from <= index < to`, in index order.
    fn entries(&self, group: Group, from: u64, to: u64) -> Result<Vec<LogRecord>>;
    /// Like [`Storage::entries`], but stops once the records read hold `bytes_max` bytes or
    /// more (always at least one record when the range has one), so a caller never holds more
    /// than about `bytes_max` plus one record in memory.
    fn entries_bounded(
        &self,
        group: Group,
        from: u64,
        to: u64,
        bytes_max: usize,
    ) -> Result<Vec<LogRecord>> {
        let mut out = Vec::new();
        let mut bytes = 0usize;
        let mut next = from;
        // Reads a few records at a time so a range of large records is never loaded whole.
        while next < to && (out.is_empty() || bytes < bytes_max) {
            let chunk = self.entries(group, next, to.min(next.saturating_add(8)))?;
            let Some(&(last, _)) = chunk.last() else {
                break;
            };
            for record in chunk {
                if !out.is_empty() && bytes >= bytes_max {
                    return Ok(out);
                }
                bytes = bytes.saturating_add(record.1.len());
                out.push(record);
            }
            next = last.saturating_add(1);
        }
        Ok(out)
    }
    /// The record with the highest index.
    fn last_entry(&self, group: Group) -> Result<Option<LogRecord>>;
    /// Removes records with `index >= from`.
    fn truncate_from(&self, group: Group, from: u64) -> Result<()>;
    /// Removes records with `index <= through`.
    fn purge_through(&self, group: Group, through: u64) -> Result<()>;
    /// Small named values per group (vote, committed, purged).
    fn put_meta(&self, group: Group, name: &str, value: &[u8]) -> Result<()>;
    fn get_meta(&self, group: Group, name: &str) -> Result<Option<Vec<u8>>>;
    fn delete_meta(&self, group: Group, name: &str) -> Result<()>;
    /// Forgets a group this node no longer replicates (its replica moved away): the log, the
    /// named values and the state, then syncs, so a later replica of the same group here
    /// starts empty, as a new learner, never from a stale vote or log.
    fn drop_group(&self, group: Group, names: &[&str]) -> Result<()> {
        self.truncate_from(group, 0)?;
        for name in names {
            self.delete_meta(group, name)?;
        }
        self.state_stage(group)?.finish()?;
        self.sync()
    }
    /// A frozen view of `group`'s state-machine records: later writes are not seen through it.
    fn state_view(&self, group: Group) -> Result<std::sync::Arc<dyn StateView>>;
    /// Sets (`Some`) or removes (`None`) records of `group`'s state machine, all or none of
    /// them (one atomic batch). Buffered like the log: durable at the next sync, and never
    /// durable before a log write made earlier.
    fn state_write(&self, group: Group, writes: &[StateWrite]) -> Result<()>;
    /// An empty new state for `group` to fill (a snapshot being received); it replaces the
    /// group's state only at [`StateStage::finish`], and vanishes if dropped before.
    fn state_stage(&self, group: Group) -> Result<Box<dyn StateStage>>;
    /// Sets (`Some`) or removes (`None`) the record `key` of `space`: the leaderless mode's
    /// replica data and hints. Buffered like every write but snapshots.
    fn put_record(&self, space: Space, key: &[u8], value: Option<&[u8]>) -> Result<()>;
    /// Every record of `space`, in key order.
    fn records(&self, space: Space) -> Result<Vec<(Vec<u8>, Vec<u8>)>>;
    /// Makes every earlier write durable. Blocking: call it through [`GroupCommit`].
    fn sync(&self) -> Result<()>;
    /// Whether `sync` blocks the calling thread (a real disk). [`GroupCommit`] runs blocking
    /// syncs on a thread of their own, and the others on a task, so a simulated node has no
    /// thread outside its runtime.
    fn sync_blocks(&self) -> bool {
        true
    }
}

/// One record change of a state machine: its key, and its new value or `None` (removed).
pub type StateWrite = (Vec<u8>, Option<Vec<u8>>);

/// A consistent, frozen view of one group's state-machine records (issue 21: the ordered state
/// lives on disk; readers and snapshot senders each hold one view).
pub trait StateView: Send + Sync {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>>;
    /// The length of the value of `key`, without copying it out.
    fn size_of(&self, key: &[u8]) -> Result<Option<u64>> {
        Ok(self.get(key)?.map(|v| v.len() as u64))
    }
    /// Visits the records with `from <= key` (and `key < to` when given), in key order, until
    /// `visit` returns `false`.
    fn scan(
        &self,
        from: &[u8],
        to: Option<&[u8]>,
        visit: &mut dyn FnMut(&[u8], &[u8]) -> bool,
    ) -> Result<()>;
}

/// A group's next state being written (a snapshot arriving in chunks).
pub trait StateStage: Send {
    /// Adds records; they need not arrive in key order.
    fn write(&mut self, records: &[(Vec<u8>, Vec<u8>)]) -> Result<()>;
    /// Makes the staged records the group's whole state, durably and atomically: a crash
    /// before this returns leaves the old state, after it the new one. Every earlier write of
    /// the storage is durable too when it returns.
    fn finish(self: Box<Self>) -> Result<()>;
}

/// Key of a log record: group then index, both big-endian so byte order is index order.
fn log_key(group: Group, index: u64) -> [u8; 16] {
    let mut k = [0u8; 16];
    k[..8].copy_from_slice(&group.to_be_bytes());
    k[8..].copy_from_slice(&index.to_be_bytes());
    k
}

fn record_key(space: Space, key: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(8 + key.len());
    k.extend_from_slice(&space.to_be_bytes());
    k.extend_from_slice(key);
    k
}

fn meta_key(group: Group, name: &str) -> Vec<u8> {
    let mut k = group.to_be_bytes().to_vec();
    k.extend_from_slice(name.as_bytes());
    k
}

#[cfg(test)]
mod contract_tests {
    //! The same contract, checked on every backend.
    use super::*;

    pub fn check_contract(s: &dyn Storage) {
        s.append(
            1,
            &[(1, b"a".to_vec()), (2, b"b".to_vec()), (3, b"c".to_vec())],
        )
        .unwrap();
        s.append(2, &[(1, b"other".to_vec())]).unwrap();
        // Byte-bounded reads (replication batches, issue 15): stop at the record that reaches
        // the budget, but always return one.
        assert_eq!(s.entries_bounded(1, 1, 10, 2).unwrap().len(), 2);
        assert_eq!(s.entries_bounded(1, 1, 10, 1).unwrap().len(), 1);
        assert_eq!(s.entries_bounded(1, 1, 10, 0).unwrap().len(), 1);
        assert_eq!(s.entries_bounded(1, 2, 10, 100).unwrap().len(), 2);
        assert_eq!(s.entries_bounded(1, 3, 3, 100).unwrap().len(), 0);
        assert_eq!(
            s.entries(1, 2, 10).unwrap(),
            vec![(2, b"b".to_vec()), (3, b"c".to_vec())]
        );
        assert_eq!(s.last_entry(1).unwrap(), Some((3, b"c".to_vec())));
        s.truncate_from(1, 3).unwrap();
        assert_eq!(s.last_entry(1).unwrap(), Some((2, b"b".to_vec())));
        s.purge_through(1, 1).unwrap();
        assert_eq!(s.entries(1, 0, 10).unwrap(), vec![(2, b"b".to_vec())]);
        assert_eq!(s.entries(2, 0, 10).unwrap().len(), 1, "groups are separate");
        assert_eq!(s.get_meta(1, "vote").unwrap(), None);
        s.put_meta(1, "vote", b"v1").unwrap();
        assert_eq!(s.get_meta(1, "vote").unwrap(), Some(b"v1".to_vec()));
        assert_eq!(s.get_meta(2, "vote").unwrap(), None);
        // State machines: atomic batches, frozen views, scans in key order, staged states.
        s.state_write(
            1,
            &[
                (b"b".to_vec(), Some(b"2".to_vec())),
                (b"a".to_vec(), Some(b"1".to_vec())),
                (b"c".to_vec(), Some(b"3".to_vec())),
            ],
        )
        .unwrap();
        s.state_write(2, &[(b"a".to_vec(), Some(b"other".to_vec()))])
            .unwrap();
        let before = s.state_view(1).unwrap();
        s.state_write(
            1,
            &[(b"c".to_vec(), None), (b"d".to_vec(), Some(b"4".to_vec()))],
        )
        .unwrap();
        let scan = |v: &dyn StateView, from: &[u8], to: Option<&[u8]>| {
            let mut out = Vec::new();
            v.scan(from, to, &mut |k, _| {
                out.push(k.to_vec());
                out.len() < 3
            })
            .unwrap();
            out
        };
        assert_eq!(scan(&*before, b"", None), [b"a", b"b", b"c"]);
        let after = s.state_view(1).unwrap();
        assert_eq!(scan(&*after, b"b", None), [b"b", b"d"]);
        assert_eq!(scan(&*after, b"a", Some(b"b")), [b"a"]);
        assert_eq!(before.get(b"c").unwrap(), Some(b"3".to_vec()));
        assert_eq!(after.get(b"c").unwrap(), None);
        assert_eq!(
            s.state_view(2).unwrap().get(b"a").unwrap(),
            Some(b"other".to_vec())
        );
        let mut dropped = s.state_stage(1).unwrap();
        dropped.write(&[(b"x".to_vec(), b"no".to_vec())]).unwrap();
        drop(dropped);
        let mut stage = s.state_stage(1).unwrap();
        stage.write(&[(b"y".to_vec(), b"new".to_vec())]).unwrap();
        assert_eq!(s.state_view(1).unwrap().get(b"y").unwrap(), None);
        stage.finish().unwrap();
        let replaced = s.state_view(1).unwrap();
        assert_eq!(scan(&*replaced, b"", None), [b"y"]);
        assert_eq!(
            after.get(b"a").unwrap(),
            Some(b"1".to_vec()),
            "old views stay"
        );
        // A group dropped (its replica moved away) is empty, and others keep theirs.
        s.put_meta(3, "vote", b"v").unwrap();
        s.append(3, &[(1, b"x".to_vec())]).unwrap();
        s.state_write(3, &[(b"k".to_vec(), Some(b"v".to_vec()))])
            .unwrap();
        s.drop_group(3, &["vote"]).unwrap();
        assert_eq!(s.get_meta(3, "vote").unwrap(), None);
        assert_eq!(s.last_entry(3).unwrap(), None);
        assert_eq!(s.state_view(3).unwrap().get(b"k").unwrap(), None);
        assert_eq!(s.get_meta(1, "vote").unwrap(), Some(b"v1".to_vec()));
        s.put_record(7, b"b", Some(b"2")).unwrap();
        s.put_record(7, b"a", Some(b"1")).unwrap();
        s.put_record(7, b"c", Some(b"3")).unwrap();
        s.put_record(8, b"a", Some(b"other space")).unwrap();
        s.put_record(7, b"c", None).unwrap();
        s.put_record(u64::MAX, b"", Some(b"last space")).unwrap();
        assert_eq!(
            s.records(7).unwrap(),
            vec![
                (b"a".to_vec(), b"1".to_vec()),
                (b"b".to_vec(), b"2".to_vec())
            ]
        );
        assert_eq!(s.records(u64::MAX).unwrap().len(), 1);
        assert_eq!(s.records(9).unwrap(), vec![]);
        s.sync().unwrap();
    }

    #[test]
    fn mem_store_keeps_the_contract() {
        check_contract(&MemStorage::new());
    }

    #[test]
    fn fjall_store_keeps_the_contract_and_survives_reopen() {
        let dir = tempfile::tempdir().unwrap();
        {
            let s = FjallStorage::open(dir.path()).unwrap();
            check_contract(&s);
        }
        let s = FjallStorage::open(dir.path()).unwrap();
        assert_eq!(s.entries(1, 0, 10).unwrap(), vec![(2, b"b".to_vec())]);
        assert_eq!(s.get_meta(1, "vote").unwrap(), Some(b"v1".to_vec()));
        assert_eq!(
            s.state_view(1).unwrap().get(b"y").unwrap(),
            Some(b"new".to_vec())
        );
        assert_eq!(s.state_view(1).unwrap().get(b"a").unwrap(), None);
        assert_eq!(s.records(7).unwrap().len(), 2);
    }
}
