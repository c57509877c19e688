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
