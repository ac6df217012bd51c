//! Hostile clients, end to end through the real Envoy (2 workers), the real filter, the real
//! server and the dev IdP: nothing a client sends may disable the filter, widen a decision,
//! or reach the upstream as trusted. One test per class of attack (issue "Hostile input");
//! each failed on the main branch before the fix it names.

use serde_json::json;
use std::time::{Duration, Instant};
use tests::*;

/// Envoy with the filter only (local JWT routes; privileged routes fail closed: no server).
struct FilterStack {
    envoy: Envoy,
    idp: DevIdp,
    _echo: Echo,
}

fn filter_stack() -> FilterStack {
    let idp = DevIdp::start(&[]);
    let echo = Echo::start();
    let envoy = Envoy::start(&plugin_config(), &idp, &echo);
    FilterStack {
        envoy,
        idp,
        _echo: echo,
    }
}

/// Envoy where native ext_authz decides `/admin` and `/account` (the filter is disabled
/// there) and the filter decides the rest, with the real server.
fn native_stack(server_extra: &str) -> ExtAuthzStack {
    ExtAuthzStack::start(server_extra)
}

fn bearer(token: &str) -> Vec<u8> {
    format!("authorization: Bearer {token}").into_bytes()
}

// ---------------------------------------------------------------------------------------
// 1. Availability: one request must never take the filter down.
// ---------------------------------------------------------------------------------------

#[test]
fn hostile_bytes_never_take_the_filter_down() {
    let s = filter_stack();
    let port = s.envoy.port;
    let token = s.idp.mint(json!({"sub": "alice", "scope": "read"}));
    let auth = bearer(&token);

    // Header values that are not UTF-8: the request is decided like any other.
    let (status, text) = raw_get(port, "/healthz", &[b"x-junk: \xff\xfe"]);
    assert_eq!(status, 200, "public route with a non-UTF-8 header: {text}");
    let (status, text) = raw_get(port, "/api/items", &[&auth, b"x-junk: caf\xe9"]);
    assert_eq!(status, 200, "valid token with a non-UTF-8 header: {text}");
    // A token that is not UTF-8 is a credential that is not valid.
    let (status, _) = raw_get(port, "/api/items", &[b"authorization: Bearer \xff\xfe"]);
    assert_eq!(status, 401);
    // Control bytes, a NUL, a path with bytes above 0x7f: refused by Envoy or by us, never a crash.
    for headers in [
        &[&b"x-ctl: a\x01b"[..]][..],
        &[&b"x-nul: a\x00b"[..]][..],
        &[&b"x-del: \x7f"[..]][..],
    ] {
        let (status, _) = raw_get(port, "/healthz", headers);
        assert!(status == 200 || status == 400, "status {status}");
    }
    let (status, _) = raw_get(port, "/api/café", &[&auth]);
    assert!(matches!(status, 200 | 400 | 404), "status {status}");
    let (status, _) = raw_request(
        port,
        b"GET /api/\xff HTTP/1.1\r\nhost: e2e\r\nconnection: close\r\n\r\n",
    );
    assert!(matches!(status, 0 | 400 | 401), "status {status}");
    // Many headers, and a large value.
    let many: Vec<Vec<u8>> = (0..95)
        .map(|i| format!("x-h{i}: {i}").into_bytes())
        .collect();
    let mut refs: Vec<&[u8]> = many.iter().map(Vec::as_slice).collect();
    refs.push(&auth);
    let (status, _) = raw_get(port, "/api/items", &refs);
    assert!(status == 200 || status == 431, "status {status}");
    let too_many: Vec<Vec<u8>> = (0..300)
        .map(|i| format!("x-h{i}: {i}").into_bytes())
        .collect();
    let refs: Vec<&[u8]> = too_many.iter().map(Vec::as_slice).collect();
    let (status, _) = raw_get(port, "/healthz", &refs);
    assert!(status == 431 || status == 400, "status {status}");
    let big = format!("x-big: {}", "a".repeat(150 * 1024)).into_bytes();
    let (status, _) = raw_get(port, "/api/items", &[&auth, &big]);
    assert!(status == 200 || status == 431, "status {status}");
    // Two authorization headers: which one counts is ambiguous, so neither does (Envoy joins
    // them into one value, which is no bearer token; the filter refuses two separate ones).
    let (status, _) = raw_get(port, "/api/items", &[&auth, &auth]);
    assert!(
        status == 400 || status == 401,
        "duplicate authorization headers: {status}"
    );
    let (status, _) = raw_get(port, "/api/items", &[&auth, b"authorization: Bearer x"]);
    assert!(
        status == 400 || status == 401,
        "two authorization headers: {status}"
    );
    // Absolute-form and asterisk-form targets.
    let (status, _) = raw_get(port, "http://other.example/admin/users", &[&auth]);
    assert_ne!(
        status, 200,
        "absolute-form target reached a privileged route"
    );
    let (status, _) = raw_get(port, "http://other.example/api/items", &[&auth]);
    assert_eq!(status, 200);
    let (status, _) = raw_request(
        port,
        b"OPTIONS * HTTP/1.1\r\nhost: e2e\r\nconnection: close\r\n\r\n",
    );
    assert_ne!(status, 200, "asterisk-form");

    // Afterwards every worker still answers every route correctly (new connections are spread
    // over both workers).
    for _ in 0..20 {
        let (status, _) = raw_get(port, "/api/items", &[&auth]);
        assert_eq!(status, 200);
        let (status, _) = raw_get(port, "/api/items", &[]);
        assert_eq!(status, 401);
        let (status, _) = raw_get(port, "/healthz", &[]);
        assert_eq!(status, 200);
    }
    assert!(
        !s.envoy.log().contains("panicked"),
        "the filter panicked:\n{}",
        s.envoy.log()
    );
}

// ---------------------------------------------------------------------------------------
// 2. Every tier checks what the token is for.
// ---------------------------------------------------------------------------------------

#[test]
fn foreign_tokens_are_refused_wherever_the_server_decides() {
    let s = native_stack("");
    let cache = CacheStack::start(&decision_cache_plugin_config(250, 1000), "");
    for (name, spec) in [
        (
            "another audience",
            json!({"sub": "mallory", "scope": "read admin", "aud": "billing-api"}),
        ),
        (
            "another issuer",
            json!({"sub": "mallory", "scope": "read admin", "claims": {"iss": "https://evil.example"}}),
        ),
        (
            "audience of the wrong type",
            json!({"sub": "mallory", "scope": "read admin", "claims": {"aud": 7}}),
        ),
    ] {
        for opaque in [false, true] {
            let mut spec = spec.clone();
            spec["opaque"] = json!(opaque);
            let token = s.idp.mint(spec.clone());
            for path in ["/admin/users", "/account/me"] {
                let reply = s.envoy.get(path, Some(&token), &[]);
                assert_eq!(
                    reply.status, 401,
                    "{name} (opaque {opaque}) on {path} via native ext_authz"
                );
            }
            let token = cache.idp.mint(spec);
            let reply = cache.envoy.get("/admin/users", Some(&token), &[]);
            assert_eq!(
                reply.status, 401,
                "{name} (opaque {opaque}) via the filter's Check"
            );
        }
    }
    // The same tokens for our audience pass (the rule, not the route, refused them).
    let good = s
        .idp
        .mint(json!({"sub": "alice", "scope": "read admin", "opaque": true}));
    assert_eq!(s.envoy.get("/admin/users", Some(&good), &[]).status, 200);
    let good = cache
        .idp
        .mint(json!({"sub": "alice", "scope": "read admin", "opaque": true}));
    assert_eq!(
        cache.envoy.get("/admin/users", Some(&good), &[]).status,
        200
    );
}

#[test]
fn id_tokens_are_refused_where_the_server_requires_access_tokens() {
    let s = native_stack(&format!(
        "token:\n  issuer: {ISSUER}\n  audiences: [{AUDIENCE}]\n  typ: at+jwt\n  require_audience: true\n"
    ));
    let id_token = s
        .idp
        .mint(json!({"sub": "alice", "scope": "read admin", "typ": "JWT"}));
    assert_eq!(
        s.envoy.get("/admin/users", Some(&id_token), &[]).status,
        401
    );
    let access = s.idp.mint(json!({"sub": "alice", "scope": "read admin"}));
    assert_eq!(s.envoy.get("/admin/users", Some(&access), &[]).status, 200);
    // require_audience: an answer without `aud` is refused.
    let no_aud = s.idp.mint(
        json!({"sub": "alice", "scope": "read admin", "opaque": true, "claims": {"aud": null}}),
    );
    assert_eq!(s.envoy.get("/admin/users", Some(&no_aud), &[]).status, 401);
}

// ---------------------------------------------------------------------------------------
// 3. Nothing a client sends reaches the upstream as if we had set it.
// ---------------------------------------------------------------------------------------

#[test]
fn client_copies_of_context_headers_never_reach_an_upstream() {
    let s = native_stack("");
    let opaque = s
        .idp
        .mint(json!({"sub": "alice", "scope": "read admin", "opaque": true}));
    let jwt = s
        .idp
        .mint(json!({"sub": "alice", "scope": "read", "claims": {"tenant": "acme"}}));
    let spoofed = [
        ("x-auth-tenant", "globex"),
        ("x-authz-policy-version", "99"),
        ("x-auth-issuer", "https://evil"),
        ("x-auth-subject-kind", "client_id"),
    ];
    // Native ext_authz routes (the filter is disabled there), a local JWT route, a public one.
    for (path, token) in [
        ("/account/me", Some(opaque.as_str())),
        ("/admin/users", Some(opaque.as_str())),
        ("/api/items", Some(jwt.as_str())),
        ("/healthz", None),
    ] {
        let reply = s.envoy.get(path, token, &spoofed);
        assert_eq!(reply.status, 200, "{path}: {}", reply.body);
        let headers = &reply.json()["headers"];
        assert_ne!(
            headers["x-auth-tenant"], "globex",
            "{path}: client tenant reached upstream"
        );
        assert_ne!(
            headers["x-authz-policy-version"], "99",
            "{path}: client policy version"
        );
        assert_ne!(
            headers["x-auth-issuer"], "https://evil",
            "{path}: client issuer"
        );
        assert_ne!(
            headers["x-auth-subject-kind"], "client_id",
            "{path}: client subject kind"
        );
    }
    // Underscore spellings are refused before any filter runs.
    for path in ["/account/me", "/api/items", "/healthz"] {
        let reply = s
            .envoy
            .get(path, Some(&opaque), &[("x_auth_subject", "root")]);
        assert_eq!(reply.status, 400, "{path}: x_auth_subject was not refused");
    }
}

// ---------------------------------------------------------------------------------------
// 4. A privileged route cannot be reached under another spelling.
// ---------------------------------------------------------------------------------------

#[test]
fn privileged_routes_cannot_be_reached_under_another_spelling() {
    let s = native_stack("");
    let cache = CacheStack::start(&decision_cache_plugin_config(250, 1000), "");
    let spellings = [
        "/admin",
        "/ADMIN/users",
        "/Admin/users",
        "/admin;x/users",
        "/admin;jsessionid=1/users",
        "/%61dmin/users",
        "/regulated",
        "/REGULATED/x",
        "/regulated;jsessionid=1/x",
    ];
    // A read-only token: fine for authenticated routes, never for privileged ones.
    let read_only = s.idp.mint(json!({"sub": "reader", "scope": "read"}));
    for path in spellings {
        let reply = s.envoy.get(path, Some(&read_only), &[]);
        assert_ne!(
            reply.status, 200,
            "native stack: {path} reached the upstream"
        );
        assert_ne!(reply.status, 404, "native stack: {path}");
    }
    // Through the filter's own Check: admin needs the admin scope (403); the regulated route
    // has no requirement, so it is allowed, but decided as regulated by the server.
    let read_only = cache.idp.mint(json!({"sub": "reader", "scope": "read"}));
    for path in spellings {
        let reply = cache.envoy.get(path, Some(&read_only), &[]);
        if path.to_ascii_lowercase().contains("dmin") {
            assert_ne!(
                reply.status, 200,
                "filter stack: {path} reached the upstream"
            );
        } else {
            assert_eq!(reply.status, 200, "filter stack: {path}");
            assert_eq!(
                reply.json()["headers"]["x-auth-tier"],
                "regulated",
                "{path}"
            );
        }
    }
    // The other spellings are decided as the route itself: an admin token passes.
    let admin = s
        .idp
        .mint(json!({"sub": "root", "scope": "read admin", "opaque": true}));
    for path in ["/ADMIN/users", "/admin"] {
        let reply = s.envoy.get(path, Some(&admin), &[]);
        assert_eq!(reply.status, 200, "{path}: {}", reply.body);
        assert_eq!(
            reply.json()["headers"]["x-auth-tier"],
            "privileged",
            "{path}"
        );
    }
    // Methods compare upper-case: a lower-case method meets the same route.
    let write_only = s.idp.mint(json!({"sub": "w", "scope": "write"}));
    let (status, _) = raw_request(
        s.envoy.port,
        format!("get /api/items HTTP/1.1\r\nhost: e2e\r\nconnection: close\r\nauthorization: Bearer {write_only}\r\n\r\n").as_bytes(),
    );
    assert_ne!(
        status, 200,
        "a lower-case GET escaped the read route's scope"
    );
}

// ---------------------------------------------------------------------------------------
// 5. A cached decision is never reused for a request it was not made for.
// ---------------------------------------------------------------------------------------

#[test]
fn cached_allows_never_cross_tenants() {
    let mut plugin = decision_cache_plugin_config(250, 1000);
    plugin["routes"].as_array_mut().expect("routes").insert(
        0,
        json!({"name": "tenant-admin", "match": {"prefix": "/tenants/"}, "tier": "privileged"}),
    );
    let s = CacheStack::start(
        &plugin,
        "policy:\n  routes:\n    - {name: tenant-admin, match: {prefix: /tenants/}, tier: privileged, require: {tenant: {claim: tenant, path_segment: 2}}}\n  default: {tier: authenticated}\n",
    );
    let token = s.idp.mint(
        json!({"sub": "alice", "scope": "read", "opaque": true, "claims": {"tenant": "acme"}}),
    );
    assert_eq!(
        s.envoy
            .get("/tenants/acme/orders", Some(&token), &[])
            .status,
        200
    );
    assert_eq!(
        s.envoy
            .get("/tenants/acme/orders", Some(&token), &[])
            .status,
        200
    );
    for other in [
        "/tenants/globex/orders",
        "/tenants/globex/orders?x=1",
        "/tenants/acme2/orders",
    ] {
        let reply = s.envoy.get(other, Some(&token), &[]);
        assert_eq!(reply.status, 403, "{other}: an allow for acme was reused");
    }
    // Other spellings of the same resource share the decision.
    assert_eq!(
        s.envoy
            .get("/tenants/acme;v=1/orders", Some(&token), &[])
            .status,
        200
    );
}

// ---------------------------------------------------------------------------------------
// 6. Limits cannot be dodged, and junk never reaches the IdP at full rate.
// ---------------------------------------------------------------------------------------

fn junk(i: usize) -> String {
    format!("opq_junk{i:04}aaaaaaaaaaaaaaaaaaaaaa")
}

#[test]
fn rotating_x_forwarded_for_does_not_dodge_the_failed_token_limit() {
    let s = CacheStack::start(
        &decision_cache_plugin_config(250, 1000),
        "rate_limits:\n  failed_tokens_per_address: {per_minute: 5, burst: 5}\n",
    );
    let before = s.idp.stat("introspected_tokens");
    let mut limited = 0;
    for i in 0..40 {
        let xff = format!("203.0.113.{i}");
        let reply = s
            .envoy
            .get("/admin/users", Some(&junk(i)), &[("x-forwarded-for", &xff)]);
        assert!(
            reply.status == 401 || reply.status == 429,
            "status {}",
            reply.status
        );
        limited += usize::from(reply.status == 429);
    }
    let introspected = s.idp.stat("introspected_tokens") - before;
    assert!(
        limited >= 30,
        "only {limited} of 40 junk tokens were limited"
    );
    assert!(
        introspected <= 8,
        "{introspected} junk tokens reached the IdP"
    );
}

#[test]
fn junk_tokens_are_cheap_refused_cached_and_capped() {
    let s = CacheStack::start(
        &decision_cache_plugin_config(250, 1000),
        "rate_limits: {}\n",
    );
    // Not a b64token: refused before any introspection.
    let before = s.idp.stat("introspected_tokens");
    for bad in ["a,b", "abc\"def", "x{}y", "=abc"] {
        let reply = s.envoy.get("/admin/users", Some(bad), &[]);
        assert_eq!(reply.status, 401, "{bad}");
    }
    assert_eq!(
        s.idp.stat("introspected_tokens"),
        before,
        "syntactic junk reached the IdP"
    );
    // The same inactive token again and again: one introspection (negative cache).
    for _ in 0..10 {
        assert_eq!(s.envoy.get("/admin/users", Some(&junk(1)), &[]).status, 401);
    }
    assert_eq!(s.idp.stat("introspected_tokens") - before, 1);

    drop(s);

    // A global cap on IdP calls, whatever the address.
    let capped = CacheStack::start(
        &decision_cache_plugin_config(250, 1000),
        &format!(
            "rate_limits: {{}}\nintrospection:\n  endpoint: http://127.0.0.1:{{IDP_PORT}}/introspect\n  client_id: {CLIENT_ID}\n  client_secret: {CLIENT_SECRET}\n  max_calls_per_second: 5\n"
        ),
    );
    let before = capped.idp.stat("introspected_tokens");
    let started = Instant::now();
    for i in 100..160 {
        let status = capped.envoy.get("/admin/users", Some(&junk(i)), &[]).status;
        assert!(status == 401 || status == 503, "status {status}");
    }
    let seconds = started.elapsed().as_secs_f64().ceil();
    let introspected = (capped.idp.stat("introspected_tokens") - before) as f64;
    assert!(
        introspected <= 5.0 * (seconds + 1.0),
        "{introspected} IdP calls in {seconds} s with a cap of 5/s"
    );
    assert!(
        capped
            .server
            .metric("authz_introspection_errors_total{kind=\"throttled\"}")
            > 0.0
    );
}

// ---------------------------------------------------------------------------------------
// 7. A bad token is not an outage.
// ---------------------------------------------------------------------------------------

#[test]
fn junk_tokens_the_idp_refuses_do_not_open_the_circuit() {
    let s =
        native_stack("circuit_breaker: {failure_threshold: 3, open_ms: 5000}\nrate_limits: {}\n");
    s.idp.set_introspection("refuse_unknown", 0);
    let valid = s
        .idp
        .mint(json!({"sub": "alice", "scope": "read admin", "opaque": true}));
    let deadline = Instant::now() + Duration::from_secs(3);
    let mut i = 0;
    while Instant::now() < deadline {
        // JWT-shaped junk, as a client would send to a certified IdP.
        let junk = format!("eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJ4In0.sig{i}");
        i += 1;
        let reply = s.envoy.get("/admin/users", Some(&junk), &[]);
        assert_eq!(reply.status, 401, "junk token {i}: {}", reply.body);
        if i % 5 == 0 {
            let reply = s.envoy.get("/account/me", Some(&valid), &[]);
            assert_eq!(
                reply.status, 200,
                "a valid token after {i} junk tokens: {}",
                reply.body
            );
        }
    }
    assert!(i > 20, "only {i} junk tokens sent");
    assert_eq!(
        s.server.metric("authz_circuit_state{state=\"closed\"}"),
        1.0
    );
    assert!(
        s.server
            .metric("authz_introspection_refusals_total{status=\"400\"}")
            > 0.0
    );
}

// ---------------------------------------------------------------------------------------
// 8. Smaller holes.
// ---------------------------------------------------------------------------------------

#[test]
fn failing_epochs_polls_stop_cache_trust_even_while_checks_succeed() {
    let mut plugin = decision_cache_plugin_config(100, 1000);
    plugin["server"]["epochs_token"] = json!("a-wrong-epochs-token-0000");
    plugin["server"]["max_unreachable_ms"] = json!(500);
    let s = CacheStack::start(&plugin, "");
    let token = s
        .idp
        .mint(json!({"sub": "alice", "scope": "read admin", "opaque": true}));
    std::thread::sleep(Duration::from_millis(700));
    let calls_before = s.envoy.metric("authz_proxy_check_calls_total");
    for _ in 0..4 {
        assert_eq!(s.envoy.get("/admin/users", Some(&token), &[]).status, 200);
    }
    let calls = s.envoy.metric("authz_proxy_check_calls_total") - calls_before;
    assert_eq!(
        calls, 4,
        "cached decisions were trusted while every epochs poll failed"
    );
    assert!(
        s.envoy.log().contains("epochs poll failed"),
        "poll failures are not visible"
    );
    assert!(
        s.envoy
            .metric("authz_proxy_feed_polls_total{result=\"failed\"}")
            > 0
    );
}

#[test]
fn a_key_fetch_outlives_the_request_that_started_it() {
    use std::io::Write;
    let s = filter_stack();
    let warm = s.idp.mint(json!({"sub": "a", "scope": "read"}));
    assert_eq!(s.envoy.get("/api/items", Some(&warm), &[]).status, 200);
    // Past min_refetch_interval (1 s) since the first load, so an unknown kid may fetch.
    std::thread::sleep(Duration::from_millis(1_100));
    s.idp.rotate("RS256", false);
    s.idp.set_jwks_latency(800);
    let token = s.idp.mint(json!({"sub": "b", "scope": "read"}));
    // The first request with the new kid starts the fetch and goes away mid-fetch.
    {
        let mut stream =
            std::net::TcpStream::connect(("127.0.0.1", s.envoy.port)).expect("connect");
        let request = format!(
            "GET /api/items HTTP/1.1\r\nhost: e2e\r\nauthorization: Bearer {token}\r\n\r\n"
        );
        stream.write_all(request.as_bytes()).expect("write");
        std::thread::sleep(Duration::from_millis(100));
    }
    std::thread::sleep(Duration::from_millis(600));
    // The fetch still completes for the worker: the next request (within the refetch
    // interval, so it cannot start a fetch of its own) gets the new key.
    let reply = s.envoy.get("/api/items", Some(&token), &[]);
    assert_eq!(reply.status, 200, "the aborted request's fetch was lost");
}

/// Defence in depth for class 1: if the VM ever does crash, the request that crashed it fails
/// closed and the VM is reloaded for the next ones (`failure_policy: FAIL_RELOAD`, as every
/// shipped config sets). Shown with a fixture filter that crashes on demand.
#[test]
fn a_crashed_vm_fails_closed_and_is_reloaded() {
    let echo = Echo::start();
    let idp = DevIdp::start(&[]);
    let crash_wasm = wasm_path()
        .with_file_name("crash_filter.wasm")
        .display()
        .to_string();
    // Envoy's listener uses SO_REUSEPORT (one socket per worker): the kernel hashes each new
    // connection to a worker, so the requests below on new connections reach both workers.
    // (Exact balance would send every one to the first worker whenever both are idle.)
    let config = render_e2e(&plugin_config(), idp.port, echo.port)
        .replace(&wasm_path().display().to_string(), &crash_wasm);
    let envoy = Envoy::start_rendered(&config);
    assert_eq!(envoy.get("/x", None, &[]).status, 200);
    // An answer on a new connection (either worker): 503 while that worker's VM is down,
    // otherwise a request the new VM checked. Nothing passes unchecked.
    let checked_answer = |round: usize| {
        let reply = envoy.get("/x", None, &[("connection", "close")]);
        if reply.status == 200 {
            assert_eq!(
                reply.json()["headers"]["x-vm-alive"],
                "1",
                "round {round}: passed unchecked"
            );
        } else {
            assert_eq!(reply.status, 503, "round {round}: while the VM was down");
        }
        reply.status
    };
    for round in 0..4 {
        // Every VM crashed so far has been reloaded, so this request reaches a live VM and
        // crashes it (one reaching a VM still down would get 503 without crashing anything).
        let reply = envoy.get("/x", None, &[("x-crash-test", "1")]);
        assert!(
            reply.status >= 500,
            "round {round}: the crashing request got {} (nothing may pass unchecked)",
            reply.status
        );
        assert_ne!(reply.json_or_null()["headers"]["x-vm-alive"], "1");
        // What an operator sees: Envoy counts the reload, made on the crashed worker's next
        // request after its backoff. Until then that worker answers 503 (fails closed).
        let crashed_at = Instant::now();
        while envoy.stat("wasm.jwt_authz.vm_reload_success") < round as u64 + 1 {
            checked_answer(round);
            assert!(
                crashed_at.elapsed() < Duration::from_secs(10),
                "round {round}: the VM was not reloaded: {}",
                envoy.stats_matching("vm_reload")
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        // Every request after that is served by a live VM, whichever worker takes it.
        for _ in 0..6 {
            assert_eq!(
                checked_answer(round),
                200,
                "round {round}: after the reload"
            );
        }
    }
    assert_eq!(envoy.stat("wasm.jwt_authz.vm_reload_success"), 4);
    assert_eq!(envoy.stat("wasm.jwt_authz.vm_reload_failure"), 0);
}

/// The two host calls still made through the SDK (its dispatcher must register their tokens)
/// are driven to their error statuses: a Check call and an epochs poll to clusters Envoy does
/// not have. The filter fails closed (503) and keeps serving; nothing panics.
#[test]
fn calls_to_missing_clusters_fail_closed_without_a_crash() {
    let idp = DevIdp::start(&[]);
    let echo = Echo::start();
    // The e2e template has no ext_authz or ext_authz_admin cluster.
    let envoy = Envoy::start(&decision_cache_plugin_config(100, 100), &idp, &echo);
    let token = idp.mint(json!({"sub": "alice", "scope": "read admin", "opaque": true}));
    let jwt = idp.mint(json!({"sub": "alice", "scope": "read"}));
    for _ in 0..6 {
        assert_eq!(envoy.get("/admin/users", Some(&token), &[]).status, 503);
        assert_eq!(envoy.get("/api/items", Some(&jwt), &[]).status, 200);
    }
    std::thread::sleep(Duration::from_millis(400));
    assert_eq!(envoy.get("/api/items", Some(&jwt), &[]).status, 200);
    assert!(!envoy.log().contains("panicked"), "{}", envoy.log());
}

/// The status of `GET path` with `token`, sent from `source` (a loopback address the test
/// binds, so Envoy sees another client).
fn status_from(source: &str, port: u16, path: &str, token: &str) -> u16 {
    use std::io::{Read, Write};
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()
        .expect("runtime");
    let stream = runtime.block_on(async {
        let socket = tokio::net::TcpSocket::new_v4().expect("socket");
        socket
            .bind(format!("{source}:0").parse().expect("address"))
            .expect("bind the source address");
        let target = format!("127.0.0.1:{port}").parse().expect("address");
        socket.connect(target).await.expect("connect")
    });
    let mut stream = stream.into_std().expect("std stream");
    stream.set_nonblocking(false).expect("blocking");
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {token}\r\nconnection: close\r\n\r\n"
    )
    .expect("write");
    let mut reply = String::new();
    let _ = stream.read_to_string(&mut reply);
    reply
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or(0)
}

#[test]
fn the_filters_check_carries_the_client_address_so_one_client_cannot_exhaust_anothers_limit() {
    let s = CacheStack::start(
        &decision_cache_plugin_config(250, 1000),
        "rate_limits:\n  failed_tokens_per_address: {per_minute: 5, burst: 5}\n",
    );
    let port = s.envoy.port;
    // One client (127.0.0.2) spends its budget of failed tokens and is limited.
    let limited = (0..15)
        .filter(|i| status_from("127.0.0.2", port, "/admin/users", &junk(100 + i)) == 429)
        .count();
    assert!(limited >= 5, "only {limited} of 15 were limited");
    // Another client (127.0.0.1) still has its own: the Check named who asked. Without the
    // address every client would share one budget, and this would be 429.
    assert_eq!(
        status_from("127.0.0.1", port, "/admin/users", &junk(200)),
        401
    );
}
