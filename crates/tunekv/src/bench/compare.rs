//! `tunekv bench --compare etcd,redis`: the rows measured beside tunekv's, and the ratios
//! (tunekv ÷ peer, throughput at the same client concurrency) read off one run.

use super::peers::Peers;
use super::{Driver, LevelResult, PhaseSpec};
use std::collections::BTreeMap;

const WRITE: &str = "tunekv write (strong)";
const READ_STRONG: &str = "tunekv read strong";
const READ_BOUNDED: &str = "tunekv read bounded(k=10)";
const READ_SESSION: &str = "tunekv read session";
const READ_EVENTUAL: &str = "tunekv read eventual";
const ETCD_PUT: &str = "etcd put";
const ETCD_LINEARIZABLE: &str = "etcd linearizable read";
const ETCD_SERIALIZABLE: &str = "etcd serializable read";
const RESP_GET: &str = "tunekv RESP GET eventual";
const RESP_SET: &str = "tunekv RESP SET";
const REDIS_GET: &str = "redis GET";
const REDIS_SET: &str = "redis SET";
const REDIS_DURABLE_SET: &str = "redis SET durable";

/// Each ratio's name in summary.json, and the two rows it divides.
const RATIOS: [(&str, &str, &str); 6] = [
    ("strong_write_vs_etcd_put", WRITE, ETCD_PUT),
    (
        "strong_read_vs_etcd_linearizable_read",
        READ_STRONG,
        ETCD_LINEARIZABLE,
    ),
    (
        "eventual_read_vs_etcd_serializable_read",
        READ_EVENTUAL,
        ETCD_SERIALIZABLE,
    ),
    ("resp_get_vs_redis_get", RESP_GET, REDIS_GET),
    ("resp_set_vs_redis_set", RESP_SET, REDIS_SET),
    ("resp_set_vs_redis_durable_set", RESP_SET, REDIS_DURABLE_SET),
];

fn row(label: &str, level: &str, read_ratio: f64, driver: Driver) -> PhaseSpec {
    PhaseSpec {
        label: label.to_string(),
        level: level.to_string(),
        read_ratio,
        driver,
        keyspace: super::KEYSPACE.to_string(),
        r: None,
        w: None,
        kind: super::RowKind::Plain,
    }
}

/// The rows of a comparison, writes-only then reads-only, each tunekv row next to its peer's.
pub(super) fn specs(p: &Peers) -> Vec<PhaseSpec> {
    let (write, read) = (0.0, 1.0);
    let mut v = vec![row(WRITE, "strong", write, Driver::TunekvHttp)];
    let etcd = |serializable| Driver::Etcd {
        endpoints: p.etcd.clone(),
        serializable,
    };
    if !p.etcd.is_empty() {
        v.push(row(ETCD_PUT, "", write, etcd(false)));
    }
    for (label, level) in [
        (READ_STRONG, "strong"),
        (READ_BOUNDED, "bounded(k=10)"),
        (READ_SESSION, "session"),
        (READ_EVENTUAL, "eventual"),
    ] {
        v.push(row(label, level, read, Driver::TunekvHttp));
    }
    if !p.etcd.is_empty() {
        v.push(row(ETCD_LINEARIZABLE, "", read, etcd(false)));
        v.push(row(ETCD_SERIALIZABLE, "", read, etcd(true)));
    }
    if let Some(addr) = &p.redis {
        let redis = || Driver::Redis { addr: addr.clone() };
        v.push(row(RESP_GET, "eventual", read, Driver::TunekvResp));
        v.push(row(REDIS_GET, "", read, redis()));
        v.push(row(RESP_SET, "eventual", write, Driver::TunekvResp));
        v.push(row(REDIS_SET, "", write, redis()));
        if let Some(addr) = &p.redis_durable {
            let durable = Driver::RedisDurable { addr: addr.clone() };
            v.push(row(REDIS_DURABLE_SET, "", write, durable));
        }
    }
    v
}

/// The order the rows run in, each with whether it is one of two halves: every row once, in
/// order, except tunekv's HTTP read rows, measured forward then backward, half the time each.
pub(super) fn interleaved(specs: &[PhaseSpec]) -> Vec<(usize, bool)> {
    let reads = [READ_STRONG, READ_BOUNDED, READ_SESSION, READ_EVENTUAL];
    let halves: Vec<usize> = (0..specs.len())
        .filter(|&i| reads.contains(&specs[i].label.as_str()))
        .collect();
    let mut order = Vec::with_capacity(specs.len() + halves.len());
    for i in 0..specs.len() {
        if halves.first() == Some(&i) {
            order.extend(halves.iter().map(|&h| (h, true)));
            order.extend(halves.iter().rev().map(|&h| (h, true)));
        } else if !halves.contains(&i) {
            order.push((i, false));
        }
    }
    order
}

/// Throughput ratios by name; `None` where a side was not measured or did nothing.
pub(super) fn ratios(results: &[LevelResult]) -> BTreeMap<String, Option<f64>> {
    let throughput = |label: &str| {
        results
            .iter()
            .find(|r| r.label == label)
            .map(LevelResult::throughput)
    };
    RATIOS
        .iter()
        .map(|(name, ours, theirs)| {
            let ratio = throughput(ours)
                .zip(throughput(theirs))
                .filter(|(_, t)| *t > 0.0)
                .map(|(o, t)| o / t);
            (name.to_string(), ratio)
        })
        .collect()
}

pub(super) fn ratios_text(ratios: &BTreeMap<String, Option<f64>>) -> String {
    let mut out =
        String::from("throughput ratios (tunekv ÷ peer, same workload and concurrency):\n");
    for (name, ours, theirs) in RATIOS {
        let value = ratios
            .get(name)
            .copied()
            .flatten()
            .map_or_else(|| "not measured".to_string(), |r| format!("{r:.2}×"));
        out += &format!("  {ours:<26} ÷ {theirs:<24} {value:>12}   ({name})\n");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use hdrhistogram::Histogram;

    fn result(label: &str, ops: u64) -> LevelResult {
        LevelResult {
            label: label.to_string(),
            ops,
            seconds: 2.0,
            latency_us: Histogram::new(3).expect("histogram"),
            stale_entries: Histogram::new(3).expect("histogram"),
            stale_ms: Histogram::new(3).expect("histogram"),
            refused: BTreeMap::new(),
        }
    }

    #[test]
    fn http_read_rows_run_forward_then_backward_in_halves() {
        let specs: Vec<PhaseSpec> = [
            WRITE,
            READ_STRONG,
            READ_BOUNDED,
            READ_SESSION,
            READ_EVENTUAL,
            RESP_GET,
        ]
        .iter()
        .map(|l| row(l, "strong", 1.0, Driver::TunekvHttp))
        .collect();
        let order: Vec<(&str, bool)> = interleaved(&specs)
            .into_iter()
            .map(|(i, half)| (specs[i].label.as_str(), half))
            .collect();
        assert_eq!(
            order,
            [
                (WRITE, false),
                (READ_STRONG, true),
                (READ_BOUNDED, true),
                (READ_SESSION, true),
                (READ_EVENTUAL, true),
                (READ_EVENTUAL, true),
                (READ_SESSION, true),
                (READ_BOUNDED, true),
                (READ_STRONG, true),
                (RESP_GET, false),
            ]
        );
    }

    #[test]
    fn ratios_divide_tunekv_by_the_peer_and_leave_gaps_empty() {
        let r = ratios(&[
            result(WRITE, 100),
            result(ETCD_PUT, 400),
            result(READ_EVENTUAL, 900),
            result(ETCD_SERIALIZABLE, 300),
            result(RESP_GET, 50),
            result(REDIS_GET, 0),
        ]);
        assert_eq!(r["strong_write_vs_etcd_put"], Some(0.25));
        assert_eq!(r["eventual_read_vs_etcd_serializable_read"], Some(3.0));
        // Not measured, or the peer did nothing: no ratio rather than infinity.
        assert_eq!(r["strong_read_vs_etcd_linearizable_read"], None);
        assert_eq!(r["resp_get_vs_redis_get"], None);
        assert_eq!(r.len(), RATIOS.len());
        assert!(ratios_text(&r).contains("0.25×"));
    }
}
