//! `ACL WHOAMI | USERS | LIST | SETUSER | DELUSER | LOG` mapped onto tunekv's users and roles
//! (docs/security.md). Redis's key patterns map onto prefix permissions on the connection's
//! keyspace: `~p*` read and write, `%R~p*` read, `%W~p*` write, `allkeys` = `~*`. `ACL SETUSER`
//! keeps them in a role named `acl.USER` that the user holds; command categories are not
//! restricted (only `+@all`-like rules are taken).

use super::{text, typed, Args, CommandSpec, Handler, Kind, Pending};
use crate::conn::{Conn, Shared};
use crate::reply::Reply;
use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::Instant;
use tunekv_core::auth::{Access, Permission, Role, ANY_KEYSPACE};

pub(crate) const SPECS: &[CommandSpec] = &[CommandSpec::new(
    ("acl", -2),
    Kind::Connection,
    (0, 0, 0),
    (
        "server",
        "ACL WHOAMI, USERS, LIST, SETUSER, DELUSER, LOG: users and their key rights on this \
         keyspace (docs/security.md).",
    ),
    Handler::Later(acl),
)];

/// Denials `ACL LOG` keeps per node (the oldest go first).
const LOG_MAX: usize = 128;

/// One refused command or login, as `ACL LOG` shows it.
pub(crate) struct Denial {
    id: u64,
    at: Instant,
    created_ms: u64,
    /// `auth`, `command` or `key`.
    reason: &'static str,
    /// `toplevel` or `multi`.
    context: &'static str,
    object: String,
    user: String,
    client: String,
}

/// The node's ACL log.
#[derive(Default)]
pub(crate) struct AclLog {
    entries: Mutex<(u64, VecDeque<Denial>)>,
}

impl AclLog {
    pub(crate) fn record(&self, conn: &Conn, reason: &'static str, object: &str, user: &str) {
        let mut e = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        e.0 += 1;
        let id = e.0;
        if e.1.len() >= LOG_MAX {
            e.1.pop_front();
        }
        e.1.push_back(Denial {
            id,
            at: Instant::now(),
            created_ms: super::now_ms(),
            reason,
            context: if conn.multi.is_some() {
                "multi"
            } else {
                "toplevel"
            },
            object: object.chars().take(128).collect(),
            user: user.chars().take(64).collect(),
            client: super::connection::client_line(conn).trim_end().to_string(),
        });
    }

    fn reset(&self) {
        self.entries
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .1
            .clear();
    }

    fn newest(&self, count: usize) -> Vec<Reply> {
        let e = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        e.1.iter()
            .rev()
            .take(count)
            .map(|d| {
                let pair = |k: &str, v: Reply| [Reply::bulk(k), v];
                Reply::Map(
                    [
                        pair("count", Reply::Int(1)),
                        pair("reason", Reply::bulk(d.reason)),
                        pair("context", Reply::bulk(d.context)),
                        pair("object", Reply::bulk(d.object.as_str())),
                        pair("username", Reply::bulk(d.user.as_str())),
                        pair(
                            "age-seconds",
                            Reply::bulk(format!("{:.3}", d.at.elapsed().as_secs_f64())),
                        ),
                        pair("client-info", Reply::bulk(d.client.as_str())),
                        pair("entry-id", Reply::Int(d.id as i64)),
                        pair("timestamp-created", Reply::Int(d.created_ms as i64)),
                        pair("timestamp-last-updated", Reply::Int(d.created_ms as i64)),
                    ]
                    .into_iter()
                    .map(|[k, v]| (k, v))
                    .collect(),
                )
            })
            .collect()
    }
}

/// The role `ACL SETUSER` keeps a user's key patterns in.
fn acl_role(user: &str) -> String {
    format!("acl.{user}")
}

/// A Redis key pattern as a key prefix: `*` or `prefix*` (no other glob).
fn pattern_prefix(pattern: &str) -> Result<String, Reply> {
    match pattern.strip_suffix('*') {
        Some(p) if !p.contains(['*', '?', '[', '\\']) => Ok(p.to_string()),
        _ => Err(Reply::err(format!(
            "Error in ACL SETUSER modifier '~{pattern}': tunekv grants keys by prefix, so a \
             pattern is * or PREFIX*"
        ))),
    }
}

/// Cluster admin, or the reply refusing `what`.
fn admin(shared: &Shared, conn: &Conn, what: &str) -> Result<(), Reply> {
    if !shared.node.auth_enabled() {
        return Ok(());
    }
    let grants = super::access::grants(shared, conn)?;
    grants.check_cluster_admin(what).map_err(|_| {
        Reply::Error(format!(
            "NOPERM User {} has no permissions to run the 'acl|{what}' command",
            grants.user().unwrap_or_default()
        ))
    })
}

/// Redis rules for the permissions of `role` that apply to keyspace `ks`.
fn rules(role: &Role, ks: &str) -> Vec<String> {
    role.permissions
        .iter()
        .filter(|p| p.keyspace == ks || p.keyspace == ANY_KEYSPACE)
        .map(|p| {
            let sel = match p.access {
                Access::Read => "%R~",
                Access::Write => "%W~",
                Access::Admin => "~",
            };
            format!("{sel}{}*", p.prefix)
        })
        .collect()
}

fn acl<'a>(shared: &'a Shared, conn: &'a mut Conn, mut a: Args<'a>) -> Pending<'a> {
    Box::pin(async move {
        let sub = a.text()?.to_ascii_lowercase();
        let node = &shared.node;
        let auth = node.auth_enabled();
        match sub.as_str() {
            "whoami" => Ok(Reply::bulk(
                conn.login
                    .as_ref()
                    .map_or("default", |l| l.user.as_str())
                    .to_string(),
            )),
            "users" => {
                admin(shared, conn, "users")?;
                if !auth {
                    return Ok(Reply::Array(vec![Reply::bulk("default")]));
                }
                Ok(Reply::Array(
                    node.list_users()
                        .into_iter()
                        .map(|u| Reply::bulk(u.name))
                        .collect(),
                ))
            }
            "list" => {
                admin(shared, conn, "list")?;
                if !auth {
                    return Ok(Reply::Array(vec![Reply::bulk(
                        "user default on nopass sanitize-payload ~* &* +@all",
                    )]));
                }
                let roles = node.list_roles();
                let mut lines = Vec::new();
                for u in node.list_users() {
                    let mut line = format!("user {} on #<argon2id> resetchannels &*", u.name);
                    for r in roles.iter().filter(|r| u.roles.contains(&r.name)) {
                        let role = Role {
                            permissions: r.permissions.clone(),
                        };
                        for rule in rules(&role, &conn.keyspace) {
                            line.push(' ');
                            line.push_str(&rule);
                        }
                    }
                    line.push_str(" +@all");
                    lines.push(Reply::bulk(line));
                }
                Ok(Reply::Array(lines))
            }
            "setuser" => {
                admin(shared, conn, "setuser")?;
                if !auth {
                    return Err(Reply::err(
                        "auth is off on this node: users need [auth] enabled = true",
                    ));
                }
                let user = a.text()?;
                setuser(shared, conn, &user, &mut a).await
            }
            "deluser" => {
                admin(shared, conn, "deluser")?;
                let mut deleted = 0;
                while let Some(name) = a.next_opt() {
                    let name = text(name);
                    match node.delete_user(&name).await {
                        Ok(()) => deleted += 1,
                        Err(e) if e.code == tunekv_core::Code::NotFound => {}
                        Err(e) => return Err(typed(e)),
                    }
                    let _ = node.delete_role(&acl_role(&name)).await;
                }
                Ok(Reply::Int(deleted))
            }
            "log" => {
                admin(shared, conn, "log")?;
                match a.next_opt().map(|v| text(v).to_ascii_lowercase()) {
                    Some(r) if r == "reset" => {
                        shared.acl_log.reset();
                        Ok(Reply::ok())
                    }
                    Some(n) => {
                        let n = n
                            .parse::<usize>()
                            .map_err(|_| Reply::err("value is out of range, must be positive"))?;
                        Ok(Reply::Array(shared.acl_log.newest(n)))
                    }
                    None => Ok(Reply::Array(shared.acl_log.newest(10))),
                }
            }
            other => Err(Reply::err(format!(
                "unknown subcommand '{}'. Try ACL WHOAMI, USERS, LIST, SETUSER, DELUSER, LOG.",
                other.chars().take(64).collect::<String>()
            ))),
        }
    })
}

/// `ACL SETUSER user rule…` on the connection's keyspace.
async fn setuser(
    shared: &Shared,
    conn: &Conn,
    user: &str,
    a: &mut Args<'_>,
) -> Result<Reply, Reply> {
    let node = &shared.node;
    let ks = conn.keyspace.clone();
    let role_name = acl_role(user);
    let mut role = node
        .get_role(&role_name)
        .await
        .map(|r| Role {
            permissions: r.permissions,
        })
        .unwrap_or_default();
    let mut password = None;
    let add = |prefix: String, access: Access, role: &mut Role| {
        let p = Permission {
            keyspace: ks.clone(),
            prefix,
            access,
        };
        if !role.permissions.contains(&p) {
            role.permissions.push(p);
        }
    };
    while let Some(rule) = a.next_opt() {
        let rule = text(rule);
        let lower = rule.to_ascii_lowercase();
        if let Some(p) = rule.strip_prefix('>') {
            password = Some(p.to_string());
        } else if let Some(p) = rule.strip_prefix("%RW~") {
            add(pattern_prefix(p)?, Access::Read, &mut role);
            add(pattern_prefix(p)?, Access::Write, &mut role);
        } else if let Some(p) = rule.strip_prefix("%R~") {
            add(pattern_prefix(p)?, Access::Read, &mut role);
        } else if let Some(p) = rule.strip_prefix("%W~") {
            add(pattern_prefix(p)?, Access::Write, &mut role);
        } else if let Some(p) = rule.strip_prefix('~') {
            add(pattern_prefix(p)?, Access::Read, &mut role);
            add(pattern_prefix(p)?, Access::Write, &mut role);
        } else if lower == "allkeys" {
            add(String::new(), Access::Read, &mut role);
            add(String::new(), Access::Write, &mut role);
        } else if lower == "resetkeys" {
            role.permissions.retain(|p| p.keyspace != ks);
        } else if matches!(
            lower.as_str(),
            "on" | "+@all" | "allcommands" | "allchannels" | "&*" | "resetchannels"
        ) {
        } else {
            return Err(Reply::err(format!(
                "Error in ACL SETUSER modifier '{}': tunekv maps ACL rules onto roles and takes \
                 on, >password, ~PREFIX*, %R~PREFIX*, %W~PREFIX*, %RW~PREFIX*, allkeys, \
                 resetkeys, +@all, allcommands, allchannels, resetchannels",
                rule.chars().take(64).collect::<String>()
            )));
        }
    }
    node.put_role(&role_name, role).await.map_err(typed)?;
    let existing = node.get_user(user).await.ok();
    let mut roles = existing.map(|u| u.roles).unwrap_or_default();
    if !roles.contains(&role_name) {
        roles.push(role_name);
    }
    let change = tunekv_node::UserChange {
        password,
        roles: Some(roles),
    };
    node.put_user(user, change).await.map_err(typed)?;
    Ok(Reply::ok())
}
