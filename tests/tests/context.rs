//! The signed verification context end to end: the real Envoy with the real `.wasm` signs
//! locally decided allows with the key the server sent over the change feed, the server signs
//! the routes it decides, and the echo upstream runs as a service that trusts nothing else
//! (`authz_context::layer::ContextLayer`, keys from the server's `/context/jwks.json`). A forged
//! context, one replayed on another route or method, and an expired one are refused by the
//! service; a client's copy of the header never reaches it; after a key rotation contexts
//! signed before it still verify and new ones carry the new key.

use authz_context::ContextSigner;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use serde_json::{json, Value};
use std::time::{Duration, Instant};
use tests::*;

const LIFETIME_SECONDS: u64 = 2;
const ROTATE_EVERY_SECONDS: u64 = 3;

fn stack() -> (CacheStack, Scratch) {
    let scratch = Scratch::new("context-seed");
    let seed = scratch.0.join("seed");
    std::fs::write(&seed, [7u8; 48]).expect("seed");
    let mut plugin = decision_cache_plugin_config(250, 1000);
    plugin["context"] = json!({"audience": "echo", "lifetime_seconds": LIFETIME_SECONDS});
    let server = format!(
        "context: {{audience: echo, lifetime_seconds: {LIFETIME_SECONDS}, rotate_every_seconds: {ROTATE_EVERY_SECONDS}, signing_seed_file: \"{}\"}}\n",
        seed.display()
    );
    (CacheStack::start_guarded(&plugin, &server, "echo"), scratch)
}

fn token(s: &CacheStack, sub: &str, scope: &str) -> String {
    s.idp
        .mint(json!({"sub": sub, "scope": scope, "ttl": 600, "claims": {}}))
}

/// Through Envoy: the status and the context header the echo saw (when it answered).
fn through_envoy(
    s: &CacheStack,
    method: &str,
    path: &str,
    token: Option<&str>,
    extra: &[(&str, &str)],
) -> (u16, Option<String>) {
    let mut headers = vec![("connection", "close")];
    headers.extend_from_slice(extra);
    let reply = s.envoy.send(method, path, token, &headers);
    let context = serde_json::from_str::<Value>(&reply.body)
        .ok()
        .and_then(|echo| {
            echo["headers"]["x-auth-context"]
                .as_str()
                .map(str::to_owned)
        });
    (reply.status, context)
}

/// Straight to the service, as someone who got hold of a context would send it.
fn to_service(s: &CacheStack, method: &str, path: &str, context: &str) -> u16 {
    request(
        method,
        &format!("http://127.0.0.1:{}{path}", s.echo.port),
        &[("x-auth-context", context)],
        None,
    )
    .status
}

fn claims(context: &str) -> Value {
    let part = context.split('.').nth(1).expect("claims part");
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(part).expect("base64url")).expect("json")
}

fn kid(context: &str) -> String {
    let part = context.split('.').next().expect("header part");
    let header: Value =
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(part).expect("base64url")).expect("json");
    header["kid"].as_str().expect("kid").to_owned()
}

/// Waits until the filter holds a signing key (its first feed read) and the echo the JWKS.
fn ready(s: &CacheStack, token: &str) -> String {
    let mut context = None;
    let ok = eventually(Duration::from_secs(10), || {
        let (status, seen) = through_envoy(s, "GET", "/api/items", Some(token), &[]);
        context = seen;
        status == 200
    });
    assert!(ok, "a read passes with its context once keys are in place");
    context.expect("the echo saw a context")
}

#[test]
fn services_accept_only_fresh_contexts_made_for_the_request_and_keys_rotate() {
    let (s, _seed) = stack();
    let reader = token(&s, "alice", "read write admin");
    let context = ready(&s, &reader);
    let c = claims(&context);
    assert_eq!(c["sub"], "alice");
    assert_eq!(c["sub_kind"], "sub");
    assert_eq!(c["aud"], "echo");
    assert_eq!(c["iss"], "authz");
    assert_eq!(c["idp"], ISSUER);
    assert_eq!(c["tier"], "authenticated");
    assert_eq!(c["req"], json!({"m": "GET", "r": "read"}));
    assert_eq!(
        c["exp"].as_u64().unwrap() - c["iat"].as_u64().unwrap(),
        LIFETIME_SECONDS
    );

    // The service takes it for its request, and only for it.
    assert_eq!(to_service(&s, "GET", "/api/items", &context), 200);
    assert_eq!(
        to_service(&s, "GET", "/api/items/7", &context),
        200,
        "same route, same decision"
    );
    assert_eq!(
        to_service(&s, "POST", "/api/items", &context),
        401,
        "replayed on a write"
    );
    assert_eq!(
        to_service(&s, "GET", "/admin/users", &context),
        401,
        "replayed on another route"
    );
    assert_eq!(to_service(&s, "GET", "/api/items", ""), 401, "no context");
    assert_eq!(
        to_service(&s, "GET", "/healthz", ""),
        200,
        "public routes need none"
    );

    // Forged: signed by another key under the same kid, or claims changed under the signature.
    let mut forged_claims: authz_context::Claims =
        serde_json::from_value(c.clone()).expect("claims");
    forged_claims.sub = "mallory".into();
    let forged = ContextSigner::new(&kid(&context), &[9; 32]).sign(&forged_claims);
    assert_eq!(to_service(&s, "GET", "/api/items", &forged), 401, "forged");
    let parts: Vec<&str> = context.split('.').collect();
    let swapped = format!(
        "{}.{}.{}",
        parts[0],
        URL_SAFE_NO_PAD.encode(serde_json::to_vec(&forged_claims).unwrap()),
        parts[2]
    );
    assert_eq!(
        to_service(&s, "GET", "/api/items", &swapped),
        401,
        "claims swapped"
    );

    // A client's copy of the header never reaches the service: replaced on a token route,
    // removed on a public one.
    let (status, seen) = through_envoy(
        &s,
        "GET",
        "/api/items",
        Some(&reader),
        &[("x-auth-context", &forged)],
    );
    assert_eq!(status, 200);
    assert_ne!(seen.as_deref(), Some(forged.as_str()));
    let (status, seen) = through_envoy(&s, "GET", "/healthz", None, &[("X-Auth-Context", &forged)]);
    assert_eq!((status, seen), (200, None), "stripped whatever its case");

    // A route with a tenant rule: the context names the tenant it was made for, and the
    // service refuses it for another tenant's path (even for a token of both tenants).
    let both = s
        .idp
        .mint(json!({"sub": "erin", "scope": "orders", "ttl": 600,
        "claims": {"tenant": ["acme", "beta"]}}));
    let (status, acme) = through_envoy(&s, "POST", "/tenants/acme/orders", Some(&both), &[]);
    assert_eq!(status, 200);
    let acme = acme.expect("context");
    assert_eq!(claims(&acme)["tenant"], "acme");
    let (status, beta) = through_envoy(&s, "POST", "/tenants/beta/orders", Some(&both), &[]);
    assert_eq!(status, 200);
    assert_eq!(
        claims(&beta.expect("context"))["tenant"],
        "beta",
        "not acme's, reused"
    );
    assert_eq!(to_service(&s, "POST", "/tenants/acme/orders", &acme), 200);
    assert_eq!(
        to_service(&s, "POST", "/tenants/beta/orders", &acme),
        401,
        "another tenant"
    );

    // A route the server decides: the server signs, the service verifies it the same way.
    let (status, admin_context) = through_envoy(&s, "POST", "/admin/users", Some(&reader), &[]);
    assert_eq!(status, 200);
    let admin_context = admin_context.expect("a context on a server-decided route");
    assert_eq!(
        claims(&admin_context)["req"],
        json!({"m": "POST", "r": "admin"})
    );
    assert_eq!(claims(&admin_context)["tier"], "privileged");
    assert_eq!(to_service(&s, "POST", "/admin/users", &admin_context), 200);
    assert_eq!(to_service(&s, "GET", "/api/items", &admin_context), 401);

    // Rotation: new contexts come with the next key once its period starts; one signed before
    // still verifies until it expires.
    let first_kid = kid(&context);
    let mut before = context.clone();
    let mut after = None;
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(3 * ROTATE_EVERY_SECONDS) {
        // A new token each time: a reused context would keep its key.
        let fresh = token(&s, "bob", "read");
        let (status, seen) = through_envoy(&s, "GET", "/api/items", Some(&fresh), &[]);
        assert_eq!(status, 200);
        let seen = seen.expect("context");
        if kid(&seen) == first_kid {
            before = seen;
        } else {
            after = Some(seen);
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let after = after.expect("a context with the next key within three periods");
    assert_eq!(
        to_service(&s, "GET", "/api/items", &after),
        200,
        "the next key was published ahead"
    );
    assert_eq!(
        to_service(&s, "GET", "/api/items", &before),
        200,
        "signed before the rotation, still valid"
    );

    // Expired: refused once its lifetime is over (the echo allows no skew).
    std::thread::sleep(Duration::from_secs(LIFETIME_SECONDS + 1));
    assert_eq!(to_service(&s, "GET", "/api/items", &before), 401, "expired");
    assert_eq!(to_service(&s, "GET", "/api/items", &after), 401, "expired");
}

#[test]
fn a_hot_token_reuses_its_context_and_a_server_without_keys_fails_closed() {
    let (s, _seed) = stack();
    let reader = token(&s, "carol", "read");
    ready(&s, &reader);
    // Each worker signs once per half lifetime at most; the other requests reuse a context.
    let signed_before = s
        .envoy
        .metric("authz_proxy_contexts_total{result=\"signed\"}");
    let started = Instant::now();
    for _ in 0..20 {
        let (status, context) = through_envoy(&s, "GET", "/api/items", Some(&reader), &[]);
        assert_eq!(status, 200);
        assert!(context.is_some());
    }
    let signed = s
        .envoy
        .metric("authz_proxy_contexts_total{result=\"signed\"}")
        - signed_before;
    let halves = started.elapsed().as_secs() / (LIFETIME_SECONDS / 2) + 1;
    assert!(
        signed <= 2 * halves,
        "reused, not signed per request: {signed} signatures for 20 requests in {:?}\n{}",
        started.elapsed(),
        s.envoy.stats_matching("contexts")
    );
    assert!(
        s.envoy
            .metric("authz_proxy_contexts_total{result=\"reused\"}")
            >= 20 - signed
    );

    // A filter with `context` but a server that sends no keys: token routes fail closed (503),
    // public routes pass.
    let mut plugin = decision_cache_plugin_config(250, 1000);
    plugin["context"] = json!({"audience": "echo"});
    let keyless = CacheStack::start(&plugin, "");
    let reader = token(&keyless, "dave", "read");
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(
        through_envoy(&keyless, "GET", "/api/items", Some(&reader), &[]).0,
        503
    );
    assert_eq!(through_envoy(&keyless, "GET", "/healthz", None, &[]).0, 200);
}

#[test]
fn with_envoys_native_ext_authz_the_server_signs_and_its_context_reaches_the_service() {
    let s = ExtAuthzStack::start(
        "context: {audience: echo, signing_seed: \"e2e-native-context-seed-0123456789abcdef\"}\n",
    );
    let admin = s
        .idp
        .mint(json!({"sub": "root", "scope": "read admin", "ttl": 600, "claims": {}}));
    let reply = s.envoy.send(
        "POST",
        "/admin/users",
        Some(&admin),
        &[("x-auth-context", "client-sent"), ("connection", "close")],
    );
    assert_eq!(reply.status, 200, "{}", reply.body);
    let echo: Value = serde_json::from_str(&reply.body).expect("echo json");
    let context = echo["headers"]["x-auth-context"]
        .as_str()
        .expect("the server's context reaches the upstream (set, not removed)");
    let jwks = get(
        &format!("http://127.0.0.1:{}/context/jwks.json", s.server.admin_port),
        &[],
    );
    let keys = authz_context::KeySet::from_jwks(jwks.body.as_bytes()).expect("jwks");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let claims = authz_context::Verifier::new("authz", "echo")
        .verify(
            context,
            &keys,
            &authz_context::Expected::new("POST", "admin"),
            now,
        )
        .expect("a valid context for the request");
    assert_eq!(
        (claims.sub.as_str(), claims.tier.as_str()),
        ("root", "privileged")
    );
    // On a route the server decides with no token (public), a client's copy is removed.
    let reply = s.envoy.send(
        "GET",
        "/healthz",
        None,
        &[("x-auth-context", "client-sent"), ("connection", "close")],
    );
    let echo: Value = serde_json::from_str(&reply.body).expect("echo json");
    assert!(echo["headers"].get("x-auth-context").is_none(), "{echo}");
}
