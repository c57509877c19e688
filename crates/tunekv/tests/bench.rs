//! `tunekv bench` smoke test: a few seconds per level over HTTP and RESP, with every output
//! file written. Behaviour only: the numbers are not judged here.

use std::process::Command;

#[test]
fn a_short_bench_prints_its_table_and_writes_csv_svg_and_summary() {
    let dir = tempfile::tempdir().expect("temp dir");
    let out_dir = dir.path().join("out");
    let run = |args: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_tunekv"))
            .arg("bench")
            .args(args)
            .args(["--warmup", "1s", "--duration", "2s", "--keys", "50"])
            .arg("--dir")
            .arg(dir.path().join("cluster"))
            .output()
            .expect("run tunekv bench");
        let text = format!(
            "{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(out.status.success(), "{text}");
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let levels = ["strong", "bounded(t=500ms)", "session", "eventual"];
    let stdout = run(&[
        "--levels",
        &levels.join(","),
        "--connections",
        "4",
        "--out",
        out_dir.to_str().expect("utf-8"),
    ]);
    for level in levels {
        assert!(
            stdout.lines().any(|l| l.starts_with(level)),
            "no row for {level}:\n{stdout}"
        );
    }
    assert!(stdout.contains("load generator:"), "{stdout}");
    let csv = std::fs::read_to_string(out_dir.join("results.csv")).expect("results.csv");
    assert_eq!(csv.lines().count(), 1 + levels.len(), "{csv}");
    let summary: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(out_dir.join("summary.json")).expect("summary.json"),
    )
    .expect("summary is JSON");
    let rows = summary["levels"].as_array().expect("levels");
    assert_eq!(rows.len(), levels.len());
    assert!(
        rows.iter()
            .all(|r| r["ops_per_s"].as_f64().is_some_and(|x| x > 0.0)),
        "{summary}"
    );
    for svg in ["latency.svg", "staleness.svg"] {
        let s = std::fs::read_to_string(out_dir.join(svg)).expect("svg");
        assert!(s.starts_with("<svg") && s.contains("eventual"), "{svg}");
    }

    // RESP, pipelined.
    let stdout = run(&[
        "--protocol",
        "resp",
        "--levels",
        "eventual",
        "--inflight",
        "8",
        "--connections",
        "2",
    ]);
    assert!(
        stdout.lines().any(|l| l.starts_with("eventual")),
        "{stdout}"
    );
}

/// `--compare etcd,redis` starts both on 127.0.0.1, measures the same rows against them,
/// writes the five ratios and stops every process it started. Needs Debian's etcd-server and
/// redis-server (`scripts/test` installs them); elsewhere the test says it was skipped, except in CI
/// where their absence fails it.
#[test]
fn compare_measures_etcd_and_redis_and_writes_ratios() {
    let on_path = |b: &str| {
        std::env::var_os("PATH")
            .is_some_and(|p| std::env::split_paths(&p).any(|d| d.join(b).is_file()))
    };
    if !(on_path("etcd") && on_path("redis-server")) {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI must install etcd-server and redis-server"
        );
        eprintln!("skipped: etcd or redis-server not installed");
        return;
    }
    let dir = tempfile::tempdir().expect("temp dir");
    let out_dir = dir.path().join("out");
    let out = Command::new(env!("CARGO_BIN_EXE_tunekv"))
        .args(["bench", "--compare", "etcd,redis"])
        .args([
            "--warmup",
            "1s",
            "--duration",
            "1s",
            "--keys",
            "50",
            "--connections",
            "4",
        ])
        .arg("--dir")
        .arg(dir.path().join("cluster"))
        .arg("--out")
        .arg(&out_dir)
        .output()
        .expect("run tunekv bench --compare");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for row in [
        "etcd put",
        "etcd linearizable read",
        "etcd serializable read",
        "redis GET",
        "redis SET",
        "redis SET durable",
    ] {
        assert!(
            stdout.lines().any(|l| l.starts_with(row)),
            "no row {row}:\n{stdout}"
        );
    }
    let summary: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(out_dir.join("summary.json")).expect("summary.json"),
    )
    .expect("summary is JSON");
    for ratio in [
        "strong_write_vs_etcd_put",
        "strong_read_vs_etcd_linearizable_read",
        "eventual_read_vs_etcd_serializable_read",
        "resp_get_vs_redis_get",
        "resp_set_vs_redis_set",
        "resp_set_vs_redis_durable_set",
    ] {
        assert!(
            summary["ratios"][ratio].as_f64().is_some_and(|x| x > 0.0),
            "{ratio}: {}",
            summary["ratios"]
        );
    }
    // Every peer was stopped by its PID.
    for line in stdout.lines().filter(|l| l.starts_with("started ")) {
        let pid = line
            .rsplit_once("(pid ")
            .and_then(|(_, p)| p.trim_end_matches(')').parse::<u32>().ok())
            .expect("a pid");
        assert!(
            !std::path::Path::new(&format!("/proc/{pid}")).exists()
                || std::fs::read_to_string(format!("/proc/{pid}/stat"))
                    .is_ok_and(|s| s.contains(") Z ")),
            "{line}: still running"
        );
    }
}

#[test]
fn a_leaderless_bench_prints_its_quorum_and_volatile_rows_and_time_to_converge() {
    let dir = tempfile::tempdir().expect("temp dir");
    let out = Command::new(env!("CARGO_BIN_EXE_tunekv"))
        .args([
            "bench",
            "--keyspace-mode",
            "leaderless",
            "--protocol",
            "resp",
        ])
        .args(["--warmup", "300ms", "--duration", "1s", "--keys", "50"])
        .args(["--connections", "2", "--inflight", "4"])
        .arg("--dir")
        .arg(dir.path().join("cluster"))
        .output()
        .expect("run tunekv bench");
    let text = format!(
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{text}");
    for row in [
        "leaderless write w=one",
        "leaderless write w=quorum",
        "leaderless write w=all",
        "leaderless read r=one",
        "leaderless read r=quorum",
        "counter INCR w=one",
        "counter INCR w=quorum",
        "counter GET r=one",
        "map HSET w=quorum",
        "map HGET r=one",
        "volatile write (weak)",
        "volatile read (weak)",
    ] {
        let line = text
            .lines()
            .find(|l| l.starts_with(row))
            .unwrap_or_else(|| panic!("no row {row}:\n{text}"));
        // Every request of the row succeeded (nothing refused, e.g. by QUORUM or the level).
        assert!(line.trim_end().ends_with('-'), "{line}\n{text}");
    }
    assert!(
        text.contains("time to converge after a healed partition:")
            && !text.contains("not measured"),
        "{text}"
    );
    // Every node counted through the partition, and none of it was lost.
    let partition = text
        .lines()
        .find(|l| l.starts_with("counter INCR at w=one on every node during a partition"))
        .unwrap_or_else(|| panic!("no partition line:\n{text}"));
    assert!(
        partition.contains("after healing every node reads") && partition.contains("(cut off)"),
        "{partition}"
    );
    assert!(text.contains("100000 members: SADD p50"), "{text}");
}

/// `bench --feed` (issue 18): every feed row is printed, and every write reaches every
/// consumer (the `received` column).
#[test]
fn a_feed_bench_delivers_every_write_to_every_consumer() {
    let dir = tempfile::tempdir().expect("temp dir");
    let out = Command::new(env!("CARGO_BIN_EXE_tunekv"))
        .args(["bench", "--feed", "--duration", "1s", "--dir"])
        .arg(dir.path().join("cluster"))
        .output()
        .expect("run tunekv bench --feed");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let rows: Vec<&str> = stdout
        .lines()
        .filter(|l| l.starts_with("tunekv ") && l.contains('|'))
        .collect();
    assert_eq!(rows.len(), 4, "{stdout}");
    for r in rows {
        assert!(
            r.trim_end().ends_with("100.0%"),
            "not every event arrived: {r}"
        );
    }
}

/// `bench --cache` (issue 19): every row runs, beside Redis and memcached; the cache serves
/// its GET rows from memory (a hit ratio is printed for each), strong included; write-behind
/// flushes; the eviction policy's zipf hit ratio is printed beside an exact LRU.
#[test]
fn a_cache_bench_prints_every_row_and_its_hit_ratios() {
    let dir = tempfile::tempdir().expect("temp dir");
    let out = Command::new(env!("CARGO_BIN_EXE_tunekv"))
        .args([
            "bench",
            "--cache",
            "--compare",
            "redis,memcached",
            "--keys",
            "2000",
        ])
        .args([
            "--duration",
            "1s",
            "--warmup",
            "1s",
            "--distribution",
            "zipf",
            "--dir",
        ])
        .arg(dir.path().join("cluster"))
        .output()
        .expect("run tunekv bench --cache");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for row in [
        "cache GET eventual",
        "cache GET session",
        "cache GET strong",
        "node GET eventual",
        "node GET strong",
        "redis GET",
        "memcached get",
        "cache SET write-through",
        "cache SET write-behind",
        "node SET",
    ] {
        let line = stdout
            .lines()
            .find(|l| l.starts_with(row) && !l.contains("hit ratio"))
            .unwrap_or_else(|| panic!("no {row} row:\n{stdout}"));
        let ops: f64 = line[row.len()..]
            .split_whitespace()
            .next()
            .and_then(|n| n.parse().ok())
            .unwrap_or(0.0);
        assert!(ops > 0.0, "{row} made no progress: {line}");
        assert!(line.trim_end().ends_with('-'), "{row} had refusals: {line}");
    }
    for row in [
        "cache GET eventual",
        "cache GET session",
        "cache GET strong",
    ] {
        let ratio: f64 = stdout
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{row}: hit ratio ")))
            .and_then(|r| r.split('%').next())
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("no hit ratio for {row}:\n{stdout}"));
        assert!(ratio > 50.0, "{row}: hit ratio {ratio}%:\n{stdout}");
    }
    assert!(
        stdout.contains("quick_cache") && stdout.contains("exact LRU"),
        "{stdout}"
    );
    // No peer is left running: they were stopped by PID.
    for name in ["memcached", "redis"] {
        let pid = stdout
            .lines()
            .find_map(|l| l.strip_prefix(&format!("started {name} (pid ")))
            .and_then(|p| p.trim_end_matches(')').parse::<u32>().ok())
            .unwrap_or_else(|| panic!("{name}'s pid not printed:\n{stdout}"));
        assert!(
            !std::path::Path::new(&format!("/proc/{pid}")).exists(),
            "{name} (pid {pid}) still runs"
        );
    }
}

/// Runs `tunekv bench --pbs` with `args` on a cluster of its own; returns its output and
/// pbs.json.
fn pbs_bench(args: &[&str]) -> (String, serde_json::Value) {
    let dir = tempfile::tempdir().expect("temp dir");
    let out = Command::new(env!("CARGO_BIN_EXE_tunekv"))
        .args(["bench", "--pbs"])
        .args(args)
        .arg("--dir")
        .arg(dir.path().join("cluster"))
        .arg("--out")
        .arg(dir.path().join("out"))
        .output()
        .expect("run tunekv bench --pbs");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let summary =
        serde_json::from_slice(&std::fs::read(dir.path().join("out/pbs.json")).expect("pbs.json"))
            .expect("pbs.json is JSON");
    (stdout, summary)
}

/// `bench --pbs` (issue 20): with every node's messages delayed 14 ms, followers see a write
/// some milliseconds after the leader acknowledged it; the measured probability that an
/// eventual read returns the write climbs from the leader's share to 1, and the cluster's live
/// PBS estimate agrees with it within the stated tolerance at every t.
#[test]
fn the_pbs_estimate_agrees_with_measured_visibility() {
    // 14 ms: followers see writes 14–17 ms after the ack, between the probes at 10 and 20 ms.
    // With 10 ms the curve's one steep step sat on the 10 ms probe, where a millisecond of
    // timer or scheduling skew on a loaded CI machine moved the measured share by 0.1.
    let (stdout, summary) = pbs_bench(&["--pbs-trials", "200", "--pbs-delay-ms", "14"]);
    assert_eq!(summary["agree"], true, "{stdout}");
    let rows = summary["rows"].as_array().expect("rows");
    let at = |t: u64| {
        rows.iter()
            .find(|r| r["t_ms"] == t)
            .unwrap_or_else(|| panic!("no row for {t} ms: {stdout}"))
    };
    // Right after the acknowledgement only the leader is sure to have it; a little later
    // every replica has.
    let early = at(0)["measured"].as_f64().expect("measured");
    assert!(
        early < 0.8,
        "followers lag 10+ ms, yet {early} at 0 ms: {stdout}"
    );
    // Not exactly 1: on a loaded machine a read can meet a follower still catching up after
    // 100 ms, and the estimate must then say so too, which `agree` checks. A fresh CI run,
    // right after a build had filled the page cache with dirty pages, had one follower's
    // fsyncs stall for up to a second: 0.925 measured and 0.940 estimated at 100 ms. What must
    // hold whatever the disk does: most reads see the write by then, and clearly more than
    // at 0 ms (followers that never applied would leave the curve at the leader's share).
    let late = at(100)["measured"].as_f64().expect("measured");
    assert!(
        late >= 0.85 && late >= early + 0.3,
        "followers should have the writes by 100 ms: {stdout}"
    );
    for r in rows {
        let (m, e) = (
            r["measured"].as_f64().unwrap_or(-1.0),
            r["estimated"].as_f64().unwrap_or(9.0),
        );
        assert!((m - e).abs() <= 0.1, "{r}: {stdout}");
        assert_eq!(r["reads"], 200, "{r}");
    }
    assert!(stdout.contains("cluster curve"), "{stdout}");
}

/// `bench --pbs --keyspace-mode leaderless` (issue 20): the WARS estimate of a leaderless
/// keyspace (w = quorum, r = one), from the coordinators' measured round trips, agrees with
/// measured t-visibility within the stated tolerance.
#[test]
fn the_leaderless_pbs_estimate_agrees_with_measured_visibility() {
    let (stdout, summary) = pbs_bench(&[
        "--keyspace-mode",
        "leaderless",
        "--pbs-trials",
        "150",
        "--pbs-delay-ms",
        "10",
    ]);
    assert_eq!(summary["keyspace"], "pbs_leaderless");
    assert_eq!(summary["agree"], true, "{stdout}");
    assert!(stdout.contains("(WARS)"), "{stdout}");
}

/// `bench --scale` at CI's size (issue 21: the 10M-key run belongs to `bench`, CI runs the
/// same code at 100k): the keys are loaded in batches, SET and GET run without a failed
/// request, every node is killed and serves again, and each row reports its memory and disk.
/// The nodes run with the block cache `--cache-mib` asks for.
#[test]
fn the_scale_bench_loads_measures_and_restarts_at_100k_keys() {
    let dir = tempfile::tempdir().expect("temp dir");
    let out_dir = dir.path().join("out");
    let out = Command::new(env!("CARGO_BIN_EXE_tunekv"))
        .args(["bench", "--scale", "--keys", "100000", "--duration", "2s"])
        .args(["--cache-mib", "24"])
        .args(["--connections", "4", "--inflight", "16", "--out"])
        .arg(&out_dir)
        .arg("--dir")
        .arg(dir.path().join("cluster"))
        .output()
        .expect("run tunekv bench --scale");
    let text = format!(
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{text}");
    let json: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(out_dir.join("scale.json")).expect("scale.json"),
    )
    .expect("json");
    let rows = json["rows"].as_array().expect("rows");
    assert_eq!(rows.len(), 1, "{json}");
    let row = &rows[0];
    assert_eq!(row["keys"], 100_000);
    for field in ["load_per_sec", "set_per_sec", "get_per_sec", "set_p999_ms"] {
        assert!(row[field].as_f64().unwrap_or(0.0) > 0.0, "{field}: {row}");
    }
    assert_eq!(
        (row["set_errors"].as_u64(), row["get_errors"].as_u64()),
        (Some(0), Some(0))
    );
    assert!(row["restart_ms"].as_u64().unwrap_or(0) > 0, "{row}");
    // A stall (no SET completing anywhere) is never longer than the slowest SET: every
    // connection has one in flight throughout.
    let (stall, max) = (
        row["set_stall_ms"].as_f64().unwrap_or(0.0),
        row["set_max_ms"].as_f64().unwrap_or(0.0),
    );
    assert!(stall > 0.0 && stall <= max + 1.0, "{row}");
    let rss = row["rss_mib"].as_array().expect("rss per node");
    assert_eq!(rss.len(), 3);
    assert!(rss.iter().all(|m| m.as_f64().unwrap_or(0.0) > 1.0), "{row}");
    let restarted = row["rss_restarted_mib"]
        .as_array()
        .expect("rss after the restart");
    assert!(
        restarted.iter().all(|m| m.as_f64().unwrap_or(0.0) > 1.0),
        "{row}"
    );
    assert!(row["disk_mib"][0].as_f64().unwrap_or(0.0) > 1.0, "{row}");
    assert!(text.contains("restart s"), "{text}");
    assert_eq!(json["cache_mib"].as_f64(), Some(24.0), "{json}");
    for i in 1..=3 {
        let config = std::fs::read_to_string(dir.path().join(format!("cluster/node-{i}.toml")))
            .expect("a node's config");
        assert!(
            config.contains(&format!("cache_bytes = {}", 24 << 20)),
            "{config}"
        );
    }
}

/// `--cache-mib` sets the nodes bench starts; with `--cluster` (nodes someone else started) or
/// at 0 it is refused before anything runs.
#[test]
fn a_cache_size_for_nodes_bench_does_not_start_is_refused() {
    for (args, says) in [
        (
            vec!["--cluster", "/nonexistent/cluster.json", "--cache-mib", "8"],
            "leave out --cluster",
        ),
        (vec!["--cache-mib", "0"], "at least 1"),
        (vec!["--cache-mib", "18446744073709551615"], "too large"),
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_tunekv"))
            .arg("bench")
            .args(&args)
            .output()
            .expect("run tunekv bench");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(stderr.contains(says), "{args:?}: {stderr}");
    }
}

/// `bench --backup` (issue 21): loads keys through restore batches, backs them up and restores
/// the backup, printing keys/s and MB/s of each and writing the rows to backup.json.
#[test]
fn a_backup_bench_prints_load_backup_and_restore_rows() {
    let dir = tempfile::tempdir().expect("temp dir");
    let out = Command::new(env!("CARGO_BIN_EXE_tunekv"))
        .args([
            "bench",
            "--backup",
            "--keys",
            "3000",
            "--value-bytes",
            "200",
        ])
        .arg("--dir")
        .arg(dir.path().join("cluster"))
        .arg("--out")
        .arg(dir.path().join("out"))
        .output()
        .expect("run tunekv bench --backup");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let rows: serde_json::Value = serde_json::from_slice(
        &std::fs::read(dir.path().join("out/backup.json")).expect("backup.json"),
    )
    .expect("backup.json is JSON");
    let rows = rows.as_array().expect("rows");
    let names: Vec<&str> = rows.iter().filter_map(|r| r["row"].as_str()).collect();
    assert_eq!(
        names,
        ["load (restore batches)", "backup", "restore"],
        "{stdout}"
    );
    for r in rows {
        assert_eq!(r["keys"], 3000, "{r}");
        // 3000 records of 200-byte values: at least 600 kB, whatever the framing.
        assert!(r["bytes"].as_u64().unwrap_or(0) >= 600_000, "{r}");
        assert!(r["seconds"].as_f64().unwrap_or(0.0) > 0.0, "{r}");
    }
    assert!(stdout.contains("keys/s"), "{stdout}");
    assert!(stdout.contains("restored 3000 keys"), "{stdout}");
}

/// `bench --security` (issue 22): the same rows on plain, auth, TLS and auth + TLS clusters,
/// and the login's cost where auth is on; every row did work.
#[test]
fn a_security_bench_prints_rows_with_and_without_auth_and_tls() {
    let dir = tempfile::tempdir().expect("temp dir");
    let out = Command::new(env!("CARGO_BIN_EXE_tunekv"))
        .args([
            "bench",
            "--security",
            "--duration",
            "300ms",
            "--warmup",
            "0s",
            "--connections",
            "2",
            "--value-bytes",
            "100",
        ])
        .arg("--out")
        .arg(dir.path().join("out"))
        .output()
        .expect("run tunekv bench --security");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let doc: serde_json::Value = serde_json::from_slice(
        &std::fs::read(dir.path().join("out/security.json")).expect("security.json"),
    )
    .expect("security.json is JSON");
    let rows = doc["rows"].as_array().expect("rows");
    let mut seen: Vec<String> = rows
        .iter()
        .map(|r| {
            format!(
                "{} {}",
                r["setup"].as_str().unwrap_or(""),
                r["op"].as_str().unwrap_or("")
            )
        })
        .collect();
    seen.sort();
    let mut want = Vec::new();
    for setup in ["plain", "auth", "tls", "auth+tls"] {
        for op in ["http get", "http put", "resp get", "resp set"] {
            want.push(format!("{setup} {op}"));
        }
    }
    want.push("auth login (argon2id)".into());
    want.push("auth+tls login (argon2id)".into());
    want.sort();
    assert_eq!(seen, want, "{stdout}");
    for r in rows {
        assert!(r["ops"].as_u64().unwrap_or(0) > 0, "{r}");
    }
    assert!(stdout.contains("vs plain"), "{stdout}");
}
