//! tunekv-sim: whole tunekv clusters (the production node code) under turmoil's simulated
//! network and time, a simulated disk that loses unsynced writes on a crash, and per-node
//! clocks, all derived from one seed; histories judged by tunekv-check. See docs/simulation.md.

pub mod backup;
pub mod cache;
pub mod client;
pub mod invariants;
pub mod net;
pub mod run;
pub mod sweep;

pub use run::{run, Fault, Outcome, Plan, Workload, LEVELS, SAFETY_DEFAULT_SECS};
pub use sweep::{sweep, sweep_plans, Failure, Summary};
