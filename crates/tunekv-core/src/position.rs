//! Where a copy stands in a shard's write history.

use crate::ids::{LogIndex, ShardId};
use serde::{Deserialize, Serialize};
use std::fmt;
use std::time::Duration;

/// A point in one shard's commit order: the log index of the last applied entry and the commit
/// time (hybrid logical clock, milliseconds) the leader stamped into it.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
pub struct Position {
    pub shard: ShardId,
    pub index: LogIndex,
    pub commit_ms: u64,
}

impl fmt::Display for Position {
    /// The receipt form: `shard=3;index=1042;commit_ms=1763900000123`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "shard={};index={};commit_ms={}",
            self.shard, self.index, self.commit_ms
        )
    }
}

impl Position {
    /// Parses the receipt form back (used by clients and checkers).
    pub fn parse(s: &str) -> Option<Position> {
        let mut shard = None;
        let mut index = None;
        let mut commit_ms = None;
        for part in s.split(';') {
            let (k, v) = part.split_once('=')?;
            match k {
                "shard" => shard = Some(ShardId(v.parse().ok()?)),
                "index" => index = Some(LogIndex(v.parse().ok()?)),
                "commit_ms" => commit_ms = Some(v.parse().ok()?),
                _ => return None,
            }
        }
        Some(Position {
            shard: shard?,
            index: index?,
            commit_ms: commit_ms?,
        })
    }
}

/// What a copy of a shard knows about itself at one instant: the input to [`crate::judge`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CopyState {
    /// The state it would serve.
    pub applied: Position,
    /// The newest commit index it knows of (≥ applied.index once caught up).
    pub known_commit: LogIndex,
    /// Whether it believes it is the shard's leader.
    pub is_leader: bool,
    /// How long ago it last had proof of being current: a follower's last message from its
    /// leader, a leader's last quorum acknowledgement. `None`: never (e.g. just restarted).
    pub contact_age: Option<Duration>,
    /// The newest freshness proof this copy holds, if any.
    pub watermark: Option<Watermark>,
}

/// A freshness proof: a probe sent `age` ago was answered with read index `index`, confirmed by
/// a leader holding a quorum, so the state at `index` holds every write committed before the
/// probe was sent. Measured on this node's monotonic clock only: no clock-drift assumption.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Watermark {
    pub index: LogIndex,
    pub age: Duration,
}

impl CopyState {
    /// Committed entries this copy knows of but has not applied.
    pub fn lag_entries(&self) -> u64 {
        self.known_commit.0.saturating_sub(self.applied.index.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn position_text_round_trips() {
        let p = Position {
            shard: ShardId(3),
            index: LogIndex(1042),
            commit_ms: 1_763_900_000_123,
        };
        assert_eq!(p.to_string(), "shard=3;index=1042;commit_ms=1763900000123");
        assert_eq!(Position::parse(&p.to_string()), Some(p));
        assert_eq!(Position::parse("shard=1;index=x;commit_ms=1"), None);
    }
}
