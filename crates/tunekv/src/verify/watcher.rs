//! `verify`'s watcher (issue 18): it follows the change feed of the ordered keyspace through
//! the whole run, as a careful consumer does. A change is final once a progress event covers
//! it; the watcher keeps that event's cursor. Every few seconds, and whenever its node breaks the
//! stream (a kill, a restart), it resumes from the cursor on the next node. At the end it is
//! judged by `tunekv_check::feed` against every acknowledged write and delete.

use super::Target;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::watch;
use tunekv_check::feed::{Consumer, StoredConsumer, StoredWrite};
use tunekv_client::{Client, WatchEvent};

/// The watcher moves to another node this often, resuming from its cursor.
const MOVE_EVERY: Duration = Duration::from_secs(3);
/// How long one event may take before the watcher looks at the clock.
const POLL: Duration = Duration::from_millis(500);
/// How long the watcher may take, after the run, to reach the last acknowledged write.
pub const CATCH_UP_MAX: Duration = Duration::from_secs(60);

/// Runs the watcher until `finish` names, for each shard, the index it must reach (then it
/// returns once it has, or after [`CATCH_UP_MAX`]). `Err`: why it stopped short (its cursor's
/// changes were gone, or it never caught up).
pub async fn run(
    targets: Arc<Vec<Target>>,
    keyspace: &'static str,
    shards: u32,
    finish: watch::Receiver<Option<BTreeMap<u32, u64>>>,
) -> (Consumer, Option<String>) {
    let mut c = Consumer::new(shards);
    let mut node = 0usize;
    // Nodes in a row that no longer hold the changes after the cursor (a restarted node's
    // history starts at its snapshot): all of them is a gap no consumer could close.
    let mut compacted = 0;
    let mut finish_by: Option<Instant> = None;
    loop {
        if finish_by.is_none() && finish.borrow().is_some() {
            finish_by = Some(Instant::now() + CATCH_UP_MAX);
        }
        if let Some(top) = finish.borrow().as_ref() {
            if c.reached_all(top) {
                return (c, None);
            }
        }
        if finish_by.is_some_and(|t| Instant::now() > t) {
            let why = format!(
                "the feed did not reach the last acknowledged writes ({:?}) within {} s of the \
                 run's end; it reached {:?}",
                finish.borrow().clone().unwrap_or_default(),
                CATCH_UP_MAX.as_secs(),
                c.reached
            );
            return (c, Some(why));
        }
        // Open (or resume) on `node`; a node that is down is skipped.
        let client = Client::with_timeout(&targets[node].http, Duration::from_secs(3));
        let mut feed = match client.watch_from(keyspace, "", c.cursor.as_deref()).await {
            Ok(f) => f,
            Err(e) if e.code() == Some("cursor_compacted") => {
                compacted += 1;
                if compacted >= targets.len() {
                    let why = format!("no node holds the changes after the watcher's cursor: {e}");
                    return (c, Some(why));
                }
                node = (node + 1) % targets.len();
                continue;
            }
            Err(_) => {
                node = (node + 1) % targets.len();
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            }
        };
        compacted = 0;
        c.opened();
        let opened = Instant::now();
        // Read until the stream breaks, it is time to move, or the end is reached.
        while opened.elapsed() < MOVE_EVERY {
            if let Some(top) = finish.borrow().as_ref() {
                if c.reached_all(top) {
                    break;
                }
            }
            match tokio::time::timeout(POLL, feed.next()).await {
                Err(_) => continue,
                Ok(None) | Ok(Some(Err(_))) => break,
                Ok(Some(Ok(WatchEvent::Change {
                    key,
                    value,
                    shard,
                    index,
                    ..
                }))) => c.change(shard, index, key, value),
                Ok(Some(Ok(WatchEvent::Progress {
                    shard,
                    index,
                    cursor,
                    ..
                }))) => c.progress(shard, index, cursor),
                // Leaderless keyspaces only; this watch is of an ordered one.
                Ok(Some(Ok(WatchEvent::NodeProgress { .. }))) => break,
            }
        }
        c.broke();
        node = (node + 1) % targets.len();
    }
}

/// The leaderless keyspace's watcher: follows the merged feed of every node's stored versions
/// through the run, moving to the next node every few seconds by its cursor. Once `finish`
/// names the acknowledged writes, it returns when each is covered (that version or a later one
/// of its key delivered), or after [`CATCH_UP_MAX`] with the reason.
pub async fn run_leaderless(
    targets: Arc<Vec<Target>>,
    keyspace: &'static str,
    finish: watch::Receiver<Option<Vec<StoredWrite>>>,
) -> (StoredConsumer, Option<String>) {
    let mut c = StoredConsumer::default();
    let mut node = 0usize;
    let mut finish_by: Option<Instant> = None;
    loop {
        if finish_by.is_none() && finish.borrow().is_some() {
            finish_by = Some(Instant::now() + CATCH_UP_MAX);
        }
        if finish.borrow().as_ref().is_some_and(|w| c.covers(w)) {
            return (c, None);
        }
        if finish_by.is_some_and(|t| Instant::now() > t) {
            let why = format!(
                "acknowledged writes were still not delivered {} s after the run",
                CATCH_UP_MAX.as_secs()
            );
            return (c, Some(why));
        }
        let client = Client::with_timeout(&targets[node].http, Duration::from_secs(3));
        let mut feed = match client.watch_from(keyspace, "", c.cursor.as_deref()).await {
            Ok(f) => f,
            Err(e) if e.code() == Some("cursor_compacted") => {
                return (c, Some(format!("the watch cannot resume: {e}")));
            }
            Err(_) => {
                node = (node + 1) % targets.len();
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            }
        };
        c.opened();
        let opened = Instant::now();
        while opened.elapsed() < MOVE_EVERY {
            if finish.borrow().as_ref().is_some_and(|w| c.covers(w)) {
                break;
            }
            match tokio::time::timeout(POLL, feed.next()).await {
                Err(_) => {}
                Ok(None) | Ok(Some(Err(_))) => break,
                Ok(Some(Ok(WatchEvent::Change {
                    key,
                    value,
                    version: Some(v),
                    ..
                }))) => {
                    let Some((hlc, n)) = v.split_once('.') else {
                        break;
                    };
                    let version = (hlc.parse().unwrap_or(0), n.parse().unwrap_or(0));
                    c.change(key, version, value);
                }
                Ok(Some(Ok(WatchEvent::NodeProgress { cursor, .. }))) => c.progress(cursor),
                // An ordered keyspace's events: not this watch's.
                Ok(Some(Ok(_))) => break,
            }
        }
        c.broke();
        node = (node + 1) % targets.len();
    }
}
