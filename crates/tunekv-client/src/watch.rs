//! [`Client::watch`]: the change feed (`GET /v1/watch/{ks}`) as events, one at a time or as a
//! `Stream`.

use crate::{api_error, encode_key, Client, ClientError, Result};
use std::time::Duration;

/// One event of a watch (docs/formats.md, "The change feed").
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum WatchEvent {
    /// A key changed: its new value, or `None` when deleted; `position` as
    /// `shard=S;index=I;commit_ms=C`.
    Change {
        key: String,
        value: Option<String>,
        shard: u32,
        index: u64,
        position: String,
        /// Leaderless keyspaces: the version stored, `HLC.NODE`.
        version: Option<String>,
        /// The key and the new value as bytes (`key` and `value` are lossy UTF-8).
        key_bytes: Vec<u8>,
        value_bytes: Option<Vec<u8>>,
        /// When the new value expires (Unix ms), if it does.
        expires_ms: Option<u64>,
    },
    /// Every change of `shard` up to `index` has been sent; `cursor` resumes a watch after
    /// every change sent so far ([`Client::watch_from`]).
    Progress {
        shard: u32,
        index: u64,
        cursor: String,
        /// The serving node's newest freshness proof the marked state satisfies: every write
        /// committed before the node's monotonic clock read `mono_us` is at or below `index`.
        proof: Option<FeedProof>,
    },
    /// Leaderless keyspaces: every version `node` stored up to its sequence `seq` has been
    /// considered; `cursor` as for `Progress`.
    NodeProgress { node: u64, seq: u64, cursor: String },
}

/// A freshness proof on a progress mark (`"proof"` in docs/formats.md, "The change feed").
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FeedProof {
    pub index: u64,
    /// The node's monotonic clock, µs since it started (as `GET /v1/clock` reads it).
    pub mono_us: i64,
    /// The node process the clock belongs to.
    pub incarnation: u64,
}

/// A running watch: [`Watch::next`] yields events until the server ends it; an `error` event
/// (the watcher fell behind, or the node lost the shard's history) comes as `Err` and ends it.
pub struct Watch {
    resp: reqwest::Response,
    sse: SseDecoder,
    done: bool,
}

/// Splits server-sent events out of the text of a stream as it arrives, and parses each into a
/// [`WatchEvent`] (an `error` event is `Err`). For readers of a watch's body other than
/// [`Watch`] (the simulator's).
#[derive(Debug, Default)]
pub struct SseDecoder {
    buf: String,
    event: String,
    data: Option<String>,
}

impl SseDecoder {
    pub fn push(&mut self, chunk: &[u8]) {
        self.buf.push_str(&String::from_utf8_lossy(chunk));
    }

    /// The next complete event, once one has arrived.
    pub fn next_event(&mut self) -> Option<Result<WatchEvent>> {
        while let Some(end) = self.buf.find('\n') {
            let line = self.buf[..end].trim_end_matches('\r').to_string();
            self.buf.drain(..=end);
            if let Some(e) = line.strip_prefix("event:") {
                self.event = e.trim().to_string();
            } else if let Some(d) = line.strip_prefix("data:") {
                self.data = Some(d.trim().to_string());
            } else if line.is_empty() {
                let event = std::mem::take(&mut self.event);
                if let Some(data) = self.data.take() {
                    return Some(parse_event(&event, &data));
                }
            }
        }
        None
    }
}

/// How long a watch may stay open (the client's request timeout would cut it off otherwise).
const WATCH_OPEN_MAX: Duration = Duration::from_secs(365 * 24 * 3600);

impl Client {
    /// Watches the keys of `keyspace` that start with `prefix`, from now on.
    pub async fn watch(&self, keyspace: &str, prefix: &str) -> Result<Watch> {
        self.watch_from(keyspace, prefix, None).await
    }

    /// Watches the keys of `keyspace` that start with `prefix`: from now on, or after the
    /// changes a progress event's `cursor` covers (on any node). A cursor older than the
    /// node keeps is refused with `cursor_compacted`: read the keys again, then watch anew.
    pub async fn watch_from(
        &self,
        keyspace: &str,
        prefix: &str,
        cursor: Option<&str>,
    ) -> Result<Watch> {
        let mut url = format!(
            "{}/v1/watch/{}?prefix={}",
            self.base,
            encode_key(keyspace.as_bytes()),
            encode_key(prefix.as_bytes())
        );
        if let Some(c) = cursor {
            url.push_str("&from=");
            url.push_str(&encode_key(c.as_bytes()));
        }
        let resp = self
            .call(reqwest::Method::GET, url)
            .timeout(WATCH_OPEN_MAX)
            .send()
            .await
            .map_err(|e| self.transport(e))?;
        if !resp.status().is_success() {
            return Err(api_error(resp).await);
        }
        Ok(Watch {
            resp,
            sse: SseDecoder::default(),
            done: false,
        })
    }
}

impl Watch {
    /// The next event; `None` once the watch has ended.
    pub async fn next(&mut self) -> Option<Result<WatchEvent>> {
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
            match self.resp.chunk().await {
                Ok(Some(chunk)) => self.sse.push(&chunk),
                Ok(None) => self.done = true,
                Err(e) => {
                    self.done = true;
                    return Some(Err(ClientError::Transport(format!("the watch broke: {e}"))));
                }
            }
        }
    }

    /// The watch as a `Stream` of events.
    pub fn into_stream(self) -> impl futures::Stream<Item = Result<WatchEvent>> {
        futures::stream::unfold(self, |mut w| async move { w.next().await.map(|e| (e, w)) })
    }
}

/// One server-sent event of a watch (its `event:` name, empty for a change, and its `data:`
/// line) as a [`WatchEvent`]; an `error` event is `Err`. For clients that read the stream their
/// own way (the simulator's).
pub fn parse_event(event: &str, data: &str) -> Result<WatchEvent> {
    let v: serde_json::Value = serde_json::from_str(data)
        .map_err(|e| ClientError::Transport(format!("a watch event is not JSON: {e}")))?;
    let bad = || ClientError::Transport(format!("an unexpected watch event: {data}"));
    match event {
        "progress" if v.get("node").is_some() => Ok(WatchEvent::NodeProgress {
            node: v["node"].as_u64().ok_or_else(bad)?,
            seq: v["seq"].as_u64().ok_or_else(bad)?,
            cursor: v["cursor"].as_str().ok_or_else(bad)?.to_string(),
        }),
        "progress" => Ok(WatchEvent::Progress {
            shard: v["shard"].as_u64().ok_or_else(bad)? as u32,
            index: v["index"].as_u64().ok_or_else(bad)?,
            cursor: v["cursor"].as_str().ok_or_else(bad)?.to_string(),
            proof: v.get("proof").and_then(|p| {
                Some(FeedProof {
                    index: p["index"].as_u64()?,
                    mono_us: p["mono_us"].as_i64()?,
                    incarnation: p["incarnation"].as_u64()?,
                })
            }),
        }),
        "error" => Err(ClientError::Api {
            status: 200,
            code: v["code"].as_str().unwrap_or("unknown").to_string(),
            message: v["message"].as_str().unwrap_or_default().to_string(),
        }),
        _ => {
            let position = v["position"].as_str().ok_or_else(bad)?.to_string();
            let field = |name: &str| -> Option<u64> {
                position
                    .split(';')
                    .find_map(|p| p.strip_prefix(name)?.strip_prefix('=')?.parse().ok())
            };
            let key = v["key"].as_str().ok_or_else(bad)?.to_string();
            let key_bytes = match v["key_base64url"].as_str() {
                Some(b) => crate::base64url_decode(b).ok_or_else(bad)?,
                None => key.clone().into_bytes(),
            };
            let value = v["value"].as_str().map(str::to_string);
            let value_bytes = match (v["value_hex"].as_str(), &value) {
                (Some(h), _) => Some(hex_decode(h).ok_or_else(bad)?),
                (None, Some(text)) => Some(text.clone().into_bytes()),
                (None, None) => None,
            };
            Ok(WatchEvent::Change {
                key,
                value,
                shard: field("shard").ok_or_else(bad)? as u32,
                index: field("index").ok_or_else(bad)?,
                position,
                version: v["version"].as_str().map(str::to_string),
                key_bytes,
                value_bytes,
                expires_ms: v["expires_ms"].as_u64(),
            })
        }
    }
}

fn hex_decode(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok())
        .collect()
}
