//! Probabilistically bounded staleness (Bailis et al., "PBS", VLDB 2012) for ordered keyspaces:
//! the probability that a read `t` ms after a write was acknowledged returns it, estimated from
//! measured delays rather than a model's assumed ones.
//!
//! An ordered keyspace's write is acknowledged once its leader applied it; an `eventual` (or
//! `consistent_prefix`, or another client's session) read is served by whichever replica of
//! the key's shard it reaches. The leader holds the write at once; a follower holds it once it
//! applied it, a *visibility delay* after the leader did. With `R` replicas and reads spread
//! evenly over them:
//!
//! `P(t) = 1/R + (R-1)/R · F(t)`, `F` the measured distribution of follower visibility delays.
//!
//! Delays are measured by pairing apply records: each replica notes, for each batch it applies,
//! the last index and its wall clock (ms); an entry the leader applied at `tL` became visible on
//! a follower at the first follower batch reaching its index, `tF`; the delay is `tF - tL`.
//! Assumptions (docs/observability.md): reads are spread evenly over replicas; the nodes' wall
//! clocks agree (on one machine they are one clock; across machines their offset, bounded by
//! `max_clock_offset_ms`, shifts the estimate); the past minutes predict the next ones. Levels
//! with a freshness guarantee (strong, bounded(k)) return every acknowledged write: P = 1.

use serde::{Deserialize, Serialize};

/// One replica's apply record: the last index of a batch it applied, and when (Unix ms).
pub type Apply = (u64, u64);

/// Visibility delays of the entries `leader` applied, on one follower (`follower`'s records).
/// Both are in apply order. Entries the follower's records do not cover yet (applied before its
/// first record, or not yet applied there) give no sample.
pub fn visibility_delays(leader: &[Apply], follower: &[Apply]) -> Vec<u64> {
    let Some(first) = follower.first() else {
        return Vec::new();
    };
    let mut out = Vec::new();
    let mut j = 0;
    for &(index, t_leader) in leader {
        // Only entries the follower had not applied when its records began.
        if index <= first.0 {
            continue;
        }
        while j < follower.len() && follower[j].0 < index {
            j += 1;
        }
        match follower.get(j) {
            Some(&(_, t_follower)) => out.push(t_follower.saturating_sub(t_leader)),
            None => break,
        }
    }
    out
}

/// The estimate for one keyspace and level.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PbsCurve {
    pub keyspace: String,
    pub level: String,
    pub replicas: u32,
    /// Follower visibility delays measured.
    pub samples: u64,
    /// (t ms after the write's acknowledgement, probability a read then returns it).
    pub points: Vec<(u64, f64)>,
    /// The smallest t (ms) at which the probability reaches 99 % and 99.9 %.
    pub t99_ms: u64,
    pub t999_ms: u64,
    /// The follower visibility delay's percentiles 0 to 100 (ms), so P can be evaluated at
    /// any t ([`probability_at`]); empty without samples.
    pub delay_percentiles_ms: Vec<u64>,
}

/// P(t) at any `t_ms` from a curve: from its delay percentiles when it has them (ordered
/// keyspaces), else interpolated between its points (leaderless keyspaces).
pub fn probability_at(c: &PbsCurve, t_ms: f64) -> f64 {
    if c.delay_percentiles_ms.is_empty() && c.samples > 0 {
        return interpolate(&c.points, t_ms);
    }
    probability_from_percentiles(c, t_ms)
}

/// Linear interpolation between `(t, p)` points (flat beyond the ends).
fn interpolate(points: &[(u64, f64)], t_ms: f64) -> f64 {
    let Some(first) = points.first() else {
        return 0.0;
    };
    if t_ms <= first.0 as f64 {
        return first.1;
    }
    for w in points.windows(2) {
        let ((t0, p0), (t1, p1)) = (w[0], w[1]);
        if t_ms <= t1 as f64 {
            let frac = (t_ms - t0 as f64) / (t1 - t0).max(1) as f64;
            return p0 + (p1 - p0) * frac;
        }
    }
    points.last().map_or(0.0, |p| p.1)
}

/// P(t) at any `t_ms` from a curve's delay percentiles (the fraction of delays at most `t_ms`,
/// interpolated between percentiles).
fn probability_from_percentiles(c: &PbsCurve, t_ms: f64) -> f64 {
    let r = f64::from(c.replicas.max(1));
    if c.replicas <= 1 {
        return 1.0;
    }
    let q = &c.delay_percentiles_ms;
    if q.is_empty() {
        return 1.0 / r;
    }
    // F(t): the largest percentile whose delay is at most t, interpolated to the next.
    let below = q.partition_point(|d| (*d as f64) <= t_ms);
    let f = if below == 0 {
        0.0
    } else if below >= q.len() {
        1.0
    } else {
        let (lo, hi) = (q[below - 1] as f64, q[below] as f64);
        let frac = if hi > lo {
            (t_ms - lo) / (hi - lo)
        } else {
            0.0
        };
        ((below - 1) as f64 + frac) / (q.len() - 1) as f64
    };
    1.0 / r + (r - 1.0) / r * f
}

/// The t values a curve is given at (ms).
pub const POINTS_MS: &[u64] = &[
    0, 1, 2, 3, 5, 7, 10, 15, 20, 30, 50, 75, 100, 150, 200, 300, 500, 750, 1000, 2000, 5000,
];

/// P(t) for `replicas` replicas, from sorted follower delays.
pub fn probability(sorted: &[u64], replicas: u32, t_ms: u64) -> f64 {
    let r = f64::from(replicas.max(1));
    if replicas <= 1 || sorted.is_empty() {
        // One replica: every read reaches the leader. No sample yet: only the leader is known.
        return if replicas <= 1 { 1.0 } else { 1.0 / r };
    }
    let within = sorted.partition_point(|d| *d <= t_ms) as f64 / sorted.len() as f64;
    1.0 / r + (r - 1.0) / r * within
}

/// The smallest t at which P reaches `p` (the delay quantile it needs).
fn t_for(sorted: &[u64], replicas: u32, p: f64) -> u64 {
    if replicas <= 1 || sorted.is_empty() {
        return 0;
    }
    let r = f64::from(replicas);
    let need = ((p * r - 1.0) / (r - 1.0)).clamp(0.0, 1.0);
    // The smallest delay d with F(d) >= need.
    let k = ((need * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[k - 1]
}

/// The eventual-read curve of `keyspace` from measured follower delays.
pub fn curve(keyspace: &str, level: &str, replicas: u32, mut delays: Vec<u64>) -> PbsCurve {
    delays.sort_unstable();
    PbsCurve {
        keyspace: keyspace.to_string(),
        level: level.to_string(),
        replicas,
        samples: delays.len() as u64,
        points: POINTS_MS
            .iter()
            .map(|t| (*t, probability(&delays, replicas, *t)))
            .collect(),
        t99_ms: t_for(&delays, replicas, 0.99),
        t999_ms: t_for(&delays, replicas, 0.999),
        delay_percentiles_ms: if delays.is_empty() {
            Vec::new()
        } else {
            (0..=100)
                .map(|p| delays[(p * (delays.len() - 1)) / 100])
                .collect()
        },
    }
}

/// The curve of a read at `level` (a level kind), from the keyspace's `eventual` curve:
/// `strong` returns every acknowledged write (P = 1 at every t); `consistent_prefix` and the
/// session levels return another client's write as `eventual` does (a session's own writes
/// always); `bounded` depends on its bound, which a kind does not carry, so it has no curve
/// (`None`), nor do levels this estimate does not cover.
pub fn for_level(eventual: &PbsCurve, level: &str) -> Option<PbsCurve> {
    let mut c = eventual.clone();
    c.level = level.to_string();
    match level {
        "eventual" => {}
        "strong" => {
            c.points = c.points.iter().map(|(t, _)| (*t, 1.0)).collect();
            c.t99_ms = 0;
            c.t999_ms = 0;
            c.delay_percentiles_ms = Vec::new();
            c.samples = 0;
        }
        "consistent_prefix" | "read_your_writes" | "monotonic_reads" | "session" => {}
        _ => return None,
    }
    Some(c)
}

/// Leaderless keyspaces: Bailis et al.'s WARS model, by Monte Carlo over measured delays.
///
/// A write's coordinator is one of the key's `replicas` (it stores its own copy first: W = A =
/// 0 there) and sends the write to the others, each taking W to arrive and A to acknowledge;
/// the client hears the write acknowledged once `w` copies are stored (the w-th smallest
/// W + A, the coordinator's own included). A read `t` ms later starts at a replica picked at
/// random (its own copy answers at once: R = S = 0), asks the others (R to arrive, S to
/// answer), and returns the newest of the first `r` answers: it returns the write if one of
/// those copies had stored it when the read arrived (W ≤ ack + t + R). One-way delays are half
/// of measured round trips (W = A = write RTT / 2, R = S = read RTT / 2, each drawn from the
/// coordinators' measured calls to other replicas).
pub fn wars_curve(
    keyspace: &str,
    level: &str,
    (replicas, w, r): (u32, u32, u32),
    write_rtt_us: &[u32],
    read_rtt_us: &[u32],
    seed: u64,
) -> PbsCurve {
    use rand::{Rng, SeedableRng};
    const TRIALS: usize = 2000;
    let n = replicas.max(1) as usize;
    let (w, r) = ((w as usize).clamp(1, n), (r as usize).clamp(1, n));
    let samples = write_rtt_us.len().min(read_rtt_us.len()) as u64;
    if n == 1 || samples == 0 {
        // One replica holds everything; without samples only the coordinator's own copy is
        // known to have the write.
        let p = if n == 1 { 1.0 } else { 1.0 / n as f64 };
        return PbsCurve {
            keyspace: keyspace.to_string(),
            level: level.to_string(),
            replicas,
            samples,
            points: POINTS_MS.iter().map(|t| (*t, p)).collect(),
            t99_ms: 0,
            t999_ms: 0,
            delay_percentiles_ms: Vec::new(),
        };
    }
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let half_ms = |us: u32| f64::from(us) / 2000.0;
    let mut seen = vec![0usize; POINTS_MS.len()];
    for _ in 0..TRIALS {
        // Replica 0 coordinates the write.
        let wa: Vec<(f64, f64)> = (0..n)
            .map(|i| {
                if i == 0 {
                    (0.0, 0.0)
                } else {
                    let d = half_ms(write_rtt_us[rng.gen_range(0..write_rtt_us.len())]);
                    (d, d)
                }
            })
            .collect();
        let mut acks: Vec<f64> = wa.iter().map(|(w, a)| w + a).collect();
        acks.sort_by(f64::total_cmp);
        let acked = acks[w - 1];
        let reader = rng.gen_range(0..n);
        let rs: Vec<f64> = (0..n)
            .map(|i| {
                if i == reader {
                    0.0
                } else {
                    half_ms(read_rtt_us[rng.gen_range(0..read_rtt_us.len())])
                }
            })
            .collect();
        for (slot, t) in POINTS_MS.iter().enumerate() {
            let start = acked + *t as f64;
            // The first r answers: by when each copy answers (R + S = 2R).
            let mut order: Vec<usize> = (0..n).collect();
            order.sort_by(|a, b| rs[*a].total_cmp(&rs[*b]));
            if order[..r].iter().any(|i| wa[*i].0 <= start + rs[*i]) {
                seen[slot] += 1;
            }
        }
    }
    let points: Vec<(u64, f64)> = POINTS_MS
        .iter()
        .zip(&seen)
        .map(|(t, s)| (*t, *s as f64 / TRIALS as f64))
        .collect();
    let first_at = |p: f64| {
        points
            .iter()
            .find(|(_, q)| *q >= p)
            .or(points.last())
            .map_or(0, |(t, _)| *t)
    };
    PbsCurve {
        keyspace: keyspace.to_string(),
        level: level.to_string(),
        replicas,
        samples,
        t99_ms: first_at(0.99),
        t999_ms: first_at(0.999),
        points,
        delay_percentiles_ms: Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_pair_leader_and_follower_batches() {
        // The leader applied up to 5 at 100, 8 at 110, 12 at 130; the follower's records
        // begin at index 4 (at 90) and reach 8 at 140 and 12 at 150.
        let leader = [(5, 100), (8, 110), (12, 130)];
        let follower = [(4, 90), (8, 140), (12, 150)];
        assert_eq!(visibility_delays(&leader, &follower), vec![40, 30, 20]);
        // Entries the follower had before its records began give no sample; nor do entries
        // it has not applied yet.
        let follower = [(8, 140)];
        assert!(visibility_delays(&leader, &follower).is_empty());
        assert_eq!(
            visibility_delays(&leader, &[(4, 90), (8, 140)]),
            vec![40, 30]
        );
        assert!(visibility_delays(&leader, &[]).is_empty());
    }

    #[test]
    fn each_level_read_at_gets_its_curve() {
        let e = curve("k", "eventual", 3, vec![10, 30]);
        let strong = for_level(&e, "strong").unwrap();
        assert!(strong.points.iter().all(|(_, p)| *p == 1.0));
        assert_eq!((strong.level.as_str(), strong.t99_ms), ("strong", 0));
        let session = for_level(&e, "session").unwrap();
        assert_eq!(
            (session.points.clone(), session.level.as_str()),
            (e.points.clone(), "session")
        );
        assert!(for_level(&e, "bounded").is_none());
        assert!(for_level(&e, "weak").is_none());
    }

    #[test]
    fn wars_follows_its_model() {
        // Three replicas, w=2, r=1: remote writes take 20 ms round trip (10 ms to arrive),
        // remote reads 2 ms. The ack comes at 20 ms, when both remote copies have it: every
        // read returns it.
        let c = wars_curve("k", "eventual", (3, 2, 1), &[20_000], &[2_000], 7);
        assert!(
            c.points.iter().all(|(_, p)| (*p - 1.0).abs() < 1e-9),
            "{c:?}"
        );
        // w=1: acknowledged at once by the coordinator; a reader elsewhere (2/3 of reads)
        // answers from its own copy, which has the write only after 10 ms.
        let c = wars_curve("k", "eventual", (3, 1, 1), &[20_000], &[2_000], 7);
        let p = |t| c.points.iter().find(|(x, _)| *x == t).unwrap().1;
        assert!((p(0) - 1.0 / 3.0).abs() < 0.05, "{c:?}");
        assert!((p(10) - 1.0).abs() < 1e-9, "{c:?}");
        assert_eq!(c.t99_ms, 10);
        // Interpolated between points.
        assert!((probability_at(&c, 8.5) - (p(7) + (p(10) - p(7)) * 0.5)).abs() < 1e-9);
        // No samples: only the coordinator's copy is known.
        let c = wars_curve("k", "eventual", (3, 2, 1), &[], &[], 7);
        assert!((c.points[0].1 - 1.0 / 3.0).abs() < 1e-9);
    }

    #[test]
    fn the_curve_follows_the_model() {
        // Three replicas; followers see writes after 10 ms half the time, 30 ms otherwise.
        let delays = vec![10, 10, 30, 30];
        let c = curve("k", "eventual", 3, delays);
        let p = |t| c.points.iter().find(|(x, _)| *x == t).unwrap().1;
        assert!((p(0) - 1.0 / 3.0).abs() < 1e-9, "only the leader at once");
        assert!((p(10) - (1.0 / 3.0 + 2.0 / 3.0 * 0.5)).abs() < 1e-9);
        assert!((p(30) - 1.0).abs() < 1e-9);
        assert_eq!(c.t99_ms, 30);
        assert_eq!(c.t999_ms, 30);
        assert_eq!(c.samples, 4);
        assert_eq!(c.delay_percentiles_ms.len(), 101);
        assert!((probability_at(&c, 5.0) - 1.0 / 3.0).abs() < 1e-9);
        assert!((probability_at(&c, 30.0) - 1.0).abs() < 1e-9);
        let mid = probability_at(&c, 20.0);
        assert!(mid > 1.0 / 3.0 && mid < 1.0, "{mid}");
        // One replica: always the leader.
        assert_eq!(probability(&[], 1, 0), 1.0);
        // No samples on three replicas: only the leader is known to have it.
        assert!((probability(&[], 3, 100) - 1.0 / 3.0).abs() < 1e-9);
    }
}
