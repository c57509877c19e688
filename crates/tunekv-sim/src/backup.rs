//! The simulator's backup client (issue 21), as `verify`'s: through the faults it backs up one
//! shard of the ordered keyspace at a time from a random node (`GET
//! /v1/admin/backup/{ks}/{shard}`, what `tunekv backup` asks) and records each stream that
//! arrived whole as reads (`tunekv_check::backup_reads`: one `strong` read of each of the
//! shard's keys at the stream's index), which the checkers judge like any strong read.

use crate::client::{self, KEYSPACE};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tunekv_check::history::Operation;
use tunekv_check::{backup_reads, Backup};
use tunekv_core::backup::read_whole;
use tunekv_core::keyspace::shard_for_key;

/// The client id backups are recorded under (the workload's clients count from 0).
pub const BACKUP_CLIENT: u64 = 10_000;
/// Virtual time between two backups.
const EVERY: Duration = Duration::from_millis(400);

/// Backs up shards of the keyspace (`shards` shards, keys `k0` … `k{keys - 1}`) from nodes
/// `n1` … `n{nodes}` until virtual time `end_ns`, pushing what each whole stream held to
/// `history`; returns how many backups were recorded.
pub async fn run(
    seed: u64,
    nodes: usize,
    shards: u32,
    keys: usize,
    end_ns: u64,
    history: Arc<Mutex<Vec<Operation>>>,
) -> usize {
    let mut rng = StdRng::seed_from_u64(seed ^ 0xbac4);
    let keys: Vec<String> = (0..keys).map(|k| format!("k{k}")).collect();
    let mut recorded = 0;
    while client::now_ns() < end_ns {
        tokio::time::sleep(EVERY).await;
        let node = rng.gen_range(0..nodes);
        let shard = rng.gen_range(0..shards);
        let invoke_ns = client::now_ns();
        let answer = client::request(
            &format!("n{}", node + 1),
            "GET",
            &format!("/v1/admin/backup/{KEYSPACE}/{shard}"),
            "",
            Vec::new(),
        )
        .await;
        let complete_ns = client::now_ns();
        // A refused or cut backup is no read: nothing to record.
        let Ok(answer) = answer else { continue };
        if answer.status != 200 {
            continue;
        }
        let Ok((header, held)) = read_whole(&answer.body) else {
            continue;
        };
        let backup = Backup {
            client: BACKUP_CLIENT,
            node: format!("backup@n{}", node + 1),
            shard: header.shard,
            index: header.index,
            commit_ms: header.commit_ms,
            invoke_ns,
            complete_ns,
            held: &held,
        };
        let of_shard = keys
            .iter()
            .filter(|k| shard_for_key(k.as_bytes(), shards).0 == shard)
            .map(String::as_str);
        let reads = backup_reads(&backup, of_shard);
        history
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .extend(reads);
        recorded += 1;
    }
    recorded
}
