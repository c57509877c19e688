//! `tunekv bench --backup`: what `tunekv backup` and `tunekv restore` cost. Loads `--keys`
//! keys of `--value-bytes` into an ordered keyspace through restore batches (the write path a
//! restore takes), backs the keyspace up (`tunekv backup`, while nothing else runs), then
//! restores that backup into the same keyspace (`tunekv restore`: every file checked, then
//! written again); keys/s and MB/s of each (with `--out`: backup.json).

use super::scale::dir_bytes;
use crate::targets::Target;
use anyhow::{bail, Context, Result};
use serde_json::json;
use std::time::Instant;
use tunekv_client::Client;
use tunekv_core::backup::encode_record;

const KEYSPACE: &str = "bench_backup";
/// Bytes of records per load request (what `tunekv restore` sends).
const BATCH_BYTES: usize = 1 << 20;

struct Row {
    what: &'static str,
    keys: u64,
    bytes: u64,
    seconds: f64,
}

pub async fn run(
    targets: &[Target],
    keys: usize,
    value_bytes: usize,
    out: Option<&std::path::Path>,
) -> Result<i32> {
    let node = targets.first().context("no node to measure")?.http.clone();
    let client = Client::new(&node);
    client
        .create_keyspace(
            KEYSPACE,
            &json!({"mode": "ordered", "shards": 4, "replicas": 3, "default_level": "strong"}),
        )
        .await
        .context("cannot create the keyspace")?;
    let value = vec![b'v'; value_bytes];
    let keys = keys as u64;
    println!("loading {keys} keys of {value_bytes} bytes through restore batches ...");
    let began = Instant::now();
    let mut batch = Vec::with_capacity(BATCH_BYTES + value_bytes + 64);
    let mut bytes = 0u64;
    for i in 0..keys {
        let key = format!("key:{i:010}");
        encode_record(&mut batch, key.as_bytes(), &value, None);
        if batch.len() >= BATCH_BYTES || i + 1 == keys {
            let sent = std::mem::take(&mut batch);
            bytes += sent.len() as u64;
            let answer = client
                .restore_batch(KEYSPACE, sent)
                .await
                .with_context(|| format!("a load batch up to key {i}"))?;
            if answer["written"].as_u64().unwrap_or(0) == 0 {
                bail!("a load batch wrote nothing: {answer}");
            }
        }
    }
    let mut rows = vec![Row {
        what: "load (restore batches)",
        keys,
        bytes,
        seconds: began.elapsed().as_secs_f64(),
    }];
    let backup_dir =
        std::env::temp_dir().join(format!("tunekv-bench-backup-{}", std::process::id()));
    let measured = backup_and_restore(&node, &backup_dir, keys).await;
    let _ = std::fs::remove_dir_all(&backup_dir);
    rows.extend(measured?);
    print(&rows, out)?;
    Ok(0)
}

/// `tunekv backup` of the keyspace into `backup_dir`, then `tunekv restore` of it.
async fn backup_and_restore(
    node: &str,
    backup_dir: &std::path::Path,
    keys: u64,
) -> Result<Vec<Row>> {
    let only = [KEYSPACE.to_string()];
    let mut rows = Vec::new();
    let began = Instant::now();
    let code = crate::backup_cmd::backup(node, backup_dir, &only).await?;
    if code != 0 {
        bail!("tunekv backup exited {code}");
    }
    let seconds = began.elapsed().as_secs_f64();
    let file_bytes = dir_bytes(backup_dir);
    rows.push(Row {
        what: "backup",
        keys,
        bytes: file_bytes,
        seconds,
    });
    let began = Instant::now();
    let code = crate::backup_cmd::restore(node, backup_dir, &only).await?;
    if code != 0 {
        bail!("tunekv restore exited {code}");
    }
    rows.push(Row {
        what: "restore",
        keys,
        bytes: file_bytes,
        seconds: began.elapsed().as_secs_f64(),
    });
    Ok(rows)
}

fn print(rows: &[Row], out: Option<&std::path::Path>) -> Result<()> {
    println!();
    println!(
        "{:<24} | {:>10} | {:>9} | {:>8} | {:>10} | {:>7}",
        "row", "keys", "MB", "seconds", "keys/s", "MB/s"
    );
    println!("{}", "-".repeat(24 + 10 + 9 + 8 + 10 + 7 + 15));
    for r in rows {
        println!(
            "{:<24} | {:>10} | {:>9.1} | {:>8.2} | {:>10.0} | {:>7.1}",
            r.what,
            r.keys,
            r.bytes as f64 / 1e6,
            r.seconds,
            r.keys as f64 / r.seconds.max(1e-9),
            r.bytes as f64 / 1e6 / r.seconds.max(1e-9)
        );
    }
    if let Some(out) = out {
        std::fs::create_dir_all(out)?;
        let json: Vec<serde_json::Value> = rows
            .iter()
            .map(|r| json!({"row": r.what, "keys": r.keys, "bytes": r.bytes, "seconds": r.seconds}))
            .collect();
        std::fs::write(out.join("backup.json"), serde_json::to_vec_pretty(&json)?)?;
        println!("wrote {}", out.join("backup.json").display());
    }
    Ok(())
}
