//! End-to-end tests of the shared tier: several ext-authz-server processes, one real
//! `redis-server`, and Envoys whose Wasm filter calls "its" server and polls its epochs.
//!
//! What they show: a revoke sent to one instance reaches every Envoy within the documented
//! bound; a joining instance catches up; a result introspected by one instance serves the
//! others; Redis down keeps everything up while fail-closed tiers fail closed; Redis back
//! (empty) resynchronises, and nothing revoked comes back.

use serde_json::{json, Value};
use std::time::{Duration, Instant};
use tests::*;

/// The documented bound for a revoke made at any instance to reach every Envoy: the stream
/// read (immediate) + one epochs poll interval (250 ms) + round trips; generous for CI.
const PROPAGATION_BOUND: Duration = Duration::from_millis(2_000);

fn admin_token(idp: &DevIdp, sub: &str) -> String {
    idp.mint(json!({"sub": sub, "scope": "read admin", "opaque": true}))
}

fn epochs(server: &AuthzServerProcess) -> Value {
    server.admin("GET", "/admin/epochs?since=0", None).json()
}

#[test]
fn a_revoke_at_one_instance_reaches_every_envoy_and_survives_a_redis_restart() {
    let mut redis = RedisServer::start();
    let idp = DevIdp::start(&[]);
    let echo = Echo::start();
    let a = shared_server(&idp, &redis, "zone-a");
    let b = shared_server(&idp, &redis, "zone-b");
    assert!(
        eventually(Duration::from_secs(10), || epochs(&a)["confirmed"] == true
            && epochs(&b)["confirmed"] == true),
        "both instances sync with redis"
    );
    let envoy_1 = decision_cache_envoy(&a, &idp, &echo);
    let envoy_2 = decision_cache_envoy(&b, &idp, &echo);

    // One token, allowed through both Envoys (each caches the server's decision).
    let token = admin_token(&idp, "alice");
    for envoy in [&envoy_1, &envoy_2] {
        for _ in 0..4 {
            let reply = envoy.get("/admin/users", Some(&token), &[]);
            assert_eq!(reply.status, 200, "{}", reply.body);
        }
    }

    // Revoked at A: both Envoys refuse it within the bound.
    let revoked_at = Instant::now();
    let answer = a
        .admin("POST", "/admin/revoke", Some(json!({"token": token})))
        .json();
    assert_eq!(answer["shared"], "published", "{answer}");
    for (name, envoy) in [("envoy behind A", &envoy_1), ("envoy behind B", &envoy_2)] {
        assert!(
            eventually(PROPAGATION_BOUND, || envoy
                .get("/admin/users", Some(&token), &[])
                .status
                == 401),
            "{name} still allows a token revoked at A after {PROPAGATION_BOUND:?}"
        );
    }
    eprintln!(
        "revoke at A → denied by both Envoys after {:?}",
        revoked_at.elapsed()
    );
    assert_eq!(epochs(&a)["version"], epochs(&b)["version"]);

    // A subject revocation and a policy bump at B reach A too.
    let bob = admin_token(&idp, "bob");
    assert_eq!(envoy_1.get("/admin/users", Some(&bob), &[]).status, 200);
    b.admin("POST", "/admin/revoke-subject", Some(json!({"sub": "bob"})));
    let policy = b.admin("POST", "/admin/policy-version", None).json();
    assert!(eventually(PROPAGATION_BOUND, || envoy_1
        .get("/admin/users", Some(&bob), &[])
        .status
        == 401));
    assert!(eventually(PROPAGATION_BOUND, || epochs(&a)
        ["policy_version"]
        == policy["policy_version"]));

    // An instance that joins now catches up on everything, at the same version.
    let c = shared_server(&idp, &redis, "zone-c");
    assert!(eventually(Duration::from_secs(10), || {
        let (ea, ec) = (epochs(&a), epochs(&c));
        ec["confirmed"] == true
            && ec["version"] == ea["version"]
            && ec["policy_version"] == ea["policy_version"]
    }));
    let joined = epochs(&c);
    assert_eq!(joined["tokens"].as_array().map(Vec::len), Some(1));
    assert_eq!(joined["subjects"][0][0], "bob");

    // Redis goes away: nothing crashes; fail-closed tiers fail closed (503), everywhere.
    redis.stop();
    for (name, envoy) in [("envoy behind A", &envoy_1), ("envoy behind B", &envoy_2)] {
        assert!(
            eventually(Duration::from_secs(5), || envoy
                .get("/admin/users", Some(&admin_token(&idp, "carol")), &[])
                .status
                == 503),
            "{name}: privileged checks must fail closed without confirmed shared state"
        );
        // Regulated likewise.
        assert_eq!(
            envoy
                .get("/regulated/x", Some(&admin_token(&idp, "carol")), &[])
                .status,
            503
        );
    }
    for server in [&a, &b] {
        assert_eq!(
            get(
                &format!("http://127.0.0.1:{}/healthz", server.admin_port),
                &[]
            )
            .status,
            200
        );
        assert_eq!(epochs(server)["confirmed"], false);
        assert_eq!(server.metric("authz_shared_confirmed"), 0.0);
    }
    // A revoke during the outage takes effect at A at once and waits to be published.
    let dave = admin_token(&idp, "dave");
    let pending = a
        .admin("POST", "/admin/revoke", Some(json!({"token": dave})))
        .json();
    assert_eq!(pending["shared"], "pending", "{pending}");
    // The revoked token is still denied everywhere (nothing went back).
    assert_eq!(envoy_1.get("/admin/users", Some(&token), &[]).status, 401);

    // Redis returns empty: the instances notice the lost data, republish, and resync.
    redis.restart();
    for (name, envoy) in [("envoy behind A", &envoy_1), ("envoy behind B", &envoy_2)] {
        assert!(
            eventually(Duration::from_secs(10), || envoy
                .get("/admin/users", Some(&admin_token(&idp, "erin")), &[])
                .status
                == 200),
            "{name}: privileged checks resume once shared state is confirmed again"
        );
        assert_eq!(
            envoy.get("/admin/users", Some(&token), &[]).status,
            401,
            "{name}: a token revoked before the outage stays revoked"
        );
        assert!(
            eventually(PROPAGATION_BOUND, || envoy
                .get("/admin/users", Some(&dave), &[])
                .status
                == 401),
            "{name}: the revoke made during the outage reached it"
        );
        assert_eq!(envoy.get("/admin/users", Some(&bob), &[]).status, 401);
    }
    assert!(a.metric("authz_shared_resyncs_total{reason=\"store_lost\"}") >= 1.0);
    assert_eq!(a.metric("authz_shared_outbox"), 0.0);
    // Versions never went back, and every instance agrees again.
    assert!(eventually(Duration::from_secs(5), || {
        let (ea, eb, ec) = (epochs(&a), epochs(&b), epochs(&c));
        ea["version"] == eb["version"] && eb["version"] == ec["version"]
    }));
    assert!(epochs(&a)["version"].as_u64() > joined["version"].as_u64());
    assert_eq!(epochs(&c)["tokens"].as_array().map(Vec::len), Some(2));
}

#[test]
fn introspection_results_are_shared_and_redis_never_sees_a_token() {
    let redis = RedisServer::start();
    let idp = DevIdp::start(&[]);
    let echo = Echo::start();
    let a = shared_server(&idp, &redis, "zone-a");
    let b = shared_server(&idp, &redis, "zone-b");
    assert!(eventually(Duration::from_secs(10), || epochs(&a)
        ["confirmed"]
        == true
        && epochs(&b)["confirmed"] == true));
    let envoy_1 = decision_cache_envoy(&a, &idp, &echo);
    let envoy_2 = decision_cache_envoy(&b, &idp, &echo);
    let token = admin_token(&idp, "alice");
    let before = idp.stat("introspected_tokens");
    assert_eq!(envoy_1.get("/admin/users", Some(&token), &[]).status, 200);
    // A wrote the result in the background; B finds it there instead of asking the IdP.
    assert!(eventually(Duration::from_secs(3), || redis
        .command(&["KEYS", "authz:v1:intro:*"])
        .is_some_and(|keys| keys.contains("intro:"))));
    assert_eq!(envoy_2.get("/admin/users", Some(&token), &[]).status, 200);
    assert_eq!(
        idp.stat("introspected_tokens") - before,
        1,
        "one IdP call for two instances"
    );
    assert_eq!(b.metric("authz_shared_cache_total{result=\"hit\"}"), 1.0);

    // Twenty concurrent first checks of another token on B: one Redis read between them.
    let second = admin_token(&idp, "bob");
    assert_eq!(envoy_1.get("/admin/users", Some(&second), &[]).status, 200);
    let introspected = idp.stat("introspected_tokens");
    let shared_key_count = || {
        redis
            .command(&["KEYS", "authz:v1:intro:*"])
            .map(|keys| keys.matches("intro:").count())
            .unwrap_or(0)
    };
    assert!(eventually(Duration::from_secs(3), || shared_key_count() >= 2));
    std::thread::scope(|scope| {
        let handles: Vec<_> = (0..20)
            .map(|_| {
                scope.spawn(|| {
                    envoy_2
                        .get("/admin/users", Some(&second), &[("connection", "close")])
                        .status
                })
            })
            .collect();
        for handle in handles {
            assert_eq!(handle.join().expect("request thread"), 200);
        }
    });
    assert_eq!(
        b.metric("authz_shared_cache_total{result=\"hit\"}"),
        2.0,
        "concurrent misses share one Redis read"
    );
    assert_eq!(idp.stat("introspected_tokens"), introspected);

    let dump = redis.dump();
    let hash = authz_core::token_hash::digest_hex(&authz_core::token_hash::token_digest(&token));
    assert!(!dump.contains(&token), "redis holds a raw token");
    assert!(!dump.contains(&hash), "redis holds a token hash");
    assert!(!dump.contains("alice"), "redis holds a readable claim");
}

#[test]
fn a_frozen_redis_slows_nothing_down_and_privileged_fails_closed_until_it_answers() {
    let redis = RedisServer::start();
    let idp = DevIdp::start(&[]);
    let echo = Echo::start();
    let server = shared_server(&idp, &redis, "zone-a");
    assert!(eventually(Duration::from_secs(10), || epochs(&server)
        ["confirmed"]
        == true));
    // Native ext_authz in front of the server: /account/ is authenticated, /admin/ privileged.
    let envoy = Envoy::start_rendered(&render_template(
        "ext-authz.template.yaml",
        &plugin_config(),
        idp.port,
        echo.port,
        server.grpc_port,
    ));
    let opaque = |sub: &str| idp.mint(json!({"sub": sub, "scope": "read admin", "opaque": true}));
    assert_eq!(
        envoy.get("/admin/x", Some(&opaque("alice")), &[]).status,
        200
    );

    redis.pause();
    assert!(
        eventually(Duration::from_secs(5), || envoy
            .get("/admin/x", Some(&opaque("bob")), &[])
            .status
            == 503),
        "privileged must fail closed once shared state goes unconfirmed"
    );
    // Authenticated checks carry on from the IdP, each waiting at most the op timeout on Redis.
    let started = Instant::now();
    for i in 0..5 {
        let reply = envoy.get("/account/me", Some(&opaque(&format!("user{i}"))), &[]);
        assert_eq!(reply.status, 200, "{}", reply.body);
    }
    let per_check = started.elapsed() / 5;
    assert!(
        per_check < Duration::from_millis(1_000),
        "authenticated checks stalled on a frozen redis: {per_check:?} each"
    );
    assert!(server.metric("authz_shared_errors_total{op=\"cache_get\"}") >= 1.0);

    redis.resume();
    assert!(
        eventually(Duration::from_secs(10), || envoy
            .get("/admin/x", Some(&opaque("carol")), &[])
            .status
            == 200),
        "privileged resumes when redis answers again"
    );
}

/// Redis over TLS with AUTH: a server with the password and the CA joins the shared tier; one
/// with a wrong password, or without the CA that signed Redis' certificate, never confirms its
/// state (privileged checks would fail closed), and nothing is sent in clear.
#[test]
fn the_shared_tier_speaks_tls_and_requires_the_password() {
    let password = "e2e-redis-password-7f3a9c1e";
    let redis = RedisServer::start_tls(password);
    let tls = redis.tls.as_ref().expect("tls");
    let ca = tls.ca_file.display().to_string();
    let idp = DevIdp::start(&[]);
    let server = |url: &str, ca_line: &str| {
        AuthzServerProcess::start(&server_yaml(
            idp.port,
            &format!(
                "redis:\n  url: \"{url}\"\n{ca_line}  secret: \"{SHARED_SECRET}\"\n  block_ms: 200\n  max_unconfirmed_ms: 800\n"
            ),
        ))
    };
    let good = server(&redis.tls_url(password), &format!("  ca_file: {ca}\n"));
    assert!(
        eventually(Duration::from_secs(10), || good
            .metric("authz_shared_confirmed")
            == 1.0),
        "a server with the password and the CA never joined"
    );
    let reply = good.admin("POST", "/admin/revoke", Some(json!({"jti": "tls-jti"})));
    assert_eq!(reply.json()["shared"], "published", "{}", reply.body);

    let wrong_password = server(
        &redis.tls_url("not-the-password-0000"),
        &format!("  ca_file: {ca}\n"),
    );
    let no_ca = server(&redis.tls_url(password), "");
    let plain = server(&format!("redis://:{password}@127.0.0.1:{}/0", tls.port), "");
    std::thread::sleep(Duration::from_millis(1_500));
    for (name, s) in [
        ("wrong password", &wrong_password),
        ("unknown CA", &no_ca),
        ("no TLS", &plain),
    ] {
        assert_eq!(s.metric("authz_shared_confirmed"), 0.0, "{name}: confirmed");
        assert!(
            s.metric("authz_shared_errors_total{op=\"session\"}") >= 1.0,
            "{name}: no session error"
        );
    }
}

/// A Redis blip after a healthy session is recovered from quickly: the reconnect backoff
/// resets once a session has confirmed our state (it used to be read after being cleared, so
/// after one long outage every later blip cost the full 2 s backoff of fail-closed 503s).
#[test]
fn after_an_outage_a_later_redis_blip_recovers_quickly() {
    let mut redis = RedisServer::start();
    let idp = DevIdp::start(&[]);
    let server = shared_server(&idp, &redis, "zone-a");
    let confirmed = |s: &AuthzServerProcess| s.metric("authz_shared_confirmed") == 1.0;
    assert!(eventually(Duration::from_secs(10), || confirmed(&server)));
    // A long outage: sessions keep failing and the backoff climbs to its cap.
    redis.stop();
    std::thread::sleep(Duration::from_millis(4_000));
    redis.restart();
    assert!(
        eventually(Duration::from_secs(10), || confirmed(&server)),
        "no recovery"
    );
    std::thread::sleep(Duration::from_millis(500));
    // A blip: down and straight back up.
    redis.stop();
    redis.restart();
    let started = Instant::now();
    assert!(
        eventually(Duration::from_secs(10), || confirmed(&server)),
        "no recovery"
    );
    let took = started.elapsed();
    assert!(
        took < Duration::from_millis(1_500),
        "a blip after a healthy session took {took:?} to recover (backoff not reset)"
    );
}

/// A replica that starts while Redis does not answer has not read the shared state: it is not
/// ready, and its change feed answers 503 (a filter keeps what it holds and asks again), until
/// its first resync.
#[test]
fn a_replica_is_not_ready_and_serves_no_feed_until_it_has_read_the_shared_state() {
    let redis = RedisServer::start();
    let idp = DevIdp::start(&[]);
    let first = shared_server(&idp, &redis, "zone-a");
    assert!(eventually(Duration::from_secs(10), || first.readyz() == 200));
    let revoked = first.admin(
        "POST",
        "/admin/revoke-subject",
        Some(json!({"sub": "mallory"})),
    );
    assert_eq!(revoked.status, 200, "{}", revoked.body);
    redis.pause();
    let late = shared_server(&idp, &redis, "zone-b");
    let feed = |server: &AuthzServerProcess| {
        get(
            &format!(
                "http://127.0.0.1:{}/admin/epochs?since=0&format=2",
                server.admin_port
            ),
            &[("authorization", &format!("Bearer {EPOCHS_TOKEN}"))],
        )
    };
    // Not a wait for something to happen: a check that it does not, for a while.
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(late.readyz(), 503);
    let reply = feed(&late);
    assert_eq!(reply.status, 503, "{}", reply.body);
    redis.resume();
    assert!(
        eventually(Duration::from_secs(10), || late.readyz() == 200),
        "ready once it has read the shared state"
    );
    let reply = feed(&late);
    assert_eq!(reply.status, 200);
    assert!(
        reply.body.contains("mallory"),
        "the state it serves holds what the other replica recorded: {}",
        reply.body
    );
}
