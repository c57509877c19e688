//! Hash commands on `conflict: "map"` keyspaces (observed-remove maps of registers and
//! counters): HSET, HMSET, HGET, HMGET, HDEL, HGETALL, HKEYS, HVALS, HINCRBY, HLEN, HEXISTS.
//! They honour the connection's `QUORUM r w`. A field written concurrently with increments
//! reads as the write; see `tunekv_dynamo::ormap`.

use super::{state, update, Args, CommandSpec, Handler, Kind, Pending};
use crate::conn::{Conn, Shared};
use crate::reply::Reply;
use tunekv_dynamo::ormap::{Field, OrMap};
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
        ("hash", summary),
        Handler::Later(handler),
    )
}

pub(super) const SPECS: &[CommandSpec] = &[
    spec(
        ("hset", -4),
        Kind::Write,
        "Sets fields of a hash; returns how many were new.",
        hset,
    ),
    spec(
        ("hmset", -4),
        Kind::Write,
        "Sets fields of a hash (OK).",
        hset,
    ),
    spec(("hget", 3), Kind::Read, "A field's value, or nil.", hget),
    spec(
        ("hmget", -3),
        Kind::Read,
        "The values of fields (nil for each absent one).",
        hmget,
    ),
    spec(
        ("hdel", -3),
        Kind::Write,
        "Removes fields of a hash; returns how many were there.",
        hdel,
    ),
    spec(
        ("hgetall", 2),
        Kind::Read,
        "Every field of a hash with its value.",
        hgetall,
    ),
    spec(("hkeys", 2), Kind::Read, "Every field of a hash.", hkeys),
    spec(
        ("hvals", 2),
        Kind::Read,
        "Every value of a hash, in field order.",
        hvals,
    ),
    spec(
        ("hincrby", 4),
        Kind::Write,
        "Adds an integer to a field; returns the new value.",
        hincrby,
    ),
    spec(("hlen", 2), Kind::Read, "How many fields a hash has.", hlen),
    spec(
        ("hexists", 3),
        Kind::Read,
        "Whether a field exists (1 or 0).",
        hexists,
    ),
];

/// The map `key` holds (empty when it holds nothing).
async fn map_at(s: &Shared, conn: &mut Conn, key: &[u8]) -> Result<OrMap<Field>, Reply> {
    match state(&s.node, conn, key).await? {
        None => Ok(OrMap::new()),
        Some(Stored::Map(map)) => Ok(map),
        Some(_) => Err(super::wrongtype()),
    }
}

fn hset<'a>(s: &'a Shared, conn: &'a mut Conn, mut a: Args<'a>) -> Pending<'a> {
    Box::pin(async move {
        let key = a.next()?;
        let pairs = a.rest();
        if !pairs.len().is_multiple_of(2) {
            return Err(super::arity(a.name()));
        }
        let set = pairs
            .chunks(2)
            .map(|p| (p[0].clone(), p[1].clone()))
            .collect();
        let w = update(
            &s.node,
            conn,
            key,
            Update::Fields {
                set,
                remove: vec![],
            },
        )
        .await?;
        Ok(if a.name() == "hmset" {
            Reply::ok()
        } else {
            Reply::Int(w.result.int)
        })
    })
}

fn hget<'a>(s: &'a Shared, conn: &'a mut Conn, mut a: Args<'a>) -> Pending<'a> {
    Box::pin(async move {
        let key = a.next()?;
        let field = a.next()?;
        let map = map_at(s, conn, key).await?;
        Ok(map.field(field).map_or(Reply::Nil, Reply::Bulk))
    })
}

fn hmget<'a>(s: &'a Shared, conn: &'a mut Conn, mut a: Args<'a>) -> Pending<'a> {
    Box::pin(async move {
        let key = a.next()?;
        let fields = a.rest();
        let map = map_at(s, conn, key).await?;
        Ok(Reply::Array(
            fields
                .iter()
                .map(|f| map.field(f).map_or(Reply::Nil, Reply::Bulk))
                .collect(),
        ))
    })
}

fn hdel<'a>(s: &'a Shared, conn: &'a mut Conn, mut a: Args<'a>) -> Pending<'a> {
    Box::pin(async move {
        let key = a.next()?;
        let remove = a.rest().to_vec();
        let w = update(
            &s.node,
            conn,
            key,
            Update::Fields {
                set: vec![],
                remove,
            },
        )
        .await?;
        Ok(Reply::Int(w.result.int))
    })
}

fn hgetall<'a>(s: &'a Shared, conn: &'a mut Conn, mut a: Args<'a>) -> Pending<'a> {
    Box::pin(async move {
        let key = a.next()?;
        let map = map_at(s, conn, key).await?;
        Ok(Reply::Map(
            map.fields()
                .map(|(f, v)| (Reply::bulk(f.clone()), Reply::Bulk(v)))
                .collect(),
        ))
    })
}

fn hkeys<'a>(s: &'a Shared, conn: &'a mut Conn, mut a: Args<'a>) -> Pending<'a> {
    Box::pin(async move {
        let key = a.next()?;
        let map = map_at(s, conn, key).await?;
        Ok(Reply::Array(
            map.fields().map(|(f, _)| Reply::bulk(f.clone())).collect(),
        ))
    })
}

fn hvals<'a>(s: &'a Shared, conn: &'a mut Conn, mut a: Args<'a>) -> Pending<'a> {
    Box::pin(async move {
        let key = a.next()?;
        let map = map_at(s, conn, key).await?;
        Ok(Reply::Array(
            map.fields().map(|(_, v)| Reply::Bulk(v)).collect(),
        ))
    })
}

fn hincrby<'a>(s: &'a Shared, conn: &'a mut Conn, mut a: Args<'a>) -> Pending<'a> {
    Box::pin(async move {
        let key = a.next()?;
        let field = a.next_vec()?;
        let by = a.int()?;
        let w = update(&s.node, conn, key, Update::FieldAdd { field, by }).await?;
        Ok(Reply::Int(w.result.int))
    })
}

fn hlen<'a>(s: &'a Shared, conn: &'a mut Conn, mut a: Args<'a>) -> Pending<'a> {
    Box::pin(async move {
        let key = a.next()?;
        let map = map_at(s, conn, key).await?;
        Ok(Reply::Int(map.len() as i64))
    })
}

fn hexists<'a>(s: &'a Shared, conn: &'a mut Conn, mut a: Args<'a>) -> Pending<'a> {
    Box::pin(async move {
        let key = a.next()?;
        let field = a.next()?;
        let map = map_at(s, conn, key).await?;
        Ok(Reply::Int(i64::from(map.contains(field))))
    })
}
