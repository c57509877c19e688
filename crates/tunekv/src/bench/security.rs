//! `tunekv bench --security`: what auth and TLS cost. Starts four 3-node clusters in turn —
//! plain, auth, TLS, auth + TLS — and measures the same rows on each: HTTP GET and PUT, RESP
//! GET and SET (`--connections` clients, one request in flight each, `--duration` per row),
//! plus the login itself (argon2id, once per token) where auth is on. Connections are opened
//! before a row starts, so the rows show the per-request cost (a token check, encryption), not
//! handshakes. With `--out`: security.json.

use super::BenchOptions;
use crate::verify::resp_client::{RespConn, Value};
use anyhow::{bail, Context, Result};
use hdrhistogram::Histogram;
use serde_json::json;
use std::time::{Duration, Instant};
use tunekv::local_cluster::LocalCluster;
use tunekv_client::{Client, Opts};

const KEYSPACE: &str = "bench_security";
const KEYS: usize = 1000;

struct Row {
    setup: &'static str,
    op: &'static str,
    ops: u64,
    seconds: f64,
    latency_us: Histogram<u64>,
}

impl Row {
    fn throughput(&self) -> f64 {
        self.ops as f64 / self.seconds.max(1e-9)
    }
}

/// The rows on each of the four clusters; `tweak` adjusts every node's config (`--cache-mib`).
pub async fn run(o: &BenchOptions, tweak: impl Fn(&mut tunekv_node::NodeConfig)) -> Result<i32> {
    let exe = std::env::current_exe().context("cannot find the tunekv executable")?;
    let value = vec![b'v'; o.value_bytes];
    let mut rows = Vec::new();
    for (setup, auth, tls) in [
        ("plain", false, false),
        ("auth", true, false),
        ("tls", false, true),
        ("auth+tls", true, true),
    ] {
        println!("== {setup}: starting 3 nodes ...");
        let dir = tempdir(setup)?;
        let mut cluster = LocalCluster::prepare_with(&exe, &dir, 3, false, true, false, &tweak)?;
        cluster.share_cores()?;
        if auth {
            cluster.enable_auth()?;
        }
        if tls {
            cluster.enable_tls()?;
        }
        cluster.start_all()?;
        let measured = measure(o, &mut cluster, setup, &value).await;
        cluster.stop_all();
        drop(cluster);
        let _ = std::fs::remove_dir_all(&dir);
        rows.extend(measured?);
    }
    print(&rows, o.out.as_deref())?;
    Ok(0)
}

fn tempdir(setup: &str) -> Result<std::path::PathBuf> {
    let dir = std::env::temp_dir().join(format!(
        "tunekv-bench-security-{}-{}",
        std::process::id(),
        setup.replace('+', "-")
    ));
    let _ = std::fs::remove_dir_all(&dir);
    Ok(dir)
}

fn histogram() -> Result<Histogram<u64>> {
    Ok(Histogram::new_with_bounds(1, super::LATENCY_MAX_US, 3)?)
}

async fn measure(
    o: &BenchOptions,
    cluster: &mut LocalCluster,
    setup: &'static str,
    value: &[u8],
) -> Result<Vec<Row>> {
    cluster.wait_ready(Duration::from_secs(60)).await?;
    let admin = cluster.client(0);
    admin
        .create_keyspace(
            KEYSPACE,
            &json!({"mode": "ordered", "shards": 4, "replicas": 3, "default_level": "eventual"}),
        )
        .await
        .context("create the keyspace")?;
    for i in 0..KEYS {
        admin
            .put(
                KEYSPACE,
                format!("k{i}").as_bytes(),
                value,
                &Opts::default(),
            )
            .await
            .context("preload")?;
    }
    let n = cluster.len();
    let clients: Vec<Client> = (0..o.connections).map(|i| cluster.client(i % n)).collect();
    let mut rows = Vec::new();
    let owned = std::sync::Arc::new(value.to_vec());
    for op in ["http get", "http put"] {
        let put = op == "http put";
        let owned = owned.clone();
        let (ops, seconds, latency_us) = load(o, clients.clone(), move |c: Client, i: u64| {
            let key = format!("k{}", i % KEYS as u64);
            let value = owned.clone();
            async move {
                if put {
                    c.put(KEYSPACE, key.as_bytes(), &value, &Opts::default())
                        .await?;
                } else {
                    c.get(KEYSPACE, key.as_bytes(), &Opts::level("eventual"))
                        .await?;
                }
                Ok(c)
            }
        })
        .await?;
        rows.push(Row {
            setup,
            op,
            ops,
            seconds,
            latency_us,
        });
    }
    // RESP: one connection per client, logged in first when auth is on.
    let creds = cluster.credentials()?;
    let ca = cluster.ca_pem();
    for op in ["resp get", "resp set"] {
        let mut conns = Vec::new();
        for i in 0..o.connections {
            let addr = cluster.configs[i % n]
                .resp
                .clone()
                .context("no RESP address")?;
            let mut conn = match &ca {
                Some(pem) => RespConn::connect_tls(&addr, pem).await?,
                None => RespConn::connect(&addr).await?,
            };
            let auth = creds
                .as_ref()
                .map(|c| vec![b"AUTH".as_slice(), c.user.as_bytes(), c.password.as_bytes()]);
            let mut setup_cmds = vec![vec![b"SELECT".as_slice(), KEYSPACE.as_bytes()]];
            if let Some(a) = auth {
                setup_cmds.insert(0, a);
            }
            for r in conn.pipeline(&setup_cmds).await? {
                if let Value::Error(e) = r {
                    bail!("RESP setup: {e}");
                }
            }
            conns.push(conn);
        }
        let set = op == "resp set";
        let owned = owned.clone();
        let (ops, seconds, latency_us) = load(o, conns, move |mut conn: RespConn, i: u64| {
            let key = format!("k{}", i % KEYS as u64);
            let value = owned.clone();
            async move {
                let cmd = if set {
                    vec![b"SET".as_slice(), key.as_bytes(), &value]
                } else {
                    vec![b"GET".as_slice(), key.as_bytes()]
                };
                if let Some(Value::Error(e)) = conn.pipeline(&[cmd]).await?.first() {
                    bail!("RESP: {e}");
                }
                Ok(conn)
            }
        })
        .await?;
        rows.push(Row {
            setup,
            op,
            ops,
            seconds,
            latency_us,
        });
    }
    if let Some(c) = &creds {
        let mut h = histogram()?;
        let plain = cluster.client_without_token(0);
        let started = Instant::now();
        let mut ops = 0;
        while started.elapsed() < o.duration.min(Duration::from_secs(3)) || ops == 0 {
            let t = Instant::now();
            plain.login(&c.user, &c.password).await.context("login")?;
            h.record(t.elapsed().as_micros() as u64)?;
            ops += 1;
        }
        rows.push(Row {
            setup,
            op: "login (argon2id)",
            ops,
            seconds: started.elapsed().as_secs_f64(),
            latency_us: h,
        });
    }
    Ok(rows)
}

/// Runs `call` from every client (an HTTP client or a RESP connection, handed back by each
/// call) back to back for `o.duration` (after `o.warmup`).
async fn load<S, F, Fut>(
    o: &BenchOptions,
    clients: Vec<S>,
    call: F,
) -> Result<(u64, f64, Histogram<u64>)>
where
    S: Send + 'static,
    F: Fn(S, u64) -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = Result<S>> + Send,
{
    let warm_until = Instant::now() + o.warmup;
    let until = warm_until + o.duration;
    let mut tasks = Vec::new();
    for (n, mut client) in clients.into_iter().enumerate() {
        let call = call.clone();
        tasks.push(tokio::spawn(async move {
            let mut h = histogram()?;
            let mut i = n as u64 * 7919;
            let mut ops = 0u64;
            while Instant::now() < until {
                let t = Instant::now();
                client = call(client, i).await?;
                if t >= warm_until {
                    h.record(t.elapsed().as_micros().max(1) as u64)?;
                    ops += 1;
                }
                i += 1;
            }
            anyhow::Ok((ops, h))
        }));
    }
    let mut total = histogram()?;
    let mut ops = 0;
    for t in tasks {
        let (n, h) = t.await??;
        ops += n;
        total.add(&h)?;
    }
    Ok((ops, o.duration.as_secs_f64(), total))
}

fn print(rows: &[Row], out: Option<&std::path::Path>) -> Result<()> {
    println!(
        "\n{:<10} {:<18} {:>10} {:>9} {:>9} {:>10}",
        "setup", "op", "ops/s", "p50 ms", "p99 ms", "vs plain"
    );
    let mut json_rows = Vec::new();
    for r in rows {
        let plain = rows
            .iter()
            .find(|p| p.setup == "plain" && p.op == r.op)
            .map(|p| p.throughput());
        let ratio = plain.map_or("—".to_string(), |p| {
            format!("{:.2}x", r.throughput() / p.max(1e-9))
        });
        let ms = |q: f64| r.latency_us.value_at_quantile(q) as f64 / 1000.0;
        println!(
            "{:<10} {:<18} {:>10.0} {:>9.2} {:>9.2} {:>10}",
            r.setup,
            r.op,
            r.throughput(),
            ms(0.5),
            ms(0.99),
            ratio
        );
        json_rows.push(json!({
            "setup": r.setup, "op": r.op, "ops": r.ops, "seconds": r.seconds,
            "ops_per_s": r.throughput(), "p50_ms": ms(0.5), "p99_ms": ms(0.99),
        }));
    }
    if let Some(dir) = out {
        std::fs::create_dir_all(dir)?;
        let path = dir.join("security.json");
        std::fs::write(
            &path,
            serde_json::to_string_pretty(&json!({ "rows": json_rows }))?,
        )?;
        println!("wrote {}", path.display());
    }
    Ok(())
}
