//! What goes into the log: commands stamped with the leader's commit time.

use serde::{Deserialize, Serialize};
use std::fmt;

openraft::declare_raft_types!(
    /// tunekv's Raft types: node ids are `u64` (tunekv-core's `NodeId.0`), nodes are addressed
    /// by their node-to-node address (`BasicNode.addr`).
    pub TypeConfig:
        D = Command,
        R = CommandResult,
        AsyncRuntime = crate::runtime::TunekvRuntime,
);

/// A state-machine command. `commit_ts` is the leader's hybrid-logical-clock time when it
/// proposed the entry; receipts and bounded staleness read it back.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Command {
    pub commit_ts: u64,
    pub op: Op,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Op {
    Put {
        key: Vec<u8>,
        value: Vec<u8>,
    },
    /// Writes only if the key is absent (the catalog uses it to create keyspaces once).
    PutIfAbsent {
        key: Vec<u8>,
        value: Vec<u8>,
    },
    Delete {
        key: Vec<u8>,
    },
    /// SET with its options, atomically: write `value` if `cond` holds, set the expiry per
    /// `ttl`, and return the old value when `get` is set.
    Set {
        key: Vec<u8>,
        value: Vec<u8>,
        cond: Cond,
        ttl: Ttl,
        get: bool,
    },
    /// INCRBY: the value must be a base-10 `i64` (absent counts as 0); overflow is an error.
    /// The expiry is kept.
    IncrBy {
        key: Vec<u8>,
        delta: i64,
    },
    /// APPEND: the new length may not exceed `len_max`. The expiry is kept.
    Append {
        key: Vec<u8>,
        suffix: Vec<u8>,
        len_max: u64,
    },
    /// GETDEL: delete and return the value.
    GetDel {
        key: Vec<u8>,
    },
    /// EXPIRE / PEXPIRE / EXPIREAT / PERSIST on an existing key, if `when` holds (result
    /// `int` = 1 when it did). An expiry at or before the entry's commit time deletes the key.
    Expire {
        key: Vec<u8>,
        ttl: Ttl,
        when: ExpireIf,
    },
    /// MSET: every pair, atomically (all keys of one shard).
    MSet {
        pairs: Vec<(Vec<u8>, Vec<u8>)>,
    },
    /// The leader's sweep of expired keys that nothing touches: removes each listed key that
    /// has expired at this entry's commit time and leaves the others (rewritten since the
    /// leader looked). `int` = keys removed.
    Sweep {
        keys: Vec<Vec<u8>>,
    },
    /// A write of `value` (`None`: a delete) only if the key is as `expect` says: HTTP's
    /// `if_version`, RESP's `CAS` and `SET … IFEQ`. `ttl` and `get` as for [`Op::Set`].
    /// Refused, it changes nothing and answers `error: "version_mismatch"` with `current`, the
    /// value there (its `mod_index` is the key's version). Added last: older log entries keep
    /// their variant numbers.
    SetIf {
        key: Vec<u8>,
        value: Option<Vec<u8>>,
        expect: Expect,
        ttl: Ttl,
        get: bool,
    },
    /// A single-shard transaction (HTTP `:txn`, RESP MULTI/EXEC): if every `compare` holds,
    /// `success` runs, else `failure`, each op in order within this one entry. The result's
    /// `int` is 1 when the comparisons held, and `results` has one result per op run. Ops may
    /// be reads ([`Op::Get`]) and single-key writes; never `Txn`, `MSet` or `Sweep`.
    Txn {
        compare: Vec<(Vec<u8>, Expect)>,
        success: Vec<Op>,
        failure: Vec<Op>,
    },
    /// A read inside a transaction: `current` is the live value (with its version), if any.
    Get {
        key: Vec<u8>,
    },
}

/// What a conditional write expects of its key.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Expect {
    /// The key's version (the log index of the entry that last wrote it); 0: absent.
    Version(u64),
    /// A live value equal to this one (absent never matches).
    Value(Vec<u8>),
}

/// [`CommandResult::error`] of a conditional write whose expectation did not hold.
pub const VERSION_MISMATCH: &str = "version_mismatch";

/// When a SET writes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Cond {
    Always,
    /// NX: only if the key is absent.
    IfAbsent,
    /// XX: only if the key exists.
    IfPresent,
}

/// When EXPIRE sets an expiry (Redis's NX / XX / GT / LT; a key without an expiry counts as
/// expiring never, later than any time).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ExpireIf {
    Always,
    /// NX: only if the key has no expiry.
    NoExpiry,
    /// XX: only if the key has one.
    HasExpiry,
    /// GT: only if the new expiry is later than the current one (XX implied).
    Later,
    /// LT: only if the new expiry is earlier than the current one (or there is none).
    Earlier,
    /// XX and LT together.
    HasExpiryEarlier,
}

/// What a write does to the key's expiry. Relative times are counted from the entry's commit
/// time, which the leader stamps: every replica computes the same absolute expiry.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Ttl {
    /// No expiry (a plain SET removes one; PERSIST).
    Clear,
    /// KEEPTTL.
    Keep,
    /// EX / PX: this many milliseconds after the commit time.
    AfterMs(u64),
    /// EXAT / PXAT: at this Unix time in milliseconds.
    AtMs(u64),
}

impl Op {
    /// The command's name and how many key bytes it names (for logs and errors).
    pub fn describe(&self) -> (&'static str, usize) {
        match self {
            Op::Put { key, .. } => ("put", key.len()),
            Op::PutIfAbsent { key, .. } => ("put_if_absent", key.len()),
            Op::Delete { key } => ("delete", key.len()),
            Op::Set { key, .. } => ("set", key.len()),
            Op::IncrBy { key, .. } => ("incr_by", key.len()),
            Op::Append { key, .. } => ("append", key.len()),
            Op::GetDel { key } => ("get_del", key.len()),
            Op::Expire { key, .. } => ("expire", key.len()),
            Op::MSet { pairs } => ("mset", pairs.iter().map(|(k, _)| k.len()).sum()),
            Op::Sweep { keys } => ("sweep", keys.iter().map(Vec::len).sum()),
            Op::SetIf { key, .. } => ("set_if", key.len()),
            Op::Txn {
                compare,
                success,
                failure,
            } => (
                "txn",
                compare.iter().map(|(k, _)| k.len()).sum::<usize>()
                    + success
                        .iter()
                        .chain(failure)
                        .map(|o| o.describe().1)
                        .sum::<usize>(),
            ),
            Op::Get { key } => ("get", key.len()),
        }
    }

    pub fn name(&self) -> &'static str {
        self.describe().0
    }
}

impl fmt::Display for Command {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (name, key_bytes) = self.op.describe();
        write!(f, "{name}({key_bytes} key bytes, ts {})", self.commit_ts)
    }
}

/// What applying a command did, returned to the proposer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CommandResult {
    /// Whether the key existed before the command.
    pub existed: bool,
    /// Whether the command changed the state (false for a refused put-if-absent or a delete of
    /// a missing key).
    pub changed: bool,
    /// For a refused put-if-absent: the value that is there.
    pub current: Option<StoredValue>,
    /// SET … GET, GETDEL: the value before the command (live values only).
    pub old: Option<Vec<u8>>,
    /// INCRBY: the new value; APPEND: the new length.
    pub int: i64,
    /// Why the command changed nothing (not an integer, overflow, too long); deterministic on
    /// every replica.
    pub error: Option<String>,
    /// A transaction: the result of each op its branch ran, in order (empty otherwise).
    pub results: Vec<CommandResult>,
}

impl CommandResult {
    pub fn unchanged(existed: bool) -> CommandResult {
        CommandResult {
            existed,
            changed: false,
            current: None,
            old: None,
            int: 0,
            error: None,
            results: Vec::new(),
        }
    }

    pub fn changed(existed: bool) -> CommandResult {
        CommandResult {
            changed: true,
            ..CommandResult::unchanged(existed)
        }
    }
}

/// A value in a state machine, with where it was written.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredValue {
    /// Encoded as bytes (one copy), not as a sequence of `u8`s (one call per byte): postcard
    /// writes both the same way, so stored records read back either way.
    #[serde(with = "byte_buf")]
    pub value: Vec<u8>,
    /// Log index of the write that created the key (etcd's create_revision).
    pub create_index: u64,
    /// Log index of the last write to the key.
    pub mod_index: u64,
    pub commit_ts: u64,
    /// Unix time in ms at which the key expires; expired keys are invisible to every read and
    /// treated as absent by every command.
    pub expires_ms: Option<u64>,
}

impl StoredValue {
    /// Whether the key is still there at `now_ms`.
    pub fn live_at(&self, now_ms: u64) -> bool {
        self.expires_ms.is_none_or(|e| e > now_ms)
    }
}

/// `Vec<u8>` as serde bytes: a read of a stored value was decoding its bytes one at a time
/// (≈4% of a node's CPU under RESP GETs). Formats that have no bytes type (JSON) still read
/// and write arrays of numbers.
mod byte_buf {
    use serde::de::{Deserializer, SeqAccess, Visitor};
    use serde::Serializer;
    use std::fmt;

    pub fn serialize<S: Serializer>(v: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(v)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        d.deserialize_byte_buf(Bytes)
    }

    struct Bytes;

    impl<'de> Visitor<'de> for Bytes {
        type Value = Vec<u8>;

        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("bytes")
        }

        fn visit_bytes<E>(self, v: &[u8]) -> Result<Vec<u8>, E> {
            Ok(v.to_vec())
        }

        fn visit_byte_buf<E>(self, v: Vec<u8>) -> Result<Vec<u8>, E> {
            Ok(v)
        }

        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<u8>, A::Error> {
            let mut out = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(1 << 16));
            while let Some(b) = seq.next_element()? {
                out.push(b);
            }
            Ok(out)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::StoredValue;
    use serde::{Deserialize, Serialize};

    /// The record's shape before `value` was encoded as bytes.
    #[derive(Serialize, Deserialize, Debug, PartialEq)]
    struct Before {
        value: Vec<u8>,
        create_index: u64,
        mod_index: u64,
        commit_ts: u64,
        expires_ms: Option<u64>,
    }

    #[test]
    fn stored_values_encode_as_before() {
        for value in [
            Vec::new(),
            b"v".to_vec(),
            (0..=255u8).cycle().take(70_000).collect(),
        ] {
            let before = Before {
                value: value.clone(),
                create_index: 3,
                mod_index: 9,
                commit_ts: 1 << 40,
                expires_ms: Some(5),
            };
            let now = StoredValue {
                value,
                create_index: 3,
                mod_index: 9,
                commit_ts: 1 << 40,
                expires_ms: Some(5),
            };
            let old = postcard::to_stdvec(&before).unwrap();
            assert_eq!(postcard::to_stdvec(&now).unwrap(), old);
            assert_eq!(postcard::from_bytes::<StoredValue>(&old).unwrap(), now);
            let back: Before = postcard::from_bytes(&postcard::to_stdvec(&now).unwrap()).unwrap();
            assert_eq!(back, before);
        }
    }
}
