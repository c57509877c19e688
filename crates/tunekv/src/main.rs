//! `tunekv`: one binary for the server, a local dev cluster, and client commands.
//! Exit codes (owned here, in one place): 0 success, 1 not found, 2 any error, 3 an SLO is
//! violated (`tunekv slo`).

mod auth_cmd;
mod backup_cmd;
mod bench;
mod cache_cmd;
mod cli;
mod dev;
mod node_cmd;
mod server;
mod session_file;
mod slo_cmd;
mod targets;
mod verify;

use clap::Parser;

/// mimalloc instead of the system allocator: glibc's malloc and free were ≈16% of a node's CPU
/// on the RESP GET path (docs/performance.md, "The allocator").
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    let args = cli::Args::parse();
    if let Ok(path) = std::env::var("TUNEKV_CA") {
        match std::fs::read(&path) {
            Ok(pem) => tunekv_client::set_default_ca(pem),
            Err(e) => {
                eprintln!("error: TUNEKV_CA={path}: {e}");
                std::process::exit(2);
            }
        }
    }
    if let Ok(token) = std::env::var("TUNEKV_TOKEN") {
        if !token.trim().is_empty() {
            tunekv_client::set_default_token(token.trim().to_string());
        }
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            std::process::exit(2);
        }
    };
    let code = runtime.block_on(async {
        match cli::run(args).await {
            Ok(code) => code,
            Err(e) => {
                eprintln!("error: {e:#}");
                2
            }
        }
    });
    std::process::exit(code);
}
