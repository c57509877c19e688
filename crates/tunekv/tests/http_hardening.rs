//! Issue 15's HTTP-side findings against real node processes: batch-get memory amplification,
//! connections held open without limit, untyped errors, keys HTTP could not name, and the
//! CLI's transport messages and dot keys.

mod common;

use base64::Engine;
use common::{eventually, start_with};
use serde_json::json;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tunekv_client::Opts;

const MIB: usize = 1024 * 1024;

fn b64(key: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(key)
}

/// A one-node cluster with a one-shard, one-replica keyspace `ks` (values up to 1 MiB).
async fn one_node(tweak: impl Fn(&mut tunekv_node::NodeConfig)) -> common::TestCluster {
    let c = start_with(1, false, tweak).await;
    let spec = json!({"mode": "ordered", "shards": 1, "replicas": 1, "default_level": "strong"});
    c.client(0)
        .create_keyspace("ks", &spec)
        .await
        .expect("create ks");
    c
}

/// `/proc/<pid>/status` field `name` (kB) in bytes.
fn proc_status_bytes(pid: u32, name: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
    status
        .lines()
        .find_map(|l| l.strip_prefix(name))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map(|kb| kb * 1024)
        .expect("field in /proc status")
}

/// Resets the process's peak RSS (VmHWM) to its current RSS, so the next reading is the peak
/// of what follows. Returns the current RSS.
fn reset_peak_rss(pid: u32) -> u64 {
    std::fs::write(format!("/proc/{pid}/clear_refs"), "5").expect("reset VmHWM");
    proc_status_bytes(pid, "VmRSS:")
}

async fn batch_get(c: &common::TestCluster, body: &serde_json::Value) -> reqwest::Response {
    reqwest::Client::new()
        .post(format!("{}/v1/kv/ks:batch-get", c.http(0)))
        .json(body)
        .send()
        .await
        .expect("batch-get sent")
}

async fn error_of(resp: reqwest::Response) -> (u16, String, String) {
    let status = resp.status().as_u16();
    let body: serde_json::Value = resp.json().await.expect("a JSON error body");
    let field = |f: &str| body["error"][f].as_str().expect("error field").to_string();
    (status, field("code"), field("message"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batch_get_of_one_big_key_named_1000_times_is_refused_cheaply() {
    // Regression (issue 15): a 10 KB batch-get naming one 1 MiB key 1,000 times built a 1 GiB
    // answer (peak RSS 4.2 GB); keys are now fetched once and the answer is capped.
    let c = one_node(|_| {}).await;
    let a = c.client(0);
    let big = vec![b'x'; MIB];
    a.put("ks", b"big", &big, &Opts::default())
        .await
        .expect("put big");
    a.put("ks", b"small", b"s", &Opts::default())
        .await
        .expect("put small");
    let pid = c.pid(0).expect("node pid");

    let before = reset_peak_rss(pid);
    let resp = batch_get(&c, &json!({"keys": vec!["big"; 1000]})).await;
    let (status, code, message) = error_of(resp).await;
    let growth = proc_status_bytes(pid, "VmHWM:").saturating_sub(before);
    eprintln!("refused: peak RSS grew {} KiB", growth / 1024);
    assert_eq!(
        (status, code.as_str()),
        (422, "response_too_large"),
        "{message}"
    );
    assert!(message.contains("67108864"), "names the cap: {message}");
    assert!(
        growth < 32 * MIB as u64,
        "peak RSS grew {} MiB refusing a 1 GiB answer",
        growth / MIB as u64
    );

    // Repeats that fit are answered, each as asked, in request order, without a copy per repeat.
    let before = reset_peak_rss(pid);
    let mut keys = vec!["big"; 40];
    keys.insert(3, "small");
    keys.insert(7, "missing");
    let resp = batch_get(&c, &json!({"keys": keys})).await;
    assert_eq!(resp.status().as_u16(), 200);
    let length = resp.content_length().expect("content-length");
    let body: serde_json::Value = resp.json().await.expect("JSON answer");
    let growth = proc_status_bytes(pid, "VmHWM:").saturating_sub(before);
    eprintln!("answered: peak RSS grew {} KiB", growth / 1024);
    assert!(length > 40 * MIB as u64);
    let results = body["results"].as_array().expect("results");
    assert_eq!(results.len(), 42);
    for (r, k) in results.iter().zip(&keys) {
        assert_eq!(r["key"], *k);
        match *k {
            "big" => assert_eq!(r["value"].as_str().map(str::len), Some(MIB)),
            "small" => assert_eq!(r["value"], "s"),
            _ => assert_eq!((&r["found"], &r["value"]), (&json!(false), &json!(null))),
        }
    }
    assert_eq!(body["receipts"].as_array().map(Vec::len), Some(1));
    assert!(
        growth < 32 * MIB as u64,
        "peak RSS grew {} MiB answering 40 repeats of a 1 MiB key (one copy each: 40 MiB)",
        growth / MIB as u64
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batch_get_of_many_distinct_big_keys_is_refused_before_they_are_copied() {
    // Regression (issue 15): distinct keys were all copied out of the state machine before
    // anything counted their size.
    // The smallest cap a config may set: the largest value.
    // Write buffers large enough that the 17 MiB written below are not flushed to a table
    // while the refusal is measured (a flush's buffers would show in the peak, not a copy).
    let c = one_node(|cfg| {
        cfg.batch_get_response_bytes_max = 16 * MIB as u64;
        cfg.storage.memtable_bytes = 64 * MIB as u64;
    })
    .await;
    let a = c.client(0);
    let big = vec![b'y'; MIB];
    let keys: Vec<String> = (0..17).map(|i| format!("big-{i}")).collect();
    for k in &keys {
        a.put("ks", k.as_bytes(), &big, &Opts::default())
            .await
            .expect("put");
    }
    let pid = c.pid(0).expect("node pid");
    let before = reset_peak_rss(pid);
    let (status, code, message) = error_of(batch_get(&c, &json!({"keys": keys})).await).await;
    let growth = proc_status_bytes(pid, "VmHWM:").saturating_sub(before);
    assert_eq!(
        (status, code.as_str()),
        (422, "response_too_large"),
        "{message}"
    );
    // The node refuses from the sizes, before copying any value out of the state machine.
    assert!(
        message.contains("the values asked for total more than 16777216")
            && message.contains("batch_get_response_bytes_max"),
        "{message}"
    );
    assert!(
        growth < 8 * MIB as u64,
        "peak RSS grew {} MiB refusing 17 MiB of values",
        growth / MIB as u64
    );
    let resp = batch_get(&c, &json!({"keys": &keys[..10]})).await;
    assert_eq!(resp.status().as_u16(), 200);
    let body: serde_json::Value = resp.json().await.expect("JSON");
    assert_eq!(body["results"].as_array().map(Vec::len), Some(10));
}

/// Sends `request` on `stream` and reads one response: (status, body). None if the server
/// closed the connection (or reset it) instead of answering.
async fn exchange(stream: &mut TcpStream, request: &str) -> Option<(u16, String)> {
    stream.write_all(request.as_bytes()).await.ok()?;
    read_response(stream).await
}

async fn read_response(stream: &mut TcpStream) -> Option<(u16, String)> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        let n = tokio::time::timeout(Duration::from_secs(10), stream.read(&mut chunk))
            .await
            .expect("an answer or a close within 10 s")
            .ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_lowercase();
    let status: u16 = head.split(' ').nth(1)?.parse().ok()?;
    let length: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0);
    while buf.len() < head_end + length {
        let n = stream.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    Some((
        status,
        String::from_utf8_lossy(&buf[head_end..head_end + length]).into_owned(),
    ))
}

const CLUSTER_REQUEST: &str = "GET /v1/cluster HTTP/1.1\r\nhost: tunekv\r\n\r\n";

/// Waits until the server closes `stream` (EOF or reset), at most until `deadline`.
async fn closed_by(stream: &mut TcpStream, deadline: Instant) -> bool {
    let mut buf = [0u8; 1024];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, stream.read(&mut buf)).await {
            Err(_) => return false,
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            Ok(Ok(_)) => continue,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_and_half_sent_connections_are_closed() {
    // Regression (issue 15): the HTTP listener closed no idle or half-sent connection (500
    // idle connections stayed open 35 s and more).
    let c = one_node(|cfg| {
        cfg.http_header_read_timeout_ms = 1000;
        cfg.http_idle_timeout_ms = 2000;
    })
    .await;
    let addr = c.http(0).trim_start_matches("http://").to_string();
    let mut idle = Vec::new();
    for _ in 0..20 {
        idle.push(TcpStream::connect(&addr).await.expect("connect"));
    }
    let mut half_sent = TcpStream::connect(&addr).await.expect("connect");
    half_sent
        .write_all(b"GET /v1/cluster HTTP/1.1\r\nhost: tunekv\r\nx-slow: ")
        .await
        .expect("write");
    let mut kept_alive = TcpStream::connect(&addr).await.expect("connect");
    assert_eq!(
        exchange(&mut kept_alive, CLUSTER_REQUEST)
            .await
            .map(|r| r.0),
        Some(200)
    );
    let mut stalled_body = TcpStream::connect(&addr).await.expect("connect");
    stalled_body
        .write_all(
            b"PUT /v1/kv/ks/k HTTP/1.1\r\nhost: tunekv\r\ncontent-length: 100\r\n\r\nonly ten b",
        )
        .await
        .expect("write");

    let deadline = Instant::now() + Duration::from_secs(15);
    assert!(
        closed_by(&mut half_sent, deadline).await,
        "a half-sent head is cut off"
    );
    for (i, s) in idle.iter_mut().enumerate() {
        assert!(closed_by(s, deadline).await, "idle connection {i} closed");
    }
    assert!(
        closed_by(&mut kept_alive, deadline).await,
        "an idle keep-alive connection is closed"
    );
    let (status, body) = read_response(&mut stalled_body)
        .await
        .expect("a stalled body is answered");
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("stalled"), "{body}");
    // The node still serves, and nothing was written.
    let r = c
        .client(0)
        .get("ks", b"k", &Opts::default())
        .await
        .expect("get");
    assert_eq!(r.value, None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_over_the_cap_are_refused_while_existing_ones_work() {
    // Regression (issue 15): the HTTP listener had no connection cap, unlike the RESP one.
    const CAP: usize = 8;
    let c = one_node(|cfg| cfg.http_connections_max = CAP).await;
    let addr = c.http(0).trim_start_matches("http://").to_string();
    // Connections the harness used may still be closing: retry until CAP of ours answer.
    let mut held: Vec<TcpStream> = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    while held.len() < CAP {
        assert!(
            Instant::now() < deadline,
            "could not open {CAP} connections"
        );
        let mut s = TcpStream::connect(&addr).await.expect("connect");
        match exchange(&mut s, CLUSTER_REQUEST).await {
            Some((200, _)) => held.push(s),
            _ => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
    for _ in 0..3 {
        let mut extra = TcpStream::connect(&addr).await.expect("connect");
        match exchange(&mut extra, CLUSTER_REQUEST).await {
            None => {}
            Some((status, body)) => {
                assert_eq!(status, 503, "{body}");
                assert!(body.contains("http_connections_max"), "{body}");
            }
        }
    }
    for (i, s) in held.iter_mut().enumerate() {
        assert_eq!(
            exchange(s, CLUSTER_REQUEST).await.map(|r| r.0),
            Some(200),
            "held connection {i} still works"
        );
    }
    drop(held.pop());
    eventually(Duration::from_secs(10), "a freed slot", || {
        let addr = addr.clone();
        async move {
            let mut s = TcpStream::connect(&addr).await.ok()?;
            (exchange(&mut s, CLUSTER_REQUEST).await?.0 == 200).then_some(())
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_are_typed_json_and_echo_little() {
    // Regression (issue 15): invalid UTF-8 in a path was a 400 text/plain, an empty key and
    // unknown routes or methods had empty bodies, an unknown field's name came back whole, and
    // a JSON array was accepted as a keyspace spec.
    let c = one_node(|_| {}).await;
    let http = reqwest::Client::new();
    let base = c.http(0);
    let cases = [
        ("GET", "/v1/kv/ks/", "", 400, "key_invalid"),
        ("GET", "/v1/kv/ks/%FF", "", 404, "not_found"),
        ("PUT", "/v1/keyspaces/%FF", "", 400, "keyspace_invalid"),
        ("GET", "/v1/kv/ks/%zz", "", 400, "key_invalid"),
        ("GET", "/nope", "", 404, "route_not_found"),
        ("GET", "/v1/kv/ks:frobnicate", "", 405, "method_not_allowed"),
        ("DELETE", "/v1/cluster", "", 405, "method_not_allowed"),
        ("POST", "/v1/kv/ks:frobnicate", "{}", 404, "route_not_found"),
        ("POST", "/v1/kv/ks:scan", "", 405, "method_not_allowed"),
        ("GET", "/v1/kv/ks:scan?cursor=x", "", 400, "bad_request"),
        (
            "PUT",
            "/v1/keyspaces/arr",
            "[\"ordered\", 1, 1]",
            400,
            "keyspace_invalid",
        ),
        (
            "GET",
            "/v1/kv/ks/k?key_encoding=base64url",
            "",
            400,
            "key_invalid",
        ),
        ("GET", "/v1/kv/ks/k?nope=1", "", 400, "bad_request"),
    ];
    for (method, path, body, status, code) in cases {
        let resp = http
            .request(method.parse().expect("method"), format!("{base}{path}"))
            .body(body)
            .send()
            .await
            .expect("sent");
        assert_eq!(
            resp.headers()
                .get("content-type")
                .and_then(|v| v.to_str().ok()),
            Some("application/json"),
            "{method} {path}"
        );
        if status == 405 {
            assert!(resp.headers().contains_key("allow"), "{method} {path}");
        }
        let (got_status, got_code, message) = error_of(resp).await;
        assert_eq!(
            (got_status, got_code.as_str()),
            (status, code),
            "{method} {path}: {message}"
        );
        assert!(!message.is_empty());
    }
    // A 10 MB unknown field name is echoed cut.
    let name = "n".repeat(10 * MIB);
    let resp = http
        .put(format!("{base}/v1/keyspaces/other"))
        .body(format!("{{\"{name}\": 1}}"))
        .send()
        .await
        .expect("sent");
    let (status, code, message) = error_of(resp).await;
    assert_eq!((status, code.as_str()), (400, "keyspace_invalid"));
    assert!(message.contains("unknown field"), "{message}");
    assert!(message.len() < 1024, "{} bytes", message.len());
    // Nothing was created.
    let list: serde_json::Value = http
        .get(format!("{base}/v1/keyspaces"))
        .send()
        .await
        .expect("sent")
        .json()
        .await
        .expect("json");
    assert_eq!(
        list["keyspaces"].as_array().map(Vec::len),
        Some(1),
        "{list}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_that_are_not_utf8_round_trip_over_http() {
    // Regression (issue 15): keys that are not UTF-8 (writable over RESP) could not be named
    // over HTTP at all.
    let c = one_node(|_| {}).await;
    let http = reqwest::Client::new();
    let base = c.http(0);
    let key = b"\xff\x00k\xfe";
    let resp = http
        .put(format!(
            "{base}/v1/kv/ks/{}?key_encoding=base64url",
            b64(key)
        ))
        .body("v1")
        .send()
        .await
        .expect("put");
    assert_eq!(resp.status().as_u16(), 200);
    // Read back percent-encoded, and as base64url.
    let resp = http
        .get(format!("{base}/v1/kv/ks/%FF%00k%FE"))
        .send()
        .await
        .expect("get");
    assert_eq!(resp.status().as_u16(), 200);
    assert_eq!(resp.text().await.expect("body"), "v1");
    let body: serde_json::Value = http
        .get(format!("{base}/v1/kv/ks/%FF%00k%FE?format=json"))
        .send()
        .await
        .expect("get")
        .json()
        .await
        .expect("json");
    assert_eq!(body["key"], json!(null));
    assert_eq!(body["key_base64url"], b64(key));
    assert_eq!(body["value"], "v1");
    let body: serde_json::Value = http
        .post(format!("{base}/v1/kv/ks:batch-get"))
        .json(&json!({"keys": [b64(key), b64(b"absent"), b64(key)], "key_encoding": "base64url"}))
        .send()
        .await
        .expect("batch-get")
        .json()
        .await
        .expect("json");
    let results = body["results"].as_array().expect("results");
    assert_eq!(results.len(), 3);
    assert_eq!(results[0]["key"], b64(key));
    assert_eq!(results[0]["value"], "v1");
    assert_eq!(results[1]["found"], false);
    assert_eq!(results[2], results[0]);
    // The client names `.` and `..` (which URL parsing drops) in base64url.
    let a = c.client(0);
    for (k, v) in [(&b"."[..], &b"dot"[..]), (b"..", b"dotdot")] {
        a.put("ks", k, v, &Opts::default()).await.expect("put");
    }
    for (k, v) in [(&b"."[..], &b"dot"[..]), (b"..", b"dotdot")] {
        let r = a.get("ks", k, &Opts::default()).await.expect("get");
        assert_eq!(r.value.as_deref(), Some(v));
    }
}

fn cli(args: &[&str]) -> (i32, String, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_tunekv"))
        .args(args)
        .output()
        .expect("ran tunekv");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_names_transport_causes_and_encodes_dot_keys() {
    // Regression (issue 15): an unreachable node printed "error sending request for url" with
    // no cause, a malformed --node printed "builder error", and keys "." and ".." were dropped
    // by URL normalisation.
    let closed_port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        l.local_addr().expect("addr").port()
    };
    let refused = format!("127.0.0.1:{closed_port}");
    let (code, _, err) = cli(&["get", "ks", "k", "--no-session", "--node", &refused]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("connection refused"), "{err}");
    let (code, _, err) = cli(&["cluster", "--node", "no such host:port"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("not a host:port"), "{err}");
    let (code, _, err) = cli(&["get", "ks", "", "--no-session", "--node", &refused]);
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("key_invalid"),
        "an empty key never leaves the CLI: {err}"
    );

    let c = one_node(|_| {}).await;
    let node = c.http(0);
    for (key, value) in [(".", "one dot"), ("..", "two dots"), ("a/./b", "slashes")] {
        let (code, _, err) = cli(&["put", "ks", key, value, "--no-session", "--node", &node]);
        assert_eq!(code, 0, "put {key:?}: {err}");
    }
    for (key, value) in [(".", "one dot"), ("..", "two dots"), ("a/./b", "slashes")] {
        let (code, out, err) = cli(&["get", "ks", key, "--no-session", "--node", &node]);
        assert_eq!((code, out.trim()), (0, value), "get {key:?}: {err}");
    }
}

/// The 99th percentile of `samples`.
fn p99(mut samples: Vec<Duration>) -> Duration {
    samples.sort();
    samples[(samples.len() * 99 / 100).min(samples.len() - 1)]
}

/// A normal client's latencies: `n` RESP GETs on one connection and `n` HTTP GETs on one
/// keep-alive connection, one at a time. Returns the p99 of each.
async fn normal_client(c: &common::TestCluster, n: usize) -> (Duration, Duration) {
    let resp = c.configs[0].resp.clone().expect("resp address");
    let resp_p99 = tokio::task::spawn_blocking(move || {
        let mut r = common::raw::Raw::connect(&resp);
        let _ = r.cmd(&["SELECT", "ks"]);
        let mut took = Vec::with_capacity(n);
        for _ in 0..n {
            let t = Instant::now();
            assert_eq!(r.cmd(&["GET", "k"]), common::raw::bulk("v"));
            took.push(t.elapsed());
        }
        p99(took)
    })
    .await
    .expect("RESP client");
    let http = reqwest::Client::new();
    let url = format!("{}/v1/kv/ks/k", c.http(0));
    let mut took = Vec::with_capacity(n);
    for _ in 0..n {
        let t = Instant::now();
        let r = http.get(&url).send().await.expect("HTTP GET");
        assert_eq!(r.status().as_u16(), 200);
        r.bytes().await.expect("body");
        took.push(t.elapsed());
    }
    (resp_p99, p99(took))
}

/// Sends `bytes` one byte every 200 ms until the server closes the connection or `until`;
/// true if the server closed it.
async fn drip(mut s: TcpStream, bytes: &'static [u8], until: Instant) -> bool {
    for b in bytes.iter().cycle() {
        if Instant::now() >= until {
            return false;
        }
        if s.write_all(&[*b]).await.is_err() {
            return true;
        }
        // A refusal (RESP says why, then closes) or a close ends the drip.
        let mut buf = [0u8; 256];
        match tokio::time::timeout(Duration::from_millis(200), s.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            Ok(Ok(_)) | Err(_) => {}
        }
    }
    unreachable!("cycle never ends")
}

/// Node 1's `/metrics` text.
async fn metrics_text(c: &common::TestCluster) -> String {
    reqwest::get(format!("{}/metrics", c.http(0)))
        .await
        .expect("metrics")
        .text()
        .await
        .expect("metrics text")
}

/// The value of the metric line starting with `series` in a `/metrics` text (0 if absent).
fn metric(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_node_holds_up_under_floods_slowloris_and_oversized_frames() {
    // Issue 22's soak, bounded (about 10 s of abuse): 2,000 idle connections, slowloris
    // clients on both protocols and a stream of oversized frames against one node, while a
    // normal client's p99 stays within 5x of its quiet run and the node's memory stays within
    // what its budgets allow.
    const BUDGET: usize = 40 * MIB;
    let c = one_node(|cfg| {
        cfg.http_header_read_timeout_ms = 2000;
        cfg.resp_request_timeout_ms = 2000;
        cfg.http_bodies_bytes_max = BUDGET;
        cfg.resp_pending_bytes_max = BUDGET;
    })
    .await;
    c.client(0)
        .put("ks", b"k", b"v", &Opts::default())
        .await
        .expect("put");
    let pid = c.pid(0).expect("node pid");
    let http_addr = c.http(0).trim_start_matches("http://").to_string();
    let resp_addr = c.configs[0].resp.clone().expect("resp address");
    // Warm both paths, then the quiet run.
    normal_client(&c, 50).await;
    let quiet = normal_client(&c, 400).await;

    let before = reset_peak_rss(pid);
    let until = Instant::now() + Duration::from_secs(10);
    let mut abuse = tokio::task::JoinSet::new();
    // 2,000 connections that send nothing, held to the end.
    let mut idle = Vec::new();
    for i in 0..2000 {
        let addr = if i % 2 == 0 { &http_addr } else { &resp_addr };
        idle.push(
            TcpStream::connect(addr)
                .await
                .expect("connect an idle connection"),
        );
    }
    // Slowloris: a request head or a RESP request dripped a byte at a time, never finished.
    for i in 0..100 {
        let (addr, bytes): (&str, &'static [u8]) = if i % 2 == 0 {
            (
                &http_addr,
                b"GET /v1/kv/ks/k HTTP/1.1\r\nx-a: aaaaaaaaaaaaaaaaaaaaaaaaa",
            )
        } else {
            (
                &resp_addr,
                b"*2\r\n$3\r\nGET\r\n$99999\r\nkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkk",
            )
        };
        let s = TcpStream::connect(addr).await.expect("connect");
        abuse.spawn(async move { ("slowloris", drip(s, bytes, until).await) });
    }
    // Oversized frames: a RESP bulk of 1 GB declared, an HTTP body of 1 GB declared, and HTTP
    // chunked bodies of 20 MiB streamed (the body budget holds at most two at once).
    for task in 0..6 {
        let (http_addr, resp_addr) = (http_addr.clone(), resp_addr.clone());
        abuse.spawn(async move {
            let mut refused = true;
            while Instant::now() < until {
                let (addr, head): (&str, &[u8]) = match task % 3 {
                    0 => (&resp_addr, b"*2\r\n$3\r\nGET\r\n$1000000000\r\n"),
                    1 => (
                        &http_addr,
                        b"PUT /v1/kv/ks/big HTTP/1.1\r\nhost: t\r\ncontent-length: 1000000000\r\n\r\n",
                    ),
                    _ => (
                        &http_addr,
                        b"PUT /v1/kv/ks/big HTTP/1.1\r\nhost: t\r\ntransfer-encoding: chunked\r\n\r\n",
                    ),
                };
                let mut s = TcpStream::connect(addr).await.expect("connect");
                let _ = s.write_all(head).await;
                if task % 3 == 2 {
                    let chunk = format!("100000\r\n{}\r\n", "x".repeat(0x100000));
                    for _ in 0..20 {
                        if s.write_all(chunk.as_bytes()).await.is_err() {
                            break;
                        }
                    }
                }
                let mut answer = vec![0u8; 512];
                let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut answer))
                    .await
                    .ok()
                    .and_then(Result::ok)
                    .unwrap_or(0);
                let answer = String::from_utf8_lossy(&answer[..n]).to_string();
                refused &= answer.starts_with("-ERR Protocol error")
                    || answer.starts_with("HTTP/1.1 413")
                    || answer.starts_with("HTTP/1.1 503");
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
            ("oversized", refused)
        });
    }
    // The normal client, once everything above is under way.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let loaded = normal_client(&c, 400).await;
    let peak = proc_status_bytes(pid, "VmHWM:");
    while let Some(r) = abuse.join_next().await {
        let (what, ok) = r.expect("abuse task");
        assert!(
            ok,
            "every {what} connection is refused or cut off by the node"
        );
    }
    eprintln!(
        "p99 quiet: RESP {:?} HTTP {:?}; under abuse: RESP {:?} HTTP {:?}; peak RSS grew {} MiB",
        quiet.0,
        quiet.1,
        loaded.0,
        loaded.1,
        peak.saturating_sub(before) / MIB as u64
    );
    // Below 2 ms loopback latency is scheduler noise on a 2-core machine: count it as 2 ms.
    let floor = Duration::from_millis(2);
    for (what, q, l) in [("RESP", quiet.0, loaded.0), ("HTTP", quiet.1, loaded.1)] {
        assert!(
            l <= 5 * q.max(floor),
            "{what} p99 {l:?} under abuse exceeds 5x the quiet run's {q:?}"
        );
    }
    // Budgets: both byte budgets full, plus each of ~2,100 connections' own buffers
    // (64 KiB is generous: 16 KiB in, 16 KiB out for RESP; hyper's read buffer for HTTP).
    let bound = 2 * BUDGET as u64 + 2100 * 64 * 1024;
    assert!(
        peak.saturating_sub(before) <= bound,
        "peak RSS grew {} MiB, more than the budgets' {} MiB",
        peak.saturating_sub(before) / MIB as u64,
        bound / MIB as u64
    );
    // Every kind of abuse was counted, and the node still serves.
    drop(idle);
    let text = metrics_text(&c).await;
    for series in [
        r#"tunekv_connections_cut_total{protocol="http",reason="header_timeout"}"#,
        r#"tunekv_connections_cut_total{protocol="resp",reason="request_timeout"}"#,
        r#"tunekv_connections_cut_total{protocol="resp",reason="protocol_error"}"#,
    ] {
        assert!(metric(&text, series) > 0.0, "{series} counted:\n{text}");
    }
    let r = c
        .client(0)
        .get("ks", b"k", &Opts::default())
        .await
        .expect("get after the abuse");
    assert_eq!(r.value.as_deref(), Some(&b"v"[..]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resp_idle_connections_are_closed_when_asked_but_not_subscribers() {
    // `resp_idle_timeout_ms` (off by default, as Redis's `timeout 0`): an idle connection is
    // closed, a busy one and a subscribed one are not.
    let c = one_node(|cfg| cfg.resp_idle_timeout_ms = 1000).await;
    let addr = c.configs[0].resp.clone().expect("resp address");
    let mut idle = TcpStream::connect(&addr).await.expect("connect");
    let mut subscribed = TcpStream::connect(&addr).await.expect("connect");
    subscribed
        .write_all(b"*2\r\n$9\r\nSUBSCRIBE\r\n$2\r\nch\r\n")
        .await
        .expect("subscribe");
    let mut busy = TcpStream::connect(&addr).await.expect("connect");
    let started = Instant::now();
    let mut buf = [0u8; 256];
    while started.elapsed() < Duration::from_millis(2500) {
        busy.write_all(b"PING\r\n").await.expect("ping");
        let n = busy.read(&mut buf).await.expect("pong");
        assert_eq!(&buf[..n], b"+PONG\r\n");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    assert!(
        closed_by(&mut idle, Instant::now() + Duration::from_secs(5)).await,
        "the idle connection is closed"
    );
    let n = subscribed.read(&mut buf).await.expect("subscribe reply");
    assert!(
        n > 0 && buf[..n].starts_with(b"*3\r\n$9\r\nsubscribe"),
        "{:?}",
        String::from_utf8_lossy(&buf[..n])
    );
    assert!(
        !closed_by(
            &mut subscribed,
            Instant::now() + Duration::from_millis(1500)
        )
        .await,
        "a subscribed connection stays open"
    );
    let text = metrics_text(&c).await;
    let cut = r#"tunekv_connections_cut_total{protocol="resp",reason="idle_timeout"}"#;
    assert!(metric(&text, cut) >= 1.0, "{text}");
}
