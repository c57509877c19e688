//! Issue 20: `GET /metrics` on every node and on the cache, parsed by a real Prometheus text
//! parser (the `prometheus_client` Python package's OpenMetrics parser, in the venv
//! scripts/test makes), checked against Prometheus naming conventions, and counted against the
//! load the test sent.

mod common;

use common::raw::{bulk, Raw, R};
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;
use tunekv_client::{Client, Opts};

/// One parsed family.
#[derive(Debug, Clone)]
struct Family {
    name: String,
    kind: String,
    unit: String,
    samples: Vec<Sample>,
}

#[derive(Debug, Clone)]
struct Sample {
    name: String,
    labels: BTreeMap<String, String>,
    /// `None`: +Inf or NaN.
    value: Option<f64>,
}

/// Parses metrics text with the Python OpenMetrics parser (which itself refuses clashing
/// names, malformed samples and a missing `# EOF`).
async fn parse(text: &str) -> Vec<Family> {
    use tokio::io::AsyncWriteExt;
    let script =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/observability/parse_metrics.py");
    let mut child = tokio::process::Command::new(common::python())
        .arg(&script)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("run python");
    let mut stdin = child.stdin.take().expect("stdin");
    stdin.write_all(text.as_bytes()).await.expect("write");
    drop(stdin);
    let out = tokio::time::timeout(Duration::from_secs(60), child.wait_with_output())
        .await
        .expect("the parser finishes")
        .expect("parser output");
    assert!(
        out.status.success(),
        "the Prometheus parser refused the text: {}\n---\n{text}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).expect("parser JSON");
    v.as_array()
        .expect("families")
        .iter()
        .map(|f| Family {
            name: f["name"].as_str().unwrap_or_default().to_string(),
            kind: f["type"].as_str().unwrap_or_default().to_string(),
            unit: f["unit"].as_str().unwrap_or_default().to_string(),
            samples: f["samples"]
                .as_array()
                .expect("samples")
                .iter()
                .map(|s| Sample {
                    name: s["name"].as_str().unwrap_or_default().to_string(),
                    labels: s["labels"]
                        .as_object()
                        .expect("labels")
                        .iter()
                        .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_string()))
                        .collect(),
                    value: s["value"].as_f64(),
                })
                .collect(),
        })
        .collect()
}

/// Units a histogram's name may end in.
const UNITS: &[&str] = &["_seconds", "_bytes", "_entries"];

/// What breaks Prometheus conventions in `families` (empty: nothing).
fn convention_problems(families: &[Family]) -> Vec<String> {
    let mut problems = Vec::new();
    for f in families {
        if !f.name.starts_with("tunekv_") {
            problems.push(format!("{}: not prefixed tunekv_", f.name));
        }
        if !f.unit.is_empty() && !f.name.ends_with(&format!("_{}", f.unit)) {
            problems.push(format!(
                "{}: unit {} is not last in the name",
                f.name, f.unit
            ));
        }
        if f.kind == "histogram" && !UNITS.iter().any(|u| f.name.ends_with(u)) {
            problems.push(format!("{}: a histogram without a unit", f.name));
        }
        for s in &f.samples {
            if f.kind == "counter" && !s.name.ends_with("_total") && !s.name.ends_with("_created") {
                problems.push(format!("{}: a counter sample without _total", s.name));
            }
            if s.labels.contains_key("key") {
                problems.push(format!("{}: keys are never labels", s.name));
            }
        }
        if f.kind == "histogram" {
            problems.extend(histogram_problems(f));
        }
    }
    problems
}

/// One histogram series: its (le, bucket value) pairs and its `_count`.
type Series = (Vec<(f64, f64)>, Option<f64>);

/// Buckets must be cumulative (non-decreasing with `le`) and `+Inf` must equal `_count`.
fn histogram_problems(f: &Family) -> Vec<String> {
    let mut series: BTreeMap<String, Series> = BTreeMap::new();
    for s in &f.samples {
        let mut labels = s.labels.clone();
        let le = labels.remove("le");
        let id = format!("{labels:?}");
        let entry = series.entry(id).or_default();
        if s.name.ends_with("_bucket") {
            let le = match le.as_deref() {
                Some("+Inf") => f64::INFINITY,
                Some(x) => x.parse().unwrap_or(f64::NAN),
                None => f64::NAN,
            };
            entry.0.push((le, s.value.unwrap_or(f64::NAN)));
        } else if s.name.ends_with("_count") {
            entry.1 = s.value;
        }
    }
    let mut problems = Vec::new();
    for (id, (mut buckets, count)) in series {
        buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
        if buckets.windows(2).any(|w| w[1].1 < w[0].1) {
            problems.push(format!("{} {id}: buckets are not cumulative", f.name));
        }
        match buckets.last() {
            Some((le, v)) if le.is_infinite() && Some(*v) == count => {}
            _ => problems.push(format!("{} {id}: the +Inf bucket is not _count", f.name)),
        }
    }
    problems
}

fn family<'a>(fams: &'a [Family], name: &str) -> &'a Family {
    fams.iter()
        .find(|f| f.name == name)
        .unwrap_or_else(|| panic!("no family {name}"))
}

/// The value of `sample` with exactly these labels (0 when absent: a series not yet made).
fn value(fams: &[Family], sample: &str, labels: &[(&str, &str)]) -> f64 {
    fams.iter()
        .flat_map(|f| &f.samples)
        .find(|s| {
            s.name == sample
                && s.labels.len() == labels.len()
                && labels
                    .iter()
                    .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
        })
        .and_then(|s| s.value)
        .unwrap_or(0.0)
}

async fn scrape(http: &str) -> (String, Vec<Family>) {
    let url = format!("http://{}/metrics", http.trim_start_matches("http://"));
    let r = reqwest::get(&url).await.expect("GET /metrics");
    assert_eq!(r.status(), 200);
    let ct = r
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    assert!(ct.starts_with("application/openmetrics-text"), "{ct}");
    let text = r.text().await.expect("body");
    let fams = parse(&text).await;
    (text, fams)
}

#[test]
fn the_convention_check_catches_bad_names() {
    let sample = |name: &str, labels: &[(&str, &str)], v: f64| Sample {
        name: name.into(),
        labels: labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        value: Some(v),
    };
    let fam = |name: &str, kind: &str, samples: Vec<Sample>| Family {
        name: name.into(),
        kind: kind.into(),
        unit: String::new(),
        samples,
    };
    let good = vec![
        fam(
            "tunekv_requests",
            "counter",
            vec![sample("tunekv_requests_total", &[("level", "strong")], 3.0)],
        ),
        fam(
            "tunekv_request_duration_seconds",
            "histogram",
            vec![
                sample(
                    "tunekv_request_duration_seconds_bucket",
                    &[("le", "0.1")],
                    1.0,
                ),
                sample(
                    "tunekv_request_duration_seconds_bucket",
                    &[("le", "+Inf")],
                    2.0,
                ),
                sample("tunekv_request_duration_seconds_count", &[], 2.0),
            ],
        ),
    ];
    assert!(
        convention_problems(&good).is_empty(),
        "{:?}",
        convention_problems(&good)
    );
    let bad = [
        // A histogram without a unit.
        fam(
            "tunekv_request_duration",
            "histogram",
            vec![
                sample("tunekv_request_duration_bucket", &[("le", "+Inf")], 1.0),
                sample("tunekv_request_duration_count", &[], 1.0),
            ],
        ),
        // A counter without _total.
        fam(
            "tunekv_requests",
            "counter",
            vec![sample("tunekv_requests", &[], 1.0)],
        ),
        // No prefix.
        fam("requests", "gauge", vec![sample("requests", &[], 1.0)]),
        // A key as a label.
        fam(
            "tunekv_reads",
            "gauge",
            vec![sample("tunekv_reads", &[("key", "user:1")], 1.0)],
        ),
        // Buckets that are not cumulative.
        fam(
            "tunekv_x_seconds",
            "histogram",
            vec![
                sample("tunekv_x_seconds_bucket", &[("le", "0.1")], 3.0),
                sample("tunekv_x_seconds_bucket", &[("le", "+Inf")], 2.0),
                sample("tunekv_x_seconds_count", &[], 2.0),
            ],
        ),
    ];
    for f in bad {
        let name = f.name.clone();
        assert!(
            !convention_problems(&[f]).is_empty(),
            "{name} should break the conventions"
        );
    }
}

/// A short load over HTTP and RESP on node 1: its `/metrics` (and node 2's, and the cache's)
/// parse, follow the conventions, and count exactly what was sent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_parse_follow_the_conventions_and_count_the_load() {
    let mut c = common::start(3, false).await;
    let n1 = c.client(0);
    common::create_keyspace(&n1, "m", 2).await;
    // Warm the node's catalog cache so default-level labels resolve, then take the baseline.
    let _ = n1.get("m", b"x", &Opts::level("eventual")).await;
    let (_, before) = scrape(&c.http(0)).await;

    const PUTS: usize = 40;
    const EVENTUAL: usize = 30;
    const STRONG: usize = 20;
    const RESP_SETS: usize = 10;
    const RESP_GETS: usize = 12;
    for i in 0..PUTS {
        n1.put("m", format!("k{i}").as_bytes(), b"v", &Opts::default())
            .await
            .expect("put");
    }
    for i in 0..EVENTUAL {
        n1.get("m", format!("k{i}").as_bytes(), &Opts::level("eventual"))
            .await
            .expect("eventual get");
    }
    for i in 0..STRONG {
        n1.get("m", format!("k{i}").as_bytes(), &Opts::level("strong"))
            .await
            .expect("strong get");
    }
    let resp = c.configs[0].resp.clone().expect("a RESP address");
    let resp_task = tokio::task::spawn_blocking(move || {
        let mut r = Raw::connect(&resp);
        assert_eq!(r.cmd(&["SELECT", "m"]), R::Simple("OK".into()));
        assert_eq!(r.cmd(&["CONSISTENCY", "eventual"]), R::Simple("OK".into()));
        for i in 0..RESP_SETS {
            assert_eq!(
                r.cmd(&["SET", &format!("r{i}"), "v"]),
                R::Simple("OK".into())
            );
        }
        for i in 0..RESP_GETS {
            assert_eq!(r.cmd(&["GET", &format!("r{}", i % RESP_SETS)]), bulk("v"));
        }
    });
    resp_task.await.expect("RESP load");
    let (text, after) = scrape(&c.http(0)).await;

    let problems = convention_problems(&after);
    assert!(problems.is_empty(), "{problems:#?}\n---\n{text}");

    // Request counters carry a level label and count exactly what was sent.
    let requests = family(&after, "tunekv_requests");
    assert_eq!(requests.kind, "counter");
    assert!(requests
        .samples
        .iter()
        .all(|s| s.labels.contains_key("level")));
    let delta = |sample: &str, labels: &[(&str, &str)]| {
        value(&after, sample, labels) - value(&before, sample, labels)
    };
    let req = |protocol: &str, op: &str, level: &str| {
        delta(
            "tunekv_requests_total",
            &[
                ("protocol", protocol),
                ("op", op),
                ("level", level),
                ("code", "ok"),
            ],
        )
    };
    assert_eq!(req("http", "put", "none"), PUTS as f64);
    assert_eq!(req("http", "get", "eventual"), EVENTUAL as f64);
    assert_eq!(req("http", "get", "strong"), STRONG as f64);
    assert_eq!(req("resp", "set", "none"), RESP_SETS as f64);
    assert_eq!(req("resp", "get", "eventual"), RESP_GETS as f64);
    assert_eq!(
        delta(
            "tunekv_request_duration_seconds_count",
            &[("protocol", "http"), ("op", "get"), ("level", "strong")]
        ),
        STRONG as f64
    );

    // Served staleness: one observation per read (a one-key read reads one shard), by
    // keyspace and level, in a histogram whose name says stale and which carries the level.
    let stale = family(&after, "tunekv_read_staleness_entries");
    assert_eq!(stale.kind, "histogram");
    assert!(stale.samples.iter().all(|s| s.labels.contains_key("level")));
    let served = |level: &str| {
        delta(
            "tunekv_read_staleness_entries_count",
            &[("keyspace", "m"), ("level", level)],
        )
    };
    assert_eq!(served("eventual"), (EVENTUAL + RESP_GETS) as f64);
    assert_eq!(served("strong"), STRONG as f64);

    // Hot values: each key's first read here goes to a view, a repeat (the RESP GETs of r0
    // and r1, the strong reads of k0…k19 unless a write landed between) comes from memory.
    let summed = |fams: &[Family], sample: &str, result: Option<&str>| -> f64 {
        fams.iter()
            .flat_map(|f| &f.samples)
            .filter(|s| {
                s.name == sample && s.labels.get("group").is_some_and(|g| g.starts_with("m/"))
            })
            .filter(|s| {
                result.is_none_or(|r| s.labels.get("result").map(String::as_str) == Some(r))
            })
            .filter_map(|s| s.value)
            .sum()
    };
    let hot = |result| {
        summed(&after, "tunekv_hot_value_reads_total", Some(result))
            - summed(&before, "tunekv_hot_value_reads_total", Some(result))
    };
    assert!(
        hot("miss") >= (EVENTUAL + RESP_SETS) as f64,
        "misses {}\n{text}",
        hot("miss")
    );
    assert!(hot("hit") >= 2.0, "hits {}\n{text}", hot("hit"));
    assert!(
        summed(&after, "tunekv_hot_value_bytes", None) > 0.0,
        "{text}"
    );
    // A strong read is served at the newest commit: every one in the 0-entries bucket.
    assert_eq!(
        delta(
            "tunekv_read_staleness_entries_bucket",
            &[("keyspace", "m"), ("level", "strong"), ("le", "0.0")]
        ),
        STRONG as f64
    );

    // Storage, Raft and connections are there too.
    assert!(value(&after, "tunekv_fsync_duration_seconds_count", &[]) > 0.0);
    assert!(value(&after, "tunekv_group_commit_batch_entries_count", &[]) > 0.0);
    assert!(
        value(
            &after,
            "tunekv_raft_applied_index",
            &[("group", "m/shard0")]
        ) > 0.0
    );
    assert!(value(&after, "tunekv_raft_term", &[("group", "meta")]) >= 1.0);
    assert!(
        delta("tunekv_connections_accepted_total", &[("protocol", "resp")]) >= 1.0,
        "the RESP connection was counted"
    );
    let leaders: f64 = family(&after, "tunekv_raft_leader_changes")
        .samples
        .iter()
        .filter_map(|s| s.value)
        .sum();
    assert!(
        leaders >= 3.0,
        "each group's first leader is counted (meta, m/shard0, m/shard1)"
    );

    // Another node's metrics parse and follow the conventions as well.
    let (text2, other) = scrape(&c.http(1)).await;
    let problems = convention_problems(&other);
    assert!(problems.is_empty(), "{problems:#?}\n---\n{text2}");

    // And the cache's: its reads are counted with their level and their staleness.
    let cache_http = c.start_cache(&[]).await.expect("cache starts");
    let cache = Client::new(&format!("http://{cache_http}"));
    for _ in 0..5 {
        cache
            .get("m", b"k1", &Opts::level("eventual"))
            .await
            .expect("cache read");
    }
    let (text3, cached) = scrape(&cache_http).await;
    let problems = convention_problems(&cached);
    assert!(problems.is_empty(), "{problems:#?}\n---\n{text3}");
    assert_eq!(
        value(
            &cached,
            "tunekv_requests_total",
            &[
                ("protocol", "http"),
                ("op", "get"),
                ("level", "eventual"),
                ("code", "ok")
            ]
        ),
        5.0
    );
    let hits = value(&cached, "tunekv_cache_hits_total", &[]);
    let misses = value(&cached, "tunekv_cache_misses_total", &[]);
    assert_eq!(hits + misses, 5.0, "every read is a hit or a miss");
    assert!(misses >= 1.0, "the first read fills");
    assert_eq!(
        value(
            &cached,
            "tunekv_read_staleness_entries_count",
            &[("keyspace", "m"), ("level", "eventual")]
        ),
        5.0
    );
}

/// The SLO state as `tunekv slo` prints it, and its exit code.
async fn slo_cli(node: &str, ks: &str) -> (String, i32) {
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_tunekv"))
        .args(["slo", ks, "--node", node])
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(Duration::from_secs(30), out)
        .await
        .expect("tunekv slo finishes")
        .expect("run tunekv slo");
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        out.status.code().unwrap_or(-1),
    )
}

/// What a node's metrics say of keyspace `ks`'s one SLO: (violated, compliance).
async fn slo_metric(http: &str, ks: &str) -> (bool, f64) {
    let (_, fams) = scrape(http).await;
    let problems = convention_problems(&fams);
    assert!(problems.is_empty(), "{problems:#?}");
    let find = |name: &str| {
        fams.iter()
            .flat_map(|f| &f.samples)
            .find(|s| s.name == name && s.labels.get("keyspace").map(String::as_str) == Some(ks))
            .and_then(|s| s.value)
            .unwrap_or_else(|| panic!("no {name} for {ks}"))
    };
    (
        find("tunekv_slo_violated") == 1.0,
        find("tunekv_slo_compliance_ratio"),
    )
}

/// Issue 20's SLO check: eventual reads on a follower are fresh, so the keyspace's SLO
/// ("90 % of eventual reads at most 250 ms stale over 3 s") is met; a 400 ms delay on the
/// leader's messages makes every read older than that and the SLO goes violated; healing
/// brings it back. The metric, the CLI and the node's log agree at each step.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delay_fault_violates_a_staleness_slo_and_healing_restores_it() {
    let c = common::start(3, true).await;
    let spec = r#"{"shards":1,"slo":[{"level":"eventual","staleness_ms":250,"target":0.9,"window":"3s"}]}"#;
    let (s, _, b) = common::call("PUT", &format!("{}/v1/keyspaces/s", c.http(0)), spec).await;
    assert_eq!(s, 201, "{b}");
    assert_eq!(b["slo"][0]["window"], "3s", "the spec keeps its SLO: {b}");
    let (leader, follower) = common::leader_and_follower(&c, "s/shard0").await;
    let reader = c.client(follower);
    let http = c.http(follower);
    let leader_client = c.client(leader);
    leader_client
        .put("s", b"k", b"v", &Opts::default())
        .await
        .expect("put");

    // Eventual reads on the follower, every 10 ms, until the test ends (at most 90 s).
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let reads = {
        let stop = stop.clone();
        tokio::spawn(async move {
            let until = std::time::Instant::now() + Duration::from_secs(90);
            while !stop.load(std::sync::atomic::Ordering::Relaxed)
                && std::time::Instant::now() < until
            {
                let _ = reader.get("s", b"k", &Opts::level("eventual")).await;
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
    };

    let state = |want_violated: bool| {
        let http = http.clone();
        async move {
            let (violated, compliance) = slo_metric(&http, "s").await;
            let (out, code) = slo_cli(&http, "s").await;
            let cli_violated = out.contains("VIOLATED");
            (violated == want_violated
                && cli_violated == want_violated
                && !out.contains("no reads"))
            .then_some((compliance, out, code))
        }
    };
    let (compliance, out, code) =
        common::eventually(Duration::from_secs(20), "the SLO is met", || state(false)).await;
    assert!(compliance >= 0.9, "{compliance}");
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("met"), "{out}");

    leader_client
        .faults(&serde_json::json!({"delay_ms": 400}))
        .await
        .expect("delay the leader's messages");
    let (compliance, out, code) =
        common::eventually(Duration::from_secs(20), "the SLO is violated", || {
            state(true)
        })
        .await;
    assert!(compliance < 0.9, "{compliance}");
    assert_eq!(
        code, 3,
        "tunekv slo exits 3 while an SLO is violated: {out}"
    );

    leader_client
        .faults(&serde_json::json!({"clear": true}))
        .await
        .expect("heal");
    let (compliance, out, code) =
        common::eventually(Duration::from_secs(30), "the SLO is met again", || {
            state(false)
        })
        .await;
    assert!(compliance >= 0.9, "{compliance}");
    assert_eq!(code, 0, "{out}");
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    reads.await.expect("reader");

    // The node logged the violation when it began and when it ended.
    let log = std::fs::read_to_string(c.dir.join(format!("node-{}.log", follower + 1)))
        .expect("node log");
    let violated = log.matches("SLO violated").count();
    let met = log.matches("SLO met again").count();
    assert!(violated >= 1 && met >= 1, "violated {violated}, met {met}");
    assert!(
        violated == met,
        "each violation's end is logged: violated {violated}, met {met}"
    );
}

/// `--log-format json`: every line a node logs is one JSON object, and what a request logs
/// carries its `request` span (node, protocol, op).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_logs_carry_the_request_span() {
    let c = common::start_with_args(3, true, |_| {}, &["--log-format", "json"]).await;
    // The fault hook logs inside its request.
    c.client(0)
        .faults(&serde_json::json!({"delay_ms": 1}))
        .await
        .expect("fault hook");
    c.client(0)
        .faults(&serde_json::json!({"clear": true}))
        .await
        .expect("heal");
    let log = std::fs::read_to_string(c.dir.join("node-1.log")).expect("node log");
    let lines: Vec<Value> = log
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    assert!(!lines.is_empty());
    assert!(lines
        .iter()
        .all(|l| l["level"].is_string() && l["fields"].is_object()));
    let in_request = lines
        .iter()
        .find(|l| l["fields"]["message"] == "fault injection")
        .unwrap_or_else(|| panic!("no fault injection line in {log}"));
    let span = &in_request["span"];
    assert_eq!(span["name"], "request", "{in_request}");
    assert_eq!(span["protocol"], "http", "{in_request}");
    assert_eq!(span["op"], "faults", "{in_request}");
    assert_eq!(span["node"], 1, "{in_request}");
}

/// The sample names a scrape's `# TYPE` lines declare (counters: `_total`; histograms:
/// `_bucket`, `_sum`, `_count`; gauges: the name).
fn declared_samples(text: &str) -> std::collections::BTreeSet<String> {
    let mut out = std::collections::BTreeSet::new();
    for line in text.lines() {
        let Some(rest) = line.strip_prefix("# TYPE ") else {
            continue;
        };
        let mut parts = rest.split_whitespace();
        let (Some(name), Some(kind)) = (parts.next(), parts.next()) else {
            continue;
        };
        match kind {
            "counter" => {
                out.insert(format!("{name}_total"));
            }
            "histogram" => {
                for s in ["_bucket", "_sum", "_count"] {
                    out.insert(format!("{name}{s}"));
                }
            }
            _ => {
                out.insert(name.to_string());
            }
        }
    }
    out
}

/// What is wrong with a Grafana dashboard: its structure, or a query naming a metric not in
/// `exported` (empty: nothing).
fn dashboard_problems(d: &Value, exported: &std::collections::BTreeSet<String>) -> Vec<String> {
    let mut problems = Vec::new();
    for field in ["title", "uid"] {
        if !d[field].is_string() {
            problems.push(format!("no {field}"));
        }
    }
    let vars = d["templating"]["list"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    if !vars
        .iter()
        .any(|v| v["type"] == "datasource" && v["name"] == "datasource")
    {
        problems.push("no datasource variable".into());
    }
    let Some(panels) = d["panels"].as_array().filter(|p| !p.is_empty()) else {
        problems.push("no panels".into());
        return problems;
    };
    let mut ids = std::collections::BTreeSet::new();
    for p in panels {
        let title = p["title"].as_str().unwrap_or_default();
        if title.is_empty() {
            problems.push(format!("a panel without a title: {p}"));
        }
        if !ids.insert(p["id"].as_u64().unwrap_or(0)) || p["id"].as_u64().unwrap_or(0) == 0 {
            problems.push(format!("{title}: id missing or repeated"));
        }
        if !["timeseries", "stat", "gauge", "table"].contains(&p["type"].as_str().unwrap_or("")) {
            problems.push(format!("{title}: unknown panel type {}", p["type"]));
        }
        let g = &p["gridPos"];
        match (
            g["x"].as_u64(),
            g["y"].as_u64(),
            g["w"].as_u64(),
            g["h"].as_u64(),
        ) {
            (Some(x), Some(_), Some(w), Some(h)) if x + w <= 24 && w > 0 && h > 0 => {}
            _ => problems.push(format!("{title}: bad gridPos {g}")),
        }
        let targets = p["targets"].as_array().cloned().unwrap_or_default();
        if targets.is_empty() {
            problems.push(format!("{title}: no query"));
        }
        for t in targets {
            let expr = t["expr"].as_str().unwrap_or_default();
            if expr.is_empty() || t["refId"].as_str().unwrap_or_default().is_empty() {
                problems.push(format!("{title}: a query without expr or refId"));
            }
            let mut depth = 0i64;
            for ch in expr.chars() {
                depth += match ch {
                    '(' | '[' | '{' => 1,
                    ')' | ']' | '}' => -1,
                    _ => 0,
                };
                if depth < 0 {
                    break;
                }
            }
            if depth != 0 {
                problems.push(format!("{title}: unbalanced brackets in {expr}"));
            }
            let mut names = Vec::new();
            let mut rest = expr;
            while let Some(i) = rest.find("tunekv_") {
                let tail = &rest[i..];
                let end = tail
                    .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                    .unwrap_or(tail.len());
                names.push(&tail[..end]);
                rest = &tail[end..];
            }
            if names.is_empty() {
                problems.push(format!("{title}: {expr} names no tunekv metric"));
            }
            for n in names {
                if !exported.contains(n) {
                    problems.push(format!("{title}: {n} is not exported"));
                }
            }
        }
    }
    problems
}

/// docs/grafana-dashboard.json loads, is a well-formed dashboard, and every query names a
/// metric that a node or a cache really exports (every family given data first: an SLO, a
/// refusal, a leaderless keyspace, a cache, a PBS estimate). The check fails on a dashboard
/// that names a metric nobody exports.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_grafana_dashboard_queries_exported_metrics() {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../docs/grafana-dashboard.json");
    let dashboard: Value =
        serde_json::from_slice(&std::fs::read(&path).expect("the dashboard file")).expect("JSON");

    let mut c = common::start(3, true).await;
    let n1 = c.client(0);
    let spec = r#"{"shards":1,"slo":[{"level":"eventual","staleness_ms":1000,"target":0.9,"window":"1m"}]}"#;
    let (s, _, b) = common::call("PUT", &format!("{}/v1/keyspaces/d", c.http(0)), spec).await;
    assert_eq!(s, 201, "{b}");
    common::put_keyspace(&c, "ll", r#"{"mode":"leaderless","replicas":3}"#).await;
    n1.put("ll", b"k", b"v", &Opts::default())
        .await
        .expect("leaderless put");
    for i in 0..10 {
        n1.put("d", format!("k{i}").as_bytes(), b"v", &Opts::default())
            .await
            .expect("put");
    }
    for n in 0..3 {
        c.client(n)
            .get("d", b"k1", &Opts::level("eventual"))
            .await
            .expect("eventual read");
    }
    // A refusal: a strong read on a node cut off from the others.
    c.client(2).set_isolated(true).await.expect("isolate");
    let mut opts = Opts::level("strong");
    opts.wait_ms_max = Some(300);
    assert!(
        c.client(2).get("d", b"k1", &opts).await.is_err(),
        "refused while isolated"
    );
    c.client(2).set_isolated(false).await.expect("heal");
    // The PBS estimate is made with the cluster status.
    n1.cluster().await.expect("cluster status");
    let cache_http = c.start_cache(&[]).await.expect("cache");
    let cache = Client::new(&format!("http://{cache_http}"));
    cache
        .get("d", b"k1", &Opts::level("eventual"))
        .await
        .expect("cache read");

    let mut exported = std::collections::BTreeSet::new();
    for http in [c.http(0), c.http(1), c.http(2), cache_http.clone()] {
        let url = format!("http://{}/metrics", http.trim_start_matches("http://"));
        let text = reqwest::get(&url)
            .await
            .expect("scrape")
            .text()
            .await
            .expect("text");
        exported.extend(declared_samples(&text));
    }
    let problems = dashboard_problems(&dashboard, &exported);
    assert!(
        problems.is_empty(),
        "{problems:#?}\nexported: {exported:#?}"
    );

    // The check can fail: a query naming a metric nobody exports is caught.
    let mut broken = dashboard.clone();
    broken["panels"][0]["targets"][0]["expr"] = json_str("rate(tunekv_made_up_total[1m])");
    assert!(!dashboard_problems(&broken, &exported).is_empty());
}

fn json_str(s: &str) -> Value {
    Value::String(s.to_string())
}
