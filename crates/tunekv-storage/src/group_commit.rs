//! Group commit: callers ask for durability; one thread runs one `sync` for everything that
//! queued up while the previous sync ran, then answers all of them.

use crate::{Storage, StorageError};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, oneshot};

/// Pending durability requests waiting for the sync thread. Bounded so a stalled disk pushes
/// back on writers instead of growing memory.
pub const SYNC_QUEUE_MAX: usize = 65_536;

type Done = Box<dyn FnOnce(Result<(), String>) + Send>;

#[derive(Clone)]
pub struct GroupCommit {
    // Requests to the sync thread; each is answered after a sync that began after it was sent.
    tx: mpsc::Sender<Done>,
}

/// Told of every sync: how long it took, how many requests it answered, whether it succeeded
/// (what `GET /metrics` shows as fsync latency and group-commit batch size).
pub type SyncObserver = Arc<dyn Fn(Duration, usize, bool) + Send + Sync>;

impl GroupCommit {
    /// Starts the sync loop for `storage`: on a thread of its own when syncs block (a disk),
    /// else on a task of the current runtime. It ends when every handle is dropped.
    pub fn start(storage: Arc<dyn Storage>) -> GroupCommit {
        GroupCommit::observed(storage, Arc::new(|_, _, _| {}))
    }

    /// [`GroupCommit::start`], telling `observe` of every sync.
    pub fn observed(storage: Arc<dyn Storage>, observe: SyncObserver) -> GroupCommit {
        let (tx, mut rx) = mpsc::channel::<Done>(SYNC_QUEUE_MAX);
        if !storage.sync_blocks() {
            tokio::spawn(async move {
                let mut batch: Vec<Done> = Vec::new();
                while let Some(first) = rx.recv().await {
                    batch.push(first);
                    run_batch(&*storage, &mut rx, &mut batch, &*observe);
                }
            });
            return GroupCommit { tx };
        }
        std::thread::Builder::new()
            .name("tunekv-sync".into())
            .spawn(move || {
                let mut batch: Vec<Done> = Vec::new();
                while let Some(first) = rx.blocking_recv() {
                    batch.push(first);
                    run_batch(&*storage, &mut rx, &mut batch, &*observe);
                }
            })
            .map(|_| ())
            // Failing to start one thread at boot is unrecoverable for a durable node.
            .unwrap_or_else(|e| panic!("cannot start the sync thread: {e}"));
        GroupCommit { tx }
    }

    /// Calls `done` once everything written before this call is durable.
    pub fn sync_then(&self, done: impl FnOnce(Result<(), String>) + Send + 'static) {
        if let Err(e) = self.tx.try_send(Box::new(done)) {
            let done = match e {
                mpsc::error::TrySendError::Full(d) | mpsc::error::TrySendError::Closed(d) => d,
            };
            // Queue full or thread gone: do not block an async task; report the failure.
            done(Err("sync queue unavailable".into()));
        }
    }

    /// Waits until everything written before this call is durable.
    pub async fn sync(&self) -> Result<(), StorageError> {
        let (tx, rx) = oneshot::channel();
        self.sync_then(move |r| {
            let _ = tx.send(r);
        });
        match rx.await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(StorageError::Engine(e)),
            Err(_) => Err(StorageError::Closed),
        }
    }
}

/// One sync for `batch` and whatever else is queued, then every caller is answered.
fn run_batch(
    storage: &dyn Storage,
    rx: &mut mpsc::Receiver<Done>,
    batch: &mut Vec<Done>,
    observe: &(dyn Fn(Duration, usize, bool) + Send + Sync),
) {
    while let Ok(more) = rx.try_recv() {
        batch.push(more);
    }
    let began = Instant::now();
    let res = storage.sync().map_err(|e| e.to_string());
    observe(began.elapsed(), batch.len(), res.is_ok());
    if let Err(e) = &res {
        tracing::error!(error = %e, "sync failed");
    }
    for done in batch.drain(..) {
        done(res.clone());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::MemStorage;

    #[tokio::test]
    async fn many_requests_are_all_answered() {
        let gc = GroupCommit::start(Arc::new(MemStorage::new()));
        let mut waits = Vec::new();
        for _ in 0..100 {
            let gc = gc.clone();
            waits.push(tokio::spawn(async move { gc.sync().await }));
        }
        for w in waits {
            assert!(w.await.unwrap().is_ok());
        }
    }
}
