//! `PUT/GET/DELETE /v1/kv/{ks}/{key}`, `PUT/GET /v1/keyspaces/{ks}`, `GET /v1/cluster`,
//! `POST /v1/kv/{ks}:batch-get`, `POST /v1/admin/faults`, `GET /`.
//!
//! Every request goes through one handler: the body is read (bounded in size and in stall
//! time), `request::parse` turns method, path, query, headers and body into an
//! [`ApiRequest`] or a typed error, and [`execute`] runs it on the node. So every answer,
//! unknown routes and methods included, is either a success or the JSON error shape
//! `{"error":{"code":"…","message":"…"}}`.

use crate::batch::{Answer, Plan};
use crate::request::{self, ApiRequest, FaultChange, KeyEncoding, Refusal, UserAction, H_CONTEXT};
use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::header::{ALLOW, CONTENT_LENGTH, CONTENT_TYPE};
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::{Json, Router};
use futures::StreamExt;
use serde_json::json;
use std::sync::Arc;
use std::time::Duration;
use tunekv_core::auth::{Access, Grants};
use tunekv_core::code::{echo_bytes, shorten};
use tunekv_core::limits::VALUE_BYTES_MAX_CEILING;
use tunekv_core::{Code, KeyspaceSpec, Level, Quorum, Receipt, Session, TunekvError};
use tunekv_dynamo::update::Update;
use tunekv_dynamo::Stored;
use tunekv_node::metrics::{self, Protocol};
use tunekv_node::{FaultState, Node, Op, ReadOutcome, ReadRequest, WriteOutcome, WriteRequest};

/// Request bodies beyond this are refused before they are read whole; per-keyspace value limits
/// are checked after. Leaves room for the largest configurable value.
pub const BODY_BYTES_MAX: usize = VALUE_BYTES_MAX_CEILING as usize + 64 * 1024;

/// The longest error message sent, in characters: messages that repeat client input cut it to
/// `ECHO_CHARS_MAX` characters already; this bounds any other.
pub const MESSAGE_CHARS_MAX: usize = 1024;

pub use crate::request::{H_LEVEL, H_SESSION};
pub const H_SERVED_BY: &str = "tunekv-served-by";
pub const H_POSITION: &str = "tunekv-position";
/// A key's version (ordered keyspaces): on reads of a present key, on writes, and on a
/// `version_mismatch` (the key's current one, 0 when absent).
pub const H_VERSION: &str = "tunekv-version";
/// When the value read expires (Unix ms), on reads of a key that has an expiry.
pub const H_EXPIRES: &str = "tunekv-expires-ms";
pub const H_STALENESS: &str = "tunekv-staleness";
/// How a leaderless read or write met its quorum (`QuorumReceipt::header`).
pub const H_QUORUM: &str = "tunekv-quorum";

/// The router's state: the node, and the bytes request bodies may hold between them.
struct App {
    node: Arc<Node>,
    bodies: BodyBudget,
}

type AppState = Arc<App>;

pub fn router(node: Arc<Node>) -> Router {
    let bodies = BodyBudget::new(node.config().http_bodies_bytes_max);
    Router::new()
        .fallback(handle)
        .with_state(Arc::new(App { node, bodies }))
}

async fn handle(State(app): State<AppState>, req: Request) -> Response {
    let node = &app.node;
    let (parts, body) = req.into_parts();
    // Who is asking comes first, from the headers alone: without valid credentials nothing
    // else is looked at (not the body, not even whether the route exists). Only the login
    // route takes none.
    let bearer = bearer_of(&parts.headers);
    let caller = if parts.uri.path() == "/v1/auth/token" {
        Ok(Arc::new(Grants::nobody()))
    } else {
        node.authenticate(bearer.as_deref())
    };
    if let Err(e) = &caller {
        node.metrics().request(
            Protocol::Http,
            "unauthenticated",
            metrics::NO_LEVEL,
            e.code.as_str(),
            std::time::Duration::ZERO,
        );
    }
    let grants = match caller {
        Ok(grants) => grants,
        // A browser cannot send a bearer token when it opens the status page: it gets the
        // page without any cluster data, and its sign-in form gets a token for its script.
        Err(_)
            if parts.method == axum::http::Method::GET
                && parts.uri.path() == "/"
                && request::accepts_html(&parts.headers) =>
        {
            return status_page(node, false).await.into_response();
        }
        Err(e) => return ApiError(e).into_response(),
    };
    let stall = Duration::from_millis(node.config().http_idle_timeout_ms);
    // The body's bytes stay charged to the budget until the answer is made.
    let (body, _held) = match read_body(&parts.headers, body, stall, &app.bodies).await {
        Ok(b) => b,
        Err(e) => return ApiError(e).into_response(),
    };
    let parsed = request::parse(
        node.session_key(),
        &parts.method,
        &parts.uri,
        &parts.headers,
        body,
    );
    let started = std::time::Instant::now();
    match parsed {
        Ok(req) => {
            let op = req.op();
            let level = request_level(node, &req);
            // Everything logged while this request runs carries its span's fields.
            let span =
                tracing::info_span!("request", node = node.id().0, protocol = "http", op, level);
            let checked = crate::authz::authorize(&grants, &req)
                .and_then(|_| node.admit(&grants))
                .map(|_| grants);
            let response = match checked {
                Ok(grants) => {
                    let caller = Caller {
                        grants,
                        bearer,
                        slot: None,
                    };
                    tracing::Instrument::instrument(execute(node, req, caller), span)
                        .await
                        .unwrap_or_else(IntoResponse::into_response)
                }
                Err(e) => ApiError(e).into_response(),
            };
            node.metrics().request(
                Protocol::Http,
                op,
                level,
                outcome_of(&response),
                started.elapsed(),
            );
            response
        }
        Err(refusal) => {
            node.metrics().request(
                Protocol::Http,
                "invalid",
                metrics::NO_LEVEL,
                refusal.error.code.as_str(),
                started.elapsed(),
            );
            refusal_response(refusal)
        }
    }
}

/// Who is asking: what they may do, and the token they showed (a watch checks it again as it
/// goes, so a revoked token ends it).
struct Caller {
    grants: Arc<Grants>,
    bearer: Option<String>,
    /// A watch's place under `watches_per_user_max`, held as long as its stream.
    slot: Option<tunekv_node::WatchSlot>,
}

/// The token of an `Authorization: Bearer TOKEN` header, if any.
pub fn bearer_of(headers: &HeaderMap) -> Option<String> {
    let v = headers
        .get(axum::http::header::AUTHORIZATION)?
        .to_str()
        .ok()?;
    let (scheme, token) = v.trim().split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim().to_string())
}

/// The level label of a request: a read's level (its keyspace's default when it names none,
/// if the keyspace is known here), `none` for requests that read no data.
fn request_level(node: &Node, req: &ApiRequest) -> &'static str {
    match req.read_level() {
        None => metrics::NO_LEVEL,
        Some((_, Some(level))) => metrics::level_label(level),
        Some((ks, None)) => node
            .default_level_of(ks)
            .map_or("default", metrics::level_label),
    }
}

/// The JSON error answer to a refused request (with `Allow` for `method_not_allowed`).
pub fn refusal_response(refusal: Refusal) -> Response {
    let mut response = ApiError(refusal.error).into_response();
    if let Some(methods) = refusal.allow {
        response
            .headers_mut()
            .insert(ALLOW, HeaderValue::from_static(methods));
    }
    response
}

/// How long a body waits for room in its [`BodyBudget`] before it is refused.
const BODY_BUDGET_WAIT: Duration = Duration::from_secs(1);

/// Bytes that request bodies being read may hold, summed over all connections of a listener:
/// with thousands of connections each sending a body of the largest size, memory stays bounded.
/// A body that finds no room within [`BODY_BUDGET_WAIT`] is refused (`unavailable`, retry).
#[derive(Clone)]
pub struct BodyBudget {
    bytes: Arc<tokio::sync::Semaphore>,
    max: usize,
}

impl BodyBudget {
    pub fn new(max: usize) -> BodyBudget {
        let max = max.clamp(1, tokio::sync::Semaphore::MAX_PERMITS);
        BodyBudget {
            bytes: Arc::new(tokio::sync::Semaphore::new(max)),
            max,
        }
    }

    /// Bytes free now.
    pub fn available(&self) -> usize {
        self.bytes.available_permits()
    }
}

/// The part of a [`BodyBudget`] one body holds; given back when dropped.
pub struct BodyHold {
    bytes: Arc<tokio::sync::Semaphore>,
    held: usize,
}

impl BodyHold {
    async fn grow_by(&mut self, n: usize, max: usize) -> Result<(), TunekvError> {
        let busy = || {
            TunekvError::new(
                Code::Unavailable,
                format!(
                    "server busy: request bodies being read may hold {max} bytes together \
                     (http_bodies_bytes_max) and there was no room for this one within {} ms; \
                     retry later",
                    BODY_BUDGET_WAIT.as_millis()
                ),
            )
        };
        if n == 0 {
            return Ok(());
        }
        let more = u32::try_from(n).map_err(|_| busy())?;
        let permit = match self.bytes.try_acquire_many(more) {
            Ok(p) => p,
            Err(_) => tokio::time::timeout(BODY_BUDGET_WAIT, self.bytes.acquire_many(more))
                .await
                .map_err(|_| busy())?
                .map_err(|_| busy())?,
        };
        permit.forget();
        self.held += n;
        Ok(())
    }
}

impl Drop for BodyHold {
    fn drop(&mut self) {
        self.bytes.add_permits(self.held);
    }
}

/// The whole body, at most [`BODY_BYTES_MAX`] bytes, charged to `budget` as it arrives (all of
/// it at once when its length is declared); a body that stops arriving for `stall` (the node's
/// `http_idle_timeout_ms`) ends the request. The hold gives the bytes back when dropped.
pub async fn read_body(
    headers: &HeaderMap,
    body: Body,
    stall: Duration,
    budget: &BodyBudget,
) -> Result<(Bytes, BodyHold), TunekvError> {
    let too_large = || {
        TunekvError::new(
            Code::ValueTooLarge,
            format!("the request body exceeds {BODY_BYTES_MAX} bytes"),
        )
    };
    let declared = headers
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > BODY_BYTES_MAX as u64) {
        return Err(too_large());
    }
    let mut hold = BodyHold {
        bytes: budget.bytes.clone(),
        held: 0,
    };
    if let Some(n) = declared {
        hold.grow_by(n as usize, budget.max).await?;
    }
    let mut stream = body.into_data_stream();
    let mut chunks: Vec<Bytes> = Vec::new();
    let mut total = 0usize;
    loop {
        let next = tokio::time::timeout(stall, stream.next())
            .await
            .map_err(|_| {
                TunekvError::new(
                    Code::BadRequest,
                    format!(
                        "the request body stalled: no byte for {} ms (http_idle_timeout_ms)",
                        stall.as_millis()
                    ),
                )
            })?;
        match next {
            None => break,
            Some(Err(e)) => {
                return Err(TunekvError::new(
                    Code::BadRequest,
                    format!("cannot read the request body: {e}"),
                ))
            }
            Some(Ok(chunk)) => {
                total += chunk.len();
                if total > BODY_BYTES_MAX {
                    return Err(too_large());
                }
                if total > hold.held {
                    hold.grow_by(total - hold.held, budget.max).await?;
                }
                chunks.push(chunk);
            }
        }
    }
    let body = match chunks.len() {
        0 => Bytes::new(),
        1 => chunks.swap_remove(0),
        _ => Bytes::from(chunks.concat()),
    };
    Ok((body, hold))
}

async fn execute(node: &Arc<Node>, req: ApiRequest, caller: Caller) -> Result<Response, ApiError> {
    let grants = &caller.grants;
    match req {
        ApiRequest::Index { html: true } => Ok(status_page(node, true).await.into_response()),
        ApiRequest::Index { html: false } => Ok(index(node).await.into_response()),
        ApiRequest::Metrics => {
            Ok(([(CONTENT_TYPE, metrics::CONTENT_TYPE)], node.metrics_text()).into_response())
        }
        ApiRequest::Cluster => Ok(Json(node.cluster_status().await).into_response()),
        ApiRequest::Slo => {
            Ok(Json(json!({"node": node.id().0, "slos": node.slo_reports()})).into_response())
        }
        ApiRequest::Scan {
            ks,
            prefix,
            cursor,
            count,
            level,
            wait,
            mut session,
        } => {
            let req = ReadRequest {
                keyspace: &ks,
                level,
                r: None,
                wait,
                session: &mut session,
            };
            // A caller who may read only some of the range sees only those keys.
            let page = node
                .scan(req, cursor, count, &|k: &[u8]| {
                    k.starts_with(&prefix) && grants.allows(&ks, k, Access::Read)
                })
                .await?;
            let keys: Vec<serde_json::Value> = page
                .keys
                .iter()
                .map(|k| match std::str::from_utf8(k) {
                    Ok(s) => json!(s),
                    Err(_) => json!({ "base64url": request::base64url(k) }),
                })
                .collect();
            let token = node.session_key().encode(&session);
            Ok((
                session_header(&token),
                Json(json!({"keys": keys, "cursor": page.cursor, "session": token})),
            )
                .into_response())
        }
        ApiRequest::Clock => {
            let (incarnation, mono_us) = node.clock_reading();
            Ok(Json(json!({"incarnation": incarnation, "mono_us": mono_us})).into_response())
        }
        ApiRequest::ReadIndex { ks, shard, wait } => {
            let p = node.shard_read_index(&ks, shard, wait).await?;
            Ok(Json(json!({"shard": p.shard.0, "index": p.index.0})).into_response())
        }
        ApiRequest::ListKeyspaces => {
            let mut listed = node.list_keyspaces();
            listed.retain(|k| grants.touches_keyspace(&k.name));
            Ok(Json(json!({ "keyspaces": listed })).into_response())
        }
        ApiRequest::GetKeyspace { ks } => get_keyspace(node, &ks).await,
        ApiRequest::CreateKeyspace { ks, spec } => create_keyspace(node, &ks, spec).await,
        ApiRequest::Put {
            ks,
            key,
            value,
            context,
            if_version,
            w,
            wait,
            mut session,
        } => {
            let req = WriteRequest {
                keyspace: &ks,
                w,
                wait,
                session: &mut session,
            };
            let write = (Some(value.to_vec()), context, if_version);
            let w = match plain_write(node, req, &key, write).await? {
                Ok(w) => w,
                Err(refused) => return Ok(refused),
            };
            let mut response = write_response(&w, &node.session_key().encode(&session), None);
            // An ordered write's index is the version it gave the key.
            if w.quorum.is_none() && w.position.index.0 > 0 {
                response.headers_mut().insert(
                    HeaderName::from_static(H_VERSION),
                    header(&w.position.index.0.to_string()),
                );
            }
            Ok(response)
        }
        ApiRequest::Update {
            ks,
            key,
            update,
            w,
            wait,
            mut session,
        } => {
            let req = WriteRequest {
                keyspace: &ks,
                w,
                wait,
                session: &mut session,
            };
            let counted = matches!(update, Update::Add { .. } | Update::FieldAdd { .. });
            let w = node.update(req, &key, update).await?;
            // A counter's (or field's) value after the update, beside the write's fields.
            Ok(write_response(
                &w,
                &node.session_key().encode(&session),
                counted.then_some(w.result.int),
            ))
        }
        ApiRequest::Delete {
            ks,
            key,
            context,
            if_version,
            w,
            wait,
            mut session,
        } => {
            let req = WriteRequest {
                keyspace: &ks,
                w,
                wait,
                session: &mut session,
            };
            let w = match plain_write(node, req, &key, (None, context, if_version)).await? {
                Ok(w) => w,
                Err(refused) => return Ok(refused),
            };
            Ok(write_response(
                &w,
                &node.session_key().encode(&session),
                None,
            ))
        }
        ApiRequest::Get {
            ks,
            key,
            key_encoding,
            json,
            level,
            r,
            wait,
            session,
        } => {
            let read = Read {
                level,
                r,
                wait,
                session,
            };
            get_key(node, &ks, &key, key_encoding, json, read).await
        }
        ApiRequest::BatchGet {
            ks,
            keys,
            key_encoding,
            level,
            r,
            wait,
            session,
        } => {
            let read = Read {
                level,
                r,
                wait,
                session,
            };
            batch_get(node, &ks, keys, key_encoding, read).await
        }
        ApiRequest::Txn {
            ks,
            compare,
            success,
            failure,
            wait,
            mut session,
        } => {
            let req = WriteRequest {
                keyspace: &ks,
                w: None,
                wait,
                session: &mut session,
            };
            let w = node
                .txn(req, compare, success.clone(), failure.clone())
                .await?;
            let succeeded = w.result.int == 1;
            let ran = if succeeded { &success } else { &failure };
            let results: Vec<serde_json::Value> = ran
                .iter()
                .zip(&w.result.results)
                .map(|(op, r)| txn_result_json(op, r, w.position.index.0))
                .collect();
            let token = node.session_key().encode(&session);
            let body = json!({
                "succeeded": succeeded,
                "results": results,
                "position": w.position.to_string(),
                "session": token,
            });
            let position = [(
                HeaderName::from_static(H_POSITION),
                header(&w.position.to_string()),
            )];
            Ok((position, session_header(&token), Json(body)).into_response())
        }
        ApiRequest::Watch { ks, prefix, from } => {
            let mut caller = caller;
            caller.slot = node.watch_slot(&caller.grants)?;
            watch(node, &ks, prefix, from.as_deref(), caller).await
        }
        ApiRequest::Faults(change) => faults(node, change),
        ApiRequest::Identity => {
            let c = node.config();
            Ok(Json(json!({
                "id": c.id,
                "raft": c.raft,
                "http": c.http,
                "resp": c.resp,
            }))
            .into_response())
        }
        ApiRequest::Nodes => Ok(Json(node.membership_report()).into_response()),
        ApiRequest::AddNode(n) => {
            let record = tunekv_core::placement::NodeRecord {
                raft: n.raft,
                http: n.http,
                resp: n.resp,
                state: tunekv_core::placement::NodeState::Joining,
            };
            let view = node
                .add_node(
                    n.id,
                    record,
                    tokio::time::Instant::now() + MEMBERSHIP_HTTP_WAIT,
                )
                .await?;
            Ok(Json(view).into_response())
        }
        ApiRequest::RemoveNode { id } => {
            let view = node
                .remove_node(id, tokio::time::Instant::now() + MEMBERSHIP_HTTP_WAIT)
                .await?;
            Ok(Json(view).into_response())
        }
        ApiRequest::Backup { ks, shard, wait } => backup(node, &ks, shard, wait).await,
        ApiRequest::Restore { ks, records, wait } => {
            let records = tunekv_core::backup::decode_batch(&records).map_err(|e| {
                TunekvError::new(
                    Code::BadRequest,
                    format!("the restore batch is malformed ({e}); nothing was written"),
                )
            })?;
            Ok(Json(node.restore_records(&ks, records, wait).await?).into_response())
        }
        ApiRequest::Login(body) => {
            let login = node.login(&body.user, &body.password, body.ttl_ms).await?;
            Ok(Json(login).into_response())
        }
        ApiRequest::WhoAmI => Ok(Json(json!({
            "auth": node.auth_enabled(),
            "user": grants.user(),
            "permissions": grants.permissions(),
        }))
        .into_response()),
        ApiRequest::ListUsers => Ok(Json(json!({"users": node.list_users()})).into_response()),
        ApiRequest::ListRoles => Ok(Json(json!({"roles": node.list_roles()})).into_response()),
        ApiRequest::User { name, action } => match action {
            UserAction::Get => Ok(Json(node.get_user(&name).await?).into_response()),
            UserAction::Put(change) => {
                let (user, created) = node.put_user(&name, change).await?;
                let status = if created {
                    StatusCode::CREATED
                } else {
                    StatusCode::OK
                };
                Ok((status, Json(user)).into_response())
            }
            UserAction::Delete => {
                node.delete_user(&name).await?;
                Ok(StatusCode::NO_CONTENT.into_response())
            }
            UserAction::RevokeTokens => Ok(Json(node.revoke_tokens(&name).await?).into_response()),
            UserAction::ChangeRole { role, grant } => {
                Ok(Json(node.change_user_role(&name, &role, grant).await?).into_response())
            }
        },
        ApiRequest::Role { name, change } => match change {
            None => Ok(Json(node.get_role(&name).await?).into_response()),
            Some(Some(role)) => {
                let created = node.put_role(&name, role).await?;
                let status = if created {
                    StatusCode::CREATED
                } else {
                    StatusCode::OK
                };
                Ok((status, Json(node.get_role(&name).await?)).into_response())
            }
            Some(None) => {
                node.delete_role(&name).await?;
                Ok(StatusCode::NO_CONTENT.into_response())
            }
        },
    }
}

/// `GET /v1/admin/backup/{ks}/{shard}`: the shard's keys as one view holds them, streamed as
/// it is read (`tunekv_core::backup`'s format; the applied index also in `tunekv-backup-index`).
/// A failure mid-stream cuts the body before its trailer, so the reader knows it is incomplete.
async fn backup(
    node: &Arc<Node>,
    ks: &str,
    shard: u32,
    wait: Option<Duration>,
) -> Result<Response, ApiError> {
    let dump = node.dump_shard(ks, shard, wait).await?;
    let index = dump.header.index;
    let body = if tokio::runtime::Handle::current().runtime_flavor()
        == tokio::runtime::RuntimeFlavor::CurrentThread
    {
        // The simulator's hosts (one thread each, virtual time): read it here, so the run
        // stays deterministic (a blocking thread would race the simulation in real time).
        let mut pieces = Vec::new();
        if let Err(e) = dump.stream(&mut |piece| {
            pieces.push(Ok(Bytes::from(piece)));
            true
        }) {
            tracing::warn!(error = %e, "a backup stream stopped before its end");
            pieces.push(Err(e));
        }
        Body::from_stream(futures::stream::iter(pieces))
    } else {
        let (tx, rx) = tokio::sync::mpsc::channel::<Result<Bytes, std::io::Error>>(4);
        tokio::task::spawn_blocking(move || {
            let mut send = |piece: Vec<u8>| tx.blocking_send(Ok(Bytes::from(piece))).is_ok();
            if let Err(e) = dump.stream(&mut send) {
                tracing::warn!(error = %e, "a backup stream stopped before its end");
                let _ = tx.blocking_send(Err(e));
            }
        });
        Body::from_stream(futures::stream::unfold(rx, |mut rx| async move {
            rx.recv().await.map(|item| (item, rx))
        }))
    };
    Ok((
        [
            (CONTENT_TYPE, header("application/octet-stream")),
            (
                HeaderName::from_static("tunekv-backup-index"),
                header(&index.to_string()),
            ),
        ],
        body,
    )
        .into_response())
}

/// How long `POST/DELETE /v1/admin/nodes` wait for the node to be active or removed before
/// answering its state so far (the work goes on; `GET /v1/admin/nodes` shows it).
const MEMBERSHIP_HTTP_WAIT: Duration = Duration::from_secs(20);

/// How often an idle watch repeats each shard's progress.
const WATCH_PROGRESS_EVERY: Duration = Duration::from_secs(1);

/// `GET /v1/watch/{ks}?prefix=P&from=CURSOR`: server-sent events, one `data:` line of JSON
/// per change (`key`, `key_base64url` when not UTF-8, `value` or `null` with `deleted`,
/// `position`), `event: progress` after each applied batch and every second per shard
/// (`{"shard":S,"index":I,"cursor":C}`: every change of shard S up to index I has been sent;
/// `from=C` resumes after them), and a last `event: error` when the watch is cut off
/// (docs/formats.md). A cursor older than the node's history: `410 cursor_compacted` naming
/// the oldest position a cursor may have.
async fn watch(
    node: &Arc<Node>,
    ks: &str,
    prefix: Vec<u8>,
    from: Option<&str>,
    caller: Caller,
) -> Result<Response, ApiError> {
    use axum::response::sse::{Event, KeepAlive, Sse};
    let watched = (ks.to_string(), prefix.clone());
    use tunekv_node::{WatchEvent, WatchRefused};
    let from = from.map_or(tunekv_node::WatchFrom::Now, tunekv_node::WatchFrom::Cursor);
    let feed = match node.watch(ks, prefix, from).await {
        Ok(feed) => feed,
        Err(WatchRefused::Error(e)) => return Err(e.into()),
        Err(r) => {
            let e = r.error();
            let oldest = match r {
                WatchRefused::Compacted { shard, oldest } => {
                    format!("shard={};index={oldest}", shard.0)
                }
                WatchRefused::CompactedNode { node, oldest } => {
                    format!("node={};seq={oldest}", node.0)
                }
                WatchRefused::Error(_) => String::new(),
            };
            let body = json!({"error": {
                "code": e.code.as_str(),
                "message": e.message,
                "oldest_position": oldest,
            }});
            return Ok((status_of(e.code), Json(body)).into_response());
        }
    };
    let mut tick = tokio::time::interval(WATCH_PROGRESS_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // Each progress mark carries this node's newest freshness proof the marked state satisfies
    // (on its monotonic clock, with its incarnation): a consumer that calibrated its clock
    // against `GET /v1/clock` knows how fresh its copy is without asking (a cache's bounded(t)).
    let (incarnation, _) = node.clock_reading();
    let progress = move |node: &Node, feed: &tunekv_node::Watch, shard: u32, index: u64| {
        let mut body = json!({"shard": shard, "index": index, "cursor": feed.cursor()});
        if let Some((c, mono_us)) =
            node.freshness_proof(feed.keyspace_id(), tunekv_core::ShardId(shard), index)
        {
            body["proof"] = json!({"index": c, "mono_us": mono_us, "incarnation": incarnation});
        }
        Event::default().event("progress").data(body.to_string())
    };
    // Leaderless keyspaces: per node, the sequence of its stored versions considered.
    let node_progress = |feed: &tunekv_node::Watch, node: u64, seq: u64| {
        Event::default()
            .event("progress")
            .data(json!({"node": node, "seq": seq, "cursor": feed.cursor()}).to_string())
    };
    let state = (feed, tick, std::collections::VecDeque::new(), false, caller);
    let node = node.clone();
    let stream = futures::stream::unfold(
        state,
        move |(mut feed, mut tick, mut queue, mut done, mut caller)| {
            let node = node.clone();
            let (ks, prefix) = watched.clone();
            async move {
                loop {
                    if let Some(e) = queue.pop_front() {
                        return Some((
                            Ok::<Event, std::convert::Infallible>(e),
                            (feed, tick, queue, done, caller),
                        ));
                    }
                    if done {
                        return None;
                    }
                    tokio::select! {
                        ev = feed.next() => match ev {
                            None => done = true,
                            // Only keys the caller may read (a prefix watch may cover others).
                            Some(WatchEvent::Change { key, .. })
                                if !caller.grants.allows(&ks, &key, Access::Read) => {}
                            Some(WatchEvent::Change { position, key, value, kind, version, expires_ms }) => {
                                let (text, hex) = value_json(value.as_deref());
                                let mut body = json!({
                                    "key": String::from_utf8_lossy(&key),
                                    "value": text,
                                    "deleted": value.is_none(),
                                    "event": kind.event(),
                                    "position": position.to_string(),
                                });
                                if let Some((hlc, node)) = version {
                                    body["version"] = json!(format!("{hlc}.{node}"));
                                }
                                if let Some(e) = expires_ms {
                                    body["expires_ms"] = json!(e);
                                }
                                if std::str::from_utf8(&key).is_err() {
                                    body["key_base64url"] = json!(request::base64url(&key));
                                }
                                if let Some(h) = hex {
                                    body["value_hex"] = json!(h);
                                }
                                queue.push_back(Event::default().data(body.to_string()));
                            }
                            Some(WatchEvent::Progress { shard, index }) => {
                                queue.push_back(progress(&node, &feed, shard.0, index));
                            }
                            Some(WatchEvent::NodeProgress { node, seq }) => {
                                queue.push_back(node_progress(&feed, node.0, seq));
                            }
                            Some(WatchEvent::End(e)) => {
                                let body = json!({"code": e.code.as_str(), "message": e.message});
                                queue.push_back(Event::default().event("error").data(body.to_string()));
                                done = true;
                            }
                        },
                        _ = tick.tick() => {
                            // A token revoked, expired or stripped of the right ends the watch.
                            let still = node.authenticate(caller.bearer.as_deref()).and_then(|g| {
                                g.check_range(&ks, &prefix)?;
                                Ok(g)
                            });
                            match still {
                                Ok(g) => caller.grants = g,
                                Err(e) => {
                                    let body = json!({"code": e.code.as_str(), "message": e.message});
                                    queue.push_back(Event::default().event("error").data(body.to_string()));
                                    done = true;
                                    continue;
                                }
                            }
                            for (shard, index) in feed.progress() {
                                queue.push_back(progress(&node, &feed, shard.0, index));
                            }
                            for (node, seq) in feed.node_progress() {
                                queue.push_back(node_progress(&feed, node.0, seq));
                            }
                        }
                    }
                }
            }
        },
    );
    Ok(Sse::new(stream)
        .keep_alive(KeepAlive::default())
        .into_response())
}

/// One op's answer in a transaction's: what it read or did, or why it failed.
fn txn_result_json(op: &Op, r: &tunekv_node::CommandResult, index: u64) -> serde_json::Value {
    if let Some(e) = &r.error {
        return json!({"op": op.name(), "error": e});
    }
    match op {
        Op::Get { .. } => {
            let (value, hex) = value_json(r.current.as_ref().map(|c| c.value.as_slice()));
            let mut out = json!({
                "op": "get",
                "found": r.current.is_some(),
                "value": value,
                "version": r.current.as_ref().map(|c| c.mod_index),
            });
            if let Some(h) = hex {
                out["value_hex"] = json!(h);
            }
            out
        }
        Op::Put { .. } => json!({"op": "put", "version": index}),
        Op::Delete { .. } => json!({"op": "delete", "deleted": r.changed}),
        Op::IncrBy { .. } => json!({"op": "incr", "value": r.int, "version": index}),
        other => json!({"op": other.name(), "changed": r.changed}),
    }
}

/// A PUT (`Some` value) or DELETE (`None`): plain, in a siblings context, or conditional on
/// the key's version. `Ok(Err(response))`: the condition did not hold (`409
/// version_mismatch`, nothing changed).
async fn plain_write(
    node: &Node,
    req: WriteRequest<'_>,
    key: &[u8],
    (value, context, if_version): (Option<Vec<u8>>, Option<String>, Option<u64>),
) -> Result<Result<WriteOutcome, Response>, ApiError> {
    Ok(Ok(match (context, if_version, value) {
        (Some(_), Some(_), _) => {
            return Err(ApiError(TunekvError::new(
                Code::BadRequest,
                "tunekv-context (siblings keyspaces) and if_version (ordered ones) do not go \
                 together",
            )))
        }
        (Some(text), None, value) => write_in_context(node, req, key, value, &text).await?,
        (None, Some(v), value) => match node.write_if(req, key, value, v).await? {
            Ok(w) => w,
            Err(current) => return Ok(Err(mismatch_response(v, current))),
        },
        (None, None, Some(value)) => node.put(req, key, value).await?,
        (None, None, None) => node.delete(req, key).await?,
    }))
}

/// A write (`None`: a delete) of a siblings keyspace that supersedes what its causal context
/// covers.
async fn write_in_context(
    node: &Node,
    req: WriteRequest<'_>,
    key: &[u8],
    value: Option<Vec<u8>>,
    text: &str,
) -> Result<WriteOutcome, TunekvError> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
    let info = node.keyspace(req.keyspace, deadline).await?;
    if info.spec.conflict.as_deref() != Some("siblings") {
        return Err(TunekvError::new(
            Code::ContextInvalid,
            format!(
                "tunekv-context applies to siblings keyspaces; {:?} is not one",
                info.name
            ),
        ));
    }
    let ctx = node.open_context(&info, key, text)?;
    let max = info.spec.siblings_max();
    node.update(req, key, Update::Write { value, ctx, max })
        .await
}

/// HTTP status of each stable code.
pub fn status_of(code: Code) -> StatusCode {
    match code {
        Code::BadRequest | Code::KeyspaceInvalid | Code::KeyInvalid | Code::KeyTooLarge => {
            StatusCode::BAD_REQUEST
        }
        Code::LevelInvalid | Code::SessionInvalid => StatusCode::BAD_REQUEST,
        Code::ValueTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
        Code::KeyspaceNotFound | Code::NotFound => StatusCode::NOT_FOUND,
        Code::KeyspaceExists => StatusCode::CONFLICT,
        // Permanent for this node (RFC 9110 §15.5.20): the message names the replicas.
        Code::NotReplica => StatusCode::MISDIRECTED_REQUEST,
        Code::FaultsDisabled => StatusCode::FORBIDDEN,
        // The request is well formed but its answer is more than this node sends at once; the
        // client must split it. 413 would blame the request body, which was small.
        Code::ResponseTooLarge => StatusCode::UNPROCESSABLE_ENTITY,
        Code::RouteNotFound => StatusCode::NOT_FOUND,
        Code::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
        Code::QuorumInvalid
        | Code::ModeUnsupported
        | Code::Overflow
        | Code::NotInteger
        | Code::ContextInvalid
        | Code::TxnCrossShard
        | Code::CursorInvalid => StatusCode::BAD_REQUEST,
        // The cursor's changes are gone from this node for good.
        Code::CursorCompacted => StatusCode::GONE,
        Code::Unauthenticated => StatusCode::UNAUTHORIZED,
        Code::PermissionDenied => StatusCode::FORBIDDEN,
        Code::RateLimited => StatusCode::TOO_MANY_REQUESTS,
        Code::TooManySiblings | Code::VersionMismatch => StatusCode::CONFLICT,
        Code::Siblings => StatusCode::MULTIPLE_CHOICES,
        Code::WrongType => StatusCode::CONFLICT,
        // The coordinator's clock, not the request, is at fault; another node may take it.
        Code::ClockSkew => StatusCode::SERVICE_UNAVAILABLE,
        Code::NoQuorum | Code::Unavailable | Code::StalenessBoundUnmet | Code::SessionUnmet => {
            StatusCode::SERVICE_UNAVAILABLE
        }
        Code::Timeout => StatusCode::GATEWAY_TIMEOUT,
        Code::Internal => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

struct ApiError(TunekvError);

/// The JSON error answer `{"error":{"code","message"}}` with the code's status.
pub fn error_response(e: TunekvError) -> Response {
    ApiError(e).into_response()
}

impl From<TunekvError> for ApiError {
    fn from(e: TunekvError) -> Self {
        ApiError(e)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let message = shorten(&self.0.message, MESSAGE_CHARS_MAX);
        let body = json!({"error": {"code": self.0.code.as_str(), "message": message}});
        let mut r = (status_of(self.0.code), Json(body)).into_response();
        r.extensions_mut().insert(self.0.code);
        r
    }
}

/// The outcome label of an answer for metrics: `ok`, or the code of the error it carries
/// (every error answer is made with its code attached).
pub fn outcome_of(response: &Response) -> &'static str {
    response
        .extensions()
        .get::<Code>()
        .map_or(metrics::OK, |c| c.as_str())
}

/// `409 version_mismatch`: the error, the key's current version in `tunekv-version` and in
/// the error's `current_version` (0: absent).
fn mismatch_response(expected: u64, current: u64) -> Response {
    let e = tunekv_node::version_mismatch(expected, current);
    let body = json!({"error": {
        "code": e.code.as_str(),
        "message": e.message,
        "current_version": current,
    }});
    let mut r = (
        status_of(e.code),
        [(
            HeaderName::from_static(H_VERSION),
            header(&current.to_string()),
        )],
        Json(body),
    )
        .into_response();
    r.extensions_mut().insert(e.code);
    r
}

fn session_header(token: &str) -> [(HeaderName, HeaderValue); 1] {
    [(HeaderName::from_static(H_SESSION), header(token))]
}

fn header(value: &str) -> HeaderValue {
    // Receipt values are ASCII built by us; a failure here is a bug in their formatting.
    HeaderValue::from_str(value).unwrap_or_else(|_| HeaderValue::from_static("invalid"))
}

fn receipt_headers(r: &Receipt) -> HeaderMap {
    let mut h = HeaderMap::new();
    if let Some(q) = &r.quorum {
        h.insert(HeaderName::from_static(H_QUORUM), header(&q.header()));
    }
    for (name, value) in [
        (
            HeaderName::from_static(H_LEVEL),
            header(&r.level.to_string()),
        ),
        (
            HeaderName::from_static(H_SERVED_BY),
            header(&r.served_by.to_string()),
        ),
        (
            HeaderName::from_static(H_POSITION),
            header(&r.position.to_string()),
        ),
        (
            HeaderName::from_static(H_STALENESS),
            header(&r.staleness.header()),
        ),
    ] {
        h.insert(name, value);
    }
    h
}

fn receipt_json(r: &Receipt) -> serde_json::Value {
    let mut j = json!({
        "level": r.level.to_string(),
        "served_by": r.served_by.0,
        "position": r.position.to_string(),
        "shard": r.position.shard.0,
        "index": r.position.index.0,
        "commit_ms": r.position.commit_ms,
        "staleness_entries": r.staleness.entries,
        "staleness_ms": r.staleness.ms,
    });
    if let Some(q) = &r.quorum {
        j["quorum"] = quorum_json(q);
    }
    j
}

fn quorum_json(q: &tunekv_core::QuorumReceipt) -> serde_json::Value {
    json!({
        "quorum": q.quorum.as_str(),
        "asked": q.asked,
        "answered": q.answered,
        "strict": q.strict,
        "hinted": q.hinted,
        "version": q.version.map(|(hlc, node)| format!("{hlc}.{node}")),
        "durability": q.durability(),
    })
}

/// A committed write: its position and the session token as headers and in the JSON body.
/// `value`: a counter's value after an update (`"value"` in the body).
fn write_response(w: &WriteOutcome, token: &str, value: Option<i64>) -> Response {
    let mut position = HeaderMap::new();
    position.insert(
        HeaderName::from_static(H_POSITION),
        header(&w.position.to_string()),
    );
    if let Some(q) = &w.quorum {
        position.insert(HeaderName::from_static(H_QUORUM), header(&q.header()));
    }
    let mut body = json!({
        "position": w.position.to_string(),
        "shard": w.position.shard.0,
        "index": w.position.index.0,
        "commit_ms": w.position.commit_ms,
        "existed": w.existed,
        "session": token,
    });
    if let Some(q) = &w.quorum {
        body["quorum"] = quorum_json(q);
    }
    if let Some(v) = value {
        body["value"] = json!(v);
    }
    if let Some(u) = &w.update {
        // What an update of a conflict-free keyspace did, with the dots (`node.counter`) it
        // issued and removed (docs/formats.md).
        let dots = |d: &[(u64, u64)]| {
            d.iter()
                .map(|(n, c)| format!("{n}.{c}"))
                .collect::<Vec<_>>()
        };
        body["added"] = json!(u.added);
        body["removed"] = json!(u.removed);
        body["dots"] = json!(dots(&u.dots));
        body["removed_dots"] = json!(dots(&u.removed_dots));
        if let Some(c) = &u.covered {
            body["covered"] = json!(c);
        }
    }
    (position, session_header(token), Json(body)).into_response()
}

/// The status page: server-rendered (the nodes as this node sees them now), then refreshed
/// every second by its script from `/v1/cluster`. Self-contained: no file or script from
/// anywhere else, so it works offline. With auth on, its script sends the token its sign-in
/// form got (kept in the tab's sessionStorage); `signed_in`: the request carried a valid one
/// (else the page holds no cluster data until the script signs in).
/// The status pages' sign-in script (this node's page and a cache's).
pub const SIGN_IN_JS: &str = include_str!("sign_in.js");
/// The status pages' sign-in form, which [`SIGN_IN_JS`] shows when auth is on.
pub const SIGN_IN_FORM: &str = include_str!("sign_in_form.html");

async fn status_page(node: &Node, signed_in: bool) -> impl IntoResponse {
    const PAGE: &str = include_str!("status_page.html");
    let nodes = if signed_in {
        node.cluster_status().await.nodes
    } else {
        Vec::new()
    };
    let mut rows = String::new();
    for n in &nodes {
        let (class, health) = if n.reachable {
            ("up", "up")
        } else {
            ("down", "down")
        };
        rows += &format!(
            "<tr data-node=\"{}\"><td>{}</td><td>{}</td><td>{}</td><td class=\"{class}\">{health}</td><td></td><td></td><td></td></tr>",
            n.id,
            n.id,
            html_escape(&n.http),
            html_escape(&n.raft)
        );
    }
    // Signed out, the page shows nothing of the cluster, not even which node this is.
    let id = if signed_in {
        node.id().to_string()
    } else {
        "?".to_string()
    };
    let page = PAGE
        .replace("{{NODE}}", &id)
        .replace("{{UPDATED}}", "loading…")
        .replace(
            "{{AUTH_BANNER}}",
            if node.auth_enabled() {
                SIGN_IN_FORM
            } else {
                "<div class=\"insecure\" id=\"auth-off\">Auth is OFF: anyone who can reach this \
                 node can read, write and administer the cluster (docs/security.md).</div>"
            },
        )
        .replace("{{NODE_ROWS}}", &rows)
        .replace("{{SIGN_IN_JS}}", SIGN_IN_JS);
    (
        [
            (CONTENT_TYPE, "text/html; charset=utf-8"),
            (axum::http::header::CACHE_CONTROL, "no-store"),
        ],
        page,
    )
}

fn html_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

async fn index(node: &Node) -> impl IntoResponse {
    let status = node.cluster_status().await;
    let mut text = format!("tunekv node {}\n", node.id());
    if !node.auth_enabled() {
        text += "AUTH IS OFF: anyone who can reach this node can read, write and administer the cluster\n";
    }
    text += "\nnodes:\n";
    for n in &status.nodes {
        text += &format!("  {} http={} reachable={}\n", n.id, n.http, n.reachable);
    }
    text += "\ngroups (replica: state applied/committed):\n";
    for g in &status.groups {
        text += &format!("  {:<24} leader={:?}", g.name, g.leader);
        for r in &g.replicas {
            text += &format!(
                "  n{}: {} {}/{}",
                r.node, r.state, r.applied_index, r.committed_index
            );
        }
        text += "\n";
    }
    text
}

async fn get_keyspace(node: &Node, ks: &str) -> Result<Response, ApiError> {
    let deadline =
        tokio::time::Instant::now() + Duration::from_millis(node.config().read_wait_ms_default);
    let info = node.keyspace(ks, deadline).await?;
    Ok(Json(info).into_response())
}

async fn create_keyspace(node: &Node, ks: &str, spec: KeyspaceSpec) -> Result<Response, ApiError> {
    let (info, created) = node.create_keyspace(ks, spec).await?;
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, Json(info)).into_response())
}

/// What a read names besides keyspace and keys, as parsed.
struct Read {
    level: Option<Level>,
    r: Option<Quorum>,
    wait: Option<Duration>,
    session: Session,
}

impl Read {
    fn request<'a>(&'a mut self, ks: &'a str) -> ReadRequest<'a> {
        ReadRequest {
            keyspace: ks,
            level: self.level,
            r: self.r,
            wait: self.wait,
            session: &mut self.session,
        }
    }
}

async fn get_key(
    node: &Node,
    ks: &str,
    key: &[u8],
    key_encoding: KeyEncoding,
    as_json: bool,
    mut read: Read,
) -> Result<Response, ApiError> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
    if let Ok(info) = node.keyspace(ks, deadline).await {
        if info.spec.conflict.as_deref() == Some("siblings") {
            return get_siblings(node, &info, key, key_encoding, as_json, read).await;
        }
    }
    let ReadOutcome {
        value,
        version,
        receipt,
        expires_ms,
    } = match node.get(read.request(ks), key).await {
        Err(e) if e.code == Code::WrongType => {
            return get_members(node, ks, key, key_encoding, read).await
        }
        other => other?,
    };
    let token = node.session_key().encode(&read.session);
    let mut receipt_h = receipt_headers(&receipt);
    if let Some(v) = version {
        receipt_h.insert(HeaderName::from_static(H_VERSION), header(&v.to_string()));
    }
    if let Some(e) = expires_ms {
        receipt_h.insert(HeaderName::from_static(H_EXPIRES), header(&e.to_string()));
    }
    let headers = (receipt_h, session_header(&token));
    if as_json {
        let (text, hex) = value_json(value.as_deref());
        let shown = key_encoding.show(key);
        let mut body = json!({"key": shown, "found": value.is_some(), "value": text, "version": version, "receipt": receipt_json(&receipt), "session": token});
        if shown.is_none() {
            body["key_base64url"] = json!(request::base64url(key));
        }
        if let Some(h) = hex {
            body["value_hex"] = json!(h);
        }
        let status = if value.is_some() {
            StatusCode::OK
        } else {
            StatusCode::NOT_FOUND
        };
        return Ok((status, headers, Json(body)).into_response());
    }
    match value {
        Some(v) => Ok((StatusCode::OK, headers, v).into_response()),
        None => {
            let message = format!(
                "key {} not found in {}",
                echo_bytes(key),
                echo_bytes(ks.as_bytes())
            );
            let body = json!({"error": {"code": Code::NotFound.as_str(), "message": message}});
            Ok((StatusCode::NOT_FOUND, headers, Json(body)).into_response())
        }
    }
}

/// GET of a key of a siblings keyspace: one value as the raw body (404 when none), several as
/// `300 Multiple Choices` with `{"siblings":[…],"context":"…"}` (also the answer to
/// `?format=json`); the causal context always in `tunekv-context`, to send back with the write
/// that resolves them.
async fn get_siblings(
    node: &Node,
    info: &tunekv_node::KeyspaceInfo,
    key: &[u8],
    key_encoding: KeyEncoding,
    as_json: bool,
    mut read: Read,
) -> Result<Response, ApiError> {
    let state = node.read_state(read.request(&info.name), key).await?;
    let token = node.session_key().encode(&read.session);
    let empty = tunekv_dynamo::crdt::Siblings::new();
    let sibs = match &state.stored {
        Some(Stored::Siblings(s)) => s,
        _ => &empty,
    };
    let context = node.seal_context(info, key, sibs.context());
    let mut headers = HeaderMap::new();
    headers.insert(HeaderName::from_static(H_CONTEXT), header(&context));
    let base = (
        headers,
        receipt_headers(&state.receipt),
        session_header(&token),
    );
    let values: Vec<&Vec<u8>> = sibs.values().map(|(_, v)| v).collect();
    if !as_json && values.len() == 1 {
        return Ok((StatusCode::OK, base, values[0].clone()).into_response());
    }
    let shown: Vec<serde_json::Value> = values
        .iter()
        .map(|v| match std::str::from_utf8(v) {
            Ok(t) => json!(t),
            Err(_) => json!({ "base64url": request::base64url(v) }),
        })
        .collect();
    let body = json!({
        "key": key_encoding.show(key),
        "siblings": shown,
        "context": context,
        "receipt": receipt_json(&state.receipt),
        "session": token,
    });
    let status = match values.len() {
        0 if !as_json => StatusCode::NOT_FOUND,
        0 | 1 => StatusCode::OK,
        _ if as_json => StatusCode::OK,
        _ => StatusCode::MULTIPLE_CHOICES,
    };
    Ok((status, base, Json(body)).into_response())
}

/// GET of a key of a set or map keyspace: always JSON, `{"members":[…]}` or
/// `{"fields":{…}}` (strings; members or fields that are not UTF-8 are given lossily), with the
/// receipt. A key that holds nothing is an empty set or map (Redis's view), not a 404.
async fn get_members(
    node: &Node,
    ks: &str,
    key: &[u8],
    key_encoding: KeyEncoding,
    mut read: Read,
) -> Result<Response, ApiError> {
    let state = node.read_state(read.request(ks), key).await?;
    let token = node.session_key().encode(&read.session);
    let lossy = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    let mut body = json!({
        "key": key_encoding.show(key),
        "receipt": receipt_json(&state.receipt),
        "session": token,
    });
    match &state.stored {
        Some(Stored::Set(s)) => {
            body["members"] = json!(s.members().map(|(m, _)| lossy(m)).collect::<Vec<_>>());
        }
        Some(Stored::Map(m)) => {
            let fields: serde_json::Map<String, serde_json::Value> = m
                .fields()
                .map(|(f, v)| (lossy(f), json!(lossy(&v))))
                .collect();
            body["fields"] = json!(fields);
        }
        _ => {
            // Nothing held: an empty set or map, by the keyspace's policy.
            let deadline = tokio::time::Instant::now() + Duration::from_secs(1);
            let info = node.keyspace(ks, deadline).await?;
            let name = if info.spec.conflict.as_deref() == Some("map") {
                "fields"
            } else {
                "members"
            };
            body[name] = if name == "fields" {
                json!({})
            } else {
                json!([])
            };
        }
    }
    let headers = (receipt_headers(&state.receipt), session_header(&token));
    Ok((StatusCode::OK, headers, Json(body)).into_response())
}

pub fn value_json(value: Option<&[u8]>) -> (serde_json::Value, Option<String>) {
    match value {
        Some(v) => match std::str::from_utf8(v) {
            Ok(s) => (json!(s), None),
            Err(_) => (
                serde_json::Value::Null,
                Some(v.iter().map(|b| format!("{b:02x}")).collect()),
            ),
        },
        None => (serde_json::Value::Null, None),
    }
}

/// `POST /v1/kv/{ks}:batch-get` with `{"keys": [...], "level": "...", "wait_ms_max": N,
/// "key_encoding": "base64url"}`: every shard's keys come from one consistent view of that
/// shard, with one receipt per shard. A key named several times is fetched once; the answer
/// is refused over the node's `batch_get_response_bytes_max` before it is built, and sent
/// entry by entry with its exact `content-length`.
async fn batch_get(
    node: &Node,
    ks: &str,
    keys: Vec<Vec<u8>>,
    key_encoding: KeyEncoding,
    mut read: Read,
) -> Result<Response, ApiError> {
    let plan = Plan::new(keys);
    let shards = node.batch_get(read.request(ks), plan.unique()).await?;
    let token = node.session_key().encode(&read.session);
    let receipts = shards.iter().map(|s| receipt_json(&s.receipt)).collect();
    let answer = Answer::new(
        shards,
        receipts,
        plan,
        key_encoding,
        &token,
        node.config().batch_get_response_bytes_max,
    )?;
    let length = answer.bytes;
    let body = Body::from_stream(futures::stream::iter(answer.chunks()));
    Ok((
        session_header(&token),
        [
            (CONTENT_TYPE, HeaderValue::from_static("application/json")),
            (CONTENT_LENGTH, HeaderValue::from(length)),
        ],
        body,
    )
        .into_response())
}

/// Applies a fault change (the reply is the node's faults afterwards).
fn faults(node: &Node, change: FaultChange) -> Result<Response, ApiError> {
    if !node.faults_enabled() {
        return Err(ApiError(TunekvError::new(
            Code::FaultsDisabled,
            "this node was not started with --enable-faults",
        )));
    }
    let mut f = if change.clear {
        FaultState::default()
    } else {
        node.fault_state()
    };
    f.isolated = change.isolate.unwrap_or(f.isolated);
    f.links.drop_to = change.drop_to.unwrap_or(f.links.drop_to);
    f.links.drop_from = change.drop_from.unwrap_or(f.links.drop_from);
    f.links.delay_ms = change.delay_ms.unwrap_or(f.links.delay_ms);
    f.links.jitter_ms = change.jitter_ms.unwrap_or(f.links.jitter_ms);
    f.links.drop_rate = change.drop_rate.unwrap_or(f.links.drop_rate);
    f.clock_offset_ms = change.clock_offset_ms.unwrap_or(f.clock_offset_ms);
    node.set_fault_state(f)?;
    Ok(Json(node.fault_state()).into_response())
}
