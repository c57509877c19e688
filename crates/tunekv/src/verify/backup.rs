//! `verify`'s backup client (issue 21): through the run it backs up one shard of the ordered
//! keyspace at a time from a random node (`GET /v1/admin/backup/{ks}/{shard}`), as `tunekv
//! backup` does, and records what the stream held as reads (`tunekv_check::backup_reads`: one
//! `strong` read of each of the shard's keys at the stream's index). The simulator's backup
//! client does the same.

use super::{Recorder, Target, KEYSPACE};
use rand::{Rng, SeedableRng};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tunekv_check::{backup_reads, Backup};
use tunekv_client::Client;
use tunekv_core::backup::read_whole;
use tunekv_core::keyspace::shard_for_key;

/// The client id backups are recorded under (workload clients count from 1).
pub const BACKUP_CLIENT: u64 = 10_000;
/// Pause between two backups of a shard.
const EVERY: Duration = Duration::from_millis(400);
/// Longest one backup may take (a paused or partitioned node answers nothing).
const WAIT: Duration = Duration::from_secs(5);

/// Backs up shards of `KEYSPACE` (of `shards` shards, keys `keys`) until `stop`, counting
/// the backups recorded in `done`.
pub async fn run(
    targets: Arc<Vec<Target>>,
    shards: u32,
    keys: Vec<String>,
    rec: Arc<Recorder>,
    seed: u64,
    stop: Arc<AtomicBool>,
    done: Arc<AtomicU64>,
) {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed ^ 0xbac4);
    while !stop.load(Ordering::Relaxed) {
        tokio::time::sleep(EVERY).await;
        let i = rng.gen_range(0..targets.len());
        let shard = rng.gen_range(0..shards);
        let client = Client::with_timeout(&targets[i].http, WAIT);
        let invoke_ns = rec.now_ns();
        let mut bytes = Vec::new();
        let streamed = tokio::time::timeout(
            WAIT,
            client.backup_shard(KEYSPACE, shard, &mut |piece| {
                bytes.extend_from_slice(piece);
                Ok(())
            }),
        )
        .await;
        let complete_ns = rec.now_ns();
        // A refused or cut backup is no read: nothing to record.
        if !matches!(streamed, Ok(Ok(()))) {
            continue;
        }
        let Ok((h, held)) = read_whole(&bytes) else {
            continue;
        };
        let backup = Backup {
            client: BACKUP_CLIENT,
            node: format!("backup@n{}", i + 1),
            shard: h.shard,
            index: h.index,
            commit_ms: h.commit_ms,
            invoke_ns,
            complete_ns,
            held: &held,
        };
        let of_shard = keys
            .iter()
            .filter(|k| shard_for_key(k.as_bytes(), shards).0 == shard)
            .map(String::as_str);
        for op in backup_reads(&backup, of_shard) {
            rec.push(op, None);
        }
        done.fetch_add(1, Ordering::Relaxed);
    }
}
