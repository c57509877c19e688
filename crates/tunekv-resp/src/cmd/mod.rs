//! Redis commands mapped onto the node. Reads go through the node at the connection's level
//! (`CONSISTENCY`), with its session (`SESSION`) and wait budget (`WAITMS`); writes go where the
//! keyspace's mode sends them. Errors keep tunekv's typed code as the first word
//! (`-NO_QUORUM …`); Redis's own errors use Redis's wording.
//!
//! Every command is one [`CommandSpec`] — name, arity, kind, key positions, summary, handler —
//! in the file of its group (`connection`, `strings`, `counters`, `keys`, `sets`, `hashes`,
//! `tunekv`), and
//! [`execute`] looks it up, checks its arity and runs it. `COMMAND`, `COMMAND INFO` and
//! `COMMAND DOCS` answer from the same table, so adding a command is its handler plus its entry.
//! Handlers read their arguments through an [`Args`] cursor.

pub(crate) mod access;
pub(crate) mod acl;
mod connection;
mod counters;
mod hashes;
mod keys;
pub(crate) mod pubsub;
mod sets;
mod siblings;
mod strings;
pub(crate) mod transactions;
mod tunekv;

use crate::conn::{Conn, Shared};
use crate::reply::Reply;
use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tunekv_core::{KeyspaceSpec, TunekvError};
use tunekv_dynamo::update::Update;
use tunekv_dynamo::Stored;
use tunekv_node::metrics::{self, Protocol};
use tunekv_node::{CommandResult, KeyspaceInfo, Node, Op, StoredValue, WriteOutcome};

/// Numbered databases (`SELECT n`) are keyspaces `db0`, `db1`, …, created on first use.
pub const NUMBERED_DBS: u32 = 16;
/// KEYS refuses to return more than this; use SCAN.
pub const KEYS_MAX: usize = 10_000;

/// A command's answer: `Err` holds an error reply (so `?` works on argument parsing).
pub(crate) type Out = Result<Reply, Reply>;
/// A command's answer still to come (it goes to the node).
pub(crate) type Pending<'a> = Pin<Box<dyn Future<Output = Out> + Send + 'a>>;

/// How a command runs.
#[derive(Clone, Copy)]
pub(crate) enum Handler {
    /// From the connection alone.
    Now(fn(&Shared, &mut Conn, Args<'_>) -> Out),
    /// Through the node.
    Later(for<'a> fn(&'a Shared, &'a mut Conn, Args<'a>) -> Pending<'a>),
}

/// What a command touches.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum Kind {
    /// The connection or the server, not the keyspace's data.
    Connection,
    /// Reads the selected keyspace.
    Read,
    /// Writes the selected keyspace (`POSITION` then reports where).
    Write,
}

/// One command.
pub(crate) struct CommandSpec {
    /// Lower case.
    pub name: &'static str,
    /// As Redis reports it: positive = exactly this many words (the name included), negative =
    /// at least that many.
    pub arity: i64,
    pub kind: Kind,
    /// First key, last key (negative: from the end), step; all 0 for a command without keys.
    pub keys: (i64, i64, i64),
    /// Redis's command group (`string`, `generic`, `connection`, `server`, `tunekv`).
    pub group: &'static str,
    pub summary: &'static str,
    pub handler: Handler,
}

impl CommandSpec {
    /// A command with a handler through the node (`Later`) or from the connection (`Now`).
    pub(crate) const fn new(
        (name, arity): (&'static str, i64),
        kind: Kind,
        keys: (i64, i64, i64),
        (group, summary): (&'static str, &'static str),
        handler: Handler,
    ) -> CommandSpec {
        CommandSpec {
            name,
            arity,
            kind,
            keys,
            group,
            summary,
            handler,
        }
    }
}

/// Every command of every group, in the groups' order.
fn every_spec() -> impl Iterator<Item = &'static CommandSpec> {
    connection::SPECS
        .iter()
        .chain(strings::SPECS)
        .chain(counters::SPECS)
        .chain(keys::SPECS)
        .chain(sets::SPECS)
        .chain(hashes::SPECS)
        .chain(siblings::SPECS)
        .chain(tunekv::SPECS)
        .chain(transactions::SPECS)
        .chain(pubsub::SPECS)
        .chain(acl::SPECS)
}

/// Every command, by name.
fn table() -> &'static HashMap<&'static str, &'static CommandSpec> {
    static TABLE: OnceLock<HashMap<&'static str, &'static CommandSpec>> = OnceLock::new();
    TABLE.get_or_init(|| {
        let mut t = HashMap::new();
        for spec in every_spec() {
            let clash = t.insert(spec.name, spec);
            debug_assert!(clash.is_none(), "command {} listed twice", spec.name);
        }
        t
    })
}

/// Every command, sorted by name (`COMMAND`, `COMMAND LIST`).
fn sorted() -> Vec<&'static CommandSpec> {
    let mut all: Vec<&'static CommandSpec> = table().values().copied().collect();
    all.sort_by_key(|s| s.name);
    all
}

fn lookup(name: &str) -> Option<&'static CommandSpec> {
    table().get(name).copied()
}

/// The command a request names, matched without regard to case and without allocating (every
/// command name is short ASCII; anything else names no command).
fn lookup_raw(raw: &[u8]) -> Option<&'static CommandSpec> {
    let mut buf = [0u8; 32];
    let name = buf.get_mut(..raw.len())?;
    name.copy_from_slice(raw);
    name.make_ascii_lowercase();
    lookup(std::str::from_utf8(name).ok()?)
}

/// Most plain SETs of a pipeline that commit together, and most value bytes.
const SET_RUN_MAX: usize = 256;
const SET_RUN_BYTES_MAX: usize = 1024 * 1024;
/// Most plain GETs of a pipeline read together.
const GET_RUN_MAX: usize = 64;

/// Runs the requests one client pipelined, in order, each reply after the one before, until
/// one closes the connection (`QUIT`). A run of plain `SET key value`s goes to the node as one
/// batch ([`strings::set_run`]: one commit per shard for all of them), a run of plain
/// `GET key`s as one batch read ([`strings::get_run`]: one view of each shard).
pub async fn execute_all(
    shared: &Shared,
    conn: &mut Conn,
    requests: &mut Vec<Vec<Vec<u8>>>,
    output: &mut Vec<u8>,
) {
    // Drained even when QUIT stops early: the connection closes after it anyway.
    let mut requests = requests.drain(..).peekable();
    while let Some(args) = requests.next() {
        if let Some(kind) = Run::of(conn, &args) {
            if requests
                .peek()
                .is_some_and(|a| Run::of(conn, a) == Some(kind))
            {
                let most = match kind {
                    Run::Sets => SET_RUN_MAX,
                    Run::Gets => GET_RUN_MAX,
                };
                let mut bytes = args.last().map_or(0, Vec::len);
                let mut run = vec![args];
                while run.len() < most && bytes < SET_RUN_BYTES_MAX {
                    let Some(next) = requests.next_if(|a| Run::of(conn, a) == Some(kind)) else {
                        break;
                    };
                    bytes += next.last().map_or(0, Vec::len);
                    run.push(next);
                }
                let replies = match kind {
                    Run::Sets => strings::set_run(shared, conn, run).await,
                    Run::Gets => strings::get_run(shared, conn, run).await,
                };
                for reply in replies {
                    reply.encode(conn.resp3, output);
                }
                continue;
            }
        }
        execute(shared, conn, args).await.encode(conn.resp3, output);
        if conn.quit {
            return;
        }
    }
}

/// The pipelined requests that run together.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Run {
    Sets,
    Gets,
}

impl Run {
    fn of(conn: &Conn, args: &[Vec<u8>]) -> Option<Run> {
        if strings::plain_set(conn, args) {
            Some(Run::Sets)
        } else if strings::plain_get(conn, args) {
            Some(Run::Gets)
        } else {
            None
        }
    }
}

/// The level label of a read on this connection, for metrics and logs.
fn read_level_label(shared: &Shared, conn: &Conn) -> &'static str {
    match conn.level {
        Some(l) => metrics::level_label(l),
        None => shared
            .node
            .default_level_of(&conn.keyspace)
            .map_or("default", metrics::level_label),
    }
}

/// Runs one request. Never panics on input; every failure is a reply.
pub async fn execute(shared: &Shared, conn: &mut Conn, args: Vec<Vec<u8>>) -> Reply {
    let started = std::time::Instant::now();
    let spec = lookup_raw(&args[0]);
    let level = match spec {
        Some(s) if s.kind == Kind::Read => read_level_label(shared, conn),
        _ => metrics::NO_LEVEL,
    };
    // Everything logged while this command runs carries its span's fields. At debug level
    // (`TUNEKV_LOG=debug`): a pipelined GET costs about a microsecond, and an info span per
    // command cost a fifth of that even with nothing logged.
    let span = tracing::debug_span!(
        "request",
        node = shared.node.id().0,
        protocol = "resp",
        conn = conn.id,
        op = spec.map_or("unknown", |s| s.name),
        level
    );
    let reply = tracing::Instrument::instrument(dispatch(shared, conn, spec, args), span).await;
    shared.node.metrics().request(
        Protocol::Resp,
        spec.map_or("unknown", |s| s.name),
        level,
        reply.outcome(),
        started.elapsed(),
    );
    reply
}

async fn dispatch(
    shared: &Shared,
    conn: &mut Conn,
    spec: Option<&'static CommandSpec>,
    args: Vec<Vec<u8>>,
) -> Reply {
    let Some(spec) = spec else {
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
    if (spec.arity > 0 && n != spec.arity) || (spec.arity < 0 && n < -spec.arity) {
        if conn.multi.is_some() {
            transactions::spoil(conn);
        }
        return arity(spec.name);
    }
    if !conn.resp3 && conn.subscriptions() > 0 && !pubsub::allowed_when_subscribed(spec.name) {
        return Reply::err(format!(
            "Can't execute '{}': only (P|S)SUBSCRIBE / (P|S)UNSUBSCRIBE / PING / QUIT / RESET \
             are allowed in this context",
            spec.name
        ));
    }
    if conn.limiter.as_ref().is_some_and(|l| l.check().is_err()) {
        return typed(TunekvError::new(
            tunekv_core::Code::RateLimited,
            format!(
                "this connection sends more than connection_requests_per_s ({}); slow down",
                shared.node.config().connection_requests_per_s
            ),
        ));
    }
    // Checked as a command is queued in MULTI as well as run (redis#15673: rights must hold
    // for what EXEC runs; a queued command was checked moments before).
    if let Err(refused) = access::check(shared, conn, spec, &args) {
        if conn.multi.is_some() {
            transactions::spoil(conn);
        }
        return refused;
    }
    if conn.multi.is_some() && !transactions::runs_inside(spec.name) {
        return transactions::queue(conn, spec.name, &args);
    }
    if spec.name == "ping" && !conn.resp3 && conn.subscriptions() > 0 {
        return pubsub::subscribed_ping(args.get(1).map(Vec::as_slice));
    }
    // CLIENT CACHING is for the command after it (which CLIENT CACHING itself sets again).
    let caching = conn.caching.take();
    match run(shared, conn, spec, &args, caching).await {
        Ok(r) | Err(r) => r,
    }
}

async fn run(
    shared: &Shared,
    conn: &mut Conn,
    spec: &CommandSpec,
    all: &[Vec<u8>],
    caching: Option<bool>,
) -> Out {
    if spec.kind == Kind::Write {
        conn.written.clear();
    }
    if spec.kind != Kind::Connection {
        ensure_keyspace(conn, &shared.node).await?;
    }
    if spec.kind == Kind::Read {
        track_reads(shared, conn, spec, all, caching).await?;
    }
    let args = Args::new(spec.name, all);
    let out = match spec.handler {
        Handler::Now(f) => f(shared, conn, args),
        Handler::Later(f) => f(shared, conn, args).await,
    };
    if spec.kind == Kind::Write && conn.tracking.as_ref().is_some_and(|t| t.noloop) {
        let ks: std::sync::Arc<str> = conn.keyspace.as_str().into();
        for p in &conn.written {
            if conn.own_writes.len() >= crate::push::OWN_WRITES_MAX {
                conn.own_writes.pop_front();
            }
            conn.own_writes
                .push_back((ks.clone(), p.shard.0, p.index.0));
        }
    }
    out
}

/// CLIENT TRACKING in its default mode: the keys a read command names are remembered for this
/// connection before it reads them (OPTIN: only after CLIENT CACHING yes; OPTOUT: unless
/// CLIENT CACHING no), so their next change sends it an invalidation.
async fn track_reads(
    shared: &Shared,
    conn: &mut Conn,
    spec: &CommandSpec,
    all: &[Vec<u8>],
    caching: Option<bool>,
) -> Result<(), Reply> {
    let Some(t) = &conn.tracking else {
        return Ok(());
    };
    let wanted = if t.bcast {
        false
    } else if t.optin {
        caching == Some(true)
    } else if t.optout {
        caching != Some(false)
    } else {
        true
    };
    let (first, last, step) = spec.keys;
    if !wanted || first <= 0 || step <= 0 {
        return Ok(());
    }
    let n = all.len() as i64;
    let last = if last < 0 { n + last } else { last.min(n - 1) };
    let keys: Vec<Vec<u8>> = (first..=last)
        .step_by(step as usize)
        .filter_map(|i| all.get(i as usize).cloned())
        .collect();
    shared
        .hub
        .track_reads(conn.id, &conn.keyspace, &keys)
        .await
        .map_err(typed)
}

/// A command's arguments after its name, read in order.
pub(crate) struct Args<'a> {
    name: &'static str,
    all: &'a [Vec<u8>],
    at: usize,
}

impl<'a> Args<'a> {
    fn new(name: &'static str, all: &'a [Vec<u8>]) -> Args<'a> {
        Args { name, all, at: 1 }
    }

    /// The command's name, lower case.
    pub fn name(&self) -> &'static str {
        self.name
    }

    /// Arguments not read yet.
    pub fn left(&self) -> usize {
        self.all.len().saturating_sub(self.at)
    }

    /// The next argument, if any.
    pub fn next_opt(&mut self) -> Option<&'a [u8]> {
        let a = self.all.get(self.at)?;
        self.at += 1;
        Some(a)
    }

    /// The next argument; missing is Redis's arity error.
    pub fn next(&mut self) -> Result<&'a [u8], Reply> {
        self.next_opt().ok_or_else(|| arity(self.name))
    }

    /// The next argument, owned.
    pub fn next_vec(&mut self) -> Result<Vec<u8>, Reply> {
        self.next().map(<[u8]>::to_vec)
    }

    /// The next argument as an i64 (Redis's "not an integer" error otherwise).
    pub fn int(&mut self) -> Result<i64, Reply> {
        int_arg(self.next()?)
    }

    /// The next argument as lossy UTF-8.
    pub fn text(&mut self) -> Result<String, Reply> {
        self.next().map(text)
    }

    /// Every argument not read yet (none are left after it).
    pub fn rest(&mut self) -> &'a [Vec<u8>] {
        let rest = self.all.get(self.at..).unwrap_or_default();
        self.at = self.all.len();
        rest
    }

    /// Arity error unless every argument was read.
    pub fn done(&self) -> Result<(), Reply> {
        if self.left() == 0 {
            Ok(())
        } else {
            Err(arity(self.name))
        }
    }
}

/// A typed tunekv error: its code in upper case, then the message.
pub(crate) fn typed(e: TunekvError) -> Reply {
    Reply::Error(format!(
        "{} {}",
        e.code.as_str().to_ascii_uppercase(),
        e.message
    ))
}

pub(crate) fn arity(name: &str) -> Reply {
    Reply::err(format!("wrong number of arguments for '{name}' command"))
}

pub(crate) fn not_integer() -> Reply {
    Reply::err("value is not an integer or out of range")
}

pub(crate) fn wrongtype() -> Reply {
    Reply::Error("WRONGTYPE Operation against a key holding the wrong kind of value".into())
}

pub(crate) fn syntax() -> Reply {
    Reply::err("syntax error")
}

pub(crate) fn int_arg(a: &[u8]) -> Result<i64, Reply> {
    std::str::from_utf8(a)
        .ok()
        .and_then(|s| s.parse::<i64>().ok())
        .ok_or_else(not_integer)
}

pub(crate) fn text(a: &[u8]) -> String {
    String::from_utf8_lossy(a).into_owned()
}

pub(crate) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
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

/// Reads `keys` at the connection's level: their live values (with expiry), in order.
pub(crate) async fn read(
    node: &Node,
    conn: &mut Conn,
    keys: &[Vec<u8>],
) -> Result<Vec<Option<StoredValue>>, Reply> {
    let shards = node.batch_get(conn.read_req(), keys).await.map_err(typed)?;
    conn.receipts = shards.iter().map(|s| s.receipt.clone()).collect();
    let mut found: HashMap<Vec<u8>, Option<Arc<StoredValue>>> = HashMap::new();
    for s in shards {
        for (k, v) in s.values {
            found.insert(k, v);
        }
    }
    let values: Vec<Option<StoredValue>> = keys
        .iter()
        .map(|k| found.get(k).and_then(|v| v.as_deref().cloned()))
        .collect();
    // RECEIPT's version: the one key's (0: absent), as VERSION answers.
    // Ordered keyspaces only: a leaderless read's receipt has its quorum (and version) instead.
    let ordered = conn.receipts.iter().all(|r| r.quorum.is_none());
    conn.read_version = match values.as_slice() {
        [one] if ordered => Some(one.as_ref().map_or(0, |v| v.mod_index)),
        _ => None,
    };
    Ok(values)
}

pub(crate) async fn read_one(
    node: &Node,
    conn: &mut Conn,
    key: &[u8],
) -> Result<Option<StoredValue>, Reply> {
    Ok(read(node, conn, &[key.to_vec()])
        .await?
        .into_iter()
        .next()
        .flatten())
}

/// Writes one key through the node; the position joins `POSITION`'s list.
pub(crate) async fn write(
    node: &Node,
    conn: &mut Conn,
    key: &[u8],
    op: impl FnOnce(&KeyspaceInfo) -> Result<Op, TunekvError>,
) -> Result<CommandResult, Reply> {
    let w = node.write(conn.write_req(), key, op).await.map_err(typed)?;
    conn.written.push(w.position);
    match &w.result.error {
        // A conditional write that did not hold (SET … IFEQ) answers as a refused NX would.
        Some(e) if e != tunekv_node::VERSION_MISMATCH => Err(Reply::err(e.clone())),
        _ => Ok(w.result),
    }
}

/// Makes an update of a conflict-free keyspace (SADD, HSET, …); the position joins
/// `POSITION`'s list.
pub(crate) async fn update(
    node: &Node,
    conn: &mut Conn,
    key: &[u8],
    update: Update,
) -> Result<WriteOutcome, Reply> {
    let w = node
        .update(conn.write_req(), key, update)
        .await
        .map_err(typed)?;
    conn.written.push(w.position);
    Ok(w)
}

/// Reads what `key` of a conflict-free keyspace holds at the connection's level; the receipt
/// is the connection's last.
pub(crate) async fn state(
    node: &Node,
    conn: &mut Conn,
    key: &[u8],
) -> Result<Option<Stored>, Reply> {
    let read = node.read_state(conn.read_req(), key).await.map_err(typed)?;
    conn.receipts = vec![read.receipt];
    conn.read_version = None;
    Ok(read.stored)
}

/// `COMMAND` with no subcommand, `COMMAND INFO`: Redis 7's ten-field description (name, arity,
/// flags, first key, last key, step, ACL categories, tips, key specifications, subcommands;
/// the last three empty).
fn command_info(spec: &CommandSpec) -> Reply {
    let (first, last, step) = spec.keys;
    let access = if spec.kind == Kind::Write {
        "write"
    } else {
        "readonly"
    };
    let category = match spec.kind {
        Kind::Connection => "@connection",
        Kind::Read => "@read",
        Kind::Write => "@write",
    };
    Reply::Array(vec![
        Reply::bulk(spec.name),
        Reply::Int(spec.arity),
        Reply::Array(vec![Reply::Simple(access.into())]),
        Reply::Int(first),
        Reply::Int(last),
        Reply::Int(step),
        Reply::Array(vec![Reply::Simple(category.into())]),
        Reply::Array(vec![]),
        Reply::Array(vec![]),
        Reply::Array(vec![]),
    ])
}

/// `COMMAND DOCS`: summary and group of each command.
fn command_docs(spec: &CommandSpec) -> (Reply, Reply) {
    (
        Reply::bulk(spec.name),
        Reply::Map(vec![
            (Reply::bulk("summary"), Reply::bulk(spec.summary)),
            (Reply::bulk("since"), Reply::bulk("1.0.0")),
            (Reply::bulk("group"), Reply::bulk(spec.group)),
            (Reply::bulk("arity"), Reply::Int(spec.arity)),
        ]),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_command_is_listed_once_with_a_summary_and_sane_keys() {
        let all: Vec<&CommandSpec> = every_spec().collect();
        assert_eq!(all.len(), table().len(), "a command listed twice");
        for s in all {
            assert_eq!(s.name, s.name.to_ascii_lowercase());
            assert!(!s.summary.is_empty(), "{}", s.name);
            assert!(s.arity != 0, "{}", s.name);
            let (first, _, step) = s.keys;
            assert_eq!(first == 0, step == 0, "{}", s.name);
            assert_eq!(
                first == 0,
                s.kind == Kind::Connection || ["keys", "scan", "dbsize", "exec"].contains(&s.name),
                "{}: keyed commands touch the keyspace",
                s.name
            );
        }
    }

    #[test]
    fn the_cursor_reads_in_order_and_reports_missing_arguments() {
        let all: Vec<Vec<u8>> = ["set", "k", "12", "x"]
            .iter()
            .map(|s| s.as_bytes().to_vec())
            .collect();
        let mut a = Args::new("set", &all);
        assert_eq!(a.next().unwrap(), b"k");
        assert_eq!(a.int().unwrap(), 12);
        assert_eq!(a.left(), 1);
        assert!(a.done().is_err());
        assert_eq!(a.rest().len(), 1);
        assert!(a.done().is_ok());
        assert_eq!(
            a.next().unwrap_err(),
            Reply::err("wrong number of arguments for 'set' command")
        );
        assert!(Args::new("x", &all).int().is_err(), "k is not an integer");
    }
}
