//! What `authz-config render` derives, run: a policy file rendered in each mode, served by the
//! real Envoy with the rendered routes and filter configuration and by the real server with the
//! rendered server configuration. Deployments differ from the hand-written dev configs in
//! exactly these outputs: renamed headers, `mode: native`, the feed credential, `requests`.

use serde_json::json;
use std::time::Duration;
use tests::*;

/// A policy in `mode` (native or filter) with renamed context headers; `extra` is appended at
/// the top level.
fn policy(mode: &str, extra: &str) -> String {
    format!(
        r#"realm: e2e
providers:
  - {{name: dev, issuer: "{ISSUER}", audiences: [{AUDIENCE}], envoy_cluster: dev_idp, jwks_path: /.well-known/jwks.json}}
routes:
  - {{name: health, match: {{exact: /healthz}}, tier: public}}
  - {{name: read, match: {{prefix: /api/, methods: [GET, HEAD]}}, tier: authenticated, require: {{scopes: [read]}}}}
  - {{name: write, match: {{prefix: /api/}}, tier: standard_write, require: {{scopes: [write]}}}}
  - {{name: admin, match: {{prefix: /admin/}}, tier: privileged, require: {{scopes: [admin]}}}}
default: {{tier: authenticated}}
headers: {{subject: x-user-id, scopes: x-user-scopes, claims: {{tenant: x-tenant}}}}
filter: {{key_wait_timeout_ms: 1500}}
envoy: {{upstream_cluster: upstream}}
server:
  mode: {mode}
  envoy_cluster: ext_authz
  admin_envoy_cluster: ext_authz_admin
  epochs_token: "${{AUTHZ_EPOCHS_TOKEN}}"
  config:
    listen: 127.0.0.1:0
    admin_listen: 127.0.0.1:0
    admin_token: "${{AUTHZ_ADMIN_TOKEN}}"
    drain_ms: 100
    introspection:
      endpoint: http://127.0.0.1:{{IDP_PORT}}/introspect
      client_id: {CLIENT_ID}
      client_secret: "${{AUTHZ_CLIENT_SECRET}}"
{extra}"#
    )
}

const MODES: [&str; 2] = ["native", "filter"];

#[test]
fn client_copies_of_every_context_header_name_never_reach_the_upstream_in_either_mode() {
    let spoofed = [
        ("x-user-id", "victim"),
        ("x-user-scopes", "victim"),
        ("x-tenant", "victim"),
        ("x-auth-subject", "victim"),
        ("x-auth-scopes", "victim"),
        ("x-auth-tier", "victim"),
        ("x-auth-issuer", "victim"),
        ("x-auth-subject-kind", "victim"),
        ("x-authz-policy-version", "victim"),
    ];
    for mode in MODES {
        let s = RenderedStack::start(&policy(mode, ""));
        let token = s.idp.mint(
            json!({"sub": "alice", "scope": "read write admin", "claims": {"tenant": "acme"}}),
        );
        for (method, path) in [
            ("GET", "/api/items"),
            ("POST", "/api/items"),
            ("GET", "/admin/users"),
            ("GET", "/healthz"),
        ] {
            let reply = s.envoy.send(method, path, Some(&token), &spoofed);
            assert_eq!(reply.status, 200, "{mode} {method} {path}: {}", reply.body);
            let headers = &reply.json()["headers"];
            for (name, _) in spoofed {
                assert_ne!(
                    headers[name], "victim",
                    "{mode} {method} {path}: the client's {name} reached the upstream"
                );
            }
        }
        // The filter's renamed header carries the verified subject on the routes it decides.
        let local = s.envoy.get("/api/items", Some(&token), &[]).json();
        assert_eq!(local["headers"]["x-user-id"], "alice", "{mode}");
    }
}

#[test]
fn in_both_modes_a_revocation_reaches_the_routes_the_filter_decides() {
    for mode in MODES {
        let s = RenderedStack::start(&policy(mode, ""));
        assert!(
            s.rendered.filter["server"]["epochs_cluster"] == "ext_authz_admin",
            "{mode}: the filter reads the change feed: {}",
            s.rendered.filter
        );
        let token = s.idp.mint(json!({"sub": "mallory", "scope": "read"}));
        assert_eq!(s.envoy.get("/api/items", Some(&token), &[]).status, 200);
        let revoked = s
            .server
            .admin("POST", "/admin/revoke", Some(json!({"token": token})));
        assert_eq!(revoked.status, 200, "{}", revoked.body);
        assert!(
            eventually(Duration::from_millis(1_500), || {
                (0..4).all(|_| s.envoy.get("/api/items", Some(&token), &[]).status == 401)
            }),
            "{mode}: the revoked token still passes on a locally decided route"
        );
    }
}

#[test]
fn requests_upstreams_read_differently_are_refused_on_every_route_or_stripped_when_asked() {
    for mode in MODES {
        let s = RenderedStack::start(&policy(mode, ""));
        let token = s.idp.mint(json!({"sub": "alice", "scope": "read admin"}));
        for (header, value) in [
            ("X-HTTP-Method-Override", "DELETE"),
            ("X-HTTP-Method", "DELETE"),
            ("X-Method-Override", "DELETE"),
            ("X-Original-URL", "/admin/users"),
            ("X-Rewrite-URL", "/admin/users"),
        ] {
            for path in ["/api/items", "/admin/users"] {
                let reply = s.envoy.get(path, Some(&token), &[(header, value)]);
                assert_eq!(reply.status, 400, "{mode} {path} {header}: {}", reply.body);
            }
        }
        for path in [
            "/api/items%2F..%2Fsecrets",
            "/api/a%5Cb",
            "/api/a%253Bb",
            "/api/a%3Bb",
            "/admin/a%00b",
            "/api/a%0Db",
            "/api/x/%%32%65%%32%65/secrets",
            "/api/items?_method=DELETE",
        ] {
            let reply = s.envoy.get(path, Some(&token), &[]);
            assert_eq!(reply.status, 400, "{mode} {path}: {}", reply.body);
        }
        // An ordinary path with escapes is served.
        assert_eq!(
            s.envoy
                .get("/api/caf%C3%A9?q=%2F", Some(&token), &[])
                .status,
            200
        );
    }
    // `strip`: the override never reaches the upstream, and the request is decided (and
    // served) as the GET it is.
    for mode in MODES {
        let s = RenderedStack::start(&policy(mode, "requests: {method_override: strip}\n"));
        let token = s.idp.mint(json!({"sub": "alice", "scope": "read admin"}));
        for path in ["/api/items", "/admin/users"] {
            let reply = s
                .envoy
                .get(path, Some(&token), &[("X-HTTP-Method-Override", "DELETE")]);
            assert_eq!(reply.status, 200, "{mode} {path}: {}", reply.body);
            let headers = &reply.json()["headers"];
            assert!(
                headers.get("x-http-method-override").is_none(),
                "{mode} {path}: the override reached the upstream: {headers}"
            );
        }
    }
}

/// Token Status Lists as `authz-config` renders them, in both modes: a token the IdP revokes in
/// its list is refused on the read the filter decides and on the privileged route (decided by
/// Envoy's native ext_authz and the server in `native` mode, by the filter asking the server in
/// `filter` mode).
#[test]
fn a_token_the_idp_revokes_in_its_status_list_is_refused_in_either_mode() {
    let lists = "status_lists:\n  uris: [\"http://127.0.0.1:{IDP_PORT}/statuslists/1\"]\n  refresh_seconds: 1\n";
    for mode in MODES {
        let text = policy(mode, lists).replace(
            "    drain_ms: 100\n",
            "    drain_ms: 100\n    token: {discovery: false, jwks_uri: \"http://127.0.0.1:{IDP_PORT}/.well-known/jwks.json\"}\n",
        );
        let s = RenderedStack::start_with_idp(&text, &["--status-list"]);
        let token = s
            .idp
            .mint(json!({"sub": "alice", "scope": "read write admin", "ttl": 600, "claims": {}}));
        let statuses = || {
            [
                s.envoy
                    .status_on_new_connection("GET", "/api/items", &token),
                s.envoy
                    .status_on_new_connection("GET", "/admin/users", &token),
            ]
        };
        assert!(
            eventually(Duration::from_secs(10), || statuses() == [200, 200]),
            "{mode}: {:?}",
            statuses()
        );
        s.idp.set_status(&token, "revoked");
        assert!(
            eventually(Duration::from_secs(10), || (0..4)
                .all(|_| statuses() == [401, 401])),
            "{mode}: {:?}",
            statuses()
        );
    }
}
