//! What the filter core needs from the proxy it runs in, and nothing more: shared data with
//! compare-and-swap (the one store every worker of a proxy sees), log lines, metrics, and a
//! clock for timing verifications. A host (proxy-wasm today, a native Envoy module later)
//! implements [`Host`]; tests implement it with maps.
//!
//! These are the calls whose answer the core needs at once (a lease is won or lost by the
//! compare-and-swap). Everything asynchronous (HTTP and gRPC calls, responding to or resuming
//! a request, setting headers) is not here: the core returns it as a command (see
//! [`crate::commands`]) and the host carries it out after the core has returned.
//!
//! What it does not do: decide anything, or re-enter the core. An implementation must not
//! call back into the worker.

use crate::metrics::{Counter, Gauge, Histogram};

/// Outcome of a shared-data write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SharedWrite {
    Written,
    /// The compare-and-swap token no longer matched: someone else wrote first.
    CasMismatch,
    Failed,
}

/// Severity of a log line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum LogLevel {
    Debug,
    Info,
    Warn,
    Error,
}

/// The proxy as the filter core sees it.
pub trait Host {
    /// A shared-data value and its compare-and-swap token (both `None` when absent).
    fn shared_get(&self, key: &str) -> (Option<Vec<u8>>, Option<u32>);
    /// Writes `value`; with `cas`, only if the value is still the one that token was read with.
    fn shared_set(&self, key: &str, value: &[u8], cas: Option<u32>) -> SharedWrite;
    fn log(&self, level: LogLevel, message: &str);
    /// Whether debug lines are shown (asked once, so hot paths can skip formatting them).
    fn debug_enabled(&self) -> bool;
    fn count(&self, counter: Counter);
    fn set_gauge(&self, gauge: Gauge, value: u64);
    fn record(&self, histogram: Histogram, value: u64);
    /// Microseconds on any monotonic-enough clock; used only to time verifications (a
    /// decision never depends on it: events carry their own `now`).
    fn now_us(&self) -> Option<u64>;
}
