//! CI's seed sweep: 500 seeds, each with 30 virtual seconds of faults (several episodes) plus
//! setup and the liveness phase, on two threads, with zero violations. It prints its speed
//! (virtual seconds per wall second). It runs alone (see .config/nextest.toml); more seeds
//! overnight: docs/simulation.md.

use std::time::Duration;
use tunekv_sim::sweep::reproduce_command;
use tunekv_sim::{sweep, SAFETY_DEFAULT_SECS};

/// Seeds CI runs; fixed, so a red CI run replays exactly.
const FROM: u64 = 10_000;
const SEEDS: u64 = 500;
const JOBS: usize = 2;
/// The fewest fault episodes any plan may have.
const EPISODES_MIN: usize = 3;

#[test]
fn five_hundred_seeds_pass() {
    let safety = Duration::from_secs(SAFETY_DEFAULT_SECS);
    let progress = tunekv_sim::sweep::print_progress(SEEDS, 50, safety, Vec::new());
    let summary = sweep(
        FROM,
        SEEDS,
        JOBS,
        safety,
        &tunekv_node::Bugs::default(),
        &progress,
    );
    println!("{}", summary.line(FROM));
    let failed: Vec<String> = summary
        .failures
        .iter()
        .map(|f| reproduce_command(f.seed, safety, &[]))
        .collect();
    assert!(failed.is_empty(), "failing seeds:\n{}", failed.join("\n"));
    assert_eq!(summary.seeds, SEEDS);
    assert!(
        summary.virtual_secs_min >= SAFETY_DEFAULT_SECS as f64,
        "a seed simulated only {:.1} virtual s",
        summary.virtual_secs_min
    );
    assert!(
        summary.episodes_min >= EPISODES_MIN,
        "a seed scheduled only {} fault episodes",
        summary.episodes_min
    );
    assert!(summary.operations > SEEDS * 100, "{}", summary.line(FROM));
}
