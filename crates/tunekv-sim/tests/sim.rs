//! The simulator's own promises: a seed replays to the same trace, seeds pass on a correct
//! build, and each injected bug is caught within a bounded number of seeds.

use std::time::Duration;
use tunekv_sim::{run, Plan};

/// CI's safety time: the schedules the sweep runs.
const SAFETY: Duration = Duration::from_secs(tunekv_sim::SAFETY_DEFAULT_SECS);

#[test]
fn one_seed_twice_gives_the_same_trace() {
    let a = run(Plan::of(11, SAFETY), &tunekv_node::Bugs::default());
    let b = run(Plan::of(11, SAFETY), &tunekv_node::Bugs::default());
    assert!(a.ops > 100, "only {} operations", a.ops);
    assert_eq!(a.violations, Vec::<String>::new());
    // The invariants saw the replicas and the clients' session tokens.
    assert!(a.checked.replicas > 100, "{:?}", a.checked);
    assert!(a.checked.tokens > 10, "{:?}", a.checked);
    assert!(a.checked.claimed_groups >= 1, "{:?}", a.checked);
    if a.trace != b.trace {
        let line = a
            .trace
            .lines()
            .zip(b.trace.lines())
            .position(|(x, y)| x != y)
            .unwrap_or(0);
        panic!(
            "traces differ at line {line}:\n{}\n{}",
            a.trace.lines().nth(line).unwrap_or(""),
            b.trace.lines().nth(line).unwrap_or("")
        );
    }
    assert_eq!(a.trace_hash, b.trace_hash);
}

#[test]
fn seeds_with_faults_pass_on_a_correct_build() {
    for seed in 100..103 {
        let out = run(Plan::of(seed, SAFETY), &tunekv_node::Bugs::default());
        assert!(
            !out.plan.faults.is_empty(),
            "seed {seed} scheduled no faults"
        );
        assert_eq!(
            out.violations,
            Vec::<String>::new(),
            "seed {seed}: {:?}",
            out.plan
        );
    }
}

/// Seeds that once found a real bug (docs/simulation.md, "Bugs it found"), replayed on every run.
/// 10083: a shard leader crashed and restarted into its old term; openraft restored it as leader
/// with a stale commit index, and it served a strong read from before an acknowledged write.
const FOUND_BUGS: &[u64] = &[10083];

#[test]
fn seeds_that_found_bugs_pass() {
    for &seed in FOUND_BUGS {
        let out = run(Plan::of(seed, SAFETY), &tunekv_node::Bugs::default());
        assert_eq!(out.violations, Vec::<String>::new(), "seed {seed}");
    }
}

#[cfg(feature = "bug-injection")]
mod bugs {
    use super::*;

    /// Seeds tried per bug before the test gives up.
    const SEEDS_MAX: u64 = 8;

    fn caught(bug: &str) {
        let bugs = tunekv_node::Bugs::parse(&[bug.to_string()]).expect("a known bug");
        for seed in 0..SEEDS_MAX {
            let out = run(Plan::of(seed, SAFETY), &bugs);
            if !out.violations.is_empty() {
                eprintln!("{bug}: caught by seed {seed}: {}", out.violations[0]);
                return;
            }
        }
        panic!("{bug} went unnoticed for {SEEDS_MAX} seeds");
    }

    #[test]
    fn strong_local_is_caught() {
        caught("strong-local");
    }

    #[test]
    fn ignore_session_is_caught() {
        caught("ignore-session");
    }

    #[test]
    fn skip_bounded_is_caught() {
        caught("skip-bounded");
    }

    #[test]
    fn ack_early_is_caught() {
        caught("ack-early");
    }
}
