//! Auth (issue 22): tokens, roles on keyspaces and prefixes, checks on every HTTP route and
//! RESP command, revocation cluster-wide. Real node processes on 127.0.0.1.

mod common;

use common::raw::{bulk, Raw, R};
use common::{call_as, eventually, start_secure, TestCluster};
use serde_json::json;
use std::time::Duration;

/// Creates a user with `roles` through node 1 as root and logs it in: its token.
async fn user_with(c: &TestCluster, name: &str, roles: &[&str]) -> String {
    let root = c.token.clone();
    let body = json!({"password": format!("{name}-password"), "roles": roles}).to_string();
    let (s, b) = call_as(
        root.as_deref(),
        "PUT",
        &format!("{}/v1/admin/users/{name}", c.http(0)),
        &body,
    )
    .await;
    assert!(s == 201 || s == 200, "create user {name}: {s} {b}");
    let (s, b) = call_as(
        None,
        "POST",
        &format!("{}/v1/auth/token", c.http(1)),
        &json!({"user": name, "password": format!("{name}-password")}).to_string(),
    )
    .await;
    assert_eq!(s, 200, "login {name}: {b}");
    b["token"].as_str().expect("token").to_string()
}

async fn role(c: &TestCluster, name: &str, permissions: serde_json::Value) {
    let (s, b) = call_as(
        c.token.as_deref(),
        "PUT",
        &format!("{}/v1/admin/roles/{name}", c.http(0)),
        &json!({ "permissions": permissions }).to_string(),
    )
    .await;
    assert!(s == 201 || s == 200, "role {name}: {s} {b}");
}

/// Every route: (method, path, body, what a user with no rights gets: 403, or 200-ish for the
/// routes any authenticated user may call).
fn routes() -> Vec<(&'static str, &'static str, &'static str, bool)> {
    vec![
        ("GET", "/", "", true),
        ("GET", "/metrics", "", true),
        ("GET", "/v1/slo", "", true),
        ("GET", "/v1/cluster", "", true),
        ("GET", "/v1/clock", "", true),
        ("GET", "/v1/node", "", true),
        ("GET", "/v1/admin/nodes", "", true),
        ("GET", "/v1/auth/whoami", "", true),
        ("GET", "/v1/keyspaces", "", true),
        ("GET", "/v1/keyspaces/ks", "", false),
        (
            "PUT",
            "/v1/keyspaces/other",
            r#"{"mode":"ordered","shards":1,"replicas":3}"#,
            false,
        ),
        ("GET", "/v1/kv/ks:read-index?shard=0", "", false),
        ("GET", "/v1/kv/ks:scan", "", false),
        ("GET", "/v1/kv/ks/a%2F1", "", false),
        ("PUT", "/v1/kv/ks/a%2F1", "v", false),
        ("DELETE", "/v1/kv/ks/a%2F1", "", false),
        ("POST", "/v1/kv/ks:batch-get", r#"{"keys":["a/1"]}"#, false),
        (
            "POST",
            "/v1/kv/ks:txn",
            r#"{"compare":[],"success":[{"op":"put","key":"a/1","value":"x"}],"failure":[]}"#,
            false,
        ),
        ("GET", "/v1/watch/ks", "", false),
        ("POST", "/v1/admin/faults", r#"{"clear":true}"#, false),
        (
            "POST",
            "/v1/admin/nodes",
            r#"{"id":9,"raft":"127.0.0.1:1","http":"127.0.0.1:2"}"#,
            false,
        ),
        ("DELETE", "/v1/admin/nodes/3", "", false),
        ("GET", "/v1/admin/backup/ks/0", "", false),
        ("POST", "/v1/admin/restore/ks", "", false),
        ("GET", "/v1/admin/users", "", false),
        (
            "PUT",
            "/v1/admin/users/eve",
            r#"{"password":"eve-password"}"#,
            false,
        ),
        ("DELETE", "/v1/admin/users/nobody", "", false),
        ("POST", "/v1/admin/users/nobody:revoke-tokens", "", false),
        ("GET", "/v1/admin/roles", "", false),
        ("PUT", "/v1/admin/roles/x", r#"{"permissions":[]}"#, false),
        ("DELETE", "/v1/admin/roles/x", "", false),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_route_needs_a_token_and_the_right() {
    let c = start_secure(3).await;
    common::create_keyspace(&c.client(0), "ks", 2).await;
    let nobody = user_with(&c, "nobody", &[]).await;
    for (method, path, body, open) in routes() {
        let url = format!("{}{path}", c.http(1));
        let (s, b) = call_as(None, method, &url, body).await;
        assert_eq!(s, 401, "{method} {path} without a token: {b}");
        assert_eq!(b["error"]["code"], "unauthenticated", "{method} {path}");
        let (s, b) = call_as(Some("tkv1.00ff"), method, &url, body).await;
        assert_eq!(s, 401, "{method} {path} with a forged token: {b}");
        let (s, b) = call_as(Some(&nobody), method, &url, body).await;
        if open {
            assert!(s < 300, "{method} {path} as a user without rights: {s} {b}");
        } else {
            assert_eq!(s, 403, "{method} {path} as a user without rights: {b}");
            assert_eq!(b["error"]["code"], "permission_denied", "{method} {path}");
        }
    }
    // The keyspace list shows only keyspaces the caller holds rights on.
    let (_, b) = call_as(
        Some(&nobody),
        "GET",
        &format!("{}/v1/keyspaces", c.http(0)),
        "",
    )
    .await;
    assert_eq!(b["keyspaces"], json!([]), "{b}");
    // Wrong passwords and unknown users get the same answer.
    for (user, password) in [("nobody", "wrong-password"), ("ghost", "nobody-password")] {
        let (s, b) = call_as(
            None,
            "POST",
            &format!("{}/v1/auth/token", c.http(0)),
            &json!({"user": user, "password": password}).to_string(),
        )
        .await;
        assert_eq!(s, 401, "{b}");
        assert_eq!(b["error"]["message"], "wrong user name or password");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prefix_users_see_only_their_keys_and_write_only_cannot_read() {
    let c = start_secure(3).await;
    common::create_keyspace(&c.client(0), "ks", 2).await;
    let root = c.client(0);
    for k in ["a/1", "a/2", "b/1", "b/2"] {
        root.put("ks", k.as_bytes(), b"v", &tunekv_client::Opts::default())
            .await
            .expect("put as root");
    }
    role(
        &c,
        "a-reader",
        json!([{"keyspace": "ks", "prefix": "a/", "access": "read"}]),
    )
    .await;
    role(
        &c,
        "b-writer",
        json!([{"keyspace": "ks", "prefix": "b/", "access": "write"}]),
    )
    .await;
    let reader = user_with(&c, "reader", &["a-reader"]).await;
    let writer = user_with(&c, "writer", &["b-writer"]).await;
    let h = c.http(2);
    let get = |tok: String, key: &'static str| {
        let url = format!("{h}/v1/kv/ks/{key}");
        async move { call_as(Some(&tok), "GET", &url, "").await.0 }
    };
    assert_eq!(get(reader.clone(), "a%2F1").await, 200);
    assert_eq!(get(reader.clone(), "b%2F1").await, 403);
    // Write-only never reads (redis#10159).
    assert_eq!(get(writer.clone(), "b%2F1").await, 403);
    let (s, _) = call_as(Some(&writer), "PUT", &format!("{h}/v1/kv/ks/b%2F3"), "w").await;
    assert_eq!(s, 200);
    let (s, _) = call_as(Some(&writer), "PUT", &format!("{h}/v1/kv/ks/a%2F3"), "w").await;
    assert_eq!(s, 403);
    let (s, _) = call_as(Some(&reader), "PUT", &format!("{h}/v1/kv/ks/a%2F3"), "w").await;
    assert_eq!(s, 403, "read-only writes nothing");
    // A scan of the whole keyspace lists only a/ keys, every page.
    let mut keys = Vec::new();
    let mut cursor = 0u64;
    loop {
        let (s, b) = call_as(
            Some(&reader),
            "GET",
            &format!("{h}/v1/kv/ks:scan?cursor={cursor}&count=2"),
            "",
        )
        .await;
        assert_eq!(s, 200, "{b}");
        keys.extend(
            b["keys"]
                .as_array()
                .expect("keys")
                .iter()
                .map(|k| k.as_str().unwrap_or_default().to_string()),
        );
        cursor = b["cursor"].as_u64().expect("cursor");
        if cursor == 0 {
            break;
        }
    }
    keys.sort();
    assert_eq!(keys, ["a/1", "a/2"]);
    // A batch-get naming one key outside the prefix is refused whole.
    let (s, _) = call_as(
        Some(&reader),
        "POST",
        &format!("{h}/v1/kv/ks:batch-get"),
        r#"{"keys":["a/1","b/1"]}"#,
    )
    .await;
    assert_eq!(s, 403);
    // A watch of the whole keyspace delivers only a/ changes.
    let watcher = tunekv_client::Client::new(&c.http(1)).with_token(Some(reader.clone()));
    let mut feed = watcher.watch("ks", "").await.expect("watch as reader");
    for k in ["b/9", "a/9"] {
        root.put("ks", k.as_bytes(), b"new", &tunekv_client::Opts::default())
            .await
            .expect("put");
    }
    let first = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match feed.next().await {
                Some(Ok(tunekv_client::WatchEvent::Change { key, .. })) => return key,
                Some(Ok(_)) => continue,
                other => panic!("the watch ended: {other:?}"),
            }
        }
    })
    .await
    .expect("a change within 10 s");
    assert_eq!(first, "a/9", "b/9 must never reach the a/ reader");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoked_tokens_stop_working_on_every_node() {
    let c = start_secure(3).await;
    common::create_keyspace(&c.client(0), "ks", 1).await;
    role(&c, "all", json!([{"keyspace": "ks", "access": "read"}])).await;
    let token = user_with(&c, "alice", &["all"]).await;
    for i in 0..3 {
        let (s, b) = call_as(
            Some(&token),
            "GET",
            &format!("{}/v1/kv/ks/k", c.http(i)),
            "",
        )
        .await;
        assert_eq!(s, 404, "node {}: {b}", i + 1);
    }
    let (s, b) = call_as(
        c.token.as_deref(),
        "POST",
        &format!("{}/v1/admin/users/alice:revoke-tokens", c.http(0)),
        "",
    )
    .await;
    assert_eq!(s, 200, "{b}");
    for i in 0..3 {
        let url = format!("{}/v1/kv/ks/k", c.http(i));
        let t = token.clone();
        eventually(
            Duration::from_secs(5),
            "the revoked token is refused",
            || {
                let (t, url) = (t.clone(), url.clone());
                async move { (call_as(Some(&t), "GET", &url, "").await.0 == 401).then_some(()) }
            },
        )
        .await;
    }
    // A RESP connection logged in as alice is cut off too.
    let mut r = Raw::connect(c.configs[0].resp.as_deref().expect("resp"));
    assert!(matches!(r.cmd(&["GET", "k"]), R::Error(e) if e.starts_with("NOAUTH")));
    assert!(
        matches!(r.cmd(&["AUTH", "alice", "wrong-password"]), R::Error(e) if e.starts_with("WRONGPASS"))
    );
    assert_eq!(
        r.cmd(&["AUTH", "alice", "alice-password"]),
        R::Simple("OK".into())
    );
    let (s, _) = call_as(
        c.token.as_deref(),
        "DELETE",
        &format!("{}/v1/admin/users/alice", c.http(1)),
        "",
    )
    .await;
    assert_eq!(s, 204);
    eventually(
        Duration::from_secs(5),
        "a deleted user's connection is refused",
        || {
            let reply = r.cmd(&["SELECT", "0"]);
            async move { matches!(reply, R::Error(e) if e.starts_with("NOAUTH")).then_some(()) }
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resp_needs_auth_and_checks_every_key() {
    let c = start_secure(3).await;
    role(
        &c,
        "db0-a",
        json!([{"keyspace": "db0", "prefix": "a:", "access": "read"},
               {"keyspace": "db0", "prefix": "a:", "access": "write"}]),
    )
    .await;
    user_with(&c, "ann", &["db0-a"]).await;
    let addr = c.configs[1].resp.clone().expect("resp");
    let mut root = Raw::connect(&addr);
    let creds = c.credentials().expect("creds").expect("auth on");
    assert!(matches!(root.cmd(&["PING"]), R::Error(e) if e.starts_with("NOAUTH")));
    assert!(matches!(root.cmd(&["HELLO", "3"]), R::Error(e) if e.starts_with("NOAUTH")));
    let hello = root.cmd(&["HELLO", "3", "AUTH", "root", &creds.password]);
    assert!(matches!(hello, R::Array(_)), "{hello:?}");
    assert_eq!(root.cmd(&["SET", "b:1", "x"]), R::Simple("OK".into()));
    let mut ann = Raw::connect(&addr);
    assert!(matches!(ann.cmd(&["SET", "a:1", "x"]), R::Error(e) if e.starts_with("NOAUTH")));
    assert_eq!(
        ann.cmd(&["AUTH", "ann", "ann-password"]),
        R::Simple("OK".into())
    );
    assert_eq!(ann.cmd(&["SET", "a:1", "x"]), R::Simple("OK".into()));
    assert_eq!(ann.cmd(&["GET", "a:1"]), bulk("x"));
    let denied = ann.cmd(&["GET", "b:1"]);
    assert_eq!(
        denied,
        R::Error("NOPERM User ann has no permissions to access the 'b:1' key".into())
    );
    assert!(matches!(ann.cmd(&["MGET", "a:1", "b:1"]), R::Error(e) if e.starts_with("NOPERM")));
    assert!(matches!(ann.cmd(&["DEL", "b:1"]), R::Error(e) if e.starts_with("NOPERM")));
    // Whole-keyspace reads and change feeds need the whole keyspace.
    for cmd in [
        vec!["SCAN", "0"],
        vec!["KEYS", "*"],
        vec!["DBSIZE"],
        vec!["CLIENT", "TRACKING", "on", "BCAST"],
        vec!["SUBSCRIBE", "__keyspace@0__:b:1"],
    ] {
        let reply = ann.cmd(&cmd);
        assert!(
            matches!(&reply, R::Error(e) if e.starts_with("NOPERM")),
            "{cmd:?}: {reply:?}"
        );
    }
    // Refused inside MULTI too, and the transaction is spoiled.
    assert_eq!(ann.cmd(&["MULTI"]), R::Simple("OK".into()));
    assert!(matches!(ann.cmd(&["SET", "b:2", "y"]), R::Error(e) if e.starts_with("NOPERM")));
    assert!(matches!(ann.cmd(&["EXEC"]), R::Error(e) if e.starts_with("EXECABORT")));
    assert_eq!(root.cmd(&["GET", "b:2"]), R::Bulk(None));
}
