//! A small Prometheus registry: labelled counters, gauges and histograms, rendered in the text
//! exposition format at the admin port's `/metrics`. Kept in-crate so the hot path is one
//! mutex-guarded map update and the output format is under test.
//!
//! | metric | type | labels |
//! |---|---|---|
//! | `authz_decisions_total` | counter | `outcome`, `reason`, `tier` |
//! | `authz_check_seconds` | histogram | `stage` (`cache_lookup`, `introspection`, `jwt_verify`, `policy`, `check`, ...) |
//! | `authz_decision_seconds` | histogram | `outcome` (`allow`, `deny`), `tier`: a whole check (its `check` stage) |
//! | `authz_introspection_calls_total` | counter | `kind` (`single`, `batch`) |
//! | `authz_introspection_errors_total` | counter | `kind` (`timeout`, `transport`, `status`, `malformed`, `circuit_open`, `throttled`, `refused`) |
//! | `authz_introspection_batch_fallbacks_total` | counter | batch calls that failed and were made as single calls |
//! | `authz_idp_ready` | gauge | 1 while the IdP accepts our client (start-up probe passed) |
//! | `authz_idp_probe_failures_total` | counter | `kind` |
//! | `authz_introspection_batch_size` | histogram | |
//! | `authz_single_flight_joins_total` | counter | |
//! | `authz_cache_lookups_total` | counter | `result` (`hit`, `miss`, `stale`) |
//! | `authz_refresh_ahead_total` | counter | |
//! | `authz_circuit_state` | gauge | `state` (1 for the current state) |
//! | `authz_rate_limited_total` | counter | `limit` |
//! | `authz_epochs_requests_total` | counter | |
//! | `authz_feed_push_seconds` | histogram | (a push: the change → its answer written) |
//! | `authz_policy_version` | gauge | |
//! | `authz_canary_compared_total` | counter | (see `canary`) |
//! | `authz_canary_disagreements_total` | counter | `route`, `kind`, `reason` (see `canary`) |
//! | `authz_otlp_exports_total` | counter | `result` (see `otlp`) |
//! | `authz_otlp_spans_dropped_total` | counter | (see `otlp`) |

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::Mutex;

const LATENCY_BUCKETS: [f64; 12] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0,
];
const SIZE_BUCKETS: [f64; 8] = [1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0];

#[derive(Debug, Default)]
struct Histogram {
    buckets: Vec<(f64, u64)>,
    sum: f64,
    count: u64,
}

type Key = (&'static str, Vec<(&'static str, String)>);

#[derive(Debug, Default)]
struct Families {
    counters: BTreeMap<Key, u64>,
    gauges: BTreeMap<Key, f64>,
    histograms: BTreeMap<Key, Histogram>,
}

/// The registry.
#[derive(Debug, Default)]
pub struct Metrics {
    inner: Mutex<Families>,
}

fn labels_text(labels: &[(&'static str, String)], extra: Option<(&str, String)>) -> String {
    let mut parts: Vec<String> = labels
        .iter()
        .map(|(k, v)| format!("{k}=\"{}\"", v.replace('\\', "\\\\").replace('"', "\\\"")))
        .collect();
    if let Some((k, v)) = extra {
        parts.push(format!("{k}=\"{v}\""));
    }
    if parts.is_empty() {
        String::new()
    } else {
        format!("{{{}}}", parts.join(","))
    }
}

impl Metrics {
    fn with<T>(&self, f: impl FnOnce(&mut Families) -> T) -> T {
        let mut guard = crate::lock(&self.inner);
        f(&mut guard)
    }

    pub fn inc(&self, name: &'static str, labels: &[(&'static str, &str)]) {
        self.add(name, labels, 1);
    }

    pub fn add(&self, name: &'static str, labels: &[(&'static str, &str)], n: u64) {
        let key = (
            name,
            labels.iter().map(|(k, v)| (*k, (*v).to_owned())).collect(),
        );
        self.with(|f| *f.counters.entry(key).or_default() += n);
    }

    pub fn set_gauge(&self, name: &'static str, labels: &[(&'static str, &str)], value: f64) {
        let key = (
            name,
            labels.iter().map(|(k, v)| (*k, (*v).to_owned())).collect(),
        );
        self.with(|f| f.gauges.insert(key, value));
    }

    fn observe_with(
        &self,
        name: &'static str,
        labels: &[(&'static str, &str)],
        value: f64,
        bounds: &[f64],
    ) {
        let key = (
            name,
            labels.iter().map(|(k, v)| (*k, (*v).to_owned())).collect(),
        );
        self.with(|f| {
            let h = f.histograms.entry(key).or_insert_with(|| Histogram {
                buckets: bounds.iter().map(|b| (*b, 0)).collect(),
                ..Histogram::default()
            });
            for (bound, count) in h.buckets.iter_mut() {
                if value <= *bound {
                    *count += 1;
                }
            }
            h.sum += value;
            h.count += 1;
        });
    }

    /// Records a duration in seconds.
    pub fn observe_seconds(
        &self,
        name: &'static str,
        labels: &[(&'static str, &str)],
        seconds: f64,
    ) {
        self.observe_with(name, labels, seconds, &LATENCY_BUCKETS);
    }

    /// Records a size (e.g. a batch's token count).
    pub fn observe_size(&self, name: &'static str, value: f64) {
        self.observe_with(name, &[], value, &SIZE_BUCKETS);
    }

    /// A counter's current value (tests and logs).
    pub fn counter(&self, name: &'static str, labels: &[(&'static str, &str)]) -> u64 {
        let key = (
            name,
            labels.iter().map(|(k, v)| (*k, (*v).to_owned())).collect(),
        );
        self.with(|f| f.counters.get(&key).copied().unwrap_or(0))
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        self.with(|f| {
            let mut out = String::new();
            let mut last = "";
            for ((name, labels), value) in &f.counters {
                if *name != last {
                    let _ = writeln!(out, "# TYPE {name} counter");
                    last = name;
                }
                let _ = writeln!(out, "{name}{} {value}", labels_text(labels, None));
            }
            for ((name, labels), value) in &f.gauges {
                if *name != last {
                    let _ = writeln!(out, "# TYPE {name} gauge");
                    last = name;
                }
                let _ = writeln!(out, "{name}{} {value}", labels_text(labels, None));
            }
            for ((name, labels), h) in &f.histograms {
                if *name != last {
                    let _ = writeln!(out, "# TYPE {name} histogram");
                    last = name;
                }
                for (bound, count) in &h.buckets {
                    let _ = writeln!(
                        out,
                        "{name}_bucket{} {count}",
                        labels_text(labels, Some(("le", bound.to_string())))
                    );
                }
                let _ = writeln!(
                    out,
                    "{name}_bucket{} {}",
                    labels_text(labels, Some(("le", "+Inf".into()))),
                    h.count
                );
                let _ = writeln!(out, "{name}_sum{} {}", labels_text(labels, None), h.sum);
                let _ = writeln!(out, "{name}_count{} {}", labels_text(labels, None), h.count);
            }
            out
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_prometheus_text() {
        let m = Metrics::default();
        m.inc(
            "authz_decisions_total",
            &[("outcome", "allow"), ("tier", "privileged")],
        );
        m.inc(
            "authz_decisions_total",
            &[("outcome", "allow"), ("tier", "privileged")],
        );
        m.observe_seconds("authz_check_seconds", &[("stage", "check")], 0.0003);
        m.set_gauge("authz_policy_version", &[], 3.0);
        let text = m.render();
        assert!(text.contains("# TYPE authz_decisions_total counter"));
        assert!(text.contains("authz_decisions_total{outcome=\"allow\",tier=\"privileged\"} 2"));
        assert!(text.contains("authz_check_seconds_bucket{stage=\"check\",le=\"0.0005\"} 1"));
        assert!(text.contains("authz_check_seconds_bucket{stage=\"check\",le=\"0.00025\"} 0"));
        assert!(text.contains("authz_check_seconds_count{stage=\"check\"} 1"));
        assert!(text.contains("authz_policy_version 3"));
        assert_eq!(
            m.counter(
                "authz_decisions_total",
                &[("outcome", "allow"), ("tier", "privileged")]
            ),
            2
        );
    }
}
