//! Guarding commit times against a wrong wall clock (issue 15).
//!
//! Commit times (the HLC) and key expiry come from wall clocks. One leader whose clock jumped a
//! day ahead used to stamp that day into an entry; every node's HLC adopted it, and from then on
//! every commit on every keyspace carried the skewed time, so `EX 2` keys lived a day and
//! `EX 3600` keys vanished at once. The cluster now states a bound, `max_clock_offset_ms`
//! (default 500 ms, CockroachDB's rule), and:
//!
//! - the HLC never adopts a timestamp further ahead of the local wall clock than the bound
//!   ([`crate::Hlc`]);
//! - a node measures its wall clock against its peers' with every clock round trip (the peer's
//!   reading lies between our send and receive readings), and compares its wall clock with its
//!   monotonic clock, which no one can set: a node that disagrees by more than the bound with a
//!   majority of its peers, or whose wall clock moved against its monotonic clock by more than
//!   the bound since it last agreed with them, is *skewed*. A skewed node stamps no commit and
//!   gives up leadership; reads there judge expiry on the last trusted wall time carried forward
//!   by the monotonic clock.
//!
//! Pure logic: the node feeds it readings; no I/O, no clocks of its own.

use std::collections::BTreeMap;

/// The default bound on how far two nodes' wall clocks may disagree.
pub const MAX_CLOCK_OFFSET_MS_DEFAULT: u64 = 500;
/// Smallest and largest accepted `max_clock_offset_ms`.
pub const MAX_CLOCK_OFFSET_MS_MIN: u64 = 10;
pub const MAX_CLOCK_OFFSET_MS_MAX: u64 = 60_000;
/// A peer's measurement counts toward the majority for this long (peers measure every 500 ms).
pub const PEER_MEASUREMENT_MS_MAX: u64 = 10_000;

/// One peer's wall clock as last measured: `peer − ours` lies in `[lo_ms, hi_ms]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct PeerWall {
    lo_ms: i64,
    hi_ms: i64,
    at_mono_ms: u64,
}

/// What the guard concluded about this node's wall clock.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ClockHealth {
    Trusted,
    /// Why the wall clock is not trusted (for errors, status and logs).
    Skewed(String),
}

#[derive(Clone, Debug)]
pub struct ClockGuard {
    max_offset_ms: u64,
    /// How many peers the node has (the majority is of all of them, measured or not).
    peers_total: usize,
    peers: BTreeMap<u64, PeerWall>,
    /// `wall − monotonic` when the wall clock last agreed with the peers.
    baseline_ms: Option<i64>,
}

fn signed(x: u64) -> i64 {
    i64::try_from(x).unwrap_or(i64::MAX)
}

impl ClockGuard {
    pub fn new(max_offset_ms: u64, peers_total: usize) -> ClockGuard {
        ClockGuard {
            max_offset_ms,
            peers_total,
            peers: BTreeMap::new(),
            baseline_ms: None,
        }
    }

    pub fn max_offset_ms(&self) -> u64 {
        self.max_offset_ms
    }

    /// A clock round trip to `peer`: our wall clock read `sent_ms` before the call and
    /// `received_ms` after it, the peer's read `peer_ms` in between.
    pub fn measure(
        &mut self,
        peer: u64,
        sent_ms: u64,
        peer_ms: u64,
        received_ms: u64,
        mono_ms: u64,
    ) {
        let (sent, received, peer_ms) = (signed(sent_ms), signed(received_ms), signed(peer_ms));
        // If our own wall clock moved backwards during the call, the interval is unknowable.
        let (lo, hi) = (
            peer_ms.saturating_sub(received.max(sent)),
            peer_ms.saturating_sub(sent.min(received)),
        );
        self.peers.insert(
            peer,
            PeerWall {
                lo_ms: lo,
                hi_ms: hi,
                at_mono_ms: mono_ms,
            },
        );
    }

    /// Peers measured recently, each with how far its clock is from ours when that is
    /// certainly more than the bound (`None`: within it, or not certainly beyond it).
    fn recent(&self, mono_ms: u64) -> impl Iterator<Item = (u64, Option<i64>)> + '_ {
        let max = signed(self.max_offset_ms);
        self.peers
            .iter()
            .filter(move |(_, w)| mono_ms.saturating_sub(w.at_mono_ms) <= PEER_MEASUREMENT_MS_MAX)
            .map(move |(&p, w)| {
                let off = if w.lo_ms > max {
                    Some(w.lo_ms)
                } else if w.hi_ms < -max {
                    Some(w.hi_ms)
                } else {
                    None
                };
                (p, off)
            })
    }

    /// Whether a majority of all peers certainly disagree with our clock.
    fn outvoted(&self, mono_ms: u64) -> bool {
        let off = self.recent(mono_ms).filter(|(_, d)| d.is_some()).count();
        off > 0 && off * 2 > self.peers_total
    }

    /// Whether the wall clock reading `wall_ms` (with the monotonic clock at `mono_ms`) can be
    /// trusted for commit times and expiry.
    pub fn health(&self, wall_ms: u64, mono_ms: u64) -> ClockHealth {
        // Checked on every stamp and every read's expiry time: no allocation unless skewed.
        if self.outvoted(mono_ms) {
            let list: Vec<String> = self
                .recent(mono_ms)
                .filter_map(|(p, d)| d.map(|d| format!("node {p} by {:+} ms", -d)))
                .collect();
            return ClockHealth::Skewed(format!(
                "this node's wall clock disagrees with {} of its {} peers by more than max_clock_offset_ms={} ({})",
                list.len(),
                self.peers_total,
                self.max_offset_ms,
                list.join(", ")
            ));
        }
        if let Some(base) = self.baseline_ms {
            let moved = signed(wall_ms)
                .saturating_sub(signed(mono_ms))
                .saturating_sub(base);
            if moved.unsigned_abs() > self.max_offset_ms {
                return ClockHealth::Skewed(format!(
                    "this node's wall clock jumped {moved:+} ms against its monotonic clock since it last agreed with its peers (max_clock_offset_ms={})",
                    self.max_offset_ms
                ));
            }
        }
        ClockHealth::Trusted
    }

    /// Ends a round of measurements: when the peers vouch for the wall clock (or there are
    /// none), it becomes the baseline later jumps are measured from.
    pub fn end_round(&mut self, wall_ms: u64, mono_ms: u64) {
        let vouched = self.peers_total == 0
            || (!self.outvoted(mono_ms) && self.recent(mono_ms).any(|(_, d)| d.is_none()));
        if vouched {
            self.baseline_ms = Some(signed(wall_ms).saturating_sub(signed(mono_ms)));
        }
    }

    /// The wall time to judge expiry by: the wall clock when trusted, else the last trusted
    /// wall time carried forward by the monotonic clock (the wall clock itself if there is none).
    pub fn trusted_wall_ms(&self, wall_ms: u64, mono_ms: u64) -> u64 {
        match (self.health(wall_ms, mono_ms), self.baseline_ms) {
            (ClockHealth::Skewed(_), Some(base)) => {
                u64::try_from(base.saturating_add(signed(mono_ms))).unwrap_or(0)
            }
            _ => wall_ms,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn skewed(h: ClockHealth) -> bool {
        matches!(h, ClockHealth::Skewed(_))
    }

    #[test]
    fn a_node_ahead_of_both_peers_is_skewed_and_its_peers_are_not() {
        // Node 1's clock is a day ahead of nodes 2 and 3.
        let day = 86_400_000u64;
        let mut ahead = ClockGuard::new(500, 2);
        ahead.measure(2, 1_000 + day, 1_005, 1_010 + day, 0);
        ahead.measure(3, 1_000 + day, 1_004, 1_010 + day, 0);
        assert!(skewed(ahead.health(1_020 + day, 10)));
        let mut fine = ClockGuard::new(500, 2);
        fine.measure(1, 1_000, 1_005 + day, 1_010, 0);
        fine.measure(3, 1_000, 1_004, 1_010, 0);
        assert_eq!(fine.health(1_020, 10), ClockHealth::Trusted);
    }

    #[test]
    fn a_jump_is_seen_at_once_against_the_monotonic_clock() {
        let mut g = ClockGuard::new(500, 2);
        g.measure(2, 10_000, 10_003, 10_006, 100);
        g.end_round(10_006, 106);
        assert_eq!(g.health(10_106, 206), ClockHealth::Trusted);
        // The wall clock jumps a day ahead with no new measurement.
        assert!(skewed(g.health(10_106 + 86_400_000, 206)));
        // Expiry is judged on the trusted time carried forward.
        assert_eq!(g.trusted_wall_ms(10_106 + 86_400_000, 206), 10_106);
        // Cleared: trusted again.
        assert_eq!(g.health(10_200, 300), ClockHealth::Trusted);
    }

    #[test]
    fn within_the_bound_and_uncertain_intervals_are_not_skew() {
        let mut g = ClockGuard::new(500, 2);
        // 400 ms apart: within the bound.
        g.measure(2, 1_000, 1_400, 1_002, 0);
        // A slow round trip makes the interval wide enough to include agreement.
        g.measure(3, 1_000, 2_000, 3_000, 0);
        assert_eq!(g.health(3_000, 0), ClockHealth::Trusted);
    }

    #[test]
    fn one_skewed_peer_of_two_is_not_a_majority() {
        let mut g = ClockGuard::new(500, 2);
        g.measure(2, 1_000, 9_000, 1_002, 0);
        assert_eq!(g.health(1_002, 0), ClockHealth::Trusted);
        g.measure(3, 1_000, 9_000, 1_002, 0);
        assert!(skewed(g.health(1_002, 0)));
        // Old measurements stop counting.
        assert_eq!(
            g.health(1_002, PEER_MEASUREMENT_MS_MAX + 1),
            ClockHealth::Trusted
        );
    }
}
