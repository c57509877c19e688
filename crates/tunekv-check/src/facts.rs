//! What every checker needs to know about a history, worked out once: the history validated,
//! positions parsed, and indexes by key, shard and session.
//!
//! Operations are named by their index in the history (`usize`). Those indexes are made here
//! from the history's own length, so indexing with them cannot go out of bounds.

use crate::history::{validate_op, LevelKind, OpKind, Operation, Position};
use crate::CheckError;
use std::collections::{BTreeMap, HashMap};

/// An acknowledged operation with a position: (complete_ns, index, operation).
pub(crate) type Completed = (u64, u64, usize);

/// The largest index among events that completed strictly before a given time.
///
/// "Completed before the read began" is the checkers' notion of "happened before"; equal times
/// count as concurrent, which can only hide a violation, never invent one.
#[derive(Debug, Default)]
pub(crate) struct CompletedMax {
    /// Completion times, ascending.
    complete_ns: Vec<u64>,
    /// `best[n]`: the (index, operation) with the largest index among the first `n + 1` events.
    best: Vec<(u64, usize)>,
}

impl CompletedMax {
    pub(crate) fn new(mut events: Vec<Completed>) -> CompletedMax {
        events.sort_unstable();
        let mut best: Vec<(u64, usize)> = Vec::with_capacity(events.len());
        for &(_, index, op) in &events {
            let next = match best.last() {
                Some(&(top, top_op)) if top >= index => (top, top_op),
                _ => (index, op),
            };
            best.push(next);
        }
        CompletedMax {
            complete_ns: events.iter().map(|e| e.0).collect(),
            best,
        }
    }

    /// The (index, operation) with the largest index among events with `complete_ns < t`.
    pub(crate) fn before(&self, t: u64) -> Option<(u64, usize)> {
        let count = self.complete_ns.partition_point(|&c| c < t);
        count
            .checked_sub(1)
            .and_then(|last| self.best.get(last).copied())
    }
}

/// Everything known about one key.
#[derive(Debug, Default)]
pub(crate) struct KeyFacts<'a> {
    /// The shard every position on this key names (validated to be one).
    pub(crate) shard: Option<u32>,
    /// Every operation on the key, in history order.
    pub(crate) ops: Vec<usize>,
    /// Written value → the write that wrote it, whatever its outcome. Unique by validation.
    pub(crate) writers: HashMap<&'a str, usize>,
    /// Acknowledged writes and deletes as (committed index, operation), by index.
    pub(crate) acked: Vec<(u64, usize)>,
    /// Writes and deletes of unknown outcome: they may sit at any index after their start.
    pub(crate) unknown: Vec<usize>,
}

impl KeyFacts<'_> {
    /// The acknowledged update that set the key's state at `index`: the one with the largest
    /// committed index ≤ `index`.
    pub(crate) fn acked_at(&self, index: u64) -> Option<(u64, usize)> {
        let count = self.acked.partition_point(|&(i, _)| i <= index);
        count
            .checked_sub(1)
            .and_then(|last| self.acked.get(last).copied())
    }
}

pub(crate) struct Facts<'a> {
    pub(crate) ops: &'a [Operation],
    pub(crate) positions: Vec<Option<Position>>,
    pub(crate) levels: Vec<LevelKind>,
    pub(crate) keys: BTreeMap<&'a str, KeyFacts<'a>>,
    /// Per shard: acknowledged updates of every key on it, by completion time.
    pub(crate) shard_acked: BTreeMap<u32, CompletedMax>,
}

impl<'a> Facts<'a> {
    /// Validates the history (each operation alone, then what the checkers assume of the whole)
    /// and builds the indexes.
    pub(crate) fn build(ops: &'a [Operation]) -> Result<Facts<'a>, CheckError> {
        let mut positions = Vec::with_capacity(ops.len());
        let mut levels = Vec::with_capacity(ops.len());
        let mut keys: BTreeMap<&'a str, KeyFacts<'a>> = BTreeMap::new();
        let mut shard_events: BTreeMap<u32, Vec<Completed>> = BTreeMap::new();
        for (id, op) in ops.iter().enumerate() {
            validate_op(op).map_err(|source| CheckError::InvalidOperation { index: id, source })?;
            let position = op.parsed_position();
            positions.push(position);
            levels.push(op.level_kind());
            let key = keys.entry(op.key.as_str()).or_default();
            key.ops.push(id);
            if let Some(p) = position {
                match key.shard {
                    None => key.shard = Some(p.shard),
                    Some(shard) if shard != p.shard => {
                        return Err(CheckError::KeyOnTwoShards {
                            key: op.key.clone(),
                            shards: (shard, p.shard),
                            index: id,
                        });
                    }
                    Some(_) => {}
                }
            }
            if let (OpKind::Write, Some(value)) = (op.op, &op.value) {
                if let Some(first) = key.writers.insert(value.as_str(), id) {
                    return Err(CheckError::DuplicateValue {
                        key: op.key.clone(),
                        value: value.clone(),
                        first,
                        second: id,
                    });
                }
            }
            if !op.is_update() {
                continue;
            }
            match op.ok {
                Some(true) => {
                    let Some(p) = position else {
                        return Err(CheckError::MissingPosition { index: id });
                    };
                    key.acked.push((p.index, id));
                    shard_events
                        .entry(p.shard)
                        .or_default()
                        .push((op.complete_ns, p.index, id));
                }
                None => key.unknown.push(id),
                Some(false) => {}
            }
        }
        for (name, key) in &mut keys {
            key.acked.sort_unstable();
            if let Some(pair) = key.acked.windows(2).find(|w| w[0].0 == w[1].0) {
                return Err(CheckError::SameIndex {
                    key: (*name).to_owned(),
                    index: pair[0].0,
                    first: pair[0].1,
                    second: pair[1].1,
                });
            }
        }
        let shard_acked = shard_events
            .into_iter()
            .map(|(shard, events)| (shard, CompletedMax::new(events)))
            .collect();
        Ok(Facts {
            ops,
            positions,
            levels,
            keys,
            shard_acked,
        })
    }

    pub(crate) fn op(&self, id: usize) -> &'a Operation {
        &self.ops[id]
    }

    pub(crate) fn position(&self, id: usize) -> Option<Position> {
        self.positions[id]
    }

    pub(crate) fn level(&self, id: usize) -> &LevelKind {
        &self.levels[id]
    }

    pub(crate) fn key(&self, name: &str) -> Option<&KeyFacts<'a>> {
        self.keys.get(name)
    }

    /// The (index, operation) with the largest index among acknowledged updates on `shard`
    /// that completed before `t` (strictly).
    pub(crate) fn newest_acked_before(&self, shard: u32, t: u64) -> Option<(u64, usize)> {
        self.shard_acked
            .get(&shard)
            .and_then(|completed| completed.before(t))
    }

    /// Acknowledged reads, the only reads that say anything about the store.
    pub(crate) fn acked_reads(&self) -> impl Iterator<Item = usize> + '_ {
        (0..self.ops.len()).filter(|&id| {
            let op = self.op(id);
            op.is_read() && op.is_acked()
        })
    }

    /// The largest index an update of unknown outcome cannot have: it was proposed after every
    /// update on its shard that had completed before it began, so its index, if it committed,
    /// is above theirs.
    pub(crate) fn unknown_index_floor(&self, id: usize) -> u64 {
        let op = self.op(id);
        self.key(&op.key)
            .and_then(|key| key.shard)
            .and_then(|shard| self.newest_acked_before(shard, op.invoke_ns))
            .map_or(0, |(index, _)| index)
    }

    /// Whether update `id` of unknown outcome could be part of the state at `index` that
    /// `read` was served from: its index could be ≤ `index`, and it began before the read ended
    /// (the state the read saw existed by then).
    pub(crate) fn unknown_could_precede(&self, id: usize, index: u64, read: usize) -> bool {
        self.unknown_index_floor(id) < index && self.op(id).invoke_ns <= self.op(read).complete_ns
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn completed_max_is_strictly_before() {
        let c = CompletedMax::new(vec![(10, 5, 0), (20, 3, 1), (30, 9, 2)]);
        assert_eq!(c.before(10), None);
        assert_eq!(c.before(11), Some((5, 0)));
        assert_eq!(c.before(21), Some((5, 0)));
        assert_eq!(c.before(31), Some((9, 2)));
        assert_eq!(CompletedMax::default().before(u64::MAX), None);
    }
}
