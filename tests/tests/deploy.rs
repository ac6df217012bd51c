//! The shipped deployment files, checked against the real things they configure: the compose
//! file by `docker-compose config`, its Envoy config by `envoy --mode validate`, every embedded
//! server configuration by the server's own parser, every embedded filter configuration by the
//! filter's own parser, and the Istio resources for the fields Istio requires and for agreeing
//! with each other (provider names, ports, hosts, mount paths).

use e2e::*;
use ext_authz_server::config::ServerConfig;
use serde::Deserialize;
use serde_yaml::Value as Yaml;
use std::path::Path;
use std::process::Command;

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
        "\"/etc/envoy/authz_filter.wasm\"",
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

    // WasmPlugin: an OCI module, a phase, fail closed, and a pluginConfig the filter accepts.
    let wasm = find("WasmPlugin");
    assert_eq!(text(wasm, "apiVersion"), "extensions.istio.io/v1alpha1");
    assert!(text(wasm, "spec.url").starts_with("oci://"));
    assert!(["AUTHN", "AUTHZ", "STATS"].contains(&text(wasm, "spec.phase")));
    assert_eq!(text(wasm, "spec.failStrategy"), "FAIL_CLOSE");
    number(wasm, "spec.priority");
    assert!(wasm["spec"]["selector"]["matchLabels"].is_mapping());
    let plugin_json =
        serde_json::to_vec(&wasm["spec"]["pluginConfig"]).expect("pluginConfig as json");
    if let Err(e) = authz_core::config::Policy::from_json(&plugin_json) {
        panic!("the WasmPlugin's pluginConfig is refused by the filter: {e}");
    }

    // AuthorizationPolicy CUSTOM → a provider the mesh config defines.
    let policy = find("AuthorizationPolicy");
    assert_eq!(text(policy, "spec.action"), "CUSTOM");
    let provider = text(policy, "spec.provider.name");
    assert!(!policy["spec"]["rules"]
        .as_sequence()
        .is_none_or(|r| r.is_empty()));
    let mesh = find("IstioOperator");
    let providers = mesh["spec"]["meshConfig"]["extensionProviders"]
        .as_sequence()
        .expect("extensionProviders");
    let grpc = providers
        .iter()
        .find(|p| p["name"].as_str() == Some(provider))
        .unwrap_or_else(|| panic!("no extension provider named {provider}"));
    assert_eq!(grpc["envoyExtAuthzGrpc"]["failOpen"].as_bool(), Some(false));
    let service_host = text(grpc, "envoyExtAuthzGrpc.service");
    let service_port = number(grpc, "envoyExtAuthzGrpc.port");

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
    let secret = find("Secret");
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
    let server =
        ServerConfig::from_yaml_with_env(server_yaml, |name| environment.get(name).cloned())
            .unwrap_or_else(|e| panic!("the ConfigMap's server.yaml is refused: {e}"));
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
    let link = text(wasm, "spec.pluginConfig.server.cluster");
    assert_eq!(link, format!("outbound|{service_port}||{service_host}"));
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
