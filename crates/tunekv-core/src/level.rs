//! Consistency levels and their one textual syntax, shared by HTTP, RESP and the CLI:
//! `strong`, `bounded(k=10)`, `bounded(t=500ms)`, `bounded(k=10,t=2s)`, `consistent_prefix`,
//! `read_your_writes`, `monotonic_reads`, `session`, `eventual`, `weak`.

use crate::code::{Code, TunekvError};
use std::fmt;
use std::time::Duration;

/// Longest level string we parse; anything longer is rejected before parsing.
pub const LEVEL_BYTES_MAX: usize = 64;
/// Largest K in `bounded(k=K)`.
pub const BOUNDED_ENTRIES_MAX: u64 = 1 << 40;
/// Largest T in `bounded(t=T)`: one day.
pub const BOUNDED_MS_MAX: u64 = 24 * 3600 * 1000;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Level {
    Strong,
    /// At least one of the two bounds is set; when both are, both must hold.
    Bounded {
        entries_max: Option<u64>,
        lag_max: Option<Duration>,
    },
    ConsistentPrefix,
    ReadYourWrites,
    MonotonicReads,
    Session,
    Eventual,
    Weak,
}

/// Every level's syntax, for error messages.
pub const LEVEL_SYNTAX: &str = "strong, bounded(k=K), bounded(t=T), bounded(k=K,t=T), \
consistent_prefix, read_your_writes, monotonic_reads, session, eventual, weak";

/// The kind of promise a level makes: what a copy must prove before it serves. Code outside
/// tunekv-core that must tell levels apart (an injected bug that breaks one promise, a report)
/// asks for this instead of matching on `Level`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Promise {
    /// The latest committed state (strong).
    Linearizable,
    /// A state no older than the session's own writes and reads.
    Session,
    /// A bounded lag behind the newest commit (entries and/or time).
    Bounded,
    /// Any committed state, in log order (eventual, consistent prefix, weak).
    AnyState,
}

impl Level {
    /// What this level promises.
    pub fn promise(&self) -> Promise {
        match self {
            Level::Strong => Promise::Linearizable,
            Level::ReadYourWrites | Level::MonotonicReads | Level::Session => Promise::Session,
            Level::Bounded { .. } => Promise::Bounded,
            _ => Promise::AnyState,
        }
    }

    /// Parses DESIGN §3's syntax. Whitespace around the whole string and around `=`/`,` is
    /// tolerated; names are case-sensitive lower case.
    pub fn parse(s: &str) -> Result<Level, TunekvError> {
        let invalid = |why: &str| {
            TunekvError::new(
                Code::LevelInvalid,
                format!(
                    "invalid level {:?}: {why}; valid levels: {LEVEL_SYNTAX}",
                    truncate(s)
                ),
            )
        };
        if s.len() > LEVEL_BYTES_MAX {
            return Err(invalid("too long"));
        }
        let s = s.trim();
        let level = match s {
            "strong" => Level::Strong,
            "consistent_prefix" => Level::ConsistentPrefix,
            "read_your_writes" => Level::ReadYourWrites,
            "monotonic_reads" => Level::MonotonicReads,
            "session" => Level::Session,
            "eventual" => Level::Eventual,
            "weak" => Level::Weak,
            _ => {
                let Some(args) = s.strip_prefix("bounded(").and_then(|r| r.strip_suffix(')'))
                else {
                    return Err(invalid("unknown level"));
                };
                let mut entries_max = None;
                let mut lag_max = None;
                for part in args.split(',') {
                    let Some((name, value)) = part.split_once('=') else {
                        return Err(invalid("bounded takes k=ENTRIES and/or t=DURATION"));
                    };
                    match name.trim() {
                        "k" if entries_max.is_none() => {
                            let k: u64 = value
                                .trim()
                                .parse()
                                .map_err(|_| invalid("k must be a non-negative integer"))?;
                            if k > BOUNDED_ENTRIES_MAX {
                                return Err(invalid("k is too large"));
                            }
                            entries_max = Some(k);
                        }
                        "t" if lag_max.is_none() => {
                            let t = parse_duration(value.trim()).ok_or_else(|| {
                                invalid("t must be a duration such as 500ms or 2s")
                            })?;
                            if t > Duration::from_millis(BOUNDED_MS_MAX) {
                                return Err(invalid("t is too large"));
                            }
                            lag_max = Some(t);
                        }
                        "k" | "t" => return Err(invalid("a bound is given twice")),
                        _ => return Err(invalid("bounded takes k=ENTRIES and/or t=DURATION")),
                    }
                }
                Level::Bounded {
                    entries_max,
                    lag_max,
                }
            }
        };
        Ok(level)
    }

    /// Whether this build truly enforces the level on ordered keyspaces. A level that is parsed
    /// but not enforced is refused with `level_invalid` rather than served weaker.
    pub fn is_enforced(self) -> bool {
        matches!(
            self,
            Level::Strong
                | Level::Bounded { .. }
                | Level::ConsistentPrefix
                | Level::ReadYourWrites
                | Level::MonotonicReads
                | Level::Session
                | Level::Eventual
        )
    }

    /// The enforced levels, for error messages.
    pub const ENFORCED: &'static str =
        "strong, bounded(k=K), bounded(t=T), bounded(k=K,t=T), consistent_prefix, \
read_your_writes, monotonic_reads, session, eventual";
}

fn truncate(s: &str) -> &str {
    match s.char_indices().nth(LEVEL_BYTES_MAX) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}

/// Parses `500ms`, `2s`, `1m`, `250us` is not accepted (milliseconds are the finest unit).
pub fn parse_duration(s: &str) -> Option<Duration> {
    let (digits, unit_ms) = if let Some(d) = s.strip_suffix("ms") {
        (d, 1)
    } else if let Some(d) = s.strip_suffix('s') {
        (d, 1000)
    } else if let Some(d) = s.strip_suffix('m') {
        (d, 60_000)
    } else {
        return None;
    };
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let n: u64 = digits.parse().ok()?;
    Some(Duration::from_millis(n.checked_mul(unit_ms)?))
}

fn fmt_duration(d: Duration, f: &mut fmt::Formatter<'_>) -> fmt::Result {
    let ms = d.as_millis();
    if ms.is_multiple_of(1000) && ms > 0 {
        write!(f, "{}s", ms / 1000)
    } else {
        write!(f, "{ms}ms")
    }
}

impl Level {
    /// The level's kind, without parameters: `bounded(t=3s)` and `bounded(k=5)` are both
    /// `bounded`; the others are their own name. A bounded set, for metrics labels.
    pub fn kind(&self) -> &'static str {
        match self {
            Level::Strong => "strong",
            Level::Bounded { .. } => "bounded",
            Level::ConsistentPrefix => "consistent_prefix",
            Level::ReadYourWrites => "read_your_writes",
            Level::MonotonicReads => "monotonic_reads",
            Level::Session => "session",
            Level::Eventual => "eventual",
            Level::Weak => "weak",
        }
    }
}

impl fmt::Display for Level {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Level::Strong => f.write_str("strong"),
            Level::Bounded {
                entries_max,
                lag_max,
            } => {
                f.write_str("bounded(")?;
                if let Some(k) = entries_max {
                    write!(f, "k={k}")?;
                }
                if let Some(t) = lag_max {
                    if entries_max.is_some() {
                        f.write_str(",")?;
                    }
                    f.write_str("t=")?;
                    fmt_duration(*t, f)?;
                }
                f.write_str(")")
            }
            Level::ConsistentPrefix => f.write_str("consistent_prefix"),
            Level::ReadYourWrites => f.write_str("read_your_writes"),
            Level::MonotonicReads => f.write_str("monotonic_reads"),
            Level::Session => f.write_str("session"),
            Level::Eventual => f.write_str("eventual"),
            Level::Weak => f.write_str("weak"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_design_example_and_prints_it_back() {
        for s in [
            "strong",
            "bounded(k=10)",
            "bounded(t=500ms)",
            "bounded(k=10,t=2s)",
            "consistent_prefix",
            "read_your_writes",
            "monotonic_reads",
            "session",
            "eventual",
            "weak",
        ] {
            let level = Level::parse(s).unwrap_or_else(|e| panic!("{s}: {e}"));
            assert_eq!(level.to_string(), s);
        }
    }

    #[test]
    fn bounded_values() {
        assert_eq!(
            Level::parse("bounded( k = 3 , t = 1m )").ok(),
            Some(Level::Bounded {
                entries_max: Some(3),
                lag_max: Some(Duration::from_secs(60))
            })
        );
    }

    #[test]
    fn rejects_garbage_with_level_invalid_and_the_valid_list() {
        for s in [
            "",
            "Strong",
            "bounded()",
            "bounded(k=)",
            "bounded(k=-1)",
            "bounded(t=5)",
            "bounded(t=5h)",
            "bounded(k=1,k=2)",
            "bounded(x=1)",
            "bounded(k=1",
            "linearizable",
        ] {
            let err = Level::parse(s).expect_err(s);
            assert_eq!(err.code, Code::LevelInvalid, "{s}");
            assert!(err.message.contains("valid levels"), "{s}");
        }
        let long = "x".repeat(1000);
        assert_eq!(
            Level::parse(&long).map_err(|e| e.code),
            Err(Code::LevelInvalid)
        );
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("0ms"), Some(Duration::ZERO));
        assert_eq!(parse_duration("2s"), Some(Duration::from_secs(2)));
        assert_eq!(parse_duration("ms"), None);
        assert_eq!(parse_duration("1.5s"), None);
        assert_eq!(parse_duration("99999999999999999999s"), None);
    }
}
