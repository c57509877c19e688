//! Requirements (what a read needs of the copy serving it) and [`judge`], the single decision
//! every front end and every copy goes through. A consistency level is a predicate here, never a
//! code path elsewhere.

use crate::code::{Code, TunekvError};
use crate::ids::LogIndex;
use crate::level::Level;
use crate::position::CopyState;

/// What a read needs of the copy that serves it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Requirement {
    /// Any committed state this copy has (eventual).
    Anything,
    /// The read index must first be confirmed by a leader holding a quorum (strong).
    ConfirmedByLeader,
    /// The copy must have applied at least this index (strong, once the read index is known).
    AppliedAtLeast(LogIndex),
}

/// What a copy should do about a read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Serve from this copy now.
    Serve,
    /// Wait until the copy has applied at least this index, then judge again.
    Wait(LogIndex),
    /// Ask the shard's leader for its confirmed commit index (the read index), then judge
    /// `AppliedAtLeast(read_index)`.
    Probe,
    /// Cannot be served here; the error says why.
    Refuse(TunekvError),
}

impl Requirement {
    /// The starting requirement of a read at `level`. Levels this build does not enforce are
    /// refused, never served weaker.
    pub fn for_level(level: Level) -> Result<Requirement, TunekvError> {
        match level {
            Level::Strong => Ok(Requirement::ConfirmedByLeader),
            Level::Eventual => Ok(Requirement::Anything),
            other => Err(TunekvError::new(
                Code::LevelInvalid,
                format!(
                    "level {other} is not enforced by this build yet; enforced levels: {}",
                    Level::ENFORCED
                ),
            )),
        }
    }
}

/// Decides whether `copy` may serve a read that needs `req`. Pure: no clock, no I/O.
pub fn judge(copy: &CopyState, req: &Requirement) -> Verdict {
    match *req {
        Requirement::Anything => Verdict::Serve,
        Requirement::ConfirmedByLeader => Verdict::Probe,
        Requirement::AppliedAtLeast(index) => {
            if copy.applied.index >= index {
                Verdict::Serve
            } else {
                Verdict::Wait(index)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::ShardId;
    use crate::position::Position;
    use std::time::Duration;

    fn copy(applied: u64, known: u64) -> CopyState {
        CopyState {
            applied: Position {
                shard: ShardId(0),
                index: LogIndex(applied),
                commit_ms: 1,
            },
            known_commit: LogIndex(known),
            is_leader: false,
            contact_age: Some(Duration::from_millis(5)),
        }
    }

    #[test]
    fn eventual_serves_anything() {
        assert_eq!(judge(&copy(0, 100), &Requirement::Anything), Verdict::Serve);
    }

    #[test]
    fn strong_probes_first_then_waits_for_the_read_index() {
        assert_eq!(
            judge(&copy(10, 10), &Requirement::ConfirmedByLeader),
            Verdict::Probe
        );
        let req = Requirement::AppliedAtLeast(LogIndex(12));
        assert_eq!(judge(&copy(11, 12), &req), Verdict::Wait(LogIndex(12)));
        // Boundary: applied exactly at the read index serves.
        assert_eq!(judge(&copy(12, 12), &req), Verdict::Serve);
        assert_eq!(judge(&copy(13, 13), &req), Verdict::Serve);
    }

    #[test]
    fn unenforced_levels_are_refused_not_weakened() {
        for s in ["session", "bounded(k=1)", "consistent_prefix", "weak"] {
            let level = Level::parse(s).unwrap_or(Level::Strong);
            assert_ne!(level, Level::Strong);
            assert_eq!(
                Requirement::for_level(level).map_err(|e| e.code),
                Err(Code::LevelInvalid),
                "{s}"
            );
        }
        assert_eq!(
            Requirement::for_level(Level::Strong),
            Ok(Requirement::ConfirmedByLeader)
        );
        assert_eq!(
            Requirement::for_level(Level::Eventual),
            Ok(Requirement::Anything)
        );
    }
}
