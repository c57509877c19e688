//! Hot values: the values a group's copy recently served, kept decoded in memory, so a read
//! of a key read before costs a hash lookup instead of an LSM-tree search and a decode
//! (issue 21: "a RESP GET at eventual on a caught-up copy should cost little more than a hash
//! lookup").
//!
//! One rule keeps them exact: an entry filled from a view at applied index `a` holds the
//! key's value at every index from `a` up to the applier's gate, because the applier removes
//! every key a batch changes, and moves the gate, before it announces the batch applied. So:
//!
//! - a fill is taken only from a view at the gate's index (checked under the gate's read
//!   lock, which the applier's invalidation takes for writing): a view older than the gate
//!   might hold a value a later batch already changed and invalidated;
//! - a lookup at the announced applied index `a` (never above the gate) uses an entry only if
//!   it was filled at or before `a`;
//! - installing a snapshot empties them; a closed copy serves none.
//!
//! A lookup answers only when every key of the read is there, so one read never mixes an
//! entry with a view. Memory is bounded per copy by `[storage] hot_values_bytes`
//! (quick_cache evicts the coldest); 0 turns it off.

use crate::types::StoredValue;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock, RwLock};

/// How a group's hot values are kept.
#[derive(Clone, Copy, Debug)]
pub struct HotLimits {
    /// Most bytes of keys and values kept (0: none).
    pub bytes: u64,
    /// Bug injection `stale-hot-values`: the applier leaves the values a batch changed in
    /// memory, so reads keep serving what the state no longer holds.
    pub keep_stale: bool,
}

impl Default for HotLimits {
    fn default() -> HotLimits {
        HotLimits {
            bytes: HOT_VALUES_BYTES_DEFAULT,
            keep_stale: false,
        }
    }
}

/// Default [`HotLimits::bytes`]: 4 MiB per copy of a shard.
pub const HOT_VALUES_BYTES_DEFAULT: u64 = 4 << 20;

/// What an entry costs beyond its key and value bytes (the record's fields, the map's slot).
const ENTRY_OVERHEAD_BYTES: u64 = 96;

#[derive(Clone)]
struct Entry {
    /// The applied index of the view it was read from.
    from: u64,
    /// `None`: the key was absent.
    value: Option<Arc<StoredValue>>,
}

#[derive(Clone)]
struct Weigh;

impl quick_cache::Weighter<Vec<u8>, Entry> for Weigh {
    fn weight(&self, key: &Vec<u8>, e: &Entry) -> u64 {
        key.len() as u64
            + e.value.as_ref().map_or(0, |v| v.value.len() as u64)
            + ENTRY_OVERHEAD_BYTES
    }
}

type Map = quick_cache::sync::Cache<Vec<u8>, Entry, Weigh>;

pub(crate) struct Hot {
    limits: HotLimits,
    /// The applied index up to which every changed key was removed.
    gate: RwLock<u64>,
    /// Made on the first fill: a copy nobody reads costs nothing.
    map: OnceLock<Map>,
    /// Reads answered here, and reads sent to a view while hot values are on.
    hits: AtomicU64,
    misses: AtomicU64,
}

/// What a copy's hot values did (`GET /metrics`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HotStats {
    pub hits: u64,
    pub misses: u64,
    pub bytes: u64,
}

impl Hot {
    pub(crate) fn new(limits: HotLimits, applied: u64) -> Hot {
        Hot {
            limits,
            gate: RwLock::new(applied),
            map: OnceLock::new(),
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
        }
    }

    /// The values of `keys` at applied index `at` (the announced one), if every key is here.
    pub(crate) fn get_all<K: AsRef<[u8]>>(
        &self,
        keys: &[K],
        at: u64,
    ) -> Option<Vec<Option<Arc<StoredValue>>>> {
        if self.limits.bytes == 0 {
            return None;
        }
        let found = self.map.get().and_then(|map| {
            let mut out = Vec::with_capacity(keys.len());
            for k in keys {
                let e = map.get(k.as_ref())?;
                if e.from > at {
                    return None;
                }
                out.push(e.value);
            }
            Some(out)
        });
        let counter = if found.is_some() {
            &self.hits
        } else {
            &self.misses
        };
        counter.fetch_add(1, Ordering::Relaxed);
        found
    }

    /// Keeps `key`'s `value` read from a view at applied index `at`, if that is the gate's.
    pub(crate) fn fill(&self, at: u64, key: &[u8], value: Option<&Arc<StoredValue>>) {
        if self.limits.bytes == 0 {
            return;
        }
        let gate = self.gate.read().unwrap_or_else(|p| p.into_inner());
        if *gate != at {
            return;
        }
        let map = self.map.get_or_init(|| {
            let items = (self.limits.bytes / 256).clamp(16, 4096) as usize;
            Map::with_weighter(items, self.limits.bytes, Weigh)
        });
        map.insert(
            key.to_vec(),
            Entry {
                from: at,
                value: value.cloned(),
            },
        );
    }

    /// A batch up to `applied` changed `keys`: they go, and the gate moves.
    pub(crate) fn applied<'a>(&self, applied: u64, keys: impl Iterator<Item = &'a [u8]>) {
        let mut gate = self.gate.write().unwrap_or_else(|p| p.into_inner());
        if let Some(map) = self.map.get() {
            if !self.limits.keep_stale && !map.is_empty() {
                for k in keys {
                    map.remove(k);
                }
            }
        }
        *gate = applied;
    }

    /// The whole state was replaced (a snapshot installed, the copy closed).
    pub(crate) fn reset(&self, applied: u64) {
        let mut gate = self.gate.write().unwrap_or_else(|p| p.into_inner());
        if let Some(map) = self.map.get() {
            map.clear();
        }
        *gate = applied;
    }

    /// Bytes held now.
    pub(crate) fn bytes(&self) -> u64 {
        self.map.get().map_or(0, |m| m.weight())
    }

    pub(crate) fn stats(&self) -> HotStats {
        HotStats {
            hits: self.hits.load(Ordering::Relaxed),
            misses: self.misses.load(Ordering::Relaxed),
            bytes: self.bytes(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(s: &str, index: u64) -> Arc<StoredValue> {
        Arc::new(StoredValue {
            value: s.as_bytes().to_vec(),
            create_index: 1,
            mod_index: index,
            commit_ts: 0,
            expires_ms: None,
        })
    }

    #[test]
    fn entries_serve_only_the_states_they_were_read_in() {
        let hot = Hot::new(HotLimits::default(), 5);
        assert!(hot.get_all(&[b"a"], 5).is_none(), "nothing kept yet");
        // A view older than the gate fills nothing: a later batch may have changed the key.
        hot.fill(4, b"a", Some(&v("old", 3)));
        assert!(hot.get_all(&[b"a"], 5).is_none());
        hot.fill(5, b"a", Some(&v("x", 5)));
        hot.fill(5, b"b", None);
        let got = hot.get_all(&[&b"a"[..], b"b"], 5).unwrap();
        assert_eq!(got, vec![Some(v("x", 5)), None]);
        // A read at an earlier announced index does not take an entry filled later.
        assert!(hot.get_all(&[b"a"], 4).is_none());
        // A batch that changes a goes through the gate: a is gone, b stays.
        hot.applied(6, [&b"a"[..]].into_iter());
        assert!(hot.get_all(&[b"a"], 6).is_none());
        assert_eq!(hot.get_all(&[b"b"], 6).unwrap(), vec![None]);
        // A reader still holding a view at 5 fills nothing now.
        hot.fill(5, b"a", Some(&v("x", 5)));
        assert!(hot.get_all(&[b"a"], 6).is_none());
        // A snapshot replaces everything.
        hot.reset(9);
        assert!(hot.get_all(&[b"b"], 9).is_none());
        let stats = hot.stats();
        assert_eq!((stats.hits, stats.misses), (2, 6));
    }

    #[test]
    fn the_stale_bug_keeps_changed_values_and_zero_bytes_keeps_none() {
        let bugged = Hot::new(
            HotLimits {
                keep_stale: true,
                ..HotLimits::default()
            },
            1,
        );
        bugged.fill(1, b"a", Some(&v("x", 1)));
        bugged.applied(2, [&b"a"[..]].into_iter());
        assert_eq!(bugged.get_all(&[b"a"], 2).unwrap(), vec![Some(v("x", 1))]);
        let off = Hot::new(
            HotLimits {
                bytes: 0,
                keep_stale: false,
            },
            1,
        );
        off.fill(1, b"a", Some(&v("x", 1)));
        assert!(off.get_all(&[b"a"], 1).is_none());
        assert_eq!(off.bytes(), 0);
    }

    #[test]
    fn memory_stays_within_the_limit() {
        let hot = Hot::new(
            HotLimits {
                bytes: 64 << 10,
                keep_stale: false,
            },
            1,
        );
        let big = "v".repeat(1000);
        for i in 0..1000u32 {
            hot.fill(1, &i.to_be_bytes(), Some(&v(&big, 1)));
        }
        assert!(hot.bytes() <= 64 << 10, "{} bytes kept", hot.bytes());
        assert!(hot.bytes() > 0);
    }
}
