//! What the checkers found: one row per (level, property), the violations with the operations
//! that show them, and a fixed-width table for people.

use crate::history::{to_line, Operation};
use crate::Limits;
use serde::{Deserialize, Serialize};
use std::fmt;

/// How many violations the table prints after the counts; the JSON form holds every kept one.
pub const VIOLATIONS_SHOWN_MAX: usize = 10;

/// One property found broken, with the operations that show it (at most
/// [`Limits::violation_ops_max`], in invoke order).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Violation {
    pub level: String,
    pub property: String,
    pub message: String,
    pub ops: Vec<Operation>,
}

/// One cell of the level × property matrix.
///
/// `checked` counts what was judged (operations, or keys for per-key properties: each checker's
/// doc says which); `unknown` counts what could not be judged either way, in the same unit. A
/// violation is also counted in `checked`. `violations` keeps at most
/// [`Limits::violations_kept_max`] of them so a badly broken run cannot exhaust memory;
/// `violations_total` counts all of them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Row {
    pub level: String,
    pub property: String,
    pub checked: u64,
    pub violations: Vec<Violation>,
    pub violations_total: u64,
    pub unknown: u64,
}

/// A checker's judgement of one operation or key. Operations are named by their index in the
/// history so that judging stays cheap; they are copied only into kept violations.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Verdict {
    Pass,
    Unknown,
    Violation { message: String, ops: Vec<usize> },
}

impl Row {
    pub fn new(level: &str, property: &str) -> Row {
        Row {
            level: level.to_owned(),
            property: property.to_owned(),
            checked: 0,
            violations: Vec::new(),
            violations_total: 0,
            unknown: 0,
        }
    }

    /// Counts one judged operation (or key).
    pub(crate) fn record(&mut self, verdict: Verdict, history: &[Operation], limits: &Limits) {
        match verdict {
            Verdict::Pass => self.checked += 1,
            Verdict::Unknown => self.unknown += 1,
            Verdict::Violation { message, ops } => {
                self.checked += 1;
                self.add_violation(message, &ops, history, limits);
            }
        }
    }

    /// Adds a violation without touching `checked`, for checkers whose unit of `checked` is not
    /// the unit of a violation (linearizability counts reads, but finds keys).
    pub(crate) fn add_violation(
        &mut self,
        message: String,
        op_ids: &[usize],
        history: &[Operation],
        limits: &Limits,
    ) {
        self.violations_total += 1;
        if self.violations.len() >= limits.violations_kept_max {
            return;
        }
        // First come, first kept: callers list the most telling operations first.
        let mut ids: Vec<usize> = Vec::new();
        for &id in op_ids {
            if ids.len() >= limits.violation_ops_max {
                break;
            }
            if !ids.contains(&id) {
                ids.push(id);
            }
        }
        let mut ops: Vec<Operation> = ids
            .iter()
            .filter_map(|&id| history.get(id).cloned())
            .collect();
        ops.sort_by_key(|op| (op.invoke_ns, op.complete_ns));
        self.violations.push(Violation {
            level: self.level.clone(),
            property: self.property.clone(),
            message,
            ops,
        });
    }
}

/// Every row the checkers produce, in a fixed order, including rows that judged nothing: a
/// reader must see what a run did not exercise.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Report {
    pub rows: Vec<Row>,
}

impl Report {
    pub fn has_violations(&self) -> bool {
        self.rows.iter().any(|row| row.violations_total > 0)
    }

    /// The row for one (level, property); see [`crate::levels`] and [`crate::properties`].
    pub fn row(&self, level: &str, property: &str) -> Option<&Row> {
        self.rows
            .iter()
            .find(|row| row.level == level && row.property == property)
    }

    /// Every kept violation, row by row.
    pub fn violations(&self) -> impl Iterator<Item = &Violation> {
        self.rows.iter().flat_map(|row| row.violations.iter())
    }

    /// The table `verify` prints: counts for every row, then the first few violations with
    /// their operations as history lines (so they can be pasted into a test).
    pub fn table(&self) -> String {
        self.to_string()
    }

    pub fn to_json(&self) -> serde_json::Result<String> {
        serde_json::to_string_pretty(self)
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let headers = ["level", "property", "checked", "violations", "unknown"];
        let cells: Vec<[String; 5]> = self
            .rows
            .iter()
            .map(|row| {
                [
                    row.level.clone(),
                    row.property.clone(),
                    row.checked.to_string(),
                    row.violations_total.to_string(),
                    row.unknown.to_string(),
                ]
            })
            .collect();
        let mut widths = headers.map(str::len);
        for line in &cells {
            for (width, cell) in widths.iter_mut().zip(line) {
                *width = (*width).max(cell.chars().count());
            }
        }
        let [lw, pw, cw, vw, uw] = widths;
        let [h0, h1, h2, h3, h4] = headers;
        writeln!(
            f,
            "{h0:<lw$} | {h1:<pw$} | {h2:>cw$} | {h3:>vw$} | {h4:>uw$}"
        )?;
        let dashes: Vec<String> = widths.iter().map(|w| "-".repeat(*w)).collect();
        writeln!(f, "{}", dashes.join("-+-"))?;
        for [level, property, checked, violations, unknown] in &cells {
            writeln!(
                f,
                "{level:<lw$} | {property:<pw$} | {checked:>cw$} | {violations:>vw$} | {unknown:>uw$}"
            )?;
        }
        let total: u64 = self.rows.iter().map(|row| row.violations_total).sum();
        if total == 0 {
            return Ok(());
        }
        let shown: Vec<&Violation> = self.violations().take(VIOLATIONS_SHOWN_MAX).collect();
        writeln!(f)?;
        writeln!(f, "violations (showing {} of {total}):", shown.len())?;
        for (n, violation) in shown.iter().enumerate() {
            writeln!(
                f,
                "{}. [{} / {}] {}",
                n + 1,
                violation.level,
                violation.property,
                violation.message
            )?;
            for op in &violation.ops {
                writeln!(f, "    {}", to_line(op))?;
            }
        }
        Ok(())
    }
}
