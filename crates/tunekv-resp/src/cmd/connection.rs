//! Connection and server commands: PING, ECHO, QUIT, AUTH, HELLO, CLIENT, SELECT, COMMAND,
//! CONFIG, INFO.

use super::{
    arity, command_docs, command_info, int_arg, lookup, sorted, syntax, text, typed, Args,
    CommandSpec, Handler, Kind, Out, Pending, NUMBERED_DBS,
};
use crate::conn::{Conn, Shared};
use crate::glob;
use crate::reply::Reply;
use std::sync::atomic::Ordering;
use std::time::Duration;

const fn spec(
    name: &'static str,
    arity: i64,
    group: &'static str,
    summary: &'static str,
    handler: Handler,
) -> CommandSpec {
    CommandSpec::new(
        (name, arity),
        Kind::Connection,
        (0, 0, 0),
        (group, summary),
        handler,
    )
}

pub(super) const SPECS: &[CommandSpec] = &[
    spec(
        "ping",
        -1,
        "connection",
        "Returns PONG, or the message given.",
        Handler::Now(ping),
    ),
    spec(
        "echo",
        2,
        "connection",
        "Returns the message given.",
        Handler::Now(echo),
    ),
    spec(
        "quit",
        -1,
        "connection",
        "Closes the connection after the reply.",
        Handler::Now(quit),
    ),
    spec(
        "auth",
        -2,
        "connection",
        "Authenticates (no password is configured).",
        Handler::Now(auth),
    ),
    spec(
        "hello",
        -1,
        "connection",
        "Picks RESP2 or RESP3 and names the connection; describes the server.",
        Handler::Now(hello),
    ),
    spec(
        "client",
        -2,
        "connection",
        "CLIENT ID, GETNAME, SETNAME, INFO, LIST, SETINFO for this connection.",
        Handler::Now(client),
    ),
    spec(
        "select",
        2,
        "connection",
        "Selects keyspace dbN (0-15, created on first use) or a keyspace by name.",
        Handler::Later(select),
    ),
    spec(
        "command",
        -1,
        "server",
        "Describes the commands: COMMAND, COUNT, LIST, INFO name..., DOCS [name...].",
        Handler::Now(command),
    ),
    spec(
        "config",
        -2,
        "server",
        "CONFIG GET of the durability settings clients ask about.",
        Handler::Now(config),
    ),
    spec(
        "info",
        -1,
        "server",
        "The server, its clients and its keyspaces.",
        Handler::Now(info),
    ),
];

fn ping(_: &Shared, _: &mut Conn, mut a: Args<'_>) -> Out {
    let reply = match a.next_opt() {
        None => Reply::Simple("PONG".into()),
        Some(m) => Reply::bulk(m),
    };
    a.done()?;
    Ok(reply)
}

fn echo(_: &Shared, _: &mut Conn, mut a: Args<'_>) -> Out {
    Ok(Reply::bulk(a.next()?))
}

fn quit(_: &Shared, conn: &mut Conn, _: Args<'_>) -> Out {
    conn.quit = true;
    Ok(Reply::ok())
}

fn no_password() -> Reply {
    Reply::err(
        "AUTH <password> called without any password configured for the default user. \
         Are you sure your configuration is correct?",
    )
}

fn auth(_: &Shared, _: &mut Conn, _: Args<'_>) -> Out {
    Err(no_password())
}

fn hello(shared: &Shared, conn: &mut Conn, mut a: Args<'_>) -> Out {
    if let Some(v) = a.next_opt() {
        match int_arg(v) {
            Ok(2) => conn.resp3 = false,
            Ok(3) => conn.resp3 = true,
            _ => return Err(Reply::Error("NOPROTO unsupported protocol version".into())),
        }
    }
    while let Some(opt) = a.next_opt() {
        match (text(opt).to_ascii_lowercase().as_str(), a.left()) {
            ("auth", 2..) => return Err(no_password()),
            ("setname", 1..) => conn.name = Some(a.text()?),
            _ => return Err(syntax()),
        }
    }
    Ok(Reply::Map(vec![
        (Reply::bulk("server"), Reply::bulk("tunekv")),
        (Reply::bulk("version"), Reply::bulk("7.0.0")),
        (
            Reply::bulk("tunekv_version"),
            Reply::bulk(env!("CARGO_PKG_VERSION")),
        ),
        (
            Reply::bulk("proto"),
            Reply::Int(if conn.resp3 { 3 } else { 2 }),
        ),
        (Reply::bulk("id"), Reply::Int(conn.id as i64)),
        (Reply::bulk("mode"), Reply::bulk("standalone")),
        (Reply::bulk("role"), Reply::bulk("master")),
        (Reply::bulk("node"), Reply::Int(shared.node.id().0 as i64)),
        (Reply::bulk("modules"), Reply::Array(vec![])),
    ]))
}

fn client_line(conn: &Conn) -> String {
    // Clients parse `db` as a number: a named keyspace shows as -1, and by name in `keyspace`.
    let db = conn
        .keyspace
        .strip_prefix("db")
        .and_then(|n| n.parse::<u32>().ok())
        .filter(|n| *n < NUMBERED_DBS)
        .map(i64::from)
        .unwrap_or(-1);
    format!(
        "id={} addr={} name={} db={db} keyspace={} resp={} consistency={}\n",
        conn.id,
        conn.peer,
        conn.name.as_deref().unwrap_or(""),
        conn.keyspace,
        if conn.resp3 { 3 } else { 2 },
        conn.level
            .map(|l| l.to_string())
            .unwrap_or_else(|| "default".into())
    )
}

fn client(_: &Shared, conn: &mut Conn, mut a: Args<'_>) -> Out {
    let given = a.text()?;
    let sub = given.to_ascii_lowercase();
    match (sub.as_str(), a.left()) {
        ("id", 0) => Ok(Reply::Int(conn.id as i64)),
        ("getname", 0) => Ok(conn.name.clone().map(Reply::bulk).unwrap_or(Reply::Nil)),
        ("setname", 1) => {
            let n = a.text()?;
            if n.chars().any(|c| c.is_whitespace() || c.is_control()) {
                return Err(Reply::err(
                    "Client names cannot contain spaces, newlines or special characters.",
                ));
            }
            conn.name = (!n.is_empty()).then_some(n);
            Ok(Reply::ok())
        }
        ("info", 0) | ("list", 0) => Ok(Reply::bulk(client_line(conn))),
        ("setinfo", 2) => Ok(Reply::ok()),
        ("id" | "getname" | "setname" | "info" | "list" | "setinfo", _) => Err(Reply::err(
            format!("wrong number of arguments for 'client|{sub}' command"),
        )),
        _ => Err(Reply::err(format!(
            "unknown subcommand '{given}'. Try CLIENT HELP."
        ))),
    }
}

fn select<'a>(shared: &'a Shared, conn: &'a mut Conn, mut a: Args<'a>) -> Pending<'a> {
    Box::pin(async move {
        let which = a.next()?;
        let name = match int_arg(which) {
            Ok(n) if (0..i64::from(NUMBERED_DBS)).contains(&n) => format!("db{n}"),
            Ok(_) => return Err(Reply::err("DB index is out of range")),
            Err(_) => {
                let name = text(which);
                let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
                shared.node.keyspace(&name, deadline).await.map_err(typed)?;
                name
            }
        };
        conn.keyspace_ready = conn.keyspace == name && conn.keyspace_ready;
        conn.keyspace = name;
        Ok(Reply::ok())
    })
}

fn command(_: &Shared, _: &mut Conn, mut a: Args<'_>) -> Out {
    let sub = a.next_opt().map(|s| text(s).to_ascii_lowercase());
    let named = |a: &mut Args<'_>, each: fn(&CommandSpec) -> Reply| {
        a.rest()
            .iter()
            .map(|n| lookup(&text(n).to_ascii_lowercase()).map_or(Reply::Nil, each))
            .collect()
    };
    match sub.as_deref() {
        None => Ok(Reply::Array(
            sorted().into_iter().map(command_info).collect(),
        )),
        Some("count") => Ok(Reply::Int(sorted().len() as i64)),
        Some("list") => Ok(Reply::Array(
            sorted().into_iter().map(|s| Reply::bulk(s.name)).collect(),
        )),
        Some("info") => Ok(Reply::Array(named(&mut a, command_info))),
        Some("docs") => {
            let names = a.rest();
            let docs = if names.is_empty() {
                sorted().into_iter().map(command_docs).collect()
            } else {
                names
                    .iter()
                    .filter_map(|n| lookup(&text(n).to_ascii_lowercase()))
                    .map(command_docs)
                    .collect()
            };
            Ok(Reply::Map(docs))
        }
        Some(other) => Err(Reply::err(format!(
            "unknown subcommand '{other}'. Try COMMAND HELP."
        ))),
    }
}

fn config(_: &Shared, _: &mut Conn, mut a: Args<'_>) -> Out {
    match a.text()?.to_ascii_lowercase().as_str() {
        "get" if a.left() >= 1 => {
            // Honest answers for what clients ask: every write is fsynced before its ack.
            let known = [
                ("save", ""),
                ("appendonly", "yes"),
                ("appendfsync", "always"),
            ];
            let mut pairs = Vec::new();
            for p in a.rest() {
                let p = text(p).to_ascii_lowercase();
                for (k, v) in known {
                    if glob::matches(p.as_bytes(), k.as_bytes()) {
                        pairs.push((Reply::bulk(k), Reply::bulk(v)));
                    }
                }
            }
            Ok(Reply::Map(pairs))
        }
        "get" => Err(arity("config|get")),
        _ => Err(Reply::err(
            "tunekv is configured by its node config file; CONFIG supports GET only",
        )),
    }
}

fn info(shared: &Shared, conn: &mut Conn, _: Args<'_>) -> Out {
    let node = &shared.node;
    let mut s = String::new();
    s += "# Server\r\nredis_version:7.0.0\r\n";
    s += &format!("tunekv_version:{}\r\n", env!("CARGO_PKG_VERSION"));
    s += &format!("tunekv_node:{}\r\n", node.id());
    s += "redis_mode:standalone\r\n\r\n# Clients\r\n";
    s += &format!(
        "connected_clients:{}\r\n\r\n# Keyspace\r\n",
        shared.connected.load(Ordering::Relaxed)
    );
    for ks in node.list_keyspaces() {
        s += &format!(
            "{}:mode={},shards={},replicas={},default_level={}\r\n",
            ks.name,
            ks.spec.mode.as_str(),
            ks.spec.shards,
            ks.spec.replicas,
            ks.spec.default_level()
        );
    }
    s += &format!("\r\n# Connection\r\nkeyspace:{}\r\n", conn.keyspace);
    Ok(Reply::bulk(s))
}
