//! Ring changes of leaderless and volatile keyspaces (issue 21): hand off, then drop.
//!
//! When the cluster's active nodes differ from a keyspace's ring (a node was added, or one is
//! draining), the metadata leader records the new ring as the placement's `ring_target`. From
//! the moment a node of the old ring sees it:
//! 1. every version it stores for the keyspace that changes its replica is forwarded to the
//!    key's preference nodes on the new ring before the store is answered
//!    ([`Node::forward_stored`]), so no write acknowledged on the old ring misses the new
//!    one, whichever coordinator sent it and whatever that coordinator's catalog says (after
//!    the change, a node still sends on what it stores of keys it no longer replicates);
//! 2. it hands off: sends every version it holds to the keys' new preference nodes, then
//!    records `ringhandoff/<keyspace>/<node>` = the change's placement version.
//!
//! Reads and writes keep using the old ring meanwhile (it holds everything). Once every node of
//! the old ring has handed off — a leaving node the leader cannot reach is skipped: its keys have
//! copies on the others — the leader makes the target the ring. Requests follow the new ring;
//! `DROP_GRACE` later (requests that began on the old ring are done) each node sends the
//! partitions it no longer replicates to their preference nodes once more, then forgets them.
//! Hints for a node that no longer replicates their key are re-homed to the key's replicas.

use super::leaderless::lock;
use super::*;
use crate::rpc::{DynamoRequest, DynamoResponse};
use tunekv_core::placement::{next_ring, NodeState, Placement};
use tunekv_core::Mode;
use tunekv_dynamo::{Ring, Versioned};

const HANDOFF_PREFIX: &[u8] = b"ringhandoff/";
/// How often each node looks at its rings.
const RING_EVERY: Duration = Duration::from_millis(500);
/// How long partitions a ring change took away are kept before they are dropped.
const DROP_GRACE: Duration = Duration::from_secs(3);
/// One handoff call's versions: at most this many, or this many bytes.
const HANDOFF_BATCH_ITEMS: usize = 512;
const HANDOFF_BATCH_BYTES: u64 = 1 << 20;
/// How long one handoff call, or one forwarded copy, may take.
const HANDOFF_CALL_WAIT: Duration = Duration::from_secs(10);
const FORWARD_WAIT: Duration = Duration::from_secs(2);

fn handoff_key(name: &str, node: u64) -> Vec<u8> {
    let mut k = HANDOFF_PREFIX.to_vec();
    k.extend_from_slice(name.as_bytes());
    k.push(b'/');
    k.extend_from_slice(node.to_string().as_bytes());
    k
}

impl Node {
    /// Every `RING_EVERY`: hands off the keyspaces whose ring is changing, drops partitions a
    /// finished change took away, and re-homes hints.
    pub(super) async fn ring_loop(self: Arc<Self>) {
        loop {
            tokio::time::sleep(RING_EVERY).await;
            for ks in self.list_keyspaces() {
                if ks.spec.mode == Mode::Ordered {
                    continue;
                }
                if let Err(e) = self.ring_round(&ks).await {
                    tracing::warn!(keyspace = %ks.name, error = %e.message, "ring change step failed; retrying");
                }
            }
            if let Err(e) = self.rehome_hints_on_ring_change().await {
                tracing::warn!(error = %e.message, "cannot re-home hints; retrying");
            }
        }
    }

    async fn ring_round(&self, ks: &KeyspaceInfo) -> Result<(), TunekvError> {
        let state = self.ring_state(ks);
        let Some((next, version)) = state.target else {
            return self.drop_foreign(ks).await;
        };
        lock(&self.ring_drops).remove(&ks.id);
        if !state.current.contains(&self.id)
            || self.handoff_of(&ks.name, self.id.0) == Some(version)
        {
            return Ok(());
        }
        let ring = Ring::of_spec(&next, &ks.spec).map_err(internal)?;
        let old = Ring::of_spec(&state.current, &ks.spec).map_err(internal)?;
        // Taken after the target was seen: whatever is stored from now on is forwarded.
        let entries = lock(&*self.replica_of(ks)?).entries();
        let keys = entries.len();
        tracing::info!(keyspace = %ks.name, keys, to = ?next, "ring change: handing off");
        let sent = self.push_versions(ks, &ring, Some(&old), entries).await?;
        let deadline = Instant::now() + Duration::from_secs(10);
        self.meta_write(
            Op::Put {
                key: handoff_key(&ks.name, self.id.0),
                value: version.to_string().into_bytes(),
            },
            deadline,
        )
        .await?;
        tracing::info!(keyspace = %ks.name, keys, sent, "ring change: handed off");
        Ok(())
    }

    /// The placement version of the ring change node `node` handed `name` off for, if any.
    fn handoff_of(&self, name: &str, node: u64) -> Option<u64> {
        let v = self.meta_get(&handoff_key(name, node))?;
        std::str::from_utf8(&v.value).ok()?.parse().ok()
    }

    /// Sends each version to its key's preference nodes on `ring` (this node left out), in
    /// batches; every batch must be stored (an error stops here: the caller tries again).
    /// With `old` (a ring change's handoff), a key this node replicates on `old` goes only to
    /// the nodes its list gains: those on both lists hold their own copies, and every old
    /// replica sends to the new ones, so a write a quorum of the old list held is held by as
    /// many of the new. Keys it holds but does not replicate on `old` (sent on by a coordinator
    /// with an older ring) still go to the whole list.
    /// Returns how many copies it sent.
    async fn push_versions(
        &self,
        ks: &KeyspaceInfo,
        ring: &Ring,
        old: Option<&Ring>,
        entries: Vec<(Vec<u8>, Versioned)>,
    ) -> Result<u64, TunekvError> {
        if self.config.bugs.ring_no_handoff() {
            return Ok(0);
        }
        let n = ks.spec.replicas as usize;
        let mut by_node: BTreeMap<NodeId, Vec<(Vec<u8>, Versioned)>> = BTreeMap::new();
        let mut sent = 0u64;
        for (key, v) in entries {
            // The argument needs lists of N on both rings: a ring that shrank below N nodes
            // (removals racing) gets every key sent to its whole new list.
            let full = ring.nodes().len() >= n && old.is_some_and(|o| o.nodes().len() >= n);
            let before = old.filter(|_| full).map(|o| o.preference_list(&key, n));
            let to = match before {
                Some(before) if before.contains(&self.id) => ring.gained_from(&before, &key, n),
                _ => ring.preference_list(&key, n),
            };
            for node in to {
                if node != self.id {
                    sent += 1;
                    by_node
                        .entry(node)
                        .or_default()
                        .push((key.clone(), v.clone()));
                }
            }
        }
        let me = self.me()?;
        for (node, items) in by_node {
            let mut batch = Vec::new();
            let mut bytes = 0u64;
            let mut items = items.into_iter().peekable();
            while let Some((key, v)) = items.next() {
                bytes += (key.len() + v.stored.len()) as u64;
                batch.push((key, v));
                if batch.len() >= HANDOFF_BATCH_ITEMS
                    || bytes >= HANDOFF_BATCH_BYTES
                    || items.peek().is_none()
                {
                    let req = DynamoRequest::Store {
                        ks: ks.name.clone(),
                        items: std::mem::take(&mut batch),
                        fresh: false,
                        hint_for: None,
                    };
                    match me.clone().dynamo_call(node, req, HANDOFF_CALL_WAIT).await {
                        Ok(DynamoResponse::Stored { .. }) => {}
                        Ok(_) => return Err(internal(format!("node {node}: unexpected answer"))),
                        Err((_, m)) => {
                            return Err(err(
                                Code::Unavailable,
                                format!(
                                    "cannot hand versions of {:?} to node {node}: {m}",
                                    ks.name
                                ),
                            ))
                        }
                    }
                    bytes = 0;
                }
            }
        }
        Ok(sent)
    }

    /// Sends on the versions this node just stored (`items` at the positions `changed`) that
    /// the ring needs elsewhere, before the store that brought them is answered:
    /// - while `ks`'s ring changes and this node is in the old ring: every one, to its key's
    ///   preference nodes on the new ring;
    /// - otherwise, those of keys this node does not replicate (sent by a coordinator whose
    ///   catalog has an older ring), to their keys' preference nodes.
    ///
    /// So a write acknowledged on either ring is on the ring that reads see. A node that does
    /// not take its copy gets a hint (leaderless keyspaces; a volatile copy is best effort).
    pub(super) async fn forward_stored(
        &self,
        ks: &KeyspaceInfo,
        items: &[(Vec<u8>, Versioned)],
        changed: &[usize],
    ) -> Result<(), TunekvError> {
        if changed.is_empty() || self.config.bugs.ring_no_handoff() {
            return Ok(());
        }
        let state = self.ring_state(ks);
        let current = Ring::of_spec(&state.current, &ks.spec).map_err(internal)?;
        let next = match &state.target {
            Some((t, _)) => Some(Ring::of_spec(t, &ks.spec).map_err(internal)?),
            None => None,
        };
        let handing_off = next.is_some() && state.current.contains(&self.id);
        let n = ks.spec.replicas as usize;
        let mut by_node: BTreeMap<NodeId, Vec<(Vec<u8>, Versioned)>> = BTreeMap::new();
        for (key, v) in changed.iter().filter_map(|i| items.get(*i)) {
            let to = match &next {
                Some(next) if handing_off => next.preference_list(key, n),
                _ => {
                    let pref = current.preference_list(key, n);
                    let home = pref.contains(&self.id)
                        || next
                            .as_ref()
                            .is_some_and(|r| r.preference_list(key, n).contains(&self.id));
                    if home {
                        continue;
                    }
                    pref
                }
            };
            for node in to {
                if node != self.id {
                    by_node
                        .entry(node)
                        .or_default()
                        .push((key.clone(), v.clone()));
                }
            }
        }
        if by_node.is_empty() {
            return Ok(());
        }
        let me = self.me()?;
        let calls = by_node.into_iter().map(|(node, items)| {
            let me = me.clone();
            let req = DynamoRequest::Store {
                ks: ks.name.clone(),
                items: items.clone(),
                fresh: false,
                hint_for: None,
            };
            async move {
                // A node the failure detector holds down gets a hint at once: every store
                // would wait for it otherwise.
                let reply = if me.peer_up(node) {
                    me.dynamo_call(node, req, FORWARD_WAIT).await
                } else {
                    Err((None, format!("node {node} looks down")))
                };
                (node, items, reply)
            }
        });
        let mut hinted = false;
        for (node, items, reply) in futures::future::join_all(calls).await {
            if matches!(reply, Ok(DynamoResponse::Stored { .. }))
                || ks.spec.mode != Mode::Leaderless
            {
                continue;
            }
            for (key, v) in &items {
                self.store_hint(node, ks, key, v)?;
            }
            hinted = true;
        }
        if hinted {
            self.commit.sync().await.map_err(internal)?;
        }
        Ok(())
    }

    /// Partitions of `ks` this node holds but its ring no longer gives it: `DROP_GRACE` after
    /// they are first seen, sent to their preference nodes once more, then forgotten.
    async fn drop_foreign(&self, ks: &KeyspaceInfo) -> Result<(), TunekvError> {
        if !self.holds_replica(ks) {
            return Ok(());
        }
        let ring = self.ring_of(ks)?;
        let (partitions, entries) = self.foreign_entries(ks, &ring)?;
        if partitions.is_empty() {
            lock(&self.ring_drops).remove(&ks.id);
            return Ok(());
        }
        let first = *lock(&self.ring_drops)
            .entry(ks.id)
            .or_insert_with(Instant::now);
        if first.elapsed() < DROP_GRACE {
            return Ok(());
        }
        let keys = entries.len();
        self.push_versions(ks, &ring, None, entries.clone()).await?;
        let forgotten = self.forget_versions(ks, &partitions, &entries)?;
        lock(&self.ring_drops).remove(&ks.id);
        tracing::info!(
            keyspace = %ks.name,
            partitions = partitions.len(),
            keys,
            forgotten,
            "ring change: partitions this node no longer replicates handed off and dropped"
        );
        Ok(())
    }

    /// On the metadata leader: finishes the ring change in flight once every node of the old
    /// ring has handed off, or starts the next one. `Ok(None)`: nothing to do; `Ok(Some(false))`:
    /// a change is in flight and waits (no other starts).
    pub(super) async fn ring_step(
        &self,
        active: &[NodeId],
        deadline: Instant,
    ) -> Result<Option<bool>, TunekvError> {
        let keyspaces: Vec<KeyspaceInfo> = self
            .list_keyspaces()
            .into_iter()
            .filter(|k| k.spec.mode != Mode::Ordered)
            .collect();
        let records = self.node_records();
        for ks in &keyspaces {
            let (p, version) = self.placement_versioned(ks);
            let Some(target) = &p.ring_target else {
                continue;
            };
            if let Some(gone) = target
                .iter()
                .find(|n| records.get(n).is_some_and(|r| r.state != NodeState::Active))
            {
                // A node of the new ring is leaving (or gone): this change cannot finish. The
                // ring stays; the next change is planned over the active nodes. Copies the
                // change sent to new nodes are theirs to hand back and drop.
                let next = Placement {
                    ring_target: None,
                    ..p.clone()
                };
                self.put_placement(&ks.name, &next, version, deadline)
                    .await?;
                tracing::warn!(keyspace = %ks.name, node = gone, "ring change abandoned: a node of the new ring is leaving");
                return Ok(Some(true));
            }
            let mut waiting = Vec::new();
            for &n in &p.ring {
                if self.handoff_of(&ks.name, n) == Some(version) {
                    continue;
                }
                let leaving = !target.contains(&n)
                    && records
                        .get(&n)
                        .is_some_and(|r| r.state != NodeState::Active);
                if leaving && !self.answers(ks, NodeId(n)).await {
                    tracing::warn!(keyspace = %ks.name, node = n, "ring change: a leaving node does not answer; its keys' other copies were handed off");
                    continue;
                }
                waiting.push(n);
            }
            if !waiting.is_empty() {
                return Ok(Some(false));
            }
            let next = Placement {
                ring: target.clone(),
                ring_target: None,
                ..p.clone()
            };
            self.put_placement(&ks.name, &next, version, deadline)
                .await?;
            tracing::info!(keyspace = %ks.name, from = ?p.ring, ring = ?target, "ring changed");
            return Ok(Some(true));
        }
        for ks in &keyspaces {
            let (p, version) = self.placement_versioned(ks);
            if version == 0 {
                // Placements are stored before the first membership change.
                continue;
            }
            let Some(target) = next_ring(active, &p.ring, ks.spec.partitions()) else {
                continue;
            };
            let next = Placement {
                ring_target: Some(target.clone()),
                ..p.clone()
            };
            tracing::info!(keyspace = %ks.name, from = ?p.ring, to = ?target, "ring change: starting");
            self.put_placement(&ks.name, &next, version, deadline)
                .await?;
            return Ok(Some(true));
        }
        Ok(None)
    }

    /// Re-homes hints (see [`Node::rehome_hints`]) when a leaderless ring changed since the
    /// last time (and once after start): a hint kept later is made against the ring of its
    /// time, and what a stale one leaves on a node that no longer replicates its key is handed
    /// on by that node's drop.
    async fn rehome_hints_on_ring_change(&self) -> Result<(), TunekvError> {
        let rings: HashMap<u64, Vec<NodeId>> = self
            .list_keyspaces()
            .into_iter()
            .filter(|k| k.spec.mode == Mode::Leaderless)
            .map(|k| {
                let s = self.ring_state(&k);
                // A change in flight counts as a ring of its own: once it is done, the ring
                // differs again.
                let mut nodes = s.current;
                nodes.extend(s.target.map(|(t, _)| t).unwrap_or_default());
                (k.id, nodes)
            })
            .collect();
        if *lock(&self.rings_rehomed) == Some(rings.clone()) {
            return Ok(());
        }
        self.rehome_hints().await?;
        *lock(&self.rings_rehomed) = Some(rings);
        Ok(())
    }

    /// Whether `node` answers a call about `ks` now (any answer counts).
    async fn answers(&self, ks: &KeyspaceInfo, node: NodeId) -> bool {
        let Ok(me) = self.me() else { return false };
        let req = DynamoRequest::Fetch {
            ks: ks.name.clone(),
            key: Vec::new(),
        };
        match me.dynamo_call(node, req, Duration::from_secs(1)).await {
            Ok(_) => true,
            Err((code, _)) => code.is_some(),
        }
    }
}
