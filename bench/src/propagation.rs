//! Revocation propagation, measured end to end: a stack of its own (dev IdP, echo upstream,
//! ext-authz-server, Envoy with 2 workers and the filter), JWTs on routes the filter decides
//! locally, and for each revocation (a token, a `jti` or a subject, in turn) the time from the
//! admin call at the server to the moment every worker refuses the token: the first of
//! [`REFUSED_IN_A_ROW`] refusals in a row on new connections (which land on either worker).
//! Run once with the change feed pushed (held requests) and once with it polled every 250 ms
//! (push off: the documented fallback bound), and the filter's own lag histogram
//! (`authz_proxy_revocation_lag_microseconds`) from Envoy's stats beside it.
//!
//! Also measured: the standard-write route with `fresh` (asks the server, short proxy cache)
//! against the same route decided locally, closed loop, CPU per request.

use serde_json::json;
use std::time::{Duration, Instant};
use tests::*;

/// Refusals in a row (each on a new connection) that count as "every worker refuses".
const REFUSED_IN_A_ROW: usize = 8;

/// One mode's measurements.
pub struct Propagation {
    pub mode: &'static str,
    /// Revocation → every worker refuses, ms.
    pub lags_ms: Vec<f64>,
    /// Envoy's summary line of the filter's own lag histogram.
    pub filter_histogram: String,
}

impl Propagation {
    pub fn percentile(&self, q: f64) -> f64 {
        let mut v = self.lags_ms.clone();
        v.sort_by(|a, b| a.total_cmp(b));
        if v.is_empty() {
            return f64::NAN;
        }
        let i = ((v.len() as f64 - 1.0) * q).round() as usize;
        v[i.min(v.len() - 1)]
    }

    pub fn max(&self) -> f64 {
        self.lags_ms.iter().copied().fold(0.0, f64::max)
    }
}

fn status(envoy: &Envoy, method: &str, path: &str, token: &str) -> u16 {
    envoy
        .send(method, path, Some(token), &[("connection", "close")])
        .status
}

/// Measures `count` revocations with the feed pushed (the default configuration) or polled
/// every 250 ms (`push_wait_ms: 0`).
pub fn measure(mode: &'static str, push: bool, count: usize) -> Propagation {
    let mut plugin = decision_cache_plugin_config(250, 10_000);
    plugin["server"]["max_unreachable_ms"] = json!(5_000);
    if !push {
        plugin["server"]["push_wait_ms"] = json!(0);
    }
    let stack = CacheStack::start(&plugin, "");
    if push {
        // Both workers (and Envoy's main thread) hold a feed request before the first one.
        let since = Instant::now();
        while stack.server.metric("authz_feed_streams") < 3.0
            && since.elapsed() < Duration::from_secs(10)
        {
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    let mut lags_ms = Vec::with_capacity(count);
    // A revocation at a random phase of the poll cycle (otherwise every revocation would follow
    // the previous detection, i.e. a poll, by the same few milliseconds).
    let mut phase: u64 = 0x2545_f491_4f6c_dd1d;
    for i in 0..count {
        phase ^= phase << 13;
        phase ^= phase >> 7;
        phase ^= phase << 17;
        std::thread::sleep(Duration::from_millis(phase % 250));
        let sub = format!("prop-{i}");
        let jti = format!("prop-jti-{i}");
        let token = stack
            .idp
            .mint(json!({"sub": sub, "scope": "read write", "ttl": 900, "claims": {"jti": jti}}));
        // Verified (and cached) by both workers before the revocation.
        for _ in 0..4 {
            assert_eq!(status(&stack.envoy, "GET", "/api/items", &token), 200);
        }
        let (path, body, method) = match i % 3 {
            0 => ("/admin/revoke", json!({"token": token}), "GET"),
            1 => ("/admin/revoke", json!({"jti": jti}), "POST"),
            _ => ("/admin/revoke-subject", json!({"sub": sub}), "POST"),
        };
        let revoked_at = Instant::now();
        assert_eq!(stack.server.admin("POST", path, Some(body)).status, 200);
        let mut in_a_row = 0;
        let mut first = None;
        while revoked_at.elapsed() < Duration::from_secs(5) {
            let probe = Instant::now();
            if status(&stack.envoy, method, "/api/items", &token) == 401 {
                first.get_or_insert(probe.duration_since(revoked_at));
                in_a_row += 1;
                if in_a_row == REFUSED_IN_A_ROW {
                    break;
                }
            } else {
                in_a_row = 0;
                first = None;
            }
        }
        let lag = match (in_a_row == REFUSED_IN_A_ROW, first) {
            (true, Some(lag)) => lag,
            _ => Duration::from_secs(5),
        };
        lags_ms.push(lag.as_secs_f64() * 1000.0);
    }
    // Envoy publishes histograms on its stats flush (every 5 s).
    std::thread::sleep(Duration::from_millis(5_500));
    let filter_histogram = get(
        &format!(
            "http://127.0.0.1:{}/stats?filter=revocation_lag_microseconds",
            stack.envoy.admin_port
        ),
        &[],
    )
    .body
    .lines()
    .find(|l| l.contains("revocation_lag_microseconds") && l.contains("P50"))
    .unwrap_or("")
    .trim()
    .to_owned();
    Propagation {
        mode,
        lags_ms,
        filter_histogram,
    }
}
