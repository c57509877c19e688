//! String commands: GET, SET (NX, XX, IFEQ, GET, EX, PX, EXAT, PXAT, KEEPTTL), SETNX, SETEX,
//! PSETEX, GETSET, GETDEL, MGET, MSET, APPEND, STRLEN, GETRANGE; tunekv's VERSION and CAS.

use super::{
    arity, int_arg, read, read_one, syntax, text, typed, write, Args, CommandSpec, Handler, Kind,
    Out, Pending,
};
use crate::conn::{Conn, Shared};
use crate::reply::Reply;
use std::sync::Arc;
use tunekv_node::{CommandResult, Cond, Expect, Op, StoredValue, Ttl};

const fn spec(
    name: &'static str,
    arity: i64,
    kind: Kind,
    keys: (i64, i64, i64),
    summary: &'static str,
    handler: for<'a> fn(&'a Shared, &'a mut Conn, Args<'a>) -> Pending<'a>,
) -> CommandSpec {
    CommandSpec::new(
        (name, arity),
        kind,
        keys,
        ("string", summary),
        Handler::Later(handler),
    )
}

const ONE: (i64, i64, i64) = (1, 1, 1);

pub(super) const SPECS: &[CommandSpec] = &[
    spec(
        "get",
        2,
        Kind::Read,
        ONE,
        "Returns the value of a key.",
        get,
    ),
    spec(
        "set",
        -3,
        Kind::Write,
        ONE,
        "Sets a key's value, with NX, XX, IFEQ, GET, EX, PX, EXAT, PXAT or KEEPTTL.",
        set,
    ),
    spec(
        "version",
        2,
        Kind::Read,
        ONE,
        "A key's version on an ordered keyspace (0: absent), what CAS compares.",
        version,
    ),
    spec(
        "cas",
        4,
        Kind::Write,
        ONE,
        "CAS key version value: sets the value only if the key is at that version (0: absent); \
         returns the new version.",
        cas,
    ),
    spec(
        "setnx",
        3,
        Kind::Write,
        ONE,
        "Sets a key's value only if it is absent.",
        setnx,
    ),
    spec(
        "setex",
        4,
        Kind::Write,
        ONE,
        "Sets a key's value and its expiry in seconds.",
        setex,
    ),
    spec(
        "psetex",
        4,
        Kind::Write,
        ONE,
        "Sets a key's value and its expiry in milliseconds.",
        setex,
    ),
    spec(
        "getset",
        3,
        Kind::Write,
        ONE,
        "Sets a key's value and returns the old one.",
        getset,
    ),
    spec(
        "getdel",
        2,
        Kind::Write,
        ONE,
        "Returns a key's value and deletes the key.",
        getdel,
    ),
    spec(
        "mget",
        -2,
        Kind::Read,
        (1, -1, 1),
        "Returns the values of several keys.",
        mget,
    ),
    spec(
        "mset",
        -3,
        Kind::Write,
        (1, -1, 2),
        "Sets several keys' values.",
        mset,
    ),
    spec(
        "append",
        3,
        Kind::Write,
        ONE,
        "Appends to a key's value; returns the new length.",
        append,
    ),
    spec(
        "strlen",
        2,
        Kind::Read,
        ONE,
        "Returns the length of a key's value.",
        strlen,
    ),
    spec(
        "getrange",
        4,
        Kind::Read,
        ONE,
        "Returns a substring of a key's value.",
        getrange,
    ),
];

/// An expiry of `amount` units of `unit_ms`, which must be positive.
fn expiry_ms(amount: i64, unit_ms: i64, cmd: &str) -> Result<u64, Reply> {
    if amount <= 0 {
        return Err(Reply::err(format!(
            "invalid expire time in '{cmd}' command"
        )));
    }
    amount
        .checked_mul(unit_ms)
        .and_then(|v| u64::try_from(v).ok())
        .ok_or_else(|| Reply::err(format!("invalid expire time in '{cmd}' command")))
}

fn old_value(r: &CommandResult) -> Reply {
    r.old.clone().map(Reply::Bulk).unwrap_or(Reply::Nil)
}

/// A plain SET of `value` with these options.
pub(super) fn set_op(key: &[u8], value: Vec<u8>, cond: Cond, ttl: Ttl, get: bool) -> Op {
    Op::Set {
        key: key.to_vec(),
        value,
        cond,
        ttl,
        get,
    }
}

fn get<'a>(s: &'a Shared, conn: &'a mut Conn, mut a: Args<'a>) -> Pending<'a> {
    Box::pin(async move {
        let key = a.next()?;
        get_one(s, conn, key).await
    })
}

/// GET of one key: its value or nil; RECEIPT then describes this read.
async fn get_one(s: &Shared, conn: &mut Conn, key: &[u8]) -> Out {
    let read = s.node.get(conn.read_req(), key).await.map_err(typed)?;
    // RECEIPT's version: the key's (0: absent), as VERSION answers; ordered keyspaces only
    // (a leaderless receipt has its quorum instead).
    conn.read_version = read
        .receipt
        .quorum
        .is_none()
        .then(|| read.version.unwrap_or(0));
    conn.receipts = vec![read.receipt];
    Ok(read.value.map_or(Reply::Nil, Reply::Bulk))
}

/// SET's options after `SET key value`.
fn set_options(opts: &[Vec<u8>]) -> Result<(Cond, Ttl, bool), Reply> {
    let (mut cond, mut ttl, mut get) = (Cond::Always, Ttl::Clear, false);
    let mut ttl_given = false;
    let mut i = 0;
    while i < opts.len() {
        let opt = text(&opts[i]).to_ascii_uppercase();
        match opt.as_str() {
            "NX" if cond == Cond::Always => cond = Cond::IfAbsent,
            "XX" if cond == Cond::Always => cond = Cond::IfPresent,
            "GET" => get = true,
            "KEEPTTL" if !ttl_given => {
                ttl = Ttl::Keep;
                ttl_given = true;
            }
            "EX" | "PX" | "EXAT" | "PXAT" if !ttl_given && i + 1 < opts.len() => {
                let n = int_arg(&opts[i + 1])?;
                ttl = match opt.as_str() {
                    "EX" => Ttl::AfterMs(expiry_ms(n, 1000, "set")?),
                    "PX" => Ttl::AfterMs(expiry_ms(n, 1, "set")?),
                    "EXAT" => Ttl::AtMs(expiry_ms(n, 1000, "set")?),
                    _ => Ttl::AtMs(expiry_ms(n, 1, "set")?),
                };
                ttl_given = true;
                i += 1;
            }
            _ => return Err(syntax()),
        }
        i += 1;
    }
    Ok((cond, ttl, get))
}

/// SET's op from its options after `key value` (NX, XX, IFEQ old, GET, EX, PX, EXAT, PXAT,
/// KEEPTTL), and whether it returns the old value (GET). Also what MULTI queues for a SET.
pub(super) fn set_command(
    key: &[u8],
    value: Vec<u8>,
    rest: &[Vec<u8>],
) -> Result<(Op, bool), Reply> {
    // IFEQ old (Valkey 8.1): only if the key holds exactly `old` (absent never does).
    let ifeq = rest
        .iter()
        .position(|o| o.eq_ignore_ascii_case(b"ifeq"))
        .map(|i| (i, rest.get(i + 1)));
    let (rest, expect) = match ifeq {
        None => (rest.to_vec(), None),
        Some((_, None)) => return Err(syntax()),
        Some((i, Some(old))) => {
            let mut others = rest.to_vec();
            others.drain(i..i + 2);
            (others, Some(old.clone()))
        }
    };
    let (cond, ttl, get) = set_options(&rest)?;
    if expect.is_some() && cond != Cond::Always {
        return Err(syntax());
    }
    let op = match expect {
        Some(old) => Op::SetIf {
            key: key.to_vec(),
            value: Some(value),
            expect: Expect::Value(old),
            ttl,
            get,
        },
        None => set_op(key, value, cond, ttl, get),
    };
    Ok((op, get))
}

fn set<'a>(s: &'a Shared, conn: &'a mut Conn, mut a: Args<'a>) -> Pending<'a> {
    Box::pin(async move {
        let (key, value) = (a.next()?, a.next_vec()?);
        let rest = a.rest();
        // SET key value CONTEXT ctx: a siblings write superseding what ctx covers.
        if let [opt, ctx] = rest {
            if opt.eq_ignore_ascii_case(b"context") {
                return super::siblings::write_in_context(s, conn, key, Some(value), ctx).await;
            }
        }
        let (op, get) = set_command(key, value, rest)?;
        let r = write(&s.node, conn, key, |_| Ok(op)).await?;
        Ok(if get {
            old_value(&r)
        } else if r.changed {
            Reply::ok()
        } else {
            Reply::Nil
        })
    })
}

/// `SET key value` with no options, on a connection where it would run at once (not queued
/// by MULTI, not refused while subscribed): [`set_run`] can take it.
pub(super) fn plain_set(conn: &Conn, args: &[Vec<u8>]) -> bool {
    args.len() == 3
        && args[0].eq_ignore_ascii_case(b"set")
        && conn.multi.is_none()
        && (conn.resp3 || conn.subscriptions() == 0)
}

/// Runs `work` (a run of `n` pipelined `op`s on connection `conn_id`) in the request span
/// every command gets, then counts each of its requests in the node's metrics with the run's
/// time.
async fn counted(
    s: &Shared,
    (conn_id, op, level, n): (u64, &'static str, &'static str, usize),
    work: impl std::future::Future<Output = Vec<Reply>>,
) -> Vec<Reply> {
    let started = std::time::Instant::now();
    let span = tracing::debug_span!(
        "request",
        node = s.node.id().0,
        protocol = "resp",
        conn = conn_id,
        op,
        level,
        pipelined = n,
    );
    let replies = tracing::Instrument::instrument(work, span).await;
    let elapsed = started.elapsed();
    for r in &replies {
        s.node.metrics().request(
            tunekv_node::metrics::Protocol::Resp,
            op,
            level,
            r.outcome(),
            elapsed,
        );
    }
    replies
}

/// `GET key` on a connection where it would run at once and track nothing (CLIENT TRACKING
/// registers each read's keys): [`get_run`] can take it.
pub(super) fn plain_get(conn: &Conn, args: &[Vec<u8>]) -> bool {
    args.len() == 2
        && args[0].eq_ignore_ascii_case(b"get")
        && conn.multi.is_none()
        && conn.tracking.is_none()
        && (conn.resp3 || conn.subscriptions() == 0)
}

/// Pipelined plain GETs ([`plain_get`]), read together: one view of each shard at the
/// connection's level serves them all (the client sent each before hearing the one before, so
/// one point in time may answer them). One reply each, in order; `RECEIPT` then reports the last
/// one's. A run the batch read refuses is read key by key.
pub(super) async fn get_run(s: &Shared, conn: &mut Conn, run: Vec<Vec<Vec<u8>>>) -> Vec<Reply> {
    let n = run.len();
    let level = super::read_level_label(s, conn);
    let conn_id = conn.id;
    let keys: Vec<Vec<u8>> = run
        .into_iter()
        .map(|mut a| a.pop().unwrap_or_default())
        .collect();
    counted(s, (conn_id, "get", level, n), async {
        conn.caching = None;
        if let Err(e) = super::ensure_keyspace(conn, &s.node).await {
            return vec![e; n];
        }
        // Any refusal of the batch (a bad key, a shard that cannot serve the level, a key
        // with siblings, too many bytes) is answered as the GETs one by one would have
        // been: each key's own answer, so one key's failure is not the others'.
        let valid = keys
            .iter()
            .all(|k| tunekv_core::limits::check_key(k).is_ok());
        let batch = if valid {
            s.node.batch_get(conn.read_req(), &keys).await.ok()
        } else {
            None
        };
        let shards = match batch {
            Some(shards) => shards,
            None => {
                let mut replies = Vec::with_capacity(n);
                for key in &keys {
                    replies.push(get_one(s, conn, key).await.unwrap_or_else(|e| e));
                }
                return replies;
            }
        };
        // RECEIPT answers for the last GET: the receipt of its key's shard.
        let last = keys.last().and_then(|k| {
            shards
                .iter()
                .position(|s| s.values.iter().any(|(v, _)| v == k))
        });
        conn.receipts.clear();
        if let Some(i) = last {
            conn.receipts.push(shards[i].receipt.clone());
        }
        let mut answers = Answers::new(shards.into_iter().map(|s| s.values));
        let ordered = conn.receipts.iter().all(|r| r.quorum.is_none());
        let mut replies = Vec::with_capacity(n);
        for key in &keys {
            let value = answers.take(key);
            if ordered {
                conn.read_version = Some(value.as_ref().map_or(0, |v| v.mod_index));
            }
            replies.push(value.map_or(Reply::Nil, Reply::Value));
        }
        if !ordered {
            conn.read_version = None;
        }
        replies
    })
    .await
}

/// A batch read's values, taken in the order the keys were asked. Each shard answers its keys
/// in that order, so the next key is at one shard's cursor: no map is built unless a shard
/// answers out of order.
struct Answers {
    shards: Vec<std::vec::IntoIter<Answer>>,
    /// Filled only if a key is at no shard's cursor.
    map: Option<std::collections::HashMap<Vec<u8>, Option<Arc<StoredValue>>>>,
}

/// A key and its value (`None`: absent), as a shard read answers it.
type Answer = (Vec<u8>, Option<Arc<StoredValue>>);

impl Answers {
    fn new(shards: impl Iterator<Item = Vec<Answer>>) -> Answers {
        Answers {
            shards: shards.map(|values| values.into_iter()).collect(),
            map: None,
        }
    }

    fn take(&mut self, key: &[u8]) -> Option<Arc<StoredValue>> {
        if self.map.is_none() {
            for shard in &mut self.shards {
                if shard.as_slice().first().is_some_and(|(k, _)| k == key) {
                    return shard.next().and_then(|(_, v)| v);
                }
            }
            let map = self.shards.iter_mut().flatten().collect();
            self.map = Some(map);
        }
        self.map
            .as_ref()
            .and_then(|m| m.get(key).cloned().flatten())
    }
}

/// Pipelined plain SETs ([`plain_set`]), written together ([`Node::set_many`]): one reply each,
/// in order, what each alone would have answered; `POSITION` then reports the last one's.
pub(super) async fn set_run(s: &Shared, conn: &mut Conn, run: Vec<Vec<Vec<u8>>>) -> Vec<Reply> {
    let n = run.len();
    let conn_id = conn.id;
    counted(
        s,
        (conn_id, "set", tunekv_node::metrics::NO_LEVEL, n),
        async {
            // CLIENT CACHING is for the command after it.
            conn.caching = None;
            conn.written.clear();
            if let Err(e) = super::ensure_keyspace(conn, &s.node).await {
                return vec![e; n];
            }
            let pairs = run
                .into_iter()
                .map(|mut a| {
                    let value = a.pop().unwrap_or_default();
                    (a.pop().unwrap_or_default(), value)
                })
                .collect();
            let outcomes = s.node.set_many(conn.write_req(), pairs).await;
            let noloop = conn.tracking.as_ref().is_some_and(|t| t.noloop);
            let ks: std::sync::Arc<str> = conn.keyspace.as_str().into();
            let mut replies = Vec::with_capacity(n);
            for o in outcomes {
                conn.written.clear();
                replies.push(match o {
                    Ok(w) => {
                        conn.written.push(w.position);
                        let own = (ks.clone(), w.position.shard.0, w.position.index.0);
                        if noloop && conn.own_writes.back() != Some(&own) {
                            if conn.own_writes.len() >= crate::push::OWN_WRITES_MAX {
                                conn.own_writes.pop_front();
                            }
                            conn.own_writes.push_back(own);
                        }
                        Reply::ok()
                    }
                    Err(e) => typed(e),
                });
            }
            replies
        },
    )
    .await
}

fn version<'a>(s: &'a Shared, conn: &'a mut Conn, mut a: Args<'a>) -> Pending<'a> {
    Box::pin(async move {
        let key = a.next()?;
        match read_one(&s.node, conn, key).await? {
            None => Ok(Reply::Int(0)),
            Some(v) if v.mod_index > 0 => Ok(Reply::Int(v.mod_index as i64)),
            // Leaderless values have no log index: their version is an HLC stamp (RECEIPT).
            Some(_) => Err(typed(tunekv_core::TunekvError::new(
                tunekv_core::Code::ModeUnsupported,
                "VERSION and CAS are for ordered keyspaces; a leaderless value's version (an \
                 HLC stamp) is in RECEIPT",
            ))),
        }
    })
}

fn cas<'a>(s: &'a Shared, conn: &'a mut Conn, mut a: Args<'a>) -> Pending<'a> {
    Box::pin(async move {
        let key = a.next()?;
        let version = a.int()?;
        let value = a.next_vec()?;
        let Ok(version) = u64::try_from(version) else {
            return Err(Reply::err("version must be a key version: 0 or more"));
        };
        match s
            .node
            .write_if(conn.write_req(), key, Some(value), version)
            .await
            .map_err(typed)?
        {
            Ok(w) => {
                conn.written.push(w.position);
                Ok(Reply::Int(w.position.index.0 as i64))
            }
            Err(current) => Err(typed(tunekv_node::version_mismatch(version, current))),
        }
    })
}

fn setnx<'a>(s: &'a Shared, conn: &'a mut Conn, mut a: Args<'a>) -> Pending<'a> {
    Box::pin(async move {
        let (key, value) = (a.next()?, a.next_vec()?);
        let r = write(&s.node, conn, key, |_| {
            Ok(set_op(key, value, Cond::IfAbsent, Ttl::Clear, false))
        })
        .await?;
        Ok(Reply::Int(i64::from(r.changed)))
    })
}

/// SETEX (seconds) and PSETEX (milliseconds).
fn setex<'a>(s: &'a Shared, conn: &'a mut Conn, mut a: Args<'a>) -> Pending<'a> {
    Box::pin(async move {
        let unit = if a.name() == "setex" { 1000 } else { 1 };
        let key = a.next()?;
        let ms = expiry_ms(a.int()?, unit, a.name())?;
        let value = a.next_vec()?;
        write(&s.node, conn, key, |_| {
            Ok(set_op(key, value, Cond::Always, Ttl::AfterMs(ms), false))
        })
        .await?;
        Ok(Reply::ok())
    })
}

fn getset<'a>(s: &'a Shared, conn: &'a mut Conn, mut a: Args<'a>) -> Pending<'a> {
    Box::pin(async move {
        let (key, value) = (a.next()?, a.next_vec()?);
        let r = write(&s.node, conn, key, |_| {
            Ok(set_op(key, value, Cond::Always, Ttl::Clear, true))
        })
        .await?;
        Ok(old_value(&r))
    })
}

fn getdel<'a>(s: &'a Shared, conn: &'a mut Conn, mut a: Args<'a>) -> Pending<'a> {
    Box::pin(async move {
        let key = a.next()?;
        let r = write(&s.node, conn, key, |_| Ok(Op::GetDel { key: key.to_vec() })).await?;
        Ok(old_value(&r))
    })
}

fn mget<'a>(s: &'a Shared, conn: &'a mut Conn, mut a: Args<'a>) -> Pending<'a> {
    Box::pin(async move {
        Ok(Reply::Array(
            read(&s.node, conn, a.rest())
                .await?
                .into_iter()
                .map(|v| v.map(|v| Reply::Bulk(v.value)).unwrap_or(Reply::Nil))
                .collect(),
        ))
    })
}

fn mset<'a>(s: &'a Shared, conn: &'a mut Conn, mut a: Args<'a>) -> Pending<'a> {
    Box::pin(async move {
        let name = a.name();
        let words = a.rest();
        if !words.len().is_multiple_of(2) {
            return Err(arity(name));
        }
        let pairs = words
            .chunks(2)
            .map(|p| (p[0].clone(), p[1].clone()))
            .collect();
        let written = s.node.mset(conn.write_req(), pairs).await.map_err(typed)?;
        conn.written.extend(written.iter().map(|w| w.position));
        Ok(Reply::ok())
    })
}

fn append<'a>(s: &'a Shared, conn: &'a mut Conn, mut a: Args<'a>) -> Pending<'a> {
    Box::pin(async move {
        let (key, suffix) = (a.next()?, a.next_vec()?);
        let r = write(&s.node, conn, key, |ks| {
            Ok(Op::Append {
                key: key.to_vec(),
                suffix,
                len_max: ks.spec.value_bytes_max,
            })
        })
        .await?;
        Ok(Reply::Int(r.int))
    })
}

fn strlen<'a>(s: &'a Shared, conn: &'a mut Conn, mut a: Args<'a>) -> Pending<'a> {
    Box::pin(async move {
        let key = a.next()?;
        Ok(Reply::Int(
            read_one(&s.node, conn, key)
                .await?
                .map(|v| v.value.len() as i64)
                .unwrap_or(0),
        ))
    })
}

/// GETRANGE's inclusive range, clamped exactly as Redis does (negative indexes count from the
/// end; both ends clamp to the string).
fn range(len: usize, start: i64, end: i64) -> Option<(usize, usize)> {
    let len = len as i64;
    let s = if start < 0 { len + start } else { start }.max(0);
    let e = if end < 0 { len + end } else { end }.max(0).min(len - 1);
    (len > 0 && s <= e).then_some((s as usize, e as usize))
}

fn getrange<'a>(s: &'a Shared, conn: &'a mut Conn, mut a: Args<'a>) -> Pending<'a> {
    Box::pin(async move {
        let key = a.next()?;
        let (start, end) = (a.int()?, a.int()?);
        let v = read_one(&s.node, conn, key)
            .await?
            .map(|v| v.value)
            .unwrap_or_default();
        Ok(Reply::Bulk(match range(v.len(), start, end) {
            Some((s, e)) => v[s..=e].to_vec(),
            None => Vec::new(),
        }))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batch_answers_are_taken_in_the_order_asked() {
        let v = |s: &str| {
            Some(Arc::new(StoredValue {
                value: s.as_bytes().to_vec(),
                create_index: 1,
                mod_index: 1,
                commit_ts: 0,
                expires_ms: None,
            }))
        };
        let k = |s: &str| s.as_bytes().to_vec();
        let got = |shards: Vec<Vec<_>>, asked: &[&str]| {
            let mut a = Answers::new(shards.into_iter());
            asked
                .iter()
                .map(|key| a.take(key.as_bytes()).map(|v| v.value.clone()))
                .collect::<Vec<_>>()
        };
        let some = |s: &str| Some(s.as_bytes().to_vec());
        // Two shards interleaved, a key asked twice, an absent key.
        let shards = vec![
            vec![(k("a"), v("1")), (k("c"), None), (k("a"), v("1"))],
            vec![(k("b"), v("2"))],
        ];
        assert_eq!(
            got(shards, &["a", "b", "c", "a"]),
            vec![some("1"), some("2"), None, some("1")]
        );
        // A shard answering out of order: its keys are still found.
        let shards = vec![vec![(k("y"), v("Y")), (k("x"), v("X"))]];
        assert_eq!(got(shards, &["x", "y"]), vec![some("X"), some("Y")]);
    }

    #[test]
    fn getrange_indexes() {
        assert_eq!(range(5, 0, -1), Some((0, 4)));
        assert_eq!(range(5, -3, -1), Some((2, 4)));
        assert_eq!(range(5, 1, 100), Some((1, 4)));
        assert_eq!(range(5, 3, 1), None);
        assert_eq!(range(0, 0, -1), None);
        assert_eq!(range(5, -100, 0), Some((0, 0)));
        assert_eq!(range(5, 10, 20), None);
        assert_eq!(range(5, 0, -100), Some((0, 0)), "Redis clamps the end to 0");
    }

    #[test]
    fn set_option_parsing() {
        // The options after `SET k v`.
        let opts = |s: &str| {
            s.split_whitespace()
                .map(|p| p.as_bytes().to_vec())
                .collect::<Vec<_>>()
        };
        assert_eq!(
            set_options(&opts("")).unwrap(),
            (Cond::Always, Ttl::Clear, false)
        );
        assert_eq!(
            set_options(&opts("NX GET PX 1500")).unwrap(),
            (Cond::IfAbsent, Ttl::AfterMs(1500), true)
        );
        assert_eq!(
            set_options(&opts("xx keepttl")).unwrap(),
            (Cond::IfPresent, Ttl::Keep, false)
        );
        assert_eq!(set_options(&opts("EXAT 10")).unwrap().1, Ttl::AtMs(10_000));
        for bad in ["NX XX", "EX", "EX 0", "EX 1 PX 1", "KEEPTTL EX 1", "BOGUS"] {
            assert!(set_options(&opts(bad)).is_err(), "{bad}");
        }
    }
}
