//! The cache's HTTP front end: the node's key API (`GET`, `PUT`, `DELETE /v1/kv/{ks}/{key}`,
//! parsed by `tunekv_api::request::parse` exactly as a node parses it) and `GET /v1/cache`
//! (what the cache holds and has done). Every answer carries `tunekv-served-by: cache` and
//! `tunekv-cache: hit|miss|coalesced`.

use crate::cache::{Answer, Cache, Refused, Served, Written};
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::{Json, Router};
use serde_json::json;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use tunekv_api::authz;
use tunekv_api::request::{self, ApiRequest, KeyEncoding, H_LEVEL, H_SESSION};
use tunekv_api::{
    error_response, read_body, refusal_response, value_json, H_EXPIRES, H_POSITION, H_SERVED_BY,
    H_STALENESS, H_VERSION,
};
use tunekv_core::auth::Grants;
use tunekv_core::code::echo_bytes;
use tunekv_core::{Code, Session, TunekvError};
use tunekv_node::metrics::{self, Protocol};

/// How a read was answered.
pub const H_CACHE: &str = "tunekv-cache";
/// A write's strategy for this request (`read_through`, `write_through`, `write_behind`),
/// overriding the keyspace's.
pub const H_STRATEGY: &str = "tunekv-cache-strategy";
/// A write-behind write's durability: `pending` until the store has it.
pub const H_DURABILITY: &str = "tunekv-durability";
/// What `tunekv-served-by` says of every answer the cache gives.
pub const SERVED_BY: &str = "cache";

/// How long a request body may stall.
const BODY_STALL: Duration = Duration::from_secs(10);
/// Bytes of request bodies this cache reads at once (1 GiB, as a node's default
/// `http_bodies_bytes_max`).
static BODIES: std::sync::LazyLock<tunekv_api::BodyBudget> =
    std::sync::LazyLock::new(|| tunekv_api::BodyBudget::new(1 << 30));

/// The cache's status page, with the nodes' sign-in form and script.
static STATUS_PAGE: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
    include_str!("status_page.html")
        .replace("{{SIGN_IN_FORM}}", tunekv_api::SIGN_IN_FORM)
        .replace("{{SIGN_IN_JS}}", tunekv_api::SIGN_IN_JS)
});

pub fn router(cache: Arc<Cache>) -> Router {
    Router::new().fallback(handle).with_state(cache)
}

fn header(value: &str) -> HeaderValue {
    HeaderValue::from_str(value).unwrap_or_else(|_| HeaderValue::from_static("invalid"))
}

async fn handle(State(cache): State<Arc<Cache>>, req: Request) -> Response {
    let started = std::time::Instant::now();
    let (parts, body) = req.into_parts();
    // The operation and level labels of this request in metrics.
    let mut op = match parts.uri.path() {
        "/v1/admin/faults" => "faults",
        "/v1/cache/invalidate" => "invalidate",
        "/v1/cache/ready" => "ready",
        "/v1/cache" => "cache_status",
        "/metrics" => "metrics",
        _ => "invalid",
    };
    let mut level = metrics::NO_LEVEL;
    // Who is asking comes first, from the headers alone (docs/cache.md): only the readiness
    // probe and the status page's shell (no data: its script asks with a token) need no one.
    let bearer = tunekv_api::bearer_of(&parts.headers);
    let needs_no_one = parts.uri.path() == "/v1/cache/ready"
        || parts.uri.path() == "/v1/auth/token"
        || (parts.uri.path() == "/" && parts.method == Method::GET);
    let caller = if needs_no_one {
        // Whatever these paths parse to needs no right (a page shell, a login, readiness).
        Ok(Arc::new(Grants::nobody()))
    } else {
        cache.auth.caller(&cache.key, bearer.as_deref()).await
    };
    let mut response = if let Err(e) = &caller {
        op = "unauthenticated";
        error_response(e.clone())
    } else if parts.uri.path() == "/metrics" && parts.method == Method::GET {
        (
            [(axum::http::header::CONTENT_TYPE, metrics::CONTENT_TYPE)],
            crate::metrics::text(&cache),
        )
            .into_response()
    } else if parts.uri.path() == "/v1/admin/faults" && parts.method == Method::POST {
        match caller_grants(&caller).check_cluster_admin("use the fault hook") {
            Err(e) => error_response(e),
            Ok(()) => match read_body(&parts.headers, body, BODY_STALL, &BODIES).await {
                Err(e) => error_response(e),
                Ok((body, _held)) => faults(&cache, &body),
            },
        }
    } else if parts.uri.path() == "/v1/auth/token" && parts.method == Method::POST {
        op = "login";
        match read_body(&parts.headers, body, BODY_STALL, &BODIES).await {
            Err(e) => error_response(e),
            Ok((body, _held)) => login(&cache, &body).await,
        }
    } else if parts.uri.path() == "/v1/cache/invalidate" && parts.method == Method::POST {
        match read_body(&parts.headers, body, BODY_STALL, &BODIES).await {
            Err(e) => error_response(e),
            Ok((body, _held)) => invalidate(&cache, &body, caller_grants(&caller)).await,
        }
    } else if parts.uri.path() == "/v1/cache/ready" {
        let w = &cache.warming;
        let body = json!({
            "ready": cache.ready(),
            "warming": {
                "total": w.total.load(Ordering::Relaxed),
                "done": w.done.load(Ordering::Relaxed),
                "failed": w.failed.load(Ordering::Relaxed),
                "finished": w.finished.load(Ordering::Relaxed),
            },
        });
        let status = if cache.ready() {
            StatusCode::OK
        } else {
            StatusCode::SERVICE_UNAVAILABLE
        };
        (status, Json(body)).into_response()
    } else if parts.uri.path() == "/v1/cache" {
        if parts.method == Method::GET {
            status(&cache, caller_grants(&caller)).into_response()
        } else {
            error_response(TunekvError::new(
                Code::MethodNotAllowed,
                "/v1/cache answers GET",
            ))
        }
    } else {
        match read_body(&parts.headers, body, BODY_STALL, &BODIES).await {
            Err(e) => error_response(e),
            Ok((body, _held)) => match strategy_of(&parts.headers) {
                Err(e) => error_response(e),
                Ok(strategy) => {
                    match request::parse(
                        &cache.key,
                        &parts.method,
                        &parts.uri,
                        &parts.headers,
                        body,
                    ) {
                        Ok(req) => {
                            op = req.op();
                            level = match req.read_level() {
                                None => metrics::NO_LEVEL,
                                Some((_, Some(l))) => metrics::level_label(l),
                                Some((ks, None)) => cache
                                    .default_level_of(ks)
                                    .map_or("default", metrics::level_label),
                            };
                            // The same rule a node applies, before memory or the store is
                            // looked at: a hit is served only to a caller who may read it.
                            match authz::authorize(caller_grants(&caller), &req) {
                                Ok(()) => execute(&cache, req, strategy, bearer.as_deref()).await,
                                Err(e) => error_response(e),
                            }
                        }
                        Err(refusal) => refusal_response(refusal),
                    }
                }
            },
        }
    };
    cache.metrics.request(
        Protocol::Http,
        op,
        level,
        tunekv_api::outcome_of(&response),
        started.elapsed(),
    );
    let h = response.headers_mut();
    h.insert(
        HeaderName::from_static(H_SERVED_BY),
        HeaderValue::from_static(SERVED_BY),
    );
    if !h.contains_key(H_CACHE) {
        h.insert(
            HeaderName::from_static(H_CACHE),
            HeaderValue::from_static(Served::Miss.as_str()),
        );
    }
    response
}

/// The `tunekv-cache-strategy` header, if given.
fn strategy_of(headers: &HeaderMap) -> Result<Option<crate::Strategy>, TunekvError> {
    let Some(v) = headers.get(H_STRATEGY) else {
        return Ok(None);
    };
    match v.to_str().unwrap_or_default() {
        "read_through" => Ok(Some(crate::Strategy::ReadThrough)),
        "write_through" => Ok(Some(crate::Strategy::WriteThrough)),
        "write_behind" => Ok(Some(crate::Strategy::WriteBehind)),
        other => Err(TunekvError::new(
            Code::BadRequest,
            format!(
                "{H_STRATEGY}: {:?} is not read_through, write_through or write_behind",
                tunekv_core::code::shorten(other, 64)
            ),
        )),
    }
}

/// The caller's grants (`handle` answered already if there were none).
fn caller_grants(caller: &Result<Arc<Grants>, TunekvError>) -> &Grants {
    static NOBODY: std::sync::LazyLock<Grants> = std::sync::LazyLock::new(Grants::nobody);
    caller.as_deref().unwrap_or(&NOBODY)
}

async fn execute(
    cache: &Arc<Cache>,
    req: ApiRequest,
    strategy: Option<crate::Strategy>,
    bearer: Option<&str>,
) -> Response {
    match req {
        ApiRequest::Index { html: true } => (
            [
                (axum::http::header::CONTENT_TYPE, "text/html; charset=utf-8"),
                (axum::http::header::CACHE_CONTROL, "no-store"),
            ],
            STATUS_PAGE.as_str(),
        )
            .into_response(),
        ApiRequest::Index { html: false } => (
            StatusCode::OK,
            "tunekv cache: GET/PUT/DELETE /v1/kv/{ks}/{key} (the node's key API), GET /v1/cache\n",
        )
            .into_response(),
        ApiRequest::Get {
            ks,
            key,
            key_encoding,
            json,
            level,
            r,
            wait,
            mut session,
        } => {
            if r.is_some() {
                return error_response(TunekvError::new(
                    Code::QuorumInvalid,
                    "the cache reads leaderless keyspaces at their default r; send r to a node",
                ));
            }
            match cache.get(&ks, &key, level, wait, &mut session).await {
                Ok(a) => read_response(cache, &ks, &key, key_encoding, json, a, &session),
                Err(Refused { error, served }) => {
                    let mut r = error_response(error);
                    r.headers_mut()
                        .insert(HeaderName::from_static(H_CACHE), header(served.as_str()));
                    r
                }
            }
        }
        ApiRequest::Put {
            ks,
            key,
            value,
            context: None,
            if_version: None,
            w: None,
            wait,
            session,
        } => {
            write(
                cache,
                &ks,
                &key,
                Some(value),
                (wait, strategy),
                &session,
                bearer,
            )
            .await
        }
        ApiRequest::Delete {
            ks,
            key,
            context: None,
            if_version: None,
            w: None,
            wait,
            session,
        } => write(cache, &ks, &key, None, (wait, strategy), &session, bearer).await,
        ApiRequest::Put { .. } | ApiRequest::Delete { .. } => error_response(TunekvError::new(
            Code::BadRequest,
            "the cache writes plain PUT and DELETE; send conditional writes (if_version), \
             causal contexts and write quorums (w) to a node",
        )),
        _ => error_response(TunekvError::new(
            Code::RouteNotFound,
            "the cache serves GET, PUT and DELETE of keys and GET /v1/cache; send this request \
             to a node",
        )),
    }
}

fn read_response(
    cache: &Cache,
    ks: &str,
    key: &[u8],
    key_encoding: KeyEncoding,
    as_json: bool,
    a: Answer,
    session: &Session,
) -> Response {
    let token = a.token.clone().unwrap_or_else(|| cache.key.encode(session));
    let mut h = HeaderMap::new();
    h.insert(
        HeaderName::from_static(H_LEVEL),
        header(&a.level.to_string()),
    );
    h.insert(
        HeaderName::from_static(H_POSITION),
        header(&a.position.to_string()),
    );
    h.insert(
        HeaderName::from_static(H_STALENESS),
        header(&a.staleness.header()),
    );
    h.insert(HeaderName::from_static(H_CACHE), header(a.served.as_str()));
    h.insert(HeaderName::from_static(H_SESSION), header(&token));
    if let Some(q) = &a.quorum {
        h.insert(HeaderName::from_static("tunekv-quorum"), header(q));
    }
    if let (Some(v), true) = (a.version, a.value.is_some()) {
        h.insert(HeaderName::from_static(H_VERSION), header(&v.to_string()));
    }
    if let Some(e) = a.expires_ms {
        h.insert(HeaderName::from_static(H_EXPIRES), header(&e.to_string()));
    }
    if a.pending {
        h.insert(
            HeaderName::from_static(H_DURABILITY),
            HeaderValue::from_static("pending"),
        );
    }
    let status = if a.value.is_some() {
        StatusCode::OK
    } else {
        StatusCode::NOT_FOUND
    };
    if as_json {
        let (text, hex) = value_json(a.value.as_deref());
        let shown = key_encoding.show(key);
        let mut body = json!({
            "key": shown,
            "found": a.value.is_some(),
            "value": text,
            "version": a.version,
            "cache": a.served.as_str(),
            "receipt": {
                "level": a.level.to_string(),
                "served_by": SERVED_BY,
                "position": a.position.to_string(),
                "shard": a.position.shard.0,
                "index": a.position.index.0,
                "commit_ms": a.position.commit_ms,
                "staleness_entries": a.staleness.entries,
                "staleness_ms": a.staleness.ms,
            },
            "session": token,
        });
        if shown.is_none() {
            body["key_base64url"] = json!(request::base64url(key));
        }
        if let Some(x) = hex {
            body["value_hex"] = json!(x);
        }
        return (status, h, Json(body)).into_response();
    }
    match a.value {
        Some(v) => (status, h, Body::from(v)).into_response(),
        None => {
            let message = format!(
                "key {} not found in {}",
                echo_bytes(key),
                echo_bytes(ks.as_bytes())
            );
            let body = json!({"error": {"code": Code::NotFound.as_str(), "message": message}});
            (status, h, Json(body)).into_response()
        }
    }
}

async fn write(
    cache: &Arc<Cache>,
    ks: &str,
    key: &[u8],
    value: Option<bytes::Bytes>,
    how: (Option<Duration>, Option<crate::Strategy>),
    session: &Session,
    bearer: Option<&str>,
) -> Response {
    match cache.write(ks, key, value, how, session, bearer).await {
        Err(e) => error_response(e),
        // Write-behind: accepted, not in the store yet. No position and no new session mark:
        // the session's levels cannot cover a write the store does not have.
        Ok(Written::Queued { seq, durable }) => {
            let token = cache.key.encode(session);
            let mut h = HeaderMap::new();
            h.insert(
                HeaderName::from_static(H_DURABILITY),
                HeaderValue::from_static("pending"),
            );
            h.insert(HeaderName::from_static(H_SESSION), header(&token));
            let body = json!({
                "durability": "pending",
                "queued": seq,
                "queue": if durable { "fsync" } else { "memory" },
                "session": token,
            });
            (StatusCode::ACCEPTED, h, Json(body)).into_response()
        }
        Ok(Written::Stored(w)) => {
            let mut h = HeaderMap::new();
            h.insert(HeaderName::from_static(H_POSITION), header(&w.position));
            h.insert(HeaderName::from_static(H_SESSION), header(&w.session));
            let body = json!({
                "position": w.position,
                "shard": w.shard,
                "index": w.index,
                "commit_ms": w.commit_ms,
                "existed": w.existed,
                "session": w.session,
            });
            (StatusCode::OK, h, Json(body)).into_response()
        }
    }
}

/// `POST /v1/auth/token` `{"user","password"}` on the cache (its status page signs in with it):
/// a node's login, passed on — `{"token": …, "expires_ms": …}`.
async fn login(cache: &Cache, body: &[u8]) -> Response {
    let parsed: Result<request::LoginBody, _> = serde_json::from_slice(body);
    let Ok(b) = parsed else {
        return error_response(TunekvError::new(
            Code::BadRequest,
            "the body is {\"user\": …, \"password\": …}",
        ));
    };
    match cache.auth.node_login(&b.user, &b.password).await {
        Ok((token, expires_ms)) => {
            Json(json!({"token": token, "expires_ms": expires_ms})).into_response()
        }
        Err(e) => error_response(e),
    }
}

/// `POST /v1/admin/faults` on a cache started with `--enable-faults`: `{"isolate": true}` cuts
/// it off from every node (its feed breaks, fills and probes fail), `{"clear": true}` or
/// `{"isolate": false}` reconnects it.
fn faults(cache: &Cache, body: &[u8]) -> Response {
    if !cache.faults_enabled {
        return error_response(TunekvError::new(
            Code::FaultsDisabled,
            "this cache was started without --enable-faults",
        ));
    }
    let v: serde_json::Value = match serde_json::from_slice(body) {
        Ok(v) => v,
        Err(e) => {
            return error_response(TunekvError::new(
                Code::BadRequest,
                format!("the body is not JSON: {e}"),
            ))
        }
    };
    let isolate = match (v.get("isolate").and_then(|i| i.as_bool()), v.get("clear")) {
        (Some(i), _) => i,
        (None, Some(serde_json::Value::Bool(true))) => false,
        _ => {
            return error_response(TunekvError::new(
                Code::BadRequest,
                "a cache's faults are {\"isolate\": true|false} or {\"clear\": true}",
            ))
        }
    };
    cache.upstream.set_isolated(isolate);
    Json(json!({"isolated": isolate})).into_response()
}

/// `POST /v1/cache/invalidate` with `{"keyspace": ks, "keys": [k, …]}` (entries dropped:
/// `{"removed": n}`), `{"keyspace": ks, "prefix": p}` or `{"keyspace": ks, "all": true}` (a new
/// namespace version: `{"namespace_version": v}`).
async fn invalidate(cache: &Arc<Cache>, body: &[u8], grants: &Grants) -> Response {
    let bad = |m: &str| error_response(TunekvError::new(Code::BadRequest, m));
    let v: serde_json::Value = match serde_json::from_slice(body) {
        Ok(v) => v,
        Err(e) => return bad(&format!("the body is not JSON: {e}")),
    };
    let Some(ks) = v["keyspace"].as_str() else {
        return bad("name the \"keyspace\"");
    };
    // What to drop: keys, or everything under a prefix (`all`: the empty prefix).
    let (keys, prefix): (Vec<Vec<u8>>, Option<&[u8]>) =
        match (v.get("keys"), v.get("prefix"), v.get("all")) {
            (Some(keys), None, None) => {
                let Some(keys) = keys.as_array().filter(|k| !k.is_empty() && k.len() <= 1024)
                else {
                    return bad("\"keys\" is an array of 1 to 1024 keys");
                };
                let Some(keys) = keys
                    .iter()
                    .map(|k| k.as_str().map(|s| s.as_bytes().to_vec()))
                    .collect::<Option<Vec<_>>>()
                else {
                    return bad("\"keys\" holds strings");
                };
                (keys, None)
            }
            (None, Some(p), None) => match p.as_str() {
                Some(p) => (Vec::new(), Some(p.as_bytes())),
                None => return bad("\"prefix\" is a string"),
            },
            (None, None, Some(serde_json::Value::Bool(true))) => (Vec::new(), Some(&b""[..])),
            _ => return bad("give one of \"keys\", \"prefix\" or \"all\": true"),
        };
    if let Err(e) = crate::auth::check_invalidate(grants, ks, &keys, prefix) {
        return error_response(e);
    }
    let done = match prefix {
        None => cache
            .invalidate_keys(ks, &keys)
            .await
            .map(|n| json!({ "removed": n })),
        Some(p) => cache
            .invalidate_prefix(ks, p)
            .await
            .map(|g| json!({ "namespace_version": g })),
    };
    match done {
        Ok(body) => Json(body).into_response(),
        Err(e) => error_response(e),
    }
}

/// `GET /v1/cache`: entries and bytes held, counters, and per keyspace and shard the feed's
/// position.
/// With auth on, only the keyspaces the caller holds some right on are listed (as a node's
/// `GET /v1/keyspaces` does).
fn status(cache: &Cache, grants: &Grants) -> Json<serde_json::Value> {
    let (entries, bytes) = cache.store.usage();
    let s = &cache.stats;
    let u = &cache.upstream.counters;
    let load = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
    let keyspaces: Vec<_> = cache
        .spaces()
        .iter()
        .filter(|sp| grants.touches_keyspace(&sp.name))
        .map(|sp| {
            let shards: Vec<_> = sp
                .shards
                .iter()
                .map(|c| {
                    let fed = c.fed();
                    json!({"shard": c.shard.0, "fed": fed.index, "live": fed.live, "known_commit": c.known_commit()})
                })
                .collect();
            json!({
                "name": &*sp.name,
                "id": sp.id,
                "mode": sp.spec.mode.as_str(),
                "strategy": sp.strategy.as_str(),
                "epoch": sp.epoch(),
                "namespace_version": sp.generation(),
                "namespaces": sp.namespaces(),
                "shards": shards,
            })
        })
        .collect();
    Json(json!({
        "served_by": SERVED_BY,
        "uptime_ms": cache.uptime().as_millis() as u64,
        "entries": entries,
        "bytes": bytes,
        "memory_bytes": cache.store.capacity(),
        "hits": load(&s.hits),
        "misses": load(&s.misses),
        "coalesced": load(&s.coalesced),
        "stale_fills_dropped": load(&s.stale_fills_dropped),
        "ready": cache.ready(),
        "warming": {
            "total": load(&cache.warming.total),
            "done": load(&cache.warming.done),
            "finished": cache.warming.finished.load(Ordering::Relaxed),
        },
        "write_behind": cache.queue.as_ref().map(|q| {
            let (waiting, bytes, flushed) = q.usage();
            json!({
                "waiting": waiting,
                "bytes": bytes,
                "flushed": flushed,
                "log": q.durable_path().map(|p| p.display().to_string()),
            })
        }),
        "upstream": {
            "nodes": cache.config.upstream,
            "isolated": cache.upstream.isolated(),
            "reads": load(&u.reads),
            "probes": load(&u.probes),
            "writes": load(&u.writes),
            "failovers": load(&u.failovers),
        },
        "keyspaces": keyspaces,
    }))
}
