//! Node-to-node byte streams behind one trait, so the simulator can swap in its own network.
//! The fault layer (isolation now; drops, delays and partitions later) lives here too.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use tokio::io::{AsyncRead, AsyncWrite};

pub trait ByteStream: AsyncRead + AsyncWrite + Send + Unpin + 'static {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin + 'static> ByteStream for T {}

pub type BoxStream = Box<dyn ByteStream>;
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

pub trait Listener: Send + 'static {
    /// The next inbound connection and the peer's address.
    fn accept(&mut self) -> BoxFuture<'_, io::Result<(BoxStream, String)>>;
    fn local_addr(&self) -> io::Result<String>;
}

pub trait Transport: Send + Sync + 'static {
    fn connect<'a>(&'a self, addr: &'a str) -> BoxFuture<'a, io::Result<BoxStream>>;
    fn bind<'a>(&'a self, addr: &'a str) -> BoxFuture<'a, io::Result<Box<dyn Listener>>>;
}

/// Real TCP (tokio). Nagle is off: Raft messages are small and latency-bound.
pub struct TcpTransport;

struct TcpListenerBox(tokio::net::TcpListener);

impl Listener for TcpListenerBox {
    fn accept(&mut self) -> BoxFuture<'_, io::Result<(BoxStream, String)>> {
        Box::pin(async move {
            let (s, addr) = self.0.accept().await?;
            s.set_nodelay(true)?;
            Ok((Box::new(s) as BoxStream, addr.to_string()))
        })
    }

    fn local_addr(&self) -> io::Result<String> {
        Ok(self.0.local_addr()?.to_string())
    }
}

impl Transport for TcpTransport {
    fn connect<'a>(&'a self, addr: &'a str) -> BoxFuture<'a, io::Result<BoxStream>> {
        Box::pin(async move {
            let s = tokio::net::TcpStream::connect(addr).await?;
            s.set_nodelay(true)?;
            Ok(Box::new(s) as BoxStream)
        })
    }

    fn bind<'a>(&'a self, addr: &'a str) -> BoxFuture<'a, io::Result<Box<dyn Listener>>> {
        Box::pin(async move {
            let l = tokio::net::TcpListener::bind(addr).await?;
            Ok(Box::new(TcpListenerBox(l)) as Box<dyn Listener>)
        })
    }
}

/// Injected network faults, applied to node-to-node traffic only (client traffic is served).
/// Changing them requires the node to run with `--enable-faults`.
#[derive(Debug, Default)]
pub struct Faults {
    enabled: bool,
    // When set, outbound calls fail at once and inbound requests are dropped unanswered, as a
    // cut cable would do.
    isolated: AtomicBool,
}

impl Faults {
    pub fn new(enabled: bool) -> Faults {
        Faults {
            enabled,
            isolated: AtomicBool::new(false),
        }
    }

    pub fn enabled(&self) -> bool {
        self.enabled
    }

    pub fn isolated(&self) -> bool {
        self.isolated.load(Ordering::Relaxed)
    }

    /// Returns false when faults are disabled on this node.
    pub fn set_isolated(&self, on: bool) -> bool {
        if !self.enabled {
            return false;
        }
        self.isolated.store(on, Ordering::Relaxed);
        true
    }
}
