//! Keyspace specs (DESIGN §2): mode, shard count, replica count, default level, limits; and the
//! pure placement rules (which shard a key is in, which nodes hold a shard).

use crate::code::{Code, TunekvError};
use crate::ids::{NodeId, ShardId, SHARDS_MAX};
use crate::level::Level;
use crate::limits::{VALUE_BYTES_MAX_CEILING, VALUE_BYTES_MAX_DEFAULT};
use serde::{Deserialize, Serialize};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    Ordered,
    Leaderless,
    Volatile,
}

/// What a client sends in `PUT /v1/keyspaces/{ks}`; missing fields take their defaults.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyspaceSpec {
    #[serde(default = "default_mode")]
    pub mode: Mode,
    #[serde(default = "default_shards")]
    pub shards: u32,
    #[serde(default = "default_replicas")]
    pub replicas: u32,
    /// Kept as text so the catalog stores exactly what DESIGN's syntax says.
    #[serde(default = "default_level")]
    pub default_level: String,
    #[serde(default = "default_value_bytes_max")]
    pub value_bytes_max: u64,
}

fn default_mode() -> Mode {
    Mode::Ordered
}
fn default_shards() -> u32 {
    4
}
fn default_replicas() -> u32 {
    3
}
fn default_level() -> String {
    "strong".to_string()
}
fn default_value_bytes_max() -> u64 {
    VALUE_BYTES_MAX_DEFAULT
}

impl Default for KeyspaceSpec {
    fn default() -> Self {
        KeyspaceSpec {
            mode: default_mode(),
            shards: default_shards(),
            replicas: default_replicas(),
            default_level: default_level(),
            value_bytes_max: default_value_bytes_max(),
        }
    }
}

impl KeyspaceSpec {
    /// Checks the spec against this build and a cluster of `nodes` nodes.
    pub fn validate(&self, nodes: usize) -> Result<(), TunekvError> {
        let invalid = |m: String| Err(TunekvError::new(Code::KeyspaceInvalid, m));
        if self.mode != Mode::Ordered {
            return invalid(format!(
                "mode {:?} is not available in this build; use \"ordered\"",
                self.mode
            ));
        }
        if self.shards == 0 || self.shards > SHARDS_MAX {
            return invalid(format!(
                "shards must be 1 to {SHARDS_MAX}, got {}",
                self.shards
            ));
        }
        if self.replicas == 0 || self.replicas as usize > nodes {
            return invalid(format!(
                "replicas must be 1 to the cluster's {nodes} nodes, got {}",
                self.replicas
            ));
        }
        if self.value_bytes_max == 0 || self.value_bytes_max > VALUE_BYTES_MAX_CEILING {
            return invalid(format!(
                "value_bytes_max must be 1 to {VALUE_BYTES_MAX_CEILING}, got {}",
                self.value_bytes_max
            ));
        }
        let level = Level::parse(&self.default_level)
            .map_err(|e| TunekvError::new(Code::KeyspaceInvalid, e.message))?;
        if !level.is_enforced() {
            return invalid(format!(
                "default_level {level} is not enforced by this build; use one of: {}",
                Level::ENFORCED
            ));
        }
        Ok(())
    }

    pub fn default_level(&self) -> Level {
        // The spec was validated before it entered the catalog; a bad stored level is a bug.
        Level::parse(&self.default_level).unwrap_or(Level::Strong)
    }
}

/// The shard holding `key`: xxh3 of the key, modulo the shard count. Stable forever: changing it
/// would move keys between shards.
pub fn shard_for_key(key: &[u8], shards: u32) -> ShardId {
    assert!(shards > 0, "a keyspace has at least one shard");
    ShardId((xxhash_rust::xxh3::xxh3_64(key) % u64::from(shards)) as u32)
}

/// Bits of a SCAN cursor that hold the position within a shard; the shard is above them.
pub const SCAN_HASH_BITS: u32 = 56;

/// A key's place in SCAN order within its shard: a 56-bit hash, independent of the shard
/// placement (which uses the hash modulo the shard count).
pub fn scan_hash(key: &[u8]) -> u64 {
    xxhash_rust::xxh3::xxh3_64_with_seed(key, 0x7475_6e65_6b76) >> (64 - SCAN_HASH_BITS)
}

/// The nodes holding `shard`, preferred leader first. Leaders are spread over the nodes by
/// rotating the start with the shard number and the keyspace id.
pub fn replicas_for(
    keyspace_id: u64,
    shard: ShardId,
    nodes: &[NodeId],
    replicas: u32,
) -> Vec<NodeId> {
    assert!(!nodes.is_empty() && replicas as usize <= nodes.len());
    let mut sorted = nodes.to_vec();
    sorted.sort();
    let start = (keyspace_id.wrapping_add(u64::from(shard.0)) % sorted.len() as u64) as usize;
    (0..replicas as usize)
        .map(|i| sorted[(start + i) % sorted.len()])
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_validation() {
        let spec: KeyspaceSpec = serde_json_like_default();
        assert!(spec.validate(3).is_ok());
        let bad = KeyspaceSpec {
            shards: 0,
            ..spec.clone()
        };
        assert_eq!(
            bad.validate(3).map_err(|e| e.code),
            Err(Code::KeyspaceInvalid)
        );
        let bad = KeyspaceSpec {
            replicas: 4,
            ..spec.clone()
        };
        assert!(bad.validate(3).is_err());
        let bad = KeyspaceSpec {
            default_level: "nope".into(),
            ..spec.clone()
        };
        assert!(bad.validate(3).is_err());
        let bad = KeyspaceSpec {
            mode: Mode::Leaderless,
            ..spec
        };
        assert!(bad.validate(3).is_err());
    }

    fn serde_json_like_default() -> KeyspaceSpec {
        KeyspaceSpec::default()
    }

    #[test]
    fn shards_are_stable_and_spread() {
        let mut counts = [0u32; 4];
        for i in 0..4000 {
            let s = shard_for_key(format!("key-{i}").as_bytes(), 4);
            counts[s.0 as usize] += 1;
        }
        assert!(counts.iter().all(|&c| c > 800), "{counts:?}");
        assert_eq!(shard_for_key(b"a", 4), shard_for_key(b"a", 4));
    }

    #[test]
    fn leaders_rotate_over_nodes() {
        let nodes = [NodeId(1), NodeId(2), NodeId(3)];
        let firsts: Vec<_> = (0..3)
            .map(|s| replicas_for(1, ShardId(s), &nodes, 3)[0])
            .collect();
        assert_eq!(firsts.len(), 3);
        let mut uniq = firsts.clone();
        uniq.sort();
        uniq.dedup();
        assert_eq!(uniq.len(), 3, "{firsts:?}");
        assert_eq!(replicas_for(1, ShardId(0), &nodes, 2).len(), 2);
    }
}
