//! Auth (issue 22): tokens, roles on keyspaces and prefixes, checks on every HTTP route and
//! RESP command, revocation cluster-wide. Real node processes on 127.0.0.1.

mod common;

use common::raw::{bulk, Raw, R};
use common::{call_as, eventually, start_secure, start_tls, TestCluster};
use serde_json::json;
use std::time::Duration;

/// Every string in a reply, flattened (bulk strings as text).
fn texts(r: &R) -> String {
    match r {
        R::Simple(s) | R::Error(s) => s.clone(),
        R::Int(i) => i.to_string(),
        R::Bulk(Some(b)) => String::from_utf8_lossy(b).into_owned(),
        R::Bulk(None) | R::NullArray => String::new(),
        R::Array(items) | R::Push(items) => items.iter().map(texts).collect::<Vec<_>>().join(" | "),
    }
}

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
        (
            "POST",
            "/v1/admin/users/nobody:grant",
            r#"{"role":"root"}"#,
            false,
        ),
        (
            "POST",
            "/v1/admin/users/nobody:revoke",
            r#"{"role":"root"}"#,
            false,
        ),
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
    // Without credentials the body is never read: a client announcing 10 MB and sending
    // none of it is answered 401 at once.
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let addr = c.http(0).trim_start_matches("http://").to_string();
    let mut s = tokio::net::TcpStream::connect(&addr)
        .await
        .expect("connect");
    s.write_all(b"PUT /v1/kv/ks/k HTTP/1.1\r\nhost: t\r\ncontent-length: 10000000\r\n\r\n")
        .await
        .expect("head");
    let mut answer = vec![0u8; 1024];
    let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut answer))
        .await
        .expect("answered before any body byte")
        .expect("read");
    let answer = String::from_utf8_lossy(&answer[..n]);
    assert!(answer.starts_with("HTTP/1.1 401"), "{answer}");
}

/// Users restricted to a prefix (`reader`: read `a/`; `writer`: write `b/`) on keyspace `ks`
/// of `c`: every way they touched what they may not, as text (empty: none). Returns their
/// tokens too.
async fn prefix_leaks(c: &TestCluster) -> (Vec<String>, String, String) {
    common::create_keyspace(&c.client(0), "ks", 2).await;
    let root = c.client(0);
    for k in ["a/1", "a/2", "b/1", "b/2"] {
        root.put("ks", k.as_bytes(), b"v", &tunekv_client::Opts::default())
            .await
            .expect("put as root");
    }
    role(
        c,
        "a-reader",
        json!([{"keyspace": "ks", "prefix": "a/", "access": "read"}]),
    )
    .await;
    role(
        c,
        "b-writer",
        json!([{"keyspace": "ks", "prefix": "b/", "access": "write"}]),
    )
    .await;
    let reader = user_with(c, "reader", &["a-reader"]).await;
    let writer = user_with(c, "writer", &["b-writer"]).await;
    let h = c.http(2);
    let mut leaks = Vec::new();
    let mut expect = |what: &str, got: u16, want: u16| {
        if got != want {
            leaks.push(format!("{what}: {got}, not {want}"));
        }
    };
    let get = |tok: String, key: &'static str| {
        let url = format!("{h}/v1/kv/ks/{key}");
        async move { call_as(Some(&tok), "GET", &url, "").await.0 }
    };
    expect("reader GET b/1", get(reader.clone(), "b%2F1").await, 403);
    // Write-only never reads (redis#10159).
    expect("writer GET b/1", get(writer.clone(), "b%2F1").await, 403);
    let (s, _) = call_as(Some(&writer), "PUT", &format!("{h}/v1/kv/ks/a%2F3"), "w").await;
    expect("writer PUT a/3", s, 403);
    let (s, _) = call_as(Some(&reader), "PUT", &format!("{h}/v1/kv/ks/a%2F3"), "w").await;
    expect("reader PUT a/3", s, 403);
    // A batch-get naming one key outside the prefix is refused whole.
    let (s, _) = call_as(
        Some(&reader),
        "POST",
        &format!("{h}/v1/kv/ks:batch-get"),
        r#"{"keys":["a/1","b/1"]}"#,
    )
    .await;
    expect("reader batch-get a/1 b/1", s, 403);
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
    if keys != ["a/1", "a/2"] {
        leaks.push(format!("reader's scan listed {keys:?}"));
    }
    (leaks, reader, writer)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prefix_users_see_only_their_keys_and_write_only_cannot_read() {
    let c = start_secure(3).await;
    let (leaks, reader, writer) = prefix_leaks(&c).await;
    assert!(leaks.is_empty(), "{leaks:?}");
    let h = c.http(2);
    let root = c.client(0);
    // What they may do, they can.
    let (s, _) = call_as(Some(&reader), "GET", &format!("{h}/v1/kv/ks/a%2F1"), "").await;
    assert_eq!(s, 200);
    let (s, _) = call_as(Some(&writer), "PUT", &format!("{h}/v1/kv/ks/b%2F3"), "w").await;
    assert_eq!(s, 200);
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

/// The prefix checks can fail: with permissions' prefixes ignored (bug `auth-ignore-prefix`),
/// the same scenario finds the reader reading b/ and listing it, and the writer writing a/.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ignoring_prefixes_is_caught() {
    let c = common::start_secure_with(3, &["--bug", "auth-ignore-prefix"], |_| {}).await;
    let (leaks, _, _) = prefix_leaks(&c).await;
    let text = leaks.join("; ");
    for leak in [
        "reader GET b/1",
        "writer PUT a/3",
        "reader batch-get",
        "reader's scan",
    ] {
        assert!(text.contains(leak), "{leak} not caught: {text}");
    }
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
    // SCAN and KEYS list only what ann may read.
    assert_eq!(ann.cmd(&["KEYS", "*"]), R::Array(vec![bulk("a:1")]));
    let R::Array(page) = ann.cmd(&["SCAN", "0", "COUNT", "100"]) else {
        panic!("scan")
    };
    assert_eq!(page[1], R::Array(vec![bulk("a:1")]), "{page:?}");
    // Counts need the whole keyspace.
    assert!(matches!(ann.cmd(&["DBSIZE"]), R::Error(e) if e.starts_with("NOPERM")));
    // Change feeds deliver only the keys ann may read (redis#15371): BCAST tracking,
    // keyspace notifications by channel and by pattern.
    assert_eq!(
        root.cmd(&["CONFIG", "SET", "notify-keyspace-events", "KA"]),
        R::Simple("OK".into())
    );
    let mut tracker = Raw::connect(&addr);
    let hello = tracker.cmd(&["HELLO", "3", "AUTH", "ann", "ann-password"]);
    assert!(matches!(hello, R::Array(_)), "{hello:?}");
    assert_eq!(
        tracker.cmd(&["CLIENT", "TRACKING", "on", "BCAST"]),
        R::Simple("OK".into())
    );
    let mut subscriber = Raw::connect(&addr);
    assert_eq!(
        subscriber.cmd(&["AUTH", "ann", "ann-password"]),
        R::Simple("OK".into())
    );
    subscriber.send(&common::raw::frame(&[
        "SUBSCRIBE",
        "__keyspace@0__:b:5",
        "__keyspace@0__:a:5",
        "__keyspace@0__:a:9",
    ]));
    subscriber.send(&common::raw::frame(&["PSUBSCRIBE", "__keyevent@0__:*"]));
    for _ in 0..4 {
        let confirm = subscriber.read();
        assert!(matches!(&confirm, R::Array(_)), "{confirm:?}");
    }
    for key in ["b:5", "b:6", "a:5"] {
        assert_eq!(root.cmd(&["SET", key, "v"]), R::Simple("OK".into()));
    }
    // Whatever ann's connections are sent before the marker a:9 (written after a pause) is
    // everything about the keys before it.
    let until_marker = |r: &mut Raw, what: &str| {
        let mut seen = Vec::new();
        loop {
            let push = texts(&r.read());
            let done = push.contains("a:9");
            seen.push(push);
            if done {
                break;
            }
            if seen.len() == 1 {
                std::thread::sleep(Duration::from_millis(300));
            }
        }
        assert!(
            seen.iter().any(|p| p.contains("a:5")),
            "{what} saw a:5: {seen:?}"
        );
        assert!(
            !seen.iter().any(|p| p.contains("b:")),
            "{what} saw b: keys: {seen:?}"
        );
    };
    let marker = tokio::spawn({
        let addr = addr.clone();
        let password = creds.password.clone();
        async move {
            tokio::time::sleep(Duration::from_millis(800)).await;
            let mut root = Raw::connect(&addr);
            assert_eq!(
                root.cmd(&["AUTH", "root", &password]),
                R::Simple("OK".into())
            );
            assert_eq!(root.cmd(&["SET", "a:9", "v"]), R::Simple("OK".into()));
        }
    });
    until_marker(&mut tracker, "BCAST tracking");
    marker.await.expect("marker");
    until_marker(&mut subscriber, "keyspace notifications");
    // Refused inside MULTI too, and the transaction is spoiled.
    assert_eq!(ann.cmd(&["MULTI"]), R::Simple("OK".into()));
    assert!(matches!(ann.cmd(&["SET", "b:2", "y"]), R::Error(e) if e.starts_with("NOPERM")));
    assert!(matches!(ann.cmd(&["EXEC"]), R::Error(e) if e.starts_with("EXECABORT")));
    assert_eq!(root.cmd(&["GET", "b:2"]), R::Bulk(None));
    // ACL: who am I, the log of refusals (admins only), SETUSER mapped onto a role.
    assert_eq!(ann.cmd(&["ACL", "WHOAMI"]), bulk("ann"));
    assert!(matches!(ann.cmd(&["ACL", "LOG"]), R::Error(e) if e.starts_with("NOPERM")));
    let text = texts(&root.cmd(&["ACL", "LOG"]));
    assert!(text.contains("b:1") && text.contains("ann"), "{text}");
    assert_eq!(
        root.cmd(&["ACL", "SETUSER", "bob", "on", ">bob-password", "%R~pub:*"]),
        R::Simple("OK".into())
    );
    let mut bob = Raw::connect(&addr);
    assert_eq!(
        bob.cmd(&["AUTH", "bob", "bob-password"]),
        R::Simple("OK".into())
    );
    assert_eq!(bob.cmd(&["GET", "pub:x"]), R::Bulk(None));
    assert!(matches!(bob.cmd(&["SET", "pub:x", "1"]), R::Error(e) if e.starts_with("NOPERM")));
    assert!(matches!(bob.cmd(&["GET", "a:1"]), R::Error(e) if e.starts_with("NOPERM")));
    let list = texts(&root.cmd(&["ACL", "LIST"]));
    assert!(
        list.contains("user bob on #<argon2id> resetchannels &* %R~pub:* +@all"),
        "{list}"
    );
    assert!(matches!(
        root.cmd(&["ACL", "SETUSER", "bob", "~a?b*"]),
        R::Error(e) if e.contains("PREFIX*")
    ));
}

/// A TLS client config trusting `ca_pem`, presenting `client` (cert, key PEM files) if given.
fn tls_client(
    ca: &std::path::Path,
    client: Option<&tunekv_node::tls::TlsConfig>,
) -> tokio_rustls::TlsConnector {
    use rustls::pki_types::pem::PemObject;
    let b = rustls::ClientConfig::builder_with_provider(tunekv_node::tls::provider())
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(tunekv_node::tls::roots(ca).expect("roots"));
    let config = match client {
        None => b.with_no_client_auth(),
        Some(f) => b
            .with_client_auth_cert(
                rustls::pki_types::CertificateDer::pem_file_iter(&f.cert)
                    .expect("cert")
                    .collect::<Result<Vec<_>, _>>()
                    .expect("certs"),
                rustls::pki_types::PrivateKeyDer::from_pem_file(&f.key).expect("key"),
            )
            .expect("client cert"),
    };
    tokio_rustls::TlsConnector::from(std::sync::Arc::new(config))
}

/// Whether node-to-node port `addr` keeps a TLS connection open (waiting for a frame) when
/// the client shows `client`'s certificate: false when the node drops it.
async fn peer_port_accepts(
    addr: &str,
    ca: &std::path::Path,
    client: Option<&tunekv_node::tls::TlsConfig>,
) -> bool {
    use tokio::io::AsyncReadExt;
    let tcp = tokio::net::TcpStream::connect(addr).await.expect("tcp");
    let name = rustls::pki_types::ServerName::try_from("127.0.0.1").expect("name");
    let Ok(mut s) = tls_client(ca, client).connect(name, tcp).await else {
        return false;
    };
    // TLS 1.3: the server checks the client's certificate after the client's side of the
    // handshake finished; a refusal arrives as an alert on the first read. Nothing is sent:
    // an accepted connection just waits for a frame.
    let mut b = [0u8; 16];
    match tokio::time::timeout(Duration::from_millis(1500), s.read(&mut b)).await {
        Err(_) => true,
        Ok(Ok(n)) => n > 0,
        Ok(Err(_)) => false,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_on_every_listener_and_mutual_tls_between_nodes() {
    let ca = tunekv::local_cluster::DevCa::new().expect("ca");
    let mut c = start_tls(3, true, &ca).await;
    let ca_path = c.tls_dir().join("ca.pem");
    common::create_keyspace(&c.client(0), "ks", 1).await;
    c.client(1)
        .put("ks", b"k", b"over tls", &tunekv_client::Opts::default())
        .await
        .expect("put over https");
    let r = c
        .client(2)
        .get("ks", b"k", &tunekv_client::Opts::level("strong"))
        .await
        .expect("get over https");
    assert_eq!(r.value.as_deref(), Some(&b"over tls"[..]));
    // Plain HTTP is refused, and so is TLS without the cluster's CA.
    let plain = reqwest::Client::new()
        .get(format!("http://{}/v1/cluster", c.configs[0].http))
        .timeout(Duration::from_secs(5))
        .send()
        .await;
    assert!(plain.is_err(), "plain HTTP answered: {plain:?}");
    let untrusted = reqwest::Client::builder()
        .use_rustls_tls()
        .build()
        .expect("client")
        .get(format!("https://{}/v1/cluster", c.configs[0].http))
        .send()
        .await;
    assert!(untrusted.is_err(), "a client without the CA connected");
    // redis-cli --tls with an ACL user; plain RESP gets nothing.
    let creds = c.credentials().expect("creds").expect("auth on");
    let port = c.configs[1].resp.clone().expect("resp");
    let port = port.rsplit_once(':').expect("port").1.to_string();
    let ca_arg = ca_path.to_string_lossy().to_string();
    let cli = |args: &[&str]| {
        let mut all = vec![
            "--tls",
            "--cacert",
            &ca_arg,
            "-p",
            &port,
            "--user",
            "root",
            "--pass",
            &creds.password,
            "--no-auth-warning",
        ];
        all.extend_from_slice(args);
        let out = std::process::Command::new("redis-cli")
            .args(&all)
            .output()
            .expect("redis-cli");
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    assert_eq!(cli(&["SET", "tls-key", "v1"]), "OK");
    assert_eq!(cli(&["GET", "tls-key"]), "v1");
    let plain = std::process::Command::new("redis-cli")
        .args(["-p", &port, "PING"])
        .output()
        .expect("redis-cli");
    assert!(
        !String::from_utf8_lossy(&plain.stdout).contains("PONG"),
        "plain RESP answered"
    );
    // redis-py over TLS with an ACL user.
    let script = format!(
        "import redis\n\
         r = redis.Redis(host='127.0.0.1', port={port}, ssl=True, ssl_ca_certs={ca:?}, \
         username='root', password={pw:?})\n\
         r.set('py-key', 'from python')\n\
         print(r.get('py-key').decode())\n",
        ca = ca_arg,
        pw = creds.password
    );
    let out = std::process::Command::new(common::python())
        .arg("-c")
        .arg(&script)
        .output()
        .expect("python");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "from python",
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The node-to-node port takes only certificates this cluster's CA signed.
    let raft = c.configs[0].raft.clone();
    let own = c.configs[1].tls.clone().expect("tls");
    assert!(
        peer_port_accepts(&raft, &ca_path, Some(&own)).await,
        "a cluster certificate is refused"
    );
    assert!(
        !peer_port_accepts(&raft, &ca_path, None).await,
        "no certificate was accepted"
    );
    let other = tunekv::local_cluster::DevCa::new().expect("other ca");
    let elsewhere = tempfile::tempdir().expect("dir");
    other.write(elsewhere.path()).expect("write");
    let foreign = other
        .node_files(elsewhere.path(), "intruder")
        .expect("foreign cert");
    assert!(
        !peer_port_accepts(&raft, &ca_path, Some(&foreign)).await,
        "a certificate from another CA was accepted"
    );
    // New certificates on SIGHUP, without a restart: node 1 serves a fresh one after it.
    let before = served_cert(&c.configs[0].http, &ca_path).await;
    let tls_dir = c.tls_dir();
    ca.node_files(&tls_dir, "node-1")
        .expect("new cert for node 1");
    let pid = c.pid(0).expect("pid");
    common::signal(pid, "HUP");
    let http = c.configs[0].http.clone();
    let ca2 = ca_path.clone();
    eventually(
        Duration::from_secs(5),
        "node 1 serves its new certificate",
        || {
            let (http, ca2, before) = (http.clone(), ca2.clone(), before.clone());
            async move { (served_cert(&http, &ca2).await != before).then_some(()) }
        },
    )
    .await;
    // Still one cluster: a strong read through node 1.
    let r = c
        .client(0)
        .get("ks", b"k", &tunekv_client::Opts::level("strong"))
        .await
        .expect("get after reload");
    assert_eq!(r.value.as_deref(), Some(&b"over tls"[..]));
    c.stop_all();
}

/// The certificate (DER) node `http` serves to clients.
async fn served_cert(http: &str, ca: &std::path::Path) -> Vec<u8> {
    let tcp = tokio::net::TcpStream::connect(http).await.expect("tcp");
    let name = rustls::pki_types::ServerName::try_from("127.0.0.1").expect("name");
    let s = tls_client(ca, None).connect(name, tcp).await.expect("tls");
    s.get_ref().1.peer_certificates().expect("certs")[0].to_vec()
}

/// Runs the CLI with `env` set (on a blocking thread): exit code, stdout, stderr.
async fn cli_with(env: Vec<(&'static str, String)>, args: Vec<String>) -> (i32, String, String) {
    tokio::task::spawn_blocking(move || {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_tunekv"))
            .args(&args)
            .envs(env)
            .output()
            .expect("run tunekv");
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    })
    .await
    .expect("cli task")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_logs_in_and_manages_users_and_roles() {
    let c = start_secure(3).await;
    let node = c.configs[0].http.clone();
    let creds = c.credentials_path().to_string_lossy().to_string();
    let s = |v: &[&str]| v.iter().map(|a| a.to_string()).collect::<Vec<_>>();
    // Without a token the CLI is refused, and says why.
    let (code, _, err) = cli_with(vec![], s(&["cluster", "--node", &node])).await;
    assert_ne!(code, 0);
    let (code, out, err2) = cli_with(
        vec![],
        s(&["login", "--credentials", &creds, "--node", &node]),
    )
    .await;
    assert_eq!(code, 0, "{err2} (before: {err})");
    let token = out.trim().to_string();
    let env = |extra: Vec<(&'static str, String)>| {
        let mut e = vec![
            ("TUNEKV_TOKEN", token.clone()),
            ("TUNEKV_NODE", node.clone()),
        ];
        e.extend(extra);
        e
    };
    let (code, out, err) = cli_with(
        env(vec![]),
        s(&["role", "put", "reader", "--permission", "orders:eu/:read"]),
    )
    .await;
    assert_eq!(code, 0, "{out}{err}");
    let (code, out, err) = cli_with(
        env(vec![("TUNEKV_PASSWORD", "carol-password".into())]),
        s(&["user", "add", "carol", "--role", "reader"]),
    )
    .await;
    assert_eq!(code, 0, "{out}{err}");
    let (code, out, _) = cli_with(env(vec![]), s(&["user", "get", "carol"])).await;
    assert_eq!(code, 0);
    let user: serde_json::Value = serde_json::from_str(&out).expect("user json");
    assert_eq!(user["roles"], json!(["reader"]));
    let (code, _, _) = cli_with(env(vec![]), s(&["user", "revoke", "carol", "reader"])).await;
    assert_eq!(code, 0);
    let (_, out, _) = cli_with(env(vec![]), s(&["user", "get", "carol"])).await;
    let user: serde_json::Value = serde_json::from_str(&out).expect("user json");
    assert_eq!(user["roles"], json!([]));
    // Grants made at once through different nodes are all kept (each is one compare-and-set
    // on the node, not a read-modify-write in the CLI).
    let mut grants = Vec::new();
    for i in 0..4 {
        let (code, out, err) = cli_with(
            env(vec![]),
            s(&[
                "role",
                "put",
                &format!("r{i}"),
                "--permission",
                "orders:read",
            ]),
        )
        .await;
        assert_eq!(code, 0, "{out}{err}");
        let args = s(&[
            "user",
            "grant",
            "carol",
            &format!("r{i}"),
            "--node",
            &c.configs[i % 3].http,
        ]);
        grants.push(tokio::spawn(cli_with(env(vec![]), args)));
    }
    for g in grants {
        let (code, out, err) = g.await.expect("grant");
        assert_eq!(code, 0, "{out}{err}");
    }
    let (_, out, _) = cli_with(env(vec![]), s(&["user", "get", "carol"])).await;
    let user: serde_json::Value = serde_json::from_str(&out).expect("user json");
    let mut roles: Vec<String> = serde_json::from_value(user["roles"].clone()).expect("roles");
    roles.sort();
    assert_eq!(roles, ["r0", "r1", "r2", "r3"]);
    // carol logs in through the CLI too, and may not manage users.
    let (code, out, err) = cli_with(
        vec![("TUNEKV_PASSWORD", "carol-password".into())],
        s(&["login", "--user", "carol", "--node", &node]),
    )
    .await;
    assert_eq!(code, 0, "{err}");
    let (code, _, err) = cli_with(
        vec![
            ("TUNEKV_TOKEN", out.trim().to_string()),
            ("TUNEKV_NODE", node.clone()),
        ],
        s(&["user", "get"]),
    )
    .await;
    assert_ne!(code, 0);
    assert!(err.contains("permission_denied"), "{err}");
    // A wrong permission is refused before anything is sent.
    let (code, _, err) = cli_with(
        env(vec![]),
        s(&["role", "put", "x", "--permission", "orders:delete"]),
    )
    .await;
    assert_ne!(code, 0);
    assert!(err.contains("unknown access"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn users_are_held_to_their_request_rate_and_watch_cap() {
    let c = common::start_secure_with(3, &[], |cfg| {
        cfg.user_requests_per_s = 50;
        cfg.watches_per_user_max = 2;
    })
    .await;
    common::create_keyspace(&c.client(0), "ks", 1).await;
    role(&c, "all", json!([{"keyspace": "ks", "access": "read"}])).await;
    let token = user_with(&c, "alice", &["all"]).await;
    // 200 reads back to back on one node: over 50/s (with a burst of 50), some are refused.
    let url = format!("{}/v1/kv/ks/k", c.http(1));
    let mut codes = std::collections::BTreeMap::new();
    for _ in 0..200 {
        let (s, b) = call_as(Some(&token), "GET", &url, "").await;
        if s == 429 {
            assert_eq!(b["error"]["code"], "rate_limited", "{b}");
        }
        *codes.entry(s).or_insert(0) += 1;
    }
    assert!(codes.get(&429).copied().unwrap_or(0) > 0, "{codes:?}");
    assert!(codes.get(&404).copied().unwrap_or(0) >= 50, "{codes:?}");
    // The same user over RESP shares the budget; other users do not.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let mut r = Raw::connect(c.configs[1].resp.as_deref().expect("resp"));
    assert_eq!(
        r.cmd(&["AUTH", "alice", "alice-password"]),
        R::Simple("OK".into())
    );
    let mut pipeline = Vec::new();
    for _ in 0..200 {
        pipeline.extend(common::raw::frame(&["PING"]));
    }
    r.send(&pipeline);
    let limited = (0..200)
        .filter(|_| matches!(r.read(), R::Error(e) if e.starts_with("RATE_LIMITED")))
        .count();
    assert!(limited > 0, "no RESP command was limited");
    // Watches: two at once, the third refused until one closes.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let watcher = tunekv_client::Client::new(&c.http(2)).with_token(Some(token.clone()));
    let first = watcher.watch("ks", "").await.expect("first watch");
    let _second = watcher.watch("ks", "").await.expect("second watch");
    let third = watcher.watch("ks", "").await;
    assert_eq!(
        third
            .err()
            .and_then(|e| e.code().map(str::to_string))
            .as_deref(),
        Some("rate_limited")
    );
    drop(first);
    eventually(
        Duration::from_secs(5),
        "a closed watch frees its slot",
        || {
            let w = watcher.clone();
            async move { w.watch("ks", "").await.ok() }
        },
    )
    .await;
    // RESP subscriptions count too: with one watch open, one subscribed connection fits and
    // the next is refused.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let resp = c.configs[2].resp.clone().expect("resp");
    let subscriber = |n: usize| {
        let mut r = Raw::connect(&resp);
        assert_eq!(
            r.cmd(&["AUTH", "alice", "alice-password"]),
            R::Simple("OK".into())
        );
        assert_eq!(r.cmd(&["SELECT", "ks"]), R::Simple("OK".into()));
        let answer = r.cmd(&["SUBSCRIBE", &format!("ch{n}")]);
        (r, answer)
    };
    let (_held, answer) = subscriber(1);
    assert!(
        matches!(&answer, R::Array(a) | R::Push(a) if a[0] == bulk("subscribe")),
        "{answer:?}"
    );
    let (_, answer) = subscriber(2);
    assert!(
        matches!(&answer, R::Error(e) if e.starts_with("RATE_LIMITED") && e.contains("watches_per_user_max")),
        "{answer:?}"
    );
    // A subscribed connection that logs in as another user takes that user's place: alice's
    // is free again.
    user_with(&c, "bob", &["all"]).await;
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let mut moving = Raw::connect(&resp);
    let hello = moving.cmd(&["HELLO", "3", "AUTH", "alice", "alice-password"]);
    assert!(!matches!(hello, R::Error(_)), "{hello:?}");
    assert_eq!(moving.cmd(&["SELECT", "ks"]), R::Simple("OK".into()));
    let refused = moving.cmd(&["SUBSCRIBE", "ch3"]);
    assert!(
        matches!(&refused, R::Error(e) if e.starts_with("RATE_LIMITED")),
        "{refused:?}"
    );
    drop(_held);
    eventually(
        Duration::from_secs(5),
        "a closed subscriber frees its place",
        || {
            let answer = moving.cmd(&["SUBSCRIBE", "ch3"]);
            async move { (!matches!(answer, R::Error(_))).then_some(()) }
        },
    )
    .await;
    assert_eq!(
        moving.cmd(&["AUTH", "bob", "bob-password"]),
        R::Simple("OK".into())
    );
    let (_again, answer) = subscriber(4);
    assert!(
        matches!(&answer, R::Array(a) | R::Push(a) if a[0] == bulk("subscribe")),
        "alice's place moved to bob with the connection: {answer:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_are_held_to_their_request_rate() {
    let c = common::start_with(3, false, |cfg| cfg.connection_requests_per_s = 30).await;
    // One HTTP connection (reqwest keeps it alive): 150 requests, some refused.
    let http = reqwest::Client::new();
    let url = format!("{}/v1/clock", c.http(0));
    let mut limited = 0;
    for _ in 0..150 {
        let resp = http.get(&url).send().await.expect("send");
        if resp.status().as_u16() == 429 {
            limited += 1;
        }
    }
    assert!(limited > 0, "no HTTP request was limited");
    // A fresh connection has its own budget.
    let (s, _, _) = common::call("GET", &url, "").await;
    assert_eq!(s, 200);
    let mut r = Raw::connect(c.configs[0].resp.as_deref().expect("resp"));
    let mut pipeline = Vec::new();
    for _ in 0..150 {
        pipeline.extend(common::raw::frame(&["PING"]));
    }
    r.send(&pipeline);
    let limited = (0..150)
        .filter(|_| matches!(r.read(), R::Error(e) if e.starts_with("RATE_LIMITED")))
        .count();
    assert!(limited > 0, "no RESP command was limited");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resp_logs_in_with_a_bearer_token_until_it_expires() {
    // Managed Redis services take access tokens where the password goes; so does tunekv, so
    // clients holding TUNEKV_TOKEN (verify, bench) need no password.
    let c = start_secure(3).await;
    let root = c.token.clone().expect("root token");
    user_with(&c, "ann", &[]).await;
    let addr = c.configs[0].resp.clone().expect("resp");
    let mut r = Raw::connect(&addr);
    assert_eq!(r.cmd(&["AUTH", &root]), R::Simple("OK".into()));
    assert_eq!(r.cmd(&["ACL", "WHOAMI"]), bulk("root"));
    let mut other = Raw::connect(&addr);
    let wrong = other.cmd(&["AUTH", "ann", &root]);
    assert!(
        matches!(&wrong, R::Error(e) if e.starts_with("WRONGPASS")),
        "{wrong:?}"
    );
    let forged = other.cmd(&["AUTH", "tkv1.00ff"]);
    assert!(
        matches!(&forged, R::Error(e) if e.starts_with("WRONGPASS")),
        "{forged:?}"
    );
    assert!(matches!(other.cmd(&["PING"]), R::Error(e) if e.starts_with("NOAUTH")));
    // A short-lived token: the connection is logged in until it expires.
    let creds = c.credentials().expect("creds").expect("auth on");
    let (s, b) = call_as(
        None,
        "POST",
        &format!("{}/v1/auth/token", c.http(0)),
        &json!({"user": "root", "password": creds.password, "ttl_ms": 1500}).to_string(),
    )
    .await;
    assert_eq!(s, 200, "{b}");
    let short = b["token"].as_str().expect("token").to_string();
    let mut brief = Raw::connect(&addr);
    let hello = brief.cmd(&["HELLO", "3", "AUTH", "root", &short]);
    assert!(matches!(hello, R::Array(_)), "{hello:?}");
    assert_eq!(brief.cmd(&["PING"]), R::Simple("PONG".into()));
    tokio::time::sleep(Duration::from_millis(1700)).await;
    let expired = brief.cmd(&["PING"]);
    assert!(
        matches!(&expired, R::Error(e) if e.starts_with("NOAUTH") && e.contains("expired")),
        "{expired:?}"
    );
    // The long-lived one still works.
    assert_eq!(r.cmd(&["PING"]), R::Simple("PONG".into()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_runs_against_a_cluster_with_auth_on() {
    // `verify --cluster` with TUNEKV_TOKEN: its HTTP clients send the token, its RESP clients
    // log in with it (AUTH tkv1.…), and the run judges operations like on an open cluster.
    let c = start_secure(3).await;
    let cluster_json = c.write_cluster_json().expect("cluster.json");
    let cluster = cluster_json.to_str().expect("utf-8");
    let run = |duration: &str| {
        let args = [
            "verify",
            "--cluster",
            cluster,
            "--faults",
            "none",
            "--clients",
            "4",
        ];
        let mut args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
        args.extend(["--duration".to_string(), duration.to_string()]);
        args
    };
    let token = c.token.clone().expect("root token");
    let (code, out, err) = cli_with(vec![("TUNEKV_TOKEN", token)], run("4s")).await;
    assert_eq!(code, 0, "{out}\n--- stderr ---\n{err}");
    assert!(out.contains("linearizable"), "{out}");
    // Without the token the same run is refused at once.
    let (code, out, err) = cli_with(vec![], run("2s")).await;
    assert_ne!(code, 0, "{out}");
    assert!(
        format!("{out}{err}").contains("unauthenticated"),
        "{out}{err}"
    );
}

/// What callers could do through the cache at `http` beyond their rights, after `prefix_leaks`
/// made the a/ reader and the b/ writer: each wrong answer, over HTTP and RESP. Root makes a/1
/// and b/1 hot first, so every refusal is of a key in the cache's memory.
async fn cache_leaks(c: &TestCluster, http: &str, reader: &str, writer: &str) -> Vec<String> {
    let h = format!("http://{http}");
    let root = c.token.clone();
    for k in ["a%2F1", "b%2F1"] {
        for _ in 0..2 {
            let (s, b) = call_as(root.as_deref(), "GET", &format!("{h}/v1/kv/ks/{k}"), "").await;
            assert_eq!(s, 200, "root reads {k} through the cache: {b}");
        }
    }
    let mut wrong = Vec::new();
    for (who, token, method, path, body, want) in [
        ("reader", reader, "GET", "/v1/kv/ks/a%2F1", "", 200),
        ("reader", reader, "GET", "/v1/kv/ks/b%2F1", "", 403),
        ("writer", writer, "GET", "/v1/kv/ks/b%2F1", "", 403),
        ("writer", writer, "PUT", "/v1/kv/ks/b%2F3", "w", 200),
        ("writer", writer, "PUT", "/v1/kv/ks/a%2F3", "w", 403),
        ("reader", reader, "PUT", "/v1/kv/ks/a%2F3", "w", 403),
        ("reader", reader, "DELETE", "/v1/kv/ks/a%2F1", "", 403),
        (
            "reader",
            reader,
            "POST",
            "/v1/cache/invalidate",
            r#"{"keyspace":"ks","keys":["a/1"]}"#,
            403,
        ),
        (
            "writer",
            writer,
            "POST",
            "/v1/cache/invalidate",
            r#"{"keyspace":"ks","prefix":"b/"}"#,
            200,
        ),
        (
            "writer",
            writer,
            "POST",
            "/v1/cache/invalidate",
            r#"{"keyspace":"ks","all":true}"#,
            403,
        ),
        (
            "reader",
            reader,
            "POST",
            "/v1/admin/faults",
            r#"{"clear":true}"#,
            403,
        ),
        ("reader", reader, "GET", "/v1/cache", "", 200),
    ] {
        let (s, b) = call_as(Some(token), method, &format!("{h}{path}"), body).await;
        if s != want {
            wrong.push(format!("{who} {method} {path}: {s}, not {want} ({b})"));
        }
    }
    // RESP: the reader logged in with its password, the writer with its token.
    let resp = c.cache_resp().expect("resp").to_string();
    let mut r = Raw::connect(&resp);
    assert_eq!(
        r.cmd(&["AUTH", "reader", "reader-password"]),
        R::Simple("OK".into())
    );
    assert_eq!(r.cmd(&["SELECT", "ks"]), R::Simple("OK".into()));
    if r.cmd(&["GET", "a/1"]) != bulk("v") {
        wrong.push("RESP reader GET a/1 refused".into());
    }
    for cmd in [
        &["GET", "b/1"][..],
        &["MGET", "a/1", "b/1"],
        &["EXISTS", "b/2"],
        &["SET", "a/1", "x"],
        &["DEL", "a/1"],
        &["INVALIDATE", "ALL"],
    ] {
        let reply = r.cmd(cmd);
        if !matches!(&reply, R::Error(e) if e.starts_with("NOPERM")) {
            wrong.push(format!("RESP reader {cmd:?}: {reply:?}"));
        }
    }
    let mut w = Raw::connect(&resp);
    assert_eq!(w.cmd(&["AUTH", writer]), R::Simple("OK".into()));
    assert_eq!(w.cmd(&["SELECT", "ks"]), R::Simple("OK".into()));
    if w.cmd(&["SET", "b/4", "v4"]) != R::Simple("OK".into()) {
        wrong.push("RESP writer SET b/4 refused".into());
    }
    let reply = w.cmd(&["GET", "b/4"]);
    if !matches!(&reply, R::Error(e) if e.starts_with("NOPERM")) {
        wrong.push(format!("RESP writer GET b/4: {reply:?}"));
    }
    wrong
}

/// A cache in front of a cluster with auth on (issue 22): it logs in as its own user, and
/// checks every caller as a node would before a hit, a fill or a write — a key hot in the
/// cache is still refused to a caller without read on it — over HTTP and RESP; a revoked
/// token stops working at the cache within its grants' freshness (1 s) after the nodes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cache_in_front_of_a_secured_cluster_checks_every_caller() {
    let mut c = start_secure(3).await;
    let (leaks, reader, writer) = prefix_leaks(&c).await;
    assert!(leaks.is_empty(), "{leaks:?}");
    let http = c
        .start_cache(&[])
        .await
        .expect("the cache starts and logs in");
    let h = format!("http://{http}");
    let root = c.token.clone();
    // No token, or a forged one: nothing but the readiness probe.
    for (method, path, body) in [
        ("GET", "/v1/kv/ks/a%2F1", ""),
        ("PUT", "/v1/kv/ks/a%2F1", "x"),
        ("GET", "/v1/cache", ""),
        ("GET", "/metrics", ""),
        (
            "POST",
            "/v1/cache/invalidate",
            r#"{"keyspace":"ks","all":true}"#,
        ),
    ] {
        for token in [None, Some("tkv1.forged")] {
            let (s, b) = call_as(token, method, &format!("{h}{path}"), body).await;
            assert_eq!(s, 401, "{method} {path} with {token:?}: {b}");
            assert_eq!(b["error"]["code"], "unauthenticated", "{b}");
        }
    }
    let (s, _) = call_as(None, "GET", &format!("{h}/v1/cache/ready"), "").await;
    assert_eq!(s, 200, "the readiness probe needs no token");
    // The cache passes a login on to a node (its status page signs in this way).
    let login = |password: &str| json!({"user": "reader", "password": password}).to_string();
    let (s, b) = call_as(None, "POST", &format!("{h}/v1/auth/token"), &login("nope")).await;
    assert_eq!(
        (s, b["error"]["code"].clone()),
        (401, json!("unauthenticated")),
        "{b}"
    );
    let (s, b) = call_as(
        None,
        "POST",
        &format!("{h}/v1/auth/token"),
        &login("reader-password"),
    )
    .await;
    assert_eq!(s, 200, "{b}");
    let fresh = b["token"].as_str().expect("a token").to_string();
    let (s, b) = call_as(Some(&fresh), "GET", &format!("{h}/v1/kv/ks/a%2F1"), "").await;
    assert_eq!(s, 200, "{b}");
    let mut r = Raw::connect(c.cache_resp().expect("resp"));
    assert!(matches!(r.cmd(&["GET", "a/1"]), R::Error(e) if e.starts_with("NOAUTH")));
    assert!(matches!(r.cmd(&["HELLO", "3"]), R::Error(e) if e.starts_with("NOAUTH")));
    assert!(
        matches!(r.cmd(&["AUTH", "reader", "wrong-password"]), R::Error(e) if e.starts_with("WRONGPASS"))
    );
    // Each caller gets exactly their rights, hot keys or not.
    let wrong = cache_leaks(&c, &http, &reader, &writer).await;
    assert!(wrong.is_empty(), "{wrong:#?}");
    // The cache's status lists only the keyspaces the caller holds a right on.
    common::create_keyspace(&c.client(0), "other", 1).await;
    let (s, b) = call_as(root.as_deref(), "GET", &format!("{h}/v1/kv/other/x"), "").await;
    assert_eq!(s, 404, "root reads other/x through the cache: {b}");
    let listed = |token: String| {
        let url = format!("{h}/v1/cache");
        async move {
            let (_, b) = call_as(Some(&token), "GET", &url, "").await;
            let mut names: Vec<String> = b["keyspaces"]
                .as_array()
                .expect("keyspaces")
                .iter()
                .map(|k| k["name"].as_str().unwrap_or_default().to_string())
                .collect();
            names.sort();
            names
        }
    };
    assert_eq!(listed(root.clone().expect("root")).await, ["ks", "other"]);
    assert_eq!(listed(reader.clone()).await, ["ks"]);
    // A user's rights are asked of a node at most once a second, however many requests.
    let lookups = || async {
        let (_, text) = call_as(root.as_deref(), "GET", &format!("{h}/metrics"), "").await;
        let text = text
            .as_str()
            .map(str::to_string)
            .unwrap_or_else(|| text.to_string());
        text.lines()
            .find_map(|l| l.strip_prefix("tunekv_cache_auth_lookups_total "))
            .and_then(|v| v.trim().parse::<u64>().ok())
            .expect("the lookups counter")
    };
    let (before, started) = (lookups().await, std::time::Instant::now());
    for _ in 0..50 {
        let (s, _) = call_as(Some(&reader), "GET", &format!("{h}/v1/kv/ks/a%2F1"), "").await;
        assert_eq!(s, 200);
    }
    let grew = lookups().await - before;
    // One per second for the reader, and for root asking for the metrics.
    let bound = 2 * (started.elapsed().as_secs() + 2);
    assert!(grew <= bound, "{grew} lookups for 50 reads (bound {bound})");
    // The writer's write reached the store as the writer's.
    let (s, b) = call_as(
        root.as_deref(),
        "GET",
        &format!("{}/v1/kv/ks/b%2F3", c.http(0)),
        "",
    )
    .await;
    assert_eq!((s, b), (200, json!("w")));

    // Revocation: the reader's token and its password connection stop working at the cache.
    let hello = r.cmd(&["HELLO", "2", "AUTH", "reader", "reader-password"]);
    assert!(!matches!(hello, R::Error(_)), "{hello:?}");
    let (s, b) = call_as(
        root.as_deref(),
        "POST",
        &format!("{}/v1/admin/users/reader:revoke-tokens", c.http(0)),
        "",
    )
    .await;
    assert_eq!(s, 200, "{b}");
    let url = format!("{h}/v1/kv/ks/a%2F1");
    let t = reader.clone();
    eventually(
        Duration::from_secs(6),
        "the cache refuses the revoked token",
        || {
            let (t, url) = (t.clone(), url.clone());
            async move { (call_as(Some(&t), "GET", &url, "").await.0 == 401).then_some(()) }
        },
    )
    .await;
    eventually(
        Duration::from_secs(6),
        "the cache cuts off the revoked user's connection",
        || {
            let reply = r.cmd(&["GET", "a/1"]);
            async move { matches!(reply, R::Error(e) if e.starts_with("NOAUTH")).then_some(()) }
        },
    )
    .await;
    c.stop_cache();

    // A cache without a user of its own in front of this cluster refuses to start.
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_tunekv"))
        .args([
            "cache",
            "--http",
            "127.0.0.1:0",
            "--node",
            &c.configs[0].http,
        ])
        .env("TUNEKV_CLUSTER_SECRET", &c.configs[0].cluster_secret)
        .output()
        .await
        .expect("run tunekv cache");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(err.contains("the cluster has auth on"), "{err}");
    // Nor one whose cluster secret is not the cluster's (it could open no caller's token).
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_tunekv"))
        .arg("cache")
        .arg("--config")
        .arg(c.cache_config_path())
        .args(["--http", "127.0.0.1:0", "--node", &c.configs[0].http])
        .env("TUNEKV_CLUSTER_SECRET", "not the cluster's secret at all")
        .output()
        .await
        .expect("run tunekv cache");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(err.contains("cluster_secret is not the cluster's"), "{err}");
}

/// The cache's checks can fail: with the prefixes of callers' permissions ignored (bug
/// `ignore-caller-prefix`), the same scenario finds the a/ reader reading the hot b/1 over
/// HTTP and RESP, and the b/ writer dropping the whole keyspace's entries. The writer's write
/// to a/ is still refused: it reaches the node with the writer's own token.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cache_ignoring_prefixes_is_caught() {
    let mut c = start_secure(3).await;
    let (leaks, reader, writer) = prefix_leaks(&c).await;
    assert!(leaks.is_empty(), "{leaks:?}");
    let args = ["--bug".to_string(), "ignore-caller-prefix".to_string()];
    let http = c.start_cache(&args).await.expect("the cache starts");
    let text = cache_leaks(&c, &http, &reader, &writer).await.join("; ");
    for leak in [
        "reader GET /v1/kv/ks/b%2F1: 200",
        "writer POST /v1/cache/invalidate: 200",
        "RESP reader [\"GET\", \"b/1\"]",
        "RESP reader [\"MGET\"",
    ] {
        assert!(text.contains(leak), "{leak} not caught: {text}");
    }
    assert!(!text.contains("writer PUT /v1/kv/ks/a%2F3"), "{text}");
}

/// TLS between the cache and the nodes, and on the cache's own listeners.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cache_speaks_tls_to_the_nodes_and_to_its_callers() {
    let ca = tunekv::local_cluster::DevCa::new().expect("ca");
    let mut c = start_tls(1, true, &ca).await;
    c.client(0)
        .create_keyspace("ks", &json!({"shards": 1, "replicas": 1}))
        .await
        .expect("create ks");
    let http = c.start_cache(&[]).await.expect("the cache starts");
    let cache = c.cache_client(&http, c.token.clone());
    assert!(cache.base().starts_with("https://"));
    cache
        .put("ks", b"k", b"over tls", &tunekv_client::Opts::default())
        .await
        .expect("a write through the cache, TLS both ways");
    let r = cache
        .get("ks", b"k", &tunekv_client::Opts::level("strong"))
        .await
        .expect("a read");
    assert_eq!(r.value.as_deref(), Some(&b"over tls"[..]));
    // Plain HTTP to the cache is refused.
    let plain =
        tunekv_client::Client::with_timeout(&format!("http://{http}"), Duration::from_secs(5))
            .with_token(c.token.clone());
    assert!(plain.cache_status().await.is_err());
}
