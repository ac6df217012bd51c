//! Canary and dry-run of a route policy (`/admin/canary`), end to end through the real Envoy
//! (either build), filter and server: a candidate that tightens one rule is decided beside the
//! active policy on a sticky share of callers, counted only on that route and only for that
//! share, enforced nowhere; promoted, it is enforced by every worker within the feed's bound;
//! reverted, the configured routes are enforced again. The server runs the same candidate on
//! the requests it decides.

use authz_core::canary::Canary;
use serde_json::{json, Value};
use std::time::{Duration, Instant};
use tests::*;

/// The routes of both the filter and the server (as `authz-config` renders one policy into
/// both): `reports` decided by the filter, `admin` by the server. `reports_scopes` and
/// `admin_scopes` are what each requires.
fn routes(reports_scopes: &[&str], admin_scopes: &[&str]) -> Value {
    json!([
        {"name": "reports", "match": {"prefix": "/reports/"}, "tier": "authenticated",
         "require": {"scopes": reports_scopes}},
        {"name": "admin", "match": {"prefix": "/admin/"}, "tier": "privileged",
         "require": {"scopes": admin_scopes}}
    ])
}

fn stack() -> CacheStack {
    let mut plugin = decision_cache_plugin_config(250, 1000);
    plugin["routes"] = routes(&[], &["admin"]);
    let server_extra = format!(
        "policy:\n  routes: {}\n  default: {{tier: authenticated}}\n",
        routes(&[], &["admin"])
    );
    CacheStack::start(&plugin, &server_extra)
}

fn candidate(id: &str, reports_scopes: &[&str], admin_scopes: &[&str]) -> Value {
    json!({"id": id, "routes": routes(reports_scopes, admin_scopes),
           "default": {"tier": "authenticated"}})
}

fn canary_call(s: &CacheStack, body: Value) -> Reply {
    let authorization = format!("Bearer {ADMIN_TOKEN}");
    request(
        "POST",
        &format!("http://127.0.0.1:{}/admin/canary", s.server.admin_port),
        &[
            ("content-type", "application/json"),
            ("authorization", &authorization),
        ],
        Some(&body.to_string()),
    )
}

fn canary_action(s: &CacheStack, body: Value) -> Value {
    let reply = canary_call(s, body.clone());
    assert_eq!(reply.status, 200, "{body}: {}", reply.body);
    reply.json()
}

fn token(s: &CacheStack, sub: &str, scope: &str) -> String {
    s.idp
        .mint(json!({"sub": sub, "scope": scope, "ttl": 600, "claims": {}}))
}

/// The filter's canary counters: `compared`, or a disagreement's kind.
fn stat(s: &CacheStack, name: &str) -> u64 {
    match name.strip_prefix("disagreements.") {
        Some(kind) => s.envoy.metric(&format!(
            "authz_proxy_canary_disagreements_total{{kind=\"{kind}\"}}"
        )),
        None => s.envoy.metric(&format!("authz_proxy_canary_{name}_total")),
    }
}

/// Waits until every worker runs the candidate: 16 requests in a row of a sampled caller, on
/// new connections, are all compared.
fn running_everywhere(s: &CacheStack, sampled_token: &str) -> bool {
    eventually(Duration::from_secs(5), || {
        let before = stat(s, "compared");
        for _ in 0..16 {
            s.envoy
                .status_on_new_connection("GET", "/reports/q3", sampled_token);
        }
        stat(s, "compared") - before == 16
    })
}

#[test]
fn a_tightened_rule_disagrees_only_on_its_route_and_share_until_promoted_everywhere() {
    let s = stack();
    let start = json!({"action": "start", "by": "alice", "canary": {
        "candidate": candidate("reports-v2", &["reports"], &["admin"]),
        "per_million": 300_000}});
    let started = canary_action(&s, start.clone());
    assert_eq!(
        started["canary"]["candidate"]["id"], "reports-v2",
        "{started}"
    );
    let canary: Canary = serde_json::from_value(started["canary"].clone()).unwrap();
    let subjects: Vec<String> = (0..40).map(|i| format!("user-{i}")).collect();
    let sampled: Vec<&String> = subjects.iter().filter(|s| canary.samples(s)).collect();
    assert!(
        (4..=24).contains(&sampled.len()),
        "{} of 40 in the canary",
        sampled.len()
    );
    assert!(running_everywhere(&s, &token(&s, sampled[0], "read admin")));

    let (compared, denies) = (
        stat(&s, "compared"),
        stat(&s, "disagreements.candidate_denies"),
    );
    for sub in &subjects {
        let t = token(&s, sub, "read admin");
        for path in ["/reports/q3", "/reports/q4", "/news/today"] {
            // Enforced by the active policy: nothing is refused.
            assert_eq!(
                s.envoy.status_on_new_connection("GET", path, &t),
                200,
                "{path}"
            );
        }
    }
    let n = sampled.len() as u64;
    assert_eq!(
        stat(&s, "compared") - compared,
        3 * n,
        "the share, every time"
    );
    assert_eq!(
        stat(&s, "disagreements.candidate_denies") - denies,
        2 * n,
        "only the tightened route"
    );
    for other in ["candidate_allows", "other_denial", "tier"] {
        assert_eq!(stat(&s, &format!("disagreements.{other}")), 0, "{other}");
    }
    let log = s.envoy.log();
    let lines: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("canary_disagreement"))
        .collect();
    assert!(!lines.is_empty());
    assert!(lines
        .iter()
        .all(|l| l.contains("kind=candidate_denies route=reports ")
            && l.contains("active=allow")
            && l.contains("candidate=deny:insufficient_scope")));
    // The server decides admin with the same candidate: compared there, no disagreement.
    let admin = token(&s, sampled[0], "read admin");
    assert_eq!(
        s.envoy
            .status_on_new_connection("GET", "/admin/users", &admin),
        200
    );
    assert!(s.server.metric("authz_canary_compared_total") >= 1.0);
    let scraped = get(
        &format!("http://127.0.0.1:{}/metrics", s.server.admin_port),
        &[],
    )
    .body;
    assert!(
        scraped.contains("authz_canary_compared_total")
            && !scraped.contains("authz_canary_disagreements_total{"),
        "{scraped}"
    );
    // One id, one set of routes: the id of the running candidate cannot be reused for others.
    let mut other = start.clone();
    other["canary"]["candidate"]["routes"] = routes(&["other"], &["admin"]);
    assert_eq!(canary_call(&s, other).status, 409);

    // Promoted: enforced by every worker within the feed's bound.
    let outsider = token(&s, "user-out", "read");
    let granted = token(&s, "user-in", "read reports");
    let asked = Instant::now();
    canary_action(
        &s,
        json!({"action": "promote", "id": "reports-v2", "by": "alice"}),
    );
    assert!(
        eventually(Duration::from_secs(3), || (0..16).all(|_| s
            .envoy
            .status_on_new_connection("GET", "/reports/q3", &outsider)
            == 403)),
        "the promoted rule is enforced everywhere"
    );
    let took = asked.elapsed();
    assert!(took < Duration::from_secs(3), "{took:?}");
    assert_eq!(
        s.envoy
            .status_on_new_connection("GET", "/reports/q3", &granted),
        200
    );
    let compared = stat(&s, "compared");
    s.envoy
        .status_on_new_connection("GET", "/reports/q3", &granted);
    assert_eq!(stat(&s, "compared"), compared, "the canary ended with it");
    let state = get(
        &format!("http://127.0.0.1:{}/admin/canary", s.server.admin_port),
        &[("authorization", &format!("Bearer {ADMIN_TOKEN}"))],
    )
    .json();
    assert_eq!(state["enforced"], "reports-v2", "{state}");
    assert!(state["canary"].is_null());

    // Reverted: the configured rule again.
    canary_action(&s, json!({"action": "revert", "by": "alice"}));
    assert!(eventually(Duration::from_secs(3), || (0..16).all(|_| s
        .envoy
        .status_on_new_connection("GET", "/reports/q3", &outsider)
        == 200)));
    // Nothing left to abandon or revert; a malformed candidate is refused with its problems.
    assert_eq!(
        canary_call(&s, json!({"action": "abandon", "by": "alice"})).status,
        409
    );
    let bad = canary_call(
        &s,
        json!({"action": "start", "by": "alice", "canary": {
            "candidate": {"id": "x", "routes": [{"name": "r", "match": {"prefix": "/r"}, "tier": "gold"}],
                          "default": {"tier": "authenticated"}},
            "per_million": 0}}),
    );
    assert_eq!(bad.status, 400);
    assert!(
        bad.body.contains("per_million") && bad.body.contains("gold"),
        "{}",
        bad.body
    );
    let unauthenticated = request(
        "POST",
        &format!("http://127.0.0.1:{}/admin/canary", s.server.admin_port),
        &[("content-type", "application/json")],
        Some(&start.to_string()),
    );
    assert_eq!(unauthenticated.status, 401);
}

#[test]
fn the_server_runs_the_candidate_on_the_requests_it_decides() {
    let s = stack();
    canary_action(
        &s,
        json!({"action": "start", "by": "bob", "canary": {
            "candidate": candidate("admin-v2", &[], &["admin", "admin:write"]),
            "per_million": 1_000_000}}),
    );
    let reader = token(&s, "carol", "read admin");
    let series = "authz_canary_disagreements_total{route=\"admin\",kind=\"candidate_denies\",reason=\"insufficient_scope\"}";
    assert!(eventually(Duration::from_secs(3), || {
        // Decided by the server (its answer may be reused by the filter for a while: a new
        // caller each time).
        let t = token(&s, &format!("carol-{}", rand_suffix()), "read admin");
        assert_eq!(
            s.envoy.status_on_new_connection("GET", "/admin/users", &t),
            200
        );
        s.server.metric(series) >= 1.0
    }));
    assert_eq!(
        s.envoy
            .status_on_new_connection("GET", "/reports/q3", &reader),
        200
    );
    assert!(s.server.logged("canary_disagreement"));
    assert_eq!(
        stat(&s, "disagreements.candidate_denies"),
        0,
        "the filter's routes agree"
    );
    // Abandoned: nothing more is compared.
    canary_action(&s, json!({"action": "abandon", "by": "bob"}));
    let compared = s.server.metric("authz_canary_compared_total");
    let t = token(&s, "dave", "read admin");
    assert_eq!(
        s.envoy.status_on_new_connection("GET", "/admin/users", &t),
        200
    );
    assert_eq!(s.server.metric("authz_canary_compared_total"), compared);
    assert_eq!(
        s.envoy.status_on_new_connection("GET", "/admin/users", &t),
        200,
        "never enforced"
    );

    // Run again and promoted: the server enforces it (and every filter drops the decisions
    // it cached under the other routes).
    canary_action(
        &s,
        json!({"action": "start", "by": "bob", "canary": {
            "candidate": candidate("admin-v2", &[], &["admin", "admin:write"]),
            "per_million": 1}}),
    );
    assert!(s.privileged_reused(&t), "cached by the filter");
    canary_action(
        &s,
        json!({"action": "promote", "id": "admin-v2", "by": "bob"}),
    );
    assert!(eventually(Duration::from_secs(3), || (0..16).all(|_| s
        .envoy
        .status_on_new_connection("GET", "/admin/users", &t)
        == 403)));
    let writer = token(&s, "erin", "read admin admin:write");
    assert_eq!(
        s.envoy
            .status_on_new_connection("GET", "/admin/users", &writer),
        200
    );
    assert!(s.server.logged("route_policy_enforced"));
}

fn rand_suffix() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    N.fetch_add(1, Ordering::Relaxed)
}
