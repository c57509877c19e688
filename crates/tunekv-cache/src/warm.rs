//! Warming: at start the cache reads the keys it was told to hold — the hot set it saved at its
//! last shutdown, a key list, every key under configured prefixes — at `warm_rate_per_s`, so a
//! warm-up cannot herd the store. `GET /v1/cache/ready` answers 503 until it is done when
//! `ready_when_warm` asks for it. Warming reads go through `Cache::get` at `eventual`, like any
//! miss: they are filled by the same rules and counted as misses.
//!
//! Key files (the key list and the hot set) hold one `KEYSPACE KEY` per line; a key that is
//! not UTF-8 or holds whitespace is written `b64:` + base64url. Blank lines and `#` comments are
//! skipped.

use crate::cache::Cache;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;
use tunekv_core::{Level, Session};

/// Most keys one warm-up reads (key list, hot set and prefixes together).
pub const WARM_KEYS_MAX: usize = 1_000_000;

/// Where warming stands (`/v1/cache` and `/v1/cache/ready`).
#[derive(Default)]
pub struct Warming {
    pub total: AtomicU64,
    pub done: AtomicU64,
    pub failed: AtomicU64,
    pub finished: AtomicBool,
}

fn encode_key(key: &[u8]) -> String {
    match std::str::from_utf8(key) {
        Ok(s) if !s.is_empty() && !s.starts_with("b64:") && !s.contains(char::is_whitespace) => {
            s.to_string()
        }
        _ => format!("b64:{}", tunekv_api::request::base64url(key)),
    }
}

fn decode_key(text: &str) -> Option<Vec<u8>> {
    match text.strip_prefix("b64:") {
        Some(b) => {
            use base64::Engine;
            base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(b.trim_end_matches('='))
                .ok()
        }
        None => Some(text.as_bytes().to_vec()),
    }
}

/// The `(keyspace, key)` lines of a key file; a line that does not parse is reported and
/// skipped.
pub fn read_key_file(path: &str) -> Vec<(String, Vec<u8>)> {
    let Ok(text) = std::fs::read_to_string(path) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let parsed = line
            .split_once(char::is_whitespace)
            .and_then(|(ks, key)| Some((ks.to_string(), decode_key(key.trim())?)));
        match parsed {
            Some(kv) => out.push(kv),
            None => eprintln!("{path}:{}: not KEYSPACE KEY; skipped", n + 1),
        }
    }
    out
}

impl Cache {
    /// Saves the hot set (up to `hot_set_max` keys in memory) to `hot_set_file`, if set.
    pub fn save_hot_set(&self) {
        let Some(path) = &self.config.hot_set_file else {
            return;
        };
        let names: std::collections::HashMap<u64, String> = self
            .spaces()
            .iter()
            .map(|s| (s.id, s.name.to_string()))
            .collect();
        let mut text = String::from("# the cache's hot set at shutdown: KEYSPACE KEY\n");
        let mut saved = 0;
        for (id, key) in self.store.keys(self.config.hot_set_max) {
            if let Some(ks) = names.get(&id) {
                text.push_str(&format!("{ks} {}\n", encode_key(&key)));
                saved += 1;
            }
        }
        let tmp = format!("{path}.tmp");
        let written = std::fs::write(&tmp, text).and_then(|_| std::fs::rename(&tmp, path));
        match written {
            Ok(()) => println!("saved the hot set ({saved} keys) to {path}"),
            Err(e) => eprintln!("cannot save the hot set to {path}: {e}"),
        }
    }

    /// Loads `ks` and waits (at most `timeout`) until its feed is live on every shard.
    pub async fn live(
        self: &Arc<Self>,
        ks: &str,
        timeout: Duration,
    ) -> Result<(), tunekv_core::TunekvError> {
        let deadline = Instant::now() + timeout;
        let space = self.space(ks, deadline).await?;
        for copy in &space.shards {
            if !copy.wait_fed(0, deadline).await {
                return Err(tunekv_core::TunekvError::new(
                    tunekv_core::Code::Timeout,
                    format!(
                        "the feed of shard {} did not start within {timeout:?}",
                        copy.shard
                    ),
                ));
            }
        }
        Ok(())
    }

    /// Whether the cache reports ready: always, unless `ready_when_warm` and warming is not done.
    pub fn ready(&self) -> bool {
        !self.config.ready_when_warm || self.warming.finished.load(Ordering::SeqCst)
    }

    /// Reads every key to warm, paced at `warm_rate_per_s`; prints progress.
    pub async fn warm(self: Arc<Self>) {
        let mut keys: Vec<(String, Vec<u8>)> = Vec::new();
        if let Some(path) = &self.config.hot_set_file {
            keys.extend(read_key_file(path));
        }
        if let Some(path) = &self.config.warm_keys_file {
            let listed = read_key_file(path);
            if listed.is_empty() && std::fs::metadata(path).is_err() {
                eprintln!("warm_keys_file {path} cannot be read; warming without it");
            }
            keys.extend(listed);
        }
        let pace = Duration::from_secs(1) / self.config.warm_rate_per_s.max(1);
        let mut tick = tokio::time::interval(pace);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // Prefix scans, one page (500 keys) per tick.
        for entry in &self.config.warm_prefixes {
            let Some((ks, prefix)) = entry.split_once('/') else {
                continue;
            };
            let mut cursor = 0;
            loop {
                tick.tick().await;
                let deadline = Instant::now() + Duration::from_secs(5);
                match self
                    .upstream
                    .scan(ks, prefix.as_bytes(), cursor, deadline)
                    .await
                {
                    Ok((page, next)) => {
                        keys.extend(page.into_iter().map(|k| (ks.to_string(), k)));
                        cursor = next;
                    }
                    Err(e) => {
                        eprintln!("warming: cannot scan {entry}: {}", e.message);
                        break;
                    }
                }
                if cursor == 0 || keys.len() >= WARM_KEYS_MAX {
                    break;
                }
            }
        }
        keys.truncate(WARM_KEYS_MAX);
        let mut seen = std::collections::HashSet::new();
        keys.retain(|k| seen.insert(k.clone()));
        // A fill is cached only once the keyspace's feed is live: load each keyspace first.
        let spaces: std::collections::BTreeSet<&str> =
            keys.iter().map(|(ks, _)| ks.as_str()).collect();
        for ks in spaces {
            if let Err(e) = self.live(ks, Duration::from_secs(10)).await {
                eprintln!("warming: keyspace {ks}: {}", e.message);
            }
        }
        let w = &self.warming;
        w.total.store(keys.len() as u64, Ordering::SeqCst);
        if !keys.is_empty() {
            println!(
                "warming {} keys at up to {} reads/s ...",
                keys.len(),
                self.config.warm_rate_per_s
            );
        }
        let started = Instant::now();
        let mut said = Instant::now();
        for (ks, key) in keys {
            tick.tick().await;
            let mut session = Session::new();
            let r = self
                .get(&ks, &key, Some(Level::Eventual), None, &mut session)
                .await;
            w.done.fetch_add(1, Ordering::Relaxed);
            if r.is_err() {
                w.failed.fetch_add(1, Ordering::Relaxed);
            }
            if said.elapsed() >= Duration::from_secs(5) {
                println!(
                    "warming: {} of {} keys read",
                    w.done.load(Ordering::Relaxed),
                    w.total.load(Ordering::Relaxed)
                );
                said = Instant::now();
            }
        }
        w.finished.store(true, Ordering::SeqCst);
        if w.total.load(Ordering::Relaxed) > 0 {
            println!(
                "warm: {} keys read in {:.1}s ({} failed)",
                w.done.load(Ordering::Relaxed),
                started.elapsed().as_secs_f64(),
                w.failed.load(Ordering::Relaxed)
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_files_round_trip_every_key() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keys");
        let keys: Vec<Vec<u8>> = vec![
            b"plain".to_vec(),
            b"with space".to_vec(),
            vec![0xff, 0, 7],
            b"b64:looks-encoded".to_vec(),
        ];
        let mut text = String::from("# comment\n\n");
        for k in &keys {
            text.push_str(&format!("ks {}\n", encode_key(k)));
        }
        text.push_str("no-key-on-this-line\n");
        std::fs::write(&path, text).unwrap();
        let read = read_key_file(path.to_str().unwrap());
        let got: Vec<Vec<u8>> = read.iter().map(|(_, k)| k.clone()).collect();
        assert_eq!(got, keys);
        assert!(read.iter().all(|(ks, _)| ks == "ks"));
    }
}
