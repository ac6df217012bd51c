//! Configuration validation tests: a full example loads; every problem is named at once.

use super::*;
use serde_json::json;

pub(crate) fn example() -> Value {
    json!({
        "realm": "demo",
        "providers": [{
            "name": "dev",
            "issuer": "https://idp.test",
            "audiences": ["api"],
            "jwks": {"remote": {"cluster": "dev_idp", "path": "/.well-known/jwks.json", "refresh_interval_seconds": 60}}
        }],
        "routes": [
            {"name": "health", "match": {"exact": "/healthz"}, "tier": "public"},
            {"name": "read", "match": {"prefix": "/api/", "methods": ["get", "HEAD"]}, "tier": "authenticated", "require": {"scopes": ["read"]}},
            {"name": "tenant-write", "match": {"regex": "/tenants/[^/]+/orders"}, "tier": "standard_write",
             "require": {"scopes": ["write"], "claims": [{"claim": "roles", "contains": "editor"}], "tenant": {"claim": "tenant", "path_segment": 2}}},
            {"name": "admin", "match": {"prefix": "/admin/"}, "tier": "privileged"}
        ],
        "default": {"tier": "authenticated"},
        "headers": {"claims": {"tenant": "x-auth-tenant"}}
    })
}

fn load(v: &Value) -> Result<Policy, Error> {
    Policy::from_json(v.to_string().as_bytes())
}

fn problems(v: &Value) -> Vec<String> {
    match load(v) {
        Err(Error::InvalidConfig(p)) => p,
        other => panic!("expected invalid config, got {other:?}"),
    }
}

#[test]
fn the_example_loads_with_defaults_filled_in() {
    let policy = load(&example()).unwrap();
    assert_eq!(policy.providers.len(), 1);
    assert_eq!(policy.providers[0].clock_skew_seconds, 60);
    assert!(policy.providers[0].require_expiration);
    assert_eq!(policy.routes.routes.len(), 4);
    assert_eq!(policy.routes.routes[1].methods, vec!["GET", "HEAD"]);
    assert_eq!(policy.headers.subject, "x-auth-subject");
    assert_eq!(
        policy.headers.claims,
        vec![("tenant".to_string(), "x-auth-tenant".to_string())]
    );
    let remote: Vec<_> = policy.remote_sources().collect();
    assert_eq!(remote.len(), 1);
    assert_eq!(remote[0].1.authority, "dev_idp");
    assert_eq!(remote[0].1.min_refetch_interval_seconds, 30);
}

#[test]
fn every_problem_is_reported_at_once() {
    let bad = json!({
        "providers": [{"audiences": [], "jwks": {}, "clock_skew_seconds": 9999, "audience": "typo", "max_lifetime_seconds": 5}],
        "routes": [
            {"match": {"prefix": "/a", "exact": "/b"}, "tier": "gold"},
            {"match": {"regex": "(unclosed"}, "tier": "public", "require": {"scopes": ["x"]}},
            {"tier": "authenticated", "require": {"tenant": {"claim": "t", "path_segment": 0}}}
        ],
        "headers": {"subject": "Authorization", "tier": "x-auth-scopes"},
        "max_token_bytes": 5,
        "colour": "blue"
    });
    let p = problems(&bad);
    let expect = [
        "config: unknown field \"colour\"",
        "providers[0]: unknown field \"audience\"",
        "providers[0]: \"issuer\" is required",
        "providers[0]: \"audiences\" must list",
        "providers[0].jwks: exactly one of",
        "providers[0]: clock_skew_seconds above 600",
        "providers[0].max_lifetime_seconds: must be between 60 and",
        "routes[0]: unknown tier \"gold\"",
        "routes[0].match: exactly one of",
        "routes[1].match: invalid regex",
        "routes[1].require: a public route cannot have requirements",
        "routes[2]: \"match\" is required",
        "routes[2].require.tenant: path_segment is 1-based",
        "default: an explicit default route",
        "headers: \"Authorization\" is not a usable",
        "headers: \"x-auth-scopes\" is used twice",
        "max_token_bytes: must be between",
    ];
    for e in expect {
        assert!(
            p.iter().any(|line| line.starts_with(e)),
            "missing problem {e:?} in {p:#?}"
        );
    }
    assert_eq!(p.len(), expect.len(), "unexpected extra problems: {p:#?}");
}

#[test]
fn a_broken_inline_jwks_is_named() {
    let mut c = example();
    c["providers"][0]["jwks"] = json!({"inline": {"keys": [{"kty": "oct", "k": "AAAA"}]}});
    let p = problems(&c);
    assert!(
        p[0].starts_with("providers[0].jwks.inline: invalid jwks: no usable signing key"),
        "{p:?}"
    );
}

#[test]
fn duplicate_issuers_and_short_hmac_secrets_are_refused() {
    let mut c = example();
    let mut second = c["providers"][0].clone();
    second["hmac_secret_base64"] = json!("c2hvcnQ=");
    c["providers"].as_array_mut().unwrap().push(second);
    let p = problems(&c);
    assert!(
        p.iter().any(|l| l
            .contains("hmac_secret_base64: invalid jwks: hmac secret must be at least 32 bytes")),
        "{p:?}"
    );
    assert!(p.iter().any(|l| l.contains("configured twice")), "{p:?}");
}

#[test]
fn not_json_is_one_clear_problem() {
    let err = Policy::from_json(b"{nope").unwrap_err();
    assert!(
        err.to_string()
            .starts_with("invalid configuration: not a valid configuration document"),
        "{err}"
    );
}

#[test]
fn unsafe_settings_are_refused_at_load() {
    let mut c = example();
    c["providers"][0]["jwks"]["remote"]["min_refetch_interval_seconds"] = json!(0);
    c["routes"][1]["name"] = json!("health");
    c["server"] = json!({"cluster": "authz", "epochs_cluster": "admin",
                         "epochs_token": "replace-with-the-servers-epochs-token"});
    let found = problems(&c);
    let all = found.join("\n");
    assert!(
        all.contains("min_refetch_interval_seconds must be at least 1"),
        "{all}"
    );
    assert!(all.contains("route name \"health\" is used twice"), "{all}");
    assert!(
        all.contains("server.epochs_token: is a placeholder"),
        "{all}"
    );
    let mut short = example();
    short["server"] =
        json!({"cluster": "authz", "epochs_cluster": "admin", "epochs_token": "short"});
    assert!(problems(&short)
        .join("\n")
        .contains("at least 16 characters"));
    let mut reserved = example();
    reserved["routes"][0]["name"] = json!("default");
    assert!(problems(&reserved).join("\n").contains("is used twice"));
}

#[test]
fn weak_secrets_are_named() {
    for weak in [
        "short",
        "dev-admin-token-change-me",
        "CHANGEME-0123456789abcdef",
        "an-example-token-1234567",
        "<your-token-here-please>",
    ] {
        assert!(weak_secret(weak).is_some(), "{weak}");
    }
    assert_eq!(weak_secret("dev-admin-token-local-7f3a9c1e"), None);
}

#[test]
fn case_flag_and_matching_follow_the_route() {
    let mut c = example();
    c["routes"][2]["match"]["ignore_case"] = json!(false);
    let policy = load(&c).unwrap();
    assert_eq!(
        policy.routes.find("GET", "/TENANTS/a/orders").name,
        "default"
    );
    assert_eq!(
        policy.routes.find("GET", "/tenants/a/orders").name,
        "tenant-write"
    );
    let policy = load(&example()).unwrap();
    assert_eq!(
        policy.routes.find("GET", "/TENANTS/a/orders").name,
        "tenant-write"
    );
    assert_eq!(policy.routes.find("get", "/API/x").name, "read");
    assert_eq!(policy.routes.find("GET", "/admin").tier, Tier::Privileged);
}

#[test]
fn discovery_finds_keys_from_the_issuer_alone_and_its_problems_are_named() {
    let mut c = example();
    c["providers"][0]["issuer"] = json!("https://idp.test/realms/shop/");
    c["providers"][0]["jwks"] = json!({"remote": {"cluster": "dev_idp", "discovery": true}});
    let policy = load(&c).unwrap();
    let Some((_, remote)) = policy.remote_sources().next() else {
        panic!("a remote source")
    };
    assert_eq!(
        remote.discovery_path.as_deref(),
        Some("/realms/shop/.well-known/openid-configuration")
    );
    assert_eq!(remote.authority, "idp.test", "the issuer's host");
    assert_eq!(remote.path, "");

    c["providers"][0]["jwks"] =
        json!({"remote": {"cluster": "dev_idp", "discovery": true, "path": "/keys"}});
    assert!(problems(&c)
        .iter()
        .any(|p| p.contains("either path or discovery")));
    c["providers"][0]["jwks"] = json!({"remote": {"cluster": "dev_idp"}});
    assert!(problems(&c)
        .iter()
        .any(|p| p.contains("missing \"path\" (or set discovery: true)")));
    c["providers"][0]["issuer"] = json!("urn:not-a-url");
    c["providers"][0]["jwks"] = json!({"remote": {"cluster": "dev_idp", "discovery": true}});
    assert!(problems(&c)
        .iter()
        .any(|p| p.contains("discovery needs an http(s) issuer URL")));
}

#[test]
fn introspect_is_for_server_tiers_only() {
    let mut c = example();
    c["routes"][1]["require"]["introspect"] = json!(true);
    assert!(problems(&c)
        .iter()
        .any(|p| p.contains("routes[1].require.introspect: needs a server-decided tier")));
    let mut c = example();
    c["routes"][3]["require"] = json!({"introspect": true});
    assert!(load(&c).is_ok());
}

#[test]
fn background_checks_are_refused_where_a_late_refusal_is_not_acceptable() {
    let route = |extra: Value| {
        let mut r = json!({"name": "r", "match": {"prefix": "/r", "methods": ["GET"]},
                           "tier": "authenticated", "background_check_ms": 5000});
        for (k, v) in extra.as_object().unwrap() {
            r[k] = v.clone();
        }
        r
    };
    let config = |routes: Vec<Value>, server: Value| {
        let mut c = example();
        c["routes"] = Value::Array(routes);
        c["server"] = server;
        c
    };
    let feed = json!({"cluster": "authz", "epochs_cluster": "authz_admin",
                      "epochs_token": "test-epochs-token-4f2a9c7e"});
    assert!(load(&config(vec![route(json!({}))], feed.clone())).is_ok());
    let refused = [
        (json!({"tier": "privileged"}), "only authenticated reads"),
        (
            json!({"tier": "standard_write"}),
            "only authenticated reads",
        ),
        (json!({"match": {"prefix": "/r"}}), "reads only"),
        (
            json!({"match": {"prefix": "/r", "methods": ["GET", "POST"]}}),
            "reads only",
        ),
        (json!({"fresh_cache_ms": 0}), "asks the server first"),
        (
            json!({"background_check_ms": 999}),
            "between 1000 and 3600000",
        ),
    ];
    for (change, why) in refused {
        let found = problems(&config(vec![route(change.clone())], feed.clone()));
        assert!(
            found
                .iter()
                .any(|p| p.starts_with("routes[0].background_check_ms") && p.contains(why)),
            "{change}: {found:?}"
        );
    }
    for server in [
        json!({"cluster": "authz"}),
        json!({"cluster": "authz", "epochs_cluster": "authz_admin",
               "epochs_token": "test-epochs-token-4f2a9c7e", "local_revocations": ["standard_write"]}),
    ] {
        let found = problems(&config(vec![route(json!({}))], server.clone()));
        assert!(
            found
                .iter()
                .any(|p| p.contains("needs \"server\" with the change feed")),
            "{server}: {found:?}"
        );
    }
}

#[test]
fn a_context_header_may_not_take_a_reserved_standard_or_configured_name() {
    let with_header = |header: &str| {
        let mut c = example();
        c["server"] = json!({"cluster": "authz", "epochs_cluster": "authz_admin",
                             "epochs_token": "test-epochs-token-4f2a9c7e"});
        c["context"] = json!({"audience": "orders", "header": header});
        c
    };
    assert!(load(&with_header("x-auth-context")).is_ok());
    assert!(load(&with_header("x-orders-context")).is_ok());
    for taken in [
        "authorization",
        "Host",
        "x-auth-subject",
        "x-authz-policy-version",
        "x-auth-tenant",
    ] {
        let found = problems(&with_header(taken));
        assert!(
            found
                .iter()
                .any(|p| p.starts_with("context.header:") && p.contains("reserved")),
            "{taken}: {found:?}"
        );
        assert_eq!(found.len(), 1, "named once: {found:?}");
    }
    let without_feed = {
        let mut c = with_header("x-auth-context");
        c["server"] = json!({"cluster": "authz"});
        c
    };
    assert!(problems(&without_feed)
        .iter()
        .any(|p| p.starts_with("context: needs the change feed")));
}
