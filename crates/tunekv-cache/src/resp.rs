//! The cache's Redis protocol front end: GET, MGET, SET, DEL, EXISTS and tunekv's connection
//! commands (CONSISTENCY, SESSION, WAITMS, RECEIPT), parsed by `tunekv_resp::parse` and
//! answered with `tunekv_resp::reply`, the node's own parser and encoder. A read goes through
//! `Cache::get` exactly as over HTTP; RECEIPT says `served_by: cache` and `cache: hit|miss|
//! coalesced`. Commands the cache does not serve are refused by name.

use crate::cache::{Answer, Cache, Refused, Written};
use crate::http::SERVED_BY;
use bytes::Bytes;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tunekv_core::auth::{Access, Claims, Grants};
use tunekv_core::{Code, Level, Session, TunekvError};
use tunekv_node::metrics::{self, Protocol};
use tunekv_node::tls::Tls;
use tunekv_resp::parse::{Limits, RequestParser};
use tunekv_resp::reply::Reply;

/// Most simultaneous RESP connections.
const CONNECTIONS_MAX: usize = 10_000;
const READ_CHUNK_BYTES: usize = 16 * 1024;
/// Keys one MGET, DEL or EXISTS may name.
const KEYS_MAX: usize = 1024;
/// Numbered databases (`SELECT n` is keyspace `dbN`), created on first use as a node does.
const NUMBERED_DBS: u32 = 16;

/// One connection's settings and last answers.
struct Conn {
    id: u64,
    resp3: bool,
    keyspace: String,
    /// Whether `keyspace` is known to exist (numbered ones are created on first use).
    ready: bool,
    level: Option<Level>,
    wait: Option<Duration>,
    /// `STRATEGY`: this connection's writes' strategy (`None`: each keyspace's).
    strategy: Option<crate::Strategy>,
    session: Session,
    /// The last read's answers (one per key), for RECEIPT.
    last: Vec<Answer>,
    /// Who logged in (`AUTH`) when the cache has auth on; `expires_ms` is `u64::MAX` for a
    /// password login (the connection's life, as on a node).
    login: Option<Claims>,
}

fn typed(e: TunekvError) -> Reply {
    Reply::Error(format!(
        "{} {}",
        e.code.as_str().to_ascii_uppercase(),
        e.message
    ))
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// Serves RESP on `listener` until `stop`; with `tls`, TLS only (a connection must finish its
/// handshake within `tls::HANDSHAKE_TIMEOUT`).
pub async fn serve(
    listener: TcpListener,
    cache: Arc<Cache>,
    tls: Option<Arc<Tls>>,
    stop: CancellationToken,
) {
    let slots = Arc::new(Semaphore::new(CONNECTIONS_MAX));
    let ids = Arc::new(AtomicU64::new(1));
    loop {
        let accepted = tokio::select! {
            _ = stop.cancelled() => return,
            a = listener.accept() => a,
        };
        let mut stream = match accepted {
            Ok((s, _)) => s,
            Err(e) => {
                tracing::warn!(error = %e, "RESP accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            tokio::spawn(async move {
                let _ = stream
                    .write_all(b"-ERR max number of clients reached\r\n")
                    .await;
            });
            continue;
        };
        let (cache, id) = (cache.clone(), ids.fetch_add(1, Ordering::Relaxed));
        let acceptor = tls.as_ref().map(|t| t.client_acceptor());
        tokio::spawn(async move {
            let open = cache.metrics.resp.open();
            let ended = match acceptor {
                None => connection(stream, &cache, id).await,
                Some(acceptor) => match tokio::time::timeout(
                    tunekv_node::tls::HANDSHAKE_TIMEOUT,
                    acceptor.accept(stream),
                )
                .await
                {
                    Ok(Ok(s)) => connection(s, &cache, id).await,
                    Ok(Err(_)) | Err(_) => {
                        cache.metrics.resp.cut("tls_handshake");
                        Ok(())
                    }
                },
            };
            if let Err(e) = ended {
                tracing::debug!(error = %e, "RESP connection ended");
            }
            drop(open);
            drop(permit);
        });
    }
}

async fn connection<S>(mut stream: S, cache: &Arc<Cache>, id: u64) -> std::io::Result<()>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let mut conn = Conn {
        id,
        resp3: false,
        keyspace: "db0".into(),
        ready: false,
        level: None,
        wait: None,
        strategy: None,
        session: Session::new(),
        last: Vec::new(),
        login: None,
    };
    let mut parser = RequestParser::new(Limits::default());
    let mut input = vec![0u8; READ_CHUNK_BYTES];
    let mut out = Vec::new();
    loop {
        let n = stream.read(&mut input).await?;
        if n == 0 {
            return Ok(());
        }
        let mut buf = &input[..n];
        let mut quit = false;
        loop {
            match parser.parse(&mut buf) {
                Ok(Some(args)) if args.is_empty() => continue,
                Ok(Some(args)) => {
                    let name = text(&args[0]).to_ascii_lowercase();
                    let started = std::time::Instant::now();
                    let level = level_label(cache, &conn, &name);
                    let reply = execute(cache, &mut conn, &name, &args[1..]).await;
                    cache.metrics.request(
                        Protocol::Resp,
                        op_label(&name),
                        level,
                        reply.outcome(),
                        started.elapsed(),
                    );
                    reply.encode(conn.resp3, &mut out);
                    if name == "quit" {
                        quit = true;
                        break;
                    }
                }
                Ok(None) => break,
                Err(e) => {
                    Reply::err(format!("Protocol error: {}", e.0)).encode(conn.resp3, &mut out);
                    stream.write_all(&out).await?;
                    return Ok(());
                }
            }
        }
        if !out.is_empty() {
            stream.write_all(&out).await?;
            out.clear();
        }
        if quit {
            return Ok(());
        }
    }
}

/// The commands the cache answers, as metrics name them (others: `unknown`).
const OPS: &[&str] = &[
    "get",
    "mget",
    "exists",
    "set",
    "del",
    "select",
    "consistency",
    "session",
    "waitms",
    "receipt",
    "invalidate",
    "strategy",
    "hello",
    "ping",
    "echo",
    "quit",
    "client",
    "command",
    "info",
    "auth",
];

fn op_label(name: &str) -> &'static str {
    OPS.iter()
        .find(|o| **o == name)
        .copied()
        .unwrap_or("unknown")
}

/// The level label of a read command (the connection's level, or its keyspace's default).
fn level_label(cache: &Cache, conn: &Conn, name: &str) -> &'static str {
    if !matches!(name, "get" | "mget" | "exists") {
        return metrics::NO_LEVEL;
    }
    match conn.level {
        Some(l) => metrics::level_label(l),
        None => cache
            .default_level_of(&conn.keyspace)
            .map_or("default", metrics::level_label),
    }
}

fn arity(name: &str) -> Reply {
    Reply::err(format!("wrong number of arguments for '{name}' command"))
}

/// Commands a connection may send before it authenticates.
const BEFORE_AUTH: &[&str] = &["auth", "hello", "quit"];

async fn execute(cache: &Arc<Cache>, conn: &mut Conn, name: &str, args: &[Vec<u8>]) -> Reply {
    if cache.auth.enabled() && !BEFORE_AUTH.contains(&name) {
        if let Err(r) = permitted(cache, conn, name, args).await {
            return r;
        }
    }
    let wants = |min: usize, max: usize| (min..=max).contains(&args.len());
    match name {
        "ping" if wants(0, 1) => match args.first() {
            Some(m) => Reply::Bulk(m.clone()),
            None => Reply::Simple("PONG".into()),
        },
        "echo" if wants(1, 1) => Reply::Bulk(args[0].clone()),
        "quit" => Reply::ok(),
        "hello" => hello(cache, conn, args).await,
        "auth" if wants(1, 2) => {
            let (user, password) = match args {
                [p] => (None, text(p)),
                [u, p] => (Some(text(u)), text(p)),
                _ => return arity(name),
            };
            match log_in(cache, conn, user.as_deref(), &password).await {
                Ok(()) => Reply::ok(),
                Err(r) => r,
            }
        }
        "client" if !args.is_empty() => match text(&args[0]).to_ascii_lowercase().as_str() {
            "setname" | "setinfo" => Reply::ok(),
            "id" => Reply::Int(conn.id as i64),
            _ => Reply::err("the cache answers CLIENT ID, SETNAME and SETINFO"),
        },
        "command" => Reply::Array(Vec::new()),
        "select" if wants(1, 1) => {
            let which = text(&args[0]);
            conn.keyspace = match which.parse::<i64>() {
                Ok(n) if (0..i64::from(NUMBERED_DBS)).contains(&n) => format!("db{n}"),
                Ok(_) => return Reply::err("DB index is out of range"),
                Err(_) => which,
            };
            conn.ready = false;
            Reply::ok()
        }
        "consistency" if wants(0, 1) => match args.first() {
            None => Reply::bulk(
                conn.level
                    .map(|l| l.to_string())
                    .unwrap_or_else(|| "default".into()),
            ),
            Some(l) if text(l) == "default" => {
                conn.level = None;
                Reply::ok()
            }
            Some(l) => match Level::parse(&text(l)) {
                Ok(level) => {
                    conn.level = Some(level);
                    Reply::ok()
                }
                Err(e) => typed(e),
            },
        },
        "session" if wants(0, 1) => match args.first() {
            None => Reply::bulk(cache.key.encode(&conn.session)),
            Some(t) => match cache.key.decode_all([text(t).as_str()]) {
                Ok(s) => {
                    conn.session.merge(&s);
                    Reply::ok()
                }
                Err(e) => typed(e),
            },
        },
        "waitms" if wants(0, 1) => match args.first() {
            None => conn
                .wait
                .map(|w| Reply::Int(w.as_millis() as i64))
                .unwrap_or_else(|| Reply::bulk("default")),
            Some(ms) => match text(ms).parse::<u64>() {
                Ok(ms) => {
                    conn.wait = Some(Duration::from_millis(ms));
                    Reply::ok()
                }
                Err(_) => Reply::err("value is not an integer or out of range"),
            },
        },
        "receipt" if wants(0, 0) => receipt(conn),
        "strategy" if wants(0, 1) => match args.first().map(|a| text(a).to_ascii_lowercase()) {
            None => Reply::bulk(conn.strategy.map_or("default", crate::Strategy::as_str)),
            Some(s) => {
                conn.strategy =
                    match s.as_str() {
                        "default" => None,
                        "read_through" => Some(crate::Strategy::ReadThrough),
                        "write_through" => Some(crate::Strategy::WriteThrough),
                        "write_behind" => Some(crate::Strategy::WriteBehind),
                        _ => return Reply::err(
                            "STRATEGY takes read_through, write_through, write_behind or default",
                        ),
                    };
                Reply::ok()
            }
        },
        "get" if wants(1, 1) => {
            if let Err(r) = ensure_keyspace(cache, conn).await {
                return r;
            }
            match read(cache, conn, &args[..1]).await {
                Ok(mut values) => values.pop().flatten().map_or(Reply::Nil, Reply::Bulk),
                Err(r) => r,
            }
        }
        "mget" | "exists" if !args.is_empty() && args.len() <= KEYS_MAX => {
            if let Err(r) = ensure_keyspace(cache, conn).await {
                return r;
            }
            match read(cache, conn, args).await {
                Ok(values) if name == "mget" => Reply::Array(
                    values
                        .into_iter()
                        .map(|v| v.map_or(Reply::Nil, Reply::Bulk))
                        .collect(),
                ),
                Ok(values) => Reply::Int(values.iter().filter(|v| v.is_some()).count() as i64),
                Err(r) => r,
            }
        }
        "set" if args.len() == 2 => {
            if let Err(r) = ensure_keyspace(cache, conn).await {
                return r;
            }
            match write(
                cache,
                conn,
                &args[0],
                Some(Bytes::copy_from_slice(&args[1])),
            )
            .await
            {
                Ok(_) => Reply::ok(),
                Err(r) => r,
            }
        }
        "set" if args.len() > 2 => Reply::err(
            "the cache takes SET key value; send SET options (EX, PX, NX, XX, GET, …) to a node",
        ),
        "del" | "unlink" if !args.is_empty() && args.len() <= KEYS_MAX => {
            if let Err(r) = ensure_keyspace(cache, conn).await {
                return r;
            }
            let mut removed = 0;
            for key in args {
                match write(cache, conn, key, None).await {
                    Ok(true) => removed += 1,
                    Ok(false) => {}
                    Err(r) => return r,
                }
            }
            Reply::Int(removed)
        }
        "invalidate" if !args.is_empty() => invalidate(cache, conn, args).await,
        "auth" | "ping" | "echo" | "select" | "consistency" | "session" | "waitms" | "receipt"
        | "get" | "mget" | "exists" | "set" | "del" | "unlink" | "client" | "invalidate"
        | "strategy" => arity(name),
        other => Reply::err(format!(
            "unknown command '{}': the cache serves GET, MGET, EXISTS, SET, DEL, SELECT, \
             INVALIDATE, STRATEGY, CONSISTENCY, SESSION, WAITMS, RECEIPT, AUTH, HELLO, PING; send \
             other commands to a node",
            tunekv_core::code::shorten(other, 64)
        )),
    }
}

/// `INVALIDATE KEY k [k …]` (entries dropped: an integer), `INVALIDATE PREFIX p` and
/// `INVALIDATE ALL` (a new namespace version: every entry under the prefix filled before is
/// unreachable; the version as an integer).
async fn invalidate(cache: &Arc<Cache>, conn: &mut Conn, args: &[Vec<u8>]) -> Reply {
    let how = text(&args[0]).to_ascii_lowercase();
    let done = match (how.as_str(), &args[1..]) {
        ("key", keys) if !keys.is_empty() && keys.len() <= KEYS_MAX => {
            cache.invalidate_keys(&conn.keyspace, keys).await
        }
        ("prefix", [p]) => cache.invalidate_prefix(&conn.keyspace, p).await,
        ("all", []) => cache.invalidate_prefix(&conn.keyspace, b"").await,
        _ => return Reply::err("INVALIDATE takes KEY k [k …], PREFIX p or ALL"),
    };
    match done {
        Ok(n) => Reply::Int(i64::try_from(n).unwrap_or(i64::MAX)),
        Err(e) => typed(e),
    }
}

/// `HELLO [2|3] [AUTH user password] [SETNAME name]`.
async fn hello(cache: &Arc<Cache>, conn: &mut Conn, args: &[Vec<u8>]) -> Reply {
    let mut resp3 = conn.resp3;
    let mut rest = args;
    if let Some((v, more)) = rest.split_first() {
        match text(v).as_str() {
            "2" => resp3 = false,
            "3" => resp3 = true,
            _ => return Reply::Error("NOPROTO unsupported protocol version".into()),
        }
        rest = more;
    }
    loop {
        match rest {
            [] => break,
            [opt, user, password, more @ ..] if opt.eq_ignore_ascii_case(b"auth") => {
                if let Err(r) = log_in(cache, conn, Some(&text(user)), &text(password)).await {
                    return r;
                }
                rest = more;
            }
            [opt, _name, more @ ..] if opt.eq_ignore_ascii_case(b"setname") => rest = more,
            _ => return Reply::err("syntax error"),
        }
    }
    if cache.auth.enabled() && conn.login.is_none() {
        return noauth();
    }
    conn.resp3 = resp3;
    Reply::Map(vec![
        (Reply::bulk("server"), Reply::bulk("tunekv-cache")),
        (
            Reply::bulk("version"),
            Reply::bulk(env!("CARGO_PKG_VERSION")),
        ),
        (
            Reply::bulk("proto"),
            Reply::Int(if conn.resp3 { 3 } else { 2 }),
        ),
        (Reply::bulk("id"), Reply::Int(conn.id as i64)),
        (Reply::bulk("mode"), Reply::bulk("standalone")),
        (Reply::bulk("role"), Reply::bulk("cache")),
        (Reply::bulk("modules"), Reply::Array(vec![])),
    ])
}

fn noauth() -> Reply {
    Reply::Error("NOAUTH Authentication required.".into())
}

/// Logs the connection in (`AUTH`, `HELLO … AUTH`), as a node does: `user password` through a
/// node's login; a bearer token (`tkv1.…`) in the password's place until it expires. Redis's
/// `WRONGPASS` when the pair does not match.
async fn log_in(
    cache: &Arc<Cache>,
    conn: &mut Conn,
    user: Option<&str>,
    password: &str,
) -> Result<(), Reply> {
    if !cache.auth.enabled() {
        return Err(Reply::err(
            "AUTH <password> called without any password configured for the default user. \
             Are you sure your configuration is correct?",
        ));
    }
    let wrongpass = |e: TunekvError| match e.code {
        Code::Unauthenticated | Code::BadRequest => Reply::Error(format!(
            "WRONGPASS invalid username-password pair or user is disabled ({})",
            e.message
        )),
        _ => typed(e),
    };
    let claims = if password.starts_with("tkv1.") {
        let claims = tunekv_core::auth::open_token(&cache.key, password, crate::auth::wall_ms())
            .map_err(wrongpass)?;
        if user.is_some_and(|u| u != claims.user) {
            return Err(Reply::Error("WRONGPASS the token is another user's".into()));
        }
        cache
            .auth
            .grants_of(&claims, password)
            .await
            .map_err(wrongpass)?;
        claims
    } else {
        let user = user.unwrap_or("default");
        let claims = cache
            .auth
            .password_login(&cache.key, user, password)
            .await
            .map_err(wrongpass)?;
        Claims {
            expires_ms: u64::MAX,
            ..claims
        }
    };
    conn.login = Some(claims);
    Ok(())
}

/// The connection's rights now (its user's epoch checked again, so a revoked user is cut off
/// within `auth::GRANTS_FRESH`), or the reply to send instead.
async fn grants(cache: &Cache, conn: &Conn) -> Result<Arc<Grants>, Reply> {
    let Some(login) = &conn.login else {
        return Err(noauth());
    };
    if login.expires_ms <= crate::auth::wall_ms() {
        return Err(Reply::Error("NOAUTH the token expired (AUTH again)".into()));
    }
    cache
        .auth
        .session_grants(&cache.key, &login.user, login.epoch)
        .await
        .map_err(|e| match e.code {
            Code::Unauthenticated => Reply::Error(format!("NOAUTH {} (AUTH again)", e.message)),
            _ => typed(e),
        })
}

/// Whether the connection's user may run `name` on `args` in its keyspace: reads need read on
/// each key, writes write, INVALIDATE write on what it drops; connection commands only a
/// login. `-NOPERM` as Redis words it.
async fn permitted(
    cache: &Arc<Cache>,
    conn: &Conn,
    name: &str,
    args: &[Vec<u8>],
) -> Result<(), Reply> {
    let grants = grants(cache, conn).await?;
    let user = grants.user().unwrap_or_default().to_string();
    let ks = conn.keyspace.as_str();
    let noperm = |key: &[u8]| {
        Reply::Error(format!(
            "NOPERM User {user} has no permissions to access the '{}' key",
            String::from_utf8_lossy(&key[..key.len().min(128)])
        ))
    };
    let need = match name {
        "get" | "mget" | "exists" => Access::Read,
        "set" => {
            // SET key value: only the key.
            return match args.first() {
                Some(k) if !grants.allows(ks, k, Access::Write) => Err(noperm(k)),
                _ => Ok(()),
            };
        }
        "del" | "unlink" => Access::Write,
        "invalidate" => {
            let how = args.first().map(|a| text(a).to_ascii_lowercase());
            let (keys, prefix): (&[Vec<u8>], Option<&[u8]>) = match (how.as_deref(), args) {
                (Some("key"), [_, keys @ ..]) => (keys, None),
                (Some("prefix"), [_, p]) => (&[], Some(p.as_slice())),
                (Some("all"), [_]) => (&[], Some(&b""[..])),
                // Malformed: the command itself says how.
                _ => return Ok(()),
            };
            return crate::auth::check_invalidate(&grants, ks, keys, prefix)
                .map_err(|e| Reply::Error(format!("NOPERM {}", e.message)));
        }
        _ => return Ok(()),
    };
    match args.iter().find(|k| !grants.allows(ks, k, need)) {
        Some(k) => Err(noperm(k)),
        None => Ok(()),
    }
}

/// Numbered databases are created (as a node creates them: 4 shards, up to 3 replicas) the
/// first time a connection uses them; named keyspaces must exist.
async fn ensure_keyspace(cache: &Arc<Cache>, conn: &mut Conn) -> Result<(), Reply> {
    if conn.ready {
        return Ok(());
    }
    let numbered = conn
        .keyspace
        .strip_prefix("db")
        .and_then(|n| n.parse::<u32>().ok())
        .is_some_and(|n| n < NUMBERED_DBS);
    if numbered {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
        cache
            .numbered_db(&conn.keyspace, deadline)
            .await
            .map_err(typed)?;
    }
    conn.ready = true;
    Ok(())
}

async fn read(
    cache: &Arc<Cache>,
    conn: &mut Conn,
    keys: &[Vec<u8>],
) -> Result<Vec<Option<Vec<u8>>>, Reply> {
    let mut answers = Vec::with_capacity(keys.len());
    for key in keys {
        match cache
            .get(
                &conn.keyspace,
                key,
                conn.level,
                conn.wait,
                &mut conn.session,
            )
            .await
        {
            Ok(a) => answers.push(a),
            Err(Refused { error, .. }) => return Err(typed(error)),
        }
    }
    let values = answers
        .iter()
        .map(|a| a.value.as_ref().map(|v| v.to_vec()))
        .collect();
    conn.last = answers;
    Ok(values)
}

/// A SET (`Some`) or a DEL of one key through the cache; true when the key existed.
async fn write(
    cache: &Arc<Cache>,
    conn: &mut Conn,
    key: &[u8],
    value: Option<Bytes>,
) -> Result<bool, Reply> {
    // The node checks the write as the connection's user's: a token of theirs goes with it.
    let bearer = conn
        .login
        .as_ref()
        .map(|l| crate::auth::short_token(&cache.key, &l.user, l.epoch));
    let w = match cache
        .write(
            &conn.keyspace,
            key,
            value,
            (conn.wait, conn.strategy),
            &conn.session,
            bearer.as_deref(),
        )
        .await
        .map_err(typed)?
    {
        Written::Stored(w) => w,
        // Write-behind: queued; whether the key existed is not known yet.
        Written::Queued { .. } => return Ok(true),
    };
    let carried = cache
        .key
        .decode(&w.session)
        .map_err(|e| typed(TunekvError::new(Code::Internal, e.message)))?;
    conn.session.merge(&carried);
    Ok(w.existed)
}

/// The last read's receipt (the stalest key's for MGET), with how the cache answered.
fn receipt(conn: &Conn) -> Reply {
    let Some(a) = conn
        .last
        .iter()
        .max_by_key(|a| (a.staleness.ms, a.staleness.entries))
    else {
        return Reply::Nil;
    };
    let int = |v: u64| Reply::Int(i64::try_from(v).unwrap_or(i64::MAX));
    let mut fields = vec![
        (Reply::bulk("level"), Reply::bulk(a.level.to_string())),
        (Reply::bulk("served_by"), Reply::bulk(SERVED_BY)),
        (Reply::bulk("cache"), Reply::bulk(a.served.as_str())),
        (Reply::bulk("position"), Reply::bulk(a.position.to_string())),
        (Reply::bulk("shard"), int(u64::from(a.position.shard.0))),
        (Reply::bulk("index"), int(a.position.index.0)),
        (Reply::bulk("commit_ms"), int(a.position.commit_ms)),
        (Reply::bulk("staleness_entries"), int(a.staleness.entries)),
        (Reply::bulk("staleness_ms"), int(a.staleness.ms)),
        (Reply::bulk("keys"), int(conn.last.len() as u64)),
    ];
    if conn.last.iter().any(|a| a.pending) {
        fields.push((Reply::bulk("durability"), Reply::bulk("pending")));
    }
    if let (Some(v), 1) = (a.version, conn.last.len()) {
        fields.push((Reply::bulk("version"), int(v)));
    }
    Reply::Map(fields)
}
