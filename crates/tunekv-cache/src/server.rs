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

/// How long a cache without `[auth]` waits at start for a node to say whether the cluster
/// has auth on.
const CLUSTER_ANSWER_WAIT: Duration = Duration::from_secs(15);

/// Starts the cache's background work: the write-behind flusher, warming, and measuring the
/// nodes' clocks (keyspaces' feeds start on first use).
pub fn start(cache: &Arc<Cache>) {
    tokio::spawn(cache.clone().flush_loop());
    tokio::spawn(cache.clone().warm());
    let (up, stop) = (cache.upstream.clone(), cache.stop_token());
    tokio::spawn(async move { up.calibrate_loop(stop).await });
}

/// The cache's own login. With `[auth]`: logs in (a refused password stops the start; nodes
/// that cannot be reached yet are tried again in the background) and keeps the token fresh.
/// Without it: a cluster that has auth on stops the start, saying what to configure — such a
/// cache could fill nothing.
async fn log_in(cache: &Arc<Cache>) -> Result<(), String> {
    let auth = &cache.auth;
    if auth.enabled() {
        let user = auth.user().unwrap_or_default();
        match auth.login().await {
            Ok(()) => {
                auth.check_secret(&cache.key)?;
                println!("tunekv cache logged in to the cluster as {user}");
            }
            Err(e) if e.code == tunekv_core::Code::Unavailable => {
                eprintln!("warning: {}; trying again in the background", e.message)
            }
            Err(e) => return Err(e.message),
        }
        tokio::spawn(
            auth.clone()
                .renew_loop(cache.key.clone(), cache.stop_token()),
        );
        return Ok(());
    }
    // Only a node's answer says whether the cluster is open: without one the cache does not
    // start (it would accept write-behind writes from anyone for a secured cluster).
    let deadline = tokio::time::Instant::now() + CLUSTER_ANSWER_WAIT;
    loop {
        match auth.cluster_requires_auth().await {
            Some(true) => {
                return Err(format!(
                    "the cluster has auth on: give the cache its own user ([auth] user = \"…\" \
                     with its password in {} or auth.password_file; docs/cache.md)",
                    crate::config::PASSWORD_ENV
                ))
            }
            Some(false) => return Ok(()),
            None if tokio::time::Instant::now() >= deadline => {
                return Err(format!(
                    "no node of {} answered within {} s, so the cache cannot tell whether the \
                     cluster has auth on; start it once a node is up",
                    cache.config.upstream.join(", "),
                    CLUSTER_ANSWER_WAIT.as_secs()
                ))
            }
            None => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
}

/// Serves the cache until `shutdown` completes. Prints one line once it listens.
pub async fn run(
    config: CacheConfig,
    bugs: CacheBugs,
    enable_faults: bool,
    shutdown: impl Future<Output = ()>,
) -> Result<(), String> {
    let cache = Cache::new(config, bugs, enable_faults)?;
    let tls = match &cache.config.tls {
        Some(files) => {
            let tls = Arc::new(tunekv_node::tls::Tls::load(files)?);
            tokio::spawn(tunekv_node::tls::reload_on_sighup(tls.clone()));
            Some(tls)
        }
        None => None,
    };
    log_in(&cache).await?;
    // What an earlier process acknowledged but did not flush goes to the store first.
    cache.flush_all().await;
    start(&cache);
    let listener = tokio::net::TcpListener::bind(&cache.config.http)
        .await
        .map_err(|e| format!("cannot listen on {}: {e}", cache.config.http))?;
    let scheme = if tls.is_some() { "https" } else { "http" };
    println!(
        "tunekv cache listening on {scheme}://{} in front of {}",
        cache.config.http,
        cache.config.upstream.join(", ")
    );
    if let Some(addr) = &cache.config.resp {
        let resp = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|e| format!("cannot listen on {addr}: {e}"))?;
        println!(
            "tunekv cache serving RESP on {addr}{}",
            if tls.is_some() { " (TLS)" } else { "" }
        );
        tokio::spawn(crate::resp::serve(
            resp,
            cache.clone(),
            tls.clone(),
            cache.stop_token(),
        ));
    }
    let app = crate::http::router(cache.clone());
    let served = tunekv_api::serve(
        listener,
        app,
        LIMITS,
        cache.metrics.http.clone(),
        tls,
        shutdown,
    )
    .await;
    cache.save_hot_set();
    cache.shutdown();
    served.map_err(|e| e.to_string())
}
