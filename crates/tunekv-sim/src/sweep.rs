//! Many seeds across threads: what `tunekv-sim --seeds N` and CI's seed sweep run.

use crate::run::{run, Plan};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// One failing seed and what broke.
#[derive(Clone, Debug)]
pub struct Failure {
    pub seed: u64,
    pub violations: Vec<String>,
}

/// The command that replays `seed` alone, with the same safety time and injected bugs.
pub fn reproduce_command(seed: u64, safety: Duration, bugs: &[String]) -> String {
    let mut cmd = if bugs.is_empty() {
        format!("cargo run -p tunekv-sim --release -- --reproduce {seed}")
    } else {
        // Injected bugs exist only in debug builds.
        format!("cargo run -p tunekv-sim --features bug-injection -- --reproduce {seed}")
    };
    if safety != Duration::from_secs(crate::run::SAFETY_DEFAULT_SECS) {
        cmd += &format!(" --safety-secs {}", safety.as_secs());
    }
    for b in bugs {
        cmd += &format!(" --bug {b}");
    }
    cmd
}

/// What a sweep ran and found.
#[derive(Debug, Default)]
pub struct Summary {
    pub seeds: u64,
    pub failures: Vec<Failure>,
    /// Virtual cluster time simulated, summed over seeds.
    pub virtual_secs: f64,
    /// The shortest run's virtual time.
    pub virtual_secs_min: f64,
    /// The fewest fault episodes any seed's plan scheduled.
    pub episodes_min: usize,
    pub operations: u64,
    pub wall_secs: f64,
    pub jobs: usize,
    /// Each seed's trace hash.
    pub trace_hashes: std::collections::BTreeMap<u64, u64>,
}

impl Summary {
    /// One hash of every seed's trace hash, in seed order: two sweeps over the same seeds
    /// agree on it, whatever the thread count.
    pub fn sweep_hash(&self) -> u64 {
        let mut bytes = Vec::with_capacity(self.trace_hashes.len() * 16);
        for (seed, hash) in &self.trace_hashes {
            bytes.extend_from_slice(&seed.to_le_bytes());
            bytes.extend_from_slice(&hash.to_le_bytes());
        }
        xxhash_rust::xxh3::xxh3_64(&bytes)
    }

    /// Virtual seconds simulated per wall second, over all threads.
    pub fn speed(&self) -> f64 {
        self.virtual_secs / self.wall_secs.max(1e-9)
    }

    pub fn line(&self, from: u64) -> String {
        format!(
            "{} seeds ({}..{}), {} failed; {} operations; {:.0} virtual s (each ≥ {:.1} s, ≥ {} fault \
             episodes) in {:.1} wall s on {} threads: {:.1} virtual s per wall s; sweep hash {:016x}",
            self.seeds,
            from,
            from + self.seeds,
            self.failures.len(),
            self.operations,
            self.virtual_secs,
            self.virtual_secs_min,
            self.episodes_min,
            self.wall_secs,
            self.jobs,
            self.speed(),
            self.sweep_hash()
        )
    }
}

/// Runs seeds `from..from + seeds` on `jobs` threads, each with `safety` of faults. `progress`
/// hears about every finished seed (its number, how many are done, and its failure if any).
pub fn sweep(
    from: u64,
    seeds: u64,
    jobs: usize,
    safety: Duration,
    bugs: &tunekv_node::Bugs,
    progress: &(dyn Fn(u64, u64, Option<&Failure>) + Sync),
) -> Summary {
    sweep_plans(
        from,
        seeds,
        jobs,
        &|seed| Plan::of(seed, safety),
        bugs,
        progress,
    )
}

/// [`sweep`] over the plans `plan` makes of each seed (`tunekv-sim --cache`: with a cache).
pub fn sweep_plans(
    from: u64,
    seeds: u64,
    jobs: usize,
    plan: &(dyn Fn(u64) -> Plan + Sync),
    bugs: &tunekv_node::Bugs,
    progress: &(dyn Fn(u64, u64, Option<&Failure>) + Sync),
) -> Summary {
    let jobs = jobs.max(1);
    let next = AtomicU64::new(from);
    let done = AtomicU64::new(0);
    let end = from + seeds;
    let summary = Mutex::new(Summary {
        seeds,
        jobs,
        virtual_secs_min: f64::INFINITY,
        episodes_min: usize::MAX,
        ..Summary::default()
    });
    let started = Instant::now();
    std::thread::scope(|scope| {
        for _ in 0..jobs {
            scope.spawn(|| loop {
                let seed = next.fetch_add(1, Ordering::Relaxed);
                if seed >= end {
                    return;
                }
                let out = run(plan(seed), bugs);
                let n = done.fetch_add(1, Ordering::Relaxed) + 1;
                let failure = (!out.violations.is_empty()).then(|| Failure {
                    seed,
                    violations: out.violations.clone(),
                });
                progress(seed, n, failure.as_ref());
                let mut s = summary.lock().unwrap_or_else(|p| p.into_inner());
                s.virtual_secs += out.virtual_secs;
                s.virtual_secs_min = s.virtual_secs_min.min(out.virtual_secs);
                s.episodes_min = s.episodes_min.min(out.plan.episodes());
                s.operations += out.ops as u64;
                s.trace_hashes.insert(seed, out.trace_hash);
                s.failures.extend(failure);
            });
        }
    });
    let mut s = summary.into_inner().unwrap_or_else(|p| p.into_inner());
    s.wall_secs = started.elapsed().as_secs_f64();
    s.failures.sort_by_key(|f| f.seed);
    if seeds == 0 {
        s.virtual_secs_min = 0.0;
        s.episodes_min = 0;
    }
    s
}

/// Progress printing shared by the CLI and CI's sweep: a line every `every` seeds, and each
/// failure with the command that reproduces it.
pub fn print_progress(
    total: u64,
    every: u64,
    safety: Duration,
    bugs: Vec<String>,
) -> impl Fn(u64, u64, Option<&Failure>) + Sync {
    let started = Instant::now();
    move |_seed, n, failure| {
        if let Some(f) = failure {
            println!(
                "seed {} FAILED ({} violations); reproduce: {}",
                f.seed,
                f.violations.len(),
                reproduce_command(f.seed, safety, &bugs)
            );
            for v in f.violations.iter().take(5) {
                println!("  {v}");
            }
        }
        if n.is_multiple_of(every) || n == total {
            println!(
                "{n}/{total} seeds, {:.0} s",
                started.elapsed().as_secs_f64()
            );
        }
    }
}
