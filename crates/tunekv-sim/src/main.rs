//! `cargo run -p tunekv-sim --release -- --seeds N [--from S] [--jobs J]`, or
//! `--reproduce SEED [--trace FILE]`.

use anyhow::{bail, Result};
use clap::Parser;
use std::time::{Duration, Instant};
use tunekv_sim::{run, Plan, SAFETY_DEFAULT_SECS};

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
    #[arg(long, default_value_t = SAFETY_DEFAULT_SECS)]
    safety_secs: u64,
    /// Parallel simulations (default: the machine's cores).
    #[arg(long)]
    jobs: Option<usize>,
    /// Print every seed's trace hash after the summary.
    #[arg(long)]
    hashes: bool,
    /// Injected bug (bug-injection builds): strong-local, ignore-session, skip-bounded, ack-early,
    /// old-receipts, progress-early (and the leaderless ones: see `tunekv server --help`).
    #[arg(long = "bug")]
    bugs: Vec<String>,
    /// Put a `tunekv cache` in front of the nodes of every ordered seed (half of the clients'
    /// operations through it; every third fault cuts it off).
    #[arg(long)]
    cache: bool,
}

fn main() -> Result<()> {
    let args = Args::parse();
    let bugs = tunekv_node::Bugs::parse(&args.bugs).map_err(anyhow::Error::msg)?;
    let safety = Duration::from_secs(args.safety_secs);
    if let Some(seed) = args.reproduce {
        // The nodes' own logs, in virtual time, when asked: TUNEKV_LOG=debug,openraft=info.
        if let Ok(filter) = tracing_subscriber::EnvFilter::try_from_env("TUNEKV_LOG") {
            let _ = tracing_subscriber::fmt()
                .with_env_filter(filter)
                .with_timer(SimTimer)
                .with_writer(std::io::stderr)
                .try_init();
        }
        let started = Instant::now();
        let plan = Plan::of(seed, safety);
        let out = run(if args.cache { plan.with_cache() } else { plan }, &bugs);
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
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    let progress = tunekv_sim::sweep::print_progress(args.seeds, 10, safety, args.bugs.clone());
    let cache = args.cache;
    let plan = move |seed| {
        let p = Plan::of(seed, safety);
        if cache {
            p.with_cache()
        } else {
            p
        }
    };
    let summary = tunekv_sim::sweep_plans(args.from, args.seeds, jobs, &plan, &bugs, &progress);
    println!("{}", summary.line(args.from));
    if args.hashes {
        for (seed, hash) in &summary.trace_hashes {
            println!("seed {seed}: trace hash {hash:016x}");
        }
    }
    if !summary.failures.is_empty() {
        let seeds: Vec<u64> = summary.failures.iter().map(|f| f.seed).collect();
        println!("failed seeds: {seeds:?}");
        std::process::exit(1);
    }
    Ok(())
}

/// Log lines stamped with the simulation's virtual time.
struct SimTimer;

impl tracing_subscriber::fmt::time::FormatTime for SimTimer {
    fn format_time(&self, w: &mut tracing_subscriber::fmt::format::Writer<'_>) -> std::fmt::Result {
        let at = turmoil::sim_elapsed().unwrap_or_default();
        write!(w, "{:>9.3}s", at.as_secs_f64())
    }
}
