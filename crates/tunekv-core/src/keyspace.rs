//! Keyspace specs (DESIGN §2): mode, shard count, replica count, default level, limits; and the
//! pure placement rules (which shard a key is in, which nodes hold a shard).

use crate::code::{Code, TunekvError};
use crate::ids::{NodeId, ShardId, SHARDS_MAX};
use crate::level::Level;
use crate::limits::{VALUE_BYTES_MAX_CEILING, VALUE_BYTES_MAX_DEFAULT};
use crate::slo::{SloSpec, SLOS_MAX};
use serde::{Deserialize, Serialize};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    Ordered,
    Leaderless,
    Volatile,
}

/// How a leaderless or volatile keyspace's ring places its partitions on the ring's nodes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RingPlacement {
    /// Partition `p` to the `p mod S`-th node, replicas on the next distinct owners clockwise
    /// (Dynamo's strategy 3 as first built): perfectly even, but a node added or removed
    /// reshuffles most preference lists. What keyspaces created before `rendezvous` existed
    /// keep, so their data stays where it is.
    Dealt,
    /// Each partition ranks the nodes by a hash of (partition, node) and takes the first N
    /// (rendezvous hashing): a node added takes about N/(S+1) of the replicas, one per
    /// partition it enters, and a node removed gives up only its own — about the least data
    /// a membership change can move. The default for new keyspaces.
    Rendezvous,
}

impl RingPlacement {
    pub fn as_str(self) -> &'static str {
        match self {
            RingPlacement::Dealt => "dealt",
            RingPlacement::Rendezvous => "rendezvous",
        }
    }
}

/// What a client sends in `PUT /v1/keyspaces/{ks}`; missing fields take their defaults, which
/// depend on the mode (see [`KeyspaceSpec::normalized`]: the catalog stores them filled in).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyspaceSpec {
    #[serde(default = "default_mode")]
    pub mode: Mode,
    /// Raft groups of an ordered keyspace (leaderless and volatile keyspaces place keys on a
    /// ring of `partitions` instead and ignore it).
    #[serde(default = "default_shards")]
    pub shards: u32,
    /// Copies of each key (N).
    #[serde(default = "default_replicas")]
    pub replicas: u32,
    /// Kept as text so the catalog stores exactly what DESIGN's syntax says. Default: `strong`
    /// (ordered), `eventual` (leaderless), `weak` (volatile).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default_level: Option<String>,
    #[serde(default = "default_value_bytes_max")]
    pub value_bytes_max: u64,
    /// Conflict policy of a leaderless keyspace: `lww` (the default; siblings and CRDTs come
    /// with issue 17). Not allowed on other modes: they have no conflicts to resolve.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub conflict: Option<String>,
    /// Ring partitions of a leaderless or volatile keyspace (Q; default
    /// [`PARTITIONS_DEFAULT`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub partitions: Option<u32>,
    /// How the ring places partitions on nodes (leaderless and volatile keyspaces): absent in
    /// catalog entries written before it existed, which means `dealt`; new keyspaces get
    /// `rendezvous` unless they ask for `dealt`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub placement: Option<RingPlacement>,
    /// Siblings keyspaces: the most concurrent values a key may hold (default
    /// [`SIBLINGS_MAX_DEFAULT`]); a write past it is refused with `too_many_siblings`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub siblings_max: Option<u32>,
    /// Staleness SLOs (issue 20): each node counts good and valid reads against them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub slo: Vec<SloSpec>,
}

/// Default and ceiling of `siblings_max`.
pub const SIBLINGS_MAX_DEFAULT: u32 = 32;
pub const SIBLINGS_MAX_CEILING: u32 = 1024;

/// Default ring partitions of a leaderless or volatile keyspace: enough that 3–16 nodes each own
/// many, spread around the ring.
pub const PARTITIONS_DEFAULT: u32 = 256;
/// Most ring partitions a keyspace may have (per-partition state is kept in memory).
pub const PARTITIONS_MAX: u32 = 4096;
/// Conflict policies this build resolves.
pub const CONFLICT_POLICIES: &str = "lww, counter, set, map, siblings";

fn default_mode() -> Mode {
    Mode::Ordered
}
fn default_shards() -> u32 {
    4
}
fn default_replicas() -> u32 {
    3
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
            default_level: None,
            value_bytes_max: default_value_bytes_max(),
            conflict: None,
            partitions: None,
            placement: None,
            siblings_max: None,
            slo: Vec::new(),
        }
    }
}

impl Mode {
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Ordered => "ordered",
            Mode::Leaderless => "leaderless",
            Mode::Volatile => "volatile",
        }
    }

    /// The level a read gets when it names none.
    pub fn default_level(self) -> Level {
        match self {
            Mode::Ordered => Level::Strong,
            Mode::Leaderless => Level::Eventual,
            Mode::Volatile => Level::Weak,
        }
    }

    /// Whether keyspaces of this mode enforce `level` (DESIGN §3). Refused levels get
    /// `level_invalid` with why and which mode offers them: never a weaker read.
    pub fn admits(self, level: Level) -> Result<(), TunekvError> {
        let refuse = |why: String| Err(TunekvError::new(Code::LevelInvalid, why));
        match (self, level) {
            (Mode::Ordered, Level::Weak) => refuse(
                "level weak is the level of volatile keyspaces (memory only, best effort); \
                 ordered keyspaces serve every committed write, read them at eventual or stronger"
                    .into(),
            ),
            (Mode::Ordered, l) if l.is_enforced() => Ok(()),
            (Mode::Ordered, l) => refuse(format!(
                "level {l} is not enforced by this build; use one of: {}",
                Level::ENFORCED
            )),
            (
                Mode::Leaderless,
                Level::Eventual | Level::ReadYourWrites | Level::MonotonicReads | Level::Session,
            ) => Ok(()),
            (Mode::Leaderless, Level::Strong | Level::Bounded { .. } | Level::ConsistentPrefix) => {
                refuse(format!(
                    "level {level} needs one order of writes, which a leaderless keyspace does not \
                     have (any replica accepts writes, conflicts resolve later); use an ordered \
                     keyspace (\"mode\":\"ordered\") for it, or read this one at eventual, \
                     with r=quorum for reads that meet every write acknowledged at w=quorum"
                ))
            }
            (Mode::Leaderless, Level::Weak) => refuse(
                "level weak is the level of volatile keyspaces; leaderless keyspaces are durable \
                 and converge: read them at eventual"
                    .into(),
            ),
            (Mode::Volatile, Level::Weak) => Ok(()),
            (Mode::Volatile, l) => refuse(format!(
                "a volatile keyspace keeps values in memory only and replicates them best effort: \
                 it promises nothing stronger than weak, so {l} is refused; use a leaderless or \
                 ordered keyspace for it"
            )),
        }
    }
}

impl KeyspaceSpec {
    /// The spec with the mode's defaults filled in, as the catalog stores it.
    pub fn normalized(mut self) -> KeyspaceSpec {
        if self.default_level.is_none() {
            self.default_level = Some(self.mode.default_level().to_string());
        }
        if self.mode == Mode::Leaderless && self.conflict.is_none() {
            self.conflict = Some("lww".into());
        }
        if self.mode != Mode::Ordered && self.partitions.is_none() {
            self.partitions = Some(PARTITIONS_DEFAULT);
        }
        if self.mode != Mode::Ordered && self.placement.is_none() {
            self.placement = Some(RingPlacement::Rendezvous);
        }
        if self.conflict.as_deref() == Some("siblings") && self.siblings_max.is_none() {
            self.siblings_max = Some(SIBLINGS_MAX_DEFAULT);
        }
        self
    }

    /// Checks the spec against this build and a cluster of `nodes` nodes.
    pub fn validate(&self, nodes: usize) -> Result<(), TunekvError> {
        let invalid = |m: String| Err(TunekvError::new(Code::KeyspaceInvalid, m));
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
        match (self.mode, self.conflict.as_deref()) {
            (Mode::Leaderless, None | Some("lww" | "counter" | "set" | "map" | "siblings"))
            | (_, None) => {}
            (Mode::Leaderless, Some(c)) => {
                return invalid(format!(
                    "conflict policy {} is not available in this build; leaderless keyspaces \
                     resolve conflicts with: {CONFLICT_POLICIES}",
                    crate::code::echo(c)
                ))
            }
            (mode, Some(_)) => {
                return invalid(format!(
                    "conflict applies to leaderless keyspaces only; a {} keyspace has no \
                     concurrent versions to resolve",
                    mode.as_str()
                ))
            }
        }
        match (self.conflict.as_deref(), self.siblings_max) {
            (Some("siblings"), Some(n)) if n == 0 || n > SIBLINGS_MAX_CEILING => {
                return invalid(format!(
                    "siblings_max must be 1 to {SIBLINGS_MAX_CEILING}, got {n}"
                ))
            }
            (Some("siblings"), _) | (_, None) => {}
            (_, Some(_)) => {
                return invalid(
                    "siblings_max applies to keyspaces with \"conflict\": \"siblings\"".into(),
                )
            }
        }
        match (self.mode, self.partitions) {
            (Mode::Ordered, Some(_)) => {
                return invalid(
                    "partitions applies to leaderless and volatile keyspaces; ordered keyspaces \
                     are split into shards"
                        .into(),
                )
            }
            (_, Some(p)) if p == 0 || p > PARTITIONS_MAX || (p as usize) < nodes => {
                return invalid(format!(
                    "partitions must be from the cluster's {nodes} nodes to {PARTITIONS_MAX}, got {p}"
                ))
            }
            _ => {}
        }
        if self.mode == Mode::Ordered && self.placement.is_some() {
            return invalid(
                "placement applies to leaderless and volatile keyspaces; ordered keyspaces \
                 place shards' replicas by the cluster's moves"
                    .into(),
            );
        }
        let level = match &self.default_level {
            Some(text) => Level::parse(text)
                .map_err(|e| TunekvError::new(Code::KeyspaceInvalid, e.message))?,
            None => self.mode.default_level(),
        };
        self.mode.admits(level).map_err(|e| {
            TunekvError::new(
                Code::KeyspaceInvalid,
                format!("default_level: {}", e.message),
            )
        })?;
        if self.slo.len() > SLOS_MAX {
            return invalid(format!(
                "a keyspace has at most {SLOS_MAX} SLOs, got {}",
                self.slo.len()
            ));
        }
        for slo in &self.slo {
            slo.validate(|l| self.mode.admits(l))?;
        }
        Ok(())
    }

    pub fn default_level(&self) -> Level {
        // The spec was validated before it entered the catalog; a bad stored level is a bug.
        self.default_level
            .as_deref()
            .and_then(|l| Level::parse(l).ok())
            .unwrap_or(self.mode.default_level())
    }

    /// Ring partitions (leaderless and volatile keyspaces).
    pub fn partitions(&self) -> u32 {
        self.partitions.unwrap_or(PARTITIONS_DEFAULT)
    }

    /// How the ring places partitions (`dealt` when the catalog entry predates the field).
    pub fn ring_placement(&self) -> RingPlacement {
        self.placement.unwrap_or(RingPlacement::Dealt)
    }

    /// The most concurrent values a key of a siblings keyspace may hold.
    pub fn siblings_max(&self) -> u32 {
        self.siblings_max.unwrap_or(SIBLINGS_MAX_DEFAULT)
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
            default_level: Some("nope".into()),
            ..spec.clone()
        };
        assert!(bad.validate(3).is_err());
        let code = |s: KeyspaceSpec| s.validate(3).map_err(|e| e.code);
        let leaderless = KeyspaceSpec {
            mode: Mode::Leaderless,
            ..spec.clone()
        };
        assert_eq!(code(leaderless.clone()), Ok(()));
        let stored = leaderless.clone().normalized();
        assert_eq!(stored.default_level.as_deref(), Some("eventual"));
        assert_eq!(stored.conflict.as_deref(), Some("lww"));
        assert_eq!(stored.partitions, Some(PARTITIONS_DEFAULT));
        // New rings use rendezvous placement; a catalog entry without the field is dealt.
        assert_eq!(stored.ring_placement(), RingPlacement::Rendezvous);
        assert_eq!(leaderless.ring_placement(), RingPlacement::Dealt);
        let old: KeyspaceSpec =
            serde_json::from_str(r#"{"mode":"leaderless","partitions":64}"#).expect("old entry");
        assert_eq!(old.ring_placement(), RingPlacement::Dealt);
        let asked: KeyspaceSpec =
            serde_json::from_str(r#"{"mode":"leaderless","placement":"dealt"}"#).expect("dealt");
        assert_eq!(asked.normalized().ring_placement(), RingPlacement::Dealt);
        assert!(serde_json::from_str::<KeyspaceSpec>(r#"{"placement":"random"}"#).is_err());
        assert_eq!(
            code(KeyspaceSpec {
                placement: Some(RingPlacement::Rendezvous),
                ..spec.clone()
            }),
            Err(Code::KeyspaceInvalid),
            "ordered keyspaces have no ring"
        );
        for bad in [
            KeyspaceSpec {
                default_level: Some("strong".into()),
                ..leaderless.clone()
            },
            KeyspaceSpec {
                conflict: Some("siblings-please".into()),
                ..leaderless.clone()
            },
            KeyspaceSpec {
                conflict: Some("lww".into()),
                ..spec.clone()
            },
            KeyspaceSpec {
                partitions: Some(16),
                ..spec.clone()
            },
            KeyspaceSpec {
                partitions: Some(2),
                ..leaderless.clone()
            },
            KeyspaceSpec {
                partitions: Some(PARTITIONS_MAX + 1),
                ..leaderless.clone()
            },
            KeyspaceSpec {
                mode: Mode::Volatile,
                default_level: Some("eventual".into()),
                ..spec.clone()
            },
            KeyspaceSpec {
                default_level: Some("weak".into()),
                ..spec.clone()
            },
        ] {
            assert_eq!(code(bad.clone()), Err(Code::KeyspaceInvalid), "{bad:?}");
        }
        // Conflict-free keyspaces serve the session levels too (tokens carry dot clocks).
        let counter_session = KeyspaceSpec {
            conflict: Some("counter".into()),
            default_level: Some("read_your_writes".into()),
            ..leaderless.clone()
        };
        assert_eq!(code(counter_session), Ok(()));
        let volatile = KeyspaceSpec {
            mode: Mode::Volatile,
            ..spec
        }
        .normalized();
        assert_eq!(volatile.default_level(), Level::Weak);
        assert_eq!(volatile.validate(3), Ok(()));
    }

    #[test]
    fn modes_admit_their_levels_and_refuse_the_others() {
        let ok = |m: Mode, l: &str| m.admits(Level::parse(l).unwrap()).is_ok();
        assert!(ok(Mode::Ordered, "strong") && ok(Mode::Ordered, "eventual"));
        assert!(!ok(Mode::Ordered, "weak"));
        assert!(ok(Mode::Leaderless, "eventual"));
        for l in ["strong", "bounded(k=1)", "consistent_prefix", "weak"] {
            let e = Mode::Leaderless
                .admits(Level::parse(l).unwrap())
                .unwrap_err();
            assert_eq!(e.code, Code::LevelInvalid, "{l}");
        }
        assert!(Mode::Leaderless
            .admits(Level::Strong)
            .unwrap_err()
            .message
            .contains("ordered"));
        assert!(ok(Mode::Volatile, "weak") && !ok(Mode::Volatile, "eventual"));
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
