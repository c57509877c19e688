//! Running a cache process: bind, serve, stop.

use crate::cache::Cache;
use crate::config::CacheConfig;
use crate::copy::CacheBugs;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use tunekv_api::HttpLimits;

/// The listener's limits for the cache (as a node's defaults).
const LIMITS: HttpLimits = HttpLimits {
    connections_max: 10_000,
    header_read_timeout: Duration::from_secs(10),
    idle_timeout: Duration::from_secs(60),
    requests_per_s: 0,
};

/// Starts the cache's background work: the write-behind flusher, warming, and measuring the
/// nodes' clocks (keyspaces' feeds start on first use).
pub fn start(cache: &Arc<Cache>) {
    tokio::spawn(cache.clone().flush_loop());
    tokio::spawn(cache.clone().warm());
    let (up, stop) = (cache.upstream.clone(), cache.stop_token());
    tokio::spawn(async move { up.calibrate_loop(stop).await });
}

/// Serves the cache until `shutdown` completes. Prints one line once it listens.
pub async fn run(
    config: CacheConfig,
    bugs: CacheBugs,
    enable_faults: bool,
    shutdown: impl Future<Output = ()>,
) -> Result<(), String> {
    let cache = Cache::new(config, bugs, enable_faults)?;
    // What an earlier process acknowledged but did not flush goes to the store first.
    cache.flush_all().await;
    start(&cache);
    let listener = tokio::net::TcpListener::bind(&cache.config.http)
        .await
        .map_err(|e| format!("cannot listen on {}: {e}", cache.config.http))?;
    println!(
        "tunekv cache listening on http://{} in front of {}",
        cache.config.http,
        cache.config.upstream.join(", ")
    );
    if let Some(addr) = &cache.config.resp {
        let resp = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|e| format!("cannot listen on {addr}: {e}"))?;
        println!("tunekv cache serving RESP on {addr}");
        tokio::spawn(crate::resp::serve(resp, cache.clone(), cache.stop_token()));
    }
    let app = crate::http::router(cache.clone());
    let served = tunekv_api::serve(
        listener,
        app,
        LIMITS,
        cache.metrics.http.clone(),
        None,
        shutdown,
    )
    .await;
    cache.save_hot_set();
    cache.shutdown();
    served.map_err(|e| e.to_string())
}
