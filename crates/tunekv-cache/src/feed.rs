//! Event-driven invalidation: one task per cached ordered keyspace follows the store's change
//! feed (`GET /v1/watch/{ks}`), updates the entries it changes and moves each shard's position
//! `F` on progress marks. When a watch breaks it resumes from its cursor on the next node
//! (every change after the last mark comes again, and applying a change twice is harmless:
//! an entry only takes a change newer than itself). A cursor no node can resume (its history
//! is gone) starts a new epoch: every entry of the old one becomes unreachable.

use crate::copy::Space;
use crate::store::Store;
use crate::upstream::Upstream;
use bytes::Bytes;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use tunekv_client::WatchEvent;

/// Pause before trying the next node after a watch failed.
const RETRY_PAUSE: Duration = Duration::from_millis(200);
/// How often a running watch checks whether a shard's feed is stuck behind.
const STUCK_CHECK_EVERY: Duration = Duration::from_millis(500);

pub async fn follow(
    space: Arc<Space>,
    store: Arc<Store>,
    upstream: Arc<Upstream>,
    lag_switch: Duration,
    stop: CancellationToken,
) {
    let mut cursor: Option<String> = None;
    let mut node = 0usize;
    loop {
        if stop.is_cancelled() {
            return;
        }
        let client = upstream.node(node).clone();
        let opened = tokio::select! {
            _ = stop.cancelled() => return,
            w = client.watch_from(&space.name, cursor.as_deref()), if !upstream.isolated() => w,
            _ = tokio::time::sleep(RETRY_PAUSE), if upstream.isolated() => continue,
        };
        match opened {
            Ok(mut watch) => {
                if cursor.is_none() {
                    space.new_epoch();
                }
                let mut check = tokio::time::interval(STUCK_CHECK_EVERY);
                let mut isolation = upstream.isolation();
                loop {
                    let event = tokio::select! {
                        _ = stop.cancelled() => return,
                        _ = isolation.wait_for(|cut| *cut) => break,
                        e = watch.next() => e,
                        _ = check.tick() => {
                            if space.shards.iter().any(|s| s.stuck(lag_switch)) {
                                tracing::info!(keyspace = %space.name, node = client.base(), "the feed's node is behind; moving to another");
                                break;
                            }
                            continue;
                        }
                    };
                    match event {
                        Some(Ok(WatchEvent::Change {
                            shard,
                            index,
                            position,
                            key_bytes,
                            value_bytes,
                            expires_ms,
                            ..
                        })) => {
                            let Some(copy) = space.shards.get(shard as usize) else {
                                tracing::warn!(
                                    shard,
                                    "a change of a shard the keyspace does not have"
                                );
                                break;
                            };
                            let commit_ms =
                                tunekv_core::Position::parse(&position).map_or(0, |p| p.commit_ms);
                            copy.changed(
                                &store,
                                &space,
                                &key_bytes,
                                index,
                                value_bytes.map(Bytes::from),
                                commit_ms,
                                expires_ms,
                            );
                        }
                        Some(Ok(WatchEvent::Progress {
                            shard,
                            index,
                            cursor: c,
                            proof,
                        })) => {
                            if let Some(copy) = space.shards.get(shard as usize) {
                                copy.progressed(index);
                                // The node's proof, on our clock: every write committed before
                                // `h` is at or below `p.index`, which the feed has delivered.
                                if let Some(p) = proof.filter(|p| p.index <= index) {
                                    if let Some(h) =
                                        upstream.earliest_local(node, p.incarnation, p.mono_us)
                                    {
                                        copy.add_proof(p.index, h);
                                    }
                                }
                            }
                            cursor = Some(c);
                        }
                        Some(Ok(WatchEvent::NodeProgress { .. })) => {}
                        Some(Err(e)) => {
                            tracing::debug!(keyspace = %space.name, error = %e, "the feed ended; resuming");
                            break;
                        }
                        None => break,
                    }
                }
            }
            Err(e) => {
                let code = e.code().unwrap_or_default();
                if code == "cursor_compacted" || code == "cursor_invalid" {
                    tracing::info!(keyspace = %space.name, %code, "the feed cannot resume; starting a new epoch");
                    cursor = None;
                    continue;
                }
                tracing::debug!(keyspace = %space.name, node = client.base(), error = %e, "cannot watch");
            }
        }
        node = (node + 1) % upstream.node_count();
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(RETRY_PAUSE) => {}
        }
    }
}
