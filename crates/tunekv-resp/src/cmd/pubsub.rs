//! Pub/sub (issue 18): SUBSCRIBE, PSUBSCRIBE, UNSUBSCRIBE, PUNSUBSCRIBE, PUBLISH, PUBSUB, and
//! how pushed messages (theirs, keyspace notifications', CLIENT TRACKING's) are written.
//! PUBLISH reaches the subscribers of every node; keyspace notifications are made by each node
//! from the changes it applies (`crate::push`).

use super::{Args, CommandSpec, Handler, Kind, Out};
use crate::conn::{Conn, Shared};
use crate::push::{Hub, Push, INVALIDATE_CHANNEL};
use crate::reply::Reply;

const fn spec(name: &'static str, arity: i64, summary: &'static str, h: Handler) -> CommandSpec {
    CommandSpec::new(
        (name, arity),
        Kind::Connection,
        (0, 0, 0),
        ("pubsub", summary),
        h,
    )
}

pub(super) const SPECS: &[CommandSpec] = &[
    spec(
        "subscribe",
        -2,
        "Receives the messages published to the channels (on any node).",
        Handler::Now(subscribe),
    ),
    spec(
        "psubscribe",
        -2,
        "Receives the messages published to channels matching the patterns (keyspace \
         notifications: __keyspace@0__:*).",
        Handler::Now(psubscribe),
    ),
    spec(
        "unsubscribe",
        -1,
        "Stops receiving the channels' messages (all channels if none named).",
        Handler::Now(unsubscribe),
    ),
    spec(
        "punsubscribe",
        -1,
        "Stops receiving the patterns' messages (all patterns if none named).",
        Handler::Now(punsubscribe),
    ),
    spec(
        "publish",
        3,
        "Publishes a message to a channel's subscribers on every node; answers how many on \
         this node received it.",
        Handler::Now(publish),
    ),
    spec(
        "pubsub",
        -2,
        "PUBSUB CHANNELS [pattern], NUMSUB [channel...], NUMPAT: this node's subscriptions.",
        Handler::Now(pubsub),
    ),
];

/// The commands a RESP2 connection with subscriptions may still send.
pub(super) fn allowed_when_subscribed(name: &str) -> bool {
    matches!(
        name,
        "subscribe" | "psubscribe" | "unsubscribe" | "punsubscribe" | "ping" | "quit" | "reset"
    )
}

fn confirm(kind: &str, channel: Option<&[u8]>, count: usize) -> Reply {
    Reply::Push(vec![
        Reply::bulk(kind),
        channel.map_or(Reply::Nil, Reply::bulk),
        Reply::Int(count as i64),
    ])
}

fn add(shared: &Shared, conn: &mut Conn, mut a: Args<'_>, pattern: bool) -> Out {
    conn.inbox(shared)?;
    let mut replies = Vec::new();
    for name in a.rest() {
        let set = if pattern {
            &mut conn.patterns
        } else {
            &mut conn.channels
        };
        if set.insert(name.clone()) {
            shared.hub.subscribe(conn.id, name, pattern);
        }
        let kind = if pattern { "psubscribe" } else { "subscribe" };
        replies.push(confirm(kind, Some(name), conn.subscriptions()));
    }
    Ok(Reply::Seq(replies))
}

fn remove(shared: &Shared, conn: &mut Conn, mut a: Args<'_>, pattern: bool) -> Out {
    let named = a.rest();
    let kind = if pattern {
        "punsubscribe"
    } else {
        "unsubscribe"
    };
    let names: Vec<Vec<u8>> = if named.is_empty() {
        let set = if pattern {
            &conn.patterns
        } else {
            &conn.channels
        };
        let mut all: Vec<Vec<u8>> = set.iter().cloned().collect();
        all.sort();
        all
    } else {
        named.to_vec()
    };
    if names.is_empty() {
        return Ok(Reply::Seq(vec![confirm(kind, None, conn.subscriptions())]));
    }
    let mut replies = Vec::new();
    for name in names {
        let set = if pattern {
            &mut conn.patterns
        } else {
            &mut conn.channels
        };
        if set.remove(&name) {
            shared.hub.unsubscribe(conn.id, &name, pattern);
        }
        replies.push(confirm(kind, Some(&name), conn.subscriptions()));
    }
    Ok(Reply::Seq(replies))
}

fn subscribe(shared: &Shared, conn: &mut Conn, a: Args<'_>) -> Out {
    add(shared, conn, a, false)
}

fn psubscribe(shared: &Shared, conn: &mut Conn, a: Args<'_>) -> Out {
    add(shared, conn, a, true)
}

fn unsubscribe(shared: &Shared, conn: &mut Conn, a: Args<'_>) -> Out {
    remove(shared, conn, a, false)
}

fn punsubscribe(shared: &Shared, conn: &mut Conn, a: Args<'_>) -> Out {
    remove(shared, conn, a, true)
}

fn publish(shared: &Shared, _: &mut Conn, mut a: Args<'_>) -> Out {
    let channel = a.next()?;
    let message = a.next()?;
    Ok(Reply::Int(shared.node.publish(channel, message) as i64))
}

fn pubsub(shared: &Shared, _: &mut Conn, mut a: Args<'_>) -> Out {
    let sub = a.text()?.to_ascii_lowercase();
    match sub.as_str() {
        "channels" => {
            let pattern = a.next_opt();
            a.done()?;
            Ok(Reply::Array(
                shared
                    .hub
                    .channels(pattern)
                    .into_iter()
                    .map(Reply::Bulk)
                    .collect(),
            ))
        }
        "numsub" => {
            let mut out = Vec::new();
            for c in a.rest() {
                out.push(Reply::bulk(c.clone()));
                out.push(Reply::Int(shared.hub.subscribers(c) as i64));
            }
            Ok(Reply::Array(out))
        }
        "numpat" => {
            a.done()?;
            Ok(Reply::Int(shared.hub.patterns() as i64))
        }
        _ => Err(Reply::err(format!(
            "unknown subcommand '{sub}'. Try PUBSUB HELP."
        ))),
    }
}

/// Writes a pushed message as this connection reads them (RESP3 push or RESP2 array); an
/// invalidation of this connection's own write is dropped under NOLOOP, and its keys stay
/// tracked (the change removed them from the table: without this, a value the connection read
/// after its write would hear of no later change).
pub(crate) fn encode(hub: &Hub, conn: &Conn, push: Push, out: &mut Vec<u8>) {
    let reply = match push {
        Push::Message { channel, payload } => Reply::Push(vec![
            Reply::bulk("message"),
            Reply::bulk(&channel[..]),
            Reply::bulk(&payload[..]),
        ]),
        Push::PMessage {
            pattern,
            channel,
            payload,
        } => Reply::Push(vec![
            Reply::bulk("pmessage"),
            Reply::bulk(&pattern[..]),
            Reply::bulk(&channel[..]),
            Reply::bulk(&payload[..]),
        ]),
        Push::Invalidate { keys, from, origin } => {
            if let Some(o) = origin.filter(|o| {
                from == conn.id
                    && conn.tracking.as_ref().is_some_and(|t| t.noloop)
                    && conn.own_writes.contains(o)
            }) {
                if conn.tracking.as_ref().is_some_and(|t| !t.bcast) {
                    hub.track_again(conn.id, &o.0, keys.as_deref().unwrap_or_default());
                }
                return;
            }
            let keys = keys.map_or(Reply::Nil, |k| {
                Reply::Array(k.into_iter().map(Reply::Bulk).collect())
            });
            if conn.resp3 {
                Reply::Push(vec![Reply::bulk("invalidate"), keys])
            } else {
                Reply::Push(vec![
                    Reply::bulk("message"),
                    Reply::bulk(INVALIDATE_CHANNEL),
                    keys,
                ])
            }
        }
    };
    reply.encode(conn.resp3, out);
}

/// PING on a RESP2 connection with subscriptions: `pong` and the message, as an array.
pub(super) fn subscribed_ping(message: Option<&[u8]>) -> Reply {
    Reply::Array(vec![
        Reply::bulk("pong"),
        Reply::bulk(message.unwrap_or_default()),
    ])
}
