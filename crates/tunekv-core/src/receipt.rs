//! Staleness receipts (DESIGN §4): every read says where it was served and how stale it was.

use crate::ids::NodeId;
use crate::level::Level;
use crate::position::{CopyState, Position};
use crate::quorum::Quorum;
use serde::Serialize;

/// How far the serving copy was behind the newest commit it knew of.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Staleness {
    pub entries: u64,
    pub ms: u64,
}

impl Staleness {
    pub const ZERO: Staleness = Staleness { entries: 0, ms: 0 };

    /// Staleness of a copy that served without a freshness proof: the committed entries it knew
    /// of but had not applied, and how long ago it last had contact with its leader (a leader:
    /// with a quorum). A copy cut off from the others reports a growing `ms`, never 0.
    pub fn of_copy(copy: &CopyState) -> Staleness {
        let ms = match copy.contact_age {
            Some(age) => u64::try_from(age.as_millis()).unwrap_or(u64::MAX),
            // Never heard from a leader since start: say so with the largest value.
            None => u64::MAX,
        };
        Staleness {
            entries: copy.lag_entries(),
            ms,
        }
    }

    /// Staleness of a copy at `applied` when the newest commit at the read's start is known to
    /// be at most `read_index`: the entries in between, and (when behind at all) an upper bound
    /// on the time: now minus the applied state's commit time.
    pub fn behind(read_index: crate::ids::LogIndex, applied: Position, now_ms: u64) -> Staleness {
        let entries = read_index.0.saturating_sub(applied.index.0);
        let ms = if entries == 0 {
            0
        } else {
            now_ms.saturating_sub(applied.commit_ms)
        };
        Staleness { entries, ms }
    }

    /// The honest receipt (issue 15): `entries` behind the newest commit the copy knew of,
    /// and `ms` = how long before the read began the newest freshness proof that the served
    /// state satisfies was taken. A proof `(c, h)` says every write committed before `h` is at
    /// or below index `c`; the served state is at or past `c`, so it holds every write
    /// acknowledged more than `ms` before the read began. This holds whether or not the copy
    /// knows it is behind, and assumes nothing about wall clocks or commit times. With no proof
    /// yet (a copy that just started) the age is unknown: `u64::MAX`.
    pub fn proven(entries: u64, proof_age_at_start: Option<std::time::Duration>) -> Staleness {
        Staleness {
            entries,
            // Rounded up: a proof 0.3 ms old is "1 ms", never "0 ms" (which would claim the
            // freshness of a strong read and miss a write acknowledged in between).
            ms: proof_age_at_start
                .map(|age| u64::try_from(age.as_nanos().div_ceil(1_000_000)).unwrap_or(u64::MAX))
                .unwrap_or(u64::MAX),
        }
    }

    /// Header form: `entries=2;ms=37`.
    pub fn header(&self) -> String {
        format!("entries={};ms={}", self.entries, self.ms)
    }

    /// Reads the header form back; `None` if it is not exactly that form.
    pub fn parse_header(s: &str) -> Option<Staleness> {
        let (e, m) = s.split_once(';')?;
        Some(Staleness {
            entries: e.strip_prefix("entries=")?.parse().ok()?,
            ms: m.strip_prefix("ms=")?.parse().ok()?,
        })
    }
}

/// Everything a read response reports besides the value.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Receipt {
    pub level: Level,
    pub served_by: NodeId,
    /// Ordered keyspaces: shard, log index, commit time. Leaderless keyspaces: the key's ring
    /// partition as `shard`, index 0 (there is no log), the served version's HLC time.
    pub position: Position,
    pub staleness: Staleness,
    /// How a leaderless read was answered; `None` on ordered keyspaces.
    pub quorum: Option<QuorumReceipt>,
}

/// How a leaderless read or write met its quorum (the `tunekv-quorum` header).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct QuorumReceipt {
    /// The quorum asked for (`r` of a read, `w` of a write).
    pub quorum: Quorum,
    /// Replicas asked, and those that answered (a write: that stored it durably).
    pub asked: u32,
    pub answered: u32,
    /// Whether every answer counted came from the key's preference list (a write acknowledged
    /// through a substitute or a hint is sloppy: reads at r=quorum may not meet it until the
    /// hint is delivered).
    pub strict: bool,
    /// Copies stored as hints for replicas that could not be reached (writes only).
    pub hinted: u32,
    /// The version served or written (HLC stamp, coordinating node); `None`: no replica held
    /// the key.
    pub version: Option<(u64, u64)>,
    /// Whether the copies counted are on disk (`fsync`, leaderless keyspaces) or only in memory
    /// (`none`, volatile keyspaces: lost when their nodes restart).
    pub durable: bool,
}

impl QuorumReceipt {
    /// Header form:
    /// `q=quorum;asked=3;answered=2;strict=1;hinted=0;version=HLC.NODE;durability=fsync`
    /// (version `none` when no replica held the key; durability `none` on volatile keyspaces).
    pub fn header(&self) -> String {
        let version = match self.version {
            Some((hlc, node)) => format!("{hlc}.{node}"),
            None => "none".into(),
        };
        format!(
            "q={};asked={};answered={};strict={};hinted={};version={version};durability={}",
            self.quorum,
            self.asked,
            self.answered,
            u8::from(self.strict),
            self.hinted,
            self.durability()
        )
    }

    /// `fsync` or `none`.
    pub fn durability(&self) -> &'static str {
        if self.durable {
            "fsync"
        } else {
            "none"
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::{LogIndex, ShardId};
    use std::time::Duration;

    #[test]
    fn a_proven_receipt_rounds_its_age_up() {
        // Regression (issue 15): ages were rounded down, so a proof taken 0.3 ms before the
        // read began gave "ms=0" and the receipt missed a write acknowledged in between.
        let s = Staleness::proven(0, Some(Duration::from_micros(300)));
        assert_eq!(s.ms, 1);
        assert_eq!(Staleness::proven(0, Some(Duration::ZERO)).ms, 0);
        assert_eq!(Staleness::proven(2, Some(Duration::from_millis(37))).ms, 37);
        assert_eq!(Staleness::proven(2, None).ms, u64::MAX);
    }

    #[test]
    fn a_cut_off_copy_reports_its_silence() {
        let copy = CopyState {
            applied: Position {
                shard: ShardId(1),
                index: LogIndex(5),
                commit_ms: 9,
            },
            known_commit: LogIndex(7),
            is_leader: false,
            contact_age: Some(Duration::from_millis(1500)),
            watermark: None,
        };
        assert_eq!(
            Staleness::of_copy(&copy),
            Staleness {
                entries: 2,
                ms: 1500
            }
        );
        assert_eq!(Staleness::of_copy(&copy).header(), "entries=2;ms=1500");
        assert_eq!(
            Staleness::parse_header("entries=2;ms=1500"),
            Some(Staleness::of_copy(&copy))
        );
        assert_eq!(Staleness::parse_header("entries=2"), None);
        assert_eq!(Staleness::parse_header("ms=1;entries=2"), None);
        let never = CopyState {
            contact_age: None,
            ..copy
        };
        assert_eq!(Staleness::of_copy(&never).ms, u64::MAX);
    }
}
