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

/// An HTTP/1 connection to `node` (its driver runs in the background).
async fn connect(
    node: &str,
) -> Result<hyper::client::conn::http1::SendRequest<Full<Bytes>>, String> {
    let stream = turmoil::net::TcpStream::connect((node, HTTP_PORT))
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| format!("handshake: {e}"))?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(sender)
}

pub async fn request(
    node: &str,
    method: &str,
    path: &str,
    session: &str,
    body: Vec<u8>,
) -> Result<Answer, String> {
    let exchange = async {
        let mut sender = connect(node).await?;
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

/// Performs one operation through `node` and returns its history record. `quorum`: on a
/// leaderless keyspace, the `r` of a read or the `w` of an update (updates are recorded at
/// `eventual`, and a failed update's outcome is unknown whatever its code: leaderless writes
/// are not rolled back).
#[allow(clippy::too_many_arguments)]
pub async fn operate(
    client: u64,
    node: usize,
    kind: OpKind,
    key: &str,
    value: Option<String>,
    level: &str,
    quorum: Option<&str>,
    token: &mut String,
    siblings: bool,
) -> Operation {
    let host = format!("n{}", node + 1);
    operate_on(
        client, &host, kind, key, value, level, quorum, token, siblings,
    )
    .await
}

/// [`operate`] through any host (a node, or the cache).
#[allow(clippy::too_many_arguments)]
pub async fn operate_on(
    client: u64,
    host: &str,
    kind: OpKind,
    key: &str,
    value: Option<String>,
    level: &str,
    quorum: Option<&str>,
    token: &mut String,
    siblings: bool,
) -> Operation {
    let host = host.to_string();
    let invoke_ns = now_ns();
    let action = match kind {
        OpKind::Add => ":add",
        OpKind::Sadd | OpKind::Srem => ":update",
        _ => "",
    };
    let mut path = format!("/v1/kv/{KEYSPACE}/{key}{action}?wait_ms_max={WAIT_MS}");
    if let Some(q) = quorum {
        let which = if kind == OpKind::Read { "r" } else { "w" };
        path.push_str(&format!("&{which}={q}"));
    }
    let res = match kind {
        OpKind::Read => {
            // A siblings read asks for every value as JSON.
            let json = if siblings { "&format=json" } else { "" };
            let url = format!("{path}&level={level}{json}");
            request(&host, "GET", &url, token, Vec::new()).await
        }
        OpKind::Write => {
            let v = value.clone().unwrap_or_default().into_bytes();
            request(&host, "PUT", &path, token, v).await
        }
        OpKind::Delete => request(&host, "DELETE", &path, token, Vec::new()).await,
        OpKind::Add => {
            // The amount, and an id unique to this operation (a retry would reuse it).
            let body = serde_json::json!({
                "by": value.as_deref().and_then(|v| v.parse::<i64>().ok()).unwrap_or(0),
                "id": format!("c{client}-{invoke_ns}"),
            });
            request(&host, "POST", &path, token, body.to_string().into_bytes()).await
        }
        OpKind::Sadd | OpKind::Srem => {
            let which = if kind == OpKind::Sadd {
                "add"
            } else {
                "remove"
            };
            let body = serde_json::json!({ which: [value.clone().unwrap_or_default()] });
            request(&host, "POST", &path, token, body.to_string().into_bytes()).await
        }
    };
    let leaderless = quorum.is_some();
    let mut op = Operation {
        client,
        session: Some(format!("c{client}")),
        op: kind,
        key: key.to_string(),
        value: if matches!(
            kind,
            OpKind::Write | OpKind::Add | OpKind::Sadd | OpKind::Srem
        ) {
            value
        } else {
            None
        },
        invoke_ns,
        complete_ns: 0,
        ok: None,
        level: if leaderless && kind != OpKind::Read {
            "eventual"
        } else {
            level
        }
        .to_string(),
        node: host,
        position: None,
        staleness_entries: None,
        staleness_ms: None,
        quorum: quorum.map(str::to_string),
        version: None,
        strict: None,
        dots: None,
    };
    match res {
        // Lost in the network: an update may or may not have happened.
        Err(_) => op.ok = (leaderless && kind == OpKind::Read).then_some(false),
        Ok(a) => {
            // A read that found nothing still has a receipt.
            let receipt = if leaderless {
                a.quorum.is_some()
            } else {
                a.position.is_some()
            };
            if a.status == 200 || (kind == OpKind::Read && a.status == 404 && receipt) {
                op.ok = Some(true);
                if let Some(s) = &a.session {
                    *token = s.clone();
                }
                op.position = a.position.clone();
                match (kind, leaderless) {
                    (OpKind::Read, _) => {
                        op.value = (a.status == 200)
                            .then(|| String::from_utf8_lossy(&a.body).into_owned());
                        // A set's read is JSON: its members, recorded as a JSON array; so is a
                        // siblings read: its values.
                        if let Some(members) = tunekv_check::set::history_members(&a.body) {
                            op.value = Some(members);
                        }
                        if siblings {
                            op.value = tunekv_check::siblings::history_values(&a.body);
                        }
                        if leaderless {
                            op.version = a
                                .quorum
                                .as_deref()
                                .and_then(|q| quorum_field(q, "version"))
                                .map(str::to_string);
                        } else {
                            op.staleness_entries = a.staleness.map(|s| s.0);
                            op.staleness_ms = a.staleness.map(|s| s.1);
                        }
                    }
                    (_, true) => {
                        let body: serde_json::Value =
                            serde_json::from_slice(&a.body).unwrap_or_default();
                        op.version = body["quorum"]["version"].as_str().map(str::to_string);
                        op.strict = body["quorum"]["strict"].as_bool();
                        let list = |field: &str| -> Vec<String> {
                            body[field]
                                .as_array()
                                .into_iter()
                                .flatten()
                                .filter_map(|d| d.as_str().map(str::to_string))
                                .collect()
                        };
                        op.dots = if siblings {
                            Some(tunekv_check::siblings::history_dots(
                                &list("dots"),
                                &list("covered"),
                            ))
                        } else {
                            tunekv_check::set::history_dots(
                                kind,
                                &list("dots"),
                                &list("removed_dots"),
                            )
                        };
                    }
                    (_, false) => {}
                }
            } else {
                op.ok = match (kind, leaderless, a.code().as_str()) {
                    (OpKind::Read, true, _) | (_, true, "quorum_invalid" | "bad_request") => {
                        Some(false)
                    }
                    (_, true, _) => None,
                    // The outcome of an ordered write that timed out is not known.
                    (_, false, "timeout") => None,
                    (_, false, _) => Some(false),
                };
            }
        }
    }
    op.complete_ns = now_ns();
    op
}

/// One event of a simulated watch (`GET /v1/watch/sim`).
#[derive(Debug)]
pub enum FeedItem {
    Change {
        shard: u32,
        index: u64,
        key: String,
        value: Option<String>,
    },
    Progress {
        shard: u32,
        index: u64,
        cursor: String,
    },
    /// Leaderless keyspaces: a version stored (`None`: a tombstone).
    Stored {
        key: String,
        version: (u64, u64),
        value: Option<String>,
    },
    /// Leaderless keyspaces: a node's progress.
    NodeProgress { cursor: String },
}

/// A watch's server-sent events, read as they arrive.
pub struct WatchStream {
    body: hyper::body::Incoming,
    buf: String,
    event: String,
}

/// Opens the change feed of the keyspace on `node`, from `cursor` (from now without one).
/// `Err` carries the error code (`cursor_compacted`, …) or why the node could not be reached.
pub async fn watch(node: &str, cursor: Option<&str>) -> Result<WatchStream, String> {
    let open = async {
        let mut sender = connect(node).await?;
        let mut path = format!("/v1/watch/{KEYSPACE}");
        if let Some(c) = cursor {
            path.push_str("?from=");
            path.push_str(c);
        }
        let req = Request::builder()
            .method("GET")
            .uri(path)
            .header("host", node)
            .body(Full::new(Bytes::new()))
            .map_err(|e| format!("request: {e}"))?;
        let resp = sender
            .send_request(req)
            .await
            .map_err(|e| format!("send: {e}"))?;
        if resp.status() != 200 {
            let body = resp
                .into_body()
                .collect()
                .await
                .map(|b| b.to_bytes().to_vec())
                .unwrap_or_default();
            let code = serde_json::from_slice::<serde_json::Value>(&body)
                .ok()
                .and_then(|v| v["error"]["code"].as_str().map(str::to_string))
                .unwrap_or_else(|| "refused".into());
            return Err(code);
        }
        Ok(WatchStream {
            body: resp.into_body(),
            buf: String::new(),
            event: String::new(),
        })
    };
    tokio::time::timeout(CLIENT_TIMEOUT, open)
        .await
        .unwrap_or_else(|_| Err("client timeout".into()))
}

impl WatchStream {
    /// The next event; `None` when the stream ended or broke (an error event included).
    pub async fn next(&mut self) -> Option<FeedItem> {
        loop {
            while let Some(end) = self.buf.find('\n') {
                let line = self.buf[..end].trim_end_matches('\r').to_string();
                self.buf.drain(..=end);
                if let Some(e) = line.strip_prefix("event:") {
                    self.event = e.trim().to_string();
                    continue;
                }
                let Some(data) = line.strip_prefix("data:") else {
                    if line.is_empty() {
                        self.event.clear();
                    }
                    continue;
                };
                let v: serde_json::Value = serde_json::from_str(data.trim()).ok()?;
                match self.event.as_str() {
                    "progress" if v.get("node").is_some() => {
                        return Some(FeedItem::NodeProgress {
                            cursor: v["cursor"].as_str()?.to_string(),
                        })
                    }
                    "" | "message" if v.get("version").is_some() => {
                        let (hlc, node) = v["version"].as_str()?.split_once('.')?;
                        return Some(FeedItem::Stored {
                            key: v["key"].as_str()?.to_string(),
                            version: (hlc.parse().ok()?, node.parse().ok()?),
                            value: v["value"].as_str().map(str::to_string),
                        });
                    }
                    "progress" => {
                        return Some(FeedItem::Progress {
                            shard: v["shard"].as_u64()? as u32,
                            index: v["index"].as_u64()?,
                            cursor: v["cursor"].as_str()?.to_string(),
                        })
                    }
                    "" | "message" => {
                        let p = tunekv_check::history::Position::parse(v["position"].as_str()?)?;
                        return Some(FeedItem::Change {
                            shard: p.shard,
                            index: p.index,
                            key: v["key"].as_str()?.to_string(),
                            value: v["value"].as_str().map(str::to_string),
                        });
                    }
                    // An error event: the watch is over.
                    _ => return None,
                }
            }
            let frame = self.body.frame().await?.ok()?;
            if let Ok(data) = frame.into_data() {
                self.buf.push_str(&String::from_utf8_lossy(&data));
            }
        }
    }
}
