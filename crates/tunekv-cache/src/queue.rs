//! The write-behind queue: writes the cache acknowledged before the store has them, in order.
//!
//! Durable mode appends each write to a log file and syncs it (`fdatasync`) before the write is
//! acknowledged; many writers share one sync (group commit, on one thread). Memory mode keeps
//! the queue in memory only: acknowledged writes not yet flushed are lost if the process dies
//! (the loss window docs/cache.md measures). The flusher (`cache.rs`) takes batches from the
//! front in order; once a batch is in the store it is popped, and when the queue is empty the
//! log is truncated. On restart the log is read back and flushed before the cache serves.
//!
//! Log record: `len: u32 LE`, `xxh3(payload): u64 LE`, payload = `op: u8` (1 put, 2 delete),
//! `keyspace_len: u16 LE`, keyspace, `key_len: u32 LE`, key, `value_len: u32 LE`, value. A torn
//! or corrupt tail (a crash mid-append, never acknowledged) ends the log.

use std::collections::VecDeque;
use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::{mpsc, Arc, Mutex};
use tokio::sync::{oneshot, Notify};
use tunekv_core::{Code, TunekvError};

/// One queued write.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pending {
    /// Position in the queue since the process started (restarts number from 1 again).
    pub seq: u64,
    pub keyspace: String,
    pub key: Vec<u8>,
    /// `None`: a delete.
    pub value: Option<Vec<u8>>,
}

impl Pending {
    fn bytes(&self) -> u64 {
        (self.keyspace.len() + self.key.len() + self.value.as_ref().map_or(0, Vec::len) + 32) as u64
    }
}

struct State {
    items: VecDeque<Pending>,
    /// Writes waiting per (keyspace, key).
    waiting: std::collections::HashMap<(String, Vec<u8>), u32>,
    bytes: u64,
    next_seq: u64,
    /// Writes flushed to the store since the process started.
    flushed: u64,
}

pub struct Queue {
    state: Mutex<State>,
    bytes_max: u64,
    /// Durable mode: the appending thread.
    log: Option<mpsc::Sender<Append>>,
    path: Option<PathBuf>,
    /// Woken when something is queued.
    pub queued: Notify,
}

enum Append {
    Record(Vec<u8>, oneshot::Sender<std::io::Result<()>>),
    /// Truncate the log (the queue is empty).
    Truncate(oneshot::Sender<std::io::Result<()>>),
}

fn encode(p: &Pending) -> Vec<u8> {
    let mut payload = Vec::with_capacity(p.bytes() as usize);
    payload.push(if p.value.is_some() { 1 } else { 2 });
    payload.extend_from_slice(&(p.keyspace.len() as u16).to_le_bytes());
    payload.extend_from_slice(p.keyspace.as_bytes());
    payload.extend_from_slice(&(p.key.len() as u32).to_le_bytes());
    payload.extend_from_slice(&p.key);
    let value = p.value.as_deref().unwrap_or_default();
    payload.extend_from_slice(&(value.len() as u32).to_le_bytes());
    payload.extend_from_slice(value);
    let mut rec = Vec::with_capacity(payload.len() + 12);
    rec.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    rec.extend_from_slice(&xxhash_rust::xxh3::xxh3_64(&payload).to_le_bytes());
    rec.extend_from_slice(&payload);
    rec
}

/// Reads the records of a log; stops at the first torn or corrupt one.
fn decode_all(bytes: &[u8]) -> Vec<(Option<Vec<u8>>, String, Vec<u8>)> {
    let mut out = Vec::new();
    let mut at = 0usize;
    let take = |at: &mut usize, n: usize| -> Option<&[u8]> {
        let s = bytes.get(*at..*at + n)?;
        *at += n;
        Some(s)
    };
    while let Some(len) = take(&mut at, 4) {
        let len = u32::from_le_bytes(len.try_into().unwrap_or_default()) as usize;
        let Some(sum) = take(&mut at, 8) else { break };
        let sum = u64::from_le_bytes(sum.try_into().unwrap_or_default());
        let Some(payload) = take(&mut at, len) else {
            break;
        };
        if xxhash_rust::xxh3::xxh3_64(payload) != sum {
            break;
        }
        let mut p = 0usize;
        let field = |p: &mut usize, n: usize| -> Option<&[u8]> {
            let s = payload.get(*p..*p + n)?;
            *p += n;
            Some(s)
        };
        let parsed = (|| {
            let op = field(&mut p, 1)?[0];
            let kl = u16::from_le_bytes(field(&mut p, 2)?.try_into().ok()?) as usize;
            let ks = String::from_utf8(field(&mut p, kl)?.to_vec()).ok()?;
            let keyl = u32::from_le_bytes(field(&mut p, 4)?.try_into().ok()?) as usize;
            let key = field(&mut p, keyl)?.to_vec();
            let vl = u32::from_le_bytes(field(&mut p, 4)?.try_into().ok()?) as usize;
            let value = field(&mut p, vl)?.to_vec();
            Some(((op == 1).then_some(value), ks, key))
        })();
        match parsed {
            Some(r) => out.push(r),
            None => break,
        }
    }
    out
}

/// The appending thread: group commit (every record waiting when it wakes is written, then
/// one `fdatasync` acknowledges them all).
fn appender(mut file: File, rx: mpsc::Receiver<Append>) {
    while let Ok(first) = rx.recv() {
        let mut batch = vec![first];
        while let Ok(more) = rx.try_recv() {
            batch.push(more);
        }
        let mut acks = Vec::new();
        let mut result: std::io::Result<()> = Ok(());
        for a in batch {
            match a {
                Append::Record(bytes, ack) => {
                    if result.is_ok() {
                        result = file.write_all(&bytes);
                    }
                    acks.push(ack);
                }
                Append::Truncate(ack) => {
                    if result.is_ok() {
                        result = file
                            .set_len(0)
                            .and_then(|_| file.seek(SeekFrom::Start(0)).map(|_| ()));
                    }
                    acks.push(ack);
                }
            }
        }
        if result.is_ok() {
            result = file.sync_data();
        }
        for ack in acks {
            let _ = ack.send(match &result {
                Ok(()) => Ok(()),
                Err(e) => Err(std::io::Error::new(e.kind(), e.to_string())),
            });
        }
    }
}

impl Queue {
    /// A queue in memory only.
    pub fn in_memory(bytes_max: u64) -> Arc<Queue> {
        Arc::new(Queue::with(None, None, Vec::new(), bytes_max))
    }

    /// A durable queue in `dir` (created if missing): what an earlier process left unflushed is
    /// queued again, first.
    pub fn durable(dir: &Path, bytes_max: u64) -> std::io::Result<Arc<Queue>> {
        std::fs::create_dir_all(dir)?;
        let path = dir.join("write-behind.log");
        let mut file = OpenOptions::new()
            .create(true)
            .read(true)
            .append(true)
            .open(&path)?;
        let mut bytes = Vec::new();
        file.seek(SeekFrom::Start(0))?;
        file.read_to_end(&mut bytes)?;
        let left = decode_all(&bytes);
        // Rewrite what was read (a torn tail is dropped), so the log holds exactly the queue.
        let kept: Vec<Pending> = left
            .into_iter()
            .enumerate()
            .map(|(i, (value, keyspace, key))| Pending {
                seq: i as u64 + 1,
                keyspace,
                key,
                value,
            })
            .collect();
        let tmp = dir.join("write-behind.log.tmp");
        {
            let mut t = File::create(&tmp)?;
            for p in &kept {
                t.write_all(&encode(p))?;
            }
            t.sync_data()?;
        }
        std::fs::rename(&tmp, &path)?;
        File::open(dir)?.sync_all()?;
        let file = OpenOptions::new().append(true).open(&path)?;
        let (tx, rx) = mpsc::channel();
        std::thread::Builder::new()
            .name("tunekv-cache-queue".into())
            .spawn(move || appender(file, rx))?;
        Ok(Arc::new(Queue::with(Some(tx), Some(path), kept, bytes_max)))
    }

    fn with(
        log: Option<mpsc::Sender<Append>>,
        path: Option<PathBuf>,
        items: Vec<Pending>,
        bytes_max: u64,
    ) -> Queue {
        let bytes = items.iter().map(Pending::bytes).sum();
        let next_seq = items.len() as u64 + 1;
        let mut waiting = std::collections::HashMap::new();
        for p in &items {
            *waiting
                .entry((p.keyspace.clone(), p.key.clone()))
                .or_insert(0u32) += 1;
        }
        Queue {
            state: Mutex::new(State {
                waiting,
                items: items.into(),
                bytes,
                next_seq,
                flushed: 0,
            }),
            bytes_max,
            log,
            path,
            queued: Notify::new(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn durable_path(&self) -> Option<&Path> {
        self.path.as_deref()
    }

    /// Queues a write; returns once it is durable (durable mode) or queued (memory mode).
    /// A full queue refuses it (`unavailable`): the store is behind, the client should slow
    /// down or write to a node.
    pub async fn push(
        &self,
        keyspace: &str,
        key: &[u8],
        value: Option<&[u8]>,
    ) -> Result<u64, TunekvError> {
        let mut p = Pending {
            seq: 0,
            keyspace: keyspace.to_string(),
            key: key.to_vec(),
            value: value.map(<[u8]>::to_vec),
        };
        // Appended under the lock, so the log's order is the queue's.
        let wait = {
            let mut s = self.lock();
            if s.bytes + p.bytes() > self.bytes_max {
                return Err(TunekvError::new(
                    Code::Unavailable,
                    format!(
                        "the write-behind queue is full ({} bytes waiting for the store, \
                         write_behind_bytes_max {}); retry later or write to a node",
                        s.bytes, self.bytes_max
                    ),
                ));
            }
            p.seq = s.next_seq;
            let wait = match &self.log {
                Some(log) => {
                    let (ack, done) = oneshot::channel();
                    log.send(Append::Record(encode(&p), ack)).map_err(|_| {
                        TunekvError::new(Code::Internal, "the write-behind log stopped")
                    })?;
                    Some(done)
                }
                None => None,
            };
            s.next_seq += 1;
            s.bytes += p.bytes();
            *s.waiting
                .entry((p.keyspace.clone(), p.key.clone()))
                .or_default() += 1;
            s.items.push_back(p.clone());
            wait
        };
        self.queued.notify_one();
        if let Some(done) = wait {
            match done.await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => {
                    // Not known durable, so not acknowledged; it stays queued (the log may
                    // hold it) and may still reach the store: its outcome is unknown.
                    return Err(TunekvError::new(
                        Code::Timeout,
                        format!(
                            "the write-behind log could not sync ({e}); the write may or may \
                             not reach the store"
                        ),
                    ));
                }
                Err(_) => {
                    return Err(TunekvError::new(
                        Code::Internal,
                        "the write-behind log stopped",
                    ))
                }
            }
        }
        Ok(p.seq)
    }

    /// Up to `max` writes from the front, in order.
    pub fn front(&self, max: usize) -> Vec<Pending> {
        self.lock().items.iter().take(max).cloned().collect()
    }

    /// The front writes up to `seq` are in the store: drop them; an empty queue truncates the
    /// log.
    pub async fn done_through(&self, seq: u64) {
        let truncate = {
            let mut s = self.lock();
            while s.items.front().is_some_and(|p| p.seq <= seq) {
                if let Some(p) = s.items.pop_front() {
                    s.bytes -= p.bytes();
                    s.flushed += 1;
                    let slot = (p.keyspace, p.key);
                    if let Some(n) = s.waiting.get_mut(&slot) {
                        *n -= 1;
                        if *n == 0 {
                            s.waiting.remove(&slot);
                        }
                    }
                }
            }
            if s.items.is_empty() {
                self.log.as_ref().map(|log| {
                    let (ack, done) = oneshot::channel();
                    let _ = log.send(Append::Truncate(ack));
                    done
                })
            } else {
                None
            }
        };
        if let Some(done) = truncate {
            let _ = done.await;
        }
    }

    /// Writes waiting, their bytes, and writes flushed since the process started.
    pub fn usage(&self) -> (usize, u64, u64) {
        let s = self.lock();
        (s.items.len(), s.bytes, s.flushed)
    }

    /// Whether a write of `key` is still waiting (reads of it do not see it until it is in the
    /// store).
    pub fn holds(&self, keyspace: &str, key: &[u8]) -> bool {
        self.lock()
            .waiting
            .contains_key(&(keyspace.to_string(), key.to_vec()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_durable_queue_comes_back_after_a_crash_without_its_torn_tail() {
        let dir = tempfile::tempdir().unwrap();
        {
            let q = Queue::durable(dir.path(), 1 << 20).unwrap();
            assert_eq!(q.push("ks", b"a", Some(b"1")).await.unwrap(), 1);
            assert_eq!(q.push("ks", b"b", None).await.unwrap(), 2);
            assert_eq!(q.push("ks", b"a", Some(b"2")).await.unwrap(), 3);
        }
        // A torn append at the end (a crash mid-write, never acknowledged).
        let path = dir.path().join("write-behind.log");
        let mut f = OpenOptions::new().append(true).open(&path).unwrap();
        f.write_all(
            &encode(&Pending {
                seq: 0,
                keyspace: "ks".into(),
                key: b"c".to_vec(),
                value: Some(b"torn".to_vec()),
            })[..10],
        )
        .unwrap();
        drop(f);
        let q = Queue::durable(dir.path(), 1 << 20).unwrap();
        let front = q.front(10);
        let got: Vec<_> = front
            .iter()
            .map(|p| (p.key.clone(), p.value.clone()))
            .collect();
        assert_eq!(
            got,
            vec![
                (b"a".to_vec(), Some(b"1".to_vec())),
                (b"b".to_vec(), None),
                (b"a".to_vec(), Some(b"2".to_vec()))
            ]
        );
        // Flushed: the log empties; a restart finds nothing.
        q.done_through(front[2].seq).await;
        assert_eq!(q.usage().0, 0);
        assert_eq!(std::fs::metadata(&path).unwrap().len(), 0);
        drop(q);
        assert!(Queue::durable(dir.path(), 1 << 20)
            .unwrap()
            .front(10)
            .is_empty());
    }

    #[tokio::test]
    async fn a_full_queue_refuses_writes() {
        let q = Queue::in_memory(100);
        q.push("ks", b"a", Some(&[0; 40])).await.unwrap();
        let e = q.push("ks", b"b", Some(&[0; 40])).await.unwrap_err();
        assert_eq!(e.code, Code::Unavailable);
        assert!(q.holds("ks", b"a") && !q.holds("ks", b"b"));
        q.done_through(1).await;
        assert!(!q.holds("ks", b"a"));
    }
}
