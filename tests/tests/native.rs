//! End-to-end tests of what only the native filter (the Envoy dynamic module) does: one core
//! per Envoy process, so one JWKS fetch and one token cache serve every worker thread (one
//! change-feed request per Envoy holds for both builds: `freshness.rs`). The rest of the filter's behaviour is tested for both builds by the
//! other suites (`FILTER=native`).

use serde_json::json;
use std::time::Duration;
use tests::build::{self, force, FilterBuild};
use tests::*;

fn native() {
    force(FilterBuild::Native);
}

/// How many downstream connections each of Envoy's workers accepted on the ingress listener.
fn connections_per_worker(envoy: &Envoy) -> Vec<u64> {
    let stats = envoy.stats_matching("downstream_cx_total");
    let mut per_worker: Vec<u64> = stats
        .lines()
        .filter(|line| line.starts_with("listener.127.0.0.1_") && line.contains(".worker_"))
        .filter_map(|line| line.rsplit(": ").next()?.trim().parse().ok())
        .collect();
    per_worker.sort_unstable();
    per_worker
}

#[test]
fn the_module_reports_its_abi_and_one_process_fetches_keys_once_and_verifies_a_token_once() {
    native();
    let idp = DevIdp::start(&[]);
    let echo = Echo::start();
    // Four workers: whatever their number, the process fetches and verifies once.
    let config = render_e2e(&plugin_config(), idp.port, echo.port);
    let envoy = Envoy::start_rendered_with(&config, &[], 4);
    let log = envoy.log();
    assert!(
        log.contains("Dynamic module ABI version v0.2.0 matched"),
        "{log}"
    );
    assert!(
        log.contains("jwt_authz (native, ABI v0.2.0) configured"),
        "{log}"
    );
    // Keys first (a request that waits for them looks its token up once more when they come).
    assert!(eventually(Duration::from_secs(5), || envoy
        .metric("authz_proxy_jwks_fetches_total{result=\"ok\"}")
        >= 1));
    let token = idp.mint(json!({"scope": "read"}));
    for _ in 0..40 {
        // New connections, spread over the workers.
        let reply = envoy.get("/api/items", Some(&token), &[("connection", "close")]);
        assert_eq!(reply.status, 200, "{}", reply.body);
    }
    let per_worker = connections_per_worker(&envoy);
    assert!(
        per_worker.len() == 4 && per_worker.iter().filter(|n| **n > 0).count() >= 3,
        "the workers served: {per_worker:?}"
    );
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(idp.jwks_requests(), 1, "one key fetch for the process");
    // One verification: the other 39 requests (on every worker) hit the process's cache.
    assert_eq!(
        envoy.metric("authz_proxy_token_cache_lookups_total{result=\"miss\"}"),
        1
    );
    assert_eq!(
        envoy.metric("authz_proxy_token_cache_lookups_total{result=\"hit\"}"),
        39
    );
}

/// The header of `envoy/dev.native.yaml`, which is `envoy/dev.yaml` rewritten for the module.
const DEV_NATIVE_HEADER: &str = "\
# Envoy config for `FILTER=native make run`: envoy/dev.yaml with the native filter (the Envoy
# dynamic module libauthz_native.so, found through ENVOY_DYNAMIC_MODULES_SEARCH_PATH, which
# `make run` sets to target/release) in place of the Wasm filter, the same configuration string,
# and the routes that switch the filter off naming its entry. Generated from envoy/dev.yaml by
# `UPDATE_DEV_NATIVE=1 cargo test -p tests --test native`; edit dev.yaml, not this file.
";

#[test]
fn the_native_dev_config_is_dev_yaml_for_the_module() {
    let root = repo_root().join("envoy");
    let dev = std::fs::read_to_string(root.join("dev.yaml")).expect("read dev.yaml");
    let derived = build::for_build(&dev, FilterBuild::Native);
    let expected = format!("{DEV_NATIVE_HEADER}{derived}");
    let path = root.join("dev.native.yaml");
    if std::env::var_os("UPDATE_DEV_NATIVE").is_some() {
        std::fs::write(&path, &expected).expect("write dev.native.yaml");
    }
    let committed = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        committed == expected,
        "envoy/dev.native.yaml is not envoy/dev.yaml for the module: run UPDATE_DEV_NATIVE=1 cargo test -p tests --test native"
    );
    assert!(derived.contains("authz_native") && !derived.contains("wasm_filter.wasm"));
}
