//! In-memory [`Storage`] for unit tests and the simulator. Everything is "durable" at once; the
//! simulator's crash model (dropping unsynced writes) will extend this.

use crate::{log_key, meta_key, Group, LogRecord, Result, Storage};
use std::collections::BTreeMap;
use std::sync::Mutex;

#[derive(Default)]
pub struct MemStorage {
    // One lock for everything: tests and simulation only, never on a production hot path.
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    log: BTreeMap<[u8; 16], Vec<u8>>,
    meta: BTreeMap<Vec<u8>, Vec<u8>>,
    snapshots: BTreeMap<Group, Vec<u8>>,
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
}

impl Storage for MemStorage {
    fn append(&self, group: Group, records: &[LogRecord]) -> Result<()> {
        let mut g = self.lock();
        for (i, bytes) in records {
            g.log.insert(log_key(group, *i), bytes.clone());
        }
        Ok(())
    }

    fn entries(&self, group: Group, from: u64, to: u64) -> Result<Vec<LogRecord>> {
        if from >= to {
            return Ok(Vec::new());
        }
        let g = self.lock();
        Ok(g.log
            .range(log_key(group, from)..log_key(group, to))
            .map(|(k, v)| (index_of(k), v.clone()))
            .collect())
    }

    fn last_entry(&self, group: Group) -> Result<Option<LogRecord>> {
        let g = self.lock();
        Ok(g.log
            .range(log_key(group, 0)..=log_key(group, u64::MAX))
            .next_back()
            .map(|(k, v)| (index_of(k), v.clone())))
    }

    fn truncate_from(&self, group: Group, from: u64) -> Result<()> {
        let mut g = self.lock();
        let keys: Vec<_> = g
            .log
            .range(log_key(group, from)..=log_key(group, u64::MAX))
            .map(|(k, _)| *k)
            .collect();
        for k in keys {
            g.log.remove(&k);
        }
        Ok(())
    }

    fn purge_through(&self, group: Group, through: u64) -> Result<()> {
        let mut g = self.lock();
        let keys: Vec<_> = g
            .log
            .range(log_key(group, 0)..=log_key(group, through))
            .map(|(k, _)| *k)
            .collect();
        for k in keys {
            g.log.remove(&k);
        }
        Ok(())
    }

    fn put_meta(&self, group: Group, name: &str, value: &[u8]) -> Result<()> {
        self.lock()
            .meta
            .insert(meta_key(group, name), value.to_vec());
        Ok(())
    }

    fn get_meta(&self, group: Group, name: &str) -> Result<Option<Vec<u8>>> {
        Ok(self.lock().meta.get(&meta_key(group, name)).cloned())
    }

    fn put_snapshot(&self, group: Group, data: &[u8]) -> Result<()> {
        self.lock().snapshots.insert(group, data.to_vec());
        Ok(())
    }

    fn get_snapshot(&self, group: Group) -> Result<Option<Vec<u8>>> {
        Ok(self.lock().snapshots.get(&group).cloned())
    }

    fn sync(&self) -> Result<()> {
        Ok(())
    }
}

pub(crate) fn index_of(key: &[u8]) -> u64 {
    let mut b = [0u8; 8];
    b.copy_from_slice(&key[8..16]);
    u64::from_be_bytes(b)
}
