//! Batch authorization for list endpoints, end to end: the real server's batch API (JSON on
//! the admin port, gRPC beside `Check`) with the real dev IdP, and a list endpoint behind the
//! real Envoy (the echo upstream's `GET /api/orders`) that asks it once for the whole list with
//! the signed context the proxy attached and returns only the permitted orders.

use serde_json::{json, Value};
use std::time::Duration;
use tests::*;

const BATCH_TOKEN: &str = "e2e-batch-token-0123456789";
const MAX_ITEMS: usize = 200;

fn resources_yaml() -> String {
    format!(
        r#"batch_token: "{BATCH_TOKEN}"
resources:
  max_items: {MAX_ITEMS}
  rules:
    - {{type: order, actions: [read], tier: authenticated, require: {{scopes: [read]}}, tenant_claim: tenant}}
    - {{type: order, actions: [update], tier: privileged, require: {{scopes: [write]}}, tenant_claim: tenant, owner: true}}
    - {{type: report, actions: [read], tier: authenticated, roles: {{claim: roles, any_of: [analyst]}}}}
"#
    )
}

/// The server alone (batch API only), with an IdP.
fn server() -> (DevIdp, AuthzServerProcess) {
    let idp = DevIdp::start(&[]);
    let server = AuthzServerProcess::start(&server_yaml(idp.port, &resources_yaml()));
    (idp, server)
}

fn batch(server: &AuthzServerProcess, secret: &str, body: &Value) -> Reply {
    request(
        "POST",
        &format!("http://127.0.0.1:{}/authorize/batch", server.admin_port),
        &[
            ("authorization", &format!("Bearer {secret}")),
            ("content-type", "application/json"),
        ],
        Some(&body.to_string()),
    )
}

fn orders(n: usize, tenants: &[&str], owner: &str) -> Vec<Value> {
    (0..n)
        .map(|i| {
            json!({"type": "order", "id": format!("o-{i}"),
                   "tenant": tenants[i % tenants.len()], "owner": owner})
        })
        .collect()
}

fn introspections(idp: &DevIdp) -> u64 {
    get(&idp.url("/admin/stats"), &[]).json()["introspected_tokens"]
        .as_u64()
        .unwrap_or(0)
}

#[test]
fn a_batch_decides_every_resource_in_order_with_one_token_check_and_one_evaluation_per_tenant() {
    let (idp, server) = server();
    let token = idp.mint(json!({"sub": "alice", "scope": "read write", "ttl": 600,
        "opaque": true, "claims": {"tenant": ["acme", "globex"], "roles": ["analyst"]}}));
    let before = introspections(&idp);
    let mut resources = orders(100, &["acme", "globex", "initech", "umbrella"], "alice");
    resources.push(json!({"type": "report", "id": "r-1"}));
    resources.push(json!({"type": "invoice", "id": "i-1", "tenant": "acme"}));
    let reply = batch(
        &server,
        BATCH_TOKEN,
        &json!({"token": token, "action": "read", "resources": resources}),
    );
    assert_eq!(reply.status, 200, "{}", reply.body);
    let answer = reply.json();
    let decisions = answer["decisions"].as_array().expect("decisions");
    assert_eq!(decisions.len(), 102);
    for (i, d) in decisions.iter().take(100).enumerate() {
        assert_eq!(d["id"], format!("o-{i}"), "input order");
        let allowed = i % 4 < 2;
        assert_eq!(d["allowed"], allowed, "{d}");
        assert_eq!(
            d["reason"],
            if allowed {
                "allowed"
            } else {
                "tenant_mismatch"
            }
        );
    }
    assert_eq!(decisions[100]["reason"], "allowed", "the role rule");
    assert_eq!(decisions[101]["reason"], "no_rule");
    assert_eq!(answer["subject"], "alice");
    // The token was introspected once for the batch, and each (rule, tenant) decided once.
    assert_eq!(introspections(&idp) - before, 1);
    assert_eq!(answer["computed"], 5, "four tenants and the report rule");

    // An action at a stricter tier: the token is checked at it (fresh introspection) and the
    // owner rule applies per resource.
    let mut mixed = orders(4, &["acme"], "alice");
    mixed[1]["owner"] = json!("bob");
    let update = batch(
        &server,
        BATCH_TOKEN,
        &json!({"token": token, "action": "update", "resources": mixed}),
    )
    .json();
    assert_eq!(update["tier"], "privileged");
    let reasons: Vec<&str> = update["decisions"]
        .as_array()
        .expect("decisions")
        .iter()
        .map(|d| d["reason"].as_str().unwrap_or(""))
        .collect();
    assert_eq!(
        reasons,
        vec!["allowed", "owner_mismatch", "allowed", "allowed"]
    );
    // A token without the scope: every item says so, and the batch itself is fine.
    let reader = idp.mint(json!({"sub": "bob", "scope": "write", "ttl": 600,
        "claims": {"tenant": "acme"}}));
    let reasons = batch(
        &server,
        BATCH_TOKEN,
        &json!({"token": reader, "action": "read", "resources": orders(3, &["acme"], "bob")}),
    )
    .json();
    assert!(reasons["decisions"]
        .as_array()
        .expect("decisions")
        .iter()
        .all(|d| d["reason"] == "insufficient_scope"));
    assert!(server.logged("authz_batch"));
    assert!(server.metric("authz_batch_items_total{decision=\"allow\"}") >= 52.0);
}

#[test]
fn a_batch_is_refused_whole_over_the_cap_without_the_secret_or_with_a_bad_token() {
    let (idp, server) = server();
    let token = idp.mint(json!({"sub": "alice", "scope": "read", "ttl": 600,
        "claims": {"tenant": "acme"}}));
    let body = |n: usize, token: &str| json!({"token": token, "action": "read", "resources": orders(n, &["acme"], "alice")});
    let over = batch(&server, BATCH_TOKEN, &body(MAX_ITEMS + 1, &token));
    assert_eq!(over.status, 400);
    assert_eq!(over.json()["error"], "too_many_resources");
    assert_eq!(over.json()["max_items"], MAX_ITEMS);
    assert_eq!(
        batch(&server, BATCH_TOKEN, &body(MAX_ITEMS, &token)).status,
        200
    );
    // Only the batch secret opens it: not the admin token, not nothing.
    assert_eq!(batch(&server, ADMIN_TOKEN, &body(1, &token)).status, 401);
    assert_eq!(batch(&server, "", &body(1, &token)).status, 401);
    // A bad, expired or revoked token: refused whole, as any check (the one deny table).
    let expired = idp.mint(json!({"sub": "alice", "scope": "read", "ttl": -120}));
    for bad in ["not-a-token", expired.as_str()] {
        let refused = batch(&server, BATCH_TOKEN, &body(2, bad));
        assert_eq!(refused.status, 401, "{}", refused.body);
        assert!(refused.json().get("decisions").is_none());
    }
    server.admin("POST", "/admin/revoke", Some(json!({"token": token})));
    assert_eq!(batch(&server, BATCH_TOKEN, &body(2, &token)).status, 401);
    // Neither a token nor a context, both, or an unknown field: 400.
    for malformed in [
        json!({"action": "read", "resources": []}),
        json!({"token": "a", "context": "b", "action": "read", "resources": []}),
        json!({"token": "a", "action": "read", "resources": [], "extra": 1}),
        json!({"token": "a", "action": "", "resources": []}),
    ] {
        assert_eq!(
            batch(&server, BATCH_TOKEN, &malformed).status,
            400,
            "{malformed}"
        );
    }
}

#[test]
fn the_grpc_method_answers_as_the_json_api() {
    use ext_authz_server::batch_api::pb;
    let (idp, server) = server();
    let token = idp.mint(json!({"sub": "alice", "scope": "read", "ttl": 600,
        "claims": {"tenant": ["acme"]}}));
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let call = |secret: &str, n: usize| {
        let request = pb::BatchCheckRequest {
            token: token.clone(),
            context: String::new(),
            action: "read".into(),
            resources: (0..n)
                .map(|i| pb::Resource {
                    r#type: "order".into(),
                    id: format!("o-{i}"),
                    tenant: Some(if i % 2 == 0 { "acme" } else { "globex" }.into()),
                    owner: None,
                    attributes: Default::default(),
                })
                .collect(),
        };
        let secret = secret.to_owned();
        let port = server.grpc_port;
        runtime.block_on(async move {
            let channel =
                tonic::transport::Endpoint::from_shared(format!("http://127.0.0.1:{port}"))
                    .expect("endpoint")
                    .connect()
                    .await
                    .expect("connect");
            let mut grpc = tonic::client::Grpc::new(channel);
            grpc.ready().await.expect("ready");
            let mut request = tonic::Request::new(request);
            request.metadata_mut().insert(
                "authorization",
                format!("Bearer {secret}").parse().expect("metadata"),
            );
            grpc.unary::<_, pb::BatchCheckResponse, _>(
                request,
                ext_authz_server::batch_api::CHECK_PATH
                    .parse()
                    .expect("path"),
                tonic_prost::ProstCodec::default(),
            )
            .await
            .map(tonic::Response::into_inner)
        })
    };
    let answer = call(BATCH_TOKEN, 4).expect("answered");
    let allowed: Vec<bool> = answer.decisions.iter().map(|d| d.allowed).collect();
    assert_eq!(allowed, vec![true, false, true, false]);
    assert_eq!(answer.decisions[1].reason, "tenant_mismatch");
    assert_eq!(answer.subject.as_deref(), Some("alice"));
    assert_eq!(answer.computed, 2);
    assert_eq!(
        call("wrong", 1).expect_err("refused").code(),
        tonic::Code::Unauthenticated
    );
    assert_eq!(
        call(BATCH_TOKEN, MAX_ITEMS + 1)
            .expect_err("refused")
            .code(),
        tonic::Code::InvalidArgument
    );
}

/// The list endpoint behind Envoy: the filter allows the read and signs a context; the echo
/// upstream asks the batch API with it, once for the whole list, and returns only what the
/// caller may see.
#[test]
fn a_list_endpoint_behind_envoy_returns_only_the_permitted_items() {
    let scratch = Scratch::new("batch-seed");
    let seed = scratch.0.join("seed");
    std::fs::write(&seed, [9u8; 48]).expect("seed");
    let mut plugin = decision_cache_plugin_config(250, 1000);
    plugin["context"] = json!({"audience": "echo", "claims": ["tenant"]});
    let server = format!(
        "context: {{audience: echo, claims: [tenant], signing_seed_file: \"{}\"}}\n{}",
        seed.display(),
        resources_yaml()
    );
    let s = CacheStack::start_guarded_with_batch(&plugin, &server, "echo", BATCH_TOKEN);
    let listed = |sub: &str, tenants: Value| -> Value {
        let token = s
            .idp
            .mint(json!({"sub": sub, "scope": "read", "ttl": 600, "claims": {"tenant": tenants}}));
        let mut reply = Reply::default();
        assert!(
            eventually(Duration::from_secs(10), || {
                reply = s.envoy.send("GET", "/api/orders", Some(&token), &[]);
                reply.status == 200
            }),
            "{} {}",
            reply.status,
            reply.body
        );
        reply.json()
    };
    let ids = |answer: &Value| -> Vec<String> {
        answer["orders"]
            .as_array()
            .expect("orders")
            .iter()
            .map(|o| o["id"].as_str().unwrap_or("").to_owned())
            .collect()
    };
    let alice = listed("alice", json!(["acme", "globex"]));
    assert_eq!(ids(&alice), vec!["o-1", "o-2", "o-3", "o-4", "o-6"]);
    assert_eq!(
        alice["denied"],
        json!([{"id": "o-5", "reason": "tenant_mismatch"}])
    );
    assert_eq!(alice["computed"], 3);
    let bob = listed("bob", json!("acme"));
    assert_eq!(ids(&bob), vec!["o-1", "o-2", "o-6"]);
    // The batch API takes a context straight from a service too: made under the current
    // policy version, for rules up to standard_write (a context is no fresh IdP answer).
    let token = s.idp.mint(
        json!({"sub": "alice", "scope": "read write", "ttl": 600, "claims": {"tenant": ["acme"]}}),
    );
    let echoed = s.envoy.send("GET", "/api/items", Some(&token), &[]);
    let context = echoed.json()["headers"]["x-auth-context"]
        .as_str()
        .expect("a context")
        .to_owned();
    let by_context = |action: &str| {
        batch(
            &s.server,
            BATCH_TOKEN,
            &json!({"context": context, "action": action,
                    "resources": [{"type": "order", "id": "o-1", "tenant": "acme", "owner": "alice"}]}),
        )
    };
    let read = by_context("read");
    assert_eq!(read.status, 200, "{}", read.body);
    assert_eq!(read.json()["decisions"][0]["reason"], "allowed");
    assert_eq!(read.json()["subject_kind"], "sub");
    assert_eq!(
        by_context("update").json()["decisions"][0]["reason"],
        "tier_too_low",
        "a privileged rule needs a token checked now"
    );
    s.server.admin("POST", "/admin/policy-version", None);
    assert_eq!(by_context("read").status, 401, "made under an older policy");
    // One batch per list, each naming the caller by its signed context.
    let lines = s.server.logged_at_least("authz_batch", 2);
    assert!(lines.len() >= 2, "{lines:?}");
    assert!(lines
        .iter()
        .all(|l| l["fields"]["token"] == "context" || l["token"] == "context"));
}
