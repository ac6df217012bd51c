//! End-to-end test of the multi-zone wiring (`envoy/multi-zone.template.yaml`): an Envoy in
//! zone-a prefers the zone-a server, and when that server dies, its checks move to the zone-b
//! server without one request failing open; decision logs name both the asking and the
//! answering zone.

use serde_json::{json, Value};
use std::time::{Duration, Instant};
use tests::*;

fn zone_server(idp: &DevIdp, zone: &str) -> AuthzServerProcess {
    AuthzServerProcess::start(&server_yaml(
        idp.port,
        &format!("epochs_token: \"{EPOCHS_TOKEN}\"\nregion: eu-west-1\nzone: {zone}\n"),
    ))
}

fn decisions_from(server: &AuthzServerProcess, route: &str) -> Vec<Value> {
    server
        .decision_logs()
        .into_iter()
        .filter(|d| d["route"] == route)
        .collect()
}

#[test]
fn killing_the_local_zone_server_fails_over_to_the_next_zone_without_failing_open() {
    let idp = DevIdp::start(&[]);
    let echo = Echo::start();
    let mut zone_a = zone_server(&idp, "zone-a");
    let zone_b = zone_server(&idp, "zone-b");
    let config = render_template_full(
        "multi-zone.template.yaml",
        &decision_cache_plugin_config(250, 1000),
        idp.port,
        echo.port,
        zone_a.grpc_port,
        zone_a.admin_port,
    )
    .replace("{{FAILOVER_AUTHZ_PORT}}", &zone_b.grpc_port.to_string())
    .replace(
        "{{FAILOVER_AUTHZ_ADMIN_PORT}}",
        &zone_b.admin_port.to_string(),
    );
    let envoy = Envoy::start_rendered(&config);
    // Active health checks have found both zones up.
    let healthy = |port: u16| {
        let clusters = get(
            &format!("http://127.0.0.1:{}/clusters", envoy.admin_port),
            &[],
        )
        .body;
        clusters.contains(&format!(
            "ext_authz::127.0.0.1:{port}::health_flags::healthy"
        ))
    };
    assert!(eventually(Duration::from_secs(15), || healthy(
        zone_a.grpc_port
    ) && healthy(
        zone_b.grpc_port
    )));
    let token = idp.mint(json!({"sub": "alice", "scope": "read admin", "opaque": true}));
    // Right after start-up a first check can still land on zone-b until the first health-check
    // round settles priorities; from then on, the local zone serves.
    assert!(
        eventually(Duration::from_secs(10), || {
            envoy.get("/admin/users", Some(&token), &[]);
            !zone_a.decision_logs().is_empty()
        }),
        "zone-a never served"
    );
    let forged = "not-a-token-the-idp-ever-issued";
    let zone_b_before = zone_b.decision_logs().len();
    let zone_a_before = zone_a.decision_logs().len();

    // Steady state: every check goes to the local zone.
    for _ in 0..6 {
        assert_eq!(envoy.get("/admin/users", Some(&token), &[]).status, 200);
        assert_eq!(envoy.get("/regulated/x", Some(&token), &[]).status, 200);
    }
    assert_eq!(envoy.get("/admin/users", Some(forged), &[]).status, 401);
    assert_eq!(
        zone_a
            .logged_at_least("authz_decision", zone_a_before + 13)
            .len()
            - zone_a_before,
        13,
        "every steady-state check goes to the local zone"
    );
    assert_eq!(zone_b.decision_logs().len(), zone_b_before);
    let local = decisions_from(&zone_a, "admin");
    let native = &local[0];
    assert_eq!(native["zone"], "zone-a");
    assert_eq!(native["region"], "eu-west-1");
    assert_eq!(native["client_locality"], "eu-west-1/zone-a");
    let from_filter = decisions_from(&zone_a, "regulated");
    assert!(!from_filter.is_empty());
    assert_eq!(from_filter[0]["client_locality"], "eu-west-1/zone-a");

    // The local server dies. Checks move to zone-b; meanwhile a valid token gets 200 or a
    // fail-closed 503, and a forged one never gets through.
    zone_a.kill();
    let killed = Instant::now();
    let mut statuses: Vec<(u16, u16)> = Vec::new();
    let mut served_by_b = 0;
    let mut first_allow_after: Option<Duration> = None;
    while killed.elapsed() < Duration::from_secs(15) && served_by_b < 10 {
        let valid = envoy.get("/admin/users", Some(&token), &[]).status;
        let bad = envoy.get("/admin/users", Some(forged), &[]).status;
        assert!(
            matches!(valid, 200 | 503),
            "valid token got {valid} during failover"
        );
        assert!(
            matches!(bad, 401 | 503),
            "forged token got {bad} during failover: failing open"
        );
        if valid == 200 {
            first_allow_after.get_or_insert(killed.elapsed());
            served_by_b += 1;
        }
        statuses.push((valid, bad));
    }
    assert_eq!(served_by_b, 10, "no failover to zone-b: {statuses:?}");
    let unavailable = statuses.iter().filter(|(v, _)| *v == 503).count();
    eprintln!(
        "failover: first allow {:?} after the kill; {unavailable} fail-closed 503s among {} valid requests",
        first_allow_after,
        statuses.len()
    );
    let remote = decisions_from(&zone_b, "admin");
    assert!(remote.len() >= 10);
    let last = remote
        .iter()
        .rev()
        .find(|d| d["decision"] == "allow")
        .expect("an allow");
    assert_eq!(last["zone"], "zone-b");
    assert_eq!(last["client_locality"], "eu-west-1/zone-a");
    assert_eq!(last["decision"], "allow");
    // The filter's own Check calls fail over too (fresh tokens: no cached decision).
    let fresh = idp.mint(json!({"sub": "bob", "scope": "read", "opaque": true}));
    assert!(eventually(Duration::from_secs(10), || envoy
        .get("/regulated/x", Some(&fresh), &[])
        .status
        == 200));
    assert!(eventually(Duration::from_secs(5), || !decisions_from(
        &zone_b,
        "regulated"
    )
    .is_empty()));
}
