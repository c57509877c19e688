//! `GET /metrics` of a cache: the requests, served staleness and connections its front ends
//! count (`Cache::metrics`), and the cache's own counters read at each scrape — hits, misses,
//! coalesced reads, fills, evictions, memory, the write-behind queue and the calls it makes
//! to the store (docs/observability.md).

use crate::cache::Cache;
use prometheus_client::registry::{Registry, Unit};
use std::sync::atomic::{AtomicU64, Ordering};
use tunekv_node::metrics::scrape;

fn count(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// The Prometheus text of `cache` now.
pub fn text(cache: &Cache) -> String {
    let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
    let s = &cache.stats;
    let u = &cache.upstream.counters;
    let mut reg = Registry::default();
    let counters: [(&str, &str, u64); 11] = [
        (
            "tunekv_cache_hits",
            "Reads served from the cache's memory",
            load(&s.hits),
        ),
        (
            "tunekv_cache_misses",
            "Reads that went to the store (a fill, or a read the cache could not serve)",
            load(&s.misses),
        ),
        (
            "tunekv_cache_coalesced",
            "Reads that waited for another read's fill instead of reading the store",
            load(&s.coalesced),
        ),
        (
            "tunekv_cache_fills",
            "Key reads the cache sent to the store (fills and pass-through reads)",
            load(&u.reads),
        ),
        (
            "tunekv_cache_stale_fills_dropped",
            "Fills not cached because the change feed delivered a newer change meanwhile",
            load(&s.stale_fills_dropped),
        ),
        (
            "tunekv_cache_evictions",
            "Entries evicted to stay within the memory bound",
            cache.store.evictions(),
        ),
        (
            "tunekv_cache_probes",
            "Read-index probes sent to the store (strong and bounded(k) hits need one)",
            load(&u.probes),
        ),
        (
            "tunekv_cache_upstream_writes",
            "Writes sent to the store",
            load(&u.writes),
        ),
        (
            "tunekv_cache_failovers",
            "Store calls that failed over to another node",
            load(&u.failovers),
        ),
        (
            "tunekv_cache_write_behind_flushed",
            "Write-behind writes the store acknowledged",
            load(&s.flushed),
        ),
        (
            "tunekv_cache_auth_lookups",
            "Calls to a node to learn a caller's rights (auth on: at most one per user and \
             epoch per second)",
            load(&cache.auth.lookups),
        ),
    ];
    for (name, help, v) in counters {
        scrape::counter(&mut reg, name, help, v);
    }
    let (entries, bytes) = cache.store.usage();
    scrape::gauge(
        &mut reg,
        "tunekv_cache_entries",
        "Entries held",
        count(entries as u64),
    );
    scrape::gauge_f64(
        &mut reg,
        "tunekv_cache_memory_used",
        "Weight of the entries held (keys, values, per-entry overhead)",
        Unit::Bytes,
        bytes as f64,
    );
    scrape::gauge_f64(
        &mut reg,
        "tunekv_cache_memory_limit",
        "The memory bound entries are evicted to stay within",
        Unit::Bytes,
        cache.store.capacity() as f64,
    );
    if let Some(q) = &cache.queue {
        let (waiting, bytes, _) = q.usage();
        scrape::gauge(
            &mut reg,
            "tunekv_cache_write_behind_waiting",
            "Write-behind writes not yet acknowledged by the store",
            count(waiting as u64),
        );
        scrape::gauge_f64(
            &mut reg,
            "tunekv_cache_write_behind_waiting",
            "Value bytes of the write-behind writes waiting",
            Unit::Bytes,
            bytes as f64,
        );
    }
    scrape::gauge(
        &mut reg,
        "tunekv_cache_ready",
        "1 once the cache serves (warming done, or not asked to wait for it)",
        i64::from(cache.ready()),
    );
    cache.metrics.encode(Some(&reg))
}
