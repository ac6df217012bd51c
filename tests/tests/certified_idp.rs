//! Interoperability with a certified OpenID provider (`oidc-provider`, see `tests::oidc`), end
//! to end through the real Envoy (the Wasm filter, with its decision cache, and native
//! ext_authz), the real server binary and the echo upstream: JWT access tokens (RS256, ES256)
//! verified by the filter against the provider's keys, opaque tokens introspected by the server
//! on privileged routes through both paths, RFC 7009 revocation, key rotation behind the same
//! and a new `kid`, a wrong client secret, and junk tokens at rate.

use serde_json::{json, Value};
use std::time::{Duration, Instant};
use tests::oidc::{OidcProvider, TokenFormat, AUDIENCE, SERVER_CLIENT_ID, SERVER_CLIENT_SECRET};
use tests::*;

/// The filter's configuration for the provider, found from its issuer alone: the metadata,
/// then its `jwks_uri`, through the cluster of the provider's host.
fn plugin(op: &OidcProvider) -> Value {
    let mut config = decision_cache_plugin_config(100, 1000);
    config["providers"] = json!([{
        "name": "certified",
        "issuer": op.issuer,
        "audiences": [AUDIENCE],
        "jwks": {"remote": {"cluster": "dev_idp", "discovery": true,
                            "min_refetch_interval_seconds": 1, "timeout_ms": 1000}}
    }]);
    config
}

/// The server's configuration for the provider, found from its issuer alone (discovery gives
/// the introspection endpoint and the keys), with `secret` as the server's client secret.
fn server_config(op: &OidcProvider, secret: &str) -> String {
    format!(
        r#"listen: 127.0.0.1:0
admin_listen: 127.0.0.1:0
admin_token: "{ADMIN_TOKEN}"
epochs_token: "{EPOCHS_TOKEN}"
realm: e2e
introspection:
  client_id: {SERVER_CLIENT_ID}
  client_secret: "{secret}"
  timeout_ms: 2000
token:
  issuer: {issuer}
  audiences: [{AUDIENCE}]
  jwks_min_refetch_interval_seconds: 1
tiers:
  privileged: {{max_staleness_ms: 1000}}
strip_headers: [x-auth-tenant]
policy:
  routes:
    - {{name: admin-idp, match: {{prefix: /admin/idp/}}, tier: privileged, require: {{scopes: [admin], introspect: true}}}}
    - {{name: admin, match: {{prefix: /admin/}}, tier: privileged, require: {{scopes: [admin]}}}}
    - {{name: regulated, match: {{prefix: /regulated/}}, tier: regulated}}
    - {{name: account, match: {{prefix: /account/}}, tier: authenticated}}
  default: {{tier: authenticated}}
"#,
        issuer = op.issuer,
    )
}

/// Envoy whose native ext_authz filter sends the privileged routes to `server` (the Wasm filter
/// decides the others).
fn native_envoy(op: &OidcProvider, echo: &Echo, server: &AuthzServerProcess) -> Envoy {
    Envoy::start_rendered(&render_template(
        "ext-authz.template.yaml",
        &plugin(op),
        op.port,
        echo.port,
        server.grpc_port,
    ))
}

/// Envoy with the Wasm filter (decision cache: privileged routes go to the server through the
/// filter's Check call) and Envoy with native ext_authz on the privileged routes, both in
/// front of one server that introspects at the provider.
struct Stack {
    op: OidcProvider,
    server: AuthzServerProcess,
    through_filter: Envoy,
    native: Envoy,
    _echo: Echo,
}

fn stack() -> Stack {
    let op = OidcProvider::start(&[("OP_RSA_KID", "rsa-1"), ("OP_EC_KID", "ec-1")]);
    let echo = Echo::start();
    let server = AuthzServerProcess::start(&server_config(&op, SERVER_CLIENT_SECRET));
    let through_filter = Envoy::start_rendered(&render_template_full(
        "decision-cache.template.yaml",
        &plugin(&op),
        op.port,
        echo.port,
        server.grpc_port,
        server.admin_port,
    ));
    let native = native_envoy(&op, &echo, &server);
    Stack {
        op,
        server,
        through_filter,
        native,
        _echo: echo,
    }
}

#[test]
fn rs256_and_es256_jwt_access_tokens_pass_the_filter_with_their_context() {
    let s = stack();
    for format in [TokenFormat::Rs256, TokenFormat::Es256] {
        let token = s.op.token(format, "read write");
        let reply = s.through_filter.get("/api/items", Some(&token), &[]);
        assert_eq!(reply.status, 200, "{format:?}: {}", reply.body);
        let headers = &reply.json()["headers"];
        // oidc-provider puts the client's id in `sub` of client-credentials JWTs.
        assert_eq!(headers["x-auth-subject"], "app");
        assert_eq!(headers["x-auth-issuer"], s.op.issuer.as_str());
        assert_eq!(headers["x-auth-scopes"], "read write");
        let forged = dev_keys::with_flipped_signature(&token);
        assert_eq!(
            s.through_filter
                .get("/api/items", Some(&forged), &[])
                .status,
            401
        );
    }
    let reader = s.op.token(TokenFormat::Es256, "read");
    assert_eq!(
        s.through_filter
            .get("/api/items", Some(&reader), &[])
            .status,
        200
    );
    assert_eq!(
        s.through_filter
            .send("POST", "/api/items", Some(&reader), &[])
            .status,
        403,
        "a write needs the write scope"
    );
}

#[test]
fn opaque_tokens_are_introspected_on_privileged_routes_and_revocation_is_observed() {
    let s = stack();
    assert!(
        eventually(Duration::from_secs(5), || s.server.readyz() == 200),
        "the server's probe of the provider passed"
    );
    let token = s.op.token(TokenFormat::Opaque, "read admin");
    for envoy in [&s.through_filter, &s.native] {
        let reply = envoy.get("/admin/users", Some(&token), &[("x-auth-subject", "root")]);
        assert_eq!(reply.status, 200, "{}", reply.body);
        let headers = &reply.json()["headers"];
        // The provider's introspection of a client-credentials token has no `sub`.
        assert_eq!(headers["x-auth-subject"], "app");
        assert_eq!(headers["x-auth-subject-kind"], "client_id");
        assert_eq!(headers["x-auth-scopes"], "read admin");
    }
    let reader = s.op.token(TokenFormat::Opaque, "read");
    for envoy in [&s.through_filter, &s.native] {
        assert_eq!(envoy.get("/admin/users", Some(&reader), &[]).status, 403);
    }

    // RFC 7009 revocation at the provider: denied on both paths within the privileged window
    // (1 s here) plus a poll and a round trip.
    s.op.revoke(&token);
    let revoked_at = Instant::now();
    for envoy in [&s.through_filter, &s.native] {
        assert!(
            eventually(Duration::from_secs(4), || envoy
                .get("/admin/users", Some(&token), &[])
                .status
                == 401),
            "revocation not observed"
        );
    }
    let seen_after = revoked_at.elapsed();
    assert!(
        seen_after < Duration::from_millis(3000),
        "observed after {seen_after:?}"
    );
}

#[test]
fn keys_rotated_on_restart_under_the_same_and_a_new_kid() {
    let mut s = stack();
    let retired = s.op.token(TokenFormat::Rs256, "read");
    assert_eq!(
        s.through_filter
            .get("/api/items", Some(&retired), &[])
            .status,
        200
    );

    // New key material behind the same kid. Past the refetch interval, the first new token
    // refetches and passes; the retired key's token (its verification cached) is refused.
    s.op.restart(&[("OP_RSA_KID", "rsa-1"), ("OP_EC_KID", "ec-1")]);
    std::thread::sleep(Duration::from_millis(1100));
    let current = s.op.token(TokenFormat::Rs256, "read");
    assert_eq!(
        s.through_filter
            .get("/api/items", Some(&current), &[])
            .status,
        200,
        "the first token of the rotated key passes"
    );
    // Refused at once by the worker that fetched; the other worker loads the stored keys on
    // its next tick (the poll interval, 100 ms here). After a few ticks: on every worker,
    // every time.
    std::thread::sleep(Duration::from_millis(300));
    for _ in 0..10 {
        assert_eq!(
            s.through_filter
                .get("/api/items", Some(&retired), &[])
                .status,
            401,
            "the retired key's token is refused"
        );
    }

    // A new kid: fetched on first sight.
    s.op.restart(&[("OP_RSA_KID", "rsa-2"), ("OP_EC_KID", "ec-2")]);
    std::thread::sleep(Duration::from_millis(1100));
    let next = s.op.token(TokenFormat::Es256, "read");
    assert_eq!(
        s.through_filter.get("/api/items", Some(&next), &[]).status,
        200
    );
    std::thread::sleep(Duration::from_millis(300));
    for _ in 0..10 {
        assert_eq!(
            s.through_filter
                .get("/api/items", Some(&current), &[])
                .status,
            401
        );
    }
}

#[test]
fn a_wrong_client_secret_fails_closed_is_logged_and_keeps_the_server_not_ready() {
    let op = OidcProvider::start(&[]);
    let echo = Echo::start();
    let server = AuthzServerProcess::start(&server_config(&op, "not-the-secret-0123456789"));
    let native = native_envoy(&op, &echo, &server);
    assert!(
        eventually(Duration::from_secs(5), || server
            .log_lines("introspection_error")
            .iter()
            .any(|l| l["status"] == 401 && l["error_code"] == "invalid_client")),
        "{:?}",
        server.log_lines("")
    );
    assert_eq!(server.readyz(), 503);
    let token = op.token(TokenFormat::Opaque, "read admin");
    assert_eq!(native.get("/admin/users", Some(&token), &[]).status, 503);
}

#[test]
fn junk_tokens_at_rate_leave_valid_tokens_alone() {
    let s = stack();
    let valid = s.op.token(TokenFormat::Opaque, "read admin");
    let started = Instant::now();
    let mut junk_statuses = std::collections::BTreeMap::new();
    for i in 0..300 {
        let junk = format!("junk-{i}-{}", "x".repeat(20));
        let status = s.native.get("/admin/users", Some(&junk), &[]).status;
        *junk_statuses.entry(status).or_insert(0) += 1;
        if i % 25 == 0 {
            assert_eq!(
                s.native.get("/admin/users", Some(&valid), &[]).status,
                200,
                "valid token refused after {i} junk tokens"
            );
        }
    }
    assert_eq!(
        junk_statuses.keys().copied().collect::<Vec<_>>(),
        vec![401],
        "{junk_statuses:?}"
    );
    assert_eq!(
        s.server.metric("authz_circuit_state{state=\"closed\"}"),
        1.0,
        "inactive answers are no IdP failures"
    );
    assert_eq!(s.native.get("/admin/users", Some(&valid), &[]).status, 200);
    eprintln!("300 junk tokens in {:?}", started.elapsed());
}

#[test]
fn jwt_access_tokens_on_privileged_routes_are_verified_by_the_server_itself() {
    let mut s = stack();
    assert!(
        eventually(Duration::from_secs(5), || s.server.readyz() == 200),
        "discovery, keys and the probe passed"
    );
    let token = s.op.token(TokenFormat::Rs256, "read admin");
    // The provider will not vouch for its JWTs by introspection (version 8 answers
    // `active: false`, version 9 400 `unsupported_token_type`): the server verifies them
    // against the provider's keys.
    let answer = s.op.introspect(&token);
    assert!(
        answer.status == 400 || answer.json_or_null()["active"] == false,
        "{}",
        answer.body
    );
    for envoy in [&s.through_filter, &s.native] {
        let reply = envoy.get("/admin/users", Some(&token), &[]);
        assert_eq!(reply.status, 200, "{}", reply.body);
        assert_eq!(reply.json()["headers"]["x-auth-subject"], "app");
    }
    // Verified once; the second check reuses the verification (made with the same keys).
    assert_eq!(
        s.server
            .metric("authz_jwt_verifications_total{result=\"ok\"}"),
        1.0
    );
    assert!(
        s.server
            .metric("authz_jwt_verifications_total{result=\"cached\"}")
            >= 1.0
    );
    // A route that demands the IdP's word introspects, and this IdP will not vouch for a JWT.
    assert_eq!(
        s.native.get("/admin/idp/users", Some(&token), &[]).status,
        401
    );
    let opaque = s.op.token(TokenFormat::Opaque, "read admin");
    assert_eq!(
        s.native.get("/admin/idp/users", Some(&opaque), &[]).status,
        200
    );
    // Our own revocation reaches locally verified JWTs (by token, and by subject).
    let reply = s.server.admin(
        "POST",
        "/admin/revoke",
        Some(serde_json::json!({"token": token})),
    );
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert_eq!(s.native.get("/admin/users", Some(&token), &[]).status, 401);

    // Rotation behind the same kid reaches the server's keys too: the first new token
    // refetches, the retired key's tokens are refused.
    let retired = s.op.token(TokenFormat::Rs256, "read admin");
    assert_eq!(
        s.native.get("/admin/users", Some(&retired), &[]).status,
        200
    );
    s.op.restart(&[("OP_RSA_KID", "rsa-1"), ("OP_EC_KID", "ec-1")]);
    std::thread::sleep(Duration::from_millis(1100));
    let current = s.op.token(TokenFormat::Rs256, "read admin");
    assert_eq!(
        s.native.get("/admin/users", Some(&current), &[]).status,
        200
    );
    assert_eq!(
        s.native.get("/admin/users", Some(&retired), &[]).status,
        401
    );
}

#[test]
fn an_explicit_introspection_endpoint_combines_with_discovery_of_the_keys() {
    let op = OidcProvider::start(&[]);
    let echo = Echo::start();
    let config = server_config(&op, SERVER_CLIENT_SECRET).replace(
        "introspection:\n",
        &format!(
            "introspection:\n  endpoint: {}\n",
            op.url("/token/introspection")
        ),
    );
    assert!(config.contains("/token/introspection"), "{config}");
    let server = AuthzServerProcess::start(&config);
    let native = native_envoy(&op, &echo, &server);
    assert!(
        eventually(Duration::from_secs(5), || server.readyz() == 200),
        "{:?}",
        server.log_lines("")
    );
    // The provider will not vouch for its JWTs by introspection: a 200 means the server
    // verified it against the discovered keys.
    let token = op.token(TokenFormat::Rs256, "read admin");
    let reply = native.get("/admin/users", Some(&token), &[]);
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert_eq!(
        server.metric("authz_jwt_verifications_total{result=\"ok\"}"),
        1.0
    );
    // Opaque tokens go to the configured endpoint.
    let opaque = op.token(TokenFormat::Opaque, "read admin");
    assert_eq!(native.get("/admin/users", Some(&opaque), &[]).status, 200);
}

#[test]
fn private_key_jwt_client_authentication_introspects() {
    let key =
        dev_keys::SigningKey::generate(dev_keys::KeyAlgorithm::Rsa, "server-key-1").expect("key");
    let public = dev_keys::jwks(&[&key]).to_string();
    let op = OidcProvider::start(&[("OP_SERVER_JWKS", &public)]);
    let scratch = Scratch::new("private-key-jwt");
    let key_file = scratch.0.join("client.pem");
    std::fs::write(&key_file, key.private_pem()).expect("write key");
    let yaml = server_config(&op, SERVER_CLIENT_SECRET)
        .replace(
            &format!("  client_id: {SERVER_CLIENT_ID}\n  client_secret: \"{SERVER_CLIENT_SECRET}\"\n"),
            &format!(
                "  client_id: authz-server-jwt\n  auth_method: private_key_jwt\n  private_key_file: {}\n  private_key_alg: RS256\n  private_key_kid: server-key-1\n",
                key_file.display()
            ),
        );
    assert!(yaml.contains("private_key_jwt"), "{yaml}");
    let server = AuthzServerProcess::start(&yaml);
    assert!(
        eventually(Duration::from_secs(5), || server.readyz() == 200),
        "{:?}",
        server.log_lines("introspection_error")
    );
    let echo = Echo::start();
    let native = native_envoy(&op, &echo, &server);
    let token = op.token(TokenFormat::Opaque, "read admin");
    assert_eq!(native.get("/admin/users", Some(&token), &[]).status, 200);
    let reader = op.token(TokenFormat::Opaque, "read");
    assert_eq!(native.get("/admin/users", Some(&reader), &[]).status, 403);
}

/// The decision-cache Envoy with its IdP cluster (`dev_idp`) speaking TLS to the provider's
/// TLS port, checking the provider's certificate against `ca`.
fn tls_envoy(
    op: &OidcProvider,
    ca: &std::path::Path,
    echo: &Echo,
    server: &AuthzServerProcess,
) -> Envoy {
    let tls_port = op.tls_port.expect("a TLS provider");
    let config = render_template_full(
        "decision-cache.template.yaml",
        &plugin(op),
        tls_port,
        echo.port,
        server.grpc_port,
        server.admin_port,
    );
    let cluster = "  - name: dev_idp\n    type: STATIC\n";
    assert!(config.contains(cluster), "the template's IdP cluster");
    let tls = format!(
        "{cluster}    transport_socket:\n      name: envoy.transport_sockets.tls\n      typed_config:\n        \"@type\": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext\n        common_tls_context:\n          validation_context:\n            trusted_ca: {{ filename: \"{}\" }}\n            match_typed_subject_alt_names: [{{ san_type: IP_ADDRESS, matcher: {{ exact: 127.0.0.1 }} }}]\n",
        ca.display()
    );
    Envoy::start_rendered(&config.replace(cluster, &tls))
}

#[test]
fn an_https_provider_is_trusted_through_the_ca_file_by_the_server_and_the_filter() {
    let scratch = Scratch::new("idp-tls");
    let (ca, cert, key) = make_tls_certificates(&scratch.0);
    let op = OidcProvider::start_tls(&cert, &key);
    assert!(op.issuer.starts_with("https://127.0.0.1:"), "{}", op.issuer);
    // Without the CA the provider's certificate is refused: never ready, fail closed.
    let untrusting = AuthzServerProcess::start(&server_config(&op, SERVER_CLIENT_SECRET));
    let server = AuthzServerProcess::start(&format!(
        "{}idp_ca_file: \"{}\"\n",
        server_config(&op, SERVER_CLIENT_SECRET),
        ca.display()
    ));
    assert!(
        eventually(Duration::from_secs(15), || server.readyz() == 200),
        "discovery, keys and the probe over https: {:?}",
        server.log_lines("provider_metadata_failed")
    );
    assert_eq!(untrusting.readyz(), 503);
    let reason = get(
        &format!("http://127.0.0.1:{}/readyz", untrusting.admin_port),
        &[],
    )
    .body;
    assert!(
        reason.contains("provider metadata not discovered yet"),
        "{reason}"
    );
    let echo = Echo::start();
    let envoy = tls_envoy(&op, &ca, &echo, &server);
    // The filter found the keys over TLS (discovery through the https cluster).
    let jwt = op.token(TokenFormat::Es256, "read");
    assert_eq!(envoy.get("/api/items", Some(&jwt), &[]).status, 200);
    // The server introspects over TLS.
    let opaque = op.token(TokenFormat::Opaque, "admin");
    let reply = envoy.get("/admin/users", Some(&opaque), &[]);
    assert_eq!(reply.status, 200, "{}", reply.body);
    let untrusting_envoy = tls_envoy(&op, &ca, &echo, &untrusting);
    assert_eq!(
        untrusting_envoy
            .get("/admin/users", Some(&opaque), &[])
            .status,
        503,
        "a server that cannot verify the IdP fails closed"
    );
}
