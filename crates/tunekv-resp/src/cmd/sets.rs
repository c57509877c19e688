//! Set commands on `conflict: "set"` keyspaces (add-wins observed-remove sets): SADD, SREM,
//! SMEMBERS, SISMEMBER, SMISMEMBER, SCARD. They honour the connection's `QUORUM r w`; a remove
//! drops the adds of the member its replica has seen, so a concurrent add survives it.

use super::{state, update, Args, CommandSpec, Handler, Kind, Pending};
use crate::conn::{Conn, Shared};
use crate::reply::Reply;
use tunekv_dynamo::ormap::OrSet;
use tunekv_dynamo::update::Update;
use tunekv_dynamo::Stored;

const fn spec(
    (name, arity): (&'static str, i64),
    kind: Kind,
    summary: &'static str,
    handler: for<'a> fn(&'a Shared, &'a mut Conn, Args<'a>) -> Pending<'a>,
) -> CommandSpec {
    CommandSpec::new(
        (name, arity),
        kind,
        (1, 1, 1),
        ("set", summary),
        Handler::Later(handler),
    )
}

pub(super) const SPECS: &[CommandSpec] = &[
    spec(
        ("sadd", -3),
        Kind::Write,
        "Adds members to a set; returns how many were not in it.",
        sadd,
    ),
    spec(
        ("srem", -3),
        Kind::Write,
        "Removes members from a set; returns how many were in it.",
        srem,
    ),
    spec(
        ("smembers", 2),
        Kind::Read,
        "Every member of a set.",
        smembers,
    ),
    spec(
        ("sismember", 3),
        Kind::Read,
        "Whether a member is in a set (1 or 0).",
        sismember,
    ),
    spec(
        ("smismember", -3),
        Kind::Read,
        "Whether each member is in a set (1 or 0 each).",
        smismember,
    ),
    spec(
        ("scard", 2),
        Kind::Read,
        "How many members a set has.",
        scard,
    ),
];

/// The set `key` holds (empty when it holds nothing).
async fn set_at(s: &Shared, conn: &mut Conn, key: &[u8]) -> Result<OrSet, Reply> {
    match state(&s.node, conn, key).await? {
        None => Ok(OrSet::new()),
        Some(Stored::Set(set)) => Ok(set),
        Some(_) => Err(super::wrongtype()),
    }
}

fn sadd<'a>(s: &'a Shared, conn: &'a mut Conn, mut a: Args<'a>) -> Pending<'a> {
    Box::pin(async move {
        let key = a.next()?;
        let add = a.rest().to_vec();
        let w = update(
            &s.node,
            conn,
            key,
            Update::Members {
                add,
                remove: vec![],
            },
        )
        .await?;
        Ok(Reply::Int(w.result.int))
    })
}

fn srem<'a>(s: &'a Shared, conn: &'a mut Conn, mut a: Args<'a>) -> Pending<'a> {
    Box::pin(async move {
        let key = a.next()?;
        let remove = a.rest().to_vec();
        let w = update(
            &s.node,
            conn,
            key,
            Update::Members {
                add: vec![],
                remove,
            },
        )
        .await?;
        Ok(Reply::Int(w.result.int))
    })
}

fn smembers<'a>(s: &'a Shared, conn: &'a mut Conn, mut a: Args<'a>) -> Pending<'a> {
    Box::pin(async move {
        let key = a.next()?;
        let set = set_at(s, conn, key).await?;
        Ok(Reply::Array(
            set.members().map(|(m, _)| Reply::bulk(m.clone())).collect(),
        ))
    })
}

fn sismember<'a>(s: &'a Shared, conn: &'a mut Conn, mut a: Args<'a>) -> Pending<'a> {
    Box::pin(async move {
        let key = a.next()?;
        let member = a.next()?;
        let set = set_at(s, conn, key).await?;
        Ok(Reply::Int(i64::from(set.contains(member))))
    })
}

fn smismember<'a>(s: &'a Shared, conn: &'a mut Conn, mut a: Args<'a>) -> Pending<'a> {
    Box::pin(async move {
        let key = a.next()?;
        let members = a.rest();
        let set = set_at(s, conn, key).await?;
        Ok(Reply::Array(
            members
                .iter()
                .map(|m| Reply::Int(i64::from(set.contains(m))))
                .collect(),
        ))
    })
}

fn scard<'a>(s: &'a Shared, conn: &'a mut Conn, mut a: Args<'a>) -> Pending<'a> {
    Box::pin(async move {
        let key = a.next()?;
        let set = set_at(s, conn, key).await?;
        Ok(Reply::Int(set.len() as i64))
    })
}
