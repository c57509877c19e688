//! every level / metrics never understate staleness (issue 20): what a node's `/metrics` says
//! about the staleness of the reads it served must not be fresher than the receipts its
//! clients got. An SLO, an alert or a dashboard built on those histograms would otherwise
//! report a healthier system than the clients saw.
//!
//! For each node and level kind, from the node's `tunekv_read_staleness_seconds` histogram of
//! the keyspace (cumulative buckets `le`) and the history's acknowledged reads it served at
//! that level (since the node's process started: a restarted node's counters start over):
//!
//! - for every bucket, the reads the receipts say were more than `le` stale are at most the
//!   reads the histogram puts above `le` (`count − bucket(le)`); the histogram may hold more
//!   (reads the history did not record, such as those whose answer the client never got);
//! - every such read was counted at all: the histogram's count plus its unknown-staleness
//!   counter is at least the reads served.
//!
//! Reads whose receipt has no staleness are left out of the first rule; reads served by a node
//! whose metrics could not be read make the pair unknown.

use crate::history::{OpKind, Operation};
use crate::levels::EVERY_LEVEL;
use crate::report::{Row, Verdict};
use crate::Limits;
use std::collections::BTreeMap;

/// A receipt's staleness this large says "unbounded" (the node's `u64::MAX`, written to the
/// history as JSON's largest integer): such reads are in the metrics' unknown counter.
const UNBOUNDED_MS: u64 = i64::MAX as u64;

/// The row's property.
pub const METRICS_HONEST: &str = "metrics never understate staleness";

/// One node's served-staleness histogram of one keyspace at one level kind, as `/metrics`
/// stated it.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ServedHistogram {
    /// `(le in seconds, reads at most that stale)`, cumulative, `+Inf` last.
    pub buckets: Vec<(f64, u64)>,
    pub count: u64,
    /// Reads served whose receipt could not bound their staleness.
    pub unknown: u64,
}

/// What one node's metrics said, and since when its history reads count.
#[derive(Clone, Debug, Default)]
pub struct NodeMetrics {
    /// The history's node name (`n1`, …, or `cache`).
    pub node: String,
    /// Reads invoked at or after this time (the history's clock, ns) were served by the process
    /// whose metrics these are; earlier ones are not judged. `None`: the metrics could not be
    /// read, so the node's reads are unknown.
    pub since_ns: Option<u64>,
    /// By level kind (`eventual`, `bounded`, …).
    pub levels: BTreeMap<String, ServedHistogram>,
}

/// A level's kind as metrics label it: the level without its parameters.
pub fn level_kind(level: &str) -> &str {
    level.split('(').next().unwrap_or(level).trim()
}

/// Parses the served-staleness families of `keyspace` out of a node's `/metrics` text.
pub fn parse_served(text: &str, keyspace: &str) -> BTreeMap<String, ServedHistogram> {
    let mut out: BTreeMap<String, ServedHistogram> = BTreeMap::new();
    for line in text.lines() {
        let Some((name, labels, value)) = split_sample(line) else {
            continue;
        };
        if labels.get("keyspace").map(String::as_str) != Some(keyspace) {
            continue;
        }
        let Some(level) = labels.get("level") else {
            continue;
        };
        let h = out.entry(level.clone()).or_default();
        let v = value as u64;
        match name {
            "tunekv_read_staleness_seconds_bucket" => {
                let le = match labels.get("le").map(String::as_str) {
                    Some("+Inf") => f64::INFINITY,
                    Some(x) => x.parse().unwrap_or(f64::NAN),
                    None => continue,
                };
                h.buckets.push((le, v));
            }
            "tunekv_read_staleness_seconds_count" => h.count = v,
            "tunekv_read_staleness_unknown_total" => h.unknown = v,
            _ => {}
        }
    }
    for h in out.values_mut() {
        h.buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
    }
    out
}

/// `name{k="v",…} value` → its parts (label values without escapes, which these never have).
fn split_sample(line: &str) -> Option<(&str, BTreeMap<String, String>, f64)> {
    if line.starts_with('#') {
        return None;
    }
    let open = line.find('{')?;
    let close = line.rfind('}')?;
    let name = &line[..open];
    let value: f64 = line[close + 1..].split_whitespace().next()?.parse().ok()?;
    let mut labels = BTreeMap::new();
    for pair in line[open + 1..close].split("\",") {
        let (k, v) = pair.split_once("=\"")?;
        labels.insert(k.trim().to_string(), v.trim_end_matches('"').to_string());
    }
    Some((name, labels, value))
}

/// Judges every (node, level kind) the history served reads at.
pub fn check(ops: &[Operation], nodes: &[NodeMetrics], limits: &Limits) -> Row {
    let mut row = Row::new(EVERY_LEVEL, METRICS_HONEST);
    // (node, level kind) → the reads it served, by id.
    let mut served: BTreeMap<(&str, &str), Vec<usize>> = BTreeMap::new();
    for (id, op) in ops.iter().enumerate() {
        if op.op == OpKind::Read && op.ok == Some(true) {
            served
                .entry((op.node.as_str(), level_kind(&op.level)))
                .or_default()
                .push(id);
        }
    }
    for ((node, level), ids) in served {
        let Some(m) = nodes.iter().find(|m| m.node == node) else {
            continue;
        };
        let Some(since) = m.since_ns else {
            row.record(Verdict::Unknown, ops, limits);
            continue;
        };
        let ids: Vec<usize> = ids
            .into_iter()
            .filter(|id| ops[*id].invoke_ns >= since)
            .collect();
        if ids.is_empty() {
            continue;
        }
        let empty = ServedHistogram::default();
        let h = m.levels.get(level).unwrap_or(&empty);
        row.record(judge(ops, node, level, &ids, h), ops, limits);
    }
    row
}

fn judge(
    ops: &[Operation],
    node: &str,
    level: &str,
    ids: &[usize],
    h: &ServedHistogram,
) -> Verdict {
    if h.count + h.unknown < ids.len() as u64 {
        return Verdict::Violation {
            message: format!(
                "node {node} served {} reads at {level} since it started, but its metrics count \
                 {} ({} with a bounded staleness, {} without)",
                ids.len(),
                h.count + h.unknown,
                h.count,
                h.unknown
            ),
            ops: ids.to_vec(),
        };
    }
    for &(le, cumulative) in &h.buckets {
        if le.is_infinite() {
            continue;
        }
        let above: Vec<usize> = ids
            .iter()
            .copied()
            .filter(|id| {
                ops[*id]
                    .staleness_ms
                    .is_some_and(|ms| ms < UNBOUNDED_MS && ms as f64 / 1000.0 > le)
            })
            .collect();
        let metric_above = h.count.saturating_sub(cumulative);
        if above.len() as u64 > metric_above {
            return Verdict::Violation {
                message: format!(
                    "node {node}'s metrics put {metric_above} reads at {level} more than {le} s \
                     stale, but {} of its receipts said so",
                    above.len()
                ),
                ops: above,
            };
        }
    }
    Verdict::Pass
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testkit::*;

    const TEXT: &str = "\
# TYPE tunekv_read_staleness_seconds histogram
tunekv_read_staleness_seconds_bucket{le=\"0.0\",keyspace=\"v\",level=\"eventual\"} 1
tunekv_read_staleness_seconds_bucket{le=\"0.1\",keyspace=\"v\",level=\"eventual\"} 2
tunekv_read_staleness_seconds_bucket{le=\"+Inf\",keyspace=\"v\",level=\"eventual\"} 3
tunekv_read_staleness_seconds_count{keyspace=\"v\",level=\"eventual\"} 3
tunekv_read_staleness_seconds_bucket{le=\"+Inf\",keyspace=\"other\",level=\"eventual\"} 9
tunekv_read_staleness_unknown_total{keyspace=\"v\",level=\"eventual\"} 1
# EOF
";

    fn served_read(ms: u64, invoke: u64) -> Operation {
        let mut op = read("a", Some("v1"), invoke, invoke + 1).at(1).op();
        op.level = "eventual".into();
        op.node = "n1".into();
        op.staleness_ms = Some(ms);
        op
    }

    fn node(levels: BTreeMap<String, ServedHistogram>) -> NodeMetrics {
        NodeMetrics {
            node: "n1".into(),
            since_ns: Some(0),
            levels,
        }
    }

    #[test]
    fn the_text_parses() {
        let h = parse_served(TEXT, "v");
        let e = &h["eventual"];
        assert_eq!(e.count, 3);
        assert_eq!(e.buckets, vec![(0.0, 1), (0.1, 2), (f64::INFINITY, 3)]);
        assert_eq!(level_kind("bounded(t=3s)"), "bounded");
    }

    #[test]
    fn honest_metrics_pass_and_fresher_ones_are_caught() {
        let mut ops = vec![
            served_read(0, 10),
            served_read(50, 20),
            served_read(900, 30),
        ];
        // An unbounded receipt is the metrics' unknown: never "more than le stale".
        let mut unbounded = served_read(0, 40);
        unbounded.staleness_ms = Some(i64::MAX as u64);
        ops.push(unbounded);
        let row = check(&ops, &[node(parse_served(TEXT, "v"))], &Limits::default());
        assert_eq!((row.checked, row.violations_total), (1, 0), "{row:?}");

        // The injected bug's effect: every read counted at 0 s.
        let fresh = TEXT
            .replace(
                "le=\"0.1\",keyspace=\"v\",level=\"eventual\"} 2",
                "le=\"0.1\",keyspace=\"v\",level=\"eventual\"} 3",
            )
            .replace(
                "le=\"0.0\",keyspace=\"v\",level=\"eventual\"} 1",
                "le=\"0.0\",keyspace=\"v\",level=\"eventual\"} 3",
            );
        let row = check(&ops, &[node(parse_served(&fresh, "v"))], &Limits::default());
        assert_eq!(row.violations_total, 1, "{row:?}");
        assert!(
            row.violations[0].message.contains("more than 0 s stale"),
            "{row:?}"
        );

        // Reads the metrics never counted (five served; three plus one unknown counted).
        let more = vec![
            served_read(0, 10),
            served_read(0, 11),
            served_read(0, 12),
            served_read(0, 13),
            served_read(0, 14),
        ];
        let row = check(&more, &[node(parse_served(TEXT, "v"))], &Limits::default());
        assert_eq!(row.violations_total, 1, "{row:?}");

        // Reads from before the node's process started are not judged; unreadable metrics
        // make the node's reads unknown.
        let mut restarted = node(BTreeMap::new());
        restarted.since_ns = Some(1_000);
        let row = check(&ops, &[restarted], &Limits::default());
        assert_eq!((row.checked, row.violations_total), (0, 0));
        let mut unread = node(BTreeMap::new());
        unread.since_ns = None;
        let row = check(&ops, &[unread], &Limits::default());
        assert_eq!(row.unknown, 1);
    }
}
