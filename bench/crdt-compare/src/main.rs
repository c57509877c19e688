//! One SADD into a set of 10, 10k and 100k members, replicated to a second replica:
//!
//! - tunekv (`tunekv_dynamo::ormap::OrSet`): the update's delta, joined at the making replica
//!   and at the other (what a write, a hint and a read repair carry);
//! - `crdts::Orswot` by state (`CvRDT::merge`): the other replica merges the whole state (what
//!   a state-based system ships when it cannot guarantee causal delivery of operations);
//! - `crdts::Orswot` by operation (`CmRDT::apply`): cheap, but correct only when every replica
//!   applies every op exactly once in causal order, which hints, read repair and anti-entropy
//!   do not give.
//!
//! Prints microseconds per update (mean over `ROUNDS`).

use crdts::{CmRDT, CvRDT, Orswot};
use std::time::Instant;
use tunekv_dynamo::ormap::OrSet;

const ROUNDS: u32 = 200;

fn main() {
    println!("members   tunekv delta (µs)   crdts merge of state (µs)   crdts apply op (µs)");
    for n in [10usize, 10_000, 100_000] {
        let members: Vec<Vec<u8>> = (0..n).map(|i| format!("member{i:07}").into_bytes()).collect();

        // tunekv: replica a makes the update, replica b joins the delta.
        let mut a = OrSet::new();
        let d = a.put(1, &members.iter().map(|m| (m.clone(), ())).collect::<Vec<_>>());
        a.join(&d);
        let mut b = a.clone();
        let t = Instant::now();
        for i in 0..ROUNDS {
            let delta = a.put(1, &[(format!("new{i}").into_bytes(), ())]);
            a.join(&delta);
            b.join(&delta);
        }
        let own = t.elapsed().as_secs_f64() * 1e6 / f64::from(ROUNDS);
        assert_eq!(a.len(), b.len());

        // crdts: the same set on two replicas.
        let mut x: Orswot<Vec<u8>, u64> = Orswot::new();
        for m in &members {
            let op = x.add(m.clone(), x.read_ctx().derive_add_ctx(1));
            x.apply(op);
        }
        let mut y = x.clone();
        let rounds_state = if n >= 100_000 { 20 } else { ROUNDS };
        let t = Instant::now();
        for i in 0..rounds_state {
            let op = x.add(format!("new{i}").into_bytes(), x.read_ctx().derive_add_ctx(1));
            x.apply(op);
            y.merge(x.clone());
        }
        let by_state = t.elapsed().as_secs_f64() * 1e6 / f64::from(rounds_state);
        let mut z = x.clone();
        let t = Instant::now();
        for i in 0..ROUNDS {
            let op = x.add(format!("op{i}").into_bytes(), x.read_ctx().derive_add_ctx(1));
            x.apply(op.clone());
            z.apply(op);
        }
        let by_op = t.elapsed().as_secs_f64() * 1e6 / f64::from(ROUNDS);
        println!("{n:>7}   {own:>17.1}   {by_state:>25.1}   {by_op:>19.1}");
    }
}
