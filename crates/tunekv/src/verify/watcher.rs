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
use tunekv_check::feed::{FeedEvent, FeedWrite};
use tunekv_check::{OpKind, Operation};
use tunekv_client::{Client, WatchEvent};

/// The watcher moves to another node this often, resuming from its cursor.
const MOVE_EVERY: Duration = Duration::from_secs(3);
/// How long one event may take before the watcher looks at the clock.
const POLL: Duration = Duration::from_millis(500);
/// How long the watcher may take, after the run, to reach the last acknowledged write.
pub const CATCH_UP_MAX: Duration = Duration::from_secs(60);

/// What the watcher received (final events only) and how it went.
pub struct Watched {
    /// Each shard's first progress mark: where the watch began.
    pub start: BTreeMap<u32, u64>,
    pub events: Vec<FeedEvent>,
    /// How often it resumed from a cursor, and on how many distinct nodes it read.
    pub resumes: u64,
    /// Why it stopped before reaching the last acknowledged write, if it did.
    pub problem: Option<String>,
}

/// Runs the watcher until `finish` names, for each shard, the index it must reach (then it
/// returns once it has, or after [`CATCH_UP_MAX`]).
pub async fn run(
    targets: Arc<Vec<Target>>,
    keyspace: &'static str,
    shards: u32,
    finish: watch::Receiver<Option<BTreeMap<u32, u64>>>,
) -> Watched {
    let mut out = Watched {
        start: BTreeMap::new(),
        events: Vec::new(),
        resumes: 0,
        problem: None,
    };
    let mut reached: BTreeMap<u32, u64> = BTreeMap::new();
    let mut pending: Vec<FeedEvent> = Vec::new();
    let mut cursor: Option<String> = None;
    let mut node = 0usize;
    let mut finish_by: Option<Instant> = None;
    loop {
        // Open (or resume) on `node`; a node that is down is skipped.
        let client = Client::with_timeout(&targets[node].http, Duration::from_secs(3));
        let mut feed = match client.watch_from(keyspace, "", cursor.as_deref()).await {
            Ok(f) => f,
            Err(e) if e.code() == Some("cursor_compacted") => {
                out.problem = Some(format!(
                    "node {} no longer holds the changes after the watcher's cursor: {e}",
                    targets[node].id
                ));
                return out;
            }
            Err(_) => {
                node = (node + 1) % targets.len();
                tokio::time::sleep(Duration::from_millis(200)).await;
                if finish_by.is_none() && finish.borrow().is_some() {
                    finish_by = Some(Instant::now() + CATCH_UP_MAX);
                }
                if finish_by.is_some_and(|t| Instant::now() > t) {
                    out.problem = Some("no node took the watch before the deadline".into());
                    return out;
                }
                continue;
            }
        };
        if cursor.is_some() {
            out.resumes += 1;
        }
        let opened = Instant::now();
        // Read until the stream breaks or it is time to move.
        loop {
            if finish_by.is_none() && finish.borrow().is_some() {
                finish_by = Some(Instant::now() + CATCH_UP_MAX);
            }
            if let Some(top) = finish.borrow().as_ref() {
                if top
                    .iter()
                    .all(|(s, i)| reached.get(s).is_some_and(|r| r >= i))
                {
                    return out;
                }
            }
            if finish_by.is_some_and(|t| Instant::now() > t) {
                out.problem = Some(format!(
                    "the feed did not reach the last acknowledged writes ({:?}) within {} s of \
                     the run's end; it reached {reached:?}",
                    finish.borrow().clone().unwrap_or_default(),
                    CATCH_UP_MAX.as_secs()
                ));
                return out;
            }
            if opened.elapsed() >= MOVE_EVERY {
                break;
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
                }))) => pending.push(FeedEvent::Change {
                    shard,
                    index,
                    key,
                    value,
                }),
                Ok(Some(Ok(WatchEvent::Progress {
                    shard,
                    index,
                    cursor: at,
                }))) => {
                    if out.start.len() < shards as usize {
                        out.start.entry(shard).or_insert(index);
                    }
                    // Final now: what came before this mark.
                    out.events.append(&mut pending);
                    out.events.push(FeedEvent::Progress { shard, index });
                    let r = reached.entry(shard).or_insert(0);
                    *r = (*r).max(index);
                    cursor = Some(at);
                }
            }
        }
        // What came after the last mark is sent again by the resumed watch.
        pending.clear();
        if cursor.is_none() {
            // Not one mark yet: start over from now on the next node, keeping nothing.
            out.events.clear();
            out.start.clear();
        }
        node = (node + 1) % targets.len();
    }
}

/// The acknowledged writes and deletes of `keyspace`'s history, with their positions.
pub fn acknowledged(ops: &[Operation]) -> Vec<FeedWrite> {
    ops.iter()
        .filter(|o| o.ok == Some(true) && matches!(o.op, OpKind::Write | OpKind::Delete))
        .filter_map(|o| {
            let p = tunekv_core::Position::parse(o.position.as_deref()?)?;
            Some(FeedWrite {
                shard: p.shard.0,
                index: p.index.0,
                key: o.key.clone(),
                value: if o.op == OpKind::Write {
                    o.value.clone()
                } else {
                    None
                },
            })
        })
        .collect()
}

/// Each shard's highest acknowledged index: what the watcher must reach.
pub fn top(writes: &[FeedWrite]) -> BTreeMap<u32, u64> {
    let mut top = BTreeMap::new();
    for w in writes {
        let t = top.entry(w.shard).or_insert(0);
        *t = (*t).max(w.index);
    }
    top
}
