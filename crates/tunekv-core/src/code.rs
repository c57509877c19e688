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
    /// An empty key.
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
    /// The node is starting or shutting down.
    Unavailable,
    Internal,
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
            Code::Internal => "internal",
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
    Code::Internal,
];

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
}
