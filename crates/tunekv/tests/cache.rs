//! `tunekv cache` in front of a real cluster: hits obey the level, the herd makes one upstream
//! read, a fill racing a write never leaves a stale value, writes through the cache, and what
//! the cache does when the cluster is gone.

mod common;

use common::{call, eventually};
use std::time::Duration;
use tunekv_client::{Client, Opts, ReadReply};

/// Starts a cache with `args` in front of `c` and returns a client for it.
async fn cache(c: &mut common::TestCluster, args: &[&str]) -> Client {
    let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
    let http = c.start_cache(&args).await.expect("cache starts");
    Client::new(&format!("http://{http}"))
}

/// Waits until the cache follows `ks`'s feed on every shard (its first read loads it).
async fn feed_live(cache: &Client, ks: &str) {
    let _ = cache.get(ks, b"warm-up", &Opts::level("eventual")).await;
    eventually(
        Duration::from_secs(20),
        "the cache's feed is live",
        || async {
            let s = cache.cache_status().await.ok()?;
            let shards = s["keyspaces"]
                .as_array()?
                .iter()
                .find(|k| k["name"] == ks)?["shards"]
                .as_array()?
                .clone();
            shards.iter().all(|s| s["live"] == true).then_some(())
        },
    )
    .await;
}

/// Waits until the cache's feed has reached `index` on `shard`.
async fn fed(cache: &Client, ks: &str, shard: u32, index: u64) {
    eventually(
        Duration::from_secs(20),
        "the cache's feed catches up",
        || async {
            let s = cache.cache_status().await.ok()?;
            let k = s["keyspaces"]
                .as_array()?
                .iter()
                .find(|k| k["name"] == ks)?
                .clone();
            (k["shards"][shard as usize]["fed"].as_u64()? >= index).then_some(())
        },
    )
    .await;
}

fn text(r: &ReadReply) -> Option<String> {
    r.value
        .as_ref()
        .map(|v| String::from_utf8_lossy(v).into_owned())
}

fn counter(status: &serde_json::Value, path: &[&str]) -> u64 {
    let mut v = status;
    for p in path {
        v = &v[*p];
    }
    v.as_u64().unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cache_hits_obey_the_level() {
    let mut c = common::start(3, false).await;
    common::create_keyspace(&c.client(0), "c", 2).await;
    let cache = cache(&mut c, &[]).await;
    feed_live(&cache, "c").await;
    let (n1, n2) = (c.client(0), c.client(1));

    // A miss, then a hit; every answer says it came from the cache. Once the feed has the
    // write, a fill reads at least up to it (from whichever node the cache asks).
    let w = n1.put("c", b"k", b"v0", &Opts::default()).await.unwrap();
    fed(&cache, "c", w.shard, w.index).await;
    let first = cache
        .get("c", b"k", &Opts::level("eventual"))
        .await
        .unwrap();
    assert_eq!(text(&first).as_deref(), Some("v0"));
    assert_eq!(first.receipt.served_by, "cache");
    assert_eq!(first.cache.as_deref(), Some("miss"));
    let again = cache
        .get("c", b"k", &Opts::level("eventual"))
        .await
        .unwrap();
    assert_eq!(again.cache.as_deref(), Some("hit"));
    assert_eq!(text(&again).as_deref(), Some("v0"));

    // Writes to the nodes reach the cache through the feed; a session read with the writer's
    // token, and a strong read, always see the newest write, served from memory when the
    // feed has caught up, never an older value.
    let mut strong_hits = 0;
    for i in 1..=20 {
        let value = format!("v{i}");
        let w = n2
            .put("c", b"k", value.as_bytes(), &Opts::default())
            .await
            .unwrap();
        let r = cache
            .get(
                "c",
                b"k",
                &Opts::level("read_your_writes").session(&w.session),
            )
            .await
            .unwrap();
        assert_eq!(
            text(&r).as_deref(),
            Some(value.as_str()),
            "read_your_writes, round {i}"
        );
        assert!(
            r.receipt.index().unwrap() >= w.index,
            "{:?} below the write {}",
            r.receipt,
            w.index
        );
        let s = cache.get("c", b"k", &Opts::level("strong")).await.unwrap();
        assert_eq!(
            text(&s).as_deref(),
            Some(value.as_str()),
            "strong, round {i}"
        );
        assert_eq!(s.receipt.staleness, "entries=0;ms=0", "strong is 0/0");
        if s.cache.as_deref() == Some("hit") {
            strong_hits += 1;
        }
        let k = cache
            .get("c", b"k", &Opts::level("bounded(k=0)"))
            .await
            .unwrap();
        assert_eq!(
            text(&k).as_deref(),
            Some(value.as_str()),
            "bounded(k=0), round {i}"
        );
    }
    assert!(strong_hits > 0, "no strong read was served from memory");

    // bounded(t) from the feed's own freshness proofs: once the cache has calibrated the nodes'
    // clocks, an idle cache serves bounded(t=3s) from memory with no read-index round trip
    // (the strong reads' probes above are more than 3 s old by then).
    tokio::time::sleep(Duration::from_millis(4000)).await;
    let before = cache.cache_status().await.unwrap();
    for _ in 0..20 {
        let r = cache
            .get("c", b"k", &Opts::level("bounded(t=3s)"))
            .await
            .unwrap();
        assert_eq!(r.cache.as_deref(), Some("hit"), "{r:?}");
        let (_, ms) = r.receipt.staleness_parts().unwrap();
        assert!(ms <= 3000, "bounded(t=3s) served {ms} ms stale: {r:?}");
    }
    let after = cache.cache_status().await.unwrap();
    assert_eq!(
        counter(&after, &["upstream", "probes"]),
        counter(&before, &["upstream", "probes"]),
        "bounded(t) hits should need no probe when the feed's proofs are fresh"
    );

    // A deletion reaches the cache too: an eventual read soon finds the key gone.
    let d = n1.delete("c", b"k", &Opts::default()).await.unwrap();
    fed(&cache, "c", d.shard, d.index).await;
    let gone = cache
        .get("c", b"k", &Opts::level("eventual"))
        .await
        .unwrap();
    assert_eq!(
        gone.value, None,
        "deleted at {}, still cached: {gone:?}",
        d.index
    );
    assert_eq!(
        gone.cache.as_deref(),
        Some("hit"),
        "the deletion is cached as an absence"
    );

    // Explicit invalidation over HTTP: the key's next read is a miss.
    let base = format!("http://{}", c.cache().unwrap().0);
    let invalidate = format!("{base}/v1/cache/invalidate");
    let (status, _, body) = call("POST", &invalidate, r#"{"keyspace": "c", "keys": ["k"]}"#).await;
    assert_eq!((status, body["removed"].as_u64()), (200, Some(1)), "{body}");
    let after = cache
        .get("c", b"k", &Opts::level("eventual"))
        .await
        .unwrap();
    assert_eq!(after.cache.as_deref(), Some("miss"));
    let (status, _, body) = call("POST", &invalidate, r#"{"keyspace": "c", "all": true}"#).await;
    assert!(
        status == 200 && body["namespace_version"].as_u64() > Some(0),
        "{body}"
    );
    let (status, _, body) = call("POST", &invalidate, r#"{"keyspace": "c"}"#).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (400, Some("bad_request"))
    );

    // Bad input gets the node's typed errors and the cache's headers.
    for (url, code) in [
        (format!("{base}/v1/kv/c/k?level=sometimes"), "level_invalid"),
        (
            format!("{base}/v1/kv/c/{}", "x".repeat(1100)),
            "key_too_large",
        ),
        (format!("{base}/v1/kv/nope/k"), "keyspace_not_found"),
        (format!("{base}/v1/kv/c/k?r=one"), "quorum_invalid"),
        (format!("{base}/v1/cluster"), "route_not_found"),
    ] {
        let (status, _, body) = call("GET", &url, "").await;
        assert!(status >= 400, "{url}: {status}");
        assert_eq!(body["error"]["code"], code, "{url}: {body}");
    }
    let forged = reqwest::Client::new()
        .get(format!("{base}/v1/kv/c/k"))
        .header("tunekv-session", "not-a-token")
        .send()
        .await
        .unwrap();
    assert_eq!(forged.status(), 400);
    assert_eq!(forged.headers()["tunekv-served-by"], "cache");
    assert_eq!(
        forged.json::<serde_json::Value>().await.unwrap()["error"]["code"],
        "session_invalid"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_thousand_concurrent_gets_of_a_cold_key_make_one_upstream_read() {
    let mut c = common::start(3, false).await;
    common::create_keyspace(&c.client(0), "h", 2).await;
    let cache = cache(&mut c, &[]).await;
    feed_live(&cache, "h").await;
    let w = c
        .client(0)
        .put("h", b"cold", b"hot now", &Opts::default())
        .await
        .unwrap();
    // The feed has passed the write, so nothing changes the key while the herd reads it.
    fed(&cache, "h", w.shard, w.index).await;
    let before = cache.cache_status().await.unwrap();
    let base = format!(
        "http://{}/v1/kv/h/cold?level=eventual",
        c.cache().unwrap().0
    );
    let http = reqwest::Client::new();
    let gets: Vec<_> = (0..1000)
        .map(|_| {
            let (http, url) = (http.clone(), base.clone());
            tokio::spawn(async move {
                let r = http.get(url).send().await.expect("GET");
                let label = r.headers()["tunekv-cache"].to_str().unwrap().to_string();
                assert_eq!(r.status(), 200);
                assert_eq!(r.bytes().await.unwrap(), &b"hot now"[..]);
                label
            })
        })
        .collect();
    let mut labels = std::collections::BTreeMap::<String, u32>::new();
    for g in gets {
        *labels.entry(g.await.unwrap()).or_default() += 1;
    }
    let after = cache.cache_status().await.unwrap();
    let reads = counter(&after, &["upstream", "reads"]) - counter(&before, &["upstream", "reads"]);
    assert_eq!(
        reads, 1,
        "upstream reads for 1000 GETs of one cold key; labels {labels:?}"
    );
    assert_eq!(labels.get("miss"), Some(&1), "{labels:?}");
    assert_eq!(labels.values().sum::<u32>(), 1000);
    assert!(
        labels
            .keys()
            .all(|l| ["miss", "coalesced", "hit"].contains(&l.as_str())),
        "{labels:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_write_racing_fills_never_leaves_a_stale_value_cached() {
    let mut c = common::start(3, false).await;
    common::create_keyspace(&c.client(0), "r", 1).await;
    let cache = cache(&mut c, &[]).await;
    feed_live(&cache, "r").await;
    let node = c.client(1);
    for round in 0..30 {
        let key = format!("race-{round}");
        // Writes through the cache drop the entry (read-through), so the readers keep filling
        // while the next write commits.
        let writer = {
            let (cache, key) = (cache.clone(), key.clone());
            tokio::spawn(async move {
                let mut last = None;
                for v in 0..8 {
                    let w = cache
                        .put(
                            "r",
                            key.as_bytes(),
                            format!("{v}").as_bytes(),
                            &Opts::default(),
                        )
                        .await
                        .expect("write through the cache");
                    last = Some(w);
                }
                last.unwrap()
            })
        };
        let readers: Vec<_> = (0..4)
            .map(|_| {
                let (cache, key) = (cache.clone(), key.clone());
                tokio::spawn(async move {
                    for _ in 0..10 {
                        let _ = cache
                            .get("r", key.as_bytes(), &Opts::level("eventual"))
                            .await;
                    }
                })
            })
            .collect();
        let last = writer.await.unwrap();
        for r in readers {
            r.await.unwrap();
        }
        // One more write straight to a node, racing a last fill.
        let (plain, eventual) = (Opts::default(), Opts::level("eventual"));
        let (w, _) = tokio::join!(
            node.put("r", key.as_bytes(), b"final", &plain),
            cache.get("r", key.as_bytes(), &eventual)
        );
        let w = w.unwrap();
        assert!(w.index > last.index);
        fed(&cache, "r", w.shard, w.index).await;
        let r = cache
            .get("r", key.as_bytes(), &Opts::level("eventual"))
            .await
            .unwrap();
        assert_eq!(text(&r).as_deref(), Some("final"), "round {round}: {r:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn write_through_then_the_cluster_goes_away() {
    let mut c = common::start(3, false).await;
    common::create_keyspace(&c.client(0), "w", 2).await;
    let cache = cache(
        &mut c,
        &["--strategy", "w=write_through", "--enable-faults"],
    )
    .await;
    feed_live(&cache, "w").await;

    // A request may choose its own strategy: read-through drops the entry instead.
    let base = format!("http://{}", c.cache().unwrap().0);
    let http = reqwest::Client::new();
    let r = http
        .put(format!("{base}/v1/kv/w/k"))
        .header("tunekv-cache-strategy", "read_through")
        .body("dropped")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let token = r.headers()["tunekv-session"].to_str().unwrap().to_string();
    let after = cache
        .get("w", b"k", &Opts::level("session").session(&token))
        .await
        .unwrap();
    assert_eq!(after.cache.as_deref(), Some("miss"), "{after:?}");
    for value in ["write_behind", "sideways"] {
        let r = http
            .put(format!("{base}/v1/kv/w/k"))
            .header("tunekv-cache-strategy", value)
            .body("x")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 400, "{value}");
        let body: serde_json::Value = r.json().await.unwrap();
        assert_eq!(body["error"]["code"], "bad_request", "{value}: {body}");
    }

    // The writer's next read is a hit at its own write's position.
    let w = cache
        .put("w", b"k", b"written", &Opts::default())
        .await
        .unwrap();
    let r = cache
        .get("w", b"k", &Opts::level("session").session(&w.session))
        .await
        .unwrap();
    assert_eq!(text(&r).as_deref(), Some("written"));
    assert_eq!(r.cache.as_deref(), Some("hit"), "{r:?}");
    assert!(r.receipt.index().unwrap() >= w.index);

    // cluster.json lists the cache.
    let json = c.write_cluster_json().unwrap();
    let doc: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(json).unwrap()).unwrap();
    let (http, pid) = c.cache().unwrap();
    assert_eq!(doc["cache"]["http"], http);
    assert_eq!(doc["cache"]["pid"], pid);

    // Cut off from the cluster, the cache cannot reach a session's newer write: the session
    // level is unmet, never served older.
    let hook = format!("http://{}/v1/admin/faults", c.cache().unwrap().0);
    let (status, _, _) = call("POST", &hook, r#"{"isolate": true}"#).await;
    assert_eq!(status, 200);
    let newer = c
        .client(1)
        .put("w", b"k", b"newer", &Opts::default())
        .await
        .unwrap();
    let err = cache
        .get(
            "w",
            b"k",
            &Opts::level("read_your_writes")
                .session(&newer.session)
                .wait_ms(500),
        )
        .await
        .expect_err("the cache is cut off");
    assert_eq!(err.code(), Some("session_unmet"), "{err}");
    let (status, _, _) = call("POST", &hook, r#"{"clear": true}"#).await;
    assert_eq!(status, 200);
    let r = cache
        .get(
            "w",
            b"k",
            &Opts::level("read_your_writes").session(&newer.session),
        )
        .await
        .unwrap();
    assert_eq!(text(&r).as_deref(), Some("newer"));

    // Without the cluster, eventual reads keep serving what the cache holds (with a receipt
    // that ages), and stronger levels fail with their typed errors, never weaker.
    for i in 0..c.len() {
        c.kill(i);
    }
    let e = cache
        .get("w", b"k", &Opts::level("eventual"))
        .await
        .expect("eventual keeps serving");
    assert_eq!(text(&e).as_deref(), Some("newer"));
    assert_eq!(e.cache.as_deref(), Some("hit"));
    for (level, codes) in [
        ("strong", &["no_quorum", "unavailable", "timeout"][..]),
        ("bounded(k=1)", &["staleness_bound_unmet"][..]),
        ("bounded(t=1ms)", &["staleness_bound_unmet"][..]),
    ] {
        let err = cache
            .get("w", b"k", &Opts::level(level).wait_ms(300))
            .await
            .expect_err(level);
        let code = err.code().unwrap_or_default().to_string();
        assert!(codes.contains(&code.as_str()), "{level}: {err}");
    }
    // A key the cache does not hold needs the store.
    let miss = cache
        .get("w", b"absent-key", &Opts::level("eventual").wait_ms(300))
        .await
        .expect_err("a miss needs the store");
    assert_eq!(miss.code(), Some("unavailable"), "{miss}");
}

/// The cache speaks RESP too: GET, SET, DEL, MGET, the connection's level and session, and
/// RECEIPT saying how the cache answered.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_cache_speaks_resp() {
    use common::raw::{bulk, Raw, R};
    let mut c = common::start(3, false).await;
    let _ = cache(&mut c, &[]).await;
    let addr = c.cache_resp().expect("a RESP address").to_string();
    let json = c.write_cluster_json().unwrap();
    let doc: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(json).unwrap()).unwrap();
    assert_eq!(doc["cache"]["resp"], addr.as_str());
    let node_resp = c.configs[1].resp.clone().expect("a node's RESP address");
    tokio::task::spawn_blocking(move || {
        let mut r = Raw::connect(&addr);
        assert_eq!(r.cmd(&["PING"]), R::Simple("PONG".into()));
        // db0 is created on first use, as a node does.
        assert_eq!(r.cmd(&["SET", "rk", "one"]), R::Simple("OK".into()));
        assert_eq!(r.cmd(&["GET", "rk"]), bulk("one"));
        assert_eq!(r.cmd(&["CONSISTENCY", "strong"]), R::Simple("OK".into()));
        // A write on a node: the cache's strong read sees it.
        let mut n = Raw::connect(&node_resp);
        assert_eq!(n.cmd(&["SET", "rk", "two"]), R::Simple("OK".into()));
        assert_eq!(r.cmd(&["GET", "rk"]), bulk("two"));
        let R::Array(fields) = r.cmd(&["RECEIPT"]) else {
            panic!("RECEIPT is a map")
        };
        let field = |name: &str| {
            fields
                .chunks(2)
                .find(|kv| kv[0] == bulk(name))
                .map(|kv| match &kv[1] {
                    R::Bulk(Some(b)) => String::from_utf8_lossy(b).into_owned(),
                    R::Int(i) => i.to_string(),
                    other => format!("{other:?}"),
                })
                .unwrap_or_default()
        };
        assert_eq!(field("served_by"), "cache");
        assert_eq!(field("level"), "strong");
        assert!(["hit", "miss", "coalesced"].contains(&field("cache").as_str()));
        assert_eq!(field("staleness_ms"), "0");
        assert_eq!(
            r.cmd(&["MGET", "rk", "nope"]),
            R::Array(vec![bulk("two"), R::Bulk(None)])
        );
        // Explicit invalidation: the next read is a miss; a namespace bump (versioned keys)
        // makes every entry under the prefix unreachable at once.
        let served = |r: &mut Raw| match r.cmd(&["RECEIPT"]) {
            R::Array(f) => f
                .chunks(2)
                .find(|kv| kv[0] == bulk("cache"))
                .map(|kv| match &kv[1] {
                    R::Bulk(Some(b)) => String::from_utf8_lossy(b).into_owned(),
                    other => format!("{other:?}"),
                })
                .unwrap_or_default(),
            other => panic!("{other:?}"),
        };
        assert_eq!(r.cmd(&["CONSISTENCY", "eventual"]), R::Simple("OK".into()));
        r.cmd(&["GET", "rk"]);
        assert_eq!(r.cmd(&["GET", "rk"]), bulk("two"));
        assert!(served(&mut r).contains("hit"));
        assert_eq!(r.cmd(&["INVALIDATE", "KEY", "rk"]), R::Int(1));
        assert_eq!(r.cmd(&["GET", "rk"]), bulk("two"));
        assert!(served(&mut r).contains("miss"));
        assert_eq!(r.cmd(&["GET", "rk"]), bulk("two"));
        assert!(served(&mut r).contains("hit"));
        assert!(matches!(r.cmd(&["INVALIDATE", "PREFIX", "r"]), R::Int(v) if v > 0));
        assert_eq!(r.cmd(&["GET", "rk"]), bulk("two"));
        assert!(served(&mut r).contains("miss"));
        assert!(matches!(r.cmd(&["INVALIDATE", "ALL"]), R::Int(_)));
        assert!(matches!(r.cmd(&["INVALIDATE", "SOME"]), R::Error(_)));
        // A connection may pick its writes' strategy: write-through makes the next read a hit.
        assert_eq!(r.cmd(&["STRATEGY"]), bulk("default"));
        assert_eq!(
            r.cmd(&["STRATEGY", "write_through"]),
            R::Simple("OK".into())
        );
        assert_eq!(r.cmd(&["SET", "rk", "three"]), R::Simple("OK".into()));
        assert_eq!(r.cmd(&["GET", "rk"]), bulk("three"));
        assert!(served(&mut r).contains("hit"));
        assert!(matches!(r.cmd(&["STRATEGY", "sideways"]), R::Error(_)));
        assert!(matches!(r.cmd(&["STRATEGY", "write_behind"]), R::Simple(_)));
        assert!(matches!(r.cmd(&["SET", "rk", "x"]), R::Error(e) if e.starts_with("BAD_REQUEST")));
        assert_eq!(r.cmd(&["STRATEGY", "default"]), R::Simple("OK".into()));
        assert_eq!(r.cmd(&["DEL", "rk", "nope"]), R::Int(1));
        assert_eq!(r.cmd(&["GET", "rk"]), R::Bulk(None));
        // The session token works on a node and back.
        let R::Bulk(Some(token)) = r.cmd(&["SESSION"]) else {
            panic!("SESSION gives the token")
        };
        let token = String::from_utf8(token).unwrap();
        assert_eq!(n.cmd(&["SESSION", &token]), R::Simple("OK".into()));
        // Bad input: typed errors, the connection stays usable.
        for (args, code) in [
            (&["CONSISTENCY", "sometimes"][..], "LEVEL_INVALID"),
            (&["SESSION", "forged"][..], "SESSION_INVALID"),
            (&["SET", "k", "v", "EX", "10"][..], "ERR"),
            (&["FLUSHALL"][..], "ERR"),
            (&["GET"][..], "ERR"),
        ] {
            match r.cmd(args) {
                R::Error(e) => assert!(e.starts_with(code), "{args:?}: {e}"),
                other => panic!("{args:?}: {other:?}"),
            }
        }
        assert_eq!(r.cmd(&["PING"]), R::Simple("PONG".into()));
    })
    .await
    .unwrap();
}

/// PUTs `n` keys `{prefix}{i}` through the cache from 8 writers at once; returns when each
/// was acknowledged (202, `durability: pending`).
async fn write_behind_burst(
    base: &str,
    ks: &str,
    prefix: &str,
    n: usize,
) -> Vec<(usize, std::time::Instant)> {
    let http = reqwest::Client::new();
    let per = n / 8;
    let writers: Vec<_> = (0..8)
        .map(|w| {
            let (http, base, ks, prefix) = (
                http.clone(),
                base.to_string(),
                ks.to_string(),
                prefix.to_string(),
            );
            tokio::spawn(async move {
                let mut acked = Vec::new();
                for i in w * per..(w + 1) * per {
                    let r = http
                        .put(format!("{base}/v1/kv/{ks}/{prefix}{i}"))
                        .body(format!("v{i}"))
                        .send()
                        .await
                        .expect("PUT");
                    assert_eq!(r.status(), 202, "write-behind answers 202 Accepted");
                    assert_eq!(r.headers()["tunekv-durability"], "pending");
                    acked.push((i, std::time::Instant::now()));
                }
                acked
            })
        })
        .collect();
    let mut all = Vec::new();
    for w in writers {
        all.extend(w.await.expect("writer"));
    }
    all
}

/// Which of the burst's keys the store holds, read strong on a node.
async fn in_store(node: &Client, ks: &str, prefix: &str, n: usize) -> Vec<bool> {
    let mut found = Vec::with_capacity(n);
    for i in 0..n {
        let key = format!("{prefix}{i}");
        let r = node
            .get(ks, key.as_bytes(), &Opts::level("strong"))
            .await
            .expect("strong read on a node");
        found.push(r.value.as_deref() == Some(format!("v{i}").as_bytes()));
    }
    found
}

fn count(found: &[bool]) -> usize {
    found.iter().filter(|f| **f).count()
}

/// Write-behind: writes are acknowledged before the store has them. With a durable queue a
/// kill -9 loses none (the restarted cache flushes its log before it serves); in memory only,
/// the writes not yet flushed are lost, and the test measures how many and how recent.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn write_behind_survives_kill_9_with_its_log_and_measures_the_loss_without() {
    let mut c = common::start(3, false).await;
    common::create_keyspace(&c.client(0), "wb", 2).await;
    let node = c.client(0);
    let log_dir = c.dir.join("write-behind");
    let log_arg = log_dir.to_str().unwrap().to_string();
    let n = 400;

    // Durable: every acknowledged write reaches the store, even across kill -9.
    let _ = cache(
        &mut c,
        &[
            "--strategy",
            "wb=write_behind",
            "--write-behind-dir",
            &log_arg,
        ],
    )
    .await;
    let base = format!("http://{}", c.cache().unwrap().0);
    write_behind_burst(&base, "wb", "d", n).await;
    c.kill_cache();
    let before_restart = count(&in_store(&node, "wb", "d", n).await);
    let http = c.restart_cache().unwrap();
    tunekv::local_cluster::wait_cache(&http, Duration::from_secs(30))
        .await
        .unwrap();
    // The restarted cache flushed its log before it answered.
    let after_restart = count(&in_store(&node, "wb", "d", n).await);
    println!(
        "durable write-behind: {before_restart} of {n} acknowledged writes in the store at kill -9, \
         {after_restart} once the restarted cache answered"
    );
    assert_eq!(after_restart, n, "a durable write-behind write was lost");
    let status = Client::new(&format!("http://{http}"))
        .cache_status()
        .await
        .unwrap();
    assert_eq!(status["write_behind"]["waiting"], 0, "{status}");
    c.kill_cache();

    // In memory only: the loss window, measured.
    let _ = cache(
        &mut c,
        &["--strategy", "wb=write_behind", "--write-behind-in-memory"],
    )
    .await;
    let base = format!("http://{}", c.cache().unwrap().0);
    let acked = write_behind_burst(&base, "wb", "m", n).await;
    c.kill_cache();
    let killed = std::time::Instant::now();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let found = in_store(&node, "wb", "m", n).await;
    let lost: Vec<_> = acked.iter().filter(|(i, _)| !found[*i]).collect();
    let window = lost
        .iter()
        .map(|(_, at)| killed.duration_since(*at).as_millis())
        .max()
        .unwrap_or(0);
    println!(
        "in-memory write-behind: kill -9 lost {} of {n} acknowledged writes, acknowledged up to \
         {window} ms before the kill (the burst took {} ms)",
        lost.len(),
        acked
            .iter()
            .map(|(_, at)| killed.duration_since(*at).as_millis())
            .max()
            .unwrap_or(0)
    );
    assert_eq!(count(&found) + lost.len(), n);
}

/// Warming: the hot set saved at a graceful shutdown, a key list and a prefix scan are read at
/// start, paced; the cache reports ready only once warm when asked, and the warmed keys are
/// hits from the first read.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_cache_warms_from_its_hot_set_a_key_list_and_a_prefix() {
    let mut c = common::start(3, false).await;
    common::create_keyspace(&c.client(0), "warm", 2).await;
    let node = c.client(0);
    for i in 0..30 {
        for prefix in ["hot", "listed", "user:", "other"] {
            let key = format!("{prefix}{i}");
            node.put("warm", key.as_bytes(), b"v", &Opts::default())
                .await
                .unwrap();
        }
    }
    // The node's scan: a page of the keys under a prefix.
    let (mut found, mut cursor) = (Vec::new(), 0);
    loop {
        let (keys, next) = node
            .scan("warm", b"user:", cursor, 7, &Opts::default())
            .await
            .unwrap();
        found.extend(keys);
        cursor = next;
        if cursor == 0 {
            break;
        }
    }
    found.sort();
    found.dedup();
    assert_eq!(found.len(), 30, "{found:?}");
    assert!(found.iter().all(|k| k.starts_with(b"user:")));

    let hot = c.dir.join("hot-set");
    let listed = c.dir.join("warm-keys");
    let list: String = (0..30).map(|i| format!("warm listed{i}\n")).collect();
    std::fs::write(&listed, list).unwrap();
    let (hot_arg, listed_arg) = (
        hot.to_str().unwrap().to_string(),
        listed.to_str().unwrap().to_string(),
    );
    let first = cache(&mut c, &["--hot-set-file", &hot_arg]).await;
    feed_live(&first, "warm").await;
    for i in 0..30 {
        let key = format!("hot{i}");
        first
            .get("warm", key.as_bytes(), &Opts::level("eventual"))
            .await
            .unwrap();
    }
    // A graceful stop saves the hot set.
    c.stop_cache();
    let saved = std::fs::read_to_string(&hot).unwrap();
    assert!(
        (0..30).all(|i| saved.contains(&format!("warm hot{i}\n"))),
        "{saved}"
    );

    let cache = cache(
        &mut c,
        &[
            "--hot-set-file",
            &hot_arg,
            "--warm-keys",
            &listed_arg,
            "--warm-prefix",
            "warm/user:",
            "--warm-rate",
            "40",
            "--ready-when-warm",
        ],
    )
    .await;
    let ready_url = format!("http://{}/v1/cache/ready", c.cache().unwrap().0);
    let (status, _, body) = call("GET", &ready_url, "").await;
    assert_eq!(status, 503, "warming ~91 keys at 40/s takes ~2 s: {body}");
    eventually(Duration::from_secs(30), "the cache is warm", || async {
        let (status, _, _) = call("GET", &ready_url, "").await;
        (status == 200).then_some(())
    })
    .await;
    let s = cache.cache_status().await.unwrap();
    assert_eq!(s["warming"]["done"], s["warming"]["total"], "{s}");
    assert!(s["warming"]["total"].as_u64() >= Some(90), "{s}");
    for prefix in ["hot", "listed", "user:"] {
        for i in [0, 29] {
            let key = format!("{prefix}{i}");
            let r = cache
                .get("warm", key.as_bytes(), &Opts::level("eventual"))
                .await
                .unwrap();
            assert_eq!(r.cache.as_deref(), Some("hit"), "{key} was not warmed");
        }
    }
    let cold = cache
        .get("warm", b"other0", &Opts::level("eventual"))
        .await
        .unwrap();
    assert_eq!(cold.cache.as_deref(), Some("miss"));
}
