//! Read and write quorums of leaderless keyspaces (DESIGN §2, §9): how many of a key's N
//! replicas must answer a read (`r`) or hold a write durably before it is acknowledged (`w`).

use crate::code::{echo, Code, TunekvError};
use serde::{Deserialize, Serialize};
use std::fmt;

/// `one`, `quorum` (a majority of N), `all`; and for writes `any` (one durable copy anywhere,
/// a hint on the coordinator counting).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Quorum {
    Any,
    One,
    Quorum,
    All,
}

/// What a quorum is for: `any` is a write quorum only.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum QuorumKind {
    Read,
    Write,
}

impl Quorum {
    /// Parses `one|quorum|all` (reads) or `one|quorum|all|any` (writes).
    pub fn parse(s: &str, kind: QuorumKind) -> Result<Quorum, TunekvError> {
        let q = match s.trim() {
            "one" => Quorum::One,
            "quorum" => Quorum::Quorum,
            "all" => Quorum::All,
            "any" if kind == QuorumKind::Write => Quorum::Any,
            _ => {
                let (name, valid) = match kind {
                    QuorumKind::Read => ("read quorum r", "one, quorum, all"),
                    QuorumKind::Write => ("write quorum w", "one, quorum, all, any"),
                };
                return Err(TunekvError::new(
                    Code::QuorumInvalid,
                    format!("invalid {name} {}; valid: {valid}", echo(s)),
                ));
            }
        };
        Ok(q)
    }

    /// How many of `n` replicas it takes (`any`: 1, which may be a hint).
    pub fn count(self, n: u32) -> u32 {
        match self {
            Quorum::Any | Quorum::One => 1.min(n),
            Quorum::Quorum => n / 2 + 1,
            Quorum::All => n,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Quorum::Any => "any",
            Quorum::One => "one",
            Quorum::Quorum => "quorum",
            Quorum::All => "all",
        }
    }

    /// Whether reads at `r` after writes at `w` acknowledged before them always meet those
    /// writes on at least one replica of `n` (R + W > N, both on the preference list).
    pub fn strict(r: Quorum, w: Quorum, n: u32) -> bool {
        w != Quorum::Any && r.count(n) + w.count(n) > n
    }
}

impl fmt::Display for Quorum {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quorums_parse_and_count() {
        assert_eq!(
            Quorum::parse("quorum", QuorumKind::Read),
            Ok(Quorum::Quorum)
        );
        assert_eq!(Quorum::parse("any", QuorumKind::Write), Ok(Quorum::Any));
        let e = Quorum::parse("any", QuorumKind::Read).unwrap_err();
        assert_eq!(e.code, Code::QuorumInvalid);
        assert!(e.message.contains("one, quorum, all"), "{}", e.message);
        assert_eq!(
            Quorum::parse("two", QuorumKind::Write).map_err(|e| e.code),
            Err(Code::QuorumInvalid)
        );
        assert_eq!(Quorum::Quorum.count(3), 2);
        assert_eq!(Quorum::Quorum.count(4), 3);
        assert_eq!(Quorum::Quorum.count(1), 1);
        assert_eq!(Quorum::All.count(5), 5);
        assert_eq!(Quorum::Any.count(3), 1);
        assert!(Quorum::strict(Quorum::Quorum, Quorum::Quorum, 3));
        assert!(!Quorum::strict(Quorum::One, Quorum::Quorum, 3));
        assert!(Quorum::strict(Quorum::One, Quorum::All, 3));
        assert!(!Quorum::strict(Quorum::All, Quorum::Any, 3));
    }
}
