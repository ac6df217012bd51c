//! The [`filter_core::Host`] the core runs against inside Envoy: shared data, log lines and
//! metrics through [`crate::host`]. Metrics are defined once per VM (Envoy adds its
//! `wasmcustom.` prefix; the names and their meaning are listed in `filter_core::metrics`).
//!
//! The counters every allowed hot request touches ([`Counter::is_hot`]) are counted inside the
//! VM and added to Envoy's counters on the worker's next tick (≤ 250 ms later): one host call
//! per counter per tick instead of two per request.

use crate::host;
use filter_core::{Counter, Gauge, Histogram, Host, LogLevel, SharedWrite};
use proxy_wasm::types::MetricType;
use std::cell::Cell;

/// The worker the filter runs.
pub type FilterWorker = filter_core::Worker<EnvoyHost>;

/// Envoy, as the core sees it: metric ids of this VM and the hot counts not yet added.
#[derive(Debug)]
pub struct EnvoyHost {
    counters: Vec<Option<u32>>,
    batched: Vec<Cell<u64>>,
    gauges: Vec<Option<u32>>,
    histograms: Vec<Option<u32>>,
}

impl EnvoyHost {
    /// Defines every metric (so all exist, at zero, before the first request).
    pub fn define() -> EnvoyHost {
        EnvoyHost {
            counters: Counter::all()
                .iter()
                .map(|c| host::define_metric(MetricType::Counter, &c.name()))
                .collect(),
            batched: (0..Counter::COUNT).map(|_| Cell::new(0)).collect(),
            gauges: Gauge::ALL
                .iter()
                .map(|g| host::define_metric(MetricType::Gauge, &g.name()))
                .collect(),
            histograms: Histogram::all()
                .iter()
                .map(|h| host::define_metric(MetricType::Histogram, &h.name()))
                .collect(),
        }
    }

    /// Adds the batched hot-path counts to Envoy's counters (every tick).
    pub fn flush(&self) {
        for (cell, id) in self.batched.iter().zip(&self.counters) {
            let n = cell.replace(0);
            if n > 0 {
                host::increment_by(*id, n);
            }
        }
    }
}

impl Host for EnvoyHost {
    fn shared_get(&self, key: &str) -> (Option<Vec<u8>>, Option<u32>) {
        host::shared_get(key)
    }

    fn shared_set(&self, key: &str, value: &[u8], cas: Option<u32>) -> SharedWrite {
        host::shared_set(key, value, cas)
    }

    fn log(&self, level: LogLevel, message: &str) {
        let level = match level {
            LogLevel::Debug => proxy_wasm::types::LogLevel::Debug,
            LogLevel::Info => proxy_wasm::types::LogLevel::Info,
            LogLevel::Warn => proxy_wasm::types::LogLevel::Warn,
            LogLevel::Error => proxy_wasm::types::LogLevel::Error,
        };
        host::log(level, message);
    }

    fn debug_enabled(&self) -> bool {
        host::debug_enabled()
    }

    fn count(&self, counter: Counter) {
        let Some(index) = counter.index() else { return };
        if counter.is_hot() {
            if let Some(cell) = self.batched.get(index) {
                cell.set(cell.get() + 1);
            }
        } else {
            host::increment(self.counters.get(index).copied().flatten());
        }
    }

    fn set_gauge(&self, gauge: Gauge, value: u64) {
        let index = Gauge::ALL.iter().position(|g| *g == gauge);
        host::record(
            index.and_then(|i| self.gauges.get(i)).copied().flatten(),
            value,
        );
    }

    fn record(&self, histogram: Histogram, value: u64) {
        host::record(
            self.histograms.get(histogram.index()).copied().flatten(),
            value,
        );
    }

    fn now_us(&self) -> Option<u64> {
        host::now_us()
    }
}

/// A secret key for this VM's token cache: from the process's random source (std draws
/// `RandomState` keys from WASI `random_get`, which Envoy provides).
pub fn random_key() -> [u64; 2] {
    use std::hash::BuildHasher;
    let state = std::collections::hash_map::RandomState::new();
    [
        state.hash_one(0x746f_6b65_6e5f_6b30_u64),
        state.hash_one(0x746f_6b65_6e5f_6b31_u64),
    ]
}
