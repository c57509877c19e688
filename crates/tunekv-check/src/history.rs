//! The history format: one JSON object per operation, one operation per line (DESIGN §7).
//!
//! The format is how `verify`, the simulator and outside checkers exchange what clients saw, so
//! it is read strictly: every field of the schema must be present (a missing `ok` must never
//! quietly become "unknown"), and each line is judged on its own so that an error can name its
//! line. Fields beyond the schema are ignored, so a recorder may add its own.
//!
//! ```text
//! {"client": int, "session": string|null, "op": "read"|"write"|"delete", "key": string,
//!  "value": string|null, "invoke_ns": int, "complete_ns": int, "ok": true|false|null,
//!  "level": string, "node": string, "position": string|null, "staleness_entries": int|null,
//!  "staleness_ms": int|null}
//! ```

use serde::{Deserialize, Serialize};
use std::fmt;

/// What an operation did to its key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OpKind {
    Read,
    Write,
    Delete,
    /// A counter update (counter keyspaces): `value` is the amount added, in decimal (negative
    /// for a decrement).
    Add,
    /// A set member added (set keyspaces): `value` is the member, `dots` the dot the add
    /// issued followed by the dots of the member it replaced (when acknowledged).
    Sadd,
    /// A set member removed: `value` is the member, `dots` the dots of it the remove dropped
    /// (when acknowledged). A read of a set key has as `value` its members as a JSON array of
    /// strings.
    Srem,
}

impl OpKind {
    /// The name used in the history format.
    pub fn as_str(self) -> &'static str {
        match self {
            OpKind::Read => "read",
            OpKind::Write => "write",
            OpKind::Delete => "delete",
            OpKind::Add => "add",
            OpKind::Sadd => "sadd",
            OpKind::Srem => "srem",
        }
    }
}

/// One operation as a client saw it. Field names are the history format's.
///
/// `ok`: `Some(true)` it happened; `Some(false)` it certainly did not happen; `None` the outcome
/// is unknown (a timed-out write may or may not have been committed). `value`: for a read, what
/// it returned (`None` = not found); for a write, the value written; for a delete, `None`.
/// Times are nanoseconds from one monotonic clock of the recording host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Operation {
    pub client: u64,
    pub session: Option<String>,
    pub op: OpKind,
    pub key: String,
    pub value: Option<String>,
    pub invoke_ns: u64,
    pub complete_ns: u64,
    pub ok: Option<bool>,
    pub level: String,
    pub node: String,
    /// `shard=S;index=I;commit_ms=C`: for an acknowledged write its committed position, for a
    /// read the position of the state it was served from.
    pub position: Option<String>,
    pub staleness_entries: Option<u64>,
    pub staleness_ms: Option<u64>,
    /// Leaderless keyspaces only (optional in the format): the read's `r` or the update's `w`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quorum: Option<String>,
    /// Leaderless keyspaces only: the version written or read, `HLC.NODE` (`none`: a read that
    /// found no replica holding the key).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    /// Leaderless writes only: whether every copy counted toward `w` was on the key's
    /// preference list (no substitute, no hint).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub strict: Option<bool>,
    /// Set keyspaces only: the dots (`NODE.COUNTER`) an acknowledged `sadd` issued (first)
    /// and replaced, or an acknowledged `srem` removed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dots: Option<Vec<String>>,
}

/// Every field of the schema. serde would accept a missing `Option` field as `None`; we do not,
/// because a recorder that forgot `ok` would turn certain outcomes into unknown ones.
pub const FIELDS: [&str; 13] = [
    "client",
    "session",
    "op",
    "key",
    "value",
    "invoke_ns",
    "complete_ns",
    "ok",
    "level",
    "node",
    "position",
    "staleness_entries",
    "staleness_ms",
];

impl Operation {
    /// A write or a delete: an operation that changes its key's state.
    pub fn is_update(&self) -> bool {
        matches!(
            self.op,
            OpKind::Write | OpKind::Delete | OpKind::Add | OpKind::Sadd | OpKind::Srem
        )
    }

    pub fn is_read(&self) -> bool {
        self.op == OpKind::Read
    }

    /// The operation certainly happened (`ok: true`).
    pub fn is_acked(&self) -> bool {
        self.ok == Some(true)
    }

    /// The parsed position, if there is one and it is well formed.
    pub fn parsed_position(&self) -> Option<Position> {
        self.position.as_deref().and_then(Position::parse)
    }

    pub fn level_kind(&self) -> LevelKind {
        LevelKind::parse(&self.level)
    }
}

/// Where a copy stood in its shard's log: DESIGN §4's `shard=3;index=1042;commit_ms=...`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Position {
    pub shard: u32,
    pub index: u64,
    pub commit_ms: u64,
}

impl Position {
    /// Parses `shard=S;index=I;commit_ms=C` (the three fields in any order, each exactly once,
    /// decimal digits only). `None` for anything else, so a garbled receipt is never read as
    /// a plausible position.
    pub fn parse(text: &str) -> Option<Position> {
        let mut shard = None;
        let mut index = None;
        let mut commit_ms = None;
        for part in text.split(';') {
            let (name, value) = part.split_once('=')?;
            let slot = match name {
                "shard" => {
                    if shard.is_some() {
                        return None;
                    }
                    shard = Some(u32::try_from(parse_digits(value)?).ok()?);
                    continue;
                }
                "index" => &mut index,
                "commit_ms" => &mut commit_ms,
                _ => return None,
            };
            if slot.is_some() {
                return None;
            }
            *slot = Some(parse_digits(value)?);
        }
        Some(Position {
            shard: shard?,
            index: index?,
            commit_ms: commit_ms?,
        })
    }
}

impl fmt::Display for Position {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "shard={};index={};commit_ms={}",
            self.shard, self.index, self.commit_ms
        )
    }
}

/// A non-empty run of ASCII digits. `str::parse` alone would also take a leading `+`.
fn parse_digits(text: &str) -> Option<u64> {
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    text.parse().ok()
}

/// The level an operation asked for, as far as the checkers need to know it.
///
/// This is the checker's own reading of DESIGN §3's syntax, deliberately independent of
/// `tunekv-core`: a checker that shared the product's parser would share its bugs. Anything it
/// does not recognise is kept as `Other` (such reads are still judged by the properties that
/// hold at every level).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum LevelKind {
    Strong,
    /// At least one bound is set; when both are, both must hold.
    Bounded {
        k: Option<u64>,
        t_ms: Option<u64>,
    },
    ConsistentPrefix,
    ReadYourWrites,
    MonotonicReads,
    Session,
    Eventual,
    Other(String),
}

impl LevelKind {
    /// Never fails: an unrecognised level is `Other(text)`.
    pub fn parse(text: &str) -> LevelKind {
        match text.trim() {
            "strong" => LevelKind::Strong,
            "consistent_prefix" => LevelKind::ConsistentPrefix,
            "read_your_writes" => LevelKind::ReadYourWrites,
            "monotonic_reads" => LevelKind::MonotonicReads,
            "session" => LevelKind::Session,
            "eventual" => LevelKind::Eventual,
            trimmed => parse_bounded(trimmed).unwrap_or_else(|| LevelKind::Other(text.to_owned())),
        }
    }
}

/// `bounded(k=K)`, `bounded(t=T)`, `bounded(k=K,t=T)` (either order, spaces tolerated).
fn parse_bounded(text: &str) -> Option<LevelKind> {
    let inner = text.strip_prefix("bounded(")?.strip_suffix(')')?;
    let mut k = None;
    let mut t_ms = None;
    for part in inner.split(',') {
        let (name, value) = part.split_once('=')?;
        let value = value.trim();
        match name.trim() {
            "k" if k.is_none() => k = Some(parse_digits(value)?),
            "t" if t_ms.is_none() => t_ms = Some(parse_duration_ms(value)?),
            _ => return None,
        }
    }
    if k.is_none() && t_ms.is_none() {
        return None;
    }
    Some(LevelKind::Bounded { k, t_ms })
}

/// `500ms` or `2s`, in milliseconds.
fn parse_duration_ms(text: &str) -> Option<u64> {
    if let Some(ms) = text.strip_suffix("ms") {
        parse_digits(ms)
    } else if let Some(s) = text.strip_suffix('s') {
        parse_digits(s)?.checked_mul(1000)
    } else {
        None
    }
}

/// Why one operation cannot be part of a history, whatever the rest of the history says.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OpProblem {
    #[error("complete_ns {complete_ns} is before invoke_ns {invoke_ns}")]
    CompleteBeforeInvoke { invoke_ns: u64, complete_ns: u64 },
    #[error("a write (or a set's sadd or srem) must carry the value (member) it wrote")]
    WriteWithoutValue,
    #[error("a delete carries no value")]
    DeleteWithValue,
    #[error("an add must carry its amount as a decimal integer, got {0:?}")]
    BadAmount(Option<String>),
    #[error("position {0:?} is not of the form shard=S;index=I;commit_ms=C")]
    BadPosition(String),
}

/// Checks what can be checked on one operation alone.
pub fn validate_op(op: &Operation) -> Result<(), OpProblem> {
    if op.complete_ns < op.invoke_ns {
        return Err(OpProblem::CompleteBeforeInvoke {
            invoke_ns: op.invoke_ns,
            complete_ns: op.complete_ns,
        });
    }
    match (op.op, &op.value) {
        (OpKind::Write | OpKind::Sadd | OpKind::Srem, None) => {
            return Err(OpProblem::WriteWithoutValue)
        }
        (OpKind::Delete, Some(_)) => return Err(OpProblem::DeleteWithValue),
        (OpKind::Add, v) if v.as_deref().and_then(|v| v.parse::<i64>().ok()).is_none() => {
            return Err(OpProblem::BadAmount(v.clone()))
        }
        _ => {}
    }
    if let Some(text) = &op.position {
        if Position::parse(text).is_none() {
            return Err(OpProblem::BadPosition(text.clone()));
        }
    }
    Ok(())
}

/// A history that could not be read. Lines are numbered from 1.
#[derive(Debug, thiserror::Error)]
pub enum HistoryError {
    #[error("line {line}: not valid JSON for an operation: {source}")]
    Json {
        line: usize,
        source: serde_json::Error,
    },
    #[error("line {line}: an operation must be a JSON object")]
    NotAnObject { line: usize },
    #[error("line {line}: missing field {field:?}")]
    MissingField { line: usize, field: &'static str },
    #[error("line {line}: {source}")]
    Invalid { line: usize, source: OpProblem },
}

/// Reads a whole history. Blank lines are skipped (a trailing newline is normal).
pub fn parse_history(text: &str) -> Result<Vec<Operation>, HistoryError> {
    let mut ops = Vec::new();
    for (n, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        ops.push(parse_line(line, n + 1)?);
    }
    Ok(ops)
}

/// Reads one line; `line_no` only labels errors. Public so a caller can stream a large file
/// through a `BufRead` without holding its text.
pub fn parse_line(line: &str, line_no: usize) -> Result<Operation, HistoryError> {
    let json = |source| HistoryError::Json {
        line: line_no,
        source,
    };
    let value: serde_json::Value = serde_json::from_str(line).map_err(json)?;
    let Some(object) = value.as_object() else {
        return Err(HistoryError::NotAnObject { line: line_no });
    };
    if let Some(field) = FIELDS.iter().find(|f| !object.contains_key(**f)) {
        return Err(HistoryError::MissingField {
            line: line_no,
            field,
        });
    }
    let op: Operation = serde_json::from_value(value).map_err(json)?;
    validate_op(&op).map_err(|source| HistoryError::Invalid {
        line: line_no,
        source,
    })?;
    Ok(op)
}

/// A shard backup that completed whole, as a recorder saw it.
pub struct Backup<'a> {
    /// The client id the recorder gives backups (apart from the workload's clients).
    pub client: u64,
    /// Who streamed it: `backup@nN` for node `nN`, never a node's own name (a node's metrics
    /// count client reads, not backups, so the metrics checker must not look for these).
    pub node: String,
    /// The stream's header: its shard, applied index and that entry's commit time.
    pub shard: u32,
    pub index: u64,
    pub commit_ms: u64,
    /// When the request was sent and when the stream ended.
    pub invoke_ns: u64,
    pub complete_ns: u64,
    /// What the stream held, key by key.
    pub held: &'a std::collections::BTreeMap<Vec<u8>, Vec<u8>>,
}

/// A backup of one shard as the history records it: one `strong` read of each of `keys` (the
/// workload's keys of that shard) at the stream's index, invoked when the request was sent and
/// completed when the stream ended. The checkers then judge it like any strong read: a backup
/// that misses a write acknowledged before it began is a linearizability violation, and one
/// whose keys do not match its index fails "value matches position".
pub fn backup_reads<'k>(b: &Backup<'_>, keys: impl IntoIterator<Item = &'k str>) -> Vec<Operation> {
    let position = format!(
        "shard={};index={};commit_ms={}",
        b.shard, b.index, b.commit_ms
    );
    keys.into_iter()
        .map(|k| Operation {
            client: b.client,
            session: None,
            op: OpKind::Read,
            key: k.to_string(),
            value: b
                .held
                .get(k.as_bytes())
                .map(|v| String::from_utf8_lossy(v).into_owned()),
            invoke_ns: b.invoke_ns,
            complete_ns: b.complete_ns,
            ok: Some(true),
            level: "strong".into(),
            node: b.node.clone(),
            position: Some(position.clone()),
            staleness_entries: Some(0),
            staleness_ms: Some(0),
            quorum: None,
            version: None,
            strict: None,
            dots: None,
        })
        .collect()
}

/// One line of the history format, fields in the schema's order, no trailing newline.
///
/// Written by hand rather than through serde so that it cannot fail and keeps the schema's field
/// order; `tests::round_trip` proves it agrees with the parser.
pub fn to_line(op: &Operation) -> String {
    let mut line = format!(
        "{{\"client\":{},\"session\":{},\"op\":\"{}\",\"key\":{},\"value\":{},\
\"invoke_ns\":{},\"complete_ns\":{},\"ok\":{},\"level\":{},\"node\":{},\"position\":{},\
\"staleness_entries\":{},\"staleness_ms\":{}}}",
        op.client,
        json_opt_str(op.session.as_deref()),
        op.op.as_str(),
        json_str(&op.key),
        json_opt_str(op.value.as_deref()),
        op.invoke_ns,
        op.complete_ns,
        json_opt(op.ok),
        json_str(&op.level),
        json_str(&op.node),
        json_opt_str(op.position.as_deref()),
        json_opt(op.staleness_entries),
        json_opt(op.staleness_ms),
    );
    // The leaderless fields, only when present (ordered histories keep the 13-field schema).
    line.pop();
    if let Some(q) = &op.quorum {
        line += &format!(",\"quorum\":{}", json_str(q));
    }
    if let Some(v) = &op.version {
        line += &format!(",\"version\":{}", json_str(v));
    }
    if let Some(s) = op.strict {
        line += &format!(",\"strict\":{s}");
    }
    line.push('}');
    line
}

/// A JSON string literal, escaped by serde_json (its `Display` for `Value` cannot fail).
fn json_str(text: &str) -> String {
    serde_json::Value::from(text).to_string()
}

fn json_opt_str(text: Option<&str>) -> String {
    text.map_or_else(|| "null".to_owned(), json_str)
}

/// Numbers and booleans print as JSON already.
fn json_opt<T: fmt::Display>(value: Option<T>) -> String {
    value.map_or_else(|| "null".to_owned(), |v| v.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_backup_is_one_valid_strong_read_per_key_at_its_index() {
        let held = std::collections::BTreeMap::from([(b"a".to_vec(), b"1".to_vec())]);
        let b = Backup {
            client: 10_000,
            node: "backup@n2".into(),
            shard: 1,
            index: 42,
            commit_ms: 7,
            invoke_ns: 100,
            complete_ns: 200,
            held: &held,
        };
        let reads = backup_reads(&b, ["a", "b"]);
        assert_eq!(reads.len(), 2);
        for r in &reads {
            validate_op(r).unwrap();
            assert!(r.is_read());
            assert_eq!(r.level, "strong");
            assert_eq!((r.invoke_ns, r.complete_ns, r.ok), (100, 200, Some(true)));
            assert_eq!(r.position.as_deref(), Some("shard=1;index=42;commit_ms=7"));
            assert_eq!(r.node, "backup@n2");
        }
        assert_eq!(reads[0].value.as_deref(), Some("1"));
        assert_eq!(
            reads[1].value, None,
            "a key the backup lacks was read as absent"
        );
        assert!(backup_reads(&b, []).is_empty());
    }

    fn sample() -> Vec<Operation> {
        vec![
            Operation {
                client: 7,
                session: Some("s-7".into()),
                op: OpKind::Write,
                key: "k\"1\n".into(),
                value: Some("v é \\ 1".into()),
                invoke_ns: 10,
                complete_ns: 20,
                ok: Some(true),
                level: "strong".into(),
                node: "n1".into(),
                position: Some("shard=3;index=1042;commit_ms=1763900000123".into()),
                staleness_entries: Some(0),
                staleness_ms: Some(0),
                quorum: Some("quorum".into()),
                version: Some("123.2".into()),
                strict: Some(false),
                dots: None,
            },
            Operation {
                client: 8,
                session: None,
                op: OpKind::Read,
                key: "k2".into(),
                value: None,
                invoke_ns: 30,
                complete_ns: 30,
                ok: None,
                level: "bounded(k=10,t=2s)".into(),
                node: "n2".into(),
                position: None,
                staleness_entries: None,
                staleness_ms: None,
                quorum: None,
                version: None,
                strict: None,
                dots: None,
            },
            Operation {
                client: 9,
                session: None,
                op: OpKind::Delete,
                key: "k2".into(),
                value: None,
                invoke_ns: 31,
                complete_ns: 90,
                ok: Some(false),
                level: "strong".into(),
                node: "n3".into(),
                position: None,
                staleness_entries: None,
                staleness_ms: None,
                quorum: None,
                version: None,
                strict: None,
                dots: None,
            },
        ]
    }

    #[test]
    fn round_trip() {
        let ops = sample();
        let text: String = ops.iter().map(|op| to_line(op) + "\n").collect();
        assert_eq!(parse_history(&text).unwrap(), ops);
        // serde's own output must read back the same way too.
        let via_serde: String = ops
            .iter()
            .map(|op| serde_json::to_string(op).unwrap() + "\n")
            .collect();
        assert_eq!(parse_history(&via_serde).unwrap(), ops);
    }

    #[test]
    fn reads_the_design_example_with_spaces_and_blank_lines() {
        let text = r#"
{"client": 1, "session": null, "op": "read", "key": "a", "value": null, "invoke_ns": 1, "complete_ns": 2, "ok": true, "level": "eventual", "node": "n1", "position": "shard=0;index=0;commit_ms=0", "staleness_entries": 0, "staleness_ms": 0, "extra": "ignored"}

"#;
        let ops = parse_history(text).unwrap();
        assert_eq!(ops.len(), 1);
        assert_eq!(ops[0].op, OpKind::Read);
        assert_eq!(ops[0].level_kind(), LevelKind::Eventual);
    }

    #[test]
    fn malformed_line_names_its_line() {
        let good = to_line(&sample()[0]);
        let text = format!("{good}\n{good}\n{{\"client\": 1, oops}}\n");
        match parse_history(&text) {
            Err(HistoryError::Json { line, .. }) => assert_eq!(line, 3),
            other => panic!("expected a JSON error on line 3, got {other:?}"),
        }
    }

    #[test]
    fn missing_field_is_an_error_not_a_null() {
        let line = to_line(&sample()[0]).replace(",\"ok\":true", "");
        let text = format!("\n{line}\n");
        match parse_history(&text) {
            Err(HistoryError::MissingField { line, field }) => {
                assert_eq!((line, field), (2, "ok"));
            }
            other => panic!("expected a missing field error, got {other:?}"),
        }
    }

    #[test]
    fn semantic_problems_name_their_line() {
        let mut bad = sample()[0].clone();
        bad.complete_ns = 5;
        let text = format!("{}\n{}\n", to_line(&sample()[1]), to_line(&bad));
        assert!(matches!(
            parse_history(&text),
            Err(HistoryError::Invalid {
                line: 2,
                source: OpProblem::CompleteBeforeInvoke { .. }
            })
        ));
        let mut bad = sample()[0].clone();
        bad.position = Some("shard=1;index=x;commit_ms=2".into());
        assert!(matches!(
            parse_line(&to_line(&bad), 4),
            Err(HistoryError::Invalid {
                line: 4,
                source: OpProblem::BadPosition(_)
            })
        ));
        let mut bad = sample()[0].clone();
        bad.value = None;
        assert!(matches!(
            parse_line(&to_line(&bad), 1),
            Err(HistoryError::Invalid {
                source: OpProblem::WriteWithoutValue,
                ..
            })
        ));
        assert!(matches!(
            parse_line("[1, 2]", 9),
            Err(HistoryError::NotAnObject { line: 9 })
        ));
        let unknown_op = to_line(&sample()[0]).replace("\"write\"", "\"scan\"");
        assert!(matches!(
            parse_line(&unknown_op, 1),
            Err(HistoryError::Json { line: 1, .. })
        ));
    }

    #[test]
    fn positions() {
        let p = Position::parse("shard=3;index=1042;commit_ms=1763900000123").unwrap();
        assert_eq!(
            p,
            Position {
                shard: 3,
                index: 1042,
                commit_ms: 1_763_900_000_123
            }
        );
        assert_eq!(Position::parse(&p.to_string()), Some(p));
        assert_eq!(
            Position::parse("index=1;commit_ms=2;shard=0").map(|p| p.index),
            Some(1)
        );
        for bad in [
            "",
            "shard=1;index=2",
            "shard=1;index=2;commit_ms=3;x=4",
            "shard=1;index=2;index=2;commit_ms=3",
            "shard=1;index=+2;commit_ms=3",
            "shard=99999999999;index=2;commit_ms=3",
            "shard=1; index=2;commit_ms=3",
        ] {
            assert_eq!(Position::parse(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn levels() {
        use LevelKind::*;
        let cases = [
            ("strong", Strong),
            (
                "bounded(k=10)",
                Bounded {
                    k: Some(10),
                    t_ms: None,
                },
            ),
            (
                "bounded(t=500ms)",
                Bounded {
                    k: None,
                    t_ms: Some(500),
                },
            ),
            (
                "bounded(t=2s)",
                Bounded {
                    k: None,
                    t_ms: Some(2000),
                },
            ),
            (
                "bounded(k=10,t=2s)",
                Bounded {
                    k: Some(10),
                    t_ms: Some(2000),
                },
            ),
            (
                "bounded(t=1ms, k=0)",
                Bounded {
                    k: Some(0),
                    t_ms: Some(1),
                },
            ),
            ("consistent_prefix", ConsistentPrefix),
            ("read_your_writes", ReadYourWrites),
            ("monotonic_reads", MonotonicReads),
            ("session", Session),
            ("eventual", Eventual),
            ("weak", Other("weak".into())),
        ];
        for (text, want) in cases {
            assert_eq!(LevelKind::parse(text), want, "{text}");
        }
        for bad in [
            "bounded()",
            "bounded(k=)",
            "bounded(k=1,k=2)",
            "bounded(t=5)",
            "bounded(t=5m)",
            "bounded(x=1)",
            "Strong",
        ] {
            assert_eq!(LevelKind::parse(bad), Other(bad.into()), "{bad}");
        }
    }
}
