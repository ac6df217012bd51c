//! Checks after the answer (`background_check_ms`), end to end through the real Envoy (two
//! workers), the real `.wasm` and the real server: a read of an opted-in route is answered from
//! the JWT at once and the server asks the IdP behind it; a token the IdP revoked is refused by
//! every worker soon after ("allowed, then revoked"), within a measured exposure window, while
//! the same token on a plain local route (the negative control) stays allowed; a hot token costs
//! one background check per window; a server that cannot answer changes nothing.

use serde_json::{json, Value};
use std::time::{Duration, Instant};
use tests::*;

const WINDOW_MS: u64 = 1_000;

/// The plugin (the news route, and a plain route beside it) and the server's policy.
fn stack_config() -> (Value, String) {
    let (mut plugin, server_extra) = checked_after_answer_config(WINDOW_MS);
    if let Some(routes) = plugin["routes"].as_array_mut() {
        routes.insert(
            1,
            json!({"name": "plain", "match": {"prefix": "/plain/", "methods": ["GET"]},
                   "tier": "authenticated"}),
        );
    }
    (plugin, server_extra)
}

fn server_extra() -> String {
    stack_config().1
}

fn plugin() -> Value {
    stack_config().0
}

fn status(s: &CacheStack, path: &str, token: &str) -> u16 {
    s.envoy.status_on_new_connection("GET", path, token)
}

#[test]
fn a_token_the_idp_revoked_is_refused_everywhere_soon_after_its_answer_and_a_plain_route_never_learns(
) {
    let s = CacheStack::start(&plugin(), &server_extra());
    let token = s
        .idp
        .mint(json!({"sub": "alice", "scope": "read write", "ttl": 600, "claims": {}}));
    assert_eq!(status(&s, "/news/1", &token), 200);
    // Checked in the background: active, nothing changes.
    assert!(
        eventually(Duration::from_secs(5), || s
            .envoy
            .metric("authz_proxy_background_checks_total{result=\"sent\"}")
            >= 1),
        "{}",
        s.envoy.stats_matching("background")
    );
    s.idp.revoke(&token);
    // Answered at once from the JWT until the background check of the next window refuses it;
    // then refused on every worker (new connections), and on the locally decided write too
    // (the revocation came through the change feed).
    let revoked_at = Instant::now();
    let mut first_refusal = None;
    let mut allowed_after_revocation = 0;
    while revoked_at.elapsed() < Duration::from_secs(10) {
        match status(&s, "/news/2", &token) {
            200 => allowed_after_revocation += 1,
            401 => {
                first_refusal = Some(revoked_at.elapsed());
                break;
            }
            other => panic!("unexpected {other}"),
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let exposure = first_refusal.expect("refused within 10 s of the IdP's revocation");
    // The bound: one window (the token was checked less than a window before), one tick to
    // dispatch, a Check with a fresh introspection, the feed's push.
    assert!(
        exposure < Duration::from_millis(WINDOW_MS + 2_000),
        "exposure {exposure:?}"
    );
    eprintln!(
        "exposure window: {exposure:?} ({allowed_after_revocation} requests allowed after the IdP revoked the token)"
    );
    // Every worker refuses it once the feed brought the revocation (new connections land on
    // either worker), on the locally decided writes too.
    let everywhere = eventually(Duration::from_secs(3), || {
        (0..10).all(|_| status(&s, "/news/3", &token) == 401)
            && (0..10).all(|_| {
                s.envoy
                    .status_on_new_connection("POST", "/api/items", &token)
                    == 401
            })
    });
    assert!(everywhere, "{}", s.envoy.stats_matching("revocations"));
    assert!(
        s.envoy
            .metric("authz_proxy_background_checks_total{result=\"revoked\"}")
            >= 1
    );
    let metrics = get(
        &format!("http://127.0.0.1:{}/metrics", s.server.admin_port),
        &[],
    )
    .body;
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("authz_background_revocations_total ") && !l.ends_with(" 0")),
        "{}",
        metrics
            .lines()
            .filter(|l| l.contains("background"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    assert!(s
        .server
        .logged("allowed, then revoked: a background check found the token inactive at the IdP"));

    // The negative control: a token the IdP revoked, on a plain local route (no background
    // check), is still allowed: nothing tells the filter.
    let other = s
        .idp
        .mint(json!({"sub": "bob", "scope": "read", "ttl": 600, "claims": {}}));
    assert_eq!(status(&s, "/plain/1", &other), 200);
    s.idp.revoke(&other);
    std::thread::sleep(Duration::from_millis(WINDOW_MS + 1_000));
    for _ in 0..5 {
        assert_eq!(
            status(&s, "/plain/2", &other),
            200,
            "no background check, no refusal"
        );
    }
}

#[test]
fn a_hot_token_costs_one_check_per_window_and_a_failing_server_changes_nothing() {
    let s = CacheStack::start(&plugin(), &server_extra());
    let token = s
        .idp
        .mint(json!({"sub": "carol", "scope": "read", "ttl": 600, "claims": {}}));
    let started = Instant::now();
    let mut requests = 0u64;
    while started.elapsed() < Duration::from_millis(1_500) {
        assert_eq!(status(&s, "/news/x", &token), 200);
        requests += 1;
    }
    std::thread::sleep(Duration::from_millis(400));
    let sent = s
        .envoy
        .metric("authz_proxy_background_checks_total{result=\"sent\"}");
    // Each worker checks the token at most once per window: two windows started in 1.5 s.
    assert!(
        (1..=4).contains(&sent),
        "{sent} background checks for {requests} requests"
    );
    assert!(requests >= 10 * sent, "{requests} requests, {sent} checks");

    // The server gone: answers go on from the JWT, the checks fail, nothing is refused.
    let mut s = s;
    s.server.kill();
    let failed = eventually(Duration::from_secs(5), || {
        assert_eq!(status(&s, "/news/y", &token), 200, "answered from the JWT");
        s.envoy
            .metric("authz_proxy_background_checks_total{result=\"failed\"}")
            >= 1
    });
    assert!(failed, "{}", s.envoy.stats_matching("background"));
    for _ in 0..10 {
        assert_eq!(
            status(&s, "/news/z", &token),
            200,
            "a failed check never denies"
        );
    }
}

#[test]
fn a_refusal_the_server_did_not_revoke_for_changes_nothing() {
    // The server's policy wants a scope the filter's does not: the background check is refused
    // (403), which is a disagreement, not a revocation: the answers stand.
    let extra = server_extra().replace(
        "background_check_ms: 1000}",
        "background_check_ms: 1000, require: {scopes: [premium]}}",
    );
    assert!(extra.contains("premium"));
    let s = CacheStack::start(&plugin(), &extra);
    let token = s
        .idp
        .mint(json!({"sub": "dave", "scope": "read", "ttl": 600, "claims": {}}));
    assert_eq!(status(&s, "/news/1", &token), 200);
    assert!(
        eventually(Duration::from_secs(5), || s
            .envoy
            .metric("authz_proxy_background_checks_total{result=\"failed\"}")
            >= 1),
        "{}",
        s.envoy.stats_matching("background")
    );
    for _ in 0..10 {
        assert_eq!(status(&s, "/news/2", &token), 200, "not revoked");
    }
    assert_eq!(
        s.envoy
            .metric("authz_proxy_background_checks_total{result=\"revoked\"}"),
        0
    );
}
