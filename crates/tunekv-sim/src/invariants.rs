//! Internal invariants, sampled while a seed runs (every few steps) and judged at its end.
//!
//! - Applied ≤ committed on every live replica, at every sample.
//! - No two replicas apply different entries at one index of a group (Raft's state machine
//!   safety), judged on each replica's last applied entry at every sample. (openraft lets two
//!   nodes lead in one term, in order of node id, so "one leader per term" is not its promise;
//!   the entries they commit are.)
//! - Every position a session token carries (written or read) is at or below a committed
//!   index some replica reported. The replica that knew of a commit may crash before the next
//!   sample, so this one is judged at the end of the run, against the highest committed index
//!   any replica reported at any sample (after the heal the new leaders report it again).
//! - Every token the clients hold verifies under the cluster's secret.

use std::collections::BTreeMap;
use tunekv_core::SessionKey;
use tunekv_node::status::ReplicaStatus;

/// Violations kept per run; the first ones tell the story.
const VIOLATIONS_MAX: usize = 20;

/// How much the invariants looked at in one run (a test asserts they looked at all).
#[derive(Clone, Copy, Debug, Default)]
pub struct Checked {
    /// Replica statuses judged.
    pub replicas: u64,
    /// Distinct session tokens decoded.
    pub tokens: u64,
    /// Groups on which some token claimed a position.
    pub claimed_groups: usize,
    /// Snapshots replicas installed from their leaders (the most any sample of a replica's
    /// process showed, summed).
    pub snapshots_installed: u64,
    /// Nodes seen holding a replica of a shard group, bit `id` set for node `id` (a joiner
    /// shows up here once a replica moved to it).
    pub shard_hosts: u64,
    /// Nodes seen holding keys of a leaderless keyspace, bit `id` set for node `id` (a joiner
    /// shows up here once the ring grew to it).
    pub ring_hosts: u64,
}

pub struct Invariants {
    key: SessionKey,
    /// (group, index) → the entry's leader id and the first node seen applying it.
    applied: BTreeMap<(u64, u64), (String, u64)>,
    /// group → the highest committed index any replica has reported.
    committed: BTreeMap<u64, u64>,
    /// group → (the highest position any token claimed, the client holding it).
    claims: BTreeMap<u64, (u64, usize)>,
    /// Each client's last token, to skip decoding an unchanged one.
    seen_tokens: BTreeMap<usize, String>,
    checked: Checked,
    violations: Vec<String>,
    /// (node, group) → snapshots installed, as last sampled.
    installs: BTreeMap<(u64, u64), u64>,
}

impl Invariants {
    pub fn new(key: SessionKey) -> Invariants {
        Invariants {
            key,
            applied: BTreeMap::new(),
            committed: BTreeMap::new(),
            claims: BTreeMap::new(),
            seen_tokens: BTreeMap::new(),
            checked: Checked::default(),
            violations: Vec::new(),
            installs: BTreeMap::new(),
        }
    }

    fn violation(&mut self, text: String) {
        if self.violations.len() < VIOLATIONS_MAX && !self.violations.contains(&text) {
            self.violations.push(text);
        }
    }

    /// One live replica's status, as sampled now.
    pub fn replica(&mut self, r: &ReplicaStatus) {
        self.checked.replicas += 1;
        if r.group != 0 && r.node < 64 {
            self.checked.shard_hosts |= 1 << r.node;
        }
        let installed = self.installs.entry((r.node, r.group)).or_default();
        if r.snapshots_installed > *installed {
            self.checked.snapshots_installed += r.snapshots_installed - *installed;
        }
        // A restarted process counts from 0 again.
        *installed = r.snapshots_installed;
        // A committed index of 0 is not known yet (a restarted replica before it hears from a
        // leader), not a claim.
        if r.committed_index > 0 && r.applied_index > r.committed_index {
            self.violation(format!(
                "invariant: node {} group {} applied {} > committed {}",
                r.node, r.group, r.applied_index, r.committed_index
            ));
        }
        let c = self.committed.entry(r.group).or_default();
        *c = (*c).max(r.committed_index);
        if let Some((index, leader)) = &r.applied_log_id {
            let seen = self
                .applied
                .entry((r.group, *index))
                .or_insert_with(|| (leader.clone(), r.node))
                .clone();
            if seen.0 != *leader {
                self.violation(format!(
                    "invariant: group {} index {index}: node {} applied the entry of {}, node {} \
                     the entry of {leader}",
                    r.group, seen.1, seen.0, r.node
                ));
            }
        }
    }

    /// A client's current session token (empty: none yet).
    /// Node `id` holds `keys` keys of leaderless keyspaces.
    pub fn ring_keys(&mut self, id: u64, keys: u64) {
        if keys > 0 {
            self.checked.ring_hosts |= 1 << id;
        }
    }

    pub fn token(&mut self, client: usize, token: &str) {
        if token.is_empty() || self.seen_tokens.get(&client).is_some_and(|t| t == token) {
            return;
        }
        self.seen_tokens.insert(client, token.to_string());
        self.checked.tokens += 1;
        match self.key.decode(token) {
            Ok(session) => {
                for (group, mark) in session.groups() {
                    let pos = mark.written.0.max(mark.read.0);
                    let claim = self.claims.entry(group.0).or_insert((0, client));
                    if pos > claim.0 {
                        *claim = (pos, client);
                    }
                }
            }
            Err(e) => self.violation(format!(
                "invariant: client c{} holds a token the cluster's key rejects: {e}",
                client + 1
            )),
        }
    }

    /// Judges what can only be judged once the run is over, and returns every violation.
    pub fn finish(mut self) -> (Vec<String>, Checked) {
        let claims = std::mem::take(&mut self.claims);
        self.checked.claimed_groups = claims.len();
        for (group, (pos, client)) in claims {
            let committed = self.committed.get(&group).copied().unwrap_or(0);
            if pos > committed {
                self.violation(format!(
                    "invariant: client c{}'s session token claims position {pos} on group \
                     {group}, but no replica ever reported a committed index above {committed}",
                    client + 1
                ));
            }
        }
        (self.violations, self.checked)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tunekv_core::{GroupId, LogIndex, Session};

    const SECRET: &[u8] = b"tunekv-sim-test-secret-0123456789";

    fn replica(node: u64, leader: &str, applied: u64, committed: u64) -> ReplicaStatus {
        ReplicaStatus {
            group: 7,
            node,
            applied_index: applied,
            committed_index: committed,
            applied_log_id: Some((applied, leader.to_string())),
            ..ReplicaStatus::default()
        }
    }

    fn token(written: u64, read: u64) -> String {
        let mut s = Session::new();
        s.wrote(GroupId(7), LogIndex(written));
        s.read(GroupId(7), LogIndex(read));
        SessionKey::new(SECRET).expect("a key").encode(&s)
    }

    fn invariants() -> Invariants {
        Invariants::new(SessionKey::new(SECRET).expect("a key"))
    }

    #[test]
    fn a_correct_run_has_no_violations() {
        let mut inv = invariants();
        inv.replica(&replica(1, "T2-N1", 10, 12));
        inv.replica(&replica(2, "T2-N1", 9, 9));
        inv.replica(&replica(3, "T2-N1", 10, 10));
        inv.token(0, &token(12, 9));
        // The leader that knew of 12 crashed; the token is judged against what was reported.
        inv.replica(&replica(2, "T2-N1", 9, 9));
        assert_eq!(inv.finish().0, Vec::<String>::new());
    }

    #[test]
    fn applied_beyond_committed_is_caught() {
        let mut inv = invariants();
        inv.replica(&replica(1, "T2-N1", 13, 12));
        let v = inv.finish().0;
        assert!(v[0].contains("applied 13 > committed 12"), "{v:?}");
    }

    #[test]
    fn two_entries_applied_at_one_index_are_caught() {
        let mut inv = invariants();
        inv.replica(&replica(1, "T4-N1", 20, 20));
        inv.replica(&replica(2, "T4-N1", 20, 20));
        inv.replica(&replica(3, "T4-N3", 20, 20));
        let v = inv.finish().0;
        assert_eq!(v.len(), 1, "{v:?}");
        assert!(
            v[0].contains("index 20: node 1 applied the entry of T4-N1, node 3 the entry of T4-N3"),
            "{v:?}"
        );
    }

    #[test]
    fn a_token_beyond_every_committed_index_is_caught() {
        let mut inv = invariants();
        inv.replica(&replica(1, "T2-N1", 10, 10));
        inv.token(1, &token(3, 11));
        let v = inv.finish().0;
        assert!(v[0].contains("claims position 11 on group 7"), "{v:?}");
        assert!(v[0].contains("c2"), "{v:?}");
    }

    #[test]
    fn a_forged_token_is_caught() {
        let mut inv = invariants();
        let other = SessionKey::new(b"another-cluster-secret-000000000")
            .expect("a key")
            .encode(&Session::new());
        inv.token(0, &other);
        let v = inv.finish().0;
        assert!(v[0].contains("rejects"), "{v:?}");
    }
}
