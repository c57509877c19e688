//! Stable, client-visible error codes. They are mapped to HTTP statuses (and later RESP `-CODE`
//! prefixes) only at the edge; the code string itself never changes once published.

use serde::{Deserialize, Serialize};
use std::fmt;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Code {
    /// Malformed request (bad JSON, bad query parameter).
    BadRequest,
    /// A keyspace name or spec that cannot be accepted.
    KeyspaceInvalid,
    KeyspaceNotFound,
    /// A keyspace of that name exists with a different spec.
    KeyspaceExists,
    /// An empty key, or one whose encoding is broken (a bad `%` escape or bad base64url).
    KeyInvalid,
    KeyTooLarge,
    ValueTooLarge,
    /// Unknown or unsupported consistency level.
    LevelInvalid,
    NotFound,
    /// The node cannot reach a quorum of the shard's replicas; the operation did not happen.
    NoQuorum,
    /// The wait budget ran out; for a write, its outcome is unknown (it may still commit).
    Timeout,
    StalenessBoundUnmet,
    SessionUnmet,
    SessionInvalid,
    /// The fault hook was called on a node not started with `--enable-faults`.
    FaultsDisabled,
    /// The node cannot take the request now: it is starting or shutting down, or its HTTP
    /// connection cap is reached.
    Unavailable,
    /// This node holds no replica of the key's shard (a keyspace with fewer replicas than
    /// nodes): a permanent answer for this node; the message names the nodes to ask.
    NotReplica,
    Internal,
    /// A read's answer would exceed the node's response size cap; ask for fewer keys.
    ResponseTooLarge,
    /// No HTTP route has this path.
    RouteNotFound,
    /// The path exists but not for this HTTP method.
    MethodNotAllowed,
    /// An unknown read or write quorum (`r`, `w`), one given to a keyspace mode that takes none
    /// (ordered, or a quorum above one on a volatile keyspace), or `r` on a write.
    QuorumInvalid,
    /// A leaderless write stamped further ahead of a replica's clock than its
    /// `max_clock_skew_ms`: one runaway clock must not win every conflict.
    ClockSkew,
    /// The operation exists but not on this keyspace's mode (e.g. INCR on a leaderless
    /// keyspace, whose conflict policy cannot make it atomic).
    ModeUnsupported,
    /// A command of the wrong type for the keyspace's conflict policy (a plain SET on a counter
    /// keyspace, INCR on a last-writer-wins one): Redis's `WRONGTYPE`.
    WrongType,
    /// A counter update that would take the value out of the signed 64-bit range; it changed
    /// nothing.
    Overflow,
    /// An increment of a map field whose value is not an integer (Redis's "hash value is not
    /// an integer"); it changed nothing.
    NotInteger,
    /// A causal context (`tunekv-context`, `SET … CONTEXT`) that is corrupt, forged, or of
    /// another key.
    ContextInvalid,
    /// A write to a siblings keyspace that would leave a key more concurrent values than the
    /// keyspace's `siblings_max`; it changed nothing.
    TooManySiblings,
    /// A read of one value of a key that holds several concurrent ones (siblings): read them
    /// all (`SIBLINGS key`, `?format=json`).
    Siblings,
    /// A conditional write (`if_version`, `CAS`) whose key was not at the version it named; it
    /// changed nothing, and the answer carries the key's current version.
    VersionMismatch,
    /// A transaction naming keys of more than one shard (transactions are single-shard for
    /// now); nothing ran.
    TxnCrossShard,
    /// A watch cursor that is corrupt, forged, or of another keyspace.
    CursorInvalid,
    /// A watch cursor older than the changes the node still keeps: read the keys again, then
    /// watch from now. The answer names the oldest position a cursor may have.
    CursorCompacted,
    /// Auth is on and the request carries no credentials, or ones that are invalid, expired or
    /// revoked (HTTP 401; RESP `NOAUTH`).
    Unauthenticated,
    /// The caller is known but lacks the right the request needs (HTTP 403; RESP `NOPERM`).
    PermissionDenied,
    /// Over a rate or a cap (`user_requests_per_s`, `connection_requests_per_s`,
    /// `watches_per_user_max`): nothing was done; retry later (HTTP 429).
    RateLimited,
}

impl Code {
    pub fn as_str(self) -> &'static str {
        match self {
            Code::BadRequest => "bad_request",
            Code::KeyspaceInvalid => "keyspace_invalid",
            Code::KeyspaceNotFound => "keyspace_not_found",
            Code::KeyspaceExists => "keyspace_exists",
            Code::KeyInvalid => "key_invalid",
            Code::KeyTooLarge => "key_too_large",
            Code::ValueTooLarge => "value_too_large",
            Code::LevelInvalid => "level_invalid",
            Code::NotFound => "not_found",
            Code::NoQuorum => "no_quorum",
            Code::Timeout => "timeout",
            Code::StalenessBoundUnmet => "staleness_bound_unmet",
            Code::SessionUnmet => "session_unmet",
            Code::SessionInvalid => "session_invalid",
            Code::FaultsDisabled => "faults_disabled",
            Code::Unavailable => "unavailable",
            Code::NotReplica => "not_replica",
            Code::Internal => "internal",
            Code::ResponseTooLarge => "response_too_large",
            Code::RouteNotFound => "route_not_found",
            Code::MethodNotAllowed => "method_not_allowed",
            Code::QuorumInvalid => "quorum_invalid",
            Code::ClockSkew => "clock_skew",
            Code::ModeUnsupported => "mode_unsupported",
            Code::WrongType => "wrongtype",
            Code::Overflow => "overflow",
            Code::NotInteger => "not_integer",
            Code::ContextInvalid => "context_invalid",
            Code::TooManySiblings => "too_many_siblings",
            Code::Siblings => "siblings",
            Code::VersionMismatch => "version_mismatch",
            Code::TxnCrossShard => "txn_cross_shard",
            Code::CursorInvalid => "cursor_invalid",
            Code::CursorCompacted => "cursor_compacted",
            Code::Unauthenticated => "unauthenticated",
            Code::PermissionDenied => "permission_denied",
            Code::RateLimited => "rate_limited",
        }
    }

    pub fn parse(s: &str) -> Option<Code> {
        ALL_CODES.iter().copied().find(|c| c.as_str() == s)
    }
}

/// Every code, for parsing and documentation.
pub const ALL_CODES: &[Code] = &[
    Code::BadRequest,
    Code::KeyspaceInvalid,
    Code::KeyspaceNotFound,
    Code::KeyspaceExists,
    Code::KeyInvalid,
    Code::KeyTooLarge,
    Code::ValueTooLarge,
    Code::LevelInvalid,
    Code::NotFound,
    Code::NoQuorum,
    Code::Timeout,
    Code::StalenessBoundUnmet,
    Code::SessionUnmet,
    Code::SessionInvalid,
    Code::FaultsDisabled,
    Code::Unavailable,
    Code::NotReplica,
    Code::Internal,
    Code::ResponseTooLarge,
    Code::RouteNotFound,
    Code::MethodNotAllowed,
    Code::QuorumInvalid,
    Code::ClockSkew,
    Code::ModeUnsupported,
    Code::WrongType,
    Code::Overflow,
    Code::NotInteger,
    Code::ContextInvalid,
    Code::TooManySiblings,
    Code::Siblings,
    Code::VersionMismatch,
    Code::TxnCrossShard,
    Code::CursorInvalid,
    Code::CursorCompacted,
    Code::Unauthenticated,
    Code::PermissionDenied,
    Code::RateLimited,
];

/// The most characters of client input an error message repeats: a 10 MB field name must not
/// make a 10 MB error.
pub const ECHO_CHARS_MAX: usize = 128;

/// `s` cut to at most `chars_max` characters, with "…" appended when something was cut.
pub fn shorten(s: &str, chars_max: usize) -> std::borrow::Cow<'_, str> {
    match s.char_indices().nth(chars_max) {
        Some((i, _)) => std::borrow::Cow::Owned(format!("{}…", &s[..i])),
        None => std::borrow::Cow::Borrowed(s),
    }
}

/// Client input as an error message repeats it: quoted and escaped, at most
/// [`ECHO_CHARS_MAX`] characters of it, then "…" if it was longer.
pub fn echo(input: &str) -> String {
    match input.char_indices().nth(ECHO_CHARS_MAX) {
        Some((i, _)) => format!("{:?}…", &input[..i]),
        None => format!("{input:?}"),
    }
}

/// [`echo`] for bytes (a key): invalid UTF-8 shown as U+FFFD.
pub fn echo_bytes(input: &[u8]) -> String {
    // A character is at most 4 bytes, so a longer input still has more than ECHO_CHARS_MAX
    // characters in this prefix and `echo` marks the cut.
    let head = &input[..input.len().min(4 * (ECHO_CHARS_MAX + 1))];
    echo(&String::from_utf8_lossy(head))
}

impl fmt::Display for Code {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An error a client sees: a stable code and a human message saying what and why.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("{code}: {message}")]
pub struct TunekvError {
    pub code: Code,
    pub message: String,
}

impl TunekvError {
    pub fn new(code: Code, message: impl Into<String>) -> Self {
        TunekvError {
            code,
            message: message.into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_code_parses_back() {
        for c in ALL_CODES {
            assert_eq!(Code::parse(c.as_str()), Some(*c));
        }
        assert_eq!(Code::parse("nope"), None);
    }

    #[test]
    fn echo_keeps_short_input_and_cuts_long_input() {
        assert_eq!(echo("abc"), "\"abc\"");
        let long = "é".repeat(10_000);
        let e = echo(&long);
        assert!(e.ends_with('…'));
        assert_eq!(e.chars().count(), ECHO_CHARS_MAX + 3);
        assert_eq!(echo_bytes(b"a\xffb"), "\"a\u{fffd}b\"");
        let e = echo_bytes(&vec![b'k'; 1_000_000]);
        assert!(e.ends_with('…') && e.len() < 200, "{e}");
        assert_eq!(shorten("abcdef", 3), "abc…");
        assert_eq!(shorten("abc", 3), "abc");
    }
}
