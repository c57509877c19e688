//! `tunekv slo [KEYSPACE]`: every staleness SLO cluster-wide. Asks one node for the cluster's
//! members, then each reachable node for its SLO reports (`GET /v1/slo`), and prints per SLO
//! the reads over its window summed over the nodes, the compliance and burn rate that sum
//! gives, and each node's own line.

use anyhow::Result;
use serde_json::Value;
use std::collections::BTreeMap;
use tunekv_client::Client;
use tunekv_node::metrics::SloReport;

/// Exit code when an SLO is violated (`main.rs` owns the codes).
pub const VIOLATED: i32 = 3;

pub async fn run(node: &str, keyspace: Option<&str>, json: bool) -> Result<i32> {
    let status = match Client::new(node).cluster().await {
        Ok(s) => s,
        Err(e) => {
            eprintln!("error: {e}");
            return Ok(2);
        }
    };
    let nodes: Vec<(u64, String)> = status["nodes"]
        .as_array()
        .map(|ns| {
            ns.iter()
                .filter_map(|n| Some((n["id"].as_u64()?, n["http"].as_str()?.to_string())))
                .collect()
        })
        .unwrap_or_default();
    let mut per_node: Vec<(u64, Result<Vec<SloReport>, String>)> = Vec::new();
    for (id, http) in &nodes {
        let r = match Client::new(http).slo().await {
            Ok(v) => serde_json::from_value::<Vec<SloReport>>(v["slos"].clone())
                .map_err(|e| format!("unreadable answer: {e}")),
            Err(e) => Err(e.to_string()),
        };
        per_node.push((*id, r));
    }
    if json {
        let out: Vec<Value> = per_node
            .iter()
            .map(|(id, r)| match r {
                Ok(slos) => serde_json::json!({"node": id, "slos": slos}),
                Err(e) => serde_json::json!({"node": id, "error": e}),
            })
            .collect();
        println!("{}", serde_json::to_string_pretty(&out)?);
    }
    // SLO (keyspace, id) → each node's report.
    let mut slos: BTreeMap<(String, String), Vec<(u64, SloReport)>> = BTreeMap::new();
    for (id, r) in &per_node {
        match r {
            Ok(reports) => {
                for s in reports {
                    if keyspace.is_some_and(|k| k != s.keyspace) {
                        continue;
                    }
                    slos.entry((s.keyspace.clone(), s.slo.clone()))
                        .or_default()
                        .push((*id, s.clone()));
                }
            }
            Err(e) if !json => eprintln!("node {id}: unreachable ({e})"),
            Err(_) => {}
        }
    }
    if slos.is_empty() && !json {
        match keyspace {
            Some(k) => println!("keyspace {k:?} has no SLO (add \"slo\" to its spec)"),
            None => println!("no keyspace has an SLO (add \"slo\" to a keyspace's spec)"),
        }
    }
    let mut violated = false;
    for ((ks, id), reports) in &slos {
        let good: u64 = reports.iter().map(|(_, r)| r.good).sum();
        let valid: u64 = reports.iter().map(|(_, r)| r.valid).sum();
        let target = reports.first().map_or(1.0, |(_, r)| r.target);
        let compliance = if valid == 0 {
            1.0
        } else {
            good as f64 / valid as f64
        };
        let burn = (1.0 - compliance) / (1.0 - target);
        let any = reports.iter().any(|(_, r)| r.violated);
        let state = if valid == 0 {
            "no reads"
        } else if compliance < target || any {
            "VIOLATED"
        } else {
            "met"
        };
        violated |= state == "VIOLATED";
        if json {
            continue;
        }
        println!(
            "{ks}  {id}  {state}: {good}/{valid} good ({:.2}%, target {:.2}%), burn rate {burn:.2}",
            compliance * 100.0,
            target * 100.0
        );
        for (node, r) in reports {
            println!(
                "  node {node}: {}/{} good ({:.2}%), burn rate {:.2}{}",
                r.good,
                r.valid,
                r.compliance * 100.0,
                r.burn_rate,
                if r.violated { "  VIOLATED" } else { "" }
            );
        }
    }
    Ok(if violated { VIOLATED } else { 0 })
}
