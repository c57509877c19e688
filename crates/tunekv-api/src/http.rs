//! `PUT/GET/DELETE /v1/kv/{ks}/{key}`, `PUT/GET /v1/keyspaces/{ks}`, `GET /v1/cluster`,
//! `POST /v1/admin/faults`, `GET /`.

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::json;
use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;
use tunekv_core::limits::VALUE_BYTES_MAX_CEILING;
use tunekv_core::{Code, KeyspaceSpec, Level, Receipt, Session, TunekvError};
use tunekv_node::{FaultState, Node, ReadOutcome, WriteOutcome};

/// Request bodies beyond this are refused before they are read whole; per-keyspace value limits
/// are checked after. Leaves room for the largest configurable value.
const BODY_BYTES_MAX: usize = VALUE_BYTES_MAX_CEILING as usize + 64 * 1024;

pub const H_LEVEL: &str = "tunekv-level";
pub const H_SERVED_BY: &str = "tunekv-served-by";
pub const H_POSITION: &str = "tunekv-position";
pub const H_STALENESS: &str = "tunekv-staleness";
pub const H_SESSION: &str = "tunekv-session";

type AppState = Arc<Node>;

pub fn router(node: Arc<Node>) -> Router {
    Router::new()
        .route("/", get(index))
        .route("/v1/cluster", get(cluster))
        .route("/v1/keyspaces", get(list_keyspaces))
        .route("/v1/keyspaces/{ks}", put(create_keyspace).get(get_keyspace))
        .route(
            "/v1/kv/{ks}/{*key}",
            put(put_key).get(get_key).delete(delete_key),
        )
        // `POST /v1/kv/{ks}:batch-get`: the action rides in the segment, Google-API style.
        .route("/v1/kv/{ks_action}", post(kv_action))
        .route("/v1/admin/faults", post(faults))
        .layer(DefaultBodyLimit::max(BODY_BYTES_MAX))
        .with_state(node)
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
        Code::FaultsDisabled => StatusCode::FORBIDDEN,
        Code::NoQuorum | Code::Unavailable | Code::StalenessBoundUnmet | Code::SessionUnmet => {
            StatusCode::SERVICE_UNAVAILABLE
        }
        Code::Timeout => StatusCode::GATEWAY_TIMEOUT,
        Code::Internal => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

struct ApiError(TunekvError);

impl From<TunekvError> for ApiError {
    fn from(e: TunekvError) -> Self {
        ApiError(e)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = json!({"error": {"code": self.0.code.as_str(), "message": self.0.message}});
        (status_of(self.0.code), Json(body)).into_response()
    }
}

fn bad(code: Code, message: impl Into<String>) -> ApiError {
    ApiError(TunekvError::new(code, message))
}

fn body_error(e: BytesRejection) -> ApiError {
    if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
        bad(
            Code::ValueTooLarge,
            format!("the request body exceeds {BODY_BYTES_MAX} bytes"),
        )
    } else {
        bad(
            Code::BadRequest,
            format!("cannot read the request body: {e}"),
        )
    }
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct KvQuery {
    level: Option<String>,
    wait_ms_max: Option<String>,
    format: Option<String>,
}

impl KvQuery {
    fn level(&self, headers: &HeaderMap) -> Result<Option<Level>, ApiError> {
        let text = match (&self.level, headers.get(H_LEVEL)) {
            (Some(q), _) => Some(q.clone()),
            (None, Some(h)) => Some(
                h.to_str()
                    .map_err(|_| bad(Code::LevelInvalid, "the tunekv-level header is not text"))?
                    .to_string(),
            ),
            (None, None) => None,
        };
        text.map(|t| Level::parse(&t)).transpose().map_err(ApiError)
    }

    fn wait(&self) -> Result<Option<Duration>, ApiError> {
        self.wait_ms_max
            .as_ref()
            .map(|w| {
                w.parse::<u64>().map(Duration::from_millis).map_err(|_| {
                    bad(
                        Code::BadRequest,
                        format!("wait_ms_max must be a whole number of milliseconds, got {w:?}"),
                    )
                })
            })
            .transpose()
    }

    fn json(&self) -> Result<bool, ApiError> {
        match self.format.as_deref() {
            None | Some("raw") => Ok(false),
            Some("json") => Ok(true),
            Some(other) => Err(bad(
                Code::BadRequest,
                format!("format must be json or raw, got {other:?}"),
            )),
        }
    }
}

fn query(
    q: Result<Query<KvQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<KvQuery, ApiError> {
    q.map(|Query(q)| q)
        .map_err(|e| bad(Code::BadRequest, format!("bad query string: {e}")))
}

/// The session the request carries: every `tunekv-session` value, each possibly several
/// comma-separated tokens, merged. None is a new session; anything unsigned is `session_invalid`.
fn session_of(node: &Node, headers: &HeaderMap) -> Result<Session, ApiError> {
    let values = headers
        .get_all(H_SESSION)
        .iter()
        .map(|v| {
            v.to_str().map_err(|_| {
                bad(
                    Code::SessionInvalid,
                    "the tunekv-session header is not text",
                )
            })
        })
        .collect::<Result<Vec<&str>, ApiError>>()?;
    Ok(node.session_key().decode_all(values)?)
}

fn session_header(token: &str) -> [(HeaderName, HeaderValue); 1] {
    [(HeaderName::from_static(H_SESSION), header(token))]
}

fn header(value: &str) -> HeaderValue {
    // Receipt values are ASCII built by us; a failure here is a bug in their formatting.
    HeaderValue::from_str(value).unwrap_or_else(|_| HeaderValue::from_static("invalid"))
}

fn receipt_headers(r: &Receipt) -> [(HeaderName, HeaderValue); 4] {
    [
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
    ]
}

fn receipt_json(r: &Receipt) -> serde_json::Value {
    json!({
        "level": r.level.to_string(),
        "served_by": r.served_by.0,
        "position": r.position.to_string(),
        "shard": r.position.shard.0,
        "index": r.position.index.0,
        "commit_ms": r.position.commit_ms,
        "staleness_entries": r.staleness.entries,
        "staleness_ms": r.staleness.ms,
    })
}

/// A committed write: its position and the session token as headers and in the JSON body.
fn write_response(w: &WriteOutcome, token: &str) -> Response {
    let position = [(
        HeaderName::from_static(H_POSITION),
        header(&w.position.to_string()),
    )];
    let body = json!({
        "position": w.position.to_string(),
        "shard": w.position.shard.0,
        "index": w.position.index.0,
        "commit_ms": w.position.commit_ms,
        "existed": w.existed,
        "session": token,
    });
    (position, session_header(token), Json(body)).into_response()
}

async fn index(State(node): State<AppState>) -> impl IntoResponse {
    let status = node.cluster_status().await;
    let mut text = format!("tunekv node {}\n\nnodes:\n", node.id());
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

async fn cluster(State(node): State<AppState>) -> impl IntoResponse {
    Json(node.cluster_status().await)
}

async fn list_keyspaces(State(node): State<AppState>) -> impl IntoResponse {
    Json(json!({"keyspaces": node.list_keyspaces()}))
}

async fn get_keyspace(
    State(node): State<AppState>,
    Path(ks): Path<String>,
) -> Result<Response, ApiError> {
    let deadline =
        tokio::time::Instant::now() + Duration::from_millis(node.config().read_wait_ms_default);
    let info = node.keyspace(&ks, deadline).await?;
    Ok(Json(info).into_response())
}

async fn create_keyspace(
    State(node): State<AppState>,
    Path(ks): Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let body = body.map_err(body_error)?;
    let spec: KeyspaceSpec = if body.iter().all(|b| b.is_ascii_whitespace()) {
        KeyspaceSpec::default()
    } else {
        serde_json::from_slice(&body)
            .map_err(|e| bad(Code::KeyspaceInvalid, format!("bad keyspace spec: {e}")))?
    };
    let (info, created) = node.create_keyspace(&ks, spec).await?;
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, Json(info)).into_response())
}

async fn put_key(
    State(node): State<AppState>,
    Path((ks, key)): Path<(String, String)>,
    q: Result<Query<KvQuery>, axum::extract::rejection::QueryRejection>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let q = query(q)?;
    // Writes are always strong (committed on a majority); a level on a write is checked for
    // syntax so a typo is not silently ignored.
    q.level(&headers)?;
    let mut session = session_of(&node, &headers)?;
    let body = body.map_err(body_error)?;
    let w = node
        .put(&ks, key.as_bytes(), body.to_vec(), q.wait()?, &mut session)
        .await?;
    Ok(write_response(&w, &node.session_key().encode(&session)))
}

async fn delete_key(
    State(node): State<AppState>,
    Path((ks, key)): Path<(String, String)>,
    q: Result<Query<KvQuery>, axum::extract::rejection::QueryRejection>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let q = query(q)?;
    q.level(&headers)?;
    let mut session = session_of(&node, &headers)?;
    let w = node
        .delete(&ks, key.as_bytes(), q.wait()?, &mut session)
        .await?;
    Ok(write_response(&w, &node.session_key().encode(&session)))
}

async fn get_key(
    State(node): State<AppState>,
    Path((ks, key)): Path<(String, String)>,
    q: Result<Query<KvQuery>, axum::extract::rejection::QueryRejection>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let q = query(q)?;
    let as_json = q.json()?;
    let level = q.level(&headers)?;
    let mut session = session_of(&node, &headers)?;
    let ReadOutcome { value, receipt } = node
        .get(&ks, key.as_bytes(), level, q.wait()?, &mut session)
        .await?;
    let token = node.session_key().encode(&session);
    let headers = (receipt_headers(&receipt), session_header(&token));
    if as_json {
        let (text, hex) = value_json(value.as_deref());
        let mut body = json!({"key": key, "found": value.is_some(), "value": text, "receipt": receipt_json(&receipt), "session": token});
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
            let body = json!({"error": {"code": Code::NotFound.as_str(), "message": format!("key {key:?} not found in {ks:?}")}});
            Ok((StatusCode::NOT_FOUND, headers, Json(body)).into_response())
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct BatchGet {
    keys: Vec<String>,
    level: Option<String>,
    wait_ms_max: Option<u64>,
}

fn value_json(value: Option<&[u8]>) -> (serde_json::Value, Option<String>) {
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

/// `POST /v1/kv/{ks}:batch-get` with `{"keys": [...], "level": "...", "wait_ms_max": N}`: every
/// shard's keys come from one consistent view of that shard, with one receipt per shard.
async fn kv_action(
    State(node): State<AppState>,
    Path(ks_action): Path<String>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let Some(ks) = ks_action.strip_suffix(":batch-get") else {
        return Err(bad(
            Code::BadRequest,
            format!("unknown action in {ks_action:?}; the one action is {{ks}}:batch-get"),
        ));
    };
    let body = body.map_err(body_error)?;
    let req: BatchGet = serde_json::from_slice(&body)
        .map_err(|e| bad(Code::BadRequest, format!("bad batch-get body: {e}")))?;
    let q = KvQuery {
        level: req.level,
        wait_ms_max: req.wait_ms_max.map(|w| w.to_string()),
        format: None,
    };
    let level = q.level(&headers)?;
    let mut session = session_of(&node, &headers)?;
    let keys: Vec<Vec<u8>> = req.keys.into_iter().map(String::into_bytes).collect();
    let shards = node
        .batch_get(ks, &keys, level, q.wait()?, &mut session)
        .await?;
    let token = node.session_key().encode(&session);
    let mut results = Vec::new();
    let mut receipts = Vec::new();
    for shard in &shards {
        for (k, v) in &shard.values {
            let (value, hex) = value_json(v.as_ref().map(|sv| sv.value.as_slice()));
            let mut item = json!({"key": String::from_utf8_lossy(k), "found": v.is_some(), "value": value, "shard": shard.receipt.position.shard.0});
            if let Some(h) = hex {
                item["value_hex"] = json!(h);
            }
            results.push(item);
        }
        receipts.push(receipt_json(&shard.receipt));
    }
    Ok((
        session_header(&token),
        Json(json!({"results": results, "receipts": receipts, "session": token})),
    )
        .into_response())
}

/// A change to the node's faults: `clear` first removes them all, then each field given
/// replaces that fault. The reply is the node's faults afterwards.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FaultRequest {
    #[serde(default)]
    clear: bool,
    isolate: Option<bool>,
    drop_to: Option<BTreeSet<u64>>,
    drop_from: Option<BTreeSet<u64>>,
    delay_ms: Option<u64>,
    jitter_ms: Option<u64>,
    drop_rate: Option<f64>,
    clock_offset_ms: Option<i64>,
}

async fn faults(
    State(node): State<AppState>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    if !node.faults_enabled() {
        return Err(bad(
            Code::FaultsDisabled,
            "this node was not started with --enable-faults",
        ));
    }
    let body = body.map_err(body_error)?;
    let req: FaultRequest = serde_json::from_slice(&body)
        .map_err(|e| bad(Code::BadRequest, format!("bad fault request: {e}")))?;
    let mut f = if req.clear {
        FaultState::default()
    } else {
        node.fault_state()
    };
    f.isolated = req.isolate.unwrap_or(f.isolated);
    f.links.drop_to = req.drop_to.unwrap_or(f.links.drop_to);
    f.links.drop_from = req.drop_from.unwrap_or(f.links.drop_from);
    f.links.delay_ms = req.delay_ms.unwrap_or(f.links.delay_ms);
    f.links.jitter_ms = req.jitter_ms.unwrap_or(f.links.jitter_ms);
    f.links.drop_rate = req.drop_rate.unwrap_or(f.links.drop_rate);
    f.clock_offset_ms = req.clock_offset_ms.unwrap_or(f.clock_offset_ms);
    node.set_fault_state(f)?;
    Ok(Json(node.fault_state()).into_response())
}
