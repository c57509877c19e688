//! A simulated client: tunekv's HTTP API over turmoil's TCP (hyper, one connection per request),
//! recording each operation in DESIGN §7's history format.

use crate::net::HTTP_PORT;
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::Request;
use hyper_util::rt::TokioIo;
use std::time::Duration;
use tunekv_check::history::{OpKind, Operation};

pub const KEYSPACE: &str = "sim";
/// How long a client waits for any answer before it records the outcome as unknown.
pub const CLIENT_TIMEOUT: Duration = Duration::from_secs(3);
/// The wait budget sent with every request (`wait_ms_max`).
const WAIT_MS: u64 = 1500;

/// One HTTP exchange: status, the tunekv headers we read, and the body.
pub struct Answer {
    pub status: u16,
    pub session: Option<String>,
    pub position: Option<String>,
    pub staleness: Option<(u64, u64)>,
    /// Leaderless keyspaces: the `tunekv-quorum` header.
    pub quorum: Option<String>,
    pub body: Vec<u8>,
}

impl Answer {
    /// The typed error code of a failure body (`{"error": {"code": …}}`).
    pub fn code(&self) -> String {
        serde_json::from_slice::<serde_json::Value>(&self.body)
            .ok()
            .and_then(|v| v["error"]["code"].as_str().map(str::to_string))
            .unwrap_or_else(|| format!("http_{}", self.status))
    }
}

pub async fn request(
    node: &str,
    method: &str,
    path: &str,
    session: &str,
    body: Vec<u8>,
) -> Result<Answer, String> {
    let exchange = async {
        let stream = turmoil::net::TcpStream::connect((node, HTTP_PORT))
            .await
            .map_err(|e| format!("connect: {e}"))?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| format!("handshake: {e}"))?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        let mut req = Request::builder()
            .method(method)
            .uri(path)
            .header("host", node);
        if !session.is_empty() {
            req = req.header("tunekv-session", session);
        }
        let req = req
            .body(Full::new(Bytes::from(body)))
            .map_err(|e| format!("request: {e}"))?;
        let resp = sender
            .send_request(req)
            .await
            .map_err(|e| format!("send: {e}"))?;
        let h = |name: &str| {
            resp.headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string)
        };
        let status = resp.status().as_u16();
        let session = h("tunekv-session");
        let position = h("tunekv-position");
        let staleness = h("tunekv-staleness")
            .and_then(|s| tunekv_core::Staleness::parse_header(&s))
            .map(|s| (s.entries, s.ms));
        let quorum = h("tunekv-quorum");
        let body = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| format!("body: {e}"))?
            .to_bytes()
            .to_vec();
        Ok(Answer {
            status,
            session,
            position,
            staleness,
            quorum,
            body,
        })
    };
    tokio::time::timeout(CLIENT_TIMEOUT, exchange)
        .await
        .unwrap_or_else(|_| Err("client timeout".into()))
}

/// The virtual time in ns since the simulation started.
pub fn now_ns() -> u64 {
    turmoil::sim_elapsed().map_or(0, |d| d.as_nanos() as u64)
}

/// One field of a `tunekv-quorum` header (`version`, `strict`, …).
fn quorum_field<'a>(header: &'a str, name: &str) -> Option<&'a str> {
    header
        .split(';')
        .find_map(|p| p.strip_prefix(name)?.strip_prefix('='))
}

/// Performs one operation on the leaderless keyspace through `node` at quorum `quorum` (`r`
/// of a read, `w` of an update) and returns its history record. A failed update's outcome is
/// unknown whatever its code: leaderless writes are not rolled back.
#[allow(clippy::too_many_arguments)]
pub async fn operate_leaderless(
    client: u64,
    node: usize,
    kind: OpKind,
    key: &str,
    value: Option<String>,
    (level, quorum): (&str, &str),
    token: &mut String,
) -> Operation {
    let host = format!("n{}", node + 1);
    let invoke_ns = now_ns();
    let path = format!("/v1/kv/{KEYSPACE}/{key}?wait_ms_max={WAIT_MS}");
    let res = match kind {
        OpKind::Read => {
            let url = format!("{path}&r={quorum}&level={level}");
            request(&host, "GET", &url, token, Vec::new()).await
        }
        OpKind::Write => {
            let v = value.clone().unwrap_or_default().into_bytes();
            request(&host, "PUT", &format!("{path}&w={quorum}"), token, v).await
        }
        OpKind::Delete => {
            request(
                &host,
                "DELETE",
                &format!("{path}&w={quorum}"),
                token,
                Vec::new(),
            )
            .await
        }
    };
    let mut op = Operation {
        client,
        session: Some(format!("c{client}")),
        op: kind,
        key: key.to_string(),
        value: if kind == OpKind::Write { value } else { None },
        invoke_ns,
        complete_ns: 0,
        ok: None,
        level: if kind == OpKind::Read {
            level
        } else {
            "eventual"
        }
        .to_string(),
        node: host,
        position: None,
        staleness_entries: None,
        staleness_ms: None,
        quorum: Some(quorum.to_string()),
        version: None,
        strict: None,
    };
    match res {
        Err(_) => {
            op.ok = if kind == OpKind::Read {
                Some(false)
            } else {
                None
            }
        }
        Ok(a) => {
            let found = kind == OpKind::Read && a.status == 404 && a.quorum.is_some();
            if a.status == 200 || found {
                op.ok = Some(true);
                if let Some(s) = &a.session {
                    *token = s.clone();
                }
                op.position = a.position.clone();
                if kind == OpKind::Read {
                    op.value =
                        (a.status == 200).then(|| String::from_utf8_lossy(&a.body).into_owned());
                    op.version = a
                        .quorum
                        .as_deref()
                        .and_then(|q| quorum_field(q, "version"))
                        .map(str::to_string);
                } else {
                    let body: serde_json::Value =
                        serde_json::from_slice(&a.body).unwrap_or_default();
                    op.version = body["quorum"]["version"].as_str().map(str::to_string);
                    op.strict = body["quorum"]["strict"].as_bool();
                }
            } else {
                op.ok = match (kind, a.code().as_str()) {
                    (OpKind::Read, _) | (_, "quorum_invalid" | "bad_request") => Some(false),
                    _ => None,
                };
            }
        }
    }
    op.complete_ns = now_ns();
    op
}

/// Performs one operation through `node` and returns its history record.
#[allow(clippy::too_many_arguments)]
pub async fn operate(
    client: u64,
    node: usize,
    kind: OpKind,
    key: &str,
    value: Option<String>,
    level: &str,
    token: &mut String,
) -> Operation {
    let host = format!("n{}", node + 1);
    let invoke_ns = now_ns();
    let path = format!("/v1/kv/{KEYSPACE}/{key}?wait_ms_max={WAIT_MS}");
    let res = match kind {
        OpKind::Read => {
            request(
                &host,
                "GET",
                &format!("{path}&level={level}"),
                token,
                Vec::new(),
            )
            .await
        }
        OpKind::Write => {
            let v = value.clone().unwrap_or_default().into_bytes();
            request(&host, "PUT", &path, token, v).await
        }
        OpKind::Delete => request(&host, "DELETE", &path, token, Vec::new()).await,
    };
    let mut op = Operation {
        client,
        session: Some(format!("c{client}")),
        op: kind,
        key: key.to_string(),
        value: if kind == OpKind::Write { value } else { None },
        invoke_ns,
        complete_ns: 0,
        ok: None,
        level: level.to_string(),
        node: host,
        position: None,
        staleness_entries: None,
        staleness_ms: None,
        quorum: None,
        version: None,
        strict: None,
    };
    match res {
        // Lost in the network: the write may or may not have happened.
        Err(_) => op.ok = None,
        Ok(a) => {
            let found = kind == OpKind::Read && a.status == 404 && a.position.is_some();
            if a.status == 200 || found {
                op.ok = Some(true);
                if let Some(s) = &a.session {
                    *token = s.clone();
                }
                op.position = a.position.clone();
                if kind == OpKind::Read {
                    op.value =
                        (a.status == 200).then(|| String::from_utf8_lossy(&a.body).into_owned());
                    op.staleness_entries = a.staleness.map(|s| s.0);
                    op.staleness_ms = a.staleness.map(|s| s.1);
                }
            } else {
                op.ok = match a.code().as_str() {
                    // The outcome of a write that timed out is not known.
                    "timeout" => None,
                    _ => Some(false),
                };
            }
        }
    }
    op.complete_ns = now_ns();
    op
}
