//! A hybrid logical clock: the commit time the leader stamps into every entry. Reads the wall
//! clock through the caller (so skew can be injected) and never goes backwards, even when the
//! wall clock does or when a new leader's clock is behind the old one's.

use std::sync::atomic::{AtomicU64, Ordering};

/// Milliseconds since the Unix epoch in the high bits, a logical counter in the low
/// `LOGICAL_BITS`. Receipts show the millisecond part.
///
/// Bounded (issue 15): a timestamp observed elsewhere (an applied entry) raises the clock only
/// up to `max_offset_ms` ahead of the local wall clock at the next stamp; a timestamp further
/// ahead is not adopted (counted in [`Hlc::capped_total`]). One node's clock jump therefore
/// cannot freeze commit time cluster-wide.
#[derive(Debug)]
pub struct Hlc {
    last: AtomicU64,
    max_offset_ms: u64,
    capped: AtomicU64,
}

pub const LOGICAL_BITS: u32 = 16;
/// The largest wall time a timestamp can hold (year 10889); later readings are clamped.
pub const WALL_MS_MAX: u64 = u64::MAX >> LOGICAL_BITS;

impl Default for Hlc {
    fn default() -> Self {
        Hlc::new(crate::clock_guard::MAX_CLOCK_OFFSET_MS_DEFAULT)
    }
}

impl Hlc {
    pub fn new(max_offset_ms: u64) -> Self {
        Hlc {
            last: AtomicU64::new(0),
            max_offset_ms,
            capped: AtomicU64::new(0),
        }
    }

    /// A timestamp greater than every one returned or observed before, unless those ran more
    /// than `max_offset_ms` ahead of `wall_ms`: then at most that far ahead (and counted).
    pub fn now(&self, wall_ms: u64) -> u64 {
        let wall_ms = wall_ms.min(WALL_MS_MAX);
        let wall = wall_ms << LOGICAL_BITS;
        let cap = wall_ms.saturating_add(self.max_offset_ms).min(WALL_MS_MAX) << LOGICAL_BITS;
        let mut prev = self.last.load(Ordering::Relaxed);
        loop {
            let floor = prev.min(cap);
            let next = wall.max(floor.saturating_add(1));
            match self
                .last
                .compare_exchange_weak(prev, next, Ordering::AcqRel, Ordering::Relaxed)
            {
                Ok(_) => {
                    if prev > cap {
                        self.capped.fetch_add(1, Ordering::Relaxed);
                    }
                    return next;
                }
                Err(p) => prev = p,
            }
        }
    }

    /// A leaderless write's stamp: at least `floor`, and above every stamp this clock returned
    /// or observed before, so two writes coordinated by one node never share a version (with
    /// the node id, versions are unique). Not capped: `floor` comes from versions replicas
    /// accepted, each within their own skew bound. Use a clock that only this method and
    /// `observe` touch: [`Hlc::now`] may step back to its cap.
    pub fn stamp_above(&self, wall_ms: u64, floor: u64) -> u64 {
        let wall = wall_ms.min(WALL_MS_MAX) << LOGICAL_BITS;
        let mut prev = self.last.load(Ordering::Relaxed);
        loop {
            let next = wall.max(prev.saturating_add(1)).max(floor);
            match self
                .last
                .compare_exchange_weak(prev, next, Ordering::AcqRel, Ordering::Relaxed)
            {
                Ok(_) => return next,
                Err(p) => prev = p,
            }
        }
    }

    /// Records a timestamp seen elsewhere (an applied entry) so later ones are greater (within
    /// the offset bound, see [`Hlc::now`]).
    pub fn observe(&self, ts: u64) {
        self.last.fetch_max(ts, Ordering::AcqRel);
    }

    /// How many stamps refused to follow a timestamp more than `max_offset_ms` ahead.
    pub fn capped_total(&self) -> u64 {
        self.capped.load(Ordering::Relaxed)
    }

    /// The millisecond part of a timestamp.
    pub fn millis(ts: u64) -> u64 {
        ts >> LOGICAL_BITS
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn leaderless_stamps_are_unique_and_above_their_floor() {
        // Regression (issue 16 review): a stamp raised to a floor was not fed back into the
        // clock, so a later write through the node could get the same version.
        let h = Hlc::new(500);
        let floor = (5_000u64 << LOGICAL_BITS) + 7;
        let a = h.stamp_above(1_000, floor);
        assert_eq!(a, floor);
        let b = h.stamp_above(1_000, floor);
        assert!(b > a, "{b} after {a}");
        let c = h.stamp_above(1_000, 0);
        assert!(c > b);
    }

    #[test]
    fn monotonic_even_when_the_wall_clock_goes_back() {
        let h = Hlc::new(500);
        let a = h.now(1000);
        let b = h.now(900);
        let c = h.now(1000);
        assert!(a < b && b < c);
        assert_eq!(Hlc::millis(a), 1000);
        h.observe(Hlc::new(500).now(1400));
        assert!(Hlc::millis(h.now(1000)) >= 1400);
        assert_eq!(h.capped_total(), 0);
    }

    #[test]
    fn a_timestamp_a_day_ahead_is_not_adopted() {
        // Regression (issue 15): one leader's clock jumped a day ahead; every HLC adopted its
        // stamp and every later commit cluster-wide carried the skewed time.
        let day = 86_400_000;
        let h = Hlc::new(500);
        h.observe(Hlc::new(500).now(1_000 + day));
        let next = Hlc::millis(h.now(2_000));
        assert!(next <= 2_500, "stamped {next}");
        assert_eq!(h.capped_total(), 1);
        // Within the bound, the observed time is still respected.
        h.observe(Hlc::new(500).now(2_400));
        assert!(Hlc::millis(h.now(2_001)) >= 2_400);
    }

    #[test]
    fn wall_times_beyond_the_format_do_not_overflow() {
        let h = Hlc::new(500);
        let a = h.now(u64::MAX);
        assert_eq!(Hlc::millis(a), WALL_MS_MAX);
        assert!(h.now(u64::MAX) > a);
    }
}
