//! A `tunekv cache` in the simulation: the production cache (`tunekv-cache`) on its own host,
//! reaching the nodes through [`SimNode`] — its `NodeApi` over turmoil's TCP (hyper, one
//! connection per call, as the simulated clients do) — and serving its HTTP API on the
//! simulated network.

use crate::net::{HttpListener, HTTP_PORT};
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::Request;
use hyper_util::rt::TokioIo;
use std::sync::Arc;
use std::time::Duration;
use tunekv_cache::node_api::{BoxFut, FeedStream, NodeApi, Result};
use tunekv_cache::{Cache, CacheBugs, CacheConfig};
use tunekv_client::{encode_key, ClientError, Opts, ReadReply, SseDecoder, WatchEvent, WriteReply};

/// The cache's host name.
pub const CACHE_HOST: &str = "cache";

/// How long one call may take beyond its wait budget.
const CALL_MAX: Duration = Duration::from_secs(5);

/// One node, as the cache sees it.
pub struct SimNode {
    host: String,
}

struct Raw {
    status: u16,
    headers: hyper::HeaderMap,
    body: Vec<u8>,
}

fn transport(why: impl std::fmt::Display) -> ClientError {
    ClientError::Transport(why.to_string())
}

/// The typed error of a failed answer.
fn api_error(raw: &Raw) -> ClientError {
    let v: serde_json::Value = serde_json::from_slice(&raw.body).unwrap_or_default();
    ClientError::Api {
        status: raw.status,
        code: v["error"]["code"].as_str().unwrap_or("unknown").to_string(),
        message: v["error"]["message"]
            .as_str()
            .unwrap_or_default()
            .to_string(),
    }
}

fn query(opts: &Opts) -> String {
    let mut q = Vec::new();
    if let Some(l) = &opts.level {
        q.push(format!("level={}", encode_key(l.as_bytes())));
    }
    if let Some(w) = opts.wait_ms_max {
        q.push(format!("wait_ms_max={w}"));
    }
    q.join("&")
}

async fn send(
    host: &str,
    method: &str,
    path: &str,
    session: Option<&str>,
    body: Vec<u8>,
) -> Result<hyper::Response<hyper::body::Incoming>> {
    let stream = turmoil::net::TcpStream::connect((host, HTTP_PORT))
        .await
        .map_err(transport)?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(transport)?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    let mut req = Request::builder()
        .method(method)
        .uri(path)
        .header("host", host);
    if let Some(t) = session.filter(|t| !t.is_empty()) {
        req = req.header("tunekv-session", t);
    }
    let req = req.body(Full::new(Bytes::from(body))).map_err(transport)?;
    sender.send_request(req).await.map_err(transport)
}

impl SimNode {
    pub fn new(host: String) -> SimNode {
        SimNode { host }
    }

    async fn call(
        &self,
        method: &str,
        path: &str,
        session: Option<&str>,
        body: Vec<u8>,
    ) -> Result<Raw> {
        let exchange = async {
            let resp = send(&self.host, method, path, session, body).await?;
            let (status, headers) = (resp.status().as_u16(), resp.headers().clone());
            let body = resp
                .into_body()
                .collect()
                .await
                .map_err(transport)?
                .to_bytes()
                .to_vec();
            Ok(Raw {
                status,
                headers,
                body,
            })
        };
        tokio::time::timeout(CALL_MAX, exchange)
            .await
            .unwrap_or_else(|_| Err(transport("client timeout")))
    }

    async fn json(&self, method: &str, path: &str, body: Vec<u8>) -> Result<serde_json::Value> {
        let raw = self.call(method, path, None, body).await?;
        if !(200..300).contains(&raw.status) {
            return Err(api_error(&raw));
        }
        serde_json::from_slice(&raw.body).map_err(transport)
    }
}

/// A watch's server-sent events, parsed by the client library's own parser.
struct SimFeed {
    body: hyper::body::Incoming,
    sse: SseDecoder,
    done: bool,
}

impl FeedStream for SimFeed {
    fn next(&mut self) -> BoxFut<'_, Option<Result<WatchEvent>>> {
        Box::pin(async move {
            loop {
                if self.done {
                    return None;
                }
                if let Some(parsed) = self.sse.next_event() {
                    if parsed.is_err() {
                        self.done = true;
                    }
                    return Some(parsed);
                }
                match self.body.frame().await {
                    Some(Ok(frame)) => {
                        if let Ok(data) = frame.into_data() {
                            self.sse.push(&data);
                        }
                    }
                    Some(Err(e)) => {
                        self.done = true;
                        return Some(Err(transport(format!("the watch broke: {e}"))));
                    }
                    None => self.done = true,
                }
            }
        })
    }
}

impl NodeApi for SimNode {
    fn base(&self) -> &str {
        &self.host
    }

    fn get<'a>(
        &'a self,
        ks: &'a str,
        key: &'a [u8],
        opts: &'a Opts,
    ) -> BoxFut<'a, Result<ReadReply>> {
        Box::pin(async move {
            let path = format!("/v1/kv/{ks}/{}?{}", encode_key(key), query(opts));
            let raw = self
                .call("GET", &path, opts.session.as_deref(), Vec::new())
                .await?;
            let header = |name: &str| {
                raw.headers
                    .get(name)
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_string)
            };
            ReadReply::from_parts(raw.status, header, raw.body.clone())
                .ok_or_else(|| api_error(&raw))
        })
    }

    fn write<'a>(
        &'a self,
        ks: &'a str,
        key: &'a [u8],
        value: Option<&'a [u8]>,
        opts: &'a Opts,
    ) -> BoxFut<'a, Result<WriteReply>> {
        Box::pin(async move {
            let path = format!("/v1/kv/{ks}/{}?{}", encode_key(key), query(opts));
            let (method, body) = match value {
                Some(v) => ("PUT", v.to_vec()),
                None => ("DELETE", Vec::new()),
            };
            let raw = self
                .call(method, &path, opts.session.as_deref(), body)
                .await?;
            if raw.status != 200 {
                return Err(api_error(&raw));
            }
            serde_json::from_slice(&raw.body).map_err(transport)
        })
    }

    fn read_index<'a>(&'a self, ks: &'a str, shard: u32, wait_ms: u64) -> BoxFut<'a, Result<u64>> {
        Box::pin(async move {
            let path = format!("/v1/kv/{ks}:read-index?shard={shard}&wait_ms_max={wait_ms}");
            let v = self.json("GET", &path, Vec::new()).await?;
            v["index"]
                .as_u64()
                .ok_or_else(|| transport(format!("a read index without index: {v}")))
        })
    }

    fn keyspace<'a>(&'a self, ks: &'a str) -> BoxFut<'a, Result<serde_json::Value>> {
        Box::pin(async move {
            self.json("GET", &format!("/v1/keyspaces/{ks}"), Vec::new())
                .await
        })
    }

    fn create_keyspace<'a>(
        &'a self,
        ks: &'a str,
        spec: &'a serde_json::Value,
    ) -> BoxFut<'a, Result<serde_json::Value>> {
        Box::pin(async move {
            let body = spec.to_string().into_bytes();
            self.json("PUT", &format!("/v1/keyspaces/{ks}"), body).await
        })
    }

    fn scan<'a>(
        &'a self,
        ks: &'a str,
        prefix: &'a [u8],
        cursor: u64,
        opts: &'a Opts,
    ) -> BoxFut<'a, Result<(Vec<Vec<u8>>, u64)>> {
        Box::pin(async move {
            let path = format!(
                "/v1/kv/{ks}:scan?prefix={}&cursor={cursor}&count=500&{}",
                encode_key(prefix),
                query(opts)
            );
            let v = self.json("GET", &path, Vec::new()).await?;
            let keys = v["keys"]
                .as_array()
                .map(|ks| {
                    ks.iter()
                        .filter_map(|k| k.as_str().map(|s| s.as_bytes().to_vec()))
                        .collect()
                })
                .unwrap_or_default();
            Ok((keys, v["cursor"].as_u64().unwrap_or(0)))
        })
    }

    fn clock(&self) -> BoxFut<'_, Result<(u64, i64)>> {
        Box::pin(async move {
            let v = self.json("GET", "/v1/clock", Vec::new()).await?;
            match (v["incarnation"].as_u64(), v["mono_us"].as_i64()) {
                (Some(i), Some(us)) => Ok((i, us)),
                _ => Err(transport(format!("an unexpected clock answer: {v}"))),
            }
        })
    }

    fn watch_from<'a>(
        &'a self,
        ks: &'a str,
        cursor: Option<&'a str>,
    ) -> BoxFut<'a, Result<Box<dyn FeedStream>>> {
        Box::pin(async move {
            let mut path = format!("/v1/watch/{ks}");
            if let Some(c) = cursor {
                path.push_str("?from=");
                path.push_str(c);
            }
            let open = send(&self.host, "GET", &path, None, Vec::new());
            let resp = tokio::time::timeout(CALL_MAX, open)
                .await
                .unwrap_or_else(|_| Err(transport("client timeout")))?;
            if resp.status() != 200 {
                let status = resp.status().as_u16();
                let body = resp
                    .into_body()
                    .collect()
                    .await
                    .map(|b| b.to_bytes().to_vec())
                    .unwrap_or_default();
                return Err(api_error(&Raw {
                    status,
                    headers: hyper::HeaderMap::new(),
                    body,
                }));
            }
            Ok(Box::new(SimFeed {
                body: resp.into_body(),
                sse: SseDecoder::default(),
                done: false,
            }) as Box<dyn FeedStream>)
        })
    }
}

/// Runs a cache on this host (call it inside the cache host's closure) in front of `nodes`
/// node hosts, serving its HTTP API until the host stops.
pub async fn serve(
    nodes: usize,
    secret: &str,
    bugs: CacheBugs,
) -> std::result::Result<(), Box<dyn std::error::Error>> {
    let hosts: Vec<String> = (0..nodes).map(|i| format!("n{}", i + 1)).collect();
    let config = CacheConfig {
        upstream: hosts.clone(),
        cluster_secret: secret.to_string(),
        // No jitter (a random TTL would make a seed's run differ), and room for every key.
        ttl_jitter_pct: 0,
        memory_bytes: 64 << 20,
        ..CacheConfig::default()
    };
    let api: Vec<Arc<dyn NodeApi>> = hosts
        .into_iter()
        .map(|h| Arc::new(SimNode::new(h)) as Arc<dyn NodeApi>)
        .collect();
    let cache = Cache::with_nodes(config, bugs, false, Some(api))?;
    tunekv_cache::server::start(&cache);
    let listener = turmoil::net::TcpListener::bind(("0.0.0.0", HTTP_PORT)).await?;
    axum::serve(HttpListener(listener), tunekv_cache::http::router(cache)).await?;
    Ok(())
}
