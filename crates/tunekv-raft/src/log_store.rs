//! openraft's log storage on tunekv-storage. Entries are postcard-encoded; see docs/formats.md.

use crate::{invalid_data, TypeConfig};
use openraft::alias::{EntryOf, LogIdOf, VoteOf};
use openraft::entry::RaftEntry;
use openraft::storage::{IOFlushed, LogState, RaftLogReader, RaftLogStorage};
use std::fmt::Debug;
use std::io;
use std::ops::{Bound, RangeBounds};
use std::sync::Arc;
use tunekv_storage::{GroupCommit, Storage};

const META_VOTE: &str = "vote";
const META_COMMITTED: &str = "committed";
const META_PURGED: &str = "purged";
/// Every named value a group's log keeps ([`tunekv_storage::Storage::drop_group`] forgets them).
pub const LOG_META_NAMES: &[&str] = &[META_VOTE, META_COMMITTED, META_PURGED];

/// Most entries one read returns; openraft asks again for the rest.
pub const READ_ENTRIES_MAX: u64 = 4096;
/// Most bytes of entries one replication batch reads (and so sends): a batch stops at the
/// entry that reaches it, so a batch holds at most this plus one entry. Before issue 15 a
/// lagging follower was sent 300 entries at once, which with 16 MiB values made a 285 MB frame
/// the link refused, over and over, with gigabytes held in memory.
pub const REPLICATION_BATCH_BYTES_MAX: usize = 8 * 1024 * 1024;

#[derive(Clone)]
pub struct LogStore {
    group: u64,
    storage: Arc<dyn Storage>,
    // Shared by every group of the node: one fsync covers all their appends.
    commit: GroupCommit,
    // Purges counted for metrics (shared with the group's `ShardData`).
    counters: Arc<crate::state_machine::RaftCounters>,
}

impl LogStore {
    pub fn new(group: u64, storage: Arc<dyn Storage>, commit: GroupCommit) -> Self {
        LogStore {
            group,
            storage,
            commit,
            counters: Arc::default(),
        }
    }

    /// Counts purges in `counters` (the group's `ShardData::counters`).
    pub fn counting(mut self, counters: Arc<crate::state_machine::RaftCounters>) -> Self {
        self.counters = counters;
        self
    }

    fn get<T: serde::de::DeserializeOwned>(&self, name: &str) -> io::Result<Option<T>> {
        match self.storage.get_meta(self.group, name)? {
            None => Ok(None),
            Some(bytes) => postcard::from_bytes(&bytes).map(Some).map_err(invalid_data),
        }
    }

    fn put<T: serde::Serialize>(&self, name: &str, value: &T) -> io::Result<()> {
        let bytes = postcard::to_stdvec(value).map_err(invalid_data)?;
        Ok(self.storage.put_meta(self.group, name, &bytes)?)
    }
}

fn decode(bytes: &[u8]) -> io::Result<EntryOf<TypeConfig>> {
    postcard::from_bytes(bytes).map_err(invalid_data)
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + Send>(
        &mut self,
        range: RB,
    ) -> Result<Vec<EntryOf<TypeConfig>>, io::Error> {
        let from = match range.start_bound() {
            Bound::Included(&i) => i,
            Bound::Excluded(&i) => i.saturating_add(1),
            Bound::Unbounded => 0,
        };
        let to = match range.end_bound() {
            Bound::Included(&i) => i.saturating_add(1),
            Bound::Excluded(&i) => i,
            Bound::Unbounded => u64::MAX,
        };
        let to = to.min(from.saturating_add(READ_ENTRIES_MAX));
        let records = self.storage.entries(self.group, from, to)?;
        records.iter().map(|(_, bytes)| decode(bytes)).collect()
    }

    /// The replication path's read: bounded by bytes as well as by count.
    async fn limited_get_log_entries(
        &mut self,
        start: u64,
        end: u64,
    ) -> Result<Vec<EntryOf<TypeConfig>>, io::Error> {
        let end = end.min(start.saturating_add(READ_ENTRIES_MAX));
        let records =
            self.storage
                .entries_bounded(self.group, start, end, REPLICATION_BATCH_BYTES_MAX)?;
        records.iter().map(|(_, bytes)| decode(bytes)).collect()
    }

    async fn read_vote(&mut self) -> Result<Option<VoteOf<TypeConfig>>, io::Error> {
        self.get(META_VOTE)
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = Self;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, io::Error> {
        let purged: Option<LogIdOf<TypeConfig>> = self.get(META_PURGED)?;
        let last = match self.storage.last_entry(self.group)? {
            Some((_, bytes)) => Some(decode(&bytes)?.log_id()),
            None => purged,
        };
        Ok(LogState {
            last_purged_log_id: purged,
            last_log_id: last,
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &VoteOf<TypeConfig>) -> Result<(), io::Error> {
        self.put(META_VOTE, vote)?;
        // A vote must be durable before it is acted on (Raft safety).
        self.commit.sync().await.map_err(io::Error::from)
    }

    async fn save_committed(
        &mut self,
        committed: Option<LogIdOf<TypeConfig>>,
    ) -> Result<(), io::Error> {
        // A hint for faster restart; a lower value after a crash is safe, so no sync.
        self.put(META_COMMITTED, &committed)
    }

    async fn read_committed(&mut self) -> Result<Option<LogIdOf<TypeConfig>>, io::Error> {
        Ok(self
            .get::<Option<LogIdOf<TypeConfig>>>(META_COMMITTED)?
            .flatten())
    }

    async fn append<I>(
        &mut self,
        entries: I,
        callback: IOFlushed<TypeConfig>,
    ) -> Result<(), io::Error>
    where
        I: IntoIterator<Item = EntryOf<TypeConfig>> + Send,
        I::IntoIter: Send,
    {
        let mut records = Vec::new();
        for entry in entries {
            let bytes = postcard::to_stdvec(&entry).map_err(invalid_data)?;
            records.push((entry.index(), bytes));
        }
        self.storage.append(self.group, &records)?;
        // Acknowledge only once durable: this is where group commit happens.
        self.commit
            .sync_then(move |res| callback.io_completed(res.map_err(io::Error::other)));
        Ok(())
    }

    async fn truncate_after(
        &mut self,
        last_log_id: Option<LogIdOf<TypeConfig>>,
    ) -> Result<(), io::Error> {
        let from = last_log_id.map(|id| id.index() + 1).unwrap_or(0);
        Ok(self.storage.truncate_from(self.group, from)?)
    }

    async fn purge(&mut self, log_id: LogIdOf<TypeConfig>) -> Result<(), io::Error> {
        // Record the purge point first: the journal keeps write order, so a crash in between
        // leaves a purge point with extra entries, never missing entries without a purge point.
        self.put(META_PURGED, &log_id)?;
        self.storage.purge_through(self.group, log_id.index())?;
        self.counters
            .purges
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Ok(())
    }
}
