//! Generic key commands: DEL, UNLINK, EXISTS, EXPIRE, PEXPIRE, EXPIREAT, PEXPIREAT, PERSIST,
//! TTL, PTTL, TYPE, SCAN, KEYS, DBSIZE.

use super::{
    int_arg, now_ms, read, read_one, state, syntax, text, typed, write, Args, CommandSpec, Handler,
    Kind, Pending, KEYS_MAX,
};
use crate::conn::{Conn, Shared};
use crate::glob;
use crate::reply::Reply;
use tunekv_dynamo::Stored;
use tunekv_node::{ExpireIf, Op, Ttl};

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
        ("generic", summary),
        Handler::Later(handler),
    )
}

const ONE: (i64, i64, i64) = (1, 1, 1);
const ALL: (i64, i64, i64) = (1, -1, 1);
const NONE: (i64, i64, i64) = (0, 0, 0);

pub(super) const SPECS: &[CommandSpec] = &[
    spec(
        "del",
        -2,
        Kind::Write,
        ALL,
        "Deletes keys; returns how many existed.",
        del,
    ),
    spec(
        "unlink",
        -2,
        Kind::Write,
        ALL,
        "Deletes keys; returns how many existed.",
        del,
    ),
    spec(
        "exists",
        -2,
        Kind::Read,
        ALL,
        "Counts the keys that exist.",
        exists,
    ),
    spec(
        "expire",
        -3,
        Kind::Write,
        ONE,
        "Sets a key's expiry in seconds (NX, XX, GT, LT).",
        expire,
    ),
    spec(
        "pexpire",
        -3,
        Kind::Write,
        ONE,
        "Sets a key's expiry in milliseconds (NX, XX, GT, LT).",
        expire,
    ),
    spec(
        "expireat",
        -3,
        Kind::Write,
        ONE,
        "Sets a key's expiry to a Unix time in seconds (NX, XX, GT, LT).",
        expire,
    ),
    spec(
        "pexpireat",
        -3,
        Kind::Write,
        ONE,
        "Sets a key's expiry to a Unix time in milliseconds (NX, XX, GT, LT).",
        expire,
    ),
    spec(
        "persist",
        2,
        Kind::Write,
        ONE,
        "Removes a key's expiry.",
        persist,
    ),
    spec(
        "ttl",
        2,
        Kind::Read,
        ONE,
        "A key's time to live in seconds (-1: none, -2: no key).",
        ttl,
    ),
    spec(
        "pttl",
        2,
        Kind::Read,
        ONE,
        "A key's time to live in milliseconds (-1: none, -2: no key).",
        ttl,
    ),
    spec(
        "type",
        2,
        Kind::Read,
        ONE,
        "A key's type: string, set, hash, or none.",
        key_type,
    ),
    spec(
        "scan",
        -2,
        Kind::Read,
        NONE,
        "Iterates over the keyspace's keys (MATCH, COUNT, TYPE).",
        scan,
    ),
    spec(
        "keys",
        2,
        Kind::Read,
        NONE,
        "The keys matching a pattern (at most 10,000).",
        keys,
    ),
    spec(
        "dbsize",
        1,
        Kind::Read,
        NONE,
        "How many keys the keyspace holds.",
        dbsize,
    ),
];

fn del<'a>(s: &'a Shared, conn: &'a mut Conn, mut a: Args<'a>) -> Pending<'a> {
    Box::pin(async move {
        let mut n = 0;
        for k in a.rest() {
            let r = write(&s.node, conn, k, |_| Ok(Op::Delete { key: k.clone() })).await?;
            n += i64::from(r.existed);
        }
        Ok(Reply::Int(n))
    })
}

fn exists<'a>(s: &'a Shared, conn: &'a mut Conn, mut a: Args<'a>) -> Pending<'a> {
    Box::pin(async move {
        let types = types(s, conn, a.rest()).await?;
        Ok(Reply::Int(
            types.iter().filter(|t| t.is_some()).count() as i64
        ))
    })
}

/// The Redis type of each key (`None`: absent): `string` for values and counters, `set` and
/// `hash` for the keys of set and map keyspaces (which have no value GET could read).
async fn types(
    s: &Shared,
    conn: &mut Conn,
    keys: &[Vec<u8>],
) -> Result<Vec<Option<&'static str>>, Reply> {
    match read(&s.node, conn, keys).await {
        Ok(found) => Ok(found.iter().map(|v| v.as_ref().map(|_| "string")).collect()),
        Err(Reply::Error(e)) if e.starts_with("WRONGTYPE") => {
            let mut out = Vec::with_capacity(keys.len());
            for k in keys {
                out.push(match state(&s.node, conn, k).await? {
                    Some(Stored::Set(set)) if !set.is_empty() => Some("set"),
                    Some(Stored::Map(map)) if !map.is_empty() => Some("hash"),
                    _ => None,
                });
            }
            Ok(out)
        }
        Err(e) => Err(e),
    }
}

/// EXPIRE's NX / XX / GT / LT options. NX excludes the others, and GT excludes LT, as in Redis.
fn expire_if(name: &str, opts: &[Vec<u8>]) -> Result<ExpireIf, Reply> {
    let (mut nx, mut xx, mut gt, mut lt) = (false, false, false, false);
    for o in opts {
        match text(o).to_ascii_lowercase().as_str() {
            "nx" => nx = true,
            "xx" => xx = true,
            "gt" => gt = true,
            "lt" => lt = true,
            other => {
                return Err(Reply::err(format!(
                    "Unsupported option {other} for '{name}' command"
                )))
            }
        }
    }
    if nx && (xx || gt || lt) {
        return Err(Reply::err(
            "NX and XX, GT or LT options at the same time are not compatible",
        ));
    }
    if gt && lt {
        return Err(Reply::err(
            "GT and LT options at the same time are not compatible",
        ));
    }
    Ok(match (nx, xx, gt, lt) {
        (true, ..) => ExpireIf::NoExpiry,
        (_, _, true, _) => ExpireIf::Later,
        (_, true, _, true) => ExpireIf::HasExpiryEarlier,
        (_, _, _, true) => ExpireIf::Earlier,
        (_, true, ..) => ExpireIf::HasExpiry,
        _ => ExpireIf::Always,
    })
}

/// EXPIRE, PEXPIRE, EXPIREAT, PEXPIREAT.
fn expire<'a>(s: &'a Shared, conn: &'a mut Conn, mut a: Args<'a>) -> Pending<'a> {
    Box::pin(async move {
        let name = a.name();
        let key = a.next()?;
        let amount = a.next()?;
        // Options are judged before the time, as Redis does.
        let when = expire_if(name, a.rest())?;
        let n = int_arg(amount)?;
        let unit = if name.starts_with('p') { 1 } else { 1000 };
        let ms = n
            .checked_mul(unit)
            .ok_or_else(|| Reply::err(format!("invalid expire time in '{name}' command")))?;
        let ttl = match (name.ends_with("at"), u64::try_from(ms)) {
            (true, Ok(at)) => Ttl::AtMs(at),
            (false, Ok(after)) if after > 0 => Ttl::AfterMs(after),
            // Zero, negative or a time in the past: the key is deleted.
            _ => Ttl::AtMs(0),
        };
        let r = write(&s.node, conn, key, |_| {
            Ok(Op::Expire {
                key: key.to_vec(),
                ttl,
                when,
            })
        })
        .await?;
        Ok(Reply::Int(r.int))
    })
}

fn persist<'a>(s: &'a Shared, conn: &'a mut Conn, mut a: Args<'a>) -> Pending<'a> {
    Box::pin(async move {
        let key = a.next()?;
        let r = write(&s.node, conn, key, |_| {
            Ok(Op::Expire {
                key: key.to_vec(),
                ttl: Ttl::Clear,
                when: ExpireIf::Always,
            })
        })
        .await?;
        Ok(Reply::Int(i64::from(r.changed)))
    })
}

/// TTL (seconds, rounded) and PTTL.
fn ttl<'a>(s: &'a Shared, conn: &'a mut Conn, mut a: Args<'a>) -> Pending<'a> {
    Box::pin(async move {
        let key = a.next()?;
        Ok(Reply::Int(match read_one(&s.node, conn, key).await? {
            None => -2,
            Some(v) => match v.expires_ms {
                None => -1,
                Some(at) => {
                    let left = at.saturating_sub(now_ms()) as i64;
                    if a.name() == "ttl" {
                        (left + 500) / 1000
                    } else {
                        left
                    }
                }
            },
        }))
    })
}

fn key_type<'a>(s: &'a Shared, conn: &'a mut Conn, mut a: Args<'a>) -> Pending<'a> {
    Box::pin(async move {
        let key = a.next()?;
        let t = types(s, conn, &[key.to_vec()]).await?;
        Ok(Reply::Simple(t[0].unwrap_or("none").into()))
    })
}

fn scan<'a>(s: &'a Shared, conn: &'a mut Conn, mut a: Args<'a>) -> Pending<'a> {
    Box::pin(async move {
        let cursor: u64 = std::str::from_utf8(a.next()?)
            .ok()
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| Reply::err("invalid cursor"))?;
        let (mut pattern, mut count, mut only_strings) = (None, 10usize, true);
        while let Some(opt) = a.next_opt() {
            let Some(v) = a.next_opt() else {
                return Err(syntax());
            };
            match text(opt).to_ascii_uppercase().as_str() {
                "MATCH" => pattern = Some(v.to_vec()),
                "COUNT" => {
                    count = usize::try_from(int_arg(v)?)
                        .ok()
                        .filter(|c| *c > 0)
                        .ok_or_else(syntax)?
                }
                "TYPE" => only_strings = text(v).eq_ignore_ascii_case("string"),
                _ => return Err(syntax()),
            }
        }
        // A user who may read only some keys sees only those.
        let readable = super::access::readable(s, conn)?;
        let ks = conn.keyspace.clone();
        let matcher = |k: &[u8]| {
            only_strings
                && pattern.as_ref().is_none_or(|p| glob::matches(p, k))
                && readable
                    .as_ref()
                    .is_none_or(|g| g.allows(&ks, k, tunekv_core::auth::Access::Read))
        };
        let page = s
            .node
            .scan(conn.read_req(), cursor, count, &matcher)
            .await
            .map_err(|e| {
                if e.code == tunekv_core::Code::BadRequest {
                    Reply::err("invalid cursor")
                } else {
                    typed(e)
                }
            })?;
        conn.receipts = page.receipts;
        conn.read_version = None;
        Ok(Reply::Array(vec![
            Reply::bulk(page.cursor.to_string()),
            Reply::Array(page.keys.into_iter().map(Reply::Bulk).collect()),
        ]))
    })
}

fn keys<'a>(s: &'a Shared, conn: &'a mut Conn, mut a: Args<'a>) -> Pending<'a> {
    Box::pin(async move {
        let pattern = a.next()?;
        let readable = super::access::readable(s, conn)?;
        let ks = conn.keyspace.clone();
        let mut keys = Vec::new();
        let mut cursor = 0;
        let mut receipts = Vec::new();
        loop {
            let page = s
                .node
                .scan(conn.read_req(), cursor, 1000, &|k: &[u8]| {
                    glob::matches(pattern, k)
                        && readable
                            .as_ref()
                            .is_none_or(|g| g.allows(&ks, k, tunekv_core::auth::Access::Read))
                })
                .await
                .map_err(typed)?;
            keys.extend(page.keys);
            receipts.extend(page.receipts);
            if keys.len() > KEYS_MAX {
                return Err(Reply::err(format!(
                    "KEYS would return more than {KEYS_MAX} keys; use SCAN"
                )));
            }
            cursor = page.cursor;
            if cursor == 0 {
                break;
            }
        }
        conn.receipts = receipts;
        conn.read_version = None;
        Ok(Reply::Array(keys.into_iter().map(Reply::Bulk).collect()))
    })
}

fn dbsize<'a>(s: &'a Shared, conn: &'a mut Conn, _: Args<'a>) -> Pending<'a> {
    Box::pin(async move {
        let (n, receipts) = s.node.count_keys(conn.read_req()).await.map_err(typed)?;
        conn.receipts = receipts;
        conn.read_version = None;
        Ok(Reply::Int(n as i64))
    })
}
