//! Updates of conflict-free keyspaces (issue 17: `conflict: "counter"` so far): made at a
//! replica of the key — this node when it is one, else the first reachable one, to which the
//! update is forwarded — as a delta: the replica computes it from its own state under its lock
//! (its dot for the key is one past its last), joins it into that state, makes it durable, and
//! only then sends the delta to the other replicas (stand-ins keep it as a hint, joined into
//! any hint already kept). A replica therefore never hands out a dot it could forget in a
//! crash, and what travels is O(delta), not the whole value.

use super::leaderless::{lock, Spread};
use super::*;
use crate::rpc::{DynamoRequest, DynamoResponse, Update, Updated};
use futures::stream::{FuturesUnordered, StreamExt};
use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use tunekv_core::{Mode, Quorum, QuorumReceipt};
use tunekv_dynamo::causal::{Context, Dot};
use tunekv_dynamo::update::{make, UpdateError};
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
        // A siblings write supersedes what its context covers and the session's own last write
        // of the key (so one writer leaves one sibling, not one per write, with a context or
        // without); the session keeps that write's dot in its leaderless mark of the key (see
        // `pack_dot`).
        let hash = tunekv_core::session::key_hash(key);
        let update = match update {
            Update::Write {
                value,
                mut ctx,
                max,
            } => {
                if let Some((_, packed)) = session.leaderless(ks.id).required(hash) {
                    ctx.insert(unpack_dot(packed));
                }
                Update::Write { value, ctx, max }
            }
            other => other,
        };
        let ring = self.ring_of(ks)?;
        let preference = ring.preference_list(key, ks.spec.replicas as usize);
        // An add with a request id goes to the key's first reachable replica, wherever it
        // arrives: a retry through another node then meets the first attempt's id there (a
        // replica the first attempt's delta reached knows it too).
        let home = preference.iter().find(|p| self.peer_up(**p)).copied();
        let here = match &update {
            Update::Add { id: Some(_), .. } => home == Some(self.id),
            _ => preference.contains(&self.id),
        };
        // A remove drops what its replica has seen: it is made from a state that has seen
        // everything this session made or read of the key (writes follow reads).
        let clock = session.leaderless(ks.id).clock(hash).cloned();
        let updated = if here {
            self.update_here(ks, w, key, update, clock, deadline)
                .await?
        } else {
            let Some(target) = home else {
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
                clock,
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
        // Later reads at session levels need a state holding this update: its dots (or the
        // mark of a remove).
        session.saw_dots(
            ks.id,
            hash,
            updated.version.0,
            updated.dots.iter().copied().chain(updated.mark),
        );
        if let (Policy::Siblings, Some(&(node, counter))) =
            (self.policy_of(ks)?, updated.dots.first())
        {
            // The mark keeps the greater stamp; this write must replace the last one even if
            // its replica's clock stamped it lower.
            let last = session
                .leaderless(ks.id)
                .required(hash)
                .map_or(0, |(stamp, _)| stamp);
            session.saw_leaderless(
                ks.id,
                hash,
                (
                    updated.version.0.max(last.saturating_add(1)),
                    pack_dot(Dot { node, counter }),
                ),
                false,
            );
        }
        Ok(WriteOutcome {
            position: Position {
                shard: ShardId(updated.partition),
                index: LogIndex(0),
                commit_ms: Hlc::millis(updated.version.0),
            },
            existed: updated.existed,
            result: CommandResult {
                changed: !updated.duplicate,
                int: updated.int,
                ..CommandResult::unchanged(updated.existed)
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
            update: Some(UpdateReport {
                added: updated.added,
                removed: updated.removed,
                dots: updated.dots,
                removed_dots: updated.removed_dots,
                covered: updated.covered.as_ref().map(Context::entries),
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
        clock: Option<BTreeMap<u64, u64>>,
        deadline: Instant,
    ) -> Pin<Box<dyn Future<Output = Result<Updated, TunekvError>> + Send + 'a>> {
        Box::pin(self.update_here(ks, w, key, update, clock, deadline))
    }

    /// Before a session's remove here: joins what the key's other reachable replicas hold of
    /// `key` into this replica's state until it covers the session's dot clock `clock`, so the
    /// remove drops every dot of its members the session has seen. `session_unmet` (nothing
    /// written) when they cannot.
    async fn catch_up(
        &self,
        ks: &KeyspaceInfo,
        key: &[u8],
        clock: &BTreeMap<u64, u64>,
        deadline: Instant,
    ) -> Result<(), TunekvError> {
        let replica = self.replica_of(ks)?;
        let covered = || {
            lock(&replica)
                .get(key)
                .and_then(|v| v.stored.context())
                .map_or(clock.values().all(|c| *c == 0), |c| c.covers(clock))
        };
        if covered() {
            return Ok(());
        }
        let me = self.me()?;
        let wait = deadline.saturating_duration_since(Instant::now());
        let mut calls: FuturesUnordered<_> = self
            .ring_of(ks)?
            .preference_list(key, ks.spec.replicas as usize)
            .into_iter()
            .filter(|p| *p != self.id && self.peer_up(*p))
            .map(|node| {
                let req = DynamoRequest::Fetch {
                    ks: ks.name.clone(),
                    key: key.to_vec(),
                };
                me.clone().dynamo_call(node, req, wait)
            })
            .collect();
        while let Ok(Some(reply)) = tokio::time::timeout_at(deadline, calls.next()).await {
            if let Ok(DynamoResponse::Held(Some(v))) = reply {
                self.store_local(ks, &[(key.to_vec(), v)], false).await?;
                if covered() {
                    return Ok(());
                }
            }
        }
        let entries: Vec<String> = clock.iter().map(|(n, c)| format!("{n}:{c}")).collect();
        Err(err(
            Code::SessionUnmet,
            format!(
                "a remove drops what its replica has seen, and this session has seen dots {} of \
                 the key that neither node {} nor a replica it reaches holds now; the remove \
                 did not happen (retry once the partition heals)",
                entries.join(","),
                self.id
            ),
        ))
    }

    /// Makes `update` here, at a replica of `key`, and replicates its delta at quorum `w`.
    pub(super) async fn update_here(
        &self,
        ks: &KeyspaceInfo,
        w: Option<Quorum>,
        key: &[u8],
        update: Update,
        clock: Option<BTreeMap<u64, u64>>,
        deadline: Instant,
    ) -> Result<Updated, TunekvError> {
        if ks.spec.mode != Mode::Leaderless {
            return Err(internal(format!(
                "{:?} is not a leaderless keyspace",
                ks.name
            )));
        }
        if !update.fits(self.policy_of(ks)?) {
            return Err(update_error(ks, &update, UpdateError::WrongType));
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
        if let (Some(clock), true) = (&clock, update.removes()) {
            self.catch_up(ks, key, clock, deadline).await?;
        }
        // Under the replica's lock: the delta from this replica's state (read in place, never
        // copied), joined into it, on disk before anyone else sees its dots.
        let replica = self.replica_of(ks)?;
        let (item, made, existed) = {
            let mut r = lock(&replica);
            let held = r.get(key);
            let floor = held.map_or(0, |h| h.version.hlc.saturating_add(1));
            let hlc = self.dynamo.stamps.stamp_above(self.clock.wall_ms(), floor);
            let version = Version {
                hlc,
                node: self.id.0,
            };
            let existed = held.is_some_and(|h| h.stored.live_at(self.clock.wall_ms()));
            let made = match make(held.map(|h| &h.stored), self.id.0, hlc, &update) {
                Ok(Some(made)) => made,
                Ok(None) => {
                    // A retry of an update this replica has applied (or a clear of nothing):
                    // nothing to write.
                    let int = match held.map(|h| &h.stored) {
                        Some(Stored::Counter(c)) => c.value() as i64,
                        _ => 0,
                    };
                    return Ok(Updated {
                        version: held.map_or((0, 0), |h| (h.version.hlc, h.version.node)),
                        dots: Vec::new(),
                        removed_dots: Vec::new(),
                        added: 0,
                        removed: 0,
                        covered: None,
                        mark: None,
                        partition: ring.partition_of(key),
                        int,
                        existed,
                        duplicate: true,
                        asked: 0,
                        answered: 0,
                        strict: true,
                        hinted: 0,
                        quorum: w,
                    });
                }
                Err(e) => return Err(update_error(ks, &update, e)),
            };
            let item = Versioned {
                version,
                stored: made.delta.clone(),
            };
            if let Some(applied) = r.apply(key, &item) {
                let now = r
                    .get(key)
                    .ok_or_else(|| internal("an applied update left nothing held"))?;
                self.persist(ks, key, now, &applied)?;
            }
            self.dynamo.stamps.observe(hlc);
            (item, made, existed)
        };
        self.commit.sync().await.map_err(internal)?;
        // While the ring changes, the new ring's replicas get the delta before it is counted.
        self.forward_stored(ks, &[(key.to_vec(), item.clone())], &[0])
            .await?;
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
        let pair = |d: &tunekv_dynamo::causal::Dot| (d.node, d.counter);
        Ok(Updated {
            version: (item.version.hlc, item.version.node),
            dots: made.dots.iter().map(pair).collect(),
            removed_dots: made.removed_dots.iter().map(pair).collect(),
            added: made.added,
            removed: made.removed,
            covered: made.covered,
            mark: made.mark.as_ref().map(pair),
            partition: ring.partition_of(key),
            int: made.int,
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

/// The typed error of a refused update (it changed nothing).
fn update_error(ks: &KeyspaceInfo, update: &Update, e: UpdateError) -> TunekvError {
    let policy = ks.spec.conflict.as_deref().unwrap_or("lww");
    match e {
        UpdateError::WrongType => err(
            Code::WrongType,
            format!(
                "Operation against a key holding the wrong kind of value: {:?} is a keyspace of \
                 {policy} values, this update applies to {} values",
                ks.name,
                update.applies_to()
            ),
        ),
        UpdateError::Overflow => err(
            Code::Overflow,
            "increment or decrement would overflow a signed 64-bit integer; the value is \
             unchanged",
        ),
        UpdateError::NotInteger => err(
            Code::NotInteger,
            "hash value is not an integer; the field is unchanged",
        ),
        UpdateError::Invalid(why) => err(Code::BadRequest, why),
        UpdateError::TooManySiblings { max } => err(
            Code::TooManySiblings,
            format!(
                "the key would hold more than {max} concurrent values (the keyspace's \
                 siblings_max); read it and write with the context you read, which replaces \
                 what you saw; nothing was written"
            ),
        ),
    }
}

/// A dot kept in a session's leaderless mark, whose second field is a version's node id
/// elsewhere: the node in the top 16 bits, the counter in the low 48 (siblings keyspaces only,
/// whose session reads go by the dot clock, so nothing reads it as a version).
pub(super) fn pack_dot(d: Dot) -> u64 {
    (d.node << 48) | (d.counter & ((1 << 48) - 1))
}

pub(super) fn unpack_dot(packed: u64) -> Dot {
    Dot {
        node: packed >> 48,
        counter: packed & ((1 << 48) - 1),
    }
}

/// The domain causal contexts are sealed under (never valid as a session token or anything
/// else sealed with the cluster secret).
pub(crate) const CONTEXT_DOMAIN: &[u8] = b"tunekv-context-v1";
/// The longest context text accepted.
pub const CONTEXT_CHARS_MAX: usize = 64 * 1024;

impl Node {
    /// The opaque causal context a client gets with a read of `key` (and sends back with a
    /// write): the context, the keyspace and the key's hash, signed with the cluster secret.
    pub fn seal_context(&self, ks: &KeyspaceInfo, key: &[u8], ctx: &Context) -> String {
        let body = (ks.id, tunekv_core::session::key_hash(key), ctx);
        // Serializing integers and a context into a Vec cannot fail.
        let bytes = postcard::to_stdvec(&body).unwrap_or_default();
        self.session_key().seal(CONTEXT_DOMAIN, &bytes)
    }

    /// The context a client sent with a write of `key`: `context_invalid` when it is not one
    /// this cluster sealed for this key of this keyspace.
    pub fn open_context(
        &self,
        ks: &KeyspaceInfo,
        key: &[u8],
        text: &str,
    ) -> Result<Context, TunekvError> {
        open_context_with(self.session_key(), ks.id, &ks.name, key, text)
    }
}

/// [`Node::open_context`] with the cluster's `secret`, for keyspace `ks_id` (named `ks_name`).
pub(crate) fn open_context_with(
    secret: &tunekv_core::session::SessionKey,
    ks_id: u64,
    ks_name: &str,
    key: &[u8],
    text: &str,
) -> Result<Context, TunekvError> {
    let invalid = |why: String| {
        err(
            Code::ContextInvalid,
            format!("invalid causal context: {why}; send the one a read of this key returned"),
        )
    };
    let bytes = secret
        .open(CONTEXT_DOMAIN, text, CONTEXT_CHARS_MAX)
        .map_err(invalid)?;
    let (id, hash, ctx): (u64, u64, Context) =
        postcard::from_bytes(&bytes).map_err(|_| invalid("undecodable".into()))?;
    if id != ks_id || hash != tunekv_core::session::key_hash(key) {
        return Err(invalid(format!(
            "it was issued for another key or keyspace than {:?} of {:?}",
            String::from_utf8_lossy(key),
            ks_name
        )));
    }
    Ok(ctx)
}
