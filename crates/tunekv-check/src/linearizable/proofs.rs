//! Direct proofs that a key's history is not linearizable, found without searching.
//!
//! The search decides every key, but to refute a history it must rule out every order of the
//! operations before the bad read, which on a long concurrent history can exceed any budget. The
//! common bugs have short proofs, so they are looked for first, each in O(n log n):
//!
//! - a read of a value no write that may have happened wrote;
//! - a read of a value whose write began after the read ended;
//! - a read of a value whose write was certainly superseded before the read began: some
//!   operation X began after the write ended (so took effect after it) and either overwrote it
//!   (an update) or saw another state (a read of another value, or of "not found"), and X ended
//!   before the read began. Values are unique, so the value cannot come back;
//! - a read of "not found" after an operation that certainly saw or made the key present
//!   (a write, or a read of a value, that ended before the read began) with no delete that could
//!   fall between them.
//!
//! Each is sound on its own: a proof found means no valid order exists. Finding none proves
//! nothing, and the search runs.

use super::{Act, Problem};

/// Operation numbers are the problem's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Proof {
    NeverWritten {
        read: usize,
    },
    BeforeWrite {
        read: usize,
        write: usize,
    },
    Superseded {
        read: usize,
        write: usize,
        witness: usize,
    },
    NotDeleted {
        read: usize,
        witness: usize,
    },
}

impl Proof {
    /// The operations that show it, the bad read first.
    pub(super) fn ops(self) -> Vec<usize> {
        match self {
            Proof::NeverWritten { read } => vec![read],
            Proof::BeforeWrite { read, write } => vec![read, write],
            Proof::Superseded {
                read,
                write,
                witness,
            } => vec![read, write, witness],
            Proof::NotDeleted { read, witness } => vec![read, witness],
        }
    }
}

/// The proof about the earliest-starting read that has one.
pub(super) fn find(problem: &Problem) -> Option<Proof> {
    let superseded = Superseded::new(problem);
    let not_deleted = NotDeleted::new(problem);
    let mut reads: Vec<usize> = (0..problem.ops.len())
        .filter(|&n| matches!(problem.ops[n].act, Act::Read(_) | Act::ReadNever))
        .collect();
    reads.sort_unstable_by_key(|&n| (problem.ops[n].invoke_ns, n));
    reads
        .into_iter()
        .find_map(|read| match problem.ops[read].act {
            Act::ReadNever => Some(Proof::NeverWritten { read }),
            Act::Read(Some(write)) => {
                let write = write as usize;
                if problem.ops[write].invoke_ns > problem.ops[read].complete_ns.unwrap_or(u64::MAX)
                {
                    return Some(Proof::BeforeWrite { read, write });
                }
                superseded
                    .witness(problem, read, write)
                    .map(|witness| Proof::Superseded {
                        read,
                        write,
                        witness,
                    })
            }
            Act::Read(None) => not_deleted
                .witness(problem, read)
                .map(|witness| Proof::NotDeleted { read, witness }),
            Act::Write | Act::Delete => None,
        })
}

/// What an operation shows about the key's state at the moment it took effect.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Class {
    /// Operation n changed the state.
    Update(usize),
    /// The state held the value of write n.
    Value(usize),
    /// The key was absent.
    Absent,
}

#[derive(Debug, Clone, Copy)]
struct Witness {
    complete_ns: u64,
    class: Class,
    n: usize,
}

/// The earliest-ending witness, and the earliest-ending one of another class.
#[derive(Debug, Clone, Copy, Default)]
struct Best {
    first: Option<Witness>,
    second: Option<Witness>,
}

impl Best {
    fn with(self, w: Witness) -> Best {
        let Some(first) = self.first else {
            return Best {
                first: Some(w),
                second: None,
            };
        };
        if w.complete_ns < first.complete_ns {
            let second = if w.class == first.class {
                self.second
            } else {
                Some(first)
            };
            return Best {
                first: Some(w),
                second,
            };
        }
        let better_second = self.second.is_none_or(|s| w.complete_ns < s.complete_ns);
        if w.class != first.class && better_second {
            return Best {
                first: Some(first),
                second: Some(w),
            };
        }
        self
    }
}

/// For "superseded": witnesses that returned, by start time, with for every suffix the two
/// earliest-ending witnesses of different classes (a read of the same value is no witness).
struct Superseded {
    invoke_ns: Vec<u64>,
    best_after: Vec<Best>,
}

impl Superseded {
    fn new(problem: &Problem) -> Superseded {
        let mut witnesses: Vec<(u64, Witness)> = Vec::new();
        for (n, lop) in problem.ops.iter().enumerate() {
            let Some(complete_ns) = lop.complete_ns else {
                continue;
            };
            let class = match lop.act {
                Act::Write | Act::Delete => Class::Update(n),
                Act::Read(Some(w)) => Class::Value(w as usize),
                Act::Read(None) => Class::Absent,
                Act::ReadNever => continue,
            };
            witnesses.push((
                lop.invoke_ns,
                Witness {
                    complete_ns,
                    class,
                    n,
                },
            ));
        }
        witnesses.sort_unstable_by_key(|&(invoke_ns, w)| (invoke_ns, w.n));
        let mut best_after = vec![Best::default(); witnesses.len() + 1];
        for (k, &(_, w)) in witnesses.iter().enumerate().rev() {
            best_after[k] = best_after[k + 1].with(w);
        }
        Superseded {
            invoke_ns: witnesses.iter().map(|&(invoke_ns, _)| invoke_ns).collect(),
            best_after,
        }
    }

    /// An operation that began after `write` ended, left another state, and ended before
    /// `read` began.
    fn witness(&self, problem: &Problem, read: usize, write: usize) -> Option<usize> {
        // An update of unknown outcome may take effect at any time after it began.
        let written_ns = problem.ops[write].complete_ns?;
        let k = self.invoke_ns.partition_point(|&t| t <= written_ns);
        let best = self.best_after.get(k).copied().unwrap_or_default();
        let witness = match best.first {
            Some(first) if first.class == Class::Value(write) => best.second,
            first => first,
        }?;
        (witness.complete_ns < problem.ops[read].invoke_ns).then_some(witness.n)
    }
}

/// For "not deleted": operations that certainly saw or made the key present (writes and reads
/// of a value that returned), by end time, with the latest start among each prefix; and deletes
/// that may have happened, by start time, with the latest end among each prefix.
struct NotDeleted {
    present_complete_ns: Vec<u64>,
    /// (invoke_ns, operation) with the latest start among the first n + 1.
    present_latest: Vec<(u64, usize)>,
    delete_invoke_ns: Vec<u64>,
    /// The latest end among the first n + 1 deletes (unknown outcome: never ends).
    delete_latest_end_ns: Vec<u64>,
}

impl NotDeleted {
    fn new(problem: &Problem) -> NotDeleted {
        let mut present: Vec<(u64, u64, usize)> = Vec::new();
        let mut deletes: Vec<(u64, u64)> = Vec::new();
        for (n, lop) in problem.ops.iter().enumerate() {
            match (lop.act, lop.complete_ns) {
                (Act::Write | Act::Read(Some(_)), Some(complete_ns)) => {
                    present.push((complete_ns, lop.invoke_ns, n));
                }
                (Act::Delete, end) => deletes.push((lop.invoke_ns, end.unwrap_or(u64::MAX))),
                _ => {}
            }
        }
        present.sort_unstable();
        deletes.sort_unstable();
        let mut present_latest: Vec<(u64, usize)> = Vec::with_capacity(present.len());
        for &(_, invoke_ns, n) in &present {
            let next = match present_latest.last() {
                Some(&top) if top.0 >= invoke_ns => top,
                _ => (invoke_ns, n),
            };
            present_latest.push(next);
        }
        let delete_latest_end_ns = deletes
            .iter()
            .scan(0u64, |latest, &(_, end)| {
                *latest = (*latest).max(end);
                Some(*latest)
            })
            .collect();
        NotDeleted {
            present_complete_ns: present.iter().map(|p| p.0).collect(),
            present_latest,
            delete_invoke_ns: deletes.iter().map(|d| d.0).collect(),
            delete_latest_end_ns,
        }
    }

    /// The latest-starting operation that ended before `read` began with the key present, if
    /// no delete could take effect between it and the read.
    fn witness(&self, problem: &Problem, read: usize) -> Option<usize> {
        let r = &problem.ops[read];
        let before = self
            .present_complete_ns
            .partition_point(|&t| t < r.invoke_ns);
        let (present_ns, witness) = *self.present_latest.get(before.checked_sub(1)?)?;
        let read_end_ns = r.complete_ns.unwrap_or(u64::MAX);
        let started = self.delete_invoke_ns.partition_point(|&t| t <= read_end_ns);
        let latest_end_ns = started
            .checked_sub(1)
            .and_then(|last| self.delete_latest_end_ns.get(last).copied());
        match latest_end_ns {
            Some(end_ns) if end_ns >= present_ns => None,
            _ => Some(witness),
        }
    }
}
