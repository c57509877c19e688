//! Freshness: clock calibration (monotonic offsets for watermarks, wall clocks for the clock
//! bound), leader-pushed watermarks, and the freshness proofs receipts are judged by.

use super::*;

/// A copy's freshness proofs `(index, at)`: every write committed before `at` is at or below
/// `index`. They come from its own read-index probes and from its leader's pushed watermarks.
/// The newest one (its watermark) decides `bounded(t)` reads; the newest one the copy has
/// applied decides its receipts' age. Kept: the proofs not applied yet, oldest first, and the
/// last applied ones (a read served from a view older than the newest applied proof must find
/// the newest proof its own state satisfies, not that one).
#[derive(Default)]
pub(super) struct Proofs {
    pending: std::collections::VecDeque<(u64, Instant)>,
    covered: std::collections::VecDeque<(u64, Instant)>,
}

/// Applied proofs kept for reads served from older views; past them a receipt says "no
/// proof" (only ever more cautious).
const COVERED_KEPT: usize = 64;

/// Proofs a copy remembers while it is behind them (one per heartbeat or probe: at 100 ms
/// heartbeats, about 100 s of lag). Dropping the oldest only makes receipts more cautious.
const PROOFS_PENDING_MAX: usize = 1024;

impl Proofs {
    /// Keeps the proofs ordered by when they were taken.
    pub(super) fn offer(&mut self, index: u64, at: Instant) {
        if self.covered.back().is_some_and(|&(_, c)| c >= at) {
            return;
        }
        if self.pending.len() == PROOFS_PENDING_MAX {
            self.pending.pop_front();
        }
        let slot = self.pending.partition_point(|&(_, t)| t <= at);
        self.pending.insert(slot, (index, at));
    }

    /// When the newest proof that a state at `applied` satisfies was taken (`None`: no proof).
    pub(super) fn covered(&mut self, applied: u64) -> Option<Instant> {
        let newest = self
            .pending
            .iter()
            .filter(|&&(index, _)| index <= applied)
            .max_by_key(|&&(_, at)| at)
            .copied();
        if let Some((index, at)) = newest {
            if self.covered.back().is_none_or(|&(_, c)| c < at) {
                if self.covered.len() == COVERED_KEPT {
                    self.covered.pop_front();
                }
                self.covered.push_back((index, at));
            }
            self.pending.retain(|&(_, t)| t > at);
        }
        // The newest applied proof the state at `applied` satisfies: a proof of a higher index
        // (applied for a newer view) says nothing of this one.
        self.covered
            .iter()
            .rev()
            .find(|&&(index, _)| index <= applied)
            .map(|&(_, at)| at)
    }

    /// The newest proof a state at `index` satisfies, without changing anything.
    pub(super) fn best_at(&self, index: u64) -> Option<(u64, Instant)> {
        self.pending
            .iter()
            .chain(self.covered.iter())
            .filter(|&&(i, _)| i <= index)
            .max_by_key(|&&(_, at)| at)
            .copied()
    }

    /// The newest proof, applied or not (the copy's watermark).
    pub(super) fn newest(&self) -> Option<(u64, Instant)> {
        self.pending.back().or(self.covered.back()).copied()
    }
}

impl Group {
    /// Records a freshness proof: every write committed before `at` is at or below `index`.
    pub(super) fn offer_watermark(&self, index: u64, at: Instant) {
        self.proofs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .offer(index, at);
    }

    /// The newest freshness proof this copy holds (its watermark), applied or not.
    pub(super) fn watermark(&self) -> Option<(u64, Instant)> {
        self.proofs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .newest()
    }

    /// How long before `started` the newest freshness proof that the state at `applied`
    /// satisfies was taken (zero if taken after `started`; `None`: no proof yet).
    pub(super) fn proof_age_at(&self, applied: u64, started: Instant) -> Option<Duration> {
        self.proofs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .covered(applied)
            .map(|at| started.saturating_duration_since(at))
    }
}

impl Node {
    /// This process's incarnation and its monotonic clock now, in microseconds since it
    /// started (`GET /v1/clock`: what a cache calibrates against, as peers do with `Clock`).
    pub fn clock_reading(&self) -> (u64, i64) {
        (self.incarnation, self.mono_us(Instant::now()))
    }

    /// The newest freshness proof this node holds that a state of `(keyspace_id, shard)` at
    /// `index` satisfies: `(c, h)` with `c ≤ index`, `h` on this node's monotonic clock
    /// (µs since it started). Every write committed before `h` is at or below `c`, so a copy
    /// that holds everything up to `index` (a feed consumer) may use it.
    pub fn freshness_proof(
        &self,
        keyspace_id: u64,
        shard: ShardId,
        index: u64,
    ) -> Option<(u64, i64)> {
        let g = self.group(GroupId::for_shard(keyspace_id, shard))?;
        let (c, at) = g
            .proofs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .best_at(index)?;
        Some((c, self.mono_us(at)))
    }

    /// Microseconds on this process's monotonic clock.
    pub(super) fn mono_us(&self, at: Instant) -> i64 {
        i64::try_from(at.saturating_duration_since(self.epoch).as_micros()).unwrap_or(i64::MAX)
    }

    /// Measures every peer's monotonic clock against ours, every `CALIBRATE_EVERY`.
    pub(super) async fn calibrate_loop(self: Arc<Self>) {
        let me: &Node = &self;
        loop {
            // The cluster's nodes now: a node that joined is measured from its first round.
            let peers: Vec<NodeId> = self.nodes().into_iter().filter(|p| *p != self.id).collect();
            let rounds = peers.iter().map(|&peer| async move {
                let sent = Instant::now();
                let sent_wall_ms = me.clock.wall_ms();
                let resp = me.pool.call(peer, 0, Request::Clock, CALIBRATE_WAIT).await;
                let received_wall_ms = me.clock.wall_ms();
                let received = Instant::now();
                // The leaderless failure detector hears of every round.
                me.saw_peer(
                    peer,
                    !matches!(resp, Err(CallError::Unreachable(_) | CallError::Timeout)),
                );
                if let Ok(Response::Clock {
                    incarnation,
                    now_us,
                    wall_ms,
                }) = resp
                {
                    me.clock_guard
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .measure(
                            peer.0,
                            sent_wall_ms,
                            wall_ms,
                            received_wall_ms,
                            me.mono_ms(received),
                        );
                    let mut clocks = me.peer_clocks.lock().unwrap_or_else(|p| p.into_inner());
                    let prev = clocks.get(&peer).copied();
                    clocks.insert(
                        peer,
                        PeerClock::calibrate(
                            prev,
                            incarnation,
                            me.mono_us(sent),
                            now_us,
                            me.mono_us(received),
                        ),
                    );
                }
            });
            futures::future::join_all(rounds).await;
            let (wall, mono) = (self.clock.wall_ms(), self.mono_ms(Instant::now()));
            self.clock_guard
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .end_round(wall, mono);
            if let ClockHealth::Skewed(_) = self.clock_health() {
                for g in self.all_groups() {
                    self.give_up_leadership(&g);
                }
            }
            // Until every peer's clock has been measured once, measure again soon: a follower
            // ignores a leader's watermark pushes until then, and its receipts have no
            // freshness proof (ms = u64::MAX) before the first one.
            let measured = self
                .peer_clocks
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .len();
            let pause = if measured < peers.len() {
                CALIBRATE_FIRST_EVERY
            } else {
                CALIBRATE_EVERY
            };
            tokio::time::sleep(pause).await;
        }
    }

    pub(super) fn mono_ms(&self, at: Instant) -> u64 {
        u64::try_from(at.saturating_duration_since(self.epoch).as_millis()).unwrap_or(u64::MAX)
    }

    /// Whether this node's wall clock may stamp commits now; a change is logged once, and so
    /// is every HLC stamp that refused to follow a timestamp too far ahead.
    pub(super) fn clock_health(&self) -> ClockHealth {
        let health = self
            .clock_guard
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .health(self.clock.wall_ms(), self.mono_ms(Instant::now()));
        {
            let mut logged = self.clock_logged.lock().unwrap_or_else(|p| p.into_inner());
            if *logged != health {
                match &health {
                    ClockHealth::Skewed(why) => tracing::warn!(
                        node = self.id.0,
                        "clock skew: {why}; this node stamps no commits and gives up leadership until it agrees again"
                    ),
                    ClockHealth::Trusted => tracing::info!(
                        node = self.id.0,
                        "clock agrees with the peers again; stamping commits"
                    ),
                }
                *logged = health.clone();
            }
        }
        let capped = self.hlc.capped_total();
        if self.hlc_capped_logged.swap(capped, Ordering::Relaxed) != capped {
            tracing::warn!(
                node = self.id.0,
                capped,
                "the HLC refused to follow a commit time more than max_clock_offset_ms={} ahead of this node's clock",
                self.config.max_clock_offset_ms
            );
        }
        health
    }

    /// The wall time to judge expiry by: this node's clock while trusted, else the last trusted
    /// time carried forward by the monotonic clock.
    pub(super) fn expiry_wall_ms(&self) -> u64 {
        self.clock_guard
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .trusted_wall_ms(self.clock.wall_ms(), self.mono_ms(Instant::now()))
    }

    /// A skewed node hands the groups it leads to another voter, in the background.
    pub(super) fn give_up_leadership(&self, g: &Group) {
        let m = g.raft.metrics().borrow_watched().clone();
        if m.current_leader != Some(self.id.0) {
            return;
        }
        let Some(to) = m
            .membership_config
            .membership()
            .voter_ids()
            .find(|&v| v != self.id.0)
        else {
            return;
        };
        let raft = g.raft.clone();
        tokio::spawn(async move {
            let _ = raft.trigger().transfer_leader(to).await;
        });
    }

    /// Every heartbeat, each group this node leads with a quorum gets a watermark, kept here and
    /// pushed to the group's other replicas: so idle followers (and the leader) serve
    /// `bounded(t)` without a round trip.
    pub(super) async fn watermark_loop(self: Arc<Self>) {
        let every = Duration::from_millis(self.config.raft_timing.heartbeat_ms.max(10));
        loop {
            tokio::time::sleep(every).await;
            let mut to: BTreeMap<NodeId, Vec<(u64, u64, i64)>> = BTreeMap::new();
            for g in self.all_groups() {
                let Some((index, acked_at, voters)) = self.leader_watermark(&g).await else {
                    continue;
                };
                g.offer_watermark(index, acked_at);
                for v in voters.into_iter().filter(|v| *v != self.id) {
                    to.entry(v)
                        .or_default()
                        .push((g.id.0, index, self.mono_us(acked_at)));
                }
            }
            let sends = to.into_iter().map(|(peer, marks)| {
                let push = WatermarkPush {
                    from: self.id.0,
                    incarnation: self.incarnation,
                    marks,
                };
                self.pool.call(peer, 0, Request::Watermarks(push), every)
            });
            futures::future::join_all(sends).await;
        }
    }

    /// On a leader: `(index, at, voters)` such that every write committed before `at` is at or
    /// below `index`. `at` is the send time of the last heartbeat a quorum acknowledged: no
    /// newer leader can have committed anything before it (its quorum would overlap ours, and
    /// that node would have refused our heartbeat). `index` is the read index taken after it.
    pub(super) async fn leader_watermark(&self, g: &Group) -> Option<(u64, Instant, Vec<NodeId>)> {
        let (acked_at, voters) = {
            let m = g.raft.metrics();
            let m = m.borrow_watched();
            if m.state != ServerState::Leader {
                return None;
            }
            let acked_age = openraft::Instant::elapsed(&**m.last_quorum_acked.as_ref()?);
            let voters: Vec<NodeId> = m
                .membership_config
                .membership()
                .voter_ids()
                .map(NodeId)
                .collect();
            (Instant::now().checked_sub(acked_age)?, voters)
        };
        let (read_log_id, _) = g.raft.get_read_log_id(ReadPolicy::LeaseRead).await.ok()?;
        Some((read_log_id.index(), acked_at, voters))
    }

    /// A leader's pushed watermarks, mapped onto our clock no later than they can have been
    /// taken. Ignored until the leader's clock has been measured.
    pub(super) fn accept_watermarks(&self, push: WatermarkPush) {
        let Some(clock) = self
            .peer_clocks
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&NodeId(push.from))
            .copied()
            .filter(|c| c.incarnation == push.incarnation)
        else {
            return;
        };
        let now = Instant::now();
        let now_us = self.mono_us(now);
        for (group, index, acked_us) in push.marks {
            let Some(g) = self.group(GroupId(group)) else {
                continue;
            };
            let local_us = clock.earliest_local(acked_us, now_us);
            let back = Duration::from_micros(u64::try_from(now_us - local_us).unwrap_or(0));
            if let Some(at) = now.checked_sub(back) {
                g.offer_watermark(index, at);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn receipts_use_the_newest_proof_the_served_state_satisfies() {
        // Regression (issue 15): a copy 84 entries behind that still heard heartbeats reported
        // `ms=12` (its contact age). Its age is that of the newest proof it has applied.
        let t0 = Instant::now();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        let mut p = Proofs::default();
        assert_eq!(p.covered(100), None, "no proof yet: unknown");
        p.offer(10, at(100));
        p.offer(20, at(200));
        p.offer(30, at(300));
        // Applied 15: only the proof of index 10 holds.
        assert_eq!(p.covered(15), Some(at(100)));
        // Applied 25 later: the proof of index 20.
        assert_eq!(p.covered(25), Some(at(200)));
        // A proof taken out of order (a probe answered late) still counts.
        p.offer(26, at(250));
        assert_eq!(p.covered(26), Some(at(250)));
        assert_eq!(p.covered(30), Some(at(300)));
        // Never goes back, and older proofs are not kept once covered.
        p.offer(5, at(50));
        assert_eq!(p.covered(30), Some(at(300)));
        assert!(p.pending.is_empty());
        // A read served from an older view (index 26) after a newer one moved the applied
        // proof on: the proof of 26, not the newer one of 30 its state does not satisfy.
        // (Before: `at(300)`, a receipt 50 ms too fresh — seen as an honest-receipt violation
        // of 0.25 ms in verify.)
        assert_eq!(p.covered(26), Some(at(250)));
        assert_eq!(p.covered(19), Some(at(100)));
        assert_eq!(p.covered(9), None);
    }

    #[test]
    fn the_proof_list_is_bounded() {
        let t0 = Instant::now();
        let mut p = Proofs::default();
        for i in 0..(PROOFS_PENDING_MAX as u64 + 10) {
            p.offer(1_000 + i, t0 + Duration::from_millis(i));
        }
        assert_eq!(p.pending.len(), PROOFS_PENDING_MAX);
        // The oldest were dropped: a receipt is only ever more cautious.
        assert_eq!(p.covered(1_005), None);
    }
}
