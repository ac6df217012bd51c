//! How the server meets an IdP that does not work as configured, with the real server binary
//! and the dev IdP: a wrong client secret is logged with its status and OAuth error code and
//! keeps the server not-ready (checks fail closed), a secret that needs form-urlencoding works
//! with `client_secret_basic`, and a missing batch endpoint falls back to single calls.

use serde_json::json;
use std::time::Duration;
use tests::grpc::{check, connect};
use tests::*;

fn mint_opaque(idp: &DevIdp, sub: &str) -> String {
    idp.mint(json!({"sub": sub, "scope": "read admin", "opaque": true, "acr": "mfa"}))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_client_secret_is_logged_keeps_the_server_not_ready_and_fails_closed() {
    let idp = DevIdp::start(&[]);
    let yaml = server_yaml(idp.port, "").replace(
        &format!("client_secret: {CLIENT_SECRET}"),
        "client_secret: not-the-secret",
    );
    let server = AuthzServerProcess::start(&yaml);
    // The start-up probe is refused: logged with status, error code and endpoint.
    assert!(
        eventually(Duration::from_secs(5), || {
            server.log_lines("introspection_error").iter().any(|l| {
                l["status"] == 401
                    && l["error_code"] == "invalid_client"
                    && l["endpoint"]
                        .as_str()
                        .is_some_and(|e| e.ends_with("/introspect"))
            })
        }),
        "no introspection_error line with status and code: {:?}",
        server.log_lines("")
    );
    assert!(server.logged("idp_not_confirmed"));
    assert_eq!(server.readyz(), 503, "not ready while the IdP refuses us");
    assert_eq!(server.metric("authz_idp_ready"), 0.0);
    let token = mint_opaque(&idp, "alice");
    let mut client = connect(server.grpc_port).await;
    let (status, _) = check(&mut client, "/admin/users", Some(&token)).await;
    assert_eq!(status, 503, "fails closed");
    // No token (or its hash prefix) in any log line.
    for line in server.log_lines("") {
        assert!(!line.to_string().contains(&token), "{line}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_secret_basic_form_urlencodes_a_secret_with_reserved_characters() {
    let secret = "b64+like/secret=";
    let idp = DevIdp::start(&["--client-secret", secret]);
    let yaml = server_yaml(idp.port, "").replace(
        &format!("client_secret: {CLIENT_SECRET}"),
        &format!("client_secret: \"{secret}\""),
    );
    let server = AuthzServerProcess::start(&yaml);
    assert!(
        eventually(Duration::from_secs(5), || server.readyz() == 200),
        "the probe passed: {:?}",
        server.log_lines("introspection_error")
    );
    assert_eq!(server.metric("authz_idp_ready"), 1.0);
    let mut client = connect(server.grpc_port).await;
    let token = mint_opaque(&idp, "alice");
    assert_eq!(
        check(&mut client, "/admin/users", Some(&token)).await.0,
        200
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_batch_endpoint_falls_back_to_single_calls_never_to_503() {
    let idp = DevIdp::start(&[]);
    let yaml = server_yaml(idp.port, "batching: {window_ms: 20, max_batch: 64}\n")
        .replace("/introspect/batch", "/no-such-batch-endpoint");
    let server = AuthzServerProcess::start(&yaml);
    let tokens: Vec<String> = (0..16)
        .map(|i| mint_opaque(&idp, &format!("user-{i}")))
        .collect();
    let client = connect(server.grpc_port).await;
    for round in 0..2 {
        let checks = tokens.iter().map(|token| {
            let mut client = client.clone();
            async move { check(&mut client, "/admin/users", Some(token)).await.0 }
        });
        let statuses = futures::future::join_all(checks).await;
        assert!(
            statuses.iter().all(|s| *s == 200),
            "round {round}: {statuses:?}"
        );
    }
    assert!(server.metric("authz_introspection_batch_fallbacks_total") >= 1.0);
    assert_eq!(server.metric("authz_circuit_state{state=\"closed\"}"), 1.0);
    assert!(server.logged("batch_introspection_failed"));
    assert_eq!(idp.stat("batch_calls"), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metadata_naming_another_issuer_is_refused_and_keeps_the_server_not_ready() {
    // The dev IdP's metadata says `https://dev-idp.local`; the server is told the issuer is the
    // address it fetches the metadata from: a mismatch, as from a mistaken or hostile host.
    let idp = DevIdp::start(&[]);
    let yaml = server_yaml(idp.port, "")
        .replace(
            &format!("  endpoint: http://127.0.0.1:{}/introspect\n", idp.port),
            "",
        )
        .replace(
            &format!("  issuer: {ISSUER}\n"),
            &format!("  issuer: http://127.0.0.1:{}\n", idp.port),
        );
    assert!(!yaml.contains("/introspect\n"), "{yaml}");
    let server = AuthzServerProcess::start(&yaml);
    assert!(
        eventually(Duration::from_secs(5), || server
            .log_lines("provider_metadata_failed")
            .iter()
            .any(|l| l["error"]
                .as_str()
                .is_some_and(|e| e.contains("names issuer")))),
        "{:?}",
        server.log_lines("")
    );
    let readyz = get(
        &format!("http://127.0.0.1:{}/readyz", server.admin_port),
        &[],
    );
    assert_eq!(readyz.status, 503);
    assert!(readyz.body.contains("metadata"), "{}", readyz.body);
    let mut client = connect(server.grpc_port).await;
    let token = mint_opaque(&idp, "alice");
    assert_eq!(
        check(&mut client, "/admin/users", Some(&token)).await.0,
        503,
        "no endpoint from a refused document: fail closed"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_that_cannot_be_discovered_beside_an_explicit_endpoint_are_logged_and_jwts_introspected(
) {
    // The dev IdP's issuer (`https://dev-idp.local`) is a name, not an address: discovery of
    // the keys fails. With the introspection endpoint configured the server still decides, and
    // says JWTs now cost an IdP call each.
    let idp = DevIdp::start(&[]);
    let server = AuthzServerProcess::start(&server_yaml(idp.port, ""));
    assert!(
        eventually(Duration::from_secs(5), || server.readyz() == 200),
        "ready without the metadata: {:?}",
        server.log_lines("")
    );
    assert!(
        eventually(Duration::from_secs(5), || !server
            .log_lines("provider_keys_missing")
            .is_empty()),
        "{:?}",
        server.log_lines("provider_metadata")
    );
    let jwt = idp.mint(json!({"sub": "alice", "scope": "read admin", "acr": "mfa"}));
    let before = idp.stat("introspection_calls");
    let mut client = connect(server.grpc_port).await;
    assert_eq!(check(&mut client, "/admin/users", Some(&jwt)).await.0, 200);
    assert!(idp.stat("introspection_calls") > before, "introspected");
}

/// The harness's promise that counting tests rely on (hostile.rs, shared_state.rs): when
/// `AuthzServerProcess::start` returns, the start-up probe (one introspection of its own, made
/// in the background) has been answered, so it never lands inside a test's count. Here the
/// IdP takes 400 ms per introspection; CI once saw the probe arrive after a test's baseline.
#[test]
fn a_started_server_has_had_its_idp_probe_answered() {
    let idp = DevIdp::start(&[]);
    idp.fault_json(json!({"introspection_latency_ms": 400}));
    let server = AuthzServerProcess::start(&server_yaml(idp.port, ""));
    let probed = idp.stat("introspected_tokens");
    assert_eq!(probed, 1, "the probe was answered before start returned");
    std::thread::sleep(Duration::from_millis(600));
    assert_eq!(
        idp.stat("introspected_tokens"),
        probed,
        "nothing arrives late"
    );
    assert!(server.logged("idp_confirmed"));
}
