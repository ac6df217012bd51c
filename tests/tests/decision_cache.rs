//! End-to-end tests of the in-proxy decision cache: the Wasm filter calls the ext-authz-server
//! itself (gRPC Check), caches its decisions per worker, and drops them when the server says
//! something changed.

use serde_json::json;
use std::time::{Duration, Instant};
use tests::*;

fn admin_token(s: &CacheStack, sub: &str) -> String {
    s.idp
        .mint(json!({"sub": sub, "scope": "read admin", "opaque": true, "acr": "mfa"}))
}

fn server_allows(s: &CacheStack) -> u64 {
    s.server
        .metric("authz_decisions_total{outcome=\"allow\",reason=\"ok\",tier=\"privileged\"}")
        as u64
}

#[test]
fn privileged_decisions_come_from_the_server_once_then_from_the_proxy() {
    let s = CacheStack::start(&decision_cache_plugin_config(250, 1000), "");
    let token = admin_token(&s, "alice");
    for i in 0..12 {
        let reply = s.envoy.get(
            "/admin/users",
            Some(&token),
            &[("x-auth-subject", "root"), ("connection", "close")],
        );
        assert_eq!(reply.status, 200, "request {i}: {}", reply.body);
        let headers = &reply.json()["headers"];
        assert_eq!(headers["x-auth-subject"], "alice");
        assert_eq!(headers["x-auth-tier"], "privileged");
        assert!(headers.get("authorization").is_none());
    }
    let server_calls = server_allows(&s);
    assert!(
        (1..=2).contains(&server_calls),
        "{server_calls} server checks for 12 requests on 2 workers"
    );
    assert!(
        s.envoy
            .metric("authz_proxy_cache_lookups_total{tier=\"privileged\",result=\"hit\"}")
            >= 10
    );
    // Denials come from the server too, and the 401 is the filter's own.
    let no_scope = s
        .idp
        .mint(json!({"sub": "bob", "scope": "read", "opaque": true}));
    assert_eq!(
        s.envoy.get("/admin/users", Some(&no_scope), &[]).status,
        403
    );
    let unknown = s.envoy.get("/admin/users", Some("opq_unknown"), &[]);
    let local = s.envoy.get("/api/items", Some("garbage"), &[]);
    assert_eq!(unknown.deny_signature(), local.deny_signature());
    // Hot JWTs skip signature verification on the local path.
    let jwt = s.idp.mint(json!({"scope": "read"}));
    for _ in 0..6 {
        assert_eq!(
            s.envoy
                .get("/api/items", Some(&jwt), &[("connection", "close")])
                .status,
            200
        );
    }
    // Hot-path counters reach Envoy on the worker's next tick (≤ 250 ms).
    assert!(eventually(Duration::from_secs(2), || s.envoy.metric(
        "authz_proxy_token_cache_lookups_total{result=\"hit\"}"
    ) >= 4));
}

/// Sends requests on fresh connections (so both workers answer) for `window`; returns the
/// time of the last allow after `since` (the stale window), or `None` if none was allowed.
fn last_allow(s: &CacheStack, token: &str, since: Instant, window: Duration) -> Option<Duration> {
    let mut last = None;
    while since.elapsed() < window {
        let sent = since.elapsed();
        if s.envoy
            .get("/admin/users", Some(token), &[("connection", "close")])
            .status
            == 200
        {
            last = Some(sent);
        }
    }
    last
}

#[test]
fn revocations_and_policy_bumps_at_the_server_reach_every_worker_within_the_bound() {
    let s = CacheStack::start(
        &decision_cache_plugin_config(250, 1000),
        "tiers:\n  privileged: {max_staleness_ms: 10000}\n",
    );
    let (a, b, c) = (
        admin_token(&s, "alice"),
        admin_token(&s, "bob"),
        admin_token(&s, "carol"),
    );
    for token in [&a, &b, &c] {
        for _ in 0..6 {
            assert_eq!(
                s.envoy
                    .get("/admin/users", Some(token), &[("connection", "close")])
                    .status,
                200
            );
        }
    }
    // Documented bound: one poll interval (250 ms) plus a round trip; allow generous slack.
    let bound = Duration::from_millis(250 + 400);
    type Case<'a> = (&'a str, &'a String, Box<dyn Fn() + 'a>);
    let cases: [Case; 3] = [
        (
            "token revoke",
            &a,
            Box::new(|| {
                assert_eq!(
                    s.server
                        .admin("POST", "/admin/revoke", Some(json!({"token": a})))
                        .status,
                    200
                )
            }),
        ),
        (
            "subject revoke",
            &b,
            Box::new(|| {
                assert_eq!(
                    s.server
                        .admin("POST", "/admin/revoke-subject", Some(json!({"sub": "bob"})))
                        .status,
                    200
                )
            }),
        ),
        (
            "role change",
            &c,
            Box::new(|| {
                let r = request(
                    "POST",
                    &s.idp.url("/admin/subject-scope"),
                    &[("content-type", "application/json")],
                    Some(&json!({"sub": "carol", "scope": "read"}).to_string()),
                );
                assert_eq!(r.status, 200);
                assert_eq!(
                    s.server.admin("POST", "/admin/policy-version", None).status,
                    200
                );
            }),
        ),
    ];
    for (name, token, act) in cases {
        act();
        let started = Instant::now();
        let stale = last_allow(&s, token, started, Duration::from_millis(1500)).unwrap_or_default();
        println!("{name}: last stale allow {stale:?} after the change");
        assert!(stale <= bound, "{name}: allowed {stale:?} after the change");
        assert_ne!(
            s.envoy.get("/admin/users", Some(token), &[]).status,
            200,
            "{name}: still allowed"
        );
    }
    assert!(
        s.envoy
            .metric("authz_proxy_feed_polls_total{result=\"ok\"}")
            > 0
    );
}

#[test]
fn cached_privileged_decisions_are_not_trusted_once_the_server_is_unreachable() {
    let mut s = CacheStack::start(
        &decision_cache_plugin_config(250, 1000),
        "tiers:\n  privileged: {max_staleness_ms: 10000}\n",
    );
    let token = admin_token(&s, "alice");
    for _ in 0..6 {
        assert_eq!(
            s.envoy
                .get("/admin/users", Some(&token), &[("connection", "close")])
                .status,
            200
        );
    }
    s.server.kill();
    std::thread::sleep(Duration::from_millis(2600)); // past max_unreachable_ms = 2000
    for _ in 0..6 {
        let reply = s
            .envoy
            .get("/admin/users", Some(&token), &[("connection", "close")]);
        assert_eq!(
            reply.status, 503,
            "a cached privileged allow was used with the server gone"
        );
        assert_eq!(reply.header("retry-after"), Some("5"));
    }
    assert!(
        s.envoy
            .metric("authz_proxy_cache_lookups_total{tier=\"privileged\",result=\"untrusted\"}")
            >= 1
    );
    let jwt = s.idp.mint(json!({"scope": "read"}));
    assert_eq!(
        s.envoy.get("/api/items", Some(&jwt), &[]).status,
        200,
        "local tiers keep working"
    );
}

#[test]
fn a_flood_of_unique_tokens_stays_within_the_cache_cap() {
    let cap = 20;
    let s = CacheStack::start(&decision_cache_plugin_config(250, cap), "");
    for i in 0..120 {
        let token = admin_token(&s, &format!("user-{i}"));
        assert_eq!(s.envoy.get("/admin/users", Some(&token), &[]).status, 200);
    }
    let entries = s.envoy.metric("authz_proxy_cache_entries");
    assert!(
        entries as usize <= cap,
        "{entries} entries with a cap of {cap}"
    );
    assert!(
        s.envoy
            .metric("authz_proxy_cache_evictions_total{tier=\"privileged\"}")
            >= (120 - 2 * cap) as u64,
        "old entries were evicted"
    );
}

#[test]
fn regulated_decisions_are_never_cached_and_the_server_down_fails_closed() {
    let mut s = CacheStack::start(&decision_cache_plugin_config(250, 1000), "");
    let token = admin_token(&s, "alice");
    for _ in 0..4 {
        assert_eq!(
            s.envoy.get("/regulated/records", Some(&token), &[]).status,
            200
        );
    }
    assert_eq!(
        s.envoy
            .metric("authz_proxy_cache_lookups_total{tier=\"regulated\",result=\"hit\"}"),
        0,
        "tier_max_ms.regulated = 0"
    );
    s.server.kill();
    assert_eq!(
        s.envoy.get("/regulated/records", Some(&token), &[]).status,
        503
    );
    assert!(s.envoy.metric("authz_proxy_check_call_errors_total") >= 1);
}

#[test]
fn a_restarted_server_is_not_mistaken_for_the_old_one() {
    // The server restarts (in-memory state, counters back to 0) on the same ports. A filter
    // that kept polling with its old cursor would never see the new server's first changes.
    let mut s = CacheStack::start(
        &decision_cache_plugin_config(250, 1000),
        "tiers:\n  privileged: {max_staleness_ms: 10000}\n",
    );
    let token = admin_token(&s, "alice");
    for _ in 0..4 {
        assert_eq!(
            s.envoy
                .get("/admin/users", Some(&token), &[("connection", "close")])
                .status,
            200
        );
    }
    // Move the old server's counter well past where the new one will be.
    for i in 0..5 {
        let hash = format!("{i:064x}");
        s.server
            .admin("POST", "/admin/revoke", Some(json!({"token_hash": hash})));
    }
    std::thread::sleep(Duration::from_millis(800));
    let (grpc, admin) = (s.server.grpc_port, s.server.admin_port);
    s.server.kill();
    s.server = AuthzServerProcess::start(&server_yaml(
        s.idp.port,
        &format!(
            "listen: 127.0.0.1:{grpc}\nadmin_listen: 127.0.0.1:{admin}\nepochs_token: \"{EPOCHS_TOKEN}\"\ntiers:\n  privileged: {{max_staleness_ms: 10000}}\n"
        ),
    ));
    std::thread::sleep(Duration::from_millis(800));
    // Revoked at the new server: change version 1, below the old cursor (5).
    let revoked_at = Instant::now();
    assert_eq!(
        s.server
            .admin("POST", "/admin/revoke", Some(json!({"token": token})))
            .json()["version"],
        1
    );
    let stale = last_allow(&s, &token, revoked_at, Duration::from_millis(2_000));
    assert!(
        stale.is_none_or(|t| t < Duration::from_millis(650)),
        "the revoked token was still allowed {stale:?} after the revoke"
    );
}

#[test]
fn opaque_tokens_on_local_routes_are_decided_by_the_server_when_the_provider_issues_them() {
    let mut plugin = decision_cache_plugin_config(250, 1000);
    plugin["server"]["opaque_tokens"] = serde_json::json!(true);
    let s = CacheStack::start(&plugin, "");
    let opaque = s
        .idp
        .mint(serde_json::json!({"sub": "olga", "scope": "read", "opaque": true}));
    let reply = s.envoy.get("/api/items", Some(&opaque), &[]);
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert_eq!(reply.json()["headers"]["x-auth-subject"], "olga");
    // Revoked at the IdP and at the server: refused once the cached decision is purged.
    let revoked = s.server.admin(
        "POST",
        "/admin/revoke",
        Some(serde_json::json!({"token": opaque})),
    );
    assert_eq!(revoked.status, 200);
    assert!(eventually(std::time::Duration::from_millis(1_500), || s
        .envoy
        .get("/api/items", Some(&opaque), &[])
        .status
        == 401));
    // A junk token the server has never seen: refused.
    assert_eq!(
        s.envoy.get("/api/items", Some("not-a-token"), &[]).status,
        401
    );
}
