//! Connection and server commands: PING, ECHO, QUIT, AUTH, HELLO, CLIENT, SELECT, COMMAND,
//! CONFIG, INFO.

use super::{
    arity, command_docs, command_info, int_arg, lookup, sorted, syntax, text, typed, Args,
    CommandSpec, Handler, Kind, Out, Pending, NUMBERED_DBS,
};
use crate::conn::{Conn, Login, Shared};
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
        "Authenticates as a user (AUTH user password) when the node has auth on.",
        Handler::Later(auth),
    ),
    spec(
        "hello",
        -1,
        "connection",
        "Picks RESP2 or RESP3, authenticates (AUTH user password), names the connection; \
         describes the server.",
        Handler::Later(hello),
    ),
    spec(
        "client",
        -2,
        "connection",
        "CLIENT ID, GETNAME, SETNAME, INFO, LIST, SETINFO, TRACKING, CACHING, GETREDIRECT, \
         TRACKINGINFO for this connection.",
        Handler::Later(client),
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
        "CONFIG GET of the settings clients ask about; CONFIG SET notify-keyspace-events and \
         tracking-table-max-keys (this node).",
        Handler::Later(config),
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

/// Logs the connection in as `user` (None: `AUTH password`, the user `default`); Redis's
/// `WRONGPASS` when the pair does not match. A bearer token (`tkv1.…`) may stand for the
/// password, as managed Redis services take access tokens: the connection is then logged in
/// until the token expires (`user` None: as the token's user).
async fn log_in(
    shared: &Shared,
    conn: &mut Conn,
    user: Option<&str>,
    password: &str,
) -> Result<(), Reply> {
    if !shared.node.auth_enabled() {
        return Err(no_password());
    }
    if password.starts_with("tkv1.") {
        return match shared.node.token_login(user, password) {
            Ok(claims) => {
                let login = Login {
                    user: claims.user,
                    epoch: claims.epoch,
                    expires_ms: Some(claims.expires_ms),
                };
                logged_in(shared, conn, login)
            }
            Err(e) if e.code == tunekv_core::Code::Unauthenticated => {
                shared
                    .acl_log
                    .record(conn, "auth", "AUTH", user.unwrap_or("(token)"));
                Err(Reply::Error(format!("WRONGPASS {}", e.message)))
            }
            Err(e) => Err(typed(e)),
        };
    }
    let user = user.unwrap_or("default");
    match shared.node.login(user, password, None).await {
        Ok(l) => {
            let login = Login {
                user: user.to_string(),
                epoch: l.epoch,
                expires_ms: None,
            };
            logged_in(shared, conn, login)
        }
        Err(e)
            if e.code == tunekv_core::Code::Unauthenticated
                || e.code == tunekv_core::Code::BadRequest =>
        {
            shared.acl_log.record(conn, "auth", "AUTH", user);
            Err(Reply::Error(
                "WRONGPASS invalid username-password pair or user is disabled.".into(),
            ))
        }
        Err(e) => Err(typed(e)),
    }
}

/// The connection acts as `login` from now on, its pushed messages included. A connection
/// with an inbox that changes user moves its place under `watches_per_user_max` to the new
/// user (refused, keeping the old login, when the new user has none left).
fn logged_in(shared: &Shared, conn: &mut Conn, login: Login) -> Result<(), Reply> {
    if conn.inbox.is_some() {
        let same_user = conn.login.as_ref().is_some_and(|l| l.user == login.user);
        if !same_user {
            let grants = login.grants(&shared.node).map_err(typed)?;
            conn.watch_slot = shared.node.watch_slot(&grants).map_err(typed)?;
        }
        shared.hub.set_reader(conn.id, Some(login.clone()));
    }
    conn.login = Some(login);
    Ok(())
}

/// `AUTH user password` (`AUTH password` names the user `default`, which tunekv does not have);
/// `AUTH tkv1.TOKEN` or `AUTH user tkv1.TOKEN` log in with a bearer token.
fn auth<'a>(shared: &'a Shared, conn: &'a mut Conn, mut a: Args<'a>) -> Pending<'a> {
    Box::pin(async move {
        let first = a.text()?;
        let (user, password) = match a.next_opt() {
            Some(p) => (Some(first), text(p)),
            None => (None, first),
        };
        if a.left() > 0 {
            return Err(syntax());
        }
        log_in(shared, conn, user.as_deref(), &password).await?;
        Ok(Reply::ok())
    })
}

fn hello<'a>(shared: &'a Shared, conn: &'a mut Conn, mut a: Args<'a>) -> Pending<'a> {
    Box::pin(async move {
        let mut resp3 = conn.resp3;
        if let Some(v) = a.next_opt() {
            match int_arg(v) {
                Ok(2) => resp3 = false,
                Ok(3) => resp3 = true,
                _ => return Err(Reply::Error("NOPROTO unsupported protocol version".into())),
            }
        }
        let mut name = None;
        while let Some(opt) = a.next_opt() {
            match (text(opt).to_ascii_lowercase().as_str(), a.left()) {
                ("auth", 2..) => {
                    let user = a.text()?;
                    let password = a.text()?;
                    log_in(shared, conn, Some(&user), &password).await?;
                }
                ("setname", 1..) => name = Some(a.text()?),
                _ => return Err(syntax()),
            }
        }
        if shared.node.auth_enabled() && conn.login.is_none() {
            return Err(super::access::noauth());
        }
        conn.resp3 = resp3;
        if name.is_some() {
            conn.name = name;
        }
        hello_reply(shared, conn)
    })
}

fn hello_reply(shared: &Shared, conn: &mut Conn) -> Out {
    shared.hub.set_resp3(conn.id, conn.resp3);
    Ok(Reply::Map(vec![
        // As Redis names itself, so clients enable what they check the server for (redis-py's
        // client-side cache wants "redis" 7.4 or later); `tunekv_version` says what it is.
        (Reply::bulk("server"), Reply::bulk("redis")),
        (Reply::bulk("version"), Reply::bulk(REDIS_VERSION)),
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

pub(super) fn client_line(conn: &Conn) -> String {
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

/// The Redis version tunekv answers as (HELLO, INFO): the commands it has behave as this
/// version's.
const REDIS_VERSION: &str = "7.4.0";

fn client<'a>(shared: &'a Shared, conn: &'a mut Conn, mut a: Args<'a>) -> Pending<'a> {
    Box::pin(async move {
        let given = a.text()?;
        let sub = given.to_ascii_lowercase();
        match sub.as_str() {
            "tracking" => return tracking(shared, conn, a).await,
            "caching" => {
                let yes = match a.text()?.to_ascii_lowercase().as_str() {
                    "yes" => true,
                    "no" => false,
                    _ => return Err(syntax()),
                };
                a.done()?;
                let mode = conn.tracking.as_ref().map(|t| (t.optin, t.optout));
                return match (mode, yes) {
                    (Some((true, _)), true) | (Some((_, true)), false) => {
                        conn.caching = Some(yes);
                        Ok(Reply::ok())
                    }
                    (Some((true, _)), false) | (Some((_, true)), true) => Err(Reply::err(
                        "CLIENT CACHING YES is only valid when tracking is enabled in OPTIN \
                         mode; CLIENT CACHING NO only in OPTOUT mode.",
                    )),
                    _ => Err(Reply::err(
                        "CLIENT CACHING can be called only when the client is in tracking mode \
                         with OPTIN or OPTOUT mode enabled",
                    )),
                };
            }
            "getredirect" => {
                a.done()?;
                return Ok(Reply::Int(match &conn.tracking {
                    None => -1,
                    Some(t) => t.redirect.map_or(0, |r| r as i64),
                }));
            }
            "trackinginfo" => {
                a.done()?;
                return Ok(tracking_info(conn));
            }
            _ => {}
        }
        client_now(conn, &given, &sub, a)
    })
}

/// `CLIENT TRACKING on|off [REDIRECT id] [PREFIX p]... [BCAST] [OPTIN] [OPTOUT] [NOLOOP]`.
async fn tracking(shared: &Shared, conn: &mut Conn, mut a: Args<'_>) -> Out {
    let on = match a.text()?.to_ascii_lowercase().as_str() {
        "on" => true,
        "off" => false,
        _ => return Err(syntax()),
    };
    let mut t = crate::push::Tracking::default();
    while let Some(opt) = a.next_opt() {
        match text(opt).to_ascii_lowercase().as_str() {
            "redirect" => {
                let id = int_arg(a.next()?)?;
                if id != conn.id as i64 && id > 0 {
                    t.redirect = Some(id as u64);
                } else if id <= 0 {
                    return Err(Reply::err(
                        "The client ID you want redirect to does not exist",
                    ));
                }
            }
            "prefix" => t.prefixes.push(a.next_vec()?),
            "bcast" => t.bcast = true,
            "optin" => t.optin = true,
            "optout" => t.optout = true,
            "noloop" => t.noloop = true,
            _ => return Err(syntax()),
        }
    }
    if !on {
        conn.tracking = None;
        conn.caching = None;
        shared.hub.track(conn.id, None).await;
        return Ok(Reply::ok());
    }
    if !t.prefixes.is_empty() && !t.bcast {
        return Err(Reply::err(
            "PREFIX option requires BCAST mode to be enabled",
        ));
    }
    if t.optin && t.optout {
        return Err(Reply::err("You can't use both OPTIN and OPTOUT"));
    }
    if t.bcast && (t.optin || t.optout) {
        return Err(Reply::err("OPTIN and OPTOUT are not compatible with BCAST"));
    }
    if let Some(old) = &conn.tracking {
        if (old.optin, old.optout, old.bcast) != (t.optin, t.optout, t.bcast) {
            return Err(Reply::err(
                "You can't switch BCAST, OPTIN or OPTOUT mode before disabling tracking for \
                 this client, and then re-enabling it with a different mode.",
            ));
        }
    }
    if t.redirect.is_some() && t.noloop {
        return Err(Reply::err(
            "tunekv does not support NOLOOP together with REDIRECT: the redirected connection \
             cannot tell this connection's own writes; use HELLO 3 and no REDIRECT",
        ));
    }
    if t.redirect.is_some_and(|r| !shared.hub.reachable(r)) {
        // Invalidations sent there would reach no one: the cache would silently go stale.
        return Err(Reply::err(
            "The client ID you want redirect to does not exist (or has not subscribed to \
             __redis__:invalidate on this node)",
        ));
    }
    if t.redirect.is_none() && !conn.resp3 {
        return Err(Reply::err(
            "CLIENT TRACKING on a RESP2 connection needs REDIRECT to a connection subscribed \
             to __redis__:invalidate (or HELLO 3 first: invalidations are then pushed here)",
        ));
    }
    conn.inbox(shared)?;
    conn.tracking = Some(t.clone());
    shared.hub.track(conn.id, Some(t)).await;
    Ok(Reply::ok())
}

fn tracking_info(conn: &Conn) -> Reply {
    let (flags, redirect, prefixes) = match &conn.tracking {
        None => (vec![Reply::bulk("off")], -1, Vec::new()),
        Some(t) => {
            let mut f = vec![Reply::bulk("on")];
            for (set, name) in [
                (t.bcast, "bcast"),
                (t.optin, "optin"),
                (t.optout, "optout"),
                (t.noloop, "noloop"),
            ] {
                if set {
                    f.push(Reply::bulk(name));
                }
            }
            if t.optin && conn.caching == Some(true) {
                f.push(Reply::bulk("caching-yes"));
            }
            if t.optout && conn.caching == Some(false) {
                f.push(Reply::bulk("caching-no"));
            }
            let prefixes = t.prefixes.iter().map(|p| Reply::bulk(p.clone())).collect();
            (f, t.redirect.map_or(0, |r| r as i64), prefixes)
        }
    };
    Reply::Map(vec![
        (Reply::bulk("flags"), Reply::Array(flags)),
        (Reply::bulk("redirect"), Reply::Int(redirect)),
        (Reply::bulk("prefixes"), Reply::Array(prefixes)),
    ])
}

fn client_now(conn: &mut Conn, given: &str, sub: &str, mut a: Args<'_>) -> Out {
    match (sub, a.left()) {
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

fn config<'a>(shared: &'a Shared, _: &'a mut Conn, mut a: Args<'a>) -> Pending<'a> {
    Box::pin(async move {
        match a.text()?.to_ascii_lowercase().as_str() {
            "get" if a.left() >= 1 => {
                // Honest answers for what clients ask: every write is fsynced before its ack.
                let known = [
                    ("save", String::new()),
                    ("appendonly", "yes".into()),
                    ("appendfsync", "always".into()),
                    (
                        "notify-keyspace-events",
                        crate::push::flags::show(shared.hub.notify_flags()),
                    ),
                    (
                        "tracking-table-max-keys",
                        shared.hub.tracking_keys_max().to_string(),
                    ),
                ];
                let mut pairs = Vec::new();
                for p in a.rest() {
                    let p = text(p).to_ascii_lowercase();
                    for (k, v) in &known {
                        if glob::matches(p.as_bytes(), k.as_bytes()) {
                            pairs.push((Reply::bulk(*k), Reply::bulk(v.clone())));
                        }
                    }
                }
                Ok(Reply::Map(pairs))
            }
            "get" => Err(arity("config|get")),
            "set" if a.left() >= 2 && a.left().is_multiple_of(2) => {
                let pairs: Vec<(String, Vec<u8>)> = a
                    .rest()
                    .chunks(2)
                    .map(|p| (text(&p[0]).to_ascii_lowercase(), p[1].clone()))
                    .collect();
                // Every value checked before any is set.
                let mut notify = None;
                let mut keys_max = None;
                for (name, value) in &pairs {
                    match name.as_str() {
                        "notify-keyspace-events" => {
                            notify = Some(crate::push::flags::parse(value).ok_or_else(|| {
                                Reply::err(format!(
                                    "CONFIG SET failed (possibly related to argument \
                                     'notify-keyspace-events') - Invalid event class \
                                     character. Use 'Ag$lshzxeKEtmdn'. Got {:?}",
                                    text(value)
                                ))
                            })?)
                        }
                        "tracking-table-max-keys" => {
                            let n = int_arg(value)?;
                            let max = crate::push::TRACKING_KEYS_MAX_CEILING as i64;
                            if !(1..=max).contains(&n) {
                                return Err(Reply::err(format!(
                                    "CONFIG SET failed (possibly related to argument \
                                     'tracking-table-max-keys') - argument must be between 1 \
                                     and {max} inclusive (tunekv keeps the table bounded)"
                                )));
                            }
                            keys_max = Some(n as usize);
                        }
                        other => {
                            return Err(Reply::err(format!(
                                "Unknown option or number of arguments for CONFIG SET - \
                                 '{other}' (tunekv is configured by its node config file; \
                                 CONFIG SET takes notify-keyspace-events and \
                                 tracking-table-max-keys, for this node)"
                            )))
                        }
                    }
                }
                if let Some(n) = keys_max {
                    shared.hub.set_tracking_keys_max(n);
                }
                if let Some(f) = notify {
                    shared.hub.set_notify(f).await;
                }
                Ok(Reply::ok())
            }
            "set" => Err(arity("config|set")),
            _ => Err(Reply::err(
                "tunekv is configured by its node config file; CONFIG supports GET and SET of \
                 notify-keyspace-events and tracking-table-max-keys",
            )),
        }
    })
}

fn info(shared: &Shared, conn: &mut Conn, _: Args<'_>) -> Out {
    let node = &shared.node;
    let mut s = String::new();
    s += &format!("# Server\r\nredis_version:{REDIS_VERSION}\r\n");
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
