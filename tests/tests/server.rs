//! Server-level tests of the ext_authz server, run in-process through `serve` on real sockets,
//! against the real dev IdP process. Envoy is not involved here (see `ext_authz.rs`).

use envoy_types::ext_authz::v3::pb::{CheckRequest, HttpResponse};
use ext_authz_server::clock::ManualClock;
use ext_authz_server::config::ServerConfig;
use serde_json::json;
use std::time::{Duration, Instant};
use tests::grpc::{check, check_request};
use tests::in_process::{start, start_with_clock, Server};
use tests::*;

/// Sends one concurrent Check per token (all at once) and asserts every one is allowed.
async fn all_allowed(server: &Server, tokens: &[String]) {
    let checks = tokens.iter().map(|token| {
        let mut client = server.client.clone();
        async move { check(&mut client, "/admin/users", Some(token)).await.0 }
    });
    let statuses = futures::future::join_all(checks).await;
    assert!(statuses.iter().all(|s| *s == 200), "{statuses:?}");
}

/// Introspection calls the dev IdP saw for checks: all of them but the start-up probe.
fn introspections(idp: &DevIdp) -> u64 {
    idp.stat("introspection_calls").saturating_sub(1)
}

fn mint_opaque(idp: &DevIdp, sub: &str) -> String {
    idp.mint(json!({"sub": sub, "scope": "read admin", "opaque": true, "acr": "mfa"}))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_hundred_concurrent_checks_of_one_token_make_one_introspection_call() {
    let idp = DevIdp::start(&[]);
    idp.set_introspection("ok", 300);
    let server = start(&server_yaml(idp.port, "")).await;
    let token = mint_opaque(&idp, "alice");
    let tokens = vec![token.clone(); 200];
    all_allowed(&server, &tokens).await;
    assert_eq!(
        introspections(&idp) + idp.stat("batch_calls"),
        1,
        "one introspection for 200 checks"
    );
    assert!(
        server_metric(server.admin_port, "authz_single_flight_joins_total") >= 150.0,
        "most checks joined the flight"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fifty_distinct_tokens_in_one_window_make_one_batch_call() {
    let idp = DevIdp::start(&[]);
    let server = start(&server_yaml(
        idp.port,
        "batching: {window_ms: 50, max_batch: 64}\n",
    ))
    .await;
    let tokens: Vec<String> = (0..50)
        .map(|i| mint_opaque(&idp, &format!("user-{i}")))
        .collect();
    // Warm the connection so all 50 checks reach the server inside one window.
    let _ = check(&mut server.client.clone(), "/healthz-unused", None).await;
    all_allowed(&server, &tokens).await;
    assert_eq!(idp.stat("batch_calls"), 1, "one batch call");
    assert_eq!(idp.stat("last_batch_size"), 50);
    assert_eq!(introspections(&idp), 0, "no single calls");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn refresh_ahead_keeps_a_hot_token_off_the_idp() {
    let idp = DevIdp::start(&[]);
    idp.set_introspection("ok", 300);
    let yaml = server_yaml(
        idp.port,
        "tiers:\n  privileged: {max_staleness_ms: 1000}\ncache: {refresh_ahead_fraction: 0.4}\n",
    );
    let server = start(&yaml).await;
    let token = mint_opaque(&idp, "alice");
    let mut client = server.client.clone();
    assert_eq!(
        check(&mut client, "/admin/users", Some(&token)).await.0,
        200
    );
    let calls_after_first = introspections(&idp);
    let mut slowest = Duration::ZERO;
    let until = Instant::now() + Duration::from_secs(3);
    while Instant::now() < until {
        let started = Instant::now();
        assert_eq!(
            check(&mut client, "/admin/users", Some(&token)).await.0,
            200
        );
        slowest = slowest.max(started.elapsed());
        // Real time on purpose: refresh-ahead races real IdP round trips (300 ms) against the
        // data's age, so the server's clock and the IdP's must move together.
        tokio::time::sleep(Duration::from_millis(40)).await;
    }
    // Three seconds with a one-second freshness window: the data was renewed several times,
    // always in the background. Only the very first check was a miss.
    assert!(
        introspections(&idp) >= calls_after_first + 2,
        "refreshes happened"
    );
    assert_eq!(
        server_metric(
            server.admin_port,
            "authz_cache_lookups_total{result=\"miss\"}"
        ),
        1.0,
        "only the first check waited"
    );
    assert!(
        slowest < Duration::from_millis(250),
        "a hot check waited {slowest:?} (idp takes 300 ms)"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn bad_introspection_responses_fail_closed() {
    let idp = DevIdp::start(&[]);
    let server = start(&server_yaml(
        idp.port,
        "circuit_breaker: {failure_threshold: 100}\n",
    ))
    .await;
    for mode in ["nonjson", "missing_active", "error", "down"] {
        idp.set_introspection(mode, 0);
        let token = mint_opaque(&idp, "alice");
        let (status, headers) =
            check(&mut server.client.clone(), "/admin/users", Some(&token)).await;
        assert_eq!(status, 503, "{mode}: fail closed");
        assert_eq!(
            headers.get("retry-after").map(String::as_str),
            Some("5"),
            "{mode}"
        );
    }
    idp.set_introspection("ok", 0);
    let token = mint_opaque(&idp, "alice");
    assert_eq!(
        check(&mut server.client.clone(), "/admin/users", Some(&token))
            .await
            .0,
        200
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_circuit_opens_and_fails_fast_then_recovers() {
    let idp = DevIdp::start(&[]);
    let clock = ManualClock::new();
    let server = start_with_clock(
        &server_yaml(
            idp.port,
            "circuit_breaker: {failure_threshold: 3, open_ms: 800}\n",
        ),
        clock.clone(),
    )
    .await;
    idp.set_introspection("error", 0);
    for _ in 0..6 {
        let token = mint_opaque(&idp, "alice");
        assert_eq!(
            check(&mut server.client.clone(), "/admin/users", Some(&token))
                .await
                .0,
            503
        );
    }
    assert_eq!(
        introspections(&idp),
        3,
        "after 3 failures the circuit is open"
    );
    assert!(
        server_metric(
            server.admin_port,
            "authz_introspection_errors_total{kind=\"circuit_open\"}"
        ) >= 3.0
    );
    idp.set_introspection("ok", 0);
    let token = mint_opaque(&idp, "alice");
    assert_eq!(
        check(&mut server.client.clone(), "/admin/users", Some(&token))
            .await
            .0,
        503,
        "still open before open_ms has passed on the server's clock"
    );
    clock.advance_ms(900);
    assert_eq!(
        check(&mut server.client.clone(), "/admin/users", Some(&token))
            .await
            .0,
        200,
        "half-open probe closes it"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn malformed_requests_and_missed_deadlines_are_denies_not_errors() {
    let idp = DevIdp::start(&[]);
    idp.set_introspection("ok", 1500);
    let server = start(&server_yaml(idp.port, "check_timeout_ms: 200\n")).await;
    let mut client = server.client.clone();
    let empty = client
        .check(CheckRequest::default())
        .await
        .expect("no grpc error")
        .into_inner();
    assert!(matches!(
        empty.http_response,
        Some(HttpResponse::DeniedResponse(_))
    ));
    let token = mint_opaque(&idp, "alice");
    let started = Instant::now();
    assert_eq!(
        check(&mut client, "/admin/users", Some(&token)).await.0,
        503,
        "deadline → fail closed"
    );
    assert!(
        started.elapsed() < Duration::from_millis(1400),
        "the deadline cut the wait short"
    );
    let bad_tier = client
        .check(check_request("/admin/users", Some(&token), Some("gold")))
        .await
        .expect("no grpc error")
        .into_inner();
    assert!(
        matches!(
            bad_tier.http_response,
            Some(HttpResponse::DeniedResponse(_))
        ),
        "unknown tier fails closed"
    );
}

/// Only origin-form targets are decided: `;/admin/users` canonicalises to `/admin/users`, but an
/// upstream need not read it that way, so it is a bad request whatever the token (found by the
/// `filter_request` fuzz target, for the filter; the server keeps the same rule).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn targets_that_are_not_origin_form_are_bad_requests() {
    let idp = DevIdp::start(&[]);
    idp.set_introspection("ok", 0);
    let server = start(&server_yaml(idp.port, "")).await;
    let mut client = server.client.clone();
    let token = mint_opaque(&idp, "alice");
    assert_eq!(
        check(&mut client, "/admin/users", Some(&token)).await.0,
        200
    );
    for target in [
        ";/admin/users",
        "*",
        "",
        "admin/users",
        "http://x/admin/users",
    ] {
        assert_eq!(
            check(&mut client, target, Some(&token)).await.0,
            400,
            "{target:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn admin_revocation_and_versions_take_effect_at_once() {
    let idp = DevIdp::start(&[]);
    let server = start(&server_yaml(idp.port, "")).await;
    let admin = |method: &str, path: &str, body: Option<serde_json::Value>, auth: bool| {
        let bearer = format!("Bearer {ADMIN_TOKEN}");
        let mut headers = vec![("content-type", "application/json")];
        if auth {
            headers.push(("authorization", bearer.as_str()));
        }
        let text = body.map(|b| b.to_string());
        request(
            method,
            &format!("http://127.0.0.1:{}{path}", server.admin_port),
            &headers,
            text.as_deref(),
        )
    };
    assert_eq!(
        admin("POST", "/admin/policy-version", None, false).status,
        401,
        "admin needs the bearer secret"
    );
    // The credential is checked before the body or query is read: a caller without it learns
    // nothing of what an endpoint would parse (no 400/415/422 before the 401).
    let base = format!("http://127.0.0.1:{}", server.admin_port);
    for (method, path, content_type, body) in [
        ("POST", "/admin/revoke", "text/plain", "not json"),
        ("POST", "/admin/revoke", "application/json", "{\"nope\": 1}"),
        ("POST", "/admin/revoke-subject", "application/xml", "<x/>"),
        ("GET", "/admin/epochs?since=abc", "text/plain", ""),
    ] {
        for auth in [None, Some("Bearer wrong-token-0123456789")] {
            let mut headers = vec![("content-type", content_type)];
            headers.extend(auth.map(|a| ("authorization", a)));
            let reply = request(method, &format!("{base}{path}"), &headers, Some(body));
            assert_eq!(
                reply.status, 401,
                "{method} {path} {auth:?}: {}",
                reply.body
            );
        }
    }
    let mut client = server.client.clone();
    let (a, b) = (mint_opaque(&idp, "alice"), mint_opaque(&idp, "bob"));
    assert_eq!(check(&mut client, "/admin/x", Some(&a)).await.0, 200);
    assert_eq!(check(&mut client, "/admin/x", Some(&b)).await.0, 200);
    assert_eq!(
        admin("POST", "/admin/revoke", Some(json!({"token": a})), true).status,
        200
    );
    assert_eq!(
        check(&mut client, "/admin/x", Some(&a)).await.0,
        401,
        "revoked token"
    );
    assert_eq!(
        admin(
            "POST",
            "/admin/revoke-subject",
            Some(json!({"sub": "bob"})),
            true
        )
        .status,
        200
    );
    assert_eq!(
        check(&mut client, "/admin/x", Some(&b)).await.0,
        401,
        "revoked subject"
    );
    // The one sleep left here: a later login is judged by the IdP's `iat` (whole seconds, on
    // the dev IdP's own clock, another process), which must pass the revocation's second.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let fresh_bob = mint_opaque(&idp, "bob");
    assert_eq!(
        check(&mut client, "/admin/x", Some(&fresh_bob)).await.0,
        200,
        "a later login passes"
    );
    let bumped = admin("POST", "/admin/policy-version", None, true).json();
    assert_eq!(bumped["policy_version"], 1);
    let epochs = admin("GET", "/admin/epochs?since=0", None, true).json();
    assert_eq!(epochs["policy_version"], 1);
    assert_eq!(epochs["format"], 2, "the only format, asked for or not");
    assert_eq!(epochs["subjects"][0][0], "bob");
    assert_eq!(epochs["subjects"][0][2], 1, "bob's epoch");
    assert_eq!(epochs["tokens"].as_array().map(Vec::len), Some(1));
    let since = epochs["version"].as_u64().unwrap_or(0);
    let nothing = admin("GET", &format!("/admin/epochs?since={since}"), None, true).json();
    assert_eq!(nothing["subjects"].as_array().map(Vec::len), Some(0));
    assert_eq!(
        admin("GET", "/admin/epochs?since=0&format=1", None, true).status,
        400,
        "the first format (one unpaged answer) is not served"
    );
    let (_, headers) = check(&mut client, "/admin/x", Some(&fresh_bob)).await;
    assert_eq!(
        headers.get("x-authz-policy-version").map(String::as_str),
        Some("1")
    );
    let metrics = get(
        &format!("http://127.0.0.1:{}/metrics", server.admin_port),
        &[],
    )
    .body;
    for family in [
        "authz_decisions_total",
        "authz_check_seconds_bucket",
        "authz_decision_seconds_bucket{outcome=\"allow\",tier=\"privileged\",le=",
        "authz_decision_seconds_bucket{outcome=\"deny\",tier=",
        "authz_cache_lookups_total",
        "authz_circuit_state",
        "authz_introspection_calls_total",
    ] {
        assert!(metrics.contains(family), "{family} missing from /metrics");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn step_up_and_rate_limits() {
    let idp = DevIdp::start(&[]);
    let yaml = server_yaml(
        idp.port,
        "tiers:\n  privileged: {step_up: {max_auth_age_seconds: 300, acr_values: [mfa]}}\nrate_limits:\n  privileged_per_subject: {per_minute: 5, burst: 5}\n",
    );
    let server = start(&yaml).await;
    let mut client = server.client.clone();
    let old = idp.mint(
        json!({"sub": "carol", "scope": "admin", "opaque": true, "acr": "mfa", "auth_age": 3600}),
    );
    let (status, headers) = check(&mut client, "/admin/x", Some(&old)).await;
    assert_eq!(status, 401);
    let challenge = headers.get("www-authenticate").cloned().unwrap_or_default();
    assert!(
        challenge.contains("error=\"insufficient_user_authentication\"")
            && challenge.contains("max_age=\"300\""),
        "{challenge}"
    );
    let weak = idp.mint(json!({"sub": "carol", "scope": "admin", "opaque": true, "acr": "pwd"}));
    assert_eq!(check(&mut client, "/admin/x", Some(&weak)).await.0, 401);
    let fresh = idp.mint(json!({"sub": "dave", "scope": "admin", "opaque": true, "acr": "mfa"}));
    let mut statuses = Vec::new();
    for _ in 0..7 {
        statuses.push(check(&mut client, "/admin/x", Some(&fresh)).await.0);
    }
    assert_eq!(statuses, vec![200, 200, 200, 200, 200, 429, 429]);
    // A cached allow is no exemption: still limited.
    assert_eq!(check(&mut client, "/admin/x", Some(&fresh)).await.0, 429);
}

#[test]
fn a_malformed_config_exits_non_zero_naming_each_problem() {
    let scratch = Scratch::new("bad-server-config");
    let path = scratch.0.join("bad.yaml");
    std::fs::write(
        &path,
        "listen: nowhere\nadmin_token: x\nintrospection: {endpoint: ftp://idp}\ncolour: blue\n",
    )
    .expect("write");
    let binary = repo_root().join("target/debug/ext-authz-server");
    let output = std::process::Command::new(binary)
        .arg("--config")
        .arg(&path)
        .output()
        .expect("run server");
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    for expected in [
        "config: unknown field \"colour\"",
        "listen: \"nowhere\" is not an ip:port address",
        "admin_token: is required",
        "introspection.endpoint: \"ftp://idp\" is not an http(s) url",
        "introspection.client_id: is required",
        "policy: is required",
    ] {
        assert!(
            stderr.contains(expected),
            "missing {expected:?} in:\n{stderr}"
        );
    }
    assert!(
        String::from_utf8_lossy(&output.stdout).is_empty(),
        "nothing was bound or announced"
    );
}

#[test]
fn the_shipped_dev_config_is_valid() {
    let path = repo_root().join("config/ext-authz-server.dev.yaml");
    let config = ServerConfig::load(&path.display().to_string())
        .expect("config/ext-authz-server.dev.yaml must load");
    assert_eq!(config.listen.port(), 9191);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn shutdown_reports_not_serving_and_drains() {
    use tonic_health::pb::health_check_response::ServingStatus;
    use tonic_health::pb::health_client::HealthClient;
    use tonic_health::pb::HealthCheckRequest;
    let idp = DevIdp::start(&[]);
    let mut server = start(&server_yaml(idp.port, "drain_ms: 1500\n")).await;
    let channel = server.client.clone();
    let token = mint_opaque(&idp, "alice");
    assert_eq!(
        check(&mut channel.clone(), "/admin/x", Some(&token))
            .await
            .0,
        200
    );
    assert_eq!(
        get(
            &format!("http://127.0.0.1:{}/readyz", server.admin_port),
            &[]
        )
        .status,
        200
    );
    // The health service shares the Check port.
    let mut health = HealthClient::new(
        tonic::transport::Channel::from_shared(format!("http://{}", server.grpc_addr))
            .expect("uri")
            .connect()
            .await
            .expect("connect"),
    );
    let service = HealthCheckRequest {
        service: "envoy.service.auth.v3.Authorization".into(),
    };
    let status = health
        .check(service.clone())
        .await
        .expect("health")
        .into_inner()
        .status;
    assert_eq!(status, ServingStatus::Serving as i32);
    server.stop();
    // Real time: the drain is a tokio timer, not the server's clock.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let status = health
        .check(service)
        .await
        .expect("health while draining")
        .into_inner()
        .status;
    assert_eq!(
        status,
        ServingStatus::NotServing as i32,
        "NOT_SERVING during the drain"
    );
    assert_eq!(
        get(
            &format!("http://127.0.0.1:{}/readyz", server.admin_port),
            &[]
        )
        .status,
        503
    );
    assert_eq!(
        check(&mut channel.clone(), "/admin/x", Some(&token))
            .await
            .0,
        200,
        "in-flight traffic still served while draining"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn client_secret_post_and_jwt_tokens_work_too() {
    let idp = DevIdp::start(&[]);
    let yaml = server_yaml(idp.port, "").replace(
        "  timeout_ms: 2000\n",
        "  timeout_ms: 2000\n  auth_method: client_secret_post\n",
    );
    let server = start(&yaml).await;
    let jwt = idp.mint(json!({"sub": "erin", "scope": "admin"}));
    let (status, headers) = check(&mut server.client.clone(), "/admin/x", Some(&jwt)).await;
    assert_eq!(status, 200, "a JWT is introspected like an opaque token");
    assert_eq!(
        headers.get("x-auth-subject").map(String::as_str),
        Some("erin")
    );
    assert_eq!(introspections(&idp), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn without_a_batch_endpoint_a_batch_goes_out_as_concurrent_single_calls() {
    let idp = DevIdp::start(&[]);
    idp.set_introspection("ok", 200);
    let yaml = server_yaml(idp.port, "batching: {window_ms: 50, max_batch: 64}\n").replace(
        &format!(
            "  batch_endpoint: http://127.0.0.1:{}/introspect/batch\n",
            idp.port
        ),
        "",
    );
    let server = start(&yaml).await;
    let tokens: Vec<String> = (0..20)
        .map(|i| mint_opaque(&idp, &format!("user-{i}")))
        .collect();
    let started = Instant::now();
    all_allowed(&server, &tokens).await;
    assert_eq!(idp.stat("batch_calls"), 0);
    assert_eq!(introspections(&idp), 20);
    // 20 calls of 200 ms each, made concurrently over the pool, not one after another.
    assert!(
        started.elapsed() < Duration::from_millis(2000),
        "calls were serialised: {:?}",
        started.elapsed()
    );
}

/// Two proxy fleets' feed secrets.
const FLEET_A: &str = "fleet-a-feed-secret-0123456789";
const FLEET_B: &str = "fleet-b-feed-secret-0123456789";

/// A server taking [`FLEET_A`] and [`FLEET_B`] as feed secrets, with `feed` (YAML flow map)
/// as its `feed:` section.
async fn start_with_two_fleets(idp: &DevIdp, feed: &str) -> Server {
    start(&server_yaml(
        idp.port,
        &format!("epochs_tokens: [\"{FLEET_A}\", \"{FLEET_B}\"]\nfeed: {feed}\n"),
    ))
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn held_feed_requests_are_capped_per_secret_and_in_all_and_several_secrets_read_the_feed() {
    let idp = DevIdp::start(&[]);
    let server = start_with_two_fleets(&idp, "{max_held: 3, max_held_per_token: 2}").await;
    let base = format!("http://127.0.0.1:{}", server.admin_port);
    let feed = move |secret: &'static str, wait_ms: u64| {
        let url = format!("{base}/admin/epochs?since=0&format=2&wait_ms={wait_ms}&incarnation=x");
        tokio::task::spawn_blocking(move || {
            let started = Instant::now();
            let bearer = format!("Bearer {secret}");
            let reply = get(&url, &[("authorization", bearer.as_str())]);
            (reply.status, started.elapsed())
        })
    };
    // Each secret reads the feed (a plain read).
    for secret in [FLEET_A, FLEET_B] {
        let (status, _) = feed(secret, 0).await.expect("join");
        assert_eq!(status, 200, "{secret}");
    }
    // Held requests: the incarnation differs, so hold them by asking from the server's own.
    let incarnation = get(
        &format!(
            "http://127.0.0.1:{}/admin/epochs?since=0&format=2",
            server.admin_port
        ),
        &[("authorization", &format!("Bearer {FLEET_A}"))],
    )
    .json()["incarnation"]
        .as_str()
        .expect("an incarnation")
        .to_owned();
    let base = format!("http://127.0.0.1:{}", server.admin_port);
    let held = move |secret: &'static str| {
        let url = format!(
            "{base}/admin/epochs?since=999999&format=2&wait_ms=1500&incarnation={incarnation}"
        );
        tokio::task::spawn_blocking(move || {
            let started = Instant::now();
            let bearer = format!("Bearer {secret}");
            let reply = get(&url, &[("authorization", bearer.as_str())]);
            (reply.status, started.elapsed())
        })
    };
    let a1 = held(FLEET_A);
    let a2 = held(FLEET_A);
    tokio::time::sleep(Duration::from_millis(300)).await;
    // A third for fleet A: over its secret's cap, refused at once.
    let (status, took) = held(FLEET_A).await.expect("join");
    assert_eq!(status, 429);
    assert!(took < Duration::from_millis(500), "{took:?}");
    // Fleet B gets the last place in all; then the global cap refuses it too.
    let b1 = held(FLEET_B);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (status, _) = held(FLEET_B).await.expect("join");
    assert_eq!(status, 429, "the global cap");
    for (status, took) in [a1.await, a2.await, b1.await]
        .into_iter()
        .map(|r| r.expect("join"))
    {
        assert_eq!(status, 200);
        assert!(took >= Duration::from_millis(1_000), "held: {took:?}");
    }
    let _ = feed;
}

/// Reads the feed from `since` with `secret`: the reply and how long it took.
async fn read_feed_timed(admin_port: u16, secret: &'static str, since: u64) -> (Reply, Duration) {
    tokio::task::spawn_blocking(move || {
        let started = Instant::now();
        let reply = get(
            &format!("http://127.0.0.1:{admin_port}/admin/epochs?since={since}&format=2"),
            &[("authorization", &format!("Bearer {secret}"))],
        );
        (reply, started.elapsed())
    })
    .await
    .expect("join")
}

/// Reads the feed from 0 with `secret`, `count` at once; each read's status, `Retry-After`
/// and the body's `retry_after_ms`, and how long all took.
async fn read_feed_at_once(
    admin_port: u16,
    secret: &'static str,
    count: usize,
) -> (Vec<(u16, Option<String>, Option<u64>)>, Duration) {
    let started = Instant::now();
    let reads: Vec<_> = (0..count)
        .map(|_| tokio::spawn(read_feed_timed(admin_port, secret, 0)))
        .collect();
    let mut answers = Vec::new();
    for read in reads {
        let (reply, _) = read.await.expect("join");
        answers.push((
            reply.status,
            reply.header("retry-after").map(str::to_owned),
            reply.json_or_null()["retry_after_ms"].as_u64(),
        ));
    }
    (answers, started.elapsed())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn catch_up_reads_are_paced_per_secret_and_pushed_answers_never_are() {
    let idp = DevIdp::start(&[]);
    // 64 KiB/s per secret; pages of 100 revocations (about 11 KB each).
    let server =
        start_with_two_fleets(&idp, "{page_rows: 100, catch_up_bytes_per_second: 65536}").await;
    let admin_port = server.admin_port;
    let revoke = move |i: usize| {
        let hash = authz_core::token_hash::digest_hex(&authz_core::token_hash::token_digest(
            &format!("paced-{i}"),
        ));
        let reply = request(
            "POST",
            &format!("http://127.0.0.1:{admin_port}/admin/revoke"),
            &[
                ("authorization", &format!("Bearer {ADMIN_TOKEN}")),
                ("content-type", "application/json"),
            ],
            Some(&json!({ "token_hash": hash }).to_string()),
        );
        assert_eq!(reply.status, 200, "{}", reply.body);
        hash
    };
    tokio::task::spawn_blocking(move || (0..300).for_each(|i| drop(revoke(i))))
        .await
        .expect("join");

    // Fleet A asks for the first page 24 times at once (about 260 KB): one second's worth
    // goes at once, the next half second's waits its turn, the rest is refused with
    // Retry-After.
    let (answers, took) = read_feed_at_once(admin_port, FLEET_A, 24).await;
    let retry_after_ms: Vec<u64> = answers.iter().filter_map(|(_, _, ms)| *ms).collect();
    let answers: Vec<_> = answers.into_iter().map(|(s, h, _)| (s, h)).collect();
    let ok = answers.iter().filter(|(s, _)| *s == 200).count();
    let refused: Vec<_> = answers.iter().filter(|(s, _)| *s == 429).collect();
    assert!((6..=20).contains(&ok), "{answers:?}");
    assert_eq!(ok + refused.len(), answers.len(), "{answers:?}");
    assert!(
        refused
            .iter()
            .all(|(_, after)| after.as_deref().and_then(|a| a.parse::<u64>().ok()) >= Some(1)),
        "{answers:?}"
    );
    assert!(
        retry_after_ms.iter().all(|ms| *ms >= 1) && retry_after_ms.len() == refused.len(),
        "the filter reads the wait from the body: {retry_after_ms:?}"
    );
    assert!(took >= Duration::from_millis(300), "paced: {took:?}");
    assert!(took < Duration::from_secs(3), "waits are bounded: {took:?}");

    assert!(
        server_metric(
            admin_port,
            "authz_feed_refused_total{reason=\"catch_up_rate\"}"
        ) >= 1.0
    );

    // Fleet B's budget is its own.
    let (answers, took) = read_feed_at_once(admin_port, FLEET_B, 3).await;
    assert!(answers.iter().all(|(s, ..)| *s == 200), "{answers:?}");
    assert!(took < Duration::from_millis(800), "{took:?}");

    // A held request of fleet A, woken by a change while fleet A is over its budget, is
    // answered at once with the change (revocations are pushed within the bound whatever a
    // looping client does).
    let state = get(
        &format!("http://127.0.0.1:{admin_port}/admin/epochs?since=999999&format=2"),
        &[("authorization", &format!("Bearer {FLEET_B}"))],
    )
    .json();
    let (version, incarnation) = (
        state["version"].as_u64().expect("version"),
        state["incarnation"]
            .as_str()
            .expect("incarnation")
            .to_owned(),
    );
    let held = tokio::task::spawn_blocking(move || {
        let reply = get(
            &format!(
                "http://127.0.0.1:{admin_port}/admin/epochs?since={version}&format=2&wait_ms=10000&incarnation={incarnation}"
            ),
            &[("authorization", &format!("Bearer {FLEET_A}"))],
        );
        (reply.status, reply.json_or_null(), Instant::now())
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    let flood = tokio::spawn(read_feed_at_once(admin_port, FLEET_A, 32));
    tokio::time::sleep(Duration::from_millis(60)).await;
    // A cursor near the state (a worker's next read after a push, or its polls once out of
    // push) is never paced or refused: its answer is small, and a client looping with the
    // same secret must not keep workers from the changes.
    let near = read_feed_timed(admin_port, FLEET_A, 290).await;
    assert_eq!(near.0.status, 200, "{}", near.0.body);
    assert_eq!(near.0.json()["tokens"].as_array().map(Vec::len), Some(10));
    assert!(
        near.1 < Duration::from_millis(150),
        "not paced: {:?}",
        near.1
    );
    let revoked_at = Instant::now();
    let hash = tokio::task::spawn_blocking(move || revoke(1_000))
        .await
        .expect("join");
    let (status, pushed, answered_at) = held.await.expect("join");
    assert_eq!(status, 200, "{pushed}");
    assert_eq!(pushed["tokens"][0][0], hash.as_str(), "{pushed}");
    let push_took = answered_at.duration_since(revoked_at);
    assert!(
        push_took < Duration::from_millis(300),
        "a push is not paced: {push_took:?}"
    );
    let (answers, _) = flood.await.expect("join");
    assert!(answers.iter().any(|(s, ..)| *s == 429), "{answers:?}");

    // A worker that fell more than 256 changes behind (a mass revocation between two of its
    // reads) but read the state within the last 90 s is a running worker: its read is not
    // paced either, whatever fleet A's looping client does.
    tokio::task::spawn_blocking(move || (2_000..2_300).for_each(|i| drop(revoke(i))))
        .await
        .expect("join");
    let flood = tokio::spawn(read_feed_at_once(admin_port, FLEET_A, 32));
    tokio::time::sleep(Duration::from_millis(60)).await;
    let (behind, took) = read_feed_timed(admin_port, FLEET_A, version).await;
    assert_eq!(behind.status, 200, "{}", behind.body);
    assert!(
        behind.json()["tokens"].as_array().map(Vec::len) >= Some(50),
        "a page of what it missed"
    );
    assert!(took < Duration::from_millis(150), "not paced: {took:?}");
    let (answers, _) = flood.await.expect("join");
    assert!(answers.iter().any(|(s, ..)| *s == 429), "{answers:?}");
}

/// A background Check (`context_extensions[authz_background]`) of `token` on `GET path`.
fn background_check(path: &str, token: &str) -> CheckRequest {
    let mut request = check_request(path, Some(token), Some("authenticated"));
    if let Some(attributes) = request.attributes.as_mut() {
        attributes
            .context_extensions
            .insert("authz_background".into(), "1".into());
        if let Some(http) = attributes.request.as_mut().and_then(|r| r.http.as_mut()) {
            http.method = "GET".into();
        }
    }
    request
}

/// The token revocations in the server's change feed.
fn fed_token_revocations(admin_port: u16) -> usize {
    let feed = get(
        &format!("http://127.0.0.1:{admin_port}/admin/epochs?since=0"),
        &[("authorization", &format!("Bearer {ADMIN_TOKEN}"))],
    );
    let feed: serde_json::Value = serde_json::from_str(&feed.body).expect("json");
    feed["tokens"].as_array().map_or(0, Vec::len)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_background_check_revokes_only_a_token_it_verified_that_the_idp_disowns() {
    let idp = DevIdp::start(&[]);
    let extra = format!(
        "token:\n  issuer: {ISSUER}\n  audiences: [{AUDIENCE}]\n  discovery: false\n  jwks_uri: http://127.0.0.1:{{IDP_PORT}}/.well-known/jwks.json\npolicy:\n  routes:\n    - {{name: news, match: {{prefix: /news/, methods: [GET]}}, tier: authenticated, background_check_ms: 1000}}\n  default: {{tier: authenticated}}\n"
    );
    let server = start(&server_yaml(idp.port, &extra)).await;
    let mut client = server.client.clone();
    let victim = idp.mint(json!({"sub": "victim", "scope": "read", "ttl": 600}));
    // Forged: the victim's signed part with a signature of garbage. The IdP does not know it
    // (inactive), and its revocation key is the victim's: it must not be revoked.
    let (signed_part, _) = victim.rsplit_once('.').expect("a JWS");
    let forged = format!("{signed_part}.AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA");
    let before = introspections(&idp);
    let reply = client
        .check(background_check("/news/1", &forged))
        .await
        .expect("check")
        .into_inner();
    assert!(matches!(
        reply.http_response,
        Some(HttpResponse::DeniedResponse(_))
    ));
    assert_eq!(introspections(&idp), before, "refused before any IdP call");
    // The victim's real token: active, allowed, nothing revoked.
    let reply = client
        .check(background_check("/news/1", &victim))
        .await
        .expect("check")
        .into_inner();
    assert!(matches!(
        reply.http_response,
        Some(HttpResponse::OkResponse(_))
    ));
    // Revoked at the IdP: a plain check, or the marker on a route the server does not opt in,
    // revokes nothing; a background check on the opted-in route does, and says so.
    idp.revoke(&victim);
    tokio::time::sleep(Duration::from_millis(1_100)).await;
    let plain = check_request("/news/1", Some(&victim), Some("authenticated"));
    client.check(plain).await.expect("check");
    client
        .check(background_check("/other", &victim))
        .await
        .expect("check");
    tokio::time::sleep(Duration::from_millis(200)).await;
    let admin_port = server.admin_port;
    let none = tokio::task::spawn_blocking(move || fed_token_revocations(admin_port))
        .await
        .expect("feed");
    assert_eq!(
        none, 0,
        "only a background check on an opted-in route revokes"
    );
    let reply = client
        .check(background_check("/news/1", &victim))
        .await
        .expect("check")
        .into_inner();
    let revoked_flag = reply
        .dynamic_metadata
        .as_ref()
        .and_then(|m| {
            m.fields
                .get(authz_core::ext_authz_proto::metadata_keys::TOKEN_REVOKED)
        })
        .and_then(|v| v.kind.clone());
    assert!(
        matches!(
            revoked_flag,
            Some(envoy_types::pb::google::protobuf::value::Kind::BoolValue(
                true
            ))
        ),
        "the reply tells the filter: {revoked_flag:?}"
    );
    let fed = tokio::task::spawn_blocking(move || {
        eventually(Duration::from_secs(3), || {
            fed_token_revocations(admin_port) == 1
        })
    })
    .await
    .expect("feed");
    assert!(fed, "published through the change feed");
}
