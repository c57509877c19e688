//! Redis commands mapped onto the node. Reads go through the node at the connection's level
//! (`CONSISTENCY`), with its session (`SESSION`) and wait budget (`WAITMS`); writes are always
//! committed on a majority, through the shard leader. Errors keep tunekv's typed code as the
//! first word (`-NO_QUORUM …`); Redis's own errors use Redis's wording.

use crate::glob;
use crate::reply::Reply;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tunekv_core::{
    KeyspaceSpec, Level, Position, Quorum, QuorumKind, Receipt, Session, TunekvError,
};
use tunekv_node::{Cond, ExpireIf, Node, Op, ReadRequest, Ttl, WriteRequest};

/// Numbered databases (`SELECT n`) are keyspaces `db0`, `db1`, …, created on first use.
pub const NUMBERED_DBS: u32 = 16;
/// KEYS refuses to return more than this; use SCAN.
pub const KEYS_MAX: usize = 10_000;

/// What all connections of a node share.
pub struct Shared {
    node: Arc<Node>,
    next_id: AtomicU64,
    connected: AtomicUsize,
}

impl Shared {
    pub fn new(node: Arc<Node>) -> Shared {
        Shared {
            node,
            next_id: AtomicU64::new(1),
            connected: AtomicUsize::new(0),
        }
    }

    pub fn connect(&self, peer: String) -> Conn {
        self.connected.fetch_add(1, Ordering::Relaxed);
        Conn {
            id: self.next_id.fetch_add(1, Ordering::Relaxed),
            peer,
            resp3: false,
            quit: false,
            name: None,
            keyspace: "db0".into(),
            keyspace_ready: false,
            level: None,
            r: None,
            w: None,
            wait: None,
            session: Session::new(),
            receipts: Vec::new(),
            written: Vec::new(),
        }
    }

    pub fn disconnect(&self) {
        self.connected.fetch_sub(1, Ordering::Relaxed);
    }
}

/// One client connection's settings.
pub struct Conn {
    pub id: u64,
    peer: String,
    /// Replies in RESP3 (after `HELLO 3`).
    pub resp3: bool,
    /// Close after this reply (`QUIT`).
    pub quit: bool,
    name: Option<String>,
    keyspace: String,
    keyspace_ready: bool,
    level: Option<Level>,
    /// Read and write quorums on leaderless keyspaces (`QUORUM r w`); `None`: the defaults.
    r: Option<Quorum>,
    w: Option<Quorum>,
    wait: Option<Duration>,
    session: Session,
    receipts: Vec<Receipt>,
    /// Where the last write command committed, one position per entry (`POSITION`).
    written: Vec<Position>,
}

impl Conn {
    /// A read in this connection's keyspace, at its level and wait budget, in its session.
    fn read_req(&mut self) -> ReadRequest<'_> {
        ReadRequest {
            keyspace: &self.keyspace,
            level: self.level,
            r: self.r,
            wait: self.wait,
            session: &mut self.session,
        }
    }

    /// A write in this connection's keyspace, with its wait budget, in its session.
    fn write_req(&mut self) -> WriteRequest<'_> {
        WriteRequest {
            keyspace: &self.keyspace,
            w: self.w,
            wait: self.wait,
            session: &mut self.session,
        }
    }
}

/// A typed tunekv error: its code in upper case, then the message.
fn typed(e: TunekvError) -> Reply {
    Reply::Error(format!(
        "{} {}",
        e.code.as_str().to_ascii_uppercase(),
        e.message
    ))
}

fn arity(name: &str) -> Reply {
    Reply::err(format!("wrong number of arguments for '{name}' command"))
}

fn not_integer() -> Reply {
    Reply::err("value is not an integer or out of range")
}

fn syntax() -> Reply {
    Reply::err("syntax error")
}

fn int_arg(a: &[u8]) -> Result<i64, Reply> {
    std::str::from_utf8(a)
        .ok()
        .and_then(|s| s.parse::<i64>().ok())
        .ok_or_else(not_integer)
}

fn text(a: &[u8]) -> String {
    String::from_utf8_lossy(a).into_owned()
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

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// (name, arity) as Redis reports it: positive = exact, negative = at least.
const COMMANDS: &[(&str, i64)] = &[
    ("append", 3),
    ("auth", -2),
    ("client", -2),
    ("command", -1),
    ("config", -2),
    ("consistency", -1),
    ("dbsize", 1),
    ("decr", 2),
    ("decrby", 3),
    ("del", -2),
    ("echo", 2),
    ("exists", -2),
    ("expire", -3),
    ("expireat", -3),
    ("get", 2),
    ("getdel", 2),
    ("getrange", 4),
    ("getset", 3),
    ("hello", -1),
    ("incr", 2),
    ("incrby", 3),
    ("info", -1),
    ("keys", 2),
    ("mget", -2),
    ("mset", -3),
    ("persist", 2),
    ("pexpire", -3),
    ("pexpireat", -3),
    ("ping", -1),
    ("position", 1),
    ("psetex", 4),
    ("pttl", 2),
    ("quit", -1),
    ("quorum", -1),
    ("receipt", 1),
    ("scan", -2),
    ("select", 2),
    ("session", -1),
    ("set", -3),
    ("setex", 4),
    ("setnx", 3),
    ("strlen", 2),
    ("ttl", 2),
    ("type", 2),
    ("unlink", -2),
    ("waitms", -1),
];

/// Whether `name` (lower case) writes.
fn is_write(name: &str) -> bool {
    matches!(
        name,
        "append"
            | "decr"
            | "decrby"
            | "del"
            | "expire"
            | "expireat"
            | "getdel"
            | "getset"
            | "incr"
            | "incrby"
            | "mset"
            | "persist"
            | "pexpire"
            | "pexpireat"
            | "psetex"
            | "set"
            | "setex"
            | "setnx"
            | "unlink"
    )
}

fn command_info(name: &str, arity: i64) -> Reply {
    let write = is_write(name);
    let keyed = !matches!(
        name,
        "auth"
            | "client"
            | "command"
            | "config"
            | "consistency"
            | "dbsize"
            | "echo"
            | "hello"
            | "info"
            | "keys"
            | "ping"
            | "position"
            | "quit"
            | "quorum"
            | "receipt"
            | "scan"
            | "select"
            | "session"
            | "waitms"
    );
    let last = if matches!(name, "del" | "unlink" | "exists" | "mget" | "mset") {
        -1
    } else {
        1
    };
    let (first, last, step) = if keyed {
        (1, last, if name == "mset" { 2 } else { 1 })
    } else {
        (0, 0, 0)
    };
    Reply::Array(vec![
        Reply::bulk(name),
        Reply::Int(arity),
        Reply::Array(vec![Reply::Simple(
            if write { "write" } else { "readonly" }.into(),
        )]),
        Reply::Int(first),
        Reply::Int(last),
        Reply::Int(step),
    ])
}

/// Runs one request. Never panics on input; every failure is a reply.
pub async fn execute(shared: &Shared, conn: &mut Conn, args: Vec<Vec<u8>>) -> Reply {
    let name = String::from_utf8_lossy(&args[0]).to_ascii_lowercase();
    let Some(&(_, arity_spec)) = COMMANDS.iter().find(|(n, _)| *n == name) else {
        let mut shown = String::new();
        for a in args.iter().skip(1).take(8) {
            shown += &format!("'{}' ", text(a).chars().take(64).collect::<String>());
        }
        return Reply::err(format!(
            "unknown command '{}', with args beginning with: {shown}",
            text(&args[0]).chars().take(64).collect::<String>()
        ));
    };
    let n = args.len() as i64;
    if (arity_spec > 0 && n != arity_spec) || (arity_spec < 0 && n < -arity_spec) {
        return arity(&name);
    }
    match run(shared, conn, &name, &args).await {
        Ok(r) | Err(r) => r,
    }
}

type Out = Result<Reply, Reply>;

async fn run(shared: &Shared, conn: &mut Conn, name: &str, a: &[Vec<u8>]) -> Out {
    let node = &shared.node;
    match name {
        "ping" => Ok(match a.get(1) {
            None => Reply::Simple("PONG".into()),
            Some(m) if a.len() == 2 => Reply::bulk(m.clone()),
            Some(_) => return Err(arity(name)),
        }),
        "echo" => Ok(Reply::bulk(a[1].clone())),
        "quit" => {
            conn.quit = true;
            Ok(Reply::ok())
        }
        "auth" => Err(no_password()),
        "hello" => hello(shared, conn, a),
        "client" => client(shared, conn, a),
        "select" => select(conn, node, &a[1]).await,
        "command" => command(a),
        "config" => config(conn, a),
        "info" => Ok(info(shared, conn)),
        "consistency" => consistency(conn, node, a).await,
        "session" => session(conn, node, a),
        "waitms" => waitms(conn, a),
        "quorum" => quorum(conn, a),
        "receipt" => Ok(receipt(conn)),
        "position" => Ok(Reply::Array(
            conn.written
                .iter()
                .map(|p| Reply::bulk(p.to_string()))
                .collect(),
        )),
        _ => {
            if is_write(name) {
                conn.written.clear();
            }
            ensure_keyspace(conn, node).await?;
            data(node, conn, name, a).await
        }
    }
}

fn no_password() -> Reply {
    Reply::err(
        "AUTH <password> called without any password configured for the default user. \
         Are you sure your configuration is correct?",
    )
}

fn hello(shared: &Shared, conn: &mut Conn, a: &[Vec<u8>]) -> Out {
    let mut i = 1;
    if let Some(v) = a.get(1) {
        match int_arg(v) {
            Ok(2) => conn.resp3 = false,
            Ok(3) => conn.resp3 = true,
            _ => return Err(Reply::Error("NOPROTO unsupported protocol version".into())),
        }
        i = 2;
    }
    while i < a.len() {
        match text(&a[i]).to_ascii_lowercase().as_str() {
            "auth" if i + 2 < a.len() => return Err(no_password()),
            "setname" if i + 1 < a.len() => {
                conn.name = Some(text(&a[i + 1]));
                i += 2;
            }
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

fn client(_shared: &Shared, conn: &mut Conn, a: &[Vec<u8>]) -> Out {
    let sub = text(&a[1]).to_ascii_lowercase();
    match (sub.as_str(), a.len()) {
        ("id", 2) => Ok(Reply::Int(conn.id as i64)),
        ("getname", 2) => Ok(conn.name.clone().map(Reply::bulk).unwrap_or(Reply::Nil)),
        ("setname", 3) => {
            let n = text(&a[2]);
            if n.chars().any(|c| c.is_whitespace() || c.is_control()) {
                return Err(Reply::err(
                    "Client names cannot contain spaces, newlines or special characters.",
                ));
            }
            conn.name = (!n.is_empty()).then_some(n);
            Ok(Reply::ok())
        }
        ("info", 2) | ("list", 2) => Ok(Reply::bulk(client_line(conn))),
        ("setinfo", 4) => Ok(Reply::ok()),
        ("id" | "getname" | "setname" | "info" | "list" | "setinfo", _) => Err(Reply::err(
            format!("wrong number of arguments for 'client|{sub}' command"),
        )),
        _ => Err(Reply::err(format!(
            "unknown subcommand '{}'. Try CLIENT HELP.",
            text(&a[1])
        ))),
    }
}

async fn select(conn: &mut Conn, node: &Node, which: &[u8]) -> Out {
    let name = match int_arg(which) {
        Ok(n) if (0..i64::from(NUMBERED_DBS)).contains(&n) => format!("db{n}"),
        Ok(_) => return Err(Reply::err("DB index is out of range")),
        Err(_) => {
            let name = text(which);
            let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
            node.keyspace(&name, deadline).await.map_err(typed)?;
            name
        }
    };
    conn.keyspace_ready = conn.keyspace == name && conn.keyspace_ready;
    conn.keyspace = name;
    Ok(Reply::ok())
}

/// Numbered databases are created (4 shards, up to 3 replicas, default level strong) the first
/// time a connection uses them; named keyspaces must exist.
async fn ensure_keyspace(conn: &mut Conn, node: &Node) -> Result<(), Reply> {
    if conn.keyspace_ready {
        return Ok(());
    }
    let numbered = conn
        .keyspace
        .strip_prefix("db")
        .and_then(|n| n.parse::<u32>().ok())
        .is_some_and(|n| n < NUMBERED_DBS);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
    if node.keyspace(&conn.keyspace, deadline).await.is_err() && numbered {
        let spec = KeyspaceSpec {
            replicas: (node.config().peers.len() as u32).min(3),
            ..KeyspaceSpec::default()
        };
        match node.create_keyspace(&conn.keyspace, spec).await {
            Ok(_) => {}
            Err(e) if e.code == tunekv_core::Code::KeyspaceExists => {}
            Err(e) => return Err(typed(e)),
        }
    }
    conn.keyspace_ready = true;
    Ok(())
}

fn command(a: &[Vec<u8>]) -> Out {
    let sub = a.get(1).map(|s| text(s).to_ascii_lowercase());
    match sub.as_deref() {
        None => Ok(Reply::Array(
            COMMANDS
                .iter()
                .map(|(n, ar)| command_info(n, *ar))
                .collect(),
        )),
        Some("count") => Ok(Reply::Int(COMMANDS.len() as i64)),
        Some("list") => Ok(Reply::Array(
            COMMANDS.iter().map(|(n, _)| Reply::bulk(*n)).collect(),
        )),
        Some("docs") => Ok(Reply::Map(vec![])),
        Some("info") => Ok(Reply::Array(
            a[2..]
                .iter()
                .map(|n| {
                    let n = text(n).to_ascii_lowercase();
                    COMMANDS
                        .iter()
                        .find(|(c, _)| *c == n)
                        .map(|(c, ar)| command_info(c, *ar))
                        .unwrap_or(Reply::Nil)
                })
                .collect(),
        )),
        Some(other) => Err(Reply::err(format!(
            "unknown subcommand '{other}'. Try COMMAND HELP."
        ))),
    }
}

fn config(_conn: &Conn, a: &[Vec<u8>]) -> Out {
    match text(&a[1]).to_ascii_lowercase().as_str() {
        "get" if a.len() >= 3 => {
            // Honest answers for what clients ask: every write is fsynced before its ack.
            let known = [
                ("save", ""),
                ("appendonly", "yes"),
                ("appendfsync", "always"),
            ];
            let mut pairs = Vec::new();
            for p in &a[2..] {
                let p = text(p).to_ascii_lowercase();
                for (k, v) in known {
                    if glob::matches(p.as_bytes(), k.as_bytes()) {
                        pairs.push((Reply::bulk(k), Reply::bulk(v)));
                    }
                }
            }
            Ok(Reply::Map(pairs))
        }
        "get" => Err(Reply::err(
            "wrong number of arguments for 'config|get' command",
        )),
        _ => Err(Reply::err(
            "tunekv is configured by its node config file; CONFIG supports GET only",
        )),
    }
}

fn info(shared: &Shared, conn: &Conn) -> Reply {
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
    Reply::bulk(s)
}

async fn consistency(conn: &mut Conn, node: &Node, a: &[Vec<u8>]) -> Out {
    match a.len() {
        1 => Ok(Reply::bulk(
            conn.level
                .map(|l| l.to_string())
                .unwrap_or_else(|| "default".into()),
        )),
        2 => {
            let t = text(&a[1]);
            if t == "default" {
                conn.level = None;
                return Ok(Reply::ok());
            }
            // Refused at once when the selected keyspace's mode does not serve it; reads check
            // again (a connection may SELECT a keyspace of another mode later).
            let level = Level::parse(&t).map_err(typed)?;
            let deadline = tokio::time::Instant::now() + Duration::from_millis(500);
            if let Ok(ks) = node.keyspace(&conn.keyspace, deadline).await {
                ks.spec.mode.admits(level).map_err(typed)?;
            }
            conn.level = Some(level);
            Ok(Reply::ok())
        }
        _ => Err(arity("consistency")),
    }
}

fn session(conn: &mut Conn, node: &Node, a: &[Vec<u8>]) -> Out {
    match a.len() {
        1 => Ok(Reply::bulk(node.session_key().encode(&conn.session))),
        2 => {
            let carried = node
                .session_key()
                .decode_all([text(&a[1]).as_str()])
                .map_err(typed)?;
            conn.session.merge(&carried);
            Ok(Reply::ok())
        }
        _ => Err(arity("session")),
    }
}

/// `QUORUM` shows the connection's read and write quorums; `QUORUM r w` sets them (`default`
/// for either: the keyspace's default). They apply to leaderless keyspaces.
fn quorum(conn: &mut Conn, a: &[Vec<u8>]) -> Out {
    let show = |q: Option<Quorum>| q.map_or("default", Quorum::as_str);
    match a.len() {
        1 => Ok(Reply::bulk(format!(
            "r={} w={}",
            show(conn.r),
            show(conn.w)
        ))),
        3 => {
            let parse = |arg: &[u8], kind| -> Result<Option<Quorum>, Reply> {
                let t = text(arg).to_ascii_lowercase();
                if t == "default" {
                    return Ok(None);
                }
                Quorum::parse(&t, kind).map(Some).map_err(typed)
            };
            let r = parse(&a[1], QuorumKind::Read)?;
            let w = parse(&a[2], QuorumKind::Write)?;
            conn.r = r;
            conn.w = w;
            Ok(Reply::ok())
        }
        _ => Err(arity("quorum")),
    }
}

fn waitms(conn: &mut Conn, a: &[Vec<u8>]) -> Out {
    match a.len() {
        1 => Ok(conn
            .wait
            .map(|w| Reply::Int(w.as_millis() as i64))
            .unwrap_or_else(|| Reply::bulk("default"))),
        2 => {
            let ms = int_arg(&a[1])?;
            let ms = u64::try_from(ms).map_err(|_| not_integer())?;
            conn.wait = Some(Duration::from_millis(ms));
            Ok(Reply::ok())
        }
        _ => Err(arity("waitms")),
    }
}

/// The last read's receipt; for a read over several shards, the stalest shard's, with
/// `shards` saying how many there were.
fn receipt(conn: &Conn) -> Reply {
    let Some(r) = conn
        .receipts
        .iter()
        .max_by_key(|r| (r.staleness.ms, r.staleness.entries))
    else {
        return Reply::Nil;
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
    Reply::Map(fields)
}

/// Reads `keys` at the connection's level: their live values (with expiry), in order.
async fn read(
    node: &Node,
    conn: &mut Conn,
    keys: &[Vec<u8>],
) -> Result<Vec<Option<tunekv_node::StoredValue>>, Reply> {
    let shards = node.batch_get(conn.read_req(), keys).await.map_err(typed)?;
    conn.receipts = shards.iter().map(|s| s.receipt.clone()).collect();
    let mut found: HashMap<Vec<u8>, Option<tunekv_node::StoredValue>> = HashMap::new();
    for s in shards {
        for (k, v) in s.values {
            found.insert(k, v);
        }
    }
    Ok(keys
        .iter()
        .map(|k| found.get(k).cloned().flatten())
        .collect())
}

async fn read_one(
    node: &Node,
    conn: &mut Conn,
    key: &[u8],
) -> Result<Option<tunekv_node::StoredValue>, Reply> {
    Ok(read(node, conn, &[key.to_vec()])
        .await?
        .into_iter()
        .next()
        .flatten())
}

async fn write(
    node: &Node,
    conn: &mut Conn,
    key: &[u8],
    op: impl FnOnce(&tunekv_node::KeyspaceInfo) -> Result<Op, TunekvError>,
) -> Result<tunekv_node::CommandResult, Reply> {
    let w = node.write(conn.write_req(), key, op).await.map_err(typed)?;
    conn.written.push(w.position);
    match w.result.error {
        Some(e) => Err(Reply::err(e)),
        None => Ok(w.result),
    }
}

fn expiry_ms(amount: i64, unit_ms: i64, cmd: &str) -> Result<u64, Reply> {
    if amount <= 0 {
        return Err(Reply::err(format!(
            "invalid expire time in '{cmd}' command"
        )));
    }
    amount
        .checked_mul(unit_ms)
        .and_then(|v| u64::try_from(v).ok())
        .ok_or_else(|| Reply::err(format!("invalid expire time in '{cmd}' command")))
}

/// Parses SET's options after `SET key value`.
fn set_options(a: &[Vec<u8>]) -> Result<(Cond, Ttl, bool), Reply> {
    let (mut cond, mut ttl, mut get) = (Cond::Always, Ttl::Clear, false);
    let mut ttl_given = false;
    let mut i = 3;
    while i < a.len() {
        let opt = text(&a[i]).to_ascii_uppercase();
        match opt.as_str() {
            "NX" if cond == Cond::Always => cond = Cond::IfAbsent,
            "XX" if cond == Cond::Always => cond = Cond::IfPresent,
            "GET" => get = true,
            "KEEPTTL" if !ttl_given => {
                ttl = Ttl::Keep;
                ttl_given = true;
            }
            "EX" | "PX" | "EXAT" | "PXAT" if !ttl_given && i + 1 < a.len() => {
                let n = int_arg(&a[i + 1])?;
                ttl = match opt.as_str() {
                    "EX" => Ttl::AfterMs(expiry_ms(n, 1000, "set")?),
                    "PX" => Ttl::AfterMs(expiry_ms(n, 1, "set")?),
                    "EXAT" => Ttl::AtMs(expiry_ms(n, 1000, "set")?),
                    _ => Ttl::AtMs(expiry_ms(n, 1, "set")?),
                };
                ttl_given = true;
                i += 1;
            }
            _ => return Err(syntax()),
        }
        i += 1;
    }
    Ok((cond, ttl, get))
}

fn old_value(r: &tunekv_node::CommandResult) -> Reply {
    r.old.clone().map(Reply::Bulk).unwrap_or(Reply::Nil)
}

/// GETRANGE's inclusive range, clamped exactly as Redis does (negative indexes count from the
/// end; both ends clamp to the string).
fn range(len: usize, start: i64, end: i64) -> Option<(usize, usize)> {
    let len = len as i64;
    let s = if start < 0 { len + start } else { start }.max(0);
    let e = if end < 0 { len + end } else { end }.max(0).min(len - 1);
    (len > 0 && s <= e).then_some((s as usize, e as usize))
}

async fn data(node: &Node, conn: &mut Conn, name: &str, a: &[Vec<u8>]) -> Out {
    match name {
        "get" => Ok(read_one(node, conn, &a[1])
            .await?
            .map(|v| Reply::Bulk(v.value))
            .unwrap_or(Reply::Nil)),
        "set" => {
            let (cond, ttl, get) = set_options(a)?;
            let value = a[2].clone();
            let r = write(node, conn, &a[1], |_| {
                Ok(Op::Set {
                    key: a[1].clone(),
                    value,
                    cond,
                    ttl,
                    get,
                })
            })
            .await?;
            Ok(if get {
                old_value(&r)
            } else if r.changed {
                Reply::ok()
            } else {
                Reply::Nil
            })
        }
        "setnx" => {
            let value = a[2].clone();
            let r = write(node, conn, &a[1], |_| {
                Ok(Op::Set {
                    key: a[1].clone(),
                    value,
                    cond: Cond::IfAbsent,
                    ttl: Ttl::Clear,
                    get: false,
                })
            })
            .await?;
            Ok(Reply::Int(i64::from(r.changed)))
        }
        "setex" | "psetex" => {
            let unit = if name == "setex" { 1000 } else { 1 };
            let ms = expiry_ms(int_arg(&a[2])?, unit, name)?;
            let value = a[3].clone();
            write(node, conn, &a[1], |_| {
                Ok(Op::Set {
                    key: a[1].clone(),
                    value,
                    cond: Cond::Always,
                    ttl: Ttl::AfterMs(ms),
                    get: false,
                })
            })
            .await?;
            Ok(Reply::ok())
        }
        "getset" => {
            let value = a[2].clone();
            let r = write(node, conn, &a[1], |_| {
                Ok(Op::Set {
                    key: a[1].clone(),
                    value,
                    cond: Cond::Always,
                    ttl: Ttl::Clear,
                    get: true,
                })
            })
            .await?;
            Ok(old_value(&r))
        }
        "getdel" => {
            let r = write(node, conn, &a[1], |_| Ok(Op::GetDel { key: a[1].clone() })).await?;
            Ok(old_value(&r))
        }
        "mget" => Ok(Reply::Array(
            read(node, conn, &a[1..])
                .await?
                .into_iter()
                .map(|v| v.map(|v| Reply::Bulk(v.value)).unwrap_or(Reply::Nil))
                .collect(),
        )),
        "mset" => {
            if a.len().is_multiple_of(2) {
                return Err(arity(name));
            }
            let pairs = a[1..]
                .chunks(2)
                .map(|p| (p[0].clone(), p[1].clone()))
                .collect();
            let written = node.mset(conn.write_req(), pairs).await.map_err(typed)?;
            conn.written.extend(written.iter().map(|w| w.position));
            Ok(Reply::ok())
        }
        "del" | "unlink" => {
            let mut n = 0;
            for k in &a[1..] {
                let r = write(node, conn, k, |_| Ok(Op::Delete { key: k.clone() })).await?;
                n += i64::from(r.existed);
            }
            Ok(Reply::Int(n))
        }
        "exists" => Ok(Reply::Int(
            read(node, conn, &a[1..])
                .await?
                .iter()
                .filter(|v| v.is_some())
                .count() as i64,
        )),
        "incr" | "decr" | "incrby" | "decrby" => {
            let delta = match name {
                "incr" => 1,
                "decr" => -1,
                "incrby" => int_arg(&a[2])?,
                _ => int_arg(&a[2])?
                    .checked_neg()
                    .ok_or_else(|| Reply::err("decrement would overflow"))?,
            };
            let r = write(node, conn, &a[1], |_| {
                Ok(Op::IncrBy {
                    key: a[1].clone(),
                    delta,
                })
            })
            .await?;
            Ok(Reply::Int(r.int))
        }
        "append" => {
            let suffix = a[2].clone();
            let r = write(node, conn, &a[1], |ks| {
                Ok(Op::Append {
                    key: a[1].clone(),
                    suffix,
                    len_max: ks.spec.value_bytes_max,
                })
            })
            .await?;
            Ok(Reply::Int(r.int))
        }
        "strlen" => Ok(Reply::Int(
            read_one(node, conn, &a[1])
                .await?
                .map(|v| v.value.len() as i64)
                .unwrap_or(0),
        )),
        "getrange" => {
            let (start, end) = (int_arg(&a[2])?, int_arg(&a[3])?);
            let v = read_one(node, conn, &a[1])
                .await?
                .map(|v| v.value)
                .unwrap_or_default();
            Ok(Reply::Bulk(match range(v.len(), start, end) {
                Some((s, e)) => v[s..=e].to_vec(),
                None => Vec::new(),
            }))
        }
        "expire" | "pexpire" | "expireat" | "pexpireat" => {
            let when = expire_if(name, &a[3..])?;
            let n = int_arg(&a[2])?;
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
            let r = write(node, conn, &a[1], |_| {
                Ok(Op::Expire {
                    key: a[1].clone(),
                    ttl,
                    when,
                })
            })
            .await?;
            Ok(Reply::Int(r.int))
        }
        "persist" => {
            let r = write(node, conn, &a[1], |_| {
                Ok(Op::Expire {
                    key: a[1].clone(),
                    ttl: Ttl::Clear,
                    when: ExpireIf::Always,
                })
            })
            .await?;
            Ok(Reply::Int(i64::from(r.changed)))
        }
        "ttl" | "pttl" => Ok(Reply::Int(match read_one(node, conn, &a[1]).await? {
            None => -2,
            Some(v) => match v.expires_ms {
                None => -1,
                Some(at) => {
                    let left = at.saturating_sub(now_ms()) as i64;
                    if name == "ttl" {
                        (left + 500) / 1000
                    } else {
                        left
                    }
                }
            },
        })),
        "type" => Ok(Reply::Simple(
            if read_one(node, conn, &a[1]).await?.is_some() {
                "string"
            } else {
                "none"
            }
            .into(),
        )),
        "scan" => scan(node, conn, a).await,
        "keys" => {
            let pattern = a[1].clone();
            let mut keys = Vec::new();
            let mut cursor = 0;
            let mut receipts = Vec::new();
            loop {
                let page = node
                    .scan(conn.read_req(), cursor, 1000, &|k: &[u8]| {
                        glob::matches(&pattern, k)
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
            Ok(Reply::Array(keys.into_iter().map(Reply::Bulk).collect()))
        }
        "dbsize" => {
            let (n, receipts) = node.count_keys(conn.read_req()).await.map_err(typed)?;
            conn.receipts = receipts;
            Ok(Reply::Int(n as i64))
        }
        other => Err(Reply::err(format!("unknown command '{other}'"))),
    }
}

async fn scan(node: &Node, conn: &mut Conn, a: &[Vec<u8>]) -> Out {
    let cursor: u64 = std::str::from_utf8(&a[1])
        .ok()
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| Reply::err("invalid cursor"))?;
    let (mut pattern, mut count, mut only_strings) = (None, 10usize, true);
    let mut i = 2;
    while i < a.len() {
        let opt = text(&a[i]).to_ascii_uppercase();
        let Some(v) = a.get(i + 1) else {
            return Err(syntax());
        };
        match opt.as_str() {
            "MATCH" => pattern = Some(v.clone()),
            "COUNT" => {
                count = usize::try_from(int_arg(v)?)
                    .ok()
                    .filter(|c| *c > 0)
                    .ok_or_else(syntax)?
            }
            "TYPE" => only_strings = text(v).eq_ignore_ascii_case("string"),
            _ => return Err(syntax()),
        }
        i += 2;
    }
    let matcher = |k: &[u8]| only_strings && pattern.as_ref().is_none_or(|p| glob::matches(p, k));
    let page = node
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
    Ok(Reply::Array(vec![
        Reply::bulk(page.cursor.to_string()),
        Reply::Array(page.keys.into_iter().map(Reply::Bulk).collect()),
    ]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn getrange_indexes() {
        assert_eq!(range(5, 0, -1), Some((0, 4)));
        assert_eq!(range(5, -3, -1), Some((2, 4)));
        assert_eq!(range(5, 1, 100), Some((1, 4)));
        assert_eq!(range(5, 3, 1), None);
        assert_eq!(range(0, 0, -1), None);
        assert_eq!(range(5, -100, 0), Some((0, 0)));
        assert_eq!(range(5, 10, 20), None);
        assert_eq!(range(5, 0, -100), Some((0, 0)), "Redis clamps the end to 0");
    }

    #[test]
    fn set_option_parsing() {
        let args = |s: &str| {
            s.split(' ')
                .map(|p| p.as_bytes().to_vec())
                .collect::<Vec<_>>()
        };
        assert_eq!(
            set_options(&args("SET k v")).unwrap(),
            (Cond::Always, Ttl::Clear, false)
        );
        assert_eq!(
            set_options(&args("SET k v NX GET PX 1500")).unwrap(),
            (Cond::IfAbsent, Ttl::AfterMs(1500), true)
        );
        assert_eq!(
            set_options(&args("SET k v xx keepttl")).unwrap(),
            (Cond::IfPresent, Ttl::Keep, false)
        );
        assert_eq!(
            set_options(&args("SET k v EXAT 10")).unwrap().1,
            Ttl::AtMs(10_000)
        );
        for bad in [
            "SET k v NX XX",
            "SET k v EX",
            "SET k v EX 0",
            "SET k v EX 1 PX 1",
            "SET k v KEEPTTL EX 1",
            "SET k v BOGUS",
        ] {
            assert!(set_options(&args(bad)).is_err(), "{bad}");
        }
    }
}
