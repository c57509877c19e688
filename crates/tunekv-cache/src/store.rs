//! The cache's memory: entries bounded by bytes in a `quick_cache` (S3-FIFO-like eviction,
//! weighted, no background threads). What an entry means — the position at which it is known
//! current — is `copy.rs`'s business; this module only holds, weighs and evicts.

use bytes::Bytes;
use quick_cache::sync::Cache as Qc;
use quick_cache::{DefaultHashBuilder, Lifecycle, Weighter};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use tokio::time::Instant;

/// Bytes counted per entry beyond its key and value (the entry's fields and the map's slot).
pub const ENTRY_OVERHEAD_BYTES: u64 = 96;

/// One cached key of an ordered keyspace.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    /// The value; `None`: the key is absent (a cached absence).
    pub value: Option<Bytes>,
    /// The key's version: the index of the write that made the value (0 when absent).
    pub version: u64,
    /// The shard position at which this entry is known to be the key's state: the index the
    /// fill read at, or of the change or write that set it. With the feed applied up to `F`,
    /// the entry is the key's state at every position from `since` to `max(since, F)`.
    pub since: u64,
    /// Commit time (ms) of the newest change known at or below `since`.
    pub commit_ms: u64,
    /// The value's own expiry (Unix ms), if it has one.
    pub expires_ms: Option<u64>,
    /// The cache's TTL: the entry is not served after this.
    pub deadline: Instant,
    /// The keyspace's epoch when it was filled; entries of another epoch are unreachable.
    pub epoch: u64,
    /// The keyspace's namespace version when it was filled: a later bump of a prefix of the
    /// key makes it unreachable (versioned keys, `INVALIDATE PREFIX`).
    pub gen: u64,
}

#[derive(Clone)]
struct ByBytes;

impl Weighter<Vec<u8>, Arc<Entry>> for ByBytes {
    fn weight(&self, key: &Vec<u8>, e: &Arc<Entry>) -> u64 {
        key.len() as u64 + e.value.as_ref().map_or(0, |v| v.len() as u64) + ENTRY_OVERHEAD_BYTES
    }
}

/// Counts entries evicted to stay within the memory bound.
#[derive(Clone, Default)]
struct Evictions(Arc<AtomicU64>);

impl Lifecycle<Vec<u8>, Arc<Entry>> for Evictions {
    type RequestState = ();

    fn begin_request(&self) {}

    fn on_evict(&self, _: &mut (), _: Vec<u8>, _: Arc<Entry>) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }
}

pub struct Store {
    map: Qc<Vec<u8>, Arc<Entry>, ByBytes, DefaultHashBuilder, Evictions>,
    evictions: Evictions,
}

/// The store's key: the keyspace id, then the key, so keyspaces never collide.
fn slot(keyspace_id: u64, key: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(8 + key.len());
    k.extend_from_slice(&keyspace_id.to_be_bytes());
    k.extend_from_slice(key);
    k
}

impl Store {
    pub fn new(memory_bytes: u64) -> Store {
        let items = usize::try_from(memory_bytes / 512)
            .unwrap_or(usize::MAX)
            .max(64);
        let evictions = Evictions::default();
        Store {
            map: Qc::with(
                items,
                memory_bytes,
                ByBytes,
                DefaultHashBuilder::default(),
                evictions.clone(),
            ),
            evictions,
        }
    }

    pub fn get(&self, keyspace_id: u64, key: &[u8]) -> Option<Arc<Entry>> {
        self.map.get(&slot(keyspace_id, key))
    }

    pub fn insert(&self, keyspace_id: u64, key: &[u8], entry: Entry) {
        self.map.insert(slot(keyspace_id, key), Arc::new(entry));
    }

    pub fn remove(&self, keyspace_id: u64, key: &[u8]) {
        self.map.remove(&slot(keyspace_id, key));
    }

    /// Up to `max` keys held, as (keyspace id, key).
    pub fn keys(&self, max: usize) -> Vec<(u64, Vec<u8>)> {
        self.map
            .iter()
            .take(max)
            .filter_map(|(k, _)| {
                let id = u64::from_be_bytes(k.get(..8)?.try_into().ok()?);
                Some((id, k[8..].to_vec()))
            })
            .collect()
    }

    /// Entries held and their weight in bytes.
    pub fn usage(&self) -> (usize, u64) {
        (self.map.len(), self.map.weight())
    }

    /// Entries evicted to stay within the memory bound since start.
    pub fn evictions(&self) -> u64 {
        self.evictions.0.load(Ordering::Relaxed)
    }

    pub fn capacity(&self) -> u64 {
        self.map.capacity()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(value: &[u8]) -> Entry {
        Entry {
            value: Some(Bytes::copy_from_slice(value)),
            version: 1,
            since: 1,
            commit_ms: 0,
            expires_ms: None,
            deadline: Instant::now(),
            epoch: 0,
            gen: 0,
        }
    }

    #[test]
    fn memory_is_bounded_by_bytes() {
        let store = Store::new(1 << 20);
        for i in 0..10_000u32 {
            store.insert(1, &i.to_be_bytes(), entry(&[7; 1000]));
        }
        let (_, bytes) = store.usage();
        assert!(bytes <= 1 << 20, "{bytes} bytes held");
        // Keyspaces are apart.
        store.insert(1, b"k", entry(b"one"));
        store.insert(2, b"k", entry(b"two"));
        assert_eq!(
            store.get(1, b"k").unwrap().value.as_deref(),
            Some(&b"one"[..])
        );
        assert_eq!(
            store.get(2, b"k").unwrap().value.as_deref(),
            Some(&b"two"[..])
        );
    }
}
