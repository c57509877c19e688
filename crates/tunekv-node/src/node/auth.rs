//! Users, roles and tokens (docs/security.md): stored in the metadata group, so every node
//! knows them; a request's token is checked here against this node's copy.
//!
//! Revocation is bounded: a user's epoch is bumped through the metadata group, and a node
//! whose copy of it may be older than [`AUTH_STALE_MAX`] (no word from the metadata leader
//! that long) refuses every token instead of trusting it.

use super::leaderless::lock;
use super::*;
use tunekv_core::auth::{
    self, Access, Claims, Grants, Permission, Role, User, ROLES_PER_USER_MAX, ROOT_ROLE, ROOT_USER,
};

const USER_PREFIX: &[u8] = b"auth/user/";
const ROLE_PREFIX: &[u8] = b"auth/role/";
/// Users whose permissions a node keeps ready, each valid while the metadata is unchanged.
const GRANTS_CACHE_MAX: usize = 4096;
/// A node that has not heard from the metadata group's leader for this long cannot know
/// whether a token was revoked, and refuses tokens until it hears again.
pub const AUTH_STALE_MAX: Duration = Duration::from_secs(10);
/// Logins hashing at once: argon2id takes tens of ms of a core each; more wait their turn.
pub(super) const LOGINS_AT_ONCE: usize = 2;
/// Compare-and-set attempts of a user change racing another.
const USER_WRITE_TRIES: usize = 5;

/// A user's permissions, with the metadata applied index and user epoch they were read at.
pub(super) type CachedGrants = (u64, u64, Arc<Grants>);

/// A user as admins see it (never the hash).
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct UserView {
    pub name: String,
    pub roles: Vec<String>,
    /// Bumped whenever the password changes or tokens are revoked.
    pub epoch: u64,
}

/// A role as admins see it.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct RoleView {
    pub name: String,
    pub permissions: Vec<Permission>,
    /// Built in (root): it cannot be changed or deleted.
    pub builtin: bool,
}

/// What `PUT /v1/admin/users/{user}` sets: a new user needs a password; an existing one keeps
/// what is not given.
#[derive(Clone, Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UserChange {
    pub password: Option<String>,
    pub roles: Option<Vec<String>>,
}

/// A token issued at login.
#[derive(Clone, Debug, Serialize)]
pub struct Login {
    pub token: String,
    pub expires_ms: u64,
    /// The user's epoch the token carries (a RESP connection keeps it instead of the token).
    #[serde(skip)]
    pub epoch: u64,
}

fn unauthenticated(message: impl Into<String>) -> TunekvError {
    err(Code::Unauthenticated, message)
}

fn name_key(prefix: &[u8], name: &str) -> Vec<u8> {
    let mut k = prefix.to_vec();
    k.extend_from_slice(name.as_bytes());
    k
}

impl Node {
    pub fn auth_enabled(&self) -> bool {
        self.config.auth.enabled
    }

    /// A metadata entry's value and version as this node's copy has it.
    fn meta_entry(&self, key: &[u8]) -> Result<Option<(Vec<u8>, u64)>, TunekvError> {
        let meta = self.metadata();
        let v = meta.data.read().and_then(|view| view.get(key));
        Ok(v.map_err(internal)?.map(|v| (v.value, v.mod_index)))
    }

    fn meta_list(&self, prefix: &[u8]) -> Vec<(String, Vec<u8>)> {
        let meta = self.metadata();
        let listed = meta.data.read().and_then(|view| view.scan_prefix(prefix));
        match listed {
            Ok(listed) => listed
                .into_iter()
                .filter_map(|(k, v)| {
                    let name = std::str::from_utf8(k.get(prefix.len()..)?).ok()?;
                    Some((name.to_string(), v.value))
                })
                .collect(),
            Err(e) => {
                tracing::error!(error = %e, "cannot read users or roles");
                Vec::new()
            }
        }
    }

    /// A stored user and its version (0: none).
    fn stored_user(&self, name: &str) -> Result<(Option<User>, u64), TunekvError> {
        match self.meta_entry(&name_key(USER_PREFIX, name))? {
            None => Ok((None, 0)),
            Some((v, version)) => {
                let user = serde_json::from_slice(&v).map_err(internal)?;
                Ok((Some(user), version))
            }
        }
    }

    fn stored_role(&self, name: &str) -> Result<Option<Role>, TunekvError> {
        if name == ROOT_ROLE {
            return Ok(Some(Role::root()));
        }
        match self.meta_entry(&name_key(ROLE_PREFIX, name))? {
            None => Ok(None),
            Some((v, _)) => Ok(Some(serde_json::from_slice(&v).map_err(internal)?)),
        }
    }

    /// This node's copy of the metadata, brought up to the leader's (admin calls read what
    /// was written through any node a moment ago).
    async fn metadata_caught_up(&self, deadline: Instant) -> Result<(), TunekvError> {
        let index = self.read_index(GroupId::METADATA, deadline).await?;
        self.wait_applied(&self.metadata(), index, deadline).await
    }

    /// Who is asking: the permissions of the token's user, or every permission when auth is
    /// off. Missing, invalid, expired and revoked tokens are `unauthenticated`.
    pub fn authenticate(&self, bearer: Option<&str>) -> Result<Arc<Grants>, TunekvError> {
        if !self.auth_enabled() {
            return Ok(self.open_grants.clone());
        }
        let text = bearer.ok_or_else(|| {
            unauthenticated(
                "auth is on: send Authorization: Bearer TOKEN (POST /v1/auth/token issues one)",
            )
        })?;
        let claims = auth::open_token(&self.session_key, text, self.clock.wall_ms())?;
        self.grants_of(&claims)
    }

    /// A bearer token given where a password goes (RESP `AUTH [user] tkv1.…`): its claims, if
    /// it is valid now, its user still exists at the token's epoch, and (when `user` is named)
    /// it is that user's.
    pub fn token_login(&self, user: Option<&str>, token: &str) -> Result<Claims, TunekvError> {
        let claims = auth::open_token(&self.session_key, token, self.clock.wall_ms())?;
        if user.is_some_and(|u| u != claims.user) {
            return Err(unauthenticated("the token is another user's"));
        }
        self.grants_of(&claims)?;
        Ok(claims)
    }

    /// Unix ms now by this node's clock (token expiry is judged by it).
    pub fn wall_ms(&self) -> u64 {
        self.clock.wall_ms()
    }

    /// The permissions of a RESP connection that logged in as `user` at `epoch`: valid for
    /// the connection's life, unless the user is deleted or its epoch moves (revocation).
    pub fn session_grants(&self, user: &str, epoch: u64) -> Result<Arc<Grants>, TunekvError> {
        if !self.auth_enabled() {
            return Ok(self.open_grants.clone());
        }
        self.grants_of(&Claims {
            user: user.to_string(),
            epoch,
            expires_ms: u64::MAX,
        })
    }

    fn grants_of(&self, claims: &Claims) -> Result<Arc<Grants>, TunekvError> {
        let meta = self.metadata();
        if !self.metadata_fresh(&meta) {
            return Err(err(
                Code::Unavailable,
                format!(
                    "this node has not heard from the metadata group's leader for {} s and \
                     cannot tell whether a token was revoked; ask another node",
                    AUTH_STALE_MAX.as_secs()
                ),
            ));
        }
        let at = meta.data.applied().index;
        if let Some((seen, epoch, grants)) = lock(&self.grants_cache).get(&claims.user) {
            if *seen == at && at != 0 && *epoch == claims.epoch {
                return Ok(grants.clone());
            }
        }
        let (user, _) = self.stored_user(&claims.user)?;
        let user = user.ok_or_else(|| {
            unauthenticated(format!(
                "user {} no longer exists",
                tunekv_core::code::echo(&claims.user)
            ))
        })?;
        if user.epoch != claims.epoch {
            return Err(unauthenticated(
                "the token was revoked (the password changed or its tokens were revoked); log in again",
            ));
        }
        let mut permissions = Vec::new();
        for role in &user.roles {
            if let Some(r) = self.stored_role(role)? {
                permissions.extend(r.permissions);
            }
        }
        if self.config.bugs.auth_ignore_prefix() {
            permissions.iter_mut().for_each(|p| p.prefix.clear());
        }
        let grants = Arc::new(Grants::of(&claims.user, permissions));
        let mut cache = lock(&self.grants_cache);
        if cache.len() >= GRANTS_CACHE_MAX {
            cache.clear();
        }
        cache.insert(claims.user.clone(), (at, user.epoch, grants.clone()));
        Ok(grants)
    }

    /// Whether this node heard from the metadata leader within [`AUTH_STALE_MAX`] (or leads).
    fn metadata_fresh(&self, meta: &Group) -> bool {
        self.copy_state(meta)
            .contact_age
            .is_some_and(|age| age <= AUTH_STALE_MAX)
    }

    /// A hash no password matches, checked for unknown users so they take as long as known
    /// ones (made at the first such login, not at start: the simulator starts thousands).
    fn dummy_hash(&self) -> String {
        self.dummy_hash
            .get_or_init(|| {
                auth::hash_password(&format!("{:032x}", rand::random::<u128>())).unwrap_or_default()
            })
            .clone()
    }

    /// `POST /v1/auth/token`: a token for `user` if `password` is theirs. A wrong password and
    /// an unknown user get the same answer, after the same work.
    pub async fn login(
        &self,
        user: &str,
        password: &str,
        ttl_ms: Option<u64>,
    ) -> Result<Login, TunekvError> {
        if !self.auth_enabled() {
            return Err(err(
                Code::BadRequest,
                "auth is off on this cluster: requests need no token ([auth] enabled = true \
                 turns it on)",
            ));
        }
        auth::check_name("user", user)?;
        let deadline = Instant::now() + Duration::from_millis(self.config.read_wait_ms_default);
        let (mut stored, _) = self.stored_user(user)?;
        if stored.is_none() {
            // Created a moment ago through another node?
            self.metadata_caught_up(deadline).await?;
            stored = self.stored_user(user)?.0;
        }
        let hash = stored
            .as_ref()
            .map_or_else(|| self.dummy_hash(), |u| u.password_hash.clone());
        let _turn = self
            .login_gate
            .acquire()
            .await
            .map_err(|_| err(Code::Unavailable, "the node is stopping"))?;
        let password = password.to_string();
        let matches = tokio::task::spawn_blocking(move || auth::verify_password(&password, &hash))
            .await
            .map_err(internal)?;
        let Some(stored) = stored.filter(|_| matches) else {
            return Err(unauthenticated("wrong user name or password"));
        };
        let ttl = ttl_ms
            .unwrap_or(self.config.auth.token_ttl_ms)
            .clamp(1, self.config.auth.token_ttl_ms);
        let expires_ms = self.clock.wall_ms().saturating_add(ttl);
        let claims = Claims {
            user: user.to_string(),
            epoch: stored.epoch,
            expires_ms,
        };
        Ok(Login {
            token: auth::issue_token(&self.session_key, &claims),
            expires_ms,
            epoch: stored.epoch,
        })
    }

    pub fn list_users(&self) -> Vec<UserView> {
        self.meta_list(USER_PREFIX)
            .into_iter()
            .filter_map(|(name, v)| {
                let u: User = serde_json::from_slice(&v).ok()?;
                Some(UserView {
                    name,
                    roles: u.roles,
                    epoch: u.epoch,
                })
            })
            .collect()
    }

    pub async fn get_user(&self, name: &str) -> Result<UserView, TunekvError> {
        auth::check_name("user", name)?;
        let deadline = Instant::now() + Duration::from_millis(self.config.read_wait_ms_default);
        self.metadata_caught_up(deadline).await?;
        let (user, _) = self.stored_user(name)?;
        let u = user.ok_or_else(|| no_such("user", name))?;
        Ok(UserView {
            name: name.to_string(),
            roles: u.roles,
            epoch: u.epoch,
        })
    }

    pub fn list_roles(&self) -> Vec<RoleView> {
        let mut roles = vec![RoleView {
            name: ROOT_ROLE.into(),
            permissions: Role::root().permissions,
            builtin: true,
        }];
        roles.extend(
            self.meta_list(ROLE_PREFIX)
                .into_iter()
                .filter_map(|(name, v)| {
                    let r: Role = serde_json::from_slice(&v).ok()?;
                    Some(RoleView {
                        name,
                        permissions: r.permissions,
                        builtin: false,
                    })
                }),
        );
        roles
    }

    pub async fn get_role(&self, name: &str) -> Result<RoleView, TunekvError> {
        auth::check_name("role", name)?;
        let deadline = Instant::now() + Duration::from_millis(self.config.read_wait_ms_default);
        self.metadata_caught_up(deadline).await?;
        let r = self
            .stored_role(name)?
            .ok_or_else(|| no_such("role", name))?;
        Ok(RoleView {
            name: name.to_string(),
            permissions: r.permissions,
            builtin: name == ROOT_ROLE,
        })
    }

    /// Creates or replaces a role. Returns whether it was created.
    pub async fn put_role(&self, name: &str, role: Role) -> Result<bool, TunekvError> {
        auth::check_name("role", name)?;
        if name == ROOT_ROLE {
            return Err(err(
                Code::BadRequest,
                "the root role is built in and cannot change",
            ));
        }
        role.validate()?;
        let deadline = Instant::now() + Duration::from_millis(self.config.write_wait_ms_default);
        let key = name_key(ROLE_PREFIX, name);
        self.metadata_caught_up(deadline).await?;
        let existed = self.meta_entry(&key)?.is_some();
        let value = serde_json::to_vec(&role).map_err(internal)?;
        let w = self
            .propose(GroupId::METADATA, Op::Put { key, value }, deadline)
            .await?;
        self.wait_applied(&self.metadata(), w.index, deadline)
            .await?;
        Ok(!existed)
    }

    pub async fn delete_role(&self, name: &str) -> Result<(), TunekvError> {
        auth::check_name("role", name)?;
        if name == ROOT_ROLE {
            return Err(err(
                Code::BadRequest,
                "the root role is built in and cannot be deleted",
            ));
        }
        let deadline = Instant::now() + Duration::from_millis(self.config.write_wait_ms_default);
        self.metadata_caught_up(deadline).await?;
        let key = name_key(ROLE_PREFIX, name);
        if self.meta_entry(&key)?.is_none() {
            return Err(no_such("role", name));
        }
        // Users keep the name; a role that does not exist grants nothing (and a role of that
        // name created later grants again: revoke it from users first if that is not meant).
        let w = self
            .propose(GroupId::METADATA, Op::Delete { key }, deadline)
            .await?;
        self.wait_applied(&self.metadata(), w.index, deadline).await
    }

    /// Creates a user or changes its password and roles. A new password revokes the user's
    /// tokens. Returns the user and whether it was created.
    pub async fn put_user(
        &self,
        name: &str,
        change: UserChange,
    ) -> Result<(UserView, bool), TunekvError> {
        auth::check_name("user", name)?;
        if let Some(p) = &change.password {
            auth::check_password(p)?;
        }
        if let Some(roles) = &change.roles {
            if roles.len() > ROLES_PER_USER_MAX {
                return Err(err(
                    Code::BadRequest,
                    format!("a user has at most {ROLES_PER_USER_MAX} roles"),
                ));
            }
            for r in roles {
                auth::check_name("role", r)?;
            }
            if name == ROOT_USER && !roles.iter().any(|r| r == ROOT_ROLE) {
                return Err(err(Code::BadRequest, "user root keeps the root role"));
            }
        }
        // Hashed once here (slow on purpose), not per attempt below.
        let hash = match change.password.clone() {
            Some(p) => Some(
                tokio::task::spawn_blocking(move || auth::hash_password(&p))
                    .await
                    .map_err(internal)??,
            ),
            None => None,
        };
        let deadline = Instant::now() + Duration::from_millis(self.config.write_wait_ms_default);
        let key = name_key(USER_PREFIX, name);
        for _ in 0..USER_WRITE_TRIES {
            self.metadata_caught_up(deadline).await?;
            if let Some(roles) = &change.roles {
                for r in roles {
                    if self.stored_role(r)?.is_none() {
                        return Err(no_such("role", r));
                    }
                }
            }
            let (current, version) = self.stored_user(name)?;
            let created = current.is_none();
            let user = match current {
                None => User {
                    password_hash: hash
                        .clone()
                        .ok_or_else(|| err(Code::BadRequest, "a new user needs a password"))?,
                    roles: change.roles.clone().unwrap_or_default(),
                    epoch: 1,
                },
                Some(u) => User {
                    epoch: if hash.is_some() { u.epoch + 1 } else { u.epoch },
                    password_hash: hash.clone().unwrap_or(u.password_hash),
                    roles: change.roles.clone().unwrap_or(u.roles),
                },
            };
            if self.write_user(&key, version, &user, deadline).await? {
                return Ok((
                    UserView {
                        name: name.to_string(),
                        roles: user.roles,
                        epoch: user.epoch,
                    },
                    created,
                ));
            }
        }
        Err(err(
            Code::VersionMismatch,
            format!("user {name:?} kept changing under this update; try again"),
        ))
    }

    /// Adds (`grant`) or removes a role of a user, as one compare-and-set on the stored user:
    /// a concurrent change to the user is never lost (the change is made again on top of it).
    pub async fn change_user_role(
        &self,
        name: &str,
        role: &str,
        grant: bool,
    ) -> Result<UserView, TunekvError> {
        self.update_user(
            name,
            |user| {
                if grant && !user.roles.iter().any(|r| r == role) {
                    if user.roles.len() >= ROLES_PER_USER_MAX {
                        return Err(err(
                            Code::BadRequest,
                            format!("a user has at most {ROLES_PER_USER_MAX} roles"),
                        ));
                    }
                    user.roles.push(role.to_string());
                }
                if !grant {
                    if name == ROOT_USER && role == ROOT_ROLE {
                        return Err(err(Code::BadRequest, "user root keeps the root role"));
                    }
                    user.roles.retain(|r| r != role);
                }
                Ok(())
            },
            grant.then_some(role),
        )
        .await
    }

    /// Changes the stored user `name` with `change` as one compare-and-set, trying again on
    /// top of a concurrent change; `role_needed`: a role that must exist.
    async fn update_user(
        &self,
        name: &str,
        change: impl Fn(&mut User) -> Result<(), TunekvError>,
        role_needed: Option<&str>,
    ) -> Result<UserView, TunekvError> {
        auth::check_name("user", name)?;
        if let Some(r) = role_needed {
            auth::check_name("role", r)?;
        }
        let deadline = Instant::now() + Duration::from_millis(self.config.write_wait_ms_default);
        let key = name_key(USER_PREFIX, name);
        for _ in 0..USER_WRITE_TRIES {
            self.metadata_caught_up(deadline).await?;
            if let Some(r) = role_needed {
                if self.stored_role(r)?.is_none() {
                    return Err(no_such("role", r));
                }
            }
            let (user, version) = self.stored_user(name)?;
            let mut user = user.ok_or_else(|| no_such("user", name))?;
            change(&mut user)?;
            if self.write_user(&key, version, &user, deadline).await? {
                return Ok(UserView {
                    name: name.to_string(),
                    roles: user.roles,
                    epoch: user.epoch,
                });
            }
        }
        Err(err(
            Code::VersionMismatch,
            format!("user {name:?} kept changing under this update; try again"),
        ))
    }

    /// Ends every token of the user (bumps its epoch).
    pub async fn revoke_tokens(&self, name: &str) -> Result<UserView, TunekvError> {
        self.update_user(
            name,
            |user| {
                user.epoch += 1;
                Ok(())
            },
            None,
        )
        .await
    }

    pub async fn delete_user(&self, name: &str) -> Result<(), TunekvError> {
        auth::check_name("user", name)?;
        if name == ROOT_USER {
            return Err(err(Code::BadRequest, "user root cannot be deleted"));
        }
        let deadline = Instant::now() + Duration::from_millis(self.config.write_wait_ms_default);
        self.metadata_caught_up(deadline).await?;
        let key = name_key(USER_PREFIX, name);
        if self.meta_entry(&key)?.is_none() {
            return Err(no_such("user", name));
        }
        let w = self
            .propose(GroupId::METADATA, Op::Delete { key }, deadline)
            .await?;
        self.wait_applied(&self.metadata(), w.index, deadline).await
    }

    /// Writes `user` if its entry is still at `version`; false when it changed meanwhile.
    async fn write_user(
        &self,
        key: &[u8],
        version: u64,
        user: &User,
        deadline: Instant,
    ) -> Result<bool, TunekvError> {
        let op = Op::Txn {
            compare: vec![(key.to_vec(), tunekv_raft::Expect::Version(version))],
            success: vec![Op::Put {
                key: key.to_vec(),
                value: serde_json::to_vec(user).map_err(internal)?,
            }],
            failure: vec![],
        };
        let w = self.propose(GroupId::METADATA, op, deadline).await?;
        self.wait_applied(&self.metadata(), w.index, deadline)
            .await?;
        Ok(w.result.int == 1)
    }

    /// With auth on, creates user `root` (role root) from the configured password hash once,
    /// when the cluster has no root user yet.
    pub(super) async fn auth_bootstrap_loop(self: Arc<Self>) {
        let Some(hash) = self.config.auth.root_password_hash.clone() else {
            return;
        };
        if !self.auth_enabled() {
            return;
        }
        let key = name_key(USER_PREFIX, ROOT_USER);
        loop {
            if matches!(self.stored_user(ROOT_USER), Ok((Some(_), _))) {
                return;
            }
            let deadline = Instant::now() + Duration::from_secs(5);
            let root = User {
                password_hash: hash.clone(),
                roles: vec![ROOT_ROLE.into()],
                epoch: 1,
            };
            match self.write_user(&key, 0, &root, deadline).await {
                Ok(true) => {
                    tracing::info!("auth: created user root from auth.root_password_hash");
                    return;
                }
                Ok(false) => return,
                Err(e) => tracing::debug!(error = %e, "auth: root user not created yet"),
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }

    /// Which rights each op of a transaction needs: reads for what it compares or returns,
    /// writes for what it changes.
    pub fn txn_needs(
        compare: &[(Vec<u8>, tunekv_raft::Expect)],
        success: &[Op],
        failure: &[Op],
    ) -> Vec<(Vec<u8>, Access)> {
        let mut needs: Vec<(Vec<u8>, Access)> = compare
            .iter()
            .map(|(k, _)| (k.clone(), Access::Read))
            .collect();
        for op in success.iter().chain(failure) {
            needs.extend(op_needs(op));
        }
        needs
    }
}

/// The rights one op needs, key by key.
pub fn op_needs(op: &Op) -> Vec<(Vec<u8>, Access)> {
    let rw = |k: &Vec<u8>| vec![(k.clone(), Access::Read), (k.clone(), Access::Write)];
    let w = |k: &Vec<u8>| vec![(k.clone(), Access::Write)];
    match op {
        Op::Get { key } => vec![(key.clone(), Access::Read)],
        Op::Set { key, get, .. } | Op::SetIf { key, get, .. } => {
            if *get {
                rw(key)
            } else {
                w(key)
            }
        }
        // Each answers with the key's value.
        Op::GetDel { key } | Op::IncrBy { key, .. } => rw(key),
        Op::Put { key, .. }
        | Op::PutIfAbsent { key, .. }
        | Op::Delete { key }
        | Op::Append { key, .. }
        | Op::Expire { key, .. } => w(key),
        Op::MSet { pairs } => pairs.iter().flat_map(|(k, _)| w(k)).collect(),
        Op::Sweep { keys } => keys.iter().flat_map(w).collect(),
        Op::Txn {
            compare,
            success,
            failure,
        } => Node::txn_needs(compare, success, failure),
    }
}

/// Each user's request budget on this node (`user_requests_per_s`).
pub(super) type UserLimiter = governor::DefaultKeyedRateLimiter<String>;

/// A per-second rate with bursts of one second's worth; None for 0 (no limit).
pub fn quota(per_s: u32) -> Option<governor::Quota> {
    std::num::NonZeroU32::new(per_s).map(governor::Quota::per_second)
}

/// One open watch of a user, counted until dropped (`watches_per_user_max`).
pub struct WatchSlot {
    node: std::sync::Weak<Node>,
    user: String,
}

impl Drop for WatchSlot {
    fn drop(&mut self) {
        if let Some(node) = self.node.upgrade() {
            let mut counts = lock(&node.watch_counts);
            if let Some(n) = counts.get_mut(&self.user) {
                *n = n.saturating_sub(1);
                if *n == 0 {
                    counts.remove(&self.user);
                }
            }
        }
    }
}

impl Node {
    /// Counts one request of the caller against `user_requests_per_s`; `rate_limited` over it.
    pub fn admit(&self, grants: &Grants) -> Result<(), TunekvError> {
        let (Some(limiter), Some(user)) = (&self.user_limiter, grants.user()) else {
            return Ok(());
        };
        if limiter.check_key(&user.to_string()).is_ok() {
            return Ok(());
        }
        // Keys of users who stopped sending are dropped now and then (the map stays small).
        if limiter.len() > 4096 {
            limiter.retain_recent();
        }
        Err(err(
            Code::RateLimited,
            format!(
                "user {} sends more than user_requests_per_s ({}) to this node; slow down",
                tunekv_core::code::echo(user),
                self.config.user_requests_per_s
            ),
        ))
    }

    /// A slot for one more open watch of the caller, or `rate_limited` at
    /// `watches_per_user_max` (auth off: no user, no cap).
    pub fn watch_slot(&self, grants: &Grants) -> Result<Option<WatchSlot>, TunekvError> {
        let Some(user) = grants.user() else {
            return Ok(None);
        };
        let mut counts = lock(&self.watch_counts);
        let n = counts.entry(user.to_string()).or_default();
        if *n >= self.config.watches_per_user_max {
            return Err(err(
                Code::RateLimited,
                format!(
                    "user {} already holds {} watches on this node (watches_per_user_max); \
                     close one first",
                    tunekv_core::code::echo(user),
                    *n
                ),
            ));
        }
        *n += 1;
        Ok(Some(WatchSlot {
            node: self.me.get().cloned().unwrap_or_default(),
            user: user.to_string(),
        }))
    }
}

fn no_such(what: &str, name: &str) -> TunekvError {
    err(
        Code::NotFound,
        format!("no {what} {}", tunekv_core::code::echo(name)),
    )
}
