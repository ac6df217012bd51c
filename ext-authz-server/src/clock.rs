//! The server's clock: every decision, cache age, rate-limit window, breaker timer and
//! revocation expiry reads the time from one [`Clock`] the composition root hands out, so
//! tests can move time instead of sleeping.
//!
//! What it does not do: drive tokio timers (deadlines, batch windows, backoff sleeps), which
//! stay on tokio's clock.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

/// Wall-clock time, in milliseconds since the Unix epoch.
pub trait Clock: Send + Sync {
    fn now_ms(&self) -> u64;

    /// Unix seconds (the unit of token claims).
    fn now_seconds(&self) -> i64 {
        (self.now_ms() / 1000) as i64
    }
}

/// The clock a server shares among its parts.
pub type SharedClock = Arc<dyn Clock>;

/// The system's wall clock.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_ms(&self) -> u64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0)
    }
}

/// A clock that moves only when told to (tests): starts at the system time.
#[derive(Debug)]
pub struct ManualClock {
    now_ms: AtomicU64,
}

impl ManualClock {
    pub fn new() -> Arc<ManualClock> {
        Arc::new(ManualClock {
            now_ms: AtomicU64::new(SystemClock.now_ms()),
        })
    }

    pub fn advance_ms(&self, ms: u64) {
        self.now_ms.fetch_add(ms, Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now_ms(&self) -> u64 {
        self.now_ms.load(Ordering::SeqCst)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_manual_clock_moves_only_when_advanced() {
        let clock = ManualClock::new();
        let start = clock.now_ms();
        assert!(start > 1_700_000_000_000);
        assert_eq!(clock.now_ms(), start);
        clock.advance_ms(1_500);
        assert_eq!(clock.now_ms(), start + 1_500);
        assert_eq!(clock.now_seconds(), ((start + 1_500) / 1000) as i64);
    }
}
