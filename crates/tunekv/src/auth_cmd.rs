//! `tunekv login`, `tunekv user …`, `tunekv role …` (docs/security.md).

use anyhow::{bail, Context, Result};
use clap::Subcommand;
use reqwest::Method;
use serde_json::{json, Value};
use std::path::PathBuf;
use tunekv_client::Client;

#[derive(Subcommand)]
pub enum UserCmd {
    /// Create a user (its password from --password-file, or TUNEKV_PASSWORD).
    Add {
        name: String,
        /// Roles to give it (repeatable).
        #[arg(long = "role")]
        roles: Vec<String>,
        #[command(flatten)]
        password: Password,
    },
    /// Give a user a role.
    Grant { name: String, role: String },
    /// Take a role from a user.
    Revoke { name: String, role: String },
    /// Set a user's password (ends its tokens).
    Passwd {
        name: String,
        #[command(flatten)]
        password: Password,
    },
    /// End every token of a user now, cluster-wide.
    RevokeTokens { name: String },
    /// Show one user, or all.
    Get { name: Option<String> },
    /// Delete a user.
    Delete { name: String },
}

#[derive(Subcommand)]
pub enum RoleCmd {
    /// Create or replace a role: each --permission is KEYSPACE:ACCESS or
    /// KEYSPACE:PREFIX:ACCESS (ACCESS: read, write or admin; KEYSPACE `*`: every keyspace).
    Put {
        name: String,
        #[arg(long = "permission", required = true)]
        permissions: Vec<String>,
    },
    /// Show one role, or all.
    Get { name: Option<String> },
    /// Delete a role.
    Delete { name: String },
}

#[derive(clap::Args)]
pub struct Password {
    /// A file holding the password (its first line).
    #[arg(long)]
    password_file: Option<PathBuf>,
}

impl Password {
    fn read(&self) -> Result<String> {
        if let Some(path) = &self.password_file {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("cannot read {}", path.display()))?;
            return Ok(text.lines().next().unwrap_or_default().to_string());
        }
        std::env::var("TUNEKV_PASSWORD")
            .context("give the password with --password-file FILE or TUNEKV_PASSWORD")
    }
}

/// `KEYSPACE:ACCESS` or `KEYSPACE:PREFIX:ACCESS` as a permission's JSON.
pub fn parse_permission(text: &str) -> Result<Value> {
    let parts: Vec<&str> = text.splitn(3, ':').collect();
    let (ks, prefix, access) = match parts.as_slice() {
        [ks, access] => (*ks, "", *access),
        [ks, prefix, access] => (*ks, *prefix, *access),
        _ => bail!("a permission is KEYSPACE:ACCESS or KEYSPACE:PREFIX:ACCESS, got {text:?}"),
    };
    tunekv_core::auth::Access::parse(access).map_err(anyhow::Error::msg)?;
    Ok(json!({"keyspace": ks, "prefix": prefix, "access": access}))
}

fn print(v: &Value) -> i32 {
    println!("{}", serde_json::to_string_pretty(v).unwrap_or_default());
    0
}

fn done(r: tunekv_client::Result<Value>) -> Result<i32> {
    match r {
        Ok(v) if v.is_null() => {
            println!("OK");
            Ok(0)
        }
        Ok(v) => Ok(print(&v)),
        Err(e) => {
            eprintln!("error: {e}");
            Ok(2)
        }
    }
}

fn seg(name: &str) -> String {
    tunekv_client::encode_key(name.as_bytes())
}

pub async fn user(node: &str, cmd: UserCmd) -> Result<i32> {
    let c = Client::new(node);
    let r = match cmd {
        UserCmd::Add {
            name,
            roles,
            password,
        } => {
            let body = json!({"password": password.read()?, "roles": roles});
            c.admin(
                Method::PUT,
                &format!("/v1/admin/users/{}", seg(&name)),
                Some(body),
            )
            .await
        }
        UserCmd::Passwd { name, password } => {
            let body = json!({"password": password.read()?});
            c.admin(
                Method::PUT,
                &format!("/v1/admin/users/{}", seg(&name)),
                Some(body),
            )
            .await
        }
        UserCmd::Grant { name, role } => change_role(&c, &name, role, true).await,
        UserCmd::Revoke { name, role } => change_role(&c, &name, role, false).await,
        UserCmd::RevokeTokens { name } => {
            c.admin(
                Method::POST,
                &format!("/v1/admin/users/{}:revoke-tokens", seg(&name)),
                None,
            )
            .await
        }
        UserCmd::Get { name: Some(name) } => {
            c.admin(
                Method::GET,
                &format!("/v1/admin/users/{}", seg(&name)),
                None,
            )
            .await
        }
        UserCmd::Get { name: None } => c.admin(Method::GET, "/v1/admin/users", None).await,
        UserCmd::Delete { name } => {
            c.admin(
                Method::DELETE,
                &format!("/v1/admin/users/{}", seg(&name)),
                None,
            )
            .await
        }
    };
    done(r)
}

/// Adds or removes one role of a user (one compare-and-set on the node: a concurrent change
/// to the user is kept).
async fn change_role(
    c: &Client,
    name: &str,
    role: String,
    grant: bool,
) -> tunekv_client::Result<Value> {
    let action = if grant { "grant" } else { "revoke" };
    let path = format!("/v1/admin/users/{}:{action}", seg(name));
    c.admin(Method::POST, &path, Some(json!({ "role": role })))
        .await
}

pub async fn role(node: &str, cmd: RoleCmd) -> Result<i32> {
    let c = Client::new(node);
    let r = match cmd {
        RoleCmd::Put { name, permissions } => {
            let permissions = permissions
                .iter()
                .map(|p| parse_permission(p))
                .collect::<Result<Vec<_>>>()?;
            c.admin(
                Method::PUT,
                &format!("/v1/admin/roles/{}", seg(&name)),
                Some(json!({ "permissions": permissions })),
            )
            .await
        }
        RoleCmd::Get { name: Some(name) } => {
            c.admin(
                Method::GET,
                &format!("/v1/admin/roles/{}", seg(&name)),
                None,
            )
            .await
        }
        RoleCmd::Get { name: None } => c.admin(Method::GET, "/v1/admin/roles", None).await,
        RoleCmd::Delete { name } => {
            c.admin(
                Method::DELETE,
                &format!("/v1/admin/roles/{}", seg(&name)),
                None,
            )
            .await
        }
    };
    done(r)
}

/// `tunekv login`: prints a token for `export TUNEKV_TOKEN=$(tunekv login …)`.
pub async fn login(node: &str, credentials: Option<PathBuf>, user: Option<String>) -> Result<i32> {
    let (user, password) = match (credentials, user) {
        (Some(path), _) => {
            let text = std::fs::read_to_string(&path)
                .with_context(|| format!("cannot read {}", path.display()))?;
            let c: tunekv::local_cluster::Credentials = serde_json::from_str(&text)
                .with_context(|| format!("{} is not {{\"user\",\"password\"}}", path.display()))?;
            (c.user, c.password)
        }
        (None, Some(user)) => {
            let password = std::env::var("TUNEKV_PASSWORD")
                .context("give the password in TUNEKV_PASSWORD (or use --credentials FILE)")?;
            (user, password)
        }
        (None, None) => {
            bail!("give --credentials FILE (tunekv dev --auth writes one) or --user NAME")
        }
    };
    match Client::new(node).login(&user, &password).await {
        Ok((token, _)) => {
            println!("{token}");
            Ok(0)
        }
        Err(e) => {
            eprintln!("error: {e}");
            Ok(2)
        }
    }
}
