//! A hybrid logical clock: the commit time the leader stamps into every entry. Reads the wall
//! clock through the caller (so skew can be injected) and never goes backwards, even when the
//! wall clock does or when a new leader's clock is behind the old one's.

use std::sync::atomic::{AtomicU64, Ordering};

/// Milliseconds since the Unix epoch in the high bits, a logical counter in the low
/// `LOGICAL_BITS`. Receipts show the millisecond part.
#[derive(Debug, Default)]
pub struct Hlc {
    last: AtomicU64,
}

pub const LOGICAL_BITS: u32 = 16;

impl Hlc {
    pub fn new() -> Self {
        Hlc {
            last: AtomicU64::new(0),
        }
    }

    /// A timestamp greater than every one returned or observed before.
    pub fn now(&self, wall_ms: u64) -> u64 {
        let wall = wall_ms << LOGICAL_BITS;
        let mut prev = self.last.load(Ordering::Relaxed);
        loop {
            let next = if wall > prev { wall } else { prev + 1 };
            match self
                .last
                .compare_exchange_weak(prev, next, Ordering::AcqRel, Ordering::Relaxed)
            {
                Ok(_) => return next,
                Err(p) => prev = p,
            }
        }
    }

    /// Records a timestamp seen elsewhere (an applied entry) so later ones are greater.
    pub fn observe(&self, ts: u64) {
        self.last.fetch_max(ts, Ordering::AcqRel);
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
    fn monotonic_even_when_the_wall_clock_goes_back() {
        let h = Hlc::new();
        let a = h.now(1000);
        let b = h.now(900);
        let c = h.now(1000);
        assert!(a < b && b < c);
        assert_eq!(Hlc::millis(a), 1000);
        h.observe(Hlc::now(&Hlc::new(), 5000));
        assert!(Hlc::millis(h.now(1000)) >= 5000);
    }
}
