//! In-memory [`Storage`] for unit tests and the simulator, with a crash model: writes are
//! visible at once but durable only after [`Storage::sync`] (snapshots at once, as on disk).
//! [`MemStorage::crash`] throws away a suffix of the unsynced writes, as a process killed
//! before its fsync would lose them, and the storage then reads as the disk would after a
//! restart.

use crate::{
    log_key, meta_key, record_key, Group, LogRecord, Result, Space, StateStage, StateView,
    StateWrite, Storage,
};
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

#[derive(Default)]
pub struct MemStorage {
    // One lock for everything: tests and simulation only, never on a production hot path.
    inner: Arc<Mutex<Inner>>,
}

/// One group's state-machine records. Shared with the views taken of it: a write while a view
/// is held copies the map (fine for tests and simulation, whose states are small).
type StateMap = Arc<BTreeMap<Vec<u8>, Vec<u8>>>;

#[derive(Clone, Default)]
struct Data {
    log: BTreeMap<[u8; 16], Vec<u8>>,
    meta: BTreeMap<Vec<u8>, Vec<u8>>,
    records: BTreeMap<Vec<u8>, Vec<u8>>,
    states: BTreeMap<Group, StateMap>,
}

/// One `Storage` call: one atomic batch in the journal, as in fjall.
enum Write {
    Append(Group, Vec<LogRecord>),
    TruncateFrom(Group, u64),
    PurgeThrough(Group, u64),
    Meta(Vec<u8>, Option<Vec<u8>>),
    Record(Vec<u8>, Option<Vec<u8>>),
    State(Group, Vec<StateWrite>),
}

struct MemView(StateMap);

impl StateView for MemView {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>> {
        Ok(self.0.get(key).cloned())
    }

    fn size_of(&self, key: &[u8]) -> Result<Option<u64>> {
        Ok(self.0.get(key).map(|v| v.len() as u64))
    }

    fn scan(
        &self,
        from: &[u8],
        to: Option<&[u8]>,
        visit: &mut dyn FnMut(&[u8], &[u8]) -> bool,
    ) -> Result<()> {
        for (k, v) in self.0.range(from.to_vec()..) {
            if to.is_some_and(|to| k.as_slice() >= to) || !visit(k, v) {
                break;
            }
        }
        Ok(())
    }
}

struct MemStage {
    inner: Arc<Mutex<Inner>>,
    group: Group,
    records: BTreeMap<Vec<u8>, Vec<u8>>,
}

impl StateStage for MemStage {
    fn write(&mut self, records: &[(Vec<u8>, Vec<u8>)]) -> Result<()> {
        self.records.extend(records.iter().cloned());
        Ok(())
    }

    fn finish(self: Box<Self>) -> Result<()> {
        // As on disk: everything before is synced, then the new state replaces the old one
        // in a single durable step.
        let mut g = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        g.sync();
        let map: StateMap = Arc::new(self.records);
        g.live.states.insert(self.group, map.clone());
        g.durable.states.insert(self.group, map);
        Ok(())
    }
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

impl Inner {
    fn sync(&mut self) {
        let pending = std::mem::take(&mut self.pending);
        for w in &pending {
            self.durable.apply(w);
        }
    }
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
            Write::Meta(key, Some(value)) => {
                self.meta.insert(key.clone(), value.clone());
            }
            Write::Meta(key, None) => {
                self.meta.remove(key);
            }
            Write::Record(key, Some(value)) => {
                self.records.insert(key.clone(), value.clone());
            }
            Write::Record(key, None) => {
                self.records.remove(key);
            }
            Write::State(group, writes) => {
                let map = Arc::make_mut(self.states.entry(*group).or_default());
                for (k, v) in writes {
                    match v {
                        Some(v) => map.insert(k.clone(), v.clone()),
                        None => map.remove(k),
                    };
                }
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
        self.write(Write::Meta(meta_key(group, name), Some(value.to_vec())))
    }

    fn delete_meta(&self, group: Group, name: &str) -> Result<()> {
        self.write(Write::Meta(meta_key(group, name), None))
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

    fn state_view(&self, group: Group) -> Result<Arc<dyn StateView>> {
        let map = self
            .lock()
            .live
            .states
            .get(&group)
            .cloned()
            .unwrap_or_default();
        Ok(Arc::new(MemView(map)))
    }

    fn state_write(&self, group: Group, writes: &[StateWrite]) -> Result<()> {
        self.write(Write::State(group, writes.to_vec()))
    }

    fn state_stage(&self, group: Group) -> Result<Box<dyn StateStage>> {
        Ok(Box::new(MemStage {
            inner: self.inner.clone(),
            group,
            records: BTreeMap::new(),
        }))
    }

    fn sync(&self) -> Result<()> {
        self.lock().sync();
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
    fn states_are_lost_with_unsynced_writes_and_staged_states_are_durable_when_finished() {
        let s = MemStorage::new();
        s.state_write(3, &[(b"a".to_vec(), Some(b"1".to_vec()))])
            .unwrap();
        s.sync().unwrap();
        let view = s.state_view(3).unwrap();
        s.state_write(
            3,
            &[(b"a".to_vec(), None), (b"b".to_vec(), Some(b"2".to_vec()))],
        )
        .unwrap();
        assert_eq!(
            view.get(b"a").unwrap(),
            Some(b"1".to_vec()),
            "views are frozen"
        );
        assert_eq!(s.crash(0), 1);
        assert_eq!(s.state_view(3).unwrap().get(b"b").unwrap(), None);
        let mut stage = s.state_stage(3).unwrap();
        stage.write(&[(b"z".to_vec(), b"9".to_vec())]).unwrap();
        s.append(3, &[(1, b"entry".to_vec())]).unwrap();
        stage.finish().unwrap();
        s.crash(0);
        let now = s.state_view(3).unwrap();
        assert_eq!(
            (now.get(b"a").unwrap(), now.get(b"z").unwrap()),
            (None, Some(b"9".to_vec()))
        );
        assert_eq!(s.entries(3, 0, 9).unwrap().len(), 1, "synced by finish");
    }
}
