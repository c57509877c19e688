//! Requirements (what a read needs of the copy serving it) and [`judge`], the single decision
//! every front end and every copy goes through. A consistency level is a predicate here, never a
//! code path elsewhere.

use crate::code::{Code, TunekvError};
use crate::ids::LogIndex;
use crate::level::Level;
use crate::position::CopyState;
use crate::session::Mark;
use std::time::Duration;

/// What a read needs of the copy that serves it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Requirement {
    /// Any committed state this copy has, applied in log order (eventual, consistent prefix).
    Anything,
    /// The read index must first be confirmed by a leader holding a quorum (strong).
    ConfirmedByLeader,
    /// Bounded staleness: at most `entries_max` committed entries behind the newest commit at
    /// the read's start, and/or including every write committed more than `lag_max` before it.
    Bounded {
        entries_max: Option<u64>,
        lag_max: Option<Duration>,
    },
    /// The copy must have applied at least this index (after a probe).
    AppliedAtLeast(LogIndex),
}

/// What a copy should do about a read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Serve from this copy now.
    Serve,
    /// Wait until the copy has applied at least this index, then judge again.
    Wait(LogIndex),
    /// Ask the shard's leader for its quorum-confirmed commit index (the read index), then judge
    /// [`Requirement::after_probe`].
    Probe,
    /// Cannot be served here; the error says why.
    Refuse(TunekvError),
}

impl Requirement {
    /// The starting requirement of a read at `level` by a session whose mark on the shard is
    /// `mark` (zero for a new session). Levels this build does not enforce are refused, never
    /// served weaker.
    pub fn for_level(level: Level, mark: Mark) -> Result<Requirement, TunekvError> {
        match level {
            Level::Strong => Ok(Requirement::ConfirmedByLeader),
            // A state that includes every write the session made / is no older than any state
            // it read. Both are positions in this shard's log, which every copy applies in order.
            Level::ReadYourWrites => Ok(Requirement::AppliedAtLeast(mark.written)),
            Level::MonotonicReads => Ok(Requirement::AppliedAtLeast(mark.read)),
            Level::Session => Ok(Requirement::AppliedAtLeast(mark.written.max(mark.read))),
            Level::Eventual | Level::ConsistentPrefix => Ok(Requirement::Anything),
            Level::Bounded {
                entries_max,
                lag_max,
            } => Ok(Requirement::Bounded {
                entries_max,
                lag_max,
            }),
            other => Err(TunekvError::new(
                Code::LevelInvalid,
                format!(
                    "level {other} is not enforced by this build yet; enforced levels: {}",
                    Level::ENFORCED
                ),
            )),
        }
    }

    /// The requirement once a probe returned `read_index`, confirmed by a quorum after the read
    /// began: every write committed before the read began is at or below it.
    pub fn after_probe(self, read_index: LogIndex) -> Requirement {
        match self {
            // A time bound is met by the fresh watermark only once it is applied in full.
            Requirement::Bounded {
                entries_max: Some(k),
                lag_max: None,
            } => Requirement::AppliedAtLeast(LogIndex(read_index.0.saturating_sub(k))),
            _ => Requirement::AppliedAtLeast(read_index),
        }
    }

    /// The code of a read whose requirement could not be met in its wait budget.
    pub fn unmet_code(self, level: Level) -> Code {
        match level {
            Level::Bounded { .. } => Code::StalenessBoundUnmet,
            Level::ReadYourWrites | Level::MonotonicReads | Level::Session => Code::SessionUnmet,
            _ => Code::Timeout,
        }
    }

    /// The code of a read whose probe could not reach a leader with a quorum.
    pub fn no_probe_code(self, level: Level) -> Code {
        match level {
            Level::Bounded { .. } => Code::StalenessBoundUnmet,
            _ => Code::NoQuorum,
        }
    }
}

/// Decides whether `copy` may serve a read that needs `req` and began `read_age` ago.
/// Pure: no clock, no I/O.
pub fn judge(copy: &CopyState, req: &Requirement, read_age: Duration) -> Verdict {
    match *req {
        Requirement::Anything => Verdict::Serve,
        Requirement::ConfirmedByLeader => Verdict::Probe,
        // An entry bound always needs the newest commit at the read's start: probe.
        Requirement::Bounded {
            entries_max: Some(_),
            ..
        } => Verdict::Probe,
        Requirement::Bounded {
            entries_max: None,
            lag_max,
        } => {
            // A watermark (c, taken at h) proves the state at c holds every write committed
            // before h. Served if h ≥ read start − T, i.e. watermark age ≤ read age + T.
            let fresh = match (copy.watermark, lag_max) {
                (Some(w), Some(t)) => {
                    w.age <= read_age.saturating_add(t) && copy.applied.index >= w.index
                }
                _ => false,
            };
            if fresh {
                Verdict::Serve
            } else {
                Verdict::Probe
            }
        }
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
    use crate::position::{Position, Watermark};

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
            watermark: None,
        }
    }

    const NOW: Duration = Duration::ZERO;

    #[test]
    fn eventual_and_consistent_prefix_serve_the_local_copy() {
        assert_eq!(
            judge(&copy(0, 100), &Requirement::Anything, NOW),
            Verdict::Serve
        );
        for l in [Level::Eventual, Level::ConsistentPrefix] {
            assert_eq!(
                Requirement::for_level(l, Mark::default()),
                Ok(Requirement::Anything)
            );
        }
    }

    #[test]
    fn strong_probes_first_then_waits_for_the_read_index() {
        assert_eq!(
            judge(&copy(10, 10), &Requirement::ConfirmedByLeader, NOW),
            Verdict::Probe
        );
        let req = Requirement::ConfirmedByLeader.after_probe(LogIndex(12));
        assert_eq!(req, Requirement::AppliedAtLeast(LogIndex(12)));
        assert_eq!(judge(&copy(11, 12), &req, NOW), Verdict::Wait(LogIndex(12)));
        // Boundary: applied exactly at the read index serves.
        assert_eq!(judge(&copy(12, 12), &req, NOW), Verdict::Serve);
        assert_eq!(judge(&copy(13, 13), &req, NOW), Verdict::Serve);
    }

    #[test]
    fn bounded_entries_probes_then_allows_lag_of_exactly_k() {
        let req = Requirement::for_level(
            Level::Bounded {
                entries_max: Some(3),
                lag_max: None,
            },
            Mark::default(),
        )
        .unwrap();
        assert_eq!(
            judge(&copy(100, 100), &req, NOW),
            Verdict::Probe,
            "k needs the newest commit"
        );
        let after = req.after_probe(LogIndex(20));
        assert_eq!(
            judge(&copy(17, 20), &after, NOW),
            Verdict::Serve,
            "lag exactly K serves"
        );
        assert_eq!(
            judge(&copy(16, 20), &after, NOW),
            Verdict::Wait(LogIndex(17)),
            "lag K+1 waits"
        );
        // k larger than the log: anything serves once probed.
        let big = Requirement::Bounded {
            entries_max: Some(50),
            lag_max: None,
        }
        .after_probe(LogIndex(20));
        assert_eq!(judge(&copy(0, 20), &big, NOW), Verdict::Serve);
    }

    #[test]
    fn bounded_time_serves_from_a_watermark_no_older_than_t_before_the_read() {
        let t = Duration::from_millis(300);
        let req = Requirement::for_level(
            Level::Bounded {
                entries_max: None,
                lag_max: Some(t),
            },
            Mark::default(),
        )
        .unwrap();
        let with = |age_ms: u64, wm_index: u64, applied: u64| CopyState {
            watermark: Some(Watermark {
                index: LogIndex(wm_index),
                age: Duration::from_millis(age_ms),
            }),
            ..copy(applied, applied)
        };
        // Boundary: a watermark exactly T old at the read's start serves.
        assert_eq!(judge(&with(300, 10, 10), &req, NOW), Verdict::Serve);
        assert_eq!(judge(&with(301, 10, 10), &req, NOW), Verdict::Probe);
        // The read began 50 ms ago: the watermark may be 50 ms older.
        assert_eq!(
            judge(&with(350, 10, 10), &req, Duration::from_millis(50)),
            Verdict::Serve
        );
        // A fresh watermark the copy has not applied yet does not serve.
        assert_eq!(judge(&with(10, 11, 10), &req, NOW), Verdict::Probe);
        assert_eq!(
            judge(&copy(10, 10), &req, NOW),
            Verdict::Probe,
            "no watermark: probe"
        );
        assert_eq!(
            req.after_probe(LogIndex(9)),
            Requirement::AppliedAtLeast(LogIndex(9))
        );
        let both = Requirement::Bounded {
            entries_max: Some(2),
            lag_max: Some(t),
        };
        assert_eq!(
            judge(&with(0, 10, 10), &both, NOW),
            Verdict::Probe,
            "k still probes"
        );
        assert_eq!(
            both.after_probe(LogIndex(9)),
            Requirement::AppliedAtLeast(LogIndex(9))
        );
    }

    #[test]
    fn refusal_codes_name_the_level() {
        let b = Level::Bounded {
            entries_max: Some(1),
            lag_max: None,
        };
        let r = Requirement::for_level(b, Mark::default()).unwrap();
        assert_eq!(r.unmet_code(b), Code::StalenessBoundUnmet);
        assert_eq!(r.no_probe_code(b), Code::StalenessBoundUnmet);
        let s = Requirement::ConfirmedByLeader;
        assert_eq!(s.unmet_code(Level::Strong), Code::Timeout);
        assert_eq!(s.no_probe_code(Level::Strong), Code::NoQuorum);
    }

    #[test]
    fn session_levels_need_the_tokens_marks_applied() {
        let mark = Mark {
            written: LogIndex(30),
            read: LogIndex(20),
        };
        let ryw = Requirement::for_level(Level::ReadYourWrites, mark).unwrap();
        let mr = Requirement::for_level(Level::MonotonicReads, mark).unwrap();
        let session = Requirement::for_level(Level::Session, mark).unwrap();
        // Boundary: applied exactly at the mark serves; one below waits for it.
        assert_eq!(judge(&copy(30, 30), &ryw, NOW), Verdict::Serve);
        assert_eq!(judge(&copy(29, 30), &ryw, NOW), Verdict::Wait(LogIndex(30)));
        assert_eq!(judge(&copy(20, 20), &mr, NOW), Verdict::Serve);
        assert_eq!(judge(&copy(19, 30), &mr, NOW), Verdict::Wait(LogIndex(20)));
        assert_eq!(
            judge(&copy(25, 30), &session, NOW),
            Verdict::Wait(LogIndex(30))
        );
        assert_eq!(judge(&copy(30, 30), &session, NOW), Verdict::Serve);
        // A new session (no mark on this shard) serves any copy.
        let fresh = Requirement::for_level(Level::Session, Mark::default()).unwrap();
        assert_eq!(judge(&copy(0, 9), &fresh, NOW), Verdict::Serve);
        for l in [Level::ReadYourWrites, Level::MonotonicReads, Level::Session] {
            assert_eq!(ryw.unmet_code(l), Code::SessionUnmet);
        }
    }

    #[test]
    fn unenforced_levels_are_refused_not_weakened() {
        let level = Level::parse("weak").unwrap();
        assert_eq!(
            Requirement::for_level(level, Mark::default()).map_err(|e| e.code),
            Err(Code::LevelInvalid)
        );
    }
}
