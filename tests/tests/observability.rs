//! deploy/observability: the Prometheus alert rules pass `promtool check rules`, and every
//! metric the rules and the Grafana dashboard query is one the code exports: the filter's (and
//! Envoy's own) as a real Envoy with this build's filter prints them on `/stats/prometheus`
//! (every filter metric is defined at zero from the start; Envoy prints them without their
//! namespace, `authz_…` for either build), the server's as its code names them (a series
//! appears on `/metrics` only once counted).

use std::collections::BTreeSet;
use std::process::Command;
use tests::build::FilterBuild;
use tests::*;

fn observability(file: &str) -> String {
    std::fs::read_to_string(repo_root().join("deploy/observability").join(file)).expect(file)
}

/// Every PromQL expression of the rules and the dashboard.
fn queries() -> Vec<String> {
    let rules: serde_yaml::Value =
        serde_yaml::from_str(&observability("alerts.yaml")).expect("yaml");
    let mut all: Vec<String> = rules["groups"]
        .as_sequence()
        .into_iter()
        .flatten()
        .flat_map(|g| g["rules"].as_sequence().cloned().unwrap_or_default())
        .filter_map(|r| r["expr"].as_str().map(str::to_owned))
        .collect();
    let dashboard: serde_json::Value =
        serde_json::from_str(&observability("dashboard.json")).expect("json");
    for panel in dashboard["panels"].as_array().into_iter().flatten() {
        for target in panel["targets"].as_array().into_iter().flatten() {
            all.extend(target["expr"].as_str().map(str::to_owned));
        }
    }
    assert!(all.len() > 20, "{all:?}");
    all
}

/// How the queries match a filter metric for either build: Envoy prints the Wasm filter's
/// without a namespace, the native module's under `envoy_dynamicmodulescustom_`.
const EITHER_FILTER: &str = "(envoy_dynamicmodulescustom_)?";

/// The metric names `expr` queries for `build`: identifiers starting `authz_` or `envoy_`.
fn metric_names(expr: &str, build: FilterBuild) -> BTreeSet<String> {
    let expr = expr.replace(
        EITHER_FILTER,
        match build {
            FilterBuild::Wasm => "",
            FilterBuild::Native => "envoy_dynamicmodulescustom_",
        },
    );
    let pattern = regex::Regex::new(r"\b(authz|envoy)_[a-z0-9_]+").expect("regex");
    pattern
        .find_iter(&expr)
        .map(|m| m.as_str().to_owned())
        .collect()
}

/// A histogram's series name as exported (`_bucket`, `_sum`, `_count` dropped).
fn family(name: &str) -> &str {
    ["_bucket", "_sum", "_count"]
        .iter()
        .find_map(|suffix| name.strip_suffix(suffix))
        .unwrap_or(name)
}

/// Every `"authz_…"` metric name the server's code passes to its metrics.
fn server_names() -> BTreeSet<String> {
    let pattern = regex::Regex::new(r#""(authz_[a-z0-9_]+)""#).expect("regex");
    let mut names = BTreeSet::new();
    let mut dirs = vec![repo_root().join("ext-authz-server/src")];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).expect("dir").flatten() {
            let path = entry.path();
            if path.is_dir() {
                dirs.push(path);
            } else if path.extension().is_some_and(|e| e == "rs") {
                let text = std::fs::read_to_string(&path).expect("source");
                names.extend(pattern.captures_iter(&text).map(|c| c[1].to_owned()));
            }
        }
    }
    names
}

#[test]
fn the_alert_rules_pass_promtool() {
    let path = repo_root().join("deploy/observability/alerts.yaml");
    let output = Command::new("promtool")
        .args(["check", "rules"])
        .arg(&path)
        .output()
        .expect("promtool (Debian's prometheus package; make test installs it)");
    assert!(
        output.status.success(),
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

#[test]
fn every_metric_the_rules_and_the_dashboard_query_is_exported() {
    let build = FilterBuild::current();
    let s = CacheStack::start(&decision_cache_plugin_config(250, 1000), "");
    let token = s
        .idp
        .mint(serde_json::json!({"sub": "alice", "scope": "read", "ttl": 600, "claims": {}}));
    assert_eq!(
        s.envoy
            .status_on_new_connection("GET", "/api/items", &token),
        200
    );
    let scraped = get(
        &format!("http://127.0.0.1:{}/stats/prometheus", s.envoy.admin_port),
        &[],
    )
    .body;
    let envoy_names: BTreeSet<String> = scraped
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.split(['{', ' ']).next())
        .map(|n| family(n).to_owned())
        .collect();
    let server = server_names();
    let mut missing = Vec::new();
    for expr in queries() {
        for name in metric_names(&expr, build) {
            let known = if name.starts_with("authz_") {
                server.contains(family(&name)) || envoy_names.contains(family(&name))
            } else if name.starts_with("envoy_wasm_") && build == FilterBuild::Native {
                // Envoy's own Wasm runtime metrics: not there without a Wasm filter.
                true
            } else {
                envoy_names.contains(family(&name))
            };
            if !known {
                missing.push(format!("{name} (in {expr})"));
            }
        }
    }
    let filter_names: Vec<&String> = envoy_names.iter().filter(|n| n.contains("authz")).collect();
    assert!(
        missing.is_empty(),
        "queried but not exported:\n{}\nEnvoy exports: {filter_names:?}",
        missing.join("\n")
    );
}
