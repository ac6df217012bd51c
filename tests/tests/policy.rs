//! One policy, three places: for every example policy in `config/policy*.yaml`, what
//! `authz-config` derives for the Wasm filter, the ext_authz server and Envoy agrees on every
//! probe request (route and tier in the filter's table, the server's table and Envoy's route
//! matching; in native mode, ext_authz on with the tier exactly where the tier needs the
//! server, and the Wasm filter off there only), and the derived Envoy routes load in Envoy.

use ext_authz_server::config::ServerConfig;
use serde_json::{json, Value};
use tests::*;

const METHODS: [&str; 4] = ["GET", "HEAD", "POST", "DELETE"];

/// Fixed probes, plus spellings derived from each route's matcher.
fn probes(routes: &[Value]) -> Vec<String> {
    let mut paths: Vec<String> = [
        "/",
        "/healthz",
        "/HEALTHZ",
        "/api/items",
        "/API/items",
        "/apix",
        "/tenants/acme/orders",
        "/TENANTS/acme/ORDERS",
        "/tenants/acme/orders/1",
        "/admin",
        "/admin/users",
        "/Admin/users",
        "/administrators",
        "/regulated/x",
        "/catalog/x",
        "/orders/1",
        "/orders/refunds/9",
        "/ORDERS/REFUNDS/9",
        "/payouts/1",
        "/other",
    ]
    .iter()
    .map(|p| (*p).to_owned())
    .collect();
    for route in routes {
        let matcher = &route["match"];
        if let Some(exact) = matcher["exact"].as_str() {
            paths.push(exact.to_owned());
            paths.push(exact.to_ascii_uppercase());
        }
        if let Some(prefix) = matcher["prefix"].as_str() {
            let base = prefix.trim_end_matches('/');
            for path in [
                base.to_owned(),
                format!("{base}/x"),
                format!("{}/x", base.to_ascii_uppercase()),
                format!("{base}x"),
            ] {
                paths.push(path);
            }
        }
    }
    paths
}

/// Envoy's matching of one rendered route (the subset the renderer emits).
fn envoy_matches(route: &serde_yaml::Value, method: &str, path: &str) -> bool {
    let m = &route["match"];
    let insensitive = m["case_sensitive"].as_bool() == Some(false);
    let eq = |a: &str, b: &str| {
        if insensitive {
            a.eq_ignore_ascii_case(b)
        } else {
            a == b
        }
    };
    let starts = |p: &str| path.len() >= p.len() && path.get(..p.len()).is_some_and(|h| eq(h, p));
    let path_ok = if let Some(exact) = m["path"].as_str() {
        eq(path, exact)
    } else if let Some(prefix) = m["prefix"].as_str() {
        starts(prefix)
    } else if let Some(prefix) = m["path_separated_prefix"].as_str() {
        starts(prefix) && matches!(path.as_bytes().get(prefix.len()), None | Some(b'/'))
    } else if let Some(re) = m["safe_regex"]["regex"].as_str() {
        regex::Regex::new(&format!("^(?:{re})$"))
            .expect("regex")
            .is_match(path)
    } else {
        panic!("unknown matcher {m:?}")
    };
    let method_ok = match m["headers"].as_sequence() {
        None => true,
        Some(headers) => headers.iter().all(|h| {
            assert_eq!(h["name"].as_str(), Some(":method"));
            let re = h["string_match"]["safe_regex"]["regex"]
                .as_str()
                .expect("re");
            regex::Regex::new(&format!("^(?:{re})$"))
                .expect("regex")
                .is_match(method)
        }),
    };
    path_ok && method_ok
}

fn example_policies() -> Vec<std::path::PathBuf> {
    let mut found: Vec<_> = std::fs::read_dir(repo_root().join("config"))
        .expect("config/")
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("policy") && n.ends_with(".yaml"))
        })
        .collect();
    found.sort();
    assert!(found.len() >= 2, "example policies: {found:?}");
    found
}

/// The server's loader on a rendered configuration, its `${NAME}` secrets strong stand-ins.
fn load_server(yaml: &str, what: &str) -> ServerConfig {
    ServerConfig::from_yaml_with_env(yaml, |name| {
        Some(format!("test-secret-for-{name}-0123456789"))
    })
    .expect(what)
}

#[test]
fn every_example_policy_derives_a_filter_a_server_and_envoy_routes_that_agree() {
    for path in example_policies() {
        let text = std::fs::read_to_string(&path).expect("read");
        let rendered = authz_config::render_with_env(&text, &test_env)
            .unwrap_or_else(|problems| panic!("{}: {problems:#?}", path.display()));
        let native = text.contains("mode: native");
        // Under Istio the feed secret stays a reference the filter reads where it runs.
        let filter = authz_core::Policy::from_json_with_env(
            rendered.filter.to_string().as_bytes(),
            &test_env,
        )
        .expect("the filter loads its configuration");
        // Files the server names (a CA bundle) exist where it runs: one made here instead.
        let scratch = std::env::temp_dir().join(format!("policy-ca-{}", std::process::id()));
        std::fs::create_dir_all(&scratch).expect("scratch dir");
        let (ca, _, _) = make_tls_certificates(&scratch);
        let server_yaml = rendered
            .server
            .as_deref()
            .expect("a server")
            .replace("/etc/redis-tls/ca.pem", &ca.display().to_string());
        let server_yaml = server_yaml.as_str();
        let server = load_server(server_yaml, "the server loads its configuration");
        let vhost: serde_yaml::Value =
            serde_yaml::from_str(&rendered.envoy_routes).expect("envoy routes are YAML");
        let envoy_routes = vhost["routes"].as_sequence().expect("routes");
        let policy_routes = rendered.filter["routes"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        let mut checked = 0;
        for probe in probes(&policy_routes) {
            for method in METHODS {
                let in_filter = filter.routes.find(method, &probe);
                let in_server = server.routes.find(method, &probe);
                let at = format!("{} {method} {probe}", path.display());
                assert_eq!(
                    (&in_filter.name, in_filter.tier),
                    (&in_server.name, in_server.tier),
                    "{at}: filter and server disagree"
                );
                let envoy = envoy_routes
                    .iter()
                    .find(|r| envoy_matches(r, method, &probe))
                    .unwrap_or_else(|| panic!("{at}: no Envoy route"));
                assert_eq!(
                    envoy["name"].as_str(),
                    Some(in_filter.name.as_str()),
                    "{at}: Envoy picks another route"
                );
                let per_filter = &envoy["typed_per_filter_config"];
                let ext_authz_tier = per_filter["envoy.filters.http.ext_authz"]["check_settings"]
                    ["context_extensions"]["tier"]
                    .as_str();
                let wasm_off =
                    per_filter["envoy.filters.http.wasm"]["disabled"].as_bool() == Some(true);
                let server_tier = native && in_filter.tier.requires_server();
                assert_eq!(
                    ext_authz_tier,
                    server_tier.then_some(in_filter.tier.as_str()),
                    "{at}: ext_authz"
                );
                assert_eq!(wasm_off, server_tier, "{at}: the Wasm filter");
                checked += 1;
            }
        }
        assert!(checked > 100, "{checked}");
        if native {
            assert_eq!(
                vhost["typed_per_filter_config"]["envoy.filters.http.ext_authz"]["disabled"]
                    .as_bool(),
                Some(true),
                "ext_authz is off unless a route turns it on"
            );
        }
    }
}

/// A bootstrap around the rendered routes, with every cluster they and the filter name.
fn bootstrap(rendered: &authz_config::Rendered, clusters: &[&str]) -> String {
    let mut vhost: serde_yaml::Value = serde_yaml::from_str(&rendered.envoy_routes).expect("yaml");
    vhost["name"] = "all".into();
    vhost["domains"] = serde_yaml::Value::Sequence(vec!["*".into()]);
    let clusters: Vec<String> = clusters
        .iter()
        .map(|name| {
            format!(
                "  - name: {name}\n    type: STATIC\n    connect_timeout: 1s\n    typed_extension_protocol_options:\n      envoy.extensions.upstreams.http.v3.HttpProtocolOptions:\n        \"@type\": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions\n        explicit_http_config: {{ http2_protocol_options: {{}} }}\n    load_assignment:\n      cluster_name: {name}\n      endpoints:\n      - lb_endpoints:\n        - endpoint: {{ address: {{ socket_address: {{ address: 127.0.0.1, port_value: 1 }} }} }}\n"
            )
        })
        .collect();
    let vhost_json = serde_json::to_string(&vhost).expect("json");
    format!(
        r#"static_resources:
  listeners:
  - name: ingress
    address: {{ socket_address: {{ address: 127.0.0.1, port_value: 0 }} }}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: ingress
          normalize_path: true
          merge_slashes: true
          route_config:
            name: local
            virtual_hosts: [{vhost_json}]
          http_filters:
          - name: envoy.filters.http.wasm
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm
              config:
                name: jwt_authz
                root_id: jwt_authz
                vm_config:
                  vm_id: jwt_authz
                  runtime: envoy.wasm.runtime.v8
                  code: {{ local: {{ filename: "{wasm}" }} }}
                  environment_variables: {{ key_values: {{ AUTHZ_EPOCHS_TOKEN: "{EPOCHS_TOKEN}" }} }}
                configuration:
                  "@type": type.googleapis.com/google.protobuf.StringValue
                  value: {filter}
          - name: envoy.filters.http.ext_authz
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.ext_authz.v3.ExtAuthz
              transport_api_version: V3
              grpc_service: {{ envoy_grpc: {{ cluster_name: ext_authz }} }}
              failure_mode_allow: false
          - name: envoy.filters.http.router
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router
  clusters:
{clusters}"#,
        wasm = wasm_path().display(),
        filter = serde_json::to_string(&rendered.filter.to_string()).expect("json string"),
        clusters = clusters.concat(),
    )
}

#[test]
fn the_derived_envoy_routes_load_in_envoy() {
    for path in example_policies() {
        let text = std::fs::read_to_string(&path).expect("read");
        let rendered = authz_config::render_with_env(&text, &test_env).expect("renders");
        let config = bootstrap(
            &rendered,
            &["upstream", "ext_authz", "ext_authz_admin", "dev_idp", "idp"],
        );
        let scratch = Scratch::new("policy-envoy");
        let file = scratch.0.join("envoy.yaml");
        std::fs::write(&file, &config).expect("write");
        let (ok, output) = validate(&file);
        assert!(ok, "{}: {output}\n{config}", path.display());
    }
}

#[test]
fn a_policy_with_problems_is_refused_with_every_problem_named() {
    let problems = authz_config::render(
        r#"
providers: []
routes:
  - {name: admin, match: {prefix: /admin/}, tier: privileged}
  - {name: odd, match: {}, tier: public}
default: {tier: authenticated}
filter: {routes: []}
"#,
    )
    .expect_err("refused");
    for expected in [
        "providers: at least one is required",
        "server: routes of privileged or regulated tiers need one",
        "filter.routes: comes from the policy",
        "routes[1]: a route's match has none of exact, prefix, regex",
    ] {
        assert!(
            problems.iter().any(|p| p.starts_with(expected)),
            "missing {expected:?} in {problems:#?}"
        );
    }
}

/// The example native policy with its server entry replaced by `server`.
fn native_policy_with(server: &str) -> String {
    let text =
        std::fs::read_to_string(repo_root().join("config/policy.example.yaml")).expect("read");
    let head = text.split("\nserver:\n").next().expect("a server entry");
    format!("{head}\nserver:\n{server}")
}

/// A policy text without its top-level `name:` section (its indented lines).
fn without_section(text: &str, name: &str) -> String {
    let mut kept = Vec::new();
    let mut skipping = false;
    for line in text.lines() {
        if line.starts_with(&format!("{name}:")) {
            skipping = true;
            continue;
        }
        if skipping && (line.starts_with(' ') || line.is_empty()) {
            continue;
        }
        skipping = false;
        kept.push(line);
    }
    kept.join("\n") + "\n"
}

/// A policy text without what needs the change feed (the signed context, Status Lists).
fn without_context(text: &str) -> String {
    assert!(text.contains("\ncontext:\n"), "a context section");
    without_section(&without_section(text, "context"), "status_lists")
}

#[test]
fn both_modes_render_the_change_feed_or_refuse_without_an_explicit_opt_out() {
    let config = "  config:\n    admin_token: \"${AUTHZ_ADMIN_TOKEN}\"\n    batch_token: \"${AUTHZ_BATCH_TOKEN}\"\n    introspection: {endpoint: http://127.0.0.1:9000/introspect, client_id: c, client_secret: \"${AUTHZ_CLIENT_SECRET}\"}\n";
    for mode in ["native", "filter"] {
        let with_feed = native_policy_with(&format!(
            "  mode: {mode}\n  envoy_cluster: ext_authz\n  admin_envoy_cluster: ext_authz_admin\n  epochs_token: \"${{AUTHZ_EPOCHS_TOKEN}}\"\n{config}"
        ));
        let rendered = authz_config::render_with_env(&with_feed, &test_env)
            .unwrap_or_else(|p| panic!("{mode}: {p:#?}"));
        let link = &rendered.filter["server"];
        assert_eq!(link["epochs_cluster"], "ext_authz_admin", "{mode}");
        assert_eq!(
            link["epochs_token"], EPOCHS_TOKEN,
            "{mode}: the feed token is expanded for the filter, which cannot"
        );
        let filter =
            authz_core::Policy::from_json(rendered.filter.to_string().as_bytes()).expect("loads");
        assert!(filter.feed().is_some(), "{mode}: the filter reads the feed");
        assert!(
            rendered
                .server
                .as_deref()
                .is_some_and(|s| s.contains("epochs_token: ${AUTHZ_EPOCHS_TOKEN}")),
            "{mode}: the server keeps the reference: {:?}",
            rendered.server
        );
        // The variable unset: refused, naming it.
        let problems = authz_config::render_with_env(&with_feed, &|_| None).expect_err("refused");
        assert!(
            problems
                .iter()
                .any(|p| p.contains("${AUTHZ_EPOCHS_TOKEN} is not set")),
            "{mode}: {problems:#?}"
        );
        // No feed settings: refused unless opted out.
        let without = native_policy_with(&format!(
            "  mode: {mode}\n  envoy_cluster: ext_authz\n{config}"
        ));
        let problems = authz_config::render_with_env(&without, &test_env).expect_err("refused");
        assert!(
            problems
                .iter()
                .any(|p| p.starts_with("server: admin_envoy_cluster and epochs_token are needed")),
            "{mode}: {problems:#?}"
        );
        let opted_out = native_policy_with(&format!(
            "  mode: {mode}\n  envoy_cluster: ext_authz\n  feed: false\n{config}"
        ));
        // The signed context needs the feed (its keys come with it).
        let problems = authz_config::render_with_env(&opted_out, &test_env).expect_err("refused");
        assert!(
            problems
                .iter()
                .any(|p| p.contains("context: needs the change feed")),
            "{mode}: {problems:#?}"
        );
        let opted_out = without_context(&opted_out);
        let rendered = authz_config::render_with_env(&opted_out, &test_env)
            .unwrap_or_else(|p| panic!("{mode}: {p:#?}"));
        let filter =
            authz_core::Policy::from_json(rendered.filter.to_string().as_bytes()).expect("loads");
        assert!(filter.feed().is_none(), "{mode}");
    }
}

#[test]
fn the_server_strips_every_header_name_the_filter_may_set() {
    let text = std::fs::read_to_string(repo_root().join("config/policy.example.yaml"))
        .expect("read")
        .replace(
            "headers: {claims: {tenant: x-auth-tenant}}",
            "headers: {subject: x-user-id, scopes: x-user-scopes, claims: {tenant: x-tenant}}",
        );
    assert!(text.contains("x-user-id"));
    let rendered = authz_config::render_with_env(&text, &test_env).expect("renders");
    let server = load_server(rendered.server.as_deref().expect("server"), "loads");
    let filter =
        authz_core::Policy::from_json(rendered.filter.to_string().as_bytes()).expect("loads");
    for name in filter
        .headers
        .all()
        .chain(authz_core::config::STANDARD_CONTEXT_HEADERS)
    {
        assert!(
            server.strip_headers.iter().any(|h| h == name),
            "the server does not strip {name}: {:?}",
            server.strip_headers
        );
    }
    for name in ["x-user-id", "x-user-scopes", "x-tenant", "x-auth-subject"] {
        assert!(
            filter.headers.all().any(|h| h == name),
            "the filter strips {name}"
        );
    }
}

#[test]
fn the_policy_sets_the_key_fetch_settings_of_both_components() {
    let text = std::fs::read_to_string(repo_root().join("config/policy.example.yaml"))
        .expect("read")
        .replace(
            "    jwks_path: /.well-known/jwks.json  # leave out to find the keys by discovery\n",
            "    jwks_path: /.well-known/jwks.json\n    keys: {refresh_interval_seconds: 120, min_refetch_interval_seconds: 3, timeout_ms: 700}\n",
        );
    assert!(text.contains("min_refetch_interval_seconds: 3"));
    let rendered = authz_config::render_with_env(&text, &test_env).expect("renders");
    let filter =
        authz_core::Policy::from_json(rendered.filter.to_string().as_bytes()).expect("loads");
    let Some(authz_core::config::JwksSource::Remote(remote)) = filter.jwks_sources.first() else {
        panic!("a remote key source");
    };
    assert_eq!(
        (
            remote.refresh_interval_seconds,
            remote.min_refetch_interval_seconds,
            remote.timeout_ms
        ),
        (120, 3, 700)
    );
    let server = load_server(rendered.server.as_deref().expect("server"), "loads");
    assert_eq!(server.idp.refresh.refresh_interval_ms, 120_000);
    assert_eq!(server.idp.refresh.min_refetch_interval_ms, 3_000);
}

#[test]
fn the_policy_gives_both_components_the_maximum_token_lifetime_and_client_grant() {
    let text = std::fs::read_to_string(repo_root().join("config/policy.example.yaml"))
        .expect("read")
        .replace(
            "    audiences: [demo-api]\n",
            "    audiences: [demo-api]\n    max_lifetime_seconds: 3600\n    client_grant: {claim: gty, values: [client-credentials]}\n",
        );
    assert!(text.contains("max_lifetime_seconds: 3600"));
    let rendered = authz_config::render_with_env(&text, &test_env).expect("renders");
    let filter =
        authz_core::Policy::from_json(rendered.filter.to_string().as_bytes()).expect("loads");
    assert_eq!(filter.providers[0].max_lifetime_seconds, Some(3_600));
    assert_eq!(
        filter.providers[0]
            .client_grant
            .as_ref()
            .map(|g| g.claim.as_str()),
        Some("gty")
    );
    let server = load_server(rendered.server.as_deref().expect("server"), "loads");
    assert_eq!(server.token.max_lifetime_seconds, Some(3_600));
    assert_eq!(
        server.token.client_grant.as_ref().map(|g| g.values.clone()),
        Some(vec!["client-credentials".to_owned()])
    );
    // A second issuer: the server keeps every issuer's revocations for one bound, so each
    // provider sets one (the longest is the server's), or none does.
    let second = |lifetime: &str| {
        text.replace(
            "routes:\n",
            &format!("  - {{name: other, issuer: https://other.example, audiences: [demo-api], envoy_cluster: other_idp{lifetime}}}\nroutes:\n"),
        )
    };
    let problems = authz_config::render_with_env(&second(""), &test_env).expect_err("refused");
    assert!(
        problems
            .iter()
            .any(|p| p.starts_with("providers: max_lifetime_seconds is set on every provider")),
        "{problems:#?}"
    );
    let both = authz_config::render_with_env(&second(", max_lifetime_seconds: 7200"), &test_env)
        .expect("renders");
    let server = load_server(both.server.as_deref().expect("server"), "loads");
    assert_eq!(server.token.max_lifetime_seconds, Some(7_200));
}

/// The documents of a YAML text.
fn documents(text: &str) -> Vec<serde_yaml::Value> {
    serde_yaml::Deserializer::from_str(text)
        .map(|d| <serde_yaml::Value as serde::Deserialize>::deserialize(d).expect("yaml"))
        .filter(|v| !v.is_null())
        .collect()
}

fn of_kind<'a>(all: &'a [serde_yaml::Value], kind: &str) -> &'a serde_yaml::Value {
    all.iter()
        .find(|d| d["kind"].as_str() == Some(kind))
        .unwrap_or_else(|| panic!("a {kind}"))
}

#[test]
fn the_istio_resources_are_rendered_from_the_policy_and_ship_as_rendered() {
    let text = std::fs::read_to_string(repo_root().join("config/policy.istio.yaml")).expect("read");
    let rendered = authz_config::render_with_env(&text, &|_| None).expect("renders");
    let istio = documents(rendered.istio.as_deref().expect("istio resources"));
    let plugin = of_kind(&istio, "WasmPlugin");
    assert_eq!(plugin["spec"]["failStrategy"].as_str(), Some("FAIL_RELOAD"));
    assert_eq!(plugin["spec"]["phase"].as_str(), Some("AUTHN"));
    // The plugin's configuration is the filter's, with the feed secret a reference the
    // filter resolves from the proxy's environment, named in vmConfig.env.
    let config: Value = serde_json::to_value(&plugin["spec"]["pluginConfig"]).expect("json");
    assert_eq!(config, rendered.filter);
    assert_eq!(config["server"]["epochs_token"], "${AUTHZ_EPOCHS_TOKEN}");
    assert_eq!(
        config["server"]["epochs_authority"],
        "ext-authz-server.authz-system.svc.cluster.local"
    );
    assert_eq!(
        config["providers"][0]["jwks"]["remote"]["authority"],
        "idp.example.com"
    );
    let env = &plugin["spec"]["vmConfig"]["env"][0];
    assert_eq!(
        (env["name"].as_str(), env["valueFrom"].as_str()),
        (Some("AUTHZ_EPOCHS_TOKEN"), Some("HOST"))
    );
    let bytes = config.to_string().into_bytes();
    let loaded = authz_core::Policy::from_json_with_env(&bytes, &test_env).expect("loads");
    assert_eq!(
        loaded.server.and_then(|s| s.epochs).map(|e| e.token),
        Some(EPOCHS_TOKEN.to_owned())
    );
    let refused = authz_core::Policy::from_json_with_env(&bytes, &|_| None).expect_err("unset");
    assert!(
        refused
            .to_string()
            .contains("${AUTHZ_EPOCHS_TOKEN} is not set"),
        "{refused}"
    );
    // What deploy/istio ships is what the policy renders.
    let shipped: Vec<serde_yaml::Value> = ["wasm-plugin.yaml", "ext-authz-server.yaml"]
        .iter()
        .flat_map(|name| {
            documents(
                &std::fs::read_to_string(repo_root().join("deploy/istio").join(name))
                    .expect("read"),
            )
        })
        .collect();
    assert_eq!(of_kind(&shipped, "WasmPlugin")["spec"], plugin["spec"]);
    let server_of = |all: &[serde_yaml::Value]| -> serde_yaml::Value {
        let map = all
            .iter()
            .find(|d| {
                d["kind"].as_str() == Some("ConfigMap")
                    && d["metadata"]["name"].as_str() == Some("ext-authz-server")
            })
            .expect("the server's ConfigMap");
        serde_yaml::from_str(map["data"]["server.yaml"].as_str().expect("server.yaml"))
            .expect("yaml")
    };
    assert_eq!(server_of(&shipped), server_of(&istio));
    // Refused: a literal feed secret (it would sit in the WasmPlugin), and native mode.
    for literal in [
        "a-literal-feed-secret-0123456789",
        "\"part-of-the-secret-${AUTHZ_EPOCHS_TOKEN}\"",
    ] {
        let literal = text.replace("\"${AUTHZ_EPOCHS_TOKEN}\"", literal);
        let problems = authz_config::render_with_env(&literal, &|_| None).expect_err("refused");
        assert!(
            problems
                .iter()
                .any(|p| p.contains("must be a ${NAME} reference")),
            "{problems:#?}"
        );
    }
    let native = text.replace("mode: filter", "mode: native");
    let problems = authz_config::render_with_env(&native, &|_| None).expect_err("refused");
    assert!(
        problems
            .iter()
            .any(|p| p.starts_with("istio: server.mode must be filter")),
        "{problems:#?}"
    );
}

#[test]
fn the_policy_gives_the_filter_the_context_without_the_servers_signing_seed() {
    let text =
        std::fs::read_to_string(repo_root().join("config/policy.example.yaml")).expect("read");
    assert!(text.contains("signing_seed: \"${AUTHZ_CONTEXT_SEED}\""));
    let rendered = authz_config::render_with_env(&text, &test_env).expect("renders");
    let context = &rendered.filter["context"];
    assert_eq!(context["audience"], "demo-api");
    for server_only in ["signing_seed", "signing_seed_file", "rotate_every_seconds"] {
        assert!(
            context.get(server_only).is_none(),
            "{server_only} in {context}"
        );
    }
    let filter =
        authz_core::Policy::from_json(rendered.filter.to_string().as_bytes()).expect("loads");
    assert_eq!(
        filter.context.as_ref().map(|c| c.lifetime_seconds),
        Some(60)
    );
    let server_yaml = rendered.server.as_deref().expect("server");
    assert!(
        server_yaml.contains("${AUTHZ_CONTEXT_SEED}"),
        "the seed stays a reference for the server to expand: {server_yaml}"
    );
    let server = load_server(server_yaml, "loads");
    let ring = server.context.expect("the server signs");
    assert_eq!(ring.rotate_every_seconds, 3_600);
    assert_eq!(ring.settings.audience, "demo-api");
    // Set under `filter` or `server.config`: refused, it comes from the policy.
    let doubled = text.replace("  config:\n", "  config:\n    context: {audience: x}\n");
    let problems = authz_config::render_with_env(&doubled, &test_env).expect_err("refused");
    assert!(
        problems
            .iter()
            .any(|p| p.starts_with("server.config.context: comes from the policy")),
        "{problems:#?}"
    );
}

#[test]
fn a_route_checked_after_the_answer_is_opted_in_on_both_sides() {
    let text = std::fs::read_to_string(repo_root().join("config/policy.example.yaml"))
        .expect("read")
        .replace(
            "routes:\n",
            "routes:\n  - {name: news, match: {prefix: /news/, methods: [GET]}, tier: authenticated, background_check_ms: 5000}\n",
        );
    let rendered = authz_config::render_with_env(&text, &test_env).expect("renders");
    let filter =
        authz_core::Policy::from_json(rendered.filter.to_string().as_bytes()).expect("loads");
    assert_eq!(filter.routes.routes[0].background_check_ms, Some(5_000));
    let server = load_server(rendered.server.as_deref().expect("server"), "loads");
    assert_eq!(server.routes.routes[0].background_check_ms, Some(5_000));
    // A write cannot opt in: refused, named.
    let write = text.replace(
        "methods: [GET]}, tier: authenticated, background_check_ms",
        "methods: [POST]}, tier: authenticated, background_check_ms",
    );
    let problems = authz_config::render_with_env(&write, &test_env).expect_err("refused");
    assert!(
        problems
            .iter()
            .any(|p| p.contains("routes[0].background_check_ms")),
        "{problems:#?}"
    );
}

#[test]
fn the_policy_gives_the_filter_the_status_lists_it_may_name_and_the_server_the_whole_section() {
    let text =
        std::fs::read_to_string(repo_root().join("config/policy.example.yaml")).expect("read");
    assert!(text.contains("\nstatus_lists:\n"));
    let rendered = authz_config::render_with_env(&text, &test_env).expect("renders");
    assert_eq!(
        rendered.filter["status_lists"],
        json!({"uris": ["http://127.0.0.1:9000/statuslists/1"]}),
        "the filter reads no list: only which ones exist"
    );
    let filter =
        authz_core::Policy::from_json(rendered.filter.to_string().as_bytes()).expect("loads");
    assert_eq!(
        filter.status_lists,
        vec!["http://127.0.0.1:9000/statuslists/1"]
    );
    let server = load_server(rendered.server.as_deref().expect("server"), "loads");
    let lists = server.status_lists.expect("the server reads the lists");
    assert_eq!(lists.refresh_seconds, 30);
    assert_eq!(lists.uris, filter.status_lists);
    // Set under `server.config`: refused, it comes from the policy.
    let doubled = text.replace(
        "  config:\n",
        "  config:\n    status_lists: {uris: [\"https://x.example/l\"]}\n",
    );
    let problems = authz_config::render_with_env(&doubled, &test_env).expect_err("refused");
    assert!(
        problems
            .iter()
            .any(|p| p.starts_with("server.config.status_lists: comes from the policy")),
        "{problems:#?}"
    );
    // A server with no keys to verify a list with is refused at load, named.
    let keyless = text.replace(
        "    admin_token:",
        "    token: {discovery: false}\n    admin_token:",
    );
    let problems = authz_config::render_with_env(&keyless, &test_env).expect_err("refused");
    assert!(
        problems
            .iter()
            .any(|p| p.contains("status_lists: needs the provider's keys")),
        "{problems:#?}"
    );
}

#[test]
fn the_policy_gives_the_server_its_resource_rules_and_the_filter_none() {
    let text =
        std::fs::read_to_string(repo_root().join("config/policy.example.yaml")).expect("read");
    let rendered = authz_config::render_with_env(&text, &test_env).expect("renders");
    assert!(
        rendered.filter.get("resources").is_none(),
        "the filter decides no batch"
    );
    let server_yaml = rendered.server.as_deref().expect("server");
    assert!(
        server_yaml.contains("${AUTHZ_BATCH_TOKEN}"),
        "the secret stays a reference"
    );
    let server = load_server(server_yaml, "loads");
    let batch = server.batch.expect("the batch API");
    assert_eq!(batch.rules.max_items, 1_000);
    assert_eq!(batch.rules.rules.len(), 2);
    assert!(batch
        .rules
        .rule_for("order", "cancel")
        .is_some_and(|(_, r)| r.owner));
    // Set under `server.config`: refused, it comes from the policy; a batch API without its
    // secret is refused at load.
    let doubled = text.replace("  config:\n", "  config:\n    resources: {rules: []}\n");
    let problems = authz_config::render_with_env(&doubled, &test_env).expect_err("refused");
    assert!(
        problems
            .iter()
            .any(|p| p.starts_with("server.config.resources: comes from the policy")),
        "{problems:#?}"
    );
    let secretless = text.replace("    batch_token: \"${AUTHZ_BATCH_TOKEN}\"\n", "");
    let problems = authz_config::render_with_env(&secretless, &test_env).expect_err("refused");
    assert!(
        problems
            .iter()
            .any(|p| p.contains("batch_token: is required with resources")),
        "{problems:#?}"
    );
}

/// `text` with `envoy.filter` set to `build` (its `envoy:` section replaced).
fn for_filter_build(text: &str, build: &str) -> String {
    format!(
        "{}envoy:\n  upstream_cluster: upstream\n  filter: {build}\n",
        without_section(text, "envoy")
    )
}

#[test]
fn the_policy_renders_for_either_build_and_istio_only_for_wasm() {
    let text =
        std::fs::read_to_string(repo_root().join("config/policy.example.yaml")).expect("read");
    let env = |name: &str| test_env(name);
    let wasm = authz_config::render_with_env(&for_filter_build(&text, "wasm"), &env)
        .expect("renders for wasm");
    let native = authz_config::render_with_env(&for_filter_build(&text, "native"), &env)
        .expect("renders for native");
    // The filter's configuration is the same; the routes that switch it off name its entry.
    assert_eq!(wasm.filter, native.filter);
    assert!(wasm.envoy_routes.contains("envoy.filters.http.wasm:"));
    assert!(!native.envoy_routes.contains("envoy.filters.http.wasm"));
    let parse = |text: &str| serde_yaml::from_str::<serde_yaml::Value>(text).expect("yaml");
    assert_eq!(
        parse(&native.envoy_routes),
        parse(&wasm.envoy_routes.replace(
            "envoy.filters.http.wasm:",
            "envoy.filters.http.dynamic_modules:"
        ))
    );
    let istio =
        std::fs::read_to_string(repo_root().join("config/policy.istio.yaml")).expect("read");
    let problems = authz_config::render_with_env(&for_filter_build(&istio, "native"), &env)
        .expect_err("istio loads WasmPlugins");
    assert!(
        problems
            .iter()
            .any(|p| p.starts_with("istio: needs envoy.filter wasm")),
        "{problems:#?}"
    );
}
