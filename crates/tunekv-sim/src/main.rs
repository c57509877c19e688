//! `cargo run -p tunekv-sim --release -- --seeds N [--from S] [--jobs J]`, or
//! `--reproduce SEED [--trace FILE]`.

use anyhow::{bail, Result};
use clap::Parser;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tunekv_sim::{run, Plan};

#[derive(Parser)]
#[command(about = "Deterministic simulation of tunekv clusters, one seed per run")]
struct Args {
    /// How many seeds to run.
    #[arg(long, default_value_t = 100)]
    seeds: u64,
    /// The first seed.
    #[arg(long, default_value_t = 0)]
    from: u64,
    /// Run only this seed, and print its trace hash.
    #[arg(long)]
    reproduce: Option<u64>,
    /// With --reproduce: write the trace here.
    #[arg(long)]
    trace: Option<std::path::PathBuf>,
    /// Virtual seconds of faults per seed.
    #[arg(long, default_value_t = 30)]
    safety_secs: u64,
    /// Parallel simulations (default: the machine's cores).
    #[arg(long)]
    jobs: Option<usize>,
    /// Injected bug (bug-injection builds): strong-local, ignore-session, skip-bounded, ack-early.
    #[arg(long = "bug")]
    bugs: Vec<String>,
}

fn main() -> Result<()> {
    let args = Args::parse();
    let bugs = tunekv_node::Bugs::parse(&args.bugs).map_err(anyhow::Error::msg)?;
    let safety = Duration::from_secs(args.safety_secs);
    if let Some(seed) = args.reproduce {
        let started = Instant::now();
        let out = run(Plan::of(seed, safety), &bugs);
        println!("seed {seed}: plan {:?}", out.plan);
        println!(
            "seed {seed}: {} operations, {:.1} virtual s in {:.1} wall s, trace hash {:016x}",
            out.ops,
            out.virtual_secs,
            started.elapsed().as_secs_f64(),
            out.trace_hash
        );
        if let Some(path) = &args.trace {
            std::fs::write(path, &out.trace)?;
        }
        for v in &out.violations {
            println!("  violation: {v}");
        }
        if !out.violations.is_empty() {
            std::process::exit(1);
        }
        return Ok(());
    }
    if args.seeds == 0 {
        bail!("--seeds must be at least 1");
    }
    let jobs = args
        .jobs
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
        .max(1);
    let next = Arc::new(AtomicU64::new(args.from));
    let end = args.from + args.seeds;
    let failures = Arc::new(Mutex::new(Vec::new()));
    let virtual_total = Arc::new(Mutex::new(0.0f64));
    let done = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let workers: Vec<_> = (0..jobs)
        .map(|_| {
            let (next, failures, virtual_total, done, bugs) = (
                next.clone(),
                failures.clone(),
                virtual_total.clone(),
                done.clone(),
                bugs,
            );
            std::thread::spawn(move || loop {
                let seed = next.fetch_add(1, Ordering::Relaxed);
                if seed >= end {
                    return;
                }
                let out = run(Plan::of(seed, safety), &bugs);
                *virtual_total.lock().unwrap_or_else(|p| p.into_inner()) += out.virtual_secs;
                let n = done.fetch_add(1, Ordering::Relaxed) + 1;
                if !out.violations.is_empty() {
                    println!(
                        "seed {seed} FAILED ({} violations); reproduce: cargo run -p tunekv-sim --release -- --reproduce {seed}",
                        out.violations.len()
                    );
                    for v in out.violations.iter().take(5) {
                        println!("  {v}");
                    }
                    failures
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .push(seed);
                } else if n % 10 == 0 || n == end - args.from {
                    println!(
                        "{n}/{} seeds, {:.0} s",
                        end - args.from,
                        started.elapsed().as_secs_f64()
                    );
                }
            })
        })
        .collect();
    for w in workers {
        if w.join().is_err() {
            bail!("a simulation thread panicked");
        }
    }
    let wall = started.elapsed().as_secs_f64();
    let virt = *virtual_total.lock().unwrap_or_else(|p| p.into_inner());
    let failures = failures.lock().unwrap_or_else(|p| p.into_inner()).clone();
    println!(
        "{} seeds ({}..{}), {} failed; {:.0} virtual s in {:.1} wall s on {jobs} threads: {:.1} virtual s per wall s",
        args.seeds,
        args.from,
        end,
        failures.len(),
        virt,
        wall,
        virt / wall.max(1e-9)
    );
    if !failures.is_empty() {
        println!("failed seeds: {failures:?}");
        std::process::exit(1);
    }
    Ok(())
}
