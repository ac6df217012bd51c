//! The shipped deployment files, checked against the real things they configure: the compose
//! file by `docker-compose config`, its Envoy config by `envoy --mode validate`, every embedded
//! server configuration by the server's own parser, every embedded filter configuration by the
//! filter's own parser, and the Istio resources for the fields Istio requires and for agreeing
//! with each other (provider names, ports, hosts, mount paths).

use ext_authz_server::config::ServerConfig;
use serde::Deserialize;
use serde_yaml::Value as Yaml;
use std::path::Path;
use std::process::Command;
use tests::*;

fn read(path: &str) -> String {
    std::fs::read_to_string(repo_root().join(path)).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// Every document of a multi-document YAML file.
fn documents(path: &str) -> Vec<Yaml> {
    let text = read(path);
    serde_yaml::Deserializer::from_str(&text)
        .map(|d| Yaml::deserialize(d).unwrap_or_else(|e| panic!("{path}: not yaml: {e}")))
        .filter(|v: &Yaml| !v.is_null())
        .collect()
}

/// The value at a dotted path (`spec.ports.0.name`: numbers index sequences).
fn at<'a>(v: &'a Yaml, path: &str) -> &'a Yaml {
    path.split('.')
        .fold(v, |at, key| match key.parse::<usize>() {
            Ok(i) => &at[i],
            Err(_) => &at[key],
        })
}

fn text<'a>(v: &'a Yaml, path: &str) -> &'a str {
    at(v, path)
        .as_str()
        .unwrap_or_else(|| panic!("{path} is missing or not a string in {v:?}"))
}

fn number(v: &Yaml, path: &str) -> u64 {
    at(v, path)
        .as_u64()
        .unwrap_or_else(|| panic!("{path} is missing or not a number"))
}

fn port_of(addr: &str) -> u64 {
    addr.rsplit(':')
        .next()
        .and_then(|p| p.parse().ok())
        .expect("ip:port")
}

#[test]
fn the_compose_file_is_valid_and_pins_envoy_1_40() {
    let out = Command::new("docker-compose")
        .args(["-f", "docker-compose.yaml", "config", "-q"])
        .current_dir(repo_root())
        .output()
        .expect("docker-compose is missing: `make test` installs it (Debian package)");
    assert!(
        out.status.success(),
        "docker-compose config: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let compose = &documents("docker-compose.yaml")[0];
    for service in ["envoy", "authz-a", "authz-b", "redis", "dev-idp", "echo"] {
        assert!(
            compose["services"][service].is_mapping(),
            "service {service} is missing"
        );
    }
    assert!(read("deploy/docker/envoy.Dockerfile").contains("FROM envoyproxy/envoy:v1.40.0"));
    for dockerfile in ["server", "filter", "envoy", "dev-tools"] {
        let text = read(&format!("deploy/docker/{dockerfile}.Dockerfile"));
        assert!(
            text.matches("FROM ").count() >= 2,
            "{dockerfile}.Dockerfile is not multi-stage"
        );
    }
    assert!(read("deploy/docker/filter.Dockerfile").contains("/plugin.wasm"));
    // The compose servers' configuration is one the server accepts, with Redis on.
    let server = ServerConfig::from_yaml(&read("deploy/compose/server.yaml")).expect("valid");
    assert!(server.redis.is_some());
}

#[test]
fn the_compose_envoy_config_validates() {
    let scratch = Scratch::new("compose-validate");
    let config = read("deploy/compose/envoy.yaml").replace(
        "\"/etc/envoy/wasm_filter.wasm\"",
        &format!("\"{}\"", wasm_path().display()),
    );
    let path = scratch.0.join("envoy.yaml");
    std::fs::write(&path, config).expect("write");
    let (ok, output) = validate(&path);
    assert!(ok, "deploy/compose/envoy.yaml does not validate:\n{output}");
}

#[test]
fn the_istio_resources_have_what_istio_requires_and_agree() {
    let dir = "deploy/istio";
    let mut all: Vec<Yaml> = Vec::new();
    for entry in std::fs::read_dir(repo_root().join(dir)).expect("deploy/istio") {
        let path = entry.expect("entry").path();
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
        if Path::new(name).extension().and_then(|e| e.to_str()) == Some("yaml") {
            all.extend(documents(&format!("{dir}/{name}")));
        }
    }
    for doc in &all {
        text(doc, "apiVersion");
        text(doc, "kind");
        text(doc, "metadata.name");
    }
    let find = |kind: &str| -> &Yaml {
        all.iter()
            .find(|d| d["kind"].as_str() == Some(kind))
            .unwrap_or_else(|| panic!("no {kind}"))
    };

    // WasmPlugin: an OCI module, a phase, reloaded when its VM crashes, and a pluginConfig the
    // filter accepts.
    let wasm = find("WasmPlugin");
    assert_eq!(text(wasm, "apiVersion"), "extensions.istio.io/v1alpha1");
    assert!(text(wasm, "spec.url").starts_with("oci://"));
    assert!(["AUTHN", "AUTHZ", "STATS"].contains(&text(wasm, "spec.phase")));
    assert_eq!(text(wasm, "spec.failStrategy"), "FAIL_RELOAD");
    number(wasm, "spec.priority");
    assert!(wasm["spec"]["selector"]["matchLabels"].is_mapping());
    let plugin_json =
        serde_json::to_vec(&wasm["spec"]["pluginConfig"]).expect("pluginConfig as json");
    // The feed secret is not in the resource: a reference the filter resolves from the proxy's
    // environment (refused, naming it, when unset), filled from the Secret shipped beside it.
    let missing = authz_core::config::Policy::from_json(&plugin_json).expect_err("unset");
    assert!(
        missing.to_string().contains("${AUTHZ_EPOCHS_TOKEN}"),
        "{missing}"
    );
    assert!(wasm["spec"]["vmConfig"]["env"][0]["valueFrom"].as_str() == Some("HOST"));
    assert!(all.iter().any(|d| d["kind"].as_str() == Some("Secret")
        && d["metadata"]["name"].as_str() == Some("authz-feed")
        && d["metadata"]["namespace"] == wasm["metadata"]["namespace"]));
    let proxy_env = |name: &str| {
        (name == "AUTHZ_EPOCHS_TOKEN").then(|| "a-real-epochs-token-4f2a9c".to_owned())
    };
    let plugin = authz_core::config::Policy::from_json_with_env(&plugin_json, &proxy_env)
        .unwrap_or_else(|e| panic!("the WasmPlugin's pluginConfig is refused by the filter: {e}"));
    // The filter decides every tier itself: no CUSTOM policy behind it (it would run after the
    // filter removed the credential; `istio_sidecar_order` runs that order).
    assert!(
        !all.iter()
            .any(|d| d["kind"].as_str() == Some("AuthorizationPolicy")
                && d["spec"]["action"].as_str() == Some("CUSTOM")),
        "a CUSTOM AuthorizationPolicy behind the WasmPlugin never sees a token"
    );
    assert!(plugin.server.is_some() && plugin.feed().is_some());
    for path in ["/admin", "/admin/x", "/ADMIN/x", "/regulated/x"] {
        assert!(
            plugin.routes.find("GET", path).tier.requires_server(),
            "{path} is decided by the server"
        );
    }
    // The server's host and port, from the filter's Istio cluster name `outbound|PORT||HOST`.
    let link = text(wasm, "spec.pluginConfig.server.cluster");
    let mut parts = link.split('|');
    let (_, port, _, host) = (parts.next(), parts.next(), parts.next(), parts.next());
    let service_port: u64 = port.and_then(|p| p.parse().ok()).expect("a port");
    let service_host = host.expect("a host").to_owned();
    // Only the mesh's proxies, with mTLS, reach the server.
    let peer = find("PeerAuthentication");
    assert_eq!(text(peer, "spec.mtls.mode"), "STRICT");
    assert_eq!(
        text(peer, "spec.selector.matchLabels.app"),
        "ext-authz-server"
    );
    let mesh = find("IstioOperator");
    assert_eq!(
        number(
            mesh,
            "spec.meshConfig.defaultConfig.gatewayTopology.numTrustedProxies"
        ),
        1,
        "sidecars behind the gateway trust its one X-Forwarded-For hop"
    );
    assert_eq!(
        text(mesh, "spec.meshConfig.pathNormalization.normalization"),
        "DECODE_AND_MERGE_SLASHES",
        "the mesh must normalise paths, decode escaped slashes and merge slashes"
    );
    // The sidecar refuses header names with underscores.
    let patch = find("EnvoyFilter");
    assert_eq!(
        text(
            patch,
            "spec.configPatches.0.patch.value.typed_config.common_http_protocol_options.headers_with_underscores_action"
        ),
        "REJECT_REQUEST"
    );
    // Who may reach the server: a NetworkPolicy and an ALLOW AuthorizationPolicy on its pods.
    let network = find("NetworkPolicy");
    assert_eq!(
        text(network, "spec.podSelector.matchLabels.app"),
        "ext-authz-server"
    );
    let ingress = network["spec"]["ingress"]
        .as_sequence()
        .expect("ingress rules");
    assert!(
        ingress
            .iter()
            .all(|rule| rule["from"].as_sequence().is_some_and(|f| !f.is_empty())),
        "an ingress rule without `from` admits every pod"
    );
    let allow = all
        .iter()
        .find(|d| {
            d["kind"].as_str() == Some("AuthorizationPolicy")
                && d["spec"]["action"].as_str() == Some("ALLOW")
        })
        .expect("an ALLOW AuthorizationPolicy for the server");
    assert_eq!(
        text(allow, "spec.selector.matchLabels.app"),
        "ext-authz-server"
    );
    assert!(allow["spec"]["rules"]
        .as_sequence()
        .expect("rules")
        .iter()
        .all(|r| r["from"].as_sequence().is_some_and(|f| !f.is_empty())));

    // The server: its ConfigMap is a configuration the server accepts, on the ports the
    // Deployment exposes and the Service and the mesh point at.
    let config_map = find("ConfigMap");
    let server_yaml = config_map["data"]["server.yaml"]
        .as_str()
        .expect("the ConfigMap holds server.yaml");
    let deployment = find("Deployment");
    let container = &deployment["spec"]["template"]["spec"]["containers"][0];
    // The container's environment, resolved from the Secret it names: every `${VAR}` of the
    // configuration must come from there (the parser reports any that does not).
    let secret = all
        .iter()
        .find(|d| {
            d["kind"].as_str() == Some("Secret")
                && d["metadata"]["name"].as_str() == Some("ext-authz-server")
        })
        .expect("the server's Secret");
    let environment: std::collections::HashMap<String, String> = container["env"]
        .as_sequence()
        .expect("env")
        .iter()
        .map(|e| {
            let from = &e["valueFrom"]["secretKeyRef"];
            assert_eq!(
                from["name"], secret["metadata"]["name"],
                "env from another Secret"
            );
            let key = text(from, "key");
            let value = secret["stringData"][key]
                .as_str()
                .unwrap_or_else(|| panic!("the Secret has no {key}"));
            (text(e, "name").to_owned(), value.to_owned())
        })
        .collect();
    // As shipped, the Secret holds placeholders, which the server refuses to start with.
    let refused =
        ServerConfig::from_yaml_with_env(server_yaml, |name| environment.get(name).cloned());
    assert!(
        refused.is_err(),
        "the server accepted the Secret's placeholders"
    );
    // With real values in the Secret, the configuration is accepted.
    let real = |name: &str| {
        environment.get(name).map(|_| {
            format!(
                "{}-4f2a9c7e1b3d5a6c8e0f2a4b6c8d0e1f",
                name.to_ascii_lowercase()
            )
        })
    };
    // The Redis CA the Deployment mounts, made here (the server reads it at load).
    let scratch = Scratch::new("istio-redis-ca");
    let (ca, _, _) = make_tls_certificates(&scratch.0);
    let mounted = server_yaml.replace("/etc/redis-tls/ca.pem", &ca.display().to_string());
    let server = ServerConfig::from_yaml_with_env(&mounted, real)
        .unwrap_or_else(|e| panic!("the ConfigMap's server.yaml is refused: {e}"));
    assert!(
        server
            .redis
            .as_ref()
            .is_some_and(|r| r.url.starts_with("rediss://")),
        "Redis over TLS"
    );
    let mounts = container["volumeMounts"].as_sequence().expect("mounts");
    assert!(
        mounts
            .iter()
            .any(|m| m["mountPath"].as_str() == Some("/etc/redis-tls")),
        "the Redis CA is mounted where ca_file names it"
    );
    assert!(
        server
            .redis
            .as_ref()
            .is_some_and(|r| r.url.contains(":authz_redis_password-")),
        "Redis AUTH password from the Secret"
    );
    assert!(
        !server_yaml.contains("replace-with"),
        "secrets belong in the Secret, not the ConfigMap"
    );
    let container_port = |name: &str| -> u64 {
        container["ports"]
            .as_sequence()
            .and_then(|ports| ports.iter().find(|p| p["name"].as_str() == Some(name)))
            .and_then(|p| p["containerPort"].as_u64())
            .unwrap_or_else(|| panic!("no container port {name}"))
    };
    assert_eq!(container_port("grpc"), port_of(&server.listen.to_string()));
    assert_eq!(
        container_port("admin"),
        port_of(&server.admin_listen.to_string())
    );
    assert_eq!(text(container, "readinessProbe.httpGet.path"), "/readyz");
    let args: Vec<&str> = container["args"]
        .as_sequence()
        .expect("args")
        .iter()
        .filter_map(Yaml::as_str)
        .collect();
    let config_path = args[args
        .iter()
        .position(|a| *a == "--config")
        .expect("--config")
        + 1];
    let mount = text(container, "volumeMounts.0.mountPath");
    assert_eq!(config_path, format!("{mount}/server.yaml"));
    let service = find("Service");
    let namespace = text(service, "metadata.namespace");
    assert_eq!(
        service_host,
        format!(
            "{}.{namespace}.svc.cluster.local",
            text(service, "metadata.name")
        )
    );
    let grpc_port = service["spec"]["ports"]
        .as_sequence()
        .and_then(|ports| ports.iter().find(|p| p["name"].as_str() == Some("grpc")))
        .expect("a grpc service port");
    assert_eq!(number(grpc_port, "port"), service_port);
    assert_eq!(text(grpc_port, "appProtocol"), "grpc");

    // The filter's server link and the DestinationRule name the same service.
    let rule = find("DestinationRule");
    assert_eq!(text(rule, "spec.host"), service_host);
    assert_eq!(
        rule["spec"]["trafficPolicy"]["loadBalancer"]["localityLbSetting"]["enabled"].as_bool(),
        Some(true)
    );
    assert!(
        rule["spec"]["trafficPolicy"]["outlierDetection"].is_mapping(),
        "Istio locality failover needs outlier detection"
    );
}

/// Every HttpConnectionManager and Wasm filter config in a YAML tree.
fn walk<'a>(v: &'a Yaml, found: &mut Vec<&'a Yaml>, key: &str) {
    match v {
        Yaml::Mapping(m) => {
            if m.get(key).is_some() {
                found.push(v);
            }
            for child in m.values() {
                walk(child, found, key);
            }
        }
        Yaml::Sequence(items) => items.iter().for_each(|i| walk(i, found, key)),
        _ => {}
    }
}

/// Every Envoy configuration we ship, rendered where it is a template.
fn shipped_envoy_configs() -> Vec<(String, Yaml)> {
    let mut configs = Vec::new();
    let mut names: Vec<String> = std::fs::read_dir(repo_root().join("envoy"))
        .expect("envoy/")
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| n.ends_with(".yaml"))
        .map(|n| format!("envoy/{n}"))
        .collect();
    names.push("deploy/compose/envoy.yaml".into());
    names.sort();
    for name in names {
        let text = read(&name);
        let text = if text.contains("{{") {
            render(
                &text,
                &Placeholders {
                    authz_port: 1,
                    authz_admin_port: 2,
                    admin_port: 3,
                    listen_port: 4,
                    upstream_port: 5,
                    idp_port: 6,
                    plugin_config: plugin_config(),
                },
            )
        } else {
            text
        };
        let yaml: Yaml = serde_yaml::from_str(&text).unwrap_or_else(|e| panic!("{name}: {e}"));
        configs.push((name, yaml));
    }
    configs
}

#[test]
fn every_shipped_envoy_config_is_hardened() {
    let configs = shipped_envoy_configs();
    assert!(configs.len() >= 6, "{} configs", configs.len());
    for (name, config) in &configs {
        let mut managers = Vec::new();
        walk(config, &mut managers, "stat_prefix");
        let managers: Vec<&Yaml> = managers
            .into_iter()
            .filter(|m| m.get("route_config").is_some() || m.get("http_filters").is_some())
            .collect();
        assert!(!managers.is_empty(), "{name}: no HttpConnectionManager");
        for hcm in managers {
            let underscores = at(
                hcm,
                "common_http_protocol_options.headers_with_underscores_action",
            )
            .as_str();
            assert!(
                matches!(underscores, Some("REJECT_REQUEST" | "DROP_HEADER")),
                "{name}: headers_with_underscores_action is {underscores:?}"
            );
            assert_eq!(
                hcm["use_remote_address"].as_bool(),
                Some(true),
                "{name}: use_remote_address"
            );
            assert!(
                hcm["xff_num_trusted_hops"].as_u64().is_some(),
                "{name}: xff_num_trusted_hops unset"
            );
            assert_eq!(
                hcm["normalize_path"].as_bool(),
                Some(true),
                "{name}: normalize_path"
            );
            assert_eq!(
                hcm["merge_slashes"].as_bool(),
                Some(true),
                "{name}: merge_slashes"
            );
            assert_eq!(
                hcm["path_with_escaped_slashes_action"].as_str(),
                Some("REJECT_REQUEST"),
                "{name}: escaped slashes"
            );
        }
        let mut wasm = Vec::new();
        walk(config, &mut wasm, "vm_config");
        for filter in wasm {
            assert_eq!(
                filter["failure_policy"].as_str(),
                Some("FAIL_RELOAD"),
                "{name}: a crashed VM must be reloaded (and fail closed meanwhile)"
            );
        }
    }
}

/// Every header the filter may set (its configuration's context headers and claim mappings)
/// is one the paired server strips on routes it decides, so a client copy never reaches an
/// upstream whoever decides the route.
#[test]
fn servers_strip_every_header_their_filters_set() {
    let pairs = [
        ("envoy/dev.yaml", "config/ext-authz-server.dev.yaml"),
        ("deploy/compose/envoy.yaml", "deploy/compose/server.yaml"),
    ];
    for (envoy, server) in pairs {
        let config: Yaml = serde_yaml::from_str(&read(envoy)).expect("yaml");
        let mut wasm = Vec::new();
        walk(&config, &mut wasm, "vm_config");
        let plugin = text(wasm[0], "configuration.value");
        let policy = authz_core::Policy::from_json(plugin.as_bytes())
            .unwrap_or_else(|e| panic!("{envoy}: {e}"));
        let server_config =
            ServerConfig::from_yaml(&read(server)).unwrap_or_else(|e| panic!("{server}: {e}"));
        for header in policy.headers.all() {
            assert!(
                server_config.strip_headers.iter().any(|h| h == header),
                "{server} does not strip {header}, which {envoy}'s filter sets"
            );
        }
    }
}

/// The images build with the toolchain CI pins (`rust-toolchain.toml`), so a container build
/// and a `make test` run compile the same code the same way.
#[test]
fn images_build_with_the_pinned_toolchain() {
    let root = repo_root();
    let pinned = std::fs::read_to_string(root.join("rust-toolchain.toml")).expect("read");
    let version = pinned
        .lines()
        .find_map(|l| l.trim().strip_prefix("channel = "))
        .map(|v| v.trim_matches('"').to_owned())
        .expect("a channel");
    assert!(
        version.split('.').count() == 3 && version.split('.').all(|p| p.parse::<u32>().is_ok()),
        "rust-toolchain.toml pins a version, not a channel: {version}"
    );
    let minor = version.rsplit_once('.').map(|(m, _)| m).unwrap_or(&version);
    for entry in std::fs::read_dir(root.join("deploy/docker")).expect("read_dir") {
        let path = entry.expect("entry").path();
        let text = std::fs::read_to_string(&path).expect("read");
        for line in text.lines().filter(|l| l.starts_with("FROM rust:")) {
            assert!(
                line.starts_with(&format!("FROM rust:{minor}-")),
                "{}: {line} (pinned {version})",
                path.display()
            );
        }
    }
}

#[test]
fn the_readme_https_idp_cluster_validates_in_envoy() {
    let readme = read("README.md");
    let start = readme
        .find("The Envoy cluster of an `https` IdP")
        .expect("the README shows an https IdP cluster");
    let block = readme[start..]
        .split("```yaml\n")
        .nth(1)
        .and_then(|rest| rest.split("```").next())
        .expect("a yaml block");
    assert!(block.contains("sni: idp.example.com"), "{block}");
    let config = format!(
        "static_resources:\n  clusters:\n{block}admin:\n  address: {{ socket_address: {{ address: 127.0.0.1, port_value: 0 }} }}\n"
    );
    let scratch = Scratch::new("readme-idp-cluster");
    let file = scratch.0.join("envoy.yaml");
    std::fs::write(&file, &config).expect("write");
    let (ok, output) = validate(&file);
    assert!(ok, "{output}\n{config}");
}

/// Every Envoy configuration we ship carries the `stats_config` `authz-config` renders, so
/// the filter's metrics reach Prometheus as the families with labels the dashboard and the
/// alert rules query (`authz_proxy_decisions_total{outcome,tier,reason}`).
#[test]
fn every_shipped_envoy_config_turns_the_filters_metric_names_into_labels() {
    let block = authz_config::envoy_stats_config();
    let rendered: Yaml = serde_yaml::from_str(&block).expect("YAML");
    let tags = at(&rendered, "stats_config.stats_tags");
    assert_eq!(
        tags.as_sequence().map(Vec::len),
        Some(filter_core::metrics::LABELS.len()),
        "{block}"
    );
    let buckets = at(&rendered, "stats_config.histogram_bucket_settings");
    assert!(
        buckets.as_sequence().is_some_and(|b| b.len() == 1),
        "{block}"
    );
    for (name, config) in shipped_envoy_configs() {
        assert_eq!(
            at(&config, "stats_config.histogram_bucket_settings"),
            buckets,
            "{name}: add the stats_config of `authz-config render` (envoy-stats.yaml)"
        );
        assert_eq!(
            at(&config, "stats_config.stats_tags"),
            tags,
            "{name}: add the stats_config of `authz-config render` (envoy-stats.yaml)"
        );
    }
}
