//! Istio as a whole: the sidecar's filter order, run. Istio puts a WasmPlugin of phase AUTHN
//! before the ext_authz filter of a CUSTOM AuthorizationPolicy, on every path (a WasmPlugin
//! cannot be turned off per route). This builds that chain in a local Envoy from what
//! `deploy/istio/` ships: the WasmPlugin's `pluginConfig` (Istio's `outbound|PORT||HOST`
//! clusters mapped to local ones, the dev IdP as the issuer) and, for every CUSTOM policy there,
//! ext_authz on its paths; then asks what a client would.

use serde_json::{json, Value};
use serde_yaml::Value as Yaml;
use tests::*;

/// Every YAML document under `deploy/istio/`.
fn istio_documents() -> Vec<Yaml> {
    let mut all = Vec::new();
    let dir = repo_root().join("deploy/istio");
    let mut paths: Vec<_> = std::fs::read_dir(&dir)
        .expect("deploy/istio")
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    paths.sort();
    for path in paths {
        let text = std::fs::read_to_string(&path).expect("read");
        for document in serde_yaml::Deserializer::from_str(&text) {
            let value = <Yaml as serde::Deserialize>::deserialize(document).expect("yaml");
            if !value.is_null() {
                all.push(value);
            }
        }
    }
    all
}

/// The WasmPlugin's `pluginConfig`, pointed at the local stack.
fn local_plugin_config(all: &[Yaml]) -> Value {
    let wasm = all
        .iter()
        .find(|d| d["kind"].as_str() == Some("WasmPlugin"))
        .expect("a WasmPlugin");
    let text = serde_json::to_string(&wasm["spec"]["pluginConfig"]).expect("json");
    let server_host = "ext-authz-server.authz-system.svc.cluster.local";
    let text = text
        .replace(&format!("outbound|9191||{server_host}"), "ext_authz")
        .replace(&format!("outbound|9192||{server_host}"), "ext_authz_admin")
        .replace("outbound|443||idp.example.com", "dev_idp")
        .replace("https://idp.example.com", ISSUER);
    assert!(!text.contains("outbound|"), "an unmapped cluster: {text}");
    // The feed secret is not in the resource: the filter reads it from the proxy's environment.
    assert!(text.contains("${AUTHZ_EPOCHS_TOKEN}"), "{text}");
    serde_json::from_str(&text).expect("json")
}

/// Envoy routes for the paths of every CUSTOM AuthorizationPolicy (ext_authz on), then the
/// rest (ext_authz off), as Istio's sidecar has them.
fn virtual_host(all: &[Yaml]) -> Value {
    let on = json!({"envoy.filters.http.ext_authz": {
        "@type": "type.googleapis.com/envoy.extensions.filters.http.ext_authz.v3.ExtAuthzPerRoute",
        "check_settings": {}}});
    let mut routes = Vec::new();
    for policy in all.iter().filter(|d| {
        d["kind"].as_str() == Some("AuthorizationPolicy")
            && d["spec"]["action"].as_str() == Some("CUSTOM")
    }) {
        for rule in policy["spec"]["rules"].as_sequence().into_iter().flatten() {
            for to in rule["to"].as_sequence().into_iter().flatten() {
                for path in to["operation"]["paths"].as_sequence().into_iter().flatten() {
                    let path = path.as_str().expect("a path");
                    let matcher = match path.strip_suffix('*') {
                        Some(prefix) => json!({"prefix": prefix}),
                        None => json!({"path": path}),
                    };
                    routes.push(json!({"match": matcher, "route": {"cluster": "upstream"},
                                       "typed_per_filter_config": on}));
                }
            }
        }
    }
    routes.push(json!({"match": {"prefix": "/"}, "route": {"cluster": "upstream"}}));
    json!({"name": "sidecar", "domains": ["*"], "routes": routes,
           "typed_per_filter_config": {"envoy.filters.http.ext_authz": {
               "@type": "type.googleapis.com/envoy.extensions.filters.http.ext_authz.v3.ExtAuthzPerRoute",
               "disabled": true}}})
}

#[test]
fn the_istio_deployment_serves_every_tier_in_the_sidecars_filter_order() {
    let all = istio_documents();
    let idp = DevIdp::start(&[]);
    let echo = Echo::start();
    let server = AuthzServerProcess::start(&server_yaml(
        idp.port,
        &format!("epochs_token: \"{EPOCHS_TOKEN}\"\n"),
    ));
    let config = render_filter_chain(
        &virtual_host(&all),
        &local_plugin_config(&all),
        &server,
        &idp,
        &echo,
    );
    // The WasmPlugin's vmConfig.env (valueFrom: HOST) is Envoy's host_env_keys; the proxy's
    // environment holds the Secret's value.
    let plugin = all
        .iter()
        .find(|d| d["kind"].as_str() == Some("WasmPlugin"))
        .expect("a WasmPlugin");
    let keys: Vec<String> = plugin["spec"]["vmConfig"]["env"]
        .as_sequence()
        .into_iter()
        .flatten()
        .filter(|e| e["valueFrom"].as_str() == Some("HOST"))
        .filter_map(|e| e["name"].as_str().map(str::to_owned))
        .collect();
    assert_eq!(keys, vec!["AUTHZ_EPOCHS_TOKEN".to_owned()]);
    let runtime = "                  runtime: envoy.wasm.runtime.v8\n";
    assert!(config.contains(runtime));
    let config = config.replace(
        runtime,
        &format!(
            "{runtime}                  environment_variables: {{ host_env_keys: {keys:?} }}\n"
        ),
    );
    let envoy = Envoy::start_rendered_with_env(&config, &[("AUTHZ_EPOCHS_TOKEN", EPOCHS_TOKEN)]);
    let admin = idp.mint(json!({"sub": "alice", "scope": "read admin", "opaque": true}));
    let reply = envoy.get("/admin/users", Some(&admin), &[]);
    assert_eq!(
        reply.status, 200,
        "a privileged request with a good token: {}",
        reply.body
    );
    assert_eq!(reply.json()["headers"]["x-auth-subject"], "alice");
    assert_eq!(envoy.get("/admin", Some(&admin), &[]).status, 200);
    let reader = idp.mint(json!({"sub": "bob", "scope": "read", "opaque": true}));
    assert_eq!(envoy.get("/admin/users", Some(&reader), &[]).status, 403);
    assert_eq!(envoy.get("/admin/users", None, &[]).status, 401);
    let jwt = idp.mint(json!({"sub": "carol", "scope": "read"}));
    assert_eq!(envoy.get("/api/items", Some(&jwt), &[]).status, 200);
    assert_eq!(envoy.get("/api/items", None, &[]).status, 401);
    // The feed works with the secret from the environment: a revocation reaches the route the
    // filter decides locally.
    let reply = server.admin("POST", "/admin/revoke", Some(json!({"token": jwt})));
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert!(
        eventually(std::time::Duration::from_secs(3), || envoy
            .get("/api/items", Some(&jwt), &[("connection", "close")])
            .status
            == 401),
        "{}",
        envoy.stats_matching("feed_polls")
    );
    assert_eq!(
        envoy.metric("authz_proxy_feed_polls_total{result=\"unauthorized\"}"),
        0
    );
}
