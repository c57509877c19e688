//! Hand-made histories for the checkers' tests: terse builders with defaults that make a valid,
//! unremarkable operation (client 1, node n1, no session, `strong`, acknowledged).

use crate::history::{OpKind, Operation};
use crate::report::Report;

/// Runs every checker over `ops` (no heal time) with the default limits.
pub(crate) fn run(ops: Vec<Operation>) -> Report {
    crate::check(
        &crate::CheckInput { ops, heal_ns: None },
        &crate::Limits::default(),
    )
    .expect("a well-formed history")
}

pub(crate) struct B(Operation);

fn base(op: OpKind, key: &str, value: Option<&str>, invoke_ns: u64, complete_ns: u64) -> B {
    B(Operation {
        client: 1,
        session: None,
        op,
        key: key.to_owned(),
        value: value.map(str::to_owned),
        invoke_ns,
        complete_ns,
        ok: Some(true),
        level: "strong".to_owned(),
        node: "n1".to_owned(),
        position: None,
        staleness_entries: None,
        staleness_ms: None,
        quorum: None,
        version: None,
        strict: None,
        dots: None,
    })
}

/// An operation of a leaderless history on key `k` (client 1, node n1, `eventual`, quorum
/// `one`), for the counter, set and siblings checkers' tests.
pub(crate) fn leaderless(
    kind: OpKind,
    value: Option<&str>,
    t: (u64, u64),
    ok: Option<bool>,
) -> Operation {
    Operation {
        ok,
        level: "eventual".to_owned(),
        quorum: Some("one".to_owned()),
        ..base(kind, "k", value, t.0, t.1).0
    }
}

pub(crate) fn write(key: &str, value: &str, invoke_ns: u64, complete_ns: u64) -> B {
    base(OpKind::Write, key, Some(value), invoke_ns, complete_ns)
}

pub(crate) fn delete(key: &str, invoke_ns: u64, complete_ns: u64) -> B {
    base(OpKind::Delete, key, None, invoke_ns, complete_ns)
}

pub(crate) fn read(key: &str, value: Option<&str>, invoke_ns: u64, complete_ns: u64) -> B {
    base(OpKind::Read, key, value, invoke_ns, complete_ns)
}

/// A position string on a shard, with the index doubling as commit time.
pub(crate) fn pos(shard: u32, index: u64) -> String {
    format!("shard={shard};index={index};commit_ms={index}")
}

impl B {
    /// Position on shard 0.
    pub(crate) fn at(self, index: u64) -> B {
        self.on(0, index)
    }

    pub(crate) fn on(mut self, shard: u32, index: u64) -> B {
        self.0.position = Some(pos(shard, index));
        self
    }

    pub(crate) fn level(mut self, level: &str) -> B {
        self.0.level = level.to_owned();
        self
    }

    /// Timed out: outcome unknown, no position.
    pub(crate) fn unknown(mut self) -> B {
        self.0.ok = None;
        self.0.position = None;
        self
    }

    /// Certainly did not happen.
    pub(crate) fn failed(mut self) -> B {
        self.0.ok = Some(false);
        self.0.position = None;
        self
    }

    pub(crate) fn client(mut self, client: u64) -> B {
        self.0.client = client;
        self
    }

    pub(crate) fn session(mut self, session: &str) -> B {
        self.0.session = Some(session.to_owned());
        self
    }

    pub(crate) fn node(mut self, node: &str) -> B {
        self.0.node = node.to_owned();
        self
    }

    pub(crate) fn op(self) -> Operation {
        self.0
    }
}

/// The (level, property) of every row with a violation, so a test can say that a history breaks
/// exactly the properties it was made to break.
pub(crate) fn violated(report: &Report) -> Vec<(String, String)> {
    report
        .rows
        .iter()
        .filter(|row| row.violations_total > 0)
        .map(|row| (row.level.clone(), row.property.clone()))
        .collect()
}

pub(crate) fn pair(level: &str, property: &str) -> (String, String) {
    (level.to_owned(), property.to_owned())
}

/// xorshift64*: a seeded generator for simulated histories, so failures reproduce.
pub(crate) struct Rng(pub(crate) u64);

impl Rng {
    pub(crate) fn next(&mut self) -> u64 {
        let mut x = self.0.max(1);
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
}
