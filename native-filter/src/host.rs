//! The [`filter_core::Host`] the core runs against inside a native Envoy: metrics defined once
//! per filter configuration (Envoy's stats are process-wide and atomic, so every worker thread
//! counts into the same ones), log lines through Envoy's logger, and "shared data" that is
//! simply this process's memory: there is one core per process, so the leases and records the
//! Wasm filter keeps in shared data for its per-worker VMs are held here by the only reader.
//!
//! What it does not do: synchronise anything itself. It lives inside the core, which the host
//! locks; the metric and log calls it makes are thread-safe in Envoy.

use crate::abi::{self, EnvoyConfig, MetricId};
use filter_core::{Counter, Gauge, Histogram, Host, LogLevel, SharedWrite};
use std::cell::RefCell;
use std::collections::HashMap;
use std::time::{SystemTime, UNIX_EPOCH};

/// The worker the native filter runs (one per Envoy process).
pub type NativeWorker = filter_core::Worker<NativeHost>;

/// Envoy, as the core sees it from a native module.
#[derive(Debug)]
pub struct NativeHost {
    envoy: EnvoyConfig,
    counters: Vec<Option<MetricId>>,
    gauges: Vec<Option<MetricId>>,
    histograms: Vec<Option<MetricId>>,
    /// Key → (value, compare-and-swap version).
    shared: RefCell<HashMap<String, (Vec<u8>, u32)>>,
    debug: bool,
}

impl NativeHost {
    /// Defines every metric (so all exist, at zero, before the first request). Called from
    /// the configuration's creation, on Envoy's main thread.
    pub fn define(envoy: EnvoyConfig) -> NativeHost {
        NativeHost {
            counters: Counter::all()
                .iter()
                .map(|c| envoy.define_counter(&c.name()))
                .collect(),
            gauges: Gauge::ALL
                .iter()
                .map(|g| envoy.define_gauge(&g.name()))
                .collect(),
            histograms: Histogram::all()
                .iter()
                .map(|h| envoy.define_histogram(&h.name()))
                .collect(),
            shared: RefCell::new(HashMap::new()),
            debug: abi::log_enabled(abi::LogLevel::Debug),
            envoy,
        }
    }
}

impl Host for NativeHost {
    fn shared_get(&self, key: &str) -> (Option<Vec<u8>>, Option<u32>) {
        match self.shared.borrow().get(key) {
            Some((value, version)) => (Some(value.clone()), Some(*version)),
            None => (None, None),
        }
    }

    fn shared_set(&self, key: &str, value: &[u8], cas: Option<u32>) -> SharedWrite {
        let mut shared = self.shared.borrow_mut();
        let current = shared.get(key).map(|(_, version)| *version);
        if cas.is_some() && cas != current {
            return SharedWrite::CasMismatch;
        }
        let version = current.map_or(1, |v| v.wrapping_add(1).max(1));
        shared.insert(key.to_owned(), (value.to_vec(), version));
        SharedWrite::Written
    }

    fn log(&self, level: LogLevel, message: &str) {
        let level = match level {
            LogLevel::Debug => abi::LogLevel::Debug,
            LogLevel::Info => abi::LogLevel::Info,
            LogLevel::Warn => abi::LogLevel::Warn,
            LogLevel::Error => abi::LogLevel::Error,
        };
        abi::log(level, message);
    }

    fn debug_enabled(&self) -> bool {
        self.debug
    }

    fn count(&self, counter: Counter) {
        let id = counter
            .index()
            .and_then(|i| self.counters.get(i))
            .copied()
            .flatten();
        if let Some(id) = id {
            self.envoy.increment_counter(id, 1);
        }
    }

    fn set_gauge(&self, gauge: Gauge, value: u64) {
        let id = Gauge::ALL
            .iter()
            .position(|g| *g == gauge)
            .and_then(|i| self.gauges.get(i))
            .copied()
            .flatten();
        if let Some(id) = id {
            self.envoy.set_gauge(id, value);
        }
    }

    fn record(&self, histogram: Histogram, value: u64) {
        let id = self.histograms.get(histogram.index()).copied().flatten();
        if let Some(id) = id {
            self.envoy.record_histogram(id, value);
        }
    }

    fn now_us(&self) -> Option<u64> {
        now_us()
    }
}

/// Microseconds since the Unix epoch (the core's clock: token lifetimes are Unix times).
pub fn now_us() -> Option<u64> {
    let since = SystemTime::now().duration_since(UNIX_EPOCH).ok()?;
    u64::try_from(since.as_micros()).ok()
}

/// A secret key for the process's token cache, from the OS's random source (std draws
/// `RandomState` keys from it).
pub fn random_key() -> [u64; 2] {
    use std::hash::BuildHasher;
    let state = std::collections::hash_map::RandomState::new();
    [
        state.hash_one(0x746f_6b65_6e5f_6b30_u64),
        state.hash_one(0x746f_6b65_6e5f_6b31_u64),
    ]
}
