//! [`Storage`] on fjall: one database per node, three fjall keyspaces (`log`, `meta`, and
//! `records` for leaderless replicas and hints) shared by every group, so one journal sync covers appends of all shards (group commit). Snapshots
//! are whole files, written to a temporary name, synced, renamed and the directory synced.

use crate::mem_store::index_of;
use crate::{
    log_key, meta_key, record_key, Group, LogRecord, Result, Space, Storage, StorageError,
};
use fjall::{Database, Keyspace, KeyspaceCreateOptions, PersistMode};
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

pub struct FjallStorage {
    db: Database,
    log: Keyspace,
    meta: Keyspace,
    records: Keyspace,
    snapshot_dir: PathBuf,
}

fn engine(e: fjall::Error) -> StorageError {
    StorageError::Engine(e.to_string())
}

impl FjallStorage {
    /// Opens (or creates) the store under `dir`.
    pub fn open(dir: &Path) -> Result<FjallStorage> {
        fs::create_dir_all(dir)?;
        let db = Database::builder(dir.join("fjall"))
            .open()
            .map_err(engine)?;
        let log = db
            .keyspace("log", KeyspaceCreateOptions::default)
            .map_err(engine)?;
        let meta = db
            .keyspace("meta", KeyspaceCreateOptions::default)
            .map_err(engine)?;
        let records = db
            .keyspace("records", KeyspaceCreateOptions::default)
            .map_err(engine)?;
        let snapshot_dir = dir.join("snapshots");
        fs::create_dir_all(&snapshot_dir)?;
        Ok(FjallStorage {
            db,
            log,
            meta,
            records,
            snapshot_dir,
        })
    }

    fn snapshot_path(&self, group: Group) -> PathBuf {
        self.snapshot_dir.join(format!("{group:016x}.snap"))
    }
}

impl Storage for FjallStorage {
    fn append(&self, group: Group, records: &[LogRecord]) -> Result<()> {
        let mut batch = self.db.batch();
        for (index, bytes) in records {
            batch.insert(&self.log, log_key(group, *index).to_vec(), bytes.clone());
        }
        batch.commit().map_err(engine)
    }

    fn entries(&self, group: Group, from: u64, to: u64) -> Result<Vec<LogRecord>> {
        if from >= to {
            return Ok(Vec::new());
        }
        let mut out = Vec::new();
        for guard in self.log.range(log_key(group, from)..log_key(group, to)) {
            let (k, v) = guard.into_inner().map_err(engine)?;
            out.push((index_of(&k), v.to_vec()));
        }
        Ok(out)
    }

    fn last_entry(&self, group: Group) -> Result<Option<LogRecord>> {
        match self
            .log
            .range(log_key(group, 0)..=log_key(group, u64::MAX))
            .next_back()
        {
            None => Ok(None),
            Some(guard) => {
                let (k, v) = guard.into_inner().map_err(engine)?;
                Ok(Some((index_of(&k), v.to_vec())))
            }
        }
    }

    fn truncate_from(&self, group: Group, from: u64) -> Result<()> {
        let mut batch = self.db.batch();
        for guard in self
            .log
            .range(log_key(group, from)..=log_key(group, u64::MAX))
        {
            let k = guard.key().map_err(engine)?;
            batch.remove(&self.log, k);
        }
        batch.commit().map_err(engine)
    }

    fn purge_through(&self, group: Group, through: u64) -> Result<()> {
        let mut batch = self.db.batch();
        for guard in self.log.range(log_key(group, 0)..=log_key(group, through)) {
            let k = guard.key().map_err(engine)?;
            batch.remove(&self.log, k);
        }
        batch.commit().map_err(engine)
    }

    fn put_meta(&self, group: Group, name: &str, value: &[u8]) -> Result<()> {
        self.meta
            .insert(meta_key(group, name), value.to_vec())
            .map_err(engine)
    }

    fn get_meta(&self, group: Group, name: &str) -> Result<Option<Vec<u8>>> {
        Ok(self
            .meta
            .get(meta_key(group, name))
            .map_err(engine)?
            .map(|v| v.to_vec()))
    }

    fn put_snapshot(&self, group: Group, data: &[u8]) -> Result<()> {
        let path = self.snapshot_path(group);
        let tmp = path.with_extension("tmp");
        {
            let mut f = fs::File::create(&tmp)?;
            f.write_all(data)?;
            f.sync_all()?;
        }
        fs::rename(&tmp, &path)?;
        fs::File::open(&self.snapshot_dir)?.sync_all()?;
        Ok(())
    }

    fn get_snapshot(&self, group: Group) -> Result<Option<Vec<u8>>> {
        match fs::read(self.snapshot_path(group)) {
            Ok(bytes) => Ok(Some(bytes)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    fn put_record(&self, space: Space, key: &[u8], value: Option<&[u8]>) -> Result<()> {
        let k = record_key(space, key);
        match value {
            Some(v) => self.records.insert(k, v.to_vec()),
            None => self.records.remove(k),
        }
        .map_err(engine)
    }

    fn records(&self, space: Space) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
        let mut out = Vec::new();
        for guard in self.records.prefix(space.to_be_bytes()) {
            let (k, v) = guard.into_inner().map_err(engine)?;
            out.push((k[8..].to_vec(), v.to_vec()));
        }
        Ok(out)
    }

    fn sync(&self) -> Result<()> {
        self.db.persist(PersistMode::SyncData).map_err(engine)
    }
}
