//! docs/runbook.md, run: every block tagged `playbook: <name>` is run with bash against the
//! real stack (real Envoy and filter, server, dev IdP, Redis) in the incident it is written for,
//! and the effect the playbook claims is checked. A playbook whose commands stop working, or
//! stop doing what it says, fails here.

use serde_json::json;
use std::process::Command;
use std::time::Duration;
use tests::grpc::check;
use tests::in_process::start_with_clock;
use tests::*;

/// The commands of playbook `name` (the fenced block tagged `playbook: name`).
fn playbook(name: &str) -> String {
    let runbook = std::fs::read_to_string(repo_root().join("docs/runbook.md")).expect("runbook");
    let tag = format!("```sh playbook: {name}\n");
    let start = runbook
        .find(&tag)
        .unwrap_or_else(|| panic!("no playbook {name} in docs/runbook.md"))
        + tag.len();
    let end = runbook[start..].find("```").expect("block ends") + start;
    runbook[start..end].to_owned()
}

/// Runs playbook `name` with bash (`set -eo pipefail`) and `env`; its output. A command that
/// fails fails the test.
fn run(name: &str, env: &[(&str, String)]) -> String {
    let output = Command::new("bash")
        .args(["-eo", "pipefail", "-c", &playbook(name)])
        .env("ADMIN_TOKEN", ADMIN_TOKEN)
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .output()
        .expect("bash runs");
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "playbook {name} failed: {}\n{stdout}\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    stdout
}

fn admin_env(admin_port: u16) -> (&'static str, String) {
    ("AUTHZ_ADMIN", format!("http://127.0.0.1:{admin_port}"))
}

#[test]
fn key_compromise_retires_the_old_key_everywhere() {
    let s = CacheStack::start(&decision_cache_plugin_config(250, 1000), "");
    let mint = || {
        s.idp
            .mint(json!({"sub": "ivan", "scope": "read admin", "ttl": 600, "claims": {}}))
    };
    let old = mint();
    assert_eq!(
        s.envoy.status_on_new_connection("GET", "/api/items", &old),
        200
    );
    assert_eq!(s.privileged_decided_by_server(&old, 1), 1);
    s.idp.rotate("RS256", true);
    let new = mint();
    assert_eq!(
        s.envoy.status_on_new_connection("GET", "/api/items", &old),
        200
    );
    run("key-compromise", &[admin_env(s.server.admin_port)]);
    assert!(
        eventually(Duration::from_secs(3), || s.envoy.status_on_new_connection(
            "GET",
            "/api/items",
            &old
        ) == 401),
        "the old key's token is refused by the filter"
    );
    // Decided by the server, asked again (the flush): the IdP that issued the token says
    // whether it stands (a forged token it never issued is inactive there).
    assert_eq!(s.privileged_decided_by_server(&old, 1), 1);
    assert_eq!(
        s.envoy.status_on_new_connection("GET", "/api/items", &new),
        200
    );
    assert_eq!(s.privileged_decided_by_server(&new, 1), 1);
}

#[test]
fn cache_poisoning_mass_revocation_and_a_bad_policy_do_what_their_playbooks_say() {
    let (plugin, server_extra) = checked_after_answer_config(1_000);
    let s = CacheStack::start(&plugin, &server_extra);
    let env = [admin_env(s.server.admin_port)];
    let mint = |sub: &str| {
        s.idp
            .mint(json!({"sub": sub, "scope": "read admin", "ttl": 600, "claims": {}}))
    };
    let alice = mint("alice");
    assert_eq!(s.privileged_decided_by_server(&alice, 1), 1);

    // Cache poisoning: everything flushed, privileged decisions never reused for the hour.
    let shown = run("cache-poisoning", &env);
    assert!(
        shown.contains("\"cache_max_ms\":{\"privileged\""),
        "{shown}"
    );
    assert!(s.switches_on(2));
    assert!(
        s.envoy
            .metric("authz_proxy_switch_actions_total{action=\"flush\"}")
            >= 1
    );
    assert_eq!(s.privileged_decided_by_server(&alice, 4), 4);

    // Mass revocation: the subjects refused everywhere, reads checked before the answer.
    let mallory = mint("mallory");
    let trudy = mint("trudy");
    assert_eq!(
        s.envoy
            .status_on_new_connection("GET", "/api/items", &mallory),
        200
    );
    let mut env_revoking = env.to_vec();
    env_revoking.push(("COMPROMISED_SUBJECTS", "mallory trudy".to_owned()));
    run("mass-revocation", &env_revoking);
    assert!(eventually(Duration::from_secs(3), || s
        .envoy
        .status_on_new_connection("GET", "/api/items", &mallory)
        == 401));
    assert_eq!(
        s.envoy
            .status_on_new_connection("GET", "/admin/users", &trudy),
        401
    );
    assert!(s.switches_on(3), "async off and two caps");
    let revoked_at_idp = mint("victor");
    s.idp.revoke(&revoked_at_idp);
    assert_eq!(
        s.envoy
            .status_on_new_connection("GET", "/news/1", &revoked_at_idp),
        401,
        "checked before the answer"
    );
    assert_eq!(
        s.envoy.status_on_new_connection("GET", "/news/1", &alice),
        200
    );
    run("mass-revocation-return", &env);
    assert!(s.switches_on(0));
    assert_eq!(
        s.envoy
            .status_on_new_connection("GET", "/api/items", &mallory),
        401,
        "revocations stay"
    );
    assert_eq!(
        s.envoy
            .status_on_new_connection("GET", "/news/2", &mint("walter")),
        200
    );

    // A bad policy rolled back: every cached decision dropped.
    assert!(s.privileged_reused(&alice), "cached again");
    let version = s.envoy.metric("authz_proxy_policy_version");
    run("bad-policy", &env);
    assert!(eventually(Duration::from_secs(3), || s
        .envoy
        .metric("authz_proxy_policy_version")
        > version));
    assert!(
        s.privileged_decided_by_server(&alice, 8) >= 1,
        "asked again"
    );

    // A bad policy promoted from a canary: reverted, the configured routes again.
    let mut routes = plugin["routes"].clone();
    let read = routes
        .as_array_mut()
        .and_then(|all| all.iter_mut().find(|r| r["name"] == "read"))
        .expect("the read route");
    read["require"] = json!({"scopes": ["no-one-has-this"]});
    let candidate = json!({"action": "start", "by": "oncall", "canary": {"per_million": 1,
        "candidate": {"id": "bad", "routes": routes, "default": plugin["default"]}}});
    let promote = json!({"action": "promote", "id": "bad", "by": "oncall"});
    for body in [candidate, promote] {
        let reply = request(
            "POST",
            &format!("http://127.0.0.1:{}/admin/canary", s.server.admin_port),
            &[
                ("content-type", "application/json"),
                ("authorization", &format!("Bearer {ADMIN_TOKEN}")),
            ],
            Some(&body.to_string()),
        );
        assert_eq!(reply.status, 200, "{}", reply.body);
    }
    let walter = mint("walter");
    let items = || {
        s.envoy
            .status_on_new_connection("GET", "/api/items", &walter)
    };
    assert!(eventually(Duration::from_secs(3), || items() == 403));
    run("bad-policy-promoted", &env);
    assert!(eventually(Duration::from_secs(3), || (0..8).all(|_| items() == 200)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn idp_down_and_idp_slow() {
    let idp = DevIdp::start(&[]);
    let clock = ext_authz_server::clock::ManualClock::new();
    let server = start_with_clock(
        &server_yaml(
            idp.port,
            "circuit_breaker: {failure_threshold: 3, open_ms: 60000}\n",
        ),
        clock.clone(),
    )
    .await;
    let env = [admin_env(server.admin_port)];
    let mut client = server.client.clone();
    let token = idp.mint(json!({"sub": "alice", "scope": "read", "opaque": true}));
    assert_eq!(check(&mut client, "/account/me", Some(&token)).await.0, 200);

    let slow = run("idp-slow", &env);
    assert!(slow.contains("authz_cache_lookups_total"), "{slow}");

    clock.advance_ms(61_000);
    idp.set_introspection("down", 0);
    assert_eq!(
        check(&mut client, "/account/me", Some(&token)).await.0,
        200,
        "stale-if-error"
    );
    let down = run("idp-down", &env);
    assert!(down.contains("authz_introspection_errors_total"), "{down}");
    assert_eq!(check(&mut client, "/account/me", Some(&token)).await.0, 503);
    run("idp-down-return", &env);
    assert_eq!(check(&mut client, "/account/me", Some(&token)).await.0, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn redis_lost() {
    let idp = DevIdp::start(&[]);
    let mut redis = RedisServer::start();
    let server = shared_server(&idp, &redis, "zone-a");
    let env = [admin_env(server.admin_port)];
    assert!(eventually(Duration::from_secs(5), || server
        .metric("authz_shared_confirmed")
        == 1.0));
    redis.stop();
    assert!(eventually(Duration::from_secs(5), || server
        .metric("authz_shared_confirmed")
        == 0.0));
    let revoked = server.admin("POST", "/admin/revoke", Some(json!({"jti": "lost-1"})));
    assert_eq!(revoked.json()["shared"], "pending");
    let shown = run("redis-lost", &env);
    assert!(shown.contains("authz_shared_confirmed 0"), "{shown}");
    assert!(shown.contains("authz_shared_outbox 1"), "{shown}");
    let mut to_server = tests::grpc::connect(server.grpc_port).await;
    let token = idp.mint(json!({"sub": "alice", "scope": "read admin", "opaque": true}));
    assert_eq!(
        check(&mut to_server, "/admin/users", Some(&token)).await.0,
        503,
        "privileged fails closed while unconfirmed"
    );
    redis.restart();
    assert!(eventually(Duration::from_secs(10), || {
        server.metric("authz_shared_confirmed") == 1.0
            && server.metric("authz_shared_outbox") == 0.0
    }));
    let shown = run("redis-lost", &env);
    assert!(shown.contains("authz_shared_confirmed 1"), "{shown}");
    assert_eq!(
        check(&mut to_server, "/admin/users", Some(&token)).await.0,
        200
    );
}

#[test]
fn zone_down() {
    let mut s = CacheStack::start(&decision_cache_plugin_config(250, 1000), "");
    let token = s
        .idp
        .mint(json!({"sub": "alice", "scope": "read admin", "ttl": 600, "claims": {}}));
    assert_eq!(
        s.envoy
            .status_on_new_connection("GET", "/api/items", &token),
        200
    );
    s.server.kill();
    let envoy_admin = (
        "ENVOY_ADMIN",
        format!("http://127.0.0.1:{}", s.envoy.admin_port),
    );
    // Server-decided routes fail closed once the server is unreachable; local ones go on.
    assert!(eventually(Duration::from_secs(5), || s
        .envoy
        .status_on_new_connection("GET", "/admin/users", &token)
        == 503));
    assert_eq!(
        s.envoy
            .status_on_new_connection("GET", "/api/items", &token),
        200
    );
    let shown = run("zone-down", &[envoy_admin]);
    assert!(shown.contains("ext_authz::"), "{shown}");
    assert!(shown.contains("check_call_errors"), "{shown}");
}
