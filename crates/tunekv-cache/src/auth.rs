//! The cache in front of a cluster with auth on (docs/cache.md, "A secured cluster").
//!
//! Two identities meet here. The cache's own (`[auth] user`): it logs in to the nodes, and
//! every call the cache makes on its own behalf — fills, read-index probes, the change feed,
//! warming, write-behind flushes — carries that token, renewed at half its life. And the
//! caller's: every request to the cache must show a token (HTTP `Authorization: Bearer`, RESP
//! `AUTH`), and its rights are checked here, before anything is read from memory or asked of
//! the store, with the same rules a node applies (`tunekv_api::authz`). A hit is served only
//! to a caller who may read the key; a fill made for one caller is never a way around another
//! caller's rights.
//!
//! The cache holds the cluster secret (it checks and issues session tokens like a node), so it
//! opens bearer tokens itself: a forged or expired token is refused without a round trip. What
//! a user may do, and whether its token was revoked (its epoch moved), only the cluster knows:
//! the cache asks a node (`GET /v1/auth/whoami` with the caller's token) and keeps the answer
//! for [`GRANTS_FRESH`] per (user, epoch). A revoked token therefore stops working at the cache
//! within that time after the nodes refuse it.

use crate::config::CacheAuth;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tunekv_client::{Client, ClientError, TokenSlot};
use tunekv_core::auth::{self, Claims, Grants, Permission};
use tunekv_core::{Code, SessionKey, TunekvError};

/// How long the cache trusts what a node said of a user's rights (and of a refused token).
pub const GRANTS_FRESH: Duration = Duration::from_secs(1);
/// Most (user, epoch) answers kept; past it, stale ones are dropped first.
const GRANTS_KEPT_MAX: usize = 10_000;
/// How often stale answers are dropped even below [`GRANTS_KEPT_MAX`] (users who stopped
/// asking, epochs that moved on).
const GRANTS_SWEEP_EVERY: Duration = Duration::from_secs(60);
/// How soon a failed login of the cache's own user is tried again.
const LOGIN_RETRY: Duration = Duration::from_secs(1);

/// Unix ms now by this machine's clock (token expiry is judged by it, as a node does).
pub fn wall_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

fn unauthenticated(message: impl Into<String>) -> TunekvError {
    TunekvError::new(Code::Unauthenticated, message)
}

/// What became of asking a node about a user.
type Learned = Result<Arc<Grants>, TunekvError>;

/// What is known of one (user, epoch): the last answer kept and when it was asked for. Its
/// lock is held while a node is asked, so one lookup at a time goes out per user and epoch
/// and the requests arriving meanwhile take its answer.
type Known = Arc<tokio::sync::Mutex<Option<(Instant, Learned)>>>;

/// Who the cache is and who asks it.
pub struct Auth {
    /// `None`: the cache runs open (its cluster has auth off): every caller may do anything.
    service: Option<Service>,
    /// Clients of each node without the service token, to log in and to ask about callers.
    nodes: Vec<Client>,
    /// What nodes said of each (user, epoch), and when.
    learned: Mutex<HashMap<(String, u64), Known>>,
    /// When stale answers were last dropped.
    swept: Mutex<Instant>,
    /// Calls made to nodes to learn a caller's rights (tests read it).
    pub lookups: std::sync::atomic::AtomicU64,
    /// Injected bug (`CacheBugs::ignore_caller_prefix`): permissions lose their prefixes.
    ignore_prefix: bool,
}

struct Service {
    user: String,
    password: String,
    /// The cache's current token; every node client of the cache's upstream reads it.
    slot: TokenSlot,
    /// When the current token expires (Unix ms; 0: none yet).
    expires_ms: std::sync::atomic::AtomicU64,
}

impl Auth {
    /// The cache's identity from `config` (`None`: open), reaching the nodes at `nodes`.
    pub fn new(config: Option<&CacheAuth>, nodes: Vec<Client>) -> Result<Auth, String> {
        let service = match config {
            None => None,
            Some(c) => Some(Service {
                user: c.user.clone(),
                password: c.password()?,
                slot: Arc::new(RwLock::new(None)),
                expires_ms: Default::default(),
            }),
        };
        Ok(Auth {
            service,
            nodes,
            learned: Mutex::new(HashMap::new()),
            swept: Mutex::new(Instant::now()),
            lookups: Default::default(),
            ignore_prefix: false,
        })
    }

    /// With the injected bug `ignore_caller_prefix` (tests show the checks catch it).
    pub fn with_ignored_prefixes(mut self, ignore: bool) -> Auth {
        self.ignore_prefix = ignore;
        self
    }

    /// Whether callers must authenticate.
    pub fn enabled(&self) -> bool {
        self.service.is_some()
    }

    /// The slot the upstream's clients take the cache's token from.
    pub fn slot(&self) -> Option<TokenSlot> {
        self.service.as_ref().map(|s| s.slot.clone())
    }

    /// The cache's own user, if it has one.
    pub fn user(&self) -> Option<&str> {
        self.service.as_ref().map(|s| s.user.as_str())
    }

    /// Whether the cluster asks for credentials (`None`: no node answered): the first node to
    /// answer `whoami` without a token says.
    pub async fn cluster_requires_auth(&self) -> Option<bool> {
        for node in &self.nodes {
            match node.whoami(None).await {
                Ok(v) => return Some(v["auth"] == serde_json::Value::Bool(true)),
                Err(ClientError::Api { code, .. }) if code == "unauthenticated" => {
                    return Some(true)
                }
                Err(_) => {}
            }
        }
        None
    }

    /// Logs the cache in, trying each node once: `Ok` once a token is in the slot. A node
    /// that refuses the password (`unauthenticated`) ends the attempt: another would too.
    pub async fn login(&self) -> Result<(), TunekvError> {
        let Some(s) = &self.service else {
            return Ok(());
        };
        let mut last = TunekvError::new(Code::Unavailable, "no node to log in to");
        for node in &self.nodes {
            match node.login(&s.user, &s.password).await {
                Ok((token, expires)) => {
                    *s.slot.write().unwrap_or_else(|p| p.into_inner()) = Some(token);
                    s.expires_ms
                        .store(expires, std::sync::atomic::Ordering::Relaxed);
                    return Ok(());
                }
                Err(e) => {
                    last = to_error(e);
                    if last.code == Code::Unauthenticated || last.code == Code::BadRequest {
                        break;
                    }
                }
            }
        }
        Err(TunekvError::new(
            last.code,
            format!("the cache cannot log in as {:?}: {}", s.user, last.message),
        ))
    }

    /// Whether the token the nodes issued the cache opens with `key` (the cache's
    /// `cluster_secret`): if not, the cache's secret is not the cluster's, and it could open no
    /// caller's token nor any session token the nodes sign.
    pub fn check_secret(&self, key: &SessionKey) -> Result<(), String> {
        let Some(s) = &self.service else {
            return Ok(());
        };
        let token = s.slot.read().unwrap_or_else(|p| p.into_inner()).clone();
        match token {
            Some(t) if auth::open_token(key, &t, wall_ms()).is_err() => Err(
                "cluster_secret is not the cluster's: the token a node issued the cache does \
                 not open with it (give the cache the nodes' cluster_secret)"
                    .into(),
            ),
            _ => Ok(()),
        }
    }

    /// Keeps the cache's token fresh until `stop`: renewed at half its remaining life, and
    /// every [`LOGIN_RETRY`] after a failed try.
    pub async fn renew_loop(self: Arc<Self>, key: SessionKey, stop: CancellationToken) {
        let Some(s) = &self.service else {
            return;
        };
        loop {
            let expires = s.expires_ms.load(std::sync::atomic::Ordering::Relaxed);
            let now = wall_ms();
            let wait = if expires > now {
                Duration::from_millis((expires - now) / 2).max(LOGIN_RETRY)
            } else {
                LOGIN_RETRY
            };
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(wait) => {}
            }
            match self.login().await {
                Err(e) => {
                    tracing::warn!(error = %e, "the cache could not renew its login; retrying")
                }
                Ok(()) => {
                    if let Err(e) = self.check_secret(&key) {
                        tracing::error!(error = %e, "callers' tokens cannot be checked");
                    }
                }
            }
        }
    }

    /// Who holds `bearer` and what they may do. Open: everyone may do everything.
    pub async fn caller(&self, key: &SessionKey, bearer: Option<&str>) -> Learned {
        if !self.enabled() {
            return Ok(Arc::new(Grants::open()));
        }
        let text = bearer.ok_or_else(|| {
            unauthenticated(
                "auth is on: send Authorization: Bearer TOKEN (POST /v1/auth/token on a node \
                 issues one)",
            )
        })?;
        let claims = auth::open_token(key, text, wall_ms())?;
        self.grants_of(&claims, text).await
    }

    /// The rights of `claims`' user at its epoch, asking a node with `token` (a token of that
    /// user at that epoch) unless a fresh answer is kept.
    pub async fn grants_of(&self, claims: &Claims, token: &str) -> Learned {
        let id = (claims.user.clone(), claims.epoch);
        let known = {
            let mut map = self.lock();
            let full = map.len() >= GRANTS_KEPT_MAX && !map.contains_key(&id);
            let due = {
                let mut swept = self.swept.lock().unwrap_or_else(|p| p.into_inner());
                let due = swept.elapsed() >= GRANTS_SWEEP_EVERY;
                if due || full {
                    *swept = Instant::now();
                }
                due
            };
            if full || due {
                // Stale answers go (one being asked for is kept).
                map.retain(|_, k| {
                    k.try_lock().map_or(true, |g| {
                        g.as_ref()
                            .is_some_and(|(at, _)| at.elapsed() < GRANTS_FRESH)
                    })
                });
                if map.len() >= GRANTS_KEPT_MAX {
                    map.clear();
                }
            }
            map.entry(id).or_default().clone()
        };
        let mut known = known.lock().await;
        if let Some((at, learned)) = known.as_ref() {
            if at.elapsed() < GRANTS_FRESH {
                return learned.clone();
            }
        }
        // Fresh from when it was asked for, not from when the answer came.
        let asked = Instant::now();
        let mut learned = self.ask(token).await;
        if let (true, Ok(g)) = (self.ignore_prefix, &learned) {
            let widened = g
                .permissions()
                .iter()
                .map(|p| Permission {
                    prefix: String::new(),
                    ..p.clone()
                })
                .collect();
            learned = Ok(Arc::new(Grants::of(g.user().unwrap_or_default(), widened)));
        }
        // A node that could not be reached says nothing of the user: not kept.
        if learned
            .as_ref()
            .err()
            .is_none_or(|e| matches!(e.code, Code::Unauthenticated | Code::PermissionDenied))
        {
            *known = Some((asked, learned.clone()));
        }
        learned
    }

    /// A connection that logged in with a password keeps its rights for its life, as a
    /// node's RESP connection does, unless the user's epoch moves: the cache mints a
    /// short-lived token of (user, epoch) to ask about it.
    pub async fn session_grants(&self, key: &SessionKey, user: &str, epoch: u64) -> Learned {
        if !self.enabled() {
            return Ok(Arc::new(Grants::open()));
        }
        let token = short_token(key, user, epoch);
        let claims = Claims {
            user: user.to_string(),
            epoch,
            expires_ms: u64::MAX,
        };
        self.grants_of(&claims, &token).await
    }

    /// A node's login answer for `user` (`POST /v1/auth/token` on the cache, for its status
    /// page's sign-in): the token and when it expires (Unix ms).
    pub async fn node_login(
        &self,
        user: &str,
        password: &str,
    ) -> Result<(String, u64), TunekvError> {
        let mut last = TunekvError::new(Code::Unavailable, "no node to log in to");
        for node in &self.nodes {
            match node.login(user, password).await {
                Ok(issued) => return Ok(issued),
                Err(e) => {
                    last = to_error(e);
                    if !matches!(last.code, Code::Unavailable | Code::NoQuorum) {
                        break;
                    }
                }
            }
        }
        Err(last)
    }

    /// Logs `user` in on a node (RESP `AUTH user pass`): the claims of the token it issued.
    pub async fn password_login(
        &self,
        key: &SessionKey,
        user: &str,
        password: &str,
    ) -> Result<Claims, TunekvError> {
        let (token, _) = self.node_login(user, password).await?;
        auth::open_token(key, &token, wall_ms())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<(String, u64), Known>> {
        self.learned.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// `GET /v1/auth/whoami` with `token`, from the first node that answers.
    async fn ask(&self, token: &str) -> Learned {
        self.lookups
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let mut last = TunekvError::new(Code::Unavailable, "no node to ask");
        for node in &self.nodes {
            match node.whoami(Some(token)).await {
                Ok(v) => return grants_from(&v),
                Err(e) => {
                    last = to_error(e);
                    if last.code != Code::Unavailable {
                        return Err(last);
                    }
                }
            }
        }
        Err(TunekvError::new(
            Code::Unavailable,
            format!(
                "the cache cannot check the caller's rights: {}",
                last.message
            ),
        ))
    }
}

/// How long a token the cache mints for a logged-in RESP connection lives.
const MINTED_TTL_MS: u64 = 60_000;

/// A short-lived token of `user` at `epoch`, signed with the cluster secret the cache holds:
/// what a RESP connection that logged in with a password shows the nodes (its rights, its
/// writes). The epoch is the one the user had at login: revoking the user refuses it.
pub fn short_token(key: &SessionKey, user: &str, epoch: u64) -> String {
    auth::issue_token(
        key,
        &Claims {
            user: user.to_string(),
            epoch,
            expires_ms: wall_ms() + MINTED_TTL_MS,
        },
    )
}

/// Dropping entries needs write on each key named, or on every key under a prefix (`b""`:
/// the whole keyspace): whoever may change a key may make the cache forget it.
pub fn check_invalidate(
    grants: &Grants,
    ks: &str,
    keys: &[Vec<u8>],
    prefix: Option<&[u8]>,
) -> Result<(), TunekvError> {
    use tunekv_core::auth::Access;
    keys.iter()
        .try_for_each(|k| grants.check_key(ks, k, Access::Write))?;
    match prefix {
        // A key that starts with the prefix is covered when the prefix itself is.
        Some(p) if !grants.allows(ks, p, Access::Write) => Err(TunekvError::new(
            Code::PermissionDenied,
            format!(
                "user {} may not invalidate the keys starting with {} of keyspace {} (it needs \
                 write on all of them)",
                tunekv_core::code::echo_bytes(grants.user().unwrap_or_default().as_bytes()),
                tunekv_core::code::echo_bytes(p),
                tunekv_core::code::echo_bytes(ks.as_bytes()),
            ),
        )),
        _ => Ok(()),
    }
}

/// The grants in a `whoami` answer.
fn grants_from(v: &serde_json::Value) -> Learned {
    let bad = || {
        TunekvError::new(
            Code::Internal,
            format!("a node answered whoami unexpectedly: {v}"),
        )
    };
    if v["auth"] == serde_json::Value::Bool(false) {
        // The cluster runs open, but this cache was told it is secured: refuse rather than
        // guess whose rights apply.
        return Err(TunekvError::new(
            Code::Unavailable,
            "the cache has [auth] set but its cluster runs with auth off; remove [auth] from \
             the cache's config or turn auth on in the cluster",
        ));
    }
    let user = v["user"].as_str().ok_or_else(bad)?;
    let permissions: Vec<Permission> =
        serde_json::from_value(v["permissions"].clone()).map_err(|_| bad())?;
    Ok(Arc::new(Grants::of(user, permissions)))
}

fn to_error(e: ClientError) -> TunekvError {
    match e {
        ClientError::Api { code, message, .. } | ClientError::Invalid { code, message } => {
            TunekvError::new(Code::parse(&code).unwrap_or(Code::Internal), message)
        }
        ClientError::Transport(m) => TunekvError::new(Code::Unavailable, m),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn whoami_answers_become_grants_and_an_open_cluster_is_refused() {
        let v = serde_json::json!({"auth": true, "user": "ann", "permissions": [
            {"keyspace": "ks", "prefix": "a/", "access": "read"}]});
        let g = grants_from(&v).expect("grants");
        assert!(g.allows("ks", b"a/1", tunekv_core::auth::Access::Read));
        assert!(!g.allows("ks", b"b/1", tunekv_core::auth::Access::Read));
        let open = serde_json::json!({"auth": false, "user": null, "permissions": []});
        assert_eq!(grants_from(&open).unwrap_err().code, Code::Unavailable);
        let junk = serde_json::json!({"auth": true, "permissions": 3});
        assert_eq!(grants_from(&junk).unwrap_err().code, Code::Internal);
    }

    #[test]
    fn invalidating_needs_write_on_every_key_it_drops() {
        let g = Grants::of(
            "w",
            vec![Permission {
                keyspace: "ks".into(),
                prefix: "a/".into(),
                access: tunekv_core::auth::Access::Write,
            }],
        );
        assert!(check_invalidate(&g, "ks", &[b"a/1".to_vec()], None).is_ok());
        assert!(check_invalidate(&g, "ks", &[b"a/1".to_vec(), b"b".to_vec()], None).is_err());
        assert!(check_invalidate(&g, "ks", &[], Some(b"a/x")).is_ok());
        for p in [&b"a"[..], b"", b"b/"] {
            let e = check_invalidate(&g, "ks", &[], Some(p)).unwrap_err();
            assert_eq!(e.code, Code::PermissionDenied);
        }
        assert!(check_invalidate(&g, "other", &[], Some(b"a/")).is_err());
        assert!(check_invalidate(&Grants::open(), "ks", &[], Some(b"")).is_ok());
    }

    #[tokio::test]
    async fn callers_without_a_valid_token_are_refused_without_asking_a_node() {
        let auth = Auth {
            service: Some(Service {
                user: "cache".into(),
                password: "x".into(),
                slot: Arc::new(RwLock::new(None)),
                expires_ms: Default::default(),
            }),
            nodes: Vec::new(),
            learned: Mutex::new(HashMap::new()),
            swept: Mutex::new(Instant::now()),
            lookups: Default::default(),
            ignore_prefix: false,
        };
        let key = SessionKey::new(b"0123456789abcdef0123").expect("key");
        let other = SessionKey::new(b"another secret, 20+ chars").expect("key");
        let claims = Claims {
            user: "ann".into(),
            epoch: 1,
            expires_ms: wall_ms() + 60_000,
        };
        let expired = Claims {
            expires_ms: wall_ms() - 1,
            ..claims.clone()
        };
        for bearer in [
            None,
            Some("nonsense".to_string()),
            Some(auth::issue_token(&other, &claims)),
            Some(auth::issue_token(&key, &expired)),
        ] {
            let e = auth.caller(&key, bearer.as_deref()).await.unwrap_err();
            assert_eq!(e.code, Code::Unauthenticated, "{bearer:?}");
        }
        assert_eq!(auth.lookups.load(std::sync::atomic::Ordering::Relaxed), 0);
        // A valid token is asked about (no node here: unavailable, and not remembered).
        let good = auth::issue_token(&key, &claims);
        let e = auth.caller(&key, Some(&good)).await.unwrap_err();
        assert_eq!(e.code, Code::Unavailable);
        assert!(auth
            .lock()
            .values()
            .all(|k| k.try_lock().is_ok_and(|g| g.is_none())));
    }

    #[tokio::test]
    async fn stale_answers_are_swept_even_below_the_cap() {
        let auth = Auth::new(None, Vec::new()).expect("open auth");
        let answer = |age: Duration| -> Known {
            let learned: Learned = Ok(Arc::new(Grants::open()));
            Arc::new(tokio::sync::Mutex::new(Some((
                Instant::now() - age,
                learned,
            ))))
        };
        let old = ("gone".to_string(), 1);
        let fresh = ("kept".to_string(), 1);
        auth.lock()
            .insert(old.clone(), answer(Duration::from_secs(5)));
        auth.lock().insert(fresh.clone(), answer(Duration::ZERO));
        let claims = |user: &str| Claims {
            user: user.into(),
            epoch: 1,
            expires_ms: u64::MAX,
        };
        // No sweep is due yet: the stale answer stays.
        let _ = auth.grants_of(&claims("a"), "t").await;
        assert!(auth.lock().contains_key(&old));
        // A minute later the next caller sweeps it; the fresh one stays.
        *auth.swept.lock().expect("lock") = Instant::now() - GRANTS_SWEEP_EVERY;
        let _ = auth.grants_of(&claims("b"), "t").await;
        let map = auth.lock();
        assert!(!map.contains_key(&old), "a stale answer outlived the sweep");
        assert!(map.contains_key(&fresh));
    }
}
