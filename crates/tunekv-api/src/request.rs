//! The request-parsing layer: an HTTP request's method, path, query, headers and body decoded
//! into an [`ApiRequest`], or a typed error. Pure (no node, no I/O, no clock), so the fuzz
//! target (`fuzz/fuzz_targets/http_request.rs`) and the seeded unit tests drive it directly;
//! `http.rs` only executes what it returns.
//!
//! Routes (DESIGN §9; README's API section):
//!
//! | path | methods |
//! |---|---|
//! | `/` | GET |
//! | `/v1/cluster` | GET |
//! | `/v1/clock` | GET (this process's incarnation and monotonic clock, µs: what a cache calibrates against) |
//! | `/v1/keyspaces` | GET |
//! | `/v1/keyspaces/{ks}` | GET, PUT |
//! | `/v1/kv/{ks}/{key}` | GET, PUT, DELETE (the key is everything after `{ks}/`, `/` included) |
//! | `/v1/kv/{ks}/{key}:add` | POST (counter keyspaces: `{"by": N, "id": "…"}`) |
//! | `/v1/kv/{ks}/{key}:update` | POST (set and map keyspaces: `{"add":[…],"remove":[…]}`, `{"set":{…}}`, `{"incr":{…}}`) |
//! | `/v1/kv/{ks}:batch-get` | POST |
//! | `/v1/kv/{ks}:txn` | POST (ordered keyspaces: `{"compare":[…],"success":[…],"failure":[…]}`) |
//! | `/v1/kv/{ks}:read-index` | GET (`?shard=S`: the shard's quorum-confirmed read index) |
//! | `/v1/kv/{ks}:scan` | GET (`?prefix=P&cursor=C&count=N&level=L`: a page of the keyspace's keys, as RESP SCAN) |
//! | `/v1/watch/{ks}` | GET (`?prefix=P&from=C`: server-sent events of every change from now on, or after cursor C) |
//! | `/v1/admin/faults` | POST |
//! | `/v1/admin/backup/{ks}/{shard}` | GET (the shard at one index, as a backup stream) |
//! | `/v1/admin/restore/{ks}` | POST (backup records, back to back) |
//!
//! HEAD is accepted wherever GET is. Path segments are percent-decoded to bytes (strictly: `%`
//! must be followed by two hex digits), so a key may hold any byte; `?key_encoding=base64url`
//! (or `"key_encoding":"base64url"` in a batch-get body) sends keys as unpadded or padded
//! base64url (RFC 4648 §5) instead, for clients whose URL handling rewrites `.` or `..`
//! segments or cannot send arbitrary bytes.

use axum::http::{HeaderMap, Method, Uri};
use base64::Engine;
use bytes::Bytes;
use serde::de::{DeserializeOwned, SeqAccess, Visitor};
use serde::{Deserialize, Deserializer};
use std::collections::BTreeSet;
use std::fmt;
use std::time::Duration;
use tunekv_core::code::{echo, echo_bytes, shorten, ECHO_CHARS_MAX};
use tunekv_core::limits::check_key;
use tunekv_core::{
    Code, KeyspaceSpec, Level, Quorum, QuorumKind, Session, SessionKey, TunekvError,
};
use tunekv_dynamo::update::Update;
use tunekv_node::{Expect, Op, BATCH_KEYS_MAX};

pub const H_LEVEL: &str = "tunekv-level";
pub const H_SESSION: &str = "tunekv-session";
/// A siblings keyspace's causal context: on a read's answer, and on a write that supersedes
/// what it covers.
pub const H_CONTEXT: &str = "tunekv-context";
/// Read and write quorums of leaderless keyspaces, as headers (or `?r=` / `?w=`).
pub const H_R: &str = "tunekv-r";
pub const H_W: &str = "tunekv-w";

/// How the keys of a request are written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeyEncoding {
    /// Path keys percent-decoded to bytes; batch-get keys as JSON strings (UTF-8).
    Text,
    /// base64url (RFC 4648 §5), padded or not; echoed back unpadded.
    Base64Url,
}

impl KeyEncoding {
    /// A key as responses echo it in this encoding: `None` for a [`KeyEncoding::Text`] key
    /// that is not UTF-8 (then the response gives it as `key_base64url`).
    pub fn show(self, key: &[u8]) -> Option<String> {
        match self {
            KeyEncoding::Text => std::str::from_utf8(key).ok().map(str::to_string),
            KeyEncoding::Base64Url => Some(base64url(key)),
        }
    }
}

/// `key` in unpadded base64url.
pub fn base64url(key: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(key)
}

fn from_base64url(text: &str) -> Option<Vec<u8>> {
    let text = text.trim_end_matches('=');
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(text)
        .ok()
}

/// A change to a node's faults: `clear` first removes them all, then each field given
/// replaces that fault.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct FaultChange {
    #[serde(default)]
    pub clear: bool,
    pub isolate: Option<bool>,
    pub drop_to: Option<BTreeSet<u64>>,
    pub drop_from: Option<BTreeSet<u64>>,
    pub delay_ms: Option<u64>,
    pub jitter_ms: Option<u64>,
    pub drop_rate: Option<f64>,
    pub clock_offset_ms: Option<i64>,
}

/// A request the node can execute: every field checked for syntax and every limit the request
/// alone decides (key size, batch size, session signature).
#[derive(Debug)]
pub enum ApiRequest {
    /// `GET /`: the status page (`html`: the client accepts HTML, as browsers do) or plain text.
    Index {
        html: bool,
    },
    /// `GET /metrics`: Prometheus (OpenMetrics) text.
    Metrics,
    /// `GET /v1/slo`: every keyspace's staleness SLOs as this node stands on them.
    Slo,
    Cluster,
    /// `GET /v1/clock`: this node's incarnation and monotonic clock.
    Clock,
    /// `GET /v1/kv/{ks}:read-index?shard=S`: the shard's read index, confirmed by a leader
    /// holding a quorum (what a cache needs before serving a strong read from memory).
    ReadIndex {
        ks: String,
        shard: u32,
        wait: Option<Duration>,
    },
    /// `GET /v1/kv/{ks}:scan?prefix=P&cursor=C&count=N`: a page of the keys that start with
    /// `prefix`, as RESP SCAN pages them (every key present for the whole scan at least once).
    Scan {
        ks: String,
        prefix: Vec<u8>,
        cursor: u64,
        count: usize,
        level: Option<Level>,
        wait: Option<Duration>,
        session: Session,
    },
    ListKeyspaces,
    GetKeyspace {
        ks: String,
    },
    CreateKeyspace {
        ks: String,
        spec: KeyspaceSpec,
    },
    Put {
        ks: String,
        key: Vec<u8>,
        value: Bytes,
        /// A siblings keyspace's causal context (`tunekv-context`), still sealed.
        context: Option<String>,
        /// `?if_version=V`: only if the key is at version V (0: absent).
        if_version: Option<u64>,
        /// Write quorum (leaderless keyspaces).
        w: Option<Quorum>,
        wait: Option<Duration>,
        session: Session,
    },
    /// `POST /v1/kv/{ks}/{key}:add` (add to a counter; the body's `id`, hashed, makes a retry
    /// apply once) and `POST /v1/kv/{ks}/{key}:update` (a set's or map's members).
    Update {
        ks: String,
        key: Vec<u8>,
        update: Update,
        w: Option<Quorum>,
        wait: Option<Duration>,
        session: Session,
    },
    Delete {
        ks: String,
        key: Vec<u8>,
        context: Option<String>,
        /// `?if_version=V`: only if the key is at version V.
        if_version: Option<u64>,
        w: Option<Quorum>,
        wait: Option<Duration>,
        session: Session,
    },
    Get {
        ks: String,
        key: Vec<u8>,
        key_encoding: KeyEncoding,
        /// `?format=json`: value and receipt in a JSON body.
        json: bool,
        level: Option<Level>,
        /// Read quorum (leaderless keyspaces).
        r: Option<Quorum>,
        wait: Option<Duration>,
        session: Session,
    },
    BatchGet {
        ks: String,
        /// As requested: in order, repeats included.
        keys: Vec<Vec<u8>>,
        key_encoding: KeyEncoding,
        level: Option<Level>,
        r: Option<Quorum>,
        wait: Option<Duration>,
        session: Session,
    },
    /// `GET /v1/watch/{ks}?prefix=P&from=CURSOR`: the change feed from now on, or after a
    /// cursor.
    Watch {
        ks: String,
        prefix: Vec<u8>,
        from: Option<String>,
    },
    /// `POST /v1/kv/{ks}:txn`: a single-shard transaction.
    Txn {
        ks: String,
        compare: Vec<(Vec<u8>, Expect)>,
        success: Vec<Op>,
        failure: Vec<Op>,
        wait: Option<Duration>,
        session: Session,
    },
    Faults(FaultChange),
    /// `GET /v1/node`: this node's id and addresses (what `tunekv node add` asks a new node).
    Identity,
    /// `GET /v1/admin/nodes`: the cluster's nodes and the replica moves in flight.
    Nodes,
    /// `POST /v1/admin/nodes`: add a node (it joins, then replicas move to it).
    AddNode(NewNode),
    /// `DELETE /v1/admin/nodes/{id}`: remove a node (its replicas move away, then it leaves).
    RemoveNode {
        id: u64,
    },
    /// `GET /v1/admin/backup/{ks}/{shard}`: the shard's keys at one applied index, as a
    /// `tunekv_core::backup` stream (from a node holding a replica).
    Backup {
        ks: String,
        shard: u32,
        wait: Option<Duration>,
    },
    /// `POST /v1/admin/restore/{ks}`: backed-up records (the body, back to back) written into
    /// an ordered keyspace.
    Restore {
        ks: String,
        records: Bytes,
        wait: Option<Duration>,
    },
    /// `POST /v1/auth/token` `{"user","password","ttl_ms"?}`: a bearer token (the one route
    /// that takes no token).
    Login(LoginBody),
    /// `GET /v1/auth/whoami`: the caller's user and permissions.
    WhoAmI,
    /// `GET /v1/admin/users`.
    ListUsers,
    /// `GET|PUT|DELETE /v1/admin/users/{user}`; `POST …/{user}:revoke-tokens`, `:grant`,
    /// `:revoke`.
    User {
        name: String,
        action: UserAction,
    },
    /// `GET /v1/admin/roles`.
    ListRoles,
    /// `GET|PUT|DELETE /v1/admin/roles/{role}`.
    Role {
        name: String,
        /// None: GET; `Some(None)`: DELETE; `Some(Some(role))`: PUT.
        change: Option<Option<tunekv_core::auth::Role>>,
    },
}

/// The body of `POST /v1/auth/token`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LoginBody {
    pub user: String,
    pub password: String,
    /// A shorter life than the node's `auth.token_ttl_ms`.
    #[serde(default)]
    pub ttl_ms: Option<u64>,
}

impl std::fmt::Debug for LoginBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the password, not even in a debug log.
        f.debug_struct("LoginBody")
            .field("user", &self.user)
            .field("ttl_ms", &self.ttl_ms)
            .finish_non_exhaustive()
    }
}

/// What a user route does.
#[derive(Debug)]
pub enum UserAction {
    Get,
    Put(tunekv_node::UserChange),
    Delete,
    RevokeTokens,
    /// `POST …/{user}:grant` / `:revoke` `{"role": "r"}`: adds or removes one role.
    ChangeRole {
        role: String,
        grant: bool,
    },
}

/// The body of `POST /v1/admin/users/{user}:grant` and `:revoke`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RoleChange {
    role: String,
}

/// The body of `POST /v1/admin/nodes`: the new node's id and addresses.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewNode {
    pub id: u64,
    /// Node-to-node address.
    pub raft: String,
    pub http: String,
    #[serde(default)]
    pub resp: Option<String>,
}

/// Why a request was refused, and for `method_not_allowed` the methods the path takes (the
/// `Allow` header).
#[derive(Debug)]
pub struct Refusal {
    pub error: TunekvError,
    pub allow: Option<&'static str>,
}

impl From<TunekvError> for Refusal {
    fn from(error: TunekvError) -> Self {
        Refusal { error, allow: None }
    }
}

impl ApiRequest {
    /// The operation's name in metrics (a bounded set: one per route).
    pub fn op(&self) -> &'static str {
        match self {
            ApiRequest::Index { .. } => "index",
            ApiRequest::Metrics => "metrics",
            ApiRequest::Slo => "slo",
            ApiRequest::Cluster => "cluster",
            ApiRequest::Clock => "clock",
            ApiRequest::ReadIndex { .. } => "read_index",
            ApiRequest::Scan { .. } => "scan",
            ApiRequest::ListKeyspaces => "list_keyspaces",
            ApiRequest::GetKeyspace { .. } => "get_keyspace",
            ApiRequest::CreateKeyspace { .. } => "create_keyspace",
            ApiRequest::Put { .. } => "put",
            ApiRequest::Update { .. } => "update",
            ApiRequest::Delete { .. } => "delete",
            ApiRequest::Get { .. } => "get",
            ApiRequest::BatchGet { .. } => "batch_get",
            ApiRequest::Watch { .. } => "watch",
            ApiRequest::Txn { .. } => "txn",
            ApiRequest::Faults(_) => "faults",
            ApiRequest::Identity => "identity",
            ApiRequest::Nodes => "nodes",
            ApiRequest::AddNode(_) => "add_node",
            ApiRequest::RemoveNode { .. } => "remove_node",
            ApiRequest::Backup { .. } => "backup",
            ApiRequest::Restore { .. } => "restore",
            ApiRequest::Login(_) => "login",
            ApiRequest::WhoAmI => "whoami",
            ApiRequest::ListUsers => "list_users",
            ApiRequest::User { .. } => "user",
            ApiRequest::ListRoles => "list_roles",
            ApiRequest::Role { .. } => "role",
        }
    }

    /// A read's keyspace and the level it named (`None`: the keyspace's default); `None` for
    /// requests that read no data.
    pub fn read_level(&self) -> Option<(&str, Option<Level>)> {
        match self {
            ApiRequest::Get { ks, level, .. }
            | ApiRequest::BatchGet { ks, level, .. }
            | ApiRequest::Scan { ks, level, .. } => Some((ks, *level)),
            _ => None,
        }
    }
}

/// Whether the client prefers HTML: its `Accept` names `text/html` (browsers do) and does not
/// put `text/plain` first. `*/*` alone (curl) gets plain text.
pub fn accepts_html(headers: &HeaderMap) -> bool {
    let Some(accept) = headers
        .get(axum::http::header::ACCEPT)
        .and_then(|v| v.to_str().ok())
    else {
        return false;
    };
    let html = accept.find("text/html");
    let plain = accept.find("text/plain");
    match (html, plain) {
        (Some(h), Some(p)) => h < p,
        (Some(_), None) => true,
        _ => false,
    }
}

fn refuse(code: Code, message: impl Into<String>) -> Refusal {
    Refusal::from(TunekvError::new(code, message))
}

/// Decodes one request. `body` is the whole body (the caller bounds its size).
pub fn parse(
    secret: &SessionKey,
    method: &Method,
    uri: &Uri,
    headers: &HeaderMap,
    body: Bytes,
) -> Result<ApiRequest, Refusal> {
    let path = uri.path();
    let Some(rest) = path.strip_prefix('/') else {
        return Err(not_found(method, path));
    };
    let segments: Vec<&str> = rest.splitn(4, '/').collect();
    let get = is_get(method);
    match segments.as_slice() {
        [""] => allow(get, "GET, HEAD", method, path).map(|_| ApiRequest::Index {
            html: accepts_html(headers),
        }),
        ["metrics"] => allow(get, "GET, HEAD", method, path).map(|_| ApiRequest::Metrics),
        ["v1", "slo"] => allow(get, "GET, HEAD", method, path).map(|_| ApiRequest::Slo),
        ["v1", "cluster"] => allow(get, "GET, HEAD", method, path).map(|_| ApiRequest::Cluster),
        ["v1", "clock"] => allow(get, "GET, HEAD", method, path).map(|_| ApiRequest::Clock),
        ["v1", "keyspaces"] => {
            allow(get, "GET, HEAD", method, path).map(|_| ApiRequest::ListKeyspaces)
        }
        ["v1", "keyspaces", ks] => {
            let put = method == Method::PUT;
            allow(get || put, "GET, HEAD, PUT", method, path)?;
            let ks = keyspace_name(ks)?;
            if get {
                return Ok(ApiRequest::GetKeyspace { ks });
            }
            let spec = if body.iter().all(u8::is_ascii_whitespace) {
                KeyspaceSpec::default()
            } else {
                json_object(&body, "keyspace spec", Code::KeyspaceInvalid)?
            };
            Ok(ApiRequest::CreateKeyspace { ks, spec })
        }
        ["v1", "kv", action] if action.ends_with(":scan") => {
            allow(get, "GET, HEAD", method, path)?;
            let ks = keyspace_name(action.trim_end_matches(":scan"))?;
            let q = Query::parse(uri.query())?;
            let number = |name: &str, v: &Option<String>, default: u64| match v {
                None => Ok(default),
                Some(t) => t.parse::<u64>().map_err(|_| {
                    refuse(
                        Code::BadRequest,
                        format!("{name} is a number, not {}", echo(t)),
                    )
                }),
            };
            Ok(ApiRequest::Scan {
                ks,
                prefix: q.prefix.clone().unwrap_or_default().into_bytes(),
                cursor: number("cursor", &q.cursor, 0)?,
                count: usize::try_from(number("count", &q.count, 100)?.clamp(1, 10_000))
                    .unwrap_or(100),
                level: q.level(headers)?,
                wait: q.wait()?,
                session: session_of(secret, headers)?,
            })
        }
        ["v1", "kv", action] if action.ends_with(":read-index") => {
            allow(get, "GET, HEAD", method, path)?;
            let ks = keyspace_name(action.trim_end_matches(":read-index"))?;
            let q = Query::parse(uri.query())?;
            let shard = q
                .shard
                .as_deref()
                .and_then(|s| s.parse::<u32>().ok())
                .ok_or_else(|| {
                    refuse(
                        Code::BadRequest,
                        "a read index is of one shard: give ?shard=S (a shard number)",
                    )
                })?;
            Ok(ApiRequest::ReadIndex {
                ks,
                shard,
                wait: q.wait()?,
            })
        }
        ["v1", "kv", action] => {
            allow(method == Method::POST, "POST", method, path)?;
            if let Some(ks) = action.strip_suffix(":txn") {
                let ks = keyspace_name(ks)?;
                return txn(secret, ks, Query::parse(uri.query())?, headers, &body);
            }
            let Some(ks) = action.strip_suffix(":batch-get") else {
                return Err(refuse(
                    Code::RouteNotFound,
                    format!(
                        "no action in {}: the actions are POST /v1/kv/{{ks}}:batch-get, \
                         POST /v1/kv/{{ks}}:txn, GET /v1/kv/{{ks}}:read-index and \
                         GET /v1/kv/{{ks}}:scan; single keys \
                         are /v1/kv/{{ks}}/{{key}}",
                        echo(path)
                    ),
                ));
            };
            let ks = keyspace_name(ks)?;
            batch_get(secret, ks, Query::parse(uri.query())?, headers, &body)
        }
        ["v1", "kv", ks, raw_key] => {
            let put = method == Method::PUT;
            let delete = method == Method::DELETE;
            let post = method == Method::POST;
            allow(
                get || put || delete || post,
                "DELETE, GET, HEAD, POST, PUT",
                method,
                path,
            )?;
            let ks = keyspace_name(ks)?;
            let q = Query::parse(uri.query())?;
            let key_encoding = q.key_encoding()?;
            if post {
                let (raw_key, update) = if let Some(k) = raw_key.strip_suffix(":add") {
                    let body: AddBody = json_object(&body, "add body", Code::BadRequest)?;
                    let id = body.id.map(|id| xxhash_rust::xxh3::xxh3_128(id.as_bytes()));
                    (k, Update::Add { by: body.by, id })
                } else if let Some(k) = raw_key.strip_suffix(":update") {
                    let body: UpdateBody = json_object(&body, "update body", Code::BadRequest)?;
                    (k, body.into_update()?)
                } else {
                    return Err(refuse(
                        Code::RouteNotFound,
                        format!(
                            "no action in {}: POST on a key is POST /v1/kv/{{ks}}/{{key}}:add \
                             (counter keyspaces) or …:update (set and map keyspaces)",
                            echo(path)
                        ),
                    ));
                };
                return Ok(ApiRequest::Update {
                    ks,
                    key: path_key(raw_key, key_encoding)?,
                    update,
                    w: q.quorum(QuorumKind::Write, headers)?,
                    wait: q.wait()?,
                    session: session_of(secret, headers)?,
                });
            }
            let key = path_key(raw_key, key_encoding)?;
            // Writes are always strong (committed on a majority); a level on a write is checked
            // for syntax so a typo is not silently ignored.
            let level = q.level(headers)?;
            let json = q.json()?;
            let wait = q.wait()?;
            let session = session_of(secret, headers)?;
            let if_version = q.if_version()?;
            if get && if_version.is_some() {
                return Err(refuse(
                    Code::BadRequest,
                    "if_version applies to PUT and DELETE; a read's answer carries the key's \
                     version in tunekv-version",
                ));
            }
            Ok(if get {
                ApiRequest::Get {
                    ks,
                    key,
                    key_encoding,
                    json,
                    level,
                    r: q.quorum(QuorumKind::Read, headers)?,
                    wait,
                    session,
                }
            } else if put {
                ApiRequest::Put {
                    ks,
                    key,
                    value: body,
                    context: context_of(headers)?,
                    if_version,
                    w: q.quorum(QuorumKind::Write, headers)?,
                    wait,
                    session,
                }
            } else {
                ApiRequest::Delete {
                    ks,
                    key,
                    context: context_of(headers)?,
                    if_version,
                    w: q.quorum(QuorumKind::Write, headers)?,
                    wait,
                    session,
                }
            })
        }
        ["v1", "watch", ks] => {
            allow(get, "GET, HEAD", method, path)?;
            let ks = keyspace_name(ks)?;
            let q = Query::parse(uri.query())?;
            if q.level.is_some() || q.r.is_some() || q.w.is_some() || q.if_version.is_some() {
                return Err(refuse(
                    Code::BadRequest,
                    "a watch takes prefix and from in its query",
                ));
            }
            Ok(ApiRequest::Watch {
                ks,
                prefix: q.prefix.unwrap_or_default().into_bytes(),
                from: q.from,
            })
        }
        ["v1", "node"] => allow(get, "GET, HEAD", method, path).map(|_| ApiRequest::Identity),
        ["v1", "admin", "nodes"] => {
            let post = method == Method::POST;
            allow(get || post, "GET, HEAD, POST", method, path)?;
            if get {
                return Ok(ApiRequest::Nodes);
            }
            Ok(ApiRequest::AddNode(json_object(
                &body,
                "node",
                Code::BadRequest,
            )?))
        }
        ["v1", "admin", "nodes", id] => {
            allow(method == Method::DELETE, "DELETE", method, path)?;
            let id = id.parse().map_err(|_| {
                refuse(
                    Code::BadRequest,
                    format!("a node id is a whole number, got {id:?}"),
                )
            })?;
            Ok(ApiRequest::RemoveNode { id })
        }
        ["v1", "admin", "backup", rest] => {
            allow(get, "GET, HEAD", method, path)?;
            let (ks, shard) = rest.rsplit_once('/').ok_or_else(|| {
                refuse(
                    Code::BadRequest,
                    "a backup names its keyspace and shard: /v1/admin/backup/{ks}/{shard}",
                )
            })?;
            let shard = shard.parse().map_err(|_| {
                refuse(
                    Code::BadRequest,
                    format!("a shard is a whole number, got {}", echo(shard)),
                )
            })?;
            Ok(ApiRequest::Backup {
                ks: keyspace_name(ks)?,
                shard,
                wait: Query::parse(uri.query())?.wait()?,
            })
        }
        ["v1", "admin", "restore", ks] => {
            allow(method == Method::POST, "POST", method, path)?;
            Ok(ApiRequest::Restore {
                ks: keyspace_name(ks)?,
                records: body,
                wait: Query::parse(uri.query())?.wait()?,
            })
        }
        ["v1", "auth", "token"] => {
            allow(method == Method::POST, "POST", method, path)?;
            Ok(ApiRequest::Login(json_object(
                &body,
                "login",
                Code::BadRequest,
            )?))
        }
        ["v1", "auth", "whoami"] => {
            allow(get, "GET, HEAD", method, path).map(|_| ApiRequest::WhoAmI)
        }
        ["v1", "admin", "users"] => {
            allow(get, "GET, HEAD", method, path).map(|_| ApiRequest::ListUsers)
        }
        ["v1", "admin", "roles"] => {
            allow(get, "GET, HEAD", method, path).map(|_| ApiRequest::ListRoles)
        }
        ["v1", "admin", "users", name] => {
            if let Some(name) = name.strip_suffix(":revoke-tokens") {
                allow(method == Method::POST, "POST", method, path)?;
                return Ok(ApiRequest::User {
                    name: name.to_string(),
                    action: UserAction::RevokeTokens,
                });
            }
            for (suffix, grant) in [(":grant", true), (":revoke", false)] {
                if let Some(name) = name.strip_suffix(suffix) {
                    allow(method == Method::POST, "POST", method, path)?;
                    let change: RoleChange = json_object(&body, "role change", Code::BadRequest)?;
                    return Ok(ApiRequest::User {
                        name: name.to_string(),
                        action: UserAction::ChangeRole {
                            role: change.role,
                            grant,
                        },
                    });
                }
            }
            let put = method == Method::PUT;
            let delete = method == Method::DELETE;
            allow(get || put || delete, "DELETE, GET, HEAD, PUT", method, path)?;
            let action = if get {
                UserAction::Get
            } else if put {
                UserAction::Put(json_object(&body, "user", Code::BadRequest)?)
            } else {
                UserAction::Delete
            };
            Ok(ApiRequest::User {
                name: name.to_string(),
                action,
            })
        }
        ["v1", "admin", "roles", name] => {
            let put = method == Method::PUT;
            let delete = method == Method::DELETE;
            allow(get || put || delete, "DELETE, GET, HEAD, PUT", method, path)?;
            let change = if get {
                None
            } else if put {
                Some(Some(json_object(&body, "role", Code::BadRequest)?))
            } else {
                Some(None)
            };
            Ok(ApiRequest::Role {
                name: name.to_string(),
                change,
            })
        }
        ["v1", "admin", "faults"] => {
            allow(method == Method::POST, "POST", method, path)?;
            Ok(ApiRequest::Faults(json_object(
                &body,
                "fault request",
                Code::BadRequest,
            )?))
        }
        _ => Err(not_found(method, path)),
    }
}

fn is_get(method: &Method) -> bool {
    method == Method::GET || method == Method::HEAD
}

fn not_found(method: &Method, path: &str) -> Refusal {
    refuse(
        Code::RouteNotFound,
        format!(
            "no route for {} {}; the routes are /, /v1/cluster, /v1/keyspaces[/{{ks}}], \
             /v1/kv/{{ks}}/{{key}}, /v1/kv/{{ks}}:batch-get and /v1/admin/faults",
            echo(method.as_str()),
            echo(path)
        ),
    )
}

fn allow(ok: bool, methods: &'static str, method: &Method, path: &str) -> Result<(), Refusal> {
    if ok {
        return Ok(());
    }
    Err(Refusal {
        error: TunekvError::new(
            Code::MethodNotAllowed,
            format!(
                "{} is not allowed on {}; allowed: {methods}",
                echo(method.as_str()),
                echo(path)
            ),
        ),
        allow: Some(methods),
    })
}

/// Percent-decodes a path segment or query part to bytes; `plus_is_space` for query strings
/// (`application/x-www-form-urlencoded`). `None` names the byte offset of a bad escape.
fn percent_decode(text: &str, plus_is_space: bool) -> Result<Vec<u8>, usize> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => {
                let hex = |b: Option<&u8>| b.and_then(|b| (*b as char).to_digit(16));
                match (hex(bytes.get(i + 1)), hex(bytes.get(i + 2))) {
                    (Some(h), Some(l)) => out.push((h * 16 + l) as u8),
                    _ => return Err(i),
                }
                i += 3;
            }
            b'+' if plus_is_space => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    Ok(out)
}

fn keyspace_name(segment: &str) -> Result<String, Refusal> {
    let bytes = percent_decode(segment, false).map_err(|at| {
        refuse(
            Code::KeyspaceInvalid,
            format!(
                "the keyspace name {} has a bad percent-escape at byte {at}",
                echo(segment)
            ),
        )
    })?;
    String::from_utf8(bytes).map_err(|e| {
        refuse(
            Code::KeyspaceInvalid,
            format!(
                "the keyspace name {} is not UTF-8",
                echo_bytes(e.as_bytes())
            ),
        )
    })
}

fn path_key(raw: &str, encoding: KeyEncoding) -> Result<Vec<u8>, Refusal> {
    let bytes = percent_decode(raw, false).map_err(|at| {
        refuse(
            Code::KeyInvalid,
            format!(
                "the key {} has a bad percent-escape at byte {at} (a % must start %XX; send % as %25)",
                echo(raw)
            ),
        )
    })?;
    let key = match encoding {
        KeyEncoding::Text => bytes,
        KeyEncoding::Base64Url => std::str::from_utf8(&bytes)
            .ok()
            .and_then(from_base64url)
            .ok_or_else(|| {
                refuse(
                    Code::KeyInvalid,
                    format!(
                        "the key {} is not base64url (A-Z a-z 0-9 - _, optional = padding)",
                        echo_bytes(&bytes)
                    ),
                )
            })?,
    };
    check_key(&key)?;
    Ok(key)
}

/// The query parameters of a key route.
#[derive(Default)]
struct Query {
    level: Option<String>,
    r: Option<String>,
    w: Option<String>,
    wait_ms_max: Option<String>,
    format: Option<String>,
    key_encoding: Option<String>,
    if_version: Option<String>,
    prefix: Option<String>,
    from: Option<String>,
    shard: Option<String>,
    cursor: Option<String>,
    count: Option<String>,
}

impl Query {
    fn parse(query: Option<&str>) -> Result<Query, Refusal> {
        let mut q = Query::default();
        for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
            let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
            let decode = |part: &str| {
                percent_decode(part, true)
                    .ok()
                    .and_then(|b| String::from_utf8(b).ok())
                    .ok_or_else(|| {
                        refuse(
                            Code::BadRequest,
                            format!(
                                "bad query string: {} is not percent-encoded UTF-8",
                                echo(part)
                            ),
                        )
                    })
            };
            let name = decode(name)?;
            let slot = match name.as_str() {
                "level" => &mut q.level,
                "r" => &mut q.r,
                "w" => &mut q.w,
                "wait_ms_max" => &mut q.wait_ms_max,
                "format" => &mut q.format,
                "key_encoding" => &mut q.key_encoding,
                "if_version" => &mut q.if_version,
                "prefix" => &mut q.prefix,
                "from" => &mut q.from,
                "shard" => &mut q.shard,
                "cursor" => &mut q.cursor,
                "count" => &mut q.count,
                _ => {
                    return Err(refuse(
                        Code::BadRequest,
                        format!(
                            "bad query string: unknown parameter {}; known: level, r, w, \
                             wait_ms_max, format, key_encoding, if_version, prefix, from, shard, \
                             cursor, count",
                            echo(&name)
                        ),
                    ))
                }
            };
            if slot.is_some() {
                return Err(refuse(
                    Code::BadRequest,
                    format!("bad query string: {name} is given more than once"),
                ));
            }
            *slot = Some(decode(value)?);
        }
        Ok(q)
    }

    fn level(&self, headers: &HeaderMap) -> Result<Option<Level>, Refusal> {
        level_of(self.level.as_deref(), headers)
    }

    /// The read (`r`) or write (`w`) quorum, from the query or the `tunekv-r` / `tunekv-w`
    /// header (not both). The other one on the same request is refused: it would be ignored.
    fn quorum(&self, kind: QuorumKind, headers: &HeaderMap) -> Result<Option<Quorum>, Refusal> {
        let (name, header, value, other, other_header) = match kind {
            QuorumKind::Read => ("r", H_R, &self.r, "w", H_W),
            QuorumKind::Write => ("w", H_W, &self.w, "r", H_R),
        };
        let given_other = match kind {
            QuorumKind::Read => self.w.is_some(),
            QuorumKind::Write => self.r.is_some(),
        };
        if given_other || headers.contains_key(other_header) {
            let what = match kind {
                QuorumKind::Read => "a read",
                QuorumKind::Write => "a write",
            };
            return Err(refuse(
                Code::QuorumInvalid,
                format!("{other} does not apply to {what}; it takes {name}"),
            ));
        }
        let text = match (value, headers.get(header)) {
            (Some(_), Some(_)) => {
                return Err(refuse(
                    Code::QuorumInvalid,
                    format!("{name} is given both in the query and as the {header} header"),
                ))
            }
            (Some(t), None) => Some(t.as_str()),
            (None, Some(h)) => Some(h.to_str().map_err(|_| {
                refuse(
                    Code::QuorumInvalid,
                    format!("the {header} header is not text"),
                )
            })?),
            (None, None) => None,
        };
        Ok(text.map(|t| Quorum::parse(t, kind)).transpose()?)
    }

    /// `if_version`: a whole number (0: only if absent).
    fn if_version(&self) -> Result<Option<u64>, Refusal> {
        self.if_version
            .as_deref()
            .map(|v| {
                v.parse::<u64>().map_err(|_| {
                    refuse(
                        Code::BadRequest,
                        format!(
                            "if_version must be a key version (a whole number; 0: only if \
                             absent), got {}",
                            echo(v)
                        ),
                    )
                })
            })
            .transpose()
    }

    fn wait(&self) -> Result<Option<Duration>, Refusal> {
        self.wait_ms_max
            .as_deref()
            .map(|w| {
                w.parse::<u64>().map(Duration::from_millis).map_err(|_| {
                    refuse(
                        Code::BadRequest,
                        format!(
                            "wait_ms_max must be a whole number of milliseconds, got {}",
                            echo(w)
                        ),
                    )
                })
            })
            .transpose()
    }

    fn json(&self) -> Result<bool, Refusal> {
        match self.format.as_deref() {
            None | Some("raw") => Ok(false),
            Some("json") => Ok(true),
            Some(other) => Err(refuse(
                Code::BadRequest,
                format!("format must be json or raw, got {}", echo(other)),
            )),
        }
    }

    fn key_encoding(&self) -> Result<KeyEncoding, Refusal> {
        key_encoding(self.key_encoding.as_deref())
    }
}

fn key_encoding(name: Option<&str>) -> Result<KeyEncoding, Refusal> {
    match name {
        None => Ok(KeyEncoding::Text),
        Some("base64url") => Ok(KeyEncoding::Base64Url),
        Some(other) => Err(refuse(
            Code::BadRequest,
            format!(
                "key_encoding must be base64url (or absent: percent-encoded bytes in the path, \
                 strings in a batch), got {}",
                echo(other)
            ),
        )),
    }
}

/// The level named by the request (`text`, from the query or body) or else the `tunekv-level`
/// header.
fn level_of(text: Option<&str>, headers: &HeaderMap) -> Result<Option<Level>, Refusal> {
    let text = match (text, headers.get(H_LEVEL)) {
        (Some(t), _) => Some(t),
        (None, Some(h)) => Some(
            h.to_str()
                .map_err(|_| refuse(Code::LevelInvalid, "the tunekv-level header is not text"))?,
        ),
        (None, None) => None,
    };
    Ok(text.map(Level::parse).transpose()?)
}

/// The session the request carries: every `tunekv-session` value, each possibly several
/// comma-separated tokens, merged. None is a new session; anything unsigned is `session_invalid`.
/// The `tunekv-context` header, if any (one; checked by the node, which knows the key).
fn context_of(headers: &HeaderMap) -> Result<Option<String>, Refusal> {
    let mut all = headers.get_all(H_CONTEXT).iter();
    let Some(first) = all.next() else {
        return Ok(None);
    };
    if all.next().is_some() {
        return Err(refuse(
            Code::ContextInvalid,
            "more than one tunekv-context header; send the one context you read".to_string(),
        ));
    }
    let text = first.to_str().map_err(|_| {
        refuse(
            Code::ContextInvalid,
            "tunekv-context is not ASCII text".to_string(),
        )
    })?;
    Ok(Some(text.to_string()))
}

fn session_of(secret: &SessionKey, headers: &HeaderMap) -> Result<Session, Refusal> {
    let values = headers
        .get_all(H_SESSION)
        .iter()
        .map(|v| {
            v.to_str().map_err(|_| {
                refuse(
                    Code::SessionInvalid,
                    "the tunekv-session header is not text",
                )
            })
        })
        .collect::<Result<Vec<&str>, Refusal>>()?;
    Ok(secret.decode_all(values)?)
}

/// A JSON object body as `T`. Arrays (which serde would read as a struct's fields in order),
/// scalars and empty bodies are refused with `code`; serde's message is kept, every quoted
/// part of it cut to [`ECHO_CHARS_MAX`] characters.
fn json_object<T: DeserializeOwned>(body: &[u8], what: &str, code: Code) -> Result<T, Refusal> {
    match body.iter().find(|b| !b.is_ascii_whitespace()) {
        Some(b'{') => {}
        Some(_) => {
            return Err(refuse(
                code,
                format!("bad {what}: the body must be a JSON object {{...}}"),
            ))
        }
        None => return Err(refuse(code, format!("bad {what}: the body is empty"))),
    }
    serde_json::from_slice(body)
        .map_err(|e| refuse(code, format!("bad {what}: {}", serde_message(&e))))
}

/// serde_json's message with every `backticked` part (field and variant names, which come
/// from the input) cut to [`ECHO_CHARS_MAX`] characters.
pub fn serde_message(e: &serde_json::Error) -> String {
    let text = e.to_string();
    let mut out = String::with_capacity(text.len().min(4 * ECHO_CHARS_MAX));
    for (i, part) in text.split('`').enumerate() {
        if i > 0 {
            out.push('`');
        }
        if i % 2 == 1 {
            out.push_str(&shorten(part, ECHO_CHARS_MAX));
        } else {
            out.push_str(part);
        }
    }
    out
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct BatchGetBody {
    keys: BatchKeys,
    level: Option<String>,
    wait_ms_max: Option<u64>,
    key_encoding: Option<String>,
}

/// The keys of a batch, refused while reading once there are more than [`BATCH_KEYS_MAX`]
/// (a body of tiny keys would otherwise become millions of strings first).
struct BatchKeys(Vec<String>);

impl<'de> Deserialize<'de> for BatchKeys {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Keys;
        impl<'de> Visitor<'de> for Keys {
            type Value = BatchKeys;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                write!(f, "an array of 1 to {BATCH_KEYS_MAX} key strings")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<BatchKeys, A::Error> {
                let mut keys = Vec::new();
                while let Some(k) = seq.next_element::<String>()? {
                    if keys.len() == BATCH_KEYS_MAX {
                        return Err(serde::de::Error::custom(format!(
                            "a batch holds 1 to {BATCH_KEYS_MAX} keys, got more"
                        )));
                    }
                    keys.push(k);
                }
                Ok(BatchKeys(keys))
            }
        }
        d.deserialize_seq(Keys)
    }
}

/// `POST /v1/kv/{ks}/{key}:add`'s body.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AddBody {
    /// How much to add (negative: subtract); a JSON integer within i64.
    by: i64,
    /// The request's id (any string up to 256 bytes): a retry with the same id is applied once.
    #[serde(default)]
    id: Option<BoundedId>,
}

/// `POST /v1/kv/{ks}/{key}:update`'s body: a set's `{"add":[…],"remove":[…]}`, a map's
/// `{"set":{"field":"value",…},"remove":[…]}` or `{"incr":{"field":"f","by":N}}`. Members,
/// fields and values are JSON strings (UTF-8).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct UpdateBody {
    #[serde(default)]
    add: Option<Vec<String>>,
    #[serde(default)]
    remove: Option<Vec<String>>,
    #[serde(default)]
    set: Option<std::collections::BTreeMap<String, String>>,
    #[serde(default)]
    incr: Option<IncrBody>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct IncrBody {
    field: String,
    by: i64,
}

/// Members or fields one update may name.
pub const UPDATE_MEMBERS_MAX: usize = 10_000;

impl UpdateBody {
    fn into_update(self) -> Result<Update, TunekvError> {
        let bytes =
            |v: Vec<String>| -> Vec<Vec<u8>> { v.into_iter().map(String::into_bytes).collect() };
        let named = self.add.as_ref().map_or(0, Vec::len)
            + self.remove.as_ref().map_or(0, Vec::len)
            + self.set.as_ref().map_or(0, |s| s.len());
        if named > UPDATE_MEMBERS_MAX {
            return Err(TunekvError::new(
                Code::BadRequest,
                format!(
                    "an update names at most {UPDATE_MEMBERS_MAX} members or fields, got {named}"
                ),
            ));
        }
        let bad = |why: &str| Err(TunekvError::new(Code::BadRequest, why.to_string()));
        match (self.add, self.remove, self.set, self.incr) {
            (None, None, None, None) => bad(
                "an update body names \"add\" and/or \"remove\" (sets), \"set\" and/or \
                 \"remove\" (maps), or \"incr\" (maps)",
            ),
            (Some(_), _, Some(_), _) => bad("\"add\" (sets) and \"set\" (maps) do not go together"),
            (_, _, _, Some(_)) if named > 0 => {
                bad("\"incr\" goes alone: send the other changes as another update")
            }
            (_, _, _, Some(i)) => Ok(Update::FieldAdd {
                field: i.field.into_bytes(),
                by: i.by,
            }),
            (None, remove, Some(set), None) => Ok(Update::Fields {
                set: set
                    .into_iter()
                    .map(|(f, v)| (f.into_bytes(), v.into_bytes()))
                    .collect(),
                remove: bytes(remove.unwrap_or_default()),
            }),
            // Only removes: of a set's members or a map's fields (the node knows which).
            (add, remove, None, None) => Ok(Update::Members {
                add: bytes(add.unwrap_or_default()),
                remove: bytes(remove.unwrap_or_default()),
            }),
        }
    }
}

/// A request id: at most 256 bytes.
struct BoundedId(String);

impl BoundedId {
    fn as_bytes(&self) -> &[u8] {
        self.0.as_bytes()
    }
}

impl<'de> Deserialize<'de> for BoundedId {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<BoundedId, D::Error> {
        let s = String::deserialize(d)?;
        if s.is_empty() || s.len() > 256 {
            return Err(serde::de::Error::custom(
                "id must be a string of 1 to 256 bytes",
            ));
        }
        Ok(BoundedId(s))
    }
}

/// A setting a batch-get may give in its body or its query string, never both (a level in the
/// query must not be silently overridden, or ignored, by the body).
fn one_of<T>(name: &str, body: Option<T>, query: Option<T>) -> Result<Option<T>, Refusal> {
    match (body, query) {
        (Some(_), Some(_)) => Err(refuse(
            Code::BadRequest,
            format!("{name} is given both in the body and in the query string; give it once"),
        )),
        (b, q) => Ok(b.or(q)),
    }
}

/// A transaction's body (`POST /v1/kv/{ks}:txn`): keys and values are UTF-8 strings.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TxnBody {
    #[serde(default)]
    compare: Vec<TxnCompare>,
    #[serde(default)]
    success: Vec<TxnOp>,
    #[serde(default)]
    failure: Vec<TxnOp>,
}

/// `{"key": k, "version": V}` (0: absent) or `{"key": k, "value": v}`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TxnCompare {
    key: String,
    version: Option<u64>,
    value: Option<String>,
}

#[derive(Deserialize)]
#[serde(tag = "op", rename_all = "lowercase", deny_unknown_fields)]
enum TxnOp {
    Put { key: String, value: String },
    Delete { key: String },
    Get { key: String },
    Incr { key: String, by: i64 },
}

fn txn(
    secret: &SessionKey,
    ks: String,
    q: Query,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<ApiRequest, Refusal> {
    let req: TxnBody = json_object(body, "transaction body", Code::BadRequest)?;
    if q.level.is_some() || q.r.is_some() || q.w.is_some() || q.format.is_some() {
        return Err(refuse(
            Code::BadRequest,
            "a transaction takes only wait_ms_max in its query (it runs on the shard's leader, \
             strongly)",
        ));
    }
    let mut compare = Vec::with_capacity(req.compare.len());
    for (i, c) in req.compare.into_iter().enumerate() {
        let expect = match (c.version, c.value) {
            (Some(v), None) => Expect::Version(v),
            (None, Some(v)) => Expect::Value(v.into_bytes()),
            _ => {
                return Err(refuse(
                    Code::BadRequest,
                    format!("compare[{i}] names exactly one of version and value"),
                ))
            }
        };
        compare.push((c.key.into_bytes(), expect));
    }
    let ops = |ops: Vec<TxnOp>| -> Vec<Op> {
        ops.into_iter()
            .map(|o| match o {
                TxnOp::Put { key, value } => Op::Put {
                    key: key.into_bytes(),
                    value: value.into_bytes(),
                },
                TxnOp::Delete { key } => Op::Delete {
                    key: key.into_bytes(),
                },
                TxnOp::Get { key } => Op::Get {
                    key: key.into_bytes(),
                },
                TxnOp::Incr { key, by } => Op::IncrBy {
                    key: key.into_bytes(),
                    delta: by,
                },
            })
            .collect()
    };
    Ok(ApiRequest::Txn {
        ks,
        compare,
        success: ops(req.success),
        failure: ops(req.failure),
        wait: q.wait()?,
        session: session_of(secret, headers)?,
    })
}

fn batch_get(
    secret: &SessionKey,
    ks: String,
    q: Query,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<ApiRequest, Refusal> {
    let req: BatchGetBody = json_object(body, "batch-get body", Code::BadRequest)?;
    if q.format.is_some() {
        return Err(refuse(
            Code::BadRequest,
            "format does not apply to batch-get (its answer is always JSON)",
        ));
    }
    let key_encoding =
        key_encoding(one_of("key_encoding", req.key_encoding, q.key_encoding.clone())?.as_deref())?;
    let level = level_of(
        one_of("level", req.level, q.level.clone())?.as_deref(),
        headers,
    )?;
    let query_wait = q.wait()?;
    let wait = one_of(
        "wait_ms_max",
        req.wait_ms_max.map(Duration::from_millis),
        query_wait,
    )?;
    let r = q.quorum(QuorumKind::Read, headers)?;
    let session = session_of(secret, headers)?;
    let texts = req.keys.0;
    if texts.is_empty() {
        return Err(refuse(
            Code::BadRequest,
            format!("a batch holds 1 to {BATCH_KEYS_MAX} keys, got 0"),
        ));
    }
    let mut keys = Vec::with_capacity(texts.len());
    for (i, text) in texts.into_iter().enumerate() {
        let k = match key_encoding {
            KeyEncoding::Text => text.into_bytes(),
            KeyEncoding::Base64Url => from_base64url(&text).ok_or_else(|| {
                refuse(
                    Code::KeyInvalid,
                    format!("keys[{i}] = {} is not base64url", echo(&text)),
                )
            })?,
        };
        check_key(&k).map_err(|e| TunekvError::new(e.code, format!("keys[{i}]: {}", e.message)))?;
        keys.push(k);
    }
    Ok(ApiRequest::BatchGet {
        ks,
        keys,
        key_encoding,
        level,
        r,
        wait,
        session,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn session_key() -> SessionKey {
        SessionKey::new(b"a test secret of enough bytes").expect("key")
    }

    fn run(method: &str, uri: &str, body: &[u8]) -> Result<ApiRequest, Refusal> {
        let method = Method::from_bytes(method.as_bytes()).expect("method");
        let uri: Uri = uri.parse().expect("uri");
        parse(
            &session_key(),
            &method,
            &uri,
            &HeaderMap::new(),
            Bytes::copy_from_slice(body),
        )
    }

    fn code(r: Result<ApiRequest, Refusal>) -> Option<Code> {
        r.err().map(|e| e.error.code)
    }

    #[test]
    fn path_keys_are_percent_decoded_to_any_bytes() {
        // Before: axum decoded the path to a String, so %FF was a 400 text/plain.
        match run("GET", "/v1/kv/ks/a%2Fb%FF.", b"") {
            Ok(ApiRequest::Get { ks, key, .. }) => {
                assert_eq!(ks, "ks");
                assert_eq!(key, b"a/b\xff.");
            }
            other => panic!("{other:?}"),
        }
        match run("PUT", "/v1/kv/ks/x/y/z", b"v") {
            Ok(ApiRequest::Put { key, value, .. }) => {
                assert_eq!(key, b"x/y/z");
                assert_eq!(&value[..], b"v");
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(
            code(run("GET", "/v1/kv/ks/100%", b"")),
            Some(Code::KeyInvalid)
        );
        assert_eq!(
            code(run("GET", "/v1/kv/ks/%zz", b"")),
            Some(Code::KeyInvalid)
        );
    }

    #[test]
    fn base64url_keys_round_trip() {
        for key in [&b"."[..], b"..", b"\x00\xff\xfe", b"plain"] {
            let uri = format!("/v1/kv/ks/{}?key_encoding=base64url", base64url(key));
            match run("DELETE", &uri, b"") {
                Ok(ApiRequest::Delete { key: k, .. }) => assert_eq!(k, key),
                other => panic!("{other:?}"),
            }
        }
        // Padding is accepted.
        match run("GET", "/v1/kv/ks/Lg==?key_encoding=base64url", b"") {
            Ok(ApiRequest::Get { key, .. }) => assert_eq!(key, b"."),
            other => panic!("{other:?}"),
        }
        assert_eq!(
            code(run("GET", "/v1/kv/ks/a*b?key_encoding=base64url", b"")),
            Some(Code::KeyInvalid)
        );
        assert_eq!(
            code(run("GET", "/v1/kv/ks/a?key_encoding=hex", b"")),
            Some(Code::BadRequest)
        );
        let body = format!(
            r#"{{"keys":["{}","{}"],"key_encoding":"base64url"}}"#,
            base64url(b"\xff"),
            base64url(b"a")
        );
        match run("POST", "/v1/kv/ks:batch-get", body.as_bytes()) {
            Ok(ApiRequest::BatchGet {
                keys, key_encoding, ..
            }) => {
                assert_eq!(keys, vec![b"\xff".to_vec(), b"a".to_vec()]);
                assert_eq!(key_encoding, KeyEncoding::Base64Url);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn empty_keys_unknown_routes_and_methods_are_typed() {
        // Before: an empty key, an unknown route and a wrong method had empty 404/405 bodies.
        assert_eq!(code(run("GET", "/v1/kv/ks/", b"")), Some(Code::KeyInvalid));
        assert_eq!(
            code(run("GET", "/v1/kv/ks/?key_encoding=base64url", b"")),
            Some(Code::KeyInvalid)
        );
        assert_eq!(code(run("GET", "/v2/kv", b"")), Some(Code::RouteNotFound));
        assert_eq!(
            code(run("GET", "/v1/cluster/extra", b"")),
            Some(Code::RouteNotFound)
        );
        let r = run("POST", "/v1/cluster", b"").expect_err("refused");
        assert_eq!(r.error.code, Code::MethodNotAllowed);
        assert_eq!(r.allow, Some("GET, HEAD"));
        assert_eq!(
            code(run("PATCH", "/v1/kv/ks/k", b"")),
            Some(Code::MethodNotAllowed)
        );
        assert_eq!(
            code(run("POST", "/v1/kv/ks:frobnicate", b"")),
            Some(Code::RouteNotFound)
        );
        // Scan pages are read with GET.
        assert_eq!(
            code(run("POST", "/v1/kv/ks:scan", b"")),
            Some(Code::MethodNotAllowed)
        );
        assert!(matches!(
            run("GET", "/v1/kv/ks:scan?prefix=user%3A&cursor=7&count=50", b""),
            Ok(ApiRequest::Scan { ref prefix, cursor: 7, count: 50, .. }) if prefix == b"user:"
        ));
        assert_eq!(
            code(run("GET", "/v1/kv/ks:scan?cursor=x", b"")),
            Some(Code::BadRequest)
        );
        assert!(matches!(
            run("HEAD", "/", b""),
            Ok(ApiRequest::Index { html: false })
        ));
    }

    #[test]
    fn long_unknown_names_are_echoed_cut() {
        // Before: a 10 MB unknown field name came back whole in the error message.
        let name = "x".repeat(1_000_000);
        let body = format!(r#"{{"{name}": 1}}"#);
        let r = run("PUT", "/v1/keyspaces/ks", body.as_bytes()).expect_err("refused");
        assert_eq!(r.error.code, Code::KeyspaceInvalid);
        assert!(r.error.message.len() < 1024, "{}", r.error.message.len());
        assert!(
            r.error.message.contains("unknown field"),
            "{}",
            r.error.message
        );
        // A URI is at most 64 KiB.
        let r =
            run("GET", &format!("/v1/kv/ks/k?{}=1", &name[..60_000]), b"").expect_err("refused");
        assert!(r.error.message.len() < 1024);
        let r = run("POST", "/v1/kv/ks:batch-get", body.as_bytes()).expect_err("refused");
        assert!(r.error.message.len() < 1024);
    }

    #[test]
    fn json_arrays_are_not_objects() {
        // Before: `[...]` was read as a keyspace spec's fields in order.
        for body in [&br#"["ordered", 2, 3, "strong", 1024]"#[..], b"2", b"\"x\""] {
            let r = run("PUT", "/v1/keyspaces/ks", body).expect_err("refused");
            assert_eq!(r.error.code, Code::KeyspaceInvalid);
            assert!(
                r.error.message.contains("JSON object"),
                "{}",
                r.error.message
            );
        }
        assert_eq!(
            code(run("POST", "/v1/kv/ks:batch-get", br#"[["a"]]"#)),
            Some(Code::BadRequest)
        );
        assert_eq!(
            code(run("POST", "/v1/admin/faults", b"[true]")),
            Some(Code::BadRequest)
        );
        assert!(matches!(
            run("PUT", "/v1/keyspaces/ks", b"  \n"),
            Ok(ApiRequest::CreateKeyspace { .. })
        ));
    }

    #[test]
    fn batches_are_bounded_while_read() {
        let keys: Vec<String> = (0..=BATCH_KEYS_MAX).map(|i| format!("\"k{i}\"")).collect();
        let body = format!(r#"{{"keys":[{}]}}"#, keys.join(","));
        let r = run("POST", "/v1/kv/ks:batch-get", body.as_bytes()).expect_err("refused");
        assert_eq!(r.error.code, Code::BadRequest);
        assert!(
            r.error.message.contains("1 to 1000 keys"),
            "{}",
            r.error.message
        );
        assert_eq!(
            code(run("POST", "/v1/kv/ks:batch-get", br#"{"keys":[]}"#)),
            Some(Code::BadRequest)
        );
        assert_eq!(
            code(run("POST", "/v1/kv/ks:batch-get", br#"{"keys":["a",""]}"#)),
            Some(Code::KeyInvalid)
        );
        // Repeats are kept as asked; the HTTP layer fetches each key once.
        match run("POST", "/v1/kv/ks:batch-get", br#"{"keys":["a","a","b"]}"#) {
            Ok(ApiRequest::BatchGet { keys, .. }) => assert_eq!(keys.len(), 3),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_batch_get_honours_its_query_string() {
        // Regression (review of issue 15): `POST /v1/kv/ks:batch-get?level=strong` ignored the
        // query and ran at the keyspace's default level, a weaker level served silently.
        let body = br#"{"keys":["a"]}"#;
        match run(
            "POST",
            "/v1/kv/ks:batch-get?level=strong&wait_ms_max=7",
            body,
        ) {
            Ok(ApiRequest::BatchGet { level, wait, .. }) => {
                assert_eq!(level, Some(Level::Strong));
                assert_eq!(wait, Some(Duration::from_millis(7)));
            }
            other => panic!("{other:?}"),
        }
        let both = br#"{"keys":["a"],"level":"eventual"}"#;
        assert_eq!(
            code(run("POST", "/v1/kv/ks:batch-get?level=strong", both)),
            Some(Code::BadRequest)
        );
        assert_eq!(
            code(run("POST", "/v1/kv/ks:batch-get?level=nope", body)),
            Some(Code::LevelInvalid)
        );
        assert_eq!(
            code(run("POST", "/v1/kv/ks:batch-get?format=json", body)),
            Some(Code::BadRequest)
        );
    }

    /// A seeded xorshift64* generator: the same inputs on every run.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
        }
        fn below(&mut self, n: usize) -> usize {
            (self.next() % n as u64) as usize
        }
        fn pick<'a>(&mut self, items: &[&'a str]) -> &'a str {
            items[self.below(items.len())]
        }
    }

    const SEGMENTS: &[&str] = &[
        "ks",
        "k",
        ".",
        "..",
        "",
        "%2E",
        "%FF%FE",
        "%",
        "%4",
        "%zz",
        "a%2Fb",
        "é",
        "%C3%A9",
        "+",
        "ks:batch-get",
        ":batch-get",
        "bad name",
        "x%00y",
        "Lg",
        "_g==",
        "a*b",
    ];
    const PATHS: &[&str] = &[
        "/",
        "/v1/cluster",
        "/v1/keyspaces",
        "/v1/keyspaces/{}",
        "/v1/kv/{}/{}",
        "/v1/kv/{}:batch-get",
        "/v1/kv/{}",
        "/v1/admin/faults",
        "/{}/{}/{}",
        "/v1/kv/{}/{}/{}",
        "/v1/kv/",
        "/v1//kv",
        "",
    ];
    const QUERY_NAMES: &[&str] = &[
        "level",
        "wait_ms_max",
        "format",
        "key_encoding",
        "junk",
        "",
        "%FF",
        "level%",
    ];
    const QUERY_VALUES: &[&str] = &[
        "strong",
        "bounded(k%3D3)",
        "bounded(t=5s)",
        "bogus",
        "1",
        "-1",
        "99999999999999999999999",
        "json",
        "raw",
        "base64url",
        "%FF",
        "%",
        "+",
        "eventual",
    ];
    const BODIES: &[&str] = &[
        "",
        "  ",
        "{}",
        "[]",
        "[1,2]",
        "2",
        "null",
        "{\"shards\":2}",
        "{\"shards\":-1}",
        "{\"mode\":\"x\"}",
        "{\"keys\":[\"a\",\"a\",\"b\"]}",
        "{\"keys\":[]}",
        "{\"keys\":[\"\"]}",
        "{\"keys\":\"a\"}",
        "{\"keys\":[1]}",
        "{\"keys\":[\"_w\",\"Lg\"],\"key_encoding\":\"base64url\"}",
        "{\"keys\":[\"*\"],\"key_encoding\":\"base64url\"}",
        "{\"keys\":[\"a\"],\"level\":\"nope\",\"wait_ms_max\":5}",
        "{\"clear\":true,\"delay_ms\":18446744073709551615,\"jitter_ms\":1}",
        "{\"drop_rate\":\"x\"}",
        "{\"isolate\":true",
        "{\"a\":",
        "\u{0}\u{1}",
    ];

    fn random_text(rng: &mut Rng, len: usize) -> String {
        const CHARS: &[u8] = b"abc%FfZz09./:_-+~=&?[]{}\"\\ ";
        (0..len)
            .map(|_| CHARS[rng.below(CHARS.len())] as char)
            .collect()
    }

    fn fill(rng: &mut Rng, template: &str) -> String {
        let mut out = String::new();
        for (i, part) in template.split("{}").enumerate() {
            if i > 0 {
                if rng.below(4) == 0 {
                    let n = rng.below(40);
                    out.push_str(&random_text(rng, n));
                } else {
                    out.push_str(rng.pick(SEGMENTS));
                }
            }
            out.push_str(part);
        }
        out
    }

    fn random_request(rng: &mut Rng) -> Option<(Method, Uri, HeaderMap, Bytes)> {
        let method = rng.pick(&[
            "GET", "PUT", "POST", "DELETE", "HEAD", "PATCH", "OPTIONS", "BREW",
        ]);
        let template = rng.pick(PATHS);
        let mut uri = fill(rng, template);
        for i in 0..rng.below(4) {
            uri.push(if i == 0 { '?' } else { '&' });
            uri.push_str(rng.pick(QUERY_NAMES));
            if rng.below(5) > 0 {
                uri.push('=');
                uri.push_str(rng.pick(QUERY_VALUES));
            }
        }
        let mut headers = HeaderMap::new();
        if rng.below(3) == 0 {
            let v = rng.pick(&["strong", "eventual", "bogus", "bounded(k=1)", ""]);
            headers.insert(H_LEVEL, HeaderValue::from_str(v).ok()?);
        }
        for _ in 0..rng.below(3) {
            let n = rng.below(80);
            let v = random_text(rng, n).replace(['\\', '"'], "a");
            headers.append(H_SESSION, HeaderValue::from_str(&v).ok()?);
        }
        let mut body = rng.pick(BODIES).as_bytes().to_vec();
        match rng.below(6) {
            0 => {
                let n = rng.below(64);
                body.extend((0..n).map(|_| rng.next() as u8));
            }
            1 => {
                let n = rng.below(body.len() + 1);
                body.truncate(n);
            }
            2 => {
                let n = rng.below(5000);
                body = format!("{{\"{}\":1}}", "n".repeat(n)).into_bytes();
            }
            _ => {}
        }
        Some((
            Method::from_bytes(method.as_bytes()).ok()?,
            uri.parse().ok()?,
            headers,
            Bytes::from(body),
        ))
    }

    #[tokio::test]
    async fn random_and_malformed_requests_get_a_request_or_a_json_error() {
        let key = session_key();
        let mut rng = Rng(0x7e57_c0de_5eed_0001);
        let (mut parsed, mut refused) = (0, 0);
        for _ in 0..600 {
            let Some((method, uri, headers, body)) = random_request(&mut rng) else {
                continue;
            };
            match parse(&key, &method, &uri, &headers, body) {
                Ok(req) => {
                    parsed += 1;
                    match &req {
                        ApiRequest::Get { key, .. }
                        | ApiRequest::Put { key, .. }
                        | ApiRequest::Delete { key, .. } => {
                            assert!(check_key(key).is_ok(), "{method} {uri}")
                        }
                        ApiRequest::BatchGet { keys, .. } => {
                            assert!((1..=BATCH_KEYS_MAX).contains(&keys.len()));
                            assert!(keys.iter().all(|k| check_key(k).is_ok()));
                        }
                        _ => {}
                    }
                }
                Err(refusal) => {
                    refused += 1;
                    let code = refusal.error.code;
                    assert!(
                        crate::status_of(code).is_client_error(),
                        "{method} {uri}: {code} is not a client error"
                    );
                    let response = crate::refusal_response(refusal);
                    assert_eq!(response.status(), crate::status_of(code));
                    let body = axum::body::to_bytes(response.into_body(), 1 << 20)
                        .await
                        .expect("body");
                    let v: serde_json::Value = serde_json::from_slice(&body).expect("JSON error");
                    assert_eq!(v["error"]["code"], code.as_str());
                    let message = v["error"]["message"].as_str().expect("message");
                    assert!(!message.is_empty());
                    assert!(message.chars().count() <= crate::MESSAGE_CHARS_MAX + 1);
                }
            }
        }
        // The generator reaches both sides.
        assert!(
            parsed > 50 && refused > 200,
            "parsed {parsed}, refused {refused}"
        );
    }

    #[test]
    fn query_and_header_levels() {
        let mut headers = HeaderMap::new();
        headers.insert(H_LEVEL, HeaderValue::from_static("eventual"));
        let uri: Uri = "/v1/kv/ks/k?wait_ms_max=5&format=json"
            .parse()
            .expect("uri");
        match parse(&session_key(), &Method::GET, &uri, &headers, Bytes::new()) {
            Ok(ApiRequest::Get {
                level, wait, json, ..
            }) => {
                assert_eq!(level, Some(Level::Eventual));
                assert_eq!(wait, Some(Duration::from_millis(5)));
                assert!(json);
            }
            other => panic!("{other:?}"),
        }
        let uri: Uri = "/v1/kv/ks/k?level=bounded(k%3D5)".parse().expect("uri");
        assert!(matches!(
            parse(&session_key(), &Method::GET, &uri, &headers, Bytes::new()),
            Ok(ApiRequest::Get {
                level: Some(Level::Bounded { .. }),
                ..
            })
        ));
        assert_eq!(
            code(run("GET", "/v1/kv/ks/k?level=a&level=b", b"")),
            Some(Code::BadRequest)
        );
        assert_eq!(
            code(run("GET", "/v1/kv/ks/k?wait_ms_max=soon", b"")),
            Some(Code::BadRequest)
        );
        assert_eq!(
            code(run("PUT", "/v1/kv/ks/k?level=bogus", b"")),
            Some(Code::LevelInvalid)
        );
    }
}
