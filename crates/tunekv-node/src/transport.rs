//! Node-to-node byte streams behind one trait, so the simulator can swap in its own network.
//! The fault layer (isolation, partitions, one-way partitions, delays, drops) lives here too.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
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
#[derive(Debug)]
pub struct Faults {
    enabled: bool,
    // When set, outbound calls fail at once and inbound requests are dropped unanswered, as a
    // cut cable would do. Kept apart from `links` so the common path reads one atomic.
    isolated: AtomicBool,
    // Partitions, delays and drops; `any` is false while they are all off.
    any: AtomicBool,
    links: Mutex<LinkFaults>,
    // Drops and jitter draw from here: seeded by the node (and so by the simulator's seed).
    rng: Mutex<StdRng>,
}

/// Faults on this node's links to other nodes (by node id). A partition is built by setting
/// them on each side; a one-way partition by setting only `drop_to` on one node.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct LinkFaults {
    /// Messages from this node to these nodes are lost (requests it sends, responses it owes).
    #[serde(default)]
    pub drop_to: BTreeSet<u64>,
    /// Messages from these nodes to this node are lost (their requests, their responses).
    #[serde(default)]
    pub drop_from: BTreeSet<u64>,
    /// Every request this node sends waits this long, plus up to `jitter_ms`, before it leaves.
    #[serde(default)]
    pub delay_ms: u64,
    #[serde(default)]
    pub jitter_ms: u64,
    /// Probability (0..=1) that a request this node sends, or a response it receives, is lost.
    #[serde(default)]
    pub drop_rate: f64,
}

impl LinkFaults {
    fn is_clear(&self) -> bool {
        self.drop_to.is_empty()
            && self.drop_from.is_empty()
            && self.delay_ms == 0
            && self.jitter_ms == 0
            && self.drop_rate <= 0.0
    }
}

/// Every fault a node can have injected (`POST /v1/admin/faults`); the default is none.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct FaultState {
    /// Cut off from every other node.
    pub isolated: bool,
    #[serde(flatten)]
    pub links: LinkFaults,
    /// Added to this node's wall clock (the HLC that stamps commits, expiry, receipts' ms).
    pub clock_offset_ms: i64,
}

/// What happens to one message under the current faults.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fate {
    Deliver,
    /// Sent after this pause.
    Delay(std::time::Duration),
    Lose,
}

impl Faults {
    pub fn new(enabled: bool, seed: u64) -> Faults {
        Faults {
            enabled,
            isolated: AtomicBool::new(false),
            any: AtomicBool::new(false),
            links: Mutex::new(LinkFaults::default()),
            rng: Mutex::new(StdRng::seed_from_u64(seed)),
        }
    }

    fn rng(&self) -> std::sync::MutexGuard<'_, StdRng> {
        self.rng.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn chance(&self, p: f64) -> bool {
        p > 0.0 && self.rng().gen::<f64>() < p
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

    /// Replaces the link faults; returns false when faults are disabled on this node.
    pub fn set_links(&self, links: LinkFaults) -> bool {
        if !self.enabled {
            return false;
        }
        self.any.store(!links.is_clear(), Ordering::Relaxed);
        *self.links.lock().unwrap_or_else(|p| p.into_inner()) = links;
        true
    }

    pub fn links(&self) -> LinkFaults {
        self.links.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// The fate of a request this node sends to `to`.
    pub fn outbound(&self, to: u64) -> Fate {
        if !self.any.load(Ordering::Relaxed) {
            return Fate::Deliver;
        }
        let l = self.links.lock().unwrap_or_else(|p| p.into_inner());
        if l.drop_to.contains(&to) || self.chance(l.drop_rate) {
            return Fate::Lose;
        }
        let jitter = if l.jitter_ms > 0 {
            self.rng().gen_range(0..=l.jitter_ms)
        } else {
            0
        };
        match l.delay_ms + jitter {
            0 => Fate::Deliver,
            ms => Fate::Delay(std::time::Duration::from_millis(ms)),
        }
    }

    /// Whether a request from `from` reaches this node.
    pub fn inbound_request(&self, from: u64) -> bool {
        !self.any.load(Ordering::Relaxed)
            || !self
                .links
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .drop_from
                .contains(&from)
    }

    /// Whether this node's response to a request from `to` gets there.
    pub fn outbound_response(&self, to: u64) -> bool {
        !self.any.load(Ordering::Relaxed)
            || !self
                .links
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .drop_to
                .contains(&to)
    }

    /// Whether a response from `from` to one of this node's requests gets here.
    pub fn inbound_response(&self, from: u64) -> bool {
        if !self.any.load(Ordering::Relaxed) {
            return true;
        }
        let l = self.links.lock().unwrap_or_else(|p| p.into_inner());
        !l.drop_from.contains(&from) && !self.chance(l.drop_rate)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn link_faults_decide_each_direction() {
        let f = Faults::new(true, 1);
        assert_eq!(f.outbound(2), Fate::Deliver);
        assert!(f.set_links(LinkFaults {
            drop_to: [2].into(),
            drop_from: [3].into(),
            delay_ms: 5,
            ..LinkFaults::default()
        }));
        assert_eq!(f.outbound(2), Fate::Lose);
        assert_eq!(
            f.outbound(3),
            Fate::Delay(std::time::Duration::from_millis(5))
        );
        assert!(!f.outbound_response(2) && f.outbound_response(3));
        assert!(!f.inbound_request(3) && f.inbound_request(2));
        assert!(!f.inbound_response(3) && f.inbound_response(2));
        assert!(f.set_links(LinkFaults::default()));
        assert_eq!(f.outbound(2), Fate::Deliver);
        assert!(!Faults::new(false, 1).set_links(LinkFaults::default()));
    }
}
