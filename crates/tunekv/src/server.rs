//! `tunekv server --config FILE`: one node.

use anyhow::{Context, Result};
use std::path::Path;
use std::sync::Arc;
use tunekv_node::clock::SystemClock;
use tunekv_node::transport::TcpTransport;
use tunekv_node::{Bugs, Node, NodeConfig};
use tunekv_storage::FjallStorage;

pub async fn run(
    config_path: &Path,
    enable_faults: bool,
    insecure: bool,
    bugs: Bugs,
    crash_at: Option<tunekv_node::CrashAt>,
) -> Result<()> {
    let mut config = NodeConfig::load(config_path).map_err(anyhow::Error::msg)?;
    config.enable_faults |= enable_faults;
    config.insecure |= insecure;
    config.check_exposure().map_err(anyhow::Error::msg)?;
    if !config.auth.enabled {
        tracing::warn!(
            "AUTH IS OFF: anyone who can reach this node's ports can read, write and administer \
             the cluster. Turn it on with [auth] enabled = true (docs/security.md)"
        );
    }
    config.crash_at = crash_at;
    if bugs.any() {
        tracing::error!(
            ?bugs,
            "this node runs with injected bugs: its consistency promises are broken on purpose"
        );
    }
    config.bugs = bugs;
    let storage = FjallStorage::open_with(&config.data_dir, config.storage.options())
        .with_context(|| {
            format!(
                "cannot open the data directory {}",
                config.data_dir.display()
            )
        })?;
    let http = config.http.clone();
    let listener = tokio::net::TcpListener::bind(&http)
        .await
        .with_context(|| format!("cannot listen for HTTP on {http}"))?;
    let resp = match &config.resp {
        Some(addr) => Some(
            tokio::net::TcpListener::bind(addr)
                .await
                .with_context(|| format!("cannot listen for RESP on {addr}"))?,
        ),
        None => None,
    };
    let tls = match &config.tls {
        Some(files) => Some(Arc::new(
            tunekv_node::tls::Tls::load(files).map_err(anyhow::Error::msg)?,
        )),
        None => {
            tracing::warn!(
                "TLS IS OFF: client and node-to-node traffic (tokens and passwords included) \
                 goes in clear. [tls] in the config turns it on (docs/security.md)"
            );
            None
        }
    };
    let transport: Arc<dyn tunekv_node::transport::Transport> = match &tls {
        Some(t) => Arc::new(tunekv_node::tls::TlsTransport::new(TcpTransport, t.clone())),
        None => Arc::new(TcpTransport),
    };
    if let Some(t) = &tls {
        tokio::spawn(tunekv_node::tls::reload_on_sighup(t.clone()));
    }
    let node = Node::start(
        config,
        transport,
        Arc::new(storage),
        Arc::new(SystemClock::new()),
    )
    .await
    .map_err(|e| anyhow::anyhow!("cannot start the node: {e}"))?;
    if let Some(listener) = resp {
        let config = node.config();
        let options = tunekv_resp::RespOptions {
            connections_max: config.resp_connections_max,
            limits: tunekv_resp::parse::Limits {
                request_bytes_max: config.resp_request_bytes_max,
                ..Default::default()
            },
            pending_bytes_max: config.resp_pending_bytes_max,
            request_timeout: std::time::Duration::from_millis(config.resp_request_timeout_ms),
            idle_timeout: (config.resp_idle_timeout_ms > 0)
                .then(|| std::time::Duration::from_millis(config.resp_idle_timeout_ms)),
        };
        tokio::spawn(tunekv_resp::serve(
            listener,
            node.clone(),
            options,
            tls.clone(),
        ));
    }
    tracing::info!(node = %node.id(), %http, resp = ?node.config().resp, raft = %node.config().raft, faults = node.faults_enabled(), "tunekv node serving");
    tunekv_api::serve(
        listener,
        tunekv_api::router(node.clone()),
        tunekv_api::HttpLimits::of(node.config()),
        node.metrics().http.clone(),
        tls,
        {
            // On SIGTERM: leadership moves first, while requests are still taken here, then
            // the listeners drain.
            let node = node.clone();
            async move {
                shutdown_signal().await;
                tracing::info!("stopping: handing off leadership");
                node.hand_off_leadership(LEADERSHIP_HANDOFF_WAIT).await;
            }
        },
    )
    .await
    .context("HTTP server failed")?;
    tracing::info!("shutting down");
    node.shutdown().await;
    Ok(())
}

/// Longest a stopping node waits for the groups it leads to elect other leaders.
const LEADERSHIP_HANDOFF_WAIT: std::time::Duration = std::time::Duration::from_secs(3);

pub async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => {
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}
