//! The RESP listener: one task per connection, requests parsed and answered in order
//! (pipelining), a cap on connections, and a protocol error closing only its own connection.
//!
//! Memory for requests is bounded twice: one request by [`Limits::request_bytes_max`] (the
//! parser refuses it at the header that declares too much), and all connections together by
//! [`RespOptions::pending_bytes_max`], a budget of bytes that unfinished requests hold. A
//! connection whose unfinished request needs more than the budget has left stops reading (TCP
//! pushes back on its client), as Kafka's broker mutes sockets when its request memory pool is
//! empty; if no room comes within [`PENDING_WAIT_MS_MAX`] it is told so and closed, which also
//! frees what it held, so connections that each hold part of the budget cannot wait on each
//! other forever.

use crate::cmd::execute_all;
use crate::conn::{Conn, Shared};
use crate::parse::{Limits, RequestParser};
use crate::reply::Reply;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio::time::Instant;
use tunekv_node::tls::{Tls, HANDSHAKE_TIMEOUT};
use tunekv_node::transport::BoxStream;
use tunekv_node::Node;

/// Default [`RespOptions::pending_bytes_max`]: 32 requests of the default largest size
/// ([`crate::parse::REQUEST_BYTES_MAX_DEFAULT`]) arriving at once.
pub const PENDING_BYTES_MAX_DEFAULT: usize = 1024 * 1024 * 1024;
/// Default [`RespOptions::request_timeout`] in ms.
pub const REQUEST_TIMEOUT_MS_DEFAULT: u64 = 30_000;
/// How long a connection waits for room in the pending-bytes budget before it is refused.
pub const PENDING_WAIT_MS_MAX: u64 = 1000;
/// Bytes read from a socket at a time: each connection's fixed input buffer. The parser
/// takes every byte it is given, so the buffer never grows.
const READ_CHUNK_BYTES: usize = 16 * 1024;
/// Capacity of the reply buffer kept between reads; a larger one (after a large reply) is
/// freed.
const OUTPUT_KEPT_BYTES_MAX: usize = 64 * 1024;
/// After refusing a connection, the server half-closes it and reads and drops what the client
/// still sends, at most this long and this much, so the client reads the error instead of a
/// connection reset.
const REFUSAL_DRAIN_MS_MAX: u64 = 1000;
const REFUSAL_DRAIN_BYTES_MAX: usize = 64 * 1024 * 1024;

#[derive(Clone, Copy, Debug)]
pub struct RespOptions {
    /// Most simultaneous connections; one more is told so and closed.
    pub connections_max: usize,
    /// Caps on one request (the node config's `resp_request_bytes_max` is
    /// `limits.request_bytes_max`).
    pub limits: Limits,
    /// Most heap bytes that unfinished requests hold, summed over all connections (the node
    /// config's `resp_pending_bytes_max`).
    pub pending_bytes_max: usize,
    /// A request must arrive whole within this long of its first byte, and a reply be taken
    /// by the client within this long (`resp_request_timeout_ms`).
    pub request_timeout: Duration,
    /// A connection with no request for this long is closed, unless subscribed
    /// (`resp_idle_timeout_ms`); none: never.
    pub idle_timeout: Option<Duration>,
}

impl Default for RespOptions {
    fn default() -> Self {
        RespOptions {
            connections_max: 10_000,
            limits: Limits::default(),
            pending_bytes_max: PENDING_BYTES_MAX_DEFAULT,
            request_timeout: Duration::from_millis(REQUEST_TIMEOUT_MS_DEFAULT),
            idle_timeout: None,
        }
    }
}

/// Serves RESP on `listener` until the task is dropped; with `tls`, TLS only (`redis-cli
/// --tls`): a connection must finish its handshake within `tls::HANDSHAKE_TIMEOUT`.
pub async fn serve(
    listener: TcpListener,
    node: Arc<Node>,
    options: RespOptions,
    tls: Option<Arc<Tls>>,
) {
    let shared = Arc::new(Shared::new(node));
    let slots = Arc::new(Semaphore::new(options.connections_max));
    // Bytes that unfinished requests may hold, one permit a byte, shared by all connections.
    let pending = Arc::new(Semaphore::new(
        options.pending_bytes_max.min(Semaphore::MAX_PERMITS),
    ));
    loop {
        let (mut stream, peer) = match listener.accept().await {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "RESP accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            shared.node.metrics().resp.cut("over_cap");
            tokio::spawn(async move {
                let _ = stream
                    .write_all(b"-ERR max number of clients reached\r\n")
                    .await;
            });
            continue;
        };
        let shared = shared.clone();
        let held = Held {
            budget: pending.clone(),
            bytes: 0,
        };
        let acceptor = tls.as_ref().map(|t| t.client_acceptor());
        tokio::spawn(async move {
            let stream: BoxStream = match acceptor {
                None => Box::new(stream),
                Some(acceptor) => {
                    match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                        Ok(Ok(s)) => Box::new(s),
                        Ok(Err(e)) => {
                            tracing::debug!(%peer, error = %e, "RESP TLS handshake failed");
                            shared.node.metrics().resp.cut("tls_handshake");
                            return;
                        }
                        Err(_) => {
                            tracing::debug!(%peer, "RESP TLS handshake timed out");
                            shared.node.metrics().resp.cut("tls_handshake");
                            return;
                        }
                    }
                }
            };
            let conn = shared.connect(peer.to_string());
            let id = conn.id;
            if let Err(e) = connection(stream, &shared, conn, &options, held).await {
                if e.kind() == std::io::ErrorKind::TimedOut {
                    shared.node.metrics().resp.cut("slow_reader");
                }
                tracing::debug!(%peer, error = %e, "RESP connection ended");
            }
            // The slot first: once the count says a connection is gone, so is its slot.
            drop(permit);
            shared.disconnect(id);
        });
    }
}

/// The part of the pending-bytes budget one connection holds; given back when dropped.
struct Held {
    budget: Arc<Semaphore>,
    bytes: usize,
}

impl Held {
    /// Gives back all but `bytes`.
    fn shrink_to(&mut self, bytes: usize) {
        if bytes < self.bytes {
            self.budget.add_permits(self.bytes - bytes);
            self.bytes = bytes;
        }
    }

    /// Holds at least `bytes`, waiting up to `wait` for room; false if none came.
    async fn grow_to(&mut self, bytes: usize, wait: Duration) -> bool {
        if bytes <= self.bytes {
            return true;
        }
        let Ok(more) = u32::try_from(bytes - self.bytes) else {
            return false;
        };
        let permit = match self.budget.try_acquire_many(more) {
            Ok(p) => p,
            Err(_) => match tokio::time::timeout(wait, self.budget.acquire_many(more)).await {
                Ok(Ok(p)) => p,
                Ok(Err(_)) | Err(_) => return false,
            },
        };
        permit.forget();
        self.bytes = bytes;
        true
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        self.budget.add_permits(self.bytes);
    }
}

async fn connection(
    mut stream: BoxStream,
    shared: &Shared,
    mut conn: Conn,
    options: &RespOptions,
    mut held: Held,
) -> std::io::Result<()> {
    let wait = Duration::from_millis(PENDING_WAIT_MS_MAX);
    let mut parser = RequestParser::new(options.limits);
    let mut input = vec![0u8; READ_CHUNK_BYTES];
    let mut output = Vec::with_capacity(16 * 1024);
    // The requests one read completed, kept between reads.
    let mut ready: Vec<Vec<Vec<u8>>> = Vec::new();
    // When the unfinished request began to count; when the connection last read or answered.
    let mut request_started: Option<Instant> = None;
    let mut last_read = Instant::now();
    loop {
        // A request still arriving must end within the request timeout; an idle connection
        // (no request arriving, not subscribed) within the idle timeout, if there is one.
        let deadline = match (request_started, options.idle_timeout) {
            (Some(started), _) => Some((started + options.request_timeout, true)),
            (None, Some(idle)) if conn.inbox.is_none() => Some((last_read + idle, false)),
            (None, _) => None,
        };
        let n = tokio::select! {
            n = stream.read(&mut input) => n?,
            partial = until(deadline) => {
                let cut = if partial { "request_timeout" } else { "idle_timeout" };
                shared.node.metrics().resp.cut(cut);
                if !partial {
                    tracing::debug!(conn = conn.id, "closing an idle RESP connection (resp_idle_timeout_ms)");
                    return Ok(());
                }
                drop(parser);
                drop(held);
                let refusal = Reply::err(format!(
                    "request timed out: it did not arrive whole within {} ms of its first \
                     byte (resp_request_timeout_ms)",
                    options.request_timeout.as_millis()
                ));
                return refuse(stream, output, conn.resp3, refusal, input).await;
            }
            push = next_push(&mut conn) => {
                // Messages go out between replies, never inside one.
                let Some(push) = push else {
                    conn.inbox = None;
                    conn.watch_slot = None;
                    continue;
                };
                crate::cmd::pubsub::encode(&shared.hub, &conn, push, &mut output);
                while let Some(push) = conn.inbox.as_mut().and_then(|i| i.try_recv()) {
                    crate::cmd::pubsub::encode(&shared.hub, &conn, push, &mut output);
                    if output.len() >= OUTPUT_KEPT_BYTES_MAX {
                        break;
                    }
                }
                // A client that does not read must not hold this write forever: overflowing
                // its messages ends it.
                let overflow = conn.inbox.as_ref().map(|i| i.overflow());
                tokio::select! {
                    r = write_within(&mut stream, &output, options.request_timeout) => r?,
                    _ = async move {
                        match overflow {
                            Some(o) => o.await,
                            None => std::future::pending().await,
                        }
                    } => {
                        shared.node.metrics().resp.cut("slow_reader");
                        return Ok(());
                    }
                }
                output.clear();
                if conn.inbox.as_ref().is_some_and(|i| i.overflowed()) {
                    shared.node.metrics().resp.cut("slow_reader");
                    tracing::debug!(
                        conn = conn.id,
                        "closing a connection that let more than {} bytes of pushed messages \
                         wait",
                        crate::push::PUSH_BYTES_MAX
                    );
                    return Ok(());
                }
                continue;
            }
        };
        if n == 0 {
            return Ok(());
        }
        // Answer every request completed by these bytes, in order, then write them together.
        // They are all parsed first, so a pipelined run of writes can commit together.
        let mut rest = &input[..n];
        let mut malformed = None;
        loop {
            match parser.parse(&mut rest) {
                Ok(None) => break,
                Ok(Some(args)) => {
                    request_started = None;
                    // The request has left the parser: give back what it held.
                    held.shrink_to(parser.pending_bytes());
                    if !args.is_empty() {
                        ready.push(args);
                    }
                }
                Err(e) => {
                    malformed = Some(e);
                    break;
                }
            }
        }
        execute_all(shared, &mut conn, &mut ready, &mut output).await;
        if conn.quit {
            write_within(&mut stream, &output, options.request_timeout).await?;
            return Ok(());
        }
        if let Some(e) = malformed {
            shared.node.metrics().resp.cut("protocol_error");
            drop(parser);
            drop(held);
            let refusal = Reply::err(format!("Protocol error: {}", e.0));
            return refuse(stream, output, conn.resp3, refusal, input).await;
        }
        if !output.is_empty() {
            write_within(&mut stream, &output, options.request_timeout).await?;
            output.clear();
            if output.capacity() > OUTPUT_KEPT_BYTES_MAX {
                output = Vec::with_capacity(16 * 1024);
            }
        }
        // The unfinished request's time starts once the commands before it are answered (a
        // long command ahead of it in a pipeline is not the client's delay); so does idleness.
        last_read = Instant::now();
        if !parser.in_request() {
            request_started = None;
        } else if request_started.is_none() {
            request_started = Some(Instant::now());
        }
        // The unfinished request, if any, is all in the parser now: charge it to the budget,
        // reading nothing more until it fits.
        held.shrink_to(parser.pending_bytes());
        if !held.grow_to(parser.pending_bytes(), wait).await {
            shared.node.metrics().resp.cut("busy");
            let pending_bytes = parser.pending_bytes();
            drop(parser);
            drop(held);
            let refusal = Reply::err(format!(
                "server busy: unfinished requests of all connections may hold {} bytes \
                 (resp_pending_bytes_max) and there was no room for this one's {} bytes \
                 within {} ms; retry later",
                options.pending_bytes_max, pending_bytes, PENDING_WAIT_MS_MAX
            ));
            return refuse(stream, output, conn.resp3, refusal, input).await;
        }
    }
}

/// Waits until `deadline` and says what it was for; never ready without one.
async fn until(deadline: Option<(Instant, bool)>) -> bool {
    match deadline {
        Some((at, what)) => {
            tokio::time::sleep_until(at).await;
            what
        }
        None => std::future::pending().await,
    }
}

/// Writes all of `bytes`, or fails with `TimedOut` if the client does not take them within
/// `timeout` (a client that stops reading must not hold its connection forever).
async fn write_within(
    stream: &mut BoxStream,
    bytes: &[u8],
    timeout: Duration,
) -> std::io::Result<()> {
    match tokio::time::timeout(timeout, stream.write_all(bytes)).await {
        Ok(r) => r,
        Err(_) => Err(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            "the client took no reply bytes within resp_request_timeout_ms",
        )),
    }
}

/// The connection's next pushed message; never ready while it has no inbox.
async fn next_push(conn: &mut Conn) -> Option<crate::push::Push> {
    match conn.inbox.as_mut() {
        Some(inbox) => inbox.recv().await,
        None => std::future::pending().await,
    }
}

/// Sends `refusal` after any replies already in `output`, then closes the connection: write
/// side first, then, after draining what the client still sends for a bounded time, the rest.
async fn refuse(
    mut stream: BoxStream,
    mut output: Vec<u8>,
    resp3: bool,
    refusal: Reply,
    mut scratch: Vec<u8>,
) -> std::io::Result<()> {
    refusal.encode(resp3, &mut output);
    let write = Duration::from_millis(REFUSAL_DRAIN_MS_MAX);
    write_within(&mut stream, &output, write).await?;
    stream.shutdown().await?;
    let deadline = tokio::time::Instant::now() + Duration::from_millis(REFUSAL_DRAIN_MS_MAX);
    let mut drained = 0;
    while drained < REFUSAL_DRAIN_BYTES_MAX {
        match tokio::time::timeout_at(deadline, stream.read(&mut scratch)).await {
            Ok(Ok(n)) if n > 0 => drained += n,
            _ => break,
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::parse::REQUEST_BYTES_MAX_DEFAULT;

    #[test]
    fn node_config_defaults_are_the_listeners() {
        // The node config cannot name these constants (tunekv-node is below this crate), so
        // its defaults repeat them; this keeps the two the same.
        let config = tunekv_node::NodeConfig::local_cluster(
            std::path::Path::new("/nonexistent"),
            &[(0, 0, 0)],
            false,
            "0123456789abcdef0123456789abcdef",
        )
        .remove(0);
        assert_eq!(config.resp_request_bytes_max, REQUEST_BYTES_MAX_DEFAULT);
        assert_eq!(config.resp_pending_bytes_max, PENDING_BYTES_MAX_DEFAULT);
        assert_eq!(config.resp_request_timeout_ms, REQUEST_TIMEOUT_MS_DEFAULT);
        assert_eq!(
            config.resp_connections_max,
            RespOptions::default().connections_max
        );
        let options = RespOptions::default();
        assert_eq!(options.limits.request_bytes_max, REQUEST_BYTES_MAX_DEFAULT);
        assert_eq!(options.pending_bytes_max, PENDING_BYTES_MAX_DEFAULT);
    }

    #[tokio::test]
    async fn the_budget_refuses_after_waiting_and_gives_back_on_drop() {
        // Unfinished requests of all connections together were not bounded.
        let budget = Arc::new(Semaphore::new(100));
        let mut a = Held {
            budget: budget.clone(),
            bytes: 0,
        };
        let mut b = Held {
            budget: budget.clone(),
            bytes: 0,
        };
        let wait = Duration::from_millis(20);
        assert!(a.grow_to(70, wait).await);
        assert!(!b.grow_to(40, wait).await, "30 left, 40 asked");
        assert!(b.grow_to(30, wait).await);
        a.shrink_to(10);
        assert!(b.grow_to(90, wait).await);
        assert_eq!(budget.available_permits(), 0);
        drop(a);
        drop(b);
        assert_eq!(budget.available_permits(), 100);
    }
}
