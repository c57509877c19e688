//! `tunekv backup` and `tunekv restore`: every ordered keyspace's shards, each read at one
//! applied index (a strong read's view, streamed), and every leaderless keyspace's replicas,
//! one stream per node of its ring (each key with its version), kept as checksummed files
//! beside a `manifest.json`; restored through any node (ordered keys written anew, leaderless
//! versions merged into the replicas of each key).
//!
//! A backup directory:
//!
//! ```text
//! manifest.json                 format, when, from where; per keyspace its spec and files
//! ks-<id>/shard-<n>.tkb         an ordered shard: header, records, trailer
//! ks-<id>/node-<n>.tkb          node n's replica of a leaderless keyspace
//! ```
//!
//! `manifest.json` is written last: a directory without it is not a backup.

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::{BufReader, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use tunekv_client::{Client, ClientError};
use tunekv_core::backup::{encode_record, Reader};

const FORMAT: &str = "tunekv-backup";
const VERSION: u32 = 1;
/// Bytes of records per restore request (one record may be larger: it goes alone).
const RESTORE_BATCH_BYTES: usize = 1 << 20;
/// Tries per shard (backup) and per batch (restore) before giving up.
const ATTEMPTS: u32 = 5;

#[derive(Serialize, Deserialize)]
struct Manifest {
    format: String,
    version: u32,
    created_ms: u64,
    /// The node the backup was asked of.
    source: String,
    keyspaces: Vec<KeyspaceEntry>,
}

#[derive(Serialize, Deserialize)]
struct KeyspaceEntry {
    name: String,
    /// What `PUT /v1/keyspaces/{name}` takes to create it again.
    spec: serde_json::Value,
    #[serde(default)]
    shards: Vec<ShardEntry>,
    /// Why the keyspace's data is not in the backup (volatile, leaderless).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    skipped: Option<String>,
}

#[derive(Serialize, Deserialize)]
struct ShardEntry {
    /// The shard (ordered keyspaces; 0 for a leaderless replica's stream).
    shard: u32,
    /// Relative to the backup directory.
    file: String,
    /// The applied index the shard was read at.
    index: u64,
    keys: u64,
    bytes: u64,
    /// The node that streamed it.
    node: u64,
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

fn mb(bytes: u64) -> String {
    match bytes {
        0..1_000_000 => format!("{:.1} kB", bytes as f64 / 1e3),
        _ => format!("{:.1} MB", bytes as f64 / 1e6),
    }
}

/// Whether a failed call may succeed on another node or a little later.
fn retryable(e: &ClientError) -> bool {
    match e.code() {
        None => true,
        Some(code) => matches!(
            code,
            "not_replica" | "unavailable" | "timeout" | "no_quorum"
        ),
    }
}

/// The keyspaces `GET /v1/keyspaces` lists, narrowed to `only` (each must exist).
async fn keyspaces(client: &Client, only: &[String]) -> Result<Vec<serde_json::Value>> {
    let listed = client
        .list_keyspaces()
        .await
        .with_context(|| format!("cannot list the keyspaces at {}", client.base()))?;
    let all: Vec<serde_json::Value> = listed["keyspaces"].as_array().cloned().unwrap_or_default();
    for name in only {
        if !all.iter().any(|k| k["name"].as_str() == Some(name)) {
            bail!("there is no keyspace {name:?}");
        }
    }
    Ok(all
        .into_iter()
        .filter(|k| only.is_empty() || only.iter().any(|n| k["name"].as_str() == Some(n)))
        .collect())
}

/// Each node's HTTP address (removed nodes left out).
type Addresses = BTreeMap<u64, String>;
/// The HTTP addresses of the nodes holding each `(keyspace, shard)`, its leader first.
type Hosts = BTreeMap<(String, u32), Vec<(u64, String)>>;

/// The cluster's nodes, and the nodes holding each ordered shard.
async fn shard_hosts(client: &Client) -> Result<(Addresses, Hosts)> {
    let status = client
        .cluster()
        .await
        .with_context(|| format!("cannot read the cluster's status at {}", client.base()))?;
    let http: Addresses = status["nodes"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|n| n["state"] != "removed")
        .filter_map(|n| Some((n["id"].as_u64()?, n["http"].as_str()?.to_string())))
        .collect();
    let mut out = BTreeMap::new();
    for g in status["groups"].as_array().into_iter().flatten() {
        let (Some(ks), Some(shard)) = (g["keyspace"].as_str(), g["shard"].as_u64()) else {
            continue;
        };
        let leader = g["leader"].as_u64();
        let mut ids: Vec<u64> = g["replicas"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|r| r["node"].as_u64())
            .collect();
        ids.sort_by_key(|id| Some(*id) != leader);
        ids.dedup();
        let hosts = ids
            .into_iter()
            .filter_map(|id| http.get(&id).map(|a| (id, a.clone())))
            .collect();
        out.insert((ks.to_string(), shard as u32), hosts);
    }
    Ok((http, out))
}

/// Reads a shard file through, checking its trailer; its header and record count.
fn check_file(path: &Path) -> Result<(tunekv_core::backup::ShardHeader, u64)> {
    let file = File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    let mut r = Reader::open(BufReader::with_capacity(1 << 20, file))
        .with_context(|| format!("{} is not a shard backup", path.display()))?;
    while r
        .next()
        .with_context(|| format!("{} is damaged", path.display()))?
        .is_some()
    {}
    let n = r.count();
    Ok((r.header, n))
}

/// `tunekv backup`: every keyspace (or those in `only`) into the new directory `out`: ordered
/// shards and leaderless replicas (volatile keyspaces keep their spec only). Exit 0: the
/// backup is complete; an error: it failed (the directory holds no manifest).
pub async fn backup(node: &str, out: &Path, only: &[String]) -> Result<i32> {
    if out.exists()
        && fs::read_dir(out)
            .with_context(|| format!("cannot read {}", out.display()))?
            .next()
            .is_some()
    {
        bail!(
            "{} exists and is not empty: back up into a new directory",
            out.display()
        );
    }
    fs::create_dir_all(out).with_context(|| format!("cannot create {}", out.display()))?;
    let client = Client::new(node);
    let started = Instant::now();
    let wanted = keyspaces(&client, only).await?;
    let (nodes, hosts) = shard_hosts(&client).await?;
    let mut manifest = Manifest {
        format: FORMAT.into(),
        version: VERSION,
        created_ms: now_ms(),
        source: node.to_string(),
        keyspaces: Vec::new(),
    };
    let (mut total_keys, mut total_bytes) = (0u64, 0u64);
    for info in wanted {
        let name = info["name"].as_str().unwrap_or_default().to_string();
        let mut spec = info.clone();
        let id = spec["id"].as_u64().unwrap_or_default();
        if let Some(o) = spec.as_object_mut() {
            o.remove("name");
            o.remove("id");
        }
        let mode = spec["mode"].as_str().unwrap_or("ordered").to_string();
        let mut entry = KeyspaceEntry {
            name: name.clone(),
            spec: spec.clone(),
            shards: Vec::new(),
            skipped: None,
        };
        let dir = format!("ks-{id}");
        match mode.as_str() {
            "ordered" => {}
            "volatile" => {
                println!("{name}: volatile (memory only by design): its spec is kept, no data");
                entry.skipped = Some("volatile keyspaces hold nothing durable".into());
                manifest.keyspaces.push(entry);
                continue;
            }
            _ => {
                fs::create_dir_all(out.join(&dir))?;
                for (node, addr) in &nodes {
                    let file = format!("{dir}/node-{node}.tkb");
                    let path = out.join(&file);
                    let t = Instant::now();
                    let candidates = [(*node, addr.clone())];
                    let Some((header, keys)) =
                        backup_shard(&client, &candidates, &name, 0, &path, false)
                            .await
                            .with_context(|| {
                                format!("cannot back up node {node}'s replica of {name:?}")
                            })?
                    else {
                        continue;
                    };
                    let bytes = fs::metadata(&path)?.len();
                    println!(
                        "{name} replica on node {node}: {keys} keys, {} [{:.1}s]",
                        mb(bytes),
                        t.elapsed().as_secs_f64()
                    );
                    total_keys += keys;
                    total_bytes += bytes;
                    entry.shards.push(ShardEntry {
                        shard: 0,
                        file,
                        index: header.index,
                        keys,
                        bytes,
                        node: header.node,
                    });
                }
                if entry.shards.is_empty() {
                    bail!("no node holds a replica of leaderless keyspace {name:?}");
                }
                manifest.keyspaces.push(entry);
                continue;
            }
        }
        let shards = spec["shards"].as_u64().unwrap_or(1) as u32;
        fs::create_dir_all(out.join(&dir))?;
        for shard in 0..shards {
            let file = format!("{dir}/shard-{shard}.tkb");
            let path = out.join(&file);
            let candidates = hosts
                .get(&(name.clone(), shard))
                .cloned()
                .unwrap_or_default();
            let t = Instant::now();
            let (header, keys) = backup_shard(&client, &candidates, &name, shard, &path, true)
                .await
                .with_context(|| format!("cannot back up shard {shard} of {name:?}"))?
                .context("no node holds it")?;
            let bytes = fs::metadata(&path)?.len();
            println!(
                "{name} shard {shard}: {keys} keys, {} at index {} (node {}) [{:.1}s]",
                mb(bytes),
                header.index,
                header.node,
                t.elapsed().as_secs_f64()
            );
            total_keys += keys;
            total_bytes += bytes;
            entry.shards.push(ShardEntry {
                shard,
                file,
                index: header.index,
                keys,
                bytes,
                node: header.node,
            });
        }
        manifest.keyspaces.push(entry);
    }
    let tmp = out.join("manifest.json.part");
    fs::write(&tmp, serde_json::to_vec_pretty(&manifest)?)?;
    File::open(&tmp)?.sync_all()?;
    fs::rename(&tmp, out.join("manifest.json"))?;
    File::open(out)?.sync_all()?;
    println!(
        "backup of {} keyspaces written to {}: {total_keys} keys, {} in {:.1}s",
        manifest.keyspaces.len(),
        out.display(),
        mb(total_bytes),
        started.elapsed().as_secs_f64()
    );
    Ok(0)
}

/// Streams one shard (or one node's leaderless replica) into `path` from the first of
/// `candidates` that serves it (retrying the others), then reads the file back through its
/// checksum. `None`: the one candidate holds no replica (`any_node`: false, a leaderless
/// keyspace's node outside its ring).
async fn backup_shard(
    client: &Client,
    candidates: &[(u64, String)],
    ks: &str,
    shard: u32,
    path: &Path,
    any_node: bool,
) -> Result<Option<(tunekv_core::backup::ShardHeader, u64)>> {
    let part = PathBuf::from(format!("{}.part", path.display()));
    let mut tried = Vec::new();
    let mut order: Vec<String> = candidates.iter().map(|(_, a)| a.clone()).collect();
    if any_node {
        // The node asked last: it may have learned of a new replica that the status did not
        // list yet.
        order.push(client.base().to_string());
    }
    for attempt in 0..ATTEMPTS {
        for addr in &order {
            let mut file = BufWriter::with_capacity(1 << 20, File::create(&part)?);
            let c = Client::new(addr);
            let streamed = c
                .backup_shard(ks, shard, &mut |piece| file.write_all(piece))
                .await;
            match streamed {
                Ok(()) => {
                    file.flush()?;
                    file.get_ref().sync_all()?;
                    drop(file);
                    match check_file(&part) {
                        Ok(done) => {
                            fs::rename(&part, path)?;
                            return Ok(Some(done));
                        }
                        Err(e) => tried.push(format!("{addr}: {e:#}")),
                    }
                }
                Err(e) if !any_node && e.code() == Some("not_replica") => {
                    let _ = fs::remove_file(&part);
                    return Ok(None);
                }
                Err(e) if retryable(&e) => tried.push(format!("{addr}: {e}")),
                Err(e) => {
                    let _ = fs::remove_file(&part);
                    return Err(e.into());
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(500 << attempt.min(3))).await;
    }
    let _ = fs::remove_file(&part);
    bail!("no node served it: {}", tried.join("; "))
}

/// `tunekv restore`: the keyspaces of backup `from` (or those in `only`) written into the
/// cluster `node` belongs to. Every file is checked before anything is written. Keyspaces
/// missing there are created with the backed-up spec; keys are written as plain SETs with
/// their expiry (already expired ones are left out); keys the backup does not hold are left
/// as they are.
pub async fn restore(node: &str, from: &Path, only: &[String]) -> Result<i32> {
    let path = from.join("manifest.json");
    let manifest: Manifest = serde_json::from_slice(&fs::read(&path).with_context(|| {
        format!(
            "cannot read {} (a backup directory holds it once complete)",
            path.display()
        )
    })?)
    .with_context(|| format!("{} is not a tunekv backup manifest", path.display()))?;
    if manifest.format != FORMAT || manifest.version != VERSION {
        bail!(
            "{} is format {:?} version {}; this tunekv restores {FORMAT:?} version {VERSION}",
            path.display(),
            manifest.format,
            manifest.version
        );
    }
    for name in only {
        if !manifest.keyspaces.iter().any(|k| &k.name == name) {
            bail!("the backup holds no keyspace {name:?}");
        }
    }
    let chosen: Vec<&KeyspaceEntry> = manifest
        .keyspaces
        .iter()
        .filter(|k| only.is_empty() || only.contains(&k.name))
        .collect();
    // Check every file before writing anything.
    let started = Instant::now();
    let mut files = 0;
    for ks in &chosen {
        for s in &ks.shards {
            let (header, keys) = check_file(&from.join(&s.file))?;
            if keys != s.keys || header.keyspace != ks.name || header.shard != s.shard {
                bail!(
                    "{} holds {keys} keys of {:?} shard {}, but the manifest says {} of {:?} \
                     shard {}: the backup is damaged",
                    s.file,
                    header.keyspace,
                    header.shard,
                    s.keys,
                    ks.name,
                    s.shard
                );
            }
            files += 1;
        }
    }
    println!(
        "checked {files} shard files of {} keyspaces [{:.1}s]",
        chosen.len(),
        started.elapsed().as_secs_f64()
    );
    let client = Client::new(node);
    let (mut written, mut expired, mut merged) = (0u64, 0u64, 0u64);
    for ks in &chosen {
        let want_mode = ks.spec["mode"].as_str().unwrap_or("ordered");
        match client.keyspace(&ks.name).await {
            Ok(have) => {
                let mode = have["mode"].as_str().unwrap_or("ordered");
                if mode != want_mode {
                    bail!(
                        "keyspace {:?} exists here as {mode}, the backup's is {want_mode}: \
                         restore it under its own cluster or drop --keyspace {}",
                        ks.name,
                        ks.name
                    );
                }
                println!(
                    "{}: exists; {} into it",
                    ks.name,
                    if want_mode == "ordered" {
                        "writing the backed-up keys"
                    } else {
                        "merging the backed-up versions"
                    }
                );
            }
            Err(e) if e.code() == Some("keyspace_not_found") => {
                client
                    .create_keyspace(&ks.name, &ks.spec)
                    .await
                    .with_context(|| format!("cannot create keyspace {:?}", ks.name))?;
                println!("{}: created ({want_mode})", ks.name);
            }
            Err(e) => return Err(e).with_context(|| format!("cannot read keyspace {:?}", ks.name)),
        }
        if let Some(why) = &ks.skipped {
            println!("{}: no data in the backup ({why})", ks.name);
            continue;
        }
        for s in &ks.shards {
            let t = Instant::now();
            let (w, e) = restore_file(&client, &ks.name, &from.join(&s.file)).await?;
            if want_mode == "ordered" {
                println!(
                    "{} shard {}: {w} keys written, {e} expired left out [{:.1}s]",
                    ks.name,
                    s.shard,
                    t.elapsed().as_secs_f64()
                );
                written += w;
                expired += e;
            } else {
                println!(
                    "{} replica of node {}: {w} versions merged into the keys' replicas [{:.1}s]",
                    ks.name,
                    s.node,
                    t.elapsed().as_secs_f64()
                );
                merged += w;
            }
        }
    }
    println!(
        "restored {written} keys ({expired} expired left out) and merged {merged} leaderless \
         versions of {} keyspaces in {:.1}s",
        chosen.len(),
        started.elapsed().as_secs_f64()
    );
    Ok(0)
}

/// Sends one shard file's records in batches; (written, expired).
async fn restore_file(client: &Client, ks: &str, path: &Path) -> Result<(u64, u64)> {
    let file = File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    let mut r = Reader::open(BufReader::with_capacity(1 << 20, file))?;
    let (mut written, mut expired) = (0, 0);
    let mut batch = Vec::new();
    loop {
        let record = r.next()?;
        if let Some(rec) = &record {
            encode_record(&mut batch, &rec.key, &rec.value, rec.expires_ms);
        }
        if !batch.is_empty() && (record.is_none() || batch.len() >= RESTORE_BATCH_BYTES) {
            let (w, e) = send_batch(client, ks, std::mem::take(&mut batch)).await?;
            written += w;
            expired += e;
        }
        if record.is_none() {
            return Ok((written, expired));
        }
    }
}

/// One restore request, retried while the failure may pass (a batch written twice leaves the
/// same state).
async fn send_batch(client: &Client, ks: &str, batch: Vec<u8>) -> Result<(u64, u64)> {
    let mut attempt = 0;
    loop {
        match client.restore_batch(ks, batch.clone()).await {
            Ok(v) => {
                return Ok((
                    v["written"].as_u64().unwrap_or(0),
                    v["expired"].as_u64().unwrap_or(0),
                ))
            }
            Err(e) if retryable(&e) && attempt + 1 < ATTEMPTS => {
                eprintln!("retrying a batch of {ks:?}: {e}");
                tokio::time::sleep(Duration::from_millis(500 << attempt.min(3))).await;
                attempt += 1;
            }
            Err(e) => return Err(e).with_context(|| format!("cannot restore into {ks:?}")),
        }
    }
}
