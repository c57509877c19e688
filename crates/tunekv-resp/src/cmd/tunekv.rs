//! tunekv's own connection commands: CONSISTENCY, SESSION, QUORUM, WAITMS, RECEIPT, POSITION.

use super::{
    arity, int_arg, not_integer, text, typed, Args, CommandSpec, Handler, Kind, Out, Pending,
};
use crate::conn::{Conn, Shared};
use crate::reply::Reply;
use std::time::Duration;
use tunekv_core::{Level, Quorum, QuorumKind};

const fn spec(
    name: &'static str,
    arity: i64,
    summary: &'static str,
    handler: Handler,
) -> CommandSpec {
    CommandSpec::new(
        (name, arity),
        Kind::Connection,
        (0, 0, 0),
        ("tunekv", summary),
        handler,
    )
}

pub(super) const SPECS: &[CommandSpec] = &[
    spec(
        "consistency",
        -1,
        "Shows or sets the connection's read level (DESIGN levels, or default).",
        Handler::Later(consistency),
    ),
    spec(
        "session",
        -1,
        "Shows the connection's session token, or merges a token into it.",
        Handler::Now(session),
    ),
    spec(
        "quorum",
        -1,
        "Shows or sets the read and write quorums for leaderless keyspaces (QUORUM r w).",
        Handler::Now(quorum),
    ),
    spec(
        "waitms",
        -1,
        "Shows or sets the connection's wait budget in milliseconds.",
        Handler::Now(waitms),
    ),
    spec(
        "receipt",
        1,
        "The last read's receipt: level, node, position, staleness (and quorum; a one-key read \
         of an ordered keyspace: the key's version).",
        Handler::Now(receipt),
    ),
    spec(
        "position",
        1,
        "Where the last write command committed, one position per entry.",
        Handler::Now(position),
    ),
];

fn consistency<'a>(s: &'a Shared, conn: &'a mut Conn, mut a: Args<'a>) -> Pending<'a> {
    Box::pin(async move {
        let Some(given) = a.next_opt() else {
            return Ok(Reply::bulk(
                conn.level
                    .map(|l| l.to_string())
                    .unwrap_or_else(|| "default".into()),
            ));
        };
        a.done()?;
        let t = text(given);
        if t == "default" {
            conn.level = None;
            return Ok(Reply::ok());
        }
        // Refused at once when the selected keyspace's mode does not serve it; reads check
        // again (a connection may SELECT a keyspace of another mode later).
        let level = Level::parse(&t).map_err(typed)?;
        let deadline = tokio::time::Instant::now() + Duration::from_millis(500);
        if let Ok(ks) = s.node.keyspace(&conn.keyspace, deadline).await {
            ks.spec.mode.admits(level).map_err(typed)?;
        }
        conn.level = Some(level);
        Ok(Reply::ok())
    })
}

fn session(s: &Shared, conn: &mut Conn, mut a: Args<'_>) -> Out {
    let Some(token) = a.next_opt() else {
        return Ok(Reply::bulk(s.node.session_key().encode(&conn.session)));
    };
    a.done()?;
    let carried = s
        .node
        .session_key()
        .decode_all([text(token).as_str()])
        .map_err(typed)?;
    conn.session.merge(&carried);
    Ok(Reply::ok())
}

/// `QUORUM` shows the connection's read and write quorums; `QUORUM r w` sets them (`default`
/// for either: the keyspace's default). They apply to leaderless keyspaces.
fn quorum(_: &Shared, conn: &mut Conn, mut a: Args<'_>) -> Out {
    let show = |q: Option<Quorum>| q.map_or("default", Quorum::as_str);
    match a.left() {
        0 => Ok(Reply::bulk(format!(
            "r={} w={}",
            show(conn.r),
            show(conn.w)
        ))),
        2 => {
            let parse = |arg: &[u8], kind| -> Result<Option<Quorum>, Reply> {
                let t = text(arg).to_ascii_lowercase();
                if t == "default" {
                    return Ok(None);
                }
                Quorum::parse(&t, kind).map(Some).map_err(typed)
            };
            let r = parse(a.next()?, QuorumKind::Read)?;
            let w = parse(a.next()?, QuorumKind::Write)?;
            conn.r = r;
            conn.w = w;
            Ok(Reply::ok())
        }
        _ => Err(arity("quorum")),
    }
}

fn waitms(_: &Shared, conn: &mut Conn, mut a: Args<'_>) -> Out {
    let Some(given) = a.next_opt() else {
        return Ok(conn
            .wait
            .map(|w| Reply::Int(w.as_millis() as i64))
            .unwrap_or_else(|| Reply::bulk("default")));
    };
    a.done()?;
    let ms = u64::try_from(int_arg(given)?).map_err(|_| not_integer())?;
    conn.wait = Some(Duration::from_millis(ms));
    Ok(Reply::ok())
}

/// The last read's receipt; for a read over several shards, the stalest shard's, with
/// `shards` saying how many there were.
fn receipt(_: &Shared, conn: &mut Conn, _: Args<'_>) -> Out {
    let Some(r) = conn
        .receipts
        .iter()
        .max_by_key(|r| (r.staleness.ms, r.staleness.entries))
    else {
        return Ok(Reply::Nil);
    };
    let ms = i64::try_from(r.staleness.ms).unwrap_or(i64::MAX);
    let mut fields = vec![
        (Reply::bulk("level"), Reply::bulk(r.level.to_string())),
        (Reply::bulk("served_by"), Reply::Int(r.served_by.0 as i64)),
        (Reply::bulk("position"), Reply::bulk(r.position.to_string())),
        (
            Reply::bulk("shard"),
            Reply::Int(i64::from(r.position.shard.0)),
        ),
        (Reply::bulk("index"), Reply::Int(r.position.index.0 as i64)),
        (
            Reply::bulk("commit_ms"),
            Reply::Int(r.position.commit_ms as i64),
        ),
        (
            Reply::bulk("staleness_entries"),
            Reply::Int(r.staleness.entries as i64),
        ),
        (Reply::bulk("staleness_ms"), Reply::Int(ms)),
        (
            Reply::bulk("shards"),
            Reply::Int(conn.receipts.len() as i64),
        ),
    ];
    if let Some(q) = &r.quorum {
        fields.push((Reply::bulk("quorum"), Reply::bulk(q.header())));
    }
    if let Some(v) = conn.read_version {
        fields.push((Reply::bulk("version"), Reply::Int(v as i64)));
    }
    Ok(Reply::Map(fields))
}

fn position(_: &Shared, conn: &mut Conn, _: Args<'_>) -> Out {
    Ok(Reply::Array(
        conn.written
            .iter()
            .map(|p| Reply::bulk(p.to_string()))
            .collect(),
    ))
}
