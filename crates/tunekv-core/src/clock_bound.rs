//! Relating a peer's monotonic clock to ours without synchronized clocks.
//!
//! A leader pushes freshness watermarks stamped with *its* monotonic time. To use one, a follower
//! needs the earliest moment, on *its own* clock, at which that stamp could have been taken. A
//! round trip bounds it: we send at `s` (our clock), the peer reads its clock `p` while handling
//! the call, and we get the answer at `r`. The peer's reading happened within `[s, r]` of our
//! clock, so `offset = ours − theirs` lies in `[s − p, r − p]`. We keep the largest lower bound
//! seen, aged by the assumed rate drift, and map a peer stamp `t` to at least `t + offset_lo`.
//! A late or slow message therefore never makes a watermark look younger than it is.
//!
//! The one clock assumption: monotonic clocks of two nodes tick at rates that differ by at most
//! [`RATE_DRIFT_PPM`]. No bound on their offset, and no bound on network delay, is needed.

/// Largest assumed difference in tick rate between two nodes' monotonic clocks, in parts per
/// million (quartz oscillators are specified at ±50–100 ppm; this leaves a wide margin).
pub const RATE_DRIFT_PPM: i64 = 1_000;

/// What one round trip to a peer taught us about its clock. Times are microseconds since each
/// process's own start; `incarnation` identifies the peer process the offset holds for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PeerClock {
    pub incarnation: u64,
    /// A lower bound of `our clock − peer clock`, valid at `at_us` (our clock).
    offset_lo_us: i64,
    at_us: i64,
}

impl PeerClock {
    /// The lower bound as of `now_us`: rates may drift apart by up to `RATE_DRIFT_PPM` since it
    /// was measured.
    fn offset_lo_at(&self, now_us: i64) -> i64 {
        let elapsed = now_us.saturating_sub(self.at_us).max(0);
        self.offset_lo_us
            .saturating_sub(elapsed.saturating_mul(RATE_DRIFT_PPM) / 1_000_000 + 1)
    }

    /// Folds in a round trip sent at `sent_us`, answered with the peer's reading `peer_us`, and
    /// received at `received_us` (our clock). A new incarnation of the peer starts over.
    pub fn calibrate(
        prev: Option<PeerClock>,
        incarnation: u64,
        sent_us: i64,
        peer_us: i64,
        received_us: i64,
    ) -> PeerClock {
        let fresh = PeerClock {
            incarnation,
            offset_lo_us: sent_us.saturating_sub(peer_us),
            at_us: received_us,
        };
        match prev {
            Some(p) if p.incarnation == incarnation => {
                if p.offset_lo_at(received_us) > fresh.offset_lo_us {
                    PeerClock {
                        offset_lo_us: p.offset_lo_at(received_us),
                        ..fresh
                    }
                } else {
                    fresh
                }
            }
            _ => fresh,
        }
    }

    /// The earliest time on our clock at which the peer's clock read `peer_us`, judged at
    /// `now_us`; never later than `now_us`.
    pub fn earliest_local(&self, peer_us: i64, now_us: i64) -> i64 {
        peer_us
            .saturating_add(self.offset_lo_at(now_us))
            .min(now_us)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stamp_maps_no_later_than_it_can_have_happened() {
        // True offset: our clock = peer clock + 5000. Round trip 200 µs, peer read at +120.
        let c = PeerClock::calibrate(None, 7, 10_000, 10_000 + 120 - 5_000, 10_200);
        // The peer stamped 6_000 on its clock = 11_000 on ours; we may only claim ≤ 11_000.
        let earliest = c.earliest_local(6_000, 12_000);
        assert!(earliest <= 11_000, "{earliest}");
        assert!(
            earliest >= 11_000 - 200,
            "tight within the round trip: {earliest}"
        );
        // Never in our future.
        assert_eq!(c.earliest_local(1_000_000, 12_000), 12_000);
    }

    #[test]
    fn a_tighter_round_trip_wins_and_drift_widens_the_bound() {
        let loose = PeerClock::calibrate(None, 1, 0, -4_000, 2_000); // offset in [4000, 6000]
        let tight = PeerClock::calibrate(Some(loose), 1, 3_000, -1_900, 3_200); // [4900, 5100]
        assert!(tight.earliest_local(0, 5_000) >= 4_890);
        let kept = PeerClock::calibrate(Some(tight), 1, 4_000, -500, 6_000); // [4500, 6500]
        assert!(
            kept.earliest_local(0, 6_000) >= 4_890,
            "the better old bound is kept"
        );
        // An hour later the kept bound has widened by the drift allowance (1000 ppm → 3.6 s).
        let hour = 3_600_000_000;
        let aged = kept.earliest_local(0, 6_000 + hour);
        assert!(aged <= 4_900 - 3_600_000 + 10, "{aged}");
    }

    #[test]
    fn a_restarted_peer_starts_over() {
        let old = PeerClock::calibrate(None, 1, 0, -1_000_000, 100);
        let new = PeerClock::calibrate(Some(old), 2, 5_000, 10, 5_100);
        assert_eq!(new.incarnation, 2);
        assert!(new.earliest_local(10, 6_000) <= 5_000 + 100);
        assert!(new.earliest_local(10, 6_000) >= 4_900);
    }
}
