//! The cache's configuration (`tunekv cache --config cache.toml`, docs/cache.md).

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// How writes sent to the cache reach the store, per keyspace.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Strategy {
    /// Cache-aside / read-through: reads fill the cache, writes go to the store and drop the
    /// key's entry (the feed, or the next read, brings the new value).
    #[default]
    ReadThrough,
    /// Writes go to the store; once acknowledged, the entry is set at the write's position, so
    /// the writer's next read hits.
    WriteThrough,
    /// Writes are acknowledged once in the cache's write-behind queue (synced to its log, or
    /// in memory only) and flushed to the store in batches, in order; reads see them once they
    /// are in the store.
    WriteBehind,
}

impl Strategy {
    pub fn as_str(self) -> &'static str {
        match self {
            Strategy::ReadThrough => "read_through",
            Strategy::WriteThrough => "write_through",
            Strategy::WriteBehind => "write_behind",
        }
    }
}

/// Per-keyspace settings.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct KeyspaceCache {
    pub strategy: Strategy,
    /// Overrides `ttl_ms` for this keyspace's entries.
    pub ttl_ms: Option<u64>,
}

/// `[auth]`: the cache's own user on a cluster with auth on. With it, the cache also asks
/// every caller for credentials and checks their rights before any answer (docs/cache.md).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CacheAuth {
    /// The user the cache logs in as: it needs read on every keyspace it caches (fills, the
    /// change feed, warming) and write on its write-behind keyspaces.
    pub user: String,
    /// A file holding its password (readable by its owner only); without it, the password is
    /// taken from the environment variable `TUNEKV_CACHE_PASSWORD`. Never in this file.
    #[serde(default)]
    pub password_file: Option<String>,
}

/// The environment variable holding the cache user's password (when no `password_file`).
pub const PASSWORD_ENV: &str = "TUNEKV_CACHE_PASSWORD";

impl CacheAuth {
    /// The password, from `password_file` or [`PASSWORD_ENV`].
    pub fn password(&self) -> Result<String, String> {
        let Some(path) = &self.password_file else {
            return std::env::var(PASSWORD_ENV).map_err(|_| {
                format!(
                    "auth.user = {:?} needs its password: set {PASSWORD_ENV} or auth.password_file",
                    self.user
                )
            });
        };
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(path)
                .map_err(|e| format!("auth.password_file {path}: {e}"))?
                .permissions()
                .mode();
            if mode & 0o077 != 0 {
                return Err(format!(
                    "auth.password_file {path} is readable by others (mode {:o}): chmod 600 it",
                    mode & 0o777
                ));
            }
        }
        let text =
            std::fs::read_to_string(path).map_err(|e| format!("auth.password_file {path}: {e}"))?;
        let password = text.trim_end_matches(['\r', '\n']).to_string();
        if password.is_empty() {
            return Err(format!("auth.password_file {path} is empty"));
        }
        Ok(password)
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CacheConfig {
    /// HTTP listen address (the node's read API, plus `/v1/cache`).
    pub http: String,
    /// RESP listen address (none: no RESP).
    pub resp: Option<String>,
    /// The cluster's nodes (HTTP addresses); the cache fails over between them.
    pub upstream: Vec<String>,
    /// The cluster secret: the cache checks and issues session tokens like a node.
    pub cluster_secret: String,
    /// Memory for entries, in bytes (key + value + `ENTRY_OVERHEAD_BYTES` each).
    pub memory_bytes: u64,
    /// Every entry expires this long after it was filled (mandatory: never infinite).
    pub ttl_ms: u64,
    /// Each entry's TTL is spread uniformly by ± this percentage, so entries filled together do
    /// not expire together.
    pub ttl_jitter_pct: u32,
    /// TTL of a cached absence (a key the store does not hold).
    pub negative_ttl_ms: u64,
    /// A value whose own expiry (`EXPIRE`, `SET … PX`) is nearer than this is not served from
    /// memory: clocks of the cache and the nodes may disagree by this much.
    pub expiry_margin_ms: u64,
    /// How long a read whose level needs a newer position than the feed has reached waits for
    /// the feed before asking the store.
    pub feed_wait_ms: u64,
    /// Wait budget of a request that names none (`wait_ms_max`).
    pub wait_ms_default: u64,
    /// A shard whose feed stays behind the read index the cache learned for this long makes
    /// the feed move to another node.
    pub feed_lag_switch_ms: u64,
    /// Directory of the write-behind log: write-behind writes are acknowledged once synced to
    /// it, and a restart flushes what it holds before serving. Without it, the queue is in
    /// memory only (`write_behind_in_memory = true` must say so).
    pub write_behind_dir: Option<String>,
    /// Accept a write-behind queue in memory only: a crash loses the writes not yet flushed.
    pub write_behind_in_memory: bool,
    /// Most bytes waiting in the write-behind queue; past it writes are refused (`unavailable`).
    pub write_behind_bytes_max: u64,
    /// Most writes flushed to the store at once.
    pub write_behind_batch_max: usize,
    /// Warming: a file of keys to read at start, one `KEYSPACE KEY` per line (`b64:…` for a
    /// key in base64url).
    pub warm_keys_file: Option<String>,
    /// Warming: `KEYSPACE/PREFIX` entries whose keys are scanned and read at start.
    pub warm_prefixes: Vec<String>,
    /// Where the hot set (the keys in memory) is saved at shutdown and read back at start.
    pub hot_set_file: Option<String>,
    /// Most keys saved in the hot set.
    pub hot_set_max: usize,
    /// Warming reads (and scan pages) per second: the store is never herded by a warm-up.
    pub warm_rate_per_s: u32,
    /// Answer `GET /v1/cache/ready` with 503 until warming is done.
    pub ready_when_warm: bool,
    pub keyspaces: BTreeMap<String, KeyspaceCache>,
    /// The cache's user on a cluster with auth on; callers must then authenticate too.
    pub auth: Option<CacheAuth>,
    /// TLS: `ca` is trusted for the nodes (spoken to over `https://`), `cert` and `key` serve
    /// the cache's HTTP and RESP listeners (TLS only).
    pub tls: Option<tunekv_node::tls::TlsConfig>,
}

impl Default for CacheConfig {
    fn default() -> Self {
        CacheConfig {
            http: "127.0.0.1:7480".into(),
            resp: None,
            upstream: Vec::new(),
            cluster_secret: String::new(),
            memory_bytes: 256 << 20,
            ttl_ms: 300_000,
            ttl_jitter_pct: 10,
            negative_ttl_ms: 5_000,
            expiry_margin_ms: 500,
            feed_wait_ms: 200,
            wait_ms_default: 1_000,
            feed_lag_switch_ms: 3_000,
            write_behind_dir: None,
            write_behind_in_memory: false,
            write_behind_bytes_max: 64 << 20,
            write_behind_batch_max: 64,
            warm_keys_file: None,
            warm_prefixes: Vec::new(),
            hot_set_file: None,
            hot_set_max: 100_000,
            warm_rate_per_s: 500,
            ready_when_warm: false,
            keyspaces: BTreeMap::new(),
            auth: None,
            tls: None,
        }
    }
}

/// The longest TTL accepted (a week): entries always expire.
pub const TTL_MS_MAX: u64 = 7 * 24 * 3600 * 1000;

impl CacheConfig {
    pub fn from_toml(text: &str) -> Result<CacheConfig, String> {
        let c: CacheConfig = toml::from_str(text).map_err(|e| e.to_string())?;
        c.validate()?;
        Ok(c)
    }

    /// Refuses settings that would break a promise: no upstream, no secret, a TTL of zero or
    /// beyond [`TTL_MS_MAX`], a jitter of 100 % or more.
    pub fn validate(&self) -> Result<(), String> {
        if self.upstream.is_empty() {
            return Err("upstream: name at least one node's HTTP address".into());
        }
        if self.cluster_secret.len() < 16 {
            return Err(
                "cluster_secret: the cluster's secret (at least 16 characters) is needed to \
                 check and issue session tokens"
                    .into(),
            );
        }
        let ttls = std::iter::once(("ttl_ms", self.ttl_ms))
            .chain(std::iter::once(("negative_ttl_ms", self.negative_ttl_ms)))
            .chain(
                self.keyspaces
                    .values()
                    .filter_map(|k| k.ttl_ms.map(|t| ("keyspaces.*.ttl_ms", t))),
            );
        for (name, ttl) in ttls {
            if ttl == 0 || ttl > TTL_MS_MAX {
                return Err(format!(
                    "{name} = {ttl}: a TTL is mandatory, between 1 and {TTL_MS_MAX} ms"
                ));
            }
        }
        if self.ttl_jitter_pct >= 100 {
            return Err("ttl_jitter_pct must be below 100".into());
        }
        let behind = self
            .keyspaces
            .values()
            .any(|k| k.strategy == Strategy::WriteBehind);
        if behind && self.write_behind_dir.is_none() && !self.write_behind_in_memory {
            return Err(
                "a write_behind keyspace needs write_behind_dir (acknowledged once synced) or \
                 write_behind_in_memory = true (a crash loses what is not flushed yet)"
                    .into(),
            );
        }
        if self.warm_rate_per_s == 0 {
            return Err("warm_rate_per_s must be at least 1".into());
        }
        if let Some(bad) = self.warm_prefixes.iter().find(|p| !p.contains('/')) {
            return Err(format!(
                "warm_prefixes: {bad:?} is not KEYSPACE/PREFIX (e.g. \"users/profile:\")"
            ));
        }
        if self.write_behind_batch_max == 0 {
            return Err("write_behind_batch_max must be at least 1".into());
        }
        if let Some(a) = &self.auth {
            tunekv_core::auth::check_name("user", &a.user).map_err(|e| e.message)?;
        }
        if self.memory_bytes < 1 << 20 {
            return Err("memory_bytes must be at least 1 MiB".into());
        }
        Ok(())
    }

    pub fn keyspace(&self, name: &str) -> KeyspaceCache {
        self.keyspaces.get(name).cloned().unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn base() -> String {
        "upstream = [\"127.0.0.1:1\"]\ncluster_secret = \"0123456789abcdef0123\"\n".into()
    }

    #[test]
    fn a_ttl_is_mandatory_and_bounded() {
        assert!(CacheConfig::from_toml(&base()).is_ok());
        for bad in ["ttl_ms = 0", "negative_ttl_ms = 0", "ttl_ms = 999999999999"] {
            let e = CacheConfig::from_toml(&format!("{}{bad}\n", base())).unwrap_err();
            assert!(e.contains("TTL is mandatory"), "{bad}: {e}");
        }
        let per_ks = format!("{}[keyspaces.k]\nttl_ms = 0\n", base());
        assert!(CacheConfig::from_toml(&per_ks).is_err());
    }

    #[test]
    fn unknown_settings_and_missing_upstream_are_refused() {
        assert!(CacheConfig::from_toml(&format!("{}ttl = 5\n", base())).is_err());
        assert!(CacheConfig::from_toml("cluster_secret = \"0123456789abcdef0123\"").is_err());
        let ws = format!("{}[keyspaces.k]\nstrategy = \"write_through\"\n", base());
        assert_eq!(
            CacheConfig::from_toml(&ws).unwrap().keyspace("k").strategy,
            Strategy::WriteThrough
        );
        let bad = format!("{}[keyspaces.k]\nstrategy = \"write_sideways\"\n", base());
        assert!(CacheConfig::from_toml(&bad).is_err());
        // Write-behind must say where its queue lives, or that it may lose writes.
        let wb = format!("{}[keyspaces.k]\nstrategy = \"write_behind\"\n", base());
        assert!(CacheConfig::from_toml(&wb)
            .unwrap_err()
            .contains("write_behind_dir"));
        let mem = format!("write_behind_in_memory = true\n{wb}");
        assert!(CacheConfig::from_toml(&mem).is_ok());
    }
}
