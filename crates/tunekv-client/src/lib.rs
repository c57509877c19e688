//! tunekv-client: a small async client for tunekv's HTTP API (DESIGN §9).

mod watch;
pub use watch::{parse_event, FeedProof, SseDecoder, Watch, WatchEvent};

use serde::Deserialize;
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The server answered with a typed error.
    #[error("{status} {code}: {message}")]
    Api {
        status: u16,
        code: String,
        message: String,
    },
    /// No answer (connection refused, reset, timed out), or a node address that is not one.
    /// The message names the cause.
    #[error("transport: {0}")]
    Transport(String),
    /// Refused before sending: the server would refuse it with the same code (e.g. an empty
    /// key is `key_invalid`).
    #[error("{code}: {message}")]
    Invalid { code: String, message: String },
}

impl ClientError {
    /// The stable error code, if the server sent one or would have.
    pub fn code(&self) -> Option<&str> {
        match self {
            ClientError::Api { code, .. } | ClientError::Invalid { code, .. } => Some(code),
            ClientError::Transport(_) => None,
        }
    }
}

pub type Result<T> = std::result::Result<T, ClientError>;

/// The session token header, sent with requests and returned with every success.
pub const SESSION_HEADER: &str = "tunekv-session";

/// Per-request options.
#[derive(Clone, Default)]
pub struct Opts {
    pub level: Option<String>,
    /// Read and write quorums on leaderless keyspaces (`one`, `quorum`, `all`; `any` for writes).
    pub r: Option<String>,
    pub w: Option<String>,
    pub wait_ms_max: Option<u64>,
    /// Session token(s) to send; several comma-separated tokens are merged by the server (two
    /// threads of one session each hold the token of their last reply).
    pub session: Option<String>,
    /// A bearer token for this request alone, instead of the client's (a cache forwards its
    /// caller's token with the writes it passes on).
    pub token: Option<String>,
}

impl std::fmt::Debug for Opts {
    /// The bearer token is never printed.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Opts")
            .field("level", &self.level)
            .field("r", &self.r)
            .field("w", &self.w)
            .field("wait_ms_max", &self.wait_ms_max)
            .field("session", &self.session)
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

impl Opts {
    pub fn level(level: &str) -> Opts {
        Opts {
            level: Some(level.to_string()),
            ..Opts::default()
        }
    }

    /// Sends `token` as this request's bearer token.
    pub fn token(mut self, token: &str) -> Opts {
        self.token = Some(token.to_string());
        self
    }

    pub fn wait_ms(mut self, ms: u64) -> Opts {
        self.wait_ms_max = Some(ms);
        self
    }

    pub fn r(mut self, r: &str) -> Opts {
        self.r = Some(r.to_string());
        self
    }

    pub fn w(mut self, w: &str) -> Opts {
        self.w = Some(w.to_string());
        self
    }

    pub fn session(mut self, token: &str) -> Opts {
        self.session = Some(token.to_string());
        self
    }
}

/// The receipt of a read (DESIGN §4), from its headers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Receipt {
    pub level: String,
    pub served_by: String,
    pub position: String,
    pub staleness: String,
    /// Leaderless keyspaces: the `tunekv-quorum` header
    /// (`q=quorum;asked=3;answered=2;strict=1;hinted=0;version=HLC.NODE`).
    pub quorum: Option<String>,
}

impl Receipt {
    /// One field of the quorum header (`version`, `strict`, `answered`, …).
    pub fn quorum_field(&self, name: &str) -> Option<&str> {
        self.quorum
            .as_deref()?
            .split(';')
            .find_map(|p| p.strip_prefix(name)?.strip_prefix('='))
    }

    /// `entries` and `ms` of the staleness header.
    pub fn staleness_parts(&self) -> Option<(u64, u64)> {
        let (e, m) = self.staleness.split_once(';')?;
        Some((
            e.strip_prefix("entries=")?.parse().ok()?,
            m.strip_prefix("ms=")?.parse().ok()?,
        ))
    }

    /// The log index of the position header.
    pub fn index(&self) -> Option<u64> {
        self.position
            .split(';')
            .find_map(|p| p.strip_prefix("index="))
            .and_then(|i| i.parse().ok())
    }
}

#[derive(Clone, Debug)]
pub struct ReadReply {
    /// `None`: not found.
    pub value: Option<Vec<u8>>,
    pub receipt: Receipt,
    /// The session token after this read.
    pub session: String,
    /// The key's version (ordered keyspaces, present keys): the index of the write that made it.
    pub version: Option<u64>,
    /// When the value expires (Unix ms), if it does.
    pub expires_ms: Option<u64>,
    /// From a cache (`tunekv cache`): `hit`, `miss` or `coalesced`.
    pub cache: Option<String>,
}

impl ReadReply {
    /// A read's answer from its status (200: found, 404: absent), its headers (by name) and
    /// its body; `None` when it is not one (an error, or a receipt missing a field).
    pub fn from_parts(
        status: u16,
        header: impl Fn(&str) -> Option<String>,
        body: Vec<u8>,
    ) -> Option<ReadReply> {
        let receipt = Receipt {
            level: header("tunekv-level")?,
            served_by: header("tunekv-served-by")?,
            position: header("tunekv-position")?,
            staleness: header("tunekv-staleness")?,
            quorum: header("tunekv-quorum"),
        };
        let number = |name: &str| header(name).and_then(|v| v.parse::<u64>().ok());
        let value = match status {
            200 => Some(body),
            404 => None,
            _ => return None,
        };
        Some(ReadReply {
            value,
            receipt,
            session: header(SESSION_HEADER).unwrap_or_default(),
            version: number("tunekv-version"),
            expires_ms: number("tunekv-expires-ms"),
            cache: header("tunekv-cache"),
        })
    }
}

#[derive(Clone, Debug, Deserialize)]
pub struct WriteReply {
    pub position: String,
    pub shard: u32,
    pub index: u64,
    pub commit_ms: u64,
    pub existed: bool,
    /// The session token after this write.
    pub session: String,
    /// Leaderless keyspaces: how the write met its quorum.
    #[serde(default)]
    pub quorum: Option<WriteQuorum>,
    /// Counter keyspaces (`add`): the count after the update.
    #[serde(default)]
    pub value: Option<i64>,
    /// Set and map keyspaces (`update`): members or fields added and removed, and the dots
    /// (`NODE.COUNTER`) the update issued and dropped.
    #[serde(default)]
    pub added: Option<u64>,
    #[serde(default)]
    pub removed: Option<u64>,
    #[serde(default)]
    pub dots: Vec<String>,
    #[serde(default)]
    pub removed_dots: Vec<String>,
    /// Siblings keyspaces: the context the write superseded (`NODE:COUNTER`, `NODE.COUNTER`).
    #[serde(default)]
    pub covered: Vec<String>,
}

/// A read of a siblings keyspace's key (`GET …?format=json`).
#[derive(Clone, Debug, Deserialize)]
pub struct SiblingsReply {
    /// Every concurrent value (UTF-8 ones as strings).
    pub siblings: Vec<serde_json::Value>,
    /// The sealed causal context, to send back with a write that resolves them.
    pub context: String,
    pub session: String,
    pub receipt: serde_json::Value,
}

/// How a leaderless write met its quorum (the `quorum` object of a write's answer).
#[derive(Clone, Debug, Deserialize)]
pub struct WriteQuorum {
    pub quorum: String,
    pub asked: u32,
    pub answered: u32,
    pub strict: bool,
    pub hinted: u32,
    /// `HLC.NODE`.
    pub version: Option<String>,
    /// `fsync` (leaderless) or `none` (volatile: memory only).
    #[serde(default)]
    pub durability: Option<String>,
}

#[derive(Clone)]
pub struct Client {
    http: reqwest::Client,
    base: String,
    timeout: Duration,
    /// Sent as `Authorization: Bearer …` on every request (a cluster with auth on).
    token: Option<String>,
    /// The CA (PEM) trusted for `https://` (a cluster with TLS).
    ca: Option<Vec<u8>>,
    /// A token that changes while the client lives (a service renewing its login): read at
    /// each request, sent instead of `token`.
    slot: Option<TokenSlot>,
}

/// A bearer token shared by clients and replaced as it is renewed ([`Client::with_token_slot`]).
pub type TokenSlot = std::sync::Arc<std::sync::RwLock<Option<String>>>;

/// The token every client made from now on sends unless told otherwise
/// ([`set_default_token`]).
static DEFAULT_TOKEN: std::sync::OnceLock<String> = std::sync::OnceLock::new();

/// The CA (PEM) every client made from now on trusts for `https://` nodes
/// ([`set_default_ca`]); its clients also default to `https://` for addresses without a scheme.
static DEFAULT_CA: std::sync::OnceLock<Vec<u8>> = std::sync::OnceLock::new();

/// Makes every [`Client`] created afterwards trust the CA in `pem` (the `tunekv` CLI sets it
/// from `TUNEKV_CA`) and speak `https://` to addresses given without a scheme. Only the first
/// call counts.
pub fn set_default_ca(pem: Vec<u8>) {
    let _ = DEFAULT_CA.set(pem);
}

/// Makes every [`Client`] created afterwards in this process send `token` (the `tunekv` CLI
/// sets it from `TUNEKV_TOKEN`). Only the first call counts.
pub fn set_default_token(token: String) {
    let _ = DEFAULT_TOKEN.set(token);
}

/// The token set by [`set_default_token`], if any (other protocols' clients send it too).
pub fn default_token() -> Option<&'static str> {
    DEFAULT_TOKEN.get().map(String::as_str)
}

/// The CA set by [`set_default_ca`], if any.
pub fn default_ca() -> Option<&'static [u8]> {
    DEFAULT_CA.get().map(Vec::as_slice)
}

/// Default headers carrying `token`, if any.
fn auth_headers(token: Option<&str>) -> reqwest::header::HeaderMap {
    let mut h = reqwest::header::HeaderMap::new();
    if let Some(t) = token {
        if let Ok(mut v) = reqwest::header::HeaderValue::from_str(&format!("Bearer {t}")) {
            v.set_sensitive(true);
            h.insert(reqwest::header::AUTHORIZATION, v);
        }
    }
    h
}

/// Percent-encodes a key for a path segment (every byte but unreserved characters). `.` and
/// `..` are not sent this way: URL parsing (WHATWG, as `reqwest` does) removes such a segment,
/// and `%2E` too, so [`Client`] sends them in the base64url form (see [`key_path`]).
pub fn encode_key(key: &[u8]) -> String {
    let mut out = String::with_capacity(key.len());
    for &b in key {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The path segment and query that name `key` in `/v1/kv/{ks}/…`: percent-encoded, except
/// `.` and `..` (which URL normalisation would drop), sent as base64url with
/// `key_encoding=base64url`. An empty key is `key_invalid`, as the server would answer.
pub fn key_path(key: &[u8]) -> Result<(String, Option<(&'static str, &'static str)>)> {
    const BASE64URL: Option<(&str, &str)> = Some(("key_encoding", "base64url"));
    match key {
        b"" => Err(ClientError::Invalid {
            code: "key_invalid".into(),
            message: "the key is empty".into(),
        }),
        // base64url of "." and "..".
        b"." => Ok(("Lg".into(), BASE64URL)),
        b".." => Ok(("Li4".into(), BASE64URL)),
        _ => Ok((encode_key(key), None)),
    }
}

/// What went wrong with a request that got no answer, in words: "connection refused",
/// "timed out", "not a host:port", then the underlying error chain.
fn describe(e: &reqwest::Error, base: &str, timeout: Duration) -> String {
    use std::error::Error as _;
    let mut causes: Vec<String> = Vec::new();
    let mut io_kind = None;
    let mut source = e.source();
    while let Some(s) = source {
        if let Some(io) = s.downcast_ref::<std::io::Error>() {
            io_kind = Some(io.kind());
        }
        let text = s.to_string();
        if !causes.iter().any(|c| c.contains(&text)) {
            causes.push(text);
        }
        source = s.source();
    }
    let chain = causes.join(": ");
    let target = e
        .url()
        .map(|u| u.to_string())
        .unwrap_or_else(|| base.to_string());
    if e.is_builder() {
        return format!("the node address {base:?} is not a host:port ({chain})");
    }
    if e.is_timeout() || io_kind == Some(std::io::ErrorKind::TimedOut) {
        return format!(
            "{target}: timed out after {} ms ({chain})",
            timeout.as_millis()
        );
    }
    if e.is_connect() {
        let why = match io_kind {
            Some(std::io::ErrorKind::ConnectionRefused) => "connection refused".to_string(),
            _ if chain.contains("dns error") => "cannot resolve the host name".to_string(),
            _ => "cannot connect".to_string(),
        };
        return format!("{target}: {why} ({chain})");
    }
    if chain.is_empty() {
        format!("{target}: {e}")
    } else {
        format!("{target}: {e}: {chain}")
    }
}

async fn api_error(resp: reqwest::Response) -> ClientError {
    let status = resp.status().as_u16();
    let text = resp.text().await.unwrap_or_default();
    let parsed: Option<serde_json::Value> = serde_json::from_str(&text).ok();
    let field = |name: &str| {
        parsed
            .as_ref()
            .and_then(|v| v["error"][name].as_str())
            .map(str::to_string)
    };
    ClientError::Api {
        status,
        code: field("code").unwrap_or_else(|| "unknown".into()),
        message: field("message").unwrap_or_else(|| {
            if text.is_empty() {
                "(an empty answer: is this a tunekv node?)".into()
            } else {
                text
            }
        }),
    }
}

impl Client {
    fn transport(&self, e: reqwest::Error) -> ClientError {
        ClientError::Transport(describe(&e, &self.base, self.timeout))
    }

    /// Sends a request and decodes a JSON success body, or the typed error.
    async fn send_json<T: serde::de::DeserializeOwned>(
        &self,
        req: reqwest::RequestBuilder,
    ) -> Result<T> {
        let resp = req.send().await.map_err(|e| self.transport(e))?;
        if !resp.status().is_success() {
            return Err(api_error(resp).await);
        }
        resp.json().await.map_err(|e| self.transport(e))
    }

    /// `base` is a node's HTTP address, with or without `http://`.
    pub fn new(base: &str) -> Client {
        Client::with_timeout(base, Duration::from_secs(70))
    }

    /// Like [`Client::new`], giving up on any request after `timeout` (a transport error).
    pub fn with_timeout(base: &str, timeout: Duration) -> Client {
        let ca = DEFAULT_CA.get().cloned();
        let base = if base.starts_with("http://") || base.starts_with("https://") {
            base.trim_end_matches('/').to_string()
        } else if ca.is_some() {
            format!("https://{}", base.trim_end_matches('/'))
        } else {
            format!("http://{}", base.trim_end_matches('/'))
        };
        let mut c = Client {
            http: reqwest::Client::new(),
            base,
            timeout,
            token: DEFAULT_TOKEN.get().cloned(),
            ca,
            slot: None,
        };
        c.rebuild();
        c
    }

    /// The HTTP client for this client's token, CA and timeout.
    fn builder(&self) -> reqwest::ClientBuilder {
        let mut b = reqwest::Client::builder().default_headers(auth_headers(self.token.as_deref()));
        if let Some(pem) = &self.ca {
            // A CA that is not PEM trusts nothing more: the handshake then fails, saying so.
            if let Ok(cert) = reqwest::Certificate::from_pem(pem) {
                b = b.use_rustls_tls().add_root_certificate(cert);
            }
        }
        b
    }

    fn rebuild(&mut self) {
        self.http = self
            .builder()
            .timeout(self.timeout)
            .build()
            .unwrap_or_else(|_| reqwest::Client::new());
    }

    /// This client, trusting the CA in `pem` (a cluster with TLS; `tunekv dev --tls` writes
    /// `DIR/tls/ca.pem`). Give the base as `https://…`.
    pub fn with_ca(mut self, pem: Vec<u8>) -> Client {
        self.ca = Some(pem);
        self.rebuild();
        self
    }

    /// An admin call (`/v1/admin/users…`, `/v1/admin/roles…`): the JSON answer (`null` for
    /// 204), or the typed error.
    pub async fn admin(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<serde_json::Value>,
    ) -> Result<serde_json::Value> {
        let mut req = self.call(method, format!("{}{path}", self.base));
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await.map_err(|e| self.transport(e))?;
        if !resp.status().is_success() {
            return Err(api_error(resp).await);
        }
        if resp.status() == reqwest::StatusCode::NO_CONTENT {
            return Ok(serde_json::Value::Null);
        }
        resp.json().await.map_err(|e| self.transport(e))
    }

    /// This client, sending whatever token `slot` holds at each request (its owner renews it).
    pub fn with_token_slot(mut self, slot: TokenSlot) -> Client {
        self.slot = Some(slot);
        self
    }

    /// A request to `url`, carrying `token`, else the slot's token, else the client's.
    fn call_as(
        &self,
        method: reqwest::Method,
        url: String,
        token: Option<&str>,
    ) -> reqwest::RequestBuilder {
        let req = self.http.request(method, url);
        let shared = match (token, &self.slot) {
            (None, Some(slot)) => slot.read().map(|t| t.clone()).unwrap_or_default(),
            _ => None,
        };
        // A request's own Authorization header replaces the client's default one.
        match token.or(shared.as_deref()) {
            Some(t) => req.bearer_auth(t),
            None => req,
        }
    }

    fn call(&self, method: reqwest::Method, url: String) -> reqwest::RequestBuilder {
        self.call_as(method, url, None)
    }

    /// This client, sending `token` (from [`Client::login`]) with every request.
    pub fn with_token(mut self, token: Option<String>) -> Client {
        self.token = token;
        self.rebuild();
        self
    }

    /// `POST /v1/auth/token`: a bearer token for `user` and when it expires (Unix ms).
    pub async fn login(&self, user: &str, password: &str) -> Result<(String, u64)> {
        let body = serde_json::json!({"user": user, "password": password});
        let v: serde_json::Value = self
            .send_json(
                self.call(
                    reqwest::Method::POST,
                    format!("{}/v1/auth/token", self.base),
                )
                .json(&body),
            )
            .await?;
        let token = v["token"].as_str().map(str::to_string);
        let expires = v["expires_ms"].as_u64();
        match (token, expires) {
            (Some(t), Some(e)) => Ok((t, e)),
            _ => Err(ClientError::Transport(format!(
                "an unexpected login answer: {v}"
            ))),
        }
    }

    /// `GET /v1/auth/whoami` as the holder of `token` (the client's own token when `None`):
    /// `{"auth": bool, "user": …, "permissions": [...]}`.
    pub async fn whoami(&self, token: Option<&str>) -> Result<serde_json::Value> {
        self.send_json(self.call_as(
            reqwest::Method::GET,
            format!("{}/v1/auth/whoami", self.base),
            token,
        ))
        .await
    }

    pub fn base(&self) -> &str {
        &self.base
    }

    fn query(opts: &Opts) -> Vec<(&'static str, String)> {
        let mut q = Vec::new();
        if let Some(l) = &opts.level {
            q.push(("level", l.clone()));
        }
        if let Some(w) = opts.wait_ms_max {
            q.push(("wait_ms_max", w.to_string()));
        }
        if let Some(r) = &opts.r {
            q.push(("r", r.clone()));
        }
        if let Some(w) = &opts.w {
            q.push(("w", w.clone()));
        }
        q
    }

    fn with_session(req: reqwest::RequestBuilder, opts: &Opts) -> reqwest::RequestBuilder {
        match &opts.session {
            Some(t) if !t.is_empty() => req.header(SESSION_HEADER, t),
            _ => req,
        }
    }

    /// A request to key `key` of `ks` (the key's path form, see [`key_path`]).
    fn kv(
        &self,
        method: reqwest::Method,
        ks: &str,
        key: &[u8],
        opts: &Opts,
    ) -> Result<reqwest::RequestBuilder> {
        self.kv_action(method, ks, key, "", opts)
    }

    /// `/v1/kv/{ks}/{key}{action}` (`action`: `""` or `":add"`).
    fn kv_action(
        &self,
        method: reqwest::Method,
        ks: &str,
        key: &[u8],
        action: &str,
        opts: &Opts,
    ) -> Result<reqwest::RequestBuilder> {
        let (segment, query) = key_path(key)?;
        let req = self.call_as(
            method,
            format!("{}/v1/kv/{}/{}{action}", self.base, ks, segment),
            opts.token.as_deref(),
        );
        Ok(match query {
            Some(pair) => req.query(&[pair]),
            None => req,
        })
    }

    pub async fn create_keyspace(
        &self,
        ks: &str,
        spec: &serde_json::Value,
    ) -> Result<serde_json::Value> {
        self.send_json(
            self.call(
                reqwest::Method::PUT,
                format!("{}/v1/keyspaces/{ks}", self.base),
            )
            .json(spec),
        )
        .await
    }

    pub async fn put(&self, ks: &str, key: &[u8], value: &[u8], opts: &Opts) -> Result<WriteReply> {
        let req = self.kv(reqwest::Method::PUT, ks, key, opts)?;
        self.send_json(Self::with_session(
            req.query(&Self::query(opts)).body(value.to_vec()),
            opts,
        ))
        .await
    }

    /// Writes `value` (`None`: deletes) to a key of a siblings keyspace, superseding what
    /// `context` (from [`Client::siblings`]) covers.
    pub async fn put_in_context(
        &self,
        ks: &str,
        key: &[u8],
        value: Option<&[u8]>,
        context: &str,
        opts: &Opts,
    ) -> Result<WriteReply> {
        let method = if value.is_some() {
            reqwest::Method::PUT
        } else {
            reqwest::Method::DELETE
        };
        let req = self.kv(method, ks, key, opts)?;
        let req = req
            .query(&Self::query(opts))
            .header("tunekv-context", context)
            .body(value.unwrap_or_default().to_vec());
        self.send_json(Self::with_session(req, opts)).await
    }

    /// Reads every concurrent value of a key of a siblings keyspace, with their context.
    pub async fn siblings(&self, ks: &str, key: &[u8], opts: &Opts) -> Result<SiblingsReply> {
        let req = self.kv(reqwest::Method::GET, ks, key, opts)?;
        let mut q = Self::query(opts);
        q.push(("format", "json".to_string()));
        self.send_json(Self::with_session(req.query(&q), opts))
            .await
    }

    /// Adds `by` to a counter (counter keyspaces). `id`: the request's id, so that a retry
    /// with the same id is applied once.
    pub async fn add(
        &self,
        ks: &str,
        key: &[u8],
        by: i64,
        id: Option<&str>,
        opts: &Opts,
    ) -> Result<WriteReply> {
        let req = self.kv_action(reqwest::Method::POST, ks, key, ":add", opts)?;
        let mut body = serde_json::json!({ "by": by });
        if let Some(id) = id {
            body["id"] = serde_json::json!(id);
        }
        self.send_json(Self::with_session(
            req.query(&Self::query(opts)).json(&body),
            opts,
        ))
        .await
    }

    /// Updates a set or a map (`POST …:update`): `body` as docs/formats.md gives it, e.g.
    /// `{"add": ["a"], "remove": ["b"]}` or `{"set": {"field": "value"}}`.
    pub async fn update(
        &self,
        ks: &str,
        key: &[u8],
        body: &serde_json::Value,
        opts: &Opts,
    ) -> Result<WriteReply> {
        let req = self.kv_action(reqwest::Method::POST, ks, key, ":update", opts)?;
        self.send_json(Self::with_session(
            req.query(&Self::query(opts)).json(body),
            opts,
        ))
        .await
    }

    pub async fn delete(&self, ks: &str, key: &[u8], opts: &Opts) -> Result<WriteReply> {
        let req = self.kv(reqwest::Method::DELETE, ks, key, opts)?;
        self.send_json(Self::with_session(req.query(&Self::query(opts)), opts))
            .await
    }

    /// Reads a key. A missing key is `Ok` with `value: None` (its receipt still says where the
    /// absence was observed).
    pub async fn get(&self, ks: &str, key: &[u8], opts: &Opts) -> Result<ReadReply> {
        let req = self.kv(reqwest::Method::GET, ks, key, opts)?;
        let resp = Self::with_session(req.query(&Self::query(opts)), opts)
            .send()
            .await
            .map_err(|e| self.transport(e))?;
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let header = |name: &str| {
            headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string)
        };
        if !matches!(status, 200 | 404) || header("tunekv-position").is_none() {
            return Err(api_error(resp).await);
        }
        let body = if status == 200 {
            resp.bytes().await.map_err(|e| self.transport(e))?.to_vec()
        } else {
            Vec::new()
        };
        ReadReply::from_parts(status, header, body).ok_or_else(|| {
            ClientError::Transport(format!("a read answered {status} without a whole receipt"))
        })
    }

    /// `POST /v1/kv/{ks}:batch-get`: `{"results": [...], "receipts": [...], "session": "..."}`
    /// (one receipt per shard; each shard's values come from one consistent view).
    pub async fn batch_get(
        &self,
        ks: &str,
        keys: &[&str],
        opts: &Opts,
    ) -> Result<serde_json::Value> {
        let body =
            serde_json::json!({"keys": keys, "level": opts.level, "wait_ms_max": opts.wait_ms_max});
        self.send_json(Self::with_session(
            self.call(
                reqwest::Method::POST,
                format!("{}/v1/kv/{ks}:batch-get", self.base),
            )
            .json(&body),
            opts,
        ))
        .await
    }

    /// A keyspace's id and spec (`GET /v1/keyspaces/{ks}`).
    pub async fn keyspace(&self, ks: &str) -> Result<serde_json::Value> {
        self.send_json(self.call(
            reqwest::Method::GET,
            format!("{}/v1/keyspaces/{}", self.base, encode_key(ks.as_bytes())),
        ))
        .await
    }

    /// A shard's read index, confirmed by a leader holding a quorum
    /// (`GET /v1/kv/{ks}:read-index?shard=S`).
    pub async fn read_index(&self, ks: &str, shard: u32, wait_ms: u64) -> Result<u64> {
        let v: serde_json::Value = self
            .send_json(self.call(
                reqwest::Method::GET,
                format!(
                    "{}/v1/kv/{}:read-index?shard={shard}&wait_ms_max={wait_ms}",
                    self.base,
                    encode_key(ks.as_bytes())
                ),
            ))
            .await?;
        v["index"]
            .as_u64()
            .ok_or_else(|| ClientError::Transport(format!("a read index without index: {v}")))
    }

    /// A page of the keys of `ks` that start with `prefix` (`GET /v1/kv/{ks}:scan`): the keys,
    /// and the cursor of the next page (0: the scan is complete).
    pub async fn scan(
        &self,
        ks: &str,
        prefix: &[u8],
        cursor: u64,
        count: usize,
        opts: &Opts,
    ) -> Result<(Vec<Vec<u8>>, u64)> {
        let mut q = Self::query(opts);
        q.push(("cursor", cursor.to_string()));
        q.push(("count", count.to_string()));
        if !prefix.is_empty() {
            q.push(("prefix", String::from_utf8_lossy(prefix).into_owned()));
        }
        let req = self
            .call(
                reqwest::Method::GET,
                format!("{}/v1/kv/{}:scan", self.base, encode_key(ks.as_bytes())),
            )
            .query(&q);
        let v: serde_json::Value = self.send_json(Self::with_session(req, opts)).await?;
        let bad = || ClientError::Transport(format!("an unexpected scan page: {v}"));
        let keys = v["keys"]
            .as_array()
            .ok_or_else(bad)?
            .iter()
            .map(|k| match (k.as_str(), k["base64url"].as_str()) {
                (Some(s), _) => Some(s.as_bytes().to_vec()),
                (None, Some(b)) => base64url_decode(b),
                _ => None,
            })
            .collect::<Option<Vec<_>>>()
            .ok_or_else(bad)?;
        Ok((keys, v["cursor"].as_u64().ok_or_else(bad)?))
    }

    /// The node's incarnation and monotonic clock in µs (`GET /v1/clock`).
    pub async fn clock(&self) -> Result<(u64, i64)> {
        let v: serde_json::Value = self
            .send_json(self.call(reqwest::Method::GET, format!("{}/v1/clock", self.base)))
            .await?;
        match (v["incarnation"].as_u64(), v["mono_us"].as_i64()) {
            (Some(i), Some(us)) => Ok((i, us)),
            _ => Err(ClientError::Transport(format!(
                "an unexpected clock answer: {v}"
            ))),
        }
    }

    /// A cache's status (`GET /v1/cache` of `tunekv cache`).
    pub async fn cache_status(&self) -> Result<serde_json::Value> {
        self.send_json(self.call(reqwest::Method::GET, format!("{}/v1/cache", self.base)))
            .await
    }

    /// The node's (or cache's) Prometheus metrics, as text (`GET /metrics`).
    pub async fn metrics_text(&self) -> Result<String> {
        let r = self
            .call(reqwest::Method::GET, format!("{}/metrics", self.base))
            .send()
            .await
            .map_err(|e| ClientError::Transport(e.to_string()))?;
        if !r.status().is_success() {
            return Err(ClientError::Transport(format!(
                "GET /metrics answered {}",
                r.status()
            )));
        }
        r.text()
            .await
            .map_err(|e| ClientError::Transport(e.to_string()))
    }

    /// This node's staleness SLOs (`GET /v1/slo`): `{"node": id, "slos": [...]}`.
    pub async fn slo(&self) -> Result<serde_json::Value> {
        self.send_json(self.call(reqwest::Method::GET, format!("{}/v1/slo", self.base)))
            .await
    }

    /// `GET /v1/node`: the node's id and addresses.
    pub async fn identity(&self) -> Result<serde_json::Value> {
        self.send_json(self.call(reqwest::Method::GET, format!("{}/v1/node", self.base)))
            .await
    }

    /// `GET /v1/admin/nodes`: the cluster's nodes and the replica moves in flight.
    pub async fn nodes(&self) -> Result<serde_json::Value> {
        self.send_json(self.call(
            reqwest::Method::GET,
            format!("{}/v1/admin/nodes", self.base),
        ))
        .await
    }

    /// `POST /v1/admin/nodes`: adds the node `identity` describes (`{id, raft, http, resp}`);
    /// answers its state once active or after the node's wait.
    pub async fn add_node(&self, identity: &serde_json::Value) -> Result<serde_json::Value> {
        self.send_json(
            self.call(
                reqwest::Method::POST,
                format!("{}/v1/admin/nodes", self.base),
            )
            .json(identity),
        )
        .await
    }

    /// `DELETE /v1/admin/nodes/{id}`: drains and removes node `id`; answers its state once
    /// removed or after the node's wait.
    pub async fn remove_node(&self, id: u64) -> Result<serde_json::Value> {
        self.send_json(self.call(
            reqwest::Method::DELETE,
            format!("{}/v1/admin/nodes/{id}", self.base),
        ))
        .await
    }

    pub async fn cluster(&self) -> Result<serde_json::Value> {
        self.send_json(self.call(reqwest::Method::GET, format!("{}/v1/cluster", self.base)))
            .await
    }

    /// `GET /v1/keyspaces`: every keyspace's name, id and spec.
    pub async fn list_keyspaces(&self) -> Result<serde_json::Value> {
        self.send_json(self.call(reqwest::Method::GET, format!("{}/v1/keyspaces", self.base)))
            .await
    }

    /// Streams shard `shard` of ordered keyspace `ks` as one view of it holds it
    /// (`GET /v1/admin/backup/{ks}/{shard}`, the `tunekv_core::backup` format), handing each
    /// piece to `sink` as it arrives. The stream may last longer than this client's timeout;
    /// only a stall that long ends it.
    pub async fn backup_shard(
        &self,
        ks: &str,
        shard: u32,
        sink: &mut (dyn FnMut(&[u8]) -> std::io::Result<()> + Send),
    ) -> Result<()> {
        let http = self
            .builder()
            .connect_timeout(self.timeout)
            .read_timeout(self.timeout)
            .build()
            .map_err(|e| self.transport(e))?;
        let url = format!(
            "{}/v1/admin/backup/{}/{shard}",
            self.base,
            encode_key(ks.as_bytes())
        );
        let mut resp = http.get(url).send().await.map_err(|e| self.transport(e))?;
        if !resp.status().is_success() {
            return Err(api_error(resp).await);
        }
        while let Some(piece) = resp.chunk().await.map_err(|e| self.transport(e))? {
            sink(&piece)
                .map_err(|e| ClientError::Transport(format!("cannot keep the backup: {e}")))?;
        }
        Ok(())
    }

    /// `POST /v1/admin/restore/{ks}`: backup records (back to back) written into ordered
    /// keyspace `ks`; the answer counts the keys `written` and those left out as `expired`.
    pub async fn restore_batch(&self, ks: &str, records: Vec<u8>) -> Result<serde_json::Value> {
        self.send_json(
            self.call(
                reqwest::Method::POST,
                format!(
                    "{}/v1/admin/restore/{}",
                    self.base,
                    encode_key(ks.as_bytes())
                ),
            )
            .body(records),
        )
        .await
    }

    /// This node's replica of leaderless keyspace `ks` as `/v1/cluster` reports it: (keys held,
    /// digest of every key and version held). Two replicas holding the same versions of the
    /// same partitions report the same pair. `None`: the node has not loaded the keyspace.
    pub async fn replica_digest(&self, ks: &str) -> Result<Option<(u64, u64)>> {
        let status = self.cluster().await?;
        let me = status["served_by"].as_u64();
        Ok(status["nodes"]
            .as_array()
            .and_then(|nodes| nodes.iter().find(|n| n["id"].as_u64() == me))
            .and_then(|n| n["leaderless"]["keyspaces"].as_array())
            .and_then(|kss| kss.iter().find(|k| k["keyspace"] == ks))
            .and_then(|k| Some((k["keys"].as_u64()?, k["digest"].as_u64()?))))
    }

    /// The fault hook (nodes started with `--enable-faults`): `change` as documented for
    /// `POST /v1/admin/faults` (`{"clear": true}` heals); returns the node's faults after it.
    pub async fn faults(&self, change: &serde_json::Value) -> Result<serde_json::Value> {
        self.send_json(
            self.call(
                reqwest::Method::POST,
                format!("{}/v1/admin/faults", self.base),
            )
            .json(change),
        )
        .await
    }

    /// The fault hook (nodes started with `--enable-faults`): isolate or heal this node.
    pub async fn set_isolated(&self, isolate: bool) -> Result<()> {
        let body = if isolate {
            serde_json::json!({"isolate": true})
        } else {
            serde_json::json!({"clear": true})
        };
        let _: serde_json::Value = self
            .send_json(
                self.call(
                    reqwest::Method::POST,
                    format!("{}/v1/admin/faults", self.base),
                )
                .json(&body),
            )
            .await?;
        Ok(())
    }
}

/// Decodes unpadded (or padded) base64url, as the server writes keys that are not UTF-8.
pub(crate) fn base64url_decode(text: &str) -> Option<Vec<u8>> {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(text.trim_end_matches('='))
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_percent_encoded() {
        assert_eq!(encode_key(b"a/b c"), "a%2Fb%20c");
        assert_eq!(encode_key(b"Az09-._~"), "Az09-._~");
        assert_eq!(encode_key(b"\xff\x00"), "%FF%00");
    }

    #[test]
    fn dot_keys_survive_url_normalisation_and_empty_keys_are_refused() {
        // Before: keys "." and ".." were sent as path segments and URL parsing dropped them.
        for key in [&b"."[..], b".."] {
            let (segment, query) = key_path(key).expect("a path");
            let url = reqwest::Url::parse(&format!("http://h/v1/kv/ks/{segment}")).expect("url");
            assert_eq!(url.path(), format!("/v1/kv/ks/{segment}"), "kept");
            assert_eq!(query, Some(("key_encoding", "base64url")));
        }
        assert_eq!(key_path(b"...").expect("a path"), ("...".to_string(), None));
        let e = key_path(b"").expect_err("refused");
        assert_eq!(e.code(), Some("key_invalid"));
    }

    #[tokio::test]
    async fn transport_errors_name_their_cause() {
        // Before: "error sending request for url (…)" with no cause, and "builder error".
        let silent = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = silent.local_addr().expect("addr").to_string();
        let e = Client::with_timeout(&addr, Duration::from_millis(300))
            .cluster()
            .await
            .expect_err("no answer");
        assert!(e.to_string().contains("timed out after 300 ms"), "{e}");
        drop(silent);
        let e = Client::new(&addr).cluster().await.expect_err("refused");
        assert!(e.to_string().contains("connection refused"), "{e}");
        let e = Client::new("not a host:port")
            .cluster()
            .await
            .expect_err("bad");
        assert!(e.to_string().contains("is not a host:port"), "{e}");
    }

    #[test]
    fn staleness_header_parses() {
        let r = Receipt {
            level: "eventual".into(),
            served_by: "2".into(),
            position: "shard=1;index=42;commit_ms=7".into(),
            staleness: "entries=3;ms=120".into(),
            quorum: Some(
                "q=quorum;asked=3;answered=2;strict=1;hinted=0;version=77.2;durability=fsync"
                    .into(),
            ),
        };
        assert_eq!(r.staleness_parts(), Some((3, 120)));
        assert_eq!(r.index(), Some(42));
        assert_eq!(r.quorum_field("version"), Some("77.2"));
        assert_eq!(r.quorum_field("q"), Some("quorum"));
        assert_eq!(r.quorum_field("strict"), Some("1"));
        assert_eq!(r.quorum_field("durability"), Some("fsync"));
    }
}
