//! End-to-end tests of the Wasm filter in a real Envoy (2 workers), against the real dev IdP
//! and echo upstream over loopback sockets. Each test starts its own stack.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use serde_json::{json, Value};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tests::*;

fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

struct Stack {
    envoy: Envoy,
    idp: DevIdp,
    _echo: Echo,
}

fn stack_with(config: Value, idp_args: &[&str]) -> Stack {
    let idp = DevIdp::start(idp_args);
    let echo = Echo::start();
    let envoy = Envoy::start(&config, &idp, &echo);
    Stack {
        envoy,
        idp,
        _echo: echo,
    }
}

fn stack() -> Stack {
    stack_with(plugin_config(), &[])
}

fn valid_claims() -> Value {
    json!({"iss": ISSUER, "aud": AUDIENCE, "sub": "mallory", "exp": now() + 300, "iat": now(), "scope": "read"})
}

#[test]
fn valid_rs256_and_es256_tokens_are_allowed_with_the_verified_context() {
    let s = stack();
    for alg in ["RS256", "ES256"] {
        let token = s.idp.mint(json!({"sub": "alice", "scope": "read write", "alg": alg, "claims": {"tenant": "acme"}}));
        let reply = s.envoy.get(
            "/api/items?page=2",
            Some(&token),
            &[
                ("x-auth-subject", "root"),
                ("x-auth-scopes", "admin"),
                ("x-auth-tier", "public"),
                ("x-auth-tenant", "evil"),
            ],
        );
        assert_eq!(reply.status, 200, "{alg}: {}", reply.body);
        let echoed = reply.json();
        let headers = &echoed["headers"];
        assert_eq!(
            headers["x-auth-subject"], "alice",
            "{alg}: a spoofed header must never reach the upstream"
        );
        assert_eq!(headers["x-auth-scopes"], "read write");
        assert_eq!(headers["x-auth-tier"], "authenticated");
        assert_eq!(headers["x-auth-tenant"], "acme");
        assert_eq!(headers["x-auth-issuer"], ISSUER);
        assert!(
            headers.get("authorization").is_none(),
            "the credential is not forwarded by default"
        );
        assert_eq!(echoed["path"], "/api/items?page=2");
    }
    // Public routes need no token, and spoofed context headers are stripped there too.
    let public = s.envoy.get("/healthz", None, &[("x-auth-subject", "root")]);
    assert_eq!(public.status, 200);
    assert!(public.json()["headers"].get("x-auth-subject").is_none());
    assert_eq!(public.json()["headers"]["x-auth-tier"], "public");
    // Hot-path counters reach Envoy on the worker's next tick (≤ 250 ms).
    assert!(eventually(Duration::from_secs(2), || s
        .envoy
        .metric("authz_proxy_decisions_total{outcome=\"allow\"}")
        == 3));
}

#[test]
fn every_kind_of_bad_token_gets_the_same_401() {
    let s = stack();
    let idp = &s.idp;
    let good = idp.mint(json!({"scope": "read"}));
    assert_eq!(s.envoy.get("/api/items", Some(&good), &[]).status, 200);

    let rsa_n = idp.jwks()["keys"]
        .as_array()
        .and_then(|keys| keys.iter().find(|k| k["kty"] == "RSA"))
        .and_then(|k| k["n"].as_str())
        .map(|n| URL_SAFE_NO_PAD.decode(n).expect("n is base64url"))
        .expect("the idp publishes an rsa key");
    let oversized = format!(
        "{}.{}.{}",
        "a".repeat(40_000),
        "b".repeat(40_000),
        "c".repeat(22_400)
    );
    let cases: Vec<(&str, Option<String>, &str)> = vec![
        ("no token", None, "missing_token"),
        (
            "expired",
            Some(idp.mint(json!({"scope": "read", "ttl": -3600}))),
            "expired",
        ),
        (
            "not yet valid",
            Some(idp.mint(json!({"scope": "read", "nbf_in": 3600}))),
            "not_yet_valid",
        ),
        (
            "wrong issuer",
            Some(idp.mint(json!({"scope": "read", "claims": {"iss": "https://evil.example"}}))),
            "unknown_issuer",
        ),
        (
            "wrong audience",
            Some(idp.mint(json!({"scope": "read", "aud": "another-api"}))),
            "wrong_audience",
        ),
        (
            "tampered payload",
            Some(dev_keys::with_swapped_payload(&good, &valid_claims())),
            "bad_signature",
        ),
        (
            "tampered signature",
            Some(dev_keys::with_flipped_signature(&good)),
            "bad_signature",
        ),
        (
            "alg none",
            Some(dev_keys::unsigned_token(&valid_claims())),
            "alg_none",
        ),
        (
            "hs256 signed with the rsa public key",
            Some(
                dev_keys::sign_hmac(&rsa_n, &json!({"kid": "rsa-1"}), &valid_claims())
                    .expect("forge"),
            ),
            "alg_key_mismatch",
        ),
        (
            "truncated",
            // Cut inside the payload: the token has lost its signature segment.
            Some(good[..good.find('.').unwrap_or(0) + 12].to_owned()),
            "malformed",
        ),
        ("garbage", Some("not-a-jwt-at-all".to_owned()), "malformed"),
        ("100 KB header", Some(oversized), "too_large"),
    ];
    let mut reference = None;
    for (name, token, reason) in &cases {
        let before = s.envoy.metric(&format!(
            "authz_proxy_decisions_total{{reason=\"{reason}\"}}"
        ));
        let reply = s.envoy.get("/api/items", token.as_deref(), &[]);
        assert_eq!(reply.status, 401, "{name}: {}", reply.body);
        let after = s.envoy.metric(&format!(
            "authz_proxy_decisions_total{{reason=\"{reason}\"}}"
        ));
        assert_eq!(after, before + 1, "{name}: reason {reason} counted");
        let signature = reply.deny_signature();
        assert_eq!(
            signature.1.as_deref(),
            Some("Bearer realm=\"e2e\", error=\"invalid_token\""),
            "{name}"
        );
        match &reference {
            None => reference = Some(signature),
            Some(first) => assert_eq!(
                &signature, first,
                "{name}: the 401 must not reveal the reason"
            ),
        }
    }
    // Tokens never appear in the log; their hash labels do.
    let log = s.envoy.log();
    for (name, token, _) in &cases {
        if let Some(token) = token {
            if token.len() > 20 {
                let tail = &token[token.len() - 20..];
                assert!(
                    !log.contains(tail),
                    "{name}: token material in the envoy log"
                );
            }
        }
    }
    assert!(log.contains("reason=expired"), "the reason is logged");
}

#[test]
fn a_valid_token_without_the_scope_is_forbidden() {
    let s = stack();
    let read_only = s.idp.mint(json!({"scope": "read"}));
    let reply = s.envoy.send("POST", "/api/items", Some(&read_only), &[]);
    assert_eq!(reply.status, 403, "{}", reply.body);
    assert_eq!(
        reply.header("www-authenticate"),
        Some("Bearer realm=\"e2e\", error=\"insufficient_scope\"")
    );
    let writer = s.idp.mint(json!({"scope": "read write"}));
    assert_eq!(
        s.envoy
            .send("POST", "/api/items", Some(&writer), &[])
            .status,
        200
    );
    // Tenant taken from the path must match the token's tenant claim.
    let acme = s
        .idp
        .mint(json!({"scope": "orders", "claims": {"tenant": "acme"}}));
    assert_eq!(
        s.envoy.get("/tenants/acme/orders", Some(&acme), &[]).status,
        200
    );
    assert_eq!(
        s.envoy
            .get("/tenants/globex/orders", Some(&acme), &[])
            .status,
        403
    );
    assert_eq!(
        s.envoy
            .metric("authz_proxy_decisions_total{reason=\"insufficient_scope\"}"),
        1
    );
    assert_eq!(
        s.envoy
            .metric("authz_proxy_decisions_total{reason=\"tenant_mismatch\"}"),
        1
    );
}

#[test]
fn privileged_routes_fail_closed_without_the_authorization_server() {
    let s = stack();
    let token = s.idp.mint(json!({"scope": "read write admin"}));
    let reply = s.envoy.send("POST", "/admin/users", Some(&token), &[]);
    assert_eq!(reply.status, 503, "{}", reply.body);
    assert_eq!(reply.header("retry-after"), Some("5"));
    assert!(s
        .envoy
        .log()
        .contains("reason=server_required source=local tier=privileged"));
    assert_eq!(s.envoy.send("POST", "/admin/users", None, &[]).status, 401);
}

#[test]
fn a_rotated_key_is_fetched_on_its_first_unknown_kid_and_a_kid_flood_is_rate_limited() {
    let s = stack();
    let before = s.idp.mint(json!({"scope": "read"}));
    assert_eq!(s.envoy.get("/api/x", Some(&before), &[]).status, 200);
    let fetches_after_start = s.idp.jwks_requests();
    std::thread::sleep(Duration::from_millis(1200)); // past min_refetch_interval_seconds = 1
    let new_kid = s.idp.rotate("RS256", true);
    let rotated = s.idp.mint(json!({"scope": "read"}));
    let reply = s.envoy.get("/api/x", Some(&rotated), &[]);
    assert_eq!(reply.status, 200, "new kid {new_kid}: {}", reply.body);
    assert_eq!(s.idp.jwks_requests(), fetches_after_start + 1);
    assert_eq!(
        s.envoy.metric("authz_proxy_jwks_unknown_kid_fetches_total"),
        1
    );

    // A flood of random kids: all denied, with fetches only from the budget (a burst of three,
    // one spent on the rotation above, then one per second). A kid nobody has looked for while
    // no refetch is allowed could be a rotation's: 503 with Retry-After (try again), not 401.
    let flood_start = s.idp.jwks_requests();
    let flood_started = std::time::Instant::now();
    for i in 0..30 {
        let token = s
            .idp
            .mint(json!({"scope": "read", "kid": format!("random-{i}")}));
        let reply = s.envoy.get("/api/x", Some(&token), &[]);
        match reply.status {
            503 => assert_eq!(reply.header("retry-after"), Some("5")),
            401 => {}
            other => panic!("random-{i}: {other}"),
        }
    }
    let flood_fetches = s.idp.jwks_requests() - flood_start;
    let refills = flood_started.elapsed().as_secs() + 1;
    assert!(
        flood_fetches <= authz_core::jwks_refresh::UNKNOWN_KID_BURST - 1 + refills,
        "{flood_fetches} fetches for 30 unknown kids"
    );
    assert!(
        s.envoy
            .metric("authz_proxy_jwks_unknown_kids_rate_limited_total")
            >= 30 - flood_fetches
    );
}

#[test]
fn one_jwks_fetch_serves_every_worker() {
    let s = stack();
    let token = s.idp.mint(json!({"scope": "read"}));
    for _ in 0..40 {
        // Fresh connections spread requests over both workers.
        assert_eq!(
            s.envoy
                .get("/api/items", Some(&token), &[("connection", "close")])
                .status,
            200
        );
    }
    std::thread::sleep(Duration::from_millis(600)); // several ticks of every root context
    let fetches = s.idp.jwks_requests();
    // Envoy's shared data has no create-if-absent, so two root contexts whose very first ticks
    // coincide can both win the first lease; per-worker fetching would show 3 or more.
    assert!(
        (1..=2).contains(&fetches),
        "{fetches} jwks fetches for 3 root contexts"
    );
}

#[test]
fn jwks_down_at_start_means_503_never_allow_then_recovery() {
    let s = stack_with(plugin_config(), &["--jwks-down"]);
    let token = s.idp.mint(json!({"scope": "read"}));
    for _ in 0..3 {
        let reply = s.envoy.get("/api/items", Some(&token), &[]);
        assert_eq!(reply.status, 503, "{}", reply.body);
        assert_eq!(reply.header("retry-after"), Some("5"));
    }
    assert!(
        s.envoy
            .metric("authz_proxy_jwks_fetches_total{result=\"failed\"}")
            >= 1
    );
    s.idp.set_jwks_down(false);
    let recovered = eventually(Duration::from_secs(40), || {
        let status = s.envoy.get("/api/items", Some(&token), &[]).status;
        assert!(status == 503 || status == 200, "unexpected {status}");
        status == 200
    });
    assert!(
        recovered,
        "the filter never recovered after the jwks endpoint came back"
    );
}

#[test]
fn last_good_keys_survive_a_failing_refresh() {
    let mut config = plugin_config();
    config["providers"][0]["jwks"]["remote"]["refresh_interval_seconds"] = json!(1);
    let s = stack_with(config, &[]);
    let token = s.idp.mint(json!({"scope": "read"}));
    assert_eq!(s.envoy.get("/api/items", Some(&token), &[]).status, 200);
    s.idp.set_jwks_down(true);
    let failures_seen = eventually(Duration::from_secs(10), || {
        s.envoy
            .metric("authz_proxy_jwks_fetches_total{result=\"failed\"}")
            >= 2
    });
    assert!(failures_seen, "refreshes were expected to fail");
    assert_eq!(
        s.envoy.get("/api/items", Some(&token), &[]).status,
        200,
        "last good keys kept"
    );
}

#[test]
fn a_bad_plugin_config_is_refused_with_every_problem_logged() {
    let scratch = Scratch::new("bad-config");
    let bad = json!({
        "providers": [{"issuer": "https://x", "audiences": [], "jwks": {"remote": {"path": "jwks"}}}],
        "routes": [{"match": {"prefix": "/a"}, "tier": "gold"}],
        "default": {"tier": "authenticated"},
        "colour": "blue"
    });
    let path = scratch.0.join("bad.yaml");
    std::fs::write(&path, render_e2e(&bad, 1, 2)).expect("write");
    let (ok, output) = validate(&path);
    assert!(!ok, "envoy accepted a bad plugin configuration:\n{output}");
    for expected in [
        "configuration problem: config: unknown field \\\"colour\\\"",
        "providers[0]: \\\"audiences\\\" must list at least one audience",
        "providers[0].jwks.remote: \\\"cluster\\\" is required",
        "providers[0].jwks.remote: path starts with",
        "routes[0]: unknown tier \\\"gold\\\"",
    ] {
        let plain = expected.replace("\\\"", "\"");
        assert!(output.contains(&plain), "missing {plain:?} in:\n{output}");
    }
}

#[test]
fn every_yaml_under_envoy_validates() {
    let scratch = Scratch::new("validate");
    let dir = repo_root().join("envoy");
    let mut checked = 0;
    for entry in std::fs::read_dir(&dir).expect("envoy dir") {
        let path = entry.expect("entry").path();
        if path.extension().and_then(|e| e.to_str()) != Some("yaml") {
            continue;
        }
        // Files that name the filter by its repo-relative path are checked against the built one.
        let text = std::fs::read_to_string(&path)
            .expect("read yaml")
            .replace(
                "\"target/wasm32-wasip1/release/wasm_filter.wasm\"",
                &format!("\"{}\"", wasm_path().display()),
            )
            .replace("{{FAILOVER_AUTHZ_PORT}}", "5")
            .replace("{{FAILOVER_AUTHZ_ADMIN_PORT}}", "6")
            .replace(
                "{{VIRTUAL_HOST}}",
                r#"{"name": "all", "domains": ["*"], "routes": [{"match": {"prefix": "/"}, "route": {"cluster": "upstream"}}]}"#,
            );
        let rendered = render(
            &text,
            &Placeholders {
                authz_port: 3,
                authz_admin_port: 4,
                admin_port: 0,
                listen_port: 0,
                upstream_port: 1,
                idp_port: 2,
                plugin_config: plugin_config(),
            },
        );
        let out = scratch.0.join(path.file_name().expect("name"));
        std::fs::write(&out, rendered).expect("write");
        let (ok, output) = validate(&out);
        assert!(ok, "{} does not validate:\n{output}", path.display());
        checked += 1;
    }
    assert!(
        checked >= 2,
        "expected the dev and e2e configs, found {checked}"
    );
}
