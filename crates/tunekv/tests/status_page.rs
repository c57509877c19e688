//! Issue 20: the status page in a real browser. Debian's headless Chromium, driven through
//! chromedriver's WebDriver API (plain JSON over HTTP), loads `GET /` of a running 3-node
//! cluster, waits for the page's live refresh, finds every node's address, every group and
//! the charts, saves a screenshot; then a node is killed and the same page, still open, marks
//! it down within a few seconds. A cache's own page shows its reads, memory and feed.

mod common;

use base64::Engine;
use serde_json::{json, Value};
use std::path::PathBuf;
use std::time::{Duration, Instant};
use tunekv_client::Opts;

fn tool(env: &str, path: &str) -> PathBuf {
    let p = std::env::var(env)
        .map(PathBuf::from)
        .unwrap_or_else(|_| PathBuf::from(path));
    assert!(
        p.exists(),
        "{} missing: run scripts/test once (it installs Debian's chromium and chromium-driver) \
         or set {env}",
        p.display()
    );
    p
}

/// A chromedriver process and one headless Chromium session it drives.
struct Browser {
    driver: tokio::process::Child,
    base: String,
    session: String,
    http: reqwest::Client,
    _profile: tempfile::TempDir,
}

impl Browser {
    async fn start() -> Browser {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let driver =
            tokio::process::Command::new(tool("TUNEKV_CHROMEDRIVER", "/usr/bin/chromedriver"))
                .arg(format!("--port={port}"))
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .kill_on_drop(true)
                .spawn()
                .expect("start chromedriver");
        let base = format!("http://127.0.0.1:{port}");
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(60))
            .build()
            .expect("http client");
        common::eventually(Duration::from_secs(20), "chromedriver answers", || {
            let (http, url) = (http.clone(), format!("{base}/status"));
            async move {
                let v: Value = http.get(url).send().await.ok()?.json().await.ok()?;
                (v["value"]["ready"] == true).then_some(())
            }
        })
        .await;
        let profile = tempfile::tempdir().expect("profile dir");
        let chromium = tool("TUNEKV_CHROMIUM", "/usr/bin/chromium");
        // The flags keep Chromium off the network (this machine's network is closed) and
        // sandboxless (tests run as root).
        let caps = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": chromium,
                "args": [
                    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                    "--no-first-run", "--disable-background-networking",
                    "--disable-component-update", "--disable-sync", "--window-size=1280,1100",
                    format!("--user-data-dir={}", profile.path().display()),
                ],
            },
        }}});
        let v: Value = http
            .post(format!("{base}/session"))
            .json(&caps)
            .send()
            .await
            .expect("new session")
            .json()
            .await
            .expect("session JSON");
        let session = v["value"]["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("no session: {v}"))
            .to_string();
        Browser {
            driver,
            base,
            session,
            http,
            _profile: profile,
        }
    }

    async fn call(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Value {
        let url = format!("{}/session/{}{path}", self.base, self.session);
        let mut req = self.http.request(method, url);
        if let Some(b) = body {
            req = req.json(&b);
        }
        let v: Value = req
            .send()
            .await
            .expect("WebDriver call")
            .json()
            .await
            .expect("WebDriver JSON");
        assert!(v["value"]["error"].is_null(), "WebDriver {path}: {v}");
        v["value"].clone()
    }

    async fn open(&self, url: &str) {
        self.call(reqwest::Method::POST, "/url", Some(json!({ "url": url })))
            .await;
    }

    /// Runs `script` (a function body) in the page and returns its value.
    async fn eval(&self, script: &str) -> Value {
        self.call(
            reqwest::Method::POST,
            "/execute/sync",
            Some(json!({"script": script, "args": []})),
        )
        .await
    }

    async fn screenshot(&self) -> Vec<u8> {
        let b64 = self.call(reqwest::Method::GET, "/screenshot", None).await;
        base64::engine::general_purpose::STANDARD
            .decode(b64.as_str().expect("base64 PNG"))
            .expect("PNG bytes")
    }

    async fn quit(mut self) {
        let _ = self
            .http
            .delete(format!("{}/session/{}", self.base, self.session))
            .send()
            .await;
        let _ = self.driver.kill().await;
    }
}

/// The page's HTML as the browser holds it now.
async fn page_html(b: &Browser) -> String {
    b.eval("return document.documentElement.outerHTML;")
        .await
        .as_str()
        .unwrap_or_default()
        .to_string()
}

/// The page's live refresh count (`data-refreshed` on body, bumped by each refresh).
async fn refreshes(b: &Browser) -> u64 {
    b.eval("return Number(document.body.dataset.refreshed || 0);")
        .await
        .as_u64()
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_status_page_shows_the_cluster_live_in_a_browser() {
    let mut c = common::start(3, false).await;
    let n1 = c.client(0);
    common::create_keyspace(&n1, "web", 2).await;
    for i in 0..20 {
        n1.put("web", format!("k{i}").as_bytes(), b"v", &Opts::default())
            .await
            .expect("put");
    }
    // A second's lag sample on the node, so the chart has a line.
    tokio::time::sleep(Duration::from_millis(1500)).await;

    let b = Browser::start().await;
    b.open(&format!("http://{}/", c.configs[0].http)).await;
    let first = refreshes(&b).await;
    common::eventually(
        Duration::from_secs(20),
        "the page refreshes itself",
        || async { (refreshes(&b).await >= first + 2).then_some(()) },
    )
    .await;

    let html = page_html(&b).await;
    for cfg in &c.configs {
        assert!(html.contains(&cfg.http), "{} not on the page", cfg.http);
    }
    for group in ["meta", "web/shard0", "web/shard1"] {
        assert!(html.contains(group), "group {group} not on the page");
    }
    let charts = b
        .eval("return document.querySelectorAll('svg').length;")
        .await;
    assert!(charts.as_u64() >= Some(2), "charts: {charts}");
    let lines = b
        .eval("return document.querySelectorAll('#lag polyline').length;")
        .await;
    assert!(lines.as_u64() >= Some(3), "a lag line per group: {lines}");
    let up = b
        .eval("return [...document.querySelectorAll('#nodes td.up')].length;")
        .await;
    assert_eq!(up.as_u64(), Some(3), "every node up");

    let png = b.screenshot().await;
    assert!(png.starts_with(b"\x89PNG"), "a PNG screenshot");
    let shot = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("status-page.png");
    std::fs::write(&shot, &png).expect("save the screenshot");
    eprintln!("screenshot: {}", shot.display());

    // Node 3 goes away; the open page marks it down on its own within a few seconds.
    c.kill(2);
    let killed = Instant::now();
    common::eventually(
        Duration::from_secs(10),
        "the page marks node 3 down",
        || async {
            let health = b
            .eval(
                "const td = document.querySelector('#nodes tr[data-node=\"3\"] td:nth-child(4)'); \
                 return td ? td.textContent : null;",
            )
            .await;
            (health == "down").then_some(())
        },
    )
    .await;
    eprintln!("marked down {:?} after the kill", killed.elapsed());
    let up = b
        .eval("return [...document.querySelectorAll('#nodes td.up')].length;")
        .await;
    assert_eq!(up.as_u64(), Some(2), "the other two stay up");

    // A cache has a page of its own: its reads, memory and the feed's position per shard.
    let cache_http = c.start_cache(&[]).await.expect("cache starts");
    let cache = tunekv_client::Client::new(&format!("http://{cache_http}"));
    for _ in 0..3 {
        cache
            .get("web", b"k1", &Opts::level("eventual"))
            .await
            .expect("cache read");
    }
    b.open(&format!("http://{cache_http}/")).await;
    common::eventually(
        Duration::from_secs(20),
        "the cache page refreshes",
        || async { (refreshes(&b).await >= 2).then_some(()) },
    )
    .await;
    let stats = b
        .eval("return document.querySelector('#stats').textContent;")
        .await;
    let stats = stats.as_str().unwrap_or_default();
    assert!(
        stats.contains("hit ratio") && stats.contains("misses"),
        "{stats}"
    );
    let feed = b
        .eval("return document.querySelector('#keyspaces').textContent;")
        .await;
    assert!(
        feed.as_str().unwrap_or_default().contains("web"),
        "the cached keyspace and its shards: {feed}"
    );
    let png = b.screenshot().await;
    let shot = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("cache-page.png");
    std::fs::write(&shot, &png).expect("save the screenshot");
    b.quit().await;
}

/// Fills the page's sign-in form with `user` and `password` and submits it.
/// Waits until the page shows its sign-in form.
async fn sign_in_form_shows(b: &Browser, what: &str) {
    common::eventually(Duration::from_secs(20), what, || async {
        let shown = b
            .eval("const f = document.getElementById('login'); return !!f && !f.hidden;")
            .await;
        (shown == json!(true)).then_some(())
    })
    .await;
}

async fn sign_in(b: &Browser, user: &str, password: &str) {
    let script = format!(
        "const f = document.getElementById('login');
         f.querySelector('[name=user]').value = {};
         f.querySelector('[name=password]').value = {};
         f.querySelector('button').click();
         return true;",
        serde_json::to_string(user).expect("json"),
        serde_json::to_string(password).expect("json"),
    );
    b.eval(&script).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_auth_on_the_status_page_signs_in_first() {
    // A browser cannot send a bearer token when it opens a page: with auth on the page comes
    // without cluster data and a sign-in form; its script then sends the token it got.
    let mut c = common::start_secure(3).await;
    let password = c.credentials().expect("read").expect("auth on").password;
    let b = Browser::start().await;
    b.open(&format!("http://{}/", c.configs[0].http)).await;
    sign_in_form_shows(&b, "the sign-in form shows").await;
    let html = page_html(&b).await;
    assert!(
        !html.contains(&c.configs[1].http),
        "a node's address shown before signing in"
    );
    assert!(
        !html.contains(r#"<span id="served-by">1</span>"#),
        "the node's id shown before signing in"
    );
    sign_in(&b, "root", "not-the-password").await;
    common::eventually(
        Duration::from_secs(20),
        "a wrong password is refused",
        || async {
            let text = b
                .eval("return document.getElementById('login-error').textContent;")
                .await;
            text.as_str()
                .is_some_and(|t| t.contains("wrong user name or password"))
                .then_some(())
        },
    )
    .await;
    sign_in(&b, "root", &password).await;
    common::eventually(
        Duration::from_secs(20),
        "the page shows the cluster",
        || async {
            let html = page_html(&b).await;
            let all = c.configs.iter().all(|cfg| html.contains(&cfg.http));
            (all && refreshes(&b).await >= 2).then_some(())
        },
    )
    .await;
    let hidden = b
        .eval("return document.getElementById('login').hidden;")
        .await;
    assert_eq!(hidden, json!(true), "the form goes once signed in");
    let id = b
        .eval("return document.getElementById('served-by').textContent;")
        .await;
    assert_eq!(id, json!("1"), "signed in, the page names its node");
    // A cache in front of this cluster: its page signs in the same way (the cache passes the
    // login on to a node).
    let http = c.start_cache(&[]).await.expect("the cache starts");
    b.open(&format!("http://{http}/")).await;
    sign_in_form_shows(&b, "the cache's sign-in form shows").await;
    sign_in(&b, "root", &password).await;
    common::eventually(
        Duration::from_secs(20),
        "the cache's page shows its numbers",
        || async {
            let rows = b
                .eval("return document.querySelectorAll('#stats tr').length;")
                .await;
            (rows.as_u64().unwrap_or(0) > 0 && refreshes(&b).await >= 2).then_some(())
        },
    )
    .await;
    b.quit().await;
}
