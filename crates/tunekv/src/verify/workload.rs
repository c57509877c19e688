//! The clients of `verify`: each runs its own session over HTTP or RESP against random nodes,
//! reading at random levels and writing unique values to a small key set, and records every
//! operation with times from the one monotonic clock of the run.

use super::resp_client::{RespConn, Value};
use super::{Recorder, Target};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tunekv_check::{OpKind, Operation};
use tunekv_client::{Client, ClientError, Opts};

/// The keyspace `verify` works in.
pub const KEYSPACE: &str = "verify";
/// The keyspace of `verify --keyspace-mode leaderless`.
pub const KEYSPACE_LEADERLESS: &str = "verify_leaderless";
/// The keyspace of `verify --keyspace-mode counter` (leaderless, `conflict: "counter"`).
pub const KEYSPACE_COUNTER: &str = "verify_counter";
/// The keyspace of `verify --keyspace-mode set` (leaderless, `conflict: "set"`).
pub const KEYSPACE_SET: &str = "verify_set";
/// The keyspace of `verify --keyspace-mode siblings` (leaderless, `conflict: "siblings"`).
pub const KEYSPACE_SIBLINGS: &str = "verify_siblings";
/// The members set clients add and remove (few, so that adds and removes meet).
const SET_MEMBERS: u32 = 4;
/// Quorums a leaderless run draws from.
const READ_QUORUMS: [&str; 3] = ["one", "quorum", "all"];
const WRITE_QUORUMS: [&str; 4] = ["one", "quorum", "all", "any"];
/// Levels a leaderless run reads at.
const LEADERLESS_LEVELS: [&str; 4] = ["eventual", "read_your_writes", "monotonic_reads", "session"];
/// Every request's server-side wait budget, and the client's own limit past it.
pub const WAIT_MS: u64 = 1000;
pub const CLIENT_TIMEOUT: Duration = Duration::from_secs(3);
/// A RESP client moves to another node (carrying its session token) this often.
const RESP_OPS_PER_CONNECTION: u32 = 25;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Protocol {
    Http,
    Resp,
}

/// What a client needs to run.
pub struct ClientPlan {
    pub id: u64,
    pub protocol: Protocol,
    pub seed: u64,
    pub keys: Vec<String>,
    pub levels: Vec<String>,
    /// A leaderless keyspace: HTTP only, reads at a random level of [`LEADERLESS_LEVELS`] with
    /// a random `r`, writes with a random `w`, each recording its quorum and version.
    pub leaderless: bool,
    /// With `leaderless`: the counter keyspace, where writes add 1 to 9 and deletes subtract 1
    /// to 5.
    pub counter: bool,
    /// With `leaderless`: the set keyspace, where writes add a member (a third remove one).
    pub set: bool,
    /// With `leaderless`: the siblings keyspace, where reads return every concurrent value
    /// and its context, and writes go without a context or (a third) with the context the
    /// client last read of the key.
    pub siblings: bool,
    /// `--through-cache` (HTTP clients of the ordered keyspace): the cache's address; half of
    /// the client's operations go through it (recorded with node `cache`).
    pub cache: Option<String>,
}

/// Shared stop conditions: a flag (duration over) and an op budget.
pub struct Budget {
    pub stop: AtomicBool,
    pub ops_left: AtomicU64,
    pub done: AtomicU64,
    /// Operations refused (they certainly did nothing), for the progress line.
    pub refused: AtomicU64,
}

impl Budget {
    fn take(&self) -> bool {
        !self.stop.load(Ordering::Relaxed)
            && self
                .ops_left
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1))
                .is_ok()
    }
}

/// The outcome of one operation, before it is recorded.
struct Outcome {
    ok: Option<bool>,
    value: Option<String>,
    position: Option<String>,
    staleness: Option<(u64, u64)>,
    error: Option<String>,
    /// Leaderless runs: the quorum asked for, the version read or written, whether a write's
    /// acknowledgement was strict.
    quorum: Option<String>,
    version: Option<String>,
    strict: Option<bool>,
    /// Set updates: the dots the answer reported (history format).
    dots: Option<Vec<String>>,
}

impl Outcome {
    /// Acknowledged, with nothing recorded yet.
    fn done() -> Outcome {
        Outcome {
            ok: Some(true),
            value: None,
            position: None,
            staleness: None,
            error: None,
            quorum: None,
            version: None,
            strict: None,
            dots: None,
        }
    }

    fn failed(ok: Option<bool>, error: String) -> Outcome {
        Outcome {
            ok,
            error: Some(error),
            ..Outcome::done()
        }
    }
}

/// `ok` for a failed request: refusals certainly did nothing; a timeout or a lost connection
/// may have (DESIGN §7: `null` = unknown).
fn ok_of_code(code: &str) -> Option<bool> {
    match code {
        "timeout" | "transport" => None,
        _ => Some(false),
    }
}

pub async fn run_client(
    plan: ClientPlan,
    targets: Arc<Vec<Target>>,
    rec: Arc<Recorder>,
    budget: Arc<Budget>,
) {
    let mut rng = StdRng::seed_from_u64(plan.seed);
    let session_name = format!("c{}", plan.id);
    let mut token = String::new();
    let http: Vec<Client> = targets
        .iter()
        .map(|t| Client::with_timeout(&t.http, CLIENT_TIMEOUT))
        .collect();
    let cache = plan
        .cache
        .as_ref()
        .map(|c| Client::with_timeout(&format!("http://{c}"), CLIENT_TIMEOUT));
    let mut resp: Option<(usize, RespConn, u32)> = None;
    let mut seq = 0u64;
    // Siblings runs: the context of each key as this client last read it.
    let mut contexts: std::collections::HashMap<String, String> = Default::default();
    while budget.take() {
        let key = plan.keys[rng.gen_range(0..plan.keys.len())].clone();
        let roll = rng.gen_range(0..100);
        let (kind, level) = if roll < 55 && (plan.counter || plan.set || plan.siblings) {
            let level = LEADERLESS_LEVELS[rng.gen_range(0..LEADERLESS_LEVELS.len())];
            (OpKind::Read, level.to_string())
        } else if plan.counter {
            (OpKind::Add, "eventual".to_string())
        } else if plan.set {
            let kind = if roll < 85 {
                OpKind::Sadd
            } else {
                OpKind::Srem
            };
            (kind, "eventual".to_string())
        } else if roll < 55 && plan.leaderless {
            let level = LEADERLESS_LEVELS[rng.gen_range(0..LEADERLESS_LEVELS.len())];
            (OpKind::Read, level.to_string())
        } else if plan.leaderless {
            let kind = if roll < 92 {
                OpKind::Write
            } else {
                OpKind::Delete
            };
            (kind, "eventual".to_string())
        } else if roll < 55 {
            let level = plan.levels[rng.gen_range(0..plan.levels.len())].clone();
            (OpKind::Read, level)
        } else if roll < 92 {
            (OpKind::Write, "strong".to_string())
        } else {
            (OpKind::Delete, "strong".to_string())
        };
        let value = match kind {
            OpKind::Write => {
                seq += 1;
                Some(format!("c{}-{seq}", plan.id))
            }
            // Adds 1 to 9 (writes' share) or subtracts 1 to 5.
            OpKind::Add if roll < 92 => Some(rng.gen_range(1..=9).to_string()),
            OpKind::Add => Some((-rng.gen_range(1..=5)).to_string()),
            OpKind::Sadd | OpKind::Srem => Some(format!("m{}", rng.gen_range(0..SET_MEMBERS))),
            _ => None,
        };
        let keyspace = if plan.counter {
            KEYSPACE_COUNTER
        } else if plan.set {
            KEYSPACE_SET
        } else if plan.siblings {
            KEYSPACE_SIBLINGS
        } else {
            KEYSPACE_LEADERLESS
        };
        // An add's request id, unique in the run (a retry would reuse it).
        let add_id = (kind == OpKind::Add).then(|| {
            seq += 1;
            format!("c{}-add{seq}", plan.id)
        });
        let node = match (&resp, plan.protocol) {
            (Some((n, _, used)), Protocol::Resp) if *used < RESP_OPS_PER_CONNECTION => *n,
            _ => rng.gen_range(0..targets.len()),
        };
        let invoke_ns = rec.now_ns();
        let mut through_cache = false;
        let out = match plan.protocol {
            Protocol::Http if plan.siblings => {
                let quorum = match kind {
                    OpKind::Read => READ_QUORUMS[rng.gen_range(0..READ_QUORUMS.len())],
                    _ => WRITE_QUORUMS[rng.gen_range(0..WRITE_QUORUMS.len())],
                };
                let in_context = rng.gen_range(0..3) == 0;
                siblings_op(
                    &http[node],
                    (kind, &key, &level),
                    value.as_deref(),
                    quorum,
                    in_context,
                    (&mut token, &mut contexts),
                )
                .await
            }
            Protocol::Http if plan.leaderless => {
                let quorum = match kind {
                    OpKind::Read => READ_QUORUMS[rng.gen_range(0..READ_QUORUMS.len())],
                    _ => WRITE_QUORUMS[rng.gen_range(0..WRITE_QUORUMS.len())],
                };
                leaderless_op(
                    &http[node],
                    (keyspace, kind, &key),
                    (value.as_deref(), add_id.as_deref()),
                    (&level, quorum),
                    &mut token,
                )
                .await
            }
            Protocol::Http => {
                let via = match &cache {
                    Some(c) if rng.gen_bool(0.5) => {
                        through_cache = true;
                        c
                    }
                    _ => &http[node],
                };
                http_op(via, kind, &key, value.as_deref(), &level, &mut token).await
            }
            Protocol::Resp => {
                if resp.as_ref().is_some_and(|(n, _, _)| *n != node) {
                    resp = None;
                }
                if resp.is_none() {
                    match resp_connect(&targets[node], &token).await {
                        Ok(c) => resp = Some((node, c, 0)),
                        Err(e) => {
                            // Nothing was sent: the operation did not happen.
                            let out = Outcome::failed(Some(false), format!("connect: {e:#}"));
                            record(
                                &rec,
                                &plan,
                                &session_name,
                                kind,
                                &key,
                                value,
                                &level,
                                format!("n{}", node + 1),
                                invoke_ns,
                                out,
                            );
                            budget.done.fetch_add(1, Ordering::Relaxed);
                            budget.refused.fetch_add(1, Ordering::Relaxed);
                            continue;
                        }
                    }
                }
                let Some((_, conn, used)) = resp.as_mut() else {
                    continue;
                };
                *used += 1;
                // Half the operations are sent twice in one pipeline (a client's retry): two
                // SETs commit together as one run, two GETs read one view; either pair must
                // answer as one operation would.
                let twice = rng.gen_bool(0.5);
                let out = tokio::time::timeout(
                    CLIENT_TIMEOUT,
                    resp_op(
                        conn,
                        (kind, twice),
                        &key,
                        value.as_deref(),
                        &level,
                        &mut token,
                    ),
                )
                .await
                .unwrap_or_else(|_| Outcome::failed(None, "transport: client timeout".into()));
                if out.ok.is_none() {
                    // The connection's state is unknown after a timeout or a broken stream.
                    resp = None;
                }
                out
            }
        };
        let node = if through_cache {
            "cache".to_string()
        } else {
            format!("n{}", node + 1)
        };
        if out.ok == Some(false) {
            budget.refused.fetch_add(1, Ordering::Relaxed);
        }
        record(
            &rec,
            &plan,
            &session_name,
            kind,
            &key,
            value,
            &level,
            node,
            invoke_ns,
            out,
        );
        budget.done.fetch_add(1, Ordering::Relaxed);
    }
}

#[allow(clippy::too_many_arguments)]
fn record(
    rec: &Recorder,
    plan: &ClientPlan,
    session: &str,
    kind: OpKind,
    key: &str,
    written: Option<String>,
    level: &str,
    node: String,
    invoke_ns: u64,
    out: Outcome,
) {
    let complete_ns = rec.now_ns();
    let value = match kind {
        OpKind::Read => out.value,
        OpKind::Write | OpKind::Add | OpKind::Sadd | OpKind::Srem => written,
        OpKind::Delete => None,
    };
    rec.push(
        Operation {
            client: plan.id,
            session: Some(session.to_string()),
            op: kind,
            key: key.to_string(),
            value,
            invoke_ns,
            complete_ns,
            ok: out.ok,
            level: level.to_string(),
            node,
            position: out.position,
            staleness_entries: out.staleness.map(|s| s.0),
            staleness_ms: out.staleness.map(|s| s.1),
            quorum: out.quorum,
            version: out.version,
            strict: out.strict,
            dots: out.dots,
        },
        out.error,
    );
}

/// One operation on the leaderless keyspace at quorum `quorum`. A failed write's outcome is
/// unknown whatever its code: leaderless writes are not rolled back, so one refused for want
/// of a quorum may still be on a replica and spread.
async fn leaderless_op(
    c: &Client,
    (ks, kind, key): (&str, OpKind, &str),
    (value, add_id): (Option<&str>, Option<&str>),
    (level, quorum): (&str, &str),
    token: &mut String,
) -> Outcome {
    let mut opts = Opts::default().wait_ms(WAIT_MS);
    if !token.is_empty() {
        opts = opts.session(token);
    }
    let unknown = |e: ClientError| Outcome {
        ok: match &e {
            ClientError::Api { code, .. } | ClientError::Invalid { code, .. }
                if code == "quorum_invalid" || code == "bad_request" =>
            {
                Some(false)
            }
            _ => None,
        },
        quorum: Some(quorum.to_string()),
        ..Outcome::failed(None, e.to_string())
    };
    match kind {
        OpKind::Read => {
            let opts = Opts {
                level: Some(level.to_string()),
                ..opts.r(quorum)
            };
            match c.get(ks, key.as_bytes(), &opts).await {
                Ok(r) => {
                    *token = r.session.clone();
                    Outcome {
                        // A set's answer is its members (recorded as a JSON array).
                        value: r.value.map(|v| {
                            tunekv_check::set::history_members(&v)
                                .unwrap_or_else(|| String::from_utf8_lossy(&v).into_owned())
                        }),
                        staleness: r.receipt.staleness_parts(),
                        version: r.receipt.quorum_field("version").map(str::to_string),
                        position: Some(r.receipt.position),
                        quorum: Some(quorum.to_string()),
                        ..Outcome::done()
                    }
                }
                Err(e) => Outcome {
                    ok: Some(false),
                    ..unknown(e)
                },
            }
        }
        OpKind::Write | OpKind::Delete | OpKind::Add | OpKind::Sadd | OpKind::Srem => {
            let opts = opts.w(quorum);
            let res = match (kind, value) {
                (OpKind::Add, v) => {
                    let by = v.and_then(|v| v.parse().ok()).unwrap_or(0);
                    c.add(ks, key.as_bytes(), by, add_id, &opts).await
                }
                (OpKind::Sadd | OpKind::Srem, m) => {
                    let which = if kind == OpKind::Sadd {
                        "add"
                    } else {
                        "remove"
                    };
                    let body = serde_json::json!({ which: [m.unwrap_or_default()] });
                    c.update(ks, key.as_bytes(), &body, &opts).await
                }
                (_, Some(v)) => c.put(ks, key.as_bytes(), v.as_bytes(), &opts).await,
                (_, None) => c.delete(ks, key.as_bytes(), &opts).await,
            };
            match res {
                Ok(w) => {
                    *token = w.session.clone();
                    Outcome {
                        position: Some(w.position),
                        quorum: Some(quorum.to_string()),
                        version: w.quorum.as_ref().and_then(|q| q.version.clone()),
                        strict: w.quorum.as_ref().map(|q| q.strict),
                        dots: tunekv_check::set::history_dots(kind, &w.dots, &w.removed_dots),
                        ..Outcome::done()
                    }
                }
                Err(e) => unknown(e),
            }
        }
    }
}

/// One operation on the siblings keyspace: a read of every value (and its context, kept for
/// the key), or a write or delete without a context or, when `in_context` and the key was
/// read, with the context last read. Updates record the dot they issued and the context they
/// superseded.
async fn siblings_op(
    c: &Client,
    (kind, key, level): (OpKind, &str, &str),
    value: Option<&str>,
    quorum: &str,
    in_context: bool,
    (token, contexts): (&mut String, &mut std::collections::HashMap<String, String>),
) -> Outcome {
    let mut opts = Opts::default().wait_ms(WAIT_MS);
    if !token.is_empty() {
        opts = opts.session(token);
    }
    let failed = |e: ClientError, ok| Outcome {
        quorum: Some(quorum.to_string()),
        ..Outcome::failed(ok, e.to_string())
    };
    if kind == OpKind::Read {
        return match c
            .siblings(
                KEYSPACE_SIBLINGS,
                key.as_bytes(),
                &Opts {
                    level: Some(level.to_string()),
                    ..opts.r(quorum)
                },
            )
            .await
        {
            Ok(r) => {
                *token = r.session.clone();
                contexts.insert(key.to_string(), r.context);
                let values: Vec<String> = r
                    .siblings
                    .iter()
                    .map(|v| v.as_str().map_or_else(|| v.to_string(), str::to_string))
                    .collect();
                Outcome {
                    value: Some(serde_json::json!(values).to_string()),
                    quorum: Some(quorum.to_string()),
                    ..Outcome::done()
                }
            }
            Err(e) => failed(e, Some(false)),
        };
    }
    let opts = opts.w(quorum);
    // A delete (no value) removes what its context covers and the session's last write.
    let v = value.map(str::as_bytes);
    let res = match (contexts.get(key).filter(|_| in_context), v) {
        (Some(ctx), v) => {
            c.put_in_context(KEYSPACE_SIBLINGS, key.as_bytes(), v, ctx, &opts)
                .await
        }
        (None, Some(v)) => c.put(KEYSPACE_SIBLINGS, key.as_bytes(), v, &opts).await,
        (None, None) => c.delete(KEYSPACE_SIBLINGS, key.as_bytes(), &opts).await,
    };
    match res {
        Ok(w) => {
            *token = w.session.clone();
            Outcome {
                position: Some(w.position),
                quorum: Some(quorum.to_string()),
                version: w.quorum.as_ref().and_then(|q| q.version.clone()),
                strict: w.quorum.as_ref().map(|q| q.strict),
                dots: Some(tunekv_check::siblings::history_dots(&w.dots, &w.covered)),
                ..Outcome::done()
            }
        }
        // A refused write changed nothing; any other failure may have happened.
        Err(e) => {
            let ok = match &e {
                ClientError::Api { code, .. } | ClientError::Invalid { code, .. }
                    if ["quorum_invalid", "bad_request", "too_many_siblings"]
                        .contains(&code.as_str()) =>
                {
                    Some(false)
                }
                _ => None,
            };
            failed(e, ok)
        }
    }
}

fn client_failure(e: ClientError) -> Outcome {
    match e {
        ClientError::Api { code, message, .. } | ClientError::Invalid { code, message } => {
            Outcome::failed(ok_of_code(&code), format!("{code}: {message}"))
        }
        ClientError::Transport(m) => Outcome::failed(None, format!("transport: {m}")),
    }
}

async fn http_op(
    c: &Client,
    kind: OpKind,
    key: &str,
    value: Option<&str>,
    level: &str,
    token: &mut String,
) -> Outcome {
    let mut opts = Opts::default().wait_ms(WAIT_MS);
    if !token.is_empty() {
        opts = opts.session(token);
    }
    match kind {
        OpKind::Read => {
            opts.level = Some(level.to_string());
            match c.get(KEYSPACE, key.as_bytes(), &opts).await {
                Ok(r) => {
                    *token = r.session;
                    Outcome {
                        value: r.value.map(|v| String::from_utf8_lossy(&v).into_owned()),
                        staleness: r.receipt.staleness_parts(),
                        position: Some(r.receipt.position),
                        ..Outcome::done()
                    }
                }
                Err(e) => client_failure(e),
            }
        }
        // Ordered clients make no adds.
        OpKind::Add | OpKind::Sadd | OpKind::Srem => {
            Outcome::failed(Some(false), "adds go to counter and set keyspaces".into())
        }
        OpKind::Write | OpKind::Delete => {
            let res = match value {
                Some(v) => c.put(KEYSPACE, key.as_bytes(), v.as_bytes(), &opts).await,
                None => c.delete(KEYSPACE, key.as_bytes(), &opts).await,
            };
            match res {
                Ok(w) => {
                    *token = w.session;
                    Outcome {
                        position: Some(w.position),
                        ..Outcome::done()
                    }
                }
                Err(e) => client_failure(e),
            }
        }
    }
}

async fn resp_connect(t: &Target, token: &str) -> anyhow::Result<RespConn> {
    let addr = t
        .resp
        .as_deref()
        .ok_or_else(|| anyhow::anyhow!("node {} has no RESP listener", t.id))?;
    let mut c = tokio::time::timeout(CLIENT_TIMEOUT, RespConn::connect_node(addr))
        .await
        .map_err(|_| anyhow::anyhow!("connect to {addr} timed out"))??;
    let wait = WAIT_MS.to_string();
    let mut cmds: Vec<Vec<&[u8]>> = vec![
        vec![b"SELECT", KEYSPACE.as_bytes()],
        vec![b"WAITMS", wait.as_bytes()],
    ];
    if !token.is_empty() {
        cmds.push(vec![b"SESSION", token.as_bytes()]);
    }
    let replies = tokio::time::timeout(CLIENT_TIMEOUT, c.pipeline(&cmds))
        .await
        .map_err(|_| anyhow::anyhow!("set-up on {addr} timed out"))??;
    if let Some(e) = replies.iter().find_map(|r| match r {
        Value::Error(e) => Some(e.clone()),
        _ => None,
    }) {
        anyhow::bail!("set-up on {addr}: {e}");
    }
    Ok(c)
}

/// A RESP error's code: the first word, lower case (`-NO_QUORUM …` → `no_quorum`).
fn resp_code(e: &str) -> String {
    e.split_whitespace()
        .next()
        .unwrap_or("err")
        .to_ascii_lowercase()
}

async fn resp_op(
    c: &mut RespConn,
    (kind, twice): (OpKind, bool),
    key: &str,
    value: Option<&str>,
    level: &str,
    token: &mut String,
) -> Outcome {
    let k = key.as_bytes();
    let cmds: Vec<Vec<&[u8]>> = match (kind, value) {
        (OpKind::Read, _) if twice => vec![
            vec![b"CONSISTENCY", level.as_bytes()],
            vec![b"GET", k],
            vec![b"GET", k],
            vec![b"RECEIPT"],
            vec![b"SESSION"],
        ],
        (OpKind::Read, _) => vec![
            vec![b"CONSISTENCY", level.as_bytes()],
            vec![b"GET", k],
            vec![b"RECEIPT"],
            vec![b"SESSION"],
        ],
        (_, Some(v)) if twice => vec![
            vec![b"SET", k, v.as_bytes()],
            vec![b"SET", k, v.as_bytes()],
            vec![b"POSITION"],
            vec![b"SESSION"],
        ],
        (_, Some(v)) => vec![
            vec![b"SET", k, v.as_bytes()],
            vec![b"POSITION"],
            vec![b"SESSION"],
        ],
        (_, None) => vec![vec![b"DEL", k], vec![b"POSITION"], vec![b"SESSION"]],
    };
    let replies = match c.pipeline(&cmds).await {
        Ok(r) => r,
        Err(e) => return Outcome::failed(None, format!("transport: {e:#}")),
    };
    if let Some(t) = replies.last().and_then(Value::text) {
        *token = t;
    }
    let main = if kind == OpKind::Read {
        // CONSISTENCY refused: the GET was not run at the level asked.
        if let Value::Error(e) = &replies[0] {
            return Outcome::failed(Some(false), e.clone());
        }
        // Sent twice: the later GET is the one RECEIPT describes.
        &replies[replies.len() - 3]
    } else if replies.len() == 4 {
        // Sent twice: the write happened if either did, and is known not to have happened only
        // if neither did.
        match (&replies[0], &replies[1]) {
            (Value::Error(_), ok @ Value::Simple(_)) => ok,
            (Value::Error(a), Value::Error(b)) => {
                let (ca, cb) = (resp_code(a), resp_code(b));
                let ok = match (ok_of_code(&ca), ok_of_code(&cb)) {
                    (Some(false), Some(false)) => Some(false),
                    _ => None,
                };
                return Outcome::failed(ok, format!("{ca}: {a}; then {cb}: {b}"));
            }
            (first, _) => first,
        }
    } else {
        &replies[0]
    };
    if let Value::Error(e) = main {
        let code = resp_code(e);
        return Outcome::failed(ok_of_code(&code), format!("{code}: {e}"));
    }
    match kind {
        OpKind::Read => {
            let receipt = &replies[replies.len() - 2];
            let int = |name: &str| match receipt.field(name) {
                Some(Value::Int(n)) => u64::try_from(*n).ok(),
                _ => None,
            };
            Outcome {
                value: main.text(),
                position: receipt.field("position").and_then(Value::text),
                staleness: int("staleness_entries").zip(int("staleness_ms")),
                ..Outcome::done()
            }
        }
        _ => Outcome {
            position: match &replies[replies.len() - 2] {
                Value::Array(Some(ps)) => ps.first().and_then(Value::text),
                _ => None,
            },
            ..Outcome::done()
        },
    }
}
