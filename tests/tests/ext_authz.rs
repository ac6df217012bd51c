//! End-to-end tests of the ext_authz path: the real Envoy (native ext_authz filter, and the Wasm
//! filter on the other routes), the real ext-authz-server binary, the dev IdP and the echo
//! upstream, all over loopback sockets.

use serde_json::json;
use std::time::{Duration, Instant};
use tests::*;

fn stack(server_extra: &str) -> ExtAuthzStack {
    ExtAuthzStack::start(server_extra)
}

fn opaque(idp: &DevIdp, sub: &str) -> String {
    idp.mint(json!({"sub": sub, "scope": "read admin", "opaque": true, "acr": "mfa"}))
}

#[test]
fn privileged_routes_allow_active_opaque_tokens_with_the_verified_context() {
    let s = stack("");
    let token = opaque(&s.idp, "alice");
    let reply = s.envoy.get(
        "/admin/users",
        Some(&token),
        &[
            ("x-auth-subject", "root"),
            ("x-auth-issuer", "https://evil"),
        ],
    );
    assert_eq!(reply.status, 200, "{}", reply.body);
    let headers = &reply.json()["headers"];
    assert_eq!(headers["x-auth-subject"], "alice");
    assert_eq!(headers["x-auth-tier"], "privileged");
    assert_eq!(headers["x-auth-scopes"], "read admin");
    assert!(
        headers.get("x-auth-issuer").is_none(),
        "spoofed context header reached the upstream"
    );

    // A token without the route's scope is forbidden; an unknown token is a plain 401, and
    // that 401 is byte-identical to the Wasm filter's.
    let reader = s
        .idp
        .mint(json!({"sub": "bob", "scope": "read", "opaque": true}));
    assert_eq!(s.envoy.get("/admin/users", Some(&reader), &[]).status, 403);
    let from_server = s
        .envoy
        .get("/admin/users", Some("opq_not-a-real-token"), &[]);
    let from_filter = s.envoy.get("/api/items", Some("not-a-jwt"), &[]);
    assert_eq!(from_server.status, 401);
    assert_eq!(
        from_server.deny_signature(),
        from_filter.deny_signature(),
        "the two paths must deny alike"
    );
}

#[test]
fn a_token_revoked_at_the_idp_is_denied_once_its_freshness_window_passes() {
    let s = stack("tiers:\n  privileged: {max_staleness_ms: 1000}\n");
    let token = opaque(&s.idp, "alice");
    assert_eq!(s.envoy.get("/admin/users", Some(&token), &[]).status, 200);
    s.idp.revoke(&token);
    let revoked_at = Instant::now();
    let mut denied_after = None;
    while revoked_at.elapsed() < Duration::from_secs(5) {
        match s.envoy.get("/admin/users", Some(&token), &[]).status {
            200 => assert!(denied_after.is_none(), "allowed again after a deny"),
            401 => {
                denied_after.get_or_insert(revoked_at.elapsed());
            }
            other => panic!("unexpected status {other}"),
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let window = denied_after.expect("the revoked token was never denied");
    println!("revoked token denied after {window:?} (privileged max staleness 1000 ms)");
    assert!(
        window <= Duration::from_millis(1000 + 500),
        "stale allow for {window:?}"
    );
}

#[test]
fn with_the_idp_down_privileged_fails_closed_while_authenticated_serves_within_its_grace() {
    let s = stack(
        "tiers:\n  privileged: {max_staleness_ms: 1000}\n  authenticated: {max_staleness_ms: 1000, stale_if_error_ms: 2500}\n",
    );
    let token = opaque(&s.idp, "alice");
    assert_eq!(s.envoy.get("/admin/users", Some(&token), &[]).status, 200);
    assert_eq!(
        s.envoy.get("/account/profile", Some(&token), &[]).status,
        200
    );
    s.idp.set_introspection("down", 0);
    let down_at = Instant::now();
    std::thread::sleep(Duration::from_millis(1300));
    let privileged = s.envoy.get("/admin/users", Some(&token), &[]);
    assert_eq!(
        privileged.status, 503,
        "privileged must fail closed: {}",
        privileged.body
    );
    assert_eq!(privileged.header("retry-after"), Some("5"));
    assert_eq!(
        s.envoy.get("/account/profile", Some(&token), &[]).status,
        200,
        "authenticated serves inside its grace"
    );
    // Past freshness + grace (1000 + 2500 ms since the last good answer) it denies too.
    while down_at.elapsed() < Duration::from_millis(3900) {
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(
        s.envoy.get("/account/profile", Some(&token), &[]).status,
        503,
        "grace is bounded"
    );
    s.idp.set_introspection("ok", 0);
    assert!(eventually(Duration::from_secs(5), || s
        .envoy
        .get("/admin/users", Some(&token), &[])
        .status
        == 200));
}

#[test]
fn with_the_server_down_privileged_routes_are_denied_and_jwt_routes_still_work() {
    let mut s = stack("");
    let token = opaque(&s.idp, "alice");
    assert_eq!(s.envoy.get("/admin/users", Some(&token), &[]).status, 200);
    s.server.kill();
    let reply = s.envoy.get("/admin/users", Some(&token), &[]);
    assert_eq!(
        reply.status, 503,
        "server down must never allow: {}",
        reply.body
    );
    let jwt = s.idp.mint(json!({"scope": "read"}));
    assert_eq!(
        s.envoy.get("/api/items", Some(&jwt), &[]).status,
        200,
        "the local JWT path does not need the server"
    );
}

#[test]
fn step_up_is_asked_for_and_a_fresh_authentication_passes() {
    let s =
        stack("tiers:\n  privileged: {step_up: {max_auth_age_seconds: 300, acr_values: [mfa]}}\n");
    let old = s.idp.mint(
        json!({"sub": "alice", "scope": "admin", "opaque": true, "acr": "mfa", "auth_age": 3600}),
    );
    let reply = s.envoy.get("/admin/users", Some(&old), &[]);
    assert_eq!(reply.status, 401);
    let challenge = reply
        .header("www-authenticate")
        .unwrap_or_default()
        .to_owned();
    assert!(
        challenge.contains("error=\"insufficient_user_authentication\""),
        "{challenge}"
    );
    assert!(
        challenge.contains("max_age=\"300\"") && challenge.contains("acr_values=\"mfa\""),
        "{challenge}"
    );
    let fresh = s
        .idp
        .mint(json!({"sub": "alice", "scope": "admin", "opaque": true, "acr": "mfa"}));
    assert_eq!(s.envoy.get("/admin/users", Some(&fresh), &[]).status, 200);
}

#[test]
fn the_rate_limit_answers_429() {
    let s = stack("rate_limits:\n  privileged_per_subject: {per_minute: 3, burst: 3}\n");
    let token = opaque(&s.idp, "alice");
    let statuses: Vec<u16> = (0..5)
        .map(|_| s.envoy.get("/admin/users", Some(&token), &[]).status)
        .collect();
    assert_eq!(statuses, vec![200, 200, 200, 429, 429]);
    let reply = s.envoy.get("/admin/users", Some(&token), &[]);
    assert_eq!(reply.header("retry-after"), Some("1"));
    let decisions = get(
        &format!("http://127.0.0.1:{}/metrics", s.server.admin_port),
        &[],
    )
    .body;
    assert!(
        decisions.contains(
            "authz_decisions_total{outcome=\"deny\",reason=\"rate_limited\",tier=\"privileged\"} 3"
        ),
        "{decisions}"
    );
}
