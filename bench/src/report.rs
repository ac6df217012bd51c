//! Turns the measurements into `docs/benchmarks.md` (method, machine, table, targets) and
//! `docs/benchmarks.svg` (CPU per request by scenario), both written by the bench itself.

use crate::load::RunStats;
use crate::{Amplification, Measured};
use std::fmt::Write;
use std::path::Path;
use std::time::Duration;

pub struct Report {
    pub results: Vec<Measured>,
    pub open_loop: Vec<(String, RunStats)>,
    pub rate: u64,
    pub server_alone: (RunStats, f64),
    pub amplification: Amplification,
    pub memory: Vec<(String, u64)>,
    pub flood: crate::Flood,
    pub propagation: Vec<crate::propagation::Propagation>,
    pub feed_load: crate::feed_load::FeedLoad,
    pub fleet: crate::fleet::Fleet,
    pub sign_cost: Option<crate::sign_cost::SignCost>,
    pub batch_cost: crate::batch_cost::BatchCost,
    /// The external ext_authz server measured beside ours.
    pub external: Option<crate::envoy_config::External>,
    pub run_seconds: u64,
    pub repetitions: u64,
    pub connections: usize,
    pub elapsed: Duration,
}

/// Medians of one scenario over the repetitions.
#[derive(Debug, Clone, Copy, Default)]
pub struct Row {
    pub rps: f64,
    pub p50_us: f64,
    pub p99_us: f64,
    pub envoy_cpu_us: f64,
    pub server_cpu_us: f64,
}

fn median(mut v: Vec<f64>) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

const ORDER: [(&str, &str); 20] = [
    ("direct", "1a. no auth, direct_response"),
    ("proxy", "1b. no auth, proxied (baseline)"),
    (
        "wasm_noop",
        "0. empty Wasm filter, proxied (the runtime's floor)",
    ),
    (
        "native_noop",
        "0b. empty dynamic module, proxied (the extension's floor)",
    ),
    ("jwt_authn", "2a. native jwt_authn, no cache"),
    ("jwt_authn_cached", "2b. native jwt_authn, jwt_cache_config"),
    (
        "filter_cold",
        "3a. filter, local JWT, cold (verify every request)",
    ),
    ("filter_hot", "3b. filter, local JWT, hot (token cache)"),
    (
        "filter_background",
        "3c. filter, local JWT, hot, checked after the answer (`background_check_ms: 1000`)",
    ),
    (
        "filter_privileged_cached",
        "4. privileged via filter, in-proxy cache hit",
    ),
    (
        "native_cold",
        "9a. native filter (dynamic module), local JWT, cold (verify every request, ring)",
    ),
    (
        "native_hot",
        "9b. native filter, local JWT, hot (the process's token cache)",
    ),
    (
        "native_privileged_cached",
        "9c. native filter, privileged, in-proxy cache hit",
    ),
    (
        "filter_privileged_uncached",
        "5. privileged via filter, proxy miss, server cache hit",
    ),
    (
        "native_ext_authz",
        "6. privileged via native ext_authz to our server",
    ),
    (
        "native_ext_authz_jwt",
        "7. privileged via native ext_authz, JWT verified by the server",
    ),
    (
        crate::envoy_config::EXTERNAL_LISTENER,
        "10. privileged via native ext_authz to an external server (`BENCH_EXTERNAL_EXT_AUTHZ`)",
    ),
    (
        "filter_write_local",
        "8a. standard write, decided locally (revocations from the feed)",
    ),
    (
        "filter_write_fresh",
        "8b. standard write, `fresh_cache_ms: 1000` (server, proxy cache)",
    ),
    (
        "filter_write_fresh_uncached",
        "8c. standard write, `fresh_cache_ms: 0` (server every request)",
    ),
];

/// Medians of one scenario's runs.
pub fn row_of(results: &[Measured], scenario: &str) -> Row {
    let runs: Vec<&Measured> = results.iter().filter(|m| m.scenario == scenario).collect();
    {
        Row {
            rps: median(runs.iter().map(|m| m.stats.rps()).collect()),
            p50_us: median(
                runs.iter()
                    .map(|m| m.stats.percentile_us(0.5) as f64)
                    .collect(),
            ),
            p99_us: median(
                runs.iter()
                    .map(|m| m.stats.percentile_us(0.99) as f64)
                    .collect(),
            ),
            envoy_cpu_us: median(runs.iter().map(|m| m.envoy_cpu_us).collect()),
            server_cpu_us: median(runs.iter().map(|m| m.server_cpu_us).collect()),
        }
    }
}

impl Report {
    pub fn row(&self, scenario: &str) -> Row {
        row_of(&self.results, scenario)
    }

    /// Whether the run measured `scenario` (the external one only runs when configured).
    fn measured(&self, scenario: &str) -> bool {
        self.results.iter().any(|m| m.scenario == scenario)
    }

    /// Whether `scenario`'s server CPU was read: always ours; the external server's only with
    /// its pid (`BENCH_EXTERNAL_EXT_AUTHZ_PID`), so an unread one never looks free.
    fn server_cpu_read(&self, scenario: &str) -> bool {
        scenario != crate::envoy_config::EXTERNAL_LISTENER
            || self.external.as_ref().is_some_and(|e| e.pid > 0)
    }

    /// (target, measured, holds)
    pub fn targets(&self) -> Vec<(String, String, bool)> {
        let base = self.row("proxy");
        let hot = self.row("filter_hot");
        let cold = self.row("filter_cold");
        let native = self.row("jwt_authn");
        let native_cached = self.row("jwt_authn_cached");
        let priv_hit = self.row("filter_privileged_cached");
        let priv_miss = self.row("filter_privileged_uncached");
        let ext = self.row("native_ext_authz");
        let noop = self.row("wasm_noop");
        let native_hot = self.row("native_hot");
        let native_cold = self.row("native_cold");
        let native_priv = self.row("native_privileged_cached");
        let a = &self.amplification;
        let refreshes_allowed = (a.seconds as f64 / 2.5).ceil() as u64 + 1; // privileged window 5 s, refresh at half
        let pushed = self.propagation.first();
        let polled = self.propagation.get(1);
        // The target names clients looping on pages (far reads); the flood of small answers
        // past the state is reported beside it, in the section.
        let feed_ratio = self
            .feed_load
            .loaded
            .iter()
            .zip(self.feed_load.ratios())
            .filter(|(run, _)| run.cursor != crate::feed_load::AHEAD_OF_THE_STATE)
            .map(|(_, ratio)| ratio)
            .fold(0.0, f64::max);
        let batch_ratio = |run: &crate::batch_cost::BatchRun| {
            ext.server_cpu_us / run.server_cpu_us_per_item.max(f64::MIN_POSITIVE)
        };
        let batch_target = |transport: &str, run: &crate::batch_cost::BatchRun| {
            (
                format!(
                    "a {}-item batch ({transport}): server CPU per item ≥ 20× less than single checks through native ext_authz",
                    self.batch_cost.items
                ),
                format!(
                    "{:.1}× ({:.2} µs per item against {:.1} µs per check; {} batches, {} failed)",
                    batch_ratio(run),
                    run.server_cpu_us_per_item,
                    ext.server_cpu_us,
                    run.batches,
                    run.errors
                ),
                run.batches > 0 && run.errors == 0 && batch_ratio(run) >= 20.0,
            )
        };
        vec![
            batch_target("JSON, admin port", &self.batch_cost.json),
            batch_target("gRPC", &self.batch_cost.grpc),
            (
                format!(
                    "privileged Check p99 with {} clients looping the feed's pages on {} revocations ≤ 2× idle",
                    self.feed_load.clients, self.feed_load.revocations
                ),
                format!(
                    "{:.2}× (idle {} µs; {})",
                    feed_ratio,
                    self.feed_load.idle_p99_us,
                    self.feed_load
                        .loaded
                        .iter()
                        .map(|r| format!("since={}: {} µs", r.cursor, r.check_p99_us))
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
                feed_ratio <= 2.0,
            ),
            (
                format!(
                    "{} held feed requests, a revocation every 100 ms: the server's pushes (change → answer written) p99 ≤ 50 ms",
                    self.fleet.holds
                ),
                format!(
                    "p99 {:.1} ms, {:.2}% within 50 ms (received by the client: p99 {:.1} ms; {} missed, {} errors)",
                    self.fleet.push_quantile_ms(0.99),
                    self.fleet.pushed_within(0.05) * 100.0,
                    self.fleet.percentile(0.99),
                    self.fleet.missed,
                    self.fleet.errors
                ),
                self.fleet.changes > 0
                    && self.fleet.missed == 0
                    && self.fleet.push_quantile_ms(0.99) <= 50.0,
            ),
            (
                format!("{} held feed requests: server memory ≤ 5 KB per hold", self.fleet.holds),
                format!("{:.0} B per hold", self.fleet.bytes_per_hold()),
                self.fleet.changes > 0 && self.fleet.bytes_per_hold() <= 5_000.0,
            ),
            (
                "revocation → every worker refuses, pushed: p99 ≤ 50 ms, max ≤ 100 ms".into(),
                pushed.map_or("not run".into(), |p| {
                    format!("p99 {:.1} ms, max {:.1} ms", p.percentile(0.99), p.max())
                }),
                pushed.is_some_and(|p| p.percentile(0.99) <= 50.0 && p.max() <= 100.0),
            ),
            (
                "revocation → every worker refuses, push off: max ≤ poll interval (250 ms) + RTT".into(),
                polled.map_or("not run".into(), |p| format!("max {:.1} ms", p.max())),
                polled.is_some_and(|p| p.max() <= 300.0),
            ),
            (
                "hot path throughput ≥ native jwt_authn with cache".into(),
                format!(
                    "{:.0} vs {:.0} rps ({:.2}×)",
                    hot.rps,
                    native_cached.rps,
                    hot.rps / native_cached.rps.max(1.0)
                ),
                hot.rps >= native_cached.rps,
            ),
            (
                "hot path CPU/request ≤ 1.3× no-auth baseline".into(),
                format!(
                    "{:.1} vs {:.1} µs ({:.2}×)",
                    hot.envoy_cpu_us,
                    base.envoy_cpu_us,
                    hot.envoy_cpu_us / base.envoy_cpu_us.max(0.01)
                ),
                hot.envoy_cpu_us <= 1.3 * base.envoy_cpu_us,
            ),
            (
                "cold path CPU/request ≤ 1.5× native jwt_authn without cache".into(),
                format!(
                    "{:.1} vs {:.1} µs ({:.2}×)",
                    cold.envoy_cpu_us,
                    native.envoy_cpu_us,
                    cold.envoy_cpu_us / native.envoy_cpu_us.max(0.01)
                ),
                cold.envoy_cpu_us <= 1.5 * native.envoy_cpu_us,
            ),
            (
                "privileged with in-proxy hit in the hot path's cost class (≤ 1.3× hot)".into(),
                format!(
                    "{:.1} vs {:.1} µs, server {:.1} µs",
                    priv_hit.envoy_cpu_us, hot.envoy_cpu_us, priv_hit.server_cpu_us
                ),
                priv_hit.envoy_cpu_us <= 1.3 * hot.envoy_cpu_us && priv_hit.server_cpu_us < 1.0,
            ),
            (
                "privileged with server hit: Envoy+server CPU ≤ ½ of native ext_authz's".into(),
                format!(
                    "{:.1} vs {:.1} µs ({:.2}×)",
                    priv_miss.envoy_cpu_us + priv_miss.server_cpu_us,
                    ext.envoy_cpu_us + ext.server_cpu_us,
                    (priv_miss.envoy_cpu_us + priv_miss.server_cpu_us)
                        / (ext.envoy_cpu_us + ext.server_cpu_us).max(0.01)
                ),
                priv_miss.envoy_cpu_us + priv_miss.server_cpu_us
                    <= 0.5 * (ext.envoy_cpu_us + ext.server_cpu_us),
            ),
            (
                "native hot path: Envoy CPU/request ≤ 1.0× jwt_authn with cache, throughput ≥ 1.0×"
                    .into(),
                format!(
                    "{:.1} vs {:.1} µs ({:.2}×); {:.0} vs {:.0} rps ({:.2}×)",
                    native_hot.envoy_cpu_us,
                    native_cached.envoy_cpu_us,
                    native_hot.envoy_cpu_us / native_cached.envoy_cpu_us.max(0.01),
                    native_hot.rps,
                    native_cached.rps,
                    native_hot.rps / native_cached.rps.max(1.0)
                ),
                native_hot.envoy_cpu_us <= native_cached.envoy_cpu_us
                    && native_hot.rps >= native_cached.rps,
            ),
            (
                "native cold path (signature verified every request): Envoy CPU/request ≤ 1.0× jwt_authn without cache".into(),
                format!(
                    "{:.1} vs {:.1} µs ({:.2}×)",
                    native_cold.envoy_cpu_us,
                    native.envoy_cpu_us,
                    native_cold.envoy_cpu_us / native.envoy_cpu_us.max(0.01)
                ),
                native_cold.envoy_cpu_us <= native.envoy_cpu_us,
            ),
            (
                "native privileged with an in-proxy hit: within 10% of the native hot path".into(),
                format!(
                    "{:.1} vs {:.1} µs ({:.2}×)",
                    native_priv.envoy_cpu_us,
                    native_hot.envoy_cpu_us,
                    native_priv.envoy_cpu_us / native_hot.envoy_cpu_us.max(0.01)
                ),
                native_priv.envoy_cpu_us <= 1.1 * native_hot.envoy_cpu_us,
            ),
            (
                "Wasm hot path above the empty Wasm filter ≤ jwt_authn-cached above the baseline"
                    .into(),
                format!(
                    "{:.1} vs {:.1} µs",
                    hot.envoy_cpu_us - noop.envoy_cpu_us,
                    native_cached.envoy_cpu_us - base.envoy_cpu_us
                ),
                hot.envoy_cpu_us - noop.envoy_cpu_us
                    <= native_cached.envoy_cpu_us - base.envoy_cpu_us,
            ),
            (
                "Wasm cold path above the empty Wasm filter ≤ 1.5× jwt_authn-uncached above the baseline"
                    .into(),
                format!(
                    "{:.1} vs {:.1} µs ({:.2}×)",
                    cold.envoy_cpu_us - noop.envoy_cpu_us,
                    native.envoy_cpu_us - base.envoy_cpu_us,
                    (cold.envoy_cpu_us - noop.envoy_cpu_us)
                        / (native.envoy_cpu_us - base.envoy_cpu_us).max(0.01)
                ),
                cold.envoy_cpu_us - noop.envoy_cpu_us
                    <= 1.5 * (native.envoy_cpu_us - base.envoy_cpu_us),
            ),
            (
                format!(
                    "amplification: IdP calls ≤ K × (1 + refreshes) = {}",
                    a.tokens as u64 * (1 + refreshes_allowed)
                ),
                format!(
                    "{} calls for {} requests over {} tokens in {} s",
                    a.idp_calls, a.requests, a.tokens, a.seconds
                ),
                a.idp_calls <= a.tokens as u64 * (1 + refreshes_allowed),
            ),
            (
                "memory: caches stay within their caps under a unique-token flood".into(),
                format!(
                    "filter decision cache {} ≤ {} per worker, server cache {} ≤ {}; Envoy RSS {:.1} → {:.1} MiB over {} requests",
                    self.flood.filter_cache_entries,
                    self.flood.filter_cap,
                    self.flood.server_cache_entries,
                    self.flood.server_cap,
                    self.flood.envoy_rss_before_kb as f64 / 1024.0,
                    self.flood.envoy_rss_after_kb as f64 / 1024.0,
                    self.flood.requests
                ),
                self.flood.filter_cache_entries <= self.flood.filter_cap && self.flood.server_cache_entries <= self.flood.server_cap,
            ),
            (
                "no privileged request of a hot token waits on the IdP (+20 ms)".into(),
                format!(
                    "{} of {} requests ≥ 20 ms; p99 {} µs",
                    a.slow_requests, a.requests, a.p99_us
                ),
                a.slow_requests == 0,
            ),
        ]
    }

    /// What an empty Wasm filter costs, and what the filter adds on top, from this run.
    pub fn floor_analysis(&self) -> String {
        let base = self.row("proxy");
        let noop = self.row("wasm_noop");
        let hot = self.row("filter_hot");
        let cold = self.row("filter_cold");
        let native = self.row("jwt_authn");
        let native_cached = self.row("jwt_authn_cached");
        let over = |r: &Row, floor: &Row| r.envoy_cpu_us - floor.envoy_cpu_us;
        format!(
            "- An empty proxy-wasm filter (`bench/noop-filter`: every callback returns `Continue`) costs {:.1} µs of Envoy CPU per request over the proxied baseline ({:.2}×) and serves {:.2}× of its throughput: that is the V8 runtime's floor, paid before any authorization logic runs.\n- The hot path adds {:.1} µs above that floor (header map read, token cache lookup, context headers set, `authorization` removed). Native `jwt_authn` with its cache adds {:.1} µs over the baseline in total.\n- The cold path adds {:.1} µs above the floor, mostly the RSA signature check in Wasm; native `jwt_authn` without cache (BoringSSL) adds {:.1} µs over the baseline.\n{}",
            over(&noop, &base),
            noop.envoy_cpu_us / base.envoy_cpu_us.max(0.01),
            noop.rps / base.rps.max(1.0),
            over(&hot, &noop),
            over(&native_cached, &base),
            over(&cold, &noop),
            over(&native, &base),
            self.floor_verdict(&base, &noop, &native_cached),
        ) + &self.native_floor_analysis()
    }

    /// What an empty dynamic module costs, and what the native filter adds on top.
    fn native_floor_analysis(&self) -> String {
        let base = self.row("proxy");
        let floor = self.row("native_noop");
        let hot = self.row("native_hot");
        let cold = self.row("native_cold");
        let over = |r: &Row, under: &Row| r.envoy_cpu_us - under.envoy_cpu_us;
        format!(
            "- An empty dynamic module (`bench/noop-native`: every hook returns `Continue`) costs {:.1} µs over the proxied baseline and serves {:.2}× of its throughput: the dynamic-modules extension's floor. The native filter's hot path adds {:.1} µs above it, its cold path {:.1} µs; `jwt_authn` with its cache adds {:.1} µs over the baseline, without it {:.1} µs.\n",
            over(&floor, &base),
            floor.rps / base.rps.max(1.0),
            over(&hot, &floor),
            over(&cold, &floor),
            over(&self.row("jwt_authn_cached"), &base),
            over(&self.row("jwt_authn"), &base),
        )
    }

    /// Whether the hot-path targets are reachable by any filter in the Wasm runtime, judged
    /// from this run's empty-filter numbers.
    fn floor_verdict(&self, base: &Row, noop: &Row, native_cached: &Row) -> String {
        let budget = 0.3 * base.envoy_cpu_us;
        let floor = noop.envoy_cpu_us - base.envoy_cpu_us;
        let mut out = String::new();
        if floor >= budget {
            let _ = writeln!(out, "- \"Hot path ≤ 1.3× baseline\" leaves {budget:.1} µs above the baseline; the Wasm runtime alone takes {floor:.1} µs, so no filter running in it can meet that target in this run.");
        }
        if noop.rps < native_cached.rps {
            let _ = writeln!(out, "- \"Throughput ≥ jwt_authn with cache\" asks more than an empty Wasm filter delivers ({:.0} vs {:.0} req/s).", noop.rps, native_cached.rps);
        }
        if out.is_empty() {
            out.push_str("- In this run the Wasm floor leaves room under the hot-path targets.\n");
        }
        out
    }

    pub fn summary(&self) -> String {
        let mut out = String::new();
        for (target, measured, holds) in self.targets() {
            let _ = writeln!(
                out,
                "{} {target}: {measured}",
                if holds { "HOLDS " } else { "MISSES" }
            );
        }
        out
    }

    pub fn write(&self, docs: &Path) {
        let base = self.row("proxy");
        let cpus = std::fs::read_to_string("/proc/cpuinfo")
            .ok()
            .and_then(|c| {
                c.lines()
                    .find(|l| l.starts_with("model name"))
                    .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_owned())
            })
            .unwrap_or_default();
        let mut md = String::new();
        let _ = writeln!(md, "# Benchmarks\n\nWritten by `make bench` (bench/src/main.rs); numbers below are from its last run.\n");
        let _ = writeln!(md, "## Method\n");
        let _ = writeln!(
            md,
            "One Envoy 1.40 (2 workers) with one listener per scenario, the release builds of the filter, ext-authz-server, dev IdP and echo upstream, all on loopback. Each scenario runs {}s closed-loop with {} connections, {} times, interleaved (the order rotates every repetition); the table shows medians. CPU per request is the Envoy (and server) process's user+system time over the run divided by its requests, read from `/proc`. Ratios are to the proxied no-auth baseline of the same run. A fixed-rate open-loop run ({} req/s, latency from each request's intended start) shows tails without coordinated omission. Total run time: {:.0}s.\n",
            self.run_seconds, self.connections, self.repetitions, self.rate, self.elapsed.as_secs_f64()
        );
        let _ = writeln!(
            md,
            "Machine: {} cores, {}.\n",
            std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(0),
            cpus
        );
        let _ = writeln!(md, "## Results\n\n| scenario | req/s | p50 µs | p99 µs | Envoy CPU µs/req | server CPU µs/req | req/s vs baseline | Envoy CPU vs baseline |\n|---|---|---|---|---|---|---|---|");
        for (key, label) in ORDER.iter().filter(|(key, _)| self.measured(key)) {
            let r = self.row(key);
            let server_cpu = if self.server_cpu_read(key) {
                format!("{:.1}", r.server_cpu_us)
            } else {
                "–".to_owned()
            };
            let _ = writeln!(
                md,
                "| {label} | {:.0} | {:.0} | {:.0} | {:.1} | {server_cpu} | {:.2}× | {:.2}× |",
                r.rps,
                r.p50_us,
                r.p99_us,
                r.envoy_cpu_us,
                r.rps / base.rps.max(1.0),
                r.envoy_cpu_us / base.envoy_cpu_us.max(0.01)
            );
        }
        let (alone, cpu) = &self.server_alone;
        let _ = writeln!(
            md,
            "| 7. server alone, gRPC Check (tonic client) | {:.0} | {} | {} | – | {:.1} | – | – |",
            alone.rps(),
            alone.percentile_us(0.5),
            alone.percentile_us(0.99),
            cpu
        );
        match &self.external {
            Some(external) => {
                let address = external.address();
                let server_cpu = if external.pid > 0 {
                    format!("its CPU read from pid {}", external.pid)
                } else {
                    "its CPU not measured (`BENCH_EXTERNAL_EXT_AUTHZ_PID` unset)".to_owned()
                };
                let _ = writeln!(
                    md,
                    "\nRow 10 is the same privileged request through Envoy's native ext_authz to the external server at `{address}` ({server_cpu}): compare it with rows 6 and 7, ours on the same path, and with row 4, ours answered from the in-proxy cache. How to run it against OPA-Envoy or Authorino: README, \"Comparing with your policy server\"."
                );
            }
            None => {
                let _ = writeln!(md, "\nNo external ext_authz server in this run (`BENCH_EXTERNAL_EXT_AUTHZ=host:port` adds one, row 10; README, \"Comparing with your policy server\").");
            }
        }
        let _ = writeln!(md, "\n![CPU per request](benchmarks.svg)\n");
        let _ = writeln!(md, "## Fixed rate ({} req/s, open loop)\n\n| scenario | p50 µs | p99 µs | p99.9 µs | errors |\n|---|---|---|---|---|", self.rate);
        for (name, s) in &self.open_loop {
            let _ = writeln!(
                md,
                "| {name} | {} | {} | {} | {} |",
                s.percentile_us(0.5),
                s.percentile_us(0.99),
                s.percentile_us(0.999),
                s.errors + s.non_2xx
            );
        }
        let a = &self.amplification;
        let _ = writeln!(md, "\n## Introspection amplification\n\n{} requests over {} hot opaque tokens through native ext_authz in {} s, with the IdP adding 20 ms to every introspection: {} IdP calls; {} requests took ≥ 20 ms; p99 {} µs.\n", a.requests, a.tokens, a.seconds, a.idp_calls, a.slow_requests, a.p99_us);
        let f = &self.flood;
        let _ = writeln!(
            md,
            "## Memory under a unique-token flood\n\n{} unique ES256 JWTs (local path) and {} unique opaque tokens (privileged path) through a listener whose caches hold {} entries per worker ({} requests); the server's introspection cache is capped at {}.\n\n| cache | entries | cap |\n|---|---|---|\n| filter decision cache (last worker to report) | {} | {} |\n| server introspection cache | {} | {} |\n\nEnvoy RSS {:.1} MiB before the flood, {:.1} MiB after.\n",
            f.jwt_tokens, f.opaque_tokens, f.filter_cap, f.requests, f.server_cap,
            f.filter_cache_entries, f.filter_cap, f.server_cache_entries, f.server_cap,
            f.envoy_rss_before_kb as f64 / 1024.0, f.envoy_rss_after_kb as f64 / 1024.0
        );
        let _ = writeln!(md, "## Revocation propagation\n\nFrom the admin call at the server to every Envoy worker refusing the token on a locally decided route (the first of 8 refusals in a row on new connections, which land on either worker); revocations alternate token, `jti` and subject. Separate stack (one server, one Envoy with 2 workers). The filter's own `authz_proxy_revocation_lag_microseconds` histogram (server learned → worker applied, µs) beside it.\n\n| feed | revocations | p50 ms | p99 ms | max ms | filter histogram |\n|---|---|---|---|---|---|");
        for p in &self.propagation {
            let _ = writeln!(
                md,
                "| {} | {} | {:.1} | {:.1} | {:.1} | `{}` |",
                p.mode,
                p.lags_ms.len(),
                p.percentile(0.5),
                p.percentile(0.99),
                p.max(),
                p.filter_histogram
            );
        }
        let _ = writeln!(md);
        let fl = &self.feed_load;
        let _ = writeln!(md, "## The change feed under hostile use\n\nA server of its own (no shared tier) holding {} token revocations (filled through the admin API in {:.1} s). Check on a privileged route (opaque token, cached introspection; 8 callers) idle, then while {} clients loop on the feed with the feed token: on `since=0` (the first page), on `since=1` (another page), and on a cursor past the state (`since=1000000000000`: the small answer at the top of the state, as a held request reads it; never paced), as fast as the server answers (a refused request is asked again at once). Pages hold 10,000 rows (`feed.page_rows`), each kept until the next change; answers to cursors far behind the state not woken by a change are paced per feed secret at the default `feed.catch_up_bytes_per_second` (64 MiB/s; a 429, sent after a delay, beyond 0.5 s of waiting).\n\n| feed clients loop on | Check p99 µs | × idle | feed answers | feed MB | refused (429) |\n|---|---|---|---|---|---|\n| (idle) | {} | 1.00 | 0 | 0 | 0 |", fl.revocations, fl.fill_seconds, fl.clients, fl.idle_p99_us);
        for (run, ratio) in fl.loaded.iter().zip(fl.ratios()) {
            let _ = writeln!(
                md,
                "| `since={}` | {} | {:.2} | {} | {:.0} | {} |",
                run.cursor,
                run.check_p99_us,
                ratio,
                run.feed_answers,
                run.feed_mb,
                run.feed_refused
            );
        }
        let _ = writeln!(md);
        let f = &self.fleet;
        let _ = writeln!(md, "## The change feed at fleet scale\n\nA server of its own (release build, no shared tier) and a load client on the same 2 cores holding {} feed requests, each on its own connection as a fleet's filters hold them (`wait_ms=20000` with the server's incarnation; each answer asked again at once from the version it gave), while a token is revoked through the admin API every 100 ms for {} s ({} changes). The server times each push itself (`authz_feed_push_seconds`: from the change to the answer written on the connection); the client times each (change, holder) pair from the revocation being sent to the holder's answer covering it, which adds the client's own queue (one thread reading {} answers per change). Memory is the server's RSS with every request held against before.\n", f.holds, f.seconds, f.changes, f.holds);
        let _ = writeln!(
            md,
            "| held requests | pushes p50 ms | pushes p99 ms | pushes within 50 ms | received p50 ms | received p99 ms | received max ms | missed | server RSS before → held kB | per hold | server CPU s (µs per answer) | client CPU s |\n|---|---|---|---|---|---|---|---|---|---|---|---|\n| {} | {:.1} | {:.1} | {:.2}% | {:.1} | {:.1} | {:.1} | {} | {} → {} | {:.0} B | {:.1} ({:.1}) | {:.1} |\n",
            f.holds,
            f.push_quantile_ms(0.5),
            f.push_quantile_ms(0.99),
            f.pushed_within(0.05) * 100.0,
            f.percentile(0.5),
            f.percentile(0.99),
            f.lags_ms.last().copied().unwrap_or(0.0),
            f.missed,
            f.rss_before_kb,
            f.rss_held_kb,
            f.bytes_per_hold(),
            f.cpu_seconds,
            f.cpu_us_per_answer(),
            f.client_cpu_seconds
        );
        let _ = writeln!(md, "## Signing a verification context in Wasm\n\nThe same context signed 2,000 times inside a wasm32-wasip1 module run by Node's WASI (V8, the engine Envoy runs the filter in; `bench/sign-cost`). A context is signed once per token, method and route per half lifetime; the rest reuse it.\n");
        match &self.sign_cost {
            Some(cost) => {
                let _ = writeln!(
                    md,
                    "| algorithm | µs per context | × Ed25519 |\n|---|---|---|\n| Ed25519 (`EdDSA`, used) | {:.1} | 1.00 |\n| ES256 (`p256`) | {:.1} | {:.1} |\n",
                    cost.ed25519_us,
                    cost.es256_us,
                    cost.es256_us / cost.ed25519_us.max(f64::MIN_POSITIVE)
                );
                let _ = writeln!(
                    md,
                    "Verifying, for comparison: the RSA public-key operation of an `RS256` verification (2048-bit key, e = 65537; `authz_core::rsa_verify`) takes **{:.1} µs** in the same module: the arithmetic the Wasm filter's cold path pays per new token (row 3a), the rest of that row being the Wasm floor, parsing and the hot path's work.\n",
                    cost.rsa2048_public_op_us
                );
            }
            None => {
                let _ = writeln!(md, "(not measured: Node or the module was missing)\n");
            }
        }
        let ext = self.row("native_ext_authz");
        let bc = &self.batch_cost;
        let _ = writeln!(md, "## Batch authorization for a list\n\nA list of {} resources (one resource type, a privileged rule, four tenants of which the caller's opaque token carries two) decided by one batch call to the server, against the same decisions as {} single checks through Envoy's native ext_authz (the `native_ext_authz` row: an opaque token on a privileged route). Closed loop, {} callers, {} s per transport; server CPU is its process's time over the run divided by the items decided. The batch establishes the caller once (its introspection cached, as for the single checks) and evaluates each distinct (rule, tenant) once.\n", bc.items, bc.items, self.connections, self.run_seconds);
        let _ = writeln!(
            md,
            "| | server CPU per item, µs | × less than single checks | latency of the list: p50 µs | p99 µs |\n|---|---|---|---|---|\n| {} single checks (native ext_authz) | {:.1} | 1.0 | {:.0} (100 × {:.0}, one after the other) | |",
            bc.items,
            ext.server_cpu_us,
            ext.p50_us * bc.items as f64,
            ext.p50_us
        );
        for (name, run) in [
            ("one batch, JSON (admin port)", &bc.json),
            ("one batch, gRPC", &bc.grpc),
        ] {
            let _ = writeln!(
                md,
                "| {name} | {:.2} | {:.1} | {} | {} |",
                run.server_cpu_us_per_item,
                ext.server_cpu_us / run.server_cpu_us_per_item.max(f64::MIN_POSITIVE),
                run.p50_us,
                run.p99_us
            );
        }
        let _ = writeln!(md);
        let _ = writeln!(md, "## Memory\n");
        for (name, kb) in &self.memory {
            let _ = writeln!(md, "- {name}: peak RSS {:.1} MiB", *kb as f64 / 1024.0);
        }
        let _ = writeln!(
            md,
            "\n## Targets\n\n| target | measured | holds |\n|---|---|---|"
        );
        for (target, measured, holds) in self.targets() {
            let _ = writeln!(
                md,
                "| {target} | {measured} | {} |",
                if holds { "yes" } else { "**no**" }
            );
        }
        let _ = writeln!(md, "\n## Where the time goes\n\n{}", self.floor_analysis());
        let _ = std::fs::write(docs.join("benchmarks.md"), md);
        let _ = std::fs::write(docs.join("benchmarks.svg"), self.svg());
    }

    fn svg(&self) -> String {
        let rows: Vec<(String, Row)> = ORDER
            .iter()
            .filter(|(k, _)| self.measured(k))
            .map(|(k, label)| {
                let label = if self.server_cpu_read(k) {
                    (*label).to_owned()
                } else {
                    format!("{label} (server CPU not read)")
                };
                (label, self.row(k))
            })
            .collect();
        let max = rows
            .iter()
            .map(|(_, r)| r.envoy_cpu_us + r.server_cpu_us)
            .fold(1.0f64, f64::max);
        let (width, bar_h, left) = (900.0, 26.0, 380.0);
        let height = 50.0 + rows.len() as f64 * (bar_h + 8.0);
        let mut svg = format!(
            "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{width}\" height=\"{height}\" font-family=\"sans-serif\" font-size=\"12\">\n<text x=\"10\" y=\"20\" font-size=\"14\">CPU per request, µs (Envoy dark, ext-authz-server light), medians</text>\n"
        );
        for (i, (label, r)) in rows.iter().enumerate() {
            let y = 36.0 + i as f64 * (bar_h + 8.0);
            let scale = (width - left - 80.0) / max;
            let (we, ws) = (r.envoy_cpu_us * scale, r.server_cpu_us * scale);
            let _ = writeln!(
                svg,
                "<text x=\"10\" y=\"{:.0}\">{}</text>",
                y + 17.0,
                label.replace('&', "&amp;")
            );
            let _ = writeln!(svg, "<rect x=\"{left}\" y=\"{y:.0}\" width=\"{we:.1}\" height=\"{bar_h}\" fill=\"#2b5c8a\"/>");
            let _ = writeln!(svg, "<rect x=\"{:.1}\" y=\"{y:.0}\" width=\"{ws:.1}\" height=\"{bar_h}\" fill=\"#8fb8de\"/>", left + we);
            let _ = writeln!(
                svg,
                "<text x=\"{:.1}\" y=\"{:.0}\">{:.1}</text>",
                left + we + ws + 6.0,
                y + 17.0,
                r.envoy_cpu_us + r.server_cpu_us
            );
        }
        svg.push_str("</svg>\n");
        svg
    }
}
