//! Deliberate bugs, each breaking one promise, so tests can show that `tunekv verify`'s
//! checkers catch them. They exist only with the `bug-injection` feature, which release
//! builds refuse (see `lib.rs`); without it every flag reads false and the checks fold away.

/// The promises that can be broken on purpose (`tunekv server --bug NAME`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Bugs {
    /// `strong-local`: serve strong reads from the local copy without a read index.
    strong_local: bool,
    /// `ignore-session`: serve session levels without waiting for the token's positions.
    ignore_session: bool,
    /// `skip-bounded`: serve bounded staleness without proving the bound.
    skip_bounded: bool,
    /// `ack-early`: acknowledge a write as soon as it is proposed, before it is durable on a
    /// quorum (the "acknowledge before fsync" class of bug: an acknowledged write can be lost).
    ack_early: bool,
    /// `old-receipts`: report staleness by the pre-issue-15 rule (ms = time since the leader's
    /// last contact, or now minus the applied commit time), which understates how stale a copy
    /// that knows it is behind can be.
    old_receipts: bool,
    /// `quorum-ack-one`: a leaderless coordinator acknowledges a write once one replica holds
    /// it, whatever `w` asked (a quorum read may then miss a write acknowledged at w=quorum).
    quorum_ack_one: bool,
    /// `gc-early`: collect a tombstone once its grace has passed, without waiting until every
    /// replica of its key was seen holding it (a replica that missed the delete brings the key
    /// back).
    gc_early: bool,
    /// `drop-hints`: a node forgets its hints instead of delivering them (a write acknowledged
    /// on stand-ins' hints alone is lost).
    drop_hints: bool,
    /// `skip-read-repair`: leaderless reads repair no replica, blocking or in the background (a
    /// quorum read may return a version fewer than r replicas hold, and a later quorum read an
    /// older one).
    skip_read_repair: bool,
    /// `counter-lww`: replicas resolve counter states by last writer wins instead of joining
    /// them (concurrent increments are lost).
    counter_lww: bool,
    /// `set-remove-wins`: a replica joining a set's or map's remove drops every dot of the
    /// removed members, including adds the remover never saw (a concurrent add is lost).
    set_remove_wins: bool,
    /// `siblings-union`: replicas merge siblings by keeping every value, ignoring the
    /// contexts (a value a later write superseded comes back).
    siblings_union: bool,
    /// `progress-early`: a watch sends each batch's progress mark before its changes (a
    /// consumer that trusts the mark believes it has every change up to it too soon).
    progress_early: bool,
    /// `feed-dupes`: a leaderless keyspace's watch delivers every stored version it polls,
    /// without removing the copies other replicas stored (each write arrives once per replica).
    feed_dupes: bool,
    /// `metrics-fresh`: `/metrics` counts every served read as 0 s and 0 entries stale,
    /// whatever its receipt said (a dashboard or SLO on it looks healthier than the clients'
    /// experience).
    metrics_fresh: bool,
    /// `backup-stale`: a shard backup streams the node's copy as it is, without the strong
    /// read's check that it holds everything committed (a lagging replica's backup misses
    /// acknowledged writes).
    backup_stale: bool,
    /// `ring-no-handoff`: a leaderless ring changes without its handoff: old nodes send the
    /// new ring nothing (no handoff, no forwarding of writes meanwhile) and drop what the ring
    /// took away without sending it first (a quorum read on the new ring can miss a write
    /// acknowledged at w=quorum on the old one).
    ring_no_handoff: bool,
    /// `auth-ignore-prefix`: a permission's key prefix is ignored, so a user restricted to
    /// some keys of a keyspace may touch all of them (the security tests' prefix checks catch
    /// it).
    auth_ignore_prefix: bool,
    /// `stale-hot-values`: a shard's applier leaves the values a batch changed among the
    /// copy's hot values, so reads keep serving what the state no longer holds.
    stale_hot_values: bool,
}

pub const BUG_NAMES: &str =
    "strong-local, ignore-session, skip-bounded, ack-early, old-receipts, quorum-ack-one, gc-early, \
     drop-hints, skip-read-repair, counter-lww, set-remove-wins, siblings-union, progress-early, \
     feed-dupes, metrics-fresh, backup-stale, ring-no-handoff, auth-ignore-prefix, stale-hot-values";

impl Bugs {
    /// Parses `--bug` names. Any name in a build without the feature is an error.
    pub fn parse(names: &[String]) -> Result<Bugs, String> {
        let mut b = Bugs::default();
        for n in names {
            if !cfg!(feature = "bug-injection") {
                return Err(format!(
                    "--bug {n}: this build has no bug injection (build with --features bug-injection)"
                ));
            }
            match n.as_str() {
                "strong-local" => b.strong_local = true,
                "ignore-session" => b.ignore_session = true,
                "skip-bounded" => b.skip_bounded = true,
                "ack-early" => b.ack_early = true,
                "old-receipts" => b.old_receipts = true,
                "quorum-ack-one" => b.quorum_ack_one = true,
                "gc-early" => b.gc_early = true,
                "drop-hints" => b.drop_hints = true,
                "skip-read-repair" => b.skip_read_repair = true,
                "counter-lww" => b.counter_lww = true,
                "set-remove-wins" => b.set_remove_wins = true,
                "siblings-union" => b.siblings_union = true,
                "progress-early" => b.progress_early = true,
                "feed-dupes" => b.feed_dupes = true,
                "metrics-fresh" => b.metrics_fresh = true,
                "backup-stale" => b.backup_stale = true,
                "ring-no-handoff" => b.ring_no_handoff = true,
                "auth-ignore-prefix" => b.auth_ignore_prefix = true,
                "stale-hot-values" => b.stale_hot_values = true,
                other => return Err(format!("unknown bug {other:?}; bugs: {BUG_NAMES}")),
            }
        }
        Ok(b)
    }

    pub fn any(&self) -> bool {
        cfg!(feature = "bug-injection")
            && (self.strong_local
                || self.ignore_session
                || self.skip_bounded
                || self.ack_early
                || self.old_receipts
                || self.quorum_ack_one
                || self.gc_early
                || self.drop_hints
                || self.skip_read_repair
                || self.counter_lww
                || self.set_remove_wins
                || self.siblings_union
                || self.progress_early
                || self.feed_dupes
                || self.metrics_fresh
                || self.backup_stale
                || self.ring_no_handoff
                || self.auth_ignore_prefix
                || self.stale_hot_values)
    }

    pub fn stale_hot_values(&self) -> bool {
        cfg!(feature = "bug-injection") && self.stale_hot_values
    }

    pub fn ring_no_handoff(&self) -> bool {
        cfg!(feature = "bug-injection") && self.ring_no_handoff
    }

    pub fn auth_ignore_prefix(&self) -> bool {
        cfg!(feature = "bug-injection") && self.auth_ignore_prefix
    }

    pub fn backup_stale(&self) -> bool {
        cfg!(feature = "bug-injection") && self.backup_stale
    }

    pub fn strong_local(&self) -> bool {
        cfg!(feature = "bug-injection") && self.strong_local
    }

    pub fn ignore_session(&self) -> bool {
        cfg!(feature = "bug-injection") && self.ignore_session
    }

    pub fn skip_bounded(&self) -> bool {
        cfg!(feature = "bug-injection") && self.skip_bounded
    }

    pub fn ack_early(&self) -> bool {
        cfg!(feature = "bug-injection") && self.ack_early
    }

    pub fn old_receipts(&self) -> bool {
        cfg!(feature = "bug-injection") && self.old_receipts
    }

    pub fn quorum_ack_one(&self) -> bool {
        cfg!(feature = "bug-injection") && self.quorum_ack_one
    }

    pub fn gc_early(&self) -> bool {
        cfg!(feature = "bug-injection") && self.gc_early
    }

    pub fn drop_hints(&self) -> bool {
        cfg!(feature = "bug-injection") && self.drop_hints
    }

    pub fn skip_read_repair(&self) -> bool {
        cfg!(feature = "bug-injection") && self.skip_read_repair
    }

    pub fn counter_lww(&self) -> bool {
        cfg!(feature = "bug-injection") && self.counter_lww
    }

    pub fn set_remove_wins(&self) -> bool {
        cfg!(feature = "bug-injection") && self.set_remove_wins
    }

    pub fn progress_early(&self) -> bool {
        cfg!(feature = "bug-injection") && self.progress_early
    }

    pub fn feed_dupes(&self) -> bool {
        cfg!(feature = "bug-injection") && self.feed_dupes
    }

    pub fn metrics_fresh(&self) -> bool {
        cfg!(feature = "bug-injection") && self.metrics_fresh
    }

    pub fn siblings_union(&self) -> bool {
        cfg!(feature = "bug-injection") && self.siblings_union
    }
}
