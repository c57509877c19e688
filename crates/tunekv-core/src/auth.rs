//! Who may do what: users, roles and their permissions, bearer tokens, and the checks every
//! request path makes (docs/security.md).
//!
//! A role grants `read`, `write` or `admin` on a keyspace (`*`: every keyspace), optionally
//! only on keys that start with a prefix. `write` does not imply `read` (a write-only right must
//! never pass a read: redis#10159); `admin` implies both, and with no prefix it also covers the
//! keyspace itself (create, backup, restore). Admin on `*` with no prefix is cluster admin:
//! users, roles, nodes and the fault hook.
//!
//! Passwords are hashed with argon2id once, at login (and when set); requests carry a short
//! token signed with the cluster secret, checked with one HMAC and a map lookup (etcd hashed
//! on every request and paid ~140 ms each: etcd#3223). Tokens have a bounded lifetime and are
//! revoked by bumping their user's epoch.

use crate::code::{echo, echo_bytes, Code, TunekvError};
use crate::session::SessionKey;
use serde::{Deserialize, Serialize};

/// A right a permission grants.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Access {
    Read,
    Write,
    Admin,
}

impl Access {
    /// Whether a permission granting `self` allows an action that needs `need`.
    pub fn covers(self, need: Access) -> bool {
        self == need || self == Access::Admin
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Access::Read => "read",
            Access::Write => "write",
            Access::Admin => "admin",
        }
    }

    pub fn parse(s: &str) -> Result<Access, TunekvError> {
        match s {
            "read" => Ok(Access::Read),
            "write" => Ok(Access::Write),
            "admin" => Ok(Access::Admin),
            other => Err(bad(format!(
                "unknown access {}: one of read, write, admin",
                echo(other)
            ))),
        }
    }
}

/// The keyspace name a permission uses for "every keyspace".
pub const ANY_KEYSPACE: &str = "*";
/// The built-in role of cluster admins (admin on every keyspace); it cannot be changed.
pub const ROOT_ROLE: &str = "root";
/// The built-in cluster admin user; it cannot be deleted or lose the root role.
pub const ROOT_USER: &str = "root";
/// The longest user or role name.
pub const NAME_CHARS_MAX: usize = 64;
/// The most permissions one role may hold, and the most roles one user may have.
pub const PERMISSIONS_MAX: usize = 256;
pub const ROLES_PER_USER_MAX: usize = 64;
/// The longest key prefix a permission may name, in bytes.
pub const PREFIX_BYTES_MAX: usize = 1024;
/// Password length bounds, in bytes.
pub const PASSWORD_BYTES_MIN: usize = 8;
pub const PASSWORD_BYTES_MAX: usize = 1024;
/// How long a token lives unless the login asks for less, and the longest it may live: a short
/// life bounds what a leaked token can do and how much a node remembers (etcd#22338).
pub const TOKEN_TTL_MS_DEFAULT: u64 = 15 * 60 * 1000;
pub const TOKEN_TTL_MS_MAX: u64 = 24 * 60 * 60 * 1000;
/// Token text longer than this is refused unread.
pub const TOKEN_CHARS_MAX: usize = 1024;
pub(crate) const TOKEN_DOMAIN: &[u8] = b"tunekv auth token v1";
pub(crate) const TOKEN_PREFIX: &str = "tkv1.";

fn bad(message: String) -> TunekvError {
    TunekvError::new(Code::BadRequest, message)
}

/// One right: `access` on `keyspace` (or every keyspace), on keys starting with `prefix`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Permission {
    pub keyspace: String,
    /// Empty: every key of the keyspace.
    #[serde(default)]
    pub prefix: String,
    pub access: Access,
}

impl Permission {
    fn on_keyspace(&self, ks: &str) -> bool {
        self.keyspace == ANY_KEYSPACE || self.keyspace == ks
    }

    /// Whether this permission lets its holder do `need` on `key` of `ks`.
    pub fn allows(&self, ks: &str, key: &[u8], need: Access) -> bool {
        self.on_keyspace(ks) && self.access.covers(need) && key.starts_with(self.prefix.as_bytes())
    }
}

/// A named set of permissions (stored in the metadata group).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Role {
    pub permissions: Vec<Permission>,
}

impl Role {
    /// The root role: admin on every keyspace.
    pub fn root() -> Role {
        Role {
            permissions: vec![Permission {
                keyspace: ANY_KEYSPACE.into(),
                prefix: String::new(),
                access: Access::Admin,
            }],
        }
    }

    pub fn validate(&self) -> Result<(), TunekvError> {
        if self.permissions.len() > PERMISSIONS_MAX {
            return Err(bad(format!(
                "a role holds at most {PERMISSIONS_MAX} permissions"
            )));
        }
        for p in &self.permissions {
            if p.keyspace != ANY_KEYSPACE {
                crate::limits::check_keyspace_name(&p.keyspace)?;
            }
            if p.prefix.len() > PREFIX_BYTES_MAX {
                return Err(bad(format!(
                    "a permission's prefix is at most {PREFIX_BYTES_MAX} bytes"
                )));
            }
        }
        Ok(())
    }
}

/// A user as stored: the argon2id hash of the password (a PHC string), the role names, and
/// the epoch every token of the user carries (bumped to revoke them all).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct User {
    pub password_hash: String,
    pub roles: Vec<String>,
    pub epoch: u64,
}

/// A user or role name: 1 to 64 characters of `A-Z a-z 0-9 _ . -`.
pub fn check_name(what: &str, name: &str) -> Result<(), TunekvError> {
    let ok = !name.is_empty()
        && name.len() <= NAME_CHARS_MAX
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(bad(format!(
            "invalid {what} name {}: 1 to {NAME_CHARS_MAX} characters of A-Z a-z 0-9 _ . -",
            echo(name)
        )))
    }
}

pub fn check_password(password: &str) -> Result<(), TunekvError> {
    if (PASSWORD_BYTES_MIN..=PASSWORD_BYTES_MAX).contains(&password.len()) {
        Ok(())
    } else {
        Err(bad(format!(
            "a password has {PASSWORD_BYTES_MIN} to {PASSWORD_BYTES_MAX} bytes"
        )))
    }
}

/// The argon2id hash of `password` (PHC string, random salt). Slow on purpose (tens of ms):
/// only at login and when a password is set.
pub fn hash_password(password: &str) -> Result<String, TunekvError> {
    use argon2::password_hash::{PasswordHasher, SaltString};
    check_password(password)?;
    let salt = SaltString::generate(&mut rand::rngs::OsRng);
    argon2::Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| TunekvError::new(Code::Internal, format!("cannot hash a password: {e}")))
}

/// Whether `password` matches `hash` (a PHC string from [`hash_password`]).
pub fn verify_password(password: &str, hash: &str) -> bool {
    use argon2::password_hash::{PasswordHash, PasswordVerifier};
    if password.len() > PASSWORD_BYTES_MAX {
        return false;
    }
    PasswordHash::new(hash).is_ok_and(|parsed| {
        argon2::Argon2::default()
            .verify_password(password.as_bytes(), &parsed)
            .is_ok()
    })
}

/// What a token says: who, at which epoch of the user, until when (Unix ms).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    pub user: String,
    pub epoch: u64,
    pub expires_ms: u64,
}

fn unauthenticated(why: impl std::fmt::Display) -> TunekvError {
    TunekvError::new(Code::Unauthenticated, why.to_string())
}

/// The bearer token text of `claims`, signed with the cluster secret.
pub fn issue_token(key: &SessionKey, claims: &Claims) -> String {
    // Serializing a string and integers into a Vec cannot fail.
    let body = postcard::to_stdvec(claims).unwrap_or_default();
    format!("{TOKEN_PREFIX}{}", key.seal(TOKEN_DOMAIN, &body))
}

/// The claims of a token this cluster signed that has not expired at `now_ms`; anything else
/// is `unauthenticated` (the user's epoch is the caller's to check).
pub fn open_token(key: &SessionKey, text: &str, now_ms: u64) -> Result<Claims, TunekvError> {
    let sealed = text
        .trim()
        .strip_prefix(TOKEN_PREFIX)
        .ok_or_else(|| unauthenticated("not a tunekv token (POST /v1/auth/token issues them)"))?;
    let body = key
        .open(TOKEN_DOMAIN, sealed, TOKEN_CHARS_MAX)
        .map_err(|why| unauthenticated(format!("invalid token: {why}")))?;
    let claims: Claims =
        postcard::from_bytes(&body).map_err(|_| unauthenticated("invalid token: unreadable"))?;
    if claims.expires_ms <= now_ms {
        return Err(unauthenticated(format!(
            "the token of user {} expired; log in again",
            echo(&claims.user)
        )));
    }
    Ok(claims)
}

/// How much of a key range (a scan's or a watch's prefix) a caller may read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RangeRight {
    /// Every key of the range.
    All,
    /// Only some keys: each must pass [`Grants::allows`].
    Some,
    /// None of them.
    None,
}

/// Everything a caller may do: the permissions of all its roles, or everything when auth is
/// off.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Grants {
    /// None: auth is off, everything is allowed.
    user: Option<String>,
    permissions: Vec<Permission>,
}

impl Grants {
    /// Auth is off: every check passes.
    pub fn open() -> Grants {
        Grants {
            user: None,
            permissions: Vec::new(),
        }
    }

    /// No one yet (a login in progress): every check fails.
    pub fn nobody() -> Grants {
        Grants::of("", Vec::new())
    }

    pub fn of(user: &str, permissions: Vec<Permission>) -> Grants {
        Grants {
            user: Some(user.to_string()),
            permissions,
        }
    }

    /// The user's name; None when auth is off.
    pub fn user(&self) -> Option<&str> {
        self.user.as_deref()
    }

    pub fn permissions(&self) -> &[Permission] {
        &self.permissions
    }

    pub fn is_open(&self) -> bool {
        self.user.is_none()
    }

    fn denied(&self, what: String) -> TunekvError {
        TunekvError::new(
            Code::PermissionDenied,
            format!(
                "user {} may not {what}",
                echo(self.user.as_deref().unwrap_or_default())
            ),
        )
    }

    pub fn allows(&self, ks: &str, key: &[u8], need: Access) -> bool {
        self.is_open() || self.permissions.iter().any(|p| p.allows(ks, key, need))
    }

    /// `need` on `key`, or `permission_denied`.
    pub fn check_key(&self, ks: &str, key: &[u8], need: Access) -> Result<(), TunekvError> {
        if self.allows(ks, key, need) {
            Ok(())
        } else {
            Err(self.denied(format!(
                "{} key {} of keyspace {}",
                need.as_str(),
                echo_bytes(key),
                echo(ks)
            )))
        }
    }

    /// How much of the keys starting with `prefix` the caller may read.
    pub fn range(&self, ks: &str, prefix: &[u8]) -> RangeRight {
        if self.is_open() {
            return RangeRight::All;
        }
        let readable = self
            .permissions
            .iter()
            .filter(|p| p.on_keyspace(ks) && p.access.covers(Access::Read));
        let mut some = false;
        for p in readable {
            if prefix.starts_with(p.prefix.as_bytes()) {
                return RangeRight::All;
            }
            some |= p.prefix.as_bytes().starts_with(prefix);
        }
        if some {
            RangeRight::Some
        } else {
            RangeRight::None
        }
    }

    /// Reading (some of) the keys starting with `prefix`, or `permission_denied`.
    pub fn check_range(&self, ks: &str, prefix: &[u8]) -> Result<RangeRight, TunekvError> {
        match self.range(ks, prefix) {
            RangeRight::None => Err(self.denied(format!(
                "read keys starting with {} of keyspace {}",
                echo_bytes(prefix),
                echo(ks)
            ))),
            right => Ok(right),
        }
    }

    /// Whether the caller holds any right on keyspace `ks` (it may then see its spec).
    pub fn touches_keyspace(&self, ks: &str) -> bool {
        self.is_open() || self.permissions.iter().any(|p| p.on_keyspace(ks))
    }

    /// Admin on the whole keyspace (create, backup, restore), or `permission_denied`.
    pub fn check_keyspace_admin(&self, ks: &str) -> Result<(), TunekvError> {
        let ok = self.is_open()
            || self
                .permissions
                .iter()
                .any(|p| p.on_keyspace(ks) && p.access == Access::Admin && p.prefix.is_empty());
        if ok {
            Ok(())
        } else {
            Err(self.denied(format!("administer keyspace {}", echo(ks))))
        }
    }

    /// Cluster admin (users, roles, nodes, faults), or `permission_denied`.
    pub fn check_cluster_admin(&self, what: &str) -> Result<(), TunekvError> {
        let ok = self.is_open()
            || self.permissions.iter().any(|p| {
                p.keyspace == ANY_KEYSPACE && p.access == Access::Admin && p.prefix.is_empty()
            });
        if ok {
            Ok(())
        } else {
            Err(self.denied(format!("{what} (cluster admin only)")))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn perm(ks: &str, prefix: &str, access: Access) -> Permission {
        Permission {
            keyspace: ks.into(),
            prefix: prefix.into(),
            access,
        }
    }

    #[test]
    fn write_does_not_imply_read_and_admin_implies_both() {
        let g = Grants::of("w", vec![perm("ks", "", Access::Write)]);
        assert!(g.allows("ks", b"k", Access::Write));
        assert!(!g.allows("ks", b"k", Access::Read));
        assert_eq!(g.range("ks", b""), RangeRight::None);
        let a = Grants::of("a", vec![perm("ks", "", Access::Admin)]);
        assert!(a.allows("ks", b"k", Access::Read) && a.allows("ks", b"k", Access::Write));
        assert!(!a.allows("other", b"k", Access::Read));
        assert!(a.check_keyspace_admin("ks").is_ok());
        assert_eq!(
            a.check_cluster_admin("add a node").unwrap_err().code,
            Code::PermissionDenied
        );
    }

    #[test]
    fn prefixes_restrict_keys_and_ranges() {
        let g = Grants::of(
            "p",
            vec![
                perm("ks", "a/", Access::Read),
                perm("*", "pub/", Access::Read),
            ],
        );
        assert!(g.allows("ks", b"a/1", Access::Read));
        assert!(!g.allows("ks", b"b/1", Access::Read));
        assert!(g.allows("any", b"pub/x", Access::Read));
        assert_eq!(g.range("ks", b"a/x"), RangeRight::All);
        assert_eq!(g.range("ks", b""), RangeRight::Some);
        assert_eq!(g.range("ks", b"a"), RangeRight::Some);
        assert_eq!(g.range("ks", b"b"), RangeRight::None);
        assert!(g.check_keyspace_admin("ks").is_err());
        let admin_prefix = Grants::of("ap", vec![perm("ks", "a/", Access::Admin)]);
        assert!(admin_prefix.check_keyspace_admin("ks").is_err());
        assert!(Grants::open().check_cluster_admin("x").is_ok());
        assert!(Grants::of("root", Role::root().permissions)
            .check_cluster_admin("x")
            .is_ok());
    }

    #[test]
    fn tokens_expire_and_cannot_be_forged() {
        let key = SessionKey::new(b"0123456789abcdef0123").unwrap();
        let claims = Claims {
            user: "alice".into(),
            epoch: 3,
            expires_ms: 2_000,
        };
        let t = issue_token(&key, &claims);
        assert_eq!(open_token(&key, &t, 1_000).unwrap(), claims);
        assert_eq!(
            open_token(&key, &t, 2_000).unwrap_err().code,
            Code::Unauthenticated
        );
        let other = SessionKey::new(b"another secret of 20").unwrap();
        assert!(open_token(&other, &t, 1_000).is_err());
        let mut flipped = t.clone().into_bytes();
        let last = flipped.len() - 1;
        flipped[last] = if flipped[last] == b'0' { b'1' } else { b'0' };
        assert!(open_token(&key, std::str::from_utf8(&flipped).unwrap(), 1_000).is_err());
        assert!(open_token(&key, "Basic abc", 1_000).is_err());
        // A session token or causal context sealed by the same key is not a login.
        let sealed = key.seal(b"tunekv causal context", b"alice");
        assert!(open_token(&key, &format!("{TOKEN_PREFIX}{sealed}"), 1_000).is_err());
    }

    #[test]
    fn passwords_hash_and_verify() {
        let h = hash_password("correct horse").unwrap();
        assert!(h.starts_with("$argon2id$"));
        assert!(verify_password("correct horse", &h));
        assert!(!verify_password("wrong horse", &h));
        assert!(!verify_password("correct horse", "not a hash"));
        assert_eq!(hash_password("short").unwrap_err().code, Code::BadRequest);
    }

    #[test]
    fn names_and_roles_are_checked() {
        assert!(check_name("user", "alice.b-1_x").is_ok());
        assert!(check_name("user", "").is_err());
        assert!(check_name("user", "a b").is_err());
        assert!(check_name("user", &"x".repeat(65)).is_err());
        assert!(Role {
            permissions: vec![perm("bad name!", "", Access::Read)]
        }
        .validate()
        .is_err());
        assert!(Role::root().validate().is_ok());
        assert_eq!(Access::parse("delete").unwrap_err().code, Code::BadRequest);
    }
}
