//! Command-line parsing and the client commands.

use anyhow::Result;
use clap::{Parser, Subcommand};
use std::path::PathBuf;
use tunekv_client::{Client, ClientError, Opts};

#[derive(Parser)]
#[command(
    name = "tunekv",
    version,
    about = "A replicated key-value store where every read picks its consistency level"
)]
pub struct Args {
    #[command(subcommand)]
    pub command: Cmd,
}

#[derive(Subcommand)]
pub enum Cmd {
    /// Run one node.
    Server {
        #[arg(long)]
        config: PathBuf,
        /// Allow the fault hook (POST /v1/admin/faults). Never in production.
        #[arg(long)]
        enable_faults: bool,
    },
    /// Start a local cluster of separate node processes, print where to look, run a demo.
    Dev {
        #[arg(long, default_value_t = 3)]
        nodes: u32,
        #[arg(long, default_value = ".tunekv-dev")]
        dir: PathBuf,
        #[arg(long)]
        enable_faults: bool,
        /// Wipe DIR first (otherwise an existing cluster in DIR is restarted with its data).
        #[arg(long)]
        fresh: bool,
        #[arg(long)]
        no_demo: bool,
        /// Stop the cluster after the demo instead of waiting for Ctrl-C.
        #[arg(long)]
        exit_after_demo: bool,
    },
    /// Write a value.
    Put {
        keyspace: String,
        key: String,
        value: String,
        #[command(flatten)]
        common: Common,
    },
    /// Read a value (printed to stdout; the receipt to stderr).
    Get {
        keyspace: String,
        key: String,
        #[command(flatten)]
        common: Common,
    },
    /// Delete a key.
    Del {
        keyspace: String,
        key: String,
        #[command(flatten)]
        common: Common,
    },
    /// Create a keyspace.
    CreateKeyspace {
        keyspace: String,
        #[arg(long, default_value_t = 4)]
        shards: u32,
        #[arg(long, default_value_t = 3)]
        replicas: u32,
        #[arg(long, default_value = "strong")]
        default_level: String,
        #[arg(long, env = "TUNEKV_NODE", default_value = "127.0.0.1:7101")]
        node: String,
    },
    /// Show nodes, groups, leaders and every replica's applied/committed index.
    Cluster {
        #[arg(long, env = "TUNEKV_NODE", default_value = "127.0.0.1:7101")]
        node: String,
    },
}

#[derive(clap::Args)]
pub struct Common {
    /// Consistency level, e.g. strong, eventual (DESIGN §3 syntax).
    #[arg(long)]
    level: Option<String>,
    /// Wait budget in milliseconds.
    #[arg(long)]
    wait_ms_max: Option<u64>,
    /// Node to talk to.
    #[arg(long, env = "TUNEKV_NODE", default_value = "127.0.0.1:7101")]
    node: String,
}

impl Common {
    fn opts(&self) -> Opts {
        Opts {
            level: self.level.clone(),
            wait_ms_max: self.wait_ms_max,
        }
    }
}

fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("TUNEKV_LOG").unwrap_or_else(|_| {
        tracing_subscriber::EnvFilter::new("info,openraft=warn,fjall=warn,lsm_tree=warn")
    });
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}

fn report(e: ClientError) -> i32 {
    eprintln!("error: {e}");
    2
}

pub async fn run(args: Args) -> Result<i32> {
    match args.command {
        Cmd::Server {
            config,
            enable_faults,
        } => {
            init_tracing();
            crate::server::run(&config, enable_faults).await?;
            Ok(0)
        }
        Cmd::Dev {
            nodes,
            dir,
            enable_faults,
            fresh,
            no_demo,
            exit_after_demo,
        } => {
            crate::dev::run(crate::dev::DevOptions {
                nodes,
                dir,
                enable_faults,
                fresh,
                demo: !no_demo,
                exit_after_demo,
            })
            .await
        }
        Cmd::Put {
            keyspace,
            key,
            value,
            common,
        } => {
            let c = Client::new(&common.node);
            match c
                .put(&keyspace, key.as_bytes(), value.as_bytes(), &common.opts())
                .await
            {
                Ok(w) => {
                    println!("OK {}", w.position);
                    Ok(0)
                }
                Err(e) => Ok(report(e)),
            }
        }
        Cmd::Get {
            keyspace,
            key,
            common,
        } => {
            let c = Client::new(&common.node);
            match c.get(&keyspace, key.as_bytes(), &common.opts()).await {
                Ok(r) => {
                    eprintln!(
                        "level={} served_by={} position={} staleness={}",
                        r.receipt.level,
                        r.receipt.served_by,
                        r.receipt.position,
                        r.receipt.staleness
                    );
                    match r.value {
                        Some(v) => {
                            println!("{}", String::from_utf8_lossy(&v));
                            Ok(0)
                        }
                        None => {
                            eprintln!("(not found)");
                            Ok(1)
                        }
                    }
                }
                Err(e) => Ok(report(e)),
            }
        }
        Cmd::Del {
            keyspace,
            key,
            common,
        } => {
            let c = Client::new(&common.node);
            match c.delete(&keyspace, key.as_bytes(), &common.opts()).await {
                Ok(w) => {
                    println!("OK {} existed={}", w.position, w.existed);
                    Ok(0)
                }
                Err(e) => Ok(report(e)),
            }
        }
        Cmd::CreateKeyspace {
            keyspace,
            shards,
            replicas,
            default_level,
            node,
        } => {
            let spec = serde_json::json!({"mode": "ordered", "shards": shards, "replicas": replicas, "default_level": default_level});
            match Client::new(&node).create_keyspace(&keyspace, &spec).await {
                Ok(info) => {
                    println!("{info}");
                    Ok(0)
                }
                Err(e) => Ok(report(e)),
            }
        }
        Cmd::Cluster { node } => match Client::new(&node).cluster().await {
            Ok(status) => {
                println!("{}", serde_json::to_string_pretty(&status)?);
                Ok(0)
            }
            Err(e) => Ok(report(e)),
        },
    }
}
