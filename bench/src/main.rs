//! `make bench`: every scenario in one run, interleaved and repeated, medians reported as
//! ratios to the no-auth baseline of the same run; writes `docs/benchmarks.md` and
//! `docs/benchmarks.svg`. Loopback only, bounded in time (a few minutes on 2 cores).
//!
//! Scenarios (one Envoy, one listener each): no auth (`direct_response`, proxied), native
//! `jwt_authn` with and without its cache, the Wasm filter's local JWT path hot (token cache)
//! and cold (signature verified on every request), the same for the native filter (the Envoy
//! dynamic module, one core per process) and its privileged in-proxy hit, a privileged route through the filter with
//! an in-proxy cache hit and with a miss (server cache hit), and through Envoy's native
//! `ext_authz` filter to the same server (with an opaque token the server introspects, cached,
//! and with a JWT access token the server verifies itself against the IdP's keys). Then the
//! server alone under gRPC load, a fixed-rate
//! open-loop run, and the introspection amplification run. Then, on stacks of their own,
//! revocation propagation, the change feed under hostile use (`feed_load`) and the cost of
//! signing a verification context in Wasm (`sign_cost`).

mod batch_cost;
mod envoy_config;
mod feed_load;
mod fleet;
mod load;
mod propagation;
mod report;
mod sign_cost;

use load::{closed_loop, fixed_rate, RunStats, Target};
use serde_json::json;
use std::process::ExitCode;
use std::time::{Duration, Instant};
use tests::*;

/// CPU seconds (user + system) a process has used so far.
fn cpu_seconds(pid: u32) -> f64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return 0.0;
    };
    let fields: Vec<&str> = stat
        .rsplit(')')
        .next()
        .unwrap_or("")
        .split_whitespace()
        .collect();
    let ticks: u64 = fields.get(11).and_then(|v| v.parse().ok()).unwrap_or(0)
        + fields.get(12).and_then(|v| v.parse().ok()).unwrap_or(0);
    ticks as f64 / 100.0
}

/// Peak resident memory (kB) of a process.
fn peak_rss_kb(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

/// One measured run of one scenario.
#[derive(Debug, Clone)]
pub struct Measured {
    pub scenario: String,
    pub stats: RunStats,
    /// CPU µs per request of Envoy and of the server.
    pub envoy_cpu_us: f64,
    pub server_cpu_us: f64,
}

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> ExitCode {
    // A policy server of the user's, measured beside ours (`BENCH_EXTERNAL_EXT_AUTHZ`).
    let external = match envoy_config::External::from_env() {
        Ok(external) => external,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(2);
        }
    };
    let external_pid = external.as_ref().map_or(0, |e| e.pid);
    let run_seconds = env_u64("BENCH_SECONDS", 3);
    let repetitions = env_u64("BENCH_REPS", 3);
    let connections = env_u64("BENCH_CONNECTIONS", 16) as usize;
    let started = Instant::now();
    // The bench's Envoy has Wasm and native listeners side by side: its config is not rewritten
    // for `FILTER`.
    tests::build::force(tests::build::FilterBuild::Wasm);

    let idp = DevIdp::start(&[]);
    let echo = Echo::start();
    // The server verifies JWT access tokens against the dev IdP's keys; opaque tokens are
    // introspected.
    let server = AuthzServerProcess::start(&server_yaml(
        idp.port,
        &format!(
            "epochs_token: \"{EPOCHS_TOKEN}\"\ncache: {{max_entries: {SERVER_FLOOD_CAP}}}\ntoken:\n  issuer: {ISSUER}\n  audiences: [{AUDIENCE}]\n  jwks_uri: http://127.0.0.1:{{IDP_PORT}}/.well-known/jwks.json\n{}",
            batch_cost::server_yaml()
        ),
    ));
    let wasm = wasm_path().display().to_string();
    let mut listeners = envoy_config::listeners(&wasm, idp.port, EPOCHS_TOKEN);
    listeners.extend(external.as_ref().map(envoy_config::External::listener));
    let yaml = envoy_config::render(
        &listeners,
        idp.port,
        echo.port,
        server.grpc_port,
        server.admin_port,
        external.as_ref(),
    );
    let envoy = Envoy::start_rendered(&yaml);
    let envoy_pid = envoy.pid().unwrap_or(0);
    let server_pid = server.pid().unwrap_or(0);

    let jwt = idp.mint(json!({"sub": "bench", "scope": "read admin"}));
    let opaque = idp.mint(json!({"sub": "bench-admin", "scope": "read admin", "opaque": true}));
    // The batch's caller: the same kind of token, with two of the four tenants its list spans.
    let lister = idp.mint(
        json!({"sub": "bench-lister", "scope": "read admin", "opaque": true,
        "claims": {"tenant": ["acme", "globex"]}}),
    );
    let batch_cost_run = || {
        batch_cost::run(
            server.grpc_port,
            server.admin_port,
            server.pid().unwrap_or(0),
            &lister,
            connections,
            Duration::from_secs(run_seconds),
        )
    };
    let scenario_target = |name: &str| -> Target {
        // `native_ext_authz_jwt` is the native ext_authz listener with a JWT access token.
        let listener = name.strip_suffix("_jwt").unwrap_or(name);
        let port = listener_port(envoy.admin_port, listener)
            .unwrap_or_else(|| panic!("no listener {listener}"));
        let (path, token) = match name {
            "direct" | "proxy" => ("/api/items", None),
            "native_ext_authz_jwt" => ("/admin/users", Some(jwt.clone())),
            envoy_config::EXTERNAL_LISTENER => (
                "/admin/users",
                // The token the user's server accepts, or a dev IdP JWT (a server that
                // verifies against the dev IdP's keys).
                Some(
                    external
                        .as_ref()
                        .and_then(|e| e.bearer.clone())
                        .unwrap_or_else(|| jwt.clone()),
                ),
            ),
            n if n.starts_with("filter_write") => ("/orders/1", Some(jwt.clone())),
            "filter_background" => ("/news/1", Some(jwt.clone())),
            n if n.contains("privileged") || n == "native_ext_authz" => {
                ("/admin/users", Some(opaque.clone()))
            }
            _ => ("/api/items", Some(jwt.clone())),
        };
        Target {
            url: format!("http://127.0.0.1:{port}{path}"),
            bearer_tokens: token.into_iter().collect(),
        }
    };
    // `BENCH_ONLY=proxy,filter_hot` runs only those scenarios and prints their medians (for
    // quick before/after comparisons while optimising; docs are not rewritten).
    let only: Option<Vec<String>> = std::env::var("BENCH_ONLY")
        .ok()
        .map(|v| v.split(',').map(|s| s.trim().to_owned()).collect());
    let names: Vec<&str> = listeners
        .iter()
        .map(|l| l.name)
        .filter(|n| *n != "filter_flood")
        .chain(std::iter::once("native_ext_authz_jwt"))
        .filter(|n| only.as_ref().is_none_or(|o| o.iter().any(|x| x == n)))
        .collect();
    // Warm every path (keys fetched, caches filled) and check it answers 200.
    for name in &names {
        let warm = closed_loop(&scenario_target(name), 2, Duration::from_millis(300)).await;
        let failed = warm.requests == 0 || warm.non_2xx > 0 || warm.errors > 0;
        if *name == envoy_config::EXTERNAL_LISTENER && failed {
            eprintln!(
                "{name}: {} of {} warm-up requests were not answered 200 ({} failed to send): the external ext_authz server denied GET /admin/users with the bench's token (403: its policy, or BENCH_EXTERNAL_EXT_AUTHZ_BEARER unset), or Envoy could not call it (503: address, DNS, or a TLS-only listener: the bench calls plaintext HTTP/2). See README, \"Comparing with your policy server\".",
                warm.non_2xx, warm.requests, warm.errors
            );
            // Returning (not exiting) stops Envoy, the server and the IdP on the way out.
            return ExitCode::from(2);
        }
        assert!(
            warm.requests > 0 && warm.non_2xx == 0 && warm.errors == 0,
            "{name} does not answer 200: {warm:?}"
        );
    }

    let mut results: Vec<Measured> = Vec::new();
    for rep in 0..repetitions {
        // Interleave: rotate the order each repetition.
        let mut order = names.clone();
        order.rotate_left(rep as usize % names.len().max(1));
        for name in order {
            let target = scenario_target(name);
            // The external scenario's server is the user's (its CPU only when its pid is given).
            let server_pid = if name == envoy_config::EXTERNAL_LISTENER {
                external_pid
            } else {
                server_pid
            };
            let (e0, s0) = (cpu_seconds(envoy_pid), cpu_seconds(server_pid));
            let stats = closed_loop(&target, connections, Duration::from_secs(run_seconds)).await;
            let (e1, s1) = (cpu_seconds(envoy_pid), cpu_seconds(server_pid));
            let per = |d: f64| d * 1e6 / stats.requests.max(1) as f64;
            eprintln!(
                "rep {rep} {name}: {:.0} rps p50 {} µs p99 {} µs",
                stats.rps(),
                stats.percentile_us(0.5),
                stats.percentile_us(0.99)
            );
            results.push(Measured {
                scenario: name.to_owned(),
                envoy_cpu_us: per(e1 - e0),
                server_cpu_us: per(s1 - s0),
                stats,
            });
        }
    }

    if only.is_some() {
        if only
            .as_ref()
            .is_some_and(|o| o.iter().any(|x| x == "propagation"))
        {
            let count = env_u64("BENCH_REVOCATIONS", 200) as usize;
            for (mode, push) in [("pushed", true), ("polled", false)] {
                let p = propagation::measure(mode, push, count);
                println!(
                    "propagation {mode}: p50 {:.1} ms p99 {:.1} ms max {:.1} ms over {}; filter: {}",
                    p.percentile(0.5),
                    p.percentile(0.99),
                    p.max(),
                    p.lags_ms.len(),
                    p.filter_histogram
                );
            }
        }
        if only
            .as_ref()
            .is_some_and(|o| o.iter().any(|x| x == "feed_load"))
        {
            feed_load::run(run_seconds).await;
        }
        if only
            .as_ref()
            .is_some_and(|o| o.iter().any(|x| x == "fleet"))
        {
            tokio::task::spawn_blocking(fleet::run_default).await.ok();
        }
        if only
            .as_ref()
            .is_some_and(|o| o.iter().any(|x| x == "sign_cost"))
        {
            sign_cost::run(&repo_root());
        }
        if only
            .as_ref()
            .is_some_and(|o| o.iter().any(|x| x == "batch_cost"))
        {
            let cost = batch_cost_run().await;
            println!("batch_cost ({} items): {cost:?}", cost.items);
        }
        for name in &names {
            let row = report::row_of(&results, name);
            println!(
                "{name}: {:.0} rps, p50 {:.0} µs, envoy {:.1} µs/req, server {:.1} µs/req",
                row.rps, row.p50_us, row.envoy_cpu_us, row.server_cpu_us
            );
        }
        return ExitCode::SUCCESS;
    }

    // Fixed-rate (open loop) on the baseline and the two privileged paths.
    let rate = env_u64("BENCH_RATE", 1000);
    let mut open_loop = Vec::new();
    for name in ["proxy", "filter_privileged_cached", "native_ext_authz"] {
        let stats = fixed_rate(
            &scenario_target(name),
            rate,
            Duration::from_secs(run_seconds),
        )
        .await;
        eprintln!(
            "fixed rate {rate}/s {name}: p50 {} µs p99 {} µs",
            stats.percentile_us(0.5),
            stats.percentile_us(0.99)
        );
        open_loop.push((name.to_owned(), stats));
    }

    // The server alone under gRPC load.
    let server_alone = server_grpc_load(
        server.grpc_port,
        &opaque,
        connections,
        Duration::from_secs(run_seconds),
        server_pid,
    )
    .await;
    eprintln!(
        "server alone: {:.0} rps, {:.1} µs cpu/check",
        server_alone.0.rps(),
        server_alone.1
    );

    // A list of 100 resources in one batch, against the same decisions as single checks.
    let batch_cost = batch_cost_run().await;
    eprintln!("batch: {batch_cost:?}");

    // Introspection amplification: N requests over K tokens with the IdP adding 20 ms.
    let amplification = amplification_run(
        &idp,
        &envoy,
        &scenario_target("native_ext_authz"),
        run_seconds,
    )
    .await;

    // A unique-token flood against small caches: memory must stay bounded by the caps.
    let flood = memory_flood(&idp, &envoy, &server, envoy_pid).await;

    // Revocation propagation to every worker: pushed, then with the push off (polling).
    let count = env_u64("BENCH_REVOCATIONS", 200) as usize;
    let propagation = vec![
        propagation::measure("pushed (held requests, defaults)", true, count),
        propagation::measure("polled every 250 ms (push off)", false, count),
    ];
    for p in &propagation {
        eprintln!(
            "propagation {}: p50 {:.1} ms p99 {:.1} ms max {:.1} ms over {}",
            p.mode,
            p.percentile(0.5),
            p.percentile(0.99),
            p.max(),
            p.lags_ms.len()
        );
    }

    // The change feed looped on by 50 clients, on a 200k-revocation state.
    let feed_load = feed_load::run(run_seconds).await;
    // The feed at fleet scale: held requests from a simulated fleet, a revocation every 100 ms.
    let fleet = tokio::task::spawn_blocking(fleet::run_default)
        .await
        .unwrap_or_default();
    // Signing a verification context in Wasm: the algorithm's cost.
    let sign_cost = sign_cost::run(&repo_root());

    let memory = vec![
        ("envoy".to_owned(), peak_rss_kb(envoy_pid)),
        ("ext-authz-server".to_owned(), peak_rss_kb(server_pid)),
    ];
    let report = report::Report {
        results,
        open_loop,
        rate,
        server_alone,
        amplification,
        memory,
        flood,
        propagation,
        feed_load,
        fleet,
        sign_cost,
        batch_cost,
        external,
        run_seconds,
        repetitions,
        connections,
        elapsed: started.elapsed(),
    };
    report.write(&repo_root().join("docs"));
    println!("{}", report.summary());
    ExitCode::SUCCESS
}

/// A Check of `GET /admin/users` on the privileged tier with `token`, as Envoy sends it.
fn privileged_check_request(token: &str) -> envoy_types::ext_authz::v3::pb::CheckRequest {
    use envoy_types::ext_authz::v3::pb::CheckRequest;
    use envoy_types::pb::envoy::service::auth::v3::attribute_context::{
        HttpRequest, Request as AttrRequest,
    };
    use envoy_types::pb::envoy::service::auth::v3::AttributeContext;
    CheckRequest {
        attributes: Some(AttributeContext {
            request: Some(AttrRequest {
                http: Some(HttpRequest {
                    method: "GET".into(),
                    path: "/admin/users".into(),
                    headers: [("authorization".to_owned(), format!("Bearer {token}"))]
                        .into_iter()
                        .collect(),
                    ..HttpRequest::default()
                }),
                ..AttrRequest::default()
            }),
            context_extensions: [("tier".to_owned(), "privileged".to_owned())]
                .into_iter()
                .collect(),
            ..AttributeContext::default()
        }),
    }
}

/// A gRPC client of the server's Check, if it connects.
async fn check_client(
    port: u16,
) -> Option<
    envoy_types::pb::envoy::service::auth::v3::authorization_client::AuthorizationClient<
        tonic::transport::Channel,
    >,
> {
    use envoy_types::pb::envoy::service::auth::v3::authorization_client::AuthorizationClient;
    AuthorizationClient::connect(format!("http://127.0.0.1:{port}"))
        .await
        .ok()
}

/// Drives the server's Check directly with `connections` concurrent callers; returns the run
/// and the server's CPU µs per check.
async fn server_grpc_load(
    port: u16,
    token: &str,
    connections: usize,
    duration: Duration,
    server_pid: u32,
) -> (RunStats, f64) {
    let Some(client) = check_client(port).await else {
        return (RunStats::default(), 0.0);
    };
    let request = privileged_check_request(token);
    let cpu0 = cpu_seconds(server_pid);
    let total = load::closed_loop_calls(connections, duration, move |_| {
        let (mut client, request) = (client.clone(), request.clone());
        async move { client.check(request).await.map(|_| 200).map_err(|_| ()) }
    })
    .await;
    let cpu = (cpu_seconds(server_pid) - cpu0) * 1e6 / total.requests.max(1) as f64;
    (total, cpu)
}

/// Result of the amplification run.
#[derive(Debug, Clone)]
pub struct Amplification {
    pub tokens: usize,
    pub requests: u64,
    pub idp_calls: u64,
    pub seconds: u64,
    pub p99_us: u64,
    pub slow_requests: u64,
}

/// K hot tokens, N requests through native ext_authz (no proxy cache), IdP +20 ms.
async fn amplification_run(
    idp: &DevIdp,
    _envoy: &Envoy,
    base: &Target,
    seconds: u64,
) -> Amplification {
    let tokens: Vec<String> = (0..20)
        .map(|i| {
            idp.mint(json!({"sub": format!("amp-{i}"), "scope": "read admin", "opaque": true}))
        })
        .collect();
    idp.set_introspection("ok", 20);
    let target = Target {
        url: base.url.clone(),
        bearer_tokens: tokens.clone(),
    };
    // Warm: one introspection per token.
    let _ = closed_loop(&target, 4, Duration::from_millis(500)).await;
    let calls = || idp.stat("introspection_calls") + idp.stat("batch_calls");
    let before = calls();
    let stats = closed_loop(&target, 8, Duration::from_secs(seconds * 2)).await;
    let after = calls();
    idp.set_introspection("ok", 0);
    let slow = stats.latencies_us.iter().filter(|l| **l >= 20_000).count() as u64;
    Amplification {
        tokens: tokens.len(),
        requests: stats.requests,
        idp_calls: after - before,
        seconds: seconds * 2,
        p99_us: stats.percentile_us(0.99),
        slow_requests: slow,
    }
}

/// The server's introspection cache cap in the benchmark.
const SERVER_FLOOD_CAP: u64 = 1_000;

/// Result of the unique-token flood.
#[derive(Debug, Clone, Default)]
pub struct Flood {
    pub jwt_tokens: usize,
    pub opaque_tokens: usize,
    pub requests: u64,
    pub envoy_rss_before_kb: u64,
    pub envoy_rss_after_kb: u64,
    pub filter_cache_entries: u64,
    pub filter_cap: u64,
    pub server_cache_entries: u64,
    pub server_cap: u64,
}

fn rss_kb(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

/// Unique JWTs on the local path and unique opaque tokens on the privileged path, sent through
/// the small-cache listener; reports cache entries against the caps and Envoy's RSS.
async fn memory_flood(
    idp: &DevIdp,
    envoy: &Envoy,
    server: &AuthzServerProcess,
    envoy_pid: u32,
) -> Flood {
    let count = env_u64("BENCH_FLOOD_TOKENS", 3_000) as usize;
    let port = listener_port(envoy.admin_port, "filter_flood").unwrap_or(0);
    let jwts: Vec<String> = (0..count)
        .map(|i| idp.mint(json!({"sub": format!("flood-{i}"), "scope": "read", "alg": "ES256"})))
        .collect();
    let opaque: Vec<String> = (0..count)
        .map(|i| {
            idp.mint(json!({"sub": format!("flood-{i}"), "scope": "read admin", "opaque": true}))
        })
        .collect();
    let before = rss_kb(envoy_pid);
    let mut requests = 0;
    for (path, tokens) in [("/api/items", &jwts), ("/admin/users", &opaque)] {
        let target = Target {
            url: format!("http://127.0.0.1:{port}{path}"),
            bearer_tokens: tokens.clone(),
        };
        requests += closed_loop(&target, 8, Duration::from_secs(4))
            .await
            .requests;
    }
    let server_entries = server.metric("authz_cache_entries") as u64;
    let flood = Flood {
        jwt_tokens: count,
        opaque_tokens: count,
        requests,
        envoy_rss_before_kb: before,
        envoy_rss_after_kb: rss_kb(envoy_pid),
        filter_cache_entries: envoy.stat("wasmcustom.authz_proxy.cache_entries"),
        filter_cap: envoy_config::FLOOD_CAP,
        server_cache_entries: server_entries,
        server_cap: SERVER_FLOOD_CAP,
    };
    eprintln!("flood: {flood:?}");
    flood
}
