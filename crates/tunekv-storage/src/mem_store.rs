//! In-memory [`Storage`] for unit tests and the simulator, with a crash model: writes are
//! visible at once but durable only after [`Storage::sync`] (snapshots at once, as on disk).
//! [`MemStorage::crash`] throws away a suffix of the unsynced writes, as a process killed
//! before its fsync would lose them, and the storage then reads as the disk would after a
//! restart.

use crate::{log_key, meta_key, record_key, Group, LogRecord, Result, Space, Storage};
use std::collections::BTreeMap;
use std::sync::Mutex;

#[derive(Default)]
pub struct MemStorage {
    // One lock for everything: tests and simulation only, never on a production hot path.
    inner: Mutex<Inner>,
}

#[derive(Clone, Default)]
struct Data {
    log: BTreeMap<[u8; 16], Vec<u8>>,
    meta: BTreeMap<Vec<u8>, Vec<u8>>,
    records: BTreeMap<Vec<u8>, Vec<u8>>,
    snapshots: BTreeMap<Group, Vec<u8>>,
}

/// One `Storage` call: one atomic batch in the journal, as in fjall.
enum Write {
    Append(Group, Vec<LogRecord>),
    TruncateFrom(Group, u64),
    PurgeThrough(Group, u64),
    Meta(Vec<u8>, Vec<u8>),
    Record(Vec<u8>, Option<Vec<u8>>),
}

#[derive(Default)]
struct Inner {
    /// What reads see.
    live: Data,
    /// What a restart would find.
    durable: Data,
    /// Writes since the last sync, in order.
    pending: Vec<Write>,
}

impl Data {
    fn apply(&mut self, w: &Write) {
        match w {
            Write::Append(group, records) => {
                for (i, bytes) in records {
                    self.log.insert(log_key(*group, *i), bytes.clone());
                }
            }
            Write::TruncateFrom(group, from) => {
                self.remove(log_key(*group, *from), log_key(*group, u64::MAX));
            }
            Write::PurgeThrough(group, through) => {
                self.remove(log_key(*group, 0), log_key(*group, *through));
            }
            Write::Meta(key, value) => {
                self.meta.insert(key.clone(), value.clone());
            }
            Write::Record(key, Some(value)) => {
                self.records.insert(key.clone(), value.clone());
            }
            Write::Record(key, None) => {
                self.records.remove(key);
            }
        }
    }

    fn remove(&mut self, from: [u8; 16], through: [u8; 16]) {
        let keys: Vec<_> = self.log.range(from..=through).map(|(k, _)| *k).collect();
        for k in keys {
            self.log.remove(&k);
        }
    }
}

impl MemStorage {
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A poisoned lock means a test thread panicked mid-write; the data is still consistent
        // for our simple maps, so keep going.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn write(&self, w: Write) -> Result<()> {
        let mut g = self.lock();
        g.live.apply(&w);
        g.pending.push(w);
        Ok(())
    }

    /// Writes made since the last sync.
    pub fn unsynced(&self) -> usize {
        self.lock().pending.len()
    }

    /// A crash: the first `keep` unsynced writes reach the disk (the journal is written in
    /// order, so a crash keeps a prefix), the rest are lost, and reads from now on see what a
    /// restarted process would. Returns how many writes were lost.
    pub fn crash(&self, keep: usize) -> usize {
        let mut g = self.lock();
        let pending = std::mem::take(&mut g.pending);
        let keep = keep.min(pending.len());
        for w in &pending[..keep] {
            g.durable.apply(w);
        }
        g.live = g.durable.clone();
        pending.len() - keep
    }
}

impl Storage for MemStorage {
    fn append(&self, group: Group, records: &[LogRecord]) -> Result<()> {
        self.write(Write::Append(group, records.to_vec()))
    }

    fn entries(&self, group: Group, from: u64, to: u64) -> Result<Vec<LogRecord>> {
        if from >= to {
            return Ok(Vec::new());
        }
        let g = self.lock();
        Ok(g.live
            .log
            .range(log_key(group, from)..log_key(group, to))
            .map(|(k, v)| (index_of(k), v.clone()))
            .collect())
    }

    fn last_entry(&self, group: Group) -> Result<Option<LogRecord>> {
        let g = self.lock();
        Ok(g.live
            .log
            .range(log_key(group, 0)..=log_key(group, u64::MAX))
            .next_back()
            .map(|(k, v)| (index_of(k), v.clone())))
    }

    fn truncate_from(&self, group: Group, from: u64) -> Result<()> {
        self.write(Write::TruncateFrom(group, from))
    }

    fn purge_through(&self, group: Group, through: u64) -> Result<()> {
        self.write(Write::PurgeThrough(group, through))
    }

    fn put_meta(&self, group: Group, name: &str, value: &[u8]) -> Result<()> {
        self.write(Write::Meta(meta_key(group, name), value.to_vec()))
    }

    fn get_meta(&self, group: Group, name: &str) -> Result<Option<Vec<u8>>> {
        Ok(self.lock().live.meta.get(&meta_key(group, name)).cloned())
    }

    fn put_record(&self, space: Space, key: &[u8], value: Option<&[u8]>) -> Result<()> {
        self.write(Write::Record(
            record_key(space, key),
            value.map(<[u8]>::to_vec),
        ))
    }

    fn records(&self, space: Space) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
        let g = self.lock();
        let from = space.to_be_bytes().to_vec();
        Ok(g.live
            .records
            .range(from.clone()..)
            .take_while(|(k, _)| k.starts_with(&from))
            .map(|(k, v)| (k[8..].to_vec(), v.clone()))
            .collect())
    }

    fn put_snapshot(&self, group: Group, data: &[u8]) -> Result<()> {
        // A snapshot is its own file, synced before this returns.
        let mut g = self.lock();
        g.live.snapshots.insert(group, data.to_vec());
        g.durable.snapshots.insert(group, data.to_vec());
        Ok(())
    }

    fn get_snapshot(&self, group: Group) -> Result<Option<Vec<u8>>> {
        Ok(self.lock().live.snapshots.get(&group).cloned())
    }

    fn sync(&self) -> Result<()> {
        let mut g = self.lock();
        let pending = std::mem::take(&mut g.pending);
        for w in &pending {
            g.durable.apply(w);
        }
        Ok(())
    }

    fn sync_blocks(&self) -> bool {
        false
    }
}

pub(crate) fn index_of(key: &[u8]) -> u64 {
    let mut b = [0u8; 8];
    b.copy_from_slice(&key[8..16]);
    u64::from_be_bytes(b)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_crash_keeps_synced_writes_and_a_prefix_of_the_rest() {
        let s = MemStorage::new();
        s.append(1, &[(1, b"a".to_vec())]).unwrap();
        s.put_meta(1, "vote", b"v1").unwrap();
        s.sync().unwrap();
        s.append(1, &[(2, b"b".to_vec())]).unwrap();
        s.put_meta(1, "vote", b"v2").unwrap();
        s.append(1, &[(3, b"c".to_vec())]).unwrap();
        assert_eq!(s.unsynced(), 3);
        assert_eq!(s.crash(1), 2, "two writes lost");
        assert_eq!(
            s.entries(1, 0, 10).unwrap(),
            vec![(1, b"a".to_vec()), (2, b"b".to_vec())]
        );
        assert_eq!(s.get_meta(1, "vote").unwrap(), Some(b"v1".to_vec()));
        assert_eq!(s.unsynced(), 0);
        // Nothing unsynced: a crash loses nothing.
        s.truncate_from(1, 2).unwrap();
        s.sync().unwrap();
        assert_eq!(s.crash(0), 0);
        assert_eq!(s.entries(1, 0, 10).unwrap(), vec![(1, b"a".to_vec())]);
    }

    #[test]
    fn snapshots_are_durable_when_written() {
        let s = MemStorage::new();
        s.put_snapshot(3, b"snap").unwrap();
        s.crash(0);
        assert_eq!(s.get_snapshot(3).unwrap(), Some(b"snap".to_vec()));
    }
}
