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
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tunekv_core::{Code, Level, Session, TunekvError};
use tunekv_node::metrics::{self, Protocol};
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

pub async fn serve(listener: TcpListener, cache: Arc<Cache>, stop: CancellationToken) {
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
        let open = cache.metrics.resp.open();
        tokio::spawn(async move {
            if let Err(e) = connection(stream, &cache, id).await {
                tracing::debug!(error = %e, "RESP connection ended");
            }
            drop(open);
            drop(permit);
        });
    }
}

async fn connection(mut stream: TcpStream, cache: &Arc<Cache>, id: u64) -> std::io::Result<()> {
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

async fn execute(cache: &Arc<Cache>, conn: &mut Conn, name: &str, args: &[Vec<u8>]) -> Reply {
    let wants = |min: usize, max: usize| (min..=max).contains(&args.len());
    match name {
        "ping" if wants(0, 1) => match args.first() {
            Some(m) => Reply::Bulk(m.clone()),
            None => Reply::Simple("PONG".into()),
        },
        "echo" if wants(1, 1) => Reply::Bulk(args[0].clone()),
        "quit" => Reply::ok(),
        "hello" => hello(conn, args),
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
        "ping" | "echo" | "select" | "consistency" | "session" | "waitms" | "receipt" | "get"
        | "mget" | "exists" | "set" | "del" | "unlink" | "client" | "invalidate" | "strategy" => {
            arity(name)
        }
        other => Reply::err(format!(
            "unknown command '{}': the cache serves GET, MGET, EXISTS, SET, DEL, SELECT, \
             INVALIDATE, STRATEGY, CONSISTENCY, SESSION, WAITMS, RECEIPT, HELLO, PING; send other \
             commands \
             to a node",
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

fn hello(conn: &mut Conn, args: &[Vec<u8>]) -> Reply {
    match args.first().map(|v| text(v)) {
        None => {}
        Some(v) if v == "2" => conn.resp3 = false,
        Some(v) if v == "3" => conn.resp3 = true,
        Some(_) => return Reply::Error("NOPROTO unsupported protocol version".into()),
    }
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
    let w = match cache
        .write(
            &conn.keyspace,
            key,
            value,
            (conn.wait, conn.strategy),
            &conn.session,
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
