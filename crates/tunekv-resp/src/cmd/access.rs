//! Who may run what over RESP when the node has auth on (docs/security.md): `AUTH user pass`
//! (or `HELLO 3 AUTH user pass`) first, `-NOAUTH` before it; then every command's keys are
//! checked against the user's permissions on the selected keyspace, `-NOPERM` as Redis words
//! it. The check reads the command table (kind and key positions), so a new command is
//! covered by its entry.

use super::{CommandSpec, Kind};
use crate::conn::{Conn, Shared};
use crate::reply::Reply;
use tunekv_core::auth::{Access, Grants, RangeRight};
use tunekv_core::Code;

/// Commands a connection may send before it authenticates.
const BEFORE_AUTH: &[&str] = &["auth", "hello", "quit", "reset"];

/// Write commands whose reply carries the key's value (or a value derived from it): they need
/// read as well as write (a write-only right must never pass a read: redis#10159).
const WRITES_THAT_READ: &[&str] = &[
    "getset",
    "getdel",
    "getex",
    "incr",
    "incrby",
    "decr",
    "decrby",
    "incrbyfloat",
    "hincrby",
    "hincrbyfloat",
    "spop",
    "lpop",
    "rpop",
    "append",
    "setrange",
];

/// Connection commands that deliver key names as they change (tracking invalidations,
/// keyspace notifications): for users who may read some keys of the keyspace; each key name is
/// then delivered only to connections whose user may read it (`push::Hub::may_see`).
const FEEDS: &[&str] = &["subscribe", "psubscribe", "ssubscribe", "client"];

pub(crate) fn noauth() -> Reply {
    Reply::Error("NOAUTH Authentication required.".into())
}

pub(crate) fn noperm_key(user: &str, key: &[u8]) -> Reply {
    Reply::Error(format!(
        "NOPERM User {user} has no permissions to access the '{}' key",
        String::from_utf8_lossy(&key[..key.len().min(128)])
    ))
}

fn noperm_command(user: &str, name: &str, why: &str) -> Reply {
    Reply::Error(format!(
        "NOPERM User {user} has no permissions to run the '{name}' command{why}"
    ))
}

/// The caller's permissions now (the user's epoch re-checked, so a revoked or deleted user
/// is cut off at its next command), or the error reply.
pub(crate) fn grants(shared: &Shared, conn: &Conn) -> Result<std::sync::Arc<Grants>, Reply> {
    let Some(login) = &conn.login else {
        return Err(noauth());
    };
    login.grants(&shared.node).map_err(|e| match e.code {
        Code::Unauthenticated => Reply::Error(format!("NOAUTH {} (AUTH again)", e.message)),
        _ => super::typed(e),
    })
}

/// The caller's rights for filtering keys (SCAN, KEYS), or None when auth is off.
pub(crate) fn readable(
    shared: &Shared,
    conn: &Conn,
) -> Result<Option<std::sync::Arc<Grants>>, Reply> {
    if !shared.node.auth_enabled() {
        return Ok(None);
    }
    grants(shared, conn).map(Some)
}

/// `Ok` when the connection may run `spec` with `args`; else the reply to send instead.
pub(crate) fn check(
    shared: &Shared,
    conn: &Conn,
    spec: &CommandSpec,
    args: &[Vec<u8>],
) -> Result<(), Reply> {
    if !shared.node.auth_enabled() || BEFORE_AUTH.contains(&spec.name) {
        return Ok(());
    }
    let grants = grants(shared, conn)?;
    shared.node.admit(&grants).map_err(super::typed)?;
    let user = grants.user().unwrap_or_default().to_string();
    let ks = conn.keyspace.as_str();
    let log = &shared.acl_log;
    let refuse_command = |why: &str| {
        log.record(conn, "command", spec.name, &user);
        noperm_command(&user, spec.name, why)
    };
    let refuse_key = |key: &[u8]| {
        log.record(conn, "key", &String::from_utf8_lossy(key), &user);
        noperm_key(&user, key)
    };
    match spec.kind {
        Kind::Connection => {
            let feed = FEEDS.contains(&spec.name)
                && (spec.name != "client"
                    || args
                        .get(1)
                        .is_some_and(|a| a.eq_ignore_ascii_case(b"tracking")));
            if feed && grants.range(ks, b"") == RangeRight::None {
                return Err(refuse_command(
                    " (change feeds need read on some keys of the keyspace)",
                ));
            }
            // CONFIG SET changes this node's settings for every connection.
            let config_set = spec.name == "config"
                && args.get(1).is_some_and(|a| a.eq_ignore_ascii_case(b"set"));
            if config_set && grants.check_cluster_admin("config set").is_err() {
                return Err(refuse_command(" (cluster admins only)"));
            }
            Ok(())
        }
        Kind::Read | Kind::Write => {
            let keys = key_args(spec, args);
            if spec.name == "exec" {
                // Each queued op is checked again as EXEC runs it (transactions::exec).
                return Ok(());
            }
            if keys.is_empty() {
                // SCAN and KEYS list only the keys the user may read (`readable`); DBSIZE
                // counts every key, so it needs them all.
                let ok = match (spec.kind, spec.name) {
                    (Kind::Read, "scan" | "keys") => grants.range(ks, b"") != RangeRight::None,
                    (Kind::Read, _) => grants.range(ks, b"") == RangeRight::All,
                    _ => grants.check_keyspace_admin(ks).is_ok(),
                };
                if !ok {
                    return Err(refuse_command(" (it spans the whole keyspace)"));
                }
                return Ok(());
            }
            let reads = spec.kind == Kind::Read
                || WRITES_THAT_READ.contains(&spec.name)
                || (spec.name == "set"
                    && args.iter().skip(3).any(|a| a.eq_ignore_ascii_case(b"get")));
            for key in keys {
                if reads && !grants.allows(ks, key, Access::Read) {
                    return Err(refuse_key(key));
                }
                if spec.kind == Kind::Write && !grants.allows(ks, key, Access::Write) {
                    return Err(refuse_key(key));
                }
            }
            Ok(())
        }
    }
}

/// The key arguments of a command, from its table entry's positions.
fn key_args<'a>(spec: &CommandSpec, args: &'a [Vec<u8>]) -> Vec<&'a [u8]> {
    let (first, last, step) = spec.keys;
    if first <= 0 || step <= 0 {
        return Vec::new();
    }
    let n = args.len() as i64;
    let last = if last < 0 { n + last } else { last.min(n - 1) };
    (first..=last)
        .step_by(step as usize)
        .filter_map(|i| args.get(i as usize).map(Vec::as_slice))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Data commands without key arguments are checked against the whole keyspace (or, for
    /// EXEC, each queued op again): a new one must be placed here on purpose.
    #[test]
    fn keyless_data_commands_are_known() {
        let keyless: Vec<_> = super::super::sorted()
            .into_iter()
            .filter(|s| s.kind != Kind::Connection && s.keys.0 <= 0)
            .map(|s| (s.name, s.kind))
            .collect();
        assert_eq!(
            keyless,
            [
                ("dbsize", Kind::Read),
                ("exec", Kind::Write),
                ("keys", Kind::Read),
                ("scan", Kind::Read)
            ]
        );
    }
}
