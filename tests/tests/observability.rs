//! deploy/observability: the Prometheus alert rules pass `promtool check rules`, and every
//! metric the rules and the Grafana dashboard query is one the code exports: the filter's (and
//! Envoy's own) as a real Envoy with this build's filter prints them on `/stats/prometheus`
//! (every filter metric is defined at zero from the start; with the shipped `stats_config` they
//! are `authz_proxy_*` families with labels, without a namespace for Wasm and under
//! `envoy_dynamicmodulescustom_` for the native module), with the labels the queries select on;
//! the server's as its code names them (a series appears on `/metrics` only once counted).

use std::collections::BTreeSet;
use std::process::Command;
use std::time::Duration;
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

/// The filter's series on `/stats/prometheus`, for either build: (family without the native
/// namespace, labels as printed) → value, `le` buckets left out.
fn filter_series(scraped: &str) -> Vec<(String, String, f64)> {
    let series = regex::Regex::new(
        r#"^(?:envoy_dynamicmodulescustom_)?(authz_proxy_[a-z0-9_]+)(?:\{([^}]*)\})? ([0-9.e+-]+|NaN)$"#,
    )
    .expect("regex");
    scraped
        .lines()
        .filter_map(|line| {
            let c = series.captures(line)?;
            let labels = c.get(2).map_or("", |m| m.as_str()).to_owned();
            let value = c[3].parse().unwrap_or(f64::NAN);
            Some((c[1].to_owned(), labels, value))
        })
        .collect()
}

/// With the shipped `stats_config`, the filter's metrics reach Prometheus as families with
/// labels (one scheme with the server's): decisions by outcome, tier and reason, per-stage
/// and per-decision latency in microseconds, and no label left in a family's name.
fn assert_filter_families_have_labels(scraped: &str) {
    let series = filter_series(scraped);
    let value = |family: &str, labels: &[&str]| -> f64 {
        series
            .iter()
            .filter(|(f, l, _)| f == family && labels.iter().all(|want| l.contains(want)))
            .map(|(_, _, v)| *v)
            .sum()
    };
    let allowed = value(
        "authz_proxy_decisions_total",
        &[
            r#"outcome="allow""#,
            r#"tier="authenticated""#,
            r#"reason="ok""#,
        ],
    );
    assert!(allowed >= 64.0, "{allowed} allows: {series:?}");
    let families: BTreeSet<&str> = series.iter().map(|(f, _, _)| f.as_str()).collect();
    for family in &families {
        assert!(
            ![
                "_outcome_",
                "_tier_",
                "_reason_",
                "_stage_",
                "_result_",
                "_kind_",
                "_action_"
            ]
            .iter()
            .any(|pair| family.contains(pair)),
            "a label left in the family name: {family}"
        );
    }
    let verified = value(
        "authz_proxy_check_microseconds_count",
        &[r#"stage="jwt_verify""#],
    );
    assert!(verified >= 1.0, "no jwt_verify sample: {families:?}");
    // One in 16 requests decided at once is timed, per worker: 64 on either of 2 workers.
    let timed = value(
        "authz_proxy_decision_microseconds_count",
        &[r#"outcome="allow""#, r#"tier="authenticated""#],
    );
    assert!(timed >= 2.0, "{timed} timed decisions");
    // The shipped bucket settings: up to 60 s (Envoy's default buckets end at 3.6e6).
    let top_bucket = series.iter().any(|(f, l, _)| {
        f == "authz_proxy_check_microseconds_bucket"
            && l.split(',').any(|pair| {
                pair.strip_prefix("le=\"")
                    .and_then(|v| v.trim_end_matches('"').parse::<f64>().ok())
                    == Some(6e7)
            })
    });
    assert!(top_bucket, "no 60 s bucket");
    for stage in ["token_parse", "token_cache"] {
        let label = format!("stage=\"{stage}\"");
        let samples = value("authz_proxy_check_microseconds_count", &[&label]);
        assert!(samples >= 2.0, "{samples} samples of {stage}");
    }
}

#[test]
fn every_metric_the_rules_and_the_dashboard_query_is_exported() {
    let build = FilterBuild::current();
    let s = CacheStack::start(&decision_cache_plugin_config(250, 1000), "");
    let token = s
        .idp
        .mint(serde_json::json!({"sub": "alice", "scope": "read", "ttl": 600, "claims": {}}));
    for _ in 0..64 {
        assert_eq!(
            s.envoy
                .status_on_new_connection("GET", "/api/items", &token),
            200
        );
    }
    // Envoy merges histograms into what it prints at its stats flush (every 5 s).
    let prometheus = format!("http://127.0.0.1:{}/stats/prometheus", s.envoy.admin_port);
    let mut scraped = String::new();
    let flushed = eventually(Duration::from_secs(12), || {
        scraped = get(&prometheus, &[]).body;
        filter_series(&scraped).iter().any(|(f, l, v)| {
            f == "authz_proxy_decision_microseconds_count" && l.contains("allow") && *v >= 2.0
        })
    });
    let printed: BTreeSet<String> = filter_series(&scraped)
        .into_iter()
        .map(|(f, _, _)| f)
        .collect();
    assert!(flushed, "no timed decision printed; families: {printed:?}");
    assert_filter_families_have_labels(&scraped);
    let series = filter_series(&scraped);
    let matcher = regex::Regex::new(
        r#"\{__name__=~"\(envoy_dynamicmodulescustom_\)\?(authz_proxy_[a-z0-9_]+)"((?:,[a-z_]+="[^"]*")*)\}"#,
    )
    .expect("regex");
    let mut unmatched = Vec::new();
    for expr in queries() {
        for c in matcher.captures_iter(&expr) {
            let wanted: Vec<&str> = c[2].split(',').filter(|l| !l.is_empty()).collect();
            let queried = family(&c[1]);
            let found = series.iter().any(|(f, labels, _)| {
                family(f) == queried && wanted.iter().all(|w| labels.contains(w))
            });
            if !found {
                unmatched.push(format!("{} (in {expr})", &c[0]));
            }
        }
    }
    assert!(
        unmatched.is_empty(),
        "queried with labels no series has:\n{}",
        unmatched.join("\n")
    );
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
