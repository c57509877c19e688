//! The HTTP listener: HTTP/1.1 over hyper, with a cap on connections and timeouts that close
//! connections a client holds without using them.
//!
//! - **Connection cap** (`http_connections_max`): one connection over the cap is answered
//!   `503 unavailable` at once (best effort, no wait) and closed.
//! - **Header read timeout** (`http_header_read_timeout_ms`): from the first byte of a request
//!   head to its end. A client dripping a head byte by byte is cut off.
//! - **Idle timeout** (`http_idle_timeout_ms`): a connection with no request being handled and
//!   no byte moving either way for this long is closed: an idle keep-alive connection, a client
//!   that connects and sends nothing, a response nobody reads. The same stall on a request body
//!   ends the request (`http.rs` reads bodies with it).
//!
//! A request being handled is bounded by its wait budget, not by these timeouts. hyper's own
//! header timeout starts when a connection becomes idle, so it would close keep-alive
//! connections after the header timeout; both are kept here instead, on one watchdog per
//! connection fed by the connection's reads and writes.

use axum::body::Body;
use axum::Router;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::Service;
use hyper_util::rt::TokioIo;
use hyper_util::service::TowerToHyperService;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Semaphore};
use tokio::time::Instant;
use tunekv_core::{Code, TunekvError};
use tunekv_node::metrics::Connections;
use tunekv_node::tls::Tls;
use tunekv_node::transport::BoxStream;
use tunekv_node::NodeConfig;

/// How long a shutdown waits for connections to finish the requests they are handling.
pub const SHUTDOWN_WAIT_MS: u64 = 10_000;

/// The listener's limits (docs/configuration.md).
#[derive(Clone, Copy, Debug)]
pub struct HttpLimits {
    pub connections_max: usize,
    pub header_read_timeout: Duration,
    pub idle_timeout: Duration,
    /// Requests one connection may make per second (`connection_requests_per_s`); 0: any.
    pub requests_per_s: u32,
}

impl HttpLimits {
    pub fn of(config: &NodeConfig) -> HttpLimits {
        HttpLimits {
            connections_max: config.http_connections_max,
            header_read_timeout: Duration::from_millis(config.http_header_read_timeout_ms),
            idle_timeout: Duration::from_millis(config.http_idle_timeout_ms),
            requests_per_s: config.connection_requests_per_s,
        }
    }
}

/// Serves `app` on `listener` (counting its connections in `connections`) until `shutdown` completes, then stops accepting, lets open
/// connections finish their requests (at most [`SHUTDOWN_WAIT_MS`]) and returns.
/// With `tls`, every connection must complete a TLS handshake within the header-read timeout
/// (plain HTTP fails it and is closed).
pub async fn serve(
    listener: TcpListener,
    app: Router,
    limits: HttpLimits,
    connections: Connections,
    tls: Option<Arc<Tls>>,
    shutdown: impl Future<Output = ()>,
) -> io::Result<()> {
    // A semaphore counts at most u32::MAX permits at once in `acquire_many`.
    let slots_max = limits.connections_max.clamp(1, u32::MAX as usize);
    let slots = Arc::new(Semaphore::new(slots_max));
    let (stop_tx, stop_rx) = watch::channel(false);
    tokio::pin!(shutdown);
    loop {
        let accepted = tokio::select! {
            _ = &mut shutdown => break,
            a = listener.accept() => a,
        };
        let stream = match accepted {
            Ok((stream, _)) => stream,
            Err(e) => {
                // Out of file descriptors, or a connection reset before it was accepted.
                tracing::warn!(error = %e, "HTTP accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            refuse(&stream, slots_max);
            connections.cut("over_cap");
            continue;
        };
        let (app, stop) = (app.clone(), stop_rx.clone());
        let open = connections.open();
        let connections = connections.clone();
        let acceptor = tls.as_ref().map(|t| t.client_acceptor());
        tokio::spawn(async move {
            let stream: BoxStream = match acceptor {
                None => Box::new(stream),
                Some(acceptor) => {
                    let shaken =
                        tokio::time::timeout(limits.header_read_timeout, acceptor.accept(stream))
                            .await;
                    match shaken {
                        Ok(Ok(s)) => Box::new(s),
                        Ok(Err(e)) => {
                            tracing::debug!(error = %e, "HTTP TLS handshake failed");
                            connections.cut("tls_handshake");
                            return;
                        }
                        Err(_) => {
                            tracing::debug!(
                                "HTTP TLS handshake not done within http_header_read_timeout_ms"
                            );
                            connections.cut("tls_handshake");
                            return;
                        }
                    }
                }
            };
            connection(stream, app, limits, stop, &connections).await;
            drop(open);
            drop(permit);
        });
    }
    drop(listener);
    let _ = stop_tx.send(true);
    let all = u32::try_from(slots_max).unwrap_or(u32::MAX);
    let _ = tokio::time::timeout(
        Duration::from_millis(SHUTDOWN_WAIT_MS),
        slots.acquire_many(all),
    )
    .await;
    Ok(())
}

/// Tells a client over the cap so, without waiting for it, and closes the connection.
fn refuse(stream: &TcpStream, connections_max: usize) {
    let body = format!(
        "{{\"error\":{{\"code\":\"unavailable\",\"message\":\"this node already serves \
         {connections_max} HTTP connections (http_connections_max); retry later\"}}}}"
    );
    let response = format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\n\
         content-length: {}\r\nconnection: close\r\nretry-after: 1\r\n\r\n{body}",
        body.len()
    );
    let _ = stream.try_write(response.as_bytes());
    tracing::debug!(connections_max, "HTTP connection over the cap refused");
}

/// What the watchdog knows about one connection, in ms since it was accepted.
struct Activity {
    start: Instant,
    last_io_ms: AtomicU64,
    /// When the first byte of the request head being read arrived; [`NONE`] between requests.
    head_started_ms: AtomicU64,
    handling: AtomicUsize,
}

const NONE: u64 = u64::MAX;

impl Activity {
    fn new() -> Activity {
        Activity {
            start: Instant::now(),
            last_io_ms: AtomicU64::new(0),
            head_started_ms: AtomicU64::new(NONE),
            handling: AtomicUsize::new(0),
        }
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.start.elapsed().as_millis()).unwrap_or(NONE - 1)
    }

    fn read(&self) {
        let now = self.now_ms();
        self.last_io_ms.store(now, Ordering::Relaxed);
        // Bytes read while no request is being handled belong to the next request's head.
        if self.handling.load(Ordering::Relaxed) == 0 {
            let _ = self.head_started_ms.compare_exchange(
                NONE,
                now,
                Ordering::Relaxed,
                Ordering::Relaxed,
            );
        }
    }

    fn wrote(&self) {
        self.last_io_ms.store(self.now_ms(), Ordering::Relaxed);
    }

    /// A request's head is complete and its handler runs until the guard drops.
    fn handle(self: &Arc<Self>) -> Handling {
        self.handling.fetch_add(1, Ordering::Relaxed);
        self.head_started_ms.store(NONE, Ordering::Relaxed);
        Handling(self.clone())
    }

    /// Why the connection should be closed now, if it should: its reason label and why.
    fn expired(&self, limits: &HttpLimits) -> Option<(&'static str, &'static str)> {
        if self.handling.load(Ordering::Relaxed) > 0 {
            return None;
        }
        let now = self.now_ms();
        let head = self.head_started_ms.load(Ordering::Relaxed);
        let ms = |d: Duration| u64::try_from(d.as_millis()).unwrap_or(NONE);
        if head != NONE && now.saturating_sub(head) >= ms(limits.header_read_timeout) {
            return Some((
                "header_timeout",
                "request head not complete within http_header_read_timeout_ms",
            ));
        }
        let idle = now.saturating_sub(self.last_io_ms.load(Ordering::Relaxed));
        (idle >= ms(limits.idle_timeout))
            .then_some(("idle_timeout", "idle for http_idle_timeout_ms"))
    }
}

struct Handling(Arc<Activity>);

impl Drop for Handling {
    fn drop(&mut self) {
        self.0.handling.fetch_sub(1, Ordering::Relaxed);
        self.0.wrote();
    }
}

/// A connection (TCP, or TLS over it) that reports its reads and writes to its [`Activity`].
struct Tracked {
    inner: BoxStream,
    activity: Arc<Activity>,
}

impl AsyncRead for Tracked {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.activity.read();
        }
        r
    }
}

impl AsyncWrite for Tracked {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write(cx, buf);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.wrote();
        }
        r
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.wrote();
        }
        r
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

async fn connection(
    stream: BoxStream,
    app: Router,
    limits: HttpLimits,
    mut stop: watch::Receiver<bool>,
    connections: &Connections,
) {
    let activity = Arc::new(Activity::new());
    let io = TokioIo::new(Tracked {
        inner: stream,
        activity: activity.clone(),
    });
    let app = TowerToHyperService::new(app);
    let handlers = activity.clone();
    let limiter = tunekv_node::quota(limits.requests_per_s).map(governor::RateLimiter::direct);
    let service = hyper::service::service_fn(move |req: hyper::Request<Incoming>| {
        let handling = handlers.handle();
        // Over this connection's rate: answered at once, the request never reaches the node.
        let limited = limiter.as_ref().is_some_and(|l| l.check().is_err());
        let response = (!limited).then(|| app.call(req.map(Body::new)));
        async move {
            let r = match response {
                Some(f) => f.await,
                None => Ok(crate::http::error_response(TunekvError::new(
                    Code::RateLimited,
                    format!(
                        "this connection sends more than connection_requests_per_s ({}); slow down",
                        limits.requests_per_s
                    ),
                ))),
            };
            drop(handling);
            r
        }
    });
    let conn = http1::Builder::new()
        .keep_alive(true)
        .serve_connection(io, service);
    tokio::pin!(conn);
    let tick = (limits.header_read_timeout.min(limits.idle_timeout) / 4)
        .clamp(Duration::from_millis(10), Duration::from_secs(1));
    let mut ticker = tokio::time::interval(tick);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut stopping = false;
    loop {
        tokio::select! {
            r = conn.as_mut() => {
                if let Err(e) = r {
                    tracing::debug!(error = %e, "HTTP connection ended");
                }
                return;
            }
            _ = ticker.tick() => {
                if let Some((reason, why)) = activity.expired(&limits) {
                    // Dropping the connection closes the socket.
                    tracing::debug!(why, "HTTP connection closed");
                    connections.cut(reason);
                    return;
                }
            }
            _ = stop.changed(), if !stopping => {
                stopping = true;
                conn.as_mut().graceful_shutdown();
            }
        }
    }
}
