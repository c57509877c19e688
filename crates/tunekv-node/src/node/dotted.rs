//! Updates of conflict-free keyspaces (issue 17: `conflict: "counter"` so far): made at a
//! replica of the key — this node when it is one, else the first reachable one, to which the
//! update is forwarded — as a delta: the replica computes it from its own state under its lock
//! (its dot for the key is one past its last), joins it into that state, makes it durable, and
//! only then sends the delta to the other replicas (stand-ins keep it as a hint, joined into
//! any hint already kept). A replica therefore never hands out a dot it could forget in a
//! crash, and what travels is O(delta), not the whole value.

use super::leaderless::{encode, lock, Spread};
use super::*;
use crate::rpc::{DynamoRequest, DynamoResponse, Update, Updated};
use std::future::Future;
use std::pin::Pin;
use tunekv_core::{Mode, Quorum, QuorumReceipt};
use tunekv_dynamo::crdt::{Counter, CounterError};
use tunekv_dynamo::{Policy, Stored, Version, Versioned};

/// How long past the forwarded update's own budget the forwarding node waits for the answer.
const FORWARD_SLACK: Duration = Duration::from_millis(500);

impl Node {
    /// The conflict policy of a leaderless keyspace.
    pub(super) fn policy_of(&self, ks: &KeyspaceInfo) -> Result<Policy, TunekvError> {
        Policy::named(ks.spec.conflict.as_deref()).map_err(internal)
    }

    /// Makes `update` on `key` of a conflict-free keyspace at write quorum `w`.
    pub(super) async fn dynamo_update(
        &self,
        ks: &KeyspaceInfo,
        w: Option<Quorum>,
        key: &[u8],
        update: Update,
        deadline: Instant,
        session: &mut Session,
    ) -> Result<WriteOutcome, TunekvError> {
        check_key(key)?;
        session.admit_leaderless(ks.id)?;
        let ring = self.ring_of(ks)?;
        let preference = ring.preference_list(key, ks.spec.replicas as usize);
        let updated = if preference.contains(&self.id) {
            self.update_here(ks, w, key, update, deadline).await?
        } else {
            let Some(&target) = preference.iter().find(|p| self.peer_up(**p)) else {
                return Err(err(
                    Code::NoQuorum,
                    format!(
                        "updates of {} keyspace {:?} are made at a replica of the key, and node \
                         {} reaches none of its replicas ({}) now; the update did not happen",
                        ks.spec.conflict.as_deref().unwrap_or("?"),
                        ks.name,
                        self.id,
                        preference
                            .iter()
                            .map(ToString::to_string)
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                ));
            };
            let wait = deadline.saturating_duration_since(Instant::now());
            let req = DynamoRequest::Update {
                ks: ks.name.clone(),
                key: key.to_vec(),
                update,
                w,
                wait_ms: wait.as_millis() as u64,
            };
            match self
                .me()?
                .dynamo_call(target, req, wait + FORWARD_SLACK)
                .await
            {
                Ok(DynamoResponse::Updated(u)) => u,
                Ok(_) => return Err(internal("unexpected answer to a forwarded update")),
                Err((Some(code), m)) => return Err(err(code, m)),
                Err((None, m)) => {
                    return Err(err(
                        Code::Timeout,
                        format!(
                            "the update was forwarded to node {target}, a replica of the key, \
                             whose answer did not arrive ({m}); it may or may not have happened"
                        ),
                    ))
                }
            }
        };
        Ok(WriteOutcome {
            position: Position {
                shard: ShardId(updated.partition),
                index: LogIndex(0),
                commit_ms: Hlc::millis(updated.version.0),
            },
            existed: updated.existed,
            result: CommandResult {
                existed: updated.existed,
                changed: !updated.duplicate,
                current: None,
                old: None,
                int: updated.int,
                error: None,
            },
            quorum: Some(QuorumReceipt {
                quorum: updated.quorum,
                asked: updated.asked,
                answered: updated.answered,
                strict: updated.strict,
                hinted: updated.hinted,
                version: Some(updated.version),
                durable: true,
            }),
        })
    }

    /// [`Node::update_here`] for an update another node forwarded, boxed with its `Send`
    /// bound spelled out: the update replicates through `dynamo_call`, whose handler for
    /// forwarded updates comes back here, and the compiler cannot see through that cycle.
    pub(super) fn forwarded_update<'a>(
        &'a self,
        ks: &'a KeyspaceInfo,
        w: Option<Quorum>,
        key: &'a [u8],
        update: Update,
        deadline: Instant,
    ) -> Pin<Box<dyn Future<Output = Result<Updated, TunekvError>> + Send + 'a>> {
        Box::pin(self.update_here(ks, w, key, update, deadline))
    }

    /// Makes `update` here, at a replica of `key`, and replicates its delta at quorum `w`.
    pub(super) async fn update_here(
        &self,
        ks: &KeyspaceInfo,
        w: Option<Quorum>,
        key: &[u8],
        update: Update,
        deadline: Instant,
    ) -> Result<Updated, TunekvError> {
        if ks.spec.mode != Mode::Leaderless {
            return Err(internal(format!(
                "{:?} is not a leaderless keyspace",
                ks.name
            )));
        }
        let w = w.unwrap_or(Quorum::Quorum);
        if let ClockHealth::Skewed(why) = self.clock_health() {
            return Err(err(
                Code::ClockSkew,
                format!(
                    "node {} makes no updates while its clock is not trusted: {why}; send the \
                     update to another node",
                    self.id
                ),
            ));
        }
        let n = ks.spec.replicas;
        let ring = self.ring_of(ks)?;
        let need = w.count(n) as usize;
        let preference = ring.preference_list(key, n as usize);
        let placements: Vec<tunekv_dynamo::Placement> = ring
            .placements(key, n as usize, |p| self.peer_up(p))
            .into_iter()
            .filter(|pl| pl.node != self.id)
            .collect();
        // This replica's own copy counts once it is durable.
        let possible = 1 + match w {
            Quorum::All => placements.iter().filter(|p| p.hint_for.is_none()).count(),
            _ => placements.len(),
        };
        if possible < need && w != Quorum::Any {
            return Err(err(
                Code::NoQuorum,
                format!(
                    "w={w} needs {need} of the key's {n} replicas but node {} reaches only \
                     {possible} of them (or substitutes) now; the update did not happen",
                    self.id
                ),
            ));
        }
        // Under the replica's lock: the delta from this replica's state, joined into it, on
        // disk before anyone else sees its dot.
        let replica = self.replica_of(ks)?;
        let (item, merged, existed) = {
            let mut r = lock(&replica);
            let held = r.get(key).cloned();
            let floor = held.as_ref().map_or(0, |h| h.version.hlc.saturating_add(1));
            let hlc = self.dynamo.stamps.stamp_above(self.clock.wall_ms(), floor);
            let version = Version {
                hlc,
                node: self.id.0,
            };
            let delta = match (&update, held.as_ref().map(|h| &h.stored)) {
                (Update::Add { by, id }, None) => Counter::new().add(self.id.0, *by, hlc, *id),
                (Update::Add { by, id }, Some(Stored::Counter(c))) => {
                    c.add(self.id.0, *by, hlc, *id)
                }
                (Update::Add { .. }, Some(_)) => {
                    return Err(err(
                        Code::WrongType,
                        "Operation against a key holding the wrong kind of value",
                    ))
                }
            };
            let delta = match delta {
                Ok(Some(d)) => d,
                Ok(None) => {
                    // A retry of an update this replica has applied: nothing to write.
                    let int = match held.as_ref().map(|h| &h.stored) {
                        Some(Stored::Counter(c)) => c.value() as i64,
                        _ => 0,
                    };
                    return Ok(Updated {
                        version: held
                            .as_ref()
                            .map_or((0, 0), |h| (h.version.hlc, h.version.node)),
                        dot: (self.id.0, 0),
                        partition: ring.partition_of(key),
                        int,
                        existed: true,
                        duplicate: true,
                        asked: 0,
                        answered: 0,
                        strict: true,
                        hinted: 0,
                        quorum: w,
                    });
                }
                Err(CounterError::Overflow) => {
                    return Err(err(
                        Code::Overflow,
                        "increment or decrement would overflow a signed 64-bit integer; the \
                         counter is unchanged",
                    ))
                }
            };
            let item = Versioned {
                version,
                stored: Stored::Counter(delta),
            };
            r.apply(key, &item);
            let merged = r.get(key).cloned().unwrap_or_else(|| item.clone());
            self.storage
                .put_record(ks.id, key, Some(&encode(&merged)?))
                .map_err(internal)?;
            self.dynamo.stamps.observe(hlc);
            (item, merged, held.is_some())
        };
        self.commit.sync().await.map_err(internal)?;
        let int = match &merged.stored {
            Stored::Counter(c) => c.value() as i64,
            _ => 0,
        };
        let dot = match &item.stored {
            Stored::Counter(d) => d
                .context()
                .dots()
                .next()
                .map_or((self.id.0, 0), |d| (d.node, d.counter)),
            _ => (self.id.0, 0),
        };
        // This replica's copy counts as one; the delta travels as a repair would (`fresh:
        // false`): its stamp decides no conflict, so a replica's clock check has nothing to
        // guard, and the update is already made here.
        let Spread {
            strict,
            sloppy,
            hinted,
            met: ok,
            problems,
            ..
        } = self
            .spread(
                ks,
                (key, &item),
                (&preference, &placements),
                (1, w, need),
                deadline,
                false,
            )
            .await?;
        if !ok {
            return Err(err(
                Code::NoQuorum,
                format!(
                    "w={w} needs {need} of the key's {n} replicas; {} held the update within the \
                     wait budget (node {} made it, durably). It is not rolled back and will \
                     spread ({})",
                    strict + sloppy,
                    self.id,
                    problems.join("; ")
                ),
            ));
        }
        Ok(Updated {
            version: (item.version.hlc, item.version.node),
            dot,
            partition: ring.partition_of(key),
            int,
            existed,
            duplicate: false,
            asked: placements.len() as u32 + 1,
            answered: (strict + sloppy) as u32,
            strict: sloppy == 0,
            hinted,
            quorum: w,
        })
    }
}
