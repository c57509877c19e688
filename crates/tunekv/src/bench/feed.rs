//! `bench --feed` (issue 18): how fast changes reach their consumers. Writers SET fresh keys
//! whose names carry the send time (µs); consumers count the events they receive and the
//! delay from the write's send to the event. Rows: tunekv's change feed (`/v1/watch`, server-
//! sent events) and its RESP keyspace notifications, each to 1 and to 100 consumers, and, with
//! `--compare redis`, a Redis keyspace-notification subscriber on the same write load.

use super::peers::Peers;
use crate::targets::Target;
use crate::verify::resp_client::{RespConn, Value};
use anyhow::{bail, Context, Result};
use hdrhistogram::Histogram;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};

/// Consumer counts measured per system.
const CONSUMERS: [usize; 2] = [1, 100];
/// Concurrent writers, each a pipelined RESP connection.
const WRITERS: usize = 8;
/// Commands a writer has in flight.
const WRITER_DEPTH: usize = 16;
/// How long consumers may take to receive what was written, after the writers stop.
const DRAIN_MAX: Duration = Duration::from_secs(10);

/// What one row measured.
struct Row {
    label: String,
    consumers: usize,
    writes: u64,
    /// How long the writers wrote.
    write_seconds: f64,
    events: u64,
    /// Until the last event arrived (or the drain gave up).
    seconds: f64,
    delay_us: Histogram<u64>,
}

fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

/// The send time a key `f:<row>:<µs>:<n>` carries.
fn sent_us(key: &[u8]) -> Option<u64> {
    let text = std::str::from_utf8(key).ok()?;
    text.split(':').nth(2)?.parse().ok()
}

/// Where consumers listen.
#[derive(Clone, Copy, PartialEq)]
enum Via {
    /// tunekv's `/v1/watch` (server-sent events).
    Watch,
    /// RESP keyspace notifications (`PSUBSCRIBE __keyspace@0__:f:*`), on tunekv or Redis.
    Notify,
}

/// Runs every row and returns the table.
pub async fn run(targets: &[Target], peers: Option<&Peers>, duration: Duration) -> Result<String> {
    let resp: Vec<String> = targets.iter().filter_map(|t| t.resp.clone()).collect();
    if resp.is_empty() {
        bail!("the nodes have no RESP listener: the feed bench writes through RESP");
    }
    // db0 exists (a RESP connection creates it) before anyone watches it.
    let mut first = RespConn::connect_node(&resp[0]).await?;
    first.pipeline(&[vec![b"DBSIZE"]]).await?;
    for addr in &resp {
        let mut c = RespConn::connect_node(addr).await?;
        let set = vec![&b"CONFIG"[..], b"SET", b"notify-keyspace-events", b"K$"];
        expect_ok(&c.pipeline(&[set]).await?[0], "CONFIG SET on tunekv")?;
    }
    let mut rows = Vec::new();
    for consumers in CONSUMERS {
        let http: Vec<String> = targets.iter().map(|t| t.http.clone()).collect();
        let label = format!("tunekv watch (SSE), {consumers} consumer(s)");
        rows.push(row(&label, Via::Watch, &http, &resp, consumers, duration).await?);
        let label = format!("tunekv keyspace notifications, {consumers} subscriber(s)");
        rows.push(row(&label, Via::Notify, &resp, &resp, consumers, duration).await?);
        if let Some(redis) = peers.and_then(|p| p.redis.clone()) {
            let mut c = RespConn::connect(&redis).await?;
            let set = vec![&b"CONFIG"[..], b"SET", b"notify-keyspace-events", b"K$"];
            expect_ok(&c.pipeline(&[set]).await?[0], "CONFIG SET on Redis")?;
            let label = format!("redis keyspace notifications, {consumers} subscriber(s)");
            let at = [redis];
            rows.push(row(&label, Via::Notify, &at, &at, consumers, duration).await?);
        }
    }
    Ok(table(&rows))
}

fn expect_ok(v: &Value, what: &str) -> Result<()> {
    match v {
        Value::Simple(s) if s == "OK" => Ok(()),
        other => bail!("{what}: {other:?}"),
    }
}

/// One row: `consumers` listeners spread over `listen`, writers spread over `write`.
async fn row(
    label: &str,
    via: Via,
    listen: &[String],
    write: &[String],
    consumers: usize,
    duration: Duration,
) -> Result<Row> {
    let tag = format!("{:x}", now_us());
    let delay = Arc::new(Mutex::new(Histogram::<u64>::new_with_bounds(
        1, 60_000_000, 3,
    )?));
    let events = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let mut listeners = Vec::new();
    for i in 0..consumers {
        let ready = Arc::new(tokio::sync::Notify::new());
        let addr = listen[i % listen.len()].clone();
        let (delay, events, stop, tag, r) = (
            delay.clone(),
            events.clone(),
            stop.clone(),
            tag.clone(),
            ready.clone(),
        );
        listeners.push(tokio::spawn(async move {
            let got = match via {
                Via::Watch => watch_consumer(&addr, &tag, &delay, &events, &stop, &r).await,
                Via::Notify => notify_consumer(&addr, &tag, &delay, &events, &stop, &r).await,
            };
            if let Err(e) = &got {
                // Not waited for again: the row reports what arrived.
                r.notify_one();
                eprintln!("feed bench consumer {i}: {e:#}");
            }
        }));
        tokio::time::timeout(Duration::from_secs(10), ready.notified())
            .await
            .context("a consumer did not start within 10 s")?;
    }
    let started = Instant::now();
    let writes = Arc::new(AtomicU64::new(0));
    let mut writers = Vec::new();
    for w in 0..WRITERS {
        let (addr, tag, writes) = (write[w % write.len()].clone(), tag.clone(), writes.clone());
        writers.push(tokio::spawn(async move {
            let mut c = RespConn::connect(&addr).await?;
            let mut n = 0u64;
            while started.elapsed() < duration {
                let keys: Vec<String> = (0..WRITER_DEPTH)
                    .map(|_| {
                        n += 1;
                        format!("f:{tag}:{}:{w}-{n}", now_us())
                    })
                    .collect();
                let cmds: Vec<Vec<&[u8]>> = keys
                    .iter()
                    .map(|k| vec![&b"SET"[..], k.as_bytes(), b"v"])
                    .collect();
                for r in c.pipeline(&cmds).await? {
                    if matches!(r, Value::Simple(_)) {
                        writes.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
            anyhow::Ok(())
        }));
    }
    for w in writers {
        w.await??;
    }
    let write_seconds = started.elapsed().as_secs_f64();
    let written = writes.load(Ordering::Relaxed);
    // Let the consumers receive what was written (bounded).
    let want = written * consumers as u64;
    let drain = Instant::now();
    while events.load(Ordering::Relaxed) < want && drain.elapsed() < DRAIN_MAX {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let seconds = write_seconds + drain.elapsed().as_secs_f64();
    stop.store(true, Ordering::Relaxed);
    for l in listeners {
        l.abort();
    }
    let delay_us = delay.lock().unwrap_or_else(|p| p.into_inner()).clone();
    let row = Row {
        label: label.to_string(),
        consumers,
        writes: written,
        write_seconds,
        events: events.load(Ordering::Relaxed),
        seconds,
        delay_us,
    };
    println!(
        "{label}: {} writes, {} events in {:.1}s",
        row.writes, row.events, row.seconds
    );
    Ok(row)
}

fn record(delay: &Mutex<Histogram<u64>>, key: &[u8]) {
    if let Some(sent) = sent_us(key) {
        let d = now_us().saturating_sub(sent).max(1);
        delay
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .saturating_record(d);
    }
}

/// A `/v1/watch/db0?prefix=f:<tag>:` consumer.
async fn watch_consumer(
    http: &str,
    tag: &str,
    delay: &Mutex<Histogram<u64>>,
    events: &AtomicU64,
    stop: &AtomicBool,
    ready: &tokio::sync::Notify,
) -> Result<()> {
    let client = tunekv_client::Client::with_timeout(http, Duration::from_secs(10));
    let mut w = client
        .watch("db0", &format!("f:{tag}:"))
        .await
        .map_err(|e| anyhow::anyhow!("watch: {e}"))?;
    let mut first = true;
    while let Some(e) = w.next().await {
        match e.map_err(|e| anyhow::anyhow!("watch: {e}"))? {
            tunekv_client::WatchEvent::Change { key, .. } => {
                record(delay, key.as_bytes());
                events.fetch_add(1, Ordering::Relaxed);
            }
            tunekv_client::WatchEvent::Progress { .. } if first => {
                first = false;
                ready.notify_one();
            }
            tunekv_client::WatchEvent::Progress { .. }
            | tunekv_client::WatchEvent::NodeProgress { .. } => {}
        }
        if stop.load(Ordering::Relaxed) {
            break;
        }
    }
    Ok(())
}

/// A RESP2 `PSUBSCRIBE __keyspace@0__:f:<tag>:*` subscriber (tunekv or Redis).
async fn notify_consumer(
    addr: &str,
    tag: &str,
    delay: &Mutex<Histogram<u64>>,
    events: &AtomicU64,
    stop: &AtomicBool,
    ready: &tokio::sync::Notify,
) -> Result<()> {
    let s = tokio::net::TcpStream::connect(addr).await?;
    s.set_nodelay(true)?;
    let mut s = BufReader::new(s);
    let pattern = format!("__keyspace@0__:f:{tag}:*");
    s.get_mut()
        .write_all(
            format!(
                "*2\r\n$10\r\nPSUBSCRIBE\r\n${}\r\n{pattern}\r\n",
                pattern.len()
            )
            .as_bytes(),
        )
        .await?;
    let prefix = b"__keyspace@0__:".len();
    let mut n = 0u64;
    loop {
        // Each message: *3 (psubscribe confirmation) or *4 pmessage pattern channel event.
        let parts = read_array(&mut s).await?;
        n += 1;
        if n == 1 {
            ready.notify_one();
            continue;
        }
        if let Some(channel) = parts.get(2) {
            record(delay, channel.get(prefix..).unwrap_or_default());
            events.fetch_add(1, Ordering::Relaxed);
        }
        if stop.load(Ordering::Relaxed) {
            return Ok(());
        }
    }
}

/// One flat RESP2 array of bulk strings and integers (what pub/sub messages are).
async fn read_array(s: &mut BufReader<tokio::net::TcpStream>) -> Result<Vec<Vec<u8>>> {
    let mut line = String::new();
    s.read_line(&mut line).await?;
    let n: usize = line
        .trim_end()
        .strip_prefix('*')
        .and_then(|n| n.parse().ok())
        .with_context(|| format!("not a message: {line:?}"))?;
    let mut parts = Vec::with_capacity(n);
    for _ in 0..n {
        line.clear();
        s.read_line(&mut line).await?;
        let l = line.trim_end();
        if let Some(len) = l.strip_prefix('$') {
            let len: usize = len.parse().context("bulk length")?;
            let mut b = vec![0; len + 2];
            s.read_exact(&mut b).await?;
            b.truncate(len);
            parts.push(b);
        } else {
            parts.push(l.as_bytes().to_vec());
        }
    }
    Ok(parts)
}

fn table(rows: &[Row]) -> String {
    let mut out = String::from(
        "change feed: writes (SET of fresh keys, 8 pipelined writers) and the events consumers \
         received; delay from the write's send to the event\n",
    );
    out += &format!(
        "{:<48} | {:>9} | {:>10} | {:>12} | {:>9} | {:>9} | {:>9}\n",
        "row", "writes/s", "events", "events/s", "p50 ms", "p99 ms", "received"
    );
    out += &format!("{}\n", "-".repeat(123));
    for r in rows {
        let expected = (r.writes * r.consumers as u64).max(1);
        out += &format!(
            "{:<48} | {:>9.0} | {:>10} | {:>12.0} | {:>9.2} | {:>9.2} | {:>8.1}%\n",
            r.label,
            r.writes as f64 / r.write_seconds.max(1e-9),
            r.events,
            r.events as f64 / r.seconds.max(1e-9),
            r.delay_us.value_at_quantile(0.5) as f64 / 1000.0,
            r.delay_us.value_at_quantile(0.99) as f64 / 1000.0,
            100.0 * r.events as f64 / expected as f64
        );
    }
    out
}
