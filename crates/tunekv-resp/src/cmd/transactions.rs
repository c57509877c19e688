//! Redis transactions: MULTI, EXEC, DISCARD, WATCH, UNWATCH (issue 18), as one single-shard
//! `Op::Txn` of the ordered keyspace.
//!
//! WATCH reads each key's version at the connection's level; EXEC sends the queued commands
//! as the transaction's success branch, conditional on every watched key still being at the
//! version WATCH read (a stale read only makes EXEC abort, never run wrongly). An aborted EXEC
//! answers a null array, which clients such as redis-py raise as `WatchError`. Inside MULTI
//! the commands tunekv can run in one state-machine command are queued (`+QUEUED`): GET, SET
//! (with its options), SETNX, DEL, UNLINK, INCR, DECR, INCRBY, DECRBY and GETDEL; any other,
//! or a wrong number of arguments, is refused at once and EXEC then answers `EXECABORT`, as
//! Redis does for errors found while queueing.

use super::strings::{set_command, set_op};
use super::{int_arg, read, typed, Args, CommandSpec, Handler, Kind, Out, Pending};
use crate::conn::{Conn, Shared};
use crate::reply::Reply;
use tunekv_node::{CommandResult, Cond, Expect, Op, Ttl, VERSION_MISMATCH};

const fn spec(
    name: &'static str,
    arity: i64,
    kind: Kind,
    keys: (i64, i64, i64),
    summary: &'static str,
    handler: Handler,
) -> CommandSpec {
    CommandSpec::new(
        (name, arity),
        kind,
        keys,
        ("transactions", summary),
        handler,
    )
}

pub(super) const SPECS: &[CommandSpec] = &[
    spec(
        "multi",
        1,
        Kind::Connection,
        (0, 0, 0),
        "Starts a transaction: later commands are queued until EXEC.",
        Handler::Now(multi),
    ),
    spec(
        "exec",
        1,
        Kind::Write,
        (0, 0, 0),
        "Runs the queued commands as one single-shard transaction (nil if a watched key changed).",
        Handler::Later(exec),
    ),
    spec(
        "discard",
        1,
        Kind::Connection,
        (0, 0, 0),
        "Drops the queued commands and the watched keys.",
        Handler::Now(discard),
    ),
    spec(
        "watch",
        -2,
        Kind::Read,
        (1, -1, 1),
        "Makes the next EXEC run only if these keys keep the versions they have now.",
        Handler::Later(watch),
    ),
    spec(
        "unwatch",
        1,
        Kind::Connection,
        (0, 0, 0),
        "Forgets the watched keys.",
        Handler::Now(unwatch),
    ),
];

/// How a queued command's results become its reply in EXEC's array.
#[derive(Clone, Copy, Debug)]
enum Answer {
    /// GET: the value read, or nil.
    Value,
    /// SET: OK, nil when its condition did not hold, the old value with GET.
    Set { get: bool },
    /// SETNX: 1 when it wrote.
    Wrote,
    /// DEL, UNLINK: how many keys were deleted.
    Deleted,
    /// INCR…: the value after.
    Int,
    /// GETDEL: the value it removed.
    Old,
}

struct Queued {
    ops: Vec<Op>,
    answer: Answer,
}

/// The commands a connection queued since MULTI.
#[derive(Default)]
pub(crate) struct Queue {
    items: Vec<Queued>,
    /// A command was refused while queueing: EXEC answers EXECABORT.
    spoiled: bool,
}

/// Commands that run at once inside MULTI instead of being queued.
pub(super) fn runs_inside(name: &str) -> bool {
    matches!(name, "exec" | "discard" | "multi" | "watch" | "quit")
}

/// Marks the open transaction as refused (a command could not be queued).
pub(super) fn spoil(conn: &mut Conn) {
    if let Some(q) = conn.multi.as_mut() {
        q.spoiled = true;
    }
}

const SUPPORTED: &str = "GET, SET, SETNX, DEL, UNLINK, INCR, DECR, INCRBY, DECRBY, GETDEL";

/// Queues one command inside MULTI (`+QUEUED`), or refuses it and spoils the transaction.
pub(super) fn queue(conn: &mut Conn, name: &str, args: &[Vec<u8>]) -> Reply {
    match queued(name, args) {
        Ok(item) => {
            if let Some(q) = conn.multi.as_mut() {
                q.items.push(item);
            }
            Reply::Simple("QUEUED".into())
        }
        Err(e) => {
            spoil(conn);
            e
        }
    }
}

fn queued(name: &str, args: &[Vec<u8>]) -> Result<Queued, Reply> {
    let key = |i: usize| args[i].clone();
    let one = |op: Op, answer: Answer| Queued {
        ops: vec![op],
        answer,
    };
    Ok(match name {
        "get" => one(Op::Get { key: key(1) }, Answer::Value),
        "set" => {
            let (op, get) = set_command(&args[1], args[2].clone(), &args[3..])?;
            one(op, Answer::Set { get })
        }
        "setnx" => one(
            set_op(&args[1], args[2].clone(), Cond::IfAbsent, Ttl::Clear, false),
            Answer::Wrote,
        ),
        "del" | "unlink" => Queued {
            ops: args[1..]
                .iter()
                .map(|k| Op::Delete { key: k.clone() })
                .collect(),
            answer: Answer::Deleted,
        },
        "incr" | "decr" => {
            let delta = if name == "incr" { 1 } else { -1 };
            one(Op::IncrBy { key: key(1), delta }, Answer::Int)
        }
        "incrby" | "decrby" => {
            let by = int_arg(&args[2])?;
            let delta = if name == "incrby" {
                by
            } else {
                by.checked_neg()
                    .ok_or_else(|| Reply::err("decrement would overflow"))?
            };
            one(Op::IncrBy { key: key(1), delta }, Answer::Int)
        }
        "getdel" => one(Op::GetDel { key: key(1) }, Answer::Old),
        other => {
            return Err(Reply::err(format!(
                "'{other}' cannot run inside MULTI on tunekv (a transaction is one \
                 state-machine command; these can: {SUPPORTED})"
            )))
        }
    })
}

fn multi(_: &Shared, conn: &mut Conn, _: Args<'_>) -> Out {
    if conn.multi.is_some() {
        return Err(Reply::err("MULTI calls can not be nested"));
    }
    conn.multi = Some(Queue::default());
    Ok(Reply::ok())
}

fn discard(_: &Shared, conn: &mut Conn, _: Args<'_>) -> Out {
    if conn.multi.take().is_none() {
        return Err(Reply::err("DISCARD without MULTI"));
    }
    conn.watched.clear();
    Ok(Reply::ok())
}

fn unwatch(_: &Shared, conn: &mut Conn, _: Args<'_>) -> Out {
    conn.watched.clear();
    Ok(Reply::ok())
}

fn watch<'a>(s: &'a Shared, conn: &'a mut Conn, mut a: Args<'a>) -> Pending<'a> {
    Box::pin(async move {
        if conn.multi.is_some() {
            return Err(Reply::err("WATCH inside MULTI is not allowed"));
        }
        let keys = a.rest();
        let found = read(&s.node, conn, keys).await?;
        for (key, v) in keys.iter().zip(found) {
            conn.watched
                .push((key.clone(), v.map_or(0, |v| v.mod_index)));
        }
        Ok(Reply::ok())
    })
}

fn exec<'a>(s: &'a Shared, conn: &'a mut Conn, _: Args<'a>) -> Pending<'a> {
    Box::pin(async move {
        let Some(queue) = conn.multi.take() else {
            return Err(Reply::err("EXEC without MULTI"));
        };
        let watched = std::mem::take(&mut conn.watched);
        if queue.spoiled {
            return Err(Reply::Error(
                "EXECABORT Transaction discarded because of previous errors.".into(),
            ));
        }
        if queue.items.is_empty() && watched.is_empty() {
            return Ok(Reply::Array(Vec::new()));
        }
        let compare = watched
            .into_iter()
            .map(|(k, v)| (k, Expect::Version(v)))
            .collect();
        let ops: Vec<Op> = queue.items.iter().flat_map(|q| q.ops.clone()).collect();
        // Rights are checked again now, not only as commands were queued (redis#15673).
        if s.node.auth_enabled() {
            let grants = super::access::grants(s, conn)?;
            let user = grants.user().unwrap_or_default();
            for op in &ops {
                for (key, need) in tunekv_node::op_needs(op) {
                    if !grants.allows(&conn.keyspace, &key, need) {
                        return Err(super::access::noperm_key(user, &key));
                    }
                }
            }
        }
        let w = s
            .node
            .txn(conn.write_req(), compare, ops, Vec::new())
            .await
            .map_err(typed)?;
        conn.written.push(w.position);
        if w.result.int != 1 {
            return Ok(Reply::NilArray);
        }
        let mut results = w.result.results.iter();
        let mut replies = Vec::with_capacity(queue.items.len());
        for q in &queue.items {
            let mine: Vec<&CommandResult> = results.by_ref().take(q.ops.len()).collect();
            replies.push(answer(q.answer, &mine));
        }
        Ok(Reply::Array(replies))
    })
}

fn answer(kind: Answer, results: &[&CommandResult]) -> Reply {
    let Some(first) = results.first() else {
        return Reply::Nil;
    };
    // A refused condition (SET … IFEQ) is not an error: SET answers nil.
    if let Some(e) = first.error.as_deref().filter(|e| *e != VERSION_MISMATCH) {
        return Reply::err(e);
    }
    match kind {
        Answer::Value => first
            .current
            .as_ref()
            .map_or(Reply::Nil, |c| Reply::Bulk(c.value.clone())),
        Answer::Set { get: true } => first.old.clone().map_or(Reply::Nil, Reply::Bulk),
        Answer::Set { get: false } if first.changed => Reply::ok(),
        Answer::Set { get: false } => Reply::Nil,
        Answer::Wrote => Reply::Int(i64::from(first.changed)),
        Answer::Deleted => Reply::Int(results.iter().filter(|r| r.changed).count() as i64),
        Answer::Int => Reply::Int(first.int),
        Answer::Old => first.old.clone().map_or(Reply::Nil, Reply::Bulk),
    }
}
