//! The simulated network and clock a node runs on: turmoil's TCP for node-to-node traffic and
//! HTTP, and a wall clock that is the simulation's time plus this node's offset.

use std::io;
use std::sync::atomic::{AtomicI64, Ordering};
use tunekv_node::clock::Clock;
use tunekv_node::transport::{BoxFuture, BoxStream, Listener, Transport};

/// Every node listens on these ports at its own host name (`n1`, `n2`, …).
pub const RAFT_PORT: u16 = 7000;
pub const HTTP_PORT: u16 = 8080;

/// Node-to-node connections over turmoil's simulated TCP.
pub struct SimTransport;

struct SimListener(turmoil::net::TcpListener);

impl Listener for SimListener {
    fn accept(&mut self) -> BoxFuture<'_, io::Result<(BoxStream, String)>> {
        Box::pin(async move {
            let (s, addr) = self.0.accept().await?;
            Ok((Box::new(s) as BoxStream, addr.to_string()))
        })
    }

    fn local_addr(&self) -> io::Result<String> {
        Ok(self.0.local_addr()?.to_string())
    }
}

/// The port of a `host:port` address.
fn port_of(addr: &str) -> io::Result<u16> {
    addr.rsplit_once(':')
        .and_then(|(_, p)| p.parse().ok())
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, format!("bad address {addr}")))
}

impl Transport for SimTransport {
    fn connect<'a>(&'a self, addr: &'a str) -> BoxFuture<'a, io::Result<BoxStream>> {
        Box::pin(async move {
            let s = turmoil::net::TcpStream::connect(addr).await?;
            Ok(Box::new(s) as BoxStream)
        })
    }

    fn bind<'a>(&'a self, addr: &'a str) -> BoxFuture<'a, io::Result<Box<dyn Listener>>> {
        // turmoil binds only the unspecified address; the host name is the node's own.
        Box::pin(async move {
            let l = turmoil::net::TcpListener::bind(("0.0.0.0", port_of(addr)?)).await?;
            Ok(Box::new(SimListener(l)) as Box<dyn Listener>)
        })
    }
}

/// axum's side of the same listener, for the HTTP API.
pub struct HttpListener(pub turmoil::net::TcpListener);

impl axum::serve::Listener for HttpListener {
    type Io = turmoil::net::TcpStream;
    type Addr = std::net::SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            if let Ok(pair) = self.0.accept().await {
                return pair;
            }
        }
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        self.0.local_addr()
    }
}

/// Simulation time since the Unix epoch, plus a per-node offset (the seed's skew, and the
/// fault schedule's clock jumps).
pub struct SimClock {
    offset_ms: AtomicI64,
}

impl SimClock {
    pub fn new(offset_ms: i64) -> SimClock {
        SimClock {
            offset_ms: AtomicI64::new(offset_ms),
        }
    }
}

impl Clock for SimClock {
    fn wall_ms(&self) -> u64 {
        let now = turmoil::since_epoch().map_or(0, |d| d.as_millis() as i64);
        (now + self.offset_ms.load(Ordering::Relaxed)).max(0) as u64
    }

    fn set_offset_ms(&self, offset: i64) -> bool {
        self.offset_ms.store(offset, Ordering::Relaxed);
        true
    }

    fn offset_ms(&self) -> i64 {
        self.offset_ms.load(Ordering::Relaxed)
    }
}
