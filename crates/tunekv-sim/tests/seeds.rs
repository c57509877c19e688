//! CI's seed sweep: 64 seeds, each with 30 virtual seconds of faults (several episodes) plus
//! setup and the liveness phase, on two threads, with zero violations — the last 18 with a
//! `tunekv cache` in front of the nodes (`tunekv-sim --cache`). It prints its speed (virtual
//! seconds per wall second). It runs alone (see .config/nextest.toml); more seeds overnight:
//! docs/simulation.md.

use std::time::Duration;
use tunekv_sim::sweep::reproduce_command;
use tunekv_sim::{sweep_plans, Plan, SAFETY_DEFAULT_SECS};

/// Seeds CI runs; fixed, so a red CI run replays exactly.
const FROM: u64 = 10_000;
const SEEDS: u64 = 64;
/// The last of them run with a cache.
const WITH_CACHE: u64 = 18;
const JOBS: usize = 2;
/// The fewest fault episodes any plan may have.
const EPISODES_MIN: usize = 3;

#[test]
fn the_ci_seed_sweep_passes() {
    let safety = Duration::from_secs(SAFETY_DEFAULT_SECS);
    let progress = tunekv_sim::sweep::print_progress(SEEDS, 50, safety, Vec::new());
    let cache_from = FROM + SEEDS - WITH_CACHE;
    let plan = |seed| {
        let p = Plan::of(seed, safety);
        if seed >= cache_from {
            p.with_cache()
        } else {
            p
        }
    };
    let summary = sweep_plans(
        FROM,
        SEEDS,
        JOBS,
        &plan,
        &tunekv_node::Bugs::default(),
        &progress,
    );
    println!("{}", summary.line(FROM));
    let failed: Vec<String> = summary
        .failures
        .iter()
        .map(|f| {
            let cmd = reproduce_command(f.seed, safety, &[]);
            if f.seed >= cache_from {
                format!("{cmd} --cache")
            } else {
                cmd
            }
        })
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
