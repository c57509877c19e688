//! Wall-clock time through a handle, so tests and the simulator can skew or own it. Monotonic
//! time in node code is `tokio::time::Instant` (which the simulator controls).

use std::sync::atomic::{AtomicI64, Ordering};

pub trait Clock: Send + Sync + 'static {
    /// Milliseconds since the Unix epoch, as this node believes.
    fn wall_ms(&self) -> u64;

    /// Skews the clock by `offset` ms (a fault); false if this clock cannot be skewed.
    fn set_offset_ms(&self, _offset: i64) -> bool {
        false
    }

    fn offset_ms(&self) -> i64 {
        0
    }
}

/// The operating system's clock plus an injectable offset (clock-skew faults).
#[derive(Debug, Default)]
pub struct SystemClock {
    offset_ms: AtomicI64,
}

impl SystemClock {
    pub fn new() -> Self {
        Self::default()
    }
}

impl Clock for SystemClock {
    fn set_offset_ms(&self, offset: i64) -> bool {
        self.offset_ms.store(offset, Ordering::Relaxed);
        true
    }

    fn offset_ms(&self) -> i64 {
        self.offset_ms.load(Ordering::Relaxed)
    }

    fn wall_ms(&self) -> u64 {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as i64)
            .unwrap_or(0);
        now.saturating_add(self.offset_ms.load(Ordering::Relaxed))
            .max(0) as u64
    }
}
